"""What the link ships: a registry of producers, so that the link knows none of them by name.

A producer is a buffer that fills on the program's threads (probe hits, trace records, the agent's
own log records) and is shipped to the daemon in reports. Its module registers, at import time, a
factory that makes the producer of one link::

    from . import _producers

    _producers.register(TraceProducer, order=1)     # TraceProducer(link) -> a Producer, or None

A link asks every factory once, when it is made (:func:`for_link`), and keeps its producers in
``order``, lowest first. Each flush, the link thread calls every producer's
:meth:`Producer.drain` in that order with the room left in its report buffer: a producer drained
earlier is served first, so one that can fill the buffer (the probe hits) registers last, after the
bounded ones (the log records, which carry the agent's own warnings about a flood).

Not for: the hot path. A probe hit or a trace record is appended to its module's own buffer, with
no look at this registry; only a link reads it (when it is made), and only the link thread calls
the producers (at flush time). A module must be imported before a link is made to be shipped by
it: ``scry/__init__`` imports every producer module.
"""

import threading

_lock = threading.Lock()
#: (order, registration number, factory); the number keeps registration order among equals.
_factories = []


class Producer(object):
    """One link's view of one buffer: what the link calls. Every hook here does nothing; a producer
    overrides the ones it needs."""

    #: What the events are, for the link's warning when :meth:`drain` raises
    #: ("could not collect probe hits: ...").
    what = "events"

    def before_start(self):
        """The link is about to start its thread (called in the caller's thread)."""

    def on_link_thread(self):
        """The link thread has started: called on it, before it serves anything."""

    def drain(self, room, flush_max):
        """On the link thread, each flush: ``(events, dropped, messages)``.

        ``events`` are report events for the link's buffer (``room`` of them fit; one flush sends
        at most ``flush_max``, so more than that only waits in the link), ``dropped`` counts events
        lost before the link saw them (for ``report.dropped``), ``messages`` are protocol messages
        to send at once. May raise: the link logs it (with :attr:`what`) and goes on.
        """
        return (), 0, ()

    def backlog(self, max_batch):
        """Whether more is waiting than one drain takes (``max_batch``: events per report): the
        link then drains again without waiting for the flush interval."""
        return False

    def link_closed(self):
        """The link is done: its thread is ending (its last flush comes after this), or it could
        not be started."""

    def link_closed_in_child(self):
        """After fork, in the child: let go of the parent's link. Must not wait for a lock that
        another thread may have held at fork (``logging`` resets its own after a fork)."""


def register(factory, order):
    """Give every link made from now on ``factory(link)`` (a :class:`Producer`, or None for a
    link it has nothing for); lower ``order`` is drained first."""
    with _lock:
        _factories.append((order, len(_factories), factory))


def for_link(link):
    """New producers for ``link``, in drain order."""
    with _lock:
        # (order, number) is unique: the factories themselves are never compared.
        factories = [factory for _order, _number, factory in sorted(_factories)]
    producers = []
    for factory in factories:
        producer = factory(link)
        if producer is not None:
            producers.append(producer)
    return producers

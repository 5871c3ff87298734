"""Forwarding of the agent's own log records to the daemon, as events of kind ``log``.

A :class:`LogForwarder` is a ``logging.Handler`` that each link's :class:`LogProducer` puts on
the ``scry`` logger while the link runs. ``emit`` turns a record into an event and appends it to
a bounded deque: it takes no lock of ours, does no I/O and never waits; a record that finds the
deque full is counted as dropped. Records of the link thread itself are not forwarded. The link
thread drains the deque into its report buffer on every flush (the producer is registered with
``_producers``), so the records reach the daemon with the probe hits, and the drops are reported
as ``report.dropped``.

An event: ``{"kind": "log", "t": record.created, "source": logger name, "data": {"level",
"logger", "message", "thread", "pid"}}`` (``level`` is one of ``debug``, ``info``, ``warn``,
``error``, the daemon's own levels; ``exc`` is added when the record carries a traceback).
"""

import collections
import logging
import threading
import traceback

from . import _producers

#: Records held between two flushes; more are counted as dropped.
CAPACITY = 1024
#: A message (or traceback) longer than this is cut, and says so.
MAX_MESSAGE = 8192

#: The logger whose records a link forwards: the agent's own.
_SCRY_LOG = logging.getLogger("scry")


def level_name(levelno):
    """The daemon's name for a ``logging`` level number."""
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warn"
    if levelno >= logging.INFO:
        return "info"
    return "debug"


def _cut(text):
    if len(text) > MAX_MESSAGE:
        return text[:MAX_MESSAGE] + "... [{} more characters]".format(len(text) - MAX_MESSAGE)
    return text


class LogForwarder(logging.Handler):
    """A handler that queues records as ``log`` events; bounded, never blocking."""

    def __init__(self, capacity=CAPACITY):
        logging.Handler.__init__(self)
        self.capacity = capacity
        self._queue = collections.deque()
        self._dropped = 0
        #: Records dropped since the forwarder was made (for status and tests).
        self.dropped_total = 0
        #: Ident of a thread whose records are not forwarded: the link thread's own records
        #: are about the connection they would travel on, and forwarding them would make every
        #: shipping problem a new report (they still reach stderr with ``SCRY_DEBUG=1``).
        self.skip_thread = None

    def handle(self, record):
        # No handler lock: emit only appends to a deque, which is atomic.
        if record.thread == self.skip_thread or not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record):
        try:
            if len(self._queue) >= self.capacity:
                self._dropped += 1
                self.dropped_total += 1
                return
            try:
                message = record.getMessage()
            except Exception as exc:  # a bad format string is the host's bug, not a reason to fail
                message = "{!r} % {!r} failed: {!r}".format(record.msg, record.args, exc)
            data = {
                "level": level_name(record.levelno),
                "logger": record.name,
                "message": _cut(message),
                "thread": record.threadName,
                "pid": record.process,
            }
            if record.exc_info and record.exc_info[0] is not None:
                data["exc"] = _cut("".join(traceback.format_exception(*record.exc_info)))
            self._queue.append({"kind": "log", "t": record.created, "source": record.name, "data": data})
        except Exception:
            self._dropped += 1
            self.dropped_total += 1

    def drain(self, limit):
        """Take up to ``limit`` queued events; returns (events, dropped since the last drain)."""
        events = []
        queue = self._queue
        while queue and len(events) < limit:
            events.append(queue.popleft())
        dropped, self._dropped = self._dropped, 0
        return events, dropped


class LogProducer(_producers.Producer):
    """The ``scry`` logger's records, for one link: its forwarder is on the logger from just before
    the link thread starts until the link is done."""

    what = "log records"

    def __init__(self, link):
        #: Forwards the ``scry`` logger's records to the daemon while the link thread runs.
        self.forwarder = LogForwarder()

    def before_start(self):
        _SCRY_LOG.addHandler(self.forwarder)

    def on_link_thread(self):
        self.forwarder.skip_thread = threading.get_ident()

    def drain(self, room, flush_max):
        records, lost = self.forwarder.drain(room)
        return records, lost, ()

    def link_closed(self):
        _SCRY_LOG.removeHandler(self.forwarder)

    link_closed_in_child = link_closed


# First: few and bounded, the agent's own records (its warnings about a flood among them) are
# never crowded out of the report buffer by the hits drained after them.
_producers.register(LogProducer, order=0)

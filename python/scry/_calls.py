"""Named agent features reached through the generic ``call`` and ``notify`` messages.

A feature module registers its handlers here at import time::

    from . import _calls

    @_calls.method("inspect")
    def _inspect(params, call):
        return {"threads": ...}          # the reply's result

    @_calls.topic("repl.input")
    def _on_input(data, link):
        ...

Handlers run on the agent's link thread, so they must be quick: a handler with slow work
returns :data:`DEFERRED`, keeps ``call`` and answers later from another thread with
``call.reply(result)`` or ``call.fail(kind, message)``. Raising :class:`CallError` answers
``ok: false`` with its kind; any other exception answers kind ``internal`` and is logged, never
propagated into the link (or the host program).

A feature that is only needed once it is used registers lazily instead (``lazy``): its
names are advertised in ``hello`` like any other, and its module is imported on the first
``call`` or ``notify`` for one of them (so ``scry attach`` does not compile and import it).

Not for: the hot path. Probes and hits never go through here.
"""

import importlib
import logging
import threading

from . import _proto

log = logging.getLogger("scry")

#: Returned by a handler that will answer later through ``call.reply`` / ``call.fail``.
DEFERRED = object()

_methods = {}
_topics = {}
_lock = threading.Lock()


class CallError(Exception):
    """A handler's refusal: ``kind`` (e.g. ``bad_request``, ``not_found``) and a message."""

    def __init__(self, kind, message):
        Exception.__init__(self, message)
        self.kind = kind
        self.message = message


def method(name):
    """Decorator: handle ``call`` requests whose ``method`` is ``name``."""

    def register(fn):
        with _lock:
            _methods[name] = fn
        return fn

    return register


def topic(name):
    """Decorator: handle daemon ``notify`` messages whose ``topic`` is ``name``."""

    def register(fn):
        with _lock:
            _topics[name] = fn
        return fn

    return register


def lazy(module, methods=(), topics=()):
    """Advertise ``methods`` and ``topics`` now, and import ``module`` (which registers the
    real handlers with :func:`method` / :func:`topic`) on the first message for any of them."""

    def stand_in(table, name):
        def first_use(arg, call_or_link):
            importlib.import_module(module)
            with _lock:
                fn = table.get(name)
            if fn is first_use:
                raise CallError("internal", "{} did not register {}".format(module, name))
            return fn(arg, call_or_link)

        return first_use

    with _lock:
        for name in methods:
            _methods.setdefault(name, stand_in(_methods, name))
        for name in topics:
            _topics.setdefault(name, stand_in(_topics, name))


def methods():
    """The registered method names (sent as capabilities in ``hello``)."""
    with _lock:
        return sorted(_methods)


class Call(object):
    """One pending request: answer it exactly once."""

    __slots__ = ("id", "method", "link", "_done", "_lock")

    def __init__(self, msg_id, method_name, link):
        self.id = msg_id
        self.method = method_name
        self.link = link
        self._done = False
        self._lock = threading.Lock()

    def _answer(self, msg):
        with self._lock:
            if self._done:
                return False
            self._done = True
        self.link.send_message(msg)
        return True

    def reply(self, result=None):
        """Answers ``ok: true`` with ``result``; False if already answered."""
        return self._answer(_proto.reply_ok(self.id, result))

    def fail(self, kind, message):
        """Answers ``ok: false``; False if already answered."""
        return self._answer(_proto.reply_error(self.id, kind, message))


def dispatch_call(msg, link):
    """Runs the handler of a ``call`` message and answers it (unless the handler deferred)."""
    call = Call(msg["id"], msg["method"], link)
    with _lock:
        fn = _methods.get(msg["method"])
    if fn is None:
        call.fail(
            "unknown_method",
            "this agent has no method `{}` (it has: {})".format(
                msg["method"], ", ".join(methods()) or "none"
            ),
        )
        return
    params = msg.get("params")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        call.fail("bad_request", "`params` must be an object")
        return
    try:
        result = fn(params, call)
    except CallError as exc:
        call.fail(exc.kind, exc.message)
        return
    except Exception as exc:  # a feature's bug must not take the link down
        log.warning("scry agent method %s failed: %r", msg["method"], exc)
        call.fail("internal", "{} failed in the agent: {!r}".format(msg["method"], exc))
        return
    if result is not DEFERRED:
        call.reply(result)


def dispatch_notify(msg, link):
    """Runs the handler of a daemon ``notify``; unknown topics are logged and ignored."""
    with _lock:
        fn = _topics.get(msg["topic"])
    if fn is None:
        log.debug("scry: notify for unknown topic %r ignored", msg["topic"])
        return
    try:
        fn(msg.get("data"), link)
    except Exception as exc:
        log.warning("scry agent topic %s failed: %r", msg["topic"], exc)

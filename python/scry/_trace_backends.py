"""How a call trace hooks the interpreter: three backends, and the records they append.

A backend (:func:`make_tracer` picks the one this interpreter offers) gets the selected code
objects (``add``, id -> code) and, until ``stop``, appends a record each time one of them starts,
returns, yields, resumes or lets an exception out; it touches no other code. ``stop`` removes
every hook; ``stop_in_child`` does the same after fork without taking a lock.

**3.12+** (``sys.monitoring``): a tool id of our own (3, then 4, then any free one; never another
tool's, and never the one the probe backend holds), PY_START / PY_RETURN / PY_YIELD / PY_RESUME set
with ``set_local_events`` on the selected code objects only, and the global PY_UNWIND / PY_THROW /
RAISE (which cannot be local) only while the trace runs, filtered by a dict lookup. Untraced code
runs uninstrumented. Stopping clears every local event, the global events and the callbacks, and
frees the tool id.

**3.8, 3.9, 3.11** (bytecode injection, :class:`InjectionTracer`): the selected code objects get
a copy (``_inject``, shared with the probes through ``_inject.swap.SWAPPER``) that calls hooks as
it starts, returns, yields, resumes and lets an exception out, with the exception. Untraced code
runs untouched.

**3.10** (no injection layout): a profile function installed in every thread
(``_threadtrace.ThreadTracer`` in profile mode) only while the trace runs; for code objects that
are not selected it returns after one dict lookup. Yields, resumptions and exception exits are
told apart by the instruction the frame stopped at; the profile hook does not see which exception
escaped (``exc.type`` is null).

The hot path appends ONE tuple ``(kind, code, perf_counter_ns, thread ident, value)`` to
:data:`BUFFER`; no lock, no I/O, no formatting. A budget (:data:`BUDGET`: ``max_rate`` events a
second, counted in windows of 10 ms) bounds the rate: past it an event is only counted as dropped;
a buffer that the link does not drain (no connection) stops admitting events too. The hooks read
their settings from module globals (:data:`SELECTED`, :data:`WITH_ARGS`, :data:`WITH_RETURNS`),
which the trace (``_trace``) sets when it starts and stops.

Not for: which code is selected (``_trace_select``), or the trace itself: its calls, its budget's
settings, turning records into report events (``_trace``).
"""

import collections
import gc
import sys
import threading
import time
import types

from . import _backends, _capture, _features
from ._threadtrace import OtherTracer, ThreadTracer

CALL, RETURN, YIELD, RESUME, EXCEPTION, RAISE, PULSE = range(7)
KIND_NAMES = ("call", "return", "yield", "resume", "exception", "raise", "pulse")

#: Records waiting for the link thread: (kind, code, perf_counter_ns, thread ident, value).
BUFFER = collections.deque()
#: The buffer admits nothing more (until drained) past this many records.
MAX_BUFFER = 262144
#: The budget's window.
WINDOW_NS = 10000000
#: How arguments and return values are bounded: (depth, items, string characters).
LIMITS = (2, 10, 128)
#: Tool ids tried on 3.12+, in order (the probe backend tries 4 first).
TOOL_ORDER = (3, 4, 1, 0, 2, 5)
TOOL_NAME = "scry-trace"

#: The budget: [admitted in this window, window end (ns), allowance per window, dropped].
BUDGET = [0, 0, 0, 0]
#: id(code) -> code, for the code objects that are traced. Rebound whole, never mutated (by the
#: trace, as ``_trace_backends.SELECTED``: a name imported from here would keep the old dict).
SELECTED = {}
#: Whether call records carry the arguments / returns and yields their value.
WITH_ARGS = [False]
WITH_RETURNS = [False]

_append = BUFFER.append
_now = time.perf_counter_ns
_ident = threading.get_ident
_getframe = sys._getframe
_PRIMS = _capture.PRIMITIVES
_snapshot = _capture.snapshot
_GEN_FLAGS = 0x20 | 0x80 | 0x200  # CO_GENERATOR | CO_COROUTINE | CO_ASYNC_GENERATOR
_VARARGS = 0x04
_VARKEYWORDS = 0x08


def new_window(t):
    """Open the budget's next window at ``t`` (ns)."""
    b = BUDGET
    b[1] = t + WINDOW_NS
    # A buffer nobody drains admits nothing until it is drained.
    b[0] = 0 if len(BUFFER) < MAX_BUFFER else b[2]


def _exc_value(exc):
    try:
        message = str(exc)
    except BaseException:
        message = "<unreadable message>"
    if len(message) > 512:
        message = message[:512] + "..."
    return (type(exc).__name__, message)


def record_value(v):
    """``v`` as a record holds it: an immutable primitive as it is, anything else snapshotted now."""
    return v if type(v) in _PRIMS else _snapshot(v, LIMITS)


def _args(code, frame):
    n = code.co_argcount + code.co_kwonlyargcount
    flags = code.co_flags
    if flags & _VARARGS:
        n += 1
    if flags & _VARKEYWORDS:
        n += 1
    loc = frame.f_locals
    out = []
    for name in code.co_varnames[:n]:
        try:
            out.append(record_value(loc[name]))
        except KeyError:
            out.append(None)
    return tuple(out)


# -- sys.monitoring callbacks (3.12+) ------------------------------------------------------------


def _m_start(code, offset):
    try:
        t = _now()
        b = BUDGET
        if t >= b[1]:
            new_window(t)
        if b[0] >= b[2]:
            b[3] += 1
            return
        b[0] += 1
        _append((CALL, code, t, _ident(), _args(code, _getframe(1)) if WITH_ARGS[0] else None))
    except KeyboardInterrupt:
        raise
    except BaseException:
        pass


def _m_return(code, offset, retval):
    try:
        t = _now()
        b = BUDGET
        if t >= b[1]:
            new_window(t)
        if b[0] >= b[2]:
            b[3] += 1
            return
        b[0] += 1
        _append((RETURN, code, t, _ident(), record_value(retval) if WITH_RETURNS[0] else None))
    except KeyboardInterrupt:
        raise
    except BaseException:
        pass


def _m_yield(code, offset, retval):
    try:
        t = _now()
        b = BUDGET
        if t >= b[1]:
            new_window(t)
        if b[0] >= b[2]:
            b[3] += 1
            return
        b[0] += 1
        _append((YIELD, code, t, _ident(), record_value(retval) if WITH_RETURNS[0] else None))
    except KeyboardInterrupt:
        raise
    except BaseException:
        pass


def _m_resume(code, offset):
    try:
        t = _now()
        b = BUDGET
        if t >= b[1]:
            new_window(t)
        if b[0] >= b[2]:
            b[3] += 1
            return
        b[0] += 1
        _append((RESUME, code, t, _ident(), None))
    except KeyboardInterrupt:
        raise
    except BaseException:
        pass


def _m_throw(code, offset, exc):
    # Global event (cannot be local): every other code object returns here at once.
    if id(code) in SELECTED:
        _m_resume(code, offset)


def _m_unwind(code, offset, exc):
    if id(code) not in SELECTED:
        return
    try:
        t = _now()
        b = BUDGET
        if t >= b[1]:
            new_window(t)
        if b[0] >= b[2]:
            b[3] += 1
            return
        b[0] += 1
        _append((EXCEPTION, code, t, _ident(), _exc_value(exc)))
    except KeyboardInterrupt:
        raise
    except BaseException:
        pass


def _m_raise(code, offset, exc):
    if id(code) not in SELECTED:
        return
    try:
        t = _now()
        b = BUDGET
        if t >= b[1]:
            new_window(t)
        if b[0] >= b[2]:
            b[3] += 1
            return
        b[0] += 1
        _append((RAISE, code, t, _ident(), _exc_value(exc)))
    except KeyboardInterrupt:
        raise
    except BaseException:
        pass


class MonitoringTracer(object):
    """Call tracing through ``sys.monitoring`` (see the module docstring)."""

    name = "sys.monitoring"

    def __init__(self):
        self.tool = None
        self.note = None
        self._codes = {}

    def start(self):
        mon = _features.MONITORING
        self.tool = _features.claim_monitoring_tool(TOOL_ORDER, TOOL_NAME)
        ev = mon.events
        tool = self.tool
        mon.register_callback(tool, ev.PY_START, _m_start)
        mon.register_callback(tool, ev.PY_RETURN, _m_return)
        mon.register_callback(tool, ev.PY_YIELD, _m_yield)
        mon.register_callback(tool, ev.PY_RESUME, _m_resume)
        mon.register_callback(tool, ev.PY_THROW, _m_throw)
        mon.register_callback(tool, ev.PY_UNWIND, _m_unwind)
        mon.register_callback(tool, ev.RAISE, _m_raise)
        mon.set_events(tool, ev.PY_UNWIND | ev.PY_THROW | ev.RAISE)

    def add(self, codes):
        """Instrument ``codes`` (id -> code); returns the ids that could not be."""
        mon = _features.MONITORING
        ev = mon.events
        mask = ev.PY_START | ev.PY_RETURN | ev.PY_YIELD | ev.PY_RESUME
        failed = []
        for key, code in codes.items():
            if key in self._codes:
                continue
            try:
                mon.set_local_events(self.tool, code, mask)
            except Exception:  # e.g. "cannot instrument shim code object"
                failed.append(key)
                continue
            self._codes[key] = code
        return failed

    def stop(self):
        mon = _features.MONITORING
        tool, self.tool = self.tool, None
        if tool is None:
            return
        codes, self._codes = self._codes, {}
        ev = mon.events
        _features.release_monitoring_tool(
            tool,
            TOOL_NAME,
            codes.values(),
            (ev.PY_START, ev.PY_RETURN, ev.PY_YIELD, ev.PY_RESUME, ev.PY_THROW, ev.PY_UNWIND, ev.RAISE),
        )

    stop_in_child = stop


def _record(kind, code, value):
    """One record from an injected hook, within the budget; never raises but Ctrl-C."""
    try:
        if id(code) not in SELECTED:  # a copy still running after the trace stopped
            return
        t = _now()
        b = BUDGET
        if t >= b[1]:
            new_window(t)
        if b[0] >= b[2]:
            b[3] += 1
            return
        b[0] += 1
        _append((kind, code, t, _ident(), value))
    except KeyboardInterrupt:
        raise
    except BaseException:
        pass


# -- the profile function (3.10) --------------------------------------------------------------------


def _opcodes():
    import dis

    m = dis.opmap
    yields = frozenset(m[n] for n in ("YIELD_VALUE", "YIELD_FROM") if n in m)
    return m["RETURN_VALUE"], yields, m.get("RESUME")


_RETURN_OP, _YIELD_OPS, _RESUME_OP = _opcodes()
_RESUME_STARTS = _RESUME_OP is not None  # 3.11: RESUME's argument says start (0) or resumption


def _entry_kind(frame, code):
    if not code.co_flags & _GEN_FLAGS:
        return CALL
    lasti = frame.f_lasti
    if _RESUME_STARTS:
        raw = code.co_code
        if 0 <= lasti < len(raw) - 1 and raw[lasti] == _RESUME_OP:
            return CALL if raw[lasti + 1] == 0 else RESUME
        return RESUME
    return CALL if lasti < 0 else RESUME


def _exit_kind(frame, code):
    lasti = frame.f_lasti
    raw = code.co_code
    op = raw[lasti] if 0 <= lasti < len(raw) else None
    if op == _RETURN_OP:
        return RETURN
    if code.co_flags & _GEN_FLAGS:
        if op in _YIELD_OPS:
            return YIELD
        # 3.8-3.10 leave f_lasti one instruction before a YIELD_FROM that suspends.
        if 0 <= lasti + 2 < len(raw) and raw[lasti + 2] in _YIELD_OPS:
            return YIELD
    return EXCEPTION


_NO_EXC = (None, "the exception is not visible to the profile hook before Python 3.12")


def _profile(frame, event, arg):
    code = frame.f_code
    if id(code) not in SELECTED:
        return
    try:
        if event == "call":
            kind = _entry_kind(frame, code)
            value = _args(code, frame) if kind == CALL and WITH_ARGS[0] else None
        elif event == "return":
            kind = _exit_kind(frame, code)
            if kind == EXCEPTION:
                value = _NO_EXC
            else:
                value = record_value(arg) if WITH_RETURNS[0] else None
        else:
            return
    except KeyboardInterrupt:
        raise
    except BaseException:
        return
    _record(kind, code, value)


class ProfileTracer(object):
    """Call tracing through a profile function in every thread (see the module docstring)."""

    name = "setprofile"

    def __init__(self):
        self.note = None
        self._threads = ThreadTracer(_profile, profile=True)

    def start(self):
        try:
            self._threads.install()
        except OtherTracer as exc:
            raise RuntimeError(
                "another profile function is active ({}); call tracing needs sys.setprofile on Python "
                "{}.{}: stop the other profiler first".format(exc, *_features.PY)
            )
        self.note = self._threads.note

    def add(self, codes):
        return []

    def stop(self):
        self._threads.remove()

    def stop_in_child(self):
        self._threads.remove_in_child()


# -- bytecode injection (3.8, 3.9, 3.11) -----------------------------------------------------------


def _injected_hooks(code):
    """The hooks an injected copy of ``code`` calls (see ``_inject.inject``'s ``trace``)."""

    def call():
        try:
            args = _args(code, _getframe(1)) if WITH_ARGS[0] and id(code) in SELECTED else None
        except KeyboardInterrupt:
            raise
        except BaseException:
            args = None
        _record(CALL, code, args)

    def returned(value):
        _record(RETURN, code, record_value(value) if WITH_RETURNS[0] else None)

    def yielded(value=None):
        _record(YIELD, code, record_value(value) if WITH_RETURNS[0] else None)

    def resumed():
        _record(RESUME, code, None)

    def raised(exc):
        _record(EXCEPTION, code, _exc_value(exc))

    return {"call": call, "return": returned, "yield": yielded, "resume": resumed, "exception": raised}


class InjectionTracer(object):
    """Call tracing through bytecode injection: the selected code objects get a copy that calls
    hooks as they start, return, yield, resume and let an exception out (``_inject``); every other
    function runs untouched. Calls already running when the trace starts report only their end.
    On 3.8/3.9 an ``await`` (``yield from``) reports one yield and one resume, whether it
    suspended or not."""

    name = "bytecode"

    def __init__(self):
        self._inject = _backends._inject  # imported with the agent (see there)
        self.note = None
        self._swapper = _backends._swap.SWAPPER
        self._traced = {}  # id(original) -> (original, hooks)

    def start(self):
        if self._inject.LAYOUT is None:
            raise RuntimeError(self._inject.REASON)

    def add(self, codes):
        keys = {}
        for key, code in codes.items():
            original = self._swapper.original(code)
            keys[id(original)] = key
            if id(original) not in self._traced:
                self._traced[id(original)] = (original, _injected_hooks(code))
        failed = self._swapper.set_traced(self._traced)
        for key in failed:
            self._traced.pop(key, None)
        return [keys[key] for key in failed if key in keys]

    def stop(self):
        self._traced = {}
        self._swapper.set_traced({})

    def stop_in_child(self):
        self._traced = {}
        self._swapper.reset_in_child()


def make_tracer():
    """The backend this interpreter offers (not started yet)."""
    if _features.MONITORING is not None:
        return MonitoringTracer()
    if _features.INJECTION_LAYOUT is not None:
        return InjectionTracer()
    return ProfileTracer()


def hooks_installed():
    """Whether anything of tracing is hooked into the interpreter (tests assert it is not)."""
    mon = _features.MONITORING
    if mon is not None:
        if any(mon.get_tool(t) == TOOL_NAME for t in range(6)):
            return True
    elif sys.getprofile() is _profile or getattr(threading, "_profile_hook", None) is _profile:
        return True
    if _features.INJECTION_LAYOUT is not None and _features.MONITORING is None:
        hooks = _injected_hooks(None)["call"].__code__
        for obj in gc.get_objects():
            if type(obj) is types.FunctionType and any(
                getattr(c, "__code__", None) is hooks for c in obj.__code__.co_consts
            ):
                return True
    return bool(SELECTED)

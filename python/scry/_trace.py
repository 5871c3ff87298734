"""Call tracing of selected functions: ``trace.start`` / ``trace.stop`` / ``trace.status``.

What is traced is chosen by patterns (docs/tracing.md): modules (``myapp``, ``myapp.*``), files
(``app/*.py``), functions (``myapp.jobs:run``, ``myapp:Worker.*``), minus the exclusions. The
selected code objects are found now, by walking the loaded modules that a pattern may match
(functions, classes and their methods, nested ``def`` s through ``co_consts``), and later, by an
import hook (``_locate.ImportWatcher``, installed only while a trace runs) that walks each module
that may match right after it has executed. Nothing else is touched: scry's own modules never.

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
:data:`BUFFER`; no lock, no I/O, no formatting. A budget (``max_rate`` events a second, counted in
windows of 10 ms) bounds the rate: past it an event is only counted as dropped; a buffer that the
link does not drain (no connection) stops admitting events too. The link thread drains the buffer
each flush into report events of kind ``trace`` (docs/protocol.md "Trace events").
"""

import collections
import fnmatch
import gc
import logging
import os
import sys
import threading
import time
import types

from . import _backends, _calls, _capture, _features, _locate
from ._threadtrace import OtherTracer, ThreadTracer

log = logging.getLogger("scry")

CALL, RETURN, YIELD, RESUME, EXCEPTION, RAISE, PULSE = range(7)
KIND_NAMES = ("call", "return", "yield", "resume", "exception", "raise", "pulse")

#: Records waiting for the link thread: (kind, code, perf_counter_ns, thread ident, value).
BUFFER = collections.deque()
#: The buffer admits nothing more (until drained) past this many records.
MAX_BUFFER = 262144
#: The budget's window.
WINDOW_NS = 10000000
#: Default events a second (per process).
DEFAULT_MAX_RATE = 200000
#: How arguments and return values are bounded: (depth, items, string characters).
LIMITS = (2, 10, 128)
#: Records per report event.
RECORDS_PER_EVENT = 1000
#: Tool ids tried on 3.12+, in order (the probe backend tries 4 first).
TOOL_ORDER = (3, 4, 1, 0, 2, 5)
TOOL_NAME = "scry-trace"

#: The budget: [admitted in this window, window end (ns), allowance per window, dropped].
_B = [0, 0, 0, 0]
#: id(code) -> code, for the code objects that are traced. Rebound whole, never mutated.
_SEL = {}
#: Whether call records carry the arguments / returns and yields their value.
_WITH_ARGS = [False]
_WITH_RETURNS = [False]

_append = BUFFER.append
_now = time.perf_counter_ns
_ident = threading.get_ident
_getframe = sys._getframe
_PRIMS = _capture.PRIMITIVES
_snapshot = _capture.snapshot
_GEN_FLAGS = 0x20 | 0x80 | 0x200  # CO_GENERATOR | CO_COROUTINE | CO_ASYNC_GENERATOR
_VARARGS = 0x04
_VARKEYWORDS = 0x08
_OWN_DIR = _locate.PACKAGE_DIR + os.sep

_lock = threading.RLock()
_current = None  # the running Trace


def _new_window(t):
    b = _B
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


def _value(v):
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
            out.append(_value(loc[name]))
        except KeyError:
            out.append(None)
    return tuple(out)


# -- sys.monitoring callbacks (3.12+) ------------------------------------------------------------


def _m_start(code, offset):
    try:
        t = _now()
        b = _B
        if t >= b[1]:
            _new_window(t)
        if b[0] >= b[2]:
            b[3] += 1
            return
        b[0] += 1
        _append((CALL, code, t, _ident(), _args(code, _getframe(1)) if _WITH_ARGS[0] else None))
    except KeyboardInterrupt:
        raise
    except BaseException:
        pass


def _m_return(code, offset, retval):
    try:
        t = _now()
        b = _B
        if t >= b[1]:
            _new_window(t)
        if b[0] >= b[2]:
            b[3] += 1
            return
        b[0] += 1
        _append((RETURN, code, t, _ident(), _value(retval) if _WITH_RETURNS[0] else None))
    except KeyboardInterrupt:
        raise
    except BaseException:
        pass


def _m_yield(code, offset, retval):
    try:
        t = _now()
        b = _B
        if t >= b[1]:
            _new_window(t)
        if b[0] >= b[2]:
            b[3] += 1
            return
        b[0] += 1
        _append((YIELD, code, t, _ident(), _value(retval) if _WITH_RETURNS[0] else None))
    except KeyboardInterrupt:
        raise
    except BaseException:
        pass


def _m_resume(code, offset):
    try:
        t = _now()
        b = _B
        if t >= b[1]:
            _new_window(t)
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
    if id(code) in _SEL:
        _m_resume(code, offset)


def _m_unwind(code, offset, exc):
    if id(code) not in _SEL:
        return
    try:
        t = _now()
        b = _B
        if t >= b[1]:
            _new_window(t)
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
    if id(code) not in _SEL:
        return
    try:
        t = _now()
        b = _B
        if t >= b[1]:
            _new_window(t)
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
        for code in codes.values():
            try:
                mon.set_local_events(tool, code, 0)
            except Exception:
                pass
        try:
            mon.set_events(tool, 0)
        except Exception:
            pass
        ev = mon.events
        for event in (ev.PY_START, ev.PY_RETURN, ev.PY_YIELD, ev.PY_RESUME, ev.PY_THROW, ev.PY_UNWIND, ev.RAISE):
            try:
                mon.register_callback(tool, event, None)
            except Exception:
                pass
        try:
            if mon.get_tool(tool) == TOOL_NAME:
                mon.free_tool_id(tool)
        except Exception:
            pass

    stop_in_child = stop


def _record(kind, code, value):
    """One record from an injected hook, within the budget; never raises but Ctrl-C."""
    try:
        if id(code) not in _SEL:  # a copy still running after the trace stopped
            return
        t = _now()
        b = _B
        if t >= b[1]:
            _new_window(t)
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
    if id(code) not in _SEL:
        return
    try:
        if event == "call":
            kind = _entry_kind(frame, code)
            value = _args(code, frame) if kind == CALL and _WITH_ARGS[0] else None
        elif event == "return":
            kind = _exit_kind(frame, code)
            if kind == EXCEPTION:
                value = _NO_EXC
            else:
                value = _value(arg) if _WITH_RETURNS[0] else None
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
            args = _args(code, _getframe(1)) if _WITH_ARGS[0] and id(code) in _SEL else None
        except KeyboardInterrupt:
            raise
        except BaseException:
            args = None
        _record(CALL, code, args)

    def returned(value):
        _record(RETURN, code, _value(value) if _WITH_RETURNS[0] else None)

    def yielded(value=None):
        _record(YIELD, code, _value(value) if _WITH_RETURNS[0] else None)

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
    if _features.MONITORING is not None:
        return MonitoringTracer()
    if _features.INJECTION_LAYOUT is not None:
        return InjectionTracer()
    return ProfileTracer()


# -- selection -------------------------------------------------------------------------------------


class BadPattern(ValueError):
    pass


def _module_match(name, pattern):
    return name == pattern or name.startswith(pattern + ".") or fnmatch.fnmatchcase(name, pattern)


def _file_match(path, pattern):
    if not path:
        return False
    if os.path.isabs(pattern):
        return fnmatch.fnmatchcase(path, pattern)
    return fnmatch.fnmatchcase(path, "*/" + pattern) or fnmatch.fnmatchcase(path, pattern)


class Selector(object):
    """Which modules and functions a trace covers (see the module docstring)."""

    def __init__(self, include, exclude, functions):
        self.modules, self.files, self.funcs = [], [], []
        self.x_modules, self.x_files, self.x_funcs = [], [], []
        for text in functions:
            if not isinstance(text, str) or ":" not in text:
                raise BadPattern("`{}`: a function is `module:function` (e.g. `myapp.jobs:run`)".format(text))
        for text in list(include) + list(functions):
            self._add(text, self.modules, self.files, self.funcs)
        for text in exclude:
            self._add(text, self.x_modules, self.x_files, self.x_funcs)
        if not (self.modules or self.files or self.funcs):
            self.modules.append("__main__")

    @staticmethod
    def _add(text, modules, files, funcs):
        if not isinstance(text, str) or not text.strip():
            raise BadPattern("a pattern must be a non-empty string, not {!r}".format(text))
        text = text.strip()
        if ":" in text:
            mod, _, qual = text.partition(":")
            if not mod or not qual:
                raise BadPattern("`{}`: a function is `module:function` (e.g. `myapp.jobs:run`)".format(text))
            funcs.append((mod, qual))
        elif "/" in text or text.endswith(".py"):
            files.append(text)
        else:
            modules.append(text)

    def module_wanted(self, name, path):
        """Whether a module may hold selected code (cheap; exclusions of whole modules apply)."""
        if name.startswith("scry.") or name == "scry" or (path and path.startswith(_OWN_DIR)):
            return False
        if any(_module_match(name, p) for p in self.x_modules) or any(_file_match(path, p) for p in self.x_files):
            return False
        return (
            any(_module_match(name, p) for p in self.modules)
            or any(_file_match(path, p) for p in self.files)
            or any(fnmatch.fnmatchcase(name, m) for m, _ in self.funcs)
        )

    def import_wanted(self, name):
        if self.files:
            return not name.startswith("scry.")
        return any(_module_match(name, p) for p in self.modules) or any(
            fnmatch.fnmatchcase(name, m) or m.startswith(name + ".") for m, _ in self.funcs
        )

    def code_wanted(self, name, path, qualname):
        if any(fnmatch.fnmatchcase(name, m) and fnmatch.fnmatchcase(qualname, q) for m, q in self.x_funcs):
            return False
        if any(fnmatch.fnmatchcase(name, m) and fnmatch.fnmatchcase(qualname, q) for m, q in self.funcs):
            return True
        return any(_module_match(name, p) for p in self.modules) or any(_file_match(path, p) for p in self.files)


def _unwrap(fn):
    """The function under decorators that set ``__wrapped__`` (read from ``__dict__``: no user code)."""
    for _ in range(10):
        try:
            inner = fn.__dict__.get("__wrapped__")
        except Exception:
            return fn
        if inner is None:
            return fn
        fn = inner
    return fn


def module_codes(module, selector, out):
    """Add the selected code objects of ``module`` to ``out`` (id -> (code, qualname, module))."""
    try:
        name = module.__name__
        path = getattr(module, "__file__", None)
        if not isinstance(name, str):
            return
        if not isinstance(path, str):
            path = None
        if not selector.module_wanted(name, path):
            return
        namespace = dict(vars(module))
    except Exception:
        return
    seen = set()

    def add_code(code, qualname):
        if id(code) in seen:
            return
        seen.add(id(code))
        if selector.code_wanted(name, code.co_filename, qualname):
            out[id(code)] = (code, qualname, name)
        for const in code.co_consts:
            if type(const) is types.CodeType and not const.co_name.startswith("<"):
                nested = const.co_qualname if _features.HAS_CO_QUALNAME else qualname + ".<locals>." + const.co_name
                add_code(const, nested)

    def add_function(fn):
        fn = _unwrap(fn)
        if type(fn) is not types.FunctionType or getattr(fn, "__module__", None) != name:
            return
        code = fn.__code__
        if code.co_filename.startswith(_OWN_DIR):
            return
        qualname = getattr(fn, "__qualname__", None)
        if not isinstance(qualname, str):
            qualname = code.co_name
        add_code(code, qualname)

    def add_class(cls, depth):
        if depth > 3 or id(cls) in seen:
            return
        seen.add(id(cls))
        try:
            members = list(vars(cls).values())
        except Exception:
            return
        for member in members:
            t = type(member)
            if t is types.FunctionType:
                add_function(member)
            elif t in (staticmethod, classmethod):
                add_function(member.__func__)
            elif t is property:
                for fn in (member.fget, member.fset, member.fdel):
                    if fn is not None:
                        add_function(fn)
            elif isinstance(member, type) and getattr(member, "__module__", None) == name:
                add_class(member, depth + 1)

    for value in namespace.values():
        try:
            if isinstance(value, type):
                if getattr(value, "__module__", None) == name:
                    add_class(value, 0)
            elif callable(value):
                add_function(value)
        except Exception:
            continue


# -- the trace -------------------------------------------------------------------------------------


class Trace(object):
    """One running trace in this process."""

    def __init__(self, params, link):
        self.id = params.get("id")
        if not isinstance(self.id, str) or not self.id:
            raise _calls.CallError("bad_request", "`id` must be a non-empty string")
        include = params.get("include") or []
        exclude = params.get("exclude") or []
        functions = params.get("functions") or []
        if not all(isinstance(x, list) for x in (include, exclude, functions)):
            raise _calls.CallError("bad_request", "`include`, `exclude` and `functions` must be lists of strings")
        try:
            self.selector = Selector(include, exclude, functions)
        except BadPattern as exc:
            raise _calls.CallError("bad_request", str(exc))
        self.args = bool(params.get("args"))
        self.returns = bool(params.get("returns"))
        rate = params.get("max_rate")
        if rate is None:
            rate = DEFAULT_MAX_RATE
        if type(rate) not in (int, float) or rate <= 0:
            raise _calls.CallError("bad_request", "`max_rate` must be a positive number of events a second")
        self.max_rate = rate
        duration = params.get("duration")
        if duration is not None and (type(duration) not in (int, float) or duration <= 0):
            raise _calls.CallError("bad_request", "`duration` must be a positive number of seconds")
        self.link = link
        self.perf0 = _now()
        self.wall0 = time.time()
        self.deadline = None if duration is None else self.perf0 + int(duration * 1e9)
        self.tracer = None
        self.backend = None
        self.codes = {}  # id -> (code, qualname, module)
        self.failed = 0
        self.recorded = 0
        self.dropped = 0
        self.ended = None  # the reason, once over
        self.watcher = _Watcher(self)
        self._fn_index = {}  # id(code) -> (file, line, qualname, module)
        self._stacks = {}  # tid -> [(code id, ts)]
        self._thread_names = {}

    def start(self):
        global _SEL
        BUFFER.clear()
        _B[0] = 0
        _B[1] = 0
        _B[2] = max(1, int(self.max_rate * WINDOW_NS / 1e9))
        _B[3] = 0
        _WITH_ARGS[0] = self.args
        _WITH_RETURNS[0] = self.returns
        found = {}
        for module in list(sys.modules.values()):
            if module is not None:
                module_codes(module, self.selector, found)
        tracer = make_tracer()
        try:
            tracer.start()
        except RuntimeError as exc:
            raise _calls.CallError("unavailable", str(exc))
        self.tracer = tracer
        self.backend = tracer.name
        self._add(found)
        self.watcher.install()

    def _add(self, found):
        global _SEL
        fresh = {k: v for k, v in found.items() if k not in self.codes}
        if not fresh:
            return
        failed = set(self.tracer.add({k: v[0] for k, v in fresh.items()}))
        self.failed += len(failed)
        for key, entry in fresh.items():
            if key not in failed:
                self.codes[key] = entry
        sel = dict(_SEL)
        sel.update((k, v[0]) for k, v in self.codes.items())
        _SEL = sel

    def on_module(self, module):
        with _lock:
            if self.ended is not None or self.tracer is None:
                return
            found = {}
            module_codes(module, self.selector, found)
            if found:
                self._add(found)

    def stop(self, reason):
        """Remove every hook; idempotent. Records already buffered stay for the last drain."""
        global _SEL
        if self.ended is not None:
            return
        self.ended = reason
        self.watcher.remove()
        tracer, self.tracer = self.tracer, None
        _SEL = {}
        if tracer is not None:
            try:
                tracer.stop()
            except Exception as exc:
                log.warning("could not remove every trace hook: %r", exc)

    def status(self):
        return {
            "id": self.id,
            "backend": self.backend,
            "tool_id": getattr(self.tracer, "tool", None),
            "functions": len(self.codes),
            "not_instrumented": self.failed,
            # Sent, plus waiting for the link (the buffer only ever holds this trace's records).
            "recorded": self.recorded + len(BUFFER),
            "dropped": self.dropped + _B[3],
            "ended": self.ended,
            "note": getattr(self.tracer, "note", None),
            "started_at": self.wall0,
        }

    # -- the link thread ---------------------------------------------------------------------

    def drain(self, max_events):
        """Up to ``max_events`` report events of kind ``trace`` (one per RECORDS_PER_EVENT)."""
        events = []
        dropped, _B[3] = _B[3], 0
        self.dropped += dropped
        first = True
        while len(events) < max_events:
            records = []
            popleft = BUFFER.popleft
            for _ in range(min(RECORDS_PER_EVENT, len(BUFFER))):
                try:
                    records.append(popleft())
                except IndexError:
                    break
            if not records and not (first and dropped):
                break
            events.append(self._event(records, dropped if first else 0))
            first = False
            if len(records) < RECORDS_PER_EVENT:
                break
        return events

    def final_event(self):
        data = {"trace": self.id, "start": self.wall0, "functions": [], "threads": {}, "records": [],
                "dropped": 0, "ended": {"reason": self.ended, "recorded": self.recorded, "dropped": self.dropped}}
        return {"kind": "trace", "source": self.id, "t": time.time(), "data": data}

    def _names(self):
        names = self._thread_names
        try:
            for thread in threading.enumerate():
                names[thread.ident] = thread.name
        except Exception:
            pass
        return names

    def _event(self, records, dropped):
        """One report event, already JSON text (the link sends it as it is): the records are
        written as text directly, which is what keeps the link thread's share of a busy trace small."""
        quote = _capture.quote
        dumps = _capture.dumps
        encode = _capture.encode
        functions = []
        fn_slots = {}
        threads = {}
        parts = []
        append = parts.append
        names = None
        perf0 = self.perf0
        stacks = self._stacks
        for kind, code, t, tid, value in records:
            ts = t - perf0
            if tid not in threads:
                if names is None:
                    names = self._names()
                threads[tid] = names.get(tid, "thread-{}".format(tid))
            if kind == PULSE:
                append('{"e":"pulse","tid":%d,"ts":%d,"name":%s,"values":%s}' % (
                    tid, ts, quote(code), dumps({k: encode(v, LIMITS) for k, v in value})))
                continue
            key = id(code)
            slot = fn_slots.get(key)
            if slot is None:
                slot = fn_slots[key] = len(functions)
                functions.append(self._function(code))
            stack = stacks.get(tid)
            if stack is None:
                stack = stacks[tid] = []
            if kind == CALL or kind == RESUME:
                depth = len(stack)
                stack.append((key, ts))
                if kind == CALL:
                    if value is not None:
                        append('{"e":"call","f":%d,"tid":%d,"ts":%d,"depth":%d,"args":%s}' % (
                            slot, tid, ts, depth, dumps(self._args(code, value))))
                    else:
                        append('{"e":"call","f":%d,"tid":%d,"ts":%d,"depth":%d}' % (slot, tid, ts, depth))
                else:
                    append('{"e":"resume","f":%d,"tid":%d,"ts":%d,"depth":%d}' % (slot, tid, ts, depth))
                continue
            if kind == RAISE:
                append('{"e":"raise","f":%d,"tid":%d,"ts":%d,"depth":%d,"exc":%s}' % (
                    slot, tid, ts, max(0, len(stack) - 1), dumps({"type": value[0], "message": value[1]})))
                continue
            # Pop to the matching entry (entries above it lost their exit to the budget).
            dur = ""
            depth = len(stack)
            for i in range(len(stack) - 1, -1, -1):
                if stack[i][0] == key:
                    dur = ',"dur":%d' % (ts - stack[i][1])
                    depth = i
                    del stack[i:]
                    break
            if kind == EXCEPTION:
                extra = ',"exc":' + dumps({"type": value[0], "message": value[1]})
            elif self.returns:
                extra = ',"value":' + _capture.to_json(value, LIMITS)
            else:
                extra = ""
            append('{"e":"%s","f":%d,"tid":%d,"ts":%d,"depth":%d%s%s}' % (
                KIND_NAMES[kind], slot, tid, ts, depth, dur, extra))
        self.recorded += len(parts)
        t = self.wall0 + (records[0][2] - perf0) / 1e9 if records else time.time()
        return '{"kind":"trace","source":%s,"t":%s,"data":{"trace":%s,"start":%s,"functions":%s,"threads":%s,"records":[%s],"dropped":%d}}' % (
            quote(self.id), repr(float(t)), quote(self.id), repr(float(self.wall0)), dumps(functions),
            dumps({str(k): v for k, v in threads.items()}), ",".join(parts), dropped)

    def _function(self, code):
        entry = self.codes.get(id(code))
        qualname = entry[1] if entry else _locate.code_name(code)
        module = entry[2] if entry else None
        return {"function": qualname, "module": module, "file": code.co_filename, "line": code.co_firstlineno}

    @staticmethod
    def _args(code, values):
        n = len(values)
        out = {}
        for name, value in zip(code.co_varnames[:n], values):
            if _capture.is_secret(name):
                out[name] = {"t": "redacted"}
            else:
                out[name] = _capture.encode(value, LIMITS)
        return out


class _Watcher(_locate.ImportWatcher):
    """Tells the trace about every module that may hold selected code, right after it ran."""

    def __init__(self, trace):
        _locate.ImportWatcher.__init__(self, trace.on_module)
        self._selector = trace.selector

    def install(self):
        _locate.ImportWatcher.install(self, (), ())

    def _wanted(self, fullname):
        return self._selector.import_wanted(fullname)


# -- the calls -------------------------------------------------------------------------------------


@_calls.method("trace.start")
def _start(params, call):
    """Start tracing: params ``{id, include, exclude, functions, args, returns, max_rate, duration}``."""
    global _current
    with _lock:
        if _current is not None and _current.ended is None:
            raise _calls.CallError(
                "busy", "trace {} is running in this process; stop it first".format(_current.id)
            )
        trace = Trace(params, call.link)
        trace.start()
        _current = trace
        return trace.status()


@_calls.method("trace.stop")
def _stop(params, call):
    """Stop the trace (``{id}`` optional): its counters; every hook is gone when this answers."""
    with _lock:
        trace = _current
        wanted = params.get("id")
        if trace is None or (wanted is not None and wanted != trace.id):
            raise _calls.CallError("not_found", "no trace {}is running in this process".format(
                "{} ".format(wanted) if wanted else ""))
        if trace.ended is None:
            trace.stop("stopped")
        return trace.status()


@_calls.method("trace.status")
def _status(params, call):
    with _lock:
        return _current.status() if _current is not None else None


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
    return bool(_SEL)


def pump(link, max_events):
    """For the link thread: the trace's events due now (and the last ones of a trace that ended)."""
    global _current
    trace = _current
    if trace is None or trace.link is not link:
        return []
    if trace.ended is None and trace.deadline is not None and _now() >= trace.deadline:
        with _lock:
            trace.stop("duration")
    events = trace.drain(max_events)
    if trace.ended is not None and not BUFFER:
        events.append(trace.final_event())
        with _lock:
            if _current is trace:
                _current = None
    return events


def link_closed(link):
    """The link that started the trace ended (sleep, shutdown): the trace ends with it."""
    global _current
    with _lock:
        trace = _current
        if trace is not None and trace.link is link:
            trace.stop("disconnected")
            BUFFER.clear()
            _current = None


def pulse(name, values, link):
    """``scry.pulse``: into the running trace, else as a ``pulse`` event when a link is up, else
    nothing. Never raises."""
    try:
        name = str(name)[:200]
        trace = _current
        if trace is not None and trace.ended is None:
            t = _now()
            b = _B
            if t >= b[1]:
                _new_window(t)
            if b[0] >= b[2]:
                b[3] += 1
                return
            b[0] += 1
            _append((PULSE, name, t, _ident(), tuple((str(k), _value(v)) for k, v in values.items())))
            return
        if link is None:
            return
        data = {"name": name, "values": {str(k): _capture.encode(_value(v), LIMITS) for k, v in values.items()}}
        link.send_report([{"kind": "pulse", "source": name, "t": time.time(), "data": data}])
    except KeyboardInterrupt:
        raise
    except BaseException:
        pass


def _after_fork_in_child():
    global _current, _SEL
    trace, _current = _current, None
    _SEL = {}
    BUFFER.clear()
    if trace is not None and trace.tracer is not None:
        try:
            trace.watcher.remove()
            trace.tracer.stop_in_child()
        except Exception:
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

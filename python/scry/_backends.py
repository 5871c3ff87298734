"""The ways of getting control when a probed line runs: ``sys.monitoring`` (3.12+), bytecode
injection (3.8, 3.9, 3.11) and ``settrace`` (3.10, which has no injection layout).

Both implement the same small interface, driven by the engine under its lock:

* ``start()`` takes what the backend needs (a tool id, a trace function in every thread); raises
  :class:`Unavailable` with a reason when it cannot (no free tool id, another tracer is active);
* ``apply(wanted)`` makes the instrumented set exactly ``wanted``, a dict ``id(code) -> (code,
  {line: Site})``, and returns ``{id(code): why}`` for code objects it could not instrument;
* ``stop()`` removes every hook, so that nothing of ours remains; ``stop_in_child()`` does the
  same after ``fork()`` without taking any lock;
* ``note`` is None, or says what the backend does not cover (it goes into the armed probes' reason).

**sys.monitoring (3.12+).** A free tool id (4, then 3, then the others; never evicting anyone),
one LINE callback, and ``set_local_events`` only on the code objects that hold a probe (3.13+:
also PY_START, without a callback, for one-line code; see ``_features``). Lines without a probe
return DISABLE once. A code object whose probed lines change is re-armed with
``set_local_events(code, 0)`` then the new mask, which clears its DISABLEd lines without the global
``restart_events()``. The bytecode is instrumented in place, so frames already running report.

**Bytecode injection (3.8, 3.9, 3.11).** See :class:`InjectionBackend`: the probed code runs a
copy that calls the line's hook; nothing else is touched. Measured on 3.12+ too (``bench/dispatch.py``):
an injected call dispatches in ~85 ns against ~190 ns for a LINE callback, but sys.monitoring stays
the backend there: it instruments frames that are already running in place, and needs no bytecode
layout per minor version (docs/performance.md).

**settrace (3.10).** A global trace function that returns a local tracer only for frames of
probed code objects (``None`` at once for every other call), installed in every thread by
``_threadtrace`` only while probes are armed, plus ``frame.f_trace`` on the frames of probed code
that are running now (every thread), so that a loop already in progress reports.
"""

import sys
import threading
import types
import weakref

from . import _features, _hit, _locate
from ._threadtrace import OtherTracer, ThreadTracer

if _features.INJECTION_LAYOUT is not None:
    # Imported now, not when the first probe arms: an agent placed by `scry attach` is imported from
    # a directory that is removed once it runs.
    from . import _inject
    from ._inject import swap as _swap
else:  # pragma: no cover - 3.10 and 3.12+
    _inject = _swap = None

_hit_site = _hit.hit
_FunctionType = types.FunctionType


class Unavailable(Exception):
    """The backend cannot run in this process now; the message is the probes' reason."""


# -- sys.monitoring ----------------------------------------------------------------------------------

#: line -> ((code, site), ...): what the LINE callback looks up. Rebound whole, never mutated.
_LINES = {}

if _features.MONITORING is not None:
    _DISABLE = _features.MONITORING.DISABLE
    _LINE = _features.MONITORING.events.LINE
    _PY_START = _features.MONITORING.events.PY_START
else:  # pragma: no cover - only on 3.12+
    _DISABLE = _LINE = _PY_START = None

_getframe = sys._getframe
_current_frames = sys._current_frames
_weakref = weakref.ref


def _on_line(code, line):
    """The LINE callback: DISABLE for every line without a site.

    A site whose probes just went (removed or retired by another thread) is not DISABLEd: the
    engine re-arms a code object only when its set of lines changes, so a line that stays in the
    set must never be disabled.
    """
    try:
        entries = _LINES.get(line)
        if entries is not None:
            for entry_code, site in entries:
                if entry_code is code:
                    if site.probes:
                        _hit_site(site, _getframe(1))
                    return None
        return _DISABLE
    except KeyboardInterrupt:
        raise
    except BaseException:
        return None


TOOL_NAME = "scry"
_TOOL_ORDER = (4, 3, 0, 1, 2, 5)


class MonitoringBackend(object):
    """Probes through ``sys.monitoring`` (see the module docstring)."""

    name = "sys.monitoring"

    def __init__(self):
        self.tool = None
        self.note = None
        self._codes = {}  # id(code) -> (code, frozenset(lines), mask)

    def start(self):
        mon = _features.MONITORING
        try:
            self.tool = _features.claim_monitoring_tool(_TOOL_ORDER, TOOL_NAME)
        except RuntimeError as exc:
            raise Unavailable(str(exc))
        mon.register_callback(self.tool, _LINE, _on_line)

    def apply(self, wanted):
        global _LINES
        mon = _features.MONITORING
        tool = self.tool
        failed = {}
        table = {}
        plan = []
        for key, (code, sites) in wanted.items():
            lines = frozenset(sites)
            mask = _LINE
            if _features.LINE_NEEDS_PY_START and _first_line(code) in lines:
                mask |= _PY_START
            plan.append((key, code, lines, mask))
            for line, site in sites.items():
                table.setdefault(line, []).append((code, site))
        # Publish the new table before any code object starts reporting new lines.
        _LINES = {line: tuple(entries) for line, entries in table.items()}
        for key, code, lines, mask in plan:
            old = self._codes.get(key)
            if old is not None and old[1] == lines and old[2] == mask:
                continue
            try:
                if old is not None:
                    mon.set_local_events(tool, code, 0)  # clears lines we DISABLEd before
                mon.set_local_events(tool, code, mask)
            except Exception as exc:  # e.g. "cannot instrument shim code object"
                failed[key] = "cannot instrument {}: {}".format(_locate.code_name(code), exc)
                self._codes.pop(key, None)
                continue
            self._codes[key] = (code, lines, mask)
        for key in [k for k in self._codes if k not in wanted]:
            code = self._codes.pop(key)[0]
            try:
                mon.set_local_events(tool, code, 0)
            except Exception:
                pass
        if failed:
            _LINES = {
                line: tuple(e for e in entries if id(e[0]) not in failed) for line, entries in _LINES.items()
            }
        return failed

    def stop(self):
        global _LINES
        tool = self.tool
        if tool is None:
            return
        self.tool = None
        codes, self._codes = self._codes, {}
        _features.release_monitoring_tool(
            tool, TOOL_NAME, [code for code, _lines, _mask in codes.values()], (_LINE, _PY_START)
        )
        _LINES = {}

    stop_in_child = stop


def _first_line(code):
    for line in _locate.raw_lines(code):
        return line
    return None


# -- settrace ------------------------------------------------------------------------------------

#: id(code) -> its local tracer. Rebound whole, never mutated.
_TRACERS = {}


def _global_trace(frame, event, arg):
    """The trace function of every thread: a local tracer for probed code, None for the rest."""
    return _TRACERS.get(id(frame.f_code))


def _make_local(state):
    """The local trace function of one probed code object. ``state`` is ``[sites]``: the engine
    replaces ``state[0]`` when the code's probes change, and sets it to None when they are gone."""

    def local(frame, event, arg):
        try:
            if event == "line":
                sites = state[0]
                if sites is not None:
                    site = sites.get(frame.f_lineno)
                    if site is not None and site.probes:
                        _hit_site(site, frame)
        except KeyboardInterrupt:
            raise
        except BaseException:
            pass
        # Checked last, with no call in between: when the probes went while this call ran, the
        # frame must not get this tracer back (CPython stores what a trace function returns).
        if state[0] is None:
            frame.f_trace = None
            return None
        return local

    return local


#: Every local tracer shares this code object: how our f_trace values are recognised.
_LOCAL_CODE = _make_local([None]).__code__


def is_local_tracer(obj):
    """Whether ``obj`` (a frame's f_trace) is one of our local tracers."""
    return type(obj) is _FunctionType and obj.__code__ is _LOCAL_CODE


def _untrace_frames(frames):
    """Take our local tracers off ``frames`` (None entries are skipped)."""
    for frame in frames:
        if frame is not None and is_local_tracer(frame.f_trace):
            frame.f_trace = None


class TraceBackend(object):
    """Probes through a trace function (see the module docstring)."""

    name = "settrace"

    def __init__(self):
        self.note = None
        self._threads = ThreadTracer(_global_trace)
        self._tracers = {}  # id(code) -> (code, local tracer, its state)

    def start(self):
        try:
            self._threads.install()
        except OtherTracer as exc:
            raise Unavailable(
                "another trace function is active ({}); probes need sys.settrace on Python {}.{} "
                "(sys.monitoring arrives in 3.12): stop the other tracer (a debugger, coverage) "
                "first".format(exc, *_features.PY)
            )
        self.note = self._threads.note

    def apply(self, wanted):
        global _TRACERS
        added = []
        for key, (code, sites) in wanted.items():
            entry = self._tracers.get(key)
            if entry is None:
                state = [dict(sites)]
                tracer = _make_local(state)
                self._tracers[key] = (code, tracer, state)
                added.append((code, tracer))
            else:
                entry[2][0] = dict(sites)
        for key in [k for k in self._tracers if k not in wanted]:
            self._tracers.pop(key)[2][0] = None
        _TRACERS = {key: entry[1] for key, entry in self._tracers.items()}
        if added:
            by_code = dict((id(code), tracer) for code, tracer in added)
            for frame in _locate.running_frames():
                tracer = by_code.get(id(frame.f_code))
                if tracer is not None and frame.f_trace is None:
                    frame.f_trace = tracer
        return {}

    def stop(self):
        global _TRACERS
        _TRACERS = {}
        tracers, self._tracers = self._tracers, {}
        for entry in tracers.values():
            entry[2][0] = None
        self._threads.remove()
        _untrace_frames(_locate.running_frames())

    def stop_in_child(self):
        global _TRACERS
        _TRACERS = {}
        for entry in self._tracers.values():
            entry[2][0] = None
        self._tracers = {}
        self._threads.remove_in_child()
        try:
            frame = sys._getframe()
            while frame is not None:
                if is_local_tracer(frame.f_trace):
                    frame.f_trace = None
                frame = frame.f_back
        except Exception:
            pass


# -- bytecode injection ------------------------------------------------------------------------------


class LineHook(object):
    """What an injected line calls: one per probed (original code, line), kept across syncs, so
    that a copy made once keeps working when the probes of its line change (``site`` is replaced)
    and does nothing once they are gone (``site`` is None)."""

    __slots__ = ("site", "fire")

    def __init__(self):
        self.site = None
        hook = self

        def fire():
            site = hook.site
            if site is not None and site.probes:
                _hit_site(site, _getframe(1))

        self.fire = fire


def _quiet_trace(frame, event, arg):
    """The trace function of a thread that runs code from before a probe: new calls untraced."""
    return None


class InjectionBackend(object):
    """Probes through bytecode injection (3.8, 3.9, 3.11; see ``_inject``).

    A probed code object is replaced, in every function that runs it, by a copy that calls the
    line's :class:`LineHook`; removing the probe puts the original back. Untraced code pays
    nothing. What cannot switch code (frames already running a probed function, generators and
    coroutines suspended in one) gets a local tracer on those frames, and a trace function in their
    threads only (every thread for suspended ones, which may resume anywhere) until they finish:
    :meth:`refresh` (each flush of the link) notices when they have, and ``note`` says what is
    followed that way and what it costs.
    """

    name = "bytecode"

    def __init__(self):
        self.note = None
        self._hooks = {}  # (id(original), line) -> LineHook
        self._wanted = {}  # id(original) -> (original, {line: site})
        self._swapper = _swap.SWAPPER
        self._generator_frame = _swap.generator_frame
        self._tracers = {}  # id(running code) -> (code, local tracer, its state)
        self._threads = None  # the ThreadTracer of the frames from before, while there are any
        self._traced = None  # the thread idents it covers (None: every thread)
        self._generators = []  # weak references to suspended generators followed by a tracer

    def start(self):
        if _inject is None or _inject.LAYOUT is None:
            raise Unavailable(_inject.REASON if _inject is not None else _features.BACKEND_REASON)

    def _hook_of(self, original, line):
        return self._hooks[(id(original), line)].fire

    def apply(self, wanted):
        for key, (_code, sites) in wanted.items():
            for line, site in sites.items():
                hook = self._hooks.get((key, line))
                if hook is None:
                    hook = self._hooks[(key, line)] = LineHook()
                hook.site = site
        # A hook whose line is not probed any more stays (until the backend stops), doing
        # nothing: copies that still run hold it, and light up again if the line is probed again.
        for hook_key, hook in self._hooks.items():
            entry = wanted.get(hook_key[0])
            if entry is None or hook_key[1] not in entry[1]:
                hook.site = None
        self._wanted = dict(wanted)
        failed, generators = self._swapper.set_lines(
            {key: (code, frozenset(sites)) for key, (code, sites) in wanted.items()}, self._hook_of
        )
        self._follow(generators)
        return failed

    def original(self, code):
        """The code object ``code`` is a copy of (itself when it is not one of ours): the engine
        finds code through functions, which may run copies, and must name the original."""
        return self._swapper.original(code)

    # -- frames that run code from before ------------------------------------------------------

    def _tracer(self, code, missing):
        entry = self._tracers.get(id(code))
        if entry is None:
            state = [missing]
            entry = self._tracers[id(code)] = (code, _make_local(state), state)
        else:
            entry[2][0] = missing
        return entry[1]

    def _missing(self, code):
        """The wanted sites ``code`` has no hook for (None when it is not probed code)."""
        entry = self._wanted.get(id(self._swapper.original(code)))
        if entry is None:
            return None
        hooked = self._swapper.hooked_lines(code)
        missing = {line: site for line, site in entry[1].items() if line not in hooked}
        return missing or None

    def _follow(self, generators=None):
        """Put local tracers on the frames that run code from before and trace their threads;
        True when what is followed changed."""
        used = set()

        def cover(frame):
            """Give ``frame`` the tracer of the lines its code misses; False when it misses none."""
            missing = self._missing(frame.f_code)
            if missing is None:
                return False
            tracer = self._tracer(frame.f_code, missing)
            used.add(id(frame.f_code))
            if frame.f_trace is not tracer:
                frame.f_trace = tracer
            return True

        threads = {}  # ident -> names of the functions followed there
        for ident, frame in _current_frames().items():
            hops = 0
            while frame is not None and hops < 10000:
                if cover(frame):
                    threads.setdefault(ident, []).append(frame.f_code.co_name)
                frame = frame.f_back
                hops += 1
        if generators is not None:
            self._generators = []
            for gen in generators:
                try:
                    self._generators.append(_weakref(gen))
                except TypeError:
                    pass
        suspended = 0
        alive = []
        for ref in self._generators:
            gen = ref()
            frame = self._generator_frame(gen) if gen is not None else None
            if frame is not None and cover(frame):
                alive.append(ref)
                suspended += 1
        self._generators = alive
        for key in [k for k in self._tracers if k not in used]:
            self._tracers.pop(key)[2][0] = None
        wanted_threads = None if suspended else set(threads)
        if not threads and not suspended:
            changed = self._threads is not None
            self._untrace()
            self.note = None
            return changed
        if self._threads is not None and self._traced == wanted_threads:
            return False
        self._untrace()
        self._threads = ThreadTracer(_quiet_trace)
        try:
            self._threads.install(only=wanted_threads)
        except OtherTracer as exc:
            self._threads = None
            self.note = (
                "code that was already running when the probe was armed is not covered: another "
                "trace function is active ({})".format(exc)
            )
            return True
        self._traced = wanted_threads
        names = {}
        for thread in threading.enumerate():
            names[thread.ident] = thread.name
        where = "; ".join(
            "{} in thread {}".format(", ".join(sorted(set(funcs))), names.get(ident, ident))
            for ident, funcs in sorted(threads.items(), key=lambda item: str(names.get(item[0])))
        )
        parts = []
        if threads:
            parts.append(
                "frames running since before the probe ({}) report through a trace function in "
                "their thread until they return; that thread runs slower meanwhile".format(where)
            )
        if suspended:
            parts.append(
                "{} suspended generator(s) or coroutine(s) of probed code report through a trace "
                "function in every thread until they finish; the process runs slower "
                "meanwhile".format(suspended)
            )
        if self._threads.note and wanted_threads is not None:
            parts.append(self._threads.note)
        self.note = "; ".join(parts)
        return True

    def refresh(self):
        """From the link thread, each flush: stop following frames that are gone. True when the
        note changed."""
        if self._threads is None and not self._generators:
            return False
        before = self.note
        self._follow()
        return self.note != before

    def _untrace(self):
        threads, self._threads = self._threads, None
        self._traced = None
        if threads is not None:
            threads.remove()

    def stop(self):
        for hook in self._hooks.values():
            hook.site = None
        self._hooks = {}
        self._wanted = {}
        self._swapper.set_lines({}, None)
        tracers, self._tracers = self._tracers, {}
        for entry in tracers.values():
            entry[2][0] = None
        self._untrace()
        suspended = [ref() for ref in self._generators]
        _untrace_frames(_locate.running_frames() + [self._generator_frame(g) for g in suspended if g is not None])
        self._generators = []
        self.note = None

    def stop_in_child(self):
        for hook in self._hooks.values():
            hook.site = None
        self._swapper.reset_in_child()
        for entry in self._tracers.values():
            entry[2][0] = None
        self._tracers = {}
        threads, self._threads = self._threads, None
        if threads is not None:
            threads.remove_in_child()


def make_backend(name=None):
    """The backend this interpreter uses (see ``_features.BACKEND``), or the one named."""
    name = name or _features.BACKEND
    if name == "sys.monitoring":
        return MonitoringBackend()
    if name == "bytecode":
        return InjectionBackend()
    return TraceBackend()

"""Call tracing of selected functions: ``trace.start`` / ``trace.stop`` / ``trace.status``.

One :class:`Trace` runs at a time in a process, started by the daemon through the link that
asked for it. Starting it walks every loaded module for the selected code (``_trace_select``),
hands that code to the backend this interpreter offers (``_trace_backends``) and, until it stops,
installs an import hook (``_locate.ImportWatcher``) that walks each module that may match right
after it has executed. The trace sets the budget (``max_rate``) and what records carry (arguments,
returned values) for the backend's hooks, and ends when asked, when its ``duration`` is over, or
when its link closes.

The link thread drains the records each flush (the :class:`TraceProducer` registered with
``_producers``) into report events of kind ``trace`` (docs/protocol.md "Trace events"), already
JSON text; the last one says how the trace ended. ``scry.pulse`` goes into the running trace as a
record, else out as a ``pulse`` event.

Not for: hooking the interpreter (``_trace_backends``) or matching patterns (``_trace_select``).
"""

import logging
import os
import sys
import threading
import time

from . import _calls, _capture, _locate, _producers, _trace_backends
from ._trace_backends import (
    BUDGET,
    BUFFER,
    CALL,
    EXCEPTION,
    KIND_NAMES,
    LIMITS,
    PULSE,
    RAISE,
    RESUME,
    WINDOW_NS,
    WITH_ARGS,
    WITH_RETURNS,
    make_tracer,
    new_window,
    record_value,
)
from ._trace_select import BadPattern, Selector, module_codes

log = logging.getLogger("scry")

#: Default events a second (per process).
DEFAULT_MAX_RATE = 200000
#: Records per report event.
RECORDS_PER_EVENT = 1000
#: Trace events (of up to RECORDS_PER_EVENT records each) the link takes per flush.
EVENTS_PER_FLUSH = 64

_append = BUFFER.append
_now = time.perf_counter_ns
_ident = threading.get_ident

_lock = threading.RLock()
_current = None  # the running Trace


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
        BUFFER.clear()
        BUDGET[0] = 0
        BUDGET[1] = 0
        BUDGET[2] = max(1, int(self.max_rate * WINDOW_NS / 1e9))
        BUDGET[3] = 0
        WITH_ARGS[0] = self.args
        WITH_RETURNS[0] = self.returns
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
        fresh = {k: v for k, v in found.items() if k not in self.codes}
        if not fresh:
            return
        failed = set(self.tracer.add({k: v[0] for k, v in fresh.items()}))
        self.failed += len(failed)
        for key, entry in fresh.items():
            if key not in failed:
                self.codes[key] = entry
        sel = dict(_trace_backends.SELECTED)
        sel.update((k, v[0]) for k, v in self.codes.items())
        _trace_backends.SELECTED = sel

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
        if self.ended is not None:
            return
        self.ended = reason
        self.watcher.remove()
        tracer, self.tracer = self.tracer, None
        _trace_backends.SELECTED = {}
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
            "dropped": self.dropped + BUDGET[3],
            "ended": self.ended,
            "note": getattr(self.tracer, "note", None),
            "started_at": self.wall0,
        }

    # -- the link thread ---------------------------------------------------------------------

    def drain(self, max_events):
        """Up to ``max_events`` report events of kind ``trace`` (one per RECORDS_PER_EVENT)."""
        events = []
        dropped, BUDGET[3] = BUDGET[3], 0
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


class TraceProducer(_producers.Producer):
    """What one link ships of the trace it started: the trace's events (:func:`pump`); the trace
    ends with the link (:func:`link_closed`)."""

    what = "trace events"

    def __init__(self, link):
        self.link = link

    def drain(self, room, flush_max):
        return pump(self.link, EVENTS_PER_FLUSH), 0, ()

    def backlog(self, max_batch):
        return len(BUFFER) >= EVENTS_PER_FLUSH * RECORDS_PER_EVENT

    def link_closed(self):
        link_closed(self.link)


# After the log records, before the probe hits (see ``_producers``).
_producers.register(TraceProducer, order=1)


def pulse(name, values, link):
    """``scry.pulse``: into the running trace, else as a ``pulse`` event when a link is up, else
    nothing. Never raises."""
    try:
        name = str(name)[:200]
        trace = _current
        if trace is not None and trace.ended is None:
            t = _now()
            b = BUDGET
            if t >= b[1]:
                new_window(t)
            if b[0] >= b[2]:
                b[3] += 1
                return
            b[0] += 1
            _append((PULSE, name, t, _ident(), tuple((str(k), record_value(v)) for k, v in values.items())))
            return
        if link is None:
            return
        data = {"name": name, "values": {str(k): _capture.encode(record_value(v), LIMITS) for k, v in values.items()}}
        link.send_report([{"kind": "pulse", "source": name, "t": time.time(), "data": data}])
    except KeyboardInterrupt:
        raise
    except BaseException:
        pass


def _after_fork_in_child():
    global _current
    trace, _current = _current, None
    _trace_backends.SELECTED = {}
    BUFFER.clear()
    if trace is not None and trace.tracer is not None:
        try:
            trace.watcher.remove()
            trace.tracer.stop_in_child()
        except Exception:
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

"""The hit path: what runs on the program's own thread each time a probed line executes.

Both backends call :func:`hit` with the line's :class:`Site` and the frame. For each probe of the
site it counts the hit, checks the TTL, evaluates the condition, applies the rate mode, evaluates
the expressions (one code object for all of them), takes a monotonic timestamp and the thread id,
and appends ONE tuple to :data:`BUFFER` (a bounded ``deque``; when full the hit is counted as
dropped). Immutable primitives are kept as they are; everything else is snapshotted now, bounded
(see ``_capture``). No lock, no import, no I/O, no formatting of values here: the link thread
drains the buffer and encodes.

Conditions are evaluated before the rate mode so that ``first N`` means the first N hits where the
condition holds and ``rate R`` spends its budget on hits that are recorded.

Every exception is caught. A raising condition counts an error (the hit is not recorded); raising
expressions record the hit with ``{"t": "error"}`` values for them, at most ERRORS_PER_SECOND times
a second per probe when all of them raised; MAX_FAILS consecutive failing hits (the condition or
every expression raised) disarm the probe (``failing``). An exception in this
module's own code disarms the probe with ``internal``. A probe disarmed here (also ``first N`` done,
TTL over) leaves its sites at once and is queued in :data:`CHANGED` for the engine, which removes
the hooks and reports the state from the link thread. ``KeyboardInterrupt`` is the only exception
let through: it is the program's own Ctrl-C, arriving while our code happened to run.
"""

import collections
import os
import threading
import time

from . import _capture, _features, _probes

#: How many hits wait for the link thread at most; more are counted as dropped.
MAX_HITS = 65536
#: Raising hits recorded per probe and second; more are only counted.
ERRORS_PER_SECOND = 10
#: Consecutive failing hits after which a probe disarms itself.
MAX_FAILS = 100

#: The hits: (probe, site, monotonic ns, thread ident, value) for plain probes, with (..., stack or
#: None, locals or None) after it for the others. ``value`` is the expression's value for a probe
#: with one expression, else the tuple of values.
BUFFER = collections.deque()
#: Probes the hit path disarmed (expired, failing, internal error), for the engine to clean up.
CHANGED = collections.deque()
#: Hits lost because BUFFER was full, since the link last looked ([count], mutated in place).
LOST = [0]

_mono = time.monotonic_ns
_ident = threading.get_ident
_PRIMS = _capture.PRIMITIVES
_Scope = _probes.Scope
_snapshot = _capture.snapshot
_error_value = _capture.error_value
_capture_locals = _capture.capture_locals
_FIRST = _probes.FIRST
_SAMPLE = _probes.SAMPLE
_RATE = _probes.RATE
_ARMED = _probes.ARMED
_EXPIRED = _probes.EXPIRED
_ERROR = _probes.ERROR
_Refused = _probes.Refused
_OWN = os.path.dirname(os.path.abspath(__file__)) + os.sep
_QUALNAME = _features.HAS_CO_QUALNAME


class Site(object):
    """One probed line of one code object: the probes armed there and what events report."""

    __slots__ = ("code", "line", "probes", "file", "function")

    def __init__(self, code, line, probes, file, function):
        self.code = code
        self.line = line
        self.probes = probes
        self.file = file
        self.function = function


def hit(site, frame):
    """Record the hit of every probe of ``site`` in ``frame``. Never raises (but Ctrl-C)."""
    buf = BUFFER
    for p in site.probes:
        try:
            if p.plain:
                # Plain probes count their hits as recorded + not recorded (one update a hit).
                # The common case, kept short: no condition, rate mode or TTL, no stack or locals.
                try:
                    name = p.name
                    if name is not None:
                        try:
                            value = frame.f_locals[name]
                        except KeyError:
                            value = _slow(p, p.code, frame.f_globals, frame.f_locals)
                    else:
                        fast = p.fast
                        if fast is not None:
                            try:
                                value = fast(frame.f_locals)
                            except KeyError:
                                value = _slow(p, p.code, frame.f_globals, frame.f_locals)
                        else:
                            value = eval(p.code, frame.f_globals, frame.f_locals)
                    if p.fails:
                        p.fails = 0
                    if p.single:
                        if type(value) not in _PRIMS:
                            value = _snapshot(value, p.limits, p.repr)
                    else:
                        for v in value:
                            if type(v) not in _PRIMS:
                                value = _snapshot_all(p, value)
                                break
                except KeyboardInterrupt:
                    raise
                except _Refused:
                    raise  # disarms, below
                except BaseException as exc:
                    value = _after_error(p, exc, frame.f_globals, frame.f_locals)
                    if value is _SKIP:
                        p.hits += 1
                        continue
                if len(buf) >= MAX_HITS:
                    p.hits += 1
                    p.dropped += 1
                    LOST[0] += 1
                    continue
                buf.append((p, site, _mono(), _ident(), value))
                p.recorded += 1
                continue
            p.hits += 1
            _record(p, site, frame, buf)
        except KeyboardInterrupt:
            raise
        except _Refused as exc:
            # A guard refused before computing (a result past a bound, a receiver that is not a
            # builtin type): evaluating this probe again would only be refused again.
            retire(p, _ERROR, "refused", "refused: {}".format(exc))
        except BaseException as exc:
            retire(p, _ERROR, "internal", "internal error in scry's probe engine: {}: {}".format(type(exc).__name__, exc))


def _record(p, site, frame, buf):
    """The general case: TTL, condition, rate mode, metric probes, stack and locals."""
    if p.deadline_ns is not None and _mono() >= p.deadline_ns:
        retire(p, _EXPIRED, None, "its time to live is over")
        return
    g = frame.f_globals
    loc = frame.f_locals
    cond = p.cond
    if cond is not None:
        try:
            if not _value(p, p.fast_cond, cond, g, loc):
                p.fails = 0
                return
        except KeyboardInterrupt:
            raise
        except _Refused:
            raise
        except BaseException as exc:
            _failed(p, exc)
            return
    if p.mode and not _admit(p):
        p.dropped += 1
        return
    metric = p.metric
    try:
        value = _value(p, p.fast, p.code, g, loc)
        p.fails = 0
        if metric is None:  # a metric probe's values are aggregated below, never snapshotted
            if p.single:
                if type(value) not in _PRIMS:
                    value = _snapshot(value, p.limits, p.repr)
            else:
                for v in value:
                    if type(v) not in _PRIMS:
                        value = _snapshot_all(p, value)
                        break
    except KeyboardInterrupt:
        raise
    except _Refused:
        raise
    except BaseException as exc:
        if metric is not None:
            _failed(p, exc)
            return
        value = _after_error(p, exc, g, loc)
        if value is _SKIP:
            return
    if metric is not None:
        # A metric probe ships no hit: only its aggregate goes to the link, once a second. (A
        # `count` without labels has no expression: its code makes the empty tuple.)
        metric.observe((value,) if p.single else value)
        p.recorded += 1
        return
    stack = _stack(frame) if p.stack else None
    local_values = _capture_locals(frame.f_locals, p.limits, p.repr) if p.locals else None
    if len(buf) >= MAX_HITS:
        p.dropped += 1
        LOST[0] += 1
        return
    buf.append((p, site, _mono(), _ident(), value, stack, local_values))
    p.recorded += 1
    if p.mode == _FIRST and p.recorded >= p.n:
        retire(p, _EXPIRED, None, "recorded its first {} hits".format(p.n))


def _value(p, fast, code, g, loc):
    """Evaluate one of the probe's code objects: the specialised function when there is one."""
    if fast is not None:
        try:
            return fast(loc)
        except KeyError:
            pass
    return _slow(p, code, g, loc)


def _slow(p, code, g, loc):
    """``eval`` in the frame's namespaces (with the probe's builtins when it calls some)."""
    if p.scoped:
        scope = _Scope(p.helpers)
        scope.loc = loc
        loc = scope
    return eval(code, g, loc)


def _admit(p):
    """The rate mode's verdict on a hit whose condition held."""
    mode = p.mode
    if mode == _SAMPLE:
        count = p.count
        p.count = count + 1
        return count % p.n == 0
    if mode == _RATE:
        now = _mono()
        tokens = p.tokens
        last = p.last_ns
        if last is not None:
            tokens += (now - last) * p.per_ns
            if tokens > p.cap:
                tokens = p.cap
        p.last_ns = now
        if tokens >= 1.0:
            p.tokens = tokens - 1.0
            return True
        p.tokens = tokens
        return False
    if mode == _FIRST:
        return p.recorded < p.n
    return True


def _failed(p, exc):
    """Count a raising hit; True when it may still be recorded (under the per-second budget)."""
    p.errors += 1
    p.fails += 1
    if p.fails >= MAX_FAILS:
        retire(
            p,
            _ERROR,
            "failing",
            "its evaluation failed on {} consecutive hits; the last: {}: {}".format(
                MAX_FAILS, type(exc).__name__, _error_value(exc)["message"]
            ),
        )
        return False
    second = _mono() // 1000000000
    if second != p.err_window:
        p.err_window = second
        p.err_in_window = 0
    p.err_in_window += 1
    return p.err_in_window <= ERRORS_PER_SECOND


_SKIP = object()


def _after_error(p, exc, g, loc):
    """The expressions raised: evaluate them one by one to tell which. Returns the values to
    record (error values for the ones that raised), or _SKIP when the hit is not recorded.

    A hit fails when every expression raised: it counts towards MAX_FAILS and is recorded at most
    ERRORS_PER_SECOND times a second. A hit where only some raised counts an error and is recorded
    (the others' values are worth having), and it breaks a run of failures.
    """
    if p.scoped and type(loc) is not _Scope:
        scope = _Scope(p.helpers)
        scope.loc = loc
        loc = scope
    out = []
    raised = 0
    limits = p.limits
    for code in p.codes:
        try:
            v = eval(code, g, loc)
        except KeyboardInterrupt:
            raise
        except _Refused:
            raise
        except BaseException as each_exc:
            out.append(_error_value(each_exc, limits[2]))
            raised += 1
            exc = each_exc
            continue
        out.append(v if type(v) in _PRIMS else _snapshot(v, limits, p.repr))
    if raised == len(out):
        if not _failed(p, exc):
            return _SKIP
    elif raised:
        p.errors += 1
        p.fails = 0
    else:
        p.fails = 0  # it raised once and not again (a value changed in between)
    return out[0] if p.single else tuple(out)


def _snapshot_all(p, values):
    limits = p.limits
    use_repr = p.repr
    return tuple(v if type(v) in _PRIMS else _snapshot(v, limits, use_repr) for v in values)


def _stack(frame):
    out = []
    f = frame
    while f is not None and len(out) < _capture.MAX_STACK:
        code = f.f_code
        filename = code.co_filename
        if not filename.startswith(_OWN):
            out.append((filename, f.f_lineno, code.co_qualname if _QUALNAME else code.co_name))
        f = f.f_back
    return out


def retire(p, state, kind, reason):
    """Disarm ``p`` from the hit path: it leaves its sites now; the engine removes the hooks."""
    if p.state != _ARMED:
        return
    p.state = state
    p.error_kind = kind
    p.reason = reason
    for site in p.sites:
        site.probes = tuple(q for q in site.probes if q is not p)
    CHANGED.append(p)

"""Bytecode injection (``scry._inject``, Python 3.8, 3.9 and 3.11): a copy with hooks on every line
behaves as the original, and its hooks fire where the interpreter's own line events do."""

import dis
import inspect
import io
import sys
import traceback
import types

import pytest

import inject_targets as T
from scry import _features, _inject

pytestmark = pytest.mark.skipif(
    _inject.LAYOUT is None,
    reason="Python {}.{} has no injection layout: {}".format(sys.version_info[0], sys.version_info[1], _inject.REASON),
)


def all_lines(code):
    return sorted({line for _offset, line in dis.findlinestarts(code) if line is not None})


def deep_copy(code, make_hook):
    """``code`` with its nested code replaced by their copies, and hooks on all its own lines."""
    consts = tuple(deep_copy(c, make_hook) if type(c) is types.CodeType else c for c in code.co_consts)
    base = code.replace(co_consts=consts)
    hooks = {line: make_hook(code.co_name, line) for line in all_lines(code)}
    return _inject.inject(base, hooks) if hooks else base


class Injected(object):
    """Every function of inject_targets runs a copy with a hook on each of its lines (nested code
    too) while in the ``with`` block; the originals are back after it."""

    def __init__(self, make_hook):
        self.make_hook = make_hook
        self.originals = {}

    def __enter__(self):
        for function in T.FUNCTIONS:
            self.originals[function] = function.__code__
            function.__code__ = deep_copy(function.__code__, self.make_hook)
        return self

    def __exit__(self, *exc):
        for function, code in self.originals.items():
            function.__code__ = code
        return False


def traced_lines(run):
    """(function name, line) of every line event the trace function sees in inject_targets."""
    events = []

    def local(frame, event, arg):
        if event == "line":
            events.append((frame.f_code.co_name, frame.f_lineno))
        return local

    def global_trace(frame, event, arg):
        code = frame.f_code
        return local if code.co_filename == T.__file__ and code.co_name != "run_all" else None

    sys.settrace(global_trace)
    try:
        run()
    finally:
        sys.settrace(None)
    return events


def collapsed(events):
    return [e for i, e in enumerate(events) if i == 0 or events[i - 1] != e]


def test_hooks_fire_where_the_trace_function_sees_a_line_start():
    expected = traced_lines(T.run_all)
    events = []
    with Injected(lambda name, line: lambda: events.append((name, line))):
        T.run_all()
    # The trace function reports a line again each time a loop on that one line iterates (a
    # comprehension) and when a generator resumes on it; a hook, like sys.monitoring's LINE event
    # on 3.12+, only when the line is reached from another line. Everything else is the same.
    assert collapsed(events) == collapsed(expected)
    assert len(events) > 150


def test_a_copy_behaves_as_the_original():
    def failure(arg):
        try:
            T.raises(arg)
        except KeyError as exc:
            return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__.tb_next))
        raise AssertionError("no exception")

    before = T.run_all()
    before_failure = failure("b")
    sources = [inspect.getsource(f) for f in T.FUNCTIONS]
    listings = [_listing(f.__code__) for f in T.FUNCTIONS]
    calls = []
    with Injected(lambda name, line: lambda: calls.append(line)):
        assert all(f.__code__ is not code for f, code in zip(T.FUNCTIONS, listings))
        assert T.run_all() == before
        # Tracebacks read positions from the copy: the same lines (and columns on 3.11).
        assert failure("b") == before_failure
        assert [inspect.getsource(f) for f in T.FUNCTIONS] == sources
    assert calls
    assert [_listing(f.__code__) for f in T.FUNCTIONS] == listings


def _listing(code):
    out = io.StringIO()
    dis.dis(code, file=out)
    return out.getvalue()


def test_a_copy_keeps_the_frame_line_and_locals_for_the_hook():
    seen = []

    def hook():
        frame = sys._getframe(1)
        seen.append((frame.f_lineno, dict(frame.f_locals)))

    code = T.many_lines.__code__
    line = code.co_firstlineno + 3  # a += 2
    T.many_lines.__code__ = _inject.inject(code, {line: hook})
    try:
        assert T.many_lines(1) == 46
    finally:
        T.many_lines.__code__ = code
    assert seen == [(line, {"n": 1, "a": 2})]


def test_long_functions_and_far_jumps_get_extended_arguments():
    body = "".join("        if x == {0}:\n            x += {0}\n".format(i) for i in range(400))
    source = "def far(x):\n    while x < 1000:\n{}        x += 1\n    return x\n".format(body)
    namespace = {}
    exec(compile(source, "<far>", "exec"), namespace)
    far = namespace["far"]
    expected = far(3)
    hits = []
    lines = all_lines(far.__code__)
    far.__code__ = _inject.inject(far.__code__, {line: (lambda line=line: hits.append(line)) for line in lines})
    assert far(3) == expected
    assert hits.count(3) > 0 and len(hits) > 400


def test_a_line_inside_a_one_line_loop_fires_once_a_run():
    namespace = {}
    exec(compile("def f(n):\n    t = 0\n    for i in range(n): t += i\n    return t\n", "<one>", "exec"), namespace)
    f = namespace["f"]
    hits = []
    f.__code__ = _inject.inject(f.__code__, {3: lambda: hits.append(3)})
    assert f(5) == 10
    assert hits == [3]  # as sys.monitoring's LINE event on 3.12+; a trace function sees 6


def test_what_cannot_be_injected_is_refused_with_the_reason():
    code = T.many_lines.__code__
    with pytest.raises(_inject.InjectError, match="no line"):
        _inject.inject(code, {code.co_firstlineno + 1000: lambda: None})


def test_the_backend_name_says_injection():
    assert _features.BACKEND == "bytecode"
    assert "injected" in _features.BACKEND_REASON


# -- trace hooks -----------------------------------------------------------------------------------


def traced_copy(code, events, name=None):
    """``code`` and its nested code with trace hooks that append (kind, name[, value])."""
    name = name or code.co_name
    consts = tuple(traced_copy(c, events) if type(c) is types.CodeType else c for c in code.co_consts)

    def record(kind):
        def hook(value=None):
            if kind == "exception":
                events.append((kind, name, type(value).__name__))
            else:
                events.append((kind, name))

        return hook

    return _inject.inject(code.replace(co_consts=consts), trace={kind: record(kind) for kind in _inject.TRACE_KINDS})


def profiled(run):
    """(kind, name) from the profile function, classified as scry's profile tracer does (3.8-3.11)."""
    from scry import _trace_backends

    events = []

    def profile(frame, event, arg):
        code = frame.f_code
        if code.co_filename != T.__file__ or code.co_name == "run_all":
            return
        if event == "call":
            events.append((_trace_backends.KIND_NAMES[_trace_backends._entry_kind(frame, code)], code.co_name))
        elif event == "return":
            events.append((_trace_backends.KIND_NAMES[_trace_backends._exit_kind(frame, code)], code.co_name))

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return events


def test_trace_hooks_report_calls_returns_yields_and_the_exception_that_leaves():
    expected = profiled(T.run_all)
    before = T.run_all()
    events = []
    originals = {f: f.__code__ for f in T.FUNCTIONS}
    try:
        for f in T.FUNCTIONS:
            f.__code__ = traced_copy(f.__code__, events)
        assert T.run_all() == before
    finally:
        for f, code in originals.items():
            f.__code__ = code
    got = [e[:2] for e in events]
    if _inject.LAYOUT.YIELD_FROM_OPS:
        # 3.8/3.9: each await reports one yield and one resume, whether it suspended or not (the
        # profile function sees suspensions only).
        def awaits(seq):
            return [e for e in seq if e[1] == "coroutine" and e[0] in ("yield", "resume")]

        assert len(awaits(got)) >= len(awaits(expected)) > 0
        got = [e for e in got if e not in awaits(got)]
        expected = [e for e in expected if e not in awaits(expected)]
    # The profile function cannot see which exception left; the hooks can.
    assert got == expected
    assert ("exception", "raises", "KeyError") in events
    assert ("exception", "handlers", "ZeroDivisionError") not in events  # caught inside


def test_trace_hooks_see_exceptions_thrown_into_generators_and_closing():
    events = []

    def gen():
        try:
            yield 1
            yield 2
        finally:
            pass

    gen.__code__ = traced_copy(gen.__code__, events, "gen")
    g = gen()
    next(g)
    with pytest.raises(ValueError):
        g.throw(ValueError("in"))
    g = gen()
    next(g)
    g.close()
    # An exception thrown in ends the suspension without a resume: the frame goes on raising.
    assert events == [
        ("call", "gen"), ("yield", "gen"), ("exception", "gen", "ValueError"),
        ("call", "gen"), ("yield", "gen"), ("exception", "gen", "GeneratorExit"),
    ]


def test_deeply_nested_blocks_are_refused_before_they_could_overflow_the_block_stack():
    if not _inject.LAYOUT.BLOCK_STACK:
        pytest.skip("Python {}.{} has no block stack".format(*sys.version_info[:2]))
    depth = 19
    source = "def deep(x):\n" + "".join("    " * (i + 1) + "try:\n" for i in range(depth)) + "    " * (depth + 1) + "x += 1\n"
    source += "".join("    " * (depth - i) + "finally:\n" + "    " * (depth - i + 1) + "pass\n" for i in range(depth))
    source += "    return x\n"
    namespace = {}
    exec(compile(source, "<deep>", "exec"), namespace)
    with pytest.raises(_inject.InjectError, match="too many blocks"):
        _inject.inject(namespace["deep"].__code__, trace={k: (lambda *a: None) for k in _inject.TRACE_KINDS})

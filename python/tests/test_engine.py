"""The probe engine, driven in-process: sync specs, run code, drain the hits.

These tests run on every real backend of the running interpreter (sys.monitoring on 3.12+;
bytecode injection and the trace function before), and check after each one that nothing of ours
is left hooked.
"""

import asyncio
import gc
import json
import os
import queue
import sys
import threading
import time
import types

import pytest

import probe_targets as T
from conftest import wait_until
from scry import _backends, _engine, _features, _hit, _locate

MON = _features.MONITORING
#: The backends this interpreter can run; every engine test runs on each.
BACKENDS = ["sys.monitoring"] if MON is not None else (["bytecode", "settrace"] if _features.INJECTION_LAYOUT else ["settrace"])


# -- helpers ---------------------------------------------------------------------------------------


class ThreadProbe(object):
    """A thread that exists before probes are armed and answers questions from inside itself."""

    def __init__(self):
        self.requests = queue.Queue()
        self.answers = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="asker", daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            fn = self.requests.get()
            if fn is None:
                return
            self.answers.put(fn())

    def ask(self, fn):
        self.requests.put(fn)
        return self.answers.get(timeout=10)

    def close(self):
        self.requests.put(None)
        self.thread.join(10)


def thread_hook():
    getter = getattr(threading, "gettrace", None)
    return getter() if getter else getattr(threading, "_trace_hook", None)


def hooks_left(other_thread=None):
    """What of ours is still hooked into the interpreter (empty when nothing)."""
    left = []
    if MON is not None:
        for tool in range(6):
            if MON.get_tool(tool) == _backends.TOOL_NAME:
                left.append("tool id {} is still ours".format(tool))
        if _backends._LINES:
            left.append("the LINE table is not empty")
    else:
        injected = injected_functions()
        if injected:
            left.append("functions still run injected code: {}".format(injected))
        if sys.gettrace() is not None:
            left.append("this thread still has {!r}".format(sys.gettrace()))
        if thread_hook() is not None:
            left.append("threading.settrace still has {!r}".format(thread_hook()))
        if other_thread is not None and other_thread.ask(sys.gettrace) is not None:
            left.append("another thread is still traced")
        if _backends._TRACERS:
            left.append("local tracers are left")
    if any(isinstance(f, _locate.ImportWatcher) for f in sys.meta_path):
        left.append("the import watcher is still in sys.meta_path")
    return left


def _holds_hook(code, depth=0):
    for const in code.co_consts:
        if getattr(const, "__qualname__", "") == "LineHook.__init__.<locals>.fire":
            return True
        if type(const) is types.CodeType and depth < 50 and _holds_hook(const, depth + 1):
            return True
    return False


def injected_functions():
    """Functions whose code (or code nested in it) calls a LineHook: injected code left behind."""
    return [obj for obj in gc.get_objects() if type(obj) is types.FunctionType and _holds_hook(obj.__code__)]


@pytest.fixture(params=BACKENDS)
def engine(request):
    marker = request.node.get_closest_marker("backends")
    if marker is not None and request.param not in marker.args:
        pytest.skip("a test of the {} backend".format(" and ".join(marker.args)))
    e = _engine.Engine(backend=request.param)
    try:
        yield e
    finally:
        e.stop()
        assert hooks_left() == []


_ids = [0]


def spec(location, *expressions, **kw):
    _ids[0] += 1
    out = {"id": kw.pop("id", "p{}".format(_ids[0])), "location": location, "expressions": list(expressions)}
    out.update(kw)
    return out


def at(marker):
    return "probe_targets.py:{}".format(T.line(marker))


def decoded(events):
    return [json.loads(e) for e in events]


def hits(e, probe_id=None, limit=1000000):
    events = decoded(e.collect(limit)[0])
    return [ev for ev in events if probe_id is None or ev["source"] == probe_id]


def values(events, text):
    return [ev["data"]["values"][text] for ev in events]


def status(e, probe_id):
    for st in e.statuses():
        if st["probe"] == probe_id:
            return st
    raise AssertionError("no status for {}".format(probe_id))


def v(x):
    """The plain value of a typed int/float/str/bool."""
    return x["v"]


# -- arming and the statuses -----------------------------------------------------------------------


def test_line_probe_records_typed_values_and_statuses(engine):
    s = spec(at("compute"), "x", "y", "x * y", "[x, y]")
    (st,) = engine.sync([s])
    assert st["state"] == "armed", st
    assert st["file"] == T.__file__.replace(".pyc", ".py") and st["line"] == T.line("compute")
    assert st["function"] == "compute" and st["requested_line"] is None and st["reason"] is None
    for x in range(3):
        T.compute(x, y=5)
    events = hits(engine)
    assert len(events) == 3
    ev = events[0]
    assert ev["kind"] == "probe" and ev["source"] == s["id"]
    assert abs(ev["t"] - time.time()) < 5
    data = ev["data"]
    assert data["file"] == st["file"] and data["line"] == st["line"] and data["function"] == "compute"
    assert data["thread"] == threading.current_thread().name and data["tid"] == threading.get_ident()
    assert data["values"] == {
        "x": {"t": "int", "v": 0},
        "y": {"t": "int", "v": 5},
        "x * y": {"t": "int", "v": 0},
        "[x, y]": {"t": "list", "v": [{"t": "int", "v": 0}, {"t": "int", "v": 5}], "len": 2},
    }
    assert [v(e["data"]["values"]["x"]) for e in events] == [0, 1, 2]
    assert [e["t"] for e in events] == sorted(e["t"] for e in events)
    st = status(engine, s["id"])
    assert (st["hits"], st["recorded"], st["dropped"], st["errors"]) == (3, 3, 0, 0)


def test_every_location_form(engine):
    specs = [
        spec(at("compute"), "x", id="plain"),
        spec("@probe_targets.py#{}".format(T.line("compute")), "x", id="at-hash"),
        spec("probe_targets:compute", "x", id="module-function"),
        spec("probe_targets.py:compute", "x", id="path-function"),
        spec("tests/probe_targets.py:Order.describe", "self.total", id="qualname"),
        spec("probe_targets:Order.describe", "self.total", id="module-qualname"),
        spec("probe_targets:decorated", "a", id="decorated"),
    ]
    statuses = {st["probe"]: st for st in engine.sync(specs)}
    assert all(st["state"] == "armed" for st in statuses.values()), statuses
    entry = T.line("compute")
    assert {statuses[i]["line"] for i in ("plain", "at-hash", "module-function", "path-function")} == {entry}
    assert statuses["qualname"]["line"] == T.line("method") == statuses["module-qualname"]["line"]
    assert statuses["qualname"]["function"] == "Order.describe"
    # A decorated function: its own body (through __wrapped__), after the docstring.
    assert statuses["decorated"]["line"] == T.line("decorated-entry")
    T.compute(7)
    T.Order(12.5, []).describe()
    T.decorated(1)
    by_probe = {}
    for ev in hits(engine):
        by_probe.setdefault(ev["source"], []).append(ev)
    assert sorted(by_probe) == sorted(s["id"] for s in specs)
    assert values(by_probe["qualname"], "self.total") == [{"t": "float", "v": 12.5}]
    assert values(by_probe["decorated"], "a") == [{"t": "int", "v": 1}]


def test_a_line_without_code_snaps_to_the_next_line_of_the_function(engine):
    (st,) = engine.sync([spec(at("comment"), "z")])
    assert st["state"] == "armed"
    assert st["requested_line"] == T.line("comment") and st["line"] == T.line("after-comment")
    T.compute(3)
    assert values(hits(engine), "z") == [{"t": "int", "v": 6}]


def test_location_errors_are_clear(engine):
    statuses = engine.sync(
        [
            spec("probe_targets.py:9000", "x", id="beyond"),
            spec("probe_targets.py:2", "x", id="module-level"),
            spec("ets.py:{}".format(T.line("compute")), "x", id="partial-name"),
            spec("probe_targets.py:no_such_function", "x", id="no-function"),
            spec("probe_targets:nothing_here", "x", id="no-attribute"),
            spec("probe_targets.py", "x", id="malformed"),
        ]
    )
    by_id = {st["probe"]: st for st in statuses}
    assert by_id["beyond"]["state"] == "error" and by_id["beyond"]["error_kind"] == "location"
    assert by_id["beyond"]["reason"] == "probe_targets.py has no executable line at or after 9000 in any function"
    assert by_id["module-level"]["error_kind"] == "location"
    assert "not in any function" in by_id["module-level"]["reason"]
    # `ets.py` is not a suffix of whole path components: nothing matches, the probe waits.
    assert by_id["partial-name"]["state"] == "pending"
    assert "no loaded module matches ets.py yet" in by_id["partial-name"]["reason"]
    assert by_id["no-function"]["error_kind"] == "location"
    assert "no function `no_such_function`" in by_id["no-function"]["reason"]
    assert "compute" in by_id["no-function"]["reason"]
    assert by_id["no-attribute"]["error_kind"] == "location"
    assert by_id["malformed"]["error_kind"] == "location" and "not a location" in by_id["malformed"]["reason"]
    assert MON is None or all(MON.get_tool(t) != "scry" for t in range(6))


def test_pending_until_the_module_is_imported(engine, tmp_path, monkeypatch):
    _ids[0] += 1
    name = "pending_mod_{}_{}".format(os.getpid(), _ids[0])  # a module not imported by an earlier run
    (tmp_path / (name + ".py")).write_text("def work(a):\n    b = a * 2\n    return b\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    by_path, by_module = spec(name + ".py:3", "b"), spec(name + ":work", "a")
    statuses = engine.sync([by_path, by_module])
    assert [st["state"] for st in statuses] == ["pending", "pending"]
    assert statuses[0]["reason"] == "no loaded module matches {}.py yet; it arms when one is imported".format(name)
    assert statuses[1]["reason"] == "module {} is not imported yet; it arms when it is".format(name)
    assert any(isinstance(f, _locate.ImportWatcher) for f in sys.meta_path)
    engine.collect(0)  # the pending statuses were in the reply: nothing more to send
    module = __import__(name)
    try:
        _events, _lost, changed = engine.collect(100)
        assert sorted(st["probe"] for st in changed) == sorted([by_path["id"], by_module["id"]])
        assert all(st["state"] == "armed" for st in changed), changed
        assert not any(isinstance(f, _locate.ImportWatcher) for f in sys.meta_path)
        assert module.work(5) == 10
        events = hits(engine)
        assert values([e for e in events if e["source"] == by_path["id"]], "b") == [{"t": "int", "v": 10}]
        assert values([e for e in events if e["source"] == by_module["id"]], "a") == [{"t": "int", "v": 5}]
        assert module.__loader__.exec_module.__qualname__.endswith("exec_module")
        assert "exec_module" not in vars(module.__loader__)  # the wrapper removed itself
    finally:
        sys.modules.pop(name, None)


def test_several_probes_on_one_line(engine):
    a, b = spec(at("compute"), "x"), spec(at("compute"), "y", condition="x > 1")
    engine.sync([a, b])
    for x in range(4):
        T.compute(x)
    events = hits(engine)
    assert len([e for e in events if e["source"] == a["id"]]) == 4
    assert len([e for e in events if e["source"] == b["id"]]) == 2


def test_resync_keeps_unchanged_probes_and_rearms_changed_ones(engine):
    a, b = spec(at("compute"), "x"), spec(at("compute"), "y")
    engine.sync([a, b])
    T.compute(1)
    assert status(engine, a["id"])["hits"] == 1
    changed = dict(b, expressions=["y * 10"])
    statuses = engine.sync([a, changed])
    assert statuses[0]["hits"] == 1  # kept, counters go on
    assert statuses[1]["hits"] == 0  # re-armed
    hits(engine)
    T.compute(2)
    events = hits(engine)
    assert values([e for e in events if e["source"] == b["id"]], "y * 10") == [{"t": "int", "v": 20}]
    assert engine.sync([]) == []
    T.compute(3)
    assert hits(engine) == []


# -- nested code ---------------------------------------------------------------------------------


def test_nested_code_objects(engine):
    specs = [
        spec(at("closure"), "base", "v", id="closure"),
        spec(at("method"), "self.total", id="method"),
        spec(at("lambda"), "v", id="lambda"),
        spec(at("genexp"), "values", id="genexp"),
        spec(at("listcomp"), "1", id="listcomp"),
        spec(at("generator"), "i", id="generator"),
        spec(at("coroutine"), "x", id="coroutine"),
        spec(at("one-liner"), "x", id="one-liner"),
    ]
    statuses = {st["probe"]: st for st in engine.sync(specs)}
    assert all(st["state"] == "armed" for st in statuses.values()), statuses
    assert statuses["closure"]["function"].endswith("closure")
    assert statuses["lambda"]["function"] == "<lambda>"
    closure = T.make_closure(100)
    closure(1)
    T.Order(3, []).describe()
    T.square(4)
    T.with_genexp([1, 2, 3])
    T.with_listcomp([1, 2])
    list(T.generator(3))
    asyncio.run(T.coroutine(5))
    T.one_liner(9)
    by_probe = {}
    for ev in hits(engine):
        by_probe.setdefault(ev["source"], []).append(ev)
    assert values(by_probe["closure"], "base") == [{"t": "int", "v": 100}]
    assert values(by_probe["method"], "self.total") == [{"t": "int", "v": 3}]
    assert values(by_probe["lambda"], "v") == [{"t": "int", "v": 4}]
    # A line shared by a function and the generator expression on it belongs to the function: the
    # probe fires once, as the statement runs, with the function's names, on every backend.
    genexp = values(by_probe["genexp"], "values")
    assert genexp == [{"t": "list", "len": 3, "v": [{"t": "int", "v": 1}, {"t": "int", "v": 2}, {"t": "int", "v": 3}]}], genexp
    assert len(by_probe["listcomp"]) >= 1
    assert [v(x) for x in values(by_probe["generator"], "i")] == [0, 1, 2]
    assert values(by_probe["coroutine"], "x") == [{"t": "int", "v": 5}]
    assert values(by_probe["one-liner"], "x") == [{"t": "int", "v": 9}]


def test_lines_inside_try_except_finally_with_and_a_comprehension(engine):
    markers = ("try-body", "except-body", "finally-body", "with-body", "comprehension")
    statuses = engine.sync([spec(at(m), "len(out)", id=m) for m in markers])
    assert all(st["state"] == "armed" for st in statuses), statuses
    assert T.blocks(0) == ["zero", "finally", os.devnull]
    assert T.blocks(5) == [2, "finally", os.devnull]
    by_probe = {m: [] for m in markers}
    for ev in hits(engine):
        by_probe[ev["source"]].append(v(ev["data"]["values"]["len(out)"]))
    # The compiler copies a finally body (one copy for the normal path, one for the exception):
    # each call runs one of them, and reports once.
    assert by_probe == {
        "try-body": [0, 0],
        "except-body": [0],
        "finally-body": [1, 1],
        "with-body": [2, 2],
        "comprehension": [3, 3],
    }, by_probe


def test_probes_armed_and_removed_over_and_over_while_threads_run_the_code(engine):
    import inject_targets as I

    expected = I.run_all()
    originals = {f: f.__code__ for f in (T.compute, T.make_closure, T.generator, T.blocks, I.loops, I.handlers)}
    markers = ["compute", "closure", "generator", "try-body", "finally-body", "except-body", "with-body", "comprehension"]
    stop = threading.Event()
    failures = []
    runs = [0]

    def worker():
        while not stop.is_set():
            try:
                assert T.compute(3) == 7
                assert T.make_closure(10)(5) == 15
                assert list(T.generator(3)) == [0, 1, 2]
                assert T.blocks(0) == ["zero", "finally", os.devnull]
                assert I.run_all() == expected
                runs[0] += 1
            except BaseException as exc:  # anything at all is a failure of the swap
                failures.append(repr(exc))
                stop.set()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    rng = __import__("random").Random(7)
    rounds = 0
    try:
        # A fixed number of swaps, each followed by a completed run of the workers over the
        # swapped code (a state, not a time: a busy machine only makes it slower).
        while rounds < 40 and not stop.is_set():
            chosen = rng.sample(markers, rng.randint(0, len(markers)))
            engine.sync([spec(at(m), "1", id=m) for m in chosen])
            engine.collect(100000)
            before = runs[0]
            # Four runs may have begun before the swap: a fifth began after it.
            wait_until(
                lambda: runs[0] > before + 4 or stop.is_set(),
                timeout=30.0,
                message="the workers to run the swapped code",
            )
            rounds += 1
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert failures == []
    assert rounds == 40
    engine.sync([])
    assert [f.__name__ for f, code in originals.items() if f.__code__ is not code] == []


def test_a_loop_already_running_in_another_thread_starts_reporting(engine):
    stop = threading.Event()
    counter = [0]
    thread = threading.Thread(target=T.spin, args=(stop, counter), name="spinner", daemon=True)
    thread.start()
    try:
        wait_until(lambda: counter[0] > 1000, message="the loop to run")
        s = spec(at("spin"), "n")
        (st,) = engine.sync([s])
        assert st["state"] == "armed"
        events = wait_until(lambda: hits(engine, limit=500), message="hits from the running loop")
        assert {e["data"]["thread"] for e in events} == {"spinner"}
        assert {e["data"]["tid"] for e in events} == {thread.ident}
        assert all(v(x) > 1000 for x in values(events, "n"))
        engine.sync([])
        time.sleep(0.05)  # a hit that was running as the probe went may still land
        _hit.BUFFER.clear()
        time.sleep(0.05)
        assert hits(engine) == []
        if MON is None:
            assert not _backends.is_local_tracer(sys._current_frames()[thread.ident].f_trace)
    finally:
        stop.set()
        thread.join(10)


def frame_of(thread, code_name):
    frame = sys._current_frames()[thread.ident]
    while frame is not None and frame.f_code.co_name != code_name:
        frame = frame.f_back
    return frame


@pytest.mark.backends("bytecode")
def test_injection_follows_a_frame_from_before_in_its_thread_only_until_it_returns(engine):
    stop = threading.Event()
    counter = [0]
    thread = threading.Thread(target=T.spin, args=(stop, counter), name="spinner", daemon=True)
    thread.start()
    asker = ThreadProbe()
    try:
        wait_until(lambda: counter[0] > 1000, message="the loop to run")
        (st,) = engine.sync([spec(at("spin"), "n")])
        assert st["state"] == "armed"
        assert "frames running since before the probe (spin in thread spinner)" in st["reason"], st
        assert "runs slower" in st["reason"]
        wait_until(lambda: hits(engine, limit=500), message="hits from the running loop")
        # Only the spinner's thread is traced, on that frame; another thread and this one are not.
        assert asker.ask(sys.gettrace) is None and sys.gettrace() is None
        assert _backends.is_local_tracer(frame_of(thread, "spin").f_trace)
        assert engine.backend._traced == {thread.ident}
        stop.set()
        thread.join(10)
        engine.collect(0)  # the link's flush notices the frame has returned
        assert engine.backend._threads is None
        (st,) = engine.statuses()
        assert st["reason"] is None, st
        hits(engine)
        # A new call runs the injected copy: hits, and no trace function anywhere.
        again, counter2 = threading.Event(), [0]
        second = threading.Thread(target=T.spin, args=(again, counter2), name="second", daemon=True)
        second.start()
        wait_until(lambda: counter2[0] > 3, message="a new loop to run")
        assert frame_of(second, "spin").f_trace is None
        again.set()
        second.join(10)
        assert hits(engine) and engine.backend._threads is None
    finally:
        stop.set()
        thread.join(10)
        asker.close()


@pytest.mark.backends("bytecode")
def test_injection_follows_a_suspended_generator_until_it_finishes(engine):
    gen = T.generator(3)
    assert next(gen) == 0
    (st,) = engine.sync([spec(at("generator"), "i")])
    assert "1 suspended generator(s) or coroutine(s)" in st["reason"], st
    assert list(gen) == [1, 2]
    assert [v(x) for x in values(hits(engine), "i")] == [1, 2]
    engine.collect(0)
    (st,) = engine.statuses()
    assert st["reason"] is None and engine.backend._threads is None
    assert list(T.generator(2)) == [0, 1]  # a new generator runs the copy
    assert [v(x) for x in values(hits(engine), "i")] == [0, 1]


@pytest.mark.backends("bytecode")
def test_a_probe_and_a_call_trace_share_one_copy_and_each_leaves_alone(engine):
    from scry import _trace_backends

    original = T.compute.__code__
    engine.sync([spec(at("compute"), "x")])
    probed = T.compute.__code__
    assert probed is not original
    tracer = _trace_backends.InjectionTracer()
    tracer.start()
    _trace_backends.BUFFER.clear()
    _trace_backends.BUDGET[:] = [0, 0, 1000000, 0]
    try:
        assert tracer.add({id(probed): probed}) == []
        _trace_backends.SELECTED = {id(probed): probed}
        both = T.compute.__code__
        assert both is not probed
        T.compute(3)
        assert [r[0] for r in _trace_backends.BUFFER] == [_trace_backends.CALL, _trace_backends.RETURN]
        assert values(hits(engine), "x") == [{"t": "int", "v": 3}]
        engine.sync([])  # the probe goes, the trace stays
        assert T.compute.__code__ not in (original, probed, both)
        T.compute(4)
        assert len(_trace_backends.BUFFER) == 4 and hits(engine) == []
    finally:
        _trace_backends.SELECTED = {}
        tracer.stop()
        _trace_backends.BUFFER.clear()
    assert T.compute.__code__ is original


def test_a_running_module_level_loop_is_found_through_its_frame(engine, tmp_path):
    script = tmp_path / "toplevel_loop.py"
    script.write_text(
        "import threading\n"
        "stop = threading.Event()\n"
        "ticks = 0\n"
        "while not stop.is_set():\n"
        "    ticks += 1\n"
    )
    namespace = {"__name__": "toplevel_loop"}
    code = compile(script.read_text(), str(script), "exec")
    thread = threading.Thread(target=exec, args=(code, namespace), daemon=True)
    thread.start()
    try:
        wait_until(lambda: namespace.get("ticks", 0) > 100, message="the top-level loop to run")
        # The whole path: another backend's run of this test made a toplevel_loop.py too, and its
        # code may not be collected yet (the base name alone is then rightly ambiguous).
        (st,) = engine.sync([spec("{}:5".format(script), "ticks")])
        assert st["state"] == "armed" and st["function"] == "<module>", json.dumps(st)
        events = wait_until(lambda: hits(engine, limit=500), message="hits from module-level code")
        assert all(v(x) > 100 for x in values(events, "ticks"))
    finally:
        namespace["stop"].set()
        thread.join(10)


# -- rate modes, TTL, conditions -----------------------------------------------------------------


def test_rate_every_and_sample(engine):
    every = spec(at("compute"), "x", rate={"mode": "every"})
    sample = spec(at("compute"), "x", rate={"mode": "sample", "n": 3})
    engine.sync([every, sample])
    for x in range(10):
        T.compute(x)
    events = hits(engine)
    assert len([e for e in events if e["source"] == every["id"]]) == 10
    sampled = [v(x) for x in values([e for e in events if e["source"] == sample["id"]], "x")]
    assert sampled == [0, 3, 6, 9]
    st = status(engine, sample["id"])
    assert (st["hits"], st["recorded"], st["dropped"]) == (10, 4, 6)


def test_rate_per_second_is_a_token_bucket(engine):
    s = spec(at("compute"), "x", rate={"mode": "rate", "per_second": 5})
    engine.sync([s])
    start = time.monotonic()
    for x in range(2000):
        T.compute(x)
    elapsed = time.monotonic() - start
    st = status(engine, s["id"])
    assert st["hits"] == 2000
    assert 5 <= st["recorded"] <= 5 + int(elapsed * 5) + 1, (st, elapsed)
    assert st["dropped"] == 2000 - st["recorded"]
    assert len(hits(engine)) == st["recorded"]


def test_first_n_then_the_probe_expires_and_unhooks(engine):
    s = spec(at("compute"), "x", rate={"mode": "first", "n": 3})
    engine.sync([s])
    for x in range(10):
        T.compute(x)
    events, _lost, changed = engine.collect(1000)
    events = decoded(events)
    assert [v(x) for x in values(events, "x")] == [0, 1, 2]
    (st,) = changed
    assert st["state"] == "expired" and st["reason"] == "recorded its first 3 hits"
    assert st["recorded"] == 3 and st["hits"] == 3
    assert hooks_left() == []  # it was the only probe: every hook went with it
    T.compute(1)
    assert status(engine, s["id"])["hits"] == 3


def test_ttl(engine):
    s = spec(at("compute"), "x", expires_at=time.time() + 0.3)
    gone = spec(at("compute"), "x", expires_at=time.time() - 1)
    statuses = engine.sync([s, gone])
    assert statuses[0]["state"] == "armed"
    assert statuses[1]["state"] == "expired" and "time to live" in statuses[1]["reason"]
    T.compute(1)
    assert len(hits(engine, s["id"])) == 1

    def expired():
        T.compute(2)
        return status(engine, s["id"])["state"] == "expired"

    wait_until(expired, timeout=5, message="the TTL to end")
    engine.collect(10)
    assert hooks_left() == []


def test_ttl_expires_without_hits(engine):
    s = spec(at("last"), "1", expires_at=time.time() + 0.2)
    engine.sync([s])
    wait_until(
        lambda: any(st["state"] == "expired" for st in engine.collect(10)[2]),
        timeout=5,
        message="the link's collect to expire the probe",
    )
    assert hooks_left() == []


def test_conditions(engine):
    true_ = spec(at("compute"), "x", condition="x >= 5")
    false_ = spec(at("compute"), "x", condition="x > 100")
    raising = spec(at("compute"), "x", condition="x.nope > 1")
    engine.sync([true_, false_, raising])
    for x in range(10):
        T.compute(x)
    events = hits(engine)
    assert [v(x) for x in values([e for e in events if e["source"] == true_["id"]], "x")] == [5, 6, 7, 8, 9]
    assert [e for e in events if e["source"] in (false_["id"], raising["id"])] == []
    st = status(engine, raising["id"])
    assert (st["hits"], st["recorded"], st["errors"], st["state"]) == (10, 0, 10, "armed")
    st = status(engine, false_["id"])
    assert (st["hits"], st["recorded"], st["dropped"], st["errors"]) == (10, 0, 0, 0)


def test_a_raising_condition_disarms_after_100_failures(engine):
    s = spec(at("compute"), "x", condition="x.nope")
    engine.sync([s])
    for x in range(150):
        T.compute(x)
    st = status(engine, s["id"])
    assert st["state"] == "error" and st["error_kind"] == "failing"
    assert "100 consecutive hits" in st["reason"] and "AttributeError" in st["reason"]
    assert st["errors"] == 100 and st["hits"] == 100


# -- expressions -----------------------------------------------------------------------------------

FORBIDDEN = [
    ("x = 1", "not an expression: assignments/imports/del are not allowed"),
    ("import os", "not an expression: assignments/imports/del are not allowed"),
    ("del x", "not an expression: assignments/imports/del are not allowed"),
    ("(y := 2)", "assignment expressions (:=) are not allowed"),
    ("lambda: 1", "lambda is not allowed"),
    ("[i for i in x]", "comprehensions and generator expressions are not allowed"),
    ("{i: 1 for i in x}", "comprehensions and generator expressions are not allowed"),
    ("sum(i for i in x)", "comprehensions and generator expressions are not allowed"),
    ("await x", "await is not allowed"),
    ("(yield x)", "yield is not allowed"),
    ("[*x]", "starred expressions (*x) are not allowed"),
    ("open('f')", "calls are not allowed: open()"),
    ("x.conjugate()", "calls are not allowed: x.conjugate()"),
    ("min(x, key=abs)", "keyword argument key= is not allowed"),
    ("f'{x}'", "f-strings and t-strings are not allowed"),
    ("__import__('os')", "names that start and end with __ are not allowed: __import__"),
    ("__builtins__", "names that start and end with __ are not allowed: __builtins__"),
    ("x.__class__", "attributes that start and end with __ are not allowed: .__class__"),
    ("x._scry_secret", "attributes starting with _scry are not allowed"),
    ("{**x}", "dict unpacking (**x) is not allowed"),
    ("x +", "invalid syntax"),
    ("", "empty expression"),
]


@pytest.mark.parametrize("expression,message", FORBIDDEN, ids=[f[0] or "empty" for f in FORBIDDEN])
def test_forbidden_expressions_are_refused_and_nothing_is_armed(engine, expression, message):
    (st,) = engine.sync([spec(at("compute"), expression)])
    assert st["state"] == "error" and st["error_kind"] == "invalid_expression", st
    assert message in st["reason"], st["reason"]
    assert "`{}`".format(expression.strip()) in st["reason"]
    assert hooks_left() == []
    (st,) = engine.sync([spec(at("compute"), "x", condition=expression or " ")])
    assert st["state"] == "error" and st["reason"].startswith("condition `"), st
    assert hooks_left() == []


def test_allowed_builtins_and_unsafe(engine):
    safe = spec(
        at("compute"),
        "len([x, y])",
        "isinstance(x, int)",
        "max(x, y)",
        "sorted([y, x])",
        "round(x / 3, 2)",
        "str(x) + '-' + repr(y)",
        "x if x else -1",
        "x.bit_length()",
        "abs(-x) + sum([x, y])",
    )
    unsafe = spec(at("compute"), "x.conjugate()", unsafe=True)
    statuses = engine.sync([safe, unsafe])
    assert statuses[0]["state"] == "armed" and statuses[0]["reason"] is None
    assert statuses[1]["state"] == "armed" and "unsafe" in statuses[1]["reason"]
    T.compute(5, 3)
    events = hits(engine)
    got = [e for e in events if e["source"] == safe["id"]][0]["data"]["values"]
    assert got == {
        "len([x, y])": {"t": "int", "v": 2},
        "isinstance(x, int)": {"t": "bool", "v": True},
        "max(x, y)": {"t": "int", "v": 5},
        "sorted([y, x])": {"t": "list", "v": [{"t": "int", "v": 3}, {"t": "int", "v": 5}], "len": 2},
        "round(x / 3, 2)": {"t": "float", "v": 1.67},
        "str(x) + '-' + repr(y)": {"t": "str", "v": "5-3"},
        "x if x else -1": {"t": "int", "v": 5},
        "x.bit_length()": {"t": "int", "v": 3},
        "abs(-x) + sum([x, y])": {"t": "int", "v": 13},
    }
    assert values([e for e in events if e["source"] == unsafe["id"]], "x.conjugate()") == [{"t": "int", "v": 5}]


def test_builtins_cannot_be_shadowed_and_bounded_ones_refuse_long_inputs(engine):
    s = spec(at("deep"), "len(values)", "sorted(values)", "max(values)")
    engine.sync([s])
    T.deep(list(range(5)))
    T.deep(list(range(20000)))
    events = hits(engine)
    assert values(events, "len(values)") == [{"t": "int", "v": 5}, {"t": "int", "v": 20000}]
    assert values(events, "sorted(values)")[0]["len"] == 5
    error = values(events, "sorted(values)")[1]
    assert error["t"] == "error" and "more than 10000 items" in error["message"]
    assert values(events, "max(values)")[1]["t"] == "error"


def test_raising_expressions_record_errors_then_disarm(engine):
    s = spec(at("compute"), "x.nope")
    partial = spec(at("compute"), "x", "x.nope")
    engine.sync([s, partial])
    for x in range(150):
        T.compute(x)
    events, _lost, changed = engine.collect(100000)
    events = decoded(events)
    failing = [e for e in events if e["source"] == s["id"]]
    assert 1 <= len(failing) <= 10 * 2  # at most 10 a second are recorded
    assert values(failing, "x.nope")[0] == {
        "t": "error",
        "type": "AttributeError",
        "message": "'int' object has no attribute 'nope'",
    }
    st = status(engine, s["id"])
    assert st["state"] == "error" and st["error_kind"] == "failing"
    assert "failed on 100 consecutive hits" in st["reason"] and "AttributeError" in st["reason"]
    assert st["errors"] == 100 and st["hits"] == 100
    assert s["id"] in [c["probe"] for c in changed]
    # Only some expressions raise: every hit is recorded, with an error value for those.
    st = status(engine, partial["id"])
    assert (st["state"], st["hits"], st["recorded"], st["errors"]) == ("armed", 150, 150, 150)
    last = [e for e in events if e["source"] == partial["id"]][-1]["data"]["values"]
    assert last["x"] == {"t": "int", "v": 149} and last["x.nope"]["t"] == "error"


# -- capture -------------------------------------------------------------------------------------


def test_locals_are_redacted_and_stack_captured(engine):
    s = spec(at("secrets"), "user", capture={"locals": True, "stack": True})
    engine.sync([s])
    T.secrets_here("ada")
    (ev,) = hits(engine)
    local_values = ev["data"]["locals"]
    assert local_values["access_token"] == {"t": "redacted"}
    assert local_values["db_password"] == {"t": "redacted"}
    assert local_values["tokenizer"] == {"t": "str", "v": "keep"}
    assert local_values["secretary"] == {"t": "str", "v": "keep too"}
    assert local_values["user"] == {"t": "str", "v": "ada"}
    stack = ev["data"]["stack"]
    assert stack[0] == {"file": ev["data"]["file"], "line": T.line("secrets"), "function": "secrets_here"}
    assert stack[1]["function"].endswith("test_locals_are_redacted_and_stack_captured")
    assert len(stack) <= 50
    assert not any("/scry/" in frame["file"] and "python/scry" in frame["file"] for frame in stack)


def test_values_are_snapshotted_at_the_hit_and_bounded(engine):
    limits = {"depth": 2, "items": 3, "string": 6}
    s = spec(at("deep"), "values", limits=limits)
    engine.sync([s])
    data = {"name": "abcdefgh", "items": [1, 2, 3, 4, 5], "nested": {"a": {"b": {"c": 1}}}}
    T.deep(data)
    data["items"].append(6)  # after the hit: the recorded value must not see it
    data["name"] = "changed"
    (value,) = values(hits(engine), "values")
    assert value["t"] == "dict" and value["len"] == 3
    pairs = {k["v"]: val for k, val in value["v"]}
    assert pairs["name"] == {"t": "str", "v": "abcdef", "len": 8}
    assert pairs["items"] == {"t": "list", "v": [{"t": "int", "v": 1}, {"t": "int", "v": 2}, {"t": "int", "v": 3}], "len": 5}
    assert pairs["nested"] == {"t": "dict", "v": [[{"t": "str", "v": "a"}, {"t": "dict", "len": 1}]], "len": 1}


# -- coexistence and cleanup -----------------------------------------------------------------------


@pytest.mark.skipif(MON is None, reason="sys.monitoring is 3.12+")
def test_another_monitoring_tool_keeps_its_events(engine):
    tool = next(t for t in (2, 1) if MON.get_tool(t) is None)
    seen = []
    MON.use_tool_id(tool, "test-coverage")
    try:
        MON.register_callback(tool, MON.events.LINE, lambda code, line: seen.append(line))
        MON.set_local_events(tool, T.compute.__code__, MON.events.LINE)
        lines_per_call = 3
        T.compute(1)
        assert len(seen) == lines_per_call
        engine.sync([spec(at("compute"), "x"), spec(at("secrets"), "user")])
        T.compute(1)
        assert len(seen) == 2 * lines_per_call  # our DISABLEs are ours alone
        T.compute(1)
        assert len(seen) == 3 * lines_per_call
        engine.sync([spec(at("after-comment"), "z")])
        T.compute(1)
        engine.sync([])
        T.compute(1)
        assert len(seen) == 5 * lines_per_call
        assert MON.get_tool(tool) == "test-coverage"
        assert MON.get_local_events(tool, T.compute.__code__) == MON.events.LINE
        assert len(hits(engine)) == 3
    finally:
        MON.set_local_events(tool, T.compute.__code__, 0)
        MON.register_callback(tool, MON.events.LINE, None)
        MON.free_tool_id(tool)


@pytest.mark.skipif(MON is None, reason="sys.monitoring is 3.12+")
def test_no_free_tool_id_is_an_error_naming_the_holders(engine):
    taken = [t for t in range(6) if MON.get_tool(t) is None]
    for t in taken:
        MON.use_tool_id(t, "hog-{}".format(t))
    try:
        (st,) = engine.sync([spec(at("compute"), "x")])
        assert st["state"] == "error" and "no free tool id" in st["reason"]
        assert "hog-4" in st["reason"] or 4 not in taken
    finally:
        for t in taken:
            MON.free_tool_id(t)


@pytest.mark.skipif(MON is not None, reason="the trace function is the backend before 3.12")
@pytest.mark.backends("settrace")
def test_another_tracer_is_not_replaced(engine):
    def other(frame, event, arg):
        return None

    sys.settrace(other)
    try:
        (st,) = engine.sync([spec(at("compute"), "x")])
    finally:
        sys.settrace(None)
    assert st["state"] == "error", st
    assert "another trace function is active" in st["reason"] and "sys.settrace" in st["reason"]
    assert sys.gettrace() is None


def test_removing_the_last_probe_leaves_nothing(engine):
    asker = ThreadProbe()
    try:
        engine.sync([spec(at("compute"), "x"), spec(at("closure"), "v")])
        if MON is not None:
            tool = next(t for t in range(6) if MON.get_tool(t) == "scry")
            assert MON.get_local_events(tool, T.compute.__code__) & MON.events.LINE
        elif engine.backend_name == "bytecode":
            assert sys.gettrace() is None and asker.ask(sys.gettrace) is None
            assert injected_functions() and engine.backend.note is None
        else:
            assert sys.gettrace() is _backends._global_trace
            assert asker.ask(sys.gettrace) is _backends._global_trace
            if _features.PY >= (3, 9):
                assert engine.backend._threads.note is None
        T.compute(1)
        engine.sync([])
        assert hooks_left(asker) == []
        if MON is not None:
            assert MON.get_local_events(tool, T.compute.__code__) == 0
            assert MON.get_tool(tool) is None
    finally:
        asker.close()


@pytest.mark.skipif(MON is not None, reason="the trace function is the backend before 3.12")
def test_threads_that_already_run_are_traced(engine):
    asker = ThreadProbe()
    try:
        engine.sync([spec(at("compute"), "x")])
        asker.ask(lambda: T.compute(4))
        events = hits(engine)
        assert values(events, "x") == [{"t": "int", "v": 4}] and events[0]["data"]["thread"] == "asker"
        started_later = threading.Thread(target=T.compute, args=(6,), name="later")
        started_later.start()
        started_later.join()
        assert values(hits(engine), "x") == [{"t": "int", "v": 6}]
    finally:
        asker.close()


def test_internal_errors_disarm_the_probe_without_reaching_the_program(engine, monkeypatch):
    s = spec(at("compute"), "x")
    engine.sync([s])

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(_hit, "_ident", broken)
    assert T.compute(2) == 5  # the program runs on
    st = status(engine, s["id"])
    assert st["state"] == "error" and st["error_kind"] == "internal" and "boom" in st["reason"]
    monkeypatch.undo()
    engine.collect(10)
    assert hooks_left() == []


def test_a_full_buffer_counts_drops(engine, monkeypatch):
    monkeypatch.setattr(_hit, "MAX_HITS", 5)
    s = spec(at("compute"), "x")
    engine.sync([s])
    for x in range(8):
        T.compute(x)
    events, lost, _statuses = engine.collect(100)
    assert len(events) == 5 and lost == 3
    st = status(engine, s["id"])
    assert (st["hits"], st["recorded"], st["dropped"]) == (8, 5, 3)


def test_the_probe_code_is_compiled_once(engine):
    s = spec(at("compute"), "x + y", "x * y")
    engine.sync([s])
    probe = engine.probes[s["id"]]
    code, fast = probe.code, probe.fast
    for x in range(5):
        T.compute(x)
    assert probe.code is code and probe.fast is fast
    gc.collect()
    assert len(hits(engine)) == 5


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_child_has_no_hooks(engine):
    from scry import _state

    engine.sync([spec(at("compute"), "x")])
    _state._agent.engine = engine  # as if awake: the fork handler stops the agent's engine
    try:
        pid = os.fork()
        if pid == 0:  # the child
            code = 0
            try:
                if hooks_left() or not engine.closed:
                    code = 3
                T.compute(1)
                if _hit.BUFFER:
                    code = 4
            except BaseException:
                code = 5
            os._exit(code)
        _, status_ = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status_) == 0
    finally:
        _state._agent.engine = None
    T.compute(1)
    assert len(hits(engine)) == 1  # the parent keeps its probe


@pytest.mark.skipif(MON is None, reason="sys.monitoring is 3.12+")
def test_code_that_cannot_be_instrumented_gives_that_probe_an_error(engine, monkeypatch):
    real = MON.set_local_events

    def picky(tool, code, events):
        if code is T.compute.__code__ and events:
            raise SystemError("cannot instrument shim code object")
        return real(tool, code, events)

    monkeypatch.setattr(MON, "set_local_events", picky)
    statuses = engine.sync([spec(at("compute"), "x"), spec(at("closure"), "v")])
    assert statuses[0]["state"] == "error" and statuses[0]["error_kind"] == "location"
    assert "cannot instrument shim code object" in statuses[0]["reason"]
    assert statuses[1]["state"] == "armed"
    T.make_closure(1)(2)
    assert len(hits(engine)) == 1


@pytest.mark.skipif(MON is not None, reason="the trace function is the backend before 3.12")
@pytest.mark.backends("settrace")
def test_without_ctypes_threads_that_already_run_are_not_covered_and_the_status_says_so(engine, monkeypatch):
    from scry import _threadtrace

    def unavailable(self):
        self.note = _threadtrace._not_covered("the C API is not reachable through ctypes (test)")
        return False

    monkeypatch.setattr(_threadtrace.ThreadTracer, "_setup", unavailable)
    asker = ThreadProbe()
    try:
        (st,) = engine.sync([spec(at("compute"), "x")])
        assert st["state"] == "armed"
        assert "threads that were already running are not covered" in st["reason"]
        T.compute(1)  # this thread is covered
        asker.ask(lambda: T.compute(2))  # that one is not
        started_later = threading.Thread(target=T.compute, args=(3,))
        started_later.start()
        started_later.join()
        assert [v(x) for x in values(hits(engine), "x")] == [1, 3]
        engine.sync([])
        assert hooks_left(asker) == []
    finally:
        asker.close()


def test_a_probe_replaced_on_the_same_line_while_another_thread_hits_it(engine):
    stop = threading.Event()
    counter = [0]
    thread = threading.Thread(target=T.spin, args=(stop, counter), daemon=True)
    thread.start()
    try:
        wait_until(lambda: counter[0] > 100, message="the loop to run")
        first = spec(at("spin"), "n", id="same")
        engine.sync([first])
        wait_until(lambda: hits(engine, limit=100), message="hits")
        for round_ in range(5):  # changed specs on the same line, while the loop keeps hitting it
            engine.sync([dict(first, expressions=["n", str(round_)])])
        _hit.BUFFER.clear()
        events = wait_until(lambda: hits(engine, limit=100), message="hits after the changes")
        assert "4" in events[0]["data"]["values"]
    finally:
        stop.set()
        thread.join(10)


@pytest.mark.parametrize(
    "expression,condition,reason",
    [
        ("x ** 9 ** 9", None, "would have about"),
        ("len('a' * (500 * 1000 * 1000))", None, "repeating a str of 1 items 500000000 times"),
        ("x", "len([x] * (x * 10 ** 6)) > 0", "repeating a list"),
        ("y.get('k')", None, ".get() of a Custom is not a known-pure method"),
    ],
)
def test_a_refused_operation_disarms_the_probe_at_once(engine, expression, condition, reason):
    """The guard refuses before computing; the probe goes to error/refused on the first hit and
    its hooks are removed, the program goes on."""
    s = spec(at("compute"), expression, condition=condition)
    (st,) = engine.sync([s])
    assert st["state"] == "armed", st

    class Custom(object):
        called = []

        def get(self, key):
            Custom.called.append(key)

        def __rmul__(self, other):
            return 1

    for _ in range(3):
        assert T.compute(5, Custom()) == 2
    hits(engine)
    st = status(engine, s["id"])
    assert st["state"] == "error" and st["error_kind"] == "refused", st
    assert st["reason"].startswith("refused: ") and reason in st["reason"], st["reason"]
    assert Custom.called == []
    assert hooks_left() == []

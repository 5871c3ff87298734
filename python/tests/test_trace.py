"""Call tracing end to end in this process: the real daemon starts a trace through
`POST /api/v1/traces`, the agent traces the functions of ``trace_targets`` with the backend of
the running interpreter (sys.monitoring on 3.12+; bytecode injection on 3.8, 3.9 and 3.11; a
profile function on 3.10), and the records
are read back from the daemon's store. After each test nothing of tracing is hooked."""

import asyncio
import os
import sys
import threading

import pytest

import scry
import trace_targets as T
from conftest import wait_until
from realdaemon import running
from scry import _features, _trace_backends

MON = _features.MONITORING
#: Bytecode injection traces (3.8, 3.9, 3.11): it sees the exception that leaves a call.
INJECTION = MON is None and _features.INJECTION_LAYOUT is not None


def thread_profile():
    """The profile function new threads get (`threading.getprofile` is 3.10+)."""
    getprofile = getattr(threading, "getprofile", None)
    return getprofile() if getprofile is not None else threading._profile_hook


@pytest.fixture
def daemon(home, tmp_path):
    yield from running(home, tmp_path)
    assert not _trace_backends.hooks_installed()


@pytest.fixture
def awake(daemon):
    scry.init(name="tracer-test")
    scry.wake()
    return daemon


def start(daemon, **spec):
    body = {"target": str(os.getpid()), "include": ["trace_targets"]}
    body.update(spec)
    status, doc = daemon.api("POST", "/api/v1/traces", body)
    assert status == 200, doc
    assert "error" not in doc["processes"][0], doc
    return doc


def stop_and_read(daemon, trace_id):
    status, doc = daemon.api("POST", "/api/v1/traces/{}/stop".format(trace_id), {})
    assert status == 200, doc
    return read(daemon, trace_id), doc


def read(daemon, trace_id):
    """Every record of the trace once the agent sent its last batch."""

    def ended():
        status, body = daemon.api("GET", "/api/v1/traces/{}/events?limit=10000".format(trace_id))
        assert status == 200, body
        events = body["events"]
        if events and events[-1]["data"].get("ended"):
            return events
        return None

    events = wait_until(ended, timeout=10, message="the trace's last batch")
    records = []
    for e in events:
        fns = e["data"]["functions"]
        for r in e["data"]["records"]:
            r = dict(r)
            if "f" in r:
                r["fn"] = fns[r["f"]]["function"]
                r["module"] = fns[r["f"]]["module"]
            records.append(r)
    return records, events


def names(records, kind=None):
    return [r.get("fn") for r in records if kind is None or r["e"] == kind]


def test_only_selected_functions_nested_and_recursive_calls_with_durations(awake):
    doc = start(awake, exclude=["trace_targets:untraced"], args=True, returns=True)
    assert doc["state"] == "running"
    T.fib(5)
    T.outer(3)
    T.untraced(1)
    (records, events), stopped = stop_and_read(awake, doc["id"])
    assert stopped["state"] == "stopped"
    assert set(names(records)) == {"fib", "outer", "inner"}
    assert names(records, "call").count("fib") == 15  # fib(5) makes 15 calls
    calls = [r for r in records if r["e"] == "call"]
    returns = [r for r in records if r["e"] == "return"]
    assert len(calls) == len(returns) == 15 + 1 + 3
    assert all(r["module"] == "trace_targets" for r in records)
    first = calls[0]
    assert first["fn"] == "fib" and first["args"] == {"n": {"t": "int", "v": 5}} and first["depth"] == 0
    top = [r for r in returns if r["fn"] == "fib" and r["depth"] == 0][0]
    assert top["value"] == {"t": "int", "v": 5}
    # Durations add up: a call lasts at least as long as its direct callees together.
    outer_ret = [r for r in returns if r["fn"] == "outer"][0]
    inner_total = sum(r["dur"] for r in returns if r["fn"] == "inner")
    assert outer_ret["dur"] >= inner_total > 0
    children_of_top = [r for r in returns if r["fn"] == "fib" and r["depth"] == 1]
    assert len(children_of_top) == 2 and top["dur"] >= sum(r["dur"] for r in children_of_top)
    # Timestamps are ordered per thread, and each return's duration matches its call.
    assert [r["ts"] for r in records] == sorted(r["ts"] for r in records)
    ended = events[-1]["data"]["ended"]
    assert ended["reason"] == "stopped" and ended["dropped"] == 0 and ended["recorded"] == len(records)


def test_generators_and_coroutines_yield_and_resume(awake):
    doc = start(awake, returns=True)
    assert list(T.counter(3)) == [0, 1, 2]
    assert asyncio.run(T.pipeline(2)) == 3
    (records, _), _ = stop_and_read(awake, doc["id"])
    gen = [r["e"] for r in records if r["fn"] == "counter"]
    assert gen == ["call", "yield", "resume", "yield", "resume", "yield", "resume", "return"]
    yields = [r["value"]["v"] for r in records if r["fn"] == "counter" and r["e"] == "yield"]
    assert yields == [0, 1, 2]
    steps = [r["e"] for r in records if r["fn"] == "step"]
    assert steps == ["call", "yield", "resume", "return"] * 2
    pipe = [r["e"] for r in records if r["fn"] == "pipeline"]
    assert pipe[0] == "call" and pipe[-1] == "return" and pipe.count("resume") == 2


def test_threads_are_told_apart(awake):
    doc = start(awake)
    T.in_thread(3)
    T.fib(1)
    (records, events), _ = stop_and_read(awake, doc["id"])
    tids = {r["tid"] for r in records if r["fn"] == "fib"}
    assert threading.get_ident() in tids and len(tids) == 2
    thread_calls = [r for r in records if r["fn"] == "fib" and r["tid"] != threading.get_ident()]
    assert len([r for r in thread_calls if r["e"] == "call"]) == 5
    named = {}
    for e in events:
        named.update(e["data"]["threads"])
    assert "MainThread" in named.values()


def test_exceptions_caught_inside_and_escaping(awake):
    doc = start(awake)
    assert T.catches() == "recovered"
    with pytest.raises(T.Boom):
        T.escapes()
    (records, _), _ = stop_and_read(awake, doc["id"])
    catches = [r for r in records if r["fn"] == "catches"]
    assert [r["e"] for r in catches if r["e"] in ("call", "return", "exception")] == ["call", "return"]
    fails = [r for r in records if r["fn"] == "fails" and r["e"] == "exception"]
    escapes = [r for r in records if r["fn"] == "escapes" and r["e"] == "exception"]
    assert len(fails) == 2 and len(escapes) == 1
    if MON is not None:
        assert fails[0]["exc"] == {"type": "Boom", "message": "caught inside"}
        assert escapes[0]["exc"]["type"] == "Boom"
        raised_in_catches = [r for r in catches if r["e"] == "raise"]
        assert raised_in_catches and raised_in_catches[0]["exc"]["message"] == "caught inside"
    elif INJECTION:
        assert fails[0]["exc"] == {"type": "Boom", "message": "caught inside"}
        assert escapes[0]["exc"]["type"] == "Boom"
    else:
        assert fails[0]["exc"]["type"] is None  # the profile hook does not see the exception
    assert all("dur" in r for r in fails + escapes)


def test_budget_drops_and_counts(awake):
    doc = start(awake, max_rate=1000)  # 10 events per 10 ms window
    for _ in range(5000):
        T.inner(1)
    (records, events), stopped = stop_and_read(awake, doc["id"])
    status = stopped["processes"][0]["status"]
    dropped = sum(e["data"]["dropped"] for e in events)
    assert dropped > 0 and status["dropped"] == dropped
    assert len(records) + dropped == 10000
    assert events[-1]["data"]["ended"]["dropped"] == dropped


def test_duration_ends_the_trace_and_removes_the_hooks(awake):
    doc = start(awake, duration=0.3)
    T.fib(2)
    records, events = read(awake, doc["id"])
    assert events[-1]["data"]["ended"]["reason"] == "duration"
    assert "fib" in names(records)
    assert not _trace_backends.hooks_installed()
    status, shown = awake.api("GET", "/api/v1/traces/" + doc["id"])
    assert status == 200 and shown["state"] == "ended"


def test_stop_leaves_no_hook(awake):
    fib_code, untraced_code = T.fib.__code__, T.untraced.__code__
    doc = start(awake)
    if MON is not None:
        tool = doc["processes"][0]["status"]["tool_id"]
        assert MON.get_tool(tool) == "scry-trace"
        assert MON.get_local_events(tool, T.fib.__code__) != 0
        assert MON.get_local_events(tool, T.untraced.__code__) != 0  # selected by the module
    elif INJECTION:
        assert _trace_backends.hooks_installed() and sys.getprofile() is None
        assert T.fib.__code__ is not fib_code and T.untraced.__code__ is not untraced_code
    else:
        assert sys.getprofile() is _trace_backends._profile and thread_profile() is _trace_backends._profile
    stop_and_read(awake, doc["id"])
    assert not _trace_backends.hooks_installed()
    if MON is not None:
        assert all(MON.get_tool(t) != "scry-trace" for t in range(6))
        assert MON.get_tool(tool) is None
    else:
        assert sys.getprofile() is None and thread_profile() is None
    assert T.fib.__code__ is fib_code and T.untraced.__code__ is untraced_code
    # The same trace id cannot be stopped twice in the agent, but the daemon says it is over.
    status, again = awake.api("POST", "/api/v1/traces/{}/stop".format(doc["id"]), {})
    assert status == 200 and again["state"] == "stopped"


def test_a_second_trace_is_refused_while_one_runs(awake):
    doc = start(awake)
    status, body = awake.api("POST", "/api/v1/traces", {"target": str(os.getpid())})
    assert status == 409 and "running in this process" in body["error"]["message"], body
    stop_and_read(awake, doc["id"])


def test_bad_patterns_and_unknown_targets_are_refused(awake):
    status, body = awake.api("POST", "/api/v1/traces", {"target": str(os.getpid()), "functions": ["nocolon"]})
    assert status == 400 or status == 409, body
    status, body = awake.api("POST", "/api/v1/traces", {"target": "no-such-process"})
    assert status == 404 and "hint" in body["error"], body
    status, body = awake.api("POST", "/api/v1/traces", {"target": str(os.getpid()), "max_rate": -1})
    assert status == 400, body
    assert not _trace_backends.hooks_installed()


def test_secret_arguments_are_redacted(awake):
    doc = start(awake, args=True)
    T.secretive("ann", "s3cr3t")
    (records, _), _ = stop_and_read(awake, doc["id"])
    call = [r for r in records if r["fn"] == "secretive" and r["e"] == "call"][0]
    assert call["args"] == {"user": {"t": "str", "v": "ann"}, "api_key": {"t": "redacted"}}


def test_modules_imported_during_the_trace_are_traced(awake, tmp_path, monkeypatch):
    (tmp_path / "late_traced.py").write_text("def late(x):\n    return x * 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    doc = start(awake, include=["late_traced"])
    import late_traced

    assert late_traced.late(2) == 6
    (records, _), _ = stop_and_read(awake, doc["id"])
    assert names(records, "call") == ["late"]
    sys.modules.pop("late_traced", None)


def test_pulse_without_a_daemon_is_a_no_op():
    assert scry.pulse("nothing", x=1, y=object()) is None
    assert scry.pulse(object()) is None
    assert not _trace_backends.hooks_installed()


def test_pulse_goes_into_the_trace_or_the_event_stream(awake):
    scry.pulse("loose", n=1, items=[1, 2])

    def loose():
        status, body = awake.api("GET", "/api/v1/events?kind=pulse")
        return body["events"] or None

    event = wait_until(loose, timeout=10, message="the pulse event")[0]
    assert event["source"] == "loose"
    assert event["data"]["values"]["n"] == {"t": "int", "v": 1}
    doc = start(awake)
    scry.pulse("inside", step=3)
    (records, _), _ = stop_and_read(awake, doc["id"])
    pulses = [r for r in records if r["e"] == "pulse"]
    assert pulses == [dict(pulses[0], name="inside", values={"step": {"t": "int", "v": 3}})]

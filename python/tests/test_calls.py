"""The generic `call` / `notify` extension point, end to end: the real daemon's
`POST /api/v1/processes/{pid}/call/{method}` reaching this process's agent, and `inspect`."""

import asyncio
import os
import threading

import pytest

import scry
from scry import _calls
from conftest import wait_until
from realdaemon import running


@pytest.fixture
def daemon(home, tmp_path):
    yield from running(home, tmp_path)


def call(daemon, method, params=None, timeout_ms=None):
    path = "/api/v1/processes/{}/call/{}".format(os.getpid(), method)
    if timeout_ms is not None:
        path += "?timeout_ms={}".format(timeout_ms)
    return daemon.api("POST", path, params if params is not None else {})


@_calls.method("test.echo")
def _echo(params, call_):
    if params.get("fail"):
        raise _calls.CallError("bad_request", "asked to fail")
    if params.get("crash"):
        raise ValueError("a bug in a feature")
    if params.get("later"):
        threading.Timer(0.05, call_.reply, args=({"later": True},)).start()
        return _calls.DEFERRED
    return {"echo": params}


_seen_notices = []


@_calls.topic("test.poke")
def _poke(data, link):
    _seen_notices.append(data)
    link.notify("test.poked", {"got": data})


def test_call_reaches_the_agent_and_errors_are_classified(daemon):
    scry.init(name="calls")
    scry.wake()
    assert call(daemon, "test.echo", {"a": [1, 2]}) == (200, {"echo": {"a": [1, 2]}})
    assert call(daemon, "test.echo", {"later": True}) == (200, {"later": True})

    status, body = call(daemon, "test.echo", {"fail": True})
    assert status == 400 and "asked to fail" in body["error"]["message"], body
    status, body = call(daemon, "test.echo", {"crash": True})
    assert status == 502 and "a bug in a feature" in body["error"]["message"], body
    # A method this agent does not advertise is refused by the daemon without asking.
    status, body = call(daemon, "no.such.method")
    assert status == 501 and body["error"]["kind"] == "unsupported", body
    # Params must be an object.
    status, body = daemon.api("POST", "/api/v1/processes/{}/call/test.echo".format(os.getpid()), [1])
    assert status == 400, body
    # The link survived all of it.
    assert call(daemon, "test.echo", {}) == (200, {"echo": {}})


def test_call_to_a_sleeping_or_unknown_process(daemon):
    scry.init(name="calls-asleep")
    scry.wake()
    scry.sleep()
    wait_until(lambda: call(daemon, "inspect")[0] == 409, timeout=10, message="the sleep to be seen")
    status, body = call(daemon, "inspect")
    assert body["error"]["kind"] == "not_connected" and "scry wake" in body["error"]["hint"], body
    status, body = daemon.api("POST", "/api/v1/processes/999999999/call/inspect", {})
    assert status == 404, body


def test_inspect_names_threads_and_lists_asyncio_tasks(daemon):
    scry.init(name="calls-inspect")
    scry.wake()
    started = threading.Event()
    release = None
    loop_box = {}

    async def leaf(ev):
        await ev.wait()

    async def middle(ev):
        await leaf(ev)

    async def main():
        ev = asyncio.Event()
        loop_box["loop"] = asyncio.get_running_loop()
        loop_box["ev"] = ev
        task = asyncio.ensure_future(middle(ev))
        task.set_name("waiter-task")
        started.set()
        await task

    def run_loop():
        asyncio.run(main())

    t = threading.Thread(target=run_loop, name="loop-thread")
    t.start()
    try:
        assert started.wait(10)
        status, body = call(daemon, "inspect")
        assert status == 200, body
        names = {th["name"]: th for th in body["threads"]}
        assert names["loop-thread"]["native_id"] == t.native_id
        assert names["MainThread"]["main"] is True
        (loop,) = body["asyncio"]
        assert loop["thread_native_id"] == t.native_id
        tasks = {task["name"]: task for task in loop["tasks"]}
        waiter = tasks["waiter-task"]
        assert waiter["state"] == "pending"
        assert [f["function"].rsplit(".", 1)[-1] for f in waiter["stack"]] == ["middle", "leaf", "wait"]
        # leaf awaits Event.wait(), itself a coroutine, which awaits a future.
        assert "Future" in (waiter["awaiting"] or ""), waiter
    finally:
        loop = loop_box.get("loop")
        if loop is not None:
            loop.call_soon_threadsafe(loop_box["ev"].set)
        t.join(10)


def test_notify_both_ways(daemon):
    scry.init(name="calls-notify")
    scry.wake()
    # The daemon has no HTTP way to send an arbitrary notify (its subsystems do, e.g. the REPL
    # relay); here: a notify from another thread goes out and the link stays up.
    from scry import _state

    link = _state._agent.link
    sent = []
    t = threading.Thread(target=lambda: sent.append(link.notify("test.hello", {"x": 1})))
    t.start()
    t.join(10)
    assert sent == [True]
    assert call(daemon, "test.echo", {}) == (200, {"echo": {}})


def test_lazy_feature_is_advertised_and_imported_on_first_call(daemon, tmp_path, monkeypatch):
    (tmp_path / "scry_lazy_feature.py").write_text(
        "from scry import _calls\n"
        "@_calls.method('test.lazy')\n"
        "def _lazy(params, call):\n"
        "    return {'lazy': params.get('x')}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    _calls.lazy("scry_lazy_feature", methods=("test.lazy",))
    _calls.lazy("scry_no_such_feature", methods=("test.missing",))
    assert "test.lazy" in _calls.methods()
    assert "scry_lazy_feature" not in __import__("sys").modules
    scry.init(name="lazy")
    scry.wake()
    assert call(daemon, "test.lazy", {"x": 7}) == (200, {"lazy": 7})
    assert "scry_lazy_feature" in __import__("sys").modules
    assert call(daemon, "test.lazy", {"x": 8}) == (200, {"lazy": 8})
    status, body = call(daemon, "test.missing")
    assert status == 502 and "scry_no_such_feature" in body["error"]["message"], body


def test_import_scry_leaves_features_and_their_stdlib_unloaded():
    import subprocess
    import sys

    code = (
        "import sys, scry\n"
        "print(sorted(m for m in ('scry._repl', 'scry._lines', 'scry._inspect', "
        "'scry._control', 'pdb', 'http.server', 'http.client') if m in sys.modules))\n"
        "print(callable(scry.pause), scry.post_mortem.__module__, scry.crash_handler.__name__)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(scry.__file__)))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["[]", "True scry._repl crash_handler"], out.stdout

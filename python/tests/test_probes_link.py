"""Probes over the link (a scriptable fake daemon): probes_sync, reports of hits, probe_status, and
every hook gone after sleep, shutdown or the daemon's sleep."""

import json
import sys
import time

import pytest

import probe_targets as T
import scry
from conftest import wait_until
from fakedaemon import FakeDaemon
from scry import _proto, _state
from test_engine import hooks_left


@pytest.fixture
def daemon(home):
    d = FakeDaemon(str(home / "run" / "agent.sock"))
    yield d
    scry.shutdown()
    d.close()
    assert hooks_left() == []


def awake(daemon):
    scry.init(name="probes")
    scry.wake()
    return daemon.wait_conn()


def at(marker):
    return "probe_targets.py:{}".format(T.line(marker))


def sync(conn, msg_id, *specs):
    conn.send({"type": "probes_sync", "id": msg_id, "probes": list(specs)})
    reply = conn.wait_type("reply", id=msg_id)
    assert reply["ok"], reply
    for status in reply["result"]["statuses"]:
        _proto.decode(json.dumps({"type": "probe_status", "statuses": [status]}), _proto.AGENT_TYPES)
    return reply["result"]["statuses"]


def probe_events(conn):
    out = []
    for msg in list(conn.messages):
        if msg.get("type") == "report":
            _proto.decode(json.dumps(msg), _proto.AGENT_TYPES)
            out.extend(e for e in msg["events"] if e["kind"] == "probe")
    return out


def test_sync_hits_and_statuses_over_the_link(daemon):
    conn = awake(daemon)
    statuses = sync(
        conn,
        1,
        {"id": "a", "location": at("compute"), "expressions": ["x", "y"]},
        {"id": "b", "location": at("compute"), "expressions": ["x"], "rate": {"mode": "first", "n": 2}},
        {"id": "c", "location": at("compute"), "expressions": ["open('x')"]},
    )
    assert [s["state"] for s in statuses] == ["armed", "armed", "error"]
    assert statuses[2]["error_kind"] == "invalid_expression"
    for x in range(5):
        T.compute(x)
    events = wait_until(lambda: len(probe_events(conn)) == 7 and probe_events(conn), message="7 hits reported")
    a = [e for e in events if e["source"] == "a"]
    assert [e["data"]["values"]["x"]["v"] for e in a] == [0, 1, 2, 3, 4]
    assert a[0]["data"]["values"]["y"] == {"t": "int", "v": 2}
    assert all(abs(e["t"] - time.time()) < 30 for e in events)
    # `first 2` ran out: its state change is sent on its own, at once.
    expired = conn.wait_for(
        lambda m: m.get("type") == "probe_status" and any(s["probe"] == "b" and s["state"] == "expired" for s in m["statuses"]),
        what="probe_status: b expired",
    )
    _proto.decode(json.dumps(expired), _proto.AGENT_TYPES)
    # Counters of `a` follow within about a second.
    conn.wait_for(
        lambda m: m.get("type") == "probe_status"
        and any(s["probe"] == "a" and s["hits"] == 5 and s["recorded"] == 5 for s in m["statuses"]),
        what="probe_status with a's counters",
    )
    # Removing them all: the reply is empty and nothing is hooked any more.
    assert sync(conn, 2) == []
    assert hooks_left() == []


def test_sleep_removes_every_hook(daemon):
    conn = awake(daemon)
    sync(conn, 1, {"id": "a", "location": at("compute"), "expressions": ["x"]})
    T.compute(1)
    assert hooks_left() != []
    scry.sleep()
    assert hooks_left() == []
    # The hit made before sleeping was still shipped, before goodbye.
    conn.wait_type("goodbye")
    kinds = [m["type"] for m in conn.messages]
    assert kinds.index("goodbye") > max(i for i, k in enumerate(kinds) if k == "report")
    assert len(probe_events(conn)) == 1
    T.compute(2)
    assert _state._agent.engine is None


def test_shutdown_removes_every_hook(daemon, tmp_path, monkeypatch):
    conn = awake(daemon)
    monkeypatch.syspath_prepend(str(tmp_path))
    statuses = sync(
        conn,
        1,
        {"id": "a", "location": at("compute"), "expressions": ["x"]},
        {"id": "p", "location": "not_imported_anywhere.py:3", "expressions": ["x"]},
    )
    assert [s["state"] for s in statuses] == ["armed", "pending"]
    scry.shutdown()
    assert hooks_left() == []


def test_the_daemons_sleep_removes_every_hook(daemon):
    conn = awake(daemon)
    sync(conn, 1, {"id": "a", "location": at("compute"), "expressions": ["x"]})
    conn.send({"type": "sleep", "id": 2})
    wait_until(lambda: scry.status()["state"] == "sleeping", message="the agent to sleep")
    assert hooks_left() == []


def test_a_new_wake_starts_without_probes(daemon):
    conn = awake(daemon)
    sync(conn, 1, {"id": "a", "location": at("compute"), "expressions": ["x"]})
    scry.sleep()
    scry.wake()
    conn2 = daemon.wait_conn(2)
    T.compute(1)
    time.sleep(0.1)
    assert probe_events(conn2) == []
    assert sync(conn2, 1, {"id": "a", "location": at("compute"), "expressions": ["x"]})[0]["hits"] == 0


@pytest.mark.skipif(sys.version_info < (3, 8), reason="3.8+")
def test_hello_names_the_backend(daemon):
    conn = awake(daemon)
    caps = conn.hello["capabilities"]
    assert "probes" in caps
    assert ("backend:sys.monitoring" in caps) == (sys.version_info >= (3, 12))
    assert ("backend:settrace" in caps) == (sys.version_info < (3, 12))

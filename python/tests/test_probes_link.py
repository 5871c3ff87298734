"""Probes over the link, against the real daemon (`scry serve`): probes added through its API reach
this process, hits and statuses reach the daemon typed, and every hook is gone after sleep,
shutdown or the daemon's sleep."""

import os
import sys
import time

import pytest

import probe_targets as T
import scry
from conftest import wait_until
from realdaemon import running
from scry import _state
from test_engine import hooks_left


@pytest.fixture
def daemon(home, tmp_path):
    yield from running(home, tmp_path)
    assert hooks_left() == []


def awake(daemon):
    scry.init(name="probes")
    return scry.wake()


def at(marker):
    return "probe_targets.py:{}".format(T.line(marker))


def add(daemon, name, location, *expressions, **fields):
    """Add a probe on this process through the daemon's API; returns the daemon's answer."""
    body = dict(fields, location=location, expressions=list(expressions), name=name, pid=os.getpid())
    status, probe = daemon.api("POST", "/api/v1/probes", body)
    assert status == 201, probe
    return probe


def status_here(daemon, name):
    """This process's status of the probe, as the daemon has it (None before the first)."""
    status, probe = daemon.api("GET", "/api/v1/probes/" + name)
    assert status == 200, probe
    mine = [p for p in probe["processes"] if p["pid"] == os.getpid()]
    return mine[0] if mine else None


def stored(daemon, name):
    """The probe's hits stored by the daemon, oldest first."""
    status, body = daemon.api("GET", "/api/v1/events?probe={}&order=oldest&limit=1000".format(name))
    assert status == 200, body
    return body["events"]


def assert_typed(status):
    """A probe status as the daemon keeps it: the agent's fields with their protocol types."""
    assert status["state"] in ("pending", "armed", "error", "expired"), status
    for counter in ("hits", "recorded", "dropped", "errors"):
        assert type(status[counter]) is int and status[counter] >= 0, status
    if status["state"] == "armed":
        assert isinstance(status["file"], str) and status["file"].endswith("probe_targets.py"), status
        assert type(status["line"]) is int and isinstance(status["function"], str), status


def test_sync_hits_and_statuses_over_the_link(daemon):
    awake(daemon)
    a = add(daemon, "a", at("compute"), "x", "y")
    b = add(daemon, "b", at("compute"), "x", rate={"mode": "first", "n": 2})
    for probe in (a, b):
        (st,) = probe["processes"]
        assert st["state"] == "armed" and st["line"] == T.line("compute"), st
        assert_typed(st)
    # An expression Python rejects: the agent's `error` status reaches the daemon, which refuses
    # the probe with the agent's reason.
    status, body = daemon.api(
        "POST", "/api/v1/probes", {"location": at("compute"), "expressions": ["open('x')"], "pid": os.getpid()}
    )
    assert status == 400 and body["error"]["kind"] == "invalid_expression", body
    assert "open()" in body["error"]["message"]
    for x in range(5):
        T.compute(x)
    hits_a = wait_until(lambda: len(stored(daemon, "a")) == 5 and stored(daemon, "a"), message="5 hits of a stored")
    hits_b = wait_until(lambda: len(stored(daemon, "b")) == 2 and stored(daemon, "b"), message="2 hits of b stored")
    assert [e["data"]["values"]["x"] for e in hits_a] == [{"t": "int", "v": v} for v in range(5)]
    assert hits_a[0]["data"]["values"]["y"] == {"t": "int", "v": 2}
    assert [e["data"]["values"]["x"]["v"] for e in hits_b] == [0, 1]
    assert all(e["kind"] == "probe" and e["pid"] == os.getpid() for e in hits_a + hits_b)
    assert all(abs(e["t_hit"] - time.time()) < 30 for e in hits_a + hits_b)
    # `first 2` ran out: the agent says so at once, and the daemon disables the spent probe.
    spent = wait_until(
        lambda: (status_here(daemon, "b") or {}).get("state") == "expired" and status_here(daemon, "b"),
        message="b expired in the daemon",
    )
    assert_typed(spent)
    assert spent["hits"] >= 2 and spent["recorded"] == 2
    assert daemon.api("GET", "/api/v1/probes/b")[1]["enabled"] is False
    # Counters of `a` follow within about a second.
    counted = wait_until(
        lambda: (status_here(daemon, "a") or {}).get("hits") == 5 and status_here(daemon, "a"),
        message="a's counters in the daemon",
    )
    assert counted["recorded"] == 5 and counted["state"] == "armed"
    assert_typed(counted)
    assert len(stored(daemon, "b")) == 2  # nothing more once spent
    # Removing them all: nothing is hooked any more (the daemon's DELETE waits for the agent).
    for name in ("a", "b"):
        status, body = daemon.api("DELETE", "/api/v1/probes/" + name)
        assert status == 200, body
    assert hooks_left() == []


def test_sleep_removes_every_hook(daemon):
    awake(daemon)
    add(daemon, "a", at("compute"), "x")
    T.compute(1)
    assert hooks_left() != []
    scry.sleep()
    assert hooks_left() == []
    # The hit made before sleeping was still shipped, and the agent said goodbye.
    hits = wait_until(lambda: stored(daemon, "a"), message="the hit made before sleeping")
    assert [e["data"]["values"]["x"]["v"] for e in hits] == [1]
    wait_until(lambda: daemon.goodbyes(os.getpid()) == ["sleep"], message="the goodbye in the daemon's log")
    T.compute(2)
    assert _state._agent.engine is None
    assert len(stored(daemon, "a")) == 1


def test_shutdown_removes_every_hook(daemon):
    awake(daemon)
    (armed,) = add(daemon, "a", at("compute"), "x")["processes"]
    (pending,) = add(daemon, "p", "not_imported_anywhere.py:3", "x")["processes"]
    assert (armed["state"], pending["state"]) == ("armed", "pending")
    assert hooks_left() != []
    scry.shutdown()
    assert hooks_left() == []
    wait_until(lambda: daemon.goodbyes(os.getpid()) == ["shutdown"], message="the goodbye in the daemon's log")


def test_the_daemons_sleep_removes_every_hook(daemon):
    awake(daemon)
    add(daemon, "a", at("compute"), "x")
    assert hooks_left() != []
    status, body = daemon.api("POST", "/api/v1/sleep", {"target": os.getpid()})
    assert status == 200 and body["already_sleeping"] is False, body
    wait_until(lambda: scry.status()["state"] == "sleeping", message="the agent to sleep")
    assert hooks_left() == []


def test_a_new_wake_starts_without_probes(daemon):
    awake(daemon)
    add(daemon, "a", at("compute"), "x")
    T.compute(1)
    wait_until(lambda: (status_here(daemon, "a") or {}).get("hits") == 1, message="a's first hit counted")
    scry.sleep()
    assert hooks_left() == []
    scry.wake()
    # The daemon sends the probe again to the new connection; the agent armed it afresh, with
    # counters from zero (a probe kept from before the sleep would still count its old hit).
    wait_until(
        lambda: (status_here(daemon, "a") or {}).get("hits") == 0,
        message="the daemon to re-send a and see it armed afresh",
    )
    assert status_here(daemon, "a")["state"] == "armed"
    T.compute(2)
    wait_until(lambda: len(stored(daemon, "a")) == 2, message="the hit after the new wake stored")
    wait_until(lambda: status_here(daemon, "a")["hits"] == 1, message="a's counters after the new wake")
    assert [e["data"]["values"]["x"]["v"] for e in stored(daemon, "a")] == [1, 2]


@pytest.mark.skipif(sys.version_info < (3, 8), reason="3.8+")
def test_hello_names_the_backend(daemon):
    awake(daemon)
    caps = daemon.process(os.getpid())["capabilities"]
    assert "probes" in caps
    assert ("backend:sys.monitoring" in caps) == (sys.version_info >= (3, 12))
    # Before 3.12: bytecode injection where scry has a layout for the version (3.8, 3.9, 3.11).
    older = "bytecode" if sys.version_info[:2] in ((3, 8), (3, 9), (3, 11)) else "settrace"
    assert ("backend:" + older in caps) == (sys.version_info < (3, 12))

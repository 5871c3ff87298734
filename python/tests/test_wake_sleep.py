"""Wake and sleep against the real daemon (`scry serve`), started per test with its own SCRY_HOME.

The binary is ``$SCRY_BIN``, else ``<repo>/target/debug/scry``; when it is missing these tests fail
and say how to build it.
"""

import os
import time

import pytest

import scry
from conftest import open_fds, scry_threads, socket_fds, wait_until
from realdaemon import running
from scry import _state


@pytest.fixture
def daemon(home, tmp_path):
    yield from running(home, tmp_path)


def awake_in_daemon(daemon, pid, session=None):
    proc = daemon.process(pid)
    if proc is None or proc["state"] != "awake":
        return False
    return session is None or proc.get("session_id") == session


def test_wake_registers_and_sleep_unregisters(daemon):
    scry.init(name="e2e")
    st = scry.wake()
    assert st["state"] == "awake" and st["connected"] is True
    assert st["connection_id"] and st["connection_id"].startswith("s-")
    assert st["daemon_url"] == "unix://" + os.path.join(daemon.home, "run", "agent.sock")
    proc = daemon.process(os.getpid())
    assert proc is not None and proc["state"] == "awake", proc
    assert proc["name"] == "e2e" and proc["session_id"] == st["connection_id"]
    assert proc["control"] == {"socket": st["control_socket"]}
    st = scry.sleep()
    assert st["state"] == "sleeping" and st["connected"] is False and st["connection_id"] is None
    wait_until(
        lambda: (daemon.process(os.getpid()) or {}).get("state") == "sleeping",
        message="the daemon to list the process as sleeping",
    )
    assert [t.name for t in scry_threads()] == ["scry-control"]


def test_twenty_cycles_leave_no_thread_fd_or_socket(daemon):
    scry.init(name="cycles")
    threads = sorted(t.name for t in scry_threads())
    fds, sockets = open_fds(), socket_fds()
    sessions = set()
    for _ in range(20):
        st = scry.wake()
        assert st["connected"]
        sessions.add(st["connection_id"])
        assert scry.sleep()["state"] == "sleeping"
    assert len(sessions) == 20
    assert sorted(t.name for t in scry_threads()) == threads == ["scry-control"]
    assert open_fds() == fds
    assert socket_fds() == sockets


def test_reconnects_after_the_daemon_is_killed_and_restarted(daemon):
    scry.init(name="survivor")
    first = scry.wake()["connection_id"]
    daemon.kill()
    wait_until(lambda: not scry.status()["connected"], timeout=10, message="the agent to notice")
    st = scry.status()
    assert st["state"] == "awake" and st["connection_id"] is None
    time.sleep(0.5)  # a few failed attempts while the daemon is away
    daemon.start()
    wait_until(lambda: scry.status()["connected"], timeout=20, message="the agent to reconnect by itself")
    st = scry.status()
    assert st["connection_id"] != first
    wait_until(
        lambda: awake_in_daemon(daemon, os.getpid(), st["connection_id"]),
        message="the restarted daemon to list the process as awake",
    )


def test_http_daemon_url(daemon):
    scry.init()
    url = "http://" + daemon.info["http"]
    st = scry.wake(url)
    assert st["connected"] and st["daemon_url"] == url
    assert awake_in_daemon(daemon, os.getpid(), st["connection_id"])


def test_daemon_wakes_and_puts_to_sleep_by_name(daemon):
    scry.init(name="remote-controlled")
    status, body = daemon.api("POST", "/api/v1/wake", {"target": "remote-controlled"})
    assert status == 200, body
    st = scry.status()
    assert st["state"] == "awake" and st["connected"]
    status, body = daemon.api("POST", "/api/v1/sleep", {"target": str(os.getpid())})
    assert status == 200, body
    wait_until(lambda: scry.status()["state"] == "sleeping", message="sleep requested by the daemon")
    wait_until(lambda: [t.name for t in scry_threads()] == ["scry-control"], message="the link thread to end")


def test_reports_are_stored_and_acknowledged(daemon):
    scry.init(name="reporter")
    scry.wake()
    t = time.time()
    events = [{"kind": "pulse", "t": t + i, "source": "test", "data": {"i": i}} for i in range(5)]
    assert _state.send_report(events, dropped=1)
    link = _state._agent.link
    wait_until(lambda: link.acked_seq >= 1, timeout=10, message="an ack from the daemon")

    def stored():
        status, body = daemon.api("GET", "/api/v1/events?kind=pulse&order=oldest&limit=100")
        assert status == 200, body
        return [e for e in body["events"] if e.get("source") == "test"]

    rows = wait_until(lambda: len(stored()) == 5 and stored(), message="5 stored events")
    assert [r["data"]["i"] for r in rows] == list(range(5))


@pytest.fixture
def tcp_daemon(home, tmp_path):
    yield from running(home, tmp_path, "--agent-tcp", "127.0.0.1:0")


def test_tcp_with_the_daemon_token(tcp_daemon, home):
    # The daemon created $SCRY_HOME/token (mode 0600) for its TCP listener; init() reads it.
    assert (home / "token").exists()
    scry.init()
    url = "tcp://" + tcp_daemon.info["agent_tcp"]
    st = scry.wake(url)
    assert st["connected"] and st["daemon_url"] == url
    assert awake_in_daemon(tcp_daemon, os.getpid(), st["connection_id"])
    # http:// prefers the unix socket, which exists on this host.
    scry.sleep()
    st = scry.wake("http://" + tcp_daemon.info["http"])
    assert st["connected"]
    assert _state._agent.link.endpoint.startswith("unix://")


def test_tcp_with_a_wrong_token_is_refused(tcp_daemon, monkeypatch):
    monkeypatch.setenv("SCRY_TOKEN", "not-the-token")
    scry.init()
    with pytest.raises(scry.DaemonError) as info:
        scry.wake("tcp://" + tcp_daemon.info["agent_tcp"])
    # The daemon's proof does not verify with our token: the agent stops before its hello.
    assert "refusing to talk to" in str(info.value) and "token" in str(info.value)
    assert scry.status()["state"] == "sleeping"
    proc = tcp_daemon.process(os.getpid())
    assert proc is None or (proc["source"] == "discovery" and proc.get("session_id") is None), proc

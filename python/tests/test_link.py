"""The daemon link: handshake, the daemon's requests, reports, reconnects, address resolution.

Everything a real daemon does is tested against the real one (`scry serve`, see realdaemon.py):
the handshake and what the daemon learns from hello, its sleep request, refusals, reports stored
and acknowledged, heartbeats, a daemon that stops and comes back. The scripted peer
(scripted_peer.py) is used only for what a real daemon never sends: bad lines, unknown or
out-of-place messages, an over-long line, a malformed probes_sync, no answer to hello, and a
daemon that stops reading.
"""

import json
import os
import socket
import sys
import time

import pytest

import probe_targets as T
import scry
from conftest import scry_threads, wait_until
from realdaemon import elsewhere, running, write_config
from scripted_peer import ScriptedPeer
from scry import _features, _handshake, _link, _producers, _proto, _state


@pytest.fixture
def daemon(home, tmp_path):
    yield from running(home, tmp_path)


@pytest.fixture
def heartbeat_daemon(home, tmp_path):
    """Agents flush every 20 ms and send a heartbeat after 100 ms of silence."""
    write_config(home, flush_interval_ms=20, heartbeat_ms=100)
    yield from running(home, tmp_path)


@pytest.fixture
def small_batch_daemon(home, tmp_path):
    """At most 3 events a report."""
    write_config(home, flush_interval_ms=20, max_batch=3)
    yield from running(home, tmp_path)


@pytest.fixture
def slow_flush_daemon(home, tmp_path):
    """Agents flush only once a minute (or when they sleep)."""
    write_config(home, flush_interval_ms=60000, heartbeat_ms=60000)
    yield from running(home, tmp_path)


def free_port():
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


@pytest.fixture
def tcp_daemon(home, tmp_path):
    """Also listening for agents on TCP. (A fixed port: with `--agent-tcp 127.0.0.1:0` the
    daemon's GET /api/v1/agent-endpoint names port 0 rather than the port it bound.)"""
    yield from running(home, tmp_path, "--agent-tcp", "127.0.0.1:{}".format(free_port()))


def threads():
    return sorted(t.name for t in scry_threads())


def stored_pulses(daemon):
    status, body = daemon.api("GET", "/api/v1/events?kind=pulse&order=oldest&limit=1000")
    assert status == 200, body
    return body["events"]


def dropped_by_agents(daemon):
    status, body = daemon.api("GET", "/api/v1/status")
    assert status == 200, body
    return body["dropped"]["by_agents"]


def hide_the_unix_socket(daemon):
    """Move the daemon's agent socket away, as if the daemon ran on another host: its
    agent-endpoint still names the path, which no longer exists here."""
    path = os.path.join(daemon.home, "run", "agent.sock")
    os.rename(path, path + ".elsewhere")
    return path


# -- against the real daemon -----------------------------------------------------------------


def test_hello_carries_everything(daemon):
    scry.init(name="hello-test")
    st = scry.wake()
    assert st["connected"] and st["connection_id"].startswith("s-")
    # What the daemon learnt from hello.
    proc = daemon.process(os.getpid())
    assert proc["state"] == "awake" and proc["session_id"] == st["connection_id"], proc
    assert proc["ppid"] == os.getppid()
    assert proc["host"] == socket.gethostname()
    assert proc["name"] == "hello-test"
    assert proc["origin"] == "embedded"
    assert proc["python_version"].startswith("{}.{}.{}".format(*sys.version_info[:3]))
    assert proc["executable"]
    assert proc["argv"] and proc["cwd"] == os.getcwd()
    caps = proc["capabilities"]
    assert caps[:2] == ["control_plane", "probes"]
    backend = "sys.monitoring" if sys.version_info >= (3, 12) else _features.BACKEND
    assert "backend:" + backend in caps
    assert any(c.startswith("backend_reason:") for c in caps)
    assert proc["control"] == {"socket": st["control_socket"]}
    # The fields the daemon checks (it accepted them) or does not list, from the agent's builder
    # of the hello it sent.
    hello = _state._agent.link._make_hello(None)
    _proto.decode(json.dumps(hello), _proto.AGENT_TYPES)
    assert hello["protocol"] == _proto.PROTOCOL_VERSION
    assert hello["agent_version"] == scry.__version__
    assert hello["started_at"] <= time.time()
    assert hello["nonce"] is None  # embedded, not injected
    assert threads() == ["scry-control", "scry-link"]


def test_daemon_requested_sleep(daemon, home):
    scry.init(name="told-to-sleep")
    first = scry.wake()["connection_id"]
    status, body = daemon.api("POST", "/api/v1/sleep", {"target": os.getpid()})
    assert status == 200, body
    assert (body["already_sleeping"], body["pid"]) == (False, os.getpid()), body
    assert body["processes"] == [
        {"pid": os.getpid(), "name": "told-to-sleep", "already_sleeping": False}
    ], body
    wait_until(lambda: scry.status()["state"] == "sleeping", message="sleeping")
    wait_until(lambda: threads() == ["scry-control"], message="only the control thread")
    wait_until(lambda: daemon.goodbyes(os.getpid()) == ["sleep"], message="goodbye (sleep) in the daemon's log")
    wait_until(lambda: daemon.process(os.getpid())["state"] == "sleeping", message="the daemon to see it asleep")
    record = json.loads((home / "clients" / "{}.json".format(os.getpid())).read_text())
    assert record["state"] == "sleeping"
    # And it can wake again.
    st = scry.wake()
    assert st["connected"] and st["connection_id"] != first
    proc = daemon.process(os.getpid())
    assert proc["state"] == "awake" and proc["session_id"] == st["connection_id"]


def test_sleep_and_shutdown_say_goodbye(daemon):
    scry.init()
    scry.wake()
    scry.sleep()
    wait_until(lambda: daemon.goodbyes(os.getpid()) == ["sleep"], message="goodbye (sleep)")
    scry.wake()
    scry.shutdown()
    wait_until(lambda: daemon.goodbyes(os.getpid()) == ["sleep", "shutdown"], message="goodbye (shutdown)")


def test_a_goodbye_reason_is_kept_short_whatever_the_agent_sends(daemon, monkeypatch):
    # The reason is the agent's word and goes into a stored system event: cut to 64 characters.
    real = _proto.goodbye
    monkeypatch.setattr(_proto, "goodbye", lambda reason: real("x" * 100000))
    scry.init()
    scry.wake()
    scry.sleep()
    wait_until(lambda: daemon.goodbyes(os.getpid()) == ["x" * 64], message="the goodbye, cut")


def test_heartbeat_when_silent(heartbeat_daemon):
    d = heartbeat_daemon
    scry.init()
    scry.wake()
    assert _state._agent.link.settings["heartbeat_ms"] == 100
    # After the handshake (and the reply to the daemon's first probes_sync) nothing else is sent:
    # no probes, no reports. Each later time the daemon last heard from the agent is a heartbeat.
    heard = []
    start = time.monotonic()
    while time.monotonic() - start < 0.7:
        t = d.process(os.getpid())["last_heard"]
        if not heard or t != heard[-1]:
            heard.append(t)
        time.sleep(0.01)
    gaps = [b - a for a, b in zip(heard, heard[1:])][1:]  # the first may be hello -> sync reply
    assert 3 <= len(gaps) <= 10, heard
    assert min(gaps) >= 0.05, gaps  # not one per flush
    assert time.time() - d.process(os.getpid())["last_heard"] < 1.0


def test_reports_in_batches_with_seq_and_dropped(small_batch_daemon):
    d = small_batch_daemon
    scry.init()
    scry.wake()
    link = _state._agent.link
    t = time.time()
    events = [{"kind": "pulse", "t": t + i, "source": "batch", "data": {"i": i}} for i in range(7)]
    assert _state.send_report(events, dropped=2) is True
    rows = wait_until(lambda: len(stored_pulses(d)) == 7 and stored_pulses(d), message="7 events stored")
    assert [r["data"]["i"] for r in rows] == list(range(7))
    assert [r["t_hit"] for r in rows] == pytest.approx([t + i for i in range(7)], abs=1e-6)
    # At most 3 a report: 3 reports, numbered 1, 2, 3, each acknowledged once stored.
    assert link.reports_sent == 3
    wait_until(lambda: link.acked_seq == 3, message="the daemon to ack seq 3")
    wait_until(lambda: dropped_by_agents(d) == 2, message="2 dropped counted by the daemon")
    # A bad event is dropped and counted, the others still go through.
    bad = [{"kind": "pulse", "t": 1.0, "data": {"x": float("nan")}}, {"kind": 5, "t": 1.0}, {"kind": "pulse", "t": 2.0}]
    _state.send_report(bad)
    wait_until(lambda: len(stored_pulses(d)) == 8, message="the good event stored")
    assert stored_pulses(d)[0]["t_hit"] == 2.0 and stored_pulses(d)[0]["source"] is None
    wait_until(lambda: dropped_by_agents(d) == 4, message="2 more dropped counted by the daemon")
    # (The agent's warning about the bad events may travel in a report of its own.)
    assert link.reports_sent >= 4
    wait_until(lambda: link.acked_seq == link.reports_sent, message="every report acknowledged")


def test_report_buffer_is_bounded(slow_flush_daemon, monkeypatch):
    d = slow_flush_daemon
    monkeypatch.setattr(_link, "BUFFER_CAPACITY", 5)
    scry.init()
    scry.wake()
    events = [{"kind": "pulse", "t": 1.0, "source": None, "data": {}}] * 8
    assert _state.send_report(events) is False  # 3 did not fit
    assert _state.send_report(events[:1]) is False
    assert stored_pulses(d) == []  # nothing flushed yet
    scry.sleep()  # flushes before goodbye
    wait_until(lambda: len(stored_pulses(d)) == 5, message="the 5 buffered events stored")
    wait_until(lambda: dropped_by_agents(d) == 4, message="4 dropped counted by the daemon")
    wait_until(lambda: d.goodbyes(os.getpid()) == ["sleep"], message="goodbye after the report")
    assert _state.send_report(events) is False  # asleep: nothing is queued


def test_a_link_drains_its_producers_in_order_past_one_that_fails(monkeypatch):
    monkeypatch.setattr(_producers, "_factories", [])  # only these, and the real ones back after
    drained = []

    class Fixed(_producers.Producer):
        what = "fixed events"

        def __init__(self, name, fail=False):
            self.name = name
            self.fail = fail

        def drain(self, room, flush_max):
            drained.append((self.name, room))
            if self.fail:
                raise RuntimeError("boom")
            return [{"kind": "pulse", "t": 1.0, "source": self.name, "data": {}}] * 2, 1, ()

    _producers.register(lambda link: Fixed("last"), order=2)
    _producers.register(lambda link: None, order=0)  # nothing for this link
    _producers.register(lambda link: Fixed("failing", fail=True), order=1)
    _producers.register(lambda link: Fixed("first"), order=0)
    link = _link.Link("unix:///nonexistent/agent.sock", None, "", None, 1.0, None)
    try:
        link._pump()
    finally:
        link._close_pipe()
    room = _link.BUFFER_CAPACITY
    assert drained == [("first", room), ("failing", room - 2), ("last", room - 2)]
    assert [e["source"] for e in link._buf] == ["first", "first", "last", "last"]
    assert link._dropped == 2


def test_reconnects_when_the_daemon_stops_and_comes_back(daemon):
    scry.init(name="patient")
    first = scry.wake()["connection_id"]
    daemon.stop()  # a clean stop: the daemon closes the connection itself
    wait_until(lambda: not scry.status()["connected"], timeout=10, message="disconnected")
    st = scry.status()
    assert st["state"] == "awake" and st["connection_id"] is None
    assert threads() == ["scry-control", "scry-link"]
    time.sleep(1.0)  # a few failed attempts (0.1, 0.2, 0.4 s ...)
    daemon.start()
    wait_until(lambda: scry.status()["connected"], timeout=10, message="reconnected")
    second = scry.status()["connection_id"]
    assert second != first
    proc = daemon.process(os.getpid())
    assert proc["state"] == "awake" and proc["session_id"] == second
    # The new connection serves the daemon's requests.
    location = "probe_targets.py:{}".format(T.line("compute"))
    status, body = daemon.api("POST", "/api/v1/probes", {"location": location, "expressions": ["x"], "pid": os.getpid()})
    assert status == 201 and body["processes"][0]["state"] == "armed", body
    assert daemon.api("DELETE", "/api/v1/probes/" + body["id"])[0] == 200
    # Sleeping while disconnected stops the reconnect loop.
    daemon.stop()
    wait_until(lambda: not scry.status()["connected"], timeout=10, message="disconnected again")
    assert scry.sleep()["state"] == "sleeping"
    assert threads() == ["scry-control"]


def test_refused_is_a_daemon_error_with_the_reason(daemon, monkeypatch):
    monkeypatch.setattr(_proto, "PROTOCOL_VERSION", 7)  # an agent from the future
    scry.init()
    with pytest.raises(scry.DaemonError) as info:
        scry.wake()
    message = str(info.value)
    assert "protocol version 7 is not supported" in message and "accepts protocol versions 1" in message
    assert scry.status()["state"] == "sleeping"
    assert threads() == ["scry-control"]
    assert daemon.process(os.getpid())["source"] == "discovery"  # never registered


def test_tcp_sends_the_token(home, tmp_path, monkeypatch):
    # The daemon has a SCRY_HOME of its own: the agent knows its token only from SCRY_TOKEN.
    with elsewhere(tmp_path, "daemon-home", "--agent-tcp", "127.0.0.1:{}".format(free_port())) as d:
        token = (tmp_path / "daemon-home" / "token").read_text().strip()
        monkeypatch.setenv("SCRY_TOKEN", token)
        scry.init()
        url = "tcp://" + d.info["agent_tcp"]
        st = scry.wake(url)
        assert st["connected"] and st["daemon_url"] == url
        proc = d.process(os.getpid())
        assert proc["state"] == "awake" and proc["session_id"] == st["connection_id"]


def test_http_resolution_falls_back_to_tcp(tcp_daemon):
    hide_the_unix_socket(tcp_daemon)
    scry.init()  # the token from $SCRY_HOME/token, which the daemon wrote
    url = "http://" + tcp_daemon.info["http"]
    st = scry.wake(url)
    assert st["connected"] and st["daemon_url"] == url
    assert _state._agent.link.endpoint == "tcp://" + tcp_daemon.info["agent_tcp"]
    assert tcp_daemon.process(os.getpid())["session_id"] == st["connection_id"]


def test_http_resolution_without_a_usable_endpoint(daemon):
    path = hide_the_unix_socket(daemon)
    scry.init()
    with pytest.raises(scry.DaemonError) as info:
        scry.wake("http://" + daemon.info["http"])
    assert "no agent endpoint" in str(info.value) and path in str(info.value)
    assert scry.status()["state"] == "sleeping"


def test_http_resolution_without_a_daemon(home):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    scry.init()
    with pytest.raises(scry.DaemonError) as info:
        scry.wake("http://127.0.0.1:{}".format(port))
    assert "scry serve" in str(info.value)


# -- against the scripted peer: what a real daemon never sends -------------------------------


@pytest.fixture
def peer(home):
    p = ScriptedPeer(str(home / "run" / "agent.sock"))
    yield p
    scry.shutdown()
    p.close()


def awake_with(peer):
    scry.init()
    scry.wake()
    return peer.wait_conn()


def test_bad_lines_from_the_daemon(peer):
    conn = awake_with(peer)
    conn.send({"type": "ping", "id": 7})
    assert conn.wait_type("reply", id=7) == {"type": "reply", "id": 7, "ok": True, "result": {}}
    conn.send({"type": "frobnicate", "id": 8})
    err = conn.wait_type("error", in_reply_to=8)
    assert err["kind"] == "unknown_type"
    conn.send(b"this is not json\n")
    conn.wait_for(lambda m: m.get("type") == "error" and m.get("kind") == "malformed", what="malformed error")
    conn.send({"type": "ping", "id": "x"})
    conn.wait_for(lambda m: m.get("type") == "error" and "`id`" in m.get("message", ""), what="bad id error")
    conn.send({"type": "welcome", "protocol": 1, "daemon_version": "x", "session_id": "s", "settings": {"flush_interval_ms": 1, "max_batch": 1, "heartbeat_ms": 1}})
    conn.wait_for(lambda m: m.get("type") == "error" and m.get("kind") == "unexpected", what="unexpected error")
    conn.send({"type": "ack", "seq": 3})  # a report never sent
    conn.send({"type": "error", "kind": "internal", "message": "daemon trouble", "in_reply_to": None})
    # Still alive and answering, on the same connection.
    conn.send({"type": "ping", "id": 9})
    conn.wait_type("reply", id=9)
    assert scry.status()["connected"] and len(peer.conns) == 1
    # Every line the agent sent is valid for the daemon.
    for raw in conn.raw:
        _proto.decode(raw, _proto.AGENT_TYPES)


def test_a_malformed_probes_sync_is_refused(peer):
    conn = awake_with(peer)
    conn.send({"type": "probes_sync", "id": 22, "probes": [{"id": "p", "location": "x.py:1"}]})
    err = conn.wait_type("error", in_reply_to=22)
    assert err["kind"] == "malformed" and "expressions" in err["message"]
    assert scry.status()["connected"]


def test_an_over_long_line_ends_the_connection(peer):
    conn = awake_with(peer)
    first = scry.status()["connection_id"]
    conn.send(b"x" * (_proto.MAX_LINE_BYTES + 1))  # and no newline, ever
    err = conn.wait_type("error", timeout=10)
    assert err["kind"] == "too_large", err
    conn.wait_closed()
    # A new connection, as after any loss.
    peer.wait_conn(2).wait_type("hello")
    wait_until(lambda: scry.status()["connected"], message="reconnected")
    assert scry.status()["connection_id"] != first


def test_no_welcome_within_register_timeout(home):
    p = ScriptedPeer(str(home / "run" / "agent.sock"), silent=True)
    try:
        scry.init(register_timeout=0.3)
        start = time.monotonic()
        with pytest.raises(scry.DaemonError) as info:
            scry.wake()
        assert time.monotonic() - start < 3
        assert "did not answer hello" in str(info.value)
        assert scry.status()["state"] == "sleeping"
    finally:
        scry.shutdown()
        p.close()


def test_a_daemon_that_stops_reading(home, monkeypatch):
    # Writes to a daemon that reads nothing block; after SEND_TIMEOUT the agent gives that
    # connection up, reconnects, and resends what was not acknowledged (same stream, the same
    # seqs: the daemon stores each once), then goes on once acks come: nothing dropped.
    monkeypatch.setattr(_handshake, "SEND_TIMEOUT", 0.5)
    p = ScriptedPeer(str(home / "run" / "agent.sock"), deaf=[0])
    try:
        deaf = awake_with(p)
        events = [{"kind": "pulse", "t": 1.0, "source": None, "data": {"pad": "x" * 200}}] * 20000
        start = time.monotonic()
        assert _state.send_report(events) is True
        second = p.wait_conn(2, timeout=10)
        assert time.monotonic() - start < 8
        wait_until(lambda: scry.status()["connected"], message="connected to the second connection")

        def reports():
            with second.cond:
                return [m for m in second.messages if m.get("type") == "report"]

        # The unacknowledged window (UNACKED_REPORTS batches) is resent before any ack.
        wait_until(lambda: len(reports()) >= _link.UNACKED_REPORTS, message="the resent window")
        first = reports()[0]
        assert first["seq"] == 1 and first["stream"]
        def ack_and_count():
            got = reports()
            second.send({"type": "ack", "seq": got[-1]["seq"]})
            return sum(len(r["events"]) for r in got) >= 20000

        wait_until(ack_and_count, message="the rest, as acks come")
        got = reports()
        assert sum(len(r["events"]) for r in got) == 20000
        assert all(r["dropped"] == 0 and r["stream"] == first["stream"] for r in got)
        assert [r["seq"] for r in got] == list(range(1, len(got) + 1))
        assert deaf.messages[0]["type"] == "hello" and len(deaf.messages) == 1
    finally:
        scry.shutdown()
        p.close()

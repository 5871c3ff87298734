"""The daemon link against a scriptable fake daemon: handshake, requests, reports, reconnects."""

import http.server
import json
import os
import socket
import sys
import threading
import time

import pytest

import scry
from conftest import open_fds, scry_threads, socket_fds, wait_until
from fakedaemon import FakeDaemon
from scry import _proto, _state


@pytest.fixture
def daemon(home):
    d = FakeDaemon(str(home / "run" / "agent.sock"))
    yield d
    scry.shutdown()
    d.close()


def awake(daemon, **kw):
    scry.init(**kw)
    st = scry.wake()
    return st, daemon.wait_conn()


def test_hello_carries_everything(daemon, home):
    st, conn = awake(daemon, name="hello-test")
    hello = conn.hello
    _proto.decode(json.dumps(hello), _proto.AGENT_TYPES)  # valid for the daemon's decoder
    assert hello["type"] == "hello"
    assert hello["protocol"] == _proto.PROTOCOL_VERSION
    assert hello["agent_version"] == scry.__version__
    assert hello["pid"] == os.getpid() and hello["ppid"] == os.getppid()
    assert hello["host"] == socket.gethostname()
    assert hello["name"] == "hello-test"
    assert hello["origin"] == "embedded"
    assert hello["capabilities"][:2] == ["control_plane", "probes"]
    backend = "sys.monitoring" if sys.version_info >= (3, 12) else "settrace"
    assert "backend:" + backend in hello["capabilities"]
    assert any(c.startswith("backend_reason:") for c in hello["capabilities"])
    assert hello["control"] == {"host": st["control_host"], "port": st["control_port"]}
    assert hello["python"]["executable"]
    assert hello["argv"] and hello["cwd"] == os.getcwd()
    assert hello["started_at"] <= time.time()
    assert hello["nonce"] is None and hello["token"] is None  # no token over unix sockets
    assert st["connected"] and st["connection_id"] == "s-fake-0"
    assert [t.name for t in scry_threads()] == ["scry-control", "scry-link"] or sorted(
        t.name for t in scry_threads()
    ) == ["scry-control", "scry-link"]


def test_ping_unknown_and_malformed(daemon):
    _, conn = awake(daemon)
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
    conn.send({"type": "ack", "seq": 3})
    conn.send({"type": "error", "kind": "internal", "message": "daemon trouble", "in_reply_to": None})
    # Still alive and answering.
    conn.send({"type": "ping", "id": 9})
    conn.wait_type("reply", id=9)
    assert scry.status()["connected"]
    # Every line the agent sent is valid for the daemon.
    for raw in conn.raw:
        _proto.decode(raw, _proto.AGENT_TYPES)


def test_daemon_requested_sleep(daemon, home):
    _, conn = awake(daemon)
    conn.send({"type": "sleep", "id": 3})
    assert conn.wait_type("reply", id=3)["ok"] is True
    assert conn.wait_type("goodbye")["reason"] == "sleep"
    conn.wait_closed()
    wait_until(lambda: scry.status()["state"] == "sleeping", message="sleeping")
    wait_until(lambda: [t.name for t in scry_threads()] == ["scry-control"], message="only the control thread")
    record = json.loads((home / "clients" / "{}.json".format(os.getpid())).read_text())
    assert record["state"] == "sleeping"
    # And it can wake again.
    assert scry.wake()["connected"]
    assert daemon.wait_conn(2).hello["type"] == "hello"


def test_sleep_sends_goodbye_and_leaves_nothing(daemon):
    scry.init()
    fds, sockets = open_fds(), socket_fds()
    threads = sorted(t.name for t in scry_threads())
    scry.wake()
    conn = daemon.wait_conn()
    scry.sleep()
    assert conn.wait_type("goodbye")["reason"] == "sleep"
    conn.wait_closed()
    assert sorted(t.name for t in scry_threads()) == threads
    # The fake daemon's own accepted socket is in this process too: compare after closing it.
    conn.close()
    daemon.conns.remove(conn)
    assert open_fds() == fds and socket_fds() == sockets


def test_shutdown_says_goodbye(daemon):
    _, conn = awake(daemon)
    scry.shutdown()
    assert conn.wait_type("goodbye")["reason"] == "shutdown"


def test_heartbeat_when_silent(home):
    d = FakeDaemon(str(home / "run" / "agent.sock"), settings={"flush_interval_ms": 20, "max_batch": 10, "heartbeat_ms": 100})
    try:
        _, conn = awake(d)
        conn.wait_type("heartbeat", timeout=2)
        start = time.monotonic()
        time.sleep(0.45)
        count = sum(1 for m in conn.messages if m["type"] == "heartbeat")
        assert 2 <= count <= 8, count
        assert time.monotonic() - start < 2
    finally:
        scry.shutdown()
        d.close()


def test_reports_in_batches_with_seq_and_dropped(home):
    d = FakeDaemon(str(home / "run" / "agent.sock"), settings={"flush_interval_ms": 20, "max_batch": 3, "heartbeat_ms": 5000})
    try:
        _, conn = awake(d)
        events = [{"kind": "pulse", "t": time.time(), "source": None, "data": {"i": i}} for i in range(7)]
        assert _state.send_report(events, dropped=2) is True
        reports = []
        wait_until(
            lambda: sum(len(m["events"]) for m in conn.messages if m["type"] == "report") >= 7,
            message="7 events reported",
        )
        reports = [m for m in conn.messages if m["type"] == "report"]
        assert [r["seq"] for r in reports] == list(range(1, len(reports) + 1))
        assert all(len(r["events"]) <= 3 for r in reports)
        assert [e["data"]["i"] for r in reports for e in r["events"]] == list(range(7))
        assert sum(r["dropped"] for r in reports) == 2
        # A bad event is dropped and counted, the others still go through.
        bad = [{"kind": "pulse", "t": 1.0, "data": {"x": float("nan")}}, {"kind": 5, "t": 1.0}, {"kind": "pulse", "t": 2.0}]
        _state.send_report(bad)
        wait_until(
            lambda: any(r.get("dropped") == 2 and len(r["events"]) == 1 for r in conn.messages if r["type"] == "report"),
            message="a report with the good event and 2 dropped",
        )
        for raw in conn.raw:
            _proto.decode(raw, _proto.AGENT_TYPES)
    finally:
        scry.shutdown()
        d.close()


def test_report_buffer_is_bounded(home, monkeypatch):
    from scry import _link

    monkeypatch.setattr(_link, "BUFFER_CAPACITY", 5)
    d = FakeDaemon(str(home / "run" / "agent.sock"), settings={"flush_interval_ms": 60000, "max_batch": 100, "heartbeat_ms": 60000})
    try:
        _, conn = awake(d)
        events = [{"kind": "pulse", "t": 1.0, "source": None, "data": {}}] * 8
        assert _state.send_report(events) is False  # 3 did not fit
        assert _state.send_report(events[:1]) is False
        scry.sleep()  # flushes before goodbye
        report = conn.wait_type("report")
        assert len(report["events"]) == 5 and report["dropped"] == 4
        goodbye_index = [m["type"] for m in conn.messages].index("goodbye")
        assert conn.messages.index(report) < goodbye_index
    finally:
        scry.shutdown()
        d.close()
    assert _state.send_report(events) is False  # asleep: nothing is queued


def test_reconnects_when_the_daemon_drops_the_connection(daemon):
    _, conn = awake(daemon)
    first = scry.status()["connection_id"]
    conn.close()
    conn2 = daemon.wait_conn(2)
    conn2.wait_type("hello")
    wait_until(lambda: scry.status()["connected"], message="connected again")
    st = scry.status()
    assert st["state"] == "awake" and st["connection_id"] == "s-fake-1" != first
    conn2.send({"type": "ping", "id": 1})
    conn2.wait_type("reply", id=1)


def test_reconnects_with_backoff_after_the_daemon_disappears(home):
    path = str(home / "run" / "agent.sock")
    d = FakeDaemon(path)
    try:
        awake(d)
        d.close()
        wait_until(lambda: not scry.status()["connected"], message="disconnected")
        st = scry.status()
        assert st["state"] == "awake" and st["connection_id"] is None
        time.sleep(1.0)  # a few failed attempts (0.1, 0.2, 0.4 s ...)
        d = FakeDaemon(path, session_prefix="s-back")
        d.wait_conn(1, timeout=5)
        wait_until(lambda: scry.status()["connected"], message="reconnected")
        assert scry.status()["connection_id"] == "s-back-0"
        # Sleeping while disconnected stops the reconnect loop.
        d.close()
        wait_until(lambda: not scry.status()["connected"], message="disconnected again")
        scry.sleep()
        assert [t.name for t in scry_threads()] == ["scry-control"]
    finally:
        scry.shutdown()
        d.close()


def test_refused_is_a_daemon_error_with_the_reason(home):
    d = FakeDaemon(str(home / "run" / "agent.sock"), refuse="protocol 1 is not supported")
    try:
        scry.init()
        with pytest.raises(scry.DaemonError) as info:
            scry.wake()
        message = str(info.value)
        assert "protocol 1 is not supported" in message and "accepts protocol versions 1" in message
        assert scry.status()["state"] == "sleeping"
        assert [t.name for t in scry_threads()] == ["scry-control"]
    finally:
        scry.shutdown()
        d.close()


def test_no_welcome_within_register_timeout(home):
    d = FakeDaemon(str(home / "run" / "agent.sock"), silent=True)
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
        d.close()


def test_tcp_sends_the_token(home, monkeypatch):
    monkeypatch.setenv("SCRY_TOKEN", "s3cret")
    d = FakeDaemon(tcp=True)
    try:
        scry.init()
        scry.wake(d.url)
        assert d.wait_conn().hello["token"] == "s3cret"
        assert scry.status()["daemon_url"] == d.url
    finally:
        scry.shutdown()
        d.close()


class _EndpointServer(object):
    """A stand-in for the daemon's HTTP API that answers GET /api/v1/agent-endpoint."""

    def __init__(self, answer):
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.paths.append(self.path)
                body = json.dumps(answer).encode()
                self.send_response(200 if self.path == "/api/v1/agent-endpoint" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.paths = []
        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:{}".format(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def test_http_resolution_prefers_the_local_unix_socket(daemon):
    api = _EndpointServer({"unix": daemon.path, "tcp": None})
    try:
        scry.init()
        st = scry.wake(api.url)
        assert st["connected"] and st["daemon_url"] == api.url
        assert api.paths == ["/api/v1/agent-endpoint"]
    finally:
        scry.shutdown()
        api.close()


def test_http_resolution_falls_back_to_tcp(home, monkeypatch):
    monkeypatch.setenv("SCRY_TOKEN", "tok")
    d = FakeDaemon(tcp=True)
    api = _EndpointServer({"unix": "/nonexistent/agent.sock", "tcp": d.url[len("tcp://"):]})
    try:
        scry.init()
        assert scry.wake(api.url)["connected"]
        assert d.wait_conn().hello["token"] == "tok"
    finally:
        scry.shutdown()
        api.close()
        d.close()


def test_http_resolution_without_a_usable_endpoint(home):
    api = _EndpointServer({"unix": "/nonexistent/agent.sock", "tcp": None})
    try:
        scry.init()
        with pytest.raises(scry.DaemonError) as info:
            scry.wake(api.url)
        assert "no agent endpoint" in str(info.value)
    finally:
        scry.shutdown()
        api.close()


def test_http_resolution_without_a_daemon(home):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    scry.init()
    with pytest.raises(scry.DaemonError) as info:
        scry.wake("http://127.0.0.1:{}".format(port))
    assert "scry serve" in str(info.value)


def test_probes_sync_is_answered_and_checked(daemon):
    _, conn = awake(daemon)
    conn.send({"type": "probes_sync", "id": 21, "probes": []})
    reply = conn.wait_type("reply", id=21)
    assert reply["ok"] is True and reply["result"] == {"statuses": []}
    conn.send({"type": "probes_sync", "id": 22, "probes": [{"id": "p", "location": "x.py:1"}]})
    err = conn.wait_type("error", in_reply_to=22)
    assert err["kind"] == "malformed" and "expressions" in err["message"]

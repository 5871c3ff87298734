"""Whom the agent talks to: the owner of a unix-socket daemon, the HMAC challenge–response on TCP
(a daemon without the token gets nothing about the process, a relay fails the channel binding),
and TLS off loopback.

The fake daemons here are scripted peers that record every byte the agent sends; the real
handshake is checked against the real daemon (``scry serve --agent-tcp``).
"""

import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import warnings

import pytest

import scry
from conftest import scry_threads, wait_until
from realdaemon import elsewhere
from scry import _proto
from test_control_plane import netns  # noqa: F401 - the fixture (a veth pair into a namespace)


def free_port(host="127.0.0.1"):
    s = socket.socket()
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Recorder(object):
    """A TCP listener that records what each connection sends and answers with ``script``:
    a function (received line dict, conn) -> list of lines (dicts or bytes) to send back."""

    def __init__(self, script, host="127.0.0.1"):
        self.script = script
        self.listener = socket.socket()
        self.listener.bind((host, 0))
        self.listener.listen(8)
        self.host, self.port = self.listener.getsockname()[:2]
        self.received = b""
        self.connections = 0
        self.cond = threading.Condition()
        self.done = False
        self.thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self.thread.start()

    @property
    def url(self):
        return "tcp://{}:{}".format(self.host, self.port)

    def _run(self):
        self.listener.settimeout(0.05)
        while not self.done:
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.cond:
                self.connections += 1
            conn.settimeout(10)
            buf = b""
            try:
                while True:
                    data = conn.recv(65536)
                    if not data:
                        break
                    with self.cond:
                        self.received += data
                        self.cond.notify_all()
                    buf += data
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        for out in self.script(json.loads(line.decode()), conn):
                            conn.sendall(out if isinstance(out, bytes) else (json.dumps(out) + "\n").encode())
            except OSError:
                pass
            finally:
                conn.close()
                with self.cond:
                    self.cond.notify_all()

    def close(self):
        self.done = True
        self.thread.join(5)
        self.listener.close()


def _welcome():
    return {
        "type": "welcome",
        "protocol": 1,
        "daemon_version": "0.0.0-fake",
        "session_id": "s-fake",
        "settings": {"flush_interval_ms": 20, "max_batch": 100, "heartbeat_ms": 5000},
    }


def _probe_sync():
    # What the fake daemon would like to run: an unsafe probe writing a file.
    return {
        "type": "probes_sync",
        "id": 1,
        "probes": [{"id": "p-1", "location": "x.py:1", "expressions": ["1"], "unsafe": True}],
    }


@pytest.mark.parametrize("answer", ["bogus proof", "welcome at once", "silence"])
def test_a_fake_tcp_daemon_gets_no_hello_and_no_token(home, monkeypatch, answer):
    token = "the-real-token-" + os.urandom(8).hex()
    monkeypatch.setenv("SCRY_TOKEN", token)

    def script(msg, conn):
        if answer == "bogus proof" and msg["type"] == "auth":
            return [{"type": "challenge", "nonce": "ab" * 32, "proof": "00" * 32}, _probe_sync()]
        if answer == "welcome at once":
            return [_welcome(), _probe_sync()]
        return []

    fake = Recorder(script)
    try:
        scry.init(name="secret-name", register_timeout=1.0)
        with pytest.raises(scry.DaemonError) as info:
            scry.wake(fake.url)
        message = str(info.value)
        if answer == "bogus proof":
            assert "refusing to talk to" in message and "did not prove" in message
        elif answer == "welcome at once":
            assert "instead of `challenge`" in message
        else:
            assert "did not answer auth" in message
        wait_until(lambda: fake.connections >= 1, message="the connection")
        got = fake.received
        lines = [json.loads(x) for x in got.splitlines()]
        assert [m["type"] for m in lines] == ["auth"], got
        assert token.encode() not in got and b"secret-name" not in got
        assert all(arg.encode() not in got for arg in sys.argv if len(arg) > 3)
        assert _proto.nonce_ok(lines[0]["nonce"])
        st = scry.status()
        assert st["state"] == "sleeping" and not st["connected"]
        assert [t.name for t in scry_threads()] == ["scry-control"]
    finally:
        fake.close()


def test_the_real_daemon_proves_itself_and_registers_the_agent(home, tmp_path, monkeypatch):
    with elsewhere(tmp_path, "d", "--agent-tcp", "127.0.0.1:{}".format(free_port())) as d:
        token = (tmp_path / "d" / "token").read_text().strip()
        monkeypatch.setenv("SCRY_TOKEN", token)
        scry.init(name="honest")
        st = scry.wake("tcp://" + d.info["agent_tcp"])
        assert st["connected"]
        assert d.process(os.getpid())["session_id"] == st["connection_id"]
        # The daemon's log never shows the token.
        assert token not in d.full_log()


class Relay(object):
    """Forwards bytes between each client and ``target`` unchanged: a man in the middle on
    loopback (another process that holds the port the agent was told)."""

    def __init__(self, target):
        self.target = target
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        self.seen = b""
        self.done = False
        self.thread = threading.Thread(target=self._run, name="relay", daemon=True)
        self.thread.start()

    def _pump(self, src, dst, record):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if record:
                    self.seen += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _run(self):
        self.listener.settimeout(0.05)
        while not self.done:
            try:
                client, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            upstream = socket.create_connection(self.target, timeout=10)
            for a, b, rec in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(a, b, rec), daemon=True).start()

    def close(self):
        self.done = True
        self.thread.join(5)
        self.listener.close()


def test_a_relay_on_loopback_fails_the_channel_binding(home, tmp_path, monkeypatch):
    with elsewhere(tmp_path, "d", "--agent-tcp", "127.0.0.1:{}".format(free_port())) as d:
        token = (tmp_path / "d" / "token").read_text().strip()
        monkeypatch.setenv("SCRY_TOKEN", token)
        host, port = d.info["agent_tcp"].rsplit(":", 1)
        relay = Relay((host, int(port)))
        try:
            scry.init(name="relayed", register_timeout=2.0)
            with pytest.raises(scry.DaemonError) as info:
                scry.wake("tcp://127.0.0.1:{}".format(relay.port))
            assert "did not prove" in str(info.value)
            # The agent said nothing but `auth`; the daemon registered nobody.
            assert [json.loads(x)["type"] for x in relay.seen.splitlines()] == ["auth"]
            proc = d.process(os.getpid())
            assert proc is None or proc.get("session_id") is None, proc
        finally:
            relay.close()


def _serve_unix_as(uid, path):
    """A child running as ``uid`` that listens on ``path``, accepts one connection and reports
    (through a pipe) every byte it received. Returns (pid, read end)."""
    ready_r, ready_w = os.pipe()
    out_r, out_w = os.pipe()
    with warnings.catch_warnings():
        # The child only makes system calls on fresh sockets and leaves with _exit.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(ready_r)
            os.close(out_r)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(path)
            listener.listen(1)
            os.write(ready_w, b"r")
            listener.settimeout(20)
            conn, _ = listener.accept()
            conn.settimeout(3)
            got = b""
            try:
                while True:
                    data = conn.recv(65536)
                    if not data:
                        break
                    got += data
            except OSError:
                pass
            os.write(out_w, got or b"-")
            code = 0
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(out_w)
    assert os.read(ready_r, 1) == b"r", "the uid {} listener did not start".format(uid)
    os.close(ready_r)
    return pid, out_r


def test_a_unix_socket_of_another_uid_gets_nothing(home, tmp_path, caplog):
    if os.geteuid() == 0:
        other = 65534
    else:
        pytest.fail("this test starts a listener as another uid (65534), which needs root")
    # Under /tmp itself: pytest's own directories are private to root.
    d = tempfile.mkdtemp(prefix="scry-other-uid-", dir="/tmp")
    os.chown(d, other, other)
    path = os.path.join(d, "agent.sock")
    pid, out = _serve_unix_as(other, path)
    try:
        scry.init(name="careful")
        with caplog.at_level(logging.WARNING, logger="scry"):
            with pytest.raises(scry.DaemonError) as info:
                scry.wake("unix://" + path)
        message = str(info.value)
        assert "uid {}".format(other) in message and "refusing to talk to" in message
        assert any("uid {}".format(other) in r.getMessage() for r in caplog.records), "warned"
        assert scry.status()["state"] == "sleeping"
    finally:
        got = b""
        while True:
            data = os.read(out, 65536)
            if not data:
                break
            got += data
        os.close(out)
        os.waitpid(pid, 0)
        shutil.rmtree(d, ignore_errors=True)
    assert got == b"-", "the agent sent {!r} to a socket of another uid".format(got)


def test_tls_off_loopback(home, tmp_path, monkeypatch, netns):  # noqa: F811 - the fixture
    addr = "{}:{}".format(netns.host_addr, free_port(netns.host_addr))
    with elsewhere(tmp_path, "d", "--agent-tcp", addr) as d:
        token = (tmp_path / "d" / "token").read_text().strip()
        monkeypatch.setenv("SCRY_TOKEN", token)
        scry.init(name="over-tls")
        st = scry.wake("tcp://" + d.info["agent_tcp"])
        assert st["connected"]
        link = scry._state._agent.link
        sock = link._sock
        # A TLS socket, and its certificate is the daemon's.
        assert hasattr(sock, "getpeercert") and sock.version() in ("TLSv1.2", "TLSv1.3")
        der = sock.getpeercert(binary_form=True)
        with open(str(tmp_path / "d" / "tls" / "cert.der"), "rb") as f:
            assert hashlib.sha256(der).digest() == hashlib.sha256(f.read()).digest()
        assert d.process(os.getpid())["session_id"] == st["connection_id"]
        # Events flow over it.
        scry.pulse("tls-check", n=1)
        wait_until(
            lambda: d.api("GET", "/api/v1/events?kind=pulse&limit=10")[1]["events"],
            message="the pulse to reach the daemon over TLS",
        )


class TlsMitm(object):
    """A man in the middle off loopback: terminates the agent's TLS with a certificate of its
    own (a real one: another daemon's), opens TLS to the real daemon and relays the plain text
    both ways, recording what the agent sent."""

    def __init__(self, host, target, cert_der, key_der, workdir):
        import base64
        import ssl

        cert_pem = os.path.join(workdir, "mitm-cert.pem")
        key_pem = os.path.join(workdir, "mitm-key.pem")
        with open(cert_pem, "w") as f:
            f.write(ssl.DER_cert_to_PEM_cert(cert_der))
        with open(key_pem, "w") as f:
            body = base64.encodebytes(key_der).decode().replace("\n", "")
            lines = [body[i : i + 64] for i in range(0, len(body), 64)]
            f.write("-----BEGIN PRIVATE KEY-----\n" + "\n".join(lines) + "\n-----END PRIVATE KEY-----\n")
        self.server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server_ctx.load_cert_chain(cert_pem, key_pem)
        self.client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.client_ctx.check_hostname = False
        self.client_ctx.verify_mode = ssl.CERT_NONE
        self.target = target
        self.listener = socket.socket()
        self.listener.bind((host, 0))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        self.seen = b""
        self.done = False
        self.thread = threading.Thread(target=self._run, name="mitm", daemon=True)
        self.thread.start()

    def _pump(self, src, dst, record):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if record:
                    self.seen += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def _run(self):
        self.listener.settimeout(0.05)
        while not self.done:
            try:
                raw, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                raw.settimeout(10)
                agent_side = self.server_ctx.wrap_socket(raw, server_side=True)
                daemon_side = self.client_ctx.wrap_socket(socket.create_connection(self.target, timeout=10))
            except OSError:
                raw.close()
                continue
            for a, b, rec in ((agent_side, daemon_side, True), (daemon_side, agent_side, False)):
                threading.Thread(target=self._pump, args=(a, b, rec), daemon=True).start()

    def close(self):
        self.done = True
        self.thread.join(5)
        self.listener.close()


def test_a_tls_man_in_the_middle_fails_the_certificate_binding(home, tmp_path, monkeypatch, netns):  # noqa: F811
    real_addr = "{}:{}".format(netns.host_addr, free_port(netns.host_addr))
    # Another daemon only to have a second real certificate and key for the man in the middle.
    with elsewhere(tmp_path, "impostor", "--agent-tcp", "127.0.0.1:{}".format(free_port())):
        pass
    impostor_tls = tmp_path / "impostor" / "tls"
    cert_der = (impostor_tls / "cert.der").read_bytes()
    key_der = (impostor_tls / "key.der").read_bytes()
    with elsewhere(tmp_path, "real", "--agent-tcp", real_addr) as d:
        token = (tmp_path / "real" / "token").read_text().strip()
        monkeypatch.setenv("SCRY_TOKEN", token)
        host, port = d.info["agent_tcp"].rsplit(":", 1)
        mitm = TlsMitm(netns.host_addr, (host, int(port)), cert_der, key_der, str(tmp_path))
        try:
            # Generous: a wrong certificate binding fails at once; only a loaded machine is slow.
            scry.init(name="tls-victim", register_timeout=20.0)
            with pytest.raises(scry.DaemonError) as info:
                scry.wake("tcp://{}:{}".format(netns.host_addr, mitm.port))
            assert "did not prove that it holds the daemon's token" in str(info.value)
            # The man in the middle saw only `auth`: no hello, no token, no name.
            assert [json.loads(x)["type"] for x in mitm.seen.splitlines()] == ["auth"], mitm.seen
            assert token.encode() not in mitm.seen and b"tls-victim" not in mitm.seen
            proc = d.process(os.getpid())
            assert proc is None or proc.get("session_id") is None, proc
            # Straight to the real daemon, the same agent gets in.
            assert scry.wake("tcp://" + d.info["agent_tcp"])["connected"]
        finally:
            mitm.close()

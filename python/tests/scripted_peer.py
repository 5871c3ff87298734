"""A scriptable stand-in for the scry daemon's agent listener (unix or TCP), for link tests."""

import json
import os
import socket
import threading
import time


class FakeConn(object):
    """One accepted agent connection: records every line, answers hello as configured."""

    def __init__(self, daemon, sock):
        self.daemon = daemon
        self.sock = sock
        self.messages = []
        self.raw = []
        self.closed = False
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="fake-daemon-conn", daemon=True)
        self.thread.start()

    def _run(self):
        buf = b""
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    break
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    try:
                        msg = json.loads(line.decode())
                    except ValueError:
                        msg = {"type": "<invalid>", "raw": line}
                    with self.cond:
                        self.raw.append(line)
                        self.messages.append(msg)
                        self.cond.notify_all()
                    if len(self.messages) == 1 and msg.get("type") == "hello":
                        self.daemon._answer_hello(self, msg)
        except OSError:
            pass
        finally:
            with self.cond:
                self.closed = True
                self.cond.notify_all()

    @property
    def hello(self):
        return self.messages[0] if self.messages else None

    def wait_for(self, predicate, timeout=5.0, what="a message"):
        """The first recorded message matching predicate (waiting for it)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for msg in self.messages:
                    if predicate(msg):
                        return msg
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        "no {} within {} s; got {!r}".format(what, timeout, self.messages)
                    )
                self.cond.wait(remaining)

    def wait_type(self, kind, timeout=5.0, **fields):
        return self.wait_for(
            lambda m: m.get("type") == kind and all(m.get(k) == v for k, v in fields.items()),
            timeout,
            "`{}` {}".format(kind, fields),
        )

    def wait_closed(self, timeout=5.0):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not self.closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError("the agent did not close the connection")
                self.cond.wait(remaining)

    def send(self, obj):
        data = obj if isinstance(obj, bytes) else (json.dumps(obj) + "\n").encode()
        self.sock.sendall(data)

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if self.thread is not threading.current_thread():
            self.thread.join(5)
            self.sock.close()


class FakeDaemon(object):
    """Listens on a unix socket (``path``) or on TCP 127.0.0.1 (``tcp=True``)."""

    def __init__(self, path=None, tcp=False, settings=None, refuse=None, silent=False, session_prefix="s-fake"):
        self.settings = settings or {"flush_interval_ms": 20, "max_batch": 1024, "heartbeat_ms": 5000}
        self.refuse = refuse
        self.silent = silent
        self.session_prefix = session_prefix
        self.conns = []
        self.cond = threading.Condition()
        if tcp:
            self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.listener.bind(("127.0.0.1", 0))
            self.path = None
            self.url = "tcp://127.0.0.1:{}".format(self.listener.getsockname()[1])
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.listener.bind(path)
            self.path = path
            self.url = "unix://" + path
        self.listener.listen(16)
        self.listener.settimeout(0.05)
        self._stopping = False
        self.thread = threading.Thread(target=self._accept_loop, name="fake-daemon", daemon=True)
        self.thread.start()

    def _accept_loop(self):
        while not self._stopping:
            try:
                sock, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            sock.settimeout(None)
            with self.cond:
                self.conns.append(FakeConn(self, sock))
                self.cond.notify_all()

    def _answer_hello(self, conn, hello):
        if self.silent:
            return
        if self.refuse is not None:
            conn.send({"type": "refused", "reason": self.refuse, "accepted_protocols": [1]})
            conn.close()
            return
        index = self.conns.index(conn) if conn in self.conns else len(self.conns)
        conn.send(
            {
                "type": "welcome",
                "protocol": 1,
                "daemon_version": "0.0.0-fake",
                "session_id": "{}-{}".format(self.session_prefix, index),
                "settings": self.settings,
            }
        )

    def wait_conn(self, count=1, timeout=5.0):
        """The count-th connection (1-based), waiting for it."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.conns) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError("only {} connection(s) within {} s".format(len(self.conns), timeout))
                self.cond.wait(remaining)
            return self.conns[count - 1]

    def close(self):
        self._stopping = True
        self.thread.join(5)
        self.listener.close()
        for conn in list(self.conns):
            conn.close()
        if self.path:
            try:
                os.unlink(self.path)
            except OSError:
                pass

"""A protocol peer that sends what a real scry daemon never would, to test the agent's defences.

It listens on a unix socket where the agent expects its daemon, answers ``hello`` with a
``welcome`` (unless told to stay silent) and then sends exactly what a test scripts: lines that
are not JSON, unknown message types, a ``welcome`` after the handshake, a line over the 16 MiB
limit, a request the daemon never makes. It can also stop reading after the handshake, as a
wedged daemon would. Everything a real daemon does (handshake, refusal, requests, acks, storing
reports, restarts) is tested against the real ``scry serve`` (see ``realdaemon.py``), never here.
"""

import json
import os
import socket
import threading
import time


class ScriptedConn(object):
    """One accepted agent connection: records every line the agent sends."""

    def __init__(self, peer, sock, index, deaf=False):
        self.peer = peer
        self.sock = sock
        self.index = index
        self.deaf = deaf
        self.messages = []
        self.raw = []
        self.closed = False
        self.cond = threading.Condition()
        self._closing = threading.Event()
        self.thread = threading.Thread(target=self._run, name="scripted-peer-conn", daemon=True)
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
                        self.peer._answer_hello(self)
                        if self.deaf:
                            # Stop reading, as a wedged daemon would: the agent's writes fill
                            # the socket buffers and then block. close() ends the connection.
                            self._closing.wait()
                            return
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
        """Send a message (a dict, as one JSON line) or raw bytes as they are."""
        data = obj if isinstance(obj, bytes) else (json.dumps(obj) + "\n").encode()
        self.sock.sendall(data)

    def close(self):
        self._closing.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if self.thread is not threading.current_thread():
            self.thread.join(5)
            self.sock.close()


class ScriptedPeer(object):
    """Listens on the unix socket ``path``.

    ``silent``: accept connections but never answer ``hello``. ``deaf``: the indexes (0-based) of
    the connections on which the peer stops reading right after its ``welcome``.
    """

    def __init__(self, path, silent=False, deaf=()):
        self.settings = {"flush_interval_ms": 20, "max_batch": 1024, "heartbeat_ms": 5000}
        self.silent = silent
        self.deaf = set(deaf)
        self.conns = []
        self.cond = threading.Condition()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.path = path
        self.url = "unix://" + path
        self.listener.listen(16)
        self.listener.settimeout(0.05)
        self._stopping = False
        self.thread = threading.Thread(target=self._accept_loop, name="scripted-peer", daemon=True)
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
                index = len(self.conns)
                self.conns.append(ScriptedConn(self, sock, index, deaf=index in self.deaf))
                self.cond.notify_all()

    def _answer_hello(self, conn):
        if self.silent:
            return
        conn.send(
            {
                "type": "welcome",
                "protocol": 1,
                "daemon_version": "0.0.0-scripted",
                "session_id": "s-scripted-{}".format(conn.index),
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
        try:
            os.unlink(self.path)
        except OSError:
            pass

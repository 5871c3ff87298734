"""Shared fixtures: an isolated SCRY_HOME per test, and a check that no scry thread outlives it."""

import http.client
import json
import os
import socket
import sys
import threading
import time

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
PYTHON_DIR = os.path.dirname(TESTS)
REPO = os.path.dirname(PYTHON_DIR)
VECTORS = os.path.join(REPO, "crates", "scry-proto", "vectors")

if PYTHON_DIR not in sys.path:
    sys.path.insert(0, PYTHON_DIR)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

import scry  # noqa: E402

SCRY_ENV = (
    "SCRY_HOME",
    "SCRY_NAME",
    "SCRY_DAEMON",
    "SCRY_CONTROL_HOST",
    "SCRY_CONTROL_PORT",
    "SCRY_TOKEN",
    "SCRY_DEBUG",
)


def scry_threads():
    return [t for t in threading.enumerate() if t.name.startswith("scry-")]


def wait_until(predicate, timeout=5.0, interval=0.01, message="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after {} s waiting for {}".format(timeout, message))
        time.sleep(interval)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh SCRY_HOME, with every other SCRY_* variable unset."""
    for name in SCRY_ENV:
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "home"
    monkeypatch.setenv("SCRY_HOME", str(path))
    return path


@pytest.fixture(autouse=True)
def no_leftovers():
    """Every test starts and ends without a scry client and without scry threads."""
    scry.shutdown()
    yield
    scry.shutdown()
    wait_until(lambda: not scry_threads(), timeout=5.0, message="scry threads to end")


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix socket (a control plane's default, the daemon's local API)."""

    def __init__(self, path, timeout):
        http.client.HTTPConnection.__init__(self, "localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def request(host, port, method, path, body=None, headers=None, timeout=10.0):
    """One HTTP request (``host`` None: ``port`` is a unix socket's path); returns (status, parsed
    JSON body or raw bytes)."""
    if host is None:
        conn = UnixHTTPConnection(port, timeout)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        data = body
        if isinstance(body, (dict, list)):
            data = json.dumps(body).encode()
        conn.request(method, path, body=data, headers=headers or {})
        response = conn.getresponse()
        raw = response.read()
        try:
            return response.status, json.loads(raw.decode())
        except ValueError:
            return response.status, raw
    finally:
        conn.close()


def control(method, path, **kw):
    """A request to this process's control plane: its unix socket, or TCP (with the token unless
    ``headers`` say otherwise)."""
    st = scry.status()
    if st["control_socket"] is not None:
        return request(None, st["control_socket"], method, path, **kw)
    return request(st["control_host"], st["control_port"], method, path, **kw)


def open_fds():
    return sorted(int(fd) for fd in os.listdir("/proc/self/fd"))


def socket_fds():
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink("/proc/self/fd/" + fd).startswith("socket:"):
                out.append(int(fd))
        except OSError:
            pass
    return sorted(out)

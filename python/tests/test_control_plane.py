"""The control plane: every endpoint over its unix socket, bad input, who may call (the peer's uid
on the unix socket, the token on TCP, loopback included), and real non-loopback callers.

The non-loopback tests create a network namespace (``ip netns add``) joined to this one by a veth
pair, bind the control plane to the host end's address, and send requests from inside the
namespace: a child interpreter enters it with ``setns(2)`` on ``/run/netns/NAME`` and then uses
urllib. (``ip netns exec`` / ``ip -n`` would also remount ``/``, which fails inside a chroot whose
root is not a mount point, as in the Python matrix; entering only the network namespace needs
no mount.) They need root and iproute2; without them they fail with a message saying so (they
are not skipped: remote access is what the token protects).
"""

import collections
import json
import logging
import os
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import time
import warnings

import pytest

import scry
from conftest import control, request, scry_threads, wait_until
from realdaemon import elsewhere


@pytest.fixture
def client(home):
    scry.init(name="cp")
    yield scry.status()
    scry.shutdown()


# -- loopback ------------------------------------------------------------------------------------


def test_health(client):
    assert control("GET", "/scry/health") == (200, {"ok": True})


def test_status_matches_scry_status(client):
    status, body = control("GET", "/scry/status")
    assert status == 200
    assert body == scry.status()


def test_info(client):
    status, body = control("GET", "/scry/info")
    assert status == 200
    assert body["pid"] == os.getpid() and body["ppid"] == os.getppid()
    assert body["name"] == "cp"
    assert body["python"].startswith("{}.{}.{}".format(*sys.version_info[:3]))
    assert body["implementation"] == sys.implementation.name
    assert body["executable"] == sys.executable
    assert body["argv"] == sys.argv and body["cwd"] == os.getcwd()
    assert body["agent_version"] == scry.__version__


def test_wake_and_sleep(client, tmp_path):
    with elsewhere(tmp_path, "elsewhere") as daemon:
        status, body = control("POST", "/scry/wake", body={"daemon_url": daemon.url})
        assert status == 200, body
        assert body["state"] == "awake" and body["connected"] is True
        assert body["daemon_url"] == daemon.url and body == scry.status()
        proc = daemon.process(os.getpid())
        assert proc["state"] == "awake" and proc["session_id"] == body["connection_id"]
        status, body = control("POST", "/scry/sleep")
        assert status == 200 and body["state"] == "sleeping"
        wait_until(lambda: daemon.goodbyes(os.getpid()) == ["sleep"], message="goodbye (sleep) in the daemon's log")
        # Without a body: the default address, here with no daemon -> 502 with advice.
        status, body = control("POST", "/scry/wake")
        assert status == 502
        assert body["error"]["kind"] == "daemon" and "scry serve" in body["error"]["message"]


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[1, 2]", b'{"daemon_url": 5}', b"\xff\xfe", b'"unix:///x"'],
)
def test_malformed_wake_body_is_400_and_the_server_keeps_serving(client, body):
    status, answer = control("POST", "/scry/wake", body=body, headers={"Content-Type": "application/json"})
    assert status == 400
    assert answer["error"]["kind"] == "bad_request" and answer["error"]["message"]
    assert scry.status()["state"] == "sleeping"
    assert control("GET", "/scry/health") == (200, {"ok": True})


def test_bad_daemon_url_is_400(client):
    status, answer = control("POST", "/scry/wake", body={"daemon_url": "ftp://nowhere"})
    assert status == 400 and answer["error"]["kind"] == "config"


def test_unknown_path_and_wrong_method(client):
    status, body = control("GET", "/nope")
    assert status == 404 and body["error"]["kind"] == "not_found"
    status, body = control("GET", "/scry/wake")
    assert status == 405 and body["error"]["kind"] == "method_not_allowed"
    status, body = control("POST", "/scry/status")
    assert status == 405
    status, body = control("DELETE", "/scry/health")
    assert status == 405
    status, body = control("GET", "/scry/status?verbose=1")
    assert status == 200


def test_garbage_does_not_kill_the_server(client):
    st = scry.status()
    for raw in (b"NONSENSE\r\n\r\n", b"\x00\x01\x02\r\n\r\n", b"GET /scry/health HTTP/9.9\r\n\r\n", b""):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(st["control_socket"])
            s.sendall(raw)
            s.shutdown(socket.SHUT_WR)
            while s.recv(4096):
                pass
    status, body = control("POST", "/scry/wake", headers={"Content-Length": str(10 ** 9)})
    assert status == 413
    status, body = control("POST", "/scry/wake", headers={"Content-Length": "-3"})
    assert status == 400
    assert control("GET", "/scry/health") == (200, {"ok": True})
    wait_until(lambda: [t.name for t in scry_threads()] == ["scry-control"], message="request threads to end")


def _as_uid(uid, socket_path, requests):
    """Make ``requests`` to the control plane from a forked child running as ``uid`` (a fork,
    not a new interpreter: ours may live where that uid cannot read). [(status, body)]."""
    r, w = os.pipe()
    with warnings.catch_warnings():
        # The child only makes system calls on fresh sockets and leaves with _exit.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: no pytest machinery, only stdlib calls, then _exit
        code = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            out = []
            for method, path, body in requests:
                try:
                    out.append(list(request(None, socket_path, method, path, body=body)))
                except OSError as exc:
                    out.append([None, str(exc)])
            os.write(w, json.dumps(out).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    while True:
        data = os.read(r, 65536)
        if not data:
            break
        chunks.append(data)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, "the uid {} child failed".format(uid)
    return json.loads(b"".join(chunks).decode())


def test_another_uid_is_refused_even_when_the_file_modes_let_it_in(tmp_path, monkeypatch, caplog):
    if os.geteuid() != 0:
        pytest.fail("this test runs a caller as another uid (65534), which needs root")
    for name in ("SCRY_CONTROL_HOST", "SCRY_CONTROL_PORT", "SCRY_TOKEN", "SCRY_DAEMON"):
        monkeypatch.delenv(name, raising=False)
    base = tmp_path / "open"
    base.mkdir()
    home = base / "home"
    monkeypatch.setenv("SCRY_HOME", str(home))
    with elsewhere(tmp_path, "other") as other:
        with caplog.at_level(logging.WARNING, logger="scry"):
            scry.init(name="victim")
        path = scry.status()["control_socket"]
        # Loosen every mode on the way, as a careless home would: only the peer check is left.
        loosened = [tmp_path.parent.parent, tmp_path.parent, tmp_path, base, home, home / "run", home / "run" / "clients"]
        modes = [stat.S_IMODE(os.stat(str(d)).st_mode) for d in loosened]
        for d in loosened:
            os.chmod(str(d), 0o711)
        os.chmod(path, 0o666)
        try:
            answers = _as_uid(
                65534,
                path,
                [
                    ["POST", "/scry/wake", {"daemon_url": other.url}],
                    ["POST", "/scry/sleep", None],
                    ["GET", "/scry/status", None],
                    ["GET", "/scry/info", None],
                    ["GET", "/scry/health", None],
                ],
            )
        finally:
            for d, mode in zip(loosened, modes):
                os.chmod(str(d), mode)
        for status, body in answers:
            assert status == 403, answers
            assert body["error"]["kind"] == "forbidden"
            assert "uid 65534" in body["error"]["message"] and "root" in body["error"]["message"]
        # The refusals came before any action (each request waited for its answer).
        proc = other.process(os.getpid())
        assert proc is None, proc  # nobody connected to the other daemon
        st = scry.status()
        assert st["state"] == "sleeping" and st["daemon_url"] is None
        refused = [r.getMessage() for r in caplog.records if "refused a caller of uid 65534" in r.getMessage()]
        assert len(refused) == 1, "warned once: {}".format(refused)
        # The owner (root here) is served on the same socket.
        assert control("GET", "/scry/status")[0] == 200


def test_tcp_needs_the_token_on_loopback_too(home, monkeypatch):
    monkeypatch.setenv("SCRY_TOKEN", "loopback-token")
    scry.init(control_port=0)
    st = scry.status()
    assert st["control_socket"] is None and st["control_host"] == "127.0.0.1"
    host, port = st["control_host"], st["control_port"]
    for method, path in (("POST", "/scry/wake"), ("POST", "/scry/sleep"), ("GET", "/scry/status"), ("GET", "/scry/info"), ("GET", "/nope")):
        status, body = request(host, port, method, path)
        assert status == 403 and "Authorization: Bearer" in body["error"]["message"], (path, body)
        status, body = request(host, port, method, path, headers={"Authorization": "Bearer wrong"})
        assert status == 403 and body["error"]["message"] == "wrong token"
    auth = {"Authorization": "Bearer loopback-token"}
    assert request(host, port, "GET", "/scry/status", headers=auth)[0] == 200
    assert request(host, port, "GET", "/scry/health") == (200, {"ok": True})
    record = json.loads((home / "clients" / "{}.json".format(os.getpid())).read_text())
    assert record["token_required"] is True and record["control_socket"] is None
    assert scry.status()["state"] == "sleeping"


def test_token_file_readable_by_others_is_refused(home):
    home.mkdir(mode=0o700)
    token = home / "token"
    token.write_text("secret\n")
    os.chmod(str(token), 0o644)
    with pytest.raises(scry.ConfigError) as info:
        scry.init()
    assert "chmod 600 {}".format(token) in str(info.value)
    assert scry.status()["state"] == "uninitialised"
    os.chmod(str(token), 0o600)
    scry.init()
    # the unix socket needs no token: the caller's uid is what counts there
    assert control("GET", "/scry/status")[0] == 200


# -- non-loopback, for real --------------------------------------------------------------------

NetNS = collections.namedtuple("NetNS", "name host_addr ns_addr")


def _ip(*args, check=True):
    result = subprocess.run(["ip"] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError("`ip {}` failed: {}".format(" ".join(args), result.stderr.decode().strip()))
    return result


# Prepended to code run by a child interpreter: enter the network namespace named by argv[1].
_ENTER_NETNS = r"""
import os, sys
_fd = os.open(sys.argv.pop(1), os.O_RDONLY)
if hasattr(os, "setns"):
    os.setns(_fd, 0x40000000)  # CLONE_NEWNET
else:
    import ctypes
    _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(_fd, 0x40000000) != 0:
        _errno = ctypes.get_errno()
        raise OSError(_errno, "setns: " + os.strerror(_errno))
os.close(_fd)
"""


def _in_netns(name, code, args, timeout=60):
    """Run ``code`` in a child interpreter inside network namespace ``name``."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    return subprocess.run(
        [sys.executable, "-c", _ENTER_NETNS + code, os.path.join("/run/netns", name)] + list(args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        timeout=timeout,
    )


def _ip_in_netns(name, *args):
    result = _in_netns(name, "os.execvp(sys.argv[1], sys.argv[1:])", ["ip"] + list(args))
    if result.returncode != 0:
        raise RuntimeError(
            "`ip {}` in namespace {} failed: {}".format(" ".join(args), name, result.stderr.decode().strip())
        )


@pytest.fixture(scope="module")
def netns():
    """A network namespace with a veth pair: 10.231.X.1 here, 10.231.X.2 inside."""
    if shutil.which("ip") is None:
        pytest.fail(
            "the non-loopback tests need `ip` (iproute2) to create a network namespace, and there "
            "is none on PATH ({}) for {}: install iproute2 (in a matrix chroot: add it to the "
            "chroot's packages in scripts/provision-matrix)".format(os.environ.get("PATH"), sys.executable)
        )
    if os.geteuid() != 0:
        pytest.fail("the non-loopback tests need root to create a network namespace (ip netns add)")
    suffix = secrets.token_hex(3)
    name = "scrytest-" + suffix
    host_if, ns_if = "sh" + suffix, "sn" + suffix
    used = _ip("-o", "-4", "addr", "show").stdout.decode()
    free = [x for x in range(1, 255) if "10.231.{}.".format(x) not in used]
    x = free[secrets.randbelow(len(free))]
    host_addr, ns_addr = "10.231.{}.1".format(x), "10.231.{}.2".format(x)
    try:
        _ip("netns", "add", name)
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", name)
        _ip("addr", "add", host_addr + "/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip_in_netns(name, "addr", "add", ns_addr + "/30", "dev", ns_if)
        _ip_in_netns(name, "link", "set", ns_if, "up")
        _ip_in_netns(name, "link", "set", "lo", "up")
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        _ip("link", "del", host_if, check=False)
        _ip("netns", "del", name, check=False)
        pytest.fail("cannot create a network namespace for the non-loopback tests: {}".format(exc))
    try:
        yield NetNS(name, host_addr, ns_addr)
    finally:
        _ip("link", "del", host_if, check=False)
        _ip("netns", "del", name, check=False)


_REMOTE = r"""
import json, urllib.error, urllib.request
url, method, body, token = json.loads(sys.argv[1])
req = urllib.request.Request(url, data=None if body is None else body.encode(), method=method)
if body is not None:
    req.add_header("Content-Type", "application/json")
if token is not None:
    req.add_header("Authorization", "Bearer " + token)
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    with opener.open(req, timeout=15) as r:
        status, data = r.status, r.read()
except urllib.error.HTTPError as e:
    status, data = e.code, e.read()
print(json.dumps({"status": status, "body": json.loads(data.decode())}))
"""


def remote(ns, method, path, body=None, token=None):
    """A request from inside the namespace (a non-loopback caller). Returns (status, body)."""
    st = scry.status()
    url = "http://{}:{}{}".format(st["control_host"], st["control_port"], path)
    args = json.dumps([url, method, None if body is None else json.dumps(body), token])
    result = _in_netns(ns.name, _REMOTE, [args])
    if result.returncode != 0:
        raise AssertionError(
            "request from namespace {} failed (exit {}): {}".format(
                ns.name, result.returncode, result.stderr.decode().strip()
            )
        )
    answer = json.loads(result.stdout.decode().strip().splitlines()[-1])
    return answer["status"], answer["body"]


def test_remote_without_a_configured_token_gets_no_tcp_at_all(home, netns, caplog):
    with caplog.at_level(logging.WARNING, logger="scry"):
        scry.init(control_host=netns.host_addr)
    st = scry.status()
    assert st["control_host"] is None and st["control_socket"] is not None
    record = json.loads((home / "clients" / "{}.json".format(os.getpid())).read_text())
    assert record["token_required"] is False and record["control_host"] is None
    assert any("needs a token" in r.getMessage() for r in caplog.records)
    # Nothing listens there: the remote caller cannot even connect.
    result = _in_netns(netns.name, _REMOTE, [json.dumps(["http://{}:9/scry/status".format(netns.host_addr), "GET", None, None])])
    assert result.returncode != 0


def test_remote_needs_the_right_token(home, netns, monkeypatch):
    monkeypatch.setenv("SCRY_TOKEN", "right-token")
    scry.init(control_host=netns.host_addr)
    status, body = remote(netns, "GET", "/scry/info")
    assert status == 403 and "Authorization: Bearer" in body["error"]["message"]
    status, body = remote(netns, "GET", "/scry/info", token="wrong-token")
    assert status in (401, 403) and body["error"]["kind"] in ("forbidden", "unauthorized")
    status, body = remote(netns, "GET", "/scry/info", token="right-token")
    assert status == 200 and body["pid"] == os.getpid()
    status, body = remote(netns, "GET", "/scry/status", token="right-token")
    assert status == 200 and body["state"] == "sleeping"
    status, body = remote(netns, "POST", "/scry/sleep", token="right-token")
    assert status == 200
    status, body = remote(netns, "GET", "/nope")
    assert status == 403  # no hint about paths without the token


def test_token_file_is_used(home, netns):
    home.mkdir(mode=0o700)
    token = home / "token"
    token.write_text("file-token\n")
    os.chmod(str(token), 0o600)
    scry.init(control_host=netns.host_addr)
    assert remote(netns, "GET", "/scry/status")[0] == 403
    assert remote(netns, "GET", "/scry/status", token="file-token")[0] == 200


@pytest.mark.parametrize("configured", ["the-token"])
def test_remote_cannot_redirect_the_process_without_the_token(home, netns, monkeypatch, tmp_path, configured):
    if configured:
        monkeypatch.setenv("SCRY_TOKEN", configured)
    # Another daemon (its own SCRY_HOME) that a remote caller would like this process to join.
    with elsewhere(tmp_path, "other") as other:
        scry.init(control_host=netns.host_addr)
        for token in (None, "guess"):
            status, body = remote(netns, "POST", "/scry/wake", body={"daemon_url": other.url}, token=token)
            assert status == 403, body
            assert body["error"]["kind"] == "forbidden"
        time.sleep(0.3)
        assert other.process(os.getpid()) is None  # nobody connected anywhere
        st = scry.status()
        assert st["state"] == "sleeping" and st["daemon_url"] is None and not st["connected"]
        assert [t.name for t in scry_threads() if t.name == "scry-link"] == []
        if configured:
            # With the token the same request works: the refusal above was the token's doing.
            status, body = remote(netns, "POST", "/scry/wake", body={"daemon_url": other.url}, token=configured)
            assert status == 200 and body["connected"] is True
            proc = other.process(os.getpid())
            assert proc["state"] == "awake" and proc["session_id"] == body["connection_id"]


def test_ipv6_loopback_and_any_address(home, monkeypatch):
    if not socket.has_ipv6:
        pytest.fail("this interpreter has no IPv6 support")
    monkeypatch.setenv("SCRY_TOKEN", "t6")
    auth = {"Authorization": "Bearer t6"}
    scry.init(control_host="::1")
    st = scry.status()
    assert st["control_host"] == "::1"
    assert request("::1", st["control_port"], "GET", "/scry/status", headers=auth)[0] == 200
    assert request("::1", st["control_port"], "GET", "/scry/status")[0] == 403
    scry.shutdown()
    scry.init(control_host="0.0.0.0")
    st = scry.status()
    assert request("127.0.0.1", st["control_port"], "GET", "/scry/status", headers=auth)[0] == 200

"""The embedded client's life cycle: init, status, discovery file, errors, shutdown, fork."""

import json
import logging
import os
import socket
import stat
import subprocess
import sys
import textwrap
import threading

import pytest

import probe_targets as T
import scry
from conftest import PYTHON_DIR, control, open_fds, scry_threads, wait_until
from realdaemon import elsewhere, running

STATUS_KEYS = {
    "state",
    "name",
    "pid",
    "control_host",
    "control_port",
    "control_socket",
    "daemon_url",
    "connection_id",
    "connected",
}


@pytest.fixture
def daemon(home, tmp_path):
    """The real daemon (`scry serve`) on this test's SCRY_HOME."""
    yield from running(home, tmp_path)


def discovery_path(home):
    return home / "clients" / "{}.json".format(os.getpid())


def run_python(code, env, timeout=30):
    """Run code in a fresh interpreter that imports scry from this checkout."""
    full_env = dict(env)
    full_env["PYTHONPATH"] = PYTHON_DIR
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        timeout=timeout,
    )


def test_public_api_names():
    for name in ("init", "wake", "sleep", "status", "shutdown", "__version__"):
        assert hasattr(scry, name)
    assert scry.__version__ == "0.1.0"
    for cls in (scry.ConfigError, scry.DaemonError, scry.AgentError, scry.ControlPlaneError):
        assert issubclass(cls, scry.ScryError)
    assert issubclass(scry.ScryError, Exception)


def test_status_before_init():
    st = scry.status()
    assert set(st) == STATUS_KEYS
    assert st["state"] == "uninitialised"
    assert st["pid"] == os.getpid()
    assert st["connected"] is False and st["control_port"] is None


def test_init_status_shutdown_init_again(home):
    st = scry.init(name="checkout")
    assert set(st) == STATUS_KEYS
    assert st["state"] == "sleeping"
    assert st["name"] == "checkout"
    # The control plane is a unix socket in the home's private run directory by default.
    assert st["control_socket"] == str(home / "run" / "clients" / "{}.sock".format(os.getpid()))
    assert st["control_host"] is None and st["control_port"] is None
    assert stat.S_ISSOCK(os.stat(st["control_socket"]).st_mode)
    assert stat.S_IMODE(os.stat(st["control_socket"]).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(st["control_socket"])).st_mode) == 0o700
    assert st["daemon_url"] is None and st["connection_id"] is None and st["connected"] is False
    assert scry.status() == st
    assert [t.name for t in scry_threads()] == ["scry-control"]

    with pytest.raises(scry.ConfigError) as info:
        scry.init()
    assert "shutdown" in str(info.value)

    scry.shutdown()
    assert scry.status()["state"] == "uninitialised"
    assert not discovery_path(home).exists()
    assert not os.path.exists(st["control_socket"])
    scry.shutdown()  # twice is fine

    st = scry.init(name="again")
    assert st["state"] == "sleeping" and st["name"] == "again"
    scry.shutdown()


def test_shutdown_releases_threads_and_fds(home):
    before = open_fds()
    scry.init()
    scry.shutdown()
    wait_until(lambda: not scry_threads(), message="no scry threads")
    assert open_fds() == before


def test_name_from_env_and_argument_wins(home, monkeypatch):
    monkeypatch.setenv("SCRY_NAME", "from-env")
    assert scry.init()["name"] == "from-env"
    scry.shutdown()
    assert scry.init(name="from-arg")["name"] == "from-arg"


def test_control_port_from_env(home, monkeypatch):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    monkeypatch.setenv("SCRY_CONTROL_PORT", str(port))
    monkeypatch.setenv("SCRY_TOKEN", "tok")
    st = scry.init()
    assert (st["control_host"], st["control_port"], st["control_socket"]) == ("127.0.0.1", port, None)


def test_tcp_control_plane_without_a_token_warns_and_uses_the_unix_socket(home, monkeypatch, caplog):
    monkeypatch.setenv("SCRY_CONTROL_PORT", "0")
    with caplog.at_level(logging.WARNING, logger="scry"):
        st = scry.init()
    assert st["control_host"] is None and st["control_port"] is None
    assert st["control_socket"] is not None and control("GET", "/scry/status")[0] == 200
    warnings = [r.getMessage() for r in caplog.records if r.name == "scry" and r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "needs a token" in warnings[0] and "SCRY_TOKEN" in warnings[0] and st["control_socket"] in warnings[0]


def test_bad_configuration_is_a_config_error(home, monkeypatch):
    with pytest.raises(scry.ConfigError) as info:
        scry.init(start_state="dozing")
    assert "'sleeping' or 'awake'" in str(info.value)
    with pytest.raises(scry.ConfigError):
        scry.init(register_timeout=0)
    with pytest.raises(scry.ConfigError):
        scry.init(control_port=70000)
    monkeypatch.setenv("SCRY_CONTROL_PORT", "http")
    with pytest.raises(scry.ConfigError) as info:
        scry.init()
    assert "SCRY_CONTROL_PORT" in str(info.value)
    assert scry.status()["state"] == "uninitialised"


def test_port_in_use_is_a_control_plane_error(home, monkeypatch):
    monkeypatch.setenv("SCRY_TOKEN", "tok")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        with pytest.raises(scry.ControlPlaneError) as info:
            scry.init(control_port=busy.getsockname()[1])
        assert "SCRY_CONTROL_PORT" in str(info.value)
    finally:
        busy.close()
    assert scry.status()["state"] == "uninitialised"
    assert not scry_threads()


def test_unusable_control_host_is_a_control_plane_error(home, monkeypatch):
    monkeypatch.setenv("SCRY_TOKEN", "tok")
    # 192.0.2.0/24 (TEST-NET-1) is never an address of this machine.
    with pytest.raises(scry.ControlPlaneError) as info:
        scry.init(control_host="192.0.2.1")
    assert "192.0.2.1" in str(info.value)
    assert scry.status()["state"] == "uninitialised"


def test_discovery_file(home):
    st = scry.init(name="disco")
    path = discovery_path(home)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    record = json.loads(path.read_text())
    assert record["pid"] == os.getpid()
    assert record["name"] == "disco"
    assert record["control_socket"] == st["control_socket"]
    assert record["control_host"] is None and record["control_port"] is None
    assert record["state"] == "sleeping"
    assert record["python"] == "{}.{}.{}".format(*sys.version_info[:3]) or record["python"].startswith(
        "{}.{}.{}".format(*sys.version_info[:3])
    )
    assert record["executable"] == sys.executable
    assert record["agent_version"] == scry.__version__
    assert record["token_required"] is False
    import time

    assert 0 < record["started_at"] <= time.time()
    # Only the file itself: the temporary file was renamed.
    assert os.listdir(str(path.parent)) == [path.name]
    scry.shutdown()
    assert not path.exists()


def test_discovery_file_is_private_whatever_the_umask_and_a_loose_dir_is_tightened(home):
    # A clients directory left 0755 (made by hand, or by an older scry) and a permissive umask.
    clients = os.path.join(str(home), "clients")
    os.makedirs(clients, exist_ok=True)
    os.chmod(clients, 0o755)
    old = os.umask(0)
    try:
        scry.init(name="private")
    finally:
        os.umask(old)
    path = discovery_path(home)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(clients).st_mode) == 0o700
    scry.shutdown()


def test_discovery_file_follows_state_changes(daemon, home):
    scry.init()
    path = discovery_path(home)
    assert json.loads(path.read_text())["state"] == "sleeping"
    inode = os.stat(path).st_ino
    scry.wake()
    assert json.loads(path.read_text())["state"] == "awake"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.stat(path).st_ino != inode  # replaced, not rewritten in place
    scry.sleep()
    assert json.loads(path.read_text())["state"] == "sleeping"


def test_discovery_file_removed_at_exit(home):
    result = run_python(
        """
        import os, scry
        scry.init(name="exiting")
        print(os.getpid())
        """,
        env=dict(os.environ),
    )
    assert result.returncode == 0, result.stderr.decode()
    pid = int(result.stdout.decode().strip())  # the agent printed nothing else on stdout
    assert result.stderr == b""
    clients = home / "clients"
    assert clients.is_dir()
    assert not (clients / "{}.json".format(pid)).exists()
    assert os.listdir(str(clients)) == []


def test_goodbye_and_cleanup_at_exit_while_awake(daemon, home):
    result = run_python(
        """
        import scry
        scry.init(name="awake-at-exit", start_state="awake")
        assert scry.status()["connected"]
        """,
        env=dict(os.environ),
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b""
    status, body = daemon.api("GET", "/api/v1/processes?gone=true")
    assert status == 200, body
    (child,) = [p for p in body["processes"] if p.get("name") == "awake-at-exit"]
    wait_until(lambda: daemon.goodbyes(child["pid"]) == ["exit"], message="goodbye (exit) in the daemon's log")
    wait_until(lambda: daemon.process(child["pid"])["state"] == "gone", message="the daemon to see it gone")
    assert os.listdir(str(home / "clients")) == []


def test_wake_without_daemon_is_a_daemon_error(home):
    scry.init()
    with pytest.raises(scry.DaemonError) as info:
        scry.wake()
    message = str(info.value)
    assert "scry serve" in message
    assert "unix://{}".format(home / "run" / "agent.sock") in message
    st = scry.status()
    assert st["state"] == "sleeping" and st["connected"] is False
    assert [t.name for t in scry_threads()] == ["scry-control"]


def test_no_daemon_and_no_scry_command_says_how_to_install_it(home, tmp_path, monkeypatch):
    # The agent alone (`pip install ./python`): no `scry` on PATH.
    empty = tmp_path / "bin-without-scry"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    scry.init()
    with pytest.raises(scry.DaemonError) as info:
        scry.wake()
    message = str(info.value)
    assert "scry serve --daemon" in message
    assert "`scry` command is not on PATH" in message
    assert "pip install ." in message and "pipx install" in message and "uv tool install" in message

    # With an executable `scry` on PATH the message only says to start the daemon.
    scry_command = empty / "scry"
    scry_command.write_text("#!/bin/sh\n")
    scry_command.chmod(0o755)
    with pytest.raises(scry.DaemonError) as info:
        scry.wake()
    assert "scry serve --daemon" in str(info.value)
    assert "not on PATH" not in str(info.value)


def test_start_awake_without_daemon_raises_and_leaves_nothing(home):
    with pytest.raises(scry.DaemonError) as info:
        scry.init(start_state="awake")
    assert "scry serve" in str(info.value)
    assert scry.status()["state"] == "uninitialised"
    assert not discovery_path(home).exists()


def test_start_awake(daemon, home):
    st = scry.init(start_state="awake")
    assert st["state"] == "awake" and st["connected"] is True
    assert st["daemon_url"] == "unix://{}".format(home / "run" / "agent.sock")
    proc = daemon.process(os.getpid())
    assert proc["state"] == "awake" and proc["session_id"] == st["connection_id"]


def awake_at(daemon, st):
    """Whether this process is awake in ``daemon`` on the connection ``st`` names."""
    proc = daemon.process(os.getpid()) or {}
    return proc.get("state") == "awake" and proc.get("session_id") == st["connection_id"]


def test_daemon_url_precedence(home, monkeypatch, tmp_path):
    with elsewhere(tmp_path, "env-home") as env_daemon, elsewhere(tmp_path, "init-home") as init_daemon, elsewhere(
        tmp_path, "arg-home"
    ) as arg_daemon:
        monkeypatch.setenv("SCRY_DAEMON", env_daemon.url)
        scry.init()
        assert awake_at(env_daemon, scry.wake())
        scry.shutdown()
        scry.init(daemon_url="unix:" + init_daemon.info["agent_socket"])  # the unix:/abs/path form
        assert awake_at(init_daemon, scry.wake())
        scry.sleep()
        st = scry.wake(arg_daemon.url)
        assert awake_at(arg_daemon, st)
        # Awake already: a no-op, whatever the address.
        assert scry.wake(env_daemon.url) == st
        assert awake_at(arg_daemon, st)
        assert env_daemon.process(os.getpid())["state"] == "sleeping"


@pytest.mark.parametrize(
    "url",
    ["relative/agent.sock", "unix://host/agent.sock", "tcp://nohost", "ftp://x:1", "https://h:1", ""],
)
def test_bad_daemon_url_is_a_config_error(home, url):
    scry.init()
    with pytest.raises(scry.ConfigError) as info:
        scry.wake(url)
    assert "://" in str(info.value)  # every message shows the expected form
    assert scry.status()["state"] == "sleeping"


def test_tcp_needs_a_token(home):
    scry.init()
    with pytest.raises(scry.ConfigError) as info:
        scry.wake("tcp://127.0.0.1:9")
    assert "SCRY_TOKEN" in str(info.value)


def test_wake_and_sleep_before_init(home):
    with pytest.raises(scry.ConfigError) as info:
        scry.wake()
    assert "scry.init()" in str(info.value)
    assert scry.sleep()["state"] == "uninitialised"


def test_sleep_when_asleep_is_a_noop(home):
    scry.init()
    assert scry.sleep()["state"] == "sleeping"
    assert scry.sleep()["state"] == "sleeping"


def test_no_output_on_stdout_with_debug(home):
    result = run_python(
        """
        import scry
        scry.init()
        try:
            scry.wake()
        except scry.DaemonError:
            pass
        scry.shutdown()
        """,
        env=dict(os.environ, SCRY_DEBUG="1"),
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b""
    assert b"scry[" in result.stderr  # SCRY_DEBUG=1 logs to stderr


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_fork_resets_the_child(daemon, home):
    scry.init(name="parent", start_state="awake")
    parent_status = scry.status()
    parent_file = discovery_path(home)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running atexit or pytest
        try:
            st = scry.status()
            threads = [t.name for t in threading.enumerate()]
            path = parent_file
            # init works in the child, with its own discovery file
            own = scry.init(name="child", home=str(home))
            child_file = json.loads((home / "clients" / "{}.json".format(os.getpid())).read_text())
            scry.shutdown()
            report = {
                "status": st,
                "threads": threads,
                "parent_file": path.exists(),
                "own": own["state"],
                "child_file": child_file["name"],
            }
            os.write(write_end, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    data = b""
    while True:
        chunk = os.read(read_end, 65536)
        if not chunk:
            break
        data += chunk
    os.close(read_end)
    os.waitpid(pid, 0)
    report = json.loads(data.decode())
    assert report["status"]["state"] == "uninitialised"
    assert report["status"]["pid"] == pid
    assert not any(name.startswith("scry-") for name in report["threads"])
    assert report["parent_file"] is True  # the child did not remove the parent's file
    assert report["own"] == "sleeping" and report["child_file"] == "child"
    # The parent is untouched: still connected, control plane still answering.
    assert scry.status() == parent_status
    status, body = control("GET", "/scry/status")
    assert status == 200 and body["connected"] is True
    # The daemon never heard from the child, and the parent's connection is intact: the same
    # session, no goodbye, and the daemon's requests answered.
    assert daemon.process(pid) is None
    proc = daemon.process(os.getpid())
    assert proc["state"] == "awake" and proc["session_id"] == parent_status["connection_id"]
    assert daemon.goodbyes(os.getpid()) == []
    location = "probe_targets.py:{}".format(T.line("compute"))
    status, probe = daemon.api("POST", "/api/v1/probes", {"location": location, "expressions": ["x"], "pid": os.getpid()})
    assert status == 201 and probe["processes"][0]["state"] == "armed", probe
    assert daemon.api("DELETE", "/api/v1/probes/" + probe["id"])[0] == 200

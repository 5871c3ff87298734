"""A real daemon (`scry serve --port 0`) per test, with its own SCRY_HOME.

The binary is ``$SCRY_BIN``, else ``<repo>/target/debug/scry``; when it is missing the tests that
use it fail and say how to build it.
"""

import contextlib
import json
import os
import re
import signal
import subprocess
import time

import pytest

import scry
from conftest import REPO, UnixHTTPConnection

SCRY_BIN = os.environ.get("SCRY_BIN") or os.path.join(REPO, "target", "debug", "scry")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def write_config(home, **agents):
    """Write ``$SCRY_HOME/config.toml`` with these ``[agents]`` settings (e.g. ``max_batch=3``),
    before the daemon starts."""
    os.makedirs(str(home), exist_ok=True)
    lines = ["[agents]"] + ["{} = {}".format(k, json.dumps(v)) for k, v in sorted(agents.items())]
    with open(os.path.join(str(home), "config.toml"), "w") as f:
        f.write("\n".join(lines) + "\n")


class RealDaemon(object):
    """One `scry serve --port 0` process for a SCRY_HOME."""

    def __init__(self, home, logs):
        self.home = str(home)
        self.logs = logs
        self.proc = None
        self.info = None
        self.starts = 0

    @property
    def daemon_file(self):
        return os.path.join(self.home, "run", "daemon.json")

    def start(self, *args, timeout=30.0):
        if not (os.path.isfile(SCRY_BIN) and os.access(SCRY_BIN, os.X_OK)):
            pytest.fail(
                "the scry binary {} does not exist: build it with `cargo build -p scry-cli` in {} "
                "(or point SCRY_BIN at one)".format(SCRY_BIN, REPO)
            )
        self.starts += 1
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCRY_")}
        env["SCRY_HOME"] = self.home
        log = open(os.path.join(self.logs, "daemon-{}.log".format(self.starts)), "wb")
        try:
            self.proc = subprocess.Popen(
                [SCRY_BIN, "serve", "--port", "0"] + list(args),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                with open(self.daemon_file) as f:
                    info = json.load(f)
                if info.get("pid") == self.proc.pid:
                    self.info = info
                    return info
            except (OSError, ValueError):
                pass
            if self.proc.poll() is not None:
                pytest.fail("`scry serve` exited with {}: {}".format(self.proc.returncode, self.log_text()))
            if time.monotonic() > deadline:
                pytest.fail("`scry serve` wrote no {} within {} s: {}".format(self.daemon_file, timeout, self.log_text()))
            time.sleep(0.02)

    def log_text(self):
        path = os.path.join(self.logs, "daemon-{}.log".format(self.starts))
        try:
            with open(path, "rb") as f:
                return f.read().decode("utf-8", "replace")[-3000:]
        except OSError:
            return "(no log)"

    def full_log(self):
        """Everything every start of this daemon logged, without terminal colours."""
        parts = []
        for start in range(1, self.starts + 1):
            try:
                with open(os.path.join(self.logs, "daemon-{}.log".format(start)), "rb") as f:
                    parts.append(f.read().decode("utf-8", "replace"))
            except OSError:
                pass
        return _ANSI.sub("", "".join(parts))

    def goodbyes(self, pid):
        """The reason of each disconnection of ``pid``, oldest first, from the daemon's
        ``agent_disconnected`` system events: the ``goodbye`` reason the agent sent (``"sleep"``,
        ``"shutdown"``, ``"exit"``), or None when the connection ended without one."""
        status, body = self.api("GET", "/api/v1/system-events?limit=10000")
        assert status == 200, body
        return [
            ev["data"]["reason"]
            for ev in body["system_events"]
            if ev["kind"] == "agent_disconnected" and ev["data"].get("pid") == pid
        ]

    def api(self, method, path, body=None):
        """A request to its local API socket (the owner's way in, as the CLI's)."""
        conn = UnixHTTPConnection(self.info["api_socket"], timeout=15)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
            response = conn.getresponse()
            return response.status, json.loads(response.read().decode() or "null")
        finally:
            conn.close()

    @property
    def url(self):
        """Its agents' unix socket, as a daemon_url."""
        return "unix://" + self.info["agent_socket"]

    def process(self, pid):
        status, body = self.api("GET", "/api/v1/processes")
        assert status == 200, body
        for proc in body["processes"]:
            if proc["pid"] == pid:
                return proc
        return None

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def running(home, tmp_path, *args):
    """For a fixture: ``yield from running(home, tmp_path)`` gives a started daemon, stopped after
    the test (and the agent shut down)."""
    d = RealDaemon(home, str(tmp_path))
    try:
        d.start(*args)
        yield d
    finally:
        scry.shutdown()
        d.stop()


@contextlib.contextmanager
def elsewhere(tmp_path, label, *args):
    """A started daemon with a SCRY_HOME of its own (``tmp_path/label``), not the test's: for a
    daemon at another address, or several. The agent is shut down before it stops."""
    logs = os.path.join(str(tmp_path), label + "-logs")
    os.makedirs(logs, exist_ok=True)
    d = RealDaemon(os.path.join(str(tmp_path), label), logs)
    try:
        d.start(*args)
        yield d
    finally:
        scry.shutdown()
        d.stop()

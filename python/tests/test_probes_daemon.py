"""Probes end to end: the real daemon, the real CLI (`scry probe add`, `scry events --json`) and this
process as the target."""

import json
import os
import subprocess

import pytest

import probe_targets as T
import scry
from conftest import wait_until
from realdaemon import SCRY_BIN, running
from test_engine import hooks_left


@pytest.fixture
def daemon(home, tmp_path):
    yield from running(home, tmp_path)


def cli(daemon, *args, check=True):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCRY_")}
    env["SCRY_HOME"] = daemon.home
    proc = subprocess.run(
        [SCRY_BIN] + list(args), env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=60
    )
    if check:
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    return proc


def at(marker):
    return "probe_targets.py:{}".format(T.line(marker))


def stored_events(daemon, probe):
    out = cli(daemon, "events", "--json", "--probe", probe).stdout
    return json.loads(out.decode())["events"]


def test_probe_add_then_events_read_typed_values(daemon):
    scry.init(name="e2e-probes")
    scry.wake()
    pid = str(os.getpid())
    out = cli(
        daemon, "probe", "add", at("compute"), "x", "x * 1.5", "str(x) * 2", "--pid", pid, "--name", "totals", "--json"
    ).stdout
    probe = json.loads(out.decode())
    (status,) = probe["processes"]
    assert status["state"] == "armed" and status["line"] == T.line("compute"), status
    for x in range(3):
        T.compute(x)
    events = wait_until(lambda: len(stored_events(daemon, "totals")) == 3 and stored_events(daemon, "totals"), timeout=15, message="3 stored hits")
    events.sort(key=lambda e: e["data"]["values"]["x"]["v"])
    assert [e["data"]["values"]["x"] for e in events] == [{"t": "int", "v": i} for i in range(3)]
    assert events[2]["data"]["values"]["x * 1.5"] == {"t": "float", "v": 3.0}
    assert events[2]["data"]["values"]["str(x) * 2"] == {"t": "str", "v": "22"}
    assert events[0]["data"]["function"] == "compute" and events[0]["data"]["line"] == T.line("compute")
    assert events[0]["source"] == probe["id"]
    # Counters reach the daemon (probe_status, at most once a second).
    wait_until(
        lambda: json.loads(cli(daemon, "probe", "list", "--json").stdout.decode())["probes"][0]["totals"]["hits"] == 3,
        timeout=15,
        message="the counters in `scry probe list`",
    )
    cli(daemon, "probe", "rm", "totals")
    wait_until(lambda: hooks_left() == [], timeout=15, message="the probe's hooks to go")


def test_snapping_locals_and_an_invalid_expression(daemon):
    scry.init(name="e2e-probes-2")
    scry.wake()
    pid = str(os.getpid())
    out = cli(daemon, "probe", "add", at("comment"), "z", "--pid", pid, "--name", "snapped", "--json").stdout
    (status,) = json.loads(out.decode())["processes"]
    assert status["requested_line"] == T.line("comment") and status["line"] == T.line("after-comment")
    cli(daemon, "probe", "add", at("secrets"), "user", "--pid", pid, "--name", "secrets", "--locals")
    T.compute(4)
    T.secrets_here("grace")
    snapped = wait_until(lambda: stored_events(daemon, "snapped"), timeout=15, message="the snapped hit")
    assert snapped[0]["data"]["values"]["z"] == {"t": "int", "v": 8}
    secrets = wait_until(lambda: stored_events(daemon, "secrets"), timeout=15, message="the locals hit")
    local_values = secrets[0]["data"]["locals"]
    assert local_values["access_token"] == {"t": "redacted"} and local_values["db_password"] == {"t": "redacted"}
    assert local_values["tokenizer"] == {"t": "str", "v": "keep"}
    bad = cli(daemon, "probe", "add", at("compute"), "open('/etc/passwd')", "--pid", pid, check=False)
    assert bad.returncode != 0
    assert b"calls are not allowed: open()" in bad.stderr

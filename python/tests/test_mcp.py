"""MCP end to end with the official MCP Python SDK as the client: over stdio to `scry mcp`
(which relays to the daemon) and over streamable HTTP to the daemon's `/mcp`, a realistic
session against a live Python process, and bad arguments to every tool.

Needs the `mcp` package (the host's Python has it; the chroot interpreters do not, and skip).
The target runs on the newest interpreter of the test matrix when there is one."""

import asyncio
import glob
import json
import os
import subprocess
import sys

import pytest

mcp = pytest.importorskip("mcp")
from mcp import ClientSession, StdioServerParameters  # noqa: E402
from mcp.client.stdio import stdio_client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402

from conftest import PYTHON_DIR, REPO, TESTS, wait_until  # noqa: E402
from realdaemon import SCRY_BIN, running  # noqa: E402

TOOLS = {
    "list_processes", "wake", "sleep", "find_lines", "add_probe", "list_probes", "remove_probe",
    "enable_probe", "disable_probe", "observe", "query_events", "event_stats", "wait_for_hits",
    "dump_stacks", "trace_start", "trace_stop", "trace_summary", "attach", "detach",
}


def target_python():
    matrix = sorted(glob.glob(os.path.join(REPO, ".matrix", "bin", "python3.*")))
    return matrix[-1] if matrix else sys.executable


@pytest.fixture
def daemon(home, tmp_path):
    yield from running(home, tmp_path)


@pytest.fixture
def target(home, daemon):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCRY_")}
    env.update(SCRY_HOME=str(home), PYTHONPATH=PYTHON_DIR)
    proc = subprocess.Popen(
        [target_python(), os.path.join(TESTS, "mcp_target.py"), "mcp-target"],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        wait_until(
            lambda: any(p["pid"] == proc.pid and p["state"] == "awake"
                        for p in daemon.api("GET", "/api/v1/processes")[1]["processes"]),
            timeout=30, message="the target to be awake",
        )
        yield proc
    except AssertionError:
        proc.kill()
        raise AssertionError("the target never became awake; its stderr: {}".format(
            proc.communicate(timeout=10)[1].decode(errors="replace")[-2000:]))
    finally:
        proc.kill()
        proc.wait(10)


def python314():
    """A CPython 3.14 to attach to without preparation: the test's own interpreter when it is one,
    else the matrix's (a chroot: another root than the daemon's, as a container would be)."""
    if sys.version_info >= (3, 14):
        return sys.executable
    matrix = os.path.join(REPO, ".matrix", "bin", "python3.14")
    if os.access(matrix, os.X_OK):
        return matrix
    pytest.skip("no Python 3.14 to attach to (run scripts/provision-matrix)")


@pytest.fixture
def plain_target(home):
    """A 3.14 process that never imported scry (no PYTHONPATH to it, no SCRY_ variables)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCRY_") and k != "PYTHONPATH"}
    proc = subprocess.Popen(
        [python314(), "-u", os.path.join(TESTS, "mcp_plain_target.py")],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        line = proc.stdout.readline().decode()
        assert line.split() == ["plain", str(proc.pid)], (line, proc.stderr.read() if not line else "")
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


def is_error(result):
    return bool(getattr(result, "is_error", None) or getattr(result, "isError", None))


def payload(result):
    """The JSON a tool answered, and whether it is an error result."""
    text = "".join(c.text for c in result.content if getattr(c, "type", None) == "text")
    try:
        return json.loads(text), is_error(result)
    except ValueError:  # the SDK's own refusals are plain text
        return {"text": text}, is_error(result)


def rows(table):
    return [dict(zip(table["columns"], r)) for r in table["rows"]]


async def call(session, tool, **args):
    data, failed = payload(await session.call_tool(tool, args))
    assert not failed, (tool, args, data)
    return data


async def realistic_session(session, pid):
    await session.initialize()
    tools = (await session.list_tools()).tools
    names = {t.name for t in tools}
    assert TOOLS <= names, TOOLS - names
    for t in tools:
        assert len(t.description or "") > 40, t.name
        schema = getattr(t, "input_schema", None) or getattr(t, "inputSchema")
        assert schema.get("type") == "object", t.name

    procs = await call(session, "list_processes")
    assert procs["columns"][:4] == ["pid", "ppid", "name", "state"]
    mine = [r for r in rows(procs) if r["pid"] == pid]
    assert mine and mine[0]["state"] == "awake" and mine[0]["name"] == "mcp-target"

    # Find where `total` is bound: twice (before and inside the loop), read in the loop and after.
    found = await call(session, "find_lines", target="mcp_target.py:checkout", var="total", pid=pid)
    binds = rows(found["bindings"])
    assert [(b["line"], b["after_line"]) for b in binds] == [(10, 11), (12, 11)], found
    assert binds[1]["source"] == "total = total + price"
    assert [r["line"] for r in rows(found["reads"])] == [12, 13, 14]

    # observe: resolves the line, probes, waits, returns typed values, removes the probe.
    seen = await call(session, "observe", target="mcp_target.py:checkout", var="total", pid=pid,
                      hits=5, timeout_s=30)
    assert seen["reached"] is True, seen
    assert seen["line"] == 11 and seen["location"].endswith("mcp_target.py:11"), seen
    hits = rows(seen["hits"])
    assert len(hits) == 5 and seen["hits"]["types"] == {"total": "int"}
    assert all(isinstance(h["total"], int) and 0 <= h["total"] <= 110 for h in hits), hits
    assert (await call(session, "list_probes"))["probes"] == []

    # A probe of our own, its hits, stats and a value filter.
    added = await call(session, "add_probe", location="mcp_target.py:13", expressions=["total"],
                       pid=pid, name="totals")
    assert added["name"] == "totals"
    waited = await call(session, "wait_for_hits", probe="totals", count=20, timeout_s=30, after_id=0)
    assert waited["reached"] is True and len(waited["events"]["rows"]) == 20
    stats = await call(session, "event_stats", probe="totals")
    numeric = stats["expressions"]["total"]["numeric"]
    assert numeric["count"] >= 20 and numeric["min"] >= 50 and numeric["max"] <= 110, stats
    assert numeric["p50"] is not None and numeric["p99"] <= 110
    big = await call(session, "query_events", probe="totals", where="total>100", limit=3)
    assert all(r["total"] == 110 for r in rows(big["events"])), big
    assert "truncated" in big and big["counts"]["returned"] == len(big["events"]["rows"])
    disabled = await call(session, "disable_probe", probe="totals")
    assert disabled["enabled"] is False
    assert (await call(session, "enable_probe", probe="totals"))["enabled"] is True
    await call(session, "remove_probe", probe="totals")

    # A short trace of checkout(): counts and durations, summarized.
    started = await call(session, "trace_start", target=str(pid), functions=["__main__:checkout"])
    trace_id = started["id"]
    await asyncio.sleep(0.5)
    await call(session, "trace_stop", trace=trace_id)
    summary = None
    for _ in range(50):  # the last batch is stored shortly after the stop
        summary = await call(session, "trace_summary", trace=trace_id)
        if rows(summary["functions"]) and rows(summary["functions"])[0]["calls"] >= 5:
            break
        await asyncio.sleep(0.1)
    fn = rows(summary["functions"])[0]
    assert fn["function"] == "__main__:checkout" and fn["calls"] >= 5 and fn["exceptions"] == 0, summary
    assert rows(summary["slowest_calls"])[0]["pid"] == pid, summary

    # Stacks from outside: the main thread runs checkout() or sleeps in main().
    dump = await call(session, "dump_stacks", pid=pid)
    frames = [f for t in dump["processes"][0]["threads"] for f in t["frames"]]
    assert any("mcp_target.py" in f for f in frames), dump


async def attach_session(session, pid):
    """attach an unprepared 3.14 process, observe a value in it, detach; bad arguments to both."""
    procs = rows(await call(session, "list_processes"))
    assert not [r for r in procs if r["pid"] == pid and r["state"] == "awake"], procs
    attached = await call(session, "attach", pid=pid, timeout_s=10)
    assert attached["pid"] == pid and attached["already_attached"] is False, attached
    assert attached["injector"] == "pep768" and attached["python_version"].startswith("3.14"), attached
    mine = [r for r in rows(await call(session, "list_processes")) if r["pid"] == pid]
    assert mine and mine[0]["state"] == "awake" and mine[0]["origin"] == "injected", mine
    again = await call(session, "attach", pid=pid)
    assert again["already_attached"] is True, again

    seen = await call(session, "observe", target="mcp_plain_target.py:checkout", var="total",
                      pid=pid, hits=3, timeout_s=30)
    assert seen["reached"] is True and seen["hits"]["types"] == {"total": "int"}, seen
    assert all(0 <= h["total"] <= 110 for h in rows(seen["hits"])), seen

    detached = await call(session, "detach", pid=pid)
    assert detached["detached"] is True and detached["origin"] == "injected", detached
    procs = rows(await call(session, "list_processes"))
    assert not [r for r in procs if r["pid"] == pid and r["state"] == "awake"], procs
    # The process runs on without an agent; detaching again says there is none.
    data, failed = payload(await session.call_tool("detach", {"pid": pid}))
    assert failed and data["error"]["kind"] == "not_attached", data


BAD_CALLS = [
    ("list_processes", {"include_gone": "yes"}),
    ("wake", {}),
    ("wake", {"target": "no-such-process"}),
    ("sleep", {"target": 12}),
    ("find_lines", {"target": "mcp_target.py:nope"}),
    ("find_lines", {"target": "mcp_target.py:checkout", "var": "not a name"}),
    ("add_probe", {"location": "mcp_target.py:12", "expressions": []}),
    ("add_probe", {"location": "mcp_target.py:12", "expressions": ["import os"]}),
    ("add_probe", {"location": "mcp_target.py:12"}),
    ("list_probes", {"bogus": 1}),
    ("remove_probe", {"probe": "nope"}),
    ("enable_probe", {"probe": "nope"}),
    ("disable_probe", {}),
    ("observe", {"target": "mcp_target.py:checkout", "var": "no_such_variable", "timeout_s": 1}),
    ("observe", {"target": "mcp_target.py:checkout", "var": "total", "at": "during"}),
    ("query_events", {"where": "total=>3"}),
    ("query_events", {"order": "sideways"}),
    ("event_stats", {"since": "yesterday"}),
    ("wait_for_hits", {"timeout_s": -1}),
    ("wait_for_hits", {"count": "many"}),
    ("dump_stacks", {"pid": -1}),
    ("dump_stacks", {"pid": 999999999}),
    ("trace_start", {"target": "1"}),
    ("trace_start", {"target": "no-such", "functions": ["x:y"]}),
    ("trace_stop", {"trace": "tr-nope"}),
    ("trace_summary", {"trace": "tr-nope", "top": 0}),
    ("attach", {}),
    ("attach", {"pid": 0}),
    ("attach", {"pid": -5}),
    ("attach", {"pid": "1234"}),
    ("attach", {"pid": 999999999}),
    ("attach", {"pid": 1, "injector": "telepathy"}),
    ("attach", {"pid": 1, "timeout_s": 0}),
    ("attach", {"pid": 1, "timeout_s": 1000}),
    ("attach", {"pid": 1, "bogus": True}),
    ("detach", {}),
    ("detach", {"pid": 999999999}),
    ("detach", {"pid": 1, "force": True}),
]


async def bad_arguments(session, pid):
    for name, args in BAD_CALLS:
        if "target" in args and name == "observe":
            args = dict(args, pid=pid)
        try:
            result = await session.call_tool(name, args)
        except mcp.McpError as e:  # refused by the schema before the tool ran
            assert e.error.message, (name, args)
            continue
        data, failed = payload(result) if result.content else ({}, is_error(result))
        assert failed, (name, args, data)
    # The server is still fine.
    assert not is_error(await session.call_tool("list_processes", {}))


def stdio_params(home):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCRY_")}
    env["SCRY_HOME"] = str(home)
    return StdioServerParameters(command=SCRY_BIN, args=["mcp"], env=env)


def test_stdio_session(home, target, plain_target):
    async def main():
        async with stdio_client(stdio_params(home)) as (read, write):
            async with ClientSession(read, write) as session:
                await realistic_session(session, target.pid)
                await attach_session(session, plain_target.pid)
                await bad_arguments(session, target.pid)

    asyncio.run(main())


def test_http_session(daemon, target, plain_target):
    # /mcp over TCP wants the daemon's token, loopback included.
    from mcp.shared._httpx_utils import create_mcp_http_client

    with open(os.path.join(daemon.home, "token")) as f:
        token = f.read().strip()

    async def main():
        http = create_mcp_http_client(headers={"Authorization": "Bearer " + token})
        url = "http://{}/mcp".format(daemon.info["http"])
        async with http, streamable_http_client(url, http_client=http) as streams:
            read, write = streams[0], streams[1]
            async with ClientSession(read, write) as session:
                await realistic_session(session, target.pid)
                await attach_session(session, plain_target.pid)
                await bad_arguments(session, target.pid)

    asyncio.run(main())


def test_stdio_starts_the_daemon(home, tmp_path):
    """Registered as one command: `scry mcp` starts the daemon when none runs, and writes
    nothing but protocol messages on stdout."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    os.makedirs(str(home), exist_ok=True)
    with open(os.path.join(str(home), "config.toml"), "w") as f:
        f.write('[http]\naddr = "127.0.0.1:{}"\n'.format(port))
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"}}}
    inited = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCRY_")}
    env["SCRY_HOME"] = str(home)
    try:
        out = subprocess.run(
            [SCRY_BIN, "mcp"], input="\n".join(json.dumps(m) for m in (init, inited, listing)) + "\n",
            env=env, capture_output=True, text=True, timeout=60,
        )
        lines = [json.loads(l) for l in out.stdout.splitlines()]
        assert [m.get("id") for m in lines] == [1, 2], out
        assert lines[0]["result"]["serverInfo"]["name"] == "scry"
        assert TOOLS <= {t["name"] for t in lines[1]["result"]["tools"]}
        assert "started the daemon" in out.stderr
    finally:
        subprocess.run([SCRY_BIN, "stop"], env=env, capture_output=True, timeout=30)

"""The benchmark's target program: the same workloads for every variant, timed in-process.

Started by ``bench/run`` (never by hand) as::

    python target.py --mode plain|sleeping|scry|debugpy [--name NAME]

It speaks JSON lines with the harness: commands on stdin, answers on a private copy of the
original stdout (fd 1 itself is pointed at stderr, so that nothing else - scry, debugpy, a stray
print - can corrupt the channel). Standard library only; runs on Python 3.8+.

Modes:
  plain     nothing but the workloads (the baseline)
  sleeping  ``scry.init(name=NAME)`` and nothing else (never woken by the harness)
  scry      ``scry.init(name=NAME)``; the harness wakes it and adds the probe
  debugpy   ``debugpy.listen(("127.0.0.1", 0))``; the harness attaches a DAP client and sets the
            logpoint

The lines marked ``# @probe:NAME`` are where the harness puts a probe or a logpoint; it finds
their numbers in the ``ready`` message.
"""

import json
import os
import sys
import threading
import time

import elsewhere  # bench/elsewhere.py: unprobed code in another module (bench/ is sys.path[0])

_perf_ns = time.perf_counter_ns
_thread_ns = time.thread_time_ns  # CPU time of this thread: blind to preemption and GIL waits


# -- workloads (identical in every variant) ----------------------------------------------------


def hot(n):
    """The probed loop: one probe hit per iteration."""
    total = 0
    for i in range(n):
        total += i  # @probe:hot
    return total


def plain(n):
    """The same loop as `hot`, never probed: code without probes, in the probed file."""
    total = 0
    for i in range(n):
        total += i
    return total


def spin(seconds):
    """Hit the probed line as fast as possible for `seconds`; returns (iterations, elapsed ns)."""
    perf = time.perf_counter
    deadline = perf() + seconds
    t0 = _perf_ns()
    n = 0
    while True:
        for i in range(1024):
            x = i  # @probe:spin
        n += 1024
        if perf() >= deadline:
            break
    return n, _perf_ns() - t0


WORKLOADS = {"hot": hot, "plain": plain, "other": elsewhere.plain, "calls": elsewhere.calls}


# -- introspection -----------------------------------------------------------------------------


def probe_lines():
    import re

    lines = {}
    with open(os.path.abspath(__file__)) as f:
        for number, text in enumerate(f, 1):
            m = re.search(r"# @probe:(\w+)\s*$", text)
            if m:
                lines[m.group(1)] = number
    return lines


def _describe(obj):
    if obj is None:
        return None
    return "{}.{}".format(getattr(obj, "__module__", "?"), getattr(obj, "__qualname__", type(obj).__name__))


def hooks():
    """Every hook that could make this process slower: trace/profile functions and sys.monitoring."""
    state = {
        "sys.gettrace": _describe(sys.gettrace()),
        "sys.getprofile": _describe(sys.getprofile()),
        "threading.gettrace": _describe(threading.gettrace()) if hasattr(threading, "gettrace") else None,
        "threading.getprofile": _describe(threading.getprofile()) if hasattr(threading, "getprofile") else None,
    }
    mon = getattr(sys, "monitoring", None)
    if mon is not None:
        tools = {}
        for tool in range(6):
            name = mon.get_tool(tool)
            if name is None:
                continue
            entry = {"name": name, "events": mon.get_events(tool), "local_events": {}}
            for fn in (hot, plain, spin, elsewhere.plain, elsewhere.calls, elsewhere._step):
                ev = mon.get_local_events(tool, fn.__code__)
                if ev:
                    entry["local_events"][fn.__module__ + "." + fn.__name__] = ev
            tools[str(tool)] = entry
        state["sys.monitoring"] = tools
    else:
        state["sys.monitoring"] = None
    # Bytecode injection (3.8, 3.9, 3.11): functions running a copy that calls scry's line hook.
    state["injected"] = [
        fn.__module__ + "." + fn.__name__
        for fn in (hot, plain, spin, elsewhere.plain, elsewhere.calls, elsewhere._step)
        if any(getattr(c, "__qualname__", "") == "LineHook.__init__.<locals>.fire" for c in fn.__code__.co_consts)
    ]
    state["threads"] = sorted(t.name for t in threading.enumerate())
    return state


def hooks_clean(state):
    """True when nothing that costs time is installed (threads do not count)."""
    return (
        state["sys.gettrace"] is None
        and state["sys.getprofile"] is None
        and not state["threading.gettrace"]
        and not state["threading.getprofile"]
        and not state["sys.monitoring"]
        and not state["injected"]
    )


# -- main --------------------------------------------------------------------------------------


def main():
    args = sys.argv[1:]
    mode = args[args.index("--mode") + 1]
    name = args[args.index("--name") + 1] if "--name" in args else None

    # A private channel to the harness; fd 1 goes to stderr from now on.
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    def send(obj):
        out.write(json.dumps(obj) + "\n")
        out.flush()

    ready = {
        "ready": True,
        "pid": os.getpid(),
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "file": os.path.abspath(__file__),
        "lines": probe_lines(),
        "hooks_before": hooks(),
    }
    client_on = [False]
    if mode in ("sleeping", "scry"):
        import scry

        scry.init(name=name)
        client_on[0] = True
        ready["scry"] = scry.__file__
    elif mode == "debugpy":
        import debugpy

        host, port = debugpy.listen(("127.0.0.1", 0))
        ready["dap"] = [host, port]
        ready["debugpy"] = debugpy.__version__
    elif mode != "plain":
        raise SystemExit("unknown mode " + mode)
    ready["hooks_after"] = hooks()
    ready["hooks_clean"] = hooks_clean(ready["hooks_after"])
    send(ready)

    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["cmd"]
        if op == "run":
            fn = WORKLOADS[cmd["fn"]]
            n = cmd["n"]
            walls, cpus = [], []
            for _ in range(cmd.get("repeat", 1)):
                c0 = _thread_ns()
                t0 = _perf_ns()
                fn(n)
                t1 = _perf_ns()
                c1 = _thread_ns()
                walls.append(t1 - t0)
                cpus.append(c1 - c0)
            send({"ns": walls, "cpu_ns": cpus, "n": n})
        elif op == "spin":
            iterations, ns = spin(cmd["seconds"])
            send({"iterations": iterations, "ns": ns, "t_end": time.time()})
        elif op == "scry":  # the sleeping variant toggles its client: init / shutdown
            import scry

            if cmd["op"] == "init" and not client_on[0]:
                scry.init(name=name)
            elif cmd["op"] == "shutdown" and client_on[0]:
                scry.shutdown()
            client_on[0] = cmd["op"] == "init"
            state = hooks()
            send({"hooks": state, "clean": hooks_clean(state)})
        elif op == "hooks":
            state = hooks()
            send({"hooks": state, "clean": hooks_clean(state)})
        elif op == "quit":
            send({"bye": True})
            break
        else:
            send({"error": "unknown command " + op})
    out.close()
    os._exit(0)  # no at-exit work (scry goodbye, debugpy teardown) to wait for


if __name__ == "__main__":
    main()

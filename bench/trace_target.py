"""The target of bench/trace.py: two workloads, timed on the harness's command (JSON lines).

* ``traced``: a loop making N calls of ``leaf`` (the function scry traces: ``trace_target:leaf``);
* ``untraced``: the same loop calling ``other``, which no scry trace selects.

Commands on stdin, one a line: ``run`` (time both, reply ``{"traced": s, "untraced": s}``),
``viz`` (the same with VizTracer tracing the whole program between start and stop: what VizTracer
does by default), ``status`` (scry's trace status in this process), ``quit``. argv: MODE (``scry``
or ``viztracer``), N.
"""

import json
import sys
import time

MODE = sys.argv[1]
N = int(sys.argv[2])


def leaf(i):
    return i + 1


def other(i):
    return i + 1


def traced(n):
    f = leaf
    for i in range(n):
        f(i)


def untraced(n):
    f = other
    for i in range(n):
        f(i)


def timed(fn):
    """Wall seconds, and CPU seconds of this thread only (without the agent's link thread)."""
    c0 = time.thread_time()
    t0 = time.perf_counter()
    fn(N)
    return time.perf_counter() - t0, time.thread_time() - c0


def run():
    # Untraced first: while a trace runs, the traced loop leaves records that the link thread
    # ships afterwards, and that work must not be counted against the code outside the selection.
    untraced_wall, untraced_cpu = timed(untraced)
    traced_wall, traced_cpu = timed(traced)
    return {"traced": traced_wall, "traced_cpu": traced_cpu, "untraced": untraced_wall, "untraced_cpu": untraced_cpu}


def main():
    if MODE == "scry":
        import scry
        from scry import _trace

        scry.init(name="trace-bench")
    else:
        from viztracer import VizTracer

        _trace = None
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "run":
            out = run()
        elif cmd == "viz":
            tracer = VizTracer(tracer_entries=4 * N + 1000, verbose=0)
            tracer.start()
            out = run()
            tracer.stop()
            tracer.clear()
        elif cmd == "status":
            trace = _trace._current if _trace else None
            out = {"tracing": trace is not None and trace.ended is None,
                   "status": trace.status() if trace is not None else None,
                   "hooks": _trace.hooks_installed() if _trace else None}
        elif cmd == "quit":
            return
        else:
            out = {"error": cmd}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()

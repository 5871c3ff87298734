#!/usr/bin/env python3
"""bench/trace.py: the cost of scry's call tracing, side by side with VizTracer, in one run.

Usage:
  bench/trace.py                 every interpreter found (host python3, .matrix/bin/python3.13/3.14)
  bench/trace.py --reps 3 --n 100000 --python .matrix/bin/python3.14
  bench/trace.py --help

For each interpreter it starts a daemon in a temporary SCRY_HOME (`scry serve --port 0`, the
release binary: `cargo build --release --bin scry` first unless --no-build) and two target
processes running bench/trace_target.py:

  scry       scry.init(), woken with `scry wake`; in each repetition the workloads run once with
             no trace ("off") and once while `scry trace start PID --function __main__:leaf
             --max-rate 1000000000/s` runs ("on"), the trace being stopped with `scry trace stop`
             in between (the harness checks that the trace is running, that nothing was dropped,
             and that no hook is left after the stop);
  viztracer  VizTracer (from PyPI, installed per interpreter into bench/.deps/viztracer-<X.Y>/ with
             the host's pip) with its defaults, which trace every Python function: "off" is the
             workloads alone, "on" is between VizTracer.start() and stop().

The workloads (N calls each): `traced` calls `leaf` (the function scry traces), `untraced` calls
`other` (which scry does not select; VizTracer traces it like everything). Figures, minimum over
the repetitions (medians in the JSON):

  per traced call    (t_on - t_off) / N for `traced`, in ns: the cost of one call+return recorded,
                     as CPU time of the program's thread (time.thread_time: recording only) and as
                     wall time (with the agent's link thread shipping the records, which holds the
                     GIL while it encodes them)
  untraced overhead  (t_on - t_off) / t_off for `untraced`, in %: what code outside the selection pays
  noise              the spread of t_off between repetitions, in %: below it nothing is measurable

Raw results: bench/results/trace-<date>.json.
"""

import argparse
import collections
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import wheels  # bench/wheels.py, beside this script

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
SCRY_BIN = REPO / "target" / "release" / "scry"
TARGET = BENCH / "trace_target.py"
DEPS = BENCH / ".deps"
RESULTS = BENCH / "results"
VIZTRACER = "1.1.1"


def log(msg):
    sys.stderr.write("[bench/trace] {}\n".format(msg))
    sys.stderr.flush()


def clean_env():
    return {k: v for k, v in os.environ.items() if not k.startswith(("SCRY_", "PYTHON"))}


def version_of(py):
    out = subprocess.run([py, "-c", "import sys, platform; print('%d.%d' % sys.version_info[:2], platform.python_version())"],
                         capture_output=True, text=True, check=True).stdout.split()
    return out[0], out[1]


def provision_viztracer(py, version):
    """VizTracer (the pin, or the newest release for an old Python) for Python `version`: the
    directory it is in, and its version."""
    target = DEPS / "viztracer-{}".format(version)
    return target, wheels.install("viztracer", VIZTRACER, version, target, log, extra=["objprint"])


class Target(object):
    def __init__(self, py, mode, n, env):
        self.proc = subprocess.Popen([py, str(TARGET), mode, str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env, text=True, cwd=str(BENCH))
        assert json.loads(self.proc.stdout.readline())["ready"]

    def ask(self, cmd):
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the target exited")
        return json.loads(line)

    def close(self):
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(10)
        except Exception:
            self.proc.kill()
            self.proc.wait()


def scry(home, *args):
    r = subprocess.run([str(SCRY_BIN)] + list(args), capture_output=True, text=True,
                       env=dict(clean_env(), SCRY_HOME=str(home)))
    if r.returncode != 0:
        raise RuntimeError("scry {} failed: {}{}".format(" ".join(args), r.stdout, r.stderr))
    return json.loads(r.stdout) if "--json" in args else r.stdout


def wait(what, cond, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise RuntimeError("timed out waiting for " + what)


def measure(py, reps, n):
    version, full = version_of(py)
    result = {"python": full, "executable": py}
    work = Path(tempfile.mkdtemp(prefix="scry-trace-bench-", dir="/tmp"))
    home = work / "home"
    home.mkdir()
    daemon = subprocess.Popen([str(SCRY_BIN), "serve", "--port", "0"], env=dict(clean_env(), SCRY_HOME=str(home)),
                              stdout=subprocess.DEVNULL, stderr=open(str(work / "daemon.log"), "w"))
    targets = []
    try:
        wait("the daemon", lambda: (home / "run" / "daemon.json").exists())
        env_scry = dict(clean_env(), SCRY_HOME=str(home), PYTHONPATH=str(REPO / "python"))
        t_scry = Target(py, "scry", n, env_scry)
        targets.append(t_scry)
        pid = str(t_scry.proc.pid)
        scry(home, "wake", pid, "--json")
        try:
            viz_dir, viz_version = provision_viztracer(py, version)
        except RuntimeError as e:  # no VizTracer wheel for this Python (3.15): scry alone
            log("VizTracer is not measured on {}: {}".format(full, str(e).splitlines()[0]))
            result["notes"] = ["VizTracer: " + str(e).splitlines()[0]]
            t_viz, viz_version = None, None
        else:
            t_viz = Target(py, "viztracer", n, dict(clean_env(), PYTHONPATH=str(viz_dir)))
            targets.append(t_viz)
        rows = {"scry": [], "viztracer": []} if t_viz is not None else {"scry": []}
        for rep in range(reps):
            off = t_scry.ask("run")
            started = scry(home, "trace", "start", pid, "--function", "__main__:leaf",
                           "--max-rate", "1000000000/s", "--json")
            trace_id = started["id"]
            wait("the trace to run", lambda: t_scry.ask("status")["tracing"])
            on = t_scry.ask("run")
            status = t_scry.ask("status")["status"]
            stopped = scry(home, "trace", "stop", trace_id, "--json")
            final = stopped["stopped"][0]["processes"][0]["status"]
            if final["recorded"] < 2 * n:
                raise RuntimeError("the trace recorded {} events, not the {} of the traced run: {}".format(
                    final["recorded"], 2 * n, final))
            after = t_scry.ask("status")
            if after["hooks"]:
                raise RuntimeError("a tracing hook is left after the stop")
            rows["scry"].append({"off": off, "on": on, "functions": status["functions"],
                                 "recorded": final["recorded"], "dropped": final["dropped"]})
            line = "{} rep {}: scry {:.0f} ns/call".format(full, rep + 1, (on["traced"] - off["traced"]) / n * 1e9)
            if t_viz is not None:
                v_off = t_viz.ask("run")
                v_on = t_viz.ask("viz")
                rows["viztracer"].append({"off": v_off, "on": v_on})
                line += ", viztracer {:.0f} ns/call".format((v_on["traced"] - v_off["traced"]) / n * 1e9)
            log(line)
        result["runs"] = rows
        result["viztracer_version"] = viz_version
        for tool, runs in rows.items():
            per_call = [(r["on"]["traced"] - r["off"]["traced"]) / n * 1e9 for r in runs]
            untraced = [(r["on"]["untraced"] - r["off"]["untraced"]) / r["off"]["untraced"] * 100 for r in runs]
            offs = [r["off"]["untraced"] for r in runs]
            mins = {"traced_off": min(r["off"]["traced"] for r in runs), "traced_on": min(r["on"]["traced"] for r in runs),
                    "untraced_off": min(offs), "untraced_on": min(r["on"]["untraced"] for r in runs)}
            cpu_per_call = [(r["on"]["traced_cpu"] - r["off"]["traced_cpu"]) / n * 1e9 for r in runs]
            cpu_untraced = [(r["on"]["untraced_cpu"] - r["off"]["untraced_cpu"]) / r["off"]["untraced_cpu"] * 100 for r in runs]
            cpu_min_on = min(r["on"]["traced_cpu"] for r in runs)
            cpu_min_off = min(r["off"]["traced_cpu"] for r in runs)
            result[tool] = {
                "per_traced_call_cpu_ns_min": (cpu_min_on - cpu_min_off) / n * 1e9,
                "per_traced_call_cpu_ns_median": statistics.median(cpu_per_call),
                "untraced_overhead_cpu_pct_median": statistics.median(cpu_untraced),
                "per_traced_call_ns_min": (mins["traced_on"] - mins["traced_off"]) / n * 1e9,
                "per_traced_call_ns_median": statistics.median(per_call),
                "untraced_overhead_pct_min": (mins["untraced_on"] - mins["untraced_off"]) / mins["untraced_off"] * 100,
                "untraced_overhead_pct_median": statistics.median(untraced),
                "noise_pct": (max(offs) - min(offs)) / min(offs) * 100,
                "baseline_call_ns": mins["traced_off"] / n * 1e9,
            }
        result["scry"]["dropped"] = sum(r["dropped"] for r in rows["scry"])
        result["scry"]["recorded_per_rep"] = [r["recorded"] for r in rows["scry"]]
    finally:
        for t in targets:
            t.close()
        daemon.terminate()
        daemon.wait(15)
        shutil.rmtree(str(work), ignore_errors=True)
    return result


def default_pythons():
    out = [shutil.which("python3") or sys.executable]
    for v in ("3.9", "3.13", "3.14", "3.15"):
        p = REPO / ".matrix" / "bin" / ("python" + v)
        if p.exists():
            out.append(str(p))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", action="append", help="an interpreter (repeatable; default: all found)")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--n", type=int, default=100000, help="calls per workload run (the agent buffers 262,144 records: keep 2n below)")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--scry-bin", help="a scry binary to use instead of target/release/scry (implies --no-build)")
    a = ap.parse_args()
    global SCRY_BIN
    if a.scry_bin:
        SCRY_BIN = Path(a.scry_bin).resolve()
    elif not a.no_build:
        log("cargo build --release --bin scry")
        subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "scry"], cwd=str(REPO), check=True)
    load0 = os.getloadavg()
    results = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "n": a.n, "reps": a.reps,
               "viztracer": VIZTRACER, "load_start": load0, "interpreters": []}
    for py in a.python or default_pythons():
        results["interpreters"].append(measure(str(Path(py).absolute()) if os.sep in py else py, a.reps, a.n))
    results["load_end"] = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "trace-{}.json".format(results["date"].replace(":", ""))
    path.write_text(json.dumps(results, indent=2))
    print("call tracing, {} calls per run, min of {} repetitions (median in brackets); load {:.2f} -> {:.2f}".format(
        a.n, a.reps, load0[0], results["load_end"][0]))
    print("| Python | scry: per traced call, program thread CPU | same, wall (with shipping) | VizTracer {}: per traced call, CPU | same, wall | scry: untraced code (wall) | VizTracer: untraced code (wall) | noise (scry / viz) | plain call |".format(VIZTRACER))
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results["interpreters"]:
        s, v = r["scry"], r.get("viztracer")
        if v is None:  # not measured on this Python: every VizTracer cell says so
            v = collections.defaultdict(lambda: float("nan"))
        print("| {} | {:.0f} ns ({:.0f}) | {:.0f} ns ({:.0f}) | {:.0f} ns ({:.0f}) | {:.0f} ns ({:.0f}) | {:+.1f} % ({:+.1f}) | {:+.1f} % ({:+.1f}) | {:.1f} % / {:.1f} % | {:.0f} ns |".format(
            r["python"], s["per_traced_call_cpu_ns_min"], s["per_traced_call_cpu_ns_median"],
            s["per_traced_call_ns_min"], s["per_traced_call_ns_median"],
            v["per_traced_call_cpu_ns_min"], v["per_traced_call_cpu_ns_median"],
            v["per_traced_call_ns_min"], v["per_traced_call_ns_median"],
            s["untraced_overhead_pct_min"], s["untraced_overhead_pct_median"],
            v["untraced_overhead_pct_min"], v["untraced_overhead_pct_median"],
            s["noise_pct"], v["noise_pct"], s["baseline_call_ns"]))
        print("|   | dropped: {}; records per run: {} |".format(s["dropped"], s["recorded_per_rep"][:3]))
    print("raw: {}".format(path))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""bench/dump_tree.py: wall time of `scry dump --tree ROOT --json` over an 8-process Python tree,
against `py-spy dump --pid P` run on each pid of the tree in turn, in one run.

Usage:
  bench/dump_tree.py                 build target/release/scry, provision py-spy, 10 repetitions
  bench/dump_tree.py --reps 20       more repetitions
  bench/dump_tree.py --no-build      use target/release/scry as it is
  bench/dump_tree.py --python PATH   the interpreter of the tree (default: python3)

The tree: a parent and a `multiprocessing` pool of 7 workers (the `fork` start method, so that
there is no fork server: exactly 8 Python processes), each worker busy in a few nested calls
that alternate computing and sleeping. Each repetition times, in alternating order:

  scry     one `scry dump --tree ROOT --json` (every process read in parallel); the output is
           checked: 8 processes, all `python`, each with its stacks
  py-spy   `py-spy dump --pid P` for each of the 8 pids, one after the other (what a user
           without scry does); every run must succeed

py-spy (the CLI, which ships its binary in its wheel) is installed with the host's pip into
bench/.deps/pyspy/ (ignored by git). `scry dump` runs with a fresh SCRY_HOME and no daemon, so
the dump is not kept (it never starts a daemon). Reported: min and median wall time of each
tool, and the ratios; raw figures go to bench/results/dump_tree-<date>.json. Reading another
process's memory needs ptrace permission (root, or ptrace_scope 0, or CAP_SYS_PTRACE).
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SCRY = os.path.join(REPO, "target", "release", "scry")
PYSPY_DIR = os.path.join(HERE, ".deps", "pyspy")
PYSPY = os.path.join(PYSPY_DIR, "bin", "py-spy")
WORKERS = 7

TREE = r'''
import multiprocessing, sys, time

def leaf(n):
    total = 0
    for i in range(n):
        total += i * i
    return total

def middle(k):
    leaf(20000 + k)
    time.sleep(0.01)

def work(k):
    while True:
        middle(k)

if __name__ == "__main__":
    ctx = multiprocessing.get_context("fork")
    pool = ctx.Pool(%d)
    pool.map_async(work, range(%d), chunksize=1)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        time.sleep(1)
''' % (WORKERS, WORKERS)


def log(msg):
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def provision(build):
    if build:
        log("cargo build --release --bin scry")
        subprocess.run(["cargo", "build", "--release", "--bin", "scry"], cwd=REPO, check=True)
    if not os.path.exists(SCRY):
        sys.exit("no {}: run without --no-build".format(SCRY))
    if not os.path.exists(PYSPY):
        log("pip install py-spy into {}".format(PYSPY_DIR))
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--target", PYSPY_DIR, "py-spy"],
            check=True,
        )


def children(pid):
    out = []
    for tid in os.listdir("/proc/{}/task".format(pid)):
        try:
            with open("/proc/{}/task/{}/children".format(pid, tid)) as f:
                out.extend(int(p) for p in f.read().split())
        except OSError:
            pass
    return out


def tree_pids(root):
    pids, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        pids.append(pid)
        todo.extend(sorted(children(pid)))
    return pids


def start_tree(python):
    proc = subprocess.Popen([python, "-c", TREE], stdout=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        sys.exit("the tree did not start")
    deadline = time.monotonic() + 30
    while len(tree_pids(proc.pid)) < WORKERS + 1:
        if time.monotonic() > deadline:
            proc.kill()
            sys.exit("the pool's workers did not start")
        time.sleep(0.05)
    time.sleep(0.5)  # every worker inside its task
    return proc


def time_scry(root, env):
    t0 = time.perf_counter()
    out = subprocess.run(
        [SCRY, "dump", "--tree", str(root), "--json"], env=env, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit("scry dump failed ({}): {}".format(out.returncode, out.stderr))
    doc = json.loads(out.stdout)
    procs = doc["processes"]
    python = [p for p in procs if p["kind"] == "python" and p["threads"]]
    if len(procs) != WORKERS + 1 or len(python) != WORKERS + 1:
        sys.exit("scry dump saw {} processes, {} with Python stacks".format(len(procs), len(python)))
    return elapsed


def time_pyspy(pids):
    t0 = time.perf_counter()
    for pid in pids:
        out = subprocess.run([PYSPY, "dump", "--pid", str(pid)], capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit("py-spy dump --pid {} failed: {}".format(pid, out.stderr))
    return time.perf_counter() - t0


def summary(xs):
    return {"min": min(xs), "median": statistics.median(xs), "runs": xs}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--python", default="python3")
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()
    provision(not args.no_build)
    pyspy_version = subprocess.run([PYSPY, "--version"], capture_output=True, text=True).stdout.strip()
    python_version = subprocess.run(
        [args.python, "-c", "import platform; print(platform.python_version())"],
        capture_output=True, text=True,
    ).stdout.strip()
    home = tempfile.mkdtemp(prefix="scry-bench-dump-")
    env = dict(os.environ, SCRY_HOME=home)
    env.pop("SCRY_DAEMON", None)
    tree = start_tree(args.python)
    pids = tree_pids(tree.pid)
    try:
        log("tree: {} processes ({}), Python {}, {}".format(len(pids), pids, python_version, pyspy_version))
        load_start = os.getloadavg()
        time_scry(tree.pid, env)  # warm-up (page cache)
        time_pyspy(pids[:1])
        scry_t, pyspy_t = [], []
        for rep in range(args.reps):
            if rep % 2 == 0:
                scry_t.append(time_scry(tree.pid, env))
                pyspy_t.append(time_pyspy(pids))
            else:
                pyspy_t.append(time_pyspy(pids))
                scry_t.append(time_scry(tree.pid, env))
            log("rep {}: scry {:.3f} s, py-spy x{} {:.3f} s".format(rep + 1, scry_t[-1], len(pids), pyspy_t[-1]))
        load_end = os.getloadavg()
    finally:
        # The workers first (by pid: they would outlive their parent), then the parent.
        for pid in reversed(pids[1:]):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        tree.kill()
        tree.wait()
        shutil.rmtree(home, ignore_errors=True)
    s, p = summary(scry_t), summary(pyspy_t)
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_start": load_start, "load_end": load_end},
        "python": python_version,
        "py_spy": pyspy_version,
        "processes": len(pids),
        "reps": args.reps,
        "scry_dump_tree_s": s,
        "py_spy_each_pid_s": p,
        "ratio_min": p["min"] / s["min"],
        "ratio_median": p["median"] / s["median"],
    }
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    path = os.path.join(HERE, "results", "dump_tree-{}.json".format(result["date"].replace(":", "")))
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print("scry dump --tree over {} Python processes (Python {}, {} reps, load {:.2f} -> {:.2f})".format(
        len(pids), python_version, args.reps, load_start[0], load_end[0]))
    print("  {:<34} {:>9} {:>9}".format("", "min", "median"))
    print("  {:<34} {:>8.3f}s {:>8.3f}s".format("scry dump --tree ROOT --json", s["min"], s["median"]))
    print("  {:<34} {:>8.3f}s {:>8.3f}s".format("py-spy dump --pid P, each pid", p["min"], p["median"]))
    print("  {:<34} {:>8.1f}x {:>8.1f}x".format("py-spy / scry", result["ratio_min"], result["ratio_median"]))
    print("  target <= 1 s: {}".format("met" if s["median"] <= 1.0 else "missed"))
    print("raw: {}".format(os.path.relpath(path, REPO)))


if __name__ == "__main__":
    main()

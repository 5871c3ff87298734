#!/usr/bin/env python3
"""bench/dispatch.py: on Python 3.12+, does an injected call beat sys.monitoring per probe hit?

Usage:
  bench/dispatch.py                  the host's python3 and .matrix/bin/python3.13, 3.14, 3.15
  bench/dispatch.py --python PATH    one interpreter (repeatable)
  bench/dispatch.py --reps 15 --n 1000000

scry's probe backend on 3.12+ is a sys.monitoring LINE callback (scry/_backends.py `_on_line`);
on 3.8, 3.9 and 3.11 it is a call injected into a copy of the code (`LineHook.fire`). Both end in
the same hit path (`_hit.hit(site, frame)`), so what differs is the dispatch: how control gets
from the probed line to that call. This script measures exactly that, in one process per
interpreter, interleaved, with the hit path replaced by a function that does nothing:

  baseline    a loop whose body is `i += 1`
  monitoring  the same loop with scry's MonitoringBackend armed on the body line (tool id, LINE
              local events, the real `_on_line` callback and its table)
  injected    the same loop with the call an injected copy makes (`fire()`, scry's real
              LineHook.fire, loaded from a local as LOAD_CONST would be) written into the body:
              the bytecode injection emits, without a 3.12+ injection layout to emit it

and prints ns per hit over the baseline (minimum of the repetitions) and their ratio.
"""

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from scry import _backends, _hit

N, REPS = int(sys.argv[2]), int(sys.argv[3])
_backends._hit_site = lambda site, frame: None  # the hit path is the same for both: not measured

def baseline(n):
    i = 0
    while i < n:
        i += 1
    return i

def monitored(n):
    i = 0
    while i < n:
        i += 1
    return i

hook = _backends.LineHook()

def injected(n, fire=hook.fire):
    i = 0
    while i < n:
        fire()
        i += 1
    return i

def timed(fn):
    t = time.perf_counter_ns()
    fn(N)
    return time.perf_counter_ns() - t

line = monitored.__code__.co_firstlineno + 3
site = _hit.Site(monitored.__code__, line, ("probe",), "<dispatch>", "monitored")
hook.site = _hit.Site(injected.__code__, line, ("probe",), "<dispatch>", "injected")
backend = _backends.MonitoringBackend()
backend.start()
backend.apply({id(monitored.__code__): (monitored.__code__, {line: site})})
rows = {"baseline": [], "monitoring": [], "injected": []}
try:
    for _ in range(REPS):
        rows["baseline"].append(timed(baseline))
        rows["monitoring"].append(timed(monitored))
        rows["injected"].append(timed(injected))
finally:
    backend.stop()
print(json.dumps({"python": sys.version.split()[0], "n": N, "rows": rows}))
"""


def measure(py, n, reps):
    r = subprocess.run([py, "-c", CHILD, str(REPO / "python"), str(n), str(reps)], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit("{} failed: {}".format(py, r.stderr.strip()[-800:]))
    return json.loads(r.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", action="append", help="an interpreter, 3.12+ (repeatable)")
    ap.add_argument("--n", type=int, default=1000000, help="loop iterations per run")
    ap.add_argument("--reps", type=int, default=15)
    a = ap.parse_args()
    pythons = a.python or [shutil.which("python3") or sys.executable] + [
        str(p) for p in (REPO / ".matrix" / "bin" / ("python" + v) for v in ("3.13", "3.14", "3.15")) if p.exists()
    ]
    print("{:<10} {:>14} {:>14} {:>14} {:>10}".format("python", "baseline/iter", "monitoring/hit", "injected/hit", "inj ÷ mon"))
    for py in pythons:
        version = subprocess.run([py, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True, text=True).stdout.strip()
        if tuple(int(x) for x in version.split(".")) < (3, 12):
            print("{:<10} skipped: sys.monitoring is 3.12+".format(version))
            continue
        res = measure(py, a.n, a.reps)
        best = {k: min(v) / res["n"] for k, v in res["rows"].items()}
        mon = best["monitoring"] - best["baseline"]
        inj = best["injected"] - best["baseline"]
        print("{:<10} {:>11.1f} ns {:>11.1f} ns {:>11.1f} ns {:>9.2f}×".format(res["python"], best["baseline"], mon, inj, inj / mon))


if __name__ == "__main__":
    main()

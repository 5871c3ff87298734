#!/usr/bin/env python3
"""bench/attach.py: time from `scry attach PID` to the agent connected, on Python 3.14, for a
busy target and one in time.sleep(0.1) loops, against `sys.remote_exec` of an equivalent script
(one that connects back to a unix socket) from a Python 3.14 process, in one run.

Usage: bench/attach.py [--runs N] [--python PATH] [--scry PATH]

Each run starts a fresh target (bench/attach_target.py is not needed: the targets are inline),
so every figure includes a cold import of the agent. For scry the figure is the wall time of
the `scry attach` command (daemon already running) and the daemon's own `connected_ms`. For
sys.remote_exec it is the time from calling it (in a 3.14 process started beforehand) until the
injected script's connection arrives.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = {
    "busy": "import os\nprint(os.getpid(), flush=True)\ni = 0\nwhile True:\n    i += 1\n",
    "sleep": "import os, time\nprint(os.getpid(), flush=True)\nwhile True:\n    time.sleep(0.1)\n",
}
# What sys.remote_exec runs: connect back, like the agent's bootstrap does (thread + connect).
REMOTE_SCRIPT = """
import socket, threading
def _go():
    s = socket.socket(socket.AF_UNIX)
    s.connect({path!r})
    s.sendall(b"x")
    s.close()
threading.Thread(target=_go, daemon=True).start()
"""
# Starts the target itself, so both share one mount namespace: sys.remote_exec resolves the
# target's /proc/PID/maps paths in its own root, which fails across chroots and containers
# (each matrix wrapper is its own namespace) - scry opens them through /proc/PID/root instead.
INJECTOR = """
import subprocess, sys, time
mode_src, script = sys.argv[1], sys.argv[2]
t = subprocess.Popen([sys.executable, "-c", mode_src], stdout=subprocess.PIPE, text=True)
t.stdout.readline()
print(t.pid, flush=True)
sys.stdin.readline()
t0 = time.perf_counter()
sys.remote_exec(t.pid, script)
print(t0, flush=True)
sys.stdin.readline()
t.kill()
"""


def start_target(python, mode):
    p = subprocess.Popen([python, "-c", TARGETS[mode]], stdout=subprocess.PIPE, text=True, cwd=REPO)
    p.stdout.readline()
    time.sleep(0.3)  # let it reach its loop
    return p


def scry(scry_bin, home, *args):
    env = dict(os.environ, SCRY_HOME=home)
    return subprocess.run([scry_bin, *args], env=env, capture_output=True, text=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--python", default=os.path.join(REPO, ".matrix/bin/python3.14"))
    ap.add_argument("--scry", default=os.path.join(REPO, "target/release/scry"))
    args = ap.parse_args()
    home = tempfile.mkdtemp(prefix="scry-bench-attach-", dir="/tmp")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(os.path.join(home, "config.toml"), "w") as f:
        f.write('[http]\naddr = "127.0.0.1:%d"\n' % port)
    daemon = subprocess.Popen([args.scry, "serve"], env=dict(os.environ, SCRY_HOME=home),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    results = {}
    try:
        for mode in ("busy", "sleep"):
            wall, daemon_ms, remote = [], [], []
            for _ in range(args.runs):
                t = start_target(args.python, mode)
                try:
                    t0 = time.perf_counter()
                    out = scry(args.scry, home, "attach", str(t.pid), "--json")
                    t1 = time.perf_counter()
                    if out.returncode != 0:
                        sys.exit("scry attach failed: " + out.stderr)
                    wall.append((t1 - t0) * 1e3)
                    daemon_ms.append(json.loads(out.stdout)["connected_ms"])
                finally:
                    t.kill()
                    t.wait()
                sock_path = os.path.join(home, "rx.sock")
                script = os.path.join(home, "remote.py")
                with open(script, "w") as f:
                    f.write(REMOTE_SCRIPT.format(path=sock_path))
                srv = socket.socket(socket.AF_UNIX)
                srv.bind(sock_path)
                srv.listen(1)
                inj = subprocess.Popen([args.python, "-c", INJECTOR, TARGETS[mode], script],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
                try:
                    inj.stdout.readline()
                    time.sleep(0.3)  # the target reaches its loop
                    inj.stdin.write("go\n")
                    inj.stdin.flush()
                    conn, _ = srv.accept()
                    t1 = time.perf_counter()
                    conn.close()
                    t0 = float(inj.stdout.readline())
                    remote.append((t1 - t0) * 1e3)
                    inj.stdin.write("end\n")
                    inj.stdin.flush()
                    inj.wait(timeout=10)
                finally:
                    inj.kill()
                    inj.wait()
                    srv.close()
                    os.unlink(sock_path)
            results[mode] = {"scry_attach_wall_ms": wall, "scry_connected_ms": daemon_ms, "remote_exec_ms": remote}
    finally:
        scry(args.scry, home, "stop")
        daemon.wait(timeout=10)
        shutil.rmtree(home, ignore_errors=True)
    print("| target (3.14) | `scry attach` wall, median | daemon: attach to agent connected, median | `sys.remote_exec` to script connected, median | ratio (scry wall / remote_exec) |")
    print("|---|---|---|---|---|")
    for mode, r in results.items():
        w, d, x = (statistics.median(r[k]) for k in ("scry_attach_wall_ms", "scry_connected_ms", "remote_exec_ms"))
        print("| %s | %.0f ms | %.0f ms | %.1f ms | %.1fx |" % (mode, w, d, x, w / x))
    print(json.dumps(results))


if __name__ == "__main__":
    main()

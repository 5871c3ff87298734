"""A process tree for `scry reap` (issue 5).

`reap_tree.py READY MODE` runs as a subreaper (so that every orphan below it is reaped and no
zombie outlives the test) and starts the tree's root, which starts:
- `int`: a Python child that ignores SIGINT (ends at SIGTERM),
- `both`: a Python child that ignores SIGINT and SIGTERM (ends at SIGKILL),
each writing the signals it ignores to READY.signals,
- `sleep`: a non-Python child (ends at SIGINT).
The root writes READY (JSON: root, int, both, sleep pids). MODE `tree`: the root stays (ends at
SIGINT); MODE `orphans`: the root leads its own process group and exits once ready, so its
children are orphans.
"""

import ctypes
import json
import os
import signal
import subprocess
import sys
import time

ready, mode = sys.argv[1], sys.argv[2]
role = sys.argv[3] if len(sys.argv) > 3 else "reaper"

if role == "reaper":
    PR_SET_CHILD_SUBREAPER = 36
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    subprocess.Popen([sys.executable, __file__, ready, mode, "root"])
    while True:
        try:
            os.wait()
        except ChildProcessError:
            time.sleep(0.05)
elif role == "root":
    if mode == "orphans":
        os.setpgrp()

    def child(kind):
        p = subprocess.Popen(
            [sys.executable, __file__, ready, mode, kind], stdout=subprocess.PIPE
        )
        assert p.stdout.readline().strip() == b"ready"
        return p.pid

    pids = {"root": os.getpid(), "int": child("int"), "both": child("both")}
    pids["sleep"] = subprocess.Popen(["sleep", "300"]).pid
    with open(ready + ".tmp", "w") as f:
        json.dump(pids, f)
    os.rename(ready + ".tmp", ready)
    if mode == "tree":
        time.sleep(300)
else:
    # Ignored signals are logged (READY.signals: "ROLE SIGNAME" lines), so that a test can tell
    # which signals a command sent by what arrived, instead of by waiting for nothing to happen.
    def ignore(signum, _frame):
        with open(ready + ".signals", "a") as f:
            f.write("{} {}\n".format(role, signal.Signals(signum).name))

    signal.signal(signal.SIGINT, ignore)
    if role == "both":
        signal.signal(signal.SIGTERM, ignore)
    print("ready", flush=True)
    while True:
        time.sleep(300)

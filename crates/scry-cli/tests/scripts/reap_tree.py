"""A process tree for `scry reap` (issue 5).

`reap_tree.py READY MODE` runs as a subreaper (so that every orphan below it is reaped and no
zombie outlives the test) and starts the tree's root, which starts:
- `int`: a Python child that ignores SIGINT (ends at SIGTERM),
- `both`: a Python child that ignores SIGINT and SIGTERM (ends at SIGKILL),
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
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if role == "both":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("ready", flush=True)
    time.sleep(300)

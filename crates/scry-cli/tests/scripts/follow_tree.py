"""A small process tree for `scry attach --follow`: a parent and two forked Python workers, each
running `step` in a loop.

Usage: follow_tree.py READY_FILE. Writes READY_FILE (the pids as JSON: {"parent", "workers"})
once both workers run, then loops until killed; the workers end with the parent.
"""

import json
import os
import signal
import sys
import time


def step(i):
    return i + 1  # the loop line


def loop():
    i = 0
    while True:
        i = step(i)
        time.sleep(0.05)


def main():
    ready = sys.argv[1]
    workers = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            # A worker ends when its parent does (it is killed by the test, not waited on).
            try:
                import ctypes

                ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
            except Exception:
                pass
            loop()
        workers.append(pid)
    tmp = ready + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"parent": os.getpid(), "workers": workers}, f)
    os.replace(tmp, ready)
    loop()


if __name__ == "__main__":
    main()

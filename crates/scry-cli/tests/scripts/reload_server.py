"""A small reloading server for the tests, shaped like `uvicorn app:app --reload`: the
supervisor runs one worker through multiprocessing's spawn method (as uvicorn does) and starts
a new one whenever the worker exits (as a reload does). The worker calls `handle()` in a loop,
a line to put probes on. Each worker start is appended as a JSON line to the file named by
--status: {"supervisor": PID, "worker": PID}.

Run it through the `reload/uvicorn` symlink so that its command line reads like uvicorn's.
Everything exits when the supervisor is killed (the worker watches its parent).
"""
import json
import multiprocessing
import os
import sys
import time


def handle(i):
    doubled = i * 2
    return doubled


def worker(supervisor):
    i = 0
    while os.getppid() == supervisor:
        handle(i)
        i += 1
        time.sleep(0.05)


def main():
    status = sys.argv[sys.argv.index("--status") + 1]
    ctx = multiprocessing.get_context("spawn")
    while True:
        proc = ctx.Process(target=worker, args=(os.getpid(),), name="worker")
        proc.start()
        with open(status, "a") as f:
            f.write(json.dumps({"supervisor": os.getpid(), "worker": proc.pid}) + "\n")
        # Like uvicorn's reloader, wake up regularly (it checks for changed files) rather
        # than block in waitpid.
        while proc.is_alive():
            proc.join(0.2)


if __name__ == "__main__":
    main()

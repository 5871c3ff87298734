"""A process tree for `scry dump --tree`: a parent, a multiprocessing pool of workers, one more
Python worker blocked reading a pipe nobody writes to, and a non-Python child (`sleep`).

Usage: dump_tree.py READY_FILE. Writes READY_FILE (the pids, as JSON) once every process is in
place: the pool workers idle, the blocked worker inside its read, `sleep` started. Then waits
until killed.
"""

import json
import multiprocessing
import os
import subprocess
import sys
import time


def square(x):
    return x * x


def blocked_in_read(fd, started_fd):
    os.write(started_fd, b"x")
    os.close(started_fd)
    # Blocks in the C call read(2) forever: the write end stays open in the parent and nobody
    # writes to it.
    os.read(fd, 1)


def parent_waits_forever():
    while True:
        time.sleep(3600)


def main():
    ready_file = sys.argv[1]
    multiprocessing.set_start_method("fork")
    pool = multiprocessing.Pool(3)
    # The workers are up once each has run a task.
    pool.map(square, range(12))
    read_end, write_end = os.pipe()
    started_r, started_w = os.pipe()
    blocked = multiprocessing.Process(
        target=blocked_in_read, args=(read_end, started_w), name="blocked-worker"
    )
    blocked.start()
    os.close(started_w)
    os.read(started_r, 1)  # the worker is about to read
    sleeper = subprocess.Popen(["sleep", "600"])
    pids = {
        "parent": os.getpid(),
        "pool": [p.pid for p in pool._pool],
        "blocked": blocked.pid,
        "sleep": sleeper.pid,
    }
    # The blocked worker is inside os.read once its kernel state shows it waiting.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with open(f"/proc/{blocked.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "S":
                break
        time.sleep(0.01)
    tmp = ready_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump(pids, f)
    os.rename(tmp, ready_file)
    parent_waits_forever()


if __name__ == "__main__":
    main()

"""A process tree for `scry dump --tree`: a parent, a multiprocessing pool of four workers, one of
which is deadlocked: blocked reading a pipe nobody writes to while holding the GIL (its second
thread waits for the GIL forever), and a non-Python child (`sleep`).

Usage: dump_tree.py READY_FILE. Writes READY_FILE (the pids, as JSON) once every process is in
place: the pool workers idle, the blocked worker inside its read, `sleep` started. Then waits
until killed.
"""

import ctypes
import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time


def square(x):
    return x * x


def starved():
    while True:
        time.sleep(0.001)


def blocked_in_read(fd, started_fd):
    # ctypes.PyDLL keeps the GIL during the call: this worker blocks in read(2) holding the GIL,
    # and its other thread waits for the GIL forever (a deadlock scry must still see through).
    libc = ctypes.PyDLL(None)
    buf = ctypes.create_string_buffer(1)
    threading.Thread(target=starved, name="starved", daemon=True).start()
    os.write(started_fd, str(os.getpid()).encode().rjust(12))
    # Blocks forever: the write end stays open (here and in the parent) and nobody writes.
    libc.read(fd, buf, 1)


def in_pipe_read(pid):
    """Whether the main thread of `pid` is blocked reading a pipe."""
    try:
        with open(f"/proc/{pid}/wchan") as f:
            if f.read().strip() == "pipe_read":
                return True
        with open(f"/proc/{pid}/syscall") as f:
            number = f.read().split()[0]
    except (OSError, IndexError):
        return False
    read = {"x86_64": "0", "aarch64": "63"}.get(os.uname().machine)
    return number == read


def parent_waits_forever():
    while True:
        time.sleep(3600)


def main():
    ready_file = sys.argv[1]
    multiprocessing.set_start_method("fork")
    # Made before the pool so that its (forked) workers inherit them.
    read_end, write_end = os.pipe()
    started_r, started_w = os.pipe()
    pool = multiprocessing.Pool(4)
    # The workers are up once each has run a task.
    pool.map(square, range(16))
    # One of them takes the deadlocking task and says which one it is.
    pool.apply_async(blocked_in_read, (read_end, started_w))
    blocked_pid = int(os.read(started_r, 12).decode())
    sleeper = subprocess.Popen(["sleep", "600"])
    pids = {
        "parent": os.getpid(),
        "pool": [p.pid for p in pool._pool],
        "blocked": blocked_pid,
        "sleep": sleeper.pid,
    }
    # The blocked worker is inside read(2) once the kernel says so.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not in_pipe_read(blocked_pid):
        time.sleep(0.01)
    tmp = ready_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump(pids, f)
    os.rename(tmp, ready_file)
    parent_waits_forever()


if __name__ == "__main__":
    main()

"""A pre-fork server: the master forks WORKERS workers that each embed scry under the same name
(as gunicorn workers calling `scry.init(name=...)` do) and serve requests in a loop.

argv[1]: the name; argv[2] (optional): the number of workers (default 2). Each worker starts
sleeping and exits when its master is gone, so a killed test leaves nothing running.
"""
import os
import sys
import time

NAME = sys.argv[1]
WORKERS = int(sys.argv[2]) if len(sys.argv) > 2 else 2


def handle(n):
    reply = n * 2  # PROBE: handle
    return reply


def worker(master):
    import scry

    scry.init(name=NAME)
    n = 0
    while os.getppid() == master:
        n += 1
        handle(n)
        time.sleep(0.005)
    os._exit(0)


def main():
    master = os.getpid()
    children = []
    for _ in range(WORKERS):
        pid = os.fork()
        if pid == 0:
            try:
                worker(master)
            finally:
                os._exit(1)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)


main()

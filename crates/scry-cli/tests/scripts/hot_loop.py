"""An embedded client hitting one line for a while: `hot_loop.py GO_FILE SECONDS RATE`.

Waits for GO_FILE, calls `hot` for SECONDS at RATE calls a second (0: as fast as it can), writes
`calls N` to stderr, then idles until killed (so its last probe counters reach the daemon).
"""
import os
import sys
import time

import scry


def hot(i):
    return i  # HOT LINE


def main():
    go, seconds, rate = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    scry.init(name="hot-loop", start_state="awake")
    while not os.path.exists(go):
        time.sleep(0.02)
    end = time.monotonic() + seconds
    start = time.monotonic()
    i = 0
    while time.monotonic() < end:
        for _ in range(100):
            hot(i)
            i += 1
        if rate > 0:
            ahead = start + i / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    sys.stderr.write("calls %d\n" % i)
    sys.stderr.flush()
    while True:
        time.sleep(3600)


main()

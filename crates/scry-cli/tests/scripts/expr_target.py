"""A target for the expression attacks: embeds scry (awake from the start) and writes a tick to
stderr every 20 ms, so a test sees that it keeps running.

argv[1]: the name to register.
"""
import sys
import time

import scry


def work(n):
    text = "tick %d" % n
    return text  # PROBE: work


def main():
    scry.init(name=sys.argv[1], start_state="awake")
    n = 0
    while True:
        n += 1
        sys.stderr.write(work(n) + "\n")
        sys.stderr.flush()
        time.sleep(0.02)


main()

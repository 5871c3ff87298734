"""Known values for query tests: once the file argv[2] exists, calls record(i) for i = 1..100
(one burst), then idles. A probe on the line marked PROBE sees i and its label."""
import os
import sys
import time

import scry


def record(i):
    label = "even" if i % 2 == 0 else "odd"
    return label  # PROBE: record


def main():
    scry.init(name=sys.argv[1], start_state="awake")
    trigger = sys.argv[2]
    while not os.path.exists(trigger):
        time.sleep(0.01)
    for i in range(1, 101):
        record(i)
    while True:
        time.sleep(0.5)


main()

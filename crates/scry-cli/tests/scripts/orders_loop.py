"""A small service loop that embeds scry, awake from the start.

argv[1]: the name to register; argv[2] (optional): a file whose appearance makes the loop import
`late_module` (to test probes pending on a module not imported yet).
"""
import os
import sys
import time

import scry

NAME = sys.argv[1]
TRIGGER = sys.argv[2] if len(sys.argv) > 2 else None


def price(order):
    subtotal = sum(q * p for q, p in order["items"])
    total = round(subtotal * 1.2, 2)  # PROBE: total
    return total


def main():
    scry.init(name=NAME, start_state="awake")
    n = 0
    late = None
    while True:
        n += 1  # PROBE: loop
        order = {"id": n, "items": [(1 + n % 3, 2.5)], "customer": "c%d" % (n % 4)}
        order["total"] = price(order)
        if TRIGGER and late is None and os.path.exists(TRIGGER):
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            import late_module as late
        if late is not None:
            late.touch(n)
        time.sleep(0.005)


main()

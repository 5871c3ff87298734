"""A small request loop for the call-flow view, awake from the start.

handle() calls parse(), then validate() (which raises for every third request; handle() catches
it), then compute(); every fifth request also calls slow_step(), long enough to be seen running.
Each request also sends `scry.pulse("request", n=n)`. argv[1]: the name to register.
"""
import sys
import time

import scry


def parse(n):
    return {"n": n, "items": list(range(n % 4))}


def validate(req):
    if req["n"] % 3 == 0:
        raise ValueError("bad request %d" % req["n"])
    return True


def compute(req):
    return sum(req["items"]) * 2


def slow_step(n):
    time.sleep(0.4)
    return n


def handle(n):
    req = parse(n)
    try:
        validate(req)
    except ValueError:
        return None
    if n % 5 == 0:
        slow_step(n)
    return compute(req)


def main():
    scry.init(name=sys.argv[1], start_state="awake")
    n = 0
    while True:
        n += 1
        handle(n)
        scry.pulse("request", n=n)
        time.sleep(0.02)


main()

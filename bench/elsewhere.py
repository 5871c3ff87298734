"""Unprobed workloads in a module of their own: "code elsewhere" for the target (bench/target.py).

A probe or logpoint is armed in target.py; these functions run while it is, and must not get
slower. They are copies of target.plain and target.calls, so that the cost of a hook that treats
the probed *file* differently from other files shows up as the difference.
"""


def plain(n):
    total = 0
    for i in range(n):
        total += i
    return total


def _step(a, b):
    return (a + b) & 0xFFFF


def calls(n):
    total = 0
    for i in range(n):
        total = _step(total, i)
    return total

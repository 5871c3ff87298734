"""A Python loop that never imports scry: a target for `scry attach`."""
import time


def tick(n):
    return n + 1


n = 0
while True:
    n = tick(n)
    time.sleep(0.01)

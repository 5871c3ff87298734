"""Tricky code for find_lines tests; line numbers are asserted, so edit with care."""
import functools


def deco(*args):
    def wrap(fn):
        return fn
    return wrap


def loop_total(items):
    total = 0
    for item in items:
        total = total + item
    return total


def comprehension(rows):
    total = 7
    doubled = [total * 2 for total in rows]
    return total, doubled


def outer(x):
    total = x

    def inner(y):
        total = y + 1
        return total

    return inner(total)


class Cart:
    def __init__(self):
        self.total = 0

    def add(self, price):
        self.total += price
        return self.total


@deco(
    "only a decorator covers this line",
)
def decorated(n):
    return n + 1


def nested_decorated():
    @deco(
        1,
    )
    def f():
        return 1
    return f

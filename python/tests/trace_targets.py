"""Functions that the tracing tests select (module ``trace_targets``)."""

import asyncio
import threading


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def outer(n):
    total = 0
    for i in range(n):
        total += inner(i)
    return total


def inner(i):
    return i * 2


def untraced(x):
    return x + 1


def counter(n):
    for i in range(n):
        yield i


async def step(x):
    await asyncio.sleep(0)
    return x + 1


async def pipeline(n):
    total = 0
    for i in range(n):
        total += await step(i)
    return total


class Boom(Exception):
    pass


def fails(msg):
    raise Boom(msg)


def catches():
    try:
        fails("caught inside")
    except Boom:
        return "recovered"


def escapes():
    fails("escaping")


def in_thread(n):
    t = threading.Thread(target=fib, args=(n,), name="worker")
    t.start()
    t.join()


def secretive(user, api_key):
    return user

"""Code for the bytecode injection tests: every construct whose bytecode has jumps, handlers,
duplicated blocks or a prologue. Each function is run by ``run_all``; nothing here is probed by
line number, so this file may be edited freely (no one-line loops: they report once a run with
injection and sys.monitoring, once an iteration with a trace function)."""

import asyncio
import contextlib


def loops(n):
    total = 0
    for i in range(n):
        if i % 3 == 0:
            continue
        if i > 7:
            break
        total += i
    else:
        total = -1
    while total > 10:
        total -= 3
    return total


def handlers(x):
    out = []
    try:
        out.append(10 // x)
    except ZeroDivisionError as exc:
        out.append(str(exc))
    except (TypeError, ValueError):
        out.append("type")
    else:
        out.append("else")
    finally:
        out.append("finally")
    return out


def finally_return(x):
    try:
        if x:
            return "early"
        x += 1
    finally:
        x = "cleaned"
    return x


def with_blocks(n):
    seen = []
    with contextlib.suppress(KeyError):
        seen.append(n)
        {}[n]
    with contextlib.ExitStack() as stack:
        stack.callback(seen.append, "exit")
        seen.append("body")
    return seen


def comprehensions(values):
    squares = [v * v for v in values if v % 2]
    table = {v: str(v) for v in values}
    total = sum(
        v
        for v in values
    )
    return squares, table, total


def conditional_expression(a, b):
    value = (a
             if a > b
             else b)
    return value


def calls_with_keywords(items):
    return sorted(items,
                  key=lambda v: -v,
                  reverse=False)


def nested(base):
    def inner(v):
        return base + v

    adder = inner(1)
    return adder, inner(2)


def generator(n):
    for i in range(n):
        received = yield i
        if received:
            yield received


def drive_generator():
    gen = generator(3)
    out = [next(gen), gen.send("x"), next(gen), next(gen)]
    out.extend(gen)
    return out


async def coroutine(n):
    total = 0
    for i in range(n):
        await asyncio.sleep(0)
        total += i
    async with contextlib.AsyncExitStack():
        total += 100
    return total


def raises(x):
    values = {"a": 1}
    return values[x] + 1


def many_lines(n):
    a = n
    a += 1
    a += 2
    a += 3
    a += 4
    a += 5
    a += 6
    a += 7
    a += 8
    a += 9
    return a


RUNS = [
    (loops, (12,)),
    (loops, (3,)),
    (handlers, (0,)),
    (handlers, ("s",)),
    (handlers, (5,)),
    (finally_return, (1,)),
    (finally_return, (0,)),
    (with_blocks, (4,)),
    (comprehensions, ([1, 2, 3, 4],)),
    (conditional_expression, (1, 2)),
    (conditional_expression, (3, 2)),
    (calls_with_keywords, ([3, 1, 2],)),
    (nested, (10,)),
    (drive_generator, ()),
    (many_lines, (1,)),
]

FUNCTIONS = [
    loops,
    handlers,
    finally_return,
    with_blocks,
    comprehensions,
    conditional_expression,
    calls_with_keywords,
    nested,
    generator,
    drive_generator,
    coroutine,
    raises,
    many_lines,
]


def run_all():
    """Every run's result, or the exception it raised as ``(type name, message)``."""
    out = []
    for function, args in RUNS:
        out.append(function(*args))
    out.append(asyncio.run(coroutine(4)))
    for arg in ("a", "b"):
        try:
            out.append(raises(arg))
        except KeyError as exc:
            out.append(("KeyError", str(exc)))
    return out

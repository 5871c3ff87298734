"""Code for the probe tests to probe. Probed lines carry a ``# @marker`` comment; tests find their
numbers with :func:`line` (never hard-coded), so this file may be edited freely."""

import asyncio
import functools
import os


class Order(object):
    def __init__(self, total, items):
        self.total = total
        self.items = items

    def describe(self):
        label = "order"  # @method
        return label + str(self.total)


def compute(x, y=2):
    z = x * y  # @compute
    # a comment, then a blank line: a probe here snaps to the next line  # @comment

    w = z + 1  # @after-comment
    return w


def one_liner(x): return x + 1  # @one-liner


def make_closure(base):
    def closure(v):
        return base + v  # @closure

    return closure


square = lambda v: v * v  # @lambda


def with_genexp(values):
    return sum(v * 2 for v in values)  # @genexp


def with_listcomp(values):
    return [v + 1 for v in values]  # @listcomp


def generator(n):
    for i in range(n):
        yield i  # @generator


async def coroutine(x):
    await asyncio.sleep(0)
    return x * 3  # @coroutine


def blocks(x):
    out = []
    try:
        out.append(10 // x)  # @try-body
    except ZeroDivisionError:
        out.append("zero")  # @except-body
    finally:
        out.append("finally")  # @finally-body
    with open(os.devnull) as f:
        out.append(f.name)  # @with-body
    return [v for v in out if v]  # @comprehension


def spin(stop, counter):
    n = 0
    while not stop.is_set():
        n += 1  # @spin
        counter[0] = n
    return n


def secrets_here(user):
    access_token = "abc"
    db_password = "pw"
    tokenizer = "keep"
    secretary = "keep too"
    return user, access_token, db_password, tokenizer, secretary  # @secrets


def deep(values):
    return values  # @deep


def decorator(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)

    return wrapper


@decorator
def decorated(a):
    """A docstring is not code."""
    b = a + 1  # @decorated-entry
    return b


def caller():
    return compute(1)  # @caller


def last_function():
    return 1  # @last


_LINES = None


def line(marker):
    """The line number of ``# @marker`` in this file."""
    global _LINES
    if _LINES is None:
        _LINES = {}
        with open(os.path.abspath(__file__.replace(".pyc", ".py"))) as f:
            for number, text in enumerate(f, 1):
                if "# @" in text:
                    _LINES[text.rsplit("# @", 1)[1].strip()] = number
    return _LINES[marker]

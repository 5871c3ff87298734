"""A small asyncio service and a CPU loop in a thread, awake from the start, for `scry trace`.

argv[1]: the name to register. Handlers await (so coroutines suspend and resume), one in five
requests fails inside a handler and is caught by the server loop, and a worker thread runs a CPU
loop calling `checksum` (recursion through `fold`). `scry.pulse` marks every tenth request.
"""
import asyncio
import sys
import threading
import time

import scry

NAME = sys.argv[1]


class BadRequest(Exception):
    pass


def fold(values, acc=0):
    if not values:
        return acc
    return fold(values[1:], (acc * 31 + values[0]) % 1000003)


def checksum(n):
    return fold(list(range(n % 7 + 3)))


def cpu_loop():
    n = 0
    while True:
        n += 1
        checksum(n)
        time.sleep(0.002)


async def lookup(key):
    await asyncio.sleep(0.001)
    return key * 2


async def handle(request):
    value = await lookup(request)
    if request % 5 == 0:
        raise BadRequest("request %d refused" % request)
    return value + 1


async def serve():
    n = 0
    while True:
        n += 1
        try:
            await handle(n)
        except BadRequest:
            pass
        if n % 10 == 0:
            scry.pulse("served", count=n)
        await asyncio.sleep(0.003)


def main():
    scry.init(name=NAME, start_state="awake")
    threading.Thread(target=cpu_loop, name="cpu", daemon=True).start()
    asyncio.run(serve())


if __name__ == "__main__":
    main()

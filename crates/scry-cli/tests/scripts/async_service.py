"""An asyncio service that embeds scry and connects at once, for `scry dump`'s inside view:
a thread named in Python ("ledger-writer") blocked on an event, and two asyncio tasks on the
main thread's loop ("fetcher" in asyncio.sleep, "consumer" in Queue.get)."""
import asyncio
import threading

import scry


async def fetch():
    await asyncio.sleep(3600)


async def consume(queue):
    while True:
        await queue.get()


async def main():
    queue = asyncio.Queue()
    fetcher = asyncio.ensure_future(fetch())
    fetcher.set_name("fetcher")
    consumer = asyncio.ensure_future(consume(queue))
    consumer.set_name("consumer")
    await asyncio.gather(fetcher, consumer)


stop = threading.Event()
threading.Thread(target=stop.wait, name="ledger-writer", daemon=True).start()
scry.init(name="async-service")
scry.wake()
asyncio.run(main())

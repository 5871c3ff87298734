"""The sample service of `scry demo`: a small program that keeps processing orders.

It embeds the scry client (``scry.init()``), which sleeps at zero cost until someone runs
``scry wake``. Run it with ``python -m scry_demo``; it stops on SIGTERM or SIGINT.
"""

import random
import signal
import sys
import time

import scry


class Order(object):
    """One customer order."""

    def __init__(self, order_id, customer, items):
        self.id = order_id
        self.customer = customer
        self.items = items  # list of (sku, quantity, unit_price)
        self.total = 0.0
        self.status = "new"


CUSTOMERS = ["ada", "grace", "linus", "guido", "barbara", "ken"]
CATALOG = {"book": 12.5, "pen": 1.2, "lamp": 30.0, "mug": 8.0, "desk": 150.0}


def make_order(order_id, rng):
    items = [(sku, rng.randint(1, 4), CATALOG[sku]) for sku in rng.sample(sorted(CATALOG), rng.randint(1, 3))]
    return Order(order_id, rng.choice(CUSTOMERS), items)


def price(order):
    subtotal = sum(quantity * unit for _sku, quantity, unit in order.items)
    discount = 0.1 if subtotal > 100 else 0.0
    order.total = round(subtotal * (1 - discount), 2)
    return order.total


def process(order):
    total = price(order)
    order.status = "paid" if total < 500 else "review"
    return order.status


def main():
    scry.init(name=None)  # the name comes from SCRY_NAME
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    rng = random.Random(7)
    order_id = 0
    while not stopping:
        order_id += 1
        process(make_order(order_id, rng))
        time.sleep(0.2)
    scry.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

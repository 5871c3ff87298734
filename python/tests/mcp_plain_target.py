"""A target that never imports scry, for the MCP attach test: checkout() runs in a loop with
known values of `total` (n % 7 * 10 + 50, so 50..110). Prints its pid once it runs."""
import os
import time


def checkout(order):
    total = 0
    for price in order["prices"]:
        total = total + price
    discount = 5 if total > 100 else 0
    return total - discount


def main():
    print("plain", os.getpid(), flush=True)
    n = 0
    while True:
        n += 1
        checkout({"prices": [n % 7 * 10, 20, 30]})
        time.sleep(0.005)


main()

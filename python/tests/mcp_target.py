"""A target for the MCP tests: checkout() runs in a loop with known values of `total`
(n % 7 * 10 + 50, so 50..110). argv[1]: the name to register."""
import sys
import time

import scry


def checkout(order):
    total = 0
    for price in order["prices"]:
        total = total + price
    discount = 5 if total > 100 else 0
    return total - discount


def main():
    scry.init(name=sys.argv[1], start_state="awake")
    n = 0
    while True:
        n += 1
        checkout({"prices": [n % 7 * 10, 20, 30]})
        time.sleep(0.005)


main()

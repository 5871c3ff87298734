"""A request loop whose values are hard to read, awake from the start: bytes with non-printable
bytes, an enum, a dict nested deeper than the capture depth and a long string, for what
`scry events` and `scry trace show` print of them; `pipeline.load` is a function of the sibling
module `pipeline` (a dotted name that is not a module, for `scry trace start --include`).

argv[1]: the name to register.
"""
import enum
import sys
import time

import pipeline
import scry

NAME = sys.argv[1]


class Mode(enum.Enum):
    FULL = 1
    LITE = 2


def handle(path, mode, scope, body):
    rows = pipeline.load(path)
    size = len(body) + rows  # PROBE: handle
    return {"size": size, "mode": mode}


def main():
    scry.init(name=NAME, start_state="awake")
    scope = {"type": "http", "query": {"page": {"n": {"deep": 1}}}}
    body = "lorem ipsum " * 50
    while True:
        handle(b"/price/a\x00\xff'", Mode.FULL, scope, body)
        time.sleep(0.01)


main()

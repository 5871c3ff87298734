"""An embedded client that registers awake at once. argv[1]: its name; argv[2]: `flood` to call
`emit` as fast as it can (a probe on its marked line fills the store), `idle` to only idle;
argv[3] (optional): a file whose existence pauses the flood."""
import os
import sys
import time

import scry

scry.init(name=sys.argv[1], start_state="awake")
PAD = "x" * 180


def emit(i, pad):
    return i + len(pad)  # flood-line


if sys.argv[2:3] == ["flood"]:
    pause = sys.argv[3] if len(sys.argv) > 3 else None
    i = n = 0
    while True:
        i = emit(i, PAD)
        n += 1
        if n % 1000 == 0:
            time.sleep(0.001)
            while pause and os.path.exists(pause):
                time.sleep(0.02)
else:
    while True:
        time.sleep(0.05)

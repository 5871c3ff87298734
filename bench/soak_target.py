"""A soak-test target: an embedded scry client hitting one probed line as fast as it may.

    soak_target.py GO_FILE SECONDS RATE [victim]

Waits for GO_FILE to exist (the harness creates it once every agent has armed the probe), then
calls ``hot`` (or ``victim``, for agents the harness kills on purpose: their hits die with them
and are kept apart) for SECONDS at RATE calls per second (0: full speed), then idles until it
is killed, so that its final probe counters reach the daemon.
"""
import os
import sys
import time

import scry


def hot(i):
    value = i * 2  # the probed line (bench/soak probes `soak_target.py:hot`)
    return value


def victim(i):
    value = i * 3  # the probed line of agents killed during the run
    return value


def main():
    go, seconds, rate = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    fn = victim if sys.argv[4:] == ["victim"] else hot
    scry.init(name="soak", start_state="awake")
    while not os.path.exists(go):
        time.sleep(0.02)
    end = time.monotonic() + seconds
    i = 0
    if rate <= 0:
        while time.monotonic() < end:
            for _ in range(1000):
                fn(i)
                i += 1
    else:
        chunk = max(1, int(rate / 100))  # 100 chunks a second
        start = time.monotonic()
        while time.monotonic() < end:
            for _ in range(chunk):
                fn(i)
                i += 1
            ahead = start + i / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    sys.stderr.write("calls %d\n" % i)
    sys.stderr.flush()
    # The agent's own counters, now and then, for a post-mortem beside the daemon's view.
    from scry import _state
    while True:
        time.sleep(5)
        engine = _state._agent.engine
        link = _state._agent.link
        if engine is not None:
            for probe in list(engine.probes.values()):
                sys.stderr.write("counters %s %s unacked %s\n" % (
                    probe.id, probe.counters(), link.unacked_events if link else None))
            sys.stderr.flush()


if __name__ == "__main__":
    main()

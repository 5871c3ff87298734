"""An application that embeds the scry client, wakes it, and logs a warning from a named
thread through the `scry` logger (the agent forwards it to the daemon). argv[1]: its name."""
import logging
import sys
import threading
import time

import scry

scry.init(name=sys.argv[1] if len(sys.argv) > 1 else None)
scry.wake()


def work():
    logging.getLogger("scry").warning("e2e warning: disk %d%% full", 93)


worker = threading.Thread(target=work, name="log-worker")
worker.start()
worker.join()
while True:
    time.sleep(0.05)

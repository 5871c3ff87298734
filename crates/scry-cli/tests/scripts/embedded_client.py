"""An application that embeds the scry client and idles. argv[1]: the name to register."""
import sys
import time

import scry

scry.init(name=sys.argv[1] if len(sys.argv) > 1 else None)
while True:
    time.sleep(0.05)

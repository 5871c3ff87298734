"""An embedded client for the trust tests. argv[1]: its name; argv[2]: "wake" to wake at once
(to SCRY_DAEMON) and report how that went on stderr, "sleep" to stay asleep; argv[3:]: anything
(a marker the tests look for in what a fake daemon received)."""
import sys
import time

import scry

scry.init(name=sys.argv[1])
if sys.argv[2] == "wake":
    try:
        scry.wake()
        sys.stderr.write("WAKE: ok {}\n".format(scry.status()["connection_id"]))
    except scry.ScryError as exc:
        sys.stderr.write("WAKE: failed: {}\n".format(exc))
st = scry.status()
sys.stderr.write("READY {} {}\n".format(st["control_socket"], st["control_port"]))
sys.stderr.flush()
while True:
    time.sleep(0.05)

"""A process that never heard of scry, for `scry attach` tests. Modes (argv[1]):

busy     a pure-Python loop that never sleeps
sleep    a loop of time.sleep(0.1)
server   a threaded HTTP server (main thread in serve_forever) with a client thread hitting it
blocked  blocked in os.read(0) until a byte arrives on stdin, then ticks, saying each time
         which scry modules are loaded
Each prints `ready PID` (server: `ready PID PORT`) on stdout once started.
"""

import os
import sys
import threading
import time


def compute(i):
    total = i * 3
    return total  # PROBE: total


def main(mode):
    if mode == "busy":
        print("ready", os.getpid(), flush=True)
        i = 0
        while True:
            compute(i)
            i += 1
    elif mode == "sleep":
        print("ready", os.getpid(), flush=True)
        i = 0
        while True:
            compute(i)
            i += 1
            time.sleep(0.1)
    elif mode == "server":
        import http.server
        import urllib.request

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = str(compute(7)).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        port = server.server_address[1]

        def client():
            while True:
                try:
                    urllib.request.urlopen("http://127.0.0.1:%d/" % port, timeout=5).read()
                except Exception:
                    pass
                time.sleep(0.05)

        threading.Thread(target=client, name="client", daemon=True).start()
        print("ready", os.getpid(), port, flush=True)
        server.serve_forever()
    elif mode == "blocked":
        print("ready", os.getpid(), flush=True)
        os.read(0, 1)
        print("unblocked", flush=True)
        for n in range(100000):
            compute(n)
            loaded = sorted(m for m in sys.modules if m == "scry" or m.startswith("scry."))
            print("tick", n, ",".join(loaded) or "-", flush=True)
            time.sleep(0.02)
    else:
        sys.exit("unknown mode " + mode)


main(sys.argv[1])

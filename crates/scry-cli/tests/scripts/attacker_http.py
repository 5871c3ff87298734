"""Run as the second local user by the security tests: tries the daemon's HTTP API every way a
local user could (TCP on loopback without or with a wrong token, the local API socket) and prints
one JSON object: for each attempt, the status it got (or the error that stopped it) and the body.

Usage: attacker_http.py TCP_ADDR API_SOCKET SIDE_EFFECT_FILE TARGET_PID
"""

import http.client
import json
import socket
import sys

tcp, api_socket, side_effect, target_pid = sys.argv[1:5]
host, port = tcp.rsplit(":", 1)
evil = "__import__('os').system('id > {}')".format(side_effect)

ATTEMPTS = [
    ("GET", "/api/v1/processes", None),
    ("GET", "/api/v1/status", None),
    ("GET", "/", None),
    ("GET", "/ui/app.js", None),
    ("POST", "/api/v1/wake", {"target": target_pid}),
    ("POST", "/api/v1/probes", {"location": "orders_loop.py:1", "expressions": [evil], "unsafe": True}),
    ("POST", "/api/v1/attach", {"pid": int(target_pid)}),
    ("GET", "/api/v1/attach/plan?pid={}".format(target_pid), None),
    ("POST", "/api/v1/debug", {"pid": int(target_pid), "port": 0}),
    ("GET", "/api/v1/debug/target?pid={}".format(target_pid), None),
    ("GET", "/api/v1/debug/next?supervisor={}&after=1&port=5678".format(target_pid), None),
    ("POST", "/api/v1/processes/{}/repl".format(target_pid), {}),
    ("POST", "/api/v1/repl/sessions", {"pid": int(target_pid)}),
    ("POST", "/api/v1/processes/{}/call/agent.state".format(target_pid), {}),
    ("POST", "/api/v1/ui/login", {}),
    ("POST", "/api/v1/shutdown", {}),
    ("POST", "/api/v1/restore", {}),
    ("GET", "/metrics", None),
    ("POST", "/api/v1/repl/sessions/r-guess/switch", {"pid": int(target_pid)}),
    ("POST", "/api/v1/traces/stop", {"target": target_pid}),
    ("GET", "/api/v1/events/stream", None),
    ("GET", "/api/v1/events/stream?token=guess", None),
    ("POST", "/mcp", {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": "add_probe", "arguments": {"location": "orders_loop.py:1",
                                                                   "expressions": [evil]}}}),
]


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path):
        http.client.HTTPConnection.__init__(self, "localhost", timeout=10)
        self.path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(self.path)
        self.sock = s


def attempt(make, method, path, body, headers):
    try:
        conn = make()
        data = None if body is None else json.dumps(body)
        h = dict(headers)
        if data is not None:
            h["Content-Type"] = "application/json"
        h["Accept"] = "application/json, text/event-stream"
        conn.request(method, path, body=data, headers=h)
        r = conn.getresponse()
        text = r.read(4096).decode("utf-8", "replace")
        conn.close()
        return {"status": r.status, "body": text}
    except OSError as exc:
        return {"status": None, "error": "{}: {}".format(type(exc).__name__, exc)}


out = {"tcp": [], "tcp_wrong_token": [], "socket": []}
for method, path, body in ATTEMPTS:
    key = "{} {}".format(method, path)
    tcp_conn = lambda: http.client.HTTPConnection(host, int(port), timeout=10)
    out["tcp"].append([key, attempt(tcp_conn, method, path, body, {})])
    out["tcp_wrong_token"].append(
        [key, attempt(tcp_conn, method, path, body, {"Authorization": "Bearer not-the-token"})]
    )
    out["socket"].append(
        [key, attempt(lambda: UnixHTTPConnection(api_socket), method, path, body, {})]
    )
try:
    with open(sys.argv[5] if len(sys.argv) > 5 else "/nonexistent") as f:
        out["token_read"] = f.read()
except OSError as exc:
    out["token_read_error"] = type(exc).__name__
print(json.dumps(out))

"""A minimal Debug Adapter Protocol client: enough to attach to ``debugpy.listen()`` and set a
logpoint the way an IDE does (``setBreakpoints`` with ``logMessage``). Standard library only.

Messages are ``Content-Length: N\\r\\n\\r\\n`` + N bytes of JSON. A reader thread routes
responses to their requests and counts ``output`` events whose text starts with a given prefix
(the logpoint's output), so the harness can check that every hit reached the client.
"""

import json
import socket
import threading
import time


class DapError(Exception):
    pass


class DapClient(object):
    def __init__(self, host, port, connect_timeout=30.0, count_prefix=None):
        deadline = time.monotonic() + connect_timeout
        while True:
            try:
                self.sock = socket.create_connection((host, port), timeout=5.0)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.sock.settimeout(None)
        self._seq = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self._responses = {}
        self._events = []
        self.count_prefix = count_prefix
        self.outputs = 0  # output events that start with count_prefix
        self.other_outputs = []
        self.closed = False
        self._reader = threading.Thread(target=self._read_loop, name="dap-reader", daemon=True)
        self._reader.start()

    # -- wire --------------------------------------------------------------------------------

    def _send(self, msg):
        body = json.dumps(msg).encode("utf-8")
        with self._lock:
            self.sock.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def _read_loop(self):
        buf = bytearray()
        pos = 0
        sock = self.sock
        try:
            while True:
                chunk = sock.recv(1 << 16)
                if not chunk:
                    return
                buf += chunk
                while True:
                    end = buf.find(b"\r\n\r\n", pos)
                    if end < 0:
                        break
                    length = None
                    for line in bytes(buf[pos:end]).split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":", 1)[1])
                    if length is None:
                        raise DapError("no Content-Length in " + repr(bytes(buf[pos:end])))
                    start = end + 4
                    if len(buf) < start + length:
                        break
                    self._dispatch(json.loads(bytes(buf[start : start + length]).decode("utf-8")))
                    pos = start + length
                del buf[:pos]
                pos = 0
        except OSError:
            pass
        finally:
            with self._cond:
                self.closed = True
                self._cond.notify_all()

    def _dispatch(self, msg):
        kind = msg.get("type")
        if kind == "event" and msg.get("event") == "output":
            text = msg.get("body", {}).get("output", "")
            with self._cond:
                if self.count_prefix is not None and text.startswith(self.count_prefix):
                    self.outputs += 1
                else:
                    if len(self.other_outputs) < 100:
                        self.other_outputs.append(text)
                self._cond.notify_all()
            return
        with self._cond:
            if kind == "response":
                self._responses[msg["request_seq"]] = msg
            elif kind == "event":
                self._events.append(msg)
            elif kind == "request":
                # A reverse request (e.g. runInTerminal): we support none.
                pass
            self._cond.notify_all()

    # -- API ---------------------------------------------------------------------------------

    def send_request(self, command, arguments=None):
        with self._lock:
            self._seq += 1
            seq = self._seq
        msg = {"seq": seq, "type": "request", "command": command}
        if arguments is not None:
            msg["arguments"] = arguments
        self._send(msg)
        return seq

    def wait_response(self, seq, timeout=30.0):
        deadline = time.monotonic() + timeout
        with self._cond:
            while seq not in self._responses:
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    raise DapError("no response to request {} ({})".format(seq, "closed" if self.closed else "timeout"))
                self._cond.wait(left)
            resp = self._responses.pop(seq)
        if not resp.get("success"):
            raise DapError("{} failed: {}".format(resp.get("command"), resp.get("message")))
        return resp.get("body", {})

    def request(self, command, arguments=None, timeout=30.0):
        return self.wait_response(self.send_request(command, arguments), timeout)

    def wait_event(self, name, timeout=30.0):
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i, ev in enumerate(self._events):
                    if ev.get("event") == name:
                        return self._events.pop(i)
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    raise DapError("no {} event".format(name))
                self._cond.wait(left)

    def wait_outputs(self, count, timeout=60.0):
        """Waits until `count` counted outputs arrived; returns the number seen."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.outputs < count and not self.closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self.outputs

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def attach_logpoint(host, port, path, line, log_message, count_prefix):
    """Attaches like an IDE and sets one logpoint; returns (client, breakpoint body)."""
    c = DapClient(host, port, count_prefix=count_prefix)
    c.request(
        "initialize",
        {
            "clientID": "scry-bench",
            "clientName": "scry bench",
            "adapterID": "python",
            "pathFormat": "path",
            "linesStartAt1": True,
            "columnsStartAt1": True,
            "supportsVariableType": True,
            "supportsRunInTerminalRequest": False,
        },
    )
    attach_seq = c.send_request(
        "attach",
        {"justMyCode": True, "redirectOutput": False, "subProcess": False, "showReturnValue": False},
    )
    c.wait_event("initialized")
    bp = c.request(
        "setBreakpoints",
        {"source": {"path": path}, "breakpoints": [{"line": line, "logMessage": log_message}], "sourceModified": False},
    )
    c.request("configurationDone")
    c.wait_response(attach_seq)
    return c, bp

"""The embedded client's control plane: a small JSON-over-HTTP server, on loopback by default.

Endpoints (all answers are JSON; errors are ``{"error": {"kind": ..., "message": ...}}``)::

    GET  /scry/health   {"ok": true}                       (open to every caller, for liveness probes)
    GET  /scry/status   the same dict as scry.status()
    GET  /scry/info     pid, ppid, python version, implementation, executable, argv, cwd, ...
    POST /scry/wake     optional body {"daemon_url": "..."}; answers the status (502 if the
                        daemon cannot be reached, 400 for a bad request or bad configuration)
    POST /scry/sleep    answers the status

Who may call: a caller on loopback (127.0.0.0/8, ::1, ::ffff:127.x) needs no token; any other
caller must send ``Authorization: Bearer <token>`` (compared in constant time). With no token
configured, non-loopback callers are refused with 403 and told how to configure one. As a
defence against web pages (CSRF, DNS rebinding), a tokenless loopback request is also refused
when it carries an ``Origin`` header or a ``Host`` header that is not an IP address, ``localhost``,
the bound host or this machine's name.

The server thread blocks in ``poll()`` on the listening socket and a wake-up pipe, so a sleeping
client costs no periodic wake-ups; each request is served on its own daemon thread. Nothing is
ever written to stdout or stderr: the access log goes to the ``scry`` logger at debug level.
"""

import hmac
import http.client
import http.server
import ipaddress
import json
import logging
import os
import select
import socketserver
import socket
import threading
import time
from urllib.parse import urlsplit

from ._errors import ControlPlaneError, ScryError
from ._process import AGENT_VERSION

log = logging.getLogger("scry")

#: The largest request body accepted, in bytes.
MAX_BODY = 64 * 1024
#: Per-connection socket timeout of a request thread, in seconds.
REQUEST_TIMEOUT = 10.0

_HTTP_STATUS_KIND = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "timeout",
    411: "length_required",
    413: "too_large",
    414: "too_large",
    431: "too_large",
    500: "internal",
    501: "not_implemented",
    502: "daemon",
    505: "bad_request",
}
_ERROR_STATUS = {"config": 400, "daemon": 502}


def error_body(kind, message):
    """The JSON error envelope."""
    return {"error": {"kind": kind, "message": message}}


def is_loopback(address):
    """Whether a peer address is loopback: 127.0.0.0/8, ::1 or an IPv4-mapped 127.x."""
    try:
        ip = ipaddress.ip_address(str(address).split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    if mapped is not None:
        ip = mapped
    return ip.is_loopback


def _is_unspecified(host):
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return host == ""


def _host_of(header):
    """The host part of a Host header, lower-cased, without port or brackets."""
    value = header.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 16

    def __init__(self, address, control):
        self.control = control
        self.active_requests = 0
        self.idle = threading.Condition()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        http.server.ThreadingHTTPServer.__init__(self, address, _Handler)

    def server_bind(self):
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can hang.
        socketserver.TCPServer.server_bind(self)
        self.server_name = self.server_address[0]
        self.server_port = self.server_address[1]

    def process_request(self, request, client_address):
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name="scry-control-request",
            daemon=True,
        )
        with self.idle:
            self.active_requests += 1
        try:
            thread.start()
        except BaseException:
            self._request_done()
            raise

    def process_request_thread(self, request, client_address):
        try:
            http.server.ThreadingHTTPServer.process_request_thread(self, request, client_address)
        finally:
            self._request_done()

    def _request_done(self):
        with self.idle:
            self.active_requests -= 1
            self.idle.notify_all()

    def wait_idle(self, timeout):
        """Wait until no request thread is running; False on timeout."""
        deadline = time.monotonic() + timeout
        with self.idle:
            while self.active_requests > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.idle.wait(remaining)
        return True

    def handle_error(self, request, client_address):
        log.debug("control plane: error while serving %s", client_address, exc_info=True)


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "scry-agent/" + AGENT_VERSION
    sys_version = ""
    protocol_version = "HTTP/1.0"
    timeout = REQUEST_TIMEOUT

    # -- plumbing ---------------------------------------------------------------------------

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        log.debug("control plane: %s %s", self.client_address[0], format % args)

    def send_error(self, code, message=None, explain=None):
        """JSON instead of the base class's HTML (bad request lines, unsupported methods)."""
        try:
            phrase = message or self.responses.get(code, ("error",))[0]
            self._reply(code, error_body(_HTTP_STATUS_KIND.get(code, "error"), phrase))
        except OSError:
            pass

    def _reply(self, code, obj, headers=()):
        body = (json.dumps(obj) + "\n").encode("utf-8")
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.close_connection = True

    def do_GET(self):
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    def _dispatch(self):
        try:
            self._dispatch_checked()
        except (OSError, http.client.HTTPException):
            log.debug("control plane: connection from %s failed", self.client_address[0], exc_info=True)
        except Exception as exc:  # never let a request take the server down
            log.warning("control plane: internal error on %s %s: %r", self.command, self.path, exc)
            try:
                self._reply(500, error_body("internal", "internal error: {!r}".format(exc)))
            except Exception:
                pass

    # -- request handling -------------------------------------------------------------------

    def _read_body(self):
        """(body bytes, None) or (None, (status, error))."""
        if self.headers.get("Transfer-Encoding"):
            return None, (
                411,
                error_body("length_required", "send the body with a Content-Length header"),
            )
        length = self.headers.get("Content-Length")
        if length is None:
            return b"", None
        try:
            size = int(length)
            if size < 0:
                raise ValueError(length)
        except ValueError:
            return None, (400, error_body("bad_request", "bad Content-Length {!r}".format(length)))
        if size > MAX_BODY:
            return None, (
                413,
                error_body("too_large", "request body over {} bytes".format(MAX_BODY)),
            )
        data = self.rfile.read(size) if size else b""
        if len(data) != size:
            return None, (400, error_body("bad_request", "request body shorter than Content-Length"))
        return data, None

    def _bearer(self):
        header = self.headers.get("Authorization")
        if header is None:
            return None
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            return ""
        return value.strip()

    def _denied(self):
        """None when the caller may go on, else (status, error)."""
        control = self.server.control
        caller = self.client_address[0]
        presented = self._bearer()
        token = control.token
        if token is not None and presented and hmac.compare_digest(
            presented.encode("utf-8"), token.encode("utf-8")
        ):
            return None
        if is_loopback(caller):
            if self.headers.get("Origin") is not None:
                return 403, error_body(
                    "forbidden",
                    "requests from web pages (with an Origin header) are refused; "
                    "use `scry wake` / `scry sleep` or curl",
                )
            host = self.headers.get("Host")
            if host is not None and not control.host_is_ours(_host_of(host)):
                return 403, error_body(
                    "forbidden",
                    "Host {!r} is not a loopback name; call http://127.0.0.1:{}/ directly".format(
                        host, control.port
                    ),
                )
            return None
        if token is None:
            return 403, error_body(
                "forbidden",
                "{} is not on loopback, and callers that are not need a token, but this process "
                "has none configured: {} before scry.init() in the target process, then send "
                "`Authorization: Bearer <token>`".format(caller, control.token_hint),
            )
        if presented is None:
            return 403, error_body(
                "forbidden",
                "{} is not on loopback: send `Authorization: Bearer <token>` with the token of "
                "the target process (SCRY_TOKEN or $SCRY_HOME/token)".format(caller),
            )
        return 403, error_body("forbidden", "wrong token")

    def _dispatch_checked(self):
        path = urlsplit(self.path).path
        route = _ROUTES.get(path)
        body, problem = self._read_body()
        if problem is not None:
            self._reply(*problem)
            return
        if route is None or route[2]:
            problem = self._denied()
            if problem is not None:
                self._reply(*problem)
                return
        if route is None:
            self._reply(
                404,
                error_body(
                    "not_found",
                    "no endpoint {}; try GET /scry/health, /scry/status, /scry/info or "
                    "POST /scry/wake, /scry/sleep".format(path),
                ),
            )
            return
        method, func, _ = route
        allowed = ("GET", "HEAD") if method == "GET" else (method,)
        if self.command not in allowed:
            self._reply(
                405,
                error_body("method_not_allowed", "use {} {}".format(method, path)),
                headers=[("Allow", ", ".join(allowed))],
            )
            return
        status, obj = func(self.server.control, body)
        self._reply(status, obj)


def _call(func, *args):
    try:
        return 200, func(*args)
    except ScryError as exc:
        return _ERROR_STATUS.get(exc.kind, 500), error_body(exc.kind, str(exc))


def _health(control, body):
    return 200, {"ok": True}


def _status(control, body):
    return _call(control.api.status)


def _info(control, body):
    return _call(control.api.info)


def _wake(control, body):
    daemon_url = None
    if body.strip():
        try:
            obj = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            return 400, error_body(
                "bad_request",
                'the body must be JSON such as {{"daemon_url": "unix:///path/agent.sock"}}: {}'.format(
                    exc
                ),
            )
        if not isinstance(obj, dict):
            return 400, error_body("bad_request", "the body must be a JSON object")
        daemon_url = obj.get("daemon_url")
        if daemon_url is not None and not isinstance(daemon_url, str):
            return 400, error_body("bad_request", "`daemon_url` must be a string")
    return _call(control.api.wake, daemon_url)


def _sleep(control, body):
    return _call(control.api.sleep)


# path -> (method, handler, needs auth)
_ROUTES = {
    "/scry/health": ("GET", _health, False),
    "/scry/status": ("GET", _status, True),
    "/scry/info": ("GET", _info, True),
    "/scry/wake": ("POST", _wake, True),
    "/scry/sleep": ("POST", _sleep, True),
}


class ControlPlane(object):
    """The server, its thread and its wake-up pipe. ``api`` provides status/info/wake/sleep."""

    def __init__(self, host, port, token, token_hint, api):
        self.requested_host = host
        self.requested_port = port
        self.token = token
        self.token_hint = token_hint
        self.api = api
        self.host = None
        self.port = None
        self._server = None
        self._thread = None
        self._wake_r = None
        self._wake_w = None
        self._stopping = False
        self._names = set()

    @property
    def url(self):
        host = self.host if self.host is not None else self.requested_host
        if ":" in host:
            host = "[" + host + "]"
        return "http://{}:{}".format(host, self.port if self.port is not None else self.requested_port)

    def host_is_ours(self, name):
        """Whether a Host header's host part is an address, localhost, or one of our names."""
        try:
            ipaddress.ip_address(name)
            return True
        except ValueError:
            pass
        return name == "localhost" or name.endswith(".localhost") or name in self._names

    def start(self, health_timeout):
        """Bind, start the server thread and check ``GET /scry/health``. Raises ControlPlaneError."""
        try:
            self._server = _Server((self.requested_host, self.requested_port), self)
        except (OSError, OverflowError, ValueError) as exc:
            raise ControlPlaneError(
                "cannot start the control plane on {}: {}: choose another address with "
                "SCRY_CONTROL_HOST / SCRY_CONTROL_PORT (or scry.init(control_host=, "
                "control_port=)); port 0 picks a free one".format(self.url, _describe(exc))
            )
        try:
            self._server.socket.setblocking(False)
            self.host, self.port = self._server.server_address[:2]
            self._names = {self.requested_host.lower(), str(self.host).lower()}
            try:
                self._names.add(socket.gethostname().lower())
            except OSError:
                pass
            self._wake_r, self._wake_w = os.pipe()
            self._thread = threading.Thread(target=self._serve, name="scry-control", daemon=True)
            self._thread.start()
            self._check_health(health_timeout)
        except BaseException:
            self.stop()
            raise

    def _serve(self):
        try:
            self._serve_until_stopped()
        except BaseException as exc:  # never a traceback on the host's stderr
            log.warning("the control plane thread failed: %r", exc)

    def _serve_until_stopped(self):
        server = self._server
        poller = select.poll()
        listen_fd = server.fileno()
        poller.register(listen_fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._stopping:
            try:
                events = poller.poll()
            except OSError:
                if self._stopping:
                    break
                time.sleep(0.01)
                continue
            if self._stopping or any(fd == self._wake_r for fd, _ in events):
                break
            if any(ev & select.POLLNVAL for _, ev in events):
                break
            self._accept(server)

    @staticmethod
    def _accept(server):
        try:
            request, client_address = server.get_request()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            log.debug("control plane: accept failed", exc_info=True)
            time.sleep(0.01)  # e.g. EMFILE: do not spin
            return
        try:
            server.process_request(request, client_address)
        except Exception:
            server.handle_error(request, client_address)
            server.shutdown_request(request)

    def _check_health(self, timeout):
        host = self.host
        if _is_unspecified(host):
            host = "::1" if ":" in host else "127.0.0.1"
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            conn = http.client.HTTPConnection(host, self.port, timeout=remaining)
            try:
                conn.request("GET", "/scry/health", headers={"Host": "127.0.0.1"})
                response = conn.getresponse()
                data = response.read(4096)
                if response.status == 200 and json.loads(data.decode("utf-8")) == {"ok": True}:
                    # Let the check's own request thread end, so init() leaves exactly one thread.
                    self._server.wait_idle(max(0.0, deadline - time.monotonic()))
                    return
                last = "answered HTTP {}".format(response.status)
            except (OSError, ValueError, http.client.HTTPException) as exc:
                last = _describe(exc)
            finally:
                conn.close()
            time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))
        raise ControlPlaneError(
            "the control plane at {} did not answer GET /scry/health within {:g} s ({}): check "
            "that SCRY_CONTROL_HOST is an address of this machine and that no firewall drops "
            "it, or raise scry.init(health_check_timeout=)".format(self.url, timeout, last)
        )

    def stop(self, timeout=2.0):
        """Stop the thread, close the socket and the pipe. Safe to call twice."""
        self._stopping = True
        if self._wake_w is not None:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.warning("the control plane thread did not stop within %g s", timeout)
        self._thread = None
        if self._server is not None:
            try:
                self._server.server_close()
            except OSError:
                pass
            self._server = None
        self._close_pipe()

    def close_in_child(self):
        """After fork, in the child: close our copies of the fds without touching the parent's."""
        self._stopping = True
        self._thread = None
        if self._server is not None:
            try:
                self._server.socket.close()  # close(), never shutdown(): the parent keeps serving
            except OSError:
                pass
            self._server = None
        self._close_pipe()

    def _close_pipe(self):
        for name in ("_wake_r", "_wake_w"):
            fd = getattr(self, name)
            setattr(self, name, None)
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass


def _describe(exc):
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__

"""The embedded client's control plane: a small JSON-over-HTTP server on a unix socket, or on TCP
when the user asks for it.

Endpoints (all answers are JSON; errors are ``{"error": {"kind": ..., "message": ...}}``)::

    GET  /scry/health   {"ok": true}
    GET  /scry/status   the same dict as scry.status()
    GET  /scry/info     pid, ppid, python version, implementation, executable, argv, cwd, ...
    POST /scry/wake     optional body {"daemon_url": "..."}; answers the status (502 if the
                        daemon cannot be reached, 400 for a bad request or bad configuration)
    POST /scry/sleep    answers the status

Who may call (the client obeys only its own uid or root; see docs/protocol.md, "The control plane"):

- By default the control plane is the unix socket ``$SCRY_HOME/run/clients/<pid>.sock`` (the
  directory mode 0700, the socket 0600). Every connection's peer is checked with ``SO_PEERCRED``:
  only this process's effective uid and root are served; anyone else gets 403 and nothing
  happens, whatever the path (the file modes alone would do, but a home with loose modes or a
  socket handed on must not open the door).
- When the user asks for TCP (``SCRY_CONTROL_HOST`` / ``SCRY_CONTROL_PORT`` or ``init(control_host=,
  control_port=)``), every request but ``GET /scry/health`` needs ``Authorization: Bearer
  <token>``, loopback included: loopback is not an identity, every local user reaches it. Health
  stays open for liveness probes; it answers ``{"ok": true}`` and acts on nothing. With no token
  configured the TCP control plane is not opened: a warning on the ``scry`` logger, and the unix
  socket instead (never an exception into the host program for that).

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
import stat
import struct
import threading
import time
from urllib.parse import urlsplit

from . import _discovery
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


def _is_unspecified(host):
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return host == ""


_SO_PEERCRED = getattr(socket, "SO_PEERCRED", 17)
_UCRED = struct.Struct("3i")
#: The longest path a unix socket can be bound to (sun_path, without its NUL).
_MAX_SOCKET_PATH = 107


def peer_credentials(sock):
    """(pid, uid) of a unix socket's peer, or (None, None) when the kernel does not say."""
    try:
        pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, _SO_PEERCRED, _UCRED.size))
        return pid, uid
    except (OSError, struct.error):
        return None, None


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 16

    def __init__(self, address, control):
        self.control = control
        self.active_requests = 0
        self.idle = threading.Condition()
        if isinstance(address, str):
            self.address_family = socket.AF_UNIX
            self.allow_reuse_address = False
        elif ":" in address[0]:
            self.address_family = socket.AF_INET6
        http.server.ThreadingHTTPServer.__init__(self, address, _Handler)

    def server_bind(self):
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can hang.
        if self.address_family == socket.AF_UNIX:
            # Created 0600 (umask) and chmod'ed again: nobody else gets past the file mode.
            old = os.umask(0o177)
            try:
                self.socket.bind(self.server_address)
            finally:
                os.umask(old)
            os.chmod(self.server_address, 0o600)
            self.server_name, self.server_port = "localhost", 0
            return
        socketserver.TCPServer.server_bind(self)
        self.server_name = self.server_address[0]
        self.server_port = self.server_address[1]

    def get_request(self):
        request, client_address = self.socket.accept()
        if self.address_family == socket.AF_UNIX:
            # Who is calling, as the kernel says: (text for the log, uid).
            pid, uid = peer_credentials(request)
            client_address = ("unix peer uid {} pid {}".format(uid, pid), uid)
        return request, client_address

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
        if control.socket_path is not None:
            uid = self.client_address[1]
            mine = os.geteuid()
            if uid in (mine, 0):
                return None
            control.refused_peer(uid)
            return 403, error_body(
                "forbidden",
                "this control plane obeys only uid {} (its process's) and root; you are uid {}".format(
                    mine, "unknown" if uid is None else uid
                ),
            )
        presented = self._bearer()
        token = control.token
        if token is not None and presented and hmac.compare_digest(
            presented.encode("utf-8"), token.encode("utf-8")
        ):
            return None
        if presented is None:
            return 403, error_body(
                "forbidden",
                "this control plane is on TCP, where every request (loopback included) needs "
                "`Authorization: Bearer <token>` with the token of the target process "
                "(SCRY_TOKEN or $SCRY_HOME/token)",
            )
        return 403, error_body("forbidden", "wrong token")

    def _dispatch_checked(self):
        path = urlsplit(self.path).path
        route = _ROUTES.get(path)
        body, problem = self._read_body()
        if problem is not None:
            self._reply(*problem)
            return
        # A unix socket's peer is checked before anything, health included; on TCP everything
        # but health needs the token (and unknown paths say nothing without it).
        if route is None or route[2] or self.server.control.socket_path is not None:
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


class _UnixHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection over a unix socket (the health check)."""

    def __init__(self, path, timeout):
        http.client.HTTPConnection.__init__(self, "localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.unix_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class ControlPlane(object):
    """The server, its thread and its wake-up pipe. ``api`` provides status/info/wake/sleep.

    ``tcp``: the user asked for TCP on ``host``:``port``; otherwise (or without a token) the
    unix socket ``socket_path``.
    """

    def __init__(self, host, port, token, token_hint, api, socket_path=None, tcp=True):
        self.requested_host = host
        self.requested_port = port
        self.token = token
        self.token_hint = token_hint
        self.api = api
        self.tcp = tcp
        self.requested_socket = socket_path
        #: The bound unix socket, or None on TCP.
        self.socket_path = None
        self.host = None
        self.port = None
        self._server = None
        self._thread = None
        self._wake_r = None
        self._wake_w = None
        self._stopping = False
        self._refused_logged = False

    @property
    def url(self):
        if self.socket_path is not None or (not self.tcp and self.requested_socket):
            return "unix://" + (self.socket_path or self.requested_socket)
        host = self.host if self.host is not None else self.requested_host
        if ":" in host:
            host = "[" + host + "]"
        return "http://{}:{}".format(host, self.port if self.port is not None else self.requested_port)

    def address(self):
        """The control plane's address for ``hello.control``."""
        if self.socket_path is not None:
            return {"socket": self.socket_path}
        return {"host": self.host, "port": self.port}

    def refused_peer(self, uid):
        """Log (once) that a caller of another uid was refused."""
        if not self._refused_logged:
            self._refused_logged = True
            log.warning(
                "control plane: refused a caller of uid %s (only uid %d and root are obeyed)",
                uid,
                os.geteuid(),
            )

    def start(self, health_timeout):
        """Bind, start the server thread and check ``GET /scry/health``. Raises ControlPlaneError."""
        if self.tcp and not self.token:
            log.warning(
                "a TCP control plane (%s) was asked for, but it needs a token and none is "
                "configured (%s): serving the control plane on the unix socket %s instead",
                self.url,
                self.token_hint,
                self.requested_socket,
            )
            self.tcp = False
        if not self.tcp and not self.requested_socket:
            raise ControlPlaneError("no path for the control plane's unix socket")
        try:
            if self.tcp:
                self._server = _Server((self.requested_host, self.requested_port), self)
            else:
                self._server = _Server(self._prepare_socket_path(), self)
        except (OSError, OverflowError, ValueError) as exc:
            if self.tcp:
                hint = (
                    "choose another address with SCRY_CONTROL_HOST / SCRY_CONTROL_PORT (or "
                    "scry.init(control_host=, control_port=)); port 0 picks a free one"
                )
            else:
                hint = "make SCRY_HOME writable by this process, or point SCRY_HOME elsewhere"
            raise ControlPlaneError(
                "cannot start the control plane on {}: {}: {}".format(self.url, _describe(exc), hint)
            )
        try:
            self._server.socket.setblocking(False)
            if self.tcp:
                self.host, self.port = self._server.server_address[:2]
            else:
                self.socket_path = self.requested_socket
            self._wake_r, self._wake_w = os.pipe()
            self._thread = threading.Thread(target=self._serve, name="scry-control", daemon=True)
            self._thread.start()
            self._check_health(health_timeout)
        except BaseException:
            self.stop()
            raise

    def _prepare_socket_path(self):
        """The socket's directory made private, and a socket left by a dead process removed.
        Raises OSError or ValueError."""
        path = self.requested_socket
        if len(os.fsencode(path)) > _MAX_SOCKET_PATH:
            raise ValueError(
                "the socket path is longer than {} bytes (a unix socket limit): use a shorter "
                "SCRY_HOME".format(_MAX_SOCKET_PATH)
            )
        directory = os.path.dirname(path)
        _discovery.ensure_private_dir(directory)
        st = os.lstat(directory)
        if not stat.S_ISDIR(st.st_mode):
            raise ValueError("{} is not a directory".format(directory))
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(directory, 0o700)
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)  # our pid's name: left by a process that had it before us
        except FileNotFoundError:
            pass
        return path

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
        if host is not None and _is_unspecified(host):
            host = "::1" if ":" in host else "127.0.0.1"
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if self.socket_path is not None:
                conn = _UnixHTTPConnection(self.socket_path, remaining)
            else:
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

    def _remove_socket(self):
        path, self.socket_path = self.socket_path, None
        if path is not None:
            try:
                os.unlink(path)
            except OSError:
                pass

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
            self._remove_socket()
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

"""The connection to the daemon: address resolution, handshake, the link thread, the report buffer.

One :class:`Link` exists per wake. ``connect_first()`` runs in the caller's thread and raises if
the daemon cannot be reached or refuses us; then the ``scry-link`` daemon thread owns the
connection: it answers the daemon's requests, flushes the report buffer every
``settings.flush_interval_ms``, sends ``heartbeat`` after ``settings.heartbeat_ms`` of silence and,
when the connection drops, reconnects with backoff (0.1 s doubling to 2 s) for as long as the
link is not stopped.

Whom the agent talks to (docs/protocol.md, "Handshake"): on a unix socket only a daemon of its
own uid or root (``SO_PEERCRED``, checked before anything is sent); on TCP only a daemon that
proves it holds the token (``auth`` / ``challenge``, HMAC over both nonces and a channel
binding), and only then ``hello`` with the agent's own proof; TLS when the daemon is not on
loopback. The token itself is never sent.

Ownership, so that no fd is ever closed under another thread's feet: once started, only the link
thread reads, writes and closes the socket; ``stop()`` only sets a flag and writes one byte to the
link's wake-up pipe, which the thread polls together with the socket. The thread closes the
socket and the pipe when it ends.
"""

import collections
import errno
import hmac
import ipaddress
import json
import logging
import os
import select
import socket
import stat
import struct
import threading
import time

from . import _calls, _hit, _logfwd, _proto, _trace
from ._errors import ConfigError, DaemonError, ScryError
from ._version import __version__

log = logging.getLogger("scry")

DEFAULT_SETTINGS = {"flush_interval_ms": 50, "max_batch": 4096, "heartbeat_ms": 5000}
#: Events held while waiting for the next flush (or for a reconnect); more are counted as dropped.
BUFFER_CAPACITY = 65536
#: At most this many reports are sent per flush, so a flood cannot starve the daemon's requests.
MAX_REPORTS_PER_FLUSH = 64
#: Events sent and not acknowledged yet, at most (in ``max_batch`` units): they are kept to be
#: resent after a reconnect, and past this window the link waits for acks instead of sending,
#: so a slow daemon makes the buffer fill (drops counted here) rather than any queue grow.
UNACKED_REPORTS = 4
BACKOFF_START = 0.1
BACKOFF_MAX = 2.0
#: How long one write to the daemon may block before the connection is considered dead.
SEND_TIMEOUT = 10.0
RECV_SIZE = 65536

URL_FORMS = "unix:///abs/path/agent.sock, unix:/abs/path, tcp://HOST:PORT or http://HOST:PORT"
_MSG_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)
_POLL_IN = select.POLLIN | select.POLLPRI
_POLL_DONE = select.POLLHUP | select.POLLERR | select.POLLNVAL


class _Stopped(Exception):
    """The link was stopped while connecting."""


# -- addresses -------------------------------------------------------------------------------


class Address(object):
    """A parsed ``daemon_url``: scheme ``unix`` (path), ``tcp`` or ``http`` (host, port)."""

    __slots__ = ("scheme", "path", "host", "port", "url")

    def __init__(self, scheme, url, path=None, host=None, port=None):
        self.scheme = scheme
        self.url = url
        self.path = path
        self.host = host
        self.port = port

    @property
    def display(self):
        if self.scheme == "unix":
            return "unix://" + self.path
        return "{}://{}".format(self.scheme, _hostport(self.host, self.port))


def _hostport(host, port):
    return "[{}]:{}".format(host, port) if ":" in host else "{}:{}".format(host, port)


def _split_hostport(text):
    """``host:port`` or ``[v6]:port`` -> (host, port); raises ValueError."""
    text = text.strip()
    if text.startswith("["):
        end = text.index("]")
        host, rest = text[1:end], text[end + 1 :]
        if not rest.startswith(":"):
            raise ValueError(text)
        port = rest[1:]
    else:
        host, sep, port = text.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(text)
    port = int(port)
    if not host or not 0 < port < 65536:
        raise ValueError(text)
    return host, port


def parse_daemon_url(url):
    """Parse a daemon address (see docs/protocol.md "Agent addresses"). Raises ConfigError."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigError("the daemon address must be a non-empty string such as {}".format(URL_FORMS))
    url = url.strip()
    scheme, sep, rest = url.partition(":")
    scheme = scheme.lower()
    if not sep:
        raise ConfigError("{!r} is not a daemon address: use {}".format(url, URL_FORMS))
    if scheme == "unix":
        path = rest[2:] if rest.startswith("//") else rest
        if not path.startswith("/"):
            raise ConfigError(
                "{!r}: a unix daemon address needs an absolute path, e.g. "
                "unix:///home/me/.scry/run/agent.sock".format(url)
            )
        return Address("unix", url, path=path)
    if scheme in ("tcp", "http"):
        if not rest.startswith("//"):
            raise ConfigError("{!r} is not a daemon address: use {}".format(url, URL_FORMS))
        netloc = rest[2:]
        if scheme == "http" and netloc.endswith("/"):
            netloc = netloc[:-1]
        if scheme == "http" and ":" not in netloc.rpartition("]")[2]:
            netloc += ":80"
        try:
            host, port = _split_hostport(netloc)
        except ValueError:
            raise ConfigError(
                "{!r}: expected {}://HOST:PORT (IPv6 as [addr]:PORT), with nothing after the "
                "port".format(url, scheme)
            )
        return Address(scheme, url, host=host, port=port)
    if scheme == "https":
        raise ConfigError(
            "{!r}: https is not supported for the daemon address; use http://HOST:PORT (the "
            "daemon's API) or tcp://HOST:PORT (its agent listener, with a token)".format(url)
        )
    raise ConfigError("{!r} is not a daemon address: use {}".format(url, URL_FORMS))


def _need_token(address, token, hint):
    if not token:
        raise ConfigError(
            "connecting to the daemon over TCP ({}) needs the daemon's token: {}".format(
                address.display, hint
            )
        )


def _is_local_socket(path):
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def resolve_endpoint(address, token, token_hint, timeout):
    """The unix or tcp Address to connect to; asks the daemon's HTTP API for ``http://``."""
    if address.scheme == "unix":
        return address
    if address.scheme == "tcp":
        _need_token(address, token, token_hint)
        return address
    import http.client  # here, not at import: unix and tcp links (`scry attach`) never need it

    conn = http.client.HTTPConnection(address.host, address.port, timeout=timeout)
    # No token: this route is public (it only names the agent endpoints), and the token never
    # leaves this process in clear; the link proves it instead (see _authenticate).
    headers = {"Accept": "application/json"}
    try:
        conn.request("GET", "/api/v1/agent-endpoint", headers=headers)
        response = conn.getresponse()
        body = response.read(1 << 20)
    except (OSError, http.client.HTTPException) as exc:
        raise DaemonError(
            "no scry daemon answers at {} ({}): start one with `scry serve --daemon`, or check "
            "the address".format(address.display, _describe(exc))
        )
    finally:
        conn.close()
    if response.status != 200:
        raise DaemonError(
            "the daemon at {} answered GET /api/v1/agent-endpoint with HTTP {}: {}".format(
                address.display, response.status, body[:300].decode("utf-8", "replace").strip()
            )
        )
    try:
        obj = json.loads(body.decode("utf-8"))
        unix = obj.get("unix")
        tcp = obj.get("tcp")
        if unix is not None and not isinstance(unix, str):
            raise ValueError("`unix` is not a string")
        if tcp is not None and not isinstance(tcp, str):
            raise ValueError("`tcp` is not a string")
    except (ValueError, AttributeError, UnicodeDecodeError) as exc:
        raise DaemonError(
            "the daemon at {} answered GET /api/v1/agent-endpoint with something that is not "
            '{{"unix": ..., "tcp": ...}} ({}): is it a scry daemon of the same version?'.format(
                address.display, exc
            )
        )
    if unix and _is_local_socket(unix):
        return Address("unix", "unix://" + unix, path=unix)
    if tcp:
        try:
            host, port = _split_hostport(tcp)
        except ValueError:
            raise DaemonError(
                "the daemon at {} gave an invalid TCP agent address {!r}".format(address.display, tcp)
            )
        if host in ("0.0.0.0", "::", "[::]"):
            host = address.host  # it listens everywhere: use the host we reached its API on
        result = Address("tcp", "tcp://" + _hostport(host, port), host=host, port=port)
        _need_token(result, token, token_hint)
        return result
    raise DaemonError(
        "the daemon at {} offers no agent endpoint this process can use (its unix socket {} is "
        "not on this host, and it has no TCP agent listener): run the process on the daemon's "
        "host, or enable the daemon's TCP agent listener".format(address.display, unix)
    )


# -- connecting and the handshake ------------------------------------------------------------


def _describe(exc):
    if isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _wait(poller, deadline, wake_fd):
    """poll() until an event or the deadline; raises _Stopped when the wake fd fires."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return []
    events = poller.poll(max(1, int(remaining * 1000)))
    if wake_fd is not None and any(fd == wake_fd for fd, _ in events):
        raise _Stopped()
    return events


def _connect(endpoint, deadline, wake_fd, hint_home):
    """A connected socket (blocking, with SEND_TIMEOUT). Raises DaemonError or _Stopped."""
    if endpoint.scheme == "unix":
        families = [(socket.AF_UNIX, endpoint.path)]
    else:
        try:
            infos = socket.getaddrinfo(endpoint.host, endpoint.port, 0, socket.SOCK_STREAM)
        except OSError as exc:
            raise DaemonError("cannot resolve the daemon host in {}: {}".format(endpoint.display, _describe(exc)))
        families = [(info[0], info[4]) for info in infos]
    last = None
    for family, addr in families:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            err = sock.connect_ex(addr)
            if family == socket.AF_UNIX and err == errno.EAGAIN:
                pass  # the listen backlog is full: a unix connect does not go on in the background
            elif err in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY):
                poller = select.poll()
                poller.register(sock, select.POLLOUT)
                if wake_fd is not None:
                    poller.register(wake_fd, select.POLLIN)
                while True:
                    events = _wait(poller, deadline, wake_fd)
                    if events:
                        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        break
                    if time.monotonic() >= deadline:
                        err = errno.ETIMEDOUT
                        break
            if err == 0:
                sock.setblocking(True)
                sock.settimeout(SEND_TIMEOUT)
                return sock
            last = OSError(err, os.strerror(err))
        except _Stopped:
            sock.close()
            raise
        except OSError as exc:
            last = exc
        sock.close()
    code = getattr(last, "errno", None)
    if code in (errno.ENOENT, errno.ECONNREFUSED):
        extra = ""
        if endpoint.scheme == "unix":
            extra = " (using the same SCRY_HOME, {})".format(hint_home) if hint_home else ""
        raise DaemonError(
            "no scry daemon at {}: start one with `scry serve --daemon`{}, or point SCRY_DAEMON "
            "/ daemon_url= at a running one".format(endpoint.display, extra)
        )
    if code in (errno.EACCES, errno.EPERM):
        raise DaemonError(
            "permission denied connecting to {}: the daemon must run as the same user as this "
            "process (or as root)".format(endpoint.display)
        )
    if code == errno.ETIMEDOUT:
        raise DaemonError(
            "timed out connecting to the scry daemon at {}: check the address and the "
            "firewall".format(endpoint.display)
        )
    if code in (errno.EAGAIN,):
        raise DaemonError("the scry daemon at {} is not accepting connections (busy)".format(endpoint.display))
    raise DaemonError("cannot connect to the scry daemon at {}: {}".format(endpoint.display, _describe(last)))


class _LineReader(object):
    """Splits received bytes into lines and enforces the 16 MiB line limit."""

    def __init__(self):
        self._buf = bytearray()
        self._scanned = 0

    def feed(self, data):
        """Append data; return the complete lines. Raises ProtocolError("too_large")."""
        self._buf += data
        lines = []
        while True:
            index = self._buf.find(b"\n", self._scanned)
            if index < 0:
                self._scanned = len(self._buf)
                if self._scanned > _proto.MAX_LINE_BYTES:
                    raise _proto.ProtocolError(
                        "too_large",
                        "a line longer than {} bytes".format(_proto.MAX_LINE_BYTES),
                    )
                return lines
            lines.append(bytes(self._buf[:index]))
            del self._buf[: index + 1]
            self._scanned = 0


class _Lines(object):
    """Reads whole lines from the daemon during the handshake (a TLS socket may hold decrypted
    bytes that poll() does not see, so those are drained first)."""

    def __init__(self, sock, deadline, wake_fd, display):
        self.sock = sock
        self.reader = _LineReader()
        self.queue = collections.deque()
        self.deadline = deadline
        self.wake_fd = wake_fd
        self.display = display
        self.poller = select.poll()
        self.poller.register(sock, _POLL_IN)
        if wake_fd is not None:
            self.poller.register(wake_fd, select.POLLIN)

    def next(self, what):
        """The next line; raises DaemonError (timeout, close, bad data) or _Stopped."""
        while not self.queue:
            pending = getattr(self.sock, "pending", None)
            if not (pending is not None and pending()):
                events = _wait(self.poller, self.deadline, self.wake_fd)
                if not events:
                    raise DaemonError(
                        "the daemon at {} did not answer {} within the register timeout: is it a "
                        "healthy scry daemon? (raise scry.init(register_timeout=) for a slow "
                        "one)".format(self.display, what)
                    )
            try:
                data = self.sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError, socket.timeout):
                continue
            except OSError as exc:
                raise DaemonError(
                    "the daemon at {} dropped the connection during the handshake: {}".format(
                        self.display, _describe(exc)
                    )
                )
            if not data:
                raise DaemonError(
                    "the daemon at {} closed the connection without answering {} (a daemon of "
                    "another user refuses unix connections this way: run it as the same user as "
                    "this process, or as root)".format(self.display, what)
                )
            try:
                self.queue.extend(self.reader.feed(data))
            except _proto.ProtocolError as exc:
                raise DaemonError(
                    "the daemon at {} sent an invalid answer to {}: {}".format(self.display, what, exc.message)
                )
        return self.queue.popleft()

    def decode(self, line, what):
        try:
            return _proto.decode(line, _proto.DAEMON_TYPES)
        except _proto.ProtocolError as exc:
            raise DaemonError(
                "the daemon at {} answered {} with an invalid message ({}: {}): is it a scry "
                "daemon of a compatible version?".format(self.display, what, exc.kind, exc.message)
            )


def _refused(display, msg):
    return DaemonError(
        "the scry daemon at {} refused this agent: {} (the daemon accepts protocol versions "
        "{}; this agent speaks {})".format(
            display,
            msg["reason"],
            ", ".join(str(v) for v in msg["accepted_protocols"]) or "none",
            _proto.PROTOCOL_VERSION,
        )
    )


def _send_all(sock, data):
    """Send all of ``data`` (MSG_NOSIGNAL on plain sockets; a TLS socket takes no flags).

    Not ``sendall()``: its timeout bounds the whole write, so a daemon that is slow but reading
    (30 agents sharing it, its store behind) looked dead after SEND_TIMEOUT and lost the link.
    Here the socket timeout bounds each send, i.e. the time without any progress."""
    tls = getattr(sock, "pending", None) is not None
    view = memoryview(data)
    while view:
        sent = sock.send(view) if tls else sock.send(view, _MSG_NOSIGNAL)
        view = view[sent:]


def _authenticate(sock, lines, token, binding, display):
    """The agent's half of the TCP handshake: ``auth``, check the daemon's ``challenge``, and
    return our proof for ``hello``. Nothing about this process is sent before the daemon has
    proved that it holds the token. Raises DaemonError or _Stopped."""
    agent_nonce = os.urandom(32).hex()
    try:
        _send_all(sock, _proto.encode(_proto.auth(agent_nonce)))
    except OSError as exc:
        raise DaemonError("the daemon at {} closed the connection during auth: {}".format(display, _describe(exc)))
    msg = lines.decode(lines.next("auth"), "auth")
    kind = msg["type"]
    if kind == "refused":
        raise _refused(display, msg)
    if kind == "error":
        raise DaemonError("the scry daemon at {} rejected auth: {}: {}".format(display, msg["kind"], msg["message"]))
    if kind != "challenge":
        raise DaemonError(
            "the daemon at {} answered auth with `{}` instead of `challenge`: is it a scry daemon "
            "of this version?".format(display, kind)
        )
    daemon_nonce = msg["nonce"]
    want = _proto.daemon_proof(token, agent_nonce, daemon_nonce, binding) if _proto.nonce_ok(daemon_nonce) else ""
    if not want or not hmac.compare_digest(want, msg["proof"]):
        raise _untrusted(
            display,
            "it did not prove that it holds the daemon's token (another program listens there, "
            "a man in the middle, or a daemon with another token)",
        )
    return _proto.agent_proof(token, agent_nonce, daemon_nonce, binding)


def _handshake(sock, hello, lines, display):
    """Send hello, wait for welcome. Returns (welcome, reader, rest). Raises DaemonError or _Stopped."""
    try:
        _send_all(sock, _proto.encode(hello))
    except OSError as exc:
        raise DaemonError("the daemon at {} closed the connection during hello: {}".format(display, _describe(exc)))
    msg = lines.decode(lines.next("hello"), "hello")
    kind = msg["type"]
    if kind == "refused":
        err = _refused(display, msg)
        raise DaemonError(str(err) + ": install matching versions of scry and its Python package, or see the reason")
    if kind == "error":
        raise DaemonError(
            "the scry daemon at {} rejected hello: {}: {}".format(display, msg["kind"], msg["message"])
        )
    if kind != "welcome":
        raise DaemonError("the daemon at {} answered hello with `{}` instead of `welcome`".format(display, kind))
    if msg["protocol"] not in _proto.ACCEPTED_PROTOCOLS:
        raise DaemonError(
            "the scry daemon at {} speaks protocol {}, this agent speaks {}: install matching "
            "versions of scry and its Python package".format(display, msg["protocol"], _proto.PROTOCOL_VERSION)
        )
    # Lines after the welcome (e.g. an early ping) stay queued for the link thread.
    return msg, lines.reader, list(lines.queue)


class _Untrusted(DaemonError):
    """The peer is not a daemon this agent may talk to (wrong owner, failed proof)."""


_warned_untrusted = set()


def _untrusted(display, why):
    """A DaemonError saying why we refuse to talk to ``display``; warned once per address."""
    message = "refusing to talk to {}: {}".format(display, why)
    if display not in _warned_untrusted:
        _warned_untrusted.add(display)
        log.warning("%s", message)
    return _Untrusted(message)


_SO_PEERCRED = getattr(socket, "SO_PEERCRED", 17)
_UCRED = struct.Struct("3i")


def _check_unix_peer(sock, display):
    """The daemon behind a unix socket must run as our uid or as root (SO_PEERCRED): anyone
    else could have put a socket at that path. Raises DaemonError before anything is sent."""
    try:
        _pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, _SO_PEERCRED, _UCRED.size))
    except (OSError, struct.error) as exc:
        raise _untrusted(display, "cannot tell who listens there (SO_PEERCRED: {})".format(_describe(exc)))
    mine = os.geteuid()
    if uid not in (mine, 0):
        raise _untrusted(
            display,
            "the socket is served by uid {}, not by this process's uid {} or root: start the "
            "daemon as your own user (`scry serve --daemon`), or point SCRY_DAEMON at your "
            "daemon".format(uid, mine),
        )


def is_loopback_host(host):
    """Whether ``host`` is a loopback address or ``localhost`` (then the link may stay plain)."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def _sockaddr_text(addr):
    """``ip:port`` (``[v6]:port``) with IPv4-mapped addresses as IPv4, as the daemon writes it."""
    host, port = addr[0], addr[1]
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
        mapped = getattr(ip, "ipv4_mapped", None)
        ip = mapped or ip
        host = str(ip)
        if ip.version == 6:
            return "[{}]:{}".format(host, port)
    except ValueError:
        pass
    return "{}:{}".format(host, port)


def _secure(sock, endpoint, deadline):
    """TLS off loopback; returns (socket, channel binding). Raises DaemonError.

    Off loopback the daemon's certificate is self-signed, so it is not checked against a CA:
    its SHA-256 is the channel binding of both proofs instead, which a man in the middle (who
    cannot present the daemon's certificate) cannot satisfy. On loopback the link stays plain
    and the binding is the connection's two ends, which a relay (two connections) cannot match.
    """
    if is_loopback_host(endpoint.host):
        binding = "tcp:{}>{}".format(_sockaddr_text(sock.getsockname()), _sockaddr_text(sock.getpeername()))
        return sock, binding
    import hashlib
    import ssl  # here, not at import: only links off loopback need it

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the proofs bind the certificate (see above)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        tls = context.wrap_socket(sock, server_hostname=None)
        der = tls.getpeercert(binary_form=True)
        tls.settimeout(SEND_TIMEOUT)
    except (OSError, ssl.SSLError) as exc:
        sock.close()
        raise DaemonError(
            "TLS with the daemon at {} failed ({}): agents off loopback connect with TLS; is it "
            "a scry daemon's TCP agent listener?".format(endpoint.display, _describe(exc))
        )
    if not der:
        tls.close()
        raise DaemonError("the daemon at {} presented no TLS certificate".format(endpoint.display))
    return tls, hashlib.sha256(der).hexdigest()


def _event_ok(event):
    """Cheap structural check of one report event (so one bad event cannot spoil a batch)."""
    if type(event) is str:  # already JSON text (the probe engine's)
        return True
    if type(event) is not dict:
        return False
    kind = event.get("kind")
    t = event.get("t")
    source = event.get("source")
    return (
        isinstance(kind, str)
        and isinstance(t, (int, float))
        and not isinstance(t, bool)
        and (source is None or isinstance(source, str))
    )


def _encodable(event):
    try:
        if type(event) is str:  # already JSON text (the probe engine's)
            event.encode("utf-8")
            return True
        _proto.encode(event)
        return True
    except (ValueError, TypeError, UnicodeError, RecursionError, OverflowError):
        return False


# -- the link ----------------------------------------------------------------------------------


class Link(object):
    """One wake: the connection (and reconnections) to one daemon address."""

    def __init__(
        self,
        url,
        token,
        token_hint,
        make_hello,
        register_timeout,
        on_daemon_sleep,
        home=None,
        engine=None,
        on_lost=None,
    ):
        self.url = url
        #: The probe engine (``_engine.Engine``) whose hits this link ships, or None.
        self.engine = engine
        self._address = parse_daemon_url(url)
        if self._address.scheme == "tcp":
            _need_token(self._address, token, token_hint)
        self._token = token
        self._token_hint = token_hint
        self._home = home
        self._make_hello = make_hello
        self._register_timeout = register_timeout
        self._on_daemon_sleep = on_daemon_sleep
        # None: reconnect with backoff when the connection drops. Else called instead (an
        # injected agent's nonce is single-use, so it cannot reconnect: it detaches).
        self._on_lost = on_lost

        # Read by status() from other threads; written by the link thread.
        self.connected = False
        self.session_id = None
        self.endpoint = None
        self.settings = dict(DEFAULT_SETTINGS)
        self.acked_seq = 0
        self.reports_sent = 0
        self.connections = 0

        self._sock = None
        self._reader = None
        self._pending_lines = []
        # Reports carry this stream id and a seq that goes on across reconnects: the daemon
        # stores each (stream, seq) once, so what it did not acknowledge is simply resent.
        self._stream = os.urandom(8).hex()
        self._seq = 0
        #: (seq, encoded report, events) sent and not acknowledged, oldest first.
        self._unacked = collections.deque()
        self._unacked_events = 0
        self.resent_reports = 0
        self._last_sent = 0.0
        self._stop = threading.Event()
        self._stop_reason = "sleep"
        self._sleep_requested = False
        self._thread = None
        self._pipe_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)

        self._buf = collections.deque()
        self._buf_lock = threading.Lock()
        # Messages other threads want sent (deferred replies, notifications): the link thread
        # owns the socket, so they wait here and a byte on the wake pipe makes it look.
        self._outbox = collections.deque()
        self._dropped = 0
        self._bad_events_logged = False
        #: Forwards the ``scry`` logger's records to the daemon while the link thread runs.
        self.log_forwarder = _logfwd.LogForwarder()

    # -- called by the state, under its lock ---------------------------------------------------

    def connect_first(self):
        """Connect and register in the caller's thread. Raises DaemonError/ConfigError; on failure
        every fd of the link is closed."""
        try:
            self._adopt(*self._open(wake=False))
        except BaseException:
            self._close_socket()
            self._close_pipe()
            raise

    def start(self):
        """Start the ``scry-link`` thread (RuntimeError when the process is out of threads)."""
        thread = threading.Thread(target=self._run, name="scry-link", daemon=True)
        log.addHandler(self.log_forwarder)
        try:
            thread.start()
        except BaseException:
            log.removeHandler(self.log_forwarder)
            raise
        self._thread = thread

    def stop(self, reason, timeout):
        """Ask the thread to flush, say goodbye and close; wait up to ``timeout``. Idempotent.

        Returns True when everything of ours is closed.
        """
        self._stop_reason = reason
        self._stop.set()
        with self._pipe_lock:
            if self._wake_w is not None:
                try:
                    os.write(self._wake_w, b"x")
                except OSError:
                    pass
        thread = self._thread
        if thread is None:  # never started: we own the fds
            self._close_socket(goodbye=True)
            self._close_pipe()
            return True
        if thread is threading.current_thread():
            return False
        thread.join(timeout)
        if thread.is_alive():
            log.warning(
                "the scry-link thread did not stop within %g s; it will close its connection "
                "when its current operation times out",
                timeout,
            )
            return False
        return True

    def close_in_child(self):
        """After fork, in the child: close our copies of the fds (never shutdown(), which would
        cut the parent's connection). Takes no lock: another thread may have held one at fork."""
        self._thread = None
        try:
            log.removeHandler(self.log_forwarder)
        except Exception:
            pass
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
        fds = (self._wake_r, self._wake_w)
        self._wake_r = self._wake_w = None
        for fd in fds:
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def send_message(self, msg):
        """Send a protocol message (a reply, a ``notify``) from any thread; never raises.

        On the link thread it goes out at once; from another thread it is queued and the link
        thread woken. Returns False when there is no connection to send it on (it is dropped:
        a reply to a request of a connection that is gone means nothing on the next one).
        """
        if not self.connected:
            return False
        thread = self._thread
        if thread is not None and thread is threading.current_thread():
            try:
                self._send(msg)
                return True
            except OSError:
                return False
        self._outbox.append(msg)
        with self._pipe_lock:
            if self._wake_w is not None:
                try:
                    os.write(self._wake_w, b"n")
                except OSError:
                    pass  # the pipe is full: the thread is already due to look
        return True

    def notify(self, topic, data=None):
        """Send a ``notify`` message to the daemon (any thread)."""
        return self.send_message(_proto.notify(topic, data))

    def _send_outbox(self):
        while self._outbox:
            try:
                msg = self._outbox.popleft()
            except IndexError:
                return
            self._send(msg)

    def send_report(self, events, dropped=0):
        """Queue events for the next report; thread-safe, never waits on I/O.

        ``dropped`` counts hits the caller already dropped. When the buffer is full the excess is
        counted as dropped. Returns False when something was dropped here.
        """
        with self._buf_lock:
            if dropped:
                self._dropped += dropped
            room = BUFFER_CAPACITY - len(self._buf)
            count = len(events)
            if count <= room:
                self._buf.extend(events)
                return True
            if room > 0:
                self._buf.extend(events[:room])
            self._dropped += count - max(room, 0)
            return False

    def discard_buffer(self):
        """Drop the events not shipped yet (detach: the user stopped looking; a busy probe's
        backlog must not hold the process's GIL-starved link thread for seconds)."""
        with self._buf_lock:
            self._buf.clear()

    # -- connection management ------------------------------------------------------------------

    def _open(self, wake=True):
        """Resolve, connect, hello, welcome. Returns (sock, reader, welcome, pending lines)."""
        wake_fd = self._wake_r if wake else None
        deadline = time.monotonic() + self._register_timeout
        endpoint = resolve_endpoint(self._address, self._token, self._token_hint, self._register_timeout)
        sock = _connect(endpoint, deadline, wake_fd, self._home)
        try:
            self._sock = sock
            proof = None
            if endpoint.scheme == "unix":
                _check_unix_peer(sock, endpoint.display)
            else:
                sock, binding = _secure(sock, endpoint, deadline)
                self._sock = sock
            lines = _Lines(sock, deadline, wake_fd, endpoint.display)
            if endpoint.scheme != "unix":
                proof = _authenticate(sock, lines, self._token, binding, endpoint.display)
            hello = self._make_hello(proof)
            welcome, reader, rest = _handshake(sock, hello, lines, endpoint.display)
        except BaseException:
            self._sock = None
            sock.close()
            raise
        self.endpoint = endpoint.display
        return sock, reader, welcome, rest

    def _adopt(self, sock, reader, welcome, rest):
        settings = welcome["settings"]
        self.settings = {
            "flush_interval_ms": max(1, settings["flush_interval_ms"]),
            "max_batch": max(1, settings["max_batch"]),
            "heartbeat_ms": max(10, settings["heartbeat_ms"]),
        }
        self._sock = sock
        self._reader = reader
        self._pending_lines = list(rest)
        self._last_sent = time.monotonic()
        self.session_id = welcome["session_id"]
        self.connections += 1
        self.connected = True
        log.debug("connected to the daemon at %s (session %s)", self.endpoint, self.session_id)

    def _run(self):
        self.log_forwarder.skip_thread = threading.get_ident()
        try:
            while not self._stop.is_set():
                if self._sock is not None:
                    self._serve()
                if self._stop.is_set():
                    break
                self._lost()
                if self._sleep_requested:
                    self._stop.wait()
                    break
                if self._on_lost is not None:
                    self._on_lost(self)
                    self._stop.wait()
                    break
                if not self._reconnect():
                    break
        except BaseException as exc:  # never let the thread die with a traceback on stderr
            log.warning("the scry-link thread failed: %r", exc)
        finally:
            try:
                _trace.link_closed(self)
            except Exception:
                pass
            log.removeHandler(self.log_forwarder)
            self._close_socket(goodbye=True)
            self._close_pipe()

    def _drain_wake_pipe(self):
        with self._pipe_lock:
            fd = self._wake_r
            if fd is None:
                return
            os.set_blocking(fd, False)
            try:
                while os.read(fd, 4096):
                    pass
            except OSError:
                pass
            finally:
                os.set_blocking(fd, True)

    def _lost(self):
        was_connected = self.connected
        self._close_socket()
        # What was queued for the old connection means nothing on the next one.
        self._outbox.clear()
        if not self._stop.is_set():
            self._drain_wake_pipe()
        if was_connected and not self._sleep_requested:
            log.warning("lost the connection to the scry daemon at %s; reconnecting", self.endpoint)

    def _reconnect(self):
        delay = BACKOFF_START
        while True:
            if self._stop.wait(delay):
                return False
            try:
                opened = self._open()
            except _Stopped:
                if self._stop.is_set():
                    return False
                # Only a late nudge from send_message: forget it and try again.
                self._drain_wake_pipe()
                continue
            except ScryError as exc:
                log.debug("reconnecting to %s failed: %s", self.url, exc)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            except Exception as exc:
                log.debug("reconnecting to %s failed: %r", self.url, exc)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            self._adopt(*opened)
            if self._stop.is_set():
                return False  # _run's cleanup says goodbye on the new connection
            log.info("reconnected to the scry daemon at %s (session %s)", self.endpoint, self.session_id)
            return True

    def _close_socket(self, goodbye=False):
        sock = self._sock
        self._sock = None
        was_connected = self.connected
        self.connected = False
        self.session_id = None
        if sock is None:
            return
        try:
            if goodbye and was_connected:
                self._sock = sock
                try:
                    self._send_outbox()
                    self._pump()
                    self._flush()
                    self._send(_proto.goodbye(self._stop_reason))
                finally:
                    self._sock = None
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        try:
            sock.close()
        except OSError:
            pass

    def _close_pipe(self):
        with self._pipe_lock:
            fds = (self._wake_r, self._wake_w)
            self._wake_r = self._wake_w = None
        for fd in fds:
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass

    # -- serving one connection -----------------------------------------------------------------

    def _serve(self):
        """Serve the current connection until it drops or the link is stopped."""
        sock = self._sock
        poller = select.poll()
        poller.register(sock, _POLL_IN)
        poller.register(self._wake_r, select.POLLIN)
        last_flush = time.monotonic()
        try:
            lines, self._pending_lines = self._pending_lines, []
            for line in lines:
                self._handle(line)
            self._resend_unacked()
            while not self._stop.is_set():
                now = time.monotonic()
                flush_every = self.settings["flush_interval_ms"] / 1000.0
                heartbeat_every = self.settings["heartbeat_ms"] / 1000.0
                timeout = min(last_flush + flush_every, self._last_sent + heartbeat_every) - now
                events = poller.poll(max(0, int(timeout * 1000) + 1))
                for fd, event in events:
                    if fd == self._wake_r:
                        try:
                            os.read(self._wake_r, 4096)
                        except OSError:
                            pass
                        if self._stop.is_set():
                            return
                        continue
                    if event & _POLL_IN or event & _POLL_DONE:
                        if not self._receive(sock):
                            return
                self._send_outbox()
                now = time.monotonic()
                if now >= last_flush + flush_every:
                    self._pump()
                    self._flush()
                    last_flush = now
                    # Hits still waiting by the batch: a hot line fills the buffer faster than
                    # one flush per interval empties it, so keep draining without sleeping
                    # (the poll above still serves the daemon in between).
                    if len(_hit.BUFFER) >= self.settings["max_batch"] or len(_trace.BUFFER) >= 64 * _trace.RECORDS_PER_EVENT:
                        last_flush = now - flush_every
                if now - self._last_sent >= heartbeat_every:
                    self._send(_proto.heartbeat())
        except OSError as exc:
            if not self._stop.is_set():
                log.debug("connection to %s failed: %s", self.endpoint, _describe(exc))

    def _receive(self, sock):
        """Read what is there and handle complete lines; False when the connection is over."""
        try:
            data = sock.recv(RECV_SIZE)
            # TLS: what is decrypted already is not seen by poll(); take it now.
            pending = getattr(sock, "pending", None)
            while data and pending is not None and pending():
                data += sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError, socket.timeout):
            return True
        if not data:
            return False
        try:
            lines = self._reader.feed(data)
        except _proto.ProtocolError as exc:
            log.warning("the scry daemon sent a line over the size limit; closing the connection")
            self._send(_proto.error(exc.kind, exc.message))
            return False
        for line in lines:
            self._handle(line)
        return True

    def _handle(self, line):
        try:
            msg = _proto.decode(line, _proto.DAEMON_TYPES)
        except _proto.ProtocolError as exc:
            log.warning("the scry daemon sent a bad message (%s): %s", exc.kind, exc.message)
            self._send(_proto.error(exc.kind, exc.message, exc.in_reply_to))
            return
        kind = msg["type"]
        if kind == "ping":
            self._send(_proto.reply_ok(msg["id"]))
        elif kind == "sleep":
            self._send(_proto.reply_ok(msg["id"]))
            if not self._sleep_requested:
                self._sleep_requested = True
                try:
                    self._on_daemon_sleep(self)
                except Exception as exc:
                    log.warning("could not go to sleep as the daemon asked: %r", exc)
                    self._stop.set()
        elif kind == "probes_sync":
            self._send(self._sync_probes(msg))
        elif kind == "call":
            _calls.dispatch_call(msg, self)
        elif kind == "notify":
            _calls.dispatch_notify(msg, self)
        elif kind == "ack":
            # Cumulative: the daemon stores a connection's reports in order.
            seq = msg["seq"]
            if seq > self.acked_seq:
                self.acked_seq = seq
            unacked = self._unacked
            while unacked and unacked[0][0] <= seq:
                self._unacked_events -= unacked.popleft()[2]
        elif kind == "reply":
            log.debug("reply from the daemon to a request we did not send: %r", msg.get("id"))
        elif kind == "error":
            log.warning("the scry daemon could not process a message: %s: %s", msg["kind"], msg["message"])
        else:  # welcome, refused: valid, but not after the handshake
            self._send(
                _proto.error("unexpected", "`{}` after the handshake".format(kind), msg.get("id"))
            )

    def _sync_probes(self, msg):
        engine = self.engine
        if engine is None:
            return _proto.reply_error(
                msg["id"], "unsupported", "this agent (scry {}) has no probe engine".format(__version__)
            )
        try:
            statuses = engine.sync(msg["probes"])
        except Exception as exc:
            if type(exc).__name__ == "EngineClosed":
                return _proto.reply_error(msg["id"], "unavailable", "the agent is going to sleep")
            log.warning("probes_sync failed: %r", exc)
            return _proto.reply_error(msg["id"], "internal", "the probe engine failed: {!r}".format(exc))
        return _proto.reply_ok(msg["id"], {"statuses": statuses})

    def _pump(self):
        """Move the forwarded log records and the probe engine's hits into the report buffer;
        send due probe statuses."""
        with self._buf_lock:
            room = BUFFER_CAPACITY - len(self._buf)
        records, lost = self.log_forwarder.drain(max(0, room))
        if records or lost:
            self.send_report(records, lost)
        try:
            traced = _trace.pump(self, 64)
        except Exception as exc:
            log.warning("could not collect trace events: %r", exc)
            traced = None
        if traced:
            self.send_report(traced)
        engine = self.engine
        if engine is None:
            return
        with self._buf_lock:
            room = BUFFER_CAPACITY - len(self._buf)
        limit = min(room, self.settings["max_batch"] * MAX_REPORTS_PER_FLUSH)
        try:
            events, lost, statuses = engine.collect(max(0, limit))
        except Exception as exc:
            log.warning("could not collect probe hits: %r", exc)
            return
        if events or lost:
            self.send_report(events, lost)
        if statuses:
            self._send(_proto.probe_status(statuses))

    def _send(self, msg):
        self._send_bytes(_proto.encode(msg))

    def _send_bytes(self, data):
        _send_all(self._sock, data)
        self._last_sent = time.monotonic()

    # -- reports ----------------------------------------------------------------------------------

    def _flush(self):
        """Send what the buffer holds, in reports of at most ``max_batch`` events, all in one
        write: every send releases the GIL, and a program spinning on it keeps it for a whole
        switch interval (5 ms) before this thread gets it back, so one write per flush rather
        than one per report is what lets a busy process ship its hits."""
        max_batch = self.settings["max_batch"]
        window = UNACKED_REPORTS * max_batch
        chunks = []
        taken = 0
        try:
            for _ in range(MAX_REPORTS_PER_FLUSH):
                if self._unacked_events >= window:
                    break  # wait for acks: the daemon is behind
                with self._buf_lock:
                    count = min(len(self._buf), max_batch)
                    batch = [self._buf.popleft() for _ in range(count)]
                    dropped = self._dropped
                    self._dropped = 0
                if not batch and not dropped:
                    break
                taken = len(batch) + dropped
                self._encode_report(batch, dropped, chunks)
                taken = 0
                if count < max_batch:
                    break
            if chunks:
                self._send_bytes(b"".join(chunks) if len(chunks) > 1 else chunks[0])
        except BaseException:
            if taken:  # taken from the buffer but not encoded: say so next time
                with self._buf_lock:
                    self._dropped += taken
            # Encoded reports are in _unacked: resent after the reconnect.
            raise

    def _encode_report(self, batch, dropped, chunks):
        """Append the encoded report(s) of ``batch`` to ``chunks`` (split in two while over the
        line limit)."""
        good = [event for event in batch if _event_ok(event)]
        if len(good) != len(batch):
            dropped += len(batch) - len(good)
            self._log_bad_events("an event is not an object with a string `kind` and a number `t`")
        try:
            data = _proto.encode_report(self._seq + 1, good, dropped, self._stream)
        except (ValueError, TypeError, UnicodeError, RecursionError, OverflowError):
            kept = [event for event in good if _encodable(event)]
            dropped += len(good) - len(kept)
            good = kept
            self._log_bad_events("an event cannot be encoded as JSON")
            data = _proto.encode_report(self._seq + 1, good, dropped, self._stream)
        if len(data) - 1 > _proto.MAX_LINE_BYTES:
            if len(good) > 1:
                half = len(good) // 2
                self._encode_report(good[:half], dropped, chunks)
                self._encode_report(good[half:], 0, chunks)
                return
            self._log_bad_events("an event is larger than the 16 MiB line limit")
            dropped += len(good)
            good = []
            data = _proto.encode_report(self._seq + 1, [], dropped, self._stream)
        chunks.append(data)
        self._seq += 1
        self.reports_sent += 1
        # Kept until acknowledged (dropped counts too: they are part of the accounting).
        self._unacked.append((self._seq, data, len(good) + dropped))
        self._unacked_events += len(good) + dropped

    def _resend_unacked(self):
        """After a reconnect: send again what the daemon did not acknowledge, in order (it
        stores each report once, so one it did store before is only acknowledged)."""
        if not self._unacked:
            return
        self.resent_reports += len(self._unacked)
        log.debug("resending %d unacknowledged reports", len(self._unacked))
        self._send_bytes(b"".join(data for _seq, data, _n in self._unacked))

    @property
    def unacked_events(self):
        """Events (and dropped counts) sent and not acknowledged yet."""
        return self._unacked_events

    def _log_bad_events(self, why):
        if not self._bad_events_logged:
            self._bad_events_logged = True
            log.warning("dropping events that cannot be shipped (%s); they are counted as dropped", why)

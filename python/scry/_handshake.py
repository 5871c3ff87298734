"""Opening a connection to the daemon: connect, check who is there, TLS, auth, hello.

The link calls these in order for each connection (``Link._open``): :func:`connect` to the
endpoint, then on a unix socket :func:`check_unix_peer`, on TCP :func:`secure` and
:func:`authenticate`, and :func:`exchange_hello` last. Each step raises ``DaemonError`` with what
to do about it, or :class:`Stopped` when the link's wake-up fd fires while it waits; every wait is
bounded by the register timeout's deadline. :class:`Lines` reads the daemon's answers during the
handshake; the :class:`LineReader` it ends with goes on splitting lines for the link thread.

Whom the agent talks to (docs/protocol.md, "Handshake"): on a unix socket only a daemon of its
own uid or root (``SO_PEERCRED``, checked before anything is sent); on TCP only a daemon that
proves it holds the token (``auth`` / ``challenge``, HMAC over both nonces and a channel
binding), and only then ``hello`` with the agent's own proof; TLS when the daemon is not on
loopback. The token itself is never sent.

Not for: the connection once it is registered (reports, requests, heartbeats, reconnecting:
``_link``), or finding the endpoint (``_address``).
"""

import collections
import errno
import hmac
import ipaddress
import logging
import os
import select
import socket
import struct
import time

from . import _proto
from ._errors import DaemonError, describe, how_to_get_scry

log = logging.getLogger("scry")

#: How long one write to the daemon may block before the connection is considered dead.
SEND_TIMEOUT = 10.0
RECV_SIZE = 65536

_MSG_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)
POLL_IN = select.POLLIN | select.POLLPRI


class Stopped(Exception):
    """The link was stopped while connecting."""


def _wait(poller, deadline, wake_fd):
    """poll() until an event or the deadline; raises Stopped when the wake fd fires."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return []
    events = poller.poll(max(1, int(remaining * 1000)))
    if wake_fd is not None and any(fd == wake_fd for fd, _ in events):
        raise Stopped()
    return events


def connect(endpoint, deadline, wake_fd, hint_home):
    """A connected socket (blocking, with SEND_TIMEOUT). Raises DaemonError or Stopped."""
    if endpoint.scheme == "unix":
        families = [(socket.AF_UNIX, endpoint.path)]
    else:
        try:
            infos = socket.getaddrinfo(endpoint.host, endpoint.port, 0, socket.SOCK_STREAM)
        except OSError as exc:
            raise DaemonError("cannot resolve the daemon host in {}: {}".format(endpoint.display, describe(exc)))
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
        except Stopped:
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
            "/ daemon_url= at a running one{}".format(endpoint.display, extra, how_to_get_scry())
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
    raise DaemonError("cannot connect to the scry daemon at {}: {}".format(endpoint.display, describe(last)))


class LineReader(object):
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


class Lines(object):
    """Reads whole lines from the daemon during the handshake (a TLS socket may hold decrypted
    bytes that poll() does not see, so those are drained first)."""

    def __init__(self, sock, deadline, wake_fd, display):
        self.sock = sock
        self.reader = LineReader()
        self.queue = collections.deque()
        self.deadline = deadline
        self.wake_fd = wake_fd
        self.display = display
        self.poller = select.poll()
        self.poller.register(sock, POLL_IN)
        if wake_fd is not None:
            self.poller.register(wake_fd, select.POLLIN)

    def next(self, what):
        """The next line; raises DaemonError (timeout, close, bad data) or Stopped."""
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
                        self.display, describe(exc)
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


def send_all(sock, data):
    """Send all of ``data`` (MSG_NOSIGNAL on plain sockets; a TLS socket takes no flags).

    Not ``sendall()``: its timeout bounds the whole write, so a daemon that is slow but reading
    (30 agents sharing it, its store behind) looked dead after SEND_TIMEOUT and lost the link.
    Here the socket timeout bounds each send, i.e. the time without any progress."""
    tls = getattr(sock, "pending", None) is not None
    view = memoryview(data)
    while view:
        sent = sock.send(view) if tls else sock.send(view, _MSG_NOSIGNAL)
        view = view[sent:]


def authenticate(sock, lines, token, binding, display):
    """The agent's half of the TCP handshake: ``auth``, check the daemon's ``challenge``, and
    return our proof for ``hello``. Nothing about this process is sent before the daemon has
    proved that it holds the token. Raises DaemonError or Stopped."""
    agent_nonce = os.urandom(32).hex()
    try:
        send_all(sock, _proto.encode(_proto.auth(agent_nonce)))
    except OSError as exc:
        raise DaemonError("the daemon at {} closed the connection during auth: {}".format(display, describe(exc)))
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


def exchange_hello(sock, hello, lines, display):
    """Send hello, wait for welcome. Returns (welcome, reader, rest). Raises DaemonError or Stopped."""
    try:
        send_all(sock, _proto.encode(hello))
    except OSError as exc:
        raise DaemonError("the daemon at {} closed the connection during hello: {}".format(display, describe(exc)))
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


def check_unix_peer(sock, display):
    """The daemon behind a unix socket must run as our uid or as root (SO_PEERCRED): anyone
    else could have put a socket at that path. Raises DaemonError before anything is sent."""
    try:
        _pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, _SO_PEERCRED, _UCRED.size))
    except (OSError, struct.error) as exc:
        raise _untrusted(display, "cannot tell who listens there (SO_PEERCRED: {})".format(describe(exc)))
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


def secure(sock, endpoint, deadline):
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
            "a scry daemon's TCP agent listener?".format(endpoint.display, describe(exc))
        )
    if not der:
        tls.close()
        raise DaemonError("the daemon at {} presented no TLS certificate".format(endpoint.display))
    return tls, hashlib.sha256(der).hexdigest()

"""The link thread: one wake's connection to the daemon, its reports, and the daemon's requests.

One :class:`Link` exists per wake. ``connect_first()`` runs in the caller's thread and raises if
the daemon cannot be reached or refuses us; then the ``scry-link`` daemon thread owns the
connection: it answers the daemon's requests, flushes the report buffer every
``settings.flush_interval_ms``, sends ``heartbeat`` after ``settings.heartbeat_ms`` of silence and,
when the connection drops, reconnects with backoff (0.1 s doubling to 2 s) for as long as the
link is not stopped.

What goes into the report buffer comes from the producers registered in ``_producers`` (probe
hits, trace events, forwarded log records): each flush the link drains each of them, knowing none
by name, and whoever holds the link may queue events too (``send_report``). Reports carry a seq
and are kept until the daemon acknowledges them, to be resent after a reconnect.

Ownership, so that no fd is ever closed under another thread's feet: once started, only the link
thread reads, writes and closes the socket; ``stop()`` only sets a flag and writes one byte to the
link's wake-up pipe, which the thread polls together with the socket. The thread closes the
socket and the pipe when it ends.

Not for: where the daemon is (``_address``) or how a connection is opened and trusted
(``_handshake``); what the daemon's ``call`` and ``notify`` messages do (``_calls``).
"""

import collections
import logging
import os
import select
import socket
import threading
import time

from . import _calls, _producers, _proto
from ._address import need_token, parse_daemon_url, resolve_endpoint
from ._errors import ScryError, describe
from ._handshake import (
    POLL_IN,
    RECV_SIZE,
    Lines,
    Stopped,
    authenticate,
    check_unix_peer,
    connect,
    exchange_hello,
    secure,
    send_all,
)
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
_POLL_DONE = select.POLLHUP | select.POLLERR | select.POLLNVAL


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
            need_token(self._address, token, token_hint)
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
        #: What this link drains into its reports each flush (``_producers``), in drain order.
        self._producers = _producers.for_link(self)

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
        for producer in self._producers:
            producer.before_start()
        try:
            thread.start()
        except BaseException:
            self._close_producers()
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
        for producer in self._producers:
            try:
                producer.link_closed_in_child()
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
        sock = connect(endpoint, deadline, wake_fd, self._home)
        try:
            self._sock = sock
            proof = None
            if endpoint.scheme == "unix":
                check_unix_peer(sock, endpoint.display)
            else:
                sock, binding = secure(sock, endpoint, deadline)
                self._sock = sock
            lines = Lines(sock, deadline, wake_fd, endpoint.display)
            if endpoint.scheme != "unix":
                proof = authenticate(sock, lines, self._token, binding, endpoint.display)
            hello = self._make_hello(proof)
            welcome, reader, rest = exchange_hello(sock, hello, lines, endpoint.display)
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
        try:
            for producer in self._producers:
                producer.on_link_thread()
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
            self._close_producers()
            self._close_socket(goodbye=True)
            self._close_pipe()

    def _close_producers(self):
        """Tell every producer the link is done; one that fails does not keep the others open."""
        for producer in self._producers:
            try:
                producer.link_closed()
            except Exception:
                pass

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
            except Stopped:
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
        poller.register(sock, POLL_IN)
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
                    if event & POLL_IN or event & _POLL_DONE:
                        if not self._receive(sock):
                            return
                self._send_outbox()
                now = time.monotonic()
                if now >= last_flush + flush_every:
                    self._pump()
                    self._flush()
                    last_flush = now
                    # A producer still holds more than one drain takes (a hot line's hits): keep
                    # draining without sleeping (the poll above still serves the daemon in
                    # between).
                    max_batch = self.settings["max_batch"]
                    if any(producer.backlog(max_batch) for producer in self._producers):
                        last_flush = now - flush_every
                if now - self._last_sent >= heartbeat_every:
                    self._send(_proto.heartbeat())
        except OSError as exc:
            if not self._stop.is_set():
                log.debug("connection to %s failed: %s", self.endpoint, describe(exc))

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
        """Move what each producer holds (forwarded log records, trace events, probe hits) into
        the report buffer, in drain order; send the messages they hand over (probe statuses)."""
        flush_max = self.settings["max_batch"] * MAX_REPORTS_PER_FLUSH
        for producer in self._producers:
            with self._buf_lock:
                room = BUFFER_CAPACITY - len(self._buf)
            try:
                events, dropped, messages = producer.drain(max(0, room), flush_max)
            except Exception as exc:
                log.warning("could not collect %s: %r", producer.what, exc)
                continue
            if events or dropped:
                self.send_report(events, dropped)
            for msg in messages:
                self._send(msg)

    def _send(self, msg):
        self._send_bytes(_proto.encode(msg))

    def _send_bytes(self, data):
        send_all(self._sock, data)
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


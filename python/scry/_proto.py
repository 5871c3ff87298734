"""The agent <-> daemon wire protocol: message schemas, validation, encode and decode.

This mirrors ``crates/scry-proto`` (the single source of truth for field names, documented in
``docs/protocol.md``): one JSON object per line, each with a string ``type``. Decoding checks the
required fields and their types per message type, like serde does on the Rust side: integers
must be JSON integers in the Rust type's range, unknown fields are ignored, an ``Option`` field
may be absent or null. A bad line raises :class:`ProtocolError` whose ``kind`` is what goes back
to the peer (``malformed``, ``unknown_type``, ``too_large``).

No I/O here: the link (``_link.py``) owns the socket.
"""

import hashlib
import hmac
import json

PROTOCOL_VERSION = 1
ACCEPTED_PROTOCOLS = (1,)
#: The longest line either side accepts, in bytes (16 MiB).
MAX_LINE_BYTES = 16 * 1024 * 1024

ORIGINS = ("embedded", "injected", "run")
ERROR_KINDS = ("malformed", "unknown_type", "unexpected", "too_large", "internal")

#: Types an agent sends; the daemon decodes these.
AGENT_TYPES = (
    "auth", "hello", "reply", "report", "heartbeat", "goodbye", "error", "probe_status", "notify",
)
#: Types the daemon sends; the agent decodes these.
DAEMON_TYPES = (
    "challenge", "welcome", "refused", "ping", "sleep", "reply", "ack", "error", "probes_sync", "call", "notify",
)
ALL_TYPES = tuple(sorted(set(AGENT_TYPES) | set(DAEMON_TYPES)))

_U16 = 2 ** 16 - 1
_U32 = 2 ** 32 - 1
_U64 = 2 ** 64 - 1


class ProtocolError(Exception):
    """A line that cannot be decoded; ``kind`` is sent back in an ``error`` message."""

    def __init__(self, kind, message, in_reply_to=None):
        Exception.__init__(self, "{}: {}".format(kind, message))
        self.kind = kind
        self.message = message
        #: The request id when it could be read from the bad message (for ``in_reply_to``).
        self.in_reply_to = in_reply_to


class _Bad(Exception):
    """A field failed its check; the message names what was expected."""


# -- field checkers: each takes a value and raises _Bad when it does not fit -------------------


def _uint(limit, label):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
            raise _Bad("must be {}".format(label))

    return check


_u16 = _uint(_U16, "an integer in 0..65535")
_u32 = _uint(_U32, "an integer in 0..4294967295")
_u64 = _uint(_U64, "a non-negative integer")


def _str(value):
    if not isinstance(value, str):
        raise _Bad("must be a string")


def _bool(value):
    if not isinstance(value, bool):
        raise _Bad("must be true or false")


def _f64(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad("must be a number")


def _any(value):
    pass


def _nullable(check):
    def nullable(value):
        if value is not None:
            check(value)

    return nullable


def _list_of(check):
    def list_of(value):
        if not isinstance(value, list):
            raise _Bad("must be an array")
        for i, item in enumerate(value):
            try:
                check(item)
            except _Bad as exc:
                raise _Bad("[{}] {}".format(i, exc))

    return list_of


def _one_of(values):
    def one_of(value):
        if not isinstance(value, str) or value not in values:
            raise _Bad("must be one of {}".format(", ".join(values)))

    return one_of


def _struct(fields):
    def struct(value):
        if not isinstance(value, dict):
            raise _Bad("must be an object")
        _check_fields(value, fields)

    return struct


def _tagged(tag, variants):
    """An internally tagged enum (``#[serde(tag = "...")]``): ``variants`` maps tag -> fields."""

    def tagged(value):
        if not isinstance(value, dict):
            raise _Bad("must be an object")
        if tag not in value:
            raise _Bad("missing field `{}`".format(tag))
        name = value[tag]
        if not isinstance(name, str) or name not in variants:
            raise _Bad("field `{}` must be one of {}".format(tag, ", ".join(sorted(variants))))
        _check_fields(value, variants[name])

    return tagged


def _check_fields(obj, fields):
    for name, check, required in fields:
        if name not in obj:
            if required:
                raise _Bad("missing field `{}`".format(name))
            continue
        try:
            check(obj[name])
        except _Bad as exc:
            text = str(exc)
            sep = "" if text.startswith(("[", ".")) else " "
            raise _Bad("field `{}`{}{}".format(name, sep, text))


# (name, checker, required). `Option<T>` fields are optional and nullable; `#[serde(default)]`
# fields that are not options are optional but not nullable.
_PYTHON = [
    ("version", _str, True),
    ("implementation", _str, True),
    ("executable", _str, True),
    ("free_threaded", _bool, False),
]
_CONTROL = [
    ("host", _nullable(_str), False),
    ("port", _nullable(_u16), False),
    ("socket", _nullable(_str), False),
]
_SETTINGS = [
    ("flush_interval_ms", _u64, True),
    ("max_batch", _u64, True),
    ("heartbeat_ms", _u64, True),
]
_EVENT = [
    ("kind", _str, True),
    ("t", _f64, True),
    ("source", _nullable(_str), False),
    ("data", _any, False),
]
_REPLY_ERROR = [("kind", _str, True), ("message", _str, True)]
_RATE = _tagged(
    "mode",
    {
        "every": [],
        "sample": [("n", _u64, True)],
        "rate": [("per_second", _f64, True)],
        "first": [("n", _u64, True)],
    },
)
_CAPTURE = [("stack", _bool, False), ("locals", _bool, False), ("repr", _bool, False)]
_LIMITS = [("depth", _u32, True), ("items", _u32, True), ("string", _u32, True)]
_PROBE_SPEC = [
    ("id", _str, True),
    ("name", _nullable(_str), False),
    ("location", _str, True),
    ("expressions", _list_of(_str), True),
    ("condition", _nullable(_str), False),
    ("capture", _struct(_CAPTURE), False),
    ("rate", _RATE, False),
    ("expires_at", _nullable(_f64), False),
    ("unsafe", _bool, False),
    ("limits", _struct(_LIMITS), False),
]
PROBE_STATES = ("pending", "armed", "error", "expired")
_PROBE_STATUS = [
    ("probe", _str, True),
    ("state", _one_of(PROBE_STATES), True),
    ("file", _nullable(_str), False),
    ("line", _nullable(_u32), False),
    ("requested_line", _nullable(_u32), False),
    ("function", _nullable(_str), False),
    ("reason", _nullable(_str), False),
    ("error_kind", _nullable(_str), False),
    ("hits", _u64, False),
    ("recorded", _u64, False),
    ("dropped", _u64, False),
    ("errors", _u64, False),
]

SCHEMAS = {
    "hello": [
        ("protocol", _u32, True),
        ("agent_version", _str, True),
        ("pid", _u32, True),
        ("ppid", _u32, True),
        ("host", _str, True),
        ("name", _nullable(_str), False),
        ("origin", _one_of(ORIGINS), True),
        ("python", _struct(_PYTHON), True),
        ("argv", _list_of(_str), True),
        ("cwd", _str, True),
        ("started_at", _f64, True),
        ("capabilities", _list_of(_str), False),
        ("control", _nullable(_struct(_CONTROL)), False),
        ("nonce", _nullable(_str), False),
        ("proof", _nullable(_str), False),
    ],
    "auth": [("nonce", _str, True)],
    "challenge": [("nonce", _str, True), ("proof", _str, True)],
    "welcome": [
        ("protocol", _u32, True),
        ("daemon_version", _str, True),
        ("session_id", _str, True),
        ("settings", _struct(_SETTINGS), True),
    ],
    "refused": [("reason", _str, True), ("accepted_protocols", _list_of(_u32), True)],
    "ping": [("id", _u64, True)],
    "sleep": [("id", _u64, True)],
    "reply": [
        ("id", _u64, True),
        ("ok", _bool, True),
        ("result", _any, False),
        ("error", _nullable(_struct(_REPLY_ERROR)), False),
    ],
    "ack": [("seq", _u64, True)],
    "report": [
        ("seq", _u64, True),
        ("events", _list_of(_struct(_EVENT)), True),
        ("dropped", _u64, False),
        ("stream", _str, False),
    ],
    "heartbeat": [],
    "goodbye": [("reason", _nullable(_str), False)],
    "error": [
        ("kind", _one_of(ERROR_KINDS), True),
        ("message", _str, True),
        ("in_reply_to", _nullable(_u64), False),
    ],
    "probes_sync": [("id", _u64, True), ("probes", _list_of(_struct(_PROBE_SPEC)), True)],
    "probe_status": [("statuses", _list_of(_struct(_PROBE_STATUS)), True)],
    "call": [("id", _u64, True), ("method", _str, True), ("params", _any, False)],
    "notify": [("topic", _str, True), ("data", _any, False)],
}


def _reject_constant(name):
    # Python's json accepts NaN and Infinity; JSON (and serde_json) do not.
    raise ValueError("{} is not valid JSON".format(name))


def decode(line, types=ALL_TYPES):
    """Decode and validate one line (str or bytes, with or without its newline) into a dict.

    ``types`` are the message types the receiver knows (``DAEMON_TYPES`` for the agent); any
    other type is ``unknown_type``. Raises :class:`ProtocolError`.
    """
    size = len(line)
    if isinstance(line, str) and size * 4 > MAX_LINE_BYTES:
        size = len(line.encode("utf-8", "surrogatepass"))
    if size > MAX_LINE_BYTES:
        raise ProtocolError(
            "too_large", "message of {} bytes is over the limit of {}".format(size, MAX_LINE_BYTES)
        )
    if isinstance(line, (bytes, bytearray, memoryview)):
        try:
            line = bytes(line).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError("malformed", "not valid UTF-8: {}".format(exc))
    line = line.rstrip("\r\n")
    try:
        obj = json.loads(line, parse_constant=_reject_constant)
    except ValueError as exc:
        raise ProtocolError("malformed", "not valid JSON: {}".format(exc))
    if not isinstance(obj, dict):
        raise ProtocolError("malformed", "a message must be a JSON object")
    msg_id = obj.get("id")
    if isinstance(msg_id, bool) or not isinstance(msg_id, int) or not 0 <= msg_id <= _U64:
        msg_id = None
    if "type" not in obj:
        raise ProtocolError("malformed", "missing field `type`", msg_id)
    msg_type = obj["type"]
    if not isinstance(msg_type, str):
        raise ProtocolError("malformed", "field `type` must be a string", msg_id)
    if msg_type not in types or msg_type not in SCHEMAS:
        raise ProtocolError("unknown_type", "unknown message type `{}`".format(msg_type), msg_id)
    try:
        _check_fields(obj, SCHEMAS[msg_type])
    except _Bad as exc:
        raise ProtocolError("malformed", "bad `{}` message: {}".format(msg_type, exc), msg_id)
    return obj


def encode_report(seq, events, dropped, stream=None):
    """A ``report`` line, like ``encode(report(...))``, except that an event may also be a ``str``:
    the event already encoded as JSON text (the probe engine makes those: strings cost the garbage
    collector nothing, and most of each one's text is made once per probe and line).

    Raises like :func:`encode` (UnicodeError for text that is not valid UTF-8, e.g. a lone
    surrogate).
    """
    parts = []
    for event in events:
        if type(event) is str:
            parts.append(event)
        else:
            parts.append(json.dumps(event, ensure_ascii=False, separators=(",", ":"), allow_nan=False))
    if stream is None:
        text = '{"type":"report","seq":%d,"events":[%s],"dropped":%d}' % (seq, ",".join(parts), dropped)
    else:  # the stream is the agent's own hex id: nothing to escape
        text = '{"type":"report","seq":%d,"events":[%s],"dropped":%d,"stream":"%s"}' % (
            seq, ",".join(parts), dropped, stream)
    return text.encode("utf-8") + b"\n"


def encode(msg):
    """Encode a message dict as one UTF-8 line ending in ``\\n``.

    Raises ValueError or TypeError when the message cannot be represented in JSON (non-finite
    floats, non-string keys, unknown objects, lone surrogates).
    """
    text = json.dumps(msg, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.encode("utf-8") + b"\n"


# -- builders for what the agent sends ---------------------------------------------------------


def hello(
    agent_version,
    pid,
    ppid,
    host,
    name,
    origin,
    python,
    argv,
    cwd,
    started_at,
    capabilities,
    control,
    nonce=None,
    proof=None,
):
    """The agent's ``hello`` (after ``auth``/``challenge`` on TCP, with ``proof``)."""
    return {
        "type": "hello",
        "protocol": PROTOCOL_VERSION,
        "agent_version": agent_version,
        "pid": pid,
        "ppid": ppid,
        "host": host,
        "name": name,
        "origin": origin,
        "python": python,
        "argv": argv,
        "cwd": cwd,
        "started_at": started_at,
        "capabilities": list(capabilities),
        "control": control,
        "nonce": nonce,
        "proof": proof,
    }


def auth(nonce):
    """The agent's first message on TCP: opens the mutual authentication."""
    return {"type": "auth", "nonce": nonce}


# -- the TCP link's mutual authentication (see docs/protocol.md "Authentication on TCP") ---------

DAEMON_LABEL = "scry-daemon"
AGENT_LABEL = "scry-agent"
MIN_NONCE_HEX = 32
MAX_NONCE_HEX = 128
_HEX = frozenset("0123456789abcdef")


def nonce_ok(nonce):
    """Whether ``nonce`` is lower-case hex of 32 to 128 digits."""
    return (
        isinstance(nonce, str)
        and MIN_NONCE_HEX <= len(nonce) <= MAX_NONCE_HEX
        and not set(nonce) - _HEX
    )


def proof(label, token, agent_nonce, daemon_nonce, binding):
    """HMAC-SHA256 keyed with the token over ``label|agent_nonce|daemon_nonce|binding``, hex."""
    message = "|".join((label, agent_nonce, daemon_nonce, binding)).encode("utf-8")
    return hmac.new(token.encode("utf-8"), message, hashlib.sha256).hexdigest()


def daemon_proof(token, agent_nonce, daemon_nonce, binding):
    """What the daemon's ``challenge.proof`` must be."""
    return proof(DAEMON_LABEL, token, agent_nonce, daemon_nonce, binding)


def agent_proof(token, agent_nonce, daemon_nonce, binding):
    """The agent's ``hello.proof``."""
    return proof(AGENT_LABEL, token, agent_nonce, daemon_nonce, binding)


def reply_ok(msg_id, result=None):
    """A successful answer to a daemon request."""
    return {"type": "reply", "id": msg_id, "ok": True, "result": {} if result is None else result}


def reply_error(msg_id, kind, message):
    """A failed answer to a daemon request."""
    return {"type": "reply", "id": msg_id, "ok": False, "error": {"kind": kind, "message": message}}


def error(kind, message, in_reply_to=None):
    """The agent could not process a daemon message."""
    return {"type": "error", "kind": kind, "message": message, "in_reply_to": in_reply_to}


def report(seq, events, dropped):
    """A batch of observations."""
    return {"type": "report", "seq": seq, "events": events, "dropped": dropped}


def heartbeat():
    """Sent after ``heartbeat_ms`` of silence."""
    return {"type": "heartbeat"}


def probe_status(statuses):
    """Probe states and counters that changed."""
    return {"type": "probe_status", "statuses": statuses}


def goodbye(reason):
    """The agent disconnects on purpose (``sleep``, ``shutdown``, ``exit``)."""
    return {"type": "goodbye", "reason": reason}


def notify(topic, data=None):
    return {"type": "notify", "topic": topic, "data": data}

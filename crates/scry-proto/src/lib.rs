//! The agent ⇄ daemon wire protocol of scry: message types, framing rules and the protocol
//! version, in one place.
//!
//! The agent (Python, inside each observed process) connects out to the daemon and speaks
//! newline-delimited JSON: one object per line, each with a string field `type`. The full
//! contract is in `docs/protocol.md`; this crate is its Rust implementation and
//! `python/scry/_proto.py` mirrors it. Shared test vectors in `vectors/*.json` are decoded by the
//! tests of both sides, so the two cannot drift apart unnoticed.
//!
//! Main types: [`AgentMessage`] (agent → daemon), [`DaemonMessage`] (daemon → agent),
//! [`decode_agent`] / [`decode_daemon`] which classify a bad line as [`DecodeError`] with a
//! [`ErrorKind`] that goes back to the peer, and [`encode`].
//!
//! Design decision: decoding is done in two steps (first to a generic JSON value, then to the
//! typed message) so that "unknown type" and "malformed" can be told apart and answered
//! differently; unknown *fields* are ignored so that newer agents keep working with older
//! daemons.
//!
//! Not for: I/O. This crate never touches a socket or a file; the daemon owns the connections.
#![deny(missing_docs)]

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Protocol versions the daemon accepts in `hello`.
pub const ACCEPTED_PROTOCOLS: &[u32] = &[1];
/// The longest line either side accepts, in bytes (16 MiB).
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// How an agent came to be inside its process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// `import scry; scry.init()` in the application.
    Embedded,
    /// Injected from outside (PEP 768 or gdb).
    Injected,
    /// Loaded at start-up by `scry run`.
    Run,
}

impl Origin {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Embedded => "embedded",
            Origin::Injected => "injected",
            Origin::Run => "run",
        }
    }
}

/// The interpreter of the agent's process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PythonInfo {
    /// `platform.python_version()`, e.g. `3.14.0`.
    pub version: String,
    /// `sys.implementation.name`, e.g. `cpython`.
    pub implementation: String,
    /// `sys.executable`.
    pub executable: String,
    /// Whether this is a free-threaded build.
    #[serde(default)]
    pub free_threaded: bool,
}

/// Where an embedded client's control plane listens: a unix socket (the default, `socket`) or,
/// when the user asked for TCP, `host` and `port`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlAddr {
    /// Host the control plane is bound to (TCP only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Its port (TCP only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The path of its unix socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
}

/// The agent's first message: who it is and what it can do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The agent's protocol version.
    pub protocol: u32,
    /// The agent package version.
    pub agent_version: String,
    /// Process id as the process sees it.
    pub pid: u32,
    /// Parent process id as the process sees it.
    pub ppid: u32,
    /// Host name.
    pub host: String,
    /// The name given with `scry.init(name=)` or `SCRY_NAME`.
    #[serde(default)]
    pub name: Option<String>,
    /// How the agent came to be in the process.
    pub origin: Origin,
    /// The interpreter.
    pub python: PythonInfo,
    /// `sys.argv`.
    pub argv: Vec<String>,
    /// The working directory.
    pub cwd: String,
    /// Process start, wall-clock seconds since the epoch.
    pub started_at: f64,
    /// Features the agent offers.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// The embedded client's control plane, if any.
    #[serde(default)]
    pub control: Option<ControlAddr>,
    /// The one-time nonce of an injected agent.
    #[serde(default)]
    pub nonce: Option<String>,
    /// On TCP: the agent's proof that it holds the token, [`agent_proof`] over the nonces of
    /// the `auth`/`challenge` exchange that preceded this hello (lower-case hex). The token
    /// itself never crosses the link.
    #[serde(default)]
    pub proof: Option<String>,
}

/// Settings the daemon hands to an agent in `welcome`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// How often the agent flushes its buffer of events.
    pub flush_interval_ms: u64,
    /// The most events in one report.
    pub max_batch: u64,
    /// How long the agent may stay silent before it sends a heartbeat.
    pub heartbeat_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            flush_interval_ms: 50,
            max_batch: 4096,
            heartbeat_ms: 5000,
        }
    }
}

/// The kind of a protocol error, sent to the peer in an `error` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Not JSON, not an object, or a required field missing or of the wrong type.
    Malformed,
    /// A `type` this side does not know.
    UnknownType,
    /// A valid message at the wrong time (e.g. before `hello`).
    Unexpected,
    /// A line over [`MAX_LINE_BYTES`].
    TooLarge,
    /// The receiver failed for its own reasons.
    Internal,
}

/// An error carried in a `reply` with `ok: false`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplyError {
    /// A short machine-readable kind, e.g. `bad_request`.
    pub kind: String,
    /// What went wrong, for a person.
    pub message: String,
}

/// One observation shipped by an agent.
///
/// Its payload stays the JSON text the agent sent: the daemon stores it as it is, and parsing
/// it into a tree only to write it out again would cost more than everything else per event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    /// What produced it: `probe`, `pulse`, `log`, …
    pub kind: String,
    /// Wall-clock seconds at the hit, taken in the target.
    pub t: f64,
    /// E.g. the probe id.
    #[serde(default)]
    pub source: Option<String>,
    /// Kind-specific payload, as JSON text (`null` when absent).
    #[serde(default = "null_raw")]
    pub data: Box<RawValue>,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind
            && self.t == other.t
            && self.source == other.source
            && self.data.get() == other.data.get()
    }
}

fn null_raw() -> Box<RawValue> {
    RawValue::from_string("null".to_owned()).unwrap_or_else(|_| unreachable_raw())
}

#[cold]
fn unreachable_raw() -> Box<RawValue> {
    // `null` is valid JSON, so `null_raw` never gets here; kept total without a panic.
    serde_json::value::to_raw_value(&Value::Null).unwrap_or_default()
}

/// A `report`: a batch of events (decoded without the generic path so that payloads are not
/// parsed into trees).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Increasing by one per report of the `stream` (per connection without a stream); the
    /// daemon acks it once it is stored.
    pub seq: u64,
    /// The observations.
    pub events: Vec<Event>,
    /// Hits dropped in the agent since the previous report.
    #[serde(default)]
    pub dropped: u64,
    /// The agent's report stream (an id chosen by the agent, at most
    /// [`MAX_STREAM_LEN`] bytes): `seq` goes on increasing across reconnects of the
    /// same stream, so a report the daemon did not acknowledge can be resent after a
    /// reconnect or a daemon restart. The daemon stores a report of a stream at most once
    /// (it keeps the last stored seq of each stream of each process) and acks a duplicate
    /// without storing it. Absent: no resend, nothing is deduplicated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
}

/// The longest `report.stream` the daemon accepts.
pub const MAX_STREAM_LEN: usize = 64;

/// A reply to a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// The request's id.
    pub id: u64,
    /// Whether it succeeded.
    pub ok: bool,
    /// The result when `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// The error when not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ReplyError>,
}

/// An `error` message: the sender could not process something the peer sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProtocolErrorMsg {
    /// What kind of problem.
    pub kind: ErrorKind,
    /// For a person.
    pub message: String,
    /// The id of the request it answers, when known.
    #[serde(default)]
    pub in_reply_to: Option<u64>,
}

/// How often a probe records its hits; enforced in the agent, never after shipping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum RateMode {
    /// Every hit.
    #[default]
    Every,
    /// Every `n`th hit.
    Sample {
        /// The period.
        n: u64,
    },
    /// At most `per_second` hits a second.
    Rate {
        /// The budget.
        per_second: f64,
    },
    /// The first `n` hits, then the probe removes itself.
    First {
        /// How many.
        n: u64,
    },
}

/// What a probe captures besides its expressions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CaptureOptions {
    /// The Python stack at the hit.
    #[serde(default)]
    pub stack: bool,
    /// A bounded snapshot of the frame's locals (secret-looking names redacted).
    #[serde(default)]
    pub locals: bool,
    /// Call user-defined `__repr__` for unknown types.
    #[serde(default)]
    pub repr: bool,
}

/// Bounds of value capture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureLimits {
    /// Nesting depth of containers.
    pub depth: u32,
    /// Items per container.
    pub items: u32,
    /// Characters of a string (bytes of a bytes object).
    pub string: u32,
}

impl Default for CaptureLimits {
    fn default() -> Self {
        CaptureLimits {
            depth: 3,
            items: 20,
            string: 256,
        }
    }
}

/// A probe as an agent applies it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeSpec {
    /// Stable id chosen by the daemon.
    pub id: String,
    /// Optional unique name.
    #[serde(default)]
    pub name: Option<String>,
    /// `path.py:LINE`, `@path.py#LINE`, `module.sub:function` or `path.py:function`.
    pub location: String,
    /// Expressions evaluated at the hit.
    pub expressions: Vec<String>,
    /// Only hits where this is true are recorded.
    #[serde(default)]
    pub condition: Option<String>,
    /// What else to capture.
    #[serde(default)]
    pub capture: CaptureOptions,
    /// Rate mode.
    #[serde(default)]
    pub rate: RateMode,
    /// Wall-clock time (epoch seconds) at which the probe removes itself.
    #[serde(default)]
    pub expires_at: Option<f64>,
    /// Lifts the rule that only a short list of pure builtins may be called.
    #[serde(default, rename = "unsafe")]
    pub unsafe_calls: bool,
    /// Capture bounds.
    #[serde(default)]
    pub limits: CaptureLimits,
    /// A metric probe: aggregated in the agent, shipped as `metric` events (one a second per
    /// probe at most, cumulative), never as one event a hit. Its `expressions` are the value
    /// (one, for `gauge` and `histogram`; none for `count`) followed by one per label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<MetricSpec>,
}

/// What a metric probe aggregates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    /// Hits (a counter).
    Count,
    /// The last value.
    Gauge,
    /// Values in buckets, with their count and sum.
    Histogram,
}

/// A metric probe's shape: its kind, the names of its labels (their expressions end the
/// probe's `expressions`), and a histogram's bucket bounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricSpec {
    /// What is aggregated.
    pub kind: MetricKind,
    /// Label names, one per trailing expression.
    #[serde(default)]
    pub labels: Vec<String>,
    /// A histogram's upper bounds, increasing (default: Prometheus's, 5 ms to 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buckets: Option<Vec<f64>>,
}

/// At most this many label sets per metric probe and process; more are counted in one set
/// whose labels are all [`METRIC_OVERFLOW`].
pub const MAX_METRIC_SERIES: usize = 100;
/// The label value of the set that counts what did not fit in [`MAX_METRIC_SERIES`].
pub const METRIC_OVERFLOW: &str = "__overflow__";

/// A probe's state in one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeState {
    /// Its module is not imported yet; it arms on import.
    Pending,
    /// Instrumented and reporting.
    Armed,
    /// Cannot be applied, or disarmed itself (see `reason`).
    Error,
    /// Its TTL or `first N` budget ran out; removed.
    Expired,
    /// Turned off in the daemon (`scry probe disable`): the daemon's view only, agents never
    /// send it.
    Disabled,
}

/// A probe's status and counters in one process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeStatus {
    /// The probe id.
    pub probe: String,
    /// Its state.
    pub state: ProbeState,
    /// The file of the code it is armed in.
    #[serde(default)]
    pub file: Option<String>,
    /// The line actually instrumented.
    #[serde(default)]
    pub line: Option<u32>,
    /// The line asked for, when the probe snapped to another one.
    #[serde(default)]
    pub requested_line: Option<u32>,
    /// The function (qualified name) it is armed in.
    #[serde(default)]
    pub function: Option<String>,
    /// Why it is pending, in error or expired.
    #[serde(default)]
    pub reason: Option<String>,
    /// `invalid_expression`, `location`, `failing`, `internal` when in error.
    #[serde(default)]
    pub error_kind: Option<String>,
    /// Times the line ran (and the probe was considered).
    #[serde(default)]
    pub hits: u64,
    /// Hits recorded and queued for shipping.
    #[serde(default)]
    pub recorded: u64,
    /// Hits not recorded because of the rate mode or a full buffer.
    #[serde(default)]
    pub dropped: u64,
    /// Hits whose expression or condition raised.
    #[serde(default)]
    pub errors: u64,
}

/// Messages from an agent to the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    /// On TCP only, the agent's first message: it opens the mutual authentication with a
    /// fresh random nonce (see [`daemon_proof`]); the daemon answers `challenge`.
    Auth {
        /// At least 16 random bytes, lower-case hex (the agent sends 32).
        nonce: String,
    },
    /// The handshake (boxed: it is by far the largest message and is sent once).
    Hello(Box<Hello>),
    /// An answer to a daemon request.
    Reply(Reply),
    /// A batch of events (decoded by its own path, see [`Report`]).
    #[serde(skip_deserializing)]
    Report(Report),
    /// Sent when the agent was silent for `heartbeat_ms`.
    Heartbeat {},
    /// The agent disconnects on purpose.
    Goodbye {
        /// Why (`sleep`, `shutdown`, `exit`).
        #[serde(default)]
        reason: Option<String>,
    },
    /// The agent could not process a daemon message.
    Error(ProtocolErrorMsg),
    /// Probe states and counters changed (sent when a state changes, and at most once a
    /// second while counters move).
    ProbeStatus {
        /// One entry per probe that changed.
        statuses: Vec<ProbeStatus>,
    },
    /// Something the agent tells the daemon unasked, for the subsystem named by `topic`
    /// (e.g. REPL output); see [`DaemonMessage::Call`] for the other direction.
    Notify {
        /// Which subsystem it is for, e.g. `repl.output`.
        topic: String,
        /// Topic-specific payload.
        #[serde(default)]
        data: Value,
    },
}

/// Messages from the daemon to an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DaemonMessage {
    /// The answer to `auth`: the daemon's own nonce and its proof that it holds the token,
    /// [`daemon_proof`]. The agent checks the proof before it sends `hello`.
    Challenge {
        /// At least 16 random bytes, lower-case hex (the daemon sends 32).
        nonce: String,
        /// [`daemon_proof`] of the token over both nonces and the channel binding.
        proof: String,
    },
    /// The handshake succeeded.
    Welcome {
        /// The daemon's protocol version.
        protocol: u32,
        /// The daemon's version.
        daemon_version: String,
        /// Names this connection.
        session_id: String,
        /// Settings for the agent.
        settings: Settings,
    },
    /// The handshake failed; the daemon closes after this.
    Refused {
        /// Why, for a person.
        reason: String,
        /// The protocol versions the daemon accepts.
        accepted_protocols: Vec<u32>,
    },
    /// Liveness check.
    Ping {
        /// Request id.
        id: u64,
    },
    /// Go to sleep: remove every hook and disconnect.
    Sleep {
        /// Request id.
        id: u64,
    },
    /// An answer to an agent request.
    Reply(Reply),
    /// The report with this sequence number is durably stored (or was already: a resend).
    /// Reports of a connection are stored in order, so an ack also covers every earlier
    /// report of its stream: an agent may forget them all (an ack can be left out when the
    /// daemon's queue to a slow agent is full; a later one covers it).
    Ack {
        /// The report's sequence number.
        seq: u64,
    },
    /// The daemon could not process an agent message.
    Error(ProtocolErrorMsg),
    /// The complete set of probes this process must have; the agent arms new ones, removes
    /// missing ones and re-arms changed ones. The reply's result is `{"statuses": [ProbeStatus]}`.
    ProbesSync {
        /// Request id.
        id: u64,
        /// Every probe for this process.
        probes: Vec<ProbeSpec>,
    },
    /// A request to a named agent feature (`inspect`, `find_lines`, `trace.start`, …): the
    /// extension point that lets features be added without a new message type. The agent
    /// answers with a `reply` carrying the same id; an agent without the method answers
    /// `ok: false` with error kind `unknown_method`.
    Call {
        /// Request id.
        id: u64,
        /// The feature's method name.
        method: String,
        /// Method-specific parameters (an object).
        #[serde(default)]
        params: Value,
    },
    /// Something the daemon tells an agent unasked, for the subsystem named by `topic`
    /// (e.g. terminal input for a REPL).
    Notify {
        /// Which subsystem it is for.
        topic: String,
        /// Topic-specific payload.
        #[serde(default)]
        data: Value,
    },
}

/// Why a line could not be decoded; the kind is what goes back to the peer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct DecodeError {
    /// The classification sent back to the peer.
    pub kind: ErrorKind,
    /// What was wrong, for a person.
    pub message: String,
    /// The request id, when one could be read from the bad message.
    pub id: Option<u64>,
}

const AGENT_TYPES: &[&str] = &[
    "auth",
    "hello",
    "reply",
    "report",
    "heartbeat",
    "goodbye",
    "error",
    "probe_status",
    "notify",
];
const DAEMON_TYPES: &[&str] = &[
    "challenge",
    "welcome",
    "refused",
    "ping",
    "sleep",
    "reply",
    "ack",
    "error",
    "probes_sync",
    "call",
    "notify",
];

fn decode_with<T: serde::de::DeserializeOwned>(
    line: &str,
    known: &[&str],
) -> Result<T, DecodeError> {
    let malformed = |message: String, id: Option<u64>| DecodeError {
        kind: ErrorKind::Malformed,
        message,
        id,
    };
    if line.len() > MAX_LINE_BYTES {
        return Err(DecodeError {
            kind: ErrorKind::TooLarge,
            message: format!(
                "message of {} bytes is over the limit of {MAX_LINE_BYTES}",
                line.len()
            ),
            id: None,
        });
    }
    let value: Value = serde_json::from_str(line.trim_end_matches(['\r', '\n']))
        .map_err(|e| malformed(format!("not valid JSON: {e}"), None))?;
    let Value::Object(map) = &value else {
        return Err(malformed("a message must be a JSON object".into(), None));
    };
    let id = map.get("id").and_then(Value::as_u64);
    let ty = match map.get("type") {
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(malformed("field `type` must be a string".into(), id)),
        None => return Err(malformed("missing field `type`".into(), id)),
    };
    if !known.contains(&ty) {
        return Err(DecodeError {
            kind: ErrorKind::UnknownType,
            message: format!("unknown message type `{ty}`"),
            id,
        });
    }
    let ty = ty.to_owned();
    serde_json::from_value(value).map_err(|e| malformed(format!("bad `{ty}` message: {e}"), id))
}

/// Decodes one line sent by an agent.
pub fn decode_agent(line: &str) -> Result<AgentMessage, DecodeError> {
    // Reports are nearly all the traffic: decode them straight into their struct, leaving each
    // event's payload as text. Anything else, or a report that fails, takes the generic path,
    // which classifies errors.
    if line.len() <= MAX_LINE_BYTES {
        if let Ok(peek) = serde_json::from_str::<TypePeek>(line) {
            if peek.ty == "report" {
                return serde_json::from_str::<Report>(line)
                    .map(AgentMessage::Report)
                    .map_err(|e| DecodeError {
                        kind: ErrorKind::Malformed,
                        message: format!("bad `report` message: {e}"),
                        id: None,
                    });
            }
        }
    }
    decode_with(line, AGENT_TYPES)
}

/// Just the `type` of a message (every other field is skipped without being built).
#[derive(Deserialize)]
struct TypePeek<'a> {
    #[serde(rename = "type", borrow)]
    ty: std::borrow::Cow<'a, str>,
}

/// Decodes one line sent by the daemon.
pub fn decode_daemon(line: &str) -> Result<DaemonMessage, DecodeError> {
    decode_with(line, DAEMON_TYPES)
}

/// Encodes a message as one line, including the trailing newline.
pub fn encode<T: Serialize>(msg: &T) -> String {
    // Serializing these types cannot fail: every map key is a string and no custom
    // serializer returns an error; fall back to an internal error message all the same.
    let mut s = serde_json::to_string(msg).unwrap_or_else(|e| {
        format!(r#"{{"type":"error","kind":"internal","message":"encode failed: {e}"}}"#)
    });
    s.push('\n');
    s
}

impl AgentMessage {
    /// The wire name of this message's type.
    pub fn type_name(&self) -> &'static str {
        match self {
            AgentMessage::Auth { .. } => "auth",
            AgentMessage::Hello(_) => "hello",
            AgentMessage::Reply(_) => "reply",
            AgentMessage::Report(_) => "report",
            AgentMessage::Heartbeat {} => "heartbeat",
            AgentMessage::Goodbye { .. } => "goodbye",
            AgentMessage::Error(_) => "error",
            AgentMessage::ProbeStatus { .. } => "probe_status",
            AgentMessage::Notify { .. } => "notify",
        }
    }
}

impl DaemonMessage {
    /// The wire name of this message's type.
    pub fn type_name(&self) -> &'static str {
        match self {
            DaemonMessage::Challenge { .. } => "challenge",
            DaemonMessage::Welcome { .. } => "welcome",
            DaemonMessage::Refused { .. } => "refused",
            DaemonMessage::Ping { .. } => "ping",
            DaemonMessage::Sleep { .. } => "sleep",
            DaemonMessage::Reply(_) => "reply",
            DaemonMessage::Ack { .. } => "ack",
            DaemonMessage::Error(_) => "error",
            DaemonMessage::ProbesSync { .. } => "probes_sync",
            DaemonMessage::Call { .. } => "call",
            DaemonMessage::Notify { .. } => "notify",
        }
    }

    /// An `error` message answering a decode failure.
    pub fn error_for(err: &DecodeError) -> DaemonMessage {
        DaemonMessage::Error(ProtocolErrorMsg {
            kind: err.kind,
            message: err.message.clone(),
            in_reply_to: err.id,
        })
    }
}

/// The label of the daemon's proof.
pub const DAEMON_LABEL: &str = "scry-daemon";
/// The label of the agent's proof.
pub const AGENT_LABEL: &str = "scry-agent";

/// The least number of hex digits of an `auth`/`challenge` nonce (16 bytes).
pub const MIN_NONCE_HEX: usize = 32;
/// The most hex digits of a nonce (a bound on what a peer may make us hash).
pub const MAX_NONCE_HEX: usize = 128;

/// Whether `nonce` is a well-formed nonce: lower-case hex, 32 to 128 digits.
pub fn nonce_ok(nonce: &str) -> bool {
    (MIN_NONCE_HEX..=MAX_NONCE_HEX).contains(&nonce.len())
        && nonce
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// HMAC-SHA256 keyed with the token (its UTF-8 bytes) over
/// `label "|" agent_nonce "|" daemon_nonce "|" binding`, as lower-case hex.
///
/// `binding` ties the proof to this connection so that it cannot be relayed: on TLS the
/// lower-case hex SHA-256 of the daemon certificate's DER; on plain (loopback) TCP the
/// connection's two ends, `tcp:AGENT_IP:AGENT_PORT>DAEMON_IP:DAEMON_PORT` as each side sees
/// it (a relay has two connections, so the two sides disagree).
pub fn proof(
    label: &str,
    token: &str,
    agent_nonce: &str,
    daemon_nonce: &str,
    binding: &str,
) -> String {
    use hmac::{KeyInit, Mac};
    // HMAC takes keys of any length, so `new_from_slice` cannot fail; an empty proof (which
    // never verifies) keeps this total all the same.
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(token.as_bytes()) else {
        return String::new();
    };
    for (i, part) in [label, agent_nonce, daemon_nonce, binding]
        .iter()
        .enumerate()
    {
        if i > 0 {
            mac.update(b"|");
        }
        mac.update(part.as_bytes());
    }
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The daemon's proof in `challenge` (label `scry-daemon`), see [`proof`].
pub fn daemon_proof(token: &str, agent_nonce: &str, daemon_nonce: &str, binding: &str) -> String {
    proof(DAEMON_LABEL, token, agent_nonce, daemon_nonce, binding)
}

/// The agent's proof in `hello.proof` (label `scry-agent`), see [`proof`].
pub fn agent_proof(token: &str, agent_nonce: &str, daemon_nonce: &str, binding: &str) -> String {
    proof(AGENT_LABEL, token, agent_nonce, daemon_nonce, binding)
}

/// Compares two proofs in time that does not depend on where they differ.
pub fn proofs_equal(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[derive(Deserialize)]
    struct VectorFile {
        cases: Vec<Case>,
    }
    #[derive(Deserialize)]
    struct Case {
        name: String,
        raw: String,
        expect: String,
        #[serde(default, rename = "type")]
        ty: Option<String>,
        // Proof vectors (auth.json): the inputs besides what `raw` carries, and the agent proof.
        #[serde(default)]
        token: Option<String>,
        #[serde(default)]
        agent_nonce: Option<String>,
        #[serde(default)]
        binding: Option<String>,
        #[serde(default)]
        agent_proof: Option<String>,
    }

    fn vectors() -> Vec<(String, Case)> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("vectors");
        let mut out = Vec::new();
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .expect("vectors dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            // Probe-expression vectors, not messages: the daemon's checker reads them.
            .filter(|p| p.file_name().is_some_and(|n| n != "expressions.json"))
            .collect();
        entries.sort();
        assert!(entries.len() >= 3, "expected vector files in {dir:?}");
        for path in entries {
            let text = std::fs::read_to_string(&path).expect("read vector");
            let file: VectorFile = serde_json::from_str(&text).expect("vector json");
            for case in file.cases {
                out.push((path.display().to_string(), case));
            }
        }
        out
    }

    /// Decodes a vector line with whichever direction knows its type.
    fn decode_any(raw: &str) -> Result<(&'static str, String), DecodeError> {
        match decode_agent(raw) {
            Ok(m) => Ok((m.type_name(), encode(&m))),
            Err(e) if e.kind == ErrorKind::UnknownType => {
                decode_daemon(raw).map(|m| (m.type_name(), encode(&m)))
            }
            Err(e) => {
                // A daemon-only type fails as unknown for the agent decoder; a malformed
                // agent-side message must stay malformed.
                match decode_daemon(raw) {
                    Ok(m) => Ok((m.type_name(), encode(&m))),
                    Err(_) => Err(e),
                }
            }
        }
    }

    #[test]
    fn shared_vectors_decode_as_expected() {
        for (file, case) in vectors() {
            let got = decode_any(&case.raw);
            match case.expect.as_str() {
                "ok" => {
                    let (ty, reencoded) =
                        got.unwrap_or_else(|e| panic!("{file}: {}: {e}", case.name));
                    assert_eq!(Some(ty.to_string()), case.ty, "{file}: {}", case.name);
                    // Round trip: what we encode decodes to the same type again.
                    let (ty2, _) = decode_any(&reencoded).expect("round trip");
                    assert_eq!(ty, ty2);
                }
                "malformed" | "unknown_type" => {
                    let err = got.err().unwrap_or_else(|| {
                        panic!("{file}: {}: decoded but should fail", case.name)
                    });
                    let want = if case.expect == "malformed" {
                        ErrorKind::Malformed
                    } else {
                        ErrorKind::UnknownType
                    };
                    assert_eq!(err.kind, want, "{file}: {}: {}", case.name, err.message);
                }
                other => panic!("{file}: unknown expectation {other}"),
            }
        }
    }

    #[test]
    fn proofs_match_the_shared_vectors() {
        let mut checked = 0;
        for (file, case) in vectors() {
            let (Some(token), Some(agent_nonce), Some(binding), Some(want_agent)) = (
                &case.token,
                &case.agent_nonce,
                &case.binding,
                &case.agent_proof,
            ) else {
                continue;
            };
            let Ok(DaemonMessage::Challenge { nonce, proof }) = decode_daemon(&case.raw) else {
                panic!("{file}: {}: raw is not a challenge", case.name);
            };
            assert!(nonce_ok(agent_nonce) && nonce_ok(&nonce), "{}", case.name);
            let daemon = daemon_proof(token, agent_nonce, &nonce, binding);
            assert!(proofs_equal(&daemon, &proof), "{}: daemon proof", case.name);
            let agent = agent_proof(token, agent_nonce, &nonce, binding);
            assert_eq!(&agent, want_agent, "{}: agent proof", case.name);
            // Each input matters: another binding, nonce or token gives another proof.
            assert_ne!(daemon_proof(token, agent_nonce, &nonce, "other"), proof);
            assert_ne!(daemon_proof(token, &nonce, agent_nonce, binding), proof);
            assert_ne!(daemon_proof("other", agent_nonce, &nonce, binding), proof);
            assert_ne!(agent, proof, "the two labels give two proofs");
            checked += 1;
        }
        assert!(checked >= 3, "expected proof vectors in auth.json");
    }

    #[test]
    fn nonces_are_checked() {
        assert!(nonce_ok(&"ab".repeat(16)));
        assert!(!nonce_ok(&"ab".repeat(15)), "too short");
        assert!(!nonce_ok(&"ab".repeat(65)), "too long");
        assert!(!nonce_ok(&"AB".repeat(16)), "upper case");
        assert!(!nonce_ok(&"zz".repeat(16)), "not hex");
        assert!(!proofs_equal("ab", "abc"));
    }

    #[test]
    fn report_payloads_stay_the_text_the_agent_sent() {
        let line = r#"{"type":"report","seq":9,"dropped":2,"events":[{"kind":"probe","t":1.5,"source":"p-1","data":{"values":{"x":{"t":"int","v":1}},"line":3}}]}"#;
        let Ok(AgentMessage::Report(r)) = decode_agent(line) else {
            panic!("not a report");
        };
        assert_eq!((r.seq, r.dropped, r.events.len()), (9, 2, 1));
        assert_eq!(
            r.events[0].data.get(),
            r#"{"values":{"x":{"t":"int","v":1}},"line":3}"#
        );
        let missing = r#"{"type":"report","seq":1,"events":[{"kind":"log","t":2.0}]}"#;
        let Ok(AgentMessage::Report(r)) = decode_agent(missing) else {
            panic!("not a report");
        };
        assert_eq!(r.events[0].data.get(), "null");
        assert_eq!(r.events[0].source, None);
    }

    #[test]
    fn too_large_is_classified() {
        let big = format!(
            r#"{{"type":"heartbeat","pad":"{}"}}"#,
            "x".repeat(MAX_LINE_BYTES)
        );
        assert_eq!(
            decode_agent(&big).err().map(|e| e.kind),
            Some(ErrorKind::TooLarge)
        );
    }

    #[test]
    fn id_is_recovered_from_bad_messages() {
        let err = decode_daemon(r#"{"type":"ping","id":"x"}"#).err();
        assert_eq!(err.map(|e| e.kind), Some(ErrorKind::Malformed));
        let err = decode_agent(r#"{"type":"nope","id":12}"#).err();
        assert_eq!(err.and_then(|e| e.id), Some(12));
    }

    #[test]
    fn encode_ends_with_newline_and_is_one_line() {
        let line = encode(&DaemonMessage::Ack { seq: 3 });
        assert_eq!(line, "{\"type\":\"ack\",\"seq\":3}\n");
    }
}

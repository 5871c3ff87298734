//! The data the store takes and gives back: options, records, rows, queries and reports.

use std::time::Duration;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::StoreError;

/// Called once, on the writer thread, when the operation it was passed with is settled: `Ok`
/// after its batch committed, or the error (its own, or the batch's failed commit).
///
/// It runs on the writer thread between batches, so it must be quick (e.g. send on a channel)
/// and must not make blocking store calls (those return [`StoreError::Reentrant`]).
pub type CommitCallback = Box<dyn FnOnce(Result<(), StoreError>) + Send + 'static>;

/// How the store is run. `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreOptions {
    /// What is kept, and how often that is enforced.
    pub retention: Retention,
    /// The writer commits once a batch holds this many events (default 4096). An operation is
    /// never split, so a batch may end up larger.
    pub batch_max: usize,
    /// How long the writer waits for more work to fill a batch before committing (default
    /// 20 ms). Operations that a caller waits for (process upserts, probe changes, `flush`)
    /// cut the wait short.
    pub batch_delay: Duration,
    /// How many operations may wait in the writer's queue (default 1024). When it is full,
    /// [`Store::append_events`](crate::Store::append_events) fails with
    /// [`StoreError::Backpressure`] and the other writes wait for room.
    pub queue_capacity: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            retention: Retention::default(),
            batch_max: 4096,
            batch_delay: Duration::from_millis(20),
            queue_capacity: 1024,
        }
    }
}

/// What the store keeps. Enforced by the writer every `check_interval` (and once right after
/// opening), or on demand with [`Store::apply_retention`](crate::Store::apply_retention).
#[derive(Debug, Clone, PartialEq)]
pub struct Retention {
    /// Events and system events whose time is older than this are deleted (default 7 days).
    /// Processes that are gone, were last heard of before then and have no events left are
    /// deleted too. `None` keeps everything regardless of age.
    pub max_age: Option<Duration>,
    /// For each event source (a probe id; events without a source count as one more source),
    /// only the newest this many events by hit time are kept (default 100,000). `None`: no cap.
    pub max_events_per_source: Option<u64>,
    /// At most this many bytes of database pages in use (default 512 MiB); beyond it the
    /// oldest events go, whatever their sources (events whose sources are all distinct too).
    /// Freed pages are reused, so the file stays near this size. `None`: no limit.
    pub max_db_bytes: Option<u64>,
    /// How often the writer enforces retention on its own (default 30 s).
    pub check_interval: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_age: Some(Duration::from_secs(7 * 24 * 3600)),
            max_events_per_source: Some(100_000),
            max_db_bytes: Some(512 * 1024 * 1024),
            check_interval: Duration::from_secs(30),
        }
    }
}

/// Where an observed process stands with the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessState {
    /// Known, with an initialised client that is not connected (zero overhead).
    Sleeping,
    /// Its agent is connected to the daemon.
    Awake,
    /// Exited, or no longer reachable.
    Gone,
}

impl ProcessState {
    /// The name stored in the database and used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessState::Sleeping => "sleeping",
            ProcessState::Awake => "awake",
            ProcessState::Gone => "gone",
        }
    }
}

impl ToSql for ProcessState {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for ProcessState {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        match value.as_str()? {
            "sleeping" => Ok(ProcessState::Sleeping),
            "awake" => Ok(ProcessState::Awake),
            "gone" => Ok(ProcessState::Gone),
            other => Err(FromSqlError::Other(
                format!("unknown process state `{other}`").into(),
            )),
        }
    }
}

/// An observed process as the daemon describes it; upserted by its `key`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// Identity chosen by the daemon (host, pid and start time), unique in the store.
    pub key: String,
    /// Process id on its host.
    pub pid: u32,
    /// Parent process id, when known.
    pub ppid: Option<u32>,
    /// Host name.
    pub host: String,
    /// Name given with `scry.init(name=...)` or `SCRY_NAME`.
    pub name: Option<String>,
    /// Python version of the target, e.g. `3.12.4`.
    pub python_version: String,
    /// Path of the interpreter.
    pub executable: String,
    /// Command line.
    pub argv: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// How the agent got there (e.g. `embedded`, `attach`, `run`).
    pub origin: String,
    /// Current state.
    pub state: ProcessState,
    /// First time the daemon saw it (seconds since the epoch). An upsert keeps the earliest.
    pub first_seen: f64,
    /// Since when its agent is connected; `None` unless awake.
    pub connected_since: Option<f64>,
    /// Last time anything was heard from it (seconds since the epoch).
    pub last_heard: f64,
    /// Anything else, as a JSON value.
    pub info: Value,
}

/// A stored process: its row id, the record, and when its state last changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcessRow {
    /// Row id; events refer to it.
    pub id: i64,
    /// The record as last upserted (and updated by state changes).
    #[serde(flatten)]
    pub process: ProcessRecord,
    /// When `state` last changed (seconds since the epoch). Set by the store: the `at` of
    /// [`Store::set_process_state`](crate::Store::set_process_state) or
    /// [`Store::mark_all_gone`](crate::Store::mark_all_gone), or `last_heard` of the upsert
    /// that inserted the process or changed its state.
    pub state_since: f64,
}

/// A probe as the daemon defines it. The store does not look inside `spec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeRecord {
    /// Identity chosen by the daemon.
    pub id: String,
    /// Optional unique name.
    pub name: Option<String>,
    /// Location, expressions and options, opaque to the store.
    pub spec: Value,
    /// Whether it is armed.
    pub enabled: bool,
    /// Optional group it belongs to.
    pub group_name: Option<String>,
    /// Creation time (seconds since the epoch). An upsert keeps the stored one.
    pub created_at: f64,
    /// Last change (seconds since the epoch).
    pub updated_at: f64,
}

/// A stack dump to keep (`scry dump`). The store does not look inside `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DumpRecord {
    /// When it was taken (seconds since the epoch).
    pub taken_at: f64,
    /// The pid it was asked for.
    pub root_pid: u32,
    /// Whether it covers the tree below the root.
    pub tree: bool,
    /// How many processes it lists.
    pub processes: u32,
    /// How many of them are Python processes whose stacks were read.
    pub python_processes: u32,
    /// The root's command line, for listing.
    pub command: String,
    /// The dump document (`docs/dump.md`).
    pub data: Value,
}

/// A call trace's metadata (`scry trace`); the store does not look inside `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceRecord {
    /// The trace id (`tr-…`), also the `source` of its events.
    pub id: String,
    /// When it started (seconds since the epoch).
    pub created_at: f64,
    /// Last change.
    pub updated_at: f64,
    /// Spec, targets, state (the daemon's document).
    pub data: Value,
}

/// A stored dump: its id and record (`data` is `Null` in listings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DumpRow {
    /// Row id.
    pub id: i64,
    /// The record.
    #[serde(flatten)]
    pub dump: DumpRecord,
}

/// An event to store, as reported by an agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewEvent {
    /// What produced it (`probe`, `pulse`, `log`, ...).
    pub kind: String,
    /// What it belongs to, e.g. a probe id.
    pub source: Option<String>,
    /// Time of the hit in the target, seconds since the epoch.
    pub t_hit: f64,
    /// Kind-specific payload, as JSON text: stored as it is, never parsed on the way in.
    pub data: Box<RawValue>,
}

impl NewEvent {
    /// An event whose payload is a JSON value (encoded here).
    pub fn from_value(
        kind: impl Into<String>,
        source: Option<String>,
        t_hit: f64,
        data: &Value,
    ) -> NewEvent {
        NewEvent {
            kind: kind.into(),
            source,
            t_hit,
            data: serde_json::value::to_raw_value(data)
                .unwrap_or_else(|_| RawValue::from_string("null".into()).unwrap_or_default()),
        }
    }
}

impl PartialEq for NewEvent {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind
            && self.source == other.source
            && self.t_hit == other.t_hit
            && self.data.get() == other.data.get()
    }
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRow {
    /// Row id: increases in the order events were stored and is never reused (not even
    /// after retention deleted every event), so it is a gap-free cursor for following (see
    /// [`EventQuery::after_id`]).
    pub id: i64,
    /// Row id of the process it came from.
    pub process_id: i64,
    /// What produced it.
    pub kind: String,
    /// What it belongs to, e.g. a probe id.
    pub source: Option<String>,
    /// Time of the hit in the target, seconds since the epoch.
    pub t_hit: f64,
    /// Time the store received it, seconds since the epoch.
    pub t_recv: f64,
    /// Kind-specific payload.
    pub data: Value,
}

/// The order of an event page, and which end of the matching events it is taken from.
///
/// Events are ordered by hit time (`t_hit`, ties by id), which is what a reader wants and
/// what the indexes serve. A *following* query (one with [`EventQuery::after_id`]) is ordered
/// by id instead, the order in which events were stored: a report that arrives late with
/// older hits is still after the cursor, so a follower never misses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// Newest first: the tail of the matching events.
    #[default]
    Newest,
    /// Oldest first; with `after_id`, the next events to show when following.
    Oldest,
}

/// The most events one query returns.
pub const MAX_QUERY_LIMIT: usize = 10_000;

/// A filter over events. All set filters must match. `Default` matches everything and returns
/// the newest 1000.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EventQuery {
    /// Only events of this source.
    pub source: Option<String>,
    /// Only events of this process row id.
    pub process_id: Option<i64>,
    /// Only events of this kind.
    pub kind: Option<String>,
    /// Only events with `t_hit >= since`.
    pub since: Option<f64>,
    /// Only events with `t_hit < until`.
    pub until: Option<f64>,
    /// Only events stored after the event with this id (`id > after_id`), ordered by id (see
    /// [`Order`]). To follow, query with [`Order::Oldest`], then again with the last id of
    /// the page, as long as the page is truncated or new events are wanted.
    pub after_id: Option<i64>,
    /// At most this many events; capped at [`MAX_QUERY_LIMIT`].
    pub limit: usize,
    /// Which end of the matching events the page is taken from, and its order.
    pub order: Order,
}

impl Default for EventQuery {
    fn default() -> Self {
        EventQuery {
            source: None,
            process_id: None,
            kind: None,
            since: None,
            until: None,
            after_id: None,
            limit: 1000,
            order: Order::Newest,
        }
    }
}

/// One page of events.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventPage {
    /// The events, in the requested order.
    pub events: Vec<EventRow>,
    /// True when more events matched than the limit allowed.
    pub truncated: bool,
}

/// Severity of a [`SystemEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Detail for debugging the daemon.
    Debug,
    /// Something happened (a process connected, a probe was added).
    Info,
    /// Something went wrong but was handled.
    Warn,
    /// Something failed.
    Error,
}

impl Level {
    /// The name stored in the database and used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

impl ToSql for Level {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for Level {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        match value.as_str()? {
            "debug" => Ok(Level::Debug),
            "info" => Ok(Level::Info),
            "warn" => Ok(Level::Warn),
            "error" => Ok(Level::Error),
            other => Err(FromSqlError::Other(
                format!("unknown level `{other}`").into(),
            )),
        }
    }
}

/// Something that happened in the daemon itself, kept for `scry status` and the UI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemEvent {
    /// When, seconds since the epoch.
    pub t: f64,
    /// Severity.
    pub level: Level,
    /// Machine-readable kind, e.g. `process_connected`.
    pub kind: String,
    /// Human-readable message.
    pub message: String,
    /// Details.
    pub data: Value,
}

/// A stored system event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SystemEventRow {
    /// Row id.
    pub id: i64,
    /// The event.
    #[serde(flatten)]
    pub event: SystemEvent,
}

/// How many events were dropped (by an agent, or by the daemon) for one process and source.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DroppedRow {
    /// Row id of the process.
    pub process_id: i64,
    /// The source (a probe id); `None` for drops not attributed to a source, such as the
    /// `dropped` count of an agent report.
    pub source: Option<String>,
    /// Total dropped so far.
    pub dropped: u64,
    /// Last time the count grew, seconds since the epoch.
    pub updated_at: f64,
}

/// Row counts of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Counts {
    /// Processes.
    pub processes: u64,
    /// Probes.
    pub probes: u64,
    /// Events.
    pub events: u64,
    /// System events.
    pub system_events: u64,
    /// Sum of all dropped counters.
    pub dropped: u64,
}

/// What one retention pass deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct RetentionReport {
    /// Events older than `max_age`.
    pub events_by_age: u64,
    /// Events beyond `max_events_per_source` for their source.
    pub events_by_cap: u64,
    /// System events older than `max_age`.
    pub system_events_by_age: u64,
    /// Stack dumps taken before `max_age`.
    pub dumps_by_age: u64,
    /// Gone processes last heard of before `max_age` with no events left.
    pub processes: u64,
    /// The oldest events, deleted to bring the database under `max_db_bytes`.
    pub events_by_size: u64,
}

/// Whether the store can write, for `scry status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreState {
    /// Writes succeed.
    Ok,
    /// The disk is full: events are counted as not stored until space returns (checked every
    /// second); registrations and state changes use a small reserve meanwhile.
    Full,
    /// Commits fail for another reason (an I/O error); each batch is tried anyway.
    Failing,
}

/// The store's health: its state, since when, and what it could not store.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoreHealth {
    /// Whether writes succeed.
    pub state: StoreState,
    /// Since when (epoch seconds) the state is not `ok`.
    pub since: Option<f64>,
    /// Events that could not be stored since the store was opened (disk full, failed commits).
    pub not_stored: u64,
    /// The last write error, if the state is not `ok`.
    pub last_error: Option<String>,
    /// Events deleted by retention since the store was opened, per source (`""`: no source).
    pub retention_deleted: std::collections::BTreeMap<String, u64>,
}

/// What became of the events of one source (a probe id) that reached the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct SourceTotals {
    /// Events held now.
    pub stored: u64,
    /// Events stored once and removed by retention since (by age or by a cap).
    pub removed_by_retention: u64,
    /// Events that arrived while the disk was full: counted here, not stored.
    pub not_stored_disk_full: u64,
}

/// Counters of the writer thread since the store was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct WriterStats {
    /// Batches committed.
    pub batches: u64,
    /// Batches whose commit failed (every operation in them got the error).
    pub failed_batches: u64,
    /// Operations committed.
    pub ops: u64,
    /// Events committed.
    pub events: u64,
    /// Retention passes run (automatic and on demand).
    pub retention_runs: u64,
}

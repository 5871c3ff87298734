//! The daemon itself: `GET /api/v1/status` answers a [`DaemonStatus`], `/api/v1/system-events`
//! a [`SystemEventList`] (what happened in the daemon: processes connected, probes added, the
//! store filling up).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `GET /api/v1/status`: where the daemon listens, what it holds, what it lost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaemonStatus {
    /// scry's version.
    pub version: String,
    /// The daemon's pid.
    pub pid: u32,
    /// Its home directory (`$SCRY_HOME`): store, sockets, token, log.
    pub home: PathBuf,
    /// The HTTP address (`host:port`); every request needs the token.
    pub http: String,
    /// The local API's unix socket (its owner and root only).
    pub api_socket: PathBuf,
    /// Where agents connect.
    pub agent_socket: PathBuf,
    /// The TCP address agents may also connect to, when configured.
    pub agent_tcp: Option<String>,
    /// When it started, seconds since the epoch.
    pub started_at: f64,
    /// Seconds since it started.
    pub uptime_s: f64,
    /// Processes by state.
    pub processes: ProcessCounts,
    /// Probes defined.
    pub probes: u64,
    /// Events in the store.
    pub events_stored: u64,
    /// Events lost before the store.
    pub dropped: Dropped,
    /// Whether the store can write.
    pub store: StoreStatus,
    /// Flow control.
    pub backpressure: Backpressure,
}

/// Processes the daemon knows, by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessCounts {
    /// With a connected agent.
    pub awake: u64,
    /// Embedded clients asleep.
    pub sleeping: u64,
    /// Exited or disconnected.
    pub gone: u64,
    /// Discovery files of embedded clients found in the home.
    pub client_files: u64,
    /// Agent links accepted since the daemon started.
    pub links_accepted: u64,
}

/// Events lost before they reached the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    /// Dropped by agents (their buffers were full, or a rate limit), as they reported.
    pub by_agents: u64,
    /// Dropped by the daemon (its queue to the store was full, or a commit failed).
    pub by_daemon: u64,
}

/// The store's part of the status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreStatus {
    /// `ok`, `full` (the disk is full: events are counted, not stored, until space returns)
    /// or `failing` (commits fail for another reason).
    pub state: String,
    /// Since when (seconds since the epoch) the state is not `ok`.
    pub since: Option<f64>,
    /// Events that could not be stored since the daemon started.
    pub not_stored: u64,
    /// The last write error, when the state is not `ok`.
    pub last_error: Option<String>,
    /// Events deleted by retention since the daemon started.
    pub retention_deleted: u64,
    /// The store's size limit in MB (None: no limit).
    pub max_db_mb: Option<u64>,
}

/// Flow control between agents and the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backpressure {
    /// Agent reports that waited for the store (their agents were slowed down, nothing lost).
    pub reports_waited: u64,
    /// Protocol errors not sent to peers that do not read them.
    pub errors_not_sent: u64,
}

/// One thing that happened in the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemEvent {
    /// Its id (increasing).
    pub id: i64,
    /// When, seconds since the epoch.
    pub t: f64,
    /// `debug`, `info`, `warn` or `error`.
    pub level: String,
    /// What kind, for programs: `process_connected`, `probe_added`, `store_full`, ...
    pub kind: String,
    /// What happened, for people.
    pub message: String,
    /// Details (e.g. the `pid` it concerns).
    pub data: Value,
}

/// `GET /api/v1/system-events`: oldest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SystemEventList {
    /// The events.
    pub system_events: Vec<SystemEvent>,
}

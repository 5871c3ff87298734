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

/// `GET /api/v1/health`: the daemon answers (no token needed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// Always true.
    pub ok: bool,
    /// scry's version.
    pub version: String,
}

/// `GET /api/v1/agent-endpoint`: where agents connect (`scry.init()` asks when it is told only
/// the daemon's HTTP address).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentEndpoint {
    /// The agents' unix socket.
    pub unix: PathBuf,
    /// The agents' TCP address, when configured.
    pub tcp: Option<String>,
}

/// `POST /api/v1/shutdown`: the daemon stops after answering, and what ends with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stopping {
    /// Always true.
    pub stopping: bool,
    /// The daemon's pid (wait for it to exit).
    pub pid: u32,
    /// The processes whose injected agents end with the daemon (an injected agent detaches
    /// when it loses its daemon), ascending.
    #[serde(default)]
    pub ended_agents: Vec<u32>,
    /// The roots of the follows that end, ascending.
    #[serde(default)]
    pub ended_follows: Vec<u32>,
    /// Where they are saved for `scry serve --restore` (`$SCRY_HOME/restore.json`); none when
    /// nothing ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_file: Option<PathBuf>,
    /// Why they could not be saved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_error: Option<String>,
}

/// A process to restore, as it was when saved: its pid and kernel start time (so that a pid
/// reused by another process is not taken for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreTarget {
    /// The pid.
    pub pid: u32,
    /// Its start time in clock ticks after boot (`/proc/PID/stat`).
    pub start_ticks: u64,
}

/// What a stopping daemon saved for `scry serve --restore` (`$SCRY_HOME/restore.json`, mode
/// 0600): the injected agents and the follows that ended with it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RestorePlan {
    /// When it was saved (epoch seconds).
    pub saved_at: f64,
    /// Processes to attach to again.
    pub agents: Vec<RestoreTarget>,
    /// Roots to follow again.
    pub follows: Vec<RestoreTarget>,
}

/// One process `scry serve --restore` attached to or followed again, or could not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreOutcome {
    /// The pid.
    pub pid: u32,
    /// `attach` or `follow`.
    pub action: String,
    /// It is attached (or followed) again.
    pub ok: bool,
    /// What happened (`attached (pep768)`, `exited`, the attach's error).
    pub message: String,
}

/// `POST /api/v1/restore`: what `scry stop` saved, restored (the file is removed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restored {
    /// The file read.
    pub file: PathBuf,
    /// False: there was nothing to restore (no file).
    pub found: bool,
    /// One per saved agent, then one per saved follow.
    pub outcomes: Vec<RestoreOutcome>,
}

/// `POST /api/v1/ui/login`: a one-time sign-in link for the web UI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UiLoginLink {
    /// The link's path and query on the daemon's HTTP address (`/login?once=...`).
    pub path: String,
    /// The daemon's HTTP address (`host:port`).
    pub http: String,
    /// Seconds the link stays valid (it works once).
    pub expires_in_s: u64,
}

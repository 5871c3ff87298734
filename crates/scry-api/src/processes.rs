//! Processes: `GET /api/v1/processes` answers a [`ProcessList`]; `GET /api/v1/processes/{pid}`
//! one [`ProcessEntry`].

use serde::{Deserialize, Serialize};

use scry_proto::ControlAddr;

/// A process's state as scry sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcState {
    /// Known, alive, no agent connected (an embedded client that sleeps).
    Sleeping,
    /// An agent is connected.
    Awake,
    /// The process has exited.
    Gone,
}

impl ProcState {
    /// The wire and database name.
    pub fn as_str(self) -> &'static str {
        match self {
            ProcState::Sleeping => "sleeping",
            ProcState::Awake => "awake",
            ProcState::Gone => "gone",
        }
    }

    /// Parses the database name (anything unknown is `gone`).
    pub fn parse(s: &str) -> ProcState {
        match s {
            "awake" => ProcState::Awake,
            "sleeping" => ProcState::Sleeping,
            _ => ProcState::Gone,
        }
    }
}

/// A process an agent told the daemon about (its hello), as the daemon keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessView {
    /// The store's row id.
    pub id: i64,
    /// Identity: `host:pid:start`.
    pub key: String,
    /// Pid as the daemon sees it.
    pub pid: u32,
    /// Pid inside the process's own PID namespace, when it differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ns_pid: Option<u32>,
    /// Parent pid.
    pub ppid: u32,
    /// Host name.
    pub host: String,
    /// Registered name.
    #[serde(default)]
    pub name: Option<String>,
    /// Python version.
    pub python_version: String,
    /// Interpreter path.
    pub executable: String,
    /// Command line.
    pub argv: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// `embedded`, `injected` or `run`.
    pub origin: String,
    /// Current state.
    pub state: ProcState,
    /// First time the daemon heard of it (epoch seconds).
    pub first_seen: f64,
    /// When the current connection began.
    #[serde(default)]
    pub connected_since: Option<f64>,
    /// Last message from it.
    pub last_heard: f64,
    /// The current connection's session id.
    #[serde(default)]
    pub session_id: Option<String>,
    /// The embedded client's control plane.
    #[serde(default)]
    pub control: Option<ControlAddr>,
    /// Features its agent offers (`probes`, `call:find_lines`, …).
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Kernel start time (clock ticks) when known: tells a reused pid apart. The daemon's own.
    #[serde(skip)]
    pub start_ticks: Option<u64>,
}

/// A sleeping embedded client the daemon has not heard from, found through its discovery file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiscoveredClient {
    /// Its pid.
    pub pid: u32,
    /// Its registered name.
    #[serde(default)]
    pub name: Option<String>,
    /// Always `sleeping`.
    pub state: ProcState,
    /// Its Python version.
    #[serde(default)]
    pub python_version: Option<String>,
    /// Its interpreter.
    #[serde(default)]
    pub executable: Option<String>,
    /// Its command line as the kernel shows it (empty when unreadable).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub argv: Vec<String>,
    /// Its control plane.
    #[serde(default)]
    pub control: Option<ControlAddr>,
    /// When it started (epoch seconds).
    #[serde(default)]
    pub first_seen: Option<f64>,
}

/// One process of the list, with where the daemon knows it from (`source`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum ProcessEntry {
    /// An agent connected at least once.
    Agent(Box<ProcessView>),
    /// Only its discovery file.
    Discovery(DiscoveredClient),
}

impl ProcessEntry {
    /// Its pid.
    pub fn pid(&self) -> u32 {
        match self {
            ProcessEntry::Agent(p) => p.pid,
            ProcessEntry::Discovery(c) => c.pid,
        }
    }

    /// Its state.
    pub fn state(&self) -> ProcState {
        match self {
            ProcessEntry::Agent(p) => p.state,
            ProcessEntry::Discovery(c) => c.state,
        }
    }

    /// Its registered name.
    pub fn name(&self) -> Option<&str> {
        match self {
            ProcessEntry::Agent(p) => p.name.as_deref(),
            ProcessEntry::Discovery(c) => c.name.as_deref(),
        }
    }

    /// Its Python version.
    pub fn python_version(&self) -> Option<&str> {
        match self {
            ProcessEntry::Agent(p) => Some(&p.python_version),
            ProcessEntry::Discovery(c) => c.python_version.as_deref(),
        }
    }
}

/// `GET /api/v1/processes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessList {
    /// Agents' processes (awake, sleeping, gone of the last 15 minutes or all), then sleeping
    /// clients found through discovery files.
    pub processes: Vec<ProcessEntry>,
}

/// `POST /api/v1/wake` and `/api/v1/sleep`: which embedded clients.
///
/// A name means every live process registered under it (the workers of a service share one);
/// `pid` narrows it to one of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WakeTarget {
    /// A pid (a number or its text) or the name given to `scry.init(name=...)`.
    pub target: serde_json::Value,
    /// Only the process with this pid among those `target` names (refused when it is not one
    /// of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

/// `POST /api/v1/wake`: the clients' processes, now connected. A name wakes every process
/// registered under it, all at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Woken {
    /// Every one was awake already (nothing was done).
    pub already_awake: bool,
    /// The first of `processes` (by pid), kept for callers that name one process.
    pub process: ProcessView,
    /// Each process acted on, by pid: woken, or found awake already.
    pub processes: Vec<WokenProcess>,
    /// Processes of the target that could not be woken (the others were).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<ProcessFailure>,
}

/// One process of a [`Woken`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WokenProcess {
    /// It was awake already (nothing was done to it).
    pub already_awake: bool,
    /// The process as the daemon now knows it.
    pub process: ProcessView,
}

/// `POST /api/v1/sleep`: the clients' agents are gone, their hooks removed. A name puts every
/// awake process registered under it to sleep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Slept {
    /// Every one was sleeping already (nothing was done).
    pub already_sleeping: bool,
    /// The first pid of `processes`, kept for callers that name one process.
    pub pid: u32,
    /// Each process acted on, by pid.
    pub processes: Vec<SleptProcess>,
    /// Processes of the target that could not be put to sleep (the others were).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<ProcessFailure>,
}

/// One process of a [`Slept`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SleptProcess {
    /// Its pid.
    pub pid: u32,
    /// Its registered name.
    #[serde(default)]
    pub name: Option<String>,
    /// It was sleeping already (nothing was done to it).
    pub already_sleeping: bool,
}

/// A process that an action on several could not act on, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessFailure {
    /// Its pid.
    pub pid: u32,
    /// What went wrong, as the API's error object would say it.
    pub error: crate::Error,
}

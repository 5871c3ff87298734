//! Attaching to a process that never loaded scry (`POST /api/v1/attach`, `POST /api/v1/follow`,
//! the MCP tool `attach`): an [`AttachRequest`] in, an [`AttachReport`] out.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What to attach to, and how.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AttachRequest {
    /// The process (as the daemon sees it).
    pub pid: u32,
    /// How long the target has to pick the bootstrap up, in milliseconds (default 5000, at most
    /// 600000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<f64>,
    /// `auto` (the default), `pep768` (CPython 3.14+) or `gdb` (3.8-3.13).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injector: Option<String>,
}

/// What a successful attach reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttachReport {
    /// The pid.
    pub pid: u32,
    /// The process's row (as in `scry ps`).
    pub process_id: i64,
    /// True when an agent was already connected: nothing was done.
    pub already_attached: bool,
    /// The injector used (`pep768`, `gdb`), when one ran.
    #[serde(default)]
    pub injector: Option<String>,
    /// The target's Python version, when an injector ran.
    #[serde(default)]
    pub python_version: Option<String>,
    /// Milliseconds until the target picked the bootstrap up.
    #[serde(default)]
    pub picked_up_ms: Option<f64>,
    /// Milliseconds from the start of the attach until the agent was registered.
    #[serde(default)]
    pub connected_ms: Option<f64>,
    /// Where the agent and bootstrap were placed (as the target sees it; removed by now).
    #[serde(default)]
    pub placed_in: Option<PathBuf>,
    /// `follow`: the tree under the process is followed from now on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub following: Option<bool>,
    /// `follow`: it already was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub already_following: Option<bool>,
}

/// A process named by pid (`POST /api/v1/detach`, `POST /api/v1/unfollow`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PidRequest {
    /// The process.
    pub pid: u32,
}

/// How an attach would go, checked without touching the process (`GET /api/v1/attach/plan`):
/// which injector, and what to tell the user first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttachPlan {
    /// The process.
    pub pid: u32,
    /// The injector that would run (`pep768`, `gdb`).
    pub injector: String,
    /// What the user should know before it runs (gdb stops the process briefly).
    #[serde(default)]
    pub notice: Option<String>,
}

/// `POST /api/v1/detach`: what became of the process's agent (and, for the root of a follow,
/// of the agents the follow injected in its tree).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detached {
    /// The process.
    pub pid: u32,
    /// Its store row id, when an agent was detached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_id: Option<i64>,
    /// An agent was removed (false: only a follow was stopped).
    pub detached: bool,
    /// How the agent had come: `injected`, `embedded`, `run`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// A follow of this pid's tree was stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unfollowed: Option<bool>,
    /// The pid was a followed root: the other processes of its tree whose agents the follow
    /// had injected, detached too (ascending pids).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tree_detached: Vec<u32>,
    /// ... and those that could not be detached, with why.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub tree_failed: std::collections::BTreeMap<u32, String>,
}

/// One restart a follow saw: a followed process exited and another appeared under the same
/// parent (a reloader's new worker).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Restart {
    /// The pid that exited.
    pub old_pid: u32,
    /// The pid that replaced it.
    pub new_pid: u32,
    /// Their parent.
    pub parent: u32,
    /// When (epoch seconds).
    pub at: f64,
}

/// What one follow (`scry attach --follow`) knows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FollowState {
    /// The followed root.
    pub root: u32,
    /// Since when (epoch seconds).
    pub since: f64,
    /// Pids attached by this follow (and still alive).
    pub attached: Vec<u32>,
    /// Pids it could not attach to, with the last error.
    pub failed: std::collections::BTreeMap<u32, String>,
    /// Restarts seen.
    pub restarts: Vec<Restart>,
}

/// `GET /api/v1/follow`: every follow in progress.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FollowList {
    /// The follows.
    pub follows: Vec<FollowState>,
}

/// `POST /api/v1/unfollow`: whether a follow was stopped (the agents stay).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unfollowed {
    /// The pid asked about.
    pub pid: u32,
    /// A follow was stopped.
    pub stopped: bool,
}

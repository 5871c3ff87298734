//! Starting debugpy in a running process (`POST /api/v1/debug`, `scry debug`): a
//! [`DebugRequest`] in, a [`DebugReport`] out.

use serde::{Deserialize, Serialize};

/// Where debugpy should listen, and how long the process has to start it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebugRequest {
    /// The Python process.
    pub pid: u32,
    /// The loopback port (0: any free port).
    pub port: u16,
    /// How long the process has to pick the script up, in milliseconds (default 10000, at most
    /// 600000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<f64>,
}

/// debugpy listens in the process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DebugReport {
    /// The process.
    pub pid: u32,
    /// Always `127.0.0.1`: debugpy listens on loopback only.
    pub host: String,
    /// The port it listens on.
    pub port: u16,
    /// It already listened (started by an earlier `scry debug`).
    pub already: bool,
    /// The process's working directory (the remote root of path mappings).
    pub cwd: String,
    /// The process's Python version.
    #[serde(default)]
    pub python_version: Option<String>,
    /// debugpy's version.
    #[serde(default)]
    pub debugpy: Option<String>,
    /// How the script got in (`pep768`, `gdb`).
    pub injector: String,
}

/// `GET /api/v1/debug/target?pid=P[&timeout_ms=T]`: which process `scry debug --follow P`
/// debugs, and whose new workers it follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebugTarget {
    /// The process to start debugpy in: P itself, or the worker of P when P is a reload
    /// supervisor (uvicorn/flask/django `--reload`, watchfiles).
    pub pid: u32,
    /// The process whose children are followed: P when it is a reload supervisor, else P's
    /// parent.
    pub supervisor: u32,
    /// P is a reload supervisor.
    pub reload_supervisor: bool,
}

/// `GET /api/v1/debug/next?supervisor=S&after=W&port=N[&wait_ms=T]`: the worker that replaced
/// `W` under `S`, once the debug port is free for it; waits up to `wait_ms` (default 10000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextWorker {
    /// The new worker, when one appeared (None: nothing new within the wait; ask again).
    pub worker: Option<u32>,
    /// The supervisor still runs (false: stop following).
    pub supervisor_alive: bool,
}

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

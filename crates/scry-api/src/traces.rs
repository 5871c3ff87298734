//! Call traces: `POST /api/v1/traces` (and the MCP tool `trace_start`) takes a [`NewTrace`].

use serde::{Deserialize, Serialize};

/// A request to start a call trace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTrace {
    /// A pid or a process name (matched against the name given to `scry.init`, else the
    /// script's file name); `all` traces every connected process, `run` the processes of every
    /// `scry run`, `run:SESSION` those of one `scry run` session.
    pub target: String,
    /// Only modules matching these patterns (default: the program's own code).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// Never modules matching these patterns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// Only calls of these functions (`module:function`) and what they call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub functions: Vec<String>,
    /// Record call arguments.
    #[serde(default)]
    pub args: bool,
    /// Record return values.
    #[serde(default)]
    pub returns: bool,
    /// At most this many events a second per process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rate: Option<f64>,
    /// Stop by itself after this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<f64>,
}

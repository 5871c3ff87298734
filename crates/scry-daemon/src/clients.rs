//! Embedded clients that sleep: found through their discovery files
//! (`$SCRY_HOME/clients/<pid>.json`) and woken or put to sleep through their control planes.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Home;

/// What an embedded client wrote about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientFile {
    /// Its pid.
    pub pid: u32,
    /// Its name.
    #[serde(default)]
    pub name: Option<String>,
    /// Control plane host.
    pub control_host: String,
    /// Control plane port.
    pub control_port: u16,
    /// `sleeping` or `awake`, as the client last wrote it.
    #[serde(default)]
    pub state: Option<String>,
    /// Python version.
    #[serde(default, alias = "python")]
    pub python_version: Option<Value>,
    /// Interpreter path.
    #[serde(default)]
    pub executable: Option<String>,
    /// Process start time (epoch seconds).
    #[serde(default)]
    pub started_at: Option<f64>,
}

/// Every discovery file whose process is alive. Files of dead processes are removed (they
/// were left by a process that could not clean up, e.g. killed with SIGKILL).
pub fn discover(home: &Home) -> Vec<ClientFile> {
    let dir = home.clients_dir();
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in rd.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let parsed: Option<ClientFile> = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        match parsed {
            Some(c) if scry_proc::alive(c.pid, None) => out.push(c),
            Some(_) => {
                let _ = std::fs::remove_file(&path);
            }
            None => {
                tracing::debug!(target: "daemon", path = %path.display(), "unreadable discovery file")
            }
        }
    }
    out.sort_by_key(|c| c.pid);
    out
}

/// Errors reaching a control plane.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The HTTP request failed.
    #[error("cannot reach the control plane of pid {pid} at {addr}: {message}")]
    Unreachable {
        /// The client's pid.
        pid: u32,
        /// Its address.
        addr: String,
        /// Why.
        message: String,
    },
    /// The client answered with an error.
    #[error("pid {pid} refused: {message}")]
    Refused {
        /// The client's pid.
        pid: u32,
        /// What it said.
        message: String,
    },
}

/// Calls `POST /scry/{action}` on a client's control plane with an optional JSON body.
pub async fn control(
    client: &ClientFile,
    action: &str,
    body: Option<Value>,
) -> Result<Value, ControlError> {
    let host = if client.control_host.contains(':') {
        format!("[{}]", client.control_host)
    } else {
        client.control_host.clone()
    };
    let addr = format!("{host}:{}", client.control_port);
    let unreachable = |message: String| ControlError::Unreachable {
        pid: client.pid,
        addr: addr.clone(),
        message,
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .no_proxy()
        .build()
        .map_err(|e| unreachable(e.to_string()))?;
    let mut req = http.post(format!("http://{addr}/scry/{action}"));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.map_err(|e| unreachable(e.to_string()))?;
    let status = resp.status();
    let value: Value = resp.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        Ok(value)
    } else {
        let message = value
            .pointer("/error/message")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("HTTP {status}"));
        Err(ControlError::Refused {
            pid: client.pid,
            message,
        })
    }
}

//! Embedded clients that sleep: found through their discovery files
//! (`$SCRY_HOME/clients/<pid>.json`) and woken or put to sleep through their control planes.
//!
//! A control plane is a unix socket (`$SCRY_HOME/run/clients/<pid>.sock`, the default; the
//! client answers only its own uid and root, checked with `SO_PEERCRED`) or, when its user asked
//! for TCP, `host:port`, where every request must carry `Authorization: Bearer <token>`.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Home;
use scry_proto::ControlAddr;

/// What an embedded client wrote about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientFile {
    /// Its pid.
    pub pid: u32,
    /// Its name.
    #[serde(default)]
    pub name: Option<String>,
    /// Control plane host (TCP control planes only).
    #[serde(default)]
    pub control_host: Option<String>,
    /// Control plane port (TCP control planes only).
    #[serde(default)]
    pub control_port: Option<u16>,
    /// The control plane's unix socket.
    #[serde(default)]
    pub control_socket: Option<String>,
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

impl ClientFile {
    /// The control plane's address as the API shows it: a socket, or a host and port.
    pub fn control(&self) -> Option<ControlAddr> {
        match (&self.control_socket, &self.control_host, self.control_port) {
            (Some(path), _, _) => Some(ControlAddr {
                socket: Some(path.clone()),
                host: None,
                port: None,
            }),
            (None, Some(host), Some(port)) => Some(ControlAddr {
                socket: None,
                host: Some(host.clone()),
                port: Some(port),
            }),
            _ => None,
        }
    }
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
            Some(c) => {
                let _ = std::fs::remove_file(&path);
                // Its control socket too, when it is where a client of this home puts it.
                if let Some(sock) = c.control_socket.as_deref().map(Path::new) {
                    if sock.parent() == Some(home.run_dir().join("clients").as_path()) {
                        let _ = std::fs::remove_file(sock);
                    }
                }
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

/// Calls `POST /scry/{action}` on a client's control plane with an optional JSON body: over its
/// unix socket, or over TCP with the token (`token`: the daemon's, which a client of the same
/// home shares).
pub async fn control(
    client: &ClientFile,
    token: Option<&str>,
    action: &str,
    body: Option<Value>,
) -> Result<Value, ControlError> {
    let builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .no_proxy();
    let (builder, addr, url) = match (&client.control_socket, &client.control_host, client.control_port) {
        (Some(path), _, _) => (
            builder.unix_socket(Path::new(path)),
            format!("unix:{path}"),
            // The host is only a name here: the request goes to the socket.
            format!("http://localhost/scry/{action}"),
        ),
        (None, Some(host), Some(port)) => {
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host.clone()
            };
            let addr = format!("{host}:{port}");
            let url = format!("http://{addr}/scry/{action}");
            (builder, addr, url)
        }
        _ => {
            return Err(ControlError::Unreachable {
                pid: client.pid,
                addr: "?".into(),
                message: "its discovery file names no control plane (neither `control_socket` nor `control_host`/`control_port`)".into(),
            })
        }
    };
    let unreachable = |message: String| ControlError::Unreachable {
        pid: client.pid,
        addr: addr.clone(),
        message,
    };
    let http = builder.build().map_err(|e| unreachable(e.to_string()))?;
    let mut req = http.post(url);
    if client.control_socket.is_none() {
        match token {
            Some(t) => req = req.bearer_auth(t),
            None => {
                return Err(unreachable(
                    "its control plane is on TCP, which needs the token, and this daemon has none: set SCRY_TOKEN (the client's) for the daemon too"
                        .into(),
                ))
            }
        }
    }
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

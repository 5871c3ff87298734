//! `scry status`.

use scry_api::DaemonStatus;
use scry_daemon::Home;
use serde::Serialize;
use serde_json::json;

use super::{age, CmdResult};
use crate::client::{DaemonClient, Reach};
use crate::error::ExitStatus;
use crate::printer::Printer;

/// Shows whether the daemon is up and what it holds.
pub async fn status(home: &Home, printer: &mut Printer) -> CmdResult {
    let client = DaemonClient::locate(home)?;
    let reach = client.reach().await;
    if reach == Reach::Busy {
        if printer.json {
            printer.json_value(&json!({"running": true, "busy": true, "url": client.base}))?;
        } else {
            printer.line(format!(
                "daemon: busy ({}): it is running but did not answer within {} s",
                client.base,
                crate::client::REACH_TIMEOUT.as_secs()
            ))?;
            printer.note("hint: try again shortly; its log is in $SCRY_HOME/daemon.log");
        }
        return Ok(ExitStatus::Failure);
    }
    if reach == Reach::NotRunning {
        if printer.json {
            printer.json_value(&json!({"running": false, "url": client.base}))?;
        } else {
            printer.line(format!("daemon: not running ({})", client.base))?;
            printer.note(
                "hint: `scry serve --daemon` starts it (any command that needs it starts it too)",
            );
        }
        return Ok(ExitStatus::NotRunning);
    }
    let s: DaemonStatus = client.get_as("/api/v1/status").await?;
    if printer.json {
        printer.json_value(&Running {
            status: &s,
            running: true,
        })?;
        return Ok(ExitStatus::Success);
    }
    printer.line(format!(
        "daemon: running, version {}, pid {}, up {}",
        s.version,
        s.pid,
        age(s.uptime_s)
    ))?;
    printer.line(format!(
        "local API: {} (this user and root)",
        s.api_socket.display()
    ))?;
    printer.line(format!(
        "http: http://{} (the token on every request)",
        s.http
    ))?;
    printer.line(format!("agents: {}", s.agent_socket.display()))?;
    if let Some(tcp) = &s.agent_tcp {
        printer.line(format!("agents (tcp): {tcp}"))?;
    }
    printer.line(format!(
        "processes: {} awake, {} sleeping, {} gone",
        s.processes.awake, s.processes.sleeping, s.processes.gone
    ))?;
    printer.line(format!("probes: {}", s.probes))?;
    printer.line(format!(
        "events stored: {} (dropped: {} by agents, {} by the daemon)",
        s.events_stored, s.dropped.by_agents, s.dropped.by_daemon
    ))?;
    let store = &s.store;
    match store.state.as_str() {
        "ok" => printer.line(format!(
            "store: ok ({} events not stored, {} deleted by retention)",
            store.not_stored, store.retention_deleted
        ))?,
        state => printer.line(format!(
            "store: {} for {} ({} events not stored; {}){}",
            if state == "full" {
                "DISK FULL"
            } else {
                "FAILING"
            },
            age(scry_daemon::now() - store.since.unwrap_or(0.0)),
            store.not_stored,
            store.last_error.as_deref().unwrap_or("no detail"),
            if state == "full" {
                "; free space and it resumes by itself"
            } else {
                ""
            }
        ))?,
    }
    printer.line(format!("home: {}", s.home.display()))?;
    Ok(ExitStatus::Success)
}

/// `scry status --json`: the daemon's status and that it runs.
#[derive(Serialize)]
struct Running<'a> {
    #[serde(flatten)]
    status: &'a DaemonStatus,
    running: bool,
}

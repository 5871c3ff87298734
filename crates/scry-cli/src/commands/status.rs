//! `scry status`.

use scry_daemon::Home;
use serde_json::{json, Value};

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
    let mut s = client.get("/api/v1/status").await?;
    if printer.json {
        s["running"] = Value::Bool(true);
        printer.json_value(&s)?;
        return Ok(ExitStatus::Success);
    }
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    printer.line(format!(
        "daemon: running, version {}, pid {}, up {}",
        s["version"].as_str().unwrap_or("?"),
        n(&s["pid"]),
        age(s["uptime_s"].as_f64().unwrap_or(0.0))
    ))?;
    printer.line(format!(
        "local API: {} (this user and root)",
        s["api_socket"].as_str().unwrap_or("?")
    ))?;
    printer.line(format!(
        "http: http://{} (the token on every request)",
        s["http"].as_str().unwrap_or("?")
    ))?;
    printer.line(format!(
        "agents: {}",
        s["agent_socket"].as_str().unwrap_or("?")
    ))?;
    if let Some(tcp) = s["agent_tcp"].as_str() {
        printer.line(format!("agents (tcp): {tcp}"))?;
    }
    printer.line(format!(
        "processes: {} awake, {} sleeping, {} gone",
        n(&s["processes"]["awake"]),
        n(&s["processes"]["sleeping"]),
        n(&s["processes"]["gone"])
    ))?;
    printer.line(format!("probes: {}", n(&s["probes"])))?;
    printer.line(format!(
        "events stored: {} (dropped: {} by agents, {} by the daemon)",
        n(&s["events_stored"]),
        n(&s["dropped"]["by_agents"]),
        n(&s["dropped"]["by_daemon"])
    ))?;
    let store = &s["store"];
    match store["state"].as_str() {
        Some("ok") | None => printer.line(format!(
            "store: ok ({} events not stored, {} deleted by retention)",
            n(&store["not_stored"]),
            n(&store["retention_deleted"])
        ))?,
        Some(state) => printer.line(format!(
            "store: {} for {} ({} events not stored; {}){}",
            if state == "full" {
                "DISK FULL"
            } else {
                "FAILING"
            },
            age(scry_daemon::now() - store["since"].as_f64().unwrap_or(0.0)),
            n(&store["not_stored"]),
            store["last_error"].as_str().unwrap_or("no detail"),
            if state == "full" {
                "; free space and it resumes by itself"
            } else {
                ""
            }
        ))?,
    }
    printer.line(format!("home: {}", s["home"].as_str().unwrap_or("?")))?;
    Ok(ExitStatus::Success)
}

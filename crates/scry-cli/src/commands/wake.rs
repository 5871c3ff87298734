//! `scry wake` and `scry sleep`.

use scry_daemon::Home;
use serde_json::json;

use super::{emit, CmdResult};
use crate::cli::TargetArgs;
use crate::client::DaemonClient;
use crate::printer::Printer;

/// Wakes an embedded client through the daemon.
pub async fn wake(home: &Home, args: &TargetArgs, printer: &mut Printer) -> CmdResult {
    let mut client = DaemonClient::locate(home)?;
    client.ensure_running(printer).await?;
    let answer = client
        .post("/api/v1/wake", &json!({"target": args.target}))
        .await?;
    let pid = answer["process"]["pid"].as_u64().unwrap_or_default();
    let name = answer["process"]["name"]
        .as_str()
        .unwrap_or("unnamed")
        .to_owned();
    let already = answer["already_awake"].as_bool().unwrap_or(false);
    emit(printer, &answer, |p| {
        if already {
            p.line(format!("{name} (pid {pid}) is already awake"))
        } else {
            p.line(format!("{name} (pid {pid}) is awake and connected"))
        }
    })
}

/// Puts an awake agent to sleep through the daemon.
pub async fn sleep(home: &Home, args: &TargetArgs, printer: &mut Printer) -> CmdResult {
    let mut client = DaemonClient::locate(home)?;
    client.ensure_running(printer).await?;
    let answer = client
        .post("/api/v1/sleep", &json!({"target": args.target}))
        .await?;
    let pid = answer["pid"].as_u64().unwrap_or_default();
    let already = answer["already_sleeping"].as_bool().unwrap_or(false);
    emit(printer, &answer, |p| {
        if already {
            p.line(format!("pid {pid} is already sleeping"))
        } else {
            p.line(format!(
                "pid {pid} is asleep: hooks removed, connection closed"
            ))
        }
    })
}

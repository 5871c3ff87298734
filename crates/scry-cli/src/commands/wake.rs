//! `scry wake` and `scry sleep`.

use scry_api::{Slept, WakeTarget, Woken};
use scry_daemon::Home;

use super::{emit, CmdResult};
use crate::cli::TargetArgs;
use crate::client::DaemonClient;
use crate::printer::Printer;

/// Wakes an embedded client through the daemon.
pub async fn wake(home: &Home, args: &TargetArgs, printer: &mut Printer) -> CmdResult {
    let mut client = DaemonClient::locate(home)?;
    client.ensure_running(printer).await?;
    let answer: Woken = client.post_as("/api/v1/wake", &target(args)).await?;
    let pid = answer.process.pid;
    let name = answer.process.name.as_deref().unwrap_or("unnamed");
    emit(printer, &answer, |p| {
        if answer.already_awake {
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
    let answer: Slept = client.post_as("/api/v1/sleep", &target(args)).await?;
    let pid = answer.pid;
    emit(printer, &answer, |p| {
        if answer.already_sleeping {
            p.line(format!("pid {pid} is already sleeping"))
        } else {
            p.line(format!(
                "pid {pid} is asleep: hooks removed, connection closed"
            ))
        }
    })
}

fn target(args: &TargetArgs) -> WakeTarget {
    WakeTarget {
        target: args.target.clone().into(),
    }
}

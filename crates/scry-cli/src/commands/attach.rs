//! `scry attach` and `scry detach`: presentation only; the daemon does the work
//! (`POST /api/v1/attach`, `POST /api/v1/detach`, see `scry_daemon::service::attach`).

use scry_api::{AttachPlan, AttachRequest, Detached, PidRequest};
use scry_daemon::Home;

use super::{emit, CmdResult};
use crate::cli::{AttachArgs, DetachArgs};
use crate::client::{enc, DaemonClient};
use crate::error::{CliError, ExitStatus};
use crate::printer::Printer;

/// The longest `--timeout`: the whole attach must fit in one HTTP request.
const MAX_TIMEOUT_S: f64 = 30.0;
/// How long the attach request may take: the target's timeout, the agent's hello (15 s) and
/// gdb's own start.
const ATTACH_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(90);

/// Prints what the daemon says about an attach before it runs (gdb stops the process briefly),
/// and fails as the attach would when it cannot work. The daemon reads the target, not the CLI.
pub async fn announce(
    client: &DaemonClient,
    pid: u32,
    injector: Option<&str>,
    printer: &mut Printer,
) -> Result<(), CliError> {
    let mut path = format!("/api/v1/attach/plan?pid={pid}");
    if let Some(i) = injector {
        path.push_str(&format!("&injector={}", enc(i)));
    }
    let plan: AttachPlan = client.get_as(&path).await?;
    if let Some(notice) = plan.notice {
        printer.note(format!("note: {notice}"));
    }
    Ok(())
}

/// Attaches to a process through the daemon (started if needed).
pub async fn attach(home: &Home, args: &AttachArgs, printer: &mut Printer) -> CmdResult {
    if !(args.timeout > 0.0 && args.timeout <= MAX_TIMEOUT_S) {
        return Err(CliError::new(format!(
            "--timeout must be between 0 and {MAX_TIMEOUT_S} seconds, not {}",
            args.timeout
        )));
    }
    let mut client = DaemonClient::locate(home)?;
    client.ensure_running(printer).await?;
    announce(&client, args.pid, Some(&args.injector), printer).await?;
    let request = AttachRequest {
        pid: args.pid,
        timeout_ms: Some(args.timeout * 1e3),
        injector: Some(args.injector.clone()),
    };
    let report = client
        .attach(&request, args.follow, ATTACH_REQUEST_TIMEOUT)
        .await?;
    let pid = args.pid;
    emit(printer, &report, |p| {
        if report.following == Some(true) {
            let what = if report.already_following == Some(true) {
                "already followed"
            } else {
                "followed"
            };
            p.line(format!(
                "pid {pid} and every Python process below it are {what}: new ones are attached as they appear (restarts are reported in `scry logs`); `scry detach {pid}` stops it"
            ))?;
        }
        if report.already_attached {
            return p.line(format!(
                "pid {pid} already has a scry agent connected: nothing to do"
            ));
        }
        p.line(format!(
            "attached to pid {pid} (Python {}, {}): agent connected in {:.0} ms; `scry detach {pid}` removes it",
            report.python_version.as_deref().unwrap_or("?"),
            report.injector.as_deref().unwrap_or("?"),
            report.connected_ms.unwrap_or(0.0),
        ))
    })
}

/// Detaches the agent of a process.
pub async fn detach(home: &Home, args: &DetachArgs, printer: &mut Printer) -> CmdResult {
    let mut client = DaemonClient::locate(home)?;
    client.ensure_running(printer).await?;
    let answer: Detached = client
        .post_as("/api/v1/detach", &PidRequest { pid: args.pid })
        .await?;
    let pid = args.pid;
    emit(printer, &answer, |p| {
        if answer.detached {
            p.line(format!(
                "detached from pid {pid}: hooks removed, connection closed"
            ))?;
        } else {
            p.line(format!(
                "stopped following pid {pid}'s tree (it had no agent of its own)"
            ))?;
        }
        if answer.unfollowed == Some(true) && answer.detached {
            p.line("the follow it was part of is stopped")?;
        }
        if !answer.tree_detached.is_empty() {
            let pids: Vec<String> = answer.tree_detached.iter().map(u32::to_string).collect();
            p.line(format!(
                "detached the follow's {} other agent{} too: pid {}",
                pids.len(),
                if pids.len() == 1 { "" } else { "s" },
                pids.join(", ")
            ))?;
        }
        for (other, why) in &answer.tree_failed {
            p.line(format!("could not detach pid {other}: {why}"))?;
        }
        Ok(())
    })?;
    if answer.tree_failed.is_empty() {
        Ok(ExitStatus::Success)
    } else {
        Err(CliError::new(format!(
            "{} agent{} of pid {pid}'s tree could not be detached",
            answer.tree_failed.len(),
            if answer.tree_failed.len() == 1 {
                ""
            } else {
                "s"
            }
        ))
        .hint("retry with `scry detach PID` for each; `scry ps` lists the agents still connected"))
    }
}

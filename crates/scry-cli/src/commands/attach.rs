//! `scry attach` and `scry detach`: presentation only; the daemon does the work
//! (`POST /api/v1/attach`, `POST /api/v1/detach`, see `scry_daemon::attach`).

use scry_daemon::Home;
use serde_json::json;

use super::{emit, CmdResult};
use crate::cli::{AttachArgs, DetachArgs};
use crate::client::DaemonClient;
use crate::error::CliError;
use crate::printer::Printer;

/// The longest `--timeout`: the whole attach must fit in one HTTP request.
const MAX_TIMEOUT_S: f64 = 30.0;

/// Before 3.14 the daemon attaches through gdb, which stops the process: what to say first
/// (None for 3.14+, with `--injector pep768`, or without gdb).
pub fn gdb_notice(pid: u32, injector: Option<&str>) -> Option<String> {
    let before_314 = scry_proc::python::Detector::new()
        .detect(pid)
        .and_then(|p| p.version_hex)
        .is_some_and(|h| (h >> 16) & 0xffff < 0x030e);
    if !before_314 || injector == Some("pep768") {
        return None;
    }
    scry_proc::inject::gdb::Gdb::from_path().and_then(|g| {
        use scry_proc::inject::Injector;
        g.notice()
    })
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
    if let Some(notice) = gdb_notice(args.pid, Some(&args.injector)) {
        printer.note(format!("note: {notice}"));
    }
    let path = if args.follow {
        "/api/v1/follow"
    } else {
        "/api/v1/attach"
    };
    let answer = client
        .post(
            path,
            &json!({"pid": args.pid, "timeout_ms": args.timeout * 1e3, "injector": args.injector}),
        )
        .await?;
    let pid = args.pid;
    emit(printer, &answer, |p| {
        if answer["following"] == true {
            let what = if answer["already_following"] == true {
                "already followed"
            } else {
                "followed"
            };
            p.line(format!(
                "pid {pid} and every Python process below it are {what}: new ones are attached as they appear (restarts are reported in `scry logs`); `scry detach {pid}` stops it"
            ))?;
        }
        if answer["already_attached"].as_bool().unwrap_or(false) {
            return p.line(format!(
                "pid {pid} already has a scry agent connected: nothing to do"
            ));
        }
        p.line(format!(
            "attached to pid {pid} (Python {}, {}): agent connected in {:.0} ms; `scry detach {pid}` removes it",
            answer["python_version"].as_str().unwrap_or("?"),
            answer["injector"].as_str().unwrap_or("?"),
            answer["connected_ms"].as_f64().unwrap_or(0.0),
        ))
    })
}

/// Detaches the agent of a process.
pub async fn detach(home: &Home, args: &DetachArgs, printer: &mut Printer) -> CmdResult {
    let mut client = DaemonClient::locate(home)?;
    client.ensure_running(printer).await?;
    let answer = client
        .post("/api/v1/detach", &json!({"pid": args.pid}))
        .await?;
    let pid = args.pid;
    emit(printer, &answer, |p| {
        p.line(format!(
            "detached from pid {pid}: hooks removed, connection closed"
        ))
    })
}

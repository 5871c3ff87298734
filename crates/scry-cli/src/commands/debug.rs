//! `scry debug PID [--port P]`: start debugpy inside a running Python process, listening on
//! loopback only, and print how to attach VS Code or nvim-dap to it.
//!
//! The daemon does the work (`POST /api/v1/debug`, `scry_daemon::service::debug`: the injector
//! for the target's version, the script placed in the target's root by the one placement of
//! scry, waiting until debugpy listens); this command says first what the injection does to the
//! process, and prints the attach configurations. With `--follow` the daemon finds the worker
//! of a reload supervisor (`GET /api/v1/debug/target`) and each worker that replaces it
//! (`GET /api/v1/debug/next`), and this command starts debugpy in each.

use std::time::Duration;

use scry_api::{DebugReport, DebugRequest, DebugTarget, NextWorker};
use scry_daemon::Home;
use serde_json::{json, Value};

use super::CmdResult;
use crate::cli::DebugArgs;
use crate::client::DaemonClient;
use crate::error::{CliError, ExitStatus};
use crate::printer::Printer;

/// A Python string literal.
fn py_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "''".into())
}

/// The VS Code and nvim-dap configurations for a debugpy on 127.0.0.1:`port`.
pub fn configurations(port: u16, remote_root: &str) -> (Value, String) {
    let vscode = json!({
        "version": "0.2.0",
        "configurations": [{
            "name": format!("scry: attach to 127.0.0.1:{port}"),
            "type": "debugpy",
            "request": "attach",
            "connect": {"host": "127.0.0.1", "port": port},
            "pathMappings": [{"localRoot": "${workspaceFolder}", "remoteRoot": remote_root}],
            "justMyCode": false
        }]
    });
    let nvim = format!(
        "require('dap').configurations.python = {{\n  {{\n    type = 'python',\n    request = 'attach',\n    name = 'scry: attach to 127.0.0.1:{port}',\n    connect = {{ host = '127.0.0.1', port = {port} }},\n    pathMappings = {{ {{ localRoot = vim.fn.getcwd(), remoteRoot = {} }} }},\n    justMyCode = false,\n  }},\n}}",
        py_str(remote_root).replace('"', "'")
    );
    (vscode, nvim)
}

/// How long the daemon may take: the target's timeout, debugpy's start (up to 30 s) and gdb's.
fn request_timeout(timeout: Duration) -> Duration {
    timeout.max(Duration::from_secs(30)) + Duration::from_secs(30)
}

/// Asks the daemon to start debugpy in `pid` on `port`, saying first what the injection does.
async fn start_debugpy(
    client: &DaemonClient,
    pid: u32,
    port: u16,
    timeout: Duration,
    printer: &mut Printer,
) -> Result<DebugReport, CliError> {
    super::attach::announce(client, pid, None, printer).await?;
    let request = DebugRequest {
        pid,
        port,
        timeout_ms: Some(timeout.as_secs_f64() * 1e3),
    };
    client
        .post_within("/api/v1/debug", &request, request_timeout(timeout))
        .await
}

/// `scry debug PID [--port P] [--follow]`.
pub async fn debug(home: &Home, args: &DebugArgs, printer: &mut Printer) -> CmdResult {
    let timeout = Duration::from_secs_f64(args.timeout);
    if !(args.timeout > 0.0 && args.timeout <= 600.0) {
        return Err(CliError::new(format!(
            "--timeout must be between 0 and 600 seconds, not {}",
            args.timeout
        )));
    }
    let mut client = DaemonClient::locate(home)?;
    client.ensure_running(printer).await?;
    // With --follow, PID may be a reload supervisor: debug its worker, and the next one.
    let (mut pid, supervisor) = if args.follow {
        let target: DebugTarget = client
            .get_as_within(
                &format!(
                    "/api/v1/debug/target?pid={}&timeout_ms={}",
                    args.pid,
                    timeout.as_secs_f64() * 1e3
                ),
                request_timeout(timeout),
            )
            .await?;
        (target.pid, target.supervisor)
    } else {
        (args.pid, 0)
    };
    let started = start_debugpy(&client, pid, args.port, timeout, printer).await?;
    print_started(printer, pid, &started)?;
    if !args.follow {
        return Ok(ExitStatus::Success);
    }
    // Follow: when the worker is replaced (a reload), start debugpy in the new one on the same
    // port. Runs until the supervisor exits or ctrl-c. The daemon watches the tree; each ask
    // waits up to NEXT_WAIT for a change.
    let port = started.port;
    printer.note(format!(
        "following: debugpy is started again on port {port} in each new worker of {supervisor} (ctrl-c stops)"
    ));
    loop {
        let path = format!(
            "/api/v1/debug/next?supervisor={supervisor}&after={pid}&port={port}&wait_ms={}",
            NEXT_WAIT.as_millis()
        );
        let next: NextWorker = tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(ExitStatus::Success),
            next = client.get_as_within(&path, NEXT_WAIT + Duration::from_secs(30)) => next?,
        };
        if !next.supervisor_alive {
            printer.note(format!("{supervisor} exited: stopped following"));
            return Ok(ExitStatus::Success);
        }
        let Some(worker) = next.worker else {
            continue;
        };
        printer.note(format!("restart: pid {pid} -> pid {worker}"));
        match start_debugpy(&client, worker, port, timeout, printer).await {
            Ok(s) => {
                pid = worker;
                print_started(printer, pid, &s)?;
            }
            Err(e) => {
                printer.note(format!("error: pid {worker}: {}", e.message));
                pid = worker;
            }
        }
    }
}

/// How long one ask for the next worker waits in the daemon.
const NEXT_WAIT: Duration = Duration::from_secs(10);

fn print_started(printer: &mut Printer, pid: u32, started: &DebugReport) -> Result<(), CliError> {
    let port = started.port;
    let (vscode, nvim) = configurations(port, &started.cwd);
    if printer.json {
        // One JSON document per line (with --follow, one per worker).
        let mut doc: Value = serde_json::to_value(started)
            .map_err(|e| CliError::new(format!("cannot encode the answer: {e}")))?;
        doc["pid"] = json!(pid);
        doc["vscode"] = vscode;
        doc["nvim_dap"] = json!(nvim);
        printer.line(doc.to_string())?;
        return Ok(());
    }
    let what = if started.already {
        "already listens"
    } else {
        "listens"
    };
    printer.line(format!(
        "debugpy {what} in process {pid} on 127.0.0.1:{port} (loopback only; injected with {})",
        started.injector
    ))?;
    printer.line("")?;
    printer.line("VS Code (.vscode/launch.json):")?;
    let pretty = serde_json::to_string_pretty(&vscode).unwrap_or_default();
    for line in pretty.lines() {
        printer.line(format!("  {line}"))?;
    }
    printer.line("")?;
    printer.line("nvim-dap:")?;
    for line in nvim.lines() {
        printer.line(format!("  {line}"))?;
    }
    Ok(())
}

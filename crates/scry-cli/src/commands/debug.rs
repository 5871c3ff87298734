//! `scry debug PID [--port P]`: start debugpy inside a running Python process, listening on
//! loopback only, and print how to attach VS Code or nvim-dap to it.
//!
//! The daemon does the work (`POST /api/v1/debug`, `scry_daemon::service::debug`: the injector
//! for the target's version, the script placed in the target's root by the one placement of
//! scry, waiting until debugpy listens); this command says first what the injection does to the
//! process, and prints the attach configurations. With `--follow` it asks again for each new
//! worker of a reload supervisor.

use std::time::{Duration, Instant};

use scry_api::{DebugReport, DebugRequest};
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

/// The worker to debug under a reload supervisor: its first Python child that is not a
/// multiprocessing helper.
fn worker_of(supervisor: u32) -> Option<u32> {
    let mut detector = scry_proc::python::Detector::new();
    scry_proc::tree(supervisor)
        .into_iter()
        .filter(|(p, depth)| *depth == 1 && p.state != 'Z')
        .filter(|(p, _)| {
            !matches!(
                scry_proc::python::role_of(&p.cmdline, None),
                Some(
                    scry_proc::python::Role::ResourceTracker | scry_proc::python::Role::Forkserver
                )
            )
        })
        .find(|(p, _)| detector.detect(p.pid).is_some_and(|i| i.short != "?"))
        .map(|(p, _)| p.pid)
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
        let info = scry_proc::info(args.pid).map_err(|_| {
            CliError::new(format!("no process with pid {}", args.pid))
                .hint("list Python processes with `scry ps --all`")
        })?;
        let parent_cmdline = scry_proc::info(info.ppid).ok().map(|p| p.cmdline);
        match scry_proc::python::role_of(&info.cmdline, parent_cmdline.as_deref()) {
            Some(scry_proc::python::Role::ReloadSupervisor { .. }) => {
                let deadline = Instant::now() + timeout;
                let worker = loop {
                    if let Some(w) = worker_of(args.pid) {
                        break w;
                    }
                    if Instant::now() > deadline {
                        return Err(CliError::new(format!(
                            "reload supervisor {} has no Python worker to debug",
                            args.pid
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                };
                (worker, args.pid)
            }
            _ => (args.pid, info.ppid),
        }
    } else {
        (args.pid, 0)
    };
    let started = start_debugpy(&client, pid, args.port, timeout, printer).await?;
    print_started(printer, pid, &started)?;
    if !args.follow {
        return Ok(ExitStatus::Success);
    }
    // Follow: when the worker is replaced (a reload), start debugpy in the new one on the same
    // port. Runs until the supervisor exits or ctrl-c.
    let port = started.port;
    printer.note(format!(
        "following: debugpy is started again on port {port} in each new worker of {supervisor} (ctrl-c stops)"
    ));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(ExitStatus::Success),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        if !scry_proc::alive(supervisor, None) {
            printer.note(format!("{supervisor} exited: stopped following"));
            return Ok(ExitStatus::Success);
        }
        let Some(worker) = worker_of(supervisor) else {
            continue;
        };
        if worker == pid {
            continue;
        }
        // The old worker's port is free only once it exited.
        if scry_proc::listens_on_loopback(worker, port)
            || scry_proc::alive(pid, None) && scry_proc::listens_on_loopback(pid, port)
        {
            continue;
        }
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

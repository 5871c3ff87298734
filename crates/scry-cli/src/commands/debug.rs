//! `scry debug PID [--port P]`: start debugpy inside a running Python process, listening on
//! loopback only, and print how to attach VS Code or nvim-dap to it.
//!
//! Steps: recognise the target's Python (`scry_proc::python`), pick the injector for its version
//! (PEP 768 on 3.14+, gdb on 3.8–3.13, saying first that gdb stops it briefly), place a small
//! script in the target's own root (`/proc/PID/root/tmp/scry-debug-<random>/`, created
//! exclusively, mode 0700, by the target's own user through [`scry_proc::place`], the placement
//! `scry attach` uses), run it in the target. The script starts
//! a thread that imports debugpy and calls `debugpy.listen(("127.0.0.1", port))`, then writes a
//! status file (port, working directory) or why it failed (debugpy not importable: with the
//! target's interpreter and `sys.path`, to say how to install it). scry waits for that file and
//! for the port to be in LISTEN state in `/proc/PID/net/tcp`, removes the directory, and
//! prints the attach configurations. Injecting again into a process where scry already started
//! debugpy reports the port it listens on.

use std::time::{Duration, Instant};

use scry_proc::place;
use serde_json::{json, Value};

use super::CmdResult;
use crate::cli::DebugArgs;
use crate::error::{CliError, ExitStatus};
use crate::printer::Printer;

/// The most of the status file scry reads (it is a line of JSON).
const STATUS_LIMIT: usize = 1 << 20;

/// The script run in the target. `{STATUS}` and `{PORT}` are substituted.
const SCRIPT: &str = r#"
import json as _json, os as _os, sys as _sys, threading as _threading

_STATUS = {STATUS}
_PORT = {PORT}


def _scry_write(data):
    tmp = _STATUS + ".tmp"
    with open(tmp, "w") as f:
        _json.dump(data, f)
    _os.replace(tmp, _STATUS)


def _scry_listen():
    base = {"pid": _os.getpid(), "cwd": _os.getcwd(), "executable": _sys.executable,
            "python": _sys.version.split()[0]}
    try:
        already = getattr(_sys, "_scry_debugpy_port", None)
        if already:
            base.update(ok=True, port=already, already=True)
            _scry_write(base)
            return
        try:
            import debugpy
        except Exception as exc:
            base.update(ok=False, kind="no_debugpy", error=repr(exc), path=list(_sys.path))
            _scry_write(base)
            return
        addr = debugpy.listen(("127.0.0.1", _PORT))
        port = addr[1] if isinstance(addr, tuple) else _PORT
        _sys._scry_debugpy_port = port
        base.update(ok=True, port=port, already=False, debugpy=getattr(debugpy, "__version__", "?"))
        _scry_write(base)
    except BaseException as exc:
        base.update(ok=False, kind="listen_failed", error=repr(exc))
        try:
            _scry_write(base)
        except Exception:
            pass


_threading.Thread(target=_scry_listen, name="scry-debugpy", daemon=True).start()
"#;

/// A directory in the target's root for the script (`scry-debug-<random>`), made by the one
/// placement of scry ([`scry_proc::place`], as `scry attach` does): created, written, read and
/// removed with the target's credentials, relative to directory fds, never following a link.
fn place(pid: u32) -> Result<place::Placement, CliError> {
    place::Placement::create(pid, "scry-debug", "script").map_err(place_error)
}

fn place_error(e: place::PlaceError) -> CliError {
    let hint = e.hint();
    let message = match &e {
        place::PlaceError::Io { source, .. } => format!("{e}: {source}"),
        _ => e.to_string(),
    };
    let err = CliError::new(message);
    match hint {
        Some(h) => err.hint(h),
        None => err,
    }
}

/// A Python string literal.
fn py_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "''".into())
}

/// Whether `pid` has a TCP socket listening on 127.0.0.1:`port` (its own network namespace's
/// `/proc/PID/net/tcp`).
fn listening(pid: u32, port: u16) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")) else {
        return false;
    };
    let want = format!("0100007F:{port:04X}");
    text.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1) == Some(&want.as_str()) && f.get(3) == Some(&"0A")
    })
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

/// What an injection of debugpy reported.
struct Started {
    status: Value,
    port: u16,
    injector: &'static str,
}

/// Injects debugpy into `pid` listening on 127.0.0.1:`port` and waits until it listens.
async fn start_debugpy(
    pid: u32,
    port: u16,
    timeout: Duration,
    printer: &mut Printer,
) -> Result<Started, CliError> {
    let info = scry_proc::info(pid).map_err(|_| {
        CliError::new(format!("no process with pid {pid}"))
            .hint("list Python processes with `scry ps --all`")
    })?;
    let python = scry_proc::python::Detector::new()
        .detect(pid)
        .ok_or_else(|| {
            CliError::new(format!(
                "process {pid} ({}) is not a Python process: no CPython interpreter is mapped in its memory",
                info.comm
            ))
            .hint("list Python processes with `scry ps --all`")
        })?;
    let version = python
        .version_hex
        .map(|h| ((h >> 24) & 0xff, (h >> 16) & 0xff))
        .or_else(|| {
            let (a, b) = python.short.trim_end_matches('t').split_once('.')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .unwrap_or((0, 0));
    let injector = scry_proc::inject::for_version(pid, version).map_err(inject_error)?;
    if let Some(notice) = injector.notice() {
        printer.note(format!("note: {notice}"));
    }
    let placement = place(pid)?;
    let status_target = placement.target_path("status.json");
    let script = SCRIPT
        .replace("{STATUS}", &py_str(&status_target.to_string_lossy()))
        .replace("{PORT}", &port.to_string());
    placement
        .write_files([("debug.py", script.as_bytes())])
        .map_err(place_error)?;
    let script_target = placement.target_path("debug.py");
    let injection = {
        let injector = injector;
        tokio::task::spawn_blocking(move || injector.inject(pid, &script_target, timeout))
            .await
            .map_err(|e| CliError::new(format!("the injection task failed: {e}")))?
            .map_err(inject_error)?
    };
    // debugpy starts its adapter process: allow for a slow machine.
    let deadline = Instant::now() + timeout.max(Duration::from_secs(30));
    let status: Value = loop {
        // Read as the target's user, without following a link: the target writes this file.
        if let Some(v) = placement
            .read("status.json", STATUS_LIMIT)
            .map_err(place_error)?
            .and_then(|t| serde_json::from_slice(&t).ok())
        {
            break v;
        }
        if !scry_proc::alive(pid, Some(info.start_ticks)) {
            return Err(CliError::new(format!(
                "process {pid} exited while debugpy started"
            )));
        }
        if Instant::now() > deadline {
            return Err(CliError::new(format!(
                "process {pid} ran the script but debugpy did not report listening within {:.0} s",
                timeout.max(Duration::from_secs(30)).as_secs_f64()
            ))
            .hint(format!(
                "its stderr may say why; `scry dump {pid}` shows what it is doing"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if let Err(e) = placement.remove() {
        printer.note(format!("warning: {e}"));
    }
    if status["ok"] != true {
        let kind = status["kind"].as_str().unwrap_or("");
        let exe = status["executable"].as_str().unwrap_or("python");
        let error = status["error"].as_str().unwrap_or("?");
        return Err(if kind == "no_debugpy" {
            CliError::new(format!(
                "process {pid} cannot import debugpy ({error})"
            ))
            .hint(format!(
                "install it for the target's interpreter: `{exe} -m pip install debugpy` (or into the virtualenv/container image it runs from; its sys.path is {}), then run `scry debug {pid}` again",
                status["path"]
            ))
        } else {
            CliError::new(format!(
                "debugpy failed to listen in process {pid}: {error}"
            ))
            .hint(format!(
                "pick another port with `scry debug {pid} --port P` if this one is taken"
            ))
        });
    }
    let port = status["port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| CliError::new(format!("process {pid} reported no port: {status}")))?;
    while !listening(pid, port) {
        if Instant::now() > deadline {
            return Err(CliError::new(format!(
                "debugpy said it listens on 127.0.0.1:{port} in process {pid}, but no such socket is listening"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Started {
        status,
        port,
        injector: injection.injector,
    })
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
pub async fn debug(args: &DebugArgs, printer: &mut Printer) -> CmdResult {
    let timeout = Duration::from_secs_f64(args.timeout);
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
    let started = start_debugpy(pid, args.port, timeout, printer).await?;
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
        if listening(worker, port) || scry_proc::alive(pid, None) && listening(pid, port) {
            continue;
        }
        printer.note(format!("restart: pid {pid} -> pid {worker}"));
        match start_debugpy(worker, port, timeout, printer).await {
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

fn print_started(printer: &mut Printer, pid: u32, started: &Started) -> Result<(), CliError> {
    let status = &started.status;
    let port = started.port;
    let cwd = status["cwd"].as_str().unwrap_or("/");
    let (vscode, nvim) = configurations(port, cwd);
    if printer.json {
        // One JSON document per line (with --follow, one per worker).
        printer.line(
            json!({
                "pid": pid,
                "host": "127.0.0.1",
                "port": port,
                "already": status["already"],
                "cwd": cwd,
                "python_version": status["python"],
                "debugpy": status["debugpy"],
                "injector": started.injector,
                "vscode": vscode,
                "nvim_dap": nvim,
            })
            .to_string(),
        )?;
        return Ok(());
    }
    let what = if status["already"] == true {
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

fn inject_error(e: scry_proc::inject::InjectError) -> CliError {
    let hint = e.hint();
    let mut err = CliError::new(e.to_string());
    if let Some(h) = hint {
        err = err.hint(h);
    }
    err
}

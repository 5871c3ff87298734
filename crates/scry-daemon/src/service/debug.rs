//! Starting debugpy inside a running Python process, listening on loopback only (`scry debug`).
//!
//! Steps: the injector for the target's version, checked as an attach checks it
//! ([`super::attach::injector_for`]: PEP 768 on 3.14+, gdb on 3.8-3.13); a small script placed
//! in the target's own root by the one placement of scry ([`scry_proc::place`]: created,
//! written, read and removed with the target's credentials, never following a link), run in the
//! target. The script starts a thread that imports debugpy and calls
//! `debugpy.listen(("127.0.0.1", port))`, then writes a status file (port, working directory)
//! or why it failed (debugpy not importable: with the target's interpreter and `sys.path`, to
//! say how to install it). The daemon waits for that file and for the port to be in LISTEN
//! state in `/proc/PID/net/tcp`, and removes the directory. Asking again of a process where
//! debugpy already listens reports its port.

use std::time::{Duration, Instant};

use scry_api::{DebugReport, DebugRequest, DebugTarget, NextWorker};
use scry_proc::place;
use serde_json::Value;

use super::attach::{inject_error, injector_for, place_error};
use super::{Error, ErrorKind, Result};

/// The most of the status file the daemon reads (it is a line of JSON).
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

/// A Python string literal.
fn py_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "''".into())
}

/// Starts debugpy in the request's process and waits until it listens.
pub async fn start(req: &DebugRequest) -> Result<DebugReport> {
    let pid = super::attach::positive_pid(req.pid)?;
    let port = req.port;
    let timeout = super::attach::timeout_of(req.timeout_ms, Duration::from_secs(10))?;
    let start_ticks = scry_proc::info(pid)
        .map_err(|_| {
            Error::new(
                ErrorKind::NoSuchProcess,
                format!("no process with pid {pid}"),
            )
            .hint("list Python processes with `scry ps --all`")
        })?
        .start_ticks;
    let injector = tokio::task::spawn_blocking(move || injector_for(pid, None))
        .await
        .map_err(|e| Error::internal(format!("the debug task failed: {e}")))?
        .map_err(inject_error)?;
    let placement = place::Placement::create(pid, "scry-debug", "script").map_err(place_error)?;
    let status_target = placement.target_path("status.json");
    let script = SCRIPT
        .replace("{STATUS}", &py_str(&status_target.to_string_lossy()))
        .replace("{PORT}", &port.to_string());
    placement
        .write_files([("debug.py", script.as_bytes())])
        .map_err(place_error)?;
    let script_target = placement.target_path("debug.py");
    let injection =
        tokio::task::spawn_blocking(move || injector.inject(pid, &script_target, timeout))
            .await
            .map_err(|e| Error::internal(format!("the injection task failed: {e}")))?
            .map_err(inject_error)?;
    // debugpy starts its adapter process: allow for a slow machine.
    let wait = timeout.max(Duration::from_secs(30));
    let deadline = Instant::now() + wait;
    let status: Value = loop {
        // Read as the target's user, without following a link: the target writes this file.
        if let Some(v) = placement
            .read("status.json", STATUS_LIMIT)
            .map_err(place_error)?
            .and_then(|t| serde_json::from_slice(&t).ok())
        {
            break v;
        }
        if !scry_proc::alive(pid, Some(start_ticks)) {
            return Err(Error::new(
                ErrorKind::Exited,
                format!("process {pid} exited while debugpy started"),
            ));
        }
        if Instant::now() > deadline {
            return Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "process {pid} ran the script but debugpy did not report listening within {:.0} s",
                    wait.as_secs_f64()
                ),
            )
            .hint(format!(
                "its stderr may say why; `scry dump {pid}` shows what it is doing"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if let Err(e) = placement.remove() {
        tracing::warn!(target: "daemon", pid, "cannot remove the debug script's directory: {e}");
    }
    if status["ok"] != true {
        let exe = status["executable"].as_str().unwrap_or("python");
        let error = status["error"].as_str().unwrap_or("?");
        return Err(if status["kind"] == "no_debugpy" {
            Error::new(
                ErrorKind::NoDebugpy,
                format!("process {pid} cannot import debugpy ({error})"),
            )
            .hint(format!(
                "install it for the target's interpreter: `{exe} -m pip install debugpy` (or into the virtualenv/container image it runs from; its sys.path is {}), then run `scry debug {pid}` again",
                status["path"]
            ))
        } else {
            Error::new(
                ErrorKind::ListenFailed,
                format!("debugpy failed to listen in process {pid}: {error}"),
            )
            .hint(format!(
                "pick another port with `scry debug {pid} --port P` if this one is taken"
            ))
        });
    }
    let port = status["port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| Error::internal(format!("process {pid} reported no port: {status}")))?;
    while !scry_proc::listens_on_loopback(pid, port) {
        if Instant::now() > deadline {
            return Err(Error::new(
                ErrorKind::ListenFailed,
                format!(
                    "debugpy said it listens on 127.0.0.1:{port} in process {pid}, but no such socket is listening"
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = |k: &str| status[k].as_str().map(str::to_owned);
    Ok(DebugReport {
        pid,
        host: "127.0.0.1".into(),
        port,
        already: status["already"] == true,
        cwd: text("cwd").unwrap_or_else(|| "/".into()),
        python_version: text("python"),
        debugpy: text("debugpy"),
        injector: injection.injector.to_owned(),
    })
}

/// The worker to debug under a reload supervisor: its first live Python child that is not a
/// tool's helper (multiprocessing's, debugpy's).
fn worker_of(supervisor: u32) -> Option<u32> {
    use scry_proc::python::{role_of, Detector};
    let mut detector = Detector::new();
    scry_proc::tree(supervisor)
        .into_iter()
        .filter(|(p, depth)| *depth == 1 && p.state != 'Z')
        .filter(|(p, _)| !role_of(&p.cmdline, None).is_some_and(|r| r.is_helper()))
        .find(|(p, _)| detector.detect(p.pid).is_some_and(|i| i.short != "?"))
        .map(|(p, _)| p.pid)
}

/// How long a wait for a worker may last.
fn wait_of(wait_ms: Option<f64>) -> Result<Duration> {
    super::attach::timeout_of(wait_ms, Duration::from_secs(10))
}

/// What `scry debug --follow PID` debugs: PID's worker when PID is a reload supervisor (waiting
/// up to `timeout_ms` for one to start), else PID itself, following its parent.
pub async fn target(pid: u32, timeout_ms: Option<f64>) -> Result<DebugTarget> {
    let pid = super::attach::positive_pid(pid)?;
    let wait = wait_of(timeout_ms)?;
    let info = scry_proc::info(pid).map_err(|_| {
        Error::new(
            ErrorKind::NoSuchProcess,
            format!("no process with pid {pid}"),
        )
        .hint("list Python processes with `scry ps --all`")
    })?;
    let parent_cmdline = scry_proc::info(info.ppid).ok().map(|p| p.cmdline);
    let role = scry_proc::python::role_of(&info.cmdline, parent_cmdline.as_deref());
    if !matches!(role, Some(scry_proc::python::Role::ReloadSupervisor { .. })) {
        return Ok(DebugTarget {
            pid,
            supervisor: info.ppid,
            reload_supervisor: false,
        });
    }
    let deadline = Instant::now() + wait;
    loop {
        if let Some(worker) = worker_of(pid) {
            return Ok(DebugTarget {
                pid: worker,
                supervisor: pid,
                reload_supervisor: true,
            });
        }
        if Instant::now() > deadline {
            return Err(Error::new(
                ErrorKind::NoSuchProcess,
                format!("reload supervisor {pid} has no Python worker to debug"),
            )
            .hint(
                "start the service (or wait for its worker), then run `scry debug --follow` again",
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (up to `wait_ms`) for a worker of `supervisor` other than `after` whose debug `port`
/// is free: the old worker's port is free only once it exited, and a new worker that already
/// listens there needs nothing.
pub async fn next_worker(
    supervisor: u32,
    after: u32,
    port: u16,
    wait_ms: Option<f64>,
) -> Result<NextWorker> {
    let supervisor = super::attach::positive_pid(supervisor)?;
    let deadline = Instant::now() + wait_of(wait_ms)?;
    loop {
        if !scry_proc::alive(supervisor, None) {
            return Ok(NextWorker {
                worker: None,
                supervisor_alive: false,
            });
        }
        if let Some(worker) = worker_of(supervisor).filter(|w| *w != after) {
            let busy = scry_proc::listens_on_loopback(worker, port)
                || scry_proc::alive(after, None) && scry_proc::listens_on_loopback(after, port);
            if !busy {
                return Ok(NextWorker {
                    worker: Some(worker),
                    supervisor_alive: true,
                });
            }
        }
        if Instant::now() > deadline {
            return Ok(NextWorker {
                worker: None,
                supervisor_alive: true,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

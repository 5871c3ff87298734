//! `scry run [--debug] [--name N] -- CMD ARGS...`: runs a command with every Python process of
//! its tree loading the agent (a bootstrap `sitecustomize` first on `PYTHONPATH`), and owns the
//! terminal for the REPLs of that tree, which the daemon hands out one at a time.
//!
//! The terminal: the command runs in a process group of its own that is the terminal's
//! foreground group while no REPL is open, so ctrl-c reaches the program as usual. While a REPL
//! is open, `scry run`'s group is the foreground group: ctrl-c reaches only `scry run`, which
//! forwards it to the REPL (an interrupt of the command being run, or a fresh prompt).
//!
//! The terminal and its line editor are in `terminal.rs`, pdb listings' colours in
//! `highlight.rs`.

use std::os::fd::BorrowedFd;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use nix::sys::signal::{signal, SigHandler, Signal};
use nix::unistd::{getpgrp, isatty, setpgid, tcsetpgrp, Pid};
use scry_api::{BreakIn, BrokenIn, NewReplSession, ReplSessionCreated, TerminalEvent};
use scry_daemon::Home;
use serde_json::json;

use crate::cli::RunArgs;
use crate::client::DaemonClient;
use crate::error::CliError;
use crate::printer::Printer;

mod highlight;
mod terminal;

use terminal::{read_event, stdin_fd, KeyReader, Terminal};

/// The `sitecustomize.py` of the bootstrap directory: loads the agent, then the program's own
/// `sitecustomize` (the next one on `sys.path`), if any.
const SITECUSTOMIZE: &str = r#"# Written by `scry run`: loads the scry agent, then this program's own sitecustomize.
def _scry_bootstrap():
    import os
    import sys
    try:
        import scry._repl
        scry._repl.bootstrap_run()
    except Exception as err:  # never stop the program
        sys.stderr.write("scry run: the agent did not load: %r\n" % (err,))
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    try:
        import importlib.machinery
        import importlib.util
        spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
        if spec is not None and spec.loader is not None:
            module = importlib.util.module_from_spec(spec)
            sys.modules["sitecustomize"] = module
            spec.loader.exec_module(module)
    except ImportError:
        pass


_scry_bootstrap()
del _scry_bootstrap
"#;

/// Runs the command; returns its exit status (128+N when a signal N ended it).
pub async fn run(home: &Home, a: &RunArgs, printer: &mut Printer) -> Result<u8, CliError> {
    let Some((program, args)) = a.command.split_first() else {
        return Err(CliError::new("no command to run").hint("e.g. scry run -- python app.py"));
    };
    let mut client = DaemonClient::locate(home)?;
    client.ensure_running(printer).await?;
    let new = NewReplSession {
        name: a.name.clone(),
    };
    let created: ReplSessionCreated = client.post_as("/api/v1/repl/sessions", &new).await?;
    let session = created.id;
    let stream = follow_session(&client, &session).await?;

    remove_stale_bootstraps();
    let boot = tempfile::Builder::new()
        .prefix(&format!("{BOOT_PREFIX}{}-", std::process::id()))
        .tempdir()
        .map_err(|e| CliError::new(format!("cannot create the bootstrap directory: {e}")))?;
    scry_daemon::bundle::unpack_to(boot.path()).map_err(CliError::from_daemon)?;
    std::fs::write(boot.path().join("sitecustomize.py"), SITECUSTOMIZE)
        .map_err(|e| CliError::new(format!("cannot write the bootstrap: {e}")))?;

    let mut python_path = boot.path().as_os_str().to_owned();
    if let Some(old) = std::env::var_os("PYTHONPATH").filter(|p| !p.is_empty()) {
        python_path.push(":");
        python_path.push(old);
    }
    // Only a foreground `scry run` moves the terminal between groups (never steal it from the
    // shell when started in the background).
    let tty = isatty(0).unwrap_or(false)
        && nix::unistd::tcgetpgrp(stdin_fd()).is_ok_and(|fg| fg == getpgrp());
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env("PYTHONPATH", python_path)
        .env("PYTHONBREAKPOINT", "scry.pause")
        .env("SCRY_RUN_SESSION", &session)
        .env("SCRY_HOME", home.root());
    if let Some(n) = &a.name {
        cmd.env("SCRY_NAME", n);
    }
    if a.debug {
        cmd.env("SCRY_RUN_DEBUG", "1");
        cmd.env("SCRY_RUN_DEBUG_FILTER", a.debug_filter.join(","));
    } else {
        cmd.env_remove("SCRY_RUN_DEBUG");
    }
    // SAFETY: only async-signal-safe calls (setpgid, tcsetpgrp, signal, sigprocmask) between
    // fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let _ = signal(Signal::SIGTTOU, SigHandler::SigDfl);
            let _ = signal(Signal::SIGINT, SigHandler::SigDfl);
            if tty {
                setpgid(Pid::from_raw(0), Pid::from_raw(0)).map_err(std::io::Error::from)?;
                let stdin = BorrowedFd::borrow_raw(0);
                // We are not the foreground yet: SIGTTOU must not stop us meanwhile.
                let _ = signal(Signal::SIGTTOU, SigHandler::SigIgn);
                let _ = tcsetpgrp(stdin, getpgrp());
                let _ = signal(Signal::SIGTTOU, SigHandler::SigDfl);
            }
            Ok(())
        });
    }
    // SAFETY: ignoring a signal installs no handler code.
    unsafe {
        // We move the terminal's foreground between groups, also while in the background.
        let _ = signal(Signal::SIGTTOU, SigHandler::SigIgn);
    }
    let mut child = cmd.spawn().map_err(|e| {
        CliError::new(format!("cannot run `{program}`: {e}"))
            .hint("is it installed and on PATH? the command comes after `--`")
    })?;
    let child_pid = child.id().map(|p| Pid::from_raw(p as i32));
    if let (true, Some(pid)) = (tty, child_pid) {
        let _ = setpgid(pid, pid);
        let _ = tcsetpgrp(stdin_fd(), pid);
    }
    printer.note(format!(
        "scry run: session {session}; breakpoint() in any process of the tree opens a REPL here"
    ));

    let mut term = Terminal::new(printer, client, session.clone(), tty, child_pid);
    let mut lines = Box::pin(stream.bytes_stream());
    let mut stream_open = true;
    let mut pending = Vec::<u8>::new();
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| CliError::new(format!("cannot handle SIGINT: {e}")))?;
    let keys = KeyReader::start(tty);
    let mut keys_rx = keys.rx;
    let status = loop {
        tokio::select! {
            st = child.wait() => break st,
            chunk = lines.next(), if stream_open => match chunk {
                Some(Ok(bytes)) => {
                    pending.extend_from_slice(&bytes);
                    while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = pending.drain(..=i).collect();
                        if let Some(ev) = read_event(&line) {
                            term.on_event(&ev, &keys.active).await;
                        }
                    }
                }
                _ => {
                    term.note("scry run: the daemon closed the REPL stream; REPLs are off");
                    stream_open = false;
                }
            },
            Some(bytes) = keys_rx.recv() => term.on_keys(&bytes, &keys.active).await,
            _ = sigint.recv() => term.on_sigint().await,
        }
    };
    keys.active.store(false, Ordering::SeqCst);
    term.leave_prompt(&keys.active);
    if tty {
        let _ = tcsetpgrp(stdin_fd(), getpgrp());
    }
    let _ = term
        .client
        .delete(&format!("/api/v1/repl/sessions/{session}"))
        .await;
    drop(boot);
    let status = status.map_err(|e| CliError::new(format!("cannot wait for the command: {e}")))?;
    use std::os::unix::process::ExitStatusExt;
    Ok(match (status.code(), status.signal()) {
        (Some(c), _) => c as u8,
        (None, Some(s)) => (128 + s) as u8,
        _ => 1,
    })
}

/// The terminal stream of the REPL session the daemon just created.
async fn follow_session(
    client: &DaemonClient,
    session: &str,
) -> Result<reqwest::Response, CliError> {
    client
        .stream(&format!("/api/v1/repl/sessions/{session}/stream"))
        .await
}

/// `scry repl PID [--thread T]`: break into a running process and hold its REPL here.
pub async fn repl(
    home: &Home,
    a: &crate::cli::ReplArgs,
    printer: &mut Printer,
) -> Result<u8, CliError> {
    let mut client = DaemonClient::locate(home)?;
    client.ensure_running(printer).await?;
    let body = BreakIn {
        thread: a.thread.clone(),
    };
    let path = format!("/api/v1/processes/{}/repl", a.pid);
    let answer: BrokenIn = match client.post_as(&path, &body).await {
        Ok(answer) => answer,
        Err(first) => {
            // No agent to break into: a sleeping embedded client is woken, a process that never
            // loaded scry is attached (the daemon's `scry attach`), then ask again.
            match process_state(&client, a.pid).await.as_deref() {
                Some("awake") => return Err(first),
                Some("sleeping") => {
                    printer.note(format!(
                        "scry repl: pid {} has a sleeping scry client; waking it",
                        a.pid
                    ));
                    client
                        .post("/api/v1/wake", &json!({"target": a.pid.to_string()}))
                        .await?;
                }
                _ => {
                    printer.note(format!(
                        "scry repl: pid {} has no agent; attaching one (as `scry attach {}`)",
                        a.pid, a.pid
                    ));
                    super::attach::announce(&client, a.pid, None, printer).await?;
                    let request = scry_api::AttachRequest {
                        pid: a.pid,
                        timeout_ms: Some(REPL_ATTACH_TIMEOUT_MS),
                        injector: None,
                    };
                    client
                        .attach(&request, false, Duration::from_secs(90))
                        .await?;
                }
            }
            client.post_as(&path, &body).await?
        }
    };
    let session = answer.id;
    let stream = follow_session(&client, &session).await?;
    let tty = isatty(0).unwrap_or(false);
    printer.note(format!(
        "scry repl: stopping pid {} at its next Python line ({})",
        a.pid,
        answer.thread.as_deref().unwrap_or("main thread")
    ));
    let mut term = Terminal::new(printer, client, session.clone(), tty, None);
    let mut lines = Box::pin(stream.bytes_stream());
    let mut pending = Vec::<u8>::new();
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| CliError::new(format!("cannot handle SIGINT: {e}")))?;
    let keys = KeyReader::start(tty);
    let mut keys_rx = keys.rx;
    let mut opened = false;
    loop {
        tokio::select! {
            chunk = lines.next() => match chunk {
                Some(Ok(bytes)) => {
                    pending.extend_from_slice(&bytes);
                    while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = pending.drain(..=i).collect();
                        if let Some(ev) = read_event(&line) {
                            term.on_event(&ev, &keys.active).await;
                            match ev {
                                TerminalEvent::Open { .. } => opened = true,
                                TerminalEvent::Closed { .. } if opened => {
                                    let _ = term.client.delete(&format!("/api/v1/repl/sessions/{session}")).await;
                                    return Ok(0);
                                }
                                _ => {}
                            }
                        }
                    }
                }
                _ => return Err(CliError::new("the daemon closed the REPL stream")),
            },
            Some(bytes) = keys_rx.recv() => term.on_keys(&bytes, &keys.active).await,
            _ = sigint.recv() => {
                if term.holder.is_some() {
                    term.on_sigint().await;
                } else {
                    let _ = term.client.delete(&format!("/api/v1/repl/sessions/{session}")).await;
                    return Ok(130);
                }
            }
        }
    }
}

/// How long `scry repl` lets a process without an agent take to pick the attach up: more than
/// `scry attach`'s default 5 s, since through gdb the whole of gdb's run counts (slow on a
/// loaded machine) and the user is waiting for a prompt anyway.
const REPL_ATTACH_TIMEOUT_MS: f64 = 10_000.0;

/// The daemon's state of `pid` (`awake`, `sleeping`, `gone`), or None when it does not know it.
async fn process_state(client: &DaemonClient, pid: u32) -> Option<String> {
    let p: scry_api::ProcessEntry = client
        .get_as(&format!("/api/v1/processes/{pid}"))
        .await
        .ok()?;
    Some(p.state().as_str().to_owned())
}

/// The bootstrap directories of `scry run` are `$TMPDIR/scry-run-<pid of scry run>-<random>`.
const BOOT_PREFIX: &str = "scry-run-";

/// Removes the bootstrap directories that a `scry run` killed before it could clean up left
/// behind: ours (same uid), named after a pid that no longer runs.
fn remove_stale_bootstraps() {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    let uid = nix::unistd::getuid().as_raw();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(BOOT_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let ours = entry
            .path()
            .symlink_metadata()
            .is_ok_and(|m| m.is_dir() && m.uid() == uid);
        if ours && !scry_proc::alive(pid, None) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

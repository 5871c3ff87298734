//! `scry serve` and `scry stop`.

use std::time::{Duration, Instant};

use scry_daemon::{Home, ServeOptions};
use serde_json::json;

use super::{emit, CmdResult};
use crate::cli::{Output, ServeArgs};
use crate::client::{self, DaemonClient};
use crate::error::{CliError, ExitStatus};
use crate::printer::Printer;

/// Runs the daemon in the foreground, or starts it detached with `--daemon`.
pub fn serve(home: &Home, args: &ServeArgs, printer: &mut Printer) -> CmdResult {
    // Flags first, then SCRY_DAEMON (so that the CLI and the daemon agree), then config.toml.
    let http = args
        .http
        .clone()
        .or_else(|| args.port.map(|p| format!("127.0.0.1:{p}")))
        .or_else(|| {
            scry_daemon::env::var(scry_daemon::env::SCRY_DAEMON).and_then(|url| {
                url.strip_prefix("http://")
                    .map(|a| a.trim_end_matches('/').to_owned())
            })
        });
    if args.daemon {
        if let Some(info) = client::read_daemon_file(home) {
            return Err(CliError::new(format!(
                "a scry daemon is already running (pid {}, http://{})",
                info.pid, info.http
            ))
            .hint("use it as it is, or stop it first with `scry stop`"));
        }
        let mut extra = Vec::new();
        if let Some(h) = &http {
            extra.extend(["--http".to_owned(), h.clone()]);
        }
        if let Some(t) = &args.agent_tcp {
            extra.extend(["--agent-tcp".to_owned(), t.clone()]);
        }
        let info = client::start_daemon(home, &extra)?;
        let value = serde_json::to_value(&info).unwrap_or_default();
        return emit(printer, &value, |p| {
            p.line(format!(
                "scry daemon started (pid {}): local API {} (you and root), http://{} (token); agents: {}; log: {}",
                info.pid,
                info.api_socket,
                info.http,
                info.agent_socket,
                home.log_file().display()
            ))
        });
    }
    // Everything the daemon creates in $SCRY_HOME (the store and its -wal/-shm, logs, run
    // files, sockets) is private to its owner whatever umask it was started with. The daemon
    // starts no program of the user's (only gdb, to inject), so nothing else inherits it.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let opts = ServeOptions {
        http_addr: http,
        agent_tcp: args.agent_tcp.clone(),
    };
    scry_daemon::limit_heap_arenas();
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| CliError::new(format!("cannot start the async runtime: {e}")))?;
    let json = printer.json;
    // Started in the background by a CLI: tell it when this daemon serves, or why not.
    let mut starter = crate::ready_pipe::Notifier::from_env();
    let result = runtime.block_on(scry_daemon::serve(home.clone(), opts, |info| {
        starter.ready();
        if json {
            let _ = printer.json_value(info);
        } else {
            printer.note(format!(
                "scry daemon {} listening on {} (you and root) and http://{} (with the token; `scry ui` signs a browser in); agents: {}",
                info.version, info.api_socket, info.http, info.agent_socket
            ));
        }
    }));
    // Do not wait for stray blocking tasks (e.g. a follower's long poll) at exit.
    runtime.shutdown_timeout(Duration::from_secs(2));
    if let Err(e) = result {
        let e = CliError::from_daemon(e);
        let mut message = e.message.clone();
        for cause in &e.causes {
            message.push_str(": ");
            message.push_str(cause);
        }
        starter.failed(&message, e.hint.as_deref());
        return Err(e);
    }
    Ok(ExitStatus::Success)
}

/// Asks the daemon to stop and waits until it has.
pub async fn stop(home: &Home, out: &Output, printer: &mut Printer) -> CmdResult {
    let client = DaemonClient::locate(home)?;
    // A busy daemon is still asked to stop (the request waits its turn).
    if client.reach().await == client::Reach::NotRunning {
        let value = json!({"stopped": false, "running": false});
        return emit(printer, &value, |p| p.line("no scry daemon is running"));
    }
    let answer: scry_api::Stopping = client.post_as("/api/v1/shutdown", &json!({})).await?;
    let pid = answer.pid;
    let deadline = Instant::now() + Duration::from_secs(10);
    while scry_proc::alive(pid, None) {
        if Instant::now() > deadline {
            return Err(
                CliError::new("the daemon did not stop within 10 s").hint(format!(
                    "it may be busy; its log is {}",
                    home.log_file().display()
                )),
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let _ = out;
    let value = json!({"stopped": true, "pid": pid});
    emit(printer, &value, |p| {
        p.line(format!("scry daemon stopped (pid {pid})"))
    })
}

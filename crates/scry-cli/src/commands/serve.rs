//! `scry serve` and `scry stop`.

use std::io::{BufRead, IsTerminal};
use std::time::{Duration, Instant};

use scry_api::{FollowList, ProcState, ProcessEntry, ProcessList, Restored, Stopping};

use scry_daemon::{Home, ServeOptions};
use serde_json::json;

use super::{emit, CmdResult};
use crate::cli::{ServeArgs, StopArgs};
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
        let restored = if args.restore {
            Some(restore_now(home)?)
        } else {
            None
        };
        let value = match &restored {
            Some(r) => json!({"daemon": value, "restore": r}),
            None => value,
        };
        return emit(printer, &value, |p| {
            p.line(format!(
                "scry daemon started (pid {}): local API {} (you and root), http://{} (token); agents: {}; log: {}",
                info.pid,
                info.api_socket,
                info.http,
                info.agent_socket,
                home.log_file().display()
            ))?;
            match &restored {
                Some(r) => print_restored(r, p),
                None => Ok(()),
            }
        });
    }
    // Everything the daemon creates in $SCRY_HOME (the store and its -wal/-shm, logs, run
    // files, sockets) is private to its owner whatever umask it was started with. The daemon
    // starts no program of the user's (only gdb, to inject), so nothing else inherits it.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let opts = ServeOptions {
        http_addr: http,
        agent_tcp: args.agent_tcp.clone(),
        restore: args.restore,
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

/// Asks the daemon to stop and waits until it has. What ends with it (injected agents,
/// follows) is said first, and asked about on a terminal unless `--yes`; without a terminal it
/// stops and says what ended. The daemon saves them for `scry serve --restore`.
pub async fn stop(home: &Home, args: &StopArgs, printer: &mut Printer) -> CmdResult {
    let client = DaemonClient::locate(home)?;
    // A busy daemon is still asked to stop (the request waits its turn).
    if client.reach().await == client::Reach::NotRunning {
        let value = json!({"stopped": false, "running": false});
        return emit(printer, &value, |p| p.line("no scry daemon is running"));
    }
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if !args.yes && interactive && !printer.json {
        let (agents, follows) = what_ends(&client).await?;
        if !agents.is_empty() || !follows.is_empty() {
            printer.note(format!(
                "scry: stopping the daemon ends {}; `scry serve --restore` attaches them again",
                ending(&agents, &follows)
            ));
            printer.note("stop it? [y/N]");
            let mut answer = String::new();
            std::io::stdin().lock().read_line(&mut answer)?;
            if !matches!(answer.trim(), "y" | "Y" | "yes") {
                return Err(CliError::new("not confirmed: the daemon runs on"));
            }
        }
    }
    let answer: Stopping = client.post_as("/api/v1/shutdown", &json!({})).await?;
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
    let value = json!({
        "stopped": true,
        "pid": pid,
        "ended_agents": answer.ended_agents,
        "ended_follows": answer.ended_follows,
        "restore_file": answer.restore_file,
        "restore_error": answer.restore_error,
    });
    emit(printer, &value, |p| {
        p.line(format!("scry daemon stopped (pid {pid})"))?;
        if answer.ended_agents.is_empty() && answer.ended_follows.is_empty() {
            return Ok(());
        }
        p.line(format!(
            "ended {}",
            ending(&answer.ended_agents, &answer.ended_follows)
        ))?;
        match (&answer.restore_file, &answer.restore_error) {
            (Some(file), _) => p.line(format!(
                "saved in {}: `scry serve --restore` (or `scry serve --daemon --restore`) attaches them again",
                file.display()
            )),
            (None, Some(why)) => p.line(format!("not saved for `scry serve --restore`: {why}")),
            (None, None) => Ok(()),
        }
    })
}

/// The injected agents and the follows that end with the daemon.
async fn what_ends(client: &DaemonClient) -> Result<(Vec<u32>, Vec<u32>), CliError> {
    let processes: ProcessList = client.get_as("/api/v1/processes").await?;
    let follows: FollowList = client.get_as("/api/v1/follow").await?;
    let mut agents: Vec<u32> = processes
        .processes
        .iter()
        .filter_map(|e| match e {
            ProcessEntry::Agent(v) if v.state == ProcState::Awake && v.origin == "injected" => {
                Some(v.pid)
            }
            _ => None,
        })
        .collect();
    agents.sort_unstable();
    agents.dedup();
    let mut roots: Vec<u32> = follows.follows.iter().map(|f| f.root).collect();
    roots.sort_unstable();
    Ok((agents, roots))
}

/// `2 injected agents (pid 10, 11) and 1 follow (root 10)`.
fn ending(agents: &[u32], follows: &[u32]) -> String {
    let list = |pids: &[u32]| {
        pids.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut parts = Vec::new();
    if !agents.is_empty() {
        parts.push(format!(
            "{} injected agent{} (pid {})",
            agents.len(),
            if agents.len() == 1 { "" } else { "s" },
            list(agents)
        ));
    }
    if !follows.is_empty() {
        parts.push(format!(
            "{} follow{} (root {})",
            follows.len(),
            if follows.len() == 1 { "" } else { "s" },
            list(follows)
        ));
    }
    parts.join(" and ")
}

/// Restores, through the daemon just started, what the last stop saved.
fn restore_now(home: &Home) -> Result<Restored, CliError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::new(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async {
        let client = DaemonClient::locate(home)?;
        // Each attach may take 20 s (gdb, a slow hello); the restore does them one by one.
        client
            .post_within("/api/v1/restore", &json!({}), Duration::from_secs(600))
            .await
    })
}

/// One line per restored process (or why there was nothing to restore).
fn print_restored(restored: &Restored, p: &mut Printer) -> std::io::Result<()> {
    if !restored.found {
        return p.line(format!(
            "nothing to restore ({} does not exist: the last `scry stop` ended no agent)",
            restored.file.display()
        ));
    }
    for o in &restored.outcomes {
        let mark = if o.ok { "restored" } else { "NOT restored" };
        p.line(format!("{mark}: {} pid {}: {}", o.action, o.pid, o.message))?;
    }
    Ok(())
}

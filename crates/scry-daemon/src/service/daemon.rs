//! The daemon itself: its status (versions, addresses, counts, the store's health), its own
//! system events, the agents' endpoint, stopping it, and restoring after a stop what ended
//! with it (injected agents, follows).

use std::sync::atomic::Ordering;

use std::sync::Arc;

use scry_api::{
    AgentEndpoint, AttachRequest, Backpressure, DaemonStatus, Dropped, Health, ProcessCounts,
    RestoreOutcome, RestorePlan, RestoreTarget, Restored, Stopping, StoreStatus, SystemEvent,
    SystemEventList, UiLoginLink,
};

use super::{blocking, Error, Result};
use crate::state::registry::ProcState;
use crate::Shared;

/// The daemon's status (`scry status`): where it listens, what it holds, what it lost.
pub async fn status(shared: &Shared) -> Result<DaemonStatus> {
    let store = shared.store.clone();
    let counts = blocking(move || store.counts()).await?;
    let (awake, sleeping, gone) = shared.registry().counts();
    let clients = crate::clients::discover(&shared.home).len();
    Ok(DaemonStatus {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        home: shared.home.root().to_path_buf(),
        http: shared.http_addr.to_string(),
        api_socket: shared.home.api_socket(),
        agent_socket: shared.home.agent_socket(),
        agent_tcp: shared.config.agent_tcp.clone(),
        started_at: shared.started_at,
        uptime_s: shared.uptime().as_secs_f64(),
        processes: ProcessCounts {
            awake: awake as u64,
            sleeping: sleeping as u64,
            gone: gone as u64,
            client_files: clients as u64,
            links_accepted: shared.links_accepted.load(Ordering::Relaxed),
        },
        probes: counts.probes,
        events_stored: counts.events,
        dropped: Dropped {
            by_agents: counts.dropped,
            by_daemon: crate::dropped(shared),
        },
        store: store_health(shared),
        backpressure: Backpressure {
            reports_waited: shared.backpressure_waits.load(Ordering::Relaxed),
            errors_not_sent: crate::link::ERRORS_NOT_SENT.load(Ordering::Relaxed),
        },
    })
}

/// The store's part of the status: whether it can write (`ok`, `full`, `failing`), since when,
/// how many events it could not store, and how many retention deleted.
pub fn store_health(shared: &Shared) -> StoreStatus {
    let h = shared.store.health();
    StoreStatus {
        state: match h.state {
            scry_store::StoreState::Ok => "ok",
            scry_store::StoreState::Full => "full",
            scry_store::StoreState::Failing => "failing",
        }
        .to_owned(),
        since: h.since,
        not_stored: h.not_stored,
        last_error: h.last_error,
        retention_deleted: h.retention_deleted.values().sum(),
        max_db_mb: shared.config.max_db_mb,
    }
}

/// The daemon's own events (started, probe added, agent disconnected, …), oldest first from
/// `since`, at most `limit` (100 by default, 10,000 at most).
pub async fn system_events(
    shared: &Shared,
    since: Option<f64>,
    limit: Option<usize>,
) -> Result<SystemEventList> {
    let store = shared.store.clone();
    let limit = limit.unwrap_or(100).min(10_000);
    let rows = blocking(move || store.system_events(since, limit)).await?;
    let system_events = rows
        .into_iter()
        .map(|r| SystemEvent {
            id: r.id,
            t: r.event.t,
            level: r.event.level.as_str().to_owned(),
            kind: r.event.kind,
            message: r.event.message,
            data: r.event.data,
        })
        .collect();
    Ok(SystemEventList { system_events })
}

/// Where agents connect (`scry.init()` asks when it is told only the daemon's HTTP address).
pub fn agent_endpoint(shared: &Shared) -> AgentEndpoint {
    AgentEndpoint {
        unix: shared.home.agent_socket(),
        tcp: shared.config.agent_tcp.clone(),
    }
}

/// Asks the daemon to stop (it answers first), after saving what ends with it for `scry serve
/// --restore` ([`save_restore`]).
pub fn shutdown(shared: &Shared) -> Stopping {
    let stopping = save_restore(shared);
    shared.request_shutdown();
    stopping
}

/// Saves the injected agents and the follows in progress, which end with the daemon, in
/// `$SCRY_HOME/restore.json` (mode 0600, replaced whole) for [`restore`]; says what ends.
/// Nothing ending: nothing is written (an older file is left for `--restore`).
pub fn save_restore(shared: &Shared) -> Stopping {
    let mut agents: Vec<u32> = shared
        .registry()
        .views()
        .into_iter()
        .filter(|v| v.state == ProcState::Awake && v.origin == "injected")
        .map(|v| v.pid)
        .collect();
    agents.sort_unstable();
    agents.dedup();
    let mut follows: Vec<u32> = shared.follows.states().iter().map(|f| f.root).collect();
    follows.sort_unstable();
    let targets = |pids: &[u32]| -> Vec<RestoreTarget> {
        pids.iter()
            .filter_map(|&pid| {
                let p = scry_proc::info(pid).ok()?;
                Some(RestoreTarget {
                    pid,
                    start_ticks: p.start_ticks,
                })
            })
            .collect()
    };
    let mut stopping = Stopping {
        stopping: true,
        pid: std::process::id(),
        ended_agents: agents.clone(),
        ended_follows: follows.clone(),
        restore_file: None,
        restore_error: None,
    };
    if agents.is_empty() && follows.is_empty() {
        return stopping;
    }
    let plan = RestorePlan {
        saved_at: crate::now(),
        agents: targets(&agents),
        follows: targets(&follows),
    };
    let path = shared.home.restore_file();
    match write_private(&path, &serde_json::to_vec_pretty(&plan).unwrap_or_default()) {
        Ok(()) => {
            tracing::info!(target: "daemon", file = %path.display(), agents = agents.len(), follows = follows.len(), "saved what to restore");
            stopping.restore_file = Some(path);
        }
        Err(e) => {
            tracing::warn!(target: "daemon", file = %path.display(), "cannot save what to restore: {e}");
            stopping.restore_error = Some(format!("cannot write {}: {e}", path.display()));
        }
    }
    stopping
}

/// Writes `data` to `path` through a fresh temporary file of mode 0600 renamed over it.
fn write_private(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("json.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Restores what the last stop saved (`scry serve --restore`, `POST /api/v1/restore`): attaches
/// again to each saved process that still runs (the same one: pid and start time), then follows
/// each saved root again, through the same service functions as `scry attach [--follow]`; each
/// outcome is said and kept as a system event (`restored`). The file is removed once read.
pub async fn restore(shared: &Arc<Shared>) -> Result<Restored> {
    let file = shared.home.restore_file();
    let text = match std::fs::read(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Restored {
                file,
                found: false,
                outcomes: Vec::new(),
            })
        }
        Err(e) => {
            return Err(Error::internal(format!(
                "cannot read {}: {e}",
                file.display()
            )))
        }
    };
    let _ = std::fs::remove_file(&file);
    let plan: RestorePlan = serde_json::from_slice(&text).map_err(|e| {
        Error::bad_request(format!(
            "{} is not what `scry stop` saves: {e}",
            file.display()
        ))
        .hint("it was removed; attach again with `scry attach PID` or `scry attach --follow PID`")
    })?;
    let mut outcomes = Vec::new();
    let steps = plan
        .agents
        .iter()
        .map(|t| (*t, "attach"))
        .chain(plan.follows.iter().map(|t| (*t, "follow")));
    for (target, action) in steps {
        let pid = target.pid;
        let (ok, message) = if !scry_proc::alive(pid, Some(target.start_ticks)) {
            (false, "exited since the daemon stopped".to_owned())
        } else {
            let request = AttachRequest {
                pid,
                ..AttachRequest::default()
            };
            let result = if action == "follow" {
                super::follow::follow(shared, &request).await
            } else {
                super::attach::attach_request(shared, &request).await
            };
            match result {
                Ok(r) if r.already_attached && action == "attach" => {
                    (true, "already attached".to_owned())
                }
                Ok(r) => (
                    true,
                    match (action, r.injector) {
                        ("follow", _) => "followed again".to_owned(),
                        (_, Some(i)) => format!("attached again ({i})"),
                        _ => "attached again".to_owned(),
                    },
                ),
                Err(e) => (false, e.message),
            }
        };
        shared.system_event(
            if ok {
                scry_store::Level::Info
            } else {
                scry_store::Level::Warn
            },
            "restored",
            format!("restore: {action} pid {pid}: {message}"),
            serde_json::json!({"pid": pid, "action": action, "ok": ok}),
        );
        outcomes.push(RestoreOutcome {
            pid,
            action: action.to_owned(),
            ok,
            message,
        });
    }
    Ok(Restored {
        file,
        found: true,
        outcomes,
    })
}

/// The daemon answers: its version.
pub fn health() -> Health {
    Health {
        ok: true,
        version: env!("CARGO_PKG_VERSION").to_owned(),
    }
}

/// Which live events a follower of `topics` (every topic when `None`) gets, by their SSE name.
pub fn live(ev: &crate::LiveEvent, topics: Option<&[String]>) -> Option<&'static str> {
    if topics.is_some_and(|t| !t.iter().any(|x| x == ev.topic)) {
        return None;
    }
    Some(ev.topic)
}

/// A one-time sign-in link for the web UI (valid two minutes), on the page `login_path`.
pub fn ui_login_link(shared: &Shared, login_path: &str) -> UiLoginLink {
    let once = shared.ui_logins.new_link();
    UiLoginLink {
        path: format!("{login_path}?once={once}"),
        http: shared.http_addr.to_string(),
        expires_in_s: 120,
    }
}

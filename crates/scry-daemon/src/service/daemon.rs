//! The daemon itself: its status (versions, addresses, counts, the store's health), its own
//! system events, the agents' endpoint, and stopping it.

use std::sync::atomic::Ordering;

use scry_api::{
    AgentEndpoint, Backpressure, DaemonStatus, Dropped, Health, ProcessCounts, Stopping,
    StoreStatus, SystemEvent, SystemEventList, UiLoginLink,
};

use super::{blocking, Result};
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

/// Asks the daemon to stop (it answers first).
pub fn shutdown(shared: &Shared) -> Stopping {
    shared.request_shutdown();
    Stopping {
        stopping: true,
        pid: std::process::id(),
    }
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

//! Agents' lifecycle: a process registered or changed (stored and published), a report's events
//! queued for the store (acknowledged once settled), a link that ended, processes that exited
//! (the sweep), and the registry loaded back at start.
//!
//! [`crate::link`] calls these for each agent connection.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use scry_proto::DaemonMessage;
use scry_store::{Level, NewEvent, Store};
use serde_json::{json, Value};

use crate::state::registry::{self, ProcState, ProcessView, Registry};
use crate::{now, DaemonError, Shared};

/// Writes a process to the store and returns its row id.
pub async fn persist_process(shared: &Shared, view: &ProcessView) -> Result<i64, DaemonError> {
    let rec = registry::record_of(view);
    let store = shared.store.clone();
    let id = tokio::task::spawn_blocking(move || store.upsert_process(&rec))
        .await
        .map_err(|e| DaemonError::Io {
            path: shared.home.store_file(),
            source: std::io::Error::other(e.to_string()),
        })??;
    Ok(id)
}

/// Queues a report's events for storage; the agent gets `ack` once they are committed.
///
/// When the writer's queue is full this waits for room (the caller stops reading the
/// agent meanwhile: backpressure); a report of a stream is stored at most once.
pub async fn accept_report(
    shared: &Shared,
    process_id: i64,
    report: scry_proto::Report,
    tx: &crate::link::Outgoing,
) {
    let scry_proto::Report {
        seq,
        mut events,
        dropped,
        stream,
    } = report;
    // Metric probes' aggregates are kept in memory, latest only, never stored.
    if events.iter().any(|e| e.kind == "metric") {
        let pid = shared
            .registry()
            .get_mut(process_id)
            .map(|e| e.view.pid)
            .unwrap_or_default();
        events.retain(|e| {
            if e.kind != "metric" {
                return true;
            }
            if let (Some(probe), Ok(data)) = (
                e.source.as_deref(),
                serde_json::from_str::<Value>(e.data.get()),
            ) {
                shared.metric_probes.update(probe, process_id, pid, data);
            }
            false
        });
    }
    // A stream id over the limit is not ours to keep: store the report without dedup.
    let stream = stream.filter(|s| s.len() <= scry_proto::MAX_STREAM_LEN);
    // Live followers get each event; with none listening this costs nothing per event.
    if shared.live.receiver_count() > 0 {
        let t_recv = now();
        let pid = shared.registry().get_mut(process_id).map(|e| e.view.pid);
        for ev in &events {
            let data: Value = serde_json::from_str(ev.data.get()).unwrap_or(Value::Null);
            shared.publish(
                "event",
                json!({"process_id": process_id, "pid": pid, "kind": ev.kind, "source": ev.source,
                       "t_hit": ev.t, "t_recv": t_recv, "data": data}),
            );
        }
    }
    // Events per source, in case they cannot be stored (reports hold one or two sources).
    let mut per_source: Vec<(String, u64)> = Vec::new();
    for e in &events {
        if let Some(s) = &e.source {
            match per_source.iter_mut().find(|(k, _)| k == s) {
                Some((_, c)) => *c += 1,
                None => per_source.push((s.clone(), 1)),
            }
        }
    }
    let n = events.len() as u64;
    let batch: Vec<NewEvent> = events
        .into_iter()
        .map(|e| NewEvent {
            kind: e.kind,
            source: e.source,
            t_hit: e.t,
            data: e.data,
        })
        .collect();
    let ack_tx = tx.clone();
    let not_stored = Arc::clone(&shared.not_stored);
    let counts = per_source.clone();
    // `ack` means settled: stored, or counted as not stored. Acks are cumulative, so a
    // report left unacknowledged would be forgotten by the agent at the next ack anyway.
    // When the agent's queue is full an ack is left out and a later one (or the resend
    // after a reconnect, which the store recognises) covers it.
    let on_commit: scry_store::CommitCallback = Box::new(move |result| {
        if let Err(e) = result {
            not_stored.count(n, counts);
            tracing::error!(target: "store", seq, "a report was not stored: {e}");
        }
        let _ = ack_tx.try_send(DaemonMessage::Ack { seq });
    });
    let queued = shared.store.append_report(
        process_id,
        stream.as_deref(),
        seq,
        batch,
        dropped,
        Some(on_commit),
    );
    let result = match queued {
        Ok(scry_store::Queued::Done) => Ok(()),
        Ok(scry_store::Queued::Full(pending)) => {
            shared.backpressure_waits.fetch_add(1, Ordering::Relaxed);
            match tokio::task::spawn_blocking(move || pending.wait()).await {
                Ok(r) => r,
                Err(_) => Err(scry_store::StoreError::WriterGone),
            }
        }
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        shared.not_stored.count(n, per_source);
        tracing::warn!(target: "store", process_id, events = n, "events not stored: {e}");
    }
}

/// How long a lost link waits for its process to show as exited before it is called a live
/// process's (see [`disconnected`]).
const EXIT_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// An agent's connection ended: decide the process's new state.
pub async fn disconnected(
    shared: &Shared,
    process_id: i64,
    session_id: &str,
    goodbye: Option<String>,
) {
    let ours = |entry: &crate::state::registry::Entry| {
        entry.agent.as_ref().map(|a| a.session_id.as_str()) == Some(session_id)
    };
    let Some((pid, start_ticks)) = shared
        .registry()
        .get_mut(process_id)
        .filter(|e| ours(e))
        .map(|e| (e.view.pid, e.view.start_ticks))
    else {
        return;
    };
    let mut alive = scry_proc::alive(pid, start_ticks);
    if alive && goodbye.is_none() {
        // A killed process's sockets close while it exits, a moment before /proc shows it
        // dead: wait for that moment before calling a lost link a live process's.
        let deadline = std::time::Instant::now() + EXIT_GRACE;
        while alive && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            alive = scry_proc::alive(pid, start_ticks);
        }
    }
    let view = {
        let mut reg = shared.registry();
        let Some(entry) = reg.get_mut(process_id) else {
            return;
        };
        // A newer connection of the same process may already have replaced this one.
        if !ours(entry) {
            return;
        }
        entry.agent = None;
        entry.view.session_id = None;
        entry.view.connected_since = None;
        // An injected agent cannot come back on its own (its nonce is used up): once it
        // is gone the process is an ordinary one again, not a sleeping client. It is
        // stored as gone (a restarted daemon must not list it as sleeping) and forgotten.
        let detached = entry.view.origin == "injected" && alive;
        // Alive without a goodbye means the connection was lost: the agent reconnects on its
        // own if it can, and the liveness sweep marks it gone if the process exits.
        entry.view.state = if alive && !detached {
            ProcState::Sleeping
        } else {
            ProcState::Gone
        };
        let view = entry.view.clone();
        if detached {
            reg.remove(process_id);
        }
        (view, detached)
    };
    let (view, detached) = view;
    // Stored, so that who asks learns why the link ended (tests read it through the API).
    shared.system_event(
        Level::Info,
        "agent_disconnected",
        format!(
            "the agent of process {} disconnected: {}",
            view.pid,
            goodbye
                .as_deref()
                .unwrap_or("no goodbye (the connection was lost)")
        ),
        json!({
            "pid": view.pid,
            "process_id": view.id,
            "reason": goodbye,
            "state": view.state.as_str(),
            "detached": detached,
        }),
    );
    if detached {
        shared.publish_process(&view);
        if let Err(e) = persist_process(shared, &view).await {
            tracing::warn!(target: "store", "cannot store process state: {e}");
        }
        let message = match &goodbye {
            Some(_) => format!(
                "the injected agent of process {} detached; the process runs on without it",
                view.pid
            ),
            None => format!(
                "the injected agent of process {} lost its connection without a goodbye; the process runs on without it (`scry attach {}` loads a new one)",
                view.pid, view.pid
            ),
        };
        shared.system_event(
            Level::Info,
            "detached",
            message,
            json!({"pid": view.pid, "process_id": view.id, "goodbye": goodbye.is_some()}),
        );
    } else {
        state_changed(shared, &view).await;
    }
}

async fn state_changed(shared: &Shared, view: &ProcessView) {
    shared.publish_process(view);
    if let Err(e) = persist_process(shared, view).await {
        tracing::warn!(target: "store", "cannot store process state: {e}");
    }
    if view.state == ProcState::Gone {
        shared.system_event(
            Level::Info,
            "process_gone",
            format!(
                "process {} ({}) is gone",
                view.pid,
                view.name.as_deref().unwrap_or("unnamed")
            ),
            json!({"pid": view.pid, "process_id": view.id}),
        );
    }
}

/// Marks processes that exited as gone.
pub async fn sweep(shared: &Shared) {
    let candidates = shared.registry().unconnected_live();
    for (id, pid, ticks) in candidates {
        if scry_proc::alive(pid, ticks) {
            continue;
        }
        let view = {
            let mut reg = shared.registry();
            match reg.get_mut(id) {
                Some(e) if e.agent.is_none() && e.view.state != ProcState::Gone => {
                    e.view.state = ProcState::Gone;
                    e.view.clone()
                }
                _ => continue,
            }
        };
        state_changed(shared, &view).await;
    }
}

/// Loads the processes the store remembers into a registry; those whose process exited since
/// are marked gone, the others sleeping (their agents reconnect on their own).
pub(crate) fn load_registry(store: &Store) -> Result<Registry, DaemonError> {
    let mut reg = Registry::default();
    for row in store.processes()? {
        let start_ticks = row.process.info.get("start_ticks").and_then(Value::as_u64);
        let was = ProcState::parse(row.process.state.as_str());
        // An injected agent never reconnects (its nonce was used once), so after a restart
        // its process is no client at all, whatever an older daemon stored for it.
        let state = if was != ProcState::Gone
            && row.process.origin != "injected"
            && scry_proc::alive(row.process.pid, start_ticks)
        {
            ProcState::Sleeping
        } else {
            ProcState::Gone
        };
        let view = registry::view_from_row(row, state);
        if state != was {
            store.set_process_state(view.id, registry::store_state(state), now())?;
        }
        reg.put(registry::Entry { view, agent: None });
    }
    Ok(reg)
}

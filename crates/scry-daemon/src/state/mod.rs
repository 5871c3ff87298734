//! The daemon's state: one [`Shared`] value, made of named parts, that every task holds.
//!
//! - [`registry`]: the processes (live view; the store keeps the durable copy);
//! - [`probes`]: the probe table (definitions and statuses per process);
//! - [`attaches`]: nonces of attaches in progress; [`follows`]: followed trees;
//! - [`repl`]: the REPL relay's sessions; [`ui_logins`]: the web UI's sign-in links;
//! - the store, the live-event broadcast, agent notices, the shutdown signal, counters.
//!
//! Design decision: every part lives behind a plain mutex that is never held across an `.await`,
//! while everything durable goes through the store's single writer thread.
//!
//! Not for: what the daemon does with it (that is [`crate::service`]).

pub mod attaches;
pub mod follows;
pub mod metrics;
pub mod probes;
pub mod registry;
pub mod repl;
pub mod ui_logins;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use registry::{ProcessView, Registry};
use scry_store::{Level, Store, SystemEvent};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};

use crate::service::calls::AgentNotice;
use crate::{now, Config, Home};

/// Something that happened, pushed to live streams (server-sent events).
#[derive(Debug, Clone, Serialize)]
pub struct LiveEvent {
    /// `process`, `system`, `event`, …
    pub topic: &'static str,
    /// The payload.
    pub data: Value,
}

/// The daemon's state, shared by every task.
pub struct Shared {
    /// `$SCRY_HOME`.
    pub home: Home,
    /// Settings in force.
    pub config: Config,
    /// The store.
    pub store: Store,
    /// The token that TCP callers and TCP agents must prove (always set by `serve`).
    pub token: Option<String>,
    /// The uid the daemon runs as: with root, the only one that may command it.
    pub owner_uid: u32,
    /// The web UI's one-time sign-in links and sessions.
    pub ui_logins: ui_logins::UiLogins,
    /// The HTTP address actually bound.
    pub http_addr: SocketAddr,
    /// When the daemon started (epoch seconds).
    pub started_at: f64,
    pub(crate) started: Instant,
    pub(crate) registry: Mutex<Registry>,
    pub(crate) probes: Mutex<probes::ProbeTable>,
    pub(crate) live: broadcast::Sender<LiveEvent>,
    pub(crate) notices: broadcast::Sender<AgentNotice>,
    pub(crate) shutdown_tx: watch::Sender<bool>,
    /// Events that reached the daemon and could not be stored: counted, never silent.
    pub not_stored: Arc<NotStored>,
    /// Reports that waited for room in the store's queue (backpressure on their agent).
    pub backpressure_waits: AtomicU64,
    /// Agent links registered since the daemon started (reconnects included).
    pub links_accepted: AtomicU64,
    /// Nonces of `scry attach` runs in progress, checked in injected agents' hellos.
    pub attaches: attaches::Pending,
    /// `scry attach --follow` trees being followed.
    pub follows: follows::Follows,
    /// The REPL relay's sessions.
    pub repl: repl::ReplHub,
    /// How long attaches took (`GET /metrics`).
    pub attach_times: metrics::AttachTimes,
    /// Metric probes' latest aggregates (`GET /metrics`).
    pub metric_probes: metrics::MetricProbes,
}

impl Shared {
    /// The registry, locked. Never hold this across an `.await`.
    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The probe table, locked. Never hold this across an `.await`.
    pub fn probes(&self) -> MutexGuard<'_, probes::ProbeTable> {
        self.probes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Events of this source the daemon could not store and counted in memory.
    pub fn dropped_for(&self, source: &str) -> u64 {
        self.not_stored.of(source)
    }

    /// Seconds since the daemon started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Subscribes to live events.
    pub fn subscribe(&self) -> broadcast::Receiver<LiveEvent> {
        self.live.subscribe()
    }

    /// Publishes a live event (nobody listening is fine).
    pub fn publish(&self, topic: &'static str, data: Value) {
        let _ = self.live.send(LiveEvent { topic, data });
    }

    /// Publishes a process's new view.
    pub fn publish_process(&self, view: &ProcessView) {
        self.publish("process", serde_json::to_value(view).unwrap_or(Value::Null));
    }

    /// A receiver that changes when the daemon is asked to stop.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown_tx.subscribe()
    }

    /// Asks the daemon to stop.
    pub fn request_shutdown(&self) {
        let _ = self.shutdown_tx.send(true);
    }

    /// Records a daemon-side event in the store and on the live stream.
    pub fn system_event(&self, level: Level, kind: &str, message: String, data: Value) {
        tracing::info!(target: "daemon", kind, "{message}");
        self.publish(
            "system",
            json!({"level": level, "kind": kind, "message": message, "data": data}),
        );
        let ev = SystemEvent {
            t: now(),
            level,
            kind: kind.into(),
            message,
            data,
        };
        if let Err(e) = self.store.record_system_event(ev) {
            tracing::warn!(target: "store", "cannot record a system event: {e}");
        }
    }

    /// Notes that a process was heard from.
    pub fn touch(&self, process_id: i64) {
        if let Some(e) = self.registry().get_mut(process_id) {
            e.view.last_heard = now();
        }
    }
}

/// Counts of events the daemon has dropped (for status).
pub fn dropped(shared: &Shared) -> u64 {
    shared.not_stored.total.load(Ordering::Relaxed)
}

/// Events that reached the daemon and were neither stored nor counted by the store (queueing
/// or a commit failed), in memory: in total and per source (probe id).
#[derive(Default)]
pub struct NotStored {
    /// All sources together.
    pub total: AtomicU64,
    by_source: Mutex<std::collections::HashMap<String, u64>>,
}

impl NotStored {
    /// Counts `n` events not stored, `per_source` of them by source.
    pub fn count(&self, n: u64, per_source: Vec<(String, u64)>) {
        self.total.fetch_add(n, Ordering::Relaxed);
        let mut by_source = self.by_source.lock().unwrap_or_else(|e| e.into_inner());
        for (source, count) in per_source {
            *by_source.entry(source).or_default() += count;
        }
    }

    /// Events of `source` not stored.
    pub fn of(&self, source: &str) -> u64 {
        self.by_source
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(source)
            .copied()
            .unwrap_or(0)
    }
}

//! The scry daemon: the single source of truth that agents connect to and that the CLI, the
//! web UI and MCP talk to over HTTP.
//!
//! Main pieces: [`serve`] runs a daemon to the end; [`Shared`] is its state (the process
//! [`registry`], the store, the live-event broadcast); [`link`] serves one agent connection;
//! [`http`] is the REST API with server-sent events; [`clients`] reaches the control planes of
//! sleeping embedded clients through their discovery files; [`config`], [`home`] and [`env`]
//! say where things are and how they are set.
//!
//! Design decision: the registry lives in memory behind a plain mutex that is never held across
//! an `.await`, while everything durable goes through the store's single writer thread. The
//! daemon never blocks an agent on the disk: reports are queued to the writer and acknowledged
//! to the agent when their batch is committed.
//!
//! Not for: printing or argument parsing (that is `scry-cli`), reading other processes' memory
//! (`scry-proc`), or SQL (`scry-store`).
#![deny(missing_docs)]

pub mod access;
pub mod agent_tls;
pub mod api_dumps;
pub mod api_probes;
pub mod api_traces;
pub mod attach;
pub mod auth;
pub mod bundle;
pub mod calls;
pub mod clients;
pub mod config;
pub mod env;
mod error;
pub mod expr;
pub mod follow;
pub mod home;
pub mod http;
pub mod lines;
pub mod link;
pub mod listen;
pub mod mcp;
pub mod probes;
pub mod query;
pub mod registry;
pub mod repl;
pub mod stats;
pub mod web;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use config::Config;
pub use error::DaemonError;
pub use home::Home;
use rand::Rng;
use registry::{ProcState, ProcessView, Registry};
use scry_proto::DaemonMessage;
use scry_store::{Level, NewEvent, ProcessRecord, Store, StoreOptions, SystemEvent};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{broadcast, watch};

/// Wall-clock seconds since the epoch.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A short random id with a prefix, e.g. `s-3f2a9c0d1e`.
pub fn new_id(prefix: &str) -> String {
    let n: u64 = rand::thread_rng().gen();
    format!("{prefix}-{:010x}", n & 0xff_ffff_ffff)
}

/// Something that happened, pushed to live streams (server-sent events).
#[derive(Debug, Clone, Serialize)]
pub struct LiveEvent {
    /// `process`, `system`, `event`, …
    pub topic: &'static str,
    /// The payload.
    pub data: Value,
}

/// What the daemon wrote about itself in `run/daemon.json`: how clients find it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct DaemonFile {
    /// Its pid.
    pub pid: u32,
    /// Its HTTP address (TCP: the token or a web UI session on every request).
    pub http: String,
    /// The local API's unix socket (the owner's and root's; what the CLI uses).
    #[serde(default)]
    pub api_socket: String,
    /// The agents' unix socket.
    pub agent_socket: String,
    /// The agents' TCP address, when enabled.
    #[serde(default)]
    pub agent_tcp: Option<String>,
    /// The daemon's version.
    pub version: String,
    /// When it started (epoch seconds).
    pub started_at: f64,
}

/// Options for [`serve`] beyond the config file.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Overrides `http.addr` (e.g. from `--port`).
    pub http_addr: Option<String>,
    /// Overrides `agents.tcp`.
    pub agent_tcp: Option<String>,
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
    pub ui_logins: access::UiLogins,
    /// The HTTP address actually bound.
    pub http_addr: SocketAddr,
    /// When the daemon started (epoch seconds).
    pub started_at: f64,
    started: Instant,
    registry: Mutex<Registry>,
    probes: Mutex<probes::ProbeTable>,
    live: broadcast::Sender<LiveEvent>,
    notices: broadcast::Sender<calls::AgentNotice>,
    shutdown_tx: watch::Sender<bool>,
    /// Events that reached the daemon and could not be stored: counted, never silent.
    pub not_stored: Arc<NotStored>,
    /// Reports that waited for room in the store's queue (backpressure on their agent).
    pub backpressure_waits: AtomicU64,
    /// Agent links registered since the daemon started (reconnects included).
    pub links_accepted: AtomicU64,
    /// Nonces of `scry attach` runs in progress, checked in injected agents' hellos.
    pub attaches: attach::Pending,
    /// `scry attach --follow` trees being followed.
    pub follows: follow::Follows,
    /// The REPL relay's sessions.
    pub repl: repl::ReplHub,
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

    /// Writes a process to the store and returns its row id.
    pub async fn persist_process(&self, view: &ProcessView) -> Result<i64, DaemonError> {
        let rec = ProcessRecord {
            key: view.key.clone(),
            pid: view.pid,
            ppid: Some(view.ppid),
            host: view.host.clone(),
            name: view.name.clone(),
            python_version: view.python_version.clone(),
            executable: view.executable.clone(),
            argv: view.argv.clone(),
            cwd: view.cwd.clone(),
            origin: view.origin.clone(),
            state: store_state(view.state),
            first_seen: view.first_seen,
            connected_since: view.connected_since,
            last_heard: view.last_heard,
            info: json!({
                "ns_pid": view.ns_pid,
                "control": view.control,
                "start_ticks": view.start_ticks,
                "capabilities": view.capabilities,
            }),
        };
        let store = self.store.clone();
        let id = tokio::task::spawn_blocking(move || store.upsert_process(&rec))
            .await
            .map_err(|e| DaemonError::Io {
                path: self.home.store_file(),
                source: std::io::Error::other(e.to_string()),
            })??;
        Ok(id)
    }

    /// Queues a report's events for storage; the agent gets `ack` once they are committed.
    ///
    /// When the writer's queue is full this waits for room (the caller stops reading the
    /// agent meanwhile: backpressure); a report of a stream is stored at most once.
    pub async fn accept_report(
        &self,
        process_id: i64,
        report: scry_proto::Report,
        tx: &crate::link::Outgoing,
    ) {
        let scry_proto::Report {
            seq,
            events,
            dropped,
            stream,
        } = report;
        // A stream id over the limit is not ours to keep: store the report without dedup.
        let stream = stream.filter(|s| s.len() <= scry_proto::MAX_STREAM_LEN);
        // Live followers get each event; with none listening this costs nothing per event.
        if self.live.receiver_count() > 0 {
            let t_recv = now();
            let pid = self.registry().get_mut(process_id).map(|e| e.view.pid);
            for ev in &events {
                let data: Value = serde_json::from_str(ev.data.get()).unwrap_or(Value::Null);
                self.publish(
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
        let not_stored = Arc::clone(&self.not_stored);
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
        let queued = self.store.append_report(
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
                self.backpressure_waits.fetch_add(1, Ordering::Relaxed);
                match tokio::task::spawn_blocking(move || pending.wait()).await {
                    Ok(r) => r,
                    Err(_) => Err(scry_store::StoreError::WriterGone),
                }
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            self.not_stored.count(n, per_source);
            tracing::warn!(target: "store", process_id, events = n, "events not stored: {e}");
        }
    }

    /// An agent's connection ended: decide the process's new state.
    pub async fn disconnected(&self, process_id: i64, session_id: &str, goodbye: Option<String>) {
        let view = {
            let mut reg = self.registry();
            let Some(entry) = reg.get_mut(process_id) else {
                return;
            };
            // A newer connection of the same process may already have replaced this one.
            if entry.agent.as_ref().map(|a| a.session_id.as_str()) != Some(session_id) {
                return;
            }
            entry.agent = None;
            entry.view.session_id = None;
            entry.view.connected_since = None;
            let alive = scry_proc::alive(entry.view.pid, entry.view.start_ticks);
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
        self.system_event(
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
            self.publish_process(&view);
            if let Err(e) = self.persist_process(&view).await {
                tracing::warn!(target: "store", "cannot store process state: {e}");
            }
            self.system_event(
                Level::Info,
                "detached",
                format!(
                    "the injected agent of process {} is gone (detached)",
                    view.pid
                ),
                json!({"pid": view.pid, "process_id": view.id}),
            );
        } else {
            self.state_changed(&view).await;
        }
    }

    async fn state_changed(&self, view: &ProcessView) {
        self.publish_process(view);
        if let Err(e) = self.persist_process(view).await {
            tracing::warn!(target: "store", "cannot store process state: {e}");
        }
        if view.state == ProcState::Gone {
            self.system_event(
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
    pub async fn sweep(&self) {
        let candidates = self.registry().unconnected_live();
        for (id, pid, ticks) in candidates {
            if scry_proc::alive(pid, ticks) {
                continue;
            }
            let view = {
                let mut reg = self.registry();
                match reg.get_mut(id) {
                    Some(e) if e.agent.is_none() && e.view.state != ProcState::Gone => {
                        e.view.state = ProcState::Gone;
                        e.view.clone()
                    }
                    _ => continue,
                }
            };
            self.state_changed(&view).await;
        }
    }
}

fn store_state(s: ProcState) -> scry_store::ProcessState {
    match s {
        ProcState::Sleeping => scry_store::ProcessState::Sleeping,
        ProcState::Awake => scry_store::ProcessState::Awake,
        ProcState::Gone => scry_store::ProcessState::Gone,
    }
}

/// Loads the processes the store remembers into a registry; those whose process exited since
/// are marked gone, the others sleeping (their agents reconnect on their own).
fn load_registry(store: &Store) -> Result<Registry, DaemonError> {
    let mut reg = Registry::default();
    for scry_store::ProcessRow {
        id, process: row, ..
    } in store.processes()?
    {
        let start_ticks = row.info.get("start_ticks").and_then(Value::as_u64);
        let pid = row.pid;
        let was = ProcState::parse(row.state.as_str());
        // An injected agent never reconnects (its nonce was used once), so after a restart
        // its process is no client at all, whatever an older daemon stored for it.
        let state = if was != ProcState::Gone
            && row.origin != "injected"
            && scry_proc::alive(pid, start_ticks)
        {
            ProcState::Sleeping
        } else {
            ProcState::Gone
        };
        let view = ProcessView {
            id,
            key: row.key,
            pid,
            ns_pid: row
                .info
                .get("ns_pid")
                .and_then(Value::as_u64)
                .and_then(|v| u32::try_from(v).ok()),
            ppid: row.ppid.unwrap_or(0),
            host: row.host,
            name: row.name,
            python_version: row.python_version,
            executable: row.executable,
            argv: row.argv,
            cwd: row.cwd,
            origin: row.origin,
            state,
            first_seen: row.first_seen,
            connected_since: None,
            last_heard: row.last_heard,
            session_id: None,
            control: row
                .info
                .get("control")
                .and_then(|c| serde_json::from_value(c.clone()).ok()),
            start_ticks,
            capabilities: Vec::new(),
        };
        if state != was {
            store.set_process_state(view.id, store_state(state), now())?;
        }
        reg.put(registry::Entry { view, agent: None });
    }
    Ok(reg)
}

/// Refuses to start when another daemon already serves this home.
fn check_not_running(home: &Home) -> Result<(), DaemonError> {
    let Ok(text) = std::fs::read_to_string(home.pid_file()) else {
        return Ok(());
    };
    if let Ok(pid) = text.trim().parse::<u32>() {
        if pid != std::process::id() && scry_proc::alive(pid, None) {
            let is_scry = scry_proc::info(pid)
                .map(|p| p.comm.contains("scry"))
                .unwrap_or(false);
            if is_scry {
                return Err(DaemonError::AlreadyRunning {
                    pid,
                    home: home.root().to_owned(),
                });
            }
        }
    }
    Ok(())
}

/// Raises the soft limit of open files to the hard limit: every agent link and HTTP
/// connection is a descriptor, and the default soft limit (often 1,024) is soon reached.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(target: "daemon", soft, hard, "raised the open-files limit"),
            Err(e) => {
                tracing::warn!(target: "daemon", soft, hard, "cannot raise the open-files limit: {e}")
            }
        },
        Ok(_) => {}
        Err(e) => tracing::warn!(target: "daemon", "cannot read the open-files limit: {e}"),
    }
}

fn write_file(path: &std::path::Path, text: &str) -> Result<(), DaemonError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|source| DaemonError::Io {
            path: path.to_owned(),
            source,
        })
}

/// Runs a daemon until it is asked to stop (SIGINT, SIGTERM or `POST /api/v1/shutdown`).
///
/// `ready` is called once every listener is bound and `run/daemon.json` is written.
pub async fn serve(
    home: Home,
    opts: ServeOptions,
    ready: impl FnOnce(&DaemonFile),
) -> Result<(), DaemonError> {
    home.ensure()?;
    check_not_running(&home)?;
    raise_fd_limit();
    let mut config = Config::load_or_create(&home.config_file())?;
    if let Some(a) = opts.http_addr {
        config.http_addr = a;
    }
    if let Some(a) = opts.agent_tcp {
        config.agent_tcp = Some(a);
    }
    // Always: the TCP listener serves nobody without it (loopback is not an identity).
    let token = auth::load_token(&home, true)?;

    let store_path = home.store_file();
    let store = Store::open(
        &store_path,
        StoreOptions {
            retention: scry_store::Retention {
                max_age: config.max_age,
                max_events_per_source: config.max_events_per_probe,
                max_db_bytes: config.max_db_mb.map(|mb| mb * 1024 * 1024),
                ..Default::default()
            },
            // Reports of up to `max_batch` events each: 64 of them are about a second of the
            // writer's work and tens of MB, not minutes and GBs (agents wait, see link.rs).
            queue_capacity: STORE_QUEUE_REPORTS,
            ..Default::default()
        },
    )?;
    let registry = load_registry(&store)?;
    let probe_table = probes::ProbeTable::load(store.probes()?);

    let http_listener = TcpListener::bind(&config.http_addr)
        .await
        .map_err(|source| DaemonError::Bind {
            addr: config.http_addr.clone(),
            source,
        })?;
    let http_addr = http_listener
        .local_addr()
        .map_err(|source| DaemonError::Bind {
            addr: config.http_addr.clone(),
            source,
        })?;
    let api_sock_path = home.api_socket();
    // Left by a daemon that died: nobody serves it (check_not_running said so).
    let _ = std::fs::remove_file(&api_sock_path);
    let api_listener = UnixListener::bind(&api_sock_path).map_err(|source| DaemonError::Bind {
        addr: api_sock_path.display().to_string(),
        source,
    })?;
    let sock_path = home.agent_socket();
    // A socket file left by a daemon that died: nobody serves it (check_not_running said so).
    let _ = std::fs::remove_file(&sock_path);
    let unix_listener = UnixListener::bind(&sock_path).map_err(|source| DaemonError::Bind {
        addr: sock_path.display().to_string(),
        source,
    })?;
    let tcp_listener = match &config.agent_tcp {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| DaemonError::Bind {
                    addr: addr.clone(),
                    source,
                })?,
        ),
        None => None,
    };
    // The TLS identity of the TCP agent listener, made before the daemon announces itself.
    let tls = match &tcp_listener {
        Some(_) => Some(Arc::new(agent_tls::Identity::load_or_create(&home)?)),
        None => None,
    };
    let agent_tcp = tcp_listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.to_string());
    // From here on the configured address is the one actually bound (`:0` picks a port).
    config.agent_tcp = agent_tcp.clone();

    let (live, _) = broadcast::channel(4096);
    let (notices, _) = broadcast::channel(4096);
    let (shutdown_tx, _) = watch::channel(false);
    let shared = Arc::new(Shared {
        home: home.clone(),
        config: config.clone(),
        store,
        token,
        owner_uid: nix::unistd::geteuid().as_raw(),
        ui_logins: access::UiLogins::default(),
        http_addr,
        started_at: now(),
        started: Instant::now(),
        registry: Mutex::new(registry),
        probes: Mutex::new(probe_table),
        live,
        notices,
        shutdown_tx,
        not_stored: Arc::default(),
        backpressure_waits: AtomicU64::new(0),
        links_accepted: AtomicU64::new(0),
        attaches: attach::Pending::default(),
        follows: follow::Follows::default(),
        repl: repl::ReplHub::default(),
    });

    let info = DaemonFile {
        pid: std::process::id(),
        http: http_addr.to_string(),
        api_socket: api_sock_path.display().to_string(),
        agent_socket: sock_path.display().to_string(),
        agent_tcp: agent_tcp.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        started_at: shared.started_at,
    };
    write_file(&home.pid_file(), &format!("{}\n", info.pid))?;
    write_file(
        &home.daemon_file(),
        &serde_json::to_string_pretty(&info).unwrap_or_default(),
    )?;
    shared.system_event(
        Level::Info,
        "daemon_started",
        format!(
            "daemon {} started on http://{http_addr}",
            env!("CARGO_PKG_VERSION")
        ),
        json!({"pid": info.pid, "http": info.http}),
    );

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(accept_unix(shared.clone(), unix_listener));
    if let (Some(l), Some(tls)) = (tcp_listener, tls) {
        tasks.spawn(accept_tcp(shared.clone(), l, tls));
    }
    tasks.spawn(sweep_loop(shared.clone()));
    // Both listeners with a connection cap, header-read and idle timeouts (listen.rs).
    let server_task = tokio::spawn(listen::serve_tcp(
        http_listener,
        http::router(shared.clone()),
        shared.shutdown_signal(),
    ));
    let api_task = tokio::spawn(listen::serve_unix(
        api_listener,
        http::router(shared.clone()),
        shared.shutdown_signal(),
    ));

    ready(&info);

    let mut stop = shared.shutdown_signal();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| DaemonError::Io {
            path: "signal handler".into(),
            source,
        })?;
    tokio::select! {
        _ = stop.changed() => {}
        _ = sigterm.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!(target: "daemon", "stopping");
    shared.request_shutdown();
    tasks.abort_all();
    let _ = tokio::time::timeout(Duration::from_secs(5), server_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), api_task).await;
    shared.system_event(
        Level::Info,
        "daemon_stopped",
        "daemon stopped".into(),
        Value::Null,
    );
    let store = shared.store.clone();
    let _ = tokio::task::spawn_blocking(move || store.flush()).await;
    let _ = std::fs::remove_file(&sock_path);
    let _ = std::fs::remove_file(&api_sock_path);
    let _ = std::fs::remove_file(home.daemon_file());
    let _ = std::fs::remove_file(home.pid_file());
    Ok(())
}

async fn accept_unix(shared: Arc<Shared>, listener: UnixListener) {
    let my_uid = nix::unistd::getuid().as_raw();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(target: "agent_link", "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let cred = stream.peer_cred().ok();
        let uid = cred.as_ref().map(|c| c.uid());
        if uid != Some(my_uid) && uid != Some(0) {
            tracing::warn!(target: "agent_link", ?uid, "refused an agent of another user");
            // Say why before closing, so the agent can tell its user.
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let mut stream = stream;
                let msg = scry_proto::encode(&DaemonMessage::Refused {
                    reason: format!(
                        "this daemon serves uid {my_uid} (and root) only; start a daemon as your own user (`scry serve --daemon`)"
                    ),
                    accepted_protocols: scry_proto::ACCEPTED_PROTOCOLS.to_vec(),
                });
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), stream.write_all(msg.as_bytes()))
                        .await;
            });
            continue;
        }
        let pid = cred
            .and_then(|c| c.pid())
            .and_then(|p| u32::try_from(p).ok());
        let (r, w) = stream.into_split();
        tokio::spawn(link::serve(shared.clone(), r, w, link::Peer::Unix { pid }));
    }
}

async fn accept_tcp(shared: Arc<Shared>, listener: TcpListener, tls: Arc<agent_tls::Identity>) {
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(target: "agent_link", "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // TLS or plain loopback, and the channel binding of the handshake (agent_tls.rs).
        tokio::spawn(agent_tls::serve(shared.clone(), stream, addr, tls.clone()));
    }
}

async fn sweep_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut ticks = 0u64;
    loop {
        tick.tick().await;
        shared.sweep().await;
        shared.expire_probes().await;
        ticks += 1;
        if ticks.is_multiple_of(10) {
            // Reports are decoded and encoded on several threads (runtime, blocking pool,
            // writer); glibc keeps what they freed in per-thread arenas, so after a load the
            // daemon stayed hundreds of MB above idle. Give it back every 5 s.
            let _ = tokio::task::spawn_blocking(trim_heap).await;
        }
    }
}

/// Keeps glibc's heap from holding on to what a load leaves behind. Caps the malloc arenas at
/// two (by default each thread that allocates may get one, up to 8 per core, and a report
/// decoded on one runtime thread and freed on another leaves free memory in each), and fixes
/// the mmap threshold at 128 KiB: report lines and batches (around a megabyte) then come from
/// mmap and go back to the system when freed, instead of raising the threshold (glibc's
/// default does, up to 32 MiB) and fragmenting the heap. Call before the async runtime starts
/// its threads (arenas are given to threads as they first allocate).
pub fn limit_heap_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets glibc tunables; no pointer is involved.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Returns freed heap memory to the system (glibc only; elsewhere nothing to do).
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own arenas under their locks; no pointer of ours.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How many operations (most of them agent reports) may wait for the store's writer.
const STORE_QUEUE_REPORTS: usize = 16;

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
    fn count(&self, n: u64, per_source: Vec<(String, u64)>) {
        self.total.fetch_add(n, Ordering::Relaxed);
        let mut by_source = self.by_source.lock().unwrap_or_else(|e| e.into_inner());
        for (source, count) in per_source {
            *by_source.entry(source).or_default() += count;
        }
    }

    fn of(&self, source: &str) -> u64 {
        self.by_source
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(source)
            .copied()
            .unwrap_or(0)
    }
}

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

pub mod agent_tls;
pub mod api;
pub mod auth;
pub mod bundle;
pub mod clients;
pub mod config;
pub mod env;
mod error;
pub mod expr;
pub mod home;
pub mod link;
pub mod mcp;
pub mod service;
pub mod state;
pub mod stats;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use config::Config;
pub use error::DaemonError;
pub use home::Home;
use rand::Rng;
use scry_proto::DaemonMessage;
use scry_store::{Level, Store, StoreOptions};
use serde::Serialize;
use serde_json::{json, Value};
pub use state::{dropped, LiveEvent, NotStored, Shared};
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
    /// Once serving, restore what the last stop saved (`scry serve --restore`:
    /// [`service::daemon::restore`]).
    pub restore: bool,
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
    let registry = service::agents::load_registry(&store)?;
    let probe_table = state::probes::ProbeTable::load(store.probes()?);

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
        ui_logins: state::ui_logins::UiLogins::default(),
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
        attach_times: Default::default(),
        metric_probes: Default::default(),
        attaches: state::attaches::Pending::default(),
        follows: state::follows::Follows::default(),
        repl: state::repl::ReplHub::default(),
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
    let server_task = tokio::spawn(api::listen::serve_tcp(
        http_listener,
        api::router(shared.clone()),
        shared.shutdown_signal(),
    ));
    let api_task = tokio::spawn(api::listen::serve_unix(
        api_listener,
        api::router(shared.clone()),
        shared.shutdown_signal(),
    ));

    ready(&info);

    if opts.restore {
        let shared = shared.clone();
        tokio::spawn(async move {
            match service::daemon::restore(&shared).await {
                Ok(r) if !r.found => {
                    tracing::info!(target: "daemon", file = %r.file.display(), "nothing to restore")
                }
                Ok(r) => {
                    for o in r.outcomes {
                        tracing::info!(target: "daemon", pid = o.pid, action = %o.action, ok = o.ok, "restore: {}", o.message);
                    }
                }
                Err(e) => tracing::warn!(target: "daemon", "restore failed: {}", e.message),
            }
        });
    }

    let mut stop = shared.shutdown_signal();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| DaemonError::Io {
            path: "signal handler".into(),
            source,
        })?;
    let by_signal = tokio::select! {
        _ = stop.changed() => false,
        _ = sigterm.recv() => true,
        _ = tokio::signal::ctrl_c() => true,
    };
    // `POST shutdown` saved it before answering; a signal gives no such chance.
    if by_signal {
        service::daemon::save_restore(&shared);
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
        service::agents::sweep(&shared).await;
        service::probes::expire(&shared).await;
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

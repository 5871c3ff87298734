//! The registry of processes: every process the daemon has heard of, with its state and, while
//! an agent is connected, the handle to talk to it.
//!
//! The store holds the durable copy; this is the live view that the HTTP API reads. Processes
//! that vanish are marked `gone`, never forgotten.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use scry_proto::{ControlAddr, DaemonMessage, Reply};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

/// A process's state as scry sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcState {
    /// Known, alive, no agent connected (an embedded client that sleeps).
    Sleeping,
    /// An agent is connected.
    Awake,
    /// The process has exited.
    Gone,
}

impl ProcState {
    /// The wire and database name.
    pub fn as_str(self) -> &'static str {
        match self {
            ProcState::Sleeping => "sleeping",
            ProcState::Awake => "awake",
            ProcState::Gone => "gone",
        }
    }
    /// Parses the database name.
    pub fn parse(s: &str) -> ProcState {
        match s {
            "awake" => ProcState::Awake,
            "sleeping" => ProcState::Sleeping,
            _ => ProcState::Gone,
        }
    }
}

/// What the API shows of a process.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessView {
    /// The store's row id.
    pub id: i64,
    /// Identity: `host:pid:start`.
    pub key: String,
    /// Pid as the daemon sees it.
    pub pid: u32,
    /// Pid inside the process's own PID namespace, when it differs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ns_pid: Option<u32>,
    /// Parent pid.
    pub ppid: u32,
    /// Host name.
    pub host: String,
    /// Registered name.
    pub name: Option<String>,
    /// Python version.
    pub python_version: String,
    /// Interpreter path.
    pub executable: String,
    /// Command line.
    pub argv: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// `embedded`, `injected` or `run`.
    pub origin: String,
    /// Current state.
    pub state: ProcState,
    /// First time the daemon heard of it (epoch seconds).
    pub first_seen: f64,
    /// When the current connection began.
    pub connected_since: Option<f64>,
    /// Last message from it.
    pub last_heard: f64,
    /// The current connection's session id.
    pub session_id: Option<String>,
    /// The embedded client's control plane.
    pub control: Option<ControlAddr>,
    /// Features its agent offers (`probes`, …).
    pub capabilities: Vec<String>,
    /// Kernel start time (clock ticks) when known: detects pid reuse.
    #[serde(skip)]
    pub start_ticks: Option<u64>,
}

/// A handle to a connected agent: send it messages and wait for its replies.
#[derive(Debug, Clone)]
pub struct AgentHandle {
    /// The session id of this connection.
    pub session_id: String,
    tx: mpsc::Sender<DaemonMessage>,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Reply>>>>,
    next_id: Arc<AtomicU64>,
}

/// Why a request to an agent failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The connection closed before the reply came.
    #[error("the agent disconnected before answering")]
    Disconnected,
    /// No reply within the timeout.
    #[error("the agent did not answer within {0:?}")]
    Timeout(Duration),
}

impl AgentHandle {
    /// A handle writing to `tx`.
    pub fn new(session_id: String, tx: mpsc::Sender<DaemonMessage>) -> AgentHandle {
        AgentHandle {
            session_id,
            tx,
            pending: Arc::default(),
            next_id: Arc::new(AtomicU64::new(1)),
        }
    }

    /// Sends a message without waiting for anything. False when the connection is gone or
    /// its queue is full (the agent does not read what it is sent).
    pub fn send(&self, msg: DaemonMessage) -> bool {
        self.tx.try_send(msg).is_ok()
    }

    /// Sends the request built by `make` (given a fresh id) and waits for its reply.
    pub async fn request(
        &self,
        make: impl FnOnce(u64) -> DaemonMessage,
        timeout: Duration,
    ) -> Result<Reply, RequestError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.lock_pending().insert(id, tx);
        if !self.send(make(id)) {
            self.lock_pending().remove(&id);
            return Err(RequestError::Disconnected);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(RequestError::Disconnected),
            Err(_) => {
                self.lock_pending().remove(&id);
                Err(RequestError::Timeout(timeout))
            }
        }
    }

    /// Routes a reply from the agent to whoever waits for it. Returns false if nobody did.
    pub fn complete(&self, reply: Reply) -> bool {
        match self.lock_pending().remove(&reply.id) {
            Some(tx) => tx.send(reply).is_ok(),
            None => false,
        }
    }

    /// Fails every request still waiting (the connection closed).
    pub fn abandon_all(&self) {
        self.lock_pending().clear();
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Reply>>> {
        // A poisoned lock only means another task panicked mid-insert; the map is still usable.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One process in the registry.
#[derive(Debug, Clone)]
pub struct Entry {
    /// What the API shows.
    pub view: ProcessView,
    /// The connected agent, if any.
    pub agent: Option<AgentHandle>,
}

/// All processes, by store row id.
#[derive(Debug, Default)]
pub struct Registry {
    entries: HashMap<i64, Entry>,
}

impl Registry {
    /// Inserts or replaces an entry.
    pub fn put(&mut self, entry: Entry) {
        self.entries.insert(entry.view.id, entry);
    }
    /// An entry by row id.
    pub fn get_mut(&mut self, id: i64) -> Option<&mut Entry> {
        self.entries.get_mut(&id)
    }
    /// Forgets an entry (an injected agent that detached: nothing of scry is left in it).
    pub fn remove(&mut self, id: i64) -> Option<Entry> {
        self.entries.remove(&id)
    }
    /// An entry by identity key.
    pub fn by_key(&self, key: &str) -> Option<&Entry> {
        self.entries.values().find(|e| e.view.key == key)
    }
    /// Every entry, newest first.
    pub fn views(&self) -> Vec<ProcessView> {
        let mut v: Vec<ProcessView> = self.entries.values().map(|e| e.view.clone()).collect();
        v.sort_by(|a, b| {
            (a.state == ProcState::Gone)
                .cmp(&(b.state == ProcState::Gone))
                .then(b.first_seen.total_cmp(&a.first_seen))
        });
        v
    }
    /// Entries not gone and without a connected agent: the ones whose liveness must be checked.
    pub fn unconnected_live(&self) -> Vec<(i64, u32, Option<u64>)> {
        self.entries
            .values()
            .filter(|e| e.agent.is_none() && e.view.state != ProcState::Gone)
            .map(|e| (e.view.id, e.view.pid, e.view.start_ticks))
            .collect()
    }
    /// Finds live processes by pid or name. A name may match several.
    pub fn find(&self, target: &str) -> Vec<&Entry> {
        let pid: Option<u32> = target.parse().ok();
        let mut found: Vec<&Entry> = self
            .entries
            .values()
            .filter(|e| e.view.state != ProcState::Gone)
            .filter(|e| match pid {
                Some(p) => e.view.pid == p,
                None => e.view.name.as_deref() == Some(target),
            })
            .collect();
        found.sort_by_key(|e| e.view.pid);
        found
    }
    /// Counts by state.
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        for e in self.entries.values() {
            match e.view.state {
                ProcState::Awake => c.0 += 1,
                ProcState::Sleeping => c.1 += 1,
                ProcState::Gone => c.2 += 1,
            }
        }
        c
    }
}

//! The registry of processes: every process the daemon has heard of, with its state and, while
//! an agent is connected, the handle to talk to it.
//!
//! The store holds the durable copy; this is the live view that the HTTP API reads. Processes
//! that vanish are marked `gone`, never forgotten.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use scry_proto::{DaemonMessage, Hello, Reply};
use scry_store::{ProcessRecord, ProcessRow};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

pub use scry_api::{ProcState, ProcessView};

// -- one process record, from hello to screen ------------------------------------------------
//
// A process has one shape, `scry_api::ProcessView`: built from an agent's hello, kept here,
// shown by the API. The store keeps it as a `ProcessRecord` (the fields it indexes, the rest in
// `info`); these three functions are the only conversions.

/// The view of a process from its agent's hello. `identity` is `(key, pid, ns_pid,
/// start_ticks)`, what the daemon knows of the peer beyond what the agent says.
pub fn view_from_hello(
    hello: &Hello,
    identity: (String, u32, Option<u32>, Option<u64>),
    first_seen: f64,
    session_id: &str,
    now: f64,
) -> ProcessView {
    let (key, pid, ns_pid, start_ticks) = identity;
    ProcessView {
        id: 0,
        key,
        pid,
        ns_pid,
        ppid: hello.ppid,
        host: hello.host.clone(),
        name: hello.name.clone(),
        python_version: hello.python.version.clone(),
        executable: hello.python.executable.clone(),
        argv: hello.argv.clone(),
        cwd: hello.cwd.clone(),
        origin: hello.origin.as_str().into(),
        state: ProcState::Awake,
        first_seen,
        connected_since: Some(now),
        last_heard: now,
        session_id: Some(session_id.to_owned()),
        control: hello.control.clone(),
        capabilities: hello.capabilities.clone(),
        start_ticks,
    }
}

/// The store's record of a view.
pub fn record_of(view: &ProcessView) -> ProcessRecord {
    ProcessRecord {
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
    }
}

/// The view of a stored process, in `state` (no agent is connected to a process read back).
pub fn view_from_row(row: ProcessRow, state: ProcState) -> ProcessView {
    let ProcessRow {
        id, process: rec, ..
    } = row;
    let info = &rec.info;
    ProcessView {
        id,
        key: rec.key,
        pid: rec.pid,
        ns_pid: info
            .get("ns_pid")
            .and_then(Value::as_u64)
            .and_then(|v| u32::try_from(v).ok()),
        ppid: rec.ppid.unwrap_or(0),
        host: rec.host,
        name: rec.name,
        python_version: rec.python_version,
        executable: rec.executable,
        argv: rec.argv,
        cwd: rec.cwd,
        origin: rec.origin,
        state,
        first_seen: rec.first_seen,
        connected_since: None,
        last_heard: rec.last_heard,
        session_id: None,
        control: info
            .get("control")
            .and_then(|c| serde_json::from_value(c.clone()).ok()),
        start_ticks: info.get("start_ticks").and_then(Value::as_u64),
        capabilities: Vec::new(),
    }
}

/// The store's name of a state.
pub fn store_state(s: ProcState) -> scry_store::ProcessState {
    match s {
        ProcState::Sleeping => scry_store::ProcessState::Sleeping,
        ProcState::Awake => scry_store::ProcessState::Awake,
        ProcState::Gone => scry_store::ProcessState::Gone,
    }
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

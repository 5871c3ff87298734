//! The REPL relay's sessions: per terminal, the REPL that holds it and the ones waiting, in
//! arrival order ([`crate::service::repl`] runs the relay).

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use serde_json::{json, Value};
use tokio::sync::mpsc;

/// One REPL that holds or waits for a terminal.
#[derive(Debug, Clone)]
pub(crate) struct Repl {
    pub(crate) id: String,
    pub(crate) process_id: i64,
    pub(crate) pid: u32,
    pub(crate) name: String,
    pub(crate) thread: String,
    pub(crate) kind: String,
    pub(crate) place: String,
    pub(crate) exception: Option<String>,
}

impl Repl {
    pub(crate) fn view(&self) -> Value {
        json!({"repl": self.id, "pid": self.pid, "name": self.name, "thread": self.thread,
               "kind": self.kind, "where": self.place})
    }
}

/// One terminal and its queue.
pub(crate) struct Session {
    pub(crate) name: Option<String>,
    pub(crate) holder: Option<Repl>,
    pub(crate) waiting: VecDeque<Repl>,
    pub(crate) terminal: mpsc::UnboundedSender<Value>,
    pub(crate) terminal_rx: Option<mpsc::UnboundedReceiver<Value>>,
}

impl Session {
    pub(crate) fn state(&self, id: &str) -> Value {
        json!({
            "id": id,
            "name": self.name,
            "holder": self.holder.as_ref().map(Repl::view),
            "waiting": self.waiting.iter().map(Repl::view).collect::<Vec<_>>(),
        })
    }

    pub(crate) fn send(&self, event: Value) {
        let _ = self.terminal.send(event);
    }
}

/// The sessions of this daemon.
#[derive(Default)]
pub struct ReplHub {
    sessions: Mutex<HashMap<String, Session>>,
    pub(crate) started: std::sync::atomic::AtomicBool,
}

impl ReplHub {
    pub(crate) fn sessions(&self) -> MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

//! The REPL relay's sessions: per terminal, the REPL that holds it and the ones waiting, in
//! arrival order ([`crate::service::repl`] runs the relay).

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use scry_api::{ReplSessionState, ReplView, TerminalEvent};
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
    /// Its agent was granted the terminal once (a REPL switched away from keeps its grant and
    /// waits at its prompt).
    pub(crate) granted: bool,
    /// The last prompt it showed, shown again when it gets the terminal back.
    pub(crate) prompt: Option<String>,
    /// It waits at that prompt (it has not been given a line since).
    pub(crate) at_prompt: bool,
}

impl Repl {
    pub(crate) fn view(&self) -> ReplView {
        ReplView {
            repl: self.id.clone(),
            pid: self.pid,
            name: self.name.clone(),
            thread: self.thread.clone(),
            kind: self.kind.clone(),
            place: self.place.clone(),
        }
    }
}

/// One terminal and its queue.
pub(crate) struct Session {
    pub(crate) name: Option<String>,
    pub(crate) holder: Option<Repl>,
    pub(crate) waiting: VecDeque<Repl>,
    pub(crate) terminal: mpsc::UnboundedSender<TerminalEvent>,
    pub(crate) terminal_rx: Option<mpsc::UnboundedReceiver<TerminalEvent>>,
}

impl Session {
    pub(crate) fn state(&self, id: &str) -> ReplSessionState {
        ReplSessionState {
            id: id.to_owned(),
            name: self.name.clone(),
            holder: self.holder.as_ref().map(Repl::view),
            waiting: self.waiting(),
        }
    }

    /// The views of the REPLs waiting, next first.
    pub(crate) fn waiting(&self) -> Vec<ReplView> {
        self.waiting.iter().map(Repl::view).collect()
    }

    /// Sends an event to the terminal (lost when no terminal follows any more: the session is
    /// closed on the next tick).
    pub(crate) fn send(&self, event: TerminalEvent) {
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

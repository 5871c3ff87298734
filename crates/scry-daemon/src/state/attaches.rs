//! Attaches in progress: the one-time nonces that injected agents must present in their hello
//! ([`crate::service::attach`] issues them; the link claims them).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use scry_proto::{Hello, Origin};
use tokio::sync::oneshot;

use crate::link::Peer;

/// Nonces of attaches in progress: the agent's hello must present one, from the right pid.
#[derive(Default)]
pub struct Pending {
    map: Mutex<HashMap<String, PendingAttach>>,
}

struct PendingAttach {
    pid: u32,
    expires: Instant,
    connected: Option<oneshot::Sender<i64>>,
}

/// A claimed nonce: tell the attach which process row the agent got.
pub struct Claim(Option<oneshot::Sender<i64>>);

impl Claim {
    /// The agent is registered as `process_id`.
    pub fn registered(mut self, process_id: i64) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(process_id);
        }
    }
}

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, PendingAttach>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Issues `nonce` for an attach to `pid` until `expires`; the receiver gets the process row
    /// of the agent that claims it.
    pub fn add(&self, nonce: String, pid: u32, expires: Instant) -> oneshot::Receiver<i64> {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(
            nonce,
            PendingAttach {
                pid,
                expires,
                connected: Some(tx),
            },
        );
        rx
    }

    /// Withdraws a nonce (the attach ended).
    pub fn forget(&self, nonce: &str) {
        self.lock().remove(nonce);
    }

    /// Checks an agent's hello: an injected agent must present a nonce of an attach in
    /// progress, from the pid that attach targets; the nonce is used up. Other origins pass.
    pub fn claim(&self, hello: &Hello, peer: &Peer) -> Result<Option<Claim>, String> {
        if hello.origin != Origin::Injected {
            return Ok(None);
        }
        let refuse = || {
            "an injected agent must present the one-time nonce of an attach in progress (`scry attach PID`); this one is unknown, used or expired".to_string()
        };
        let Some(nonce) = hello.nonce.as_deref() else {
            return Err(refuse());
        };
        let mut map = self.lock();
        let Some(entry) = map.get(nonce) else {
            return Err(refuse());
        };
        let peer_pid = match peer {
            Peer::Unix { pid } => *pid,
            Peer::Tcp(_) => None,
        };
        if peer_pid != Some(entry.pid) {
            return Err(format!(
                "the nonce was issued for pid {}, not for this peer ({peer_pid:?})",
                entry.pid
            ));
        }
        let Some(entry) = map.remove(nonce) else {
            return Err(refuse());
        };
        if Instant::now() > entry.expires {
            return Err(refuse());
        }
        Ok(Some(Claim(entry.connected)))
    }
}

//! The trees followed by `scry attach --follow`: per root pid, what its follow knows and the task
//! that walks it ([`crate::service::follow`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// One restart seen: a followed process exited and another appeared under the same parent.
#[derive(Debug, Clone, Serialize)]
pub struct Restart {
    /// The pid that exited.
    pub old_pid: u32,
    /// The pid that replaced it.
    pub new_pid: u32,
    /// Their parent.
    pub parent: u32,
    /// When (epoch seconds).
    pub at: f64,
}

/// What a follow knows, as `GET /api/v1/follow` shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FollowState {
    /// The followed root.
    pub root: u32,
    /// Since when (epoch seconds).
    pub since: f64,
    /// Pids attached by this follow (and still alive), with their parent.
    pub attached: Vec<u32>,
    /// Pids it could not attach to, with the last error.
    pub failed: HashMap<u32, String>,
    /// Restarts seen.
    pub restarts: Vec<Restart>,
}

/// One follow: what it knows, and its task.
pub struct Follow {
    /// What it knows.
    pub state: Arc<Mutex<FollowState>>,
    /// The task walking the tree.
    pub task: tokio::task::JoinHandle<()>,
}

/// The follows in progress, by root pid.
#[derive(Default)]
pub struct Follows {
    map: Mutex<HashMap<u32, Follow>>,
}

impl Follows {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Follow>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts following `root` (a previous follow of it is ended).
    pub fn start(&self, root: u32, follow: Follow) {
        if let Some(previous) = self.lock().insert(root, follow) {
            previous.task.abort();
        }
    }

    /// Stops following `root` (and a follow whose tree holds `root`); true when one was.
    pub fn stop(&self, pid: u32) -> bool {
        let mut map = self.lock();
        let roots: Vec<u32> = map
            .iter()
            .filter(|(root, f)| {
                **root == pid
                    || f.state
                        .lock()
                        .map(|s| s.attached.contains(&pid))
                        .unwrap_or(false)
            })
            .map(|(root, _)| *root)
            .collect();
        for root in &roots {
            if let Some(f) = map.remove(root) {
                f.task.abort();
            }
        }
        !roots.is_empty()
    }

    /// The state of every follow.
    pub fn states(&self) -> Vec<FollowState> {
        self.lock()
            .values()
            .map(|f| f.state.lock().map(|s| s.clone()).unwrap_or_default())
            .collect()
    }

    /// Whether `root` is followed by a live task.
    pub fn is_following(&self, root: u32) -> bool {
        self.lock()
            .get(&root)
            .is_some_and(|f| !f.task.is_finished())
    }
}

//! The trees followed by `scry attach --follow`: per root pid, what its follow knows and the task
//! that walks it ([`crate::service::follow`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub use scry_api::{FollowState, Restart};

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

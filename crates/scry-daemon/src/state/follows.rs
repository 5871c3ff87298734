//! The trees followed by `scry attach --follow`: per root pid, what its follow knows and the task
//! that walks it ([`crate::service::follow`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::task::JoinSet;

pub use scry_api::{FollowState, Restart};

/// The attaches a follow has in progress, each answering its pid and whether it attached.
/// `None` once the follow is stopped: nothing new may start then.
pub type Attaching = Arc<Mutex<Option<JoinSet<(u32, bool)>>>>;

/// One follow: what it knows, its task, and its attaches in progress.
pub struct Follow {
    /// What it knows.
    pub state: Arc<Mutex<FollowState>>,
    /// The task walking the tree.
    pub task: tokio::task::JoinHandle<()>,
    /// Its attaches in progress (on tasks of their own, so that a slow one holds no other back).
    pub attaching: Attaching,
}

/// A follow that was stopped: what it knew, and the attaches it had in progress.
pub struct Stopped {
    /// Its last state.
    pub state: FollowState,
    /// Its attaches still in progress (they run on unless this is dropped, which aborts them).
    pub attaching: JoinSet<(u32, bool)>,
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

    /// Stops following `root` (and a follow whose tree holds `root`); returns the follows
    /// stopped.
    pub fn stop(&self, pid: u32) -> Vec<Stopped> {
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
        roots
            .iter()
            .filter_map(|root| map.remove(root))
            .map(|f| {
                f.task.abort();
                // Taken under the lock the task spawns under: it starts nothing after this.
                let attaching = f
                    .attaching
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take()
                    .unwrap_or_default();
                let state = f.state.lock().map(|s| s.clone()).unwrap_or_default();
                Stopped { state, attaching }
            })
            .collect()
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

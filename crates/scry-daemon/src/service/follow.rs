//! `scry attach --follow PID`: attach to a process and to every Python process below it, now and
//! as they appear (a reload worker that restarts, a pool that spawns), until the root exits or
//! `scry detach PID` stops it.
//!
//! One task per followed root, in the daemon (so it outlives the CLI): every [`POLL`] it walks
//! the tree under the root from `/proc`, recognises Python processes from their memory image
//! (`scry_proc::python`, cached per pid and start time; tools' own processes are left out: scry's,
//! multiprocessing's resource tracker and fork server, debugpy's adapter and launcher) and attaches to those without an awake
//! agent ([`crate::service::attach::attach`], each on its own task so that a slow gdb attach does not
//! hold the others back). A process whose attach failed is retried a few times, then left
//! alone (its error is kept and shown). Probes need nothing here: the daemon syncs the probes
//! meant for a process when its agent connects, so a new worker gets them.
//!
//! A restart is recognised when a followed process exits and a new Python process appears under
//! the same parent (the supervisor of a reloading server, a pool): it is reported as a system
//! event `follow_restart` (old pid → new pid) and kept in the follow's state
//! (`GET /api/v1/follow`).
//!
//! Not for: processes outside the tree, or deciding which probes a process gets.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use scry_api::{AttachReport, AttachRequest};
use serde_json::{json, Value};

use super::{attach, Result};
use crate::state::follows::{Attaching, Follow};
use crate::Shared;
use scry_api::{FollowList, FollowState, Restart, Unfollowed};

/// How often a followed tree is walked.
pub const POLL: Duration = Duration::from_millis(200);
/// Attempts per process before it is left alone.
const MAX_ATTEMPTS: u32 = 5;
/// Between two attempts on the same process (one that is still starting fails at first).
const RETRY_AFTER: Duration = Duration::from_millis(500);
/// The time each attach gives the target to pick the bootstrap up.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(5);

/// Per process (pid, start ticks): Python or not, attempts, outcome.
#[derive(Default)]
struct Seen {
    /// Processes recognised as Python (only positives: a process that is still loading its
    /// interpreter is asked again next time).
    python: HashSet<(u32, u64)>,
    /// Attempts so far and when the last one started.
    attempts: HashMap<(u32, u64), (u32, std::time::Instant)>,
    in_flight: HashSet<u32>,
    /// Followed pids still alive last time, with their parent.
    alive: HashMap<u32, u32>,
    /// Parents whose followed child exited and is not replaced yet: parent -> old pids.
    orphaned_slots: HashMap<u32, Vec<u32>>,
}

/// Whether `pid` runs scry's own binary (the daemon, a CLI, `scry run`'s wrapper): never a
/// target, whatever it looks like.
fn is_scry(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let Ok(own) = std::fs::read_link("/proc/self/exe") else {
        return false;
    };
    std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == own)
}

/// Whether `pid` has an awake agent connected.
fn is_attached(shared: &Shared, pid: u32) -> bool {
    shared
        .registry()
        .find(&pid.to_string())
        .into_iter()
        .any(|e| e.view.state == crate::state::registry::ProcState::Awake && e.agent.is_some())
}

async fn run(shared: Arc<Shared>, root: u32, state: Arc<Mutex<FollowState>>, attaching: Attaching) {
    let mut seen = Seen::default();
    let mut detector = scry_proc::python::Detector::new();
    let (done_tx, mut done_rx) =
        tokio::sync::mpsc::unbounded_channel::<(u32, u64, Result<(), String>)>();
    loop {
        if let Some(set) = attaching.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            while set.try_join_next().is_some() {}
        }
        while let Ok((pid, start, result)) = done_rx.try_recv() {
            seen.in_flight.remove(&pid);
            let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
            match result {
                Ok(()) => {
                    st.failed.remove(&pid);
                }
                Err(e) => {
                    if seen.attempts.get(&(pid, start)).map_or(0, |a| a.0) >= MAX_ATTEMPTS {
                        tracing::warn!(target: "daemon", pid, error = %e, "follow: giving up attaching");
                    }
                    st.failed.insert(pid, e);
                }
            }
        }
        if !scry_proc::alive(root, None) {
            shared.system_event(
                scry_store::Level::Info,
                "follow_ended",
                format!("stopped following {root}: it exited"),
                json!({"root": root}),
            );
            return;
        }
        let tree = scry_proc::tree(root);
        let mut present: HashMap<u32, u32> = HashMap::new();
        for (p, _) in &tree {
            if p.state == 'Z' {
                continue;
            }
            let key = (p.pid, p.start_ticks);
            // Tools' own processes are never targets: the helpers that run no user code
            // (multiprocessing's resource tracker and fork server, debugpy's adapter and
            // launcher, which `scry debug` starts under a followed worker), asked every time
            // since a fresh child still shows its parent's command line until it `exec`s one;
            // and scry's.
            if scry_proc::python::role_of(&p.cmdline, None).is_some_and(|r| r.is_helper()) {
                continue;
            }
            if !seen.python.contains(&key) {
                if is_scry(p.pid) || detector.detect(p.pid).is_none_or(|i| i.short == "?") {
                    continue;
                }
                seen.python.insert(key);
            }
            present.insert(p.pid, p.ppid);
            if is_attached(&shared, p.pid) || seen.in_flight.contains(&p.pid) {
                continue;
            }
            let now = std::time::Instant::now();
            let (attempts, last) = seen.attempts.entry(key).or_insert((0, now - RETRY_AFTER));
            if *attempts >= MAX_ATTEMPTS || now.duration_since(*last) < RETRY_AFTER {
                continue;
            }
            *attempts += 1;
            *last = now;
            seen.in_flight.insert(p.pid);
            let (shared2, tx, pid, start) = (shared.clone(), done_tx.clone(), p.pid, p.start_ticks);
            let mut guard = attaching.lock().unwrap_or_else(|e| e.into_inner());
            // Stopped (`scry detach ROOT` waits for the attaches in progress, then detaches
            // them too): start nothing more.
            let Some(set) = guard.as_mut() else {
                return;
            };
            set.spawn(async move {
                let result = attach::attach(&shared2, pid, ATTACH_TIMEOUT, None)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string());
                let ok = result.is_ok();
                let _ = tx.send((pid, start, result));
                (pid, ok)
            });
        }
        // Restarts: a followed pid gone, a new one under the same parent.
        let now = crate::now();
        for (old, parent) in seen.alive.clone() {
            if !present.contains_key(&old) {
                seen.orphaned_slots.entry(parent).or_default().push(old);
            }
        }
        let mut restarts = Vec::new();
        for (&pid, &parent) in &present {
            if seen.alive.contains_key(&pid) {
                continue;
            }
            if let Some(olds) = seen.orphaned_slots.get_mut(&parent) {
                if let Some(old) = olds.pop() {
                    restarts.push(Restart {
                        old_pid: old,
                        new_pid: pid,
                        parent,
                        at: now,
                    });
                }
            }
        }
        seen.orphaned_slots.retain(|_, v| !v.is_empty());
        seen.alive = present;
        {
            let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
            st.attached = seen
                .alive
                .keys()
                .copied()
                .filter(|p| is_attached(&shared, *p))
                .collect();
            st.attached.sort_unstable();
            st.restarts.extend(restarts.iter().cloned());
        }
        for r in restarts {
            shared.system_event(
                scry_store::Level::Info,
                "follow_restart",
                format!(
                    "restart under {}: pid {} -> pid {} (attaching to the new one)",
                    r.parent, r.old_pid, r.new_pid
                ),
                serde_json::to_value(&r).unwrap_or(Value::Null),
            );
        }
        // Forget processes that are gone.
        seen.python
            .retain(|(pid, _)| tree.iter().any(|(p, _)| p.pid == *pid));
        seen.attempts
            .retain(|(pid, _), _| tree.iter().any(|(p, _)| p.pid == *pid));

        tokio::time::sleep(POLL).await;
    }
}

/// Attaches to the request's process now (the answer of `scry attach --follow`), then follows
/// its tree.
pub async fn follow(shared: &Arc<Shared>, req: &AttachRequest) -> Result<AttachReport> {
    let (root, timeout, only) = attach::check_request(req)?;
    let mut report = attach::attach(shared, root, timeout, only).await?;
    let already_following = shared.follows.is_following(root);
    if !already_following {
        let state = Arc::new(Mutex::new(FollowState {
            root,
            since: crate::now(),
            ..FollowState::default()
        }));
        let attaching: Attaching = Arc::new(Mutex::new(Some(tokio::task::JoinSet::new())));
        let task = tokio::spawn(run(shared.clone(), root, state.clone(), attaching.clone()));
        shared.follows.start(
            root,
            Follow {
                state,
                task,
                attaching,
            },
        );
    }
    report.following = Some(true);
    report.already_following = Some(already_following);
    Ok(report)
}

/// Every follow in progress (`GET /api/v1/follow`).
pub fn list(shared: &Shared) -> FollowList {
    FollowList {
        follows: shared.follows.states(),
    }
}

/// Stops following `pid` (a root, or a process of a followed tree); the agents stay (`scry
/// detach ROOT` detaches them: [`attach::detach`]).
pub fn unfollow(shared: &Shared, pid: u32) -> Result<Unfollowed> {
    let pid = attach::positive_pid(pid)?;
    let stopped = shared.follows.stop(pid);
    let any = !stopped.is_empty();
    // The agents stay: so do the attaches in progress.
    for f in stopped {
        let mut attaching = f.attaching;
        attaching.detach_all();
    }
    Ok(Unfollowed { pid, stopped: any })
}

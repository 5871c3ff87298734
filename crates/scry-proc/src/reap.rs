//! Ending a process tree politely: SIGINT, a grace period, SIGTERM, a grace period, SIGKILL,
//! recording which step ended each process.
//!
//! Main entry points: [`tree`] (the processes of a tree, collected once), [`orphans`] (processes
//! whose parent died, matched by command line), [`reap`] (signals them and watches them end,
//! reporting through a [`ReapReporter`] and returning a [`ReapReport`]).
//!
//! Each step signals every remaining process of the set at once (not leaves first): a parent
//! that dies first cannot replace its children, because they are signalled in the same step,
//! and a leaves-first order would only let a supervising parent restart them. Before each
//! signal the pid's start time is compared with the one collected, so a recycled pid is never
//! signalled. Processes of another user (real uid) are never signalled. Children of the caller
//! are reaped with `waitpid` as they end, so reaping leaves no zombie of its own.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use serde::Serialize;

use crate::ProcInfo;

/// Why a set of processes cannot be reaped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReapError {
    /// There is no process with this pid.
    #[error("no process with pid {pid}")]
    NoSuchProcess {
        /// The pid asked for.
        pid: u32,
    },
    /// pid 1 (init of this PID namespace) is never reaped.
    #[error("refusing to reap pid 1 (init)")]
    Init,
    /// The caller itself.
    #[error("refusing to reap process {pid}: it is this process")]
    Itself {
        /// The caller's pid.
        pid: u32,
    },
    /// An ancestor of the caller: reaping it would end the caller too.
    #[error("refusing to reap process {pid}: it is an ancestor of this process")]
    Ancestor {
        /// The ancestor's pid.
        pid: u32,
    },
    /// The process belongs to another user (real uid).
    #[error("refusing to reap process {pid}: it belongs to uid {uid}, not {own}")]
    OtherUser {
        /// The pid.
        pid: u32,
        /// Its real uid.
        uid: u32,
        /// The caller's real uid.
        own: u32,
    },
    /// An empty pattern would match every orphan.
    #[error("the orphan pattern is empty: it would match every orphan")]
    EmptyPattern,
}

/// A step of a reap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    /// SIGINT (what ctrl-c sends: Python raises `KeyboardInterrupt`).
    Sigint,
    /// SIGTERM.
    Sigterm,
    /// SIGKILL (cannot be caught or ignored).
    Sigkill,
}

impl Step {
    /// The three steps, in order.
    pub const ALL: [Step; 3] = [Step::Sigint, Step::Sigterm, Step::Sigkill];

    fn signal(self) -> Signal {
        match self {
            Step::Sigint => Signal::SIGINT,
            Step::Sigterm => Signal::SIGTERM,
            Step::Sigkill => Signal::SIGKILL,
        }
    }

    /// `SIGINT`, `SIGTERM` or `SIGKILL`.
    pub fn name(self) -> &'static str {
        match self {
            Step::Sigint => "SIGINT",
            Step::Sigterm => "SIGTERM",
            Step::Sigkill => "SIGKILL",
        }
    }
}

/// A process to reap, as collected before the first signal.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Target {
    /// The pid.
    pub pid: u32,
    /// The parent's pid.
    pub ppid: u32,
    /// Depth below the root (0 for the root and for orphans).
    pub depth: u32,
    /// `comm`.
    pub comm: String,
    /// The command line.
    pub cmdline: Vec<String>,
    /// Start time in clock ticks since boot (identity together with the pid).
    #[serde(skip)]
    pub start_ticks: u64,
    /// The real uid.
    pub uid: u32,
}

impl Target {
    fn from_info(p: &ProcInfo, depth: u32) -> Target {
        Target {
            pid: p.pid,
            ppid: p.ppid,
            depth,
            comm: p.comm.clone(),
            cmdline: p.cmdline.clone(),
            start_ticks: p.start_ticks,
            uid: p.uid,
        }
    }
}

/// What happened to one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", content = "step", rename_all = "snake_case")]
pub enum Outcome {
    /// It had already exited (or was a zombie) before the first signal.
    AlreadyGone,
    /// It ended during this step (after this signal, within its grace period).
    Ended(Step),
    /// It was still alive after SIGKILL and its grace period (e.g. stuck in `D` state).
    Survived,
    /// It belongs to another user: never signalled.
    OtherUser,
    /// The kernel refused to signal it (EPERM).
    Refused,
}

/// One process of a report.
#[derive(Debug, Clone, Serialize)]
pub struct ReapEntry {
    /// The process as collected.
    #[serde(flatten)]
    pub target: Target,
    /// What happened to it.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The result of a reap, in the order the targets were given.
#[derive(Debug, Clone, Serialize)]
pub struct ReapReport {
    /// The grace period of each step, in seconds.
    pub grace_seconds: f64,
    /// Every process.
    pub processes: Vec<ReapEntry>,
}

impl ReapReport {
    /// Whether every process is gone (none survived or was refused; other users' processes
    /// count as left alone, not failed).
    pub fn all_gone(&self) -> bool {
        self.processes
            .iter()
            .all(|e| !matches!(e.outcome, Outcome::Survived | Outcome::Refused))
    }
}

/// Progress of a reap, as it happens.
pub trait ReapReporter {
    /// A step begins: `pids` are signalled.
    fn step(&mut self, _step: Step, _pids: &[u32]) {}
    /// A process's outcome is known.
    fn outcome(&mut self, _target: &Target, _outcome: Outcome) {}
}

/// A reporter that reports nothing.
pub struct Silent;

impl ReapReporter for Silent {}

fn own_uid() -> u32 {
    nix::unistd::getuid().as_raw()
}

/// The pids of the caller and its ancestors (up to pid 1).
fn self_and_ancestors() -> Vec<u32> {
    let mut out = vec![std::process::id()];
    let mut pid = std::process::id();
    while let Ok(p) = crate::info(pid) {
        if p.ppid == 0 || out.contains(&p.ppid) {
            break;
        }
        out.push(p.ppid);
        pid = p.ppid;
    }
    out
}

fn refuse(pid: u32, ancestors: &[u32]) -> Result<(), ReapError> {
    if pid == 1 {
        return Err(ReapError::Init);
    }
    if pid == std::process::id() {
        return Err(ReapError::Itself { pid });
    }
    if ancestors.contains(&pid) {
        return Err(ReapError::Ancestor { pid });
    }
    Ok(())
}

/// The tree under `root` (root first, parent before child), collected once. Errors when the
/// root does not exist, is pid 1, the caller or one of its ancestors, or belongs to another
/// user. Processes of another user below the root are included: [`reap`] leaves them alone.
pub fn tree(root: u32) -> Result<Vec<Target>, ReapError> {
    let ancestors = self_and_ancestors();
    refuse(root, &ancestors)?;
    let info = crate::info(root).map_err(|_| ReapError::NoSuchProcess { pid: root })?;
    let own = own_uid();
    if info.uid != own {
        return Err(ReapError::OtherUser {
            pid: root,
            uid: info.uid,
            own,
        });
    }
    // The caller cannot be below the root (the root would be its ancestor), but be sure.
    let me = std::process::id();
    let out = crate::tree(root)
        .into_iter()
        .filter(|(p, _)| p.pid != me)
        .map(|(p, depth)| Target::from_info(&p, depth))
        .collect();
    Ok(out)
}

/// `(pgid, sid)` from `/proc/PID/stat`.
fn group_of(pid: u32) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest: Vec<&str> = text
        .get(text.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    Some((rest.get(2)?.parse().ok()?, rest.get(3)?.parse().ok()?))
}

/// Whether `p` looks orphaned: its parent is pid 1, or the leader of its process group has
/// exited (the program that started the group is gone and `p` was reparented, to init or to a
/// subreaper). The kernel does not record the original parent, so this is the signal
/// available: a process whose group leader lives still has the program that started it.
fn orphaned(p: &ProcInfo) -> bool {
    if p.ppid == 1 {
        return true;
    }
    let Some((pgid, _)) = group_of(p.pid) else {
        return false;
    };
    if pgid == p.pid || pgid == 0 {
        return false;
    }
    // The leader is gone when no process has pid == pgid (or a zombie holds it).
    !crate::alive(pgid, None)
}

/// The caller's user's orphaned processes whose command line (arguments joined by spaces)
/// contains `pattern` (a plain substring, case-sensitive: no regular expressions, so that a
/// pattern never matches more than it reads). Never the caller or its ancestors.
pub fn orphans(pattern: &str) -> Result<Vec<Target>, ReapError> {
    if pattern.trim().is_empty() {
        return Err(ReapError::EmptyPattern);
    }
    let ancestors = self_and_ancestors();
    let own = own_uid();
    let mut out = Vec::new();
    for pid in crate::all_pids() {
        if pid == 1 || ancestors.contains(&pid) {
            continue;
        }
        let Ok(p) = crate::info(pid) else { continue };
        if p.uid != own || p.state == 'Z' || p.cmdline.is_empty() {
            continue;
        }
        if !p.cmdline.join(" ").contains(pattern) || !orphaned(&p) {
            continue;
        }
        out.push(Target::from_info(&p, 0));
    }
    Ok(out)
}

/// Collects any of `targets` that are children of the caller and have exited.
fn reap_children(targets: &[Target]) {
    for t in targets {
        let _ = waitpid(Pid::from_raw(t.pid as i32), Some(WaitPidFlag::WNOHANG));
    }
}

fn gone(t: &Target) -> bool {
    !crate::alive(t.pid, Some(t.start_ticks))
}

/// Ends `targets`: SIGINT to every one, up to `grace` watching them end, then SIGTERM to those
/// left, the same wait, then SIGKILL and the same wait. Returns what happened to each.
pub fn reap(targets: &[Target], grace: Duration, reporter: &mut dyn ReapReporter) -> ReapReport {
    let own = own_uid();
    let mut outcome: Vec<Option<Outcome>> = vec![None; targets.len()];
    reap_children(targets);
    for (i, t) in targets.iter().enumerate() {
        let o = if t.uid != own {
            Some(Outcome::OtherUser)
        } else if gone(t) {
            Some(Outcome::AlreadyGone)
        } else {
            None
        };
        if let Some(o) = o {
            outcome[i] = Some(o);
            reporter.outcome(t, o);
        }
    }
    for step in Step::ALL {
        let left: Vec<usize> = (0..targets.len())
            .filter(|&i| outcome[i].is_none())
            .collect();
        if left.is_empty() {
            break;
        }
        let pids: Vec<u32> = left.iter().map(|&i| targets[i].pid).collect();
        reporter.step(step, &pids);
        for &i in &left {
            let t = &targets[i];
            // Checked just before signalling: a recycled pid is another process.
            if gone(t) {
                outcome[i] = Some(Outcome::Ended(step));
                reporter.outcome(t, Outcome::Ended(step));
                continue;
            }
            match kill(Pid::from_raw(t.pid as i32), step.signal()) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => {
                    tracing::debug!(target: "proc", pid = t.pid, signal = step.name(), error = %e, "signal refused");
                    outcome[i] = Some(Outcome::Refused);
                    reporter.outcome(t, Outcome::Refused);
                }
            }
        }
        let deadline = Instant::now() + grace;
        loop {
            reap_children(targets);
            let mut waiting = false;
            for &i in &left {
                if outcome[i].is_some() {
                    continue;
                }
                if gone(&targets[i]) {
                    outcome[i] = Some(Outcome::Ended(step));
                    reporter.outcome(&targets[i], Outcome::Ended(step));
                } else {
                    waiting = true;
                }
            }
            if !waiting || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // One that turned zombie between the last waitpid and the `gone` check that counted it
    // ended: collect it now, or reaping would leave a zombie of its own.
    reap_children(targets);
    let processes = targets
        .iter()
        .zip(outcome)
        .map(|(t, o)| {
            let outcome = o.unwrap_or(Outcome::Survived);
            if o.is_none() {
                reporter.outcome(t, outcome);
            }
            ReapEntry {
                target: t.clone(),
                outcome,
            }
        })
        .collect();
    ReapReport {
        grace_seconds: grace.as_secs_f64(),
        processes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn refuses_init_self_and_ancestors() {
        assert!(matches!(tree(1), Err(ReapError::Init)));
        let me = std::process::id();
        assert!(matches!(tree(me), Err(ReapError::Itself { .. })));
        let parent = crate::info(me).expect("self").ppid;
        if parent > 1 {
            assert!(matches!(tree(parent), Err(ReapError::Ancestor { .. })));
        }
        assert!(matches!(
            tree(u32::MAX - 1),
            Err(ReapError::NoSuchProcess { .. })
        ));
        assert!(matches!(orphans("  "), Err(ReapError::EmptyPattern)));
    }

    #[test]
    fn reaps_a_child_at_the_first_step_and_leaves_no_zombie() {
        let child = Command::new("sleep").arg("30").spawn().expect("sleep");
        let pid = child.id();
        let targets = tree(pid).expect("tree");
        assert_eq!(targets.len(), 1);
        let report = reap(&targets, Duration::from_secs(3), &mut Silent);
        assert_eq!(report.processes[0].outcome, Outcome::Ended(Step::Sigint));
        assert!(report.all_gone());
        // Reaped by `reap` (this test is its parent): no /proc entry, not even a zombie.
        assert!(crate::info(pid).is_err(), "child {pid} left a zombie");
        std::mem::forget(child);
    }

    #[test]
    fn a_process_ignoring_sigint_and_sigterm_ends_at_sigkill() {
        // `trap '' INT TERM` makes the shell (and the sleep it execs into) ignore both.
        let child = Command::new("sh")
            .args(["-c", "trap '' INT TERM; exec sleep 30"])
            .spawn()
            .expect("sh");
        let pid = child.id();
        // Wait until the exec happened so the ignored dispositions are in place.
        let deadline = Instant::now() + Duration::from_secs(5);
        while crate::info(pid).map(|p| p.comm != "sleep").unwrap_or(true) {
            assert!(Instant::now() < deadline, "sleep did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        let targets = tree(pid).expect("tree");
        let report = reap(&targets, Duration::from_millis(300), &mut Silent);
        assert_eq!(report.processes[0].outcome, Outcome::Ended(Step::Sigkill));
        assert!(crate::info(pid).is_err());
        std::mem::forget(child);
    }

    #[test]
    fn an_exited_target_is_already_gone() {
        let mut child = Command::new("true").spawn().expect("true");
        let pid = child.id();
        let targets = tree(pid).expect("tree");
        child.wait().expect("wait");
        let report = reap(&targets, Duration::from_millis(100), &mut Silent);
        assert_eq!(report.processes[0].outcome, Outcome::AlreadyGone);
    }
}

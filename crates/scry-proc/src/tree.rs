//! A process tree with what `scry ps --tree` and `scry top` show of each process: whether it
//! runs Python (and which version, from its memory mappings), CPU %, RSS, age, and what it is
//! blocked on (scheduler state and `wchan`).
//!
//! Main types: [`Sampler`] (keeps the previous CPU times, so that CPU % is the share of the
//! time between two samples) and [`TreeProcess`]. Everything is read from `/proc`; nothing is
//! attached to or paused.
//!
//! Python processes are recognised by [`crate::python::Detector`] (from the interpreter's ELF
//! file and memory, not the process name), once per process (cached by pid and start time),
//! so a refresh every second stays cheap.

use std::collections::HashMap;
use std::time::Instant;

use serde::Serialize;

use crate::ProcError;

/// Which processes to sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// A process and every process below it, parent before child.
    Tree(u32),
    /// Every process that runs Python, by pid.
    Python,
}

/// One process of a sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TreeProcess {
    /// The pid.
    pub pid: u32,
    /// The parent's pid.
    pub ppid: u32,
    /// Depth below the root (0 for the root, and for every process of [`Selection::Python`]).
    pub depth: u32,
    /// `comm`.
    pub comm: String,
    /// The command line (empty for kernel threads and zombies).
    pub cmdline: Vec<String>,
    /// The real uid.
    pub uid: u32,
    /// The Python version (`3.11`, `3.13t`) when the process maps a Python interpreter;
    /// `Some("?")` when it does but the version is not in the file names.
    pub python: Option<String>,
    /// One-letter scheduler state.
    pub state: char,
    /// The `State:` line of `/proc/PID/status`, e.g. `S (sleeping)`.
    pub state_text: Option<String>,
    /// The kernel function the process sleeps in (`/proc/PID/wchan`), if any.
    pub wchan: Option<String>,
    /// CPU use since the previous sample, in percent of one CPU; `None` on a first sample.
    pub cpu_percent: Option<f64>,
    /// Resident memory (`VmRSS`) in KiB; `None` for zombies and kernel threads.
    pub rss_kib: Option<u64>,
    /// Start time, seconds since the epoch.
    pub started_at: f64,
    /// The executable (`/proc/PID/exe`), when readable.
    pub executable: Option<String>,
    /// What was recognised of its interpreter, when it runs Python.
    pub python_detail: Option<crate::python::PythonInfo>,
    /// Another root or PID namespace (a container, a chroot), when it is in one.
    pub container: Option<crate::python::Container>,
    /// Its part in a reloading server or a multiprocessing program (Python processes only).
    pub role: Option<crate::python::Role>,
}

/// Samples processes; CPU % is computed against the previous sample of the same `Sampler`.
#[derive(Debug, Default)]
pub struct Sampler {
    /// pid -> (start ticks, utime + stime ticks) at the previous sample.
    last: HashMap<u32, (u64, u64)>,
    at: Option<Instant>,
    detector: crate::python::Detector,
    /// (pid, start ticks) -> what detection found: a process does not change interpreter.
    pythons: HashMap<(u32, u64), Option<crate::python::PythonInfo>>,
}

/// `utime + stime` (clock ticks) from `/proc/PID/stat`.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest: Vec<&str> = text
        .get(text.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    // rest[0] is field 3; utime is field 14, stime field 15.
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// `(State:, VmRSS in KiB)` from `/proc/PID/status`.
fn status(pid: u32) -> (Option<String>, Option<u64>) {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return (None, None);
    };
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
    };
    let rss = field("VmRSS:").and_then(|v| v.split_whitespace().next()?.parse().ok());
    (field("State:"), rss)
}

/// Whether `pid` runs Python, and which version (`3.11`, `3.14t`), recognised from its
/// memory image by [`crate::python::Detector`].
pub fn python_version(pid: u32) -> Option<String> {
    crate::python::Detector::new().detect(pid).map(|p| p.short)
}

impl Sampler {
    /// A sampler with no previous sample.
    pub fn new() -> Sampler {
        Sampler::default()
    }

    /// The command line of `ppid` when it runs Python (`python_cmdlines`: the Python processes
    /// of this sample so far).
    fn python_parent_cmdline(
        &mut self,
        ppid: u32,
        python_cmdlines: &HashMap<u32, Vec<String>>,
    ) -> Option<Vec<String>> {
        if let Some(c) = python_cmdlines.get(&ppid) {
            return Some(c.clone());
        }
        let parent = crate::info(ppid).ok()?;
        self.python_of(ppid, parent.start_ticks)?;
        Some(parent.cmdline)
    }

    /// What detection found for this process (cached per pid and start time).
    fn python_of(&mut self, pid: u32, start_ticks: u64) -> Option<crate::python::PythonInfo> {
        if let Some(known) = self.pythons.get(&(pid, start_ticks)) {
            return known.clone();
        }
        let found = self.detector.detect(pid);
        // A process that is still loading its interpreter is asked again next time.
        if found.as_ref().is_none_or(|p| p.short != "?") {
            self.pythons.insert((pid, start_ticks), found.clone());
        }
        found
    }

    /// Samples the selected processes. Errors only when the root of a [`Selection::Tree`]
    /// does not exist; processes that exit meanwhile are left out.
    pub fn sample(&mut self, selection: Selection) -> Result<Vec<TreeProcess>, ProcError> {
        let scanned: Vec<u32> = match selection {
            Selection::Python => crate::all_pids(),
            Selection::Tree(_) => Vec::new(),
        };
        let pids: Vec<(u32, u32)> = match selection {
            Selection::Tree(root) => {
                crate::info(root)?;
                crate::tree(root)
                    .into_iter()
                    .map(|(p, d)| (p.pid, d))
                    .collect()
            }
            Selection::Python => scanned
                .iter()
                .copied()
                .filter(|&p| p != std::process::id())
                .filter_map(|p| {
                    let info = crate::info(p).ok()?;
                    self.python_of(p, info.start_ticks).map(|_| (p, 0))
                })
                .collect(),
        };
        let mut cmdlines: HashMap<u32, Vec<String>> = HashMap::new();
        let now = Instant::now();
        let elapsed = self.at.map(|t| now.duration_since(t).as_secs_f64());
        let hz = crate::clock_ticks();
        let mut next = HashMap::new();
        let mut out = Vec::new();
        for (pid, depth) in pids {
            let Ok(info) = crate::info(pid) else { continue };
            let ticks = cpu_ticks(pid);
            let cpu_percent = match (ticks, self.last.get(&pid), elapsed) {
                (Some(t), Some(&(start, before)), Some(secs))
                    if start == info.start_ticks && secs > 0.0 =>
                {
                    Some(t.saturating_sub(before) as f64 / hz / secs * 100.0)
                }
                _ => None,
            };
            if let Some(t) = ticks {
                next.insert(pid, (info.start_ticks, t));
            }
            let (state_text, rss_kib) = status(pid);
            let python_detail = self.python_of(pid, info.start_ticks);
            let role = match &python_detail {
                Some(_) => {
                    let parent = self.python_parent_cmdline(info.ppid, &cmdlines);
                    crate::python::role_of(&info.cmdline, parent.as_deref())
                }
                None => None,
            };
            if python_detail.is_some() {
                cmdlines.insert(pid, info.cmdline.clone());
            }
            out.push(TreeProcess {
                pid,
                ppid: info.ppid,
                depth,
                python: python_detail.as_ref().map(|p| p.short.clone()),
                executable: std::fs::read_link(format!("/proc/{pid}/exe"))
                    .ok()
                    .map(|p| p.to_string_lossy().into_owned()),
                container: crate::python::container_of(pid),
                role,
                python_detail,
                comm: info.comm,
                cmdline: info.cmdline,
                uid: info.uid,
                state: info.state,
                state_text,
                wchan: crate::wchan(pid),
                cpu_percent,
                rss_kib,
                started_at: info.started_at,
            });
        }
        self.last = next;
        self.at = Some(now);
        // Forget processes that are gone (a scan of every pid keeps every pid it saw).
        let keep: std::collections::HashSet<u32> = scanned
            .into_iter()
            .chain(out.iter().map(|p: &TreeProcess| p.pid))
            .collect();
        self.pythons.retain(|(pid, _), _| keep.contains(pid));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::Duration;

    #[test]
    fn samples_a_tree_with_cpu_on_the_second_sample() {
        let mut child = Command::new("sleep").arg("30").spawn().expect("sleep");
        let me = std::process::id();
        let mut sampler = Sampler::new();
        let first = sampler.sample(Selection::Tree(me)).expect("sample");
        assert_eq!(first[0].pid, me);
        assert_eq!(first[0].depth, 0);
        assert!(first[0].cpu_percent.is_none());
        assert!(first[0].rss_kib.unwrap_or(0) > 0);
        let sleep = first
            .iter()
            .find(|p| p.pid == child.id())
            .expect("the child is in the tree");
        assert_eq!(sleep.depth, 1);
        assert_eq!(sleep.python, None);
        std::thread::sleep(Duration::from_millis(50));
        let second = sampler.sample(Selection::Tree(me)).expect("sample");
        assert!(second[0].cpu_percent.is_some());
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn a_missing_root_is_an_error() {
        assert!(matches!(
            Sampler::new().sample(Selection::Tree(u32::MAX - 1)),
            Err(ProcError::NoSuchProcess { .. })
        ));
    }
}

//! A process tree with what `scry ps --tree` and `scry top` show of each process: whether it
//! runs Python (and which version, from its memory mappings), CPU %, RSS, age, and what it is
//! blocked on (scheduler state and `wchan`).
//!
//! Main types: [`Sampler`] (keeps the previous CPU times, so that CPU % is the share of the
//! time between two samples) and [`TreeProcess`]. Everything is read from `/proc`; nothing is
//! attached to or paused.
//!
//! The Python version is read from the names of the files a process maps (`python3.X` or
//! `libpython3.X.so`): no interpreter memory is parsed, so it is cheap enough to refresh every
//! second. A statically linked interpreter renamed to something else is not recognised.

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
}

/// Samples processes; CPU % is computed against the previous sample of the same `Sampler`.
#[derive(Debug, Default)]
pub struct Sampler {
    /// pid -> (start ticks, utime + stime ticks) at the previous sample.
    last: HashMap<u32, (u64, u64)>,
    at: Option<Instant>,
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

/// The Python version in a mapped file's name: `python3.11`, `libpython3.13t.so.1.0`.
fn version_in_name(name: &str) -> Option<String> {
    let rest = name
        .strip_prefix("libpython")
        .or_else(|| name.strip_prefix("python"))?;
    let (major, tail) = rest.split_once('.')?;
    if major != "3" {
        return None;
    }
    let minor: String = tail.chars().take_while(char::is_ascii_digit).collect();
    if minor.is_empty() {
        return None;
    }
    let after = &tail[minor.len()..];
    let suffix = if after.starts_with('t') { "t" } else { "" };
    // `python3.11-config` or `python3.11.py` are not interpreters; `.so…` and nothing are.
    let ok =
        after.is_empty() || after == "t" || after.starts_with(".so") || after.starts_with("t.so");
    ok.then(|| format!("3.{minor}{suffix}"))
}

/// Whether `pid` runs Python, and which version: from the files it maps (its executable and
/// a libpython), else from its executable's name.
pub fn python_version(pid: u32) -> Option<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let mut seen_python = false;
    for line in maps.lines() {
        let Some(path) = line.split_whitespace().nth(5) else {
            continue;
        };
        let name = path.rsplit('/').next().unwrap_or(path);
        if let Some(v) = version_in_name(name) {
            return Some(v);
        }
        seen_python |= name.starts_with("libpython") || name == "python3" || name == "python";
    }
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let name = exe.file_name()?.to_string_lossy().into_owned();
    if let Some(v) = version_in_name(&name) {
        return Some(v);
    }
    (seen_python || name == "python3" || name == "python").then(|| "?".to_owned())
}

impl Sampler {
    /// A sampler with no previous sample.
    pub fn new() -> Sampler {
        Sampler::default()
    }

    /// Samples the selected processes. Errors only when the root of a [`Selection::Tree`]
    /// does not exist; processes that exit meanwhile are left out.
    pub fn sample(&mut self, selection: Selection) -> Result<Vec<TreeProcess>, ProcError> {
        let pids: Vec<(u32, u32)> = match selection {
            Selection::Tree(root) => {
                crate::info(root)?;
                crate::tree(root)
                    .into_iter()
                    .map(|(p, d)| (p.pid, d))
                    .collect()
            }
            Selection::Python => crate::all_pids()
                .into_iter()
                .filter(|&p| p != std::process::id() && python_version(p).is_some())
                .map(|p| (p, 0))
                .collect(),
        };
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
            out.push(TreeProcess {
                pid,
                ppid: info.ppid,
                depth,
                python: python_version(pid),
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
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::Duration;

    #[test]
    fn versions_from_file_names() {
        assert_eq!(version_in_name("python3.11").as_deref(), Some("3.11"));
        assert_eq!(
            version_in_name("libpython3.13t.so.1.0").as_deref(),
            Some("3.13t")
        );
        assert_eq!(version_in_name("libpython3.9.so").as_deref(), Some("3.9"));
        assert_eq!(version_in_name("python3.11-config"), None);
        assert_eq!(version_in_name("python2.7"), None);
        assert_eq!(version_in_name("python3"), None);
        assert_eq!(
            version_in_name("_bisect.cpython-311-x86_64-linux-gnu.so"),
            None
        );
    }

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

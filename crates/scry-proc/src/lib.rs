//! The Linux process layer of scry: reading `/proc` to learn what a process is, whether it is
//! still alive (the same process, not a recycled pid), and how processes form trees.
//!
//! Main types: [`ProcInfo`] (a snapshot of one process read from `/proc/PID`) and
//! [`ProcError`]. [`alive`] answers "is this pid still the process we knew?" by comparing the
//! kernel's start time, because pids are reused and a daemon that lives for weeks will see it.
//!
//! Design decision: everything is read from `/proc` files directly (no libproc-like
//! dependency): the files are stable kernel interfaces, and reading them by hand lets every
//! error name the path it came from.
//!
//! [`stacks`] reads the Python stacks of a process (or a process tree) from outside, through the
//! `py-spy` library. [`reap`] ends a process tree politely (SIGINT, SIGTERM, SIGKILL with grace
//! periods) and finds orphaned processes. [`tree`] samples a process tree for `scry ps --tree` and
//! `scry top` (Python version, CPU %, RSS, what each process is blocked on).
//!
//! [`inject`] makes a running Python process run a script: the [`inject::Injector`] trait and
//! the native PEP 768 writer for 3.14+ ([`inject::pep768`]).
//!
//! [`python`] recognises Python processes from their memory image (version, build, role).
//!
//! Not for: talking to agents, storing anything, or printing.
#![deny(missing_docs)]

pub mod inject;
pub mod place;
pub mod python;
pub mod reap;
pub mod stacks;
pub mod tree;

use std::path::{Path, PathBuf};

/// Errors from reading a process.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcError {
    /// There is no process with this pid (or it exited while being read).
    #[error("no process with pid {pid}")]
    NoSuchProcess {
        /// The pid asked for.
        pid: u32,
    },
    /// A `/proc` file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A `/proc` file had unexpected content.
    #[error("cannot parse {path}: {what}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
}

/// A snapshot of one process, read from `/proc/PID`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ProcInfo {
    /// The pid (in the reader's PID namespace).
    pub pid: u32,
    /// The parent's pid.
    pub ppid: u32,
    /// The real user id.
    pub uid: u32,
    /// One-letter scheduler state (`R`, `S`, `D`, `Z`, `T`, …).
    pub state: char,
    /// `comm`: the executable's short name.
    pub comm: String,
    /// The command line (empty for kernel threads and zombies).
    pub cmdline: Vec<String>,
    /// Start time in clock ticks since boot: with the pid, the identity of a process.
    pub start_ticks: u64,
    /// Start time as wall-clock seconds since the epoch.
    pub started_at: f64,
}

fn read(path: &Path, pid: u32) -> Result<String, ProcError> {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound
                || source.raw_os_error() == Some(nix::libc::ESRCH)
            {
                ProcError::NoSuchProcess { pid }
            } else {
                ProcError::Read {
                    path: path.to_owned(),
                    source,
                }
            }
        })
}

/// Parsed fields of `/proc/PID/stat` that scry uses.
struct Stat {
    state: char,
    ppid: u32,
    start_ticks: u64,
    comm: String,
}

fn parse_stat(path: &Path, text: &str) -> Result<Stat, ProcError> {
    let bad = |what: &str| ProcError::Parse {
        path: path.to_owned(),
        what: what.to_owned(),
    };
    // comm is in parentheses and may itself contain spaces and parentheses: split at the last ')'.
    let open = text.find('(').ok_or_else(|| bad("no '('"))?;
    let close = text.rfind(')').ok_or_else(|| bad("no ')'"))?;
    let comm = text.get(open + 1..close).unwrap_or_default().to_owned();
    let rest: Vec<&str> = text
        .get(close + 1..)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    // rest[0] is field 3 (state); starttime is field 22 -> rest[19].
    let state = rest
        .first()
        .and_then(|s| s.chars().next())
        .ok_or_else(|| bad("no state"))?;
    let ppid = rest
        .get(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no ppid"))?;
    let start_ticks = rest
        .get(19)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no starttime"))?;
    Ok(Stat {
        state,
        ppid,
        start_ticks,
        comm,
    })
}

fn boot_time() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<f64>().ok())
}

fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map(|v| v as f64)
        .unwrap_or(100.0)
}

/// Reads a snapshot of process `pid`.
pub fn info(pid: u32) -> Result<ProcInfo, ProcError> {
    let dir = PathBuf::from(format!("/proc/{pid}"));
    let stat_path = dir.join("stat");
    let stat = parse_stat(&stat_path, &read(&stat_path, pid)?)?;
    let status_path = dir.join("status");
    let status = read(&status_path, pid)?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| ProcError::Parse {
            path: status_path.clone(),
            what: "no Uid line".into(),
        })?;
    let cmdline = read(&dir.join("cmdline"), pid)
        .map(|c| {
            c.split('\0')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let started_at = boot_time().unwrap_or(0.0) + stat.start_ticks as f64 / clock_ticks();
    Ok(ProcInfo {
        pid,
        ppid: stat.ppid,
        uid,
        state: stat.state,
        comm: stat.comm,
        cmdline,
        start_ticks: stat.start_ticks,
        started_at,
    })
}

/// Whether `pid` is alive and, when `start_ticks` is given, still the same process (pids are
/// reused). A zombie counts as dead: it will never run again.
pub fn alive(pid: u32, start_ticks: Option<u64>) -> bool {
    match info(pid) {
        Ok(p) => p.state != 'Z' && start_ticks.is_none_or(|t| t == p.start_ticks),
        Err(_) => false,
    }
}

/// `pid` as the process sees itself (its `getpid()`, in its own PID namespace): the last
/// field of the `NSpid:` line of `/proc/PID/status`. `None` when that cannot be read (the
/// process is gone, or the kernel predates the line).
pub fn pid_in_own_namespace(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// Every pid currently in `/proc`, in ascending order.
pub fn all_pids() -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    pids.sort_unstable();
    pids
}

/// The tree under `root` from one scan of `/proc`: each process with its depth below the root
/// (the root is 0), parent before child, siblings by pid. Empty when `root` does not exist;
/// processes that exit during the scan are left out.
pub fn tree(root: u32) -> Vec<(ProcInfo, u32)> {
    let mut infos: std::collections::BTreeMap<u32, ProcInfo> = std::collections::BTreeMap::new();
    let mut children: std::collections::BTreeMap<u32, Vec<u32>> = std::collections::BTreeMap::new();
    for pid in all_pids() {
        if let Ok(p) = info(pid) {
            children.entry(p.ppid).or_default().push(pid);
            infos.insert(pid, p);
        }
    }
    if let std::collections::btree_map::Entry::Vacant(slot) = infos.entry(root) {
        match info(root) {
            Ok(p) => {
                slot.insert(p);
            }
            Err(_) => return Vec::new(),
        }
    }
    let mut out = Vec::new();
    let mut stack = vec![(root, 0u32)];
    while let Some((pid, depth)) = stack.pop() {
        let Some(p) = infos.remove(&pid) else {
            continue;
        };
        out.push((p, depth));
        if let Some(kids) = children.get(&pid) {
            // Reversed so that the lowest pid is visited first.
            stack.extend(kids.iter().rev().map(|&k| (k, depth + 1)));
        }
    }
    out
}

/// `/proc/PID/wchan`: the kernel function the process sleeps in (`None` when running, unknown
/// or hidden).
pub fn wchan(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/wchan"))
        .ok()
        .map(|w| w.trim().to_owned())
        .filter(|w| !w.is_empty() && w != "0")
}

/// Whether `pid` has a TCP socket listening on 127.0.0.1:`port` (its own network namespace's
/// `/proc/PID/net/tcp`).
pub fn listens_on_loopback(pid: u32, port: u16) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")) else {
        return false;
    };
    let want = format!("0100007F:{port:04X}");
    text.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1) == Some(&want.as_str()) && f.get(3) == Some(&"0A")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        let p = info(me).expect("own /proc entry");
        assert_eq!(p.pid, me);
        assert_eq!(p.uid, nix::unistd::getuid().as_raw());
        assert!(p.started_at > 1_000_000_000.0);
        assert!(alive(me, Some(p.start_ticks)));
        assert!(
            !alive(me, Some(p.start_ticks + 1)),
            "a different start time is another process"
        );
    }

    #[test]
    fn missing_process_is_no_such_process() {
        // pid_max is at most 2^22, so this pid cannot exist.
        let err = info(u32::MAX - 1).err();
        assert!(
            matches!(err, Some(ProcError::NoSuchProcess { .. })),
            "{err:?}"
        );
        assert!(!alive(u32::MAX - 1, None));
    }

    #[test]
    fn stat_with_parentheses_in_comm() {
        let text = "123 (a) b (c)) S 1 123 123 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 999 0 0";
        let s = parse_stat(Path::new("/proc/123/stat"), text).expect("parse");
        assert_eq!(s.comm, "a) b (c)");
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 1);
        assert_eq!(s.start_ticks, 999);
    }

    #[test]
    fn own_pid_as_seen_from_inside() {
        // The innermost NSpid field is what getpid() answers in the process.
        assert_eq!(
            pid_in_own_namespace(std::process::id()),
            Some(std::process::id())
        );
        assert_eq!(pid_in_own_namespace(u32::MAX - 1), None);
    }

    #[test]
    fn lists_pids_including_self() {
        assert!(all_pids().contains(&std::process::id()));
    }
}

//! Python stacks read from outside: the memory of a running interpreter, through the `py-spy`
//! library, for one process or a whole process tree.
//!
//! Main entry point: [`dump`] returns a [`Dump`] (serializable; its JSON form is the schema
//! documented in `docs/dump.md`). One [`PythonSpy`](py_spy::PythonSpy) per process, every
//! process read on its own thread. Each target is paused (ptrace) only while its threads are
//! read; when pausing is refused the process is read without pausing, and the dump says so.
//!
//! Frames are stored innermost first (the frame that is running now comes first), the order
//! py-spy and debuggers use.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

use py_spy::config::LockingStrategy;
use serde::{Deserialize, Serialize};

/// The version of the dump document's schema (`schema` field).
pub const DUMP_SCHEMA: u32 = 1;

/// Errors that stop a dump. Problems with one process of a tree do not: they are reported in
/// that process's entry ([`ProcessKind::Gone`], [`ProcessKind::Unreadable`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StackError {
    /// There is no process with this pid.
    #[error("no process with pid {pid}")]
    NoSuchProcess {
        /// The pid asked for.
        pid: u32,
    },
    /// The kernel refused to let us read the process's memory.
    #[error("permission denied reading the memory of process {pid}")]
    PermissionDenied {
        /// The pid.
        pid: u32,
        /// What py-spy or the kernel said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The process runs no Python interpreter that can be found.
    #[error("process {pid} ({comm}) is not a Python process")]
    NotPython {
        /// The pid.
        pid: u32,
        /// Its executable's short name.
        comm: String,
        /// What py-spy said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// It looks like Python, but its stacks could not be read (an unsupported version, a
    /// free-threaded build, memory changing under a non-paused read, ...).
    #[error("cannot read the Python stacks of process {pid}")]
    Read {
        /// The pid.
        pid: u32,
        /// What py-spy said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// What to dump.
#[derive(Debug, Clone, Copy, Default)]
pub struct DumpOptions {
    /// Every process below the root too.
    pub tree: bool,
    /// Local variables of each frame (values bounded by py-spy: 128 characters).
    pub locals: bool,
    /// Native (C) frames merged with the Python frames (needs the `native` feature; pauses
    /// the process, which must then be allowed).
    pub native: bool,
}

/// Whether this build can read native frames (`scry dump --native`).
pub const NATIVE_SUPPORTED: bool = cfg!(feature = "native");

/// A dump: every process asked for, parent before child.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dump {
    /// [`DUMP_SCHEMA`].
    pub schema: u32,
    /// The pid the dump was asked for.
    pub root_pid: u32,
    /// Whether the tree below the root was included.
    pub tree: bool,
    /// Wall-clock seconds since the epoch when the dump started.
    pub taken_at: f64,
    /// How long the dump took, in milliseconds.
    pub duration_ms: f64,
    /// Always `"innermost_first"`: the running frame first.
    pub frame_order: String,
    /// The processes, parent before child (depth-first, children by pid).
    pub processes: Vec<ProcessDump>,
}

/// What one process turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessKind {
    /// A Python process whose stacks were read.
    Python,
    /// Not a Python process: only its state is shown.
    Other,
    /// It exited during the dump.
    Gone,
    /// Python (or possibly), but the stacks could not be read: see `error`.
    Unreadable,
}

/// One process of a dump.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessDump {
    /// The pid.
    pub pid: u32,
    /// The parent's pid.
    pub ppid: u32,
    /// Depth below the root (the root is 0).
    pub depth: u32,
    /// `comm`: the executable's short name.
    pub comm: String,
    /// The command line.
    pub cmdline: Vec<String>,
    /// What it is.
    pub kind: ProcessKind,
    /// The Python version (`3.11.2`), for Python processes.
    pub python_version: Option<String>,
    /// Whether the process was paused while read (`false`: read while running, the stacks may
    /// be slightly inconsistent).
    pub paused: bool,
    /// Why it was not paused, when it was not.
    pub pause_error: Option<String>,
    /// The `State:` line of `/proc/PID/status` (`S (sleeping)`).
    pub state: Option<String>,
    /// `/proc/PID/wchan`: the kernel function it waits in (`None` when running or unknown).
    pub wchan: Option<String>,
    /// Why the stacks could not be read (kinds `unreadable` and `gone`).
    pub error: Option<String>,
    /// The Python threads (empty unless kind is `python`).
    pub threads: Vec<ThreadDump>,
    /// What the process's connected scry agent added (absent when none is connected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentInside>,
}

/// What only the inside of a process can tell, asked of its connected agent after the stacks
/// were read (the `inspect` call): asyncio tasks; thread names set in Python are merged into
/// [`ThreadDump::name`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentInside {
    /// The running asyncio event loops and their tasks.
    #[serde(default)]
    pub asyncio: Vec<AsyncLoopDump>,
    /// Why the agent could not answer (e.g. blocked: a thread holds the GIL), when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One running asyncio event loop.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AsyncLoopDump {
    /// The OS thread id of the thread that runs it.
    #[serde(default)]
    pub thread_native_id: Option<u64>,
    /// Its tasks (at most 1000; `note` says how many more).
    #[serde(default)]
    pub tasks: Vec<AsyncTaskDump>,
    /// E.g. how many tasks were left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One asyncio task.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AsyncTaskDump {
    /// `Task.get_name()`.
    pub name: String,
    /// The qualified name of its coroutine.
    pub coro: String,
    /// `pending`, `done`, `cancelled` or `unreadable`.
    pub state: String,
    /// What the innermost coroutine awaits (a future's repr, `task NAME`), when known.
    #[serde(default)]
    pub awaiting: Option<String>,
    /// The coroutines it is suspended in, OUTERMOST first (the task's own coroutine first).
    #[serde(default)]
    pub stack: Vec<AsyncFrameDump>,
}

/// One coroutine of an await chain.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AsyncFrameDump {
    /// The function's qualified name.
    pub function: String,
    /// Its file.
    pub file: String,
    /// The line it is suspended at.
    pub line: u32,
}

/// One Python thread.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ThreadDump {
    /// The OS thread id (the `tid` of `/proc/PID/task`), when known.
    pub os_thread_id: Option<u64>,
    /// Python's thread identifier (`threading.get_ident()`).
    pub python_thread_id: u64,
    /// The Python thread name (`MainThread`), when py-spy finds it.
    pub name: Option<String>,
    /// Whether this thread holds the GIL.
    pub holds_gil: bool,
    /// `running` or `idle` (waiting: sleeping, blocked in a read, a lock, a select).
    pub status: String,
    /// The frames, innermost first.
    pub frames: Vec<FrameDump>,
}

/// One frame.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FrameDump {
    /// The function name.
    pub function: String,
    /// The file, as the interpreter knows it.
    pub file: String,
    /// The line number (0 when unknown).
    pub line: i32,
    /// Local variables, only with `--locals`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub locals: Option<Vec<LocalDump>>,
    /// A native (C) frame, only with `--native`: `function` is its symbol (or address),
    /// `module` the shared object it is in.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub native: bool,
    /// The shared object of a native frame.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub module: Option<String>,
}

/// One local variable.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalDump {
    /// The name.
    pub name: String,
    /// Whether it is an argument of the function.
    pub arg: bool,
    /// A bounded representation of the value (`?` when it could not be read).
    pub repr: Option<String>,
}

fn gone(pid: u32) -> bool {
    !PathBuf::from(format!("/proc/{pid}")).exists()
        || crate::info(pid).map(|p| p.state == 'Z').unwrap_or(true)
}

fn permission_denied(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            io.kind() == std::io::ErrorKind::PermissionDenied
        } else if let Some(remoteprocess::Error::IOError(io)) =
            cause.downcast_ref::<remoteprocess::Error>()
        {
            io.kind() == std::io::ErrorKind::PermissionDenied
        } else if let Some(remoteprocess::Error::NixError(e)) =
            cause.downcast_ref::<remoteprocess::Error>()
        {
            matches!(*e as i32, nix::libc::EPERM | nix::libc::EACCES)
        } else {
            cause.to_string().contains("Permission denied")
        }
    })
}

/// Whether the process maps something that looks like a Python interpreter (its executable or
/// a libpython). Used only to tell "not Python" from "Python we cannot read".
fn maps_python(pid: u32) -> bool {
    let exe_python = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().starts_with("python"))
                .unwrap_or(false)
        })
        .unwrap_or(false);
    exe_python
        || std::fs::read_to_string(format!("/proc/{pid}/maps"))
            .map(|m| m.lines().any(|l| l.contains("libpython")))
            .unwrap_or(false)
}

fn boxed(err: anyhow::Error) -> Box<dyn std::error::Error + Send + Sync> {
    err.into()
}

fn classify(pid: u32, comm: &str, err: anyhow::Error) -> StackError {
    if gone(pid) {
        StackError::NoSuchProcess { pid }
    } else if permission_denied(&err) {
        StackError::PermissionDenied {
            pid,
            source: boxed(err),
        }
    } else if !maps_python(pid) {
        StackError::NotPython {
            pid,
            comm: comm.to_owned(),
            source: boxed(err),
        }
    } else {
        StackError::Read {
            pid,
            source: boxed(err),
        }
    }
}

/// The stacks of one Python process, as read.
struct Read {
    version: String,
    paused: bool,
    pause_error: Option<String>,
    threads: Vec<ThreadDump>,
}

fn chain_text(err: &anyhow::Error) -> String {
    err.chain()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

/// Offset of `tid` in glibc's `struct pthread` on x86-64 (a `pthread_t` is its address); the
/// same from glibc 2.2x to 2.4x.
const PTHREAD_TID_OFFSET: u64 = 0x2d0;

/// The OS thread ids of these `pthread_t`s of `pid`, read from glibc's `struct pthread`: each
/// must be one of `tasks` (the process's threads) and all distinct, else nothing is claimed
/// (another libc, another layout, or a PID namespace whose tids are not ours).
fn tids_of_pthreads(pid: u32, pthreads: &[u64], tasks: &HashMap<u32, bool>) -> HashMap<u64, u32> {
    if !cfg!(target_arch = "x86_64") {
        return HashMap::new();
    }
    let mem = crate::inject::memory::Memory::of(pid);
    let mut map = HashMap::new();
    for &pthread in pthreads {
        let mut buf = [0u8; 4];
        if pthread == 0 || mem.read(pthread + PTHREAD_TID_OFFSET, &mut buf).is_err() {
            return HashMap::new();
        }
        let tid = u32::from_le_bytes(buf);
        if !tasks.contains_key(&tid) || map.values().any(|&t| t == tid) {
            return HashMap::new();
        }
        map.insert(pthread, tid);
    }
    map
}

/// Whether py-spy maps `pthread_t`s to tids itself (before Python 3.11): only with its
/// unwinder (the `native` feature), and not for a target it takes for a container.
fn spy_maps_tids(spy: &py_spy::PythonSpy) -> bool {
    NATIVE_SUPPORTED && !spy.dockerized
}

/// Gives py-spy the tids scry found, so that it reads native frames of those threads.
fn give_spy_tids(spy: &mut py_spy::PythonSpy, tids: &HashMap<u64, u32>) {
    if tids.is_empty() {
        return;
    }
    for (&pthread, &tid) in tids {
        spy.python_thread_ids.insert(pthread, tid as py_spy::Pid);
    }
    // It skips its lookup for a container: every thread it needs is in the map now.
    spy.dockerized = false;
}

/// Which threads of `pid` the kernel has running (or runnable) now, by tid.
fn tasks_running(pid: u32) -> HashMap<u32, bool> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return HashMap::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let tid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let state = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .next()?
                .to_owned();
            Some((tid, state == "R"))
        })
        .collect()
}

/// Reads every thread of one Python process: paused if allowed, else without pausing.
fn read_process(pid: u32, comm: &str, locals: bool, native: bool) -> Result<Read, StackError> {
    let config = py_spy::Config {
        blocking: LockingStrategy::Lock,
        dump_locals: u64::from(locals),
        native: native && NATIVE_SUPPORTED,
        ..Default::default()
    };
    let mut spy =
        py_spy::PythonSpy::new(pid as py_spy::Pid, &config).map_err(|e| classify(pid, comm, e))?;
    let version = spy.version.to_string();
    // Before 3.11 a thread state holds no OS thread id, only its `pthread_t`. py-spy maps those
    // to tids from thread registers, with its unwinder only and not in a container (any other
    // mount namespace, a chroot included): there it knows no tid, so no thread is idle and
    // native frames cannot be read. The tids are in glibc's `struct pthread`: read them there.
    let own_tid_map = (spy.version.major, spy.version.minor) < (3, 11) && !spy_maps_tids(&spy);
    // Which threads run, read before any pass pauses the process (a paused and resumed thread
    // shows as running for a moment).
    let running = if own_tid_map {
        tasks_running(pid)
    } else {
        HashMap::new()
    };
    let mut own_tids = HashMap::new();
    if own_tid_map && spy.config.native {
        // Native frames need py-spy to know the tids: a first pass for the `pthread_t`s.
        spy.config.native = false;
        if let Ok(first) = spy.get_stack_traces() {
            let pthreads: Vec<u64> = first.iter().map(|t| t.thread_id).collect();
            own_tids = tids_of_pthreads(pid, &pthreads, &running);
        }
        spy.config.native = true;
        give_spy_tids(&mut spy, &own_tids);
    }
    let (traces, paused, pause_error) = match spy.get_stack_traces() {
        Ok(t) => (t, true, None),
        Err(e) if e.to_string() == "Failed to suspend process" => {
            let why = chain_text(&e);
            tracing::debug!(target: "proc", pid, error = %why, "pausing refused; reading without pausing");
            spy.config.blocking = LockingStrategy::NonBlocking;
            // Native frames are unwound from the registers of a paused thread only.
            spy.config.native = false;
            // Without pausing, the interpreter may change the memory under the reader: retry.
            let mut last = None;
            let mut got = None;
            for _ in 0..5 {
                match spy.get_stack_traces() {
                    Ok(t) => {
                        got = Some(t);
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            match (got, last) {
                (Some(t), _) => (t, false, Some(why)),
                (None, Some(e)) => return Err(classify(pid, comm, e)),
                (None, None) => unreachable!("five attempts"),
            }
        }
        Err(e) => return Err(classify(pid, comm, e)),
    };
    if own_tid_map && own_tids.is_empty() {
        let pthreads: Vec<u64> = traces.iter().map(|t| t.thread_id).collect();
        own_tids = tids_of_pthreads(pid, &pthreads, &running);
    }
    let threads = traces
        .into_iter()
        .map(|t| ThreadDump {
            os_thread_id: t
                .os_thread_id
                .or_else(|| own_tids.get(&t.thread_id).map(|&tid| u64::from(tid))),
            python_thread_id: t.thread_id,
            name: t.thread_name,
            holds_gil: t.owns_gil,
            status: match own_tids.get(&t.thread_id).and_then(|tid| running.get(tid)) {
                // A tid scry found: what the kernel said before the first pass.
                Some(false) => "idle",
                Some(true) => "running",
                None if t.active => "running",
                None => "idle",
            }
            .to_owned(),
            frames: t
                .frames
                .into_iter()
                .map(|f| FrameDump {
                    // py-spy names the shared object of a symbolised native frame; one it could
                    // not place at all is a bare address in file "?".
                    native: f.module.is_some()
                        || (f.filename == "?" && f.line == 0 && f.name.starts_with("0x")),
                    module: f.module,
                    function: f.name,
                    file: f.filename,
                    line: f.line,
                    locals: f.locals.map(|ls| {
                        ls.into_iter()
                            .map(|l| LocalDump {
                                name: l.name,
                                arg: l.arg,
                                repr: l.repr,
                            })
                            .collect()
                    }),
                })
                .collect(),
        })
        .collect();
    Ok(Read {
        version,
        paused,
        pause_error,
        threads,
    })
}

/// `/proc/PID/status` `State:` and `/proc/PID/wchan`.
fn kernel_state(pid: u32) -> (Option<String>, Option<String>) {
    let state = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("State:"))
                .map(|v| v.trim().to_owned())
        });
    (state, crate::wchan(pid))
}

/// The root and, with `tree`, every process below it: (pid, depth), parent before child.
fn order(root: u32, tree: bool) -> Vec<(u32, u32)> {
    if !tree {
        return vec![(root, 0)];
    }
    crate::tree(root)
        .into_iter()
        .map(|(p, depth)| (p.pid, depth))
        .collect()
}

/// Reads one process. With `strict` (the root of a dump without `--tree`) every failure is an
/// error; otherwise it is reported in the entry.
fn dump_one(
    pid: u32,
    depth: u32,
    ppid: u32,
    locals: bool,
    native: bool,
    strict: bool,
) -> Result<ProcessDump, StackError> {
    let info = match crate::info(pid) {
        Ok(info) => info,
        Err(_) if strict => return Err(StackError::NoSuchProcess { pid }),
        // It exited between listing the tree and reading it.
        Err(_) => crate::ProcInfo {
            pid,
            ppid,
            uid: 0,
            state: 'X',
            comm: String::new(),
            cmdline: Vec::new(),
            start_ticks: 0,
            started_at: 0.0,
        },
    };
    let mut entry = ProcessDump {
        pid,
        ppid: info.ppid,
        depth,
        comm: info.comm.clone(),
        cmdline: info.cmdline.clone(),
        kind: ProcessKind::Python,
        python_version: None,
        paused: false,
        pause_error: None,
        state: None,
        wchan: None,
        error: None,
        threads: Vec::new(),
        agent: None,
    };
    let result = read_process(pid, &info.comm, locals, native);
    // The kernel state after reading: the process has been resumed by then.
    let (state, wchan) = kernel_state(pid);
    entry.state = state;
    entry.wchan = wchan;
    match result {
        Ok(read) => {
            entry.python_version = Some(read.version);
            entry.paused = read.paused;
            entry.pause_error = read.pause_error;
            entry.threads = read.threads;
            Ok(entry)
        }
        Err(e) => {
            // Without --tree the root must be Python; below it, everything is listed.
            if strict {
                return Err(e);
            }
            entry.kind = match &e {
                StackError::NoSuchProcess { .. } => ProcessKind::Gone,
                StackError::NotPython { .. } => ProcessKind::Other,
                _ => ProcessKind::Unreadable,
            };
            entry.error = match entry.kind {
                ProcessKind::Other => None,
                ProcessKind::Gone if entry.state.as_deref().is_some_and(|s| s.starts_with('Z')) => {
                    Some("exited; a zombie until its parent reaps it".to_owned())
                }
                ProcessKind::Gone => Some("exited during the dump".to_owned()),
                _ => Some(error_text(&e)),
            };
            Ok(entry)
        }
    }
}

/// An error with its causes on one line.
pub fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Dumps the Python stacks of `root` (and with `options.tree` of every process below it).
///
/// Errors only concern the root: it does not exist, cannot be read, or (without `tree`) is not
/// Python. With `tree`, a non-Python root is listed with its state like any other process.
pub fn dump(root: u32, options: DumpOptions) -> Result<Dump, StackError> {
    let started = Instant::now();
    let taken_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    crate::info(root).map_err(|_| StackError::NoSuchProcess { pid: root })?;
    let pids = order(root, options.tree);
    let ppids: BTreeMap<u32, u32> = pids
        .iter()
        .filter_map(|&(pid, _)| crate::info(pid).ok().map(|p| (pid, p.ppid)))
        .collect();
    let results: Vec<Result<ProcessDump, StackError>> = std::thread::scope(|s| {
        let handles: Vec<_> = pids
            .iter()
            .map(|&(pid, depth)| {
                // With --tree the root is one process among others: not Python is not fatal.
                let strict = !options.tree;
                let ppid = ppids.get(&pid).copied().unwrap_or(0);
                s.spawn(move || dump_one(pid, depth, ppid, options.locals, options.native, strict))
            })
            .collect();
        handles
            .into_iter()
            .zip(&pids)
            .map(|(h, &(pid, _))| {
                h.join().unwrap_or_else(|_| {
                    Err(StackError::Read {
                        pid,
                        source: "the reader thread panicked".into(),
                    })
                })
            })
            .collect()
    });
    let mut processes = Vec::with_capacity(results.len());
    for r in results {
        match r {
            Ok(p) => processes.push(p),
            Err(e) => return Err(e),
        }
    }
    Ok(Dump {
        schema: DUMP_SCHEMA,
        root_pid: root,
        tree: options.tree,
        taken_at,
        duration_ms: started.elapsed().as_secs_f64() * 1000.0,
        frame_order: "innermost_first".to_owned(),
        processes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_process() {
        let err = dump(u32::MAX - 1, DumpOptions::default()).err();
        assert!(
            matches!(err, Some(StackError::NoSuchProcess { .. })),
            "{err:?}"
        );
    }

    #[test]
    fn self_is_not_python() {
        let me = std::process::id();
        let err = dump(me, DumpOptions::default()).err();
        assert!(matches!(err, Some(StackError::NotPython { .. })), "{err:?}");
    }

    #[test]
    fn tree_lists_a_non_python_root_with_its_state() {
        // Its own small tree (a shell and its `sleep`), not this test process's: other tests
        // running alongside have children of their own (a gdb tracing a Python) to stay out of.
        let mut root = std::process::Command::new("sh")
            .args(["-c", "sleep 30; exit 0"])
            .spawn()
            .expect("sh");
        let me = root.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let child = loop {
            let below: Vec<u32> = crate::tree(me)
                .into_iter()
                .filter(|(p, depth)| *depth == 1 && p.comm == "sleep")
                .map(|(p, _)| p.pid)
                .collect();
            if let Some(&pid) = below.first() {
                break pid;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "sh never started sleep"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let d = dump(
            me,
            DumpOptions {
                tree: true,
                locals: false,
                native: false,
            },
        )
        .expect("dump");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = root.wait();
        assert_eq!(d.processes[0].pid, me);
        assert_eq!(d.processes[0].kind, ProcessKind::Other);
        let sleep = d
            .processes
            .iter()
            .find(|p| p.pid == child)
            .expect("the child is listed");
        assert_eq!(sleep.depth, 1);
        assert!(sleep.state.is_some());
    }

    #[test]
    fn a_process_gone_during_a_tree_dump_is_reported() {
        let gone_pid = u32::MAX - 1;
        let entry =
            dump_one(gone_pid, 1, 42, false, false, false).expect("not fatal below the root");
        assert_eq!(entry.kind, ProcessKind::Gone);
        assert_eq!(entry.ppid, 42);
        assert!(entry.error.is_some());
        let err = dump_one(gone_pid, 0, 42, false, false, true).err();
        assert!(
            matches!(err, Some(StackError::NoSuchProcess { .. })),
            "{err:?}"
        );
    }

    #[test]
    fn an_exited_unreaped_child_is_gone_with_its_zombie_state() {
        let mut child = std::process::Command::new("true").spawn().expect("true");
        let pid = child.id();
        // Not reaped yet: a zombie once it has exited.
        let mut zombie = false;
        for _ in 0..500 {
            if crate::info(pid).map(|p| p.state == 'Z').unwrap_or(false) {
                zombie = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(zombie, "the child never became a zombie");
        let entry = dump_one(pid, 1, 1, false, false, false).expect("not fatal");
        let _ = child.wait();
        assert_eq!(entry.kind, ProcessKind::Gone);
        assert!(
            entry.state.as_deref().is_some_and(|s| s.starts_with('Z')),
            "{entry:?}"
        );
    }

    #[test]
    fn tree_order_is_parent_before_child() {
        let me = std::process::id();
        let o = order(me, true);
        assert_eq!(o[0], (me, 0));
    }
}

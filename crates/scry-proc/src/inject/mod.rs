//! Making a running Python process execute a Python file it never planned to run.
//!
//! [`Injector`] is the one interface every injection technique implements: given a pid and the
//! path of a Python script *as the target sees it* (a path inside the target's own root), make
//! the target run that script once, and return when the target has picked it up. Failures are
//! [`InjectError`]s that say what is wrong and what to do.
//!
//! Implementations: [`pep768::Pep768`] (CPython 3.14+, PEP 768 remote debugging, written
//! natively: it reads and writes the target's memory, no Python on the scry side) and
//! [`gdb::Gdb`] (CPython 3.8–3.13 through `gdb -p PID -batch`; it stops the process briefly, as
//! [`Injector::notice`] says). [`for_version`] picks one for a target.
//!
//! Not for: placing the script where the target can read it, or talking to the agent the
//! script starts (that is the daemon's `attach` module).

pub mod gdb;
pub mod memory;
pub mod pep768;

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Something that can make a target process run a Python script.
pub trait Injector: Send + Sync {
    /// A short name for messages and JSON (`pep768`, `gdb`).
    fn name(&self) -> &'static str;

    /// Makes `pid` run the Python file `script` (a path valid in the target's mount namespace)
    /// once, and returns when the target has started to run it (or fails within `timeout`).
    /// On every failure nothing stays armed in the target.
    fn inject(&self, pid: u32, script: &Path, timeout: Duration) -> Result<Injection, InjectError>;

    /// What the user should know before this injector runs (e.g. that it stops the process).
    fn notice(&self) -> Option<String> {
        None
    }
}

/// The injector for a target of Python `(major, minor)`: PEP 768 on 3.14+, gdb on 3.8–3.13
/// (an error saying how to install gdb, or to embed the client, when gdb is missing).
pub fn for_version(pid: u32, version: (u64, u64)) -> Result<Box<dyn Injector>, InjectError> {
    match version {
        (3, 14..) => Ok(Box::new(pep768::Pep768)),
        (3, 8..=13) => match gdb::Gdb::from_path() {
            Some(g) => Ok(Box::new(g)),
            None => Err(InjectError::GdbMissing {
                pid,
                version: format!("{}.{}", version.0, version.1),
            }),
        },
        (major, minor) => Err(InjectError::UnsupportedVersion {
            pid,
            version: format!("{major}.{minor}"),
            injector: "scry",
            supported: "scry attaches to CPython 3.8 to 3.13 (through gdb) and 3.14 (natively)"
                .into(),
        }),
    }
}

/// What an injection did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Injection {
    /// The injector used.
    pub injector: &'static str,
    /// The target's Python version, e.g. `3.14.0`.
    pub python_version: String,
    /// Whether the target is a free-threaded build.
    pub free_threaded: bool,
    /// How long the target took to pick the script up.
    pub picked_up_after: Duration,
    /// The native thread id (in the target's PID namespace) of the thread that runs it.
    pub thread_id: u64,
}

/// Why the process would not give permission.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "cause", rename_all = "snake_case")]
pub enum PermissionCause {
    /// The target runs as another user and we lack CAP_SYS_PTRACE.
    OtherUser {
        /// The target's user id.
        target_uid: u32,
        /// Ours.
        our_uid: u32,
    },
    /// Yama's `kernel.yama.ptrace_scope` forbids it.
    Yama {
        /// The scope in force (1, 2 or 3).
        scope: u8,
    },
    /// We have neither the same user nor CAP_SYS_PTRACE in a way the kernel accepts (for
    /// example a setuid or non-dumpable target, or a container's seccomp profile).
    MissingCapSysPtrace,
}

impl PermissionCause {
    /// What to do about it.
    pub fn hint(&self) -> String {
        match self {
            PermissionCause::OtherUser { target_uid, .. } => format!(
                "the target runs as user {target_uid}: run the scry daemon as that user, or as root, or give it CAP_SYS_PTRACE (`sudo setcap cap_sys_ptrace+ep $(command -v scry)`, then restart it with `scry stop`)"
            ),
            PermissionCause::Yama { scope: 3 } => "kernel.yama.ptrace_scope is 3: no process may read another's memory until the next reboot".into(),
            PermissionCause::Yama { scope } => format!(
                "kernel.yama.ptrace_scope is {scope}: allow it for now with `sudo sysctl kernel.yama.ptrace_scope=0`, or give the scry daemon CAP_SYS_PTRACE (`sudo setcap cap_sys_ptrace+ep $(command -v scry)`, then `scry stop`)"
            ),
            PermissionCause::MissingCapSysPtrace => "the kernel refused although the user matches: the target may be setuid or non-dumpable, or a container/seccomp profile blocks process_vm_writev; run scry as root or with CAP_SYS_PTRACE (containers: --cap-add=SYS_PTRACE)".into(),
        }
    }

    fn describe(&self) -> String {
        match self {
            PermissionCause::OtherUser {
                target_uid,
                our_uid,
            } => format!("it runs as another user (uid {target_uid}, scry runs as uid {our_uid}) and scry lacks CAP_SYS_PTRACE"),
            PermissionCause::Yama { scope } => {
                format!("Yama ptrace scope {scope} forbids it")
            }
            PermissionCause::MissingCapSysPtrace => {
                "the kernel refused access (CAP_SYS_PTRACE would be needed)".into()
            }
        }
    }
}

/// Everything that can go wrong while injecting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InjectError {
    /// No such process.
    #[error("no process with pid {pid}")]
    NoSuchProcess {
        /// The pid asked for.
        pid: u32,
    },
    /// The process has no CPython interpreter in its memory.
    #[error("process {pid} ({exe}) is not a Python process: no CPython interpreter is mapped in its memory")]
    NotPython {
        /// The pid.
        pid: u32,
        /// Its executable, for the message.
        exe: String,
    },
    /// The interpreter's version is not one this injector supports.
    #[error("process {pid} runs Python {version}, which {injector} cannot attach to: {supported}")]
    UnsupportedVersion {
        /// The pid.
        pid: u32,
        /// The target's version (`3.11`, `3.13.5`, `3.15.0a1`).
        version: String,
        /// The injector that refuses.
        injector: &'static str,
        /// Which versions are supported, as a sentence.
        supported: String,
    },
    /// The target disabled remote debugging.
    #[error("remote debugging is disabled in process {pid} (PYTHON_DISABLE_REMOTE_DEBUG is set, or it runs with -X disable-remote-debug, or its Python was built --without-remote-debug)")]
    RemoteDebugDisabled {
        /// The pid.
        pid: u32,
    },
    /// The kernel refused access to the target's memory.
    #[error("no permission to attach to process {pid}: {}", cause.describe())]
    PermissionDenied {
        /// The pid.
        pid: u32,
        /// Which rule refused.
        cause: PermissionCause,
    },
    /// The target did not pick the script up in time; nothing was left armed.
    #[error("process {pid} did not pick the script up within {:.1} s: its main thread does not run Python bytecode (blocked in {blocked_in}); the request was withdrawn, nothing will run later", waited.as_secs_f64())]
    Timeout {
        /// The pid.
        pid: u32,
        /// How long we waited.
        waited: Duration,
        /// What the main thread waits in (wchan, or `a system call`).
        blocked_in: String,
    },
    /// The target exited while we attached.
    #[error("process {pid} exited during attach")]
    Exited {
        /// The pid.
        pid: u32,
    },
    /// The interpreter is starting, finalizing, or has no thread to run the script.
    #[error("process {pid} has no running Python interpreter to attach to: {what}")]
    NotRunning {
        /// The pid.
        pid: u32,
        /// What is missing.
        what: String,
    },
    /// Another injection is in flight in this thread.
    #[error("process {pid} already has a remote-debugging request pending (another debugger is attaching, e.g. pdb -p or sys.remote_exec); try again in a moment")]
    Busy {
        /// The pid.
        pid: u32,
    },
    /// The interpreter's data does not look like the layout we know.
    #[error("process {pid}: the interpreter's debug offsets look wrong ({what}); refusing to write into it")]
    BadLayout {
        /// The pid.
        pid: u32,
        /// What did not check out.
        what: String,
    },
    /// The script path is longer than the interpreter accepts.
    #[error("the script path {path} is {len} bytes; the interpreter accepts at most {max}")]
    PathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length.
        len: usize,
        /// The limit (excluding the NUL).
        max: usize,
    },
    /// Python 3.8–3.13 needs gdb, which is not installed.
    #[error("process {pid} runs Python {version}, which has no remote-attach hook (PEP 768 is 3.14+), and gdb, which scry uses for it, is not installed")]
    GdbMissing {
        /// The pid.
        pid: u32,
        /// The target's version.
        version: String,
    },
    /// Another I/O failure.
    #[error("process {pid}: {what}")]
    Io {
        /// The pid.
        pid: u32,
        /// What we were doing.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl InjectError {
    /// A stable machine-readable kind for JSON (`no_such_process`, `not_python`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            InjectError::NoSuchProcess { .. } => "no_such_process",
            InjectError::NotPython { .. } => "not_python",
            InjectError::UnsupportedVersion { .. } => "unsupported_version",
            InjectError::RemoteDebugDisabled { .. } => "remote_debug_disabled",
            InjectError::PermissionDenied { .. } => "permission_denied",
            InjectError::Timeout { .. } => "timeout",
            InjectError::Exited { .. } => "exited",
            InjectError::NotRunning { .. } => "not_running",
            InjectError::Busy { .. } => "busy",
            InjectError::BadLayout { .. } => "bad_layout",
            InjectError::PathTooLong { .. } => "path_too_long",
            InjectError::Io { .. } => "io",
            InjectError::GdbMissing { .. } => "gdb_missing",
        }
    }

    /// What the user can do about it, when there is something to say.
    pub fn hint(&self) -> Option<String> {
        match self {
            InjectError::NoSuchProcess { .. } => Some("list Python processes with `scry ps --all`".into()),
            InjectError::NotPython { .. } => Some("list Python processes with `scry ps --all`".into()),
            InjectError::UnsupportedVersion { .. } => Some(
                "for Python 3.8-3.13 install gdb (`apt install gdb`) so scry can attach through it, or embed the client: `import scry; scry.init()` and later `scry wake PID`".into(),
            ),
            InjectError::RemoteDebugDisabled { .. } => Some(
                "restart the process without PYTHON_DISABLE_REMOTE_DEBUG and -X disable-remote-debug, or embed the client (`import scry; scry.init()`); `scry dump PID` still shows its stacks".into(),
            ),
            InjectError::PermissionDenied { cause, .. } => Some(cause.hint()),
            InjectError::Timeout { pid, .. } => Some(format!(
                "see where it is stuck with `scry dump {pid}` (reads its stacks without its help), or attach again once it runs Python code"
            )),
            InjectError::Busy { .. } => Some("wait for the other debugger to finish, then attach again".into()),
            InjectError::GdbMissing { .. } => Some(
                "install gdb (`sudo apt install gdb`, `sudo dnf install gdb`; in a container the scry side needs it, not the target), or embed the client in the program: `import scry; scry.init()`, then `scry wake PID`".into(),
            ),
            _ => None,
        }
    }
}

/// Diagnoses an EPERM on `pid`: which rule refused.
pub fn permission_cause(pid: u32) -> PermissionCause {
    let our_uid = nix::unistd::geteuid().as_raw();
    let have_cap = has_cap_sys_ptrace();
    let scope = yama_scope();
    if scope == Some(3) {
        return PermissionCause::Yama { scope: 3 };
    }
    let target_uids = status_uids(pid);
    let other_user = target_uids
        .as_ref()
        .is_some_and(|uids| uids.iter().any(|u| *u != our_uid));
    if other_user && !have_cap {
        return PermissionCause::OtherUser {
            target_uid: target_uids
                .as_ref()
                .and_then(|u| u.first().copied())
                .unwrap_or(0),
            our_uid,
        };
    }
    match scope {
        Some(s @ (1 | 2)) if !have_cap => PermissionCause::Yama { scope: s },
        _ => PermissionCause::MissingCapSysPtrace,
    }
}

/// `kernel.yama.ptrace_scope`, when Yama is present.
pub fn yama_scope() -> Option<u8> {
    std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

fn has_cap_sys_ptrace() -> bool {
    const CAP_SYS_PTRACE: u32 = 19;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_PTRACE) != 0)
}

/// Real, effective, saved and filesystem uids of `pid`.
fn status_uids(pid: u32) -> Option<Vec<u32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    Some(
        line.split_whitespace()
            .filter_map(|u| u.parse().ok())
            .collect(),
    )
}

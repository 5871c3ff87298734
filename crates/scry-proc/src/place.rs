//! Placing files inside a target process's own root *with the target's credentials*.
//!
//! `scry attach` and `scry debug` put a script (and the agent, and a unix socket) where the
//! target can read it: a fresh directory under the `/tmp` (or `/var/tmp`, `/dev/shm`) of the
//! target's root, reached from outside as `/proc/PID/root/tmp/...`. The scry side often runs
//! as root, and the target's user controls that tree (and, in its own mount namespace, what
//! `/tmp` even is), so every filesystem operation there is done as the target would do it:
//!
//! - **with the target's credentials**: its filesystem uid and gid, no supplementary groups.
//!   The kernel then checks every step as it would for the target, and root's filesystem
//!   capabilities (`CAP_DAC_OVERRIDE`, `CAP_FOWNER`, ...) are dropped while the fsuid is not 0.
//!   Whatever the target plants (symlinks, bind mounts, `/etc` mounted on `/tmp`), scry can
//!   only create, read or remove what the target itself could. Files are created by that user,
//!   so nothing is ever `chown`ed.
//! - **relative to directory fds** (`openat`, `mkdirat`, `unlinkat`), never by path, and never
//!   following a link: `O_NOFOLLOW` on every component, `O_EXCL` on every file created,
//!   `O_DIRECTORY` for directories, `O_CLOEXEC` everywhere. The placement directory itself is
//!   created exclusively under a random name (mode 0700) and held open; removal walks it through
//!   its fd and unlinks its entry in the parent only if that entry still is the same directory.
//!
//! Design decision: the credentials are switched on a short-lived dedicated thread
//! ([`as_target`]) rather than in a forked child. `setfsuid`/`setfsgid` are per-thread on
//! Linux, and so is the raw `setgroups` system call (glibc's wrapper changes every thread of
//! the process, as POSIX requires, so it is not used), so the thread can act as the target
//! while the daemon's other threads keep root. The thread ends after each operation, taking its
//! credentials with it: no other code ever runs with them, nor with root's after them. A fork
//! of the multi-threaded daemon could only run async-signal-safe code until an `exec`, and
//! would need a second process and a protocol for the results (the unix socket's fd, a file's
//! contents).
//!
//! Not for: choosing or running the injector, or talking to the agent.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fchmod, fstat, fstatat, mkdirat, Mode, SFlag};
use nix::unistd::{unlinkat, Gid, Uid, UnlinkatFlags};

/// The directories of a target's root where a placement may go, in order of preference.
pub const PLACES: [&str; 3] = ["tmp", "var/tmp", "dev/shm"];

/// How deep removal descends into a placement (ours is two levels; a target may add more).
const MAX_DEPTH: usize = 16;

/// The credentials a placement acts with: the target's filesystem uid and gid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials {
    /// Filesystem user id.
    pub uid: u32,
    /// Filesystem group id.
    pub gid: u32,
}

impl Credentials {
    /// The filesystem uid and gid of the process whose `/proc/PID` directory is `proc_dir`
    /// (the ids its own file accesses are checked with).
    fn of_proc_dir(pid: u32, proc_dir: &OwnedFd) -> Result<Credentials, PlaceError> {
        let fd = openat(
            Some(proc_dir.as_raw_fd()),
            "status",
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| gone_or(pid, e, "read", format!("/proc/{pid}/status")))?;
        let mut text = String::new();
        // SAFETY: `fd` was just opened and is owned by nothing else.
        unsafe { File::from_raw_fd(fd) }
            .read_to_string(&mut text)
            .map_err(|e| PlaceError::Io {
                pid,
                what: "read",
                path: PathBuf::from(format!("/proc/{pid}/status")),
                source: e,
            })?;
        // `Uid:` and `Gid:` list real, effective, saved and filesystem ids.
        let fs_id = |key: &str| -> Option<u32> {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|rest| rest.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok())
        };
        match (fs_id("Uid:"), fs_id("Gid:")) {
            (Some(uid), Some(gid)) => Ok(Credentials { uid, gid }),
            _ => Err(PlaceError::Io {
                pid,
                what: "parse",
                path: PathBuf::from(format!("/proc/{pid}/status")),
                source: std::io::Error::other("no Uid:/Gid: lines"),
            }),
        }
    }
}

/// Why a placement failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlaceError {
    /// The process is gone.
    #[error("no process with pid {pid}")]
    NoSuchProcess {
        /// The pid.
        pid: u32,
    },
    /// None of [`PLACES`] is a directory in the target's root.
    #[error("process {pid} has no /tmp, /var/tmp or /dev/shm where scry could place its {what}")]
    NoPlace {
        /// The pid.
        pid: u32,
        /// What was to be placed (`agent`, `script`).
        what: &'static str,
    },
    /// The target's own user may not create a directory there (e.g. another directory is
    /// mounted over its `/tmp` in its mount namespace).
    #[error("process {pid} runs as uid {uid}, which cannot create a directory in its {dir} ({source}); scry places files only where the target itself could")]
    NotWritable {
        /// The pid.
        pid: u32,
        /// The directory as the target sees it.
        dir: PathBuf,
        /// The target's filesystem uid.
        uid: u32,
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
    },
    /// scry cannot take the target's credentials (it is neither root nor that user).
    #[error("cannot act as the user of process {pid} (uid {uid}, gid {gid}) to place files in its root: {why}")]
    Credentials {
        /// The pid.
        pid: u32,
        /// The target's filesystem uid.
        uid: u32,
        /// The target's filesystem gid.
        gid: u32,
        /// What failed.
        why: String,
    },
    /// An entry of the placement is not what scry created (a link, a device, a FIFO).
    #[error("{path} is not a regular file that scry placed; refusing to use it")]
    Unexpected {
        /// The path (as the daemon reaches it).
        path: PathBuf,
    },
    /// Any other failure of a filesystem call.
    #[error("process {pid}: cannot {what} {path}")]
    Io {
        /// The pid.
        pid: u32,
        /// The operation (`create`, `write`, `bind`, `remove`, ...).
        what: &'static str,
        /// The path (as the daemon reaches it).
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl PlaceError {
    /// A stable machine-readable kind (`no_place` for a target without a usable temporary
    /// directory, as before; `permission_denied` when the daemon cannot take the target's
    /// credentials; `placement` for the others).
    pub fn kind(&self) -> &'static str {
        match self {
            PlaceError::NoSuchProcess { .. } => "no_such_process",
            PlaceError::NoPlace { .. } | PlaceError::NotWritable { .. } => "no_place",
            PlaceError::Credentials { .. } => "permission_denied",
            _ => "placement",
        }
    }

    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            PlaceError::NotWritable { uid, .. } => Some(format!(
                "give the process a /tmp that uid {uid} may write to, or embed the client in the program (`import scry; scry.init()`, then `scry wake PID`)"
            )),
            PlaceError::Credentials { .. } => Some(
                "run the scry daemon as root (or as the target's user) so it can create the files as the target's user".into(),
            ),
            _ => None,
        }
    }
}

fn gone_or(pid: u32, e: Errno, what: &'static str, path: String) -> PlaceError {
    match e {
        Errno::ENOENT | Errno::ESRCH => PlaceError::NoSuchProcess { pid },
        e => PlaceError::Io {
            pid,
            what,
            path: PathBuf::from(path),
            source: e.into(),
        },
    }
}

/// Runs `f` on a new thread whose filesystem credentials are `creds` (fsuid, fsgid, no
/// supplementary groups), and returns its result. See the module docs for why a thread.
///
/// When `creds` are the caller's own effective ids nothing is switched: the thread already
/// acts as that user (a daemon run by the target's user needs no privilege).
pub fn as_target<R: Send>(
    pid: u32,
    creds: Credentials,
    f: impl FnOnce() -> Result<R, PlaceError> + Send,
) -> Result<R, PlaceError> {
    let refused = |why: String| PlaceError::Credentials {
        pid,
        uid: creds.uid,
        gid: creds.gid,
        why,
    };
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("scry-place".into())
            .spawn_scoped(s, move || {
                switch_to(creds).map_err(refused)?;
                f()
            })
            .map_err(|e| refused(format!("cannot start a thread: {e}")))?;
        handle
            .join()
            .unwrap_or_else(|_| Err(refused("the placement thread panicked".into())))
    })
}

/// Switches the calling thread's filesystem credentials to `creds`. Only for a thread that
/// ends right after its work ([`as_target`]).
fn switch_to(creds: Credentials) -> Result<(), String> {
    let (euid, egid) = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    if (creds.uid, creds.gid) == (euid, egid) {
        return Ok(());
    }
    // The raw system call changes this thread only; glibc's setgroups() would change every
    // thread of the daemon.
    // SAFETY: setgroups(0, NULL) reads no memory.
    let r = unsafe { nix::libc::syscall(nix::libc::SYS_setgroups, 0, std::ptr::null::<u32>()) };
    if r != 0 {
        return Err(format!(
            "setgroups: {} (scry runs as uid {euid})",
            std::io::Error::last_os_error()
        ));
    }
    // The group first: dropping the fsuid from 0 also drops the capabilities a later call
    // might need.
    nix::unistd::setfsgid(Gid::from_raw(creds.gid));
    nix::unistd::setfsuid(Uid::from_raw(creds.uid));
    // setfsuid/setfsgid report no error: an invalid id (-1) changes nothing and returns the
    // current value, which tells whether the switch took.
    let now_uid = nix::unistd::setfsuid(Uid::from_raw(u32::MAX)).as_raw();
    let now_gid = nix::unistd::setfsgid(Gid::from_raw(u32::MAX)).as_raw();
    if (now_uid, now_gid) != (creds.uid, creds.gid) {
        return Err(format!(
            "setfsuid/setfsgid were refused (scry runs as uid {euid} without CAP_SETUID/CAP_SETGID)"
        ));
    }
    Ok(())
}

/// A fresh directory inside a target's root holding what scry placed there; removed (as the
/// target's user) by [`Placement::remove`] or when dropped.
#[derive(Debug)]
pub struct Placement {
    pid: u32,
    creds: Credentials,
    parent: OwnedFd,
    dir: OwnedFd,
    name: String,
    id: (u64, u64),
    host_dir: PathBuf,
    target_dir: PathBuf,
    removed: bool,
}

impl Placement {
    /// Creates `<place>/<prefix>-<random>` (mode 0700) in the root of process `pid`, as its
    /// user, in the first of [`PLACES`] that is a directory there (reached without following a
    /// link). `what` names what will be placed, for messages.
    pub fn create(pid: u32, prefix: &str, what: &'static str) -> Result<Placement, PlaceError> {
        // One handle on /proc/PID: the root and the credentials are read through it, so both
        // belong to the same process even if the pid is reused meanwhile.
        let proc_dir = open_dir(None, format!("/proc/{pid}").as_str(), OFlag::O_RDONLY)
            .map_err(|e| gone_or(pid, e, "open", format!("/proc/{pid}")))?;
        let root = openat(
            Some(proc_dir.as_raw_fd()),
            "root",
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map(owned)
        .map_err(|e| gone_or(pid, e, "open", format!("/proc/{pid}/root")))?;
        let creds = Credentials::of_proc_dir(pid, &proc_dir)?;
        let found = as_target(pid, creds, || {
            for place in PLACES {
                let mut cur: Option<OwnedFd> = None;
                for comp in place.split('/') {
                    let at = cur.as_ref().unwrap_or(&root).as_raw_fd();
                    // Missing, not a directory, a link, or closed to the target's user: not a
                    // place for it.
                    match open_dir(Some(at), comp, OFlag::O_PATH) {
                        Ok(fd) => cur = Some(fd),
                        Err(_) => {
                            cur = None;
                            break;
                        }
                    }
                }
                if let Some(fd) = cur {
                    return Ok(Some((place, fd)));
                }
            }
            Ok(None)
        })?;
        let Some((place, parent)) = found else {
            return Err(PlaceError::NoPlace { pid, what });
        };
        Placement::create_in(
            pid,
            creds,
            parent,
            PathBuf::from(format!("/proc/{pid}/root/{place}")),
            Path::new("/").join(place),
            prefix,
        )
    }

    /// Creates `<prefix>-<random>` (mode 0700, exclusively) in the directory `parent`, acting
    /// with `creds`. `host_parent` and `target_parent` name `parent` from scry's side and from
    /// the target's, for paths and messages. The building block of [`Placement::create`],
    /// public for tests that hand it a directory of their own.
    pub fn create_in(
        pid: u32,
        creds: Credentials,
        parent: OwnedFd,
        host_parent: PathBuf,
        target_parent: PathBuf,
        prefix: &str,
    ) -> Result<Placement, PlaceError> {
        // A name that exists is never reused: another random one, a few times.
        let mut last = None;
        for _ in 0..4 {
            let name = format!("{prefix}-{}", random_suffix());
            match Placement::create_named(pid, creds, &parent, &host_parent, &target_parent, &name)
            {
                Err(PlaceError::Io { source, .. })
                    if source.raw_os_error() == Some(Errno::EEXIST as i32) =>
                {
                    last = Some(source);
                }
                Ok(dir) => {
                    return Placement::finish(
                        pid,
                        creds,
                        parent,
                        &host_parent,
                        &target_parent,
                        name,
                        dir,
                    )
                }
                Err(e) => return Err(e),
            }
        }
        Err(PlaceError::Io {
            pid,
            what: "create a fresh directory in",
            path: host_parent,
            source: last.unwrap_or_else(|| Errno::EEXIST.into()),
        })
    }

    /// Creates the directory `name` exclusively in `parent` as `creds` and opens it. An
    /// existing `name` (whatever it is, a link included) is an `EEXIST` [`PlaceError::Io`].
    fn create_named(
        pid: u32,
        creds: Credentials,
        parent: &OwnedFd,
        host_parent: &Path,
        target_parent: &Path,
        name: &str,
    ) -> Result<OwnedFd, PlaceError> {
        as_target(pid, creds, || {
            let io = |what: &'static str, e: Errno| PlaceError::Io {
                pid,
                what,
                path: host_parent.join(name),
                source: e.into(),
            };
            match mkdirat(Some(parent.as_raw_fd()), name, Mode::S_IRWXU) {
                Ok(()) => {}
                Err(e @ (Errno::EACCES | Errno::EPERM | Errno::EROFS)) => {
                    return Err(PlaceError::NotWritable {
                        pid,
                        dir: target_parent.to_owned(),
                        uid: creds.uid,
                        source: e.into(),
                    })
                }
                Err(e) => return Err(io("create", e)),
            }
            // From here on a failure removes the directory just made: nothing is left behind.
            let undo = |e: PlaceError| {
                let _ = unlinkat(Some(parent.as_raw_fd()), name, UnlinkatFlags::RemoveDir);
                e
            };
            let dir = open_dir(Some(parent.as_raw_fd()), name, OFlag::O_RDONLY)
                .map_err(|e| undo(io("open", e)))?;
            // mkdirat's mode went through the umask: say exactly 0700.
            fchmod(dir.as_raw_fd(), Mode::S_IRWXU).map_err(|e| undo(io("chmod", e)))?;
            Ok(dir)
        })
    }

    fn finish(
        pid: u32,
        creds: Credentials,
        parent: OwnedFd,
        host_parent: &Path,
        target_parent: &Path,
        name: String,
        dir: OwnedFd,
    ) -> Result<Placement, PlaceError> {
        let st = fstat(dir.as_raw_fd()).map_err(|e| PlaceError::Io {
            pid,
            what: "stat",
            path: host_parent.join(&name),
            source: e.into(),
        })?;
        Ok(Placement {
            pid,
            creds,
            parent,
            id: (st.st_dev, st.st_ino),
            host_dir: host_parent.join(&name),
            target_dir: target_parent.join(&name),
            dir,
            name,
            removed: false,
        })
    }

    /// The directory as scry reaches it (`/proc/PID/root/tmp/scry-attach-...`), for messages.
    pub fn host_dir(&self) -> &Path {
        &self.host_dir
    }

    /// The directory as the target sees it (`/tmp/scry-attach-...`).
    pub fn target_dir(&self) -> &Path {
        &self.target_dir
    }

    /// `rel` inside the placement, as the target sees it.
    pub fn target_path(&self, rel: &str) -> PathBuf {
        self.target_dir.join(rel)
    }

    /// The credentials every operation uses.
    pub fn credentials(&self) -> Credentials {
        self.creds
    }

    /// Writes `files` (paths relative to the placement, `/`-separated, subdirectories created
    /// as needed with mode 0700) exclusively with mode 0600, as the target's user.
    pub fn write_files<'a>(
        &self,
        files: impl IntoIterator<Item = (&'a str, &'a [u8])> + Send,
    ) -> Result<(), PlaceError> {
        as_target(self.pid, self.creds, || {
            let mut dirs: Vec<(String, OwnedFd)> = Vec::new();
            for (rel, contents) in files {
                let (sub, file) = match rel.rsplit_once('/') {
                    Some((sub, file)) => (sub, file),
                    None => ("", rel),
                };
                let io = |what: &'static str, e: Errno| PlaceError::Io {
                    pid: self.pid,
                    what,
                    path: self.host_dir.join(rel),
                    source: e.into(),
                };
                if !sane(rel) {
                    return Err(io("place", Errno::EINVAL));
                }
                let at = if sub.is_empty() {
                    self.dir.as_raw_fd()
                } else if let Some((_, fd)) = dirs.iter().find(|(d, _)| d == sub) {
                    fd.as_raw_fd()
                } else {
                    let mut cur: Option<OwnedFd> = None;
                    for comp in sub.split('/') {
                        let at = cur.as_ref().unwrap_or(&self.dir).as_raw_fd();
                        match mkdirat(Some(at), comp, Mode::S_IRWXU) {
                            // Several files share a subdirectory; it is ours (the placement is
                            // exclusive) or the target's own doing, and opened without
                            // following a link either way.
                            Ok(()) | Err(Errno::EEXIST) => {}
                            Err(e) => return Err(io("create", e)),
                        }
                        let fd =
                            open_dir(Some(at), comp, OFlag::O_RDONLY).map_err(|e| io("open", e))?;
                        fchmod(fd.as_raw_fd(), Mode::S_IRWXU).map_err(|e| io("chmod", e))?;
                        cur = Some(fd);
                    }
                    let Some(fd) = cur else {
                        return Err(io("place", Errno::EINVAL));
                    };
                    dirs.push((sub.to_owned(), fd));
                    dirs.last()
                        .map_or(self.dir.as_raw_fd(), |(_, fd)| fd.as_raw_fd())
                };
                let fd = openat(
                    Some(at),
                    file,
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::S_IRUSR | Mode::S_IWUSR,
                )
                .map_err(|e| io("create", e))?;
                // SAFETY: `fd` was just opened and is owned by nothing else.
                let mut f = unsafe { File::from_raw_fd(fd) };
                fchmod(fd, Mode::S_IRUSR | Mode::S_IWUSR).map_err(|e| io("chmod", e))?;
                f.write_all(contents).map_err(|e| PlaceError::Io {
                    pid: self.pid,
                    what: "write",
                    path: self.host_dir.join(rel),
                    source: e,
                })?;
            }
            Ok(())
        })
    }

    /// Binds a listening unix socket named `name` in the placement, as the target's user (so
    /// the target may connect to it). Its path as the target sees it is
    /// [`Placement::target_path`]`(name)`.
    pub fn bind(&self, name: &str) -> Result<UnixListener, PlaceError> {
        let io = |what: &'static str, e: std::io::Error| PlaceError::Io {
            pid: self.pid,
            what,
            path: self.host_dir.join(name),
            source: e,
        };
        if !sane(name) || name.contains('/') {
            return Err(io("bind", Errno::EINVAL.into()));
        }
        // bind() takes a path: this one goes through our own directory fd (the magic link
        // /proc/self/fd/N is that very directory), and bind never follows a link at its last
        // component (an existing name is EADDRINUSE).
        let path = format!("/proc/self/fd/{}/{name}", self.dir.as_raw_fd());
        as_target(self.pid, self.creds, || {
            UnixListener::bind(&path).map_err(|e| io("bind", e))
        })
    }

    /// Reads the regular file `name` of the placement (at most `limit` bytes), as the target's
    /// user, without following a link or blocking on a FIFO. `None` while it does not exist.
    pub fn read(&self, name: &str, limit: usize) -> Result<Option<Vec<u8>>, PlaceError> {
        let path = self.host_dir.join(name);
        if !sane(name) || name.contains('/') {
            return Err(PlaceError::Unexpected { path });
        }
        as_target(self.pid, self.creds, || {
            let fd = match openat(
                Some(self.dir.as_raw_fd()),
                name,
                OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => owned(fd),
                Err(Errno::ENOENT) => return Ok(None),
                Err(Errno::ELOOP) => return Err(PlaceError::Unexpected { path: path.clone() }),
                Err(e) => {
                    return Err(PlaceError::Io {
                        pid: self.pid,
                        what: "open",
                        path: path.clone(),
                        source: e.into(),
                    })
                }
            };
            let st = fstat(fd.as_raw_fd()).map_err(|e| PlaceError::Io {
                pid: self.pid,
                what: "stat",
                path: path.clone(),
                source: e.into(),
            })?;
            if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFREG {
                return Err(PlaceError::Unexpected { path: path.clone() });
            }
            let mut data = Vec::new();
            File::from(fd)
                .take(limit as u64)
                .read_to_end(&mut data)
                .map_err(|e| PlaceError::Io {
                    pid: self.pid,
                    what: "read",
                    path: path.clone(),
                    source: e,
                })?;
            Ok(Some(data))
        })
    }

    /// Removes the placement and everything in it, as the target's user, through the directory
    /// fd: links inside are unlinked, never followed, and the directory's entry in its parent
    /// is removed only while it still is the directory scry created.
    pub fn remove(mut self) -> Result<(), PlaceError> {
        self.remove_now()
    }

    fn remove_now(&mut self) -> Result<(), PlaceError> {
        if self.removed {
            return Ok(());
        }
        self.removed = true;
        as_target(self.pid, self.creds, || {
            let io = |e: Errno| PlaceError::Io {
                pid: self.pid,
                what: "remove",
                path: self.host_dir.clone(),
                source: e.into(),
            };
            empty_dir(&self.dir, 0).map_err(io)?;
            match fstatat(
                Some(self.parent.as_raw_fd()),
                self.name.as_str(),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                Ok(st) if (st.st_dev, st.st_ino) == self.id => {
                    match unlinkat(
                        Some(self.parent.as_raw_fd()),
                        self.name.as_str(),
                        UnlinkatFlags::RemoveDir,
                    ) {
                        Ok(()) | Err(Errno::ENOENT) => Ok(()),
                        Err(e) => Err(io(e)),
                    }
                }
                // Gone, or replaced by something else: not ours to remove.
                Ok(_) | Err(Errno::ENOENT) => Ok(()),
                Err(e) => Err(io(e)),
            }
        })
    }
}

impl Drop for Placement {
    fn drop(&mut self) {
        if let Err(e) = self.remove_now() {
            tracing::warn!(target: "proc", dir = %self.host_dir.display(), "cannot remove the placement: {e}");
        }
    }
}

/// Removes every entry of the directory `dir` (recursively, without following links).
fn empty_dir(dir: &OwnedFd, depth: usize) -> Result<(), Errno> {
    if depth > MAX_DEPTH {
        return Err(Errno::ELOOP);
    }
    let names: Vec<CString> = {
        let mut d = nix::dir::Dir::openat(
            Some(dir.as_raw_fd()),
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        d.iter()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_owned())
            .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
            .collect()
    };
    for name in names {
        match unlinkat(
            Some(dir.as_raw_fd()),
            name.as_c_str(),
            UnlinkatFlags::NoRemoveDir,
        ) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(Errno::EISDIR) => {
                let sub = open_dir(Some(dir.as_raw_fd()), name.as_c_str(), OFlag::O_RDONLY)?;
                empty_dir(&sub, depth + 1)?;
                match unlinkat(
                    Some(dir.as_raw_fd()),
                    name.as_c_str(),
                    UnlinkatFlags::RemoveDir,
                ) {
                    Ok(()) | Err(Errno::ENOENT) => {}
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Opens the directory `name` relative to `at` (or the cwd) without following a link at its
/// last component, and checks that it is a directory.
fn open_dir<P: ?Sized + nix::NixPath>(
    at: Option<RawFd>,
    name: &P,
    extra: OFlag,
) -> Result<OwnedFd, Errno> {
    let fd = owned(openat(
        at,
        name,
        extra | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?);
    // O_PATH|O_NOFOLLOW opens a symlink itself instead of failing: check.
    let st = fstat(fd.as_raw_fd())?;
    if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFDIR {
        return Err(Errno::ENOTDIR);
    }
    Ok(fd)
}

fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful open and is owned by nothing else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A relative path of plain components (no `..`, `.`, empty or absolute parts).
fn sane(rel: &str) -> bool {
    !rel.is_empty()
        && rel
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'))
}

/// 16 hex digits from the kernel's random source (scry-proc has no RNG dependency).
fn random_suffix() -> String {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer.
    let n = unsafe { nix::libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        // Never expected; the clock and the pid still differ per attempt, and an existing name
        // is refused anyway (EEXIST).
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        bytes = (t ^ u64::from(std::process::id()).rotate_left(40)).to_le_bytes();
    }
    format!("{:016x}", u64::from_le_bytes(bytes))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::print_stderr)]
mod tests {
    //! Run as root against directories owned by an unprivileged uid (`nobody`, 65534), as the
    //! daemon meets them; without root they say they were skipped.
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    const NOBODY: Credentials = Credentials {
        uid: 65534,
        gid: 65534,
    };

    fn root() -> bool {
        if nix::unistd::geteuid().is_root() {
            return true;
        }
        eprintln!("SKIPPED: the placement tests switch credentials and need root");
        false
    }

    /// A scratch directory (root-only 0711 around it) and, in it, `parent`: owned by `owner`
    /// with `mode`.
    fn scratch(owner: Credentials, mode: u32) -> (tempfile::TempDir, PathBuf) {
        let top = tempfile::Builder::new()
            .prefix("scry-place-test-")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let parent = top.path().join("parent");
        std::fs::create_dir(&parent).unwrap();
        std::os::unix::fs::chown(&parent, Some(owner.uid), Some(owner.gid)).unwrap();
        std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(mode)).unwrap();
        (top, parent)
    }

    fn dir_fd(path: &Path) -> OwnedFd {
        open_dir(None, path, OFlag::O_PATH).unwrap()
    }

    fn create(parent: &Path) -> Result<Placement, PlaceError> {
        Placement::create_in(
            std::process::id(),
            NOBODY,
            dir_fd(parent),
            parent.to_owned(),
            PathBuf::from("/tmp"),
            "scry-test",
        )
    }

    /// A root-owned 0600 file with known content, in a root-only directory.
    fn sacrificial(top: &Path) -> PathBuf {
        let dir = top.join("root-only");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let f = dir.join("secret");
        std::fs::write(&f, b"root's").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        f
    }

    fn assert_untouched(f: &Path) {
        let m = std::fs::symlink_metadata(f).unwrap();
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777),
            (0, 0, 0o600),
            "{}",
            f.display()
        );
        assert_eq!(std::fs::read(f).unwrap(), b"root's");
    }

    /// Every entry under `dir` (and `dir`) is owned by nobody; files 0600, directories 0700.
    fn all_owned_by_nobody(dir: &Path) -> usize {
        let mut n = 0;
        let m = std::fs::symlink_metadata(dir).unwrap();
        assert_eq!(
            (m.uid(), m.gid()),
            (NOBODY.uid, NOBODY.gid),
            "{}",
            dir.display()
        );
        assert_eq!(m.mode() & 0o7777, 0o700, "{}", dir.display());
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                n += all_owned_by_nobody(&p);
            } else {
                assert_eq!(
                    (m.uid(), m.gid()),
                    (NOBODY.uid, NOBODY.gid),
                    "{}",
                    p.display()
                );
                if m.file_type().is_file() {
                    assert_eq!(m.mode() & 0o7777, 0o600, "{}", p.display());
                }
                n += 1;
            }
        }
        n
    }

    #[test]
    fn everything_is_created_by_the_targets_user_and_removed() {
        if !root() {
            return;
        }
        let (_top, parent) = scratch(NOBODY, 0o1777);
        let p = create(&parent).unwrap();
        assert!(p.target_dir().starts_with("/tmp"));
        p.write_files([
            ("scry/__init__.py", b"a".as_slice()),
            ("scry/_x.py", b"b".as_slice()),
            ("bootstrap.py", b"c".as_slice()),
        ])
        .unwrap();
        let listener = p.bind("agent.sock").unwrap();
        assert_eq!(
            p.read("bootstrap.py", 10).unwrap().as_deref(),
            Some(b"c".as_slice())
        );
        assert_eq!(p.read("missing", 10).unwrap(), None);
        assert_eq!(all_owned_by_nobody(p.host_dir()), 4);
        // Only the placement's own threads changed credentials: this one is still root.
        assert_eq!(nix::unistd::setfsuid(Uid::from_raw(u32::MAX)).as_raw(), 0);
        // The target's user can reach the socket.
        let sock = p.host_dir().join("agent.sock");
        let st = std::fs::symlink_metadata(&sock).unwrap();
        assert_eq!(st.uid(), NOBODY.uid);
        drop(listener);
        let host = p.host_dir().to_owned();
        p.remove().unwrap();
        assert!(std::fs::symlink_metadata(&host).is_err(), "removed");
        assert_eq!(std::fs::read_dir(&parent).unwrap().count(), 0);
    }

    #[test]
    fn an_existing_name_is_never_reused_nor_followed() {
        if !root() {
            return;
        }
        let (top, parent) = scratch(NOBODY, 0o700);
        let secret = sacrificial(top.path());
        let elsewhere = top.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::chown(&elsewhere, Some(NOBODY.uid), Some(NOBODY.gid)).unwrap();
        std::os::unix::fs::symlink(&elsewhere, parent.join("link-to-dir")).unwrap();
        std::os::unix::fs::symlink(&secret, parent.join("link-to-file")).unwrap();
        std::fs::create_dir(parent.join("taken")).unwrap();
        for name in ["link-to-dir", "link-to-file", "taken"] {
            let err = Placement::create_named(
                1,
                NOBODY,
                &dir_fd(&parent),
                &parent,
                Path::new("/tmp"),
                name,
            )
            .unwrap_err();
            assert!(
                matches!(&err, PlaceError::Io { source, .. } if source.raw_os_error() == Some(Errno::EEXIST as i32)),
                "{name}: {err}"
            );
        }
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
        assert_untouched(&secret);
        assert_eq!(std::fs::read_dir(parent.join("taken")).unwrap().count(), 0);
    }

    #[test]
    fn links_planted_inside_are_not_followed() {
        if !root() {
            return;
        }
        let (top, parent) = scratch(NOBODY, 0o700);
        let secret = sacrificial(top.path());
        // A directory the target's user may write to: only O_NOFOLLOW keeps scry out of it.
        let elsewhere = top.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::chown(&elsewhere, Some(NOBODY.uid), Some(NOBODY.gid)).unwrap();
        let p = create(&parent).unwrap();
        std::os::unix::fs::symlink(&elsewhere, p.host_dir().join("scry")).unwrap();
        std::os::unix::fs::symlink(&secret, p.host_dir().join("bootstrap.py")).unwrap();
        std::os::unix::fs::symlink(elsewhere.join("new"), p.host_dir().join("new.py")).unwrap();
        std::os::unix::fs::symlink(&secret, p.host_dir().join("status.json")).unwrap();
        let fifo = p.host_dir().join("fifo");
        nix::unistd::mkfifo(&fifo, Mode::S_IRWXU).unwrap();
        std::os::unix::fs::chown(&fifo, Some(NOBODY.uid), Some(NOBODY.gid)).unwrap();
        assert!(p
            .write_files([("scry/__init__.py", b"x".as_slice())])
            .is_err());
        assert!(p.write_files([("bootstrap.py", b"x".as_slice())]).is_err());
        assert!(p.write_files([("new.py", b"x".as_slice())]).is_err());
        assert!(p.bind("bootstrap.py").is_err());
        assert!(matches!(
            p.read("status.json", 100),
            Err(PlaceError::Unexpected { .. })
        ));
        // A FIFO is refused without blocking.
        assert!(matches!(
            p.read("fifo", 100),
            Err(PlaceError::Unexpected { .. })
        ));
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
        assert_untouched(&secret);
        // Removal unlinks the links and leaves what they point to.
        std::fs::write(elsewhere.join("keep"), b"k").unwrap();
        let host = p.host_dir().to_owned();
        p.remove().unwrap();
        assert!(std::fs::symlink_metadata(&host).is_err());
        assert!(elsewhere.join("keep").exists());
        assert_untouched(&secret);
    }

    #[test]
    fn a_directory_the_target_cannot_write_is_refused() {
        if !root() {
            return;
        }
        // Root's own 0755 directory: what /etc mounted over the target's /tmp looks like.
        let (_top, parent) = scratch(Credentials { uid: 0, gid: 0 }, 0o755);
        let err = create(&parent).unwrap_err();
        assert!(matches!(err, PlaceError::NotWritable { .. }), "{err}");
        assert!(err.to_string().contains("runs as uid 65534"), "{err}");
        assert!(err.hint().is_some());
        assert_eq!(std::fs::read_dir(&parent).unwrap().count(), 0);
    }

    #[test]
    fn removal_leaves_a_replaced_directory_alone() {
        if !root() {
            return;
        }
        let (_top, parent) = scratch(NOBODY, 0o700);
        let p = create(&parent).unwrap();
        p.write_files([("a.py", b"x".as_slice())]).unwrap();
        let host = p.host_dir().to_owned();
        std::fs::rename(&host, parent.join("moved")).unwrap();
        std::fs::create_dir(&host).unwrap();
        std::fs::write(host.join("theirs"), b"t").unwrap();
        p.remove().unwrap();
        assert!(host.join("theirs").exists(), "the replacement is not ours");
        assert_eq!(std::fs::read_dir(parent.join("moved")).unwrap().count(), 0);
    }

    #[test]
    fn a_real_target_gets_a_directory_of_its_own_user() {
        if !root() {
            return;
        }
        use std::os::unix::process::CommandExt;
        struct Kill(std::process::Child);
        impl Drop for Kill {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let child = Kill(
            std::process::Command::new("sleep")
                .arg("60")
                .uid(NOBODY.uid)
                .gid(NOBODY.gid)
                .spawn()
                .unwrap(),
        );
        let pid = child.0.id();
        let p = Placement::create(pid, "scry-test", "script").unwrap();
        assert_eq!(p.credentials(), NOBODY);
        assert!(
            p.target_dir()
                .to_string_lossy()
                .starts_with("/tmp/scry-test-"),
            "{:?}",
            p.target_dir()
        );
        let m = std::fs::symlink_metadata(p.host_dir()).unwrap();
        assert_eq!((m.uid(), m.mode() & 0o7777), (NOBODY.uid, 0o700));
        let host = p.host_dir().to_owned();
        p.remove().unwrap();
        assert!(std::fs::symlink_metadata(&host).is_err());
        drop(child);
        assert!(matches!(
            Placement::create(pid, "scry-test", "script"),
            Err(PlaceError::NoSuchProcess { .. })
        ));
    }
}

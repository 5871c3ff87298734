//! The gdb injector for CPython 3.8–3.13, which have no PEP 768 remote-exec hook.
//!
//! `gdb -p PID -batch` attaches (every thread of the target stops), and in the thread it stopped
//! first calls `PyGILState_Ensure()`, then `PyRun_SimpleString()` of a one-liner that executes
//! the script in a fresh namespace (as PEP 768 does), then `PyGILState_Release()`, and detaches.
//! The calls are cast explicitly, so a target without debug symbols works. `scheduler-locking`
//! stays off so that another thread holding the GIL can run and release it while the stopped
//! thread waits in `PyGILState_Ensure`.
//!
//! Known limits, said to the user before it runs ([`Injector::notice`]): the target stops for as
//! long as gdb takes (typically 0.3–2 s), and Python runs inside whatever the interrupted thread
//! was doing (the classic gdb-injection risk: a thread interrupted inside malloc or the GIL
//! machinery can deadlock). A native ptrace injector can replace this one behind the same
//! [`Injector`] trait (stop at `PyEval_SaveThread`, call `PyRun_SimpleString` there).
//!
//! Not for: 3.14+, which [`super::pep768::Pep768`] handles without stopping the process.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{permission_cause, InjectError, Injection, Injector};
use crate::python::Detector;

/// Which versions this injector attaches to, as said in errors.
pub const SUPPORTED: &str = "the gdb injector supports CPython 3.8 to 3.13";

/// The gdb injector: runs the `gdb` found on `PATH` (or the one given).
#[derive(Debug, Clone)]
pub struct Gdb {
    gdb: PathBuf,
}

/// `gdb` on `PATH`, if installed.
pub fn find_gdb() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("gdb"))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The Python one-liner gdb passes to `PyRun_SimpleString`: run `script` in a fresh
/// namespace, like PEP 768's `_PyRunRemoteDebugger`.
fn runner(script: &Path) -> String {
    // The path goes in a Python string literal inside a gdb C string literal: escape for both.
    let py_literal: String = script
        .to_string_lossy()
        .chars()
        .flat_map(|c| match c {
            '\\' => vec!['\\', '\\'],
            '\'' => vec!['\\', '\''],
            c if c.is_control() => format!("\\x{:02x}", c as u32).chars().collect(),
            c => vec![c],
        })
        .collect();
    let python = format!(
        "exec(compile(open('{py_literal}','rb').read(),'{py_literal}','exec'),{{'__name__':'__scry_inject__'}})"
    );
    python
        .chars()
        .flat_map(|c| match c {
            '\\' => vec!['\\', '\\'],
            '"' => vec!['\\', '"'],
            c => vec![c],
        })
        .collect()
}

impl Gdb {
    /// The injector with `gdb` from `PATH`; `None` when gdb is not installed.
    pub fn from_path() -> Option<Gdb> {
        find_gdb().map(|gdb| Gdb { gdb })
    }

    /// The injector with a given gdb binary.
    pub fn with_binary(gdb: PathBuf) -> Gdb {
        Gdb { gdb }
    }

    fn command(&self, pid: u32, script: &Path) -> Command {
        let mut cmd = Command::new(&self.gdb);
        cmd.args(["-nx", "-batch", "-q"])
            // Shared libraries as the target sees them (a container's or chroot's root).
            .args(["-iex", &format!("set sysroot /proc/{pid}/root")])
            .args(["-iex", "set debuginfod enabled off"])
            .args(["-iex", "set auto-load safe-path /nonexistent"])
            .args(["-p", &pid.to_string()])
            .args(["-ex", "set pagination off"])
            .args(["-ex", "set confirm off"])
            .args(["-ex", "set scheduler-locking off"])
            .args(["-ex", "set unwindonsignal on"])
            .args(["-ex", "call (int)((int (*)(void))PyGILState_Ensure)()"])
            .args([
                "-ex",
                &format!(
                    "call (int)((int (*)(const char *))PyRun_SimpleString)(\"{}\")",
                    runner(script)
                ),
            ])
            .args(["-ex", "call (void)((void (*)(int))PyGILState_Release)($1)"])
            .args(["-ex", "detach"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // A session of its own, without a controlling terminal: a ctrl-c in the CLI must not
        // reach gdb in the middle of a call, and gdb in a background process group of a
        // terminal would be stopped by SIGTTOU when it sets the terminal up (leaving the
        // target stopped under ptrace).
        // SAFETY: only setsid, async-signal-safe, runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()
                    .map(|_| ())
                    .map_err(std::io::Error::from)
            });
        }
        cmd
    }
}

/// Reads a pipe to its end on a thread (gdb's output can exceed a pipe buffer).
fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_string(&mut text);
        }
        text
    })
}

/// The value gdb printed for history entry `n` (`$n = VALUE`).
fn history_value(output: &str, n: u32) -> Option<i64> {
    let prefix = format!("${n} = ");
    output
        .lines()
        .find_map(|l| l.trim().strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

impl Injector for Gdb {
    fn name(&self) -> &'static str {
        "gdb"
    }

    fn notice(&self) -> Option<String> {
        Some(
            "Python < 3.14 has no safe attach hook: scry attaches through gdb, which stops the process briefly (usually under 2 s) while the script starts"
                .into(),
        )
    }

    fn inject(&self, pid: u32, script: &Path, timeout: Duration) -> Result<Injection, InjectError> {
        let info = crate::info(pid).map_err(|_| InjectError::NoSuchProcess { pid })?;
        if info.state == 'Z' {
            return Err(InjectError::Exited { pid });
        }
        let python = Detector::new()
            .detect(pid)
            .ok_or_else(|| InjectError::NotPython {
                pid,
                exe: std::fs::read_link(format!("/proc/{pid}/exe"))
                    .map(|p| p.display().to_string())
                    .unwrap_or(info.comm.clone()),
            })?;
        let minor = python.major_minor();
        if !matches!(minor, Some((3, 8..=13))) {
            return Err(InjectError::UnsupportedVersion {
                pid,
                version: python.version.clone().unwrap_or(python.short.clone()),
                injector: "gdb",
                supported: SUPPORTED.into(),
            });
        }
        let started = Instant::now();
        let mut child = self
            .command(pid, script)
            .spawn()
            .map_err(|source| InjectError::Io {
                pid,
                what: format!("cannot run {}", self.gdb.display()),
                source,
            })?;
        let out = drain(child.stdout.take());
        let err = drain(child.stderr.take());
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if started.elapsed() < timeout => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) => {
                    // An interrupt makes gdb abandon the call (unwindonsignal) and detach
                    // cleanly; killing it outright could leave the target at a breakpoint.
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(child.id() as i32),
                        nix::sys::signal::Signal::SIGINT,
                    );
                    let grace = Instant::now();
                    while !matches!(child.try_wait(), Ok(Some(_))) {
                        if grace.elapsed() > Duration::from_secs(5) {
                            let _ = child.kill();
                            let _ = child.wait();
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    return Err(InjectError::Timeout {
                        pid,
                        waited: timeout,
                        blocked_in: "gdb's call into the interpreter (the GIL was not obtained)"
                            .into(),
                    });
                }
                Err(source) => {
                    return Err(InjectError::Io {
                        pid,
                        what: "waiting for gdb".into(),
                        source,
                    })
                }
            }
        };
        let stdout = out.join().unwrap_or_default();
        let stderr = err.join().unwrap_or_default();
        let all = format!("{stdout}\n{stderr}");
        tracing::debug!(target: "proc", pid, %status, output = %all, "gdb injection");
        if all.contains("Operation not permitted") {
            return Err(InjectError::PermissionDenied {
                pid,
                cause: permission_cause(pid),
            });
        }
        if all.contains("No such process") || !crate::alive(pid, Some(info.start_ticks)) {
            return Err(InjectError::Exited { pid });
        }
        if all.contains("No symbol \"PyGILState_Ensure\"")
            || all.contains("No symbol \"PyRun_SimpleString\"")
        {
            return Err(InjectError::BadLayout {
                pid,
                what: "gdb finds no PyGILState_Ensure/PyRun_SimpleString in it".into(),
            });
        }
        match (history_value(&stdout, 1), history_value(&stdout, 2)) {
            (Some(_), Some(0)) => Ok(Injection {
                injector: "gdb",
                python_version: python.version.clone().unwrap_or(python.short.clone()),
                free_threaded: python.free_threaded,
                picked_up_after: started.elapsed(),
                thread_id: u64::from(pid),
            }),
            (Some(_), Some(_)) => Err(InjectError::Io {
                pid,
                what: "the script raised in the target (its traceback went to the target's stderr)"
                    .into(),
                source: std::io::Error::other("PyRun_SimpleString returned -1"),
            }),
            _ => Err(InjectError::Io {
                pid,
                what: format!(
                    "gdb could not run the script: {}",
                    all.lines()
                        .map(str::trim)
                        .rfind(|l| !l.is_empty())
                        .unwrap_or("no output")
                ),
                source: std::io::Error::other(format!("gdb exited with {status}")),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runner_escapes_the_path_for_python_and_gdb() {
        let r = runner(Path::new("/tmp/a'b\\c.py"));
        assert!(r.starts_with("exec(compile(open('/tmp/a\\\\'b"), "{r}");
        assert!(!r.contains('"'));
    }

    #[test]
    fn history_values() {
        let out = "[New LWP 5]\n$1 = 1\n$2 = 0\n[Inferior 1 (process 4) detached]\n";
        assert_eq!(history_value(out, 1), Some(1));
        assert_eq!(history_value(out, 2), Some(0));
        assert_eq!(history_value(out, 3), None);
    }

    /// A real injection into the host's python3 (3.8–3.13) when gdb is installed: the script
    /// writes a file with the target's pid.
    #[test]
    fn injects_into_a_busy_and_a_sleeping_python() {
        let (Some(gdb), Ok(out)) = (
            Gdb::from_path(),
            Command::new("python3")
                .args(["-c", "import sys; print(sys.version_info[1])"])
                .output(),
        ) else {
            return; // no gdb or no python3 here: the e2e tests cover the matrix
        };
        let minor: u32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        if !(8..=13).contains(&minor) {
            return;
        }
        let dir = std::env::temp_dir().join(format!("scry-gdb-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        for (name, code) in [
            ("busy", "while True: pass"),
            ("sleeping", "import time\nwhile True: time.sleep(0.1)"),
        ] {
            let mut target = Command::new("python3")
                .args(["-c", code])
                .spawn()
                .expect("python3");
            let marker = dir.join(format!("{name}.out"));
            let script = dir.join(format!("{name}.py"));
            std::fs::write(
                &script,
                format!(
                    "import os\nopen({:?}, 'w').write(str(os.getpid()))\n",
                    marker.display().to_string()
                ),
            )
            .expect("script");
            // Let the interpreter finish starting.
            let t0 = Instant::now();
            while Detector::new()
                .detect(target.id())
                .is_none_or(|p| p.short == "?")
                && t0.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            std::thread::sleep(Duration::from_millis(200));
            let done = gdb.inject(target.id(), &script, Duration::from_secs(60));
            let written = std::fs::read_to_string(&marker).unwrap_or_default();
            let alive = target.try_wait().ok().flatten().is_none();
            let _ = target.kill();
            let _ = target.wait();
            let done = done.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(done.injector, "gdb");
            assert_eq!(written, target.id().to_string(), "{name}");
            assert!(alive, "{name}: the target runs on after the injection");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn refuses_what_is_not_python() {
        let gdb = Gdb::with_binary(PathBuf::from("/nonexistent/gdb"));
        let mut sleep = Command::new("sleep").arg("30").spawn().expect("sleep");
        let err = gdb
            .inject(sleep.id(), Path::new("/tmp/x.py"), Duration::from_secs(1))
            .err();
        let _ = sleep.kill();
        let _ = sleep.wait();
        assert!(
            matches!(err, Some(InjectError::NotPython { .. })),
            "{err:?}"
        );
    }
}

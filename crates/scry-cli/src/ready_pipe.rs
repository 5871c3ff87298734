//! The pipe through which a daemon started in the background tells the CLI that started it
//! that it serves, or why it could not start. Without it the CLI could only wait for the
//! daemon's file to appear and, when the daemon had already failed (its port taken, its home
//! held by another daemon), say after 15 s that it "did not start", the reason left in the log.
//!
//! The CLI creates the pipe and passes its write end to `scry serve` (the descriptor number in
//! `SCRY_READY_FD`, inherited across exec only by that child); the daemon writes one JSON line,
//! `{"ok": true}` once it serves or `{"ok": false, "message", "hint"}` when it stops on an
//! error, and closes it. End of file without a line means the daemon died at start (a crash:
//! its log says more).

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The variable that names the write end in the daemon.
pub const ENV: &str = "SCRY_READY_FD";

/// What the daemon said.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Line {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hint: Option<String>,
}

/// How a start ended, as the starter sees it.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// It serves.
    Ready,
    /// It stopped on an error, which it gave.
    Failed {
        /// The error.
        message: String,
        /// What to do about it.
        hint: Option<String>,
    },
    /// It closed the pipe without a word: it died.
    Died,
    /// Nothing within the wait.
    TimedOut,
}

/// The starter's end.
pub struct Waiter(std::io::PipeReader);

/// A new pipe: the starter's end, and the write end to hand to the daemon (close-on-exec: it
/// is inherited only where [`inherit_in_child`] clears that flag).
pub fn pair() -> std::io::Result<(Waiter, std::io::PipeWriter)> {
    let (read, write) = std::io::pipe()?;
    Ok((Waiter(read), write))
}

/// Lets `fd` cross the exec of the child being started (call from `pre_exec`: only an
/// async-signal-safe `fcntl`).
pub fn inherit_in_child(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor this process owns; async-signal-safe.
    if unsafe { nix::libc::fcntl(fd, nix::libc::F_SETFD, 0) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Waiter {
    /// Waits up to `timeout` for the daemon's word. The read runs on a thread: a daemon that
    /// neither answers nor exits leaves it blocked until this process exits.
    pub fn wait(self, timeout: Duration) -> Outcome {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let read = BufReader::new(self.0).read_line(&mut line);
            let _ = tx.send(read.map(|_| line));
        });
        match rx.recv_timeout(timeout) {
            Ok(Ok(line)) if line.trim().is_empty() => Outcome::Died,
            Ok(Ok(line)) => match serde_json::from_str::<Line>(&line) {
                Ok(Line { ok: true, .. }) => Outcome::Ready,
                Ok(Line { message, hint, .. }) => Outcome::Failed {
                    message: message.unwrap_or_else(|| "the daemon failed to start".into()),
                    hint,
                },
                Err(_) => Outcome::Died,
            },
            Ok(Err(_)) => Outcome::Died,
            Err(_) => Outcome::TimedOut,
        }
    }
}

/// The daemon's end, taken from [`ENV`] once at start (close-on-exec again at once, so that
/// no program the daemon runs inherits it).
pub struct Notifier(Option<std::fs::File>);

impl Notifier {
    /// The write end named by [`ENV`], if this process was started with one.
    pub fn from_env() -> Notifier {
        let fd = scry_daemon::env::var(ENV).and_then(|v| v.parse::<RawFd>().ok());
        let Some(fd) = fd.filter(|fd| *fd > 2 && is_pipe(*fd)) else {
            return Notifier(None);
        };
        // SAFETY: the starter passed this descriptor to this process for this use only, and it
        // is open (checked above); nothing else here owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: fcntl on the descriptor just taken.
        unsafe {
            nix::libc::fcntl(owned.as_raw_fd(), nix::libc::F_SETFD, nix::libc::FD_CLOEXEC);
        }
        Notifier(Some(std::fs::File::from(owned)))
    }

    /// Says the daemon serves.
    pub fn ready(&mut self) {
        self.send(&Line {
            ok: true,
            message: None,
            hint: None,
        });
    }

    /// Says why the daemon stops.
    pub fn failed(&mut self, message: &str, hint: Option<&str>) {
        self.send(&Line {
            ok: false,
            message: Some(message.to_owned()),
            hint: hint.map(str::to_owned),
        });
    }

    fn send(&mut self, line: &Line) {
        // Once: the starter reads one line, and the pipe closes with it.
        if let Some(mut f) = self.0.take() {
            let text = serde_json::to_string(line).unwrap_or_default();
            let _ = writeln!(f, "{text}");
        }
    }
}

/// Whether `fd` is an open pipe (so that a stray `SCRY_READY_FD` never makes the daemon write
/// into some other file).
fn is_pipe(fd: RawFd) -> bool {
    std::fs::metadata(format!("/proc/self/fd/{fd}"))
        .map(|m| std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type()))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn through_pipe(say: impl FnOnce(&mut Notifier) + Send + 'static) -> Outcome {
        let (waiter, write) = pair().expect("pipe");
        std::thread::spawn(move || {
            let mut n = Notifier(Some(std::fs::File::from(OwnedFd::from(write))));
            say(&mut n);
        });
        waiter.wait(Duration::from_secs(10))
    }

    #[test]
    fn the_starter_hears_ready_failed_or_died() {
        assert_eq!(through_pipe(|n| n.ready()), Outcome::Ready);
        assert_eq!(
            through_pipe(|n| n.failed("cannot listen on 127.0.0.1:7390", Some("pick a port"))),
            Outcome::Failed {
                message: "cannot listen on 127.0.0.1:7390".into(),
                hint: Some("pick a port".into())
            }
        );
        assert_eq!(through_pipe(|_| {}), Outcome::Died);
    }

    #[test]
    fn a_silent_daemon_times_out() {
        let (waiter, write) = pair().expect("pipe");
        assert_eq!(waiter.wait(Duration::from_millis(50)), Outcome::TimedOut);
        drop(write);
    }
}

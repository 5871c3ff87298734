//! Security: every attack of issue 12 replayed for real by a second, unprivileged local user
//! against a root daemon and root targets. Each submodule is one surface:
//!
//! - `api`: the daemon's HTTP API (unix socket with a peer check, TCP with the token) and MCP
//! - `control_plane`: an embedded client's control plane and the agent link handshake
//! - `placement`: files placed in a target's root by `scry attach` (races, mount namespaces)
//! - `expressions`: probe expressions that try to act (escapes, unbounded operators)
//! - `files`: modes of what scry creates in `$SCRY_HOME`, escaping of strings from outside
//!
//! The tests run as root (CI does); the attacker is the local account `scry-attacker`, created
//! on first use, and every attack runs in a process with its uid and gid and no other groups
//! (`setpriv`). Where that is impossible (not root), a test says it was skipped and why; under
//! `CI` it fails instead, since CI must run them all.

#![allow(dead_code)]
// A skipped test says so on stderr.
#![allow(clippy::print_stderr)]

mod api;
mod files;
mod placement;
mod terminal;

mod control_plane;

use std::path::Path;
use std::process::{Command, Output, Stdio};

pub use crate::support::skipped;

mod expressions;

/// The attacker's account name.
pub const ATTACKER: &str = "scry-attacker";

/// A second local user, unprivileged.
pub struct Attacker {
    pub uid: u32,
    pub gid: u32,
}

/// The attacker, created if needed; `None` (after saying why) when the tests cannot make one.
/// Under `CI` a missing precondition is a failure, never a silent pass.
pub fn attacker() -> Option<Attacker> {
    if !nix::unistd::geteuid().is_root() {
        return skipped(
            "the security tests need root (to create a second user and to run a root daemon)",
        );
    }
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, ATTACKER]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    if id("-u").is_none() {
        let out = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "--user-group",
                ATTACKER,
            ])
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            // Another test created it meanwhile.
            Ok(_) if id("-u").is_some() => {}
            Ok(o) => {
                return skipped(&format!(
                    "useradd {ATTACKER} failed: {}",
                    String::from_utf8_lossy(&o.stderr)
                ))
            }
            Err(e) => return skipped(&format!("cannot run useradd: {e}")),
        }
    }
    match (id("-u"), id("-g")) {
        (Some(uid), Some(gid)) => Some(Attacker { uid, gid }),
        _ => skipped(&format!("cannot read the uid of {ATTACKER}")),
    }
}

impl Attacker {
    /// A command that runs as the attacker: its uid and gid, no supplementary groups, a
    /// neutral environment and working directory.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--clear-groups")
            .arg("--")
            .arg(program)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", "/tmp")
            .current_dir("/")
            .stdin(Stdio::null());
        c
    }

    /// Runs a Python program (the host's `python3`, standard library only) as the attacker.
    pub fn python(&self, code: &str, args: &[&str]) -> Output {
        self.command("python3")
            .arg("-c")
            .arg(code)
            .args(args)
            .output()
            .expect("run python3 as the attacker")
    }

    /// A file the attacker may create and root may not be tricked into owning (for side
    /// effects: a directory of its own under /tmp).
    pub fn scratch_dir(&self) -> tempfile::TempDir {
        let dir = tempfile::Builder::new()
            .prefix("scry-attacker-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        std::os::unix::fs::chown(dir.path(), Some(self.uid), Some(self.gid)).expect("chown");
        dir
    }
}

/// Asserts that `path` does not exist (an attack's side effect did not happen).
pub fn assert_absent(path: &Path, what: &str) {
    assert!(
        std::fs::symlink_metadata(path).is_err(),
        "{what}: {} exists",
        path.display()
    );
}

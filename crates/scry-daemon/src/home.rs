//! The layout of `$SCRY_HOME`: one place that knows where every file lives.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::env;
use crate::error::DaemonError;

/// Paths under `$SCRY_HOME`.
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// `$SCRY_HOME`, else `~/.scry`.
    pub fn from_env() -> Home {
        let root = env::var(env::SCRY_HOME)
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".scry")))
            .unwrap_or_else(|| PathBuf::from(".scry"));
        Home { root }
    }

    /// A home at an explicit path.
    pub fn at(root: impl Into<PathBuf>) -> Home {
        Home { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `run/`: the socket and the files that exist while the daemon runs (mode 0700).
    pub fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }
    /// The local API's unix socket (the owner's and root's way in; see `access.rs`).
    pub fn api_socket(&self) -> PathBuf {
        self.run_dir().join("api.sock")
    }
    /// The agents' unix socket.
    pub fn agent_socket(&self) -> PathBuf {
        self.run_dir().join("agent.sock")
    }
    /// What the running daemon wrote about itself (pid, addresses).
    pub fn daemon_file(&self) -> PathBuf {
        self.run_dir().join("daemon.json")
    }
    /// The daemon's pid file.
    pub fn pid_file(&self) -> PathBuf {
        self.run_dir().join("daemon.pid")
    }
    /// What a stopping daemon saved for `scry serve --restore` (injected agents, follows).
    pub fn restore_file(&self) -> PathBuf {
        self.root.join("restore.json")
    }
    /// The daemon's log when it runs detached.
    pub fn log_file(&self) -> PathBuf {
        self.root.join("daemon.log")
    }
    /// The SQLite database.
    pub fn store_file(&self) -> PathBuf {
        self.root.join("scry.db")
    }
    /// The configuration file.
    pub fn config_file(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    /// Discovery files of embedded clients, `clients/<pid>.json`.
    pub fn clients_dir(&self) -> PathBuf {
        self.root.join("clients")
    }
    /// The token every caller of the TCP listener and every TCP agent must prove.
    pub fn token_file(&self) -> PathBuf {
        self.root.join("token")
    }
    /// Where the bundled Python agent is unpacked.
    pub fn agent_dir(&self) -> PathBuf {
        self.root.join("agent").join(env!("CARGO_PKG_VERSION"))
    }

    /// Creates the root and `run/` with mode 0700, and makes what is already there private:
    /// the root and every directory under it 0700, every file 0600 (sockets included), so a
    /// home made 0755 by hand, or files written under a loose umask by an older scry, are
    /// tightened. Links are never followed, and entries of other users are left alone.
    pub fn ensure(&self) -> Result<(), DaemonError> {
        for dir in [self.root.clone(), self.run_dir()] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|source| DaemonError::Io {
                    path: dir.clone(),
                    source,
                })?;
        }
        for dir in [self.root.clone(), self.run_dir()] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|source| DaemonError::Io { path: dir, source })?;
        }
        tighten(&self.root, 0);
        Ok(())
    }
}

/// Makes every entry under `dir` private (0700 directories, 0600 others), without following
/// links and skipping entries of another owner. Best effort: an entry that cannot be changed
/// is logged, not fatal (the daemon's own files are created private anyway).
fn tighten(dir: &Path, depth: usize) {
    use std::os::unix::fs::MetadataExt;
    // The home holds a few levels (agent/<version>/scry/...); a deeper tree is not ours.
    if depth > 8 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let me = nix::unistd::geteuid().as_raw();
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.file_type().is_symlink() || meta.uid() != me {
            continue;
        }
        let want = if meta.is_dir() { 0o700 } else { 0o600 };
        if meta.mode() & 0o7777 != want {
            if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(want)) {
                tracing::warn!(target: "daemon", path = %path.display(), "cannot make it private: {e}");
            }
        }
        if meta.is_dir() {
            tighten(&path, depth + 1);
        }
    }
}

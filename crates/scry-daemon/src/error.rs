//! The daemon's typed errors. Each variant can say what the user should do about it
//! ([`DaemonError::hint`]); the CLI prints that as `hint:`.

use std::path::PathBuf;

/// Errors of the daemon library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// A file or directory operation failed.
    #[error("cannot access {path}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The configuration file is invalid.
    #[error("invalid configuration in {path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Another daemon already runs with this home.
    #[error("a scry daemon is already running (pid {pid}) for {home}")]
    AlreadyRunning {
        /// Its pid.
        pid: u32,
        /// The home directory.
        home: PathBuf,
    },
    /// The store failed.
    #[error("the event store failed")]
    Store(#[from] scry_store::StoreError),
}

impl DaemonError {
    /// What the user can do about it, when there is something to say.
    pub fn hint(&self) -> Option<String> {
        match self {
            DaemonError::Bind { addr, source }
                if source.kind() == std::io::ErrorKind::AddrInUse =>
            {
                Some(format!(
                    "another program listens on {addr}; stop it, or choose another port with `scry serve --port P` (and point the CLI at it with SCRY_DAEMON)"
                ))
            }
            DaemonError::AlreadyRunning { .. } => {
                Some("use it as it is, or stop it first with `scry stop`".into())
            }
            DaemonError::Config { path, .. } => Some(format!(
                "fix or delete {} (a fresh one with commented defaults is written on the next start)",
                path.display()
            )),
            DaemonError::Io { source, .. }
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                Some("check the owner and mode of SCRY_HOME (it should be yours, mode 0700)".into())
            }
            _ => None,
        }
    }
}

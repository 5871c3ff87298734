//! The Python agent shipped inside the binary, and unpacking it where a process can import it.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::{DaemonError, Home};

include!(concat!(env!("OUT_DIR"), "/agent_files.rs"));

/// The contents of one bundled file, e.g. `scry_demo.py`.
pub fn file(path: &str) -> Option<&'static str> {
    AGENT_FILES
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, c)| *c)
}

/// Writes the agent package under `dir` (as `dir/scry/...`) unless the same files are already
/// there, and returns `dir`: the directory to put on `sys.path`/`PYTHONPATH`.
pub fn unpack_to(dir: &Path) -> Result<PathBuf, DaemonError> {
    for (rel, contents) in AGENT_FILES {
        let path = dir.join(rel);
        if std::fs::read_to_string(&path).is_ok_and(|t| t == *contents) {
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|source| DaemonError::Io {
                    path: parent.to_owned(),
                    source,
                })?;
        }
        // Write to a temporary name, then rename: a process importing concurrently never
        // sees half a file. Mode 0600 whatever the umask (it lives in $SCRY_HOME, or in a
        // private directory of `scry run`).
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| std::io::Write::write_all(&mut f, contents.as_bytes()))
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|source| DaemonError::Io {
                path: path.clone(),
                source,
            })?;
    }
    Ok(dir.to_owned())
}

/// Unpacks the agent into `$SCRY_HOME/agent/<version>/`.
pub fn unpack(home: &Home) -> Result<PathBuf, DaemonError> {
    unpack_to(&home.agent_dir())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_holds_the_package_and_unpacks() {
        assert!(
            AGENT_FILES.iter().any(|(p, _)| *p == "scry/__init__.py"),
            "the agent package is embedded"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let root = unpack_to(dir.path()).expect("unpack");
        assert!(root.join("scry/__init__.py").is_file());
        // Idempotent.
        unpack_to(dir.path()).expect("unpack again");
    }

    /// The wheel takes its version from Cargo (`pyproject.toml`: `dynamic = ["version"]`), the
    /// agent's `pip install ./python` from `scry/_version.py`: `scry --version` and
    /// `scry.__version__` must say the same.
    #[test]
    fn agent_version_is_the_binary_version() {
        let source = file("scry/_version.py").expect("scry/_version.py is bundled");
        let version = source
            .lines()
            .find_map(|line| {
                let value = line.strip_prefix("__version__")?.trim_start();
                let value = value.strip_prefix('=')?.trim();
                value.strip_prefix('"')?.strip_suffix('"')
            })
            .expect("a line `__version__ = \"X.Y.Z\"` in python/scry/_version.py");
        assert_eq!(
            version,
            env!("CARGO_PKG_VERSION"),
            "python/scry/_version.py and the workspace version in Cargo.toml differ: change both"
        );
    }
}

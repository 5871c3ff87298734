//! The shared token that non-loopback HTTP callers and TCP agents must present.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

use rand::RngCore;

use crate::{env, DaemonError, Home};

/// Compares two secrets in time that does not depend on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token: `SCRY_TOKEN`, else `$SCRY_HOME/token`. When `create` is set and there is none,
/// a new random token is written to the file with mode 0600. A token file that others can
/// read is refused.
pub fn load_token(home: &Home, create: bool) -> Result<Option<String>, DaemonError> {
    if let Some(t) = env::var(env::SCRY_TOKEN) {
        return Ok(Some(t));
    }
    let path = home.token_file();
    match std::fs::metadata(&path) {
        Ok(meta) => {
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(DaemonError::Config {
                    path: path.clone(),
                    message: format!(
                        "the token file is readable by other users; run `chmod 600 {}`",
                        path.display()
                    ),
                });
            }
            let text = std::fs::read_to_string(&path).map_err(|source| DaemonError::Io {
                path: path.clone(),
                source,
            })?;
            Ok(Some(text.trim().to_owned()).filter(|t| !t.is_empty()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !create {
                return Ok(None);
            }
            let mut bytes = [0u8; 24];
            rand::thread_rng().fill_bytes(&mut bytes);
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .and_then(|mut f| f.write_all(token.as_bytes()))
                .map_err(|source| DaemonError::Io {
                    path: path.clone(),
                    source,
                })?;
            Ok(Some(token))
        }
        Err(source) => Err(DaemonError::Io { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    #[test]
    fn token_file_is_created_private_and_insecure_files_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = Home::at(dir.path());
        assert_eq!(load_token(&home, false).expect("none"), None);
        let t = load_token(&home, true).expect("created").expect("token");
        let mode = std::fs::metadata(home.token_file())
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_token(&home, false).expect("read"), Some(t));
        std::fs::set_permissions(home.token_file(), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        let err = load_token(&home, false).expect_err("insecure");
        assert!(err.to_string().contains("token"), "{err}");
    }
}

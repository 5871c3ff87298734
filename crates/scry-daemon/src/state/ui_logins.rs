//! The web UI's one-time sign-in links and the sessions they opened (the access check in
//! [`crate::api::access`] honours them).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a sign-in link is valid.
const LINK_TTL: Duration = Duration::from_secs(120);
/// How long a signed-in browser stays signed in.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// At most this many links and sessions are kept (the oldest go first).
const MAX_KEPT: usize = 256;

/// One-time sign-in links and the web UI sessions they opened. In memory only: a restarted
/// daemon signs every browser out (`scry ui` signs it in again).
#[derive(Default)]
pub struct UiLogins {
    links: Mutex<HashMap<String, Instant>>,
    sessions: Mutex<HashMap<String, Instant>>,
}

impl UiLogins {
    /// A new one-time sign-in secret, valid for two minutes.
    pub fn new_link(&self) -> String {
        let secret = random_secret();
        insert_bounded(&self.links, secret.clone(), Instant::now() + LINK_TTL);
        secret
    }

    /// Uses up a sign-in secret: a new session id if it was valid.
    pub fn redeem(&self, once: &str) -> Option<String> {
        let expires = lock(&self.links).remove(once)?;
        if expires < Instant::now() {
            return None;
        }
        let session = random_secret();
        insert_bounded(
            &self.sessions,
            session.clone(),
            Instant::now() + SESSION_TTL,
        );
        Some(session)
    }

    /// Whether a session id is one this daemon handed out and still honours.
    pub fn is_session(&self, id: &str) -> bool {
        let sessions = lock(&self.sessions);
        // Compared in constant time against each: the ids are secrets.
        sessions.iter().any(|(known, expires)| {
            crate::auth::constant_time_eq(known.as_bytes(), id.as_bytes())
                && *expires > Instant::now()
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn insert_bounded(map: &Mutex<HashMap<String, Instant>>, key: String, expires: Instant) {
    let mut map = lock(map);
    let now = Instant::now();
    map.retain(|_, e| *e > now);
    while map.len() >= MAX_KEPT {
        let Some(oldest) = map.iter().min_by_key(|(_, e)| **e).map(|(k, _)| k.clone()) else {
            break;
        };
        map.remove(&oldest);
    }
    map.insert(key, expires);
}

fn random_secret() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_opens_one_session_once() {
        let logins = UiLogins::default();
        let once = logins.new_link();
        let session = logins.redeem(&once).expect("first use");
        assert!(logins.is_session(&session));
        assert!(logins.redeem(&once).is_none(), "used up");
        assert!(!logins.is_session(&once), "a link is not a session");
        assert!(!logins.is_session("made-up"));
    }
}

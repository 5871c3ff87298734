//! User-facing errors: one clear sentence, the causes, and a `hint:` that says what to do.
//! Exit codes live in [`ExitStatus`].

use std::fmt::Write as _;

/// The exit codes of `scry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It worked.
    Success = 0,
    /// It failed.
    Failure = 1,
    /// The command line was wrong (clap's own code).
    #[allow(dead_code)]
    Usage = 2,
    /// `scry status`: no daemon is running.
    NotRunning = 3,
}

/// An error to show the user.
#[derive(Debug)]
pub struct CliError {
    /// The message.
    pub message: String,
    /// The chain of causes.
    pub causes: Vec<String>,
    /// What to do about it.
    pub hint: Option<String>,
    /// The exit code.
    pub status: ExitStatus,
}

impl CliError {
    /// An error with a message.
    pub fn new(message: impl Into<String>) -> CliError {
        CliError {
            message: message.into(),
            causes: Vec::new(),
            hint: None,
            status: ExitStatus::Failure,
        }
    }

    /// Adds a hint.
    pub fn hint(mut self, hint: impl Into<String>) -> CliError {
        self.hint = Some(hint.into());
        self
    }

    /// From a daemon library error, with its causes and hint.
    pub fn from_daemon(e: scry_daemon::DaemonError) -> CliError {
        let hint = e.hint();
        let mut causes = Vec::new();
        let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(&e);
        while let Some(c) = cur {
            causes.push(c.to_string());
            cur = c.source();
        }
        CliError {
            message: e.to_string(),
            causes,
            hint,
            status: ExitStatus::Failure,
        }
    }

    /// The text printed on stderr.
    pub fn render(&self) -> String {
        let mut s = format!("error: {}", self.message);
        for c in &self.causes {
            let _ = write!(s, "\n  Caused by: {c}");
        }
        if let Some(h) = &self.hint {
            let _ = write!(s, "\n\nhint: {h}");
        }
        s
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::new(format!("output failed: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_error_causes_and_hint() {
        let mut e = CliError::new("cannot listen on 127.0.0.1:7390").hint("choose another port");
        e.causes.push("Address already in use".into());
        assert_eq!(
            e.render(),
            "error: cannot listen on 127.0.0.1:7390\n  Caused by: Address already in use\n\nhint: choose another port"
        );
    }
}

//! Errors: every failed request answers `{"error": Error}` (HTTP) or the same object as an MCP
//! tool's error text.
//!
//! [`ErrorKind`] is the stable part that scripts may branch on; `message` says what happened and
//! `hint`, when there is one, what to do about it (the CLI prints it as `hint:`). Which HTTP status
//! a kind is answered with is the daemon's business (one mapping, in its `api` module).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Declares [`ErrorKind`] with the one string each variant is known by on the wire.
macro_rules! kinds {
    ($($(#[$doc:meta])* $variant:ident => $text:literal,)*) => {
        /// What kind of failure: stable, machine-readable, sent as a snake_case string.
        ///
        /// New kinds may be added; a client reading a kind it does not know gets
        /// [`ErrorKind::Other`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorKind {
            $($(#[$doc])* $variant,)*
            /// A kind this version does not know (sent by a newer daemon).
            Other,
        }

        impl ErrorKind {
            /// Every kind, [`ErrorKind::Other`] excepted.
            pub const ALL: &'static [ErrorKind] = &[$(ErrorKind::$variant,)*];

            /// The kind's wire name, e.g. `not_found`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorKind::$variant => $text,)*
                    ErrorKind::Other => "other",
                }
            }

            /// The kind with this wire name ([`ErrorKind::Other`] for a name it does not know).
            pub fn from_name(name: &str) -> ErrorKind {
                match name {
                    $($text => ErrorKind::$variant,)*
                    _ => ErrorKind::Other,
                }
            }
        }
    };
}

kinds! {
    /// The request is malformed: a field missing or of the wrong type, a value out of range.
    BadRequest => "bad_request",
    /// A probe expression or condition the checker (or the target's Python) refuses.
    InvalidExpression => "invalid_expression",
    /// A location that names no line or function scry can probe.
    BadLocation => "bad_location",
    /// A request body over the daemon's limit.
    TooLarge => "too_large",
    /// No token, or a wrong one, from a TCP caller.
    Unauthorized => "unauthorized",
    /// The caller may not do this (another uid, a cross-site browser request).
    Forbidden => "forbidden",
    /// No such process, probe, trace, dump, session or endpoint.
    NotFound => "not_found",
    /// `scry detach` of a process no attach put an agent into.
    NotAttached => "not_attached",
    /// A name matches several processes.
    Ambiguous => "ambiguous",
    /// The probe's time to live is over.
    Expired => "expired",
    /// The process is known but no agent is connected (it sleeps or is gone).
    NotConnected => "not_connected",
    /// The trace never started in any process.
    NotStarted => "not_started",
    /// No debugger REPL holds the terminal.
    NoRepl => "no_repl",
    /// Someone else is doing this right now.
    Busy => "busy",
    /// The agent, the target or the client did not answer in time.
    Timeout => "timeout",
    /// An attached agent did not say hello in time.
    NoHello => "no_hello",
    /// The agent refused the request.
    Agent => "agent",
    /// A sleeping client's control plane failed.
    ControlPlane => "control_plane",
    /// The agent disconnected before answering.
    Disconnected => "disconnected",
    /// The agent could not remove itself.
    DetachFailed => "detach_failed",
    /// The agent is too old for this feature.
    Unsupported => "unsupported",
    /// No such process (attach: before anything was written).
    NoSuchProcess => "no_such_process",
    /// The process is not a CPython interpreter scry recognises.
    NotPython => "not_python",
    /// A Python version the chosen injector does not support.
    UnsupportedVersion => "unsupported_version",
    /// The target disabled remote debugging (`PYTHON_DISABLE_REMOTE_DEBUG`, `-X disable_remote_debug`).
    RemoteDebugDisabled => "remote_debug_disabled",
    /// The daemon may not read or write the target's memory or files.
    PermissionDenied => "permission_denied",
    /// The target exited during the attach.
    Exited => "exited",
    /// The target's interpreter is not running Python code (finalizing, not initialized).
    NotRunning => "not_running",
    /// The target's memory did not have the layout its version should have.
    BadLayout => "bad_layout",
    /// A path too long for the target's debugger buffer.
    PathTooLong => "path_too_long",
    /// An I/O error while attaching.
    Io => "io",
    /// Python 3.8-3.13 needs gdb to attach and it is not installed.
    GdbMissing => "gdb_missing",
    /// The target has no directory where scry may place its agent.
    NoPlace => "no_place",
    /// Placing the agent's files in the target failed.
    Placement => "placement",
    /// The process cannot import debugpy (the hint says how to install it for its interpreter).
    NoDebugpy => "no_debugpy",
    /// debugpy could not listen (the port is taken, or it failed to start).
    ListenFailed => "listen_failed",
    /// The stacks of a process could not be read from outside.
    Dump => "dump",
    /// The daemon failed (the store, a task): a bug or the machine, not the request.
    Internal => "internal",
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Ok(ErrorKind::from_name(&name))
    }
}

/// A failed request: `{"kind", "message", "hint"}` (`hint` is `null` when there is nothing to say).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Error {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// What happened, for a person.
    pub message: String,
    /// What to do about it.
    #[serde(default)]
    pub hint: Option<String>,
}

impl Error {
    /// An error of this kind.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            hint: None,
        }
    }

    /// The same error with a hint.
    pub fn hint(mut self, hint: impl Into<String>) -> Error {
        self.hint = Some(hint.into());
        self
    }

    /// A malformed request.
    pub fn bad_request(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::BadRequest, message)
    }

    /// Something that does not exist.
    pub fn not_found(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::NotFound, message)
    }

    /// A failure of the daemon itself.
    pub fn internal(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Internal, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// The body of every failed HTTP response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: Error,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_by_name_and_unknown_ones_are_other() {
        for kind in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_name(kind.as_str()), *kind);
        }
        let e: Error =
            serde_json::from_str(r#"{"kind":"from_the_future","message":"m"}"#).expect("parses");
        assert_eq!(e.kind, ErrorKind::Other);
        assert_eq!(e.hint, None);
    }

    #[test]
    fn the_body_has_kind_message_and_a_null_hint() {
        let body = ErrorBody {
            error: Error::not_found("no probe `x`"),
        };
        assert_eq!(
            serde_json::to_value(&body).expect("serializes"),
            serde_json::json!({"error": {"kind": "not_found", "message": "no probe `x`", "hint": null}})
        );
    }
}

//! The one place where a service error becomes an HTTP answer: its status is chosen by its kind
//! here, and its body is `{"error": {"kind", "message", "hint"}}`.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use scry_api::{Error, ErrorBody, ErrorKind};

/// A service error on its way out as an HTTP response.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl ApiError {
    /// An error of this kind, for the checks made before any service runs (access, pages).
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ApiError {
        ApiError(Error::new(kind, message))
    }

    /// The same error with a hint.
    pub fn hint(self, hint: impl Into<String>) -> ApiError {
        ApiError(self.0.hint(hint))
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

/// The HTTP status of each kind of error.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    use ErrorKind as K;
    match kind {
        K::BadRequest | K::InvalidExpression | K::BadLocation => StatusCode::BAD_REQUEST,
        K::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        K::Unauthorized => StatusCode::UNAUTHORIZED,
        K::Forbidden | K::PermissionDenied => StatusCode::FORBIDDEN,
        K::NotFound | K::NotAttached | K::NoSuchProcess => StatusCode::NOT_FOUND,
        K::Ambiguous
        | K::Expired
        | K::NotConnected
        | K::NotStarted
        | K::NoRepl
        | K::Busy
        | K::NotPython
        | K::UnsupportedVersion
        | K::RemoteDebugDisabled
        | K::Exited
        | K::NotRunning
        | K::BadLayout
        | K::PathTooLong
        | K::GdbMissing
        | K::NoPlace
        | K::NoDebugpy
        | K::ListenFailed
        | K::Dump => StatusCode::CONFLICT,
        K::Timeout | K::NoHello => StatusCode::GATEWAY_TIMEOUT,
        K::Agent | K::ControlPlane | K::Disconnected | K::DetachFailed => StatusCode::BAD_GATEWAY,
        K::Unsupported => StatusCode::NOT_IMPLEMENTED,
        K::Io | K::Placement | K::Internal | K::Other => StatusCode::INTERNAL_SERVER_ERROR,
        // A kind added later without a status here is a bug of the daemon, not of the caller.
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status_of(self.0.kind);
        (status, Json(ErrorBody { error: self.0 })).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        ApiError(
            Error::bad_request(format!("invalid JSON body: {}", r.body_text()))
                .hint("send a JSON object with Content-Type: application/json"),
        )
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError(Error::bad_request(format!(
            "invalid query: {}",
            r.body_text()
        )))
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError(Error::bad_request(format!(
            "invalid path: {}",
            r.body_text()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_deliberate_status() {
        for kind in ErrorKind::ALL {
            let status = status_of(*kind);
            assert!(
                status.is_client_error() || status.is_server_error(),
                "{kind}: {status}"
            );
        }
        assert_eq!(status_of(ErrorKind::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(
            status_of(ErrorKind::InvalidExpression),
            StatusCode::BAD_REQUEST
        );
    }
}

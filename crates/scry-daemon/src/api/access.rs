//! Who may command the daemon: the one check in front of every HTTP request.
//!
//! The rule (docs/security.md): only the daemon's own uid and root command it. Loopback is not
//! an identity, since every local user can reach it.
//!
//! - **The local API** is served on `$SCRY_HOME/run/api.sock` (in the 0700 run directory); each
//!   connection's peer uid is read with `SO_PEERCRED` when it is accepted ([`UnixPeer`]) and a
//!   request from any other uid is refused. The CLI, `scry mcp`, `scry run` and `scry ui` use it.
//! - **The TCP listener** (web UI, remote callers, `/mcp` over HTTP) wants proof on every request,
//!   loopback included: `Authorization: Bearer <token>`, or `?token=` on a server-sent-event stream
//!   (an `EventSource` cannot set headers), or the web UI's session cookie. The cookie is handed
//!   out by a one-time sign-in link that only an authorised caller can ask for
//!   ([`crate::state::ui_logins::UiLogins`]:
//!   `scry ui`), is `HttpOnly` and `SameSite=Strict`, and a request carrying it must not come
//!   from another site's page (`Origin`). Without proof only two things answer: the sign-in link
//!   itself and `GET /api/v1/agent-endpoint` (where an agent's link goes: no secret, and an agent
//!   must never send its token to a daemon it has not authenticated yet).
//!
//! Not for: agent links (the agent socket checks its peer in `lib.rs`, TCP agents prove the token
//! in `link.rs`), or what a caller may do once let in (everyone let in is the owner).

use std::sync::Arc;

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::serve::IncomingStream;
use tokio::net::UnixListener;

use scry_api::ErrorKind;

use super::ApiError;
use crate::state::ui_logins::SESSION_TTL;
use crate::Shared;

/// The peer of a connection to the local API socket, read when it was accepted.
#[derive(Debug, Clone, Copy)]
pub struct UnixPeer {
    /// Its uid (`None` when the kernel would not say).
    pub uid: Option<u32>,
    /// Its pid.
    pub pid: Option<i32>,
}

impl Connected<IncomingStream<'_, UnixListener>> for UnixPeer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        let cred = stream.io().peer_cred().ok();
        UnixPeer {
            uid: cred.as_ref().map(|c| c.uid()),
            pid: cred.and_then(|c| c.pid()),
        }
    }
}

/// The name of the session cookie of the daemon on `port`: cookies are per host, not per port,
/// so two daemons on one machine must not overwrite each other's.
pub fn cookie_name(port: u16) -> String {
    format!("scry_session_{port}")
}

/// The `Set-Cookie` value that signs a browser in.
pub fn session_cookie(port: u16, session: &str) -> HeaderValue {
    let text = format!(
        "{}={session}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        cookie_name(port),
        SESSION_TTL.as_secs()
    );
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Requests that answer without proof on the TCP listener.
fn is_public(method: &Method, path: &str) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && (path == crate::api::web::LOGIN_PATH || path == "/api/v1/agent-endpoint")
}

/// The largest request body the daemon reads.
const MAX_BODY: usize = 16 << 20;

/// Reads the whole request body before a handler runs. A handler that answers without reading
/// the body (a 404, a route that takes none) would otherwise make the server close the
/// connection while the caller is still writing, which a unix-socket caller sees at once as
/// EPIPE instead of the answer.
async fn buffered(req: Request) -> Result<Request, Response> {
    let (parts, body) = req.into_parts();
    match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(bytes) => Ok(Request::from_parts(parts, axum::body::Body::from(bytes))),
        Err(e) => Err(ApiError::new(
            ErrorKind::TooLarge,
            format!("the request body could not be read (at most {MAX_BODY} bytes): {e}"),
        )
        .into_response()),
    }
}

/// The middleware: lets the owner in, refuses everyone else with a reason and a hint.
pub async fn check(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let mut req = match buffered(req).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<UnixPeer>>().copied() {
        return match peer.uid {
            Some(uid) if uid == shared.owner_uid || uid == 0 => next.run(req).await,
            other => {
                tracing::warn!(target: "http", uid = ?other, pid = ?peer.pid, "refused a local API caller of another user");
                ApiError::new(
                    ErrorKind::Forbidden,
                    format!(
                        "this daemon takes commands from uid {} and root only{}",
                        shared.owner_uid,
                        other.map(|u| format!(", not uid {u}")).unwrap_or_default()
                    ),
                )
                .hint("start a daemon of your own: `scry serve --daemon` (with your own SCRY_HOME)")
                .into_response()
            }
        };
    }
    // The TCP listener. A browser's EventSource cannot send headers: the streams take `?token=`,
    // which is removed here so that no handler (their queries refuse unknown fields) or log
    // ever sees it.
    let mut query_token = None;
    if crate::api::web::is_event_stream(req.method(), req.uri().path()) {
        let (token, uri) = crate::api::web::take_query_token(req.uri());
        query_token = token;
        *req.uri_mut() = uri;
    }
    if is_public(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    let Some(want) = shared.token.as_deref() else {
        return ApiError::new(ErrorKind::Forbidden,
            "this daemon has no token, so its TCP listener serves nobody",
        )
        .hint("use the local API (the CLI does), or give the daemon a token (SCRY_TOKEN or $SCRY_HOME/token)")
        .into_response();
    };
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or(query_token.as_deref());
    if let Some(got) = bearer {
        if crate::auth::constant_time_eq(got.as_bytes(), want.as_bytes()) {
            return next.run(req).await;
        }
        return ApiError::new(ErrorKind::Unauthorized, "wrong token")
            .hint("send `Authorization: Bearer <token>` with the daemon's token ($SCRY_HOME/token of the daemon's user)")
            .into_response();
    }
    let cookie = session_of(req.headers(), &cookie_name(shared.http_addr.port()));
    if let Some(session) = &cookie {
        if shared.ui_logins.is_session(session) {
            if let Err(e) = same_site(req.headers()) {
                return e.into_response();
            }
            return next.run(req).await;
        }
    }
    let signed_out = cookie.is_some();
    if is_page(req.method(), req.uri().path()) {
        return (StatusCode::UNAUTHORIZED, Html(sign_in_page(signed_out))).into_response();
    }
    ApiError::new(ErrorKind::Unauthorized,
        "this request needs the daemon's token",
    )
    .hint("send `Authorization: Bearer <token>` (the token is $SCRY_HOME/token of the daemon's user); on this machine the CLI needs none, it uses the local socket")
    .into_response()
}

fn is_page(method: &Method, path: &str) -> bool {
    method == Method::GET && (path == "/" || path.starts_with("/ui/"))
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn session_of(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// A request carrying the session cookie must come from the UI's own page: a browser sends
/// `Origin` with every cross-site POST (which needs no CORS preflight), so another site's Origin
/// is refused. `SameSite=Strict` already keeps the cookie off cross-site requests; this is the
/// second lock.
fn same_site(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let same = host.is_some_and(|h| {
        origin
            .strip_prefix("http://")
            .is_some_and(|o| o.eq_ignore_ascii_case(h))
    });
    if same {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorKind::Forbidden,
            format!("requests from the web page at {origin} are not accepted"),
        )
        .hint("only the daemon's own web UI (scry ui) may call the API from a browser"))
    }
}

fn sign_in_page(stale: bool) -> String {
    let why = if stale {
        "This browser's session has ended (the daemon restarted, or it expired)."
    } else {
        "This browser is not signed in to this scry daemon."
    };
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>scry: sign in</title></head>\
         <body><h1>scry</h1><p>{why}</p><p>Run <code>scry ui</code> on the daemon's machine, as \
         the daemon's user: it opens this page signed in (a one-time link).</p></body></html>"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_and_origins() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; scry_session_7390=abc; b=2"),
        );
        assert_eq!(session_of(&h, "scry_session_7390").as_deref(), Some("abc"));
        assert_eq!(session_of(&h, "scry_session_7391"), None);
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:7390"));
        assert!(same_site(&h).is_ok());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:7390"),
        );
        assert!(same_site(&h).is_ok());
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(same_site(&h).is_err());
    }

    #[test]
    fn only_the_link_and_the_agent_endpoint_are_public() {
        assert!(is_public(&Method::GET, "/login"));
        assert!(is_public(&Method::GET, "/api/v1/agent-endpoint"));
        assert!(!is_public(&Method::GET, "/"));
        assert!(!is_public(&Method::GET, "/api/v1/health"));
        assert!(!is_public(&Method::POST, "/api/v1/probes"));
        assert!(!is_public(&Method::POST, "/mcp"));
    }
}

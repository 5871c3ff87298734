//! The web UI: the static files of `web/` (embedded by `build.rs`), served at `/` and
//! `/ui/{file}`, and the rules by which a browser gets past the token check.
//!
//! A browser signs in through a one-time link (`/login?once=…`) that `scry ui` asks for over the
//! local socket (`POST /api/v1/ui/login`): the link sets an `HttpOnly`, `SameSite=Strict`
//! session cookie and sends the browser on to `/`. Every file and every API call of the page then
//! goes through the access check with that cookie (see `access.rs`); a browser that is not
//! signed in gets a page saying how to sign in.
//!
//! Every file is sent with a Content-Security-Policy that allows only this origin: the UI
//! loads nothing from, and sends nothing to, any other host.
//!
//! Not for: templating or any server-side rendering; the page builds itself from the REST API.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use scry_api::ErrorKind;

use super::{route, ApiError, Route};
use crate::service;
use crate::Shared;

include!(concat!(env!("OUT_DIR"), "/web_files.rs"));

/// The policy sent with every UI file: this origin only, no inline code, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
form-action 'none'; frame-ancestors 'none'";

/// Where a one-time sign-in link points.
pub const LOGIN_PATH: &str = "/login";

/// The UI's pages: the page, its files, and where a sign-in link lands.
pub fn pages() -> Router<Arc<Shared>> {
    Router::new()
        .route("/", get(index))
        .route("/ui/{file}", get(file))
        .route(LOGIN_PATH, get(login))
}

pub(super) fn routes() -> Vec<Route> {
    vec![route(
        "/api/v1/ui/login",
        &[("POST", "daemon::ui_login_link")],
        post(new_login_link),
    )]
}

/// `POST /api/v1/ui/login`: a one-time sign-in link for the web UI (`scry ui` asks for it; only
/// a caller who passed the access check can).
async fn new_login_link(State(shared): State<Arc<Shared>>) -> Json<scry_api::UiLoginLink> {
    Json(service::daemon::ui_login_link(&shared, LOGIN_PATH))
}

#[derive(Deserialize)]
struct LoginQuery {
    once: Option<String>,
}

/// `GET /login?once=…`: uses the link up, sets the session cookie, goes on to the UI.
async fn login(State(shared): State<Arc<Shared>>, Query(q): Query<LoginQuery>) -> Response {
    let session = q.once.as_deref().and_then(|o| shared.ui_logins.redeem(o));
    let Some(session) = session else {
        return (
            StatusCode::UNAUTHORIZED,
            Html(
                "<!doctype html><html><head><meta charset=\"utf-8\"><title>scry: sign in</title></head>\
                 <body><h1>scry</h1><p>This sign-in link was already used or has expired (links \
                 work once, for two minutes).</p><p>Run <code>scry ui</code> again for a new one.</p>\
                 </body></html>",
            ),
        )
            .into_response();
    };
    let mut resp = (StatusCode::SEE_OTHER, "signed in").into_response();
    let h = resp.headers_mut();
    h.insert(header::LOCATION, HeaderValue::from_static("/"));
    h.insert(
        header::SET_COOKIE,
        crate::api::access::session_cookie(shared.http_addr.port(), &session),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// The contents of one embedded UI file, e.g. `index.html`.
pub fn asset(name: &str) -> Option<&'static str> {
    WEB_FILES.iter().find(|(n, _)| *n == name).map(|(_, c)| *c)
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("json") => "application/json",
        _ => "text/plain; charset=utf-8",
    }
}

fn serve(name: &str) -> Response {
    let Some(body) = asset(name) else {
        return ApiError::new(
            ErrorKind::NotFound,
            format!("the web UI has no file `{name}`"),
        )
        .hint("open the UI at `/` (see `scry ui`)")
        .into_response();
    };
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(name)),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // A newer daemon serves newer files: never let a browser keep an old copy.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

async fn index() -> Response {
    serve("index.html")
}

async fn file(Path(name): Path<String>) -> Response {
    serve(&name)
}

/// Whether a request is for a server-sent-event stream, the only place `?token=` is accepted.
pub fn is_event_stream(method: &Method, path: &str) -> bool {
    method == Method::GET && path.starts_with("/api/v1/") && path.ends_with("/stream")
}

/// Splits `token=…` out of a URI's query: the token (percent-decoded) and the URI without it.
pub fn take_query_token(uri: &Uri) -> (Option<String>, Uri) {
    let Some(query) = uri.query() else {
        return (None, uri.clone());
    };
    let mut token = None;
    let mut kept: Vec<&str> = Vec::new();
    for pair in query.split('&') {
        match pair.strip_prefix("token=") {
            Some(t) => token = Some(percent_decode(t)),
            None if pair.is_empty() => {}
            None => kept.push(pair),
        }
    }
    if token.is_none() {
        return (None, uri.clone());
    }
    let path_and_query = if kept.is_empty() {
        uri.path().to_owned()
    } else {
        format!("{}?{}", uri.path(), kept.join("&"))
    };
    let rebuilt = path_and_query
        .parse::<Uri>()
        .unwrap_or_else(|_| uri.clone());
    (token, rebuilt)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_files_are_embedded() {
        let index = asset("index.html").expect("index.html");
        assert!(index.contains("<html"));
        // Every file the page names is served.
        for name in ["app.js", "style.css"] {
            assert!(asset(name).is_some(), "{name} is embedded");
            assert!(index.contains(&format!("/ui/{name}")), "index loads {name}");
        }
        assert!(asset("../Cargo.toml").is_none());
    }

    #[test]
    fn nothing_external_is_referenced() {
        for (name, body) in WEB_FILES {
            // The SVG namespace is a name, never fetched.
            let body = body.replace("http://www.w3.org/2000/svg", "");
            for bad in ["http://", "https://", "//cdn", "@import", "url("] {
                assert!(!body.contains(bad), "{name} mentions {bad}");
            }
        }
    }

    #[test]
    fn streams() {
        assert!(is_event_stream(&Method::GET, "/api/v1/stream"));
        assert!(is_event_stream(&Method::GET, "/api/v1/events/stream"));
        assert!(!is_event_stream(&Method::POST, "/api/v1/stream"));
        assert!(!is_event_stream(&Method::GET, "/api/v1/processes"));
    }

    #[test]
    fn the_query_token_is_taken_out() {
        let uri: Uri = "/api/v1/events/stream?probe=x&token=ab%2Bc&pid=4"
            .parse()
            .expect("uri");
        let (t, rest) = take_query_token(&uri);
        assert_eq!(t.as_deref(), Some("ab+c"));
        assert_eq!(rest.to_string(), "/api/v1/events/stream?probe=x&pid=4");
        let uri: Uri = "/api/v1/stream?token=abc".parse().expect("uri");
        let (t, rest) = take_query_token(&uri);
        assert_eq!(t.as_deref(), Some("abc"));
        assert_eq!(rest.to_string(), "/api/v1/stream");
        let uri: Uri = "/api/v1/stream?topics=event".parse().expect("uri");
        assert_eq!(take_query_token(&uri).0, None);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}

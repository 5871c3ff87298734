//! The daemon's HTTP API: REST under `/api/v1/`, server-sent events for live streams, the web
//! UI, and `/mcp` mounted beside them.
//!
//! Each handler is an adapter: it extracts the request, calls one [`crate::service`] function
//! and returns its answer as JSON. Every error is the service's [`scry_api::Error`], given its
//! status in one place ([`error`]). Who may call is decided in front of every route by
//! [`access`]: the owner over the local socket, or a caller with the token (or the web UI's
//! session) over TCP.
//!
//! Not for: what the daemon does (that is [`crate::service`]); only this module and its children
//! import axum.

pub mod access;
pub mod attach;
pub mod calls;
pub mod daemon;
pub mod debug;
pub mod dumps;
pub mod error;
pub mod events;
pub mod lines;
pub mod listen;
pub mod metrics;
pub mod probes;
pub mod processes;
pub mod repl;
pub mod sse;
pub mod traces;
pub mod web;

use std::sync::Arc;

use axum::extract::Request;
use axum::middleware;
use axum::routing::MethodRouter;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;

pub use error::ApiError;

use crate::Shared;

/// What a JSON handler answers.
pub type ApiResult<T = Value> = Result<Json<T>, ApiError>;

/// One REST route: its path, its methods, and for each method the service function it calls
/// (a test checks that every route maps to service functions that exist).
pub struct Route {
    /// The path, with `{param}` segments.
    pub path: &'static str,
    /// `(method, service function)` pairs, e.g. `("GET", "probes::list")` for
    /// `service::probes::list`.
    pub serves: &'static [(&'static str, &'static str)],
    methods: MethodRouter<Arc<Shared>>,
}

/// A route of a resource module.
fn route(
    path: &'static str,
    serves: &'static [(&'static str, &'static str)],
    methods: MethodRouter<Arc<Shared>>,
) -> Route {
    Route {
        path,
        serves,
        methods,
    }
}

/// Every REST route of the API, by resource.
pub fn routes() -> Vec<Route> {
    [
        daemon::routes(),
        processes::routes(),
        probes::routes(),
        events::routes(),
        lines::routes(),
        calls::routes(),
        attach::routes(),
        debug::routes(),
        traces::routes(),
        dumps::routes(),
        metrics::routes(),
        repl::routes(),
        web::routes(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Builds the router: the REST API, MCP at `/mcp`, the web UI, with the access check of
/// [`access`] in front of all of them. The same router serves the local API socket and the TCP
/// listener; the check tells them apart by their connection info.
pub fn router(shared: Arc<Shared>) -> Router {
    let mut api = Router::new();
    for route in routes() {
        api = api.route(route.path, route.methods);
    }
    api.merge(web::pages())
        .nest_service("/mcp", crate::mcp::service(shared.clone()))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            access::check,
        ))
        .with_state(shared)
}

/// `?limit=N` of the list endpoints (kept dumps, traces); nothing else is accepted.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    pub(crate) limit: Option<usize>,
}

/// A pid from a URL path segment, or a 400 saying it is not one.
pub(crate) fn parse_pid(text: &str) -> Result<u32, ApiError> {
    text.parse().map_err(|_| {
        ApiError(scry_api::Error::bad_request(format!(
            "`{text}` is not a pid"
        )))
    })
}

async fn not_found(req: Request) -> ApiError {
    ApiError(
        scry_api::Error::not_found(format!(
            "no such endpoint: {} {}",
            req.method(),
            req.uri().path()
        ))
        .hint("the API lives under /api/v1/ (see docs/architecture.md)"),
    )
}

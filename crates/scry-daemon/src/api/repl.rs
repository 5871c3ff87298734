//! `/api/v1/repl/sessions/...`: the terminal sessions of the REPL relay, and
//! `POST /api/v1/processes/{pid}/repl` (break into a process).

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Json;
use scry_api::{
    BreakIn, BrokenIn, CompleteRequest, Completions, NewReplSession, ReplInput, ReplSent,
    ReplSessionCreated, ReplSessionDeleted, ReplSessionState, ReplSwitch,
};

use super::{parse_pid, route, ApiError, ApiResult, Route};
use crate::service::repl;
use crate::Shared;

pub(super) fn routes() -> Vec<Route> {
    vec![
        route(
            "/api/v1/repl/sessions",
            &[("POST", "repl::create_session")],
            post(create),
        ),
        route(
            "/api/v1/repl/sessions/{id}",
            &[("GET", "repl::state"), ("DELETE", "repl::delete_session")],
            get(state).delete(delete_session),
        ),
        route(
            "/api/v1/repl/sessions/{id}/stream",
            &[("GET", "repl::terminal")],
            get(stream),
        ),
        route(
            "/api/v1/repl/sessions/{id}/input",
            &[("POST", "repl::input")],
            post(input),
        ),
        route(
            "/api/v1/repl/sessions/{id}/interrupt",
            &[("POST", "repl::interrupt")],
            post(interrupt),
        ),
        route(
            "/api/v1/repl/sessions/{id}/switch",
            &[("POST", "repl::switch")],
            post(switch),
        ),
        route(
            "/api/v1/repl/sessions/{id}/complete",
            &[("POST", "repl::complete")],
            post(complete),
        ),
        route(
            "/api/v1/processes/{pid}/repl",
            &[("POST", "repl::break_in")],
            post(break_in),
        ),
    ]
}

async fn create(
    State(shared): State<Arc<Shared>>,
    body: Option<Json<NewReplSession>>,
) -> Json<ReplSessionCreated> {
    let name = body.and_then(|Json(b)| b.name);
    let id = repl::create_session(&shared, name);
    Json(ReplSessionCreated { id })
}

async fn state(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> ApiResult<ReplSessionState> {
    Ok(Json(repl::state(&shared, &id)?))
}

async fn delete_session(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> ApiResult<ReplSessionDeleted> {
    Ok(Json(repl::delete_session(&shared, &id)?))
}

/// The terminal's events as JSON lines, until the daemon stops.
async fn stream(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let rx = repl::terminal(&shared, &id)?;
    let mut stop = shared.shutdown_signal();
    let lines = futures_util::stream::unfold(rx, |mut rx| async move {
        let ev = rx.recv().await?;
        // The events are plain data and always serialize; were one not to, the terminal is
        // better off without it than with the stream ended.
        let line = match serde_json::to_string(&ev) {
            Ok(mut line) => {
                line.push('\n');
                line
            }
            Err(e) => {
                tracing::warn!(target: "repl", "terminal event not sent: {e}");
                String::new()
            }
        };
        Some((Ok::<_, Infallible>(Bytes::from(line)), rx))
    });
    let lines = futures_util::StreamExt::take_until(lines, async move {
        let _ = stop.wait_for(|s| *s).await;
    });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(lines))
        .map_err(|e| ApiError(scry_api::Error::internal(e.to_string())))
}

async fn input(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Result<Json<ReplInput>, JsonRejection>,
) -> ApiResult<ReplSent> {
    let Json(body) = body?;
    Ok(Json(repl::input(&shared, &id, body.line)?))
}

async fn interrupt(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> ApiResult<ReplSent> {
    Ok(Json(repl::interrupt(&shared, &id)?))
}

async fn complete(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Result<Json<CompleteRequest>, JsonRejection>,
) -> ApiResult<Completions> {
    let Json(req) = body?;
    Ok(Json(repl::complete(&shared, &id, req).await?))
}

async fn break_in(
    State(shared): State<Arc<Shared>>,
    Path(pid): Path<String>,
    body: Option<Json<BreakIn>>,
) -> ApiResult<BrokenIn> {
    let pid = parse_pid(&pid)?;
    let thread = body.and_then(|Json(b)| b.thread);
    Ok(Json(repl::break_in(&shared, pid, thread).await?))
}

async fn switch(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Result<Json<ReplSwitch>, JsonRejection>,
) -> ApiResult<ReplSessionState> {
    let Json(to) = body?;
    Ok(Json(repl::switch(&shared, &id, &to)?))
}

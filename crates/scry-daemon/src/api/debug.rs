//! `POST /api/v1/debug`: start debugpy in a running process, on loopback.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::Query;
use axum::routing::{get, post};
use axum::Json;
use scry_api::{DebugReport, DebugRequest, DebugTarget, NextWorker};
use serde::Deserialize;

use super::{route, ApiResult, Route};
use crate::service::debug;

pub(super) fn routes() -> Vec<Route> {
    vec![
        route("/api/v1/debug", &[("POST", "debug::start")], post(start)),
        route(
            "/api/v1/debug/target",
            &[("GET", "debug::target")],
            get(target),
        ),
        route(
            "/api/v1/debug/next",
            &[("GET", "debug::next_worker")],
            get(next_worker),
        ),
    ]
}

async fn start(body: Result<Json<DebugRequest>, JsonRejection>) -> ApiResult<DebugReport> {
    let Json(req) = body?;
    Ok(Json(debug::start(&req).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetQuery {
    pid: u32,
    timeout_ms: Option<f64>,
}

async fn target(q: Result<Query<TargetQuery>, QueryRejection>) -> ApiResult<DebugTarget> {
    let Query(q) = q?;
    Ok(Json(debug::target(q.pid, q.timeout_ms).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NextQuery {
    supervisor: u32,
    after: u32,
    port: u16,
    wait_ms: Option<f64>,
}

async fn next_worker(q: Result<Query<NextQuery>, QueryRejection>) -> ApiResult<NextWorker> {
    let Query(q) = q?;
    Ok(Json(
        debug::next_worker(q.supervisor, q.after, q.port, q.wait_ms).await?,
    ))
}

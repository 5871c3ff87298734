//! `POST /api/v1/debug`: start debugpy in a running process, on loopback.

use axum::extract::rejection::JsonRejection;
use axum::routing::post;
use axum::Json;
use scry_api::{DebugReport, DebugRequest};

use super::{route, ApiResult, Route};
use crate::service::debug;

pub(super) fn routes() -> Vec<Route> {
    vec![route(
        "/api/v1/debug",
        &[("POST", "debug::start")],
        post(start),
    )]
}

async fn start(body: Result<Json<DebugRequest>, JsonRejection>) -> ApiResult<DebugReport> {
    let Json(req) = body?;
    Ok(Json(debug::start(&req).await?))
}

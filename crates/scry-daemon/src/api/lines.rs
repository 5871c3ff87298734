//! `POST /api/v1/lines`: the executable lines of a file or function in a live process.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::routing::post;
use axum::Json;

use super::{route, ApiResult, Route};
use crate::service::lines;
use crate::Shared;
use scry_api::{FoundLines, LinesRequest};

pub(super) fn routes() -> Vec<Route> {
    vec![route(
        "/api/v1/lines",
        &[("POST", "lines::find_lines")],
        post(find),
    )]
}

async fn find(
    State(shared): State<Arc<Shared>>,
    body: Result<Json<LinesRequest>, JsonRejection>,
) -> ApiResult<FoundLines> {
    let Json(req) = body?;
    Ok(Json(lines::find_lines(&shared, req).await?))
}

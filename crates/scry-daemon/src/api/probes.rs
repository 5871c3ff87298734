//! `/api/v1/probes` (one, all, by group) and the live hits of `/api/v1/events/stream`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::routing::{get, post};
use axum::Json;
use futures_util::Stream;
use scry_api::{NewProbe, ProbeList, ProbeView, Removed};
use serde::Deserialize;

use super::{route, ApiError, ApiResult, Route};
use crate::service::probes;
use crate::Shared;

pub(super) fn routes() -> Vec<Route> {
    vec![
        route(
            "/api/v1/probes",
            &[
                ("GET", "probes::list"),
                ("POST", "probes::add"),
                ("DELETE", "probes::remove_group"),
            ],
            get(list).post(add).delete(remove_group),
        ),
        route(
            "/api/v1/probes/{key}",
            &[("GET", "probes::get"), ("DELETE", "probes::remove")],
            get(show).delete(remove),
        ),
        route(
            "/api/v1/probes/{key}/enable",
            &[("POST", "probes::enable")],
            post(enable),
        ),
        route(
            "/api/v1/probes/{key}/disable",
            &[("POST", "probes::disable")],
            post(disable),
        ),
        route(
            "/api/v1/groups/{group}/enable",
            &[("POST", "probes::enable_group")],
            post(enable_group),
        ),
        route(
            "/api/v1/groups/{group}/disable",
            &[("POST", "probes::disable_group")],
            post(disable_group),
        ),
        route(
            "/api/v1/events/stream",
            &[("GET", "probes::live_hits")],
            get(stream),
        ),
    ]
}

async fn list(State(shared): State<Arc<Shared>>) -> Json<ProbeList> {
    Json(probes::list(&shared))
}

async fn show(State(shared): State<Arc<Shared>>, Path(key): Path<String>) -> ApiResult<ProbeView> {
    Ok(Json(probes::get(&shared, &key)?))
}

async fn add(
    State(shared): State<Arc<Shared>>,
    body: Result<Json<NewProbe>, JsonRejection>,
) -> Result<(StatusCode, Json<ProbeView>), ApiError> {
    let Json(req) = body?;
    Ok((StatusCode::CREATED, Json(probes::add(&shared, req).await?)))
}

async fn remove(State(shared): State<Arc<Shared>>, Path(key): Path<String>) -> ApiResult<Removed> {
    Ok(Json(probes::remove(&shared, &key).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupQuery {
    group: Option<String>,
}

async fn remove_group(
    State(shared): State<Arc<Shared>>,
    q: Result<Query<GroupQuery>, QueryRejection>,
) -> ApiResult<Removed> {
    let Query(q) = q?;
    let group = q.group.ok_or_else(|| {
        scry_api::Error::bad_request("name a group: DELETE /api/v1/probes?group=G")
    })?;
    Ok(Json(probes::remove_group(&shared, &group).await?))
}

async fn enable(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
) -> ApiResult<ProbeList> {
    Ok(Json(probes::enable(&shared, &key).await?))
}

async fn disable(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
) -> ApiResult<ProbeList> {
    Ok(Json(probes::disable(&shared, &key).await?))
}

async fn enable_group(
    State(shared): State<Arc<Shared>>,
    Path(group): Path<String>,
) -> ApiResult<ProbeList> {
    Ok(Json(probes::enable_group(&shared, &group).await?))
}

async fn disable_group(
    State(shared): State<Arc<Shared>>,
    Path(group): Path<String>,
) -> ApiResult<ProbeList> {
    Ok(Json(probes::disable_group(&shared, &group).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamQuery {
    probe: Option<String>,
    pid: Option<u32>,
}

async fn stream(
    State(shared): State<Arc<Shared>>,
    q: Result<Query<StreamQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let Query(q) = q?;
    let pick = probes::live_hits(&shared, q.probe, q.pid)?;
    Ok(super::sse::live(&shared, pick))
}

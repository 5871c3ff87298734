//! `/api/v1/traces`: start, stop (by id, or those of a process), list and show call traces,
//! read their events, follow them live.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::routing::{get, post};
use axum::Json;
use futures_util::Stream;
use scry_api::{NewTrace, StopTraces, TraceEvents, TraceList, TraceView};
use serde::Deserialize;

use super::{route, ApiError, ApiResult, ListQuery, Route};
use crate::service::traces;
use crate::Shared;

pub(super) fn routes() -> Vec<Route> {
    vec![
        route(
            "/api/v1/traces",
            &[("GET", "traces::list"), ("POST", "traces::start")],
            get(list).post(start),
        ),
        route(
            "/api/v1/traces/stop",
            &[("POST", "traces::stop_in")],
            post(stop_in),
        ),
        route("/api/v1/traces/{id}", &[("GET", "traces::get")], get(show)),
        route(
            "/api/v1/traces/{id}/stop",
            &[("POST", "traces::stop")],
            post(stop),
        ),
        route(
            "/api/v1/traces/{id}/events",
            &[("GET", "traces::events")],
            get(events),
        ),
        route(
            "/api/v1/traces/{id}/stream",
            &[("GET", "traces::live")],
            get(stream),
        ),
    ]
}

async fn start(
    State(shared): State<Arc<Shared>>,
    body: Result<Json<NewTrace>, JsonRejection>,
) -> ApiResult<TraceView> {
    let Json(body) = body?;
    Ok(Json(traces::start(&shared, body).await?))
}

async fn list(
    State(shared): State<Arc<Shared>>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<TraceList> {
    let Query(q) = q?;
    Ok(Json(traces::list(&shared, q.limit).await?))
}

async fn show(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> ApiResult<TraceView> {
    Ok(Json(traces::get(&shared, &id).await?))
}

async fn stop(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> ApiResult<TraceView> {
    Ok(Json(traces::stop(&shared, &id).await?))
}

async fn stop_in(
    State(shared): State<Arc<Shared>>,
    body: Result<Json<StopTraces>, JsonRejection>,
) -> ApiResult<TraceList> {
    let Json(body) = body?;
    Ok(Json(traces::stop_in(&shared, &body.target).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    after_id: Option<i64>,
    limit: Option<usize>,
}

async fn events(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> ApiResult<TraceEvents> {
    let Query(q) = q?;
    Ok(Json(
        traces::events(&shared, &id, q.after_id, q.limit).await?,
    ))
}

async fn stream(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let pick = traces::live(&shared, id).await?;
    Ok(super::sse::live(&shared, pick))
}

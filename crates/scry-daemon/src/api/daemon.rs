//! `/api/v1/health`, `status`, `shutdown`, `restore`, `agent-endpoint`, `system-events` and the live stream
//! of everything (`/api/v1/stream`).

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::routing::{get, post};
use axum::Json;
use futures_util::Stream;
use scry_api::{AgentEndpoint, DaemonStatus, Health, Restored, Stopping, SystemEventList};
use serde::Deserialize;

use super::{route, ApiError, ApiResult, Route};
use crate::service;
use crate::Shared;

pub(super) fn routes() -> Vec<Route> {
    vec![
        route("/api/v1/health", &[("GET", "daemon::health")], get(health)),
        route("/api/v1/status", &[("GET", "daemon::status")], get(status)),
        route(
            "/api/v1/shutdown",
            &[("POST", "daemon::shutdown")],
            post(shutdown),
        ),
        route(
            "/api/v1/restore",
            &[("POST", "daemon::restore")],
            post(restore),
        ),
        route(
            "/api/v1/agent-endpoint",
            &[("GET", "daemon::agent_endpoint")],
            get(agent_endpoint),
        ),
        route(
            "/api/v1/system-events",
            &[("GET", "daemon::system_events")],
            get(system_events),
        ),
        route("/api/v1/stream", &[("GET", "daemon::live")], get(stream)),
    ]
}

async fn health() -> Json<Health> {
    Json(service::daemon::health())
}

async fn status(State(shared): State<Arc<Shared>>) -> ApiResult<DaemonStatus> {
    Ok(Json(service::daemon::status(&shared).await?))
}

async fn shutdown(State(shared): State<Arc<Shared>>) -> Json<Stopping> {
    Json(service::daemon::shutdown(&shared))
}

async fn restore(State(shared): State<Arc<Shared>>) -> ApiResult<Restored> {
    Ok(Json(service::daemon::restore(&shared).await?))
}

async fn agent_endpoint(State(shared): State<Arc<Shared>>) -> Json<AgentEndpoint> {
    Json(service::daemon::agent_endpoint(&shared))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SystemEventsQuery {
    since: Option<f64>,
    limit: Option<usize>,
}

async fn system_events(
    State(shared): State<Arc<Shared>>,
    q: Result<Query<SystemEventsQuery>, QueryRejection>,
) -> ApiResult<SystemEventList> {
    let Query(q) = q?;
    Ok(Json(
        service::daemon::system_events(&shared, q.since, q.limit).await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamQuery {
    topics: Option<String>,
}

async fn stream(
    State(shared): State<Arc<Shared>>,
    q: Result<Query<StreamQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let Query(q) = q?;
    let topics: Option<Vec<String>> = q.topics.map(|t| {
        t.split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    });
    Ok(super::sse::live(&shared, move |ev| {
        service::daemon::live(ev, topics.as_deref())
    }))
}

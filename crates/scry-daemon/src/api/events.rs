//! `GET /api/v1/events`, `/api/v1/events/stats`, `/api/v1/events/wait`: stored events, their
//! statistics, and waiting for new ones.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::Json;
use serde::Deserialize;

use super::{route, ApiResult, Route};
use crate::service::events;
use crate::Shared;
use scry_api::{EventFilter, EventPage, EventStats, EventWait};

pub(super) fn routes() -> Vec<Route> {
    vec![
        route("/api/v1/events", &[("GET", "events::page")], get(page)),
        route(
            "/api/v1/events/stats",
            &[("GET", "events::stats_of")],
            get(stats),
        ),
        route(
            "/api/v1/events/wait",
            &[("GET", "events::wait_for")],
            get(wait),
        ),
    ]
}

/// The query string of the three routes: the filter, and what each route adds.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    // Not `#[serde(flatten)] EventFilter`: a flattened struct gets every query value as a
    // string and refuses `pid=5` as a number.
    probe: Option<String>,
    pid: Option<u32>,
    process: Option<String>,
    process_id: Option<i64>,
    source: Option<String>,
    kind: Option<String>,
    since: Option<String>,
    until: Option<String>,
    #[serde(rename = "where")]
    where_: Option<String>,
    after_id: Option<i64>,
    limit: Option<usize>,
    order: Option<String>,
    /// wait: how many new events.
    count: Option<usize>,
    /// wait: seconds at most.
    timeout: Option<f64>,
}

impl Params {
    fn filter(&self) -> EventFilter {
        EventFilter {
            probe: self.probe.clone(),
            pid: self.pid,
            process: self.process.clone(),
            process_id: self.process_id,
            source: self.source.clone(),
            kind: self.kind.clone(),
            since: self.since.clone(),
            until: self.until.clone(),
            where_: self.where_.clone(),
            after_id: self.after_id,
        }
    }
}

async fn page(
    State(shared): State<Arc<Shared>>,
    q: Result<Query<Params>, QueryRejection>,
) -> ApiResult<EventPage> {
    let Query(q) = q?;
    Ok(Json(
        events::page(&shared, &q.filter(), q.limit, q.order.as_deref()).await?,
    ))
}

async fn stats(
    State(shared): State<Arc<Shared>>,
    q: Result<Query<Params>, QueryRejection>,
) -> ApiResult<EventStats> {
    let Query(q) = q?;
    Ok(Json(events::stats_of(&shared, &q.filter()).await?))
}

async fn wait(
    State(shared): State<Arc<Shared>>,
    q: Result<Query<Params>, QueryRejection>,
) -> ApiResult<EventWait> {
    let Query(q) = q?;
    Ok(Json(
        events::wait_for(&shared, q.filter(), q.count, q.timeout).await?,
    ))
}

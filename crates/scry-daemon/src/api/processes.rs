//! `/api/v1/processes`, one process by pid, `wake` and `sleep`.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::Json;
use scry_api::{ProcessEntry, ProcessList, Slept, WakeTarget, Woken};
use serde::Deserialize;

use super::{parse_pid, route, ApiResult, Route};
use crate::service::processes;
use crate::Shared;

pub(super) fn routes() -> Vec<Route> {
    vec![
        route(
            "/api/v1/processes",
            &[("GET", "processes::list")],
            get(list),
        ),
        route(
            "/api/v1/processes/{pid}",
            &[("GET", "processes::get")],
            get(one),
        ),
        route("/api/v1/wake", &[("POST", "processes::wake")], post(wake)),
        route(
            "/api/v1/sleep",
            &[("POST", "processes::sleep")],
            post(sleep),
        ),
    ]
}

#[derive(Deserialize)]
struct ListQuery {
    /// Include every gone process, not only recent ones.
    #[serde(default)]
    gone: bool,
}

async fn list(
    State(shared): State<Arc<Shared>>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<ProcessList> {
    let Query(q) = q?;
    Ok(Json(processes::list(&shared, q.gone).await))
}

async fn one(
    State(shared): State<Arc<Shared>>,
    Path(pid): Path<String>,
) -> ApiResult<ProcessEntry> {
    let pid = parse_pid(&pid)?;
    Ok(Json(processes::get(&shared, pid).await?))
}

async fn wake(
    State(shared): State<Arc<Shared>>,
    body: Result<Json<WakeTarget>, JsonRejection>,
) -> ApiResult<Woken> {
    let Json(body) = body?;
    let target = processes::parse_target(&body.target)?;
    Ok(Json(processes::wake(&shared, &target, body.pid).await?))
}

async fn sleep(
    State(shared): State<Arc<Shared>>,
    body: Result<Json<WakeTarget>, JsonRejection>,
) -> ApiResult<Slept> {
    let Json(body) = body?;
    let target = processes::parse_target(&body.target)?;
    Ok(Json(processes::sleep(&shared, &target, body.pid).await?))
}

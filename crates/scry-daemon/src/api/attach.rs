//! `POST /api/v1/attach` (and `GET /api/v1/attach/plan`), `/api/v1/detach`, `/api/v1/follow` (and `GET` of it),
//! `/api/v1/unfollow`.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::Json;
use scry_api::{
    AttachPlan, AttachReport, AttachRequest, Detached, FollowList, PidRequest, Unfollowed,
};
use serde::Deserialize;

use super::{route, ApiResult, Route};
use crate::service::{attach, follow};
use crate::Shared;

pub(super) fn routes() -> Vec<Route> {
    vec![
        route("/api/v1/attach/plan", &[("GET", "attach::plan")], get(plan)),
        route(
            "/api/v1/attach",
            &[("POST", "attach::attach_request")],
            post(attach_one),
        ),
        route(
            "/api/v1/detach",
            &[("POST", "attach::detach")],
            post(detach),
        ),
        route(
            "/api/v1/follow",
            &[("POST", "follow::follow"), ("GET", "follow::list")],
            post(follow_tree).get(follows),
        ),
        route(
            "/api/v1/unfollow",
            &[("POST", "follow::unfollow")],
            post(unfollow),
        ),
    ]
}

async fn attach_one(
    State(shared): State<Arc<Shared>>,
    body: Result<Json<AttachRequest>, JsonRejection>,
) -> ApiResult<AttachReport> {
    let Json(req) = body?;
    Ok(Json(attach::attach_request(&shared, &req).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanQuery {
    pid: u32,
    injector: Option<String>,
}

async fn plan(q: Result<Query<PlanQuery>, QueryRejection>) -> ApiResult<AttachPlan> {
    let Query(q) = q?;
    Ok(Json(attach::plan(q.pid, q.injector).await?))
}

async fn detach(
    State(shared): State<Arc<Shared>>,
    body: Result<Json<PidRequest>, JsonRejection>,
) -> ApiResult<Detached> {
    let Json(req) = body?;
    Ok(Json(attach::detach(&shared, req.pid).await?))
}

async fn follow_tree(
    State(shared): State<Arc<Shared>>,
    body: Result<Json<AttachRequest>, JsonRejection>,
) -> ApiResult<AttachReport> {
    let Json(req) = body?;
    Ok(Json(follow::follow(&shared, &req).await?))
}

async fn follows(State(shared): State<Arc<Shared>>) -> Json<FollowList> {
    Json(follow::list(&shared))
}

async fn unfollow(
    State(shared): State<Arc<Shared>>,
    body: Result<Json<PidRequest>, JsonRejection>,
) -> ApiResult<Unfollowed> {
    let Json(req) = body?;
    Ok(Json(follow::unfollow(&shared, req.pid)?))
}

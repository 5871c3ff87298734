//! `/api/v1/dumps`: keep a stack dump document, list the kept ones, read one.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::Json;
use scry_api::{DumpAdded, DumpList, DumpView};
use serde_json::Value;

use super::{route, ApiResult, ListQuery, Route};
use crate::service::dumps;
use crate::Shared;

pub(super) fn routes() -> Vec<Route> {
    vec![
        route(
            "/api/v1/dumps",
            &[("GET", "dumps::list"), ("POST", "dumps::add")],
            get(list).post(add),
        ),
        route("/api/v1/dumps/{id}", &[("GET", "dumps::get")], get(show)),
    ]
}

async fn add(
    State(shared): State<Arc<Shared>>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<DumpAdded> {
    let Json(data) = body?;
    Ok(Json(dumps::add(&shared, data).await?))
}

async fn list(
    State(shared): State<Arc<Shared>>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<DumpList> {
    let Query(q) = q?;
    Ok(Json(dumps::list(&shared, q.limit).await?))
}

async fn show(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> ApiResult<DumpView> {
    let id: i64 = id
        .parse()
        .map_err(|_| scry_api::Error::bad_request(format!("`{id}` is not a dump id")))?;
    Ok(Json(dumps::get(&shared, id).await?))
}

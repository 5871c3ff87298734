//! `POST /api/v1/processes/{pid}/call/{method}`: a `call` to a live process's agent; the body is
//! its params (an object; an empty body means `{}`), `?timeout_ms=` its timeout.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::routing::post;
use axum::Json;
use serde::Deserialize;
use serde_json::Value;

use super::{parse_pid, route, ApiResult, Route};
use crate::service::calls;
use crate::Shared;

pub(super) fn routes() -> Vec<Route> {
    vec![route(
        "/api/v1/processes/{pid}/call/{method}",
        &[("POST", "calls::call_pid")],
        post(call),
    )]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallQuery {
    timeout_ms: Option<u64>,
}

async fn call(
    State(shared): State<Arc<Shared>>,
    Path((pid, method)): Path<(String, String)>,
    query: Result<Query<CallQuery>, QueryRejection>,
    body: Bytes,
) -> ApiResult {
    let Query(q) = query?;
    let pid = parse_pid(&pid)?;
    let params: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Default::default())
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            scry_api::Error::bad_request(format!("the body must be a JSON object of params: {e}"))
        })?
    };
    Ok(Json(
        calls::call_pid(&shared, pid, &method, params, q.timeout_ms).await?,
    ))
}

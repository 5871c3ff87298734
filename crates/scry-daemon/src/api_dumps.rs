//! REST endpoints for stack dumps (`scry dump` keeps them here so that a dump taken during an
//! incident can be read later): `POST /api/v1/dumps` (a dump document, `docs/dump.md`),
//! `GET /api/v1/dumps` (newest first, without the stacks), `GET /api/v1/dumps/{id}`.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use scry_proc::stacks::{Dump, ProcessKind, DUMP_SCHEMA};
use scry_store::DumpRecord;
use serde_json::{json, Value};

use crate::http::{blocking, ApiError};
use crate::Shared;

type ApiResult = Result<Json<Value>, ApiError>;

/// The dump routes.
pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/v1/dumps", get(list).post(add))
        .route("/api/v1/dumps/{id}", get(show))
}

async fn add(
    State(shared): State<Arc<Shared>>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let Json(data) = body?;
    let dump: Dump = serde_json::from_value(data.clone()).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("not a dump document (schema {DUMP_SCHEMA}, docs/dump.md): {e}"),
        )
    })?;
    let command = dump
        .processes
        .first()
        .map(|p| p.cmdline.join(" "))
        .unwrap_or_default();
    let record = DumpRecord {
        taken_at: dump.taken_at,
        root_pid: dump.root_pid,
        tree: dump.tree,
        processes: dump.processes.len() as u32,
        python_processes: dump
            .processes
            .iter()
            .filter(|p| p.kind == ProcessKind::Python)
            .count() as u32,
        command,
        data,
    };
    let store = shared.store.clone();
    let id = blocking(move || store.put_dump(&record)).await?;
    Ok(Json(json!({ "id": id })))
}

async fn list(
    State(shared): State<Arc<Shared>>,
    q: Result<Query<crate::http::ListQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = q?;
    let store = shared.store.clone();
    let limit = q.limit.unwrap_or(100);
    let rows = blocking(move || store.dumps(limit)).await?;
    let rows: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            json!({
                "id": r.id,
                "taken_at": r.dump.taken_at,
                "root_pid": r.dump.root_pid,
                "tree": r.dump.tree,
                "processes": r.dump.processes,
                "python_processes": r.dump.python_processes,
                "command": r.dump.command,
            })
        })
        .collect();
    Ok(Json(json!({ "dumps": rows })))
}

async fn show(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> ApiResult {
    let id: i64 = id.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("`{id}` is not a dump id"),
        )
    })?;
    let store = shared.store.clone();
    let row = blocking(move || store.dump(id)).await?;
    match row {
        Some(r) => Ok(Json(json!({ "id": r.id, "dump": r.dump.data }))),
        None => Err(
            ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no dump {id}"))
                .hint("`scry dumps` lists the stored dumps"),
        ),
    }
}

//! REST endpoints for probes and their events: `/api/v1/probes`, `/api/v1/events/stream`,
//! `/api/v1/events/stats`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::http::ApiError;
use crate::probes::{self, NewProbe, ProbeDef};
use crate::Shared;

type ApiResult = Result<Json<Value>, ApiError>;

/// The probe routes.
pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/v1/probes", get(list).post(add).delete(remove_group))
        .route("/api/v1/probes/{key}", get(show).delete(remove))
        .route("/api/v1/probes/{key}/enable", post(enable))
        .route("/api/v1/probes/{key}/disable", post(disable))
        .route("/api/v1/groups/{group}/enable", post(enable_group))
        .route("/api/v1/groups/{group}/disable", post(disable_group))
        .route("/api/v1/events/stream", get(stream))
}

fn not_found(key: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no probe with id or name `{key}`"),
    )
    .hint("see `scry probe list`")
}

fn describe_all(shared: &Shared, defs: Vec<ProbeDef>) -> Vec<Value> {
    let table = shared.probes();
    defs.iter()
        .map(|d| {
            let mut v = probes::describe(d, table.statuses_of(&d.spec.id));
            v["totals"]["dropped_by_daemon"] = json!(shared.dropped_for(&d.spec.id));
            // What the store holds now, what retention removed and what a full disk kept out,
            // so that `recorded` can be checked: recorded = stored + removed_by_retention +
            // not_stored_disk_full + dropped_by_daemon + in flight.
            let totals = shared.store.totals_of(&d.spec.id).ok();
            v["totals"]["stored"] = json!(totals.map(|t| t.stored));
            v["totals"]["removed_by_retention"] = json!(totals.map(|t| t.removed_by_retention));
            v["totals"]["not_stored_disk_full"] = json!(totals.map(|t| t.not_stored_disk_full));
            v
        })
        .collect()
}

async fn list(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let defs = shared.probes().defs();
    Json(json!({"probes": describe_all(&shared, defs)}))
}

async fn show(State(shared): State<Arc<Shared>>, Path(key): Path<String>) -> ApiResult {
    let def = shared
        .probes()
        .resolve(&key)
        .cloned()
        .ok_or_else(|| not_found(&key))?;
    Ok(Json(describe_all(&shared, vec![def]).remove(0)))
}

async fn add(
    State(shared): State<Arc<Shared>>,
    body: Result<Json<NewProbe>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(req) = body?;
    let def = {
        let table = shared.probes();
        probes::build(req, &table).map_err(|e| match e {
            probes::BuildError::Invalid(m) => {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m)
            }
            probes::BuildError::Expression(e) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_expression", e.reason)
                    .hint(crate::expr::HINT)
            }
        })?
    };
    let check = crate::lines::check_location(&shared, &def.spec.location, &def.target).await?;
    let id = def.spec.id.clone();
    shared.probes().put(def.clone());
    // Every connected process it targets arms it now; an expression that Python rejects is
    // rejected by the first agent that sees it, before the probe is kept.
    let results = shared.sync_all().await;
    let invalid = results
        .iter()
        .flat_map(|(_, statuses)| statuses.iter())
        .find(|s| s.probe == id && probes::is_invalid(s))
        .cloned();
    if let Some(bad) = invalid {
        shared.probes().remove(&id);
        shared.sync_all().await;
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_expression",
            bad.reason.unwrap_or_else(|| "invalid expression".into()),
        )
        .hint(crate::expr::HINT));
    }
    shared.persist_probe(&def).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("store: {e}"),
        )
    })?;
    shared.system_event(
        scry_store::Level::Info,
        "probe_added",
        format!(
            "probe {} added at {}",
            def.spec.name.as_deref().unwrap_or(&id),
            def.spec.location
        ),
        json!({"probe": id}),
    );
    let mut value = describe_all(&shared, vec![def]).remove(0);
    if !check.notes.is_empty() {
        value["notes"] = json!(check.notes);
        value["hint"] = json!(check.hint);
    }
    Ok((StatusCode::CREATED, Json(value)))
}

async fn remove(State(shared): State<Arc<Shared>>, Path(key): Path<String>) -> ApiResult {
    let def = shared
        .probes()
        .resolve(&key)
        .cloned()
        .ok_or_else(|| not_found(&key))?;
    remove_defs(&shared, vec![def]).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupQuery {
    group: Option<String>,
}

async fn remove_group(
    State(shared): State<Arc<Shared>>,
    q: Result<Query<GroupQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = q?;
    let group = q.group.ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "name a group: DELETE /api/v1/probes?group=G",
        )
    })?;
    let defs = group_defs(&shared, &group)?;
    remove_defs(&shared, defs).await
}

async fn remove_defs(shared: &Shared, defs: Vec<ProbeDef>) -> ApiResult {
    let mut removed = Vec::new();
    for def in &defs {
        shared.probes().remove(&def.spec.id);
        shared.unpersist_probe(&def.spec.id).await.map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("store: {e}"),
            )
        })?;
        removed.push(def.spec.id.clone());
    }
    shared.sync_all().await;
    Ok(Json(json!({"removed": removed})))
}

async fn set_enabled(shared: &Shared, defs: Vec<ProbeDef>, enabled: bool) -> ApiResult {
    let mut changed = Vec::new();
    for mut def in defs {
        def.enabled = enabled;
        shared.probes().put(def.clone());
        shared.persist_probe(&def).await.map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("store: {e}"),
            )
        })?;
        changed.push(def);
    }
    shared.sync_all().await;
    Ok(Json(json!({"probes": describe_all(shared, changed)})))
}

async fn enable(State(shared): State<Arc<Shared>>, Path(key): Path<String>) -> ApiResult {
    let def = shared
        .probes()
        .resolve(&key)
        .cloned()
        .ok_or_else(|| not_found(&key))?;
    if def.spec.expires_at.is_some_and(|t| t <= crate::now()) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "expired",
            format!("probe `{key}` has expired"),
        )
        .hint("add it again with a new --ttl"));
    }
    set_enabled(&shared, vec![def], true).await
}

async fn disable(State(shared): State<Arc<Shared>>, Path(key): Path<String>) -> ApiResult {
    let def = shared
        .probes()
        .resolve(&key)
        .cloned()
        .ok_or_else(|| not_found(&key))?;
    set_enabled(&shared, vec![def], false).await
}

/// The probes of a group; none is an error.
fn group_defs(shared: &Shared, group: &str) -> Result<Vec<ProbeDef>, ApiError> {
    let defs = shared.probes().group(group);
    if defs.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no probe in group `{group}`"),
        )
        .hint("see `scry probe list --json` for the groups"));
    }
    Ok(defs)
}

async fn enable_group(State(shared): State<Arc<Shared>>, Path(group): Path<String>) -> ApiResult {
    let defs = group_defs(&shared, &group)?;
    set_enabled(&shared, defs, true).await
}

async fn disable_group(State(shared): State<Arc<Shared>>, Path(group): Path<String>) -> ApiResult {
    let defs = group_defs(&shared, &group)?;
    set_enabled(&shared, defs, false).await
}

/// Resolves a probe id or name for event queries (unknown names are an error).
pub fn resolve_source(shared: &Shared, probe: Option<String>) -> Result<Option<String>, ApiError> {
    match probe {
        None => Ok(None),
        Some(key) => match shared.probes().resolve(&key) {
            Some(d) => Ok(Some(d.spec.id.clone())),
            // A removed probe's events may still be stored under its id.
            None if key.starts_with("p-") => Ok(Some(key)),
            None => Err(not_found(&key)),
        },
    }
}

/// Process row ids with this pid (a pid may have been several processes over time).
pub fn process_ids_for_pid(shared: &Shared, pid: u32) -> Vec<i64> {
    shared
        .registry()
        .views()
        .into_iter()
        .filter(|v| v.pid == pid)
        .map(|v| v.id)
        .collect()
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
    let source = resolve_source(&shared, q.probe)?;
    let ids = q.pid.map(|p| process_ids_for_pid(&shared, p));
    let pid_filter = q.pid;
    Ok(crate::http::live_sse(&shared, move |ev| {
        if ev.topic != "event" {
            return None;
        }
        if source
            .as_ref()
            .is_some_and(|s| ev.data["source"].as_str() != Some(s.as_str()))
        {
            return None;
        }
        if let Some(ids) = &ids {
            let pid = ev.data["pid"].as_u64().and_then(|p| u32::try_from(p).ok());
            let id = ev.data["process_id"].as_i64().unwrap_or(-1);
            if pid != pid_filter && !ids.contains(&id) {
                return None;
            }
        }
        Some("event")
    }))
}

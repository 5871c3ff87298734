//! The daemon's HTTP API: REST under `/api/v1/`, server-sent events for live streams.
//!
//! Every error is a JSON body `{"error": {"kind", "message", "hint"}}` with a fitting status.
//! Who may call is decided in front of every route by [`crate::access`]: the owner over the
//! local socket, or a caller with the token (or the web UI's session) over TCP.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::StreamExt;

use crate::clients::{self, ClientFile};
use crate::registry::{ProcState, RequestError};
use crate::Shared;

/// An API error: status, machine-readable kind, message and an optional hint.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    hint: Option<String>,
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            message: message.into(),
            hint: None,
        }
    }
    /// Adds a hint.
    pub fn hint(mut self, hint: impl Into<String>) -> ApiError {
        self.hint = Some(hint.into());
        self
    }
    /// Kind, message and hint (for MCP tool errors).
    pub fn parts(&self) -> (&str, &str, Option<&str>) {
        (self.kind, &self.message, self.hint.as_deref())
    }
    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({"error": {"kind": self.kind, "message": self.message, "hint": self.hint}});
        (self.status, Json(body)).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        ApiError::bad_request(format!("invalid JSON body: {}", r.body_text()))
            .hint("send a JSON object with Content-Type: application/json")
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::bad_request(format!("invalid query: {}", r.body_text()))
    }
}

impl From<scry_store::StoreError> for ApiError {
    fn from(e: scry_store::StoreError) -> Self {
        ApiError::internal(format!("store: {e}"))
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

/// Builds the router: the REST API, MCP at `/mcp`, the web UI, with the access check of
/// [`crate::access`] in front of all of them. The same router serves the local API socket and
/// the TCP listener; the check tells them apart by their connection info.
pub fn router(shared: Arc<Shared>) -> Router {
    api_routes()
        .nest_service("/mcp", crate::mcp::service(shared.clone()))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            crate::access::check,
        ))
        .with_state(shared)
}

/// The REST routes alone, without the access check (MCP tools call them in process, after
/// `/mcp` itself passed the check).
pub(crate) fn api_routes() -> Router<Arc<Shared>> {
    Router::new()
        .merge(crate::web::routes())
        .route("/api/v1/health", get(health))
        .route("/api/v1/status", get(status))
        .route("/api/v1/processes", get(processes))
        .route("/api/v1/processes/{pid}", get(process))
        .route("/api/v1/wake", post(wake))
        .route("/api/v1/sleep", post(sleep))
        .route("/api/v1/shutdown", post(shutdown))
        .route("/api/v1/agent-endpoint", get(agent_endpoint))
        .route("/api/v1/system-events", get(system_events))
        .route("/api/v1/stream", get(stream))
        .merge(crate::api_probes::routes())
        .merge(crate::api_dumps::routes())
        .merge(crate::calls::routes())
        .merge(crate::attach::routes())
        .merge(crate::follow::routes())
        .merge(crate::lines::routes())
        .merge(crate::api_traces::routes())
        .merge(crate::query::routes())
        .merge(crate::repl::routes())
}

/// The REST API as a service for in-process requests.
pub(crate) fn local_api(shared: Arc<Shared>) -> Router {
    api_routes().fallback(not_found).with_state(shared)
}

/// `?limit=N` of the list endpoints (kept dumps, traces); nothing else is accepted.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    pub(crate) limit: Option<usize>,
}

/// A pid from a URL path segment, or a 400 saying it is not one.
pub(crate) fn parse_pid(text: &str) -> Result<u32, ApiError> {
    text.parse()
        .map_err(|_| ApiError::bad_request(format!("`{text}` is not a pid")))
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no such endpoint: {} {}", req.method(), req.uri().path()),
    )
    .hint("the API lives under /api/v1/ (see docs/architecture.md)")
}

async fn health() -> Json<Value> {
    Json(json!({"ok": true, "version": env!("CARGO_PKG_VERSION")}))
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, scry_store::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(ApiError::from)
}

async fn status(State(shared): State<Arc<Shared>>) -> ApiResult {
    let store = shared.store.clone();
    let counts = blocking(move || store.counts()).await?;
    let (awake, sleeping, gone) = shared.registry().counts();
    let clients = clients::discover(&shared.home).len();
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "home": shared.home.root(),
        "http": shared.http_addr.to_string(),
        "api_socket": shared.home.api_socket(),
        "agent_socket": shared.home.agent_socket(),
        "agent_tcp": shared.config.agent_tcp,
        "started_at": shared.started_at,
        "uptime_s": shared.uptime().as_secs_f64(),
        "processes": {"awake": awake, "sleeping": sleeping, "gone": gone, "client_files": clients,
                      "links_accepted": shared.links_accepted.load(std::sync::atomic::Ordering::Relaxed)},
        "probes": counts.probes,
        "events_stored": counts.events,
        "dropped": {"by_agents": counts.dropped, "by_daemon": crate::dropped(&shared)},
        "store": store_health(&shared),
        // Flow control: reports that waited for the store (their agents were slowed down),
        // and protocol errors not sent to peers that do not read them.
        "backpressure": {
            "reports_waited": shared.backpressure_waits.load(std::sync::atomic::Ordering::Relaxed),
            "errors_not_sent": crate::link::ERRORS_NOT_SENT.load(std::sync::atomic::Ordering::Relaxed),
        },
    })))
}

/// The store's part of the status: whether it can write (`ok`, `full`, `failing`), since when,
/// how many events it could not store, and how many retention deleted.
pub fn store_health(shared: &Shared) -> Value {
    let h = shared.store.health();
    let retention_deleted: u64 = h.retention_deleted.values().sum();
    json!({
        "state": h.state,
        "since": h.since,
        "not_stored": h.not_stored,
        "last_error": h.last_error,
        "retention_deleted": retention_deleted,
        "max_db_mb": shared.config.max_db_mb,
    })
}

#[derive(Deserialize)]
struct ProcessesQuery {
    /// Include every gone process, not only recent ones.
    #[serde(default)]
    gone: bool,
}

/// How long a gone process stays in the default listing.
const RECENTLY_GONE: f64 = 15.0 * 60.0;

pub(crate) fn process_list(shared: &Shared, all_gone: bool) -> Vec<Value> {
    let views = shared.registry().views();
    let cutoff = crate::now() - RECENTLY_GONE;
    let mut out: Vec<Value> = Vec::new();
    let mut live_pids = Vec::new();
    for v in views {
        if v.state == ProcState::Gone && !all_gone && v.last_heard < cutoff {
            continue;
        }
        if v.state != ProcState::Gone {
            live_pids.push(v.pid);
        }
        let mut value = serde_json::to_value(&v).unwrap_or(Value::Null);
        value["source"] = json!("agent");
        out.push(value);
    }
    // Sleeping embedded clients the daemon has not heard from (e.g. started before the daemon).
    for c in clients::discover(&shared.home) {
        if live_pids.contains(&c.pid) {
            continue;
        }
        out.push(json!({
            "pid": c.pid, "name": c.name, "state": "sleeping", "source": "discovery",
            "python_version": c.python_version, "executable": c.executable,
            "control": c.control_value(),
            "first_seen": c.started_at,
        }));
    }
    out
}

async fn processes(
    State(shared): State<Arc<Shared>>,
    q: Result<Query<ProcessesQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = q?;
    Ok(Json(json!({"processes": process_list(&shared, q.gone)})))
}

async fn process(State(shared): State<Arc<Shared>>, Path(pid): Path<String>) -> ApiResult {
    let pid = parse_pid(&pid)?;
    process_list(&shared, true)
        .into_iter()
        .find(|p| p["pid"] == json!(pid) && p["state"] != json!("gone"))
        .or_else(|| {
            process_list(&shared, true)
                .into_iter()
                .find(|p| p["pid"] == json!(pid))
        })
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("scry knows no process {pid}"),
            )
            .hint("see `scry ps`; a process that never loaded scry must be attached first")
        })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetBody {
    target: Value,
}

fn target_text(v: &Value) -> Result<String, ApiError> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        Value::Number(n) if n.is_u64() => Ok(n.to_string()),
        _ => Err(ApiError::bad_request(
            "`target` must be a pid or a process name",
        )),
    }
}

fn find_client(shared: &Shared, target: &str) -> Result<ClientFile, ApiError> {
    let pid: Option<u32> = target.parse().ok();
    let found: Vec<ClientFile> = clients::discover(&shared.home)
        .into_iter()
        .filter(|c| match pid {
            Some(p) => c.pid == p,
            None => c.name.as_deref() == Some(target),
        })
        .collect();
    match found.len() {
        0 => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no embedded scry client {} is running", describe(target)),
        )
        .hint("see `scry ps`; the program must call `scry.init()` (or be attached with `scry attach PID`)")),
        1 => Ok(found.into_iter().next().expect("one element")),
        _ => Err(ApiError::new(
            StatusCode::CONFLICT,
            "ambiguous",
            format!(
                "{} processes are named `{target}`: pids {}",
                found.len(),
                found.iter().map(|c| c.pid.to_string()).collect::<Vec<_>>().join(", ")
            ),
        )
        .hint("name one by pid")),
    }
}

fn describe(target: &str) -> String {
    if target.parse::<u32>().is_ok() {
        format!("with pid {target}")
    } else {
        format!("named `{target}`")
    }
}

async fn wake(
    State(shared): State<Arc<Shared>>,
    body: Result<Json<TargetBody>, JsonRejection>,
) -> ApiResult {
    let Json(body) = body?;
    let target = target_text(&body.target)?;
    let already = shared
        .registry()
        .find(&target)
        .into_iter()
        .filter(|e| e.agent.is_some())
        .map(|e| e.view.clone())
        .collect::<Vec<_>>();
    if let [one] = already.as_slice() {
        return Ok(Json(json!({"already_awake": true, "process": one})));
    }
    let client = find_client(&shared, &target)?;
    let daemon_url = format!("unix://{}", shared.home.agent_socket().display());
    clients::control(
        &client,
        shared.token.as_deref(),
        "wake",
        Some(json!({"daemon_url": daemon_url})),
    )
    .await
    .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "control_plane", e.to_string()))?;
    // The client answers after its welcome, so it is registered by now; allow a little slack.
    for _ in 0..50 {
        let view = shared
            .registry()
            .find(&client.pid.to_string())
            .into_iter()
            .find(|e| e.agent.is_some())
            .map(|e| e.view.clone());
        if let Some(v) = view {
            return Ok(Json(json!({"already_awake": false, "process": v})));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "timeout",
        format!(
            "pid {} said it woke but did not connect within 5 s",
            client.pid
        ),
    ))
}

async fn sleep(
    State(shared): State<Arc<Shared>>,
    body: Result<Json<TargetBody>, JsonRejection>,
) -> ApiResult {
    let Json(body) = body?;
    let target = target_text(&body.target)?;
    let agents: Vec<_> = shared
        .registry()
        .find(&target)
        .into_iter()
        .filter_map(|e| e.agent.clone().map(|a| (e.view.clone(), a)))
        .collect();
    match agents.as_slice() {
        [] => {
            let client = find_client(&shared, &target)?;
            Ok(Json(json!({"already_sleeping": true, "pid": client.pid})))
        }
        [(view, agent)] => {
            let reply = agent
                .request(
                    |id| scry_proto::DaemonMessage::Sleep { id },
                    Duration::from_secs(5),
                )
                .await;
            match reply {
                Ok(r) if r.ok => Ok(Json(json!({"already_sleeping": false, "pid": view.pid}))),
                Ok(r) => Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "agent",
                    r.error
                        .map(|e| e.message)
                        .unwrap_or_else(|| "the agent refused".into()),
                )),
                // The agent closes right after answering; a close is success too.
                Err(RequestError::Disconnected) => {
                    Ok(Json(json!({"already_sleeping": false, "pid": view.pid})))
                }
                Err(e) => Err(ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "timeout",
                    e.to_string(),
                )),
            }
        }
        many => Err(ApiError::new(
            StatusCode::CONFLICT,
            "ambiguous",
            format!(
                "{} awake processes are named `{target}`: pids {}",
                many.len(),
                many.iter()
                    .map(|(v, _)| v.pid.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .hint("name one by pid")),
    }
}

async fn shutdown(State(shared): State<Arc<Shared>>) -> Json<Value> {
    shared.request_shutdown();
    Json(json!({"stopping": true, "pid": std::process::id()}))
}

async fn agent_endpoint(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(json!({"unix": shared.home.agent_socket(), "tcp": shared.config.agent_tcp}))
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
) -> ApiResult {
    let Query(q) = q?;
    let store = shared.store.clone();
    let limit = q.limit.unwrap_or(100).min(10_000);
    let rows = blocking(move || store.system_events(q.since, limit)).await?;
    Ok(Json(json!({"system_events": rows})))
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
    Ok(live_sse(&shared, move |ev| {
        if topics
            .as_ref()
            .is_some_and(|t| !t.iter().any(|x| x == ev.topic))
        {
            return None;
        }
        Some(ev.topic)
    }))
}

/// A server-sent-event stream of the live events that `pick` keeps (it names the SSE event
/// type). A slow reader is told how many it missed; the stream ends when the daemon stops, so
/// graceful shutdown never waits on a follower.
pub(crate) fn live_sse(
    shared: &Shared,
    mut pick: impl FnMut(&crate::LiveEvent) -> Option<&'static str> + Send + 'static,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = shared.subscribe();
    let mut stop = shared.shutdown_signal();
    let events = BroadcastStream::new(rx).filter_map(move |item| match item {
        Ok(ev) => {
            pick(&ev).map(|name| Ok(SseEvent::default().event(name).data(ev.data.to_string())))
        }
        Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
            Some(Ok(SseEvent::default()
                .event("lagged")
                .data(json!({"missed": n}).to_string())))
        }
    });
    let events = futures_util::StreamExt::take_until(events, async move {
        let _ = stop.wait_for(|stopping| *stopping).await;
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

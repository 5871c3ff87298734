//! The REPL relay: one terminal (a `scry run` or `scry repl` session) shared by the debugger
//! REPLs of any number of processes, one at a time, in arrival order.
//!
//! Agents ask for the terminal with `notify repl.request` (tagged with their session id); the
//! daemon keeps a FIFO queue per session and grants the head (`notify repl.grant`). While a REPL
//! holds the terminal its output (`repl.output`, `repl.prompt`) goes to the session's terminal
//! stream, and the lines typed there go back as `repl.input`; `repl.release` hands the terminal
//! to the next. A holder or waiter whose agent disconnects (the process died) is dropped at once.
//!
//! Not for: the REPL itself (pdb runs in the agent) or the terminal's line editing (the CLI).

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::http::ApiError;
use crate::Shared;

/// One REPL that holds or waits for a terminal.
#[derive(Debug, Clone)]
struct Repl {
    id: String,
    process_id: i64,
    pid: u32,
    name: String,
    thread: String,
    kind: String,
    place: String,
    exception: Option<String>,
}

impl Repl {
    fn view(&self) -> Value {
        json!({"repl": self.id, "pid": self.pid, "name": self.name, "thread": self.thread,
               "kind": self.kind, "where": self.place})
    }
}

/// One terminal and its queue.
struct Session {
    name: Option<String>,
    holder: Option<Repl>,
    waiting: VecDeque<Repl>,
    terminal: mpsc::UnboundedSender<Value>,
    terminal_rx: Option<mpsc::UnboundedReceiver<Value>>,
}

impl Session {
    fn state(&self, id: &str) -> Value {
        json!({
            "id": id,
            "name": self.name,
            "holder": self.holder.as_ref().map(Repl::view),
            "waiting": self.waiting.iter().map(Repl::view).collect::<Vec<_>>(),
        })
    }

    fn send(&self, event: Value) {
        let _ = self.terminal.send(event);
    }
}

/// The sessions of this daemon.
#[derive(Default)]
pub struct ReplHub {
    sessions: Mutex<HashMap<String, Session>>,
    started: std::sync::atomic::AtomicBool,
}

impl ReplHub {
    fn sessions(&self) -> MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Creates a session and returns its id (starting the relay task on first use).
pub fn create_session(shared: &Arc<Shared>, name: Option<String>) -> String {
    ensure_task(shared);
    let id = crate::new_id("r");
    let (tx, rx) = mpsc::unbounded_channel();
    shared.repl.sessions().insert(
        id.clone(),
        Session {
            name,
            holder: None,
            waiting: VecDeque::new(),
            terminal: tx,
            terminal_rx: Some(rx),
        },
    );
    id
}

fn ensure_task(shared: &Arc<Shared>) {
    use std::sync::atomic::Ordering;
    if shared.repl.started.swap(true, Ordering::SeqCst) {
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move { relay_task(shared).await });
}

async fn relay_task(shared: Arc<Shared>) {
    let mut notices = shared.agent_notices();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut stop = shared.shutdown_signal();
    loop {
        tokio::select! {
            n = notices.recv() => match n {
                Ok(n) if n.topic.starts_with("repl.") => on_notice(&shared, n),
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(k)) => {
                    tracing::warn!(target: "repl", "relay lagged behind {k} agent notices");
                }
                Err(_) => return,
            },
            _ = tick.tick() => drop_dead(&shared),
            _ = stop.changed() => return,
        }
    }
}

fn text(data: &Value, key: &str) -> String {
    data.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn on_notice(shared: &Arc<Shared>, n: crate::calls::AgentNotice) {
    let session_id = text(&n.data, "session");
    let repl_id = text(&n.data, "repl");
    let mut grants = Vec::new();
    {
        let mut sessions = shared.repl.sessions();
        let Some(s) = sessions.get_mut(&session_id) else {
            drop(sessions);
            if n.topic == "repl.request" {
                // The terminal is gone: let the process run on.
                shared.notify_agent(n.process_id, "repl.cancel", json!({"repl": repl_id}));
            }
            return;
        };
        let is_holder = s.holder.as_ref().is_some_and(|h| h.id == repl_id);
        match n.topic.as_str() {
            "repl.request" => {
                let repl = Repl {
                    id: repl_id,
                    process_id: n.process_id,
                    pid: n.pid,
                    name: text(&n.data, "name"),
                    thread: text(&n.data, "thread"),
                    kind: text(&n.data, "kind"),
                    place: text(&n.data, "where"),
                    exception: n
                        .data
                        .get("exception")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                };
                tracing::debug!(target: "repl", pid = repl.pid, repl = %repl.id, "REPL requested");
                if s.holder.as_ref().is_some_and(|h| h.id == repl.id)
                    || s.waiting.iter().any(|w| w.id == repl.id)
                {
                    return;
                }
                s.waiting.push_back(repl);
                grant_next(s, &mut grants);
                s.send(json!({"type": "queue", "waiting": s.waiting.iter().map(Repl::view).collect::<Vec<_>>()}));
            }
            "repl.output" if is_holder => {
                s.send(json!({"type": "output", "repl": repl_id, "text": text(&n.data, "text")}));
            }
            "repl.prompt" if is_holder => {
                s.send(
                    json!({"type": "prompt", "repl": repl_id, "prompt": text(&n.data, "prompt")}),
                );
            }
            "repl.release" => {
                if is_holder {
                    s.holder = None;
                    s.send(json!({"type": "closed", "repl": repl_id, "reason": "released"}));
                    grant_next(s, &mut grants);
                } else {
                    s.waiting.retain(|w| w.id != repl_id);
                }
            }
            _ => {}
        }
    }
    for (process_id, repl) in grants {
        shared.notify_agent(process_id, "repl.grant", json!({"repl": repl}));
    }
}

/// Grants the terminal to the head of the queue when nobody holds it.
fn grant_next(s: &mut Session, grants: &mut Vec<(i64, String)>) {
    if s.holder.is_some() {
        return;
    }
    let Some(next) = s.waiting.pop_front() else {
        return;
    };
    let mut open = next.view();
    open["type"] = json!("open");
    open["exception"] = json!(next.exception);
    open["waiting"] = json!(s.waiting.iter().map(Repl::view).collect::<Vec<_>>());
    s.send(open);
    grants.push((next.process_id, next.id.clone()));
    s.holder = Some(next);
}

/// Drops holders and waiters whose agent is no longer connected (their process died).
fn drop_dead(shared: &Arc<Shared>) {
    let connected = |process_id: i64| {
        shared
            .registry()
            .get_mut(process_id)
            .is_some_and(|e| e.agent.is_some())
    };
    let mut grants = Vec::new();
    let mut cancels = Vec::new();
    {
        let mut sessions = shared.repl.sessions();
        // A terminal that went away (scry run killed) ends its session: its REPLs run on.
        sessions.retain(|id, s| {
            let gone = s.terminal_rx.is_none() && s.terminal.is_closed();
            if gone {
                tracing::info!(target: "repl", session = %id, "terminal gone; session closed");
                for r in s.holder.iter().chain(s.waiting.iter()) {
                    cancels.push((r.process_id, r.id.clone()));
                }
            }
            !gone
        });
        for s in sessions.values_mut() {
            let before = s.waiting.len();
            s.waiting.retain(|w| connected(w.process_id));
            let mut changed = before != s.waiting.len();
            if let Some(h) = s.holder.clone() {
                if !connected(h.process_id) {
                    tracing::info!(target: "repl", pid = h.pid, "REPL holder is gone; terminal released");
                    s.holder = None;
                    s.send(json!({"type": "closed", "repl": h.id,
                        "reason": format!("process {} ({}) is gone", h.pid, h.name)}));
                    changed = true;
                    grant_next(s, &mut grants);
                }
            }
            if changed {
                s.send(json!({"type": "queue", "waiting": s.waiting.iter().map(Repl::view).collect::<Vec<_>>()}));
            }
        }
    }
    for (process_id, repl) in grants {
        shared.notify_agent(process_id, "repl.grant", json!({"repl": repl}));
    }
    for (process_id, repl) in cancels {
        shared.notify_agent(process_id, "repl.cancel", json!({"repl": repl}));
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no REPL session `{id}`"),
    )
}

/// The holder of a session: (process id, pid, repl id).
fn holder(shared: &Shared, id: &str) -> Result<(i64, u32, String), ApiError> {
    let sessions = shared.repl.sessions();
    let s = sessions.get(id).ok_or_else(|| not_found(id))?;
    let h = s.holder.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "no_repl",
            "no REPL holds this terminal now",
        )
    })?;
    Ok((h.process_id, h.pid, h.id.clone()))
}

/// `/api/v1/repl/...` routes.
pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/v1/repl/sessions", post(create))
        .route(
            "/api/v1/repl/sessions/{id}",
            get(state).delete(delete_session),
        )
        .route("/api/v1/repl/sessions/{id}/stream", get(stream))
        .route("/api/v1/repl/sessions/{id}/input", post(input))
        .route("/api/v1/repl/sessions/{id}/interrupt", post(interrupt))
        .route("/api/v1/repl/sessions/{id}/complete", post(complete))
        .route("/api/v1/processes/{pid}/repl", post(break_in))
}

#[derive(serde::Deserialize, Default)]
struct CreateBody {
    name: Option<String>,
}

async fn create(State(shared): State<Arc<Shared>>, body: Option<Json<CreateBody>>) -> Json<Value> {
    let name = body.and_then(|Json(b)| b.name);
    let id = create_session(&shared, name);
    Json(json!({"id": id}))
}

async fn state(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let sessions = shared.repl.sessions();
    let s = sessions.get(&id).ok_or_else(|| not_found(&id))?;
    Ok(Json(s.state(&id)))
}

async fn delete_session(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let s = shared
        .repl
        .sessions()
        .remove(&id)
        .ok_or_else(|| not_found(&id))?;
    for r in s.holder.iter().chain(s.waiting.iter()) {
        shared.notify_agent(r.process_id, "repl.cancel", json!({"repl": r.id}));
    }
    Ok(Json(json!({"deleted": id})))
}

/// The terminal's events as JSON lines: `open`, `output`, `prompt`, `closed`, `queue`.
async fn stream(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<axum::response::Response, ApiError> {
    let rx = {
        let mut sessions = shared.repl.sessions();
        let s = sessions.get_mut(&id).ok_or_else(|| not_found(&id))?;
        s.terminal_rx.take().ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "busy",
                "another terminal already follows this session",
            )
        })?
    };
    let mut stop = shared.shutdown_signal();
    let lines = futures_util::stream::unfold(rx, |mut rx| async move {
        let ev = rx.recv().await?;
        Some((
            Ok::<_, Infallible>(axum::body::Bytes::from(format!("{ev}\n"))),
            rx,
        ))
    });
    let lines = futures_util::StreamExt::take_until(lines, async move {
        let _ = stop.wait_for(|s| *s).await;
    });
    axum::response::Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(axum::body::Body::from_stream(lines))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}

#[derive(serde::Deserialize)]
struct InputBody {
    line: String,
}

async fn input(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    Json(body): Json<InputBody>,
) -> Result<Json<Value>, ApiError> {
    let (process_id, _, repl) = holder(&shared, &id)?;
    let sent = shared.notify_agent(
        process_id,
        "repl.input",
        json!({"repl": repl, "line": body.line}),
    );
    Ok(Json(json!({"sent": sent})))
}

async fn interrupt(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (process_id, _, repl) = holder(&shared, &id)?;
    let sent = shared.notify_agent(process_id, "repl.interrupt", json!({"repl": repl}));
    Ok(Json(json!({"sent": sent})))
}

async fn complete(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    Json(mut params): Json<Value>,
) -> Result<Json<Value>, ApiError> {
    let (process_id, pid, repl) = holder(&shared, &id)?;
    if !params.is_object() {
        params = json!({});
    }
    params["repl"] = json!(repl);
    shared
        .call(process_id, "repl.complete", params, Duration::from_secs(5))
        .await
        .map(Json)
        .map_err(|e| crate::calls::call_error_to_api(e, pid))
}

#[derive(serde::Deserialize, Default)]
struct BreakBody {
    thread: Option<String>,
}

/// `POST /api/v1/processes/{pid}/repl`: a new session whose REPL is the process `pid` stopped
/// at its next Python line (main thread unless `thread`).
async fn break_in(
    State(shared): State<Arc<Shared>>,
    Path(pid): Path<String>,
    body: Option<Json<BreakBody>>,
) -> Result<Json<Value>, ApiError> {
    let pid = crate::http::parse_pid(&pid)?;
    let process_id = crate::calls::live_process_id(&shared, pid)?;
    let thread = body.and_then(|Json(b)| b.thread);
    let id = create_session(&shared, Some(format!("repl {pid}")));
    let result = shared
        .call(
            process_id,
            "repl.break",
            json!({"session": id, "thread": thread}),
            Duration::from_secs(10),
        )
        .await;
    match result {
        Ok(r) => Ok(Json(
            json!({"id": id, "pid": pid, "thread": r.get("thread")}),
        )),
        Err(e) => {
            shared.repl.sessions().remove(&id);
            Err(crate::calls::call_error_to_api(e, pid))
        }
    }
}

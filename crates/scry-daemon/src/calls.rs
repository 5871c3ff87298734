//! Requests to named agent features (`call`) and notifications both ways (`notify`): the one
//! extension point through which daemon subsystems (stack inspection, line finding, tracing,
//! REPLs, detach) talk to the agent of one process without a message type of their own.
//!
//! [`Shared::call`] sends a `call` and waits for its `reply`; [`Shared::notify_agent`] sends a
//! `notify`; agents' `notify` messages arrive on [`Shared::agent_notices`], a broadcast that
//! each subsystem filters by topic.

use std::time::Duration;

use scry_proto::DaemonMessage;
use serde_json::Value;
use tokio::sync::broadcast;

use crate::registry::RequestError;
use crate::Shared;

/// A `notify` from an agent.
#[derive(Debug, Clone)]
pub struct AgentNotice {
    /// The registry id of the process it came from.
    pub process_id: i64,
    /// Its pid.
    pub pid: u32,
    /// The topic, e.g. `repl.output`.
    pub topic: String,
    /// The payload.
    pub data: Value,
}

/// Why a call to an agent gave no result.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No such process in the registry.
    #[error("no process with id {0} is known to the daemon")]
    UnknownProcess(i64),
    /// The process has no agent connected (sleeping or gone).
    #[error("process {pid} has no agent connected (state: {state})")]
    NotConnected {
        /// Its pid.
        pid: u32,
        /// `sleeping` or `gone`.
        state: String,
    },
    /// The agent predates the method.
    #[error("the agent of process {pid} does not offer `{method}` (agent too old?)")]
    Unsupported {
        /// Its pid.
        pid: u32,
        /// The method asked for.
        method: String,
    },
    /// The connection failed or the agent did not answer in time.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The agent answered `ok: false`.
    #[error("{message}")]
    Refused {
        /// The agent's error kind (`bad_request`, `not_found`, `internal`, …).
        kind: String,
        /// The agent's message.
        message: String,
    },
}

impl Shared {
    /// Calls `method` in the agent of process `process_id` and waits up to `timeout` for the
    /// result.
    pub async fn call(
        &self,
        process_id: i64,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, CallError> {
        let (pid, agent, offered) = {
            let mut reg = self.registry();
            let e = reg
                .get_mut(process_id)
                .ok_or(CallError::UnknownProcess(process_id))?;
            let offered = e
                .view
                .capabilities
                .iter()
                .any(|c| c.strip_prefix("call:") == Some(method));
            match e.agent.clone() {
                Some(a) => (e.view.pid, a, offered),
                None => {
                    return Err(CallError::NotConnected {
                        pid: e.view.pid,
                        state: e.view.state.as_str().into(),
                    })
                }
            }
        };
        if !offered {
            return Err(CallError::Unsupported {
                pid,
                method: method.into(),
            });
        }
        let method = method.to_owned();
        let reply = agent
            .request(|id| DaemonMessage::Call { id, method, params }, timeout)
            .await?;
        if reply.ok {
            Ok(reply.result.unwrap_or(Value::Null))
        } else {
            let (kind, message) = reply
                .error
                .map(|e| (e.kind, e.message))
                .unwrap_or_else(|| ("internal".into(), "the agent gave no reason".into()));
            Err(CallError::Refused { kind, message })
        }
    }

    /// Sends a `notify` to the agent of process `process_id`; false when none is connected.
    pub fn notify_agent(&self, process_id: i64, topic: &str, data: Value) -> bool {
        let agent = {
            let mut reg = self.registry();
            reg.get_mut(process_id).and_then(|e| e.agent.clone())
        };
        agent.is_some_and(|a| {
            a.send(DaemonMessage::Notify {
                topic: topic.into(),
                data,
            })
        })
    }

    /// Every agent `notify` from now on (a lagging receiver loses the oldest and is told so).
    pub fn agent_notices(&self) -> broadcast::Receiver<AgentNotice> {
        self.notices.subscribe()
    }

    /// Called by the link for each agent `notify`.
    pub(crate) fn agent_notified(&self, process_id: i64, pid: u32, topic: String, data: Value) {
        let _ = self.notices.send(AgentNotice {
            process_id,
            pid,
            topic,
            data,
        });
    }
}

/// `POST /api/v1/processes/{pid}/call/{method}`: a `call` to the agent of a live process, the
/// body being its params (an object; empty body means `{}`), `?timeout_ms=` (default 10 000,
/// at most 600 000). The answer is the agent's result, or an error whose kind says whose fault
/// it was (`not_found`, `not_connected`, `unsupported`, `timeout`, or the agent's own kind).
pub fn routes() -> axum::Router<std::sync::Arc<Shared>> {
    axum::Router::new().route(
        "/api/v1/processes/{pid}/call/{method}",
        axum::routing::post(call_endpoint),
    )
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CallQuery {
    timeout_ms: Option<u64>,
}

/// The registry id of the live process with this pid that has an agent connected, else of
/// any live one (so the error can say it sleeps), else a 404.
pub fn live_process_id(shared: &Shared, pid: u32) -> Result<i64, crate::http::ApiError> {
    use crate::registry::ProcState;
    let views = shared.registry().views();
    views
        .iter()
        .find(|v| v.pid == pid && v.state == ProcState::Awake)
        .or_else(|| {
            views
                .iter()
                .find(|v| v.pid == pid && v.state != ProcState::Gone)
        })
        .map(|v| v.id)
        .ok_or_else(|| {
            crate::http::ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "not_found",
                format!("scry knows no live process {pid}"),
            )
            .hint("see `scry ps`; a process that never loaded scry must be attached first")
        })
}

async fn call_endpoint(
    axum::extract::State(shared): axum::extract::State<std::sync::Arc<Shared>>,
    axum::extract::Path((pid, method)): axum::extract::Path<(String, String)>,
    query: Result<axum::extract::Query<CallQuery>, axum::extract::rejection::QueryRejection>,
    body: axum::body::Bytes,
) -> Result<axum::Json<Value>, crate::http::ApiError> {
    use crate::http::ApiError;
    use axum::http::StatusCode;
    let axum::extract::Query(q) = query?;
    let pid = crate::http::parse_pid(&pid)?;
    let params: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Default::default())
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("the body must be a JSON object of params: {e}"),
            )
        })?
    };
    if !params.is_object() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the body must be a JSON object of params",
        ));
    }
    let timeout = Duration::from_millis(q.timeout_ms.unwrap_or(10_000).clamp(1, 600_000));
    let process_id = live_process_id(&shared, pid)?;
    shared
        .call(process_id, &method, params, timeout)
        .await
        .map(axum::Json)
        .map_err(|e| call_error_to_api(e, pid))
}

/// The HTTP form of a [`CallError`].
pub fn call_error_to_api(e: CallError, pid: u32) -> crate::http::ApiError {
    use crate::http::ApiError;
    use axum::http::StatusCode;
    let text = e.to_string();
    match e {
        CallError::UnknownProcess(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", text),
        CallError::NotConnected { .. } => {
            ApiError::new(StatusCode::CONFLICT, "not_connected", text)
                .hint(format!("wake it first: scry wake {pid}"))
        }
        CallError::Unsupported { .. } => {
            ApiError::new(StatusCode::NOT_IMPLEMENTED, "unsupported", text)
                .hint("the process runs an older scry agent; restart it with this version")
        }
        CallError::Request(RequestError::Timeout(_)) => {
            ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", text).hint(format!(
                "the process may be blocked outside Python; `scry dump {pid}` reads its stacks from outside"
            ))
        }
        CallError::Request(RequestError::Disconnected) => {
            ApiError::new(StatusCode::BAD_GATEWAY, "disconnected", text)
        }
        CallError::Refused { kind, message } => {
            let status = match kind.as_str() {
                "bad_request" => StatusCode::BAD_REQUEST,
                "not_found" => StatusCode::NOT_FOUND,
                "unknown_method" => StatusCode::NOT_IMPLEMENTED,
                _ => StatusCode::BAD_GATEWAY,
            };
            ApiError::new(status, "agent", format!("{kind}: {message}"))
        }
    }
}

//! Requests to named agent features (`call`) and notifications both ways (`notify`): the one
//! extension point through which daemon subsystems (stack inspection, line finding, tracing,
//! REPLs, detach) talk to the agent of one process without a message type of their own.
//!
//! [`call`] sends a `call` and waits for its `reply`; [`notify`] sends a `notify`; agents'
//! `notify` messages arrive on [`notices`], a broadcast that each subsystem filters by topic.

use std::time::Duration;

use scry_proto::DaemonMessage;
use serde_json::Value;
use tokio::sync::broadcast;

use super::{Error, ErrorKind, Result};
use crate::state::registry::{ProcState, RequestError};
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

/// Calls `method` in the agent of process `process_id` and waits up to `timeout` for the
/// result.
pub async fn call(
    shared: &Shared,
    process_id: i64,
    method: &str,
    params: Value,
    timeout: Duration,
) -> Result<Value, CallError> {
    let (pid, agent, offered) = {
        let mut reg = shared.registry();
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
pub fn notify(shared: &Shared, process_id: i64, topic: &str, data: Value) -> bool {
    let agent = {
        let mut reg = shared.registry();
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
pub fn notices(shared: &Shared) -> broadcast::Receiver<AgentNotice> {
    shared.notices.subscribe()
}

/// Called by the link for each agent `notify`.
pub(crate) fn notified(shared: &Shared, process_id: i64, pid: u32, topic: String, data: Value) {
    let _ = shared.notices.send(AgentNotice {
        process_id,
        pid,
        topic,
        data,
    });
}

/// A `call` to the agent of a live process by pid (`POST /api/v1/processes/{pid}/call/{method}`):
/// `params` must be an object; `timeout_ms` defaults to 10 000, at most 600 000. The answer is
/// the agent's result, or an error whose kind says whose fault it was (`not_found`,
/// `not_connected`, `unsupported`, `timeout`, or the agent's refusal).
pub async fn call_pid(
    shared: &Shared,
    pid: u32,
    method: &str,
    params: Value,
    timeout_ms: Option<u64>,
) -> Result<Value> {
    if !params.is_object() {
        return Err(Error::bad_request(
            "the body must be a JSON object of params",
        ));
    }
    let timeout = Duration::from_millis(timeout_ms.unwrap_or(10_000).clamp(1, 600_000));
    let process_id = live_process_id(shared, pid)?;
    call(shared, process_id, method, params, timeout)
        .await
        .map_err(|e| call_error(e, pid))
}

/// The registry id of the live process with this pid that has an agent connected, else of
/// any live one (so the error can say it sleeps), else `not_found`.
pub fn live_process_id(shared: &Shared, pid: u32) -> Result<i64> {
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
            Error::not_found(format!("scry knows no live process {pid}"))
                .hint("see `scry ps`; a process that never loaded scry must be attached first")
        })
}

/// A [`CallError`] as a service error, with what to do about it.
pub fn call_error(e: CallError, pid: u32) -> Error {
    let text = e.to_string();
    match e {
        CallError::UnknownProcess(_) => Error::not_found(text),
        CallError::NotConnected { .. } => Error::new(ErrorKind::NotConnected, text)
            .hint(format!("wake it first: scry wake {pid}")),
        CallError::Unsupported { .. } => Error::new(ErrorKind::Unsupported, text)
            .hint("the process runs an older scry agent; restart it with this version"),
        CallError::Request(RequestError::Timeout(_)) => Error::new(ErrorKind::Timeout, text).hint(format!(
            "the process may be blocked outside Python; `scry dump {pid}` reads its stacks from outside"
        )),
        CallError::Request(RequestError::Disconnected) => {
            Error::new(ErrorKind::Disconnected, text)
        }
        CallError::Refused { kind, message } => {
            // The agent's own kind says whose fault it was.
            let as_kind = match kind.as_str() {
                "bad_request" => ErrorKind::BadRequest,
                "not_found" => ErrorKind::NotFound,
                "unknown_method" => ErrorKind::Unsupported,
                _ => ErrorKind::Agent,
            };
            Error::new(as_kind, format!("{kind}: {message}"))
        }
    }
}

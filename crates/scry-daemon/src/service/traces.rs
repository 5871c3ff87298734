//! Call traces (`scry trace`): start a trace in the agents of one or more live processes
//! (`trace.start` through [`super::calls::call`]), stop it, list and show them, read
//! their events, and follow them live (server-sent events).
//!
//! The trace's metadata (spec, targets, state) is a row of the store's `traces` table; its
//! events are ordinary events of kind `trace` whose `source` is the trace id
//! (docs/protocol.md "Trace events"). Not for: building call trees or exports (the CLI does
//! that from the events).

use std::time::Duration;

use scry_api::NewTrace;
use serde_json::{json, Value};

use super::calls::CallError;
use super::{blocking, Error, ErrorKind, Result};
use crate::state::registry::ProcState;
use crate::Shared;

/// How long the daemon waits for an agent to start or stop a trace.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

fn bad(message: impl Into<String>) -> Error {
    Error::bad_request(message)
}

fn script_name(argv: &[String]) -> Option<String> {
    argv.iter()
        .find(|a| a.ends_with(".py"))
        .or_else(|| argv.first())
        .and_then(|a| std::path::Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
}

/// The `scry run` session a process belongs to: `SCRY_RUN_SESSION` in its environment (read
/// from /proc; None when unreadable, e.g. another user's process).
fn run_session_of(pid: u32) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ
        .split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(b"SCRY_RUN_SESSION="))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// The connected processes `target` names: (registry id, pid). `run` means every process of
/// any `scry run`, `run:SESSION` those of one `scry run` session.
fn resolve_target(shared: &Shared, target: &str) -> Result<Vec<(i64, u32)>> {
    let views = shared.registry().views();
    let by_pid: Option<u32> = target.parse().ok();
    let session = target.strip_prefix("run:");
    let matching: Vec<_> = views
        .iter()
        .filter(|v| v.state != ProcState::Gone)
        .filter(|v| match (by_pid, session) {
            (Some(pid), _) => v.pid == pid,
            (None, Some(id)) => run_session_of(v.pid).as_deref() == Some(id),
            (None, None) if target == "run" => run_session_of(v.pid).is_some(),
            (None, None) => {
                target == "all"
                    || v.name.as_deref() == Some(target)
                    || script_name(&v.argv).as_deref() == Some(target)
                    || script_name(&v.argv).as_deref() == Some(&format!("{target}.py"))
            }
        })
        .collect();
    if matching.is_empty() {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("scry knows no live Python process `{target}`"),
        )
        .hint("`scry ps` lists the processes scry knows; give a pid or a name"));
    }
    let awake: Vec<(i64, u32)> = matching
        .iter()
        .filter(|v| v.state == ProcState::Awake)
        .map(|v| (v.id, v.pid))
        .collect();
    if awake.is_empty() {
        let pids: Vec<String> = matching.iter().map(|v| v.pid.to_string()).collect();
        return Err(Error::new(
            ErrorKind::NotConnected,
            format!(
                "no agent is connected in `{target}` (pid {})",
                pids.join(", ")
            ),
        )
        .hint(format!("wake it first: `scry wake {}`", pids[0])));
    }
    Ok(awake)
}

fn call_error_text(e: &CallError) -> (String, String) {
    match e {
        CallError::Refused { kind, message } => (kind.clone(), message.clone()),
        CallError::Unsupported { .. } => ("unsupported".into(), e.to_string()),
        CallError::NotConnected { .. } => ("not_connected".into(), e.to_string()),
        _ => ("failed".into(), e.to_string()),
    }
}

/// Starts a trace in every process the request's target names; refused when none could.
pub async fn start(shared: &Shared, body: NewTrace) -> Result<Value> {
    if body.max_rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err(bad(
            "`max_rate` must be a positive number of events a second",
        ));
    }
    if body.duration.is_some_and(|d| !(d > 0.0 && d.is_finite())) {
        return Err(bad("`duration` must be a positive number of seconds"));
    }
    if let Some(f) = body.functions.iter().find(|f| !f.contains(':')) {
        return Err(bad(format!(
            "`{f}`: a function is `module:function` (e.g. `myapp.jobs:run`)"
        )));
    }
    let targets = resolve_target(shared, body.target.trim())?;
    let id = crate::new_id("tr");
    let spec = json!({
        "include": body.include, "exclude": body.exclude, "functions": body.functions,
        "args": body.args, "returns": body.returns, "max_rate": body.max_rate,
        "duration": body.duration,
    });
    let mut params = spec.clone();
    params["id"] = json!(id);
    let mut processes = Vec::new();
    let mut started = 0;
    for (process_id, pid) in targets {
        match super::calls::call(
            shared,
            process_id,
            "trace.start",
            params.clone(),
            CALL_TIMEOUT,
        )
        .await
        {
            Ok(status) => {
                started += 1;
                processes.push(json!({"process_id": process_id, "pid": pid, "status": status}));
            }
            Err(e) => {
                let (kind, message) = call_error_text(&e);
                processes.push(json!({"process_id": process_id, "pid": pid,
                    "error": {"kind": kind, "message": message}}));
            }
        }
    }
    if started == 0 {
        let first = processes
            .first()
            .and_then(|p| p["error"]["message"].as_str())
            .unwrap_or("no process could start it")
            .to_owned();
        return Err(Error::new(
            ErrorKind::NotStarted,
            format!("the trace could not start: {first}"),
        ));
    }
    let now = crate::now();
    let record = scry_store::TraceRecord {
        id: id.clone(),
        created_at: now,
        updated_at: now,
        data: json!({
            "target": body.target, "spec": spec, "state": "running",
            "started_at": now, "stopped_at": null, "processes": processes,
        }),
    };
    let doc = trace_doc(&record, now);
    let store = shared.store.clone();
    blocking(move || store.put_trace(&record)).await?;
    shared.publish("trace", json!({"trace": id, "state": "running"}));
    Ok(doc)
}

/// The API's view of a stored trace: the record's document, its id and its state now (a trace
/// with a duration that has passed is `ended`).
fn trace_doc(r: &scry_store::TraceRecord, now: f64) -> Value {
    let mut doc = r.data.clone();
    doc["id"] = json!(r.id);
    if doc["state"] == "running" {
        if let (Some(d), Some(s)) = (doc["spec"]["duration"].as_f64(), doc["started_at"].as_f64()) {
            if now >= s + d {
                doc["state"] = json!("ended");
                doc["stopped_at"] = json!(s + d);
            }
        }
    }
    doc
}

async fn load(shared: &Shared, id: &str) -> Result<scry_store::TraceRecord> {
    let store = shared.store.clone();
    let key = id.to_owned();
    blocking(move || store.trace(&key)).await?.ok_or_else(|| {
        Error::not_found(format!("no trace `{id}`")).hint("`scry trace list` lists the traces")
    })
}

/// The newest traces (`limit`, default 100).
pub async fn list(shared: &Shared, limit: Option<usize>) -> Result<Value> {
    let store = shared.store.clone();
    let limit = limit.unwrap_or(100);
    let rows = blocking(move || store.traces(limit)).await?;
    let now = crate::now();
    let traces: Vec<Value> = rows.iter().map(|r| trace_doc(r, now)).collect();
    Ok(json!({ "traces": traces }))
}

/// One trace.
pub async fn get(shared: &Shared, id: &str) -> Result<Value> {
    let r = load(shared, id).await?;
    Ok(trace_doc(&r, crate::now()))
}

/// Stops a trace in every process where it started.
pub async fn stop(shared: &Shared, id: &str) -> Result<Value> {
    let mut r = load(shared, id).await?;
    let now = crate::now();
    let mut processes: Vec<Value> = r.data["processes"].as_array().cloned().unwrap_or_default();
    for p in processes.iter_mut() {
        let Some(process_id) = p["process_id"].as_i64() else {
            continue;
        };
        if p.get("error").is_some() {
            continue;
        }
        match super::calls::call(
            shared,
            process_id,
            "trace.stop",
            json!({"id": id}),
            CALL_TIMEOUT,
        )
        .await
        {
            Ok(status) => p["status"] = status,
            Err(e) => {
                // Already over there (duration, disconnected): say so, it is not an error.
                let (kind, message) = call_error_text(&e);
                p["stop"] = json!({"kind": kind, "message": message});
            }
        }
    }
    let was = trace_doc(&r, now);
    r.data["processes"] = json!(processes);
    if was["state"] == "running" {
        r.data["state"] = json!("stopped");
        r.data["stopped_at"] = json!(now);
    }
    r.updated_at = now;
    let doc = trace_doc(&r, now);
    let store = shared.store.clone();
    blocking(move || store.put_trace(&r)).await?;
    shared.publish("trace", json!({"trace": id, "state": doc["state"]}));
    Ok(doc)
}

/// The trace's events, oldest first, a page at a time (`after_id` = the last id seen).
pub async fn events(
    shared: &Shared,
    id: &str,
    after_id: Option<i64>,
    limit: Option<usize>,
) -> Result<Value> {
    load(shared, id).await?;
    let query = scry_store::EventQuery {
        source: Some(id.to_owned()),
        process_id: None,
        kind: Some("trace".into()),
        since: None,
        until: None,
        after_id: Some(after_id.unwrap_or(0)),
        limit: limit.unwrap_or(1000),
        order: scry_store::Order::Oldest,
    };
    let store = shared.store.clone();
    let page = blocking(move || store.events(&query)).await?;
    let pids: std::collections::HashMap<i64, u32> = shared
        .registry()
        .views()
        .into_iter()
        .map(|v| (v.id, v.pid))
        .collect();
    let events: Vec<Value> = page
        .events
        .into_iter()
        .map(|e| {
            let pid = pids.get(&e.process_id).copied();
            let mut v = serde_json::to_value(e).unwrap_or(Value::Null);
            v["pid"] = json!(pid);
            v
        })
        .collect();
    Ok(json!({"events": events, "truncated": page.truncated}))
}

/// Live events of one trace (`id` = a trace id, or `all` for every trace): SSE events named
/// `trace` whose data is `{process_id, pid, kind, source, t_hit, t_recv, data}`, `data` being
/// one batch of records (docs/protocol.md "Trace events").
pub async fn live(
    shared: &Shared,
    id: String,
) -> Result<impl FnMut(&crate::LiveEvent) -> Option<&'static str> + Send + 'static> {
    if id != "all" {
        load(shared, &id).await?;
    }
    Ok(move |ev: &crate::LiveEvent| {
        if ev.topic != "event" || ev.data["kind"] != "trace" {
            return None;
        }
        if id != "all" && ev.data["source"].as_str() != Some(id.as_str()) {
            return None;
        }
        Some("trace")
    })
}

/// Every stored batch of a trace's records, oldest first (at most
/// [`scry_store::MAX_QUERY_LIMIT`]; `truncated` says when there were more).
pub async fn batches(shared: &Shared, id: &str) -> Result<scry_store::EventPage> {
    load(shared, id).await?;
    let store = shared.store.clone();
    let q = scry_store::EventQuery {
        source: Some(id.to_owned()),
        kind: Some("trace".into()),
        limit: scry_store::MAX_QUERY_LIMIT,
        order: scry_store::Order::Oldest,
        after_id: Some(0),
        ..Default::default()
    };
    blocking(move || store.events(&q)).await
}

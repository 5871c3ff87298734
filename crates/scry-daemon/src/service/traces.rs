//! Call traces (`scry trace`): start a trace in the agents of one or more live processes
//! (`trace.start` through [`super::calls::call`]), stop it, list and show them, read
//! their events, and follow them live (server-sent events).
//!
//! The trace's metadata (spec, targets, state) is a row of the store's `traces` table; its
//! events are ordinary events of kind `trace` whose `source` is the trace id
//! (docs/protocol.md "Trace events"). Not for: building call trees or exports (the CLI does
//! that from the events).

use std::time::Duration;

use scry_api::{
    NewTrace, TraceEvents, TraceFailure, TraceList, TraceProcess, TraceSpec, TraceState,
    TraceStatus, TraceView,
};
use serde::Serialize;
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

/// Whether a process goes by `name`: the name given to `scry.init`, else its script's file name
/// (with or without `.py`).
fn named(v: &scry_api::ProcessView, name: &str) -> bool {
    v.name.as_deref() == Some(name)
        || script_name(&v.argv).as_deref() == Some(name)
        || script_name(&v.argv).as_deref() == Some(&format!("{name}.py"))
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
            (None, None) => target == "all" || named(v, target),
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

/// The processes of a target narrowed to `pid`, when given: it must be one of them.
fn narrow(targets: Vec<(i64, u32)>, target: &str, pid: Option<u32>) -> Result<Vec<(i64, u32)>> {
    let Some(pid) = pid else {
        return Ok(targets);
    };
    let pids: Vec<String> = targets.iter().map(|(_, p)| p.to_string()).collect();
    let narrowed: Vec<(i64, u32)> = targets.into_iter().filter(|(_, p)| *p == pid).collect();
    if narrowed.is_empty() {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "pid {pid} is not one of the connected processes `{target}` means: pids {}",
                pids.join(", ")
            ),
        )
        .hint("give one of those pids, or leave out the pid to trace them all"));
    }
    Ok(narrowed)
}

fn call_failure(e: &CallError) -> TraceFailure {
    let (kind, message) = match e {
        CallError::Refused { kind, message } => (kind.clone(), message.clone()),
        CallError::Unsupported { .. } => ("unsupported".into(), e.to_string()),
        CallError::NotConnected { .. } => ("not_connected".into(), e.to_string()),
        _ => ("failed".into(), e.to_string()),
    };
    TraceFailure { kind, message }
}

/// An agent's answer to `trace.start` or `trace.stop`. One that is not a status does not make
/// the call a failure (the agent did what it was asked): it becomes a status that says so.
fn status_of(answer: Value) -> TraceStatus {
    serde_json::from_value(answer).unwrap_or_else(|e| TraceStatus {
        note: Some(format!("the agent's status was not understood: {e}")),
        ..TraceStatus::default()
    })
}

/// What agents get with `trace.start` (docs/protocol.md "Trace events"): the spec, then the id.
#[derive(Serialize)]
struct StartParams<'a> {
    #[serde(flatten)]
    spec: &'a TraceSpec,
    id: &'a str,
}

/// Starts a trace in every process the request's target names; refused when none could.
pub async fn start(shared: &Shared, body: NewTrace) -> Result<TraceView> {
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
    let targets = narrow(
        resolve_target(shared, body.target.trim())?,
        body.target.trim(),
        body.pid,
    )?;
    let id = crate::new_id("tr");
    let spec = TraceSpec::from(&body);
    let params = serde_json::to_value(StartParams {
        spec: &spec,
        id: &id,
    })
    .map_err(|e| Error::internal(e.to_string()))?;
    let mut processes = Vec::new();
    let mut started = 0;
    for (process_id, pid) in targets {
        let mut process = TraceProcess {
            process_id,
            pid,
            status: None,
            error: None,
            stop: None,
        };
        match super::calls::call(
            shared,
            process_id,
            "trace.start",
            params.clone(),
            CALL_TIMEOUT,
        )
        .await
        {
            Ok(answer) => {
                started += 1;
                process.status = Some(status_of(answer));
            }
            Err(e) => process.error = Some(call_failure(&e)),
        }
        processes.push(process);
    }
    if started == 0 {
        let first = processes
            .first()
            .and_then(|p| p.error.as_ref())
            .map_or("no process could start it", |e| e.message.as_str());
        return Err(Error::new(
            ErrorKind::NotStarted,
            format!("the trace could not start: {first}"),
        ));
    }
    let (notes, hint) = selection_notes(&spec, &processes);
    let now = crate::now();
    let view = TraceView {
        target: body.target,
        spec,
        state: TraceState::Running,
        started_at: now,
        stopped_at: None,
        processes,
        notes,
        hint,
        id,
    };
    save(shared, &view, now, now).await?;
    shared.publish("trace", json!({"trace": view.id, "state": view.state}));
    Ok(as_of(view, now))
}

/// What to say of processes where the trace selected no function (it runs there, and a
/// module imported later may still match), and, when an include looks like a dotted function
/// name (`pipeline.load`: includes are module names), the `module:function` it likely meant.
fn selection_notes(spec: &TraceSpec, processes: &[TraceProcess]) -> (Vec<String>, Option<String>) {
    let empty: Vec<String> = processes
        .iter()
        .filter(|p| p.status.as_ref().is_some_and(|s| s.functions == 0))
        .map(|p| p.pid.to_string())
        .collect();
    if empty.is_empty() {
        return (Vec::new(), None);
    }
    let what: Vec<String> = spec
        .include
        .iter()
        .chain(&spec.functions)
        .map(|p| format!("`{p}`"))
        .collect();
    let note = format!(
        "no function selected in pid {}: no loaded module holds code matching {} (a module \
         imported while the trace runs still can)",
        empty.join(", "),
        if what.is_empty() {
            "`__main__`".to_owned()
        } else {
            what.join(", ")
        }
    );
    let dotted: Vec<String> = spec
        .include
        .iter()
        .filter(|p| !p.contains(['/', ':', '*', '?', '[']) && !p.ends_with(".py"))
        .filter_map(|p| p.rsplit_once('.'))
        .map(|(module, function)| {
            format!("if `{function}` is a function of module `{module}`, trace it with `--function {module}:{function}`")
        })
        .collect();
    let hint = if dotted.is_empty() {
        "check the module's name as the process imports it: `--include myapp` takes `myapp` \
         and its submodules, `--include app/jobs.py` a file, `--function module:function` a \
         function"
            .to_owned()
    } else {
        format!(
            "an include names modules, not functions: {}",
            dotted.join("; ")
        )
    };
    (vec![note], Some(hint))
}

/// Keeps the trace's document in the store (the view itself, as the API shows it).
async fn save(shared: &Shared, view: &TraceView, created_at: f64, now: f64) -> Result<()> {
    let record = scry_store::TraceRecord {
        id: view.id.clone(),
        created_at,
        updated_at: now,
        data: serde_json::to_value(view).map_err(|e| Error::internal(e.to_string()))?,
    };
    let store = shared.store.clone();
    blocking(move || store.put_trace(&record)).await
}

/// The trace as it stands at `now`: a running trace whose duration has passed is `ended`
/// (its agents stop it by themselves; the stored document is not rewritten for that).
fn as_of(mut view: TraceView, now: f64) -> TraceView {
    if view.state == TraceState::Running {
        if let Some(d) = view.spec.duration {
            if now >= view.started_at + d {
                view.state = TraceState::Ended;
                view.stopped_at = Some(view.started_at + d);
            }
        }
    }
    view
}

/// A stored trace's document, with its id (documents written before the view was typed
/// did not hold it).
fn stored_view(r: &scry_store::TraceRecord) -> Result<TraceView> {
    let mut view: TraceView = serde_json::from_value(r.data.clone()).map_err(|e| {
        Error::internal(format!("the stored trace `{}` is not readable: {e}", r.id))
    })?;
    view.id.clone_from(&r.id);
    Ok(view)
}

async fn load(shared: &Shared, id: &str) -> Result<scry_store::TraceRecord> {
    let store = shared.store.clone();
    let key = id.to_owned();
    blocking(move || store.trace(&key)).await?.ok_or_else(|| {
        Error::not_found(format!("no trace `{id}`")).hint("`scry trace list` lists the traces")
    })
}

/// The newest traces (`limit`, default 100). A stored trace that cannot be read is left out
/// (and logged) rather than hiding every other one.
pub async fn list(shared: &Shared, limit: Option<usize>) -> Result<TraceList> {
    let store = shared.store.clone();
    let limit = limit.unwrap_or(100);
    let rows = blocking(move || store.traces(limit)).await?;
    let now = crate::now();
    let traces = rows
        .iter()
        .filter_map(|r| match stored_view(r) {
            Ok(view) => Some(as_of(view, now)),
            Err(e) => {
                tracing::warn!("{}", e.message);
                None
            }
        })
        .collect();
    Ok(TraceList { traces })
}

/// One trace.
pub async fn get(shared: &Shared, id: &str) -> Result<TraceView> {
    let r = load(shared, id).await?;
    Ok(as_of(stored_view(&r)?, crate::now()))
}

/// Stops a trace in every process where it started.
pub async fn stop(shared: &Shared, id: &str) -> Result<TraceView> {
    let r = load(shared, id).await?;
    let mut view = stored_view(&r)?;
    let now = crate::now();
    for p in view.processes.iter_mut() {
        if p.error.is_some() {
            continue;
        }
        match super::calls::call(
            shared,
            p.process_id,
            "trace.stop",
            json!({"id": id}),
            CALL_TIMEOUT,
        )
        .await
        {
            Ok(answer) => p.status = Some(status_of(answer)),
            // Already over there (duration, disconnected): say so, it is not an error.
            Err(e) => p.stop = Some(call_failure(&e)),
        }
    }
    // One that ended by its duration keeps `running` stored and shows `ended` (as_of).
    if as_of(view.clone(), now).state == TraceState::Running {
        view.state = TraceState::Stopped;
        view.stopped_at = Some(now);
    }
    save(shared, &view, r.created_at, now).await?;
    let view = as_of(view, now);
    shared.publish("trace", json!({"trace": id, "state": view.state}));
    Ok(view)
}

/// Stops every running trace of the process(es) `target` names (a pid, or a process name as
/// [`start`] takes it), or started with `target` as its own (`all`, `run:SESSION`); refused
/// when none runs there.
pub async fn stop_in(shared: &Shared, target: &str) -> Result<TraceList> {
    let target = target.trim();
    let pids: Vec<u32> = match target.parse::<u32>() {
        Ok(pid) => vec![pid],
        Err(_) => shared
            .registry()
            .views()
            .iter()
            .filter(|v| named(v, target))
            .map(|v| v.pid)
            .collect(),
    };
    let running: Vec<TraceView> = list(shared, Some(1000))
        .await?
        .traces
        .into_iter()
        .filter(|t| t.state == TraceState::Running)
        .filter(|t| {
            t.target == target
                || t.processes
                    .iter()
                    .any(|p| p.status.is_some() && pids.contains(&p.pid))
        })
        .collect();
    if running.is_empty() {
        return Err(
            Error::not_found(format!("no trace is running in `{target}`"))
                .hint("`scry trace list` lists the traces and where they run"),
        );
    }
    let mut traces = Vec::new();
    for t in running {
        traces.push(stop(shared, &t.id).await?);
    }
    Ok(TraceList { traces })
}

/// The trace's events, oldest first, a page at a time (`after_id` = the last id seen).
pub async fn events(
    shared: &Shared,
    id: &str,
    after_id: Option<i64>,
    limit: Option<usize>,
) -> Result<TraceEvents> {
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
    let events = super::events::events_of(shared, page.events);
    Ok(TraceEvents {
        events,
        truncated: page.truncated,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A row as daemons before the typed view stored it: no `id` in the document.
    fn legacy_row(duration: Option<f64>) -> scry_store::TraceRecord {
        scry_store::TraceRecord {
            id: "tr-1".into(),
            created_at: 100.0,
            updated_at: 100.0,
            data: json!({"target": "app", "spec": {"include": [], "exclude": [],
                "functions": ["app:run"], "args": false, "returns": false, "max_rate": null,
                "duration": duration}, "state": "running", "started_at": 100.0,
                "stopped_at": null, "processes": [{"process_id": 1, "pid": 42,
                "status": {"id": "tr-1", "backend": "bytecode", "tool_id": null, "functions": 1,
                "not_instrumented": 0, "recorded": 3, "dropped": 0, "ended": null, "note": null,
                "started_at": 100.0}}]}),
        }
    }

    fn started(pid: u32, functions: u64) -> TraceProcess {
        TraceProcess {
            process_id: 1,
            pid,
            status: Some(TraceStatus {
                functions,
                ..TraceStatus::default()
            }),
            error: None,
            stop: None,
        }
    }

    #[test]
    fn a_trace_that_selects_nothing_says_so_and_a_dotted_include_gets_its_function() {
        let spec = TraceSpec {
            include: vec!["pipeline.load".into(), "app/".into()],
            ..TraceSpec::default()
        };
        let (notes, hint) = selection_notes(&spec, &[started(7, 0), started(8, 3)]);
        assert_eq!(notes.len(), 1);
        assert!(
            notes[0].starts_with("no function selected in pid 7:"),
            "{notes:?}"
        );
        assert!(notes[0].contains("`pipeline.load`"), "{notes:?}");
        let hint = hint.expect("a hint");
        assert!(hint.contains("`--function pipeline:load`"), "{hint}");
        assert!(!hint.contains("app/"), "{hint}");
        // Something selected everywhere: nothing to say.
        assert_eq!(selection_notes(&spec, &[started(8, 3)]), (Vec::new(), None));
        // A plain module that selected nothing: no function to suggest, but how to name one.
        let plain = TraceSpec {
            include: vec!["pipeline".into()],
            ..TraceSpec::default()
        };
        let (_, hint) = selection_notes(&plain, &[started(7, 0)]);
        assert!(!hint.expect("a hint").contains("pipeline:"));
    }

    #[test]
    fn a_legacy_row_reads_with_its_id_last_as_the_api_always_showed_it() {
        let view = stored_view(&legacy_row(None)).expect("readable");
        assert_eq!(view.id, "tr-1");
        let text = serde_json::to_string(&view).expect("json");
        assert!(text.ends_with(r#","id":"tr-1"}"#), "{text}");
        assert!(
            text.starts_with(r#"{"target":"app","spec":{"include":[]"#),
            "{text}"
        );
    }

    #[test]
    fn a_running_trace_past_its_duration_shows_ended_at_its_end() {
        let view = stored_view(&legacy_row(Some(5.0))).expect("readable");
        assert_eq!(as_of(view.clone(), 104.0).state, TraceState::Running);
        let ended = as_of(view, 105.0);
        assert_eq!(ended.state, TraceState::Ended);
        assert_eq!(ended.stopped_at, Some(105.0));
    }

    #[test]
    fn an_unreadable_row_is_an_internal_error_and_an_odd_status_a_note() {
        let mut row = legacy_row(None);
        row.data = json!({"target": 7});
        let err = stored_view(&row).expect_err("not a trace");
        assert_eq!(err.kind, ErrorKind::Internal);
        let status = status_of(json!({"functions": "many"}));
        assert!(status
            .note
            .is_some_and(|n| n.starts_with("the agent's status was not understood")));
    }
}

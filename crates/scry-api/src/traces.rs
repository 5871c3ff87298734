//! Call traces: `POST /api/v1/traces` (and the MCP tool `trace_start`) takes a [`NewTrace`];
//! starting, showing and stopping a trace answer a [`TraceView`], `GET /api/v1/traces` a
//! [`TraceList`] (as does `POST /api/v1/traces/stop`, given a [`StopTraces`]), `GET
//! /api/v1/traces/{id}/events` a page of [`TraceEvents`]
//! (docs/protocol.md "Trace events").

use serde::{Deserialize, Serialize};

/// A request to start a call trace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTrace {
    /// A pid or a process name (matched against the name given to `scry.init`, else the
    /// script's file name: every connected process of the name); `all` traces every connected
    /// process, `run` the processes of every `scry run`, `run:SESSION` those of one `scry run`
    /// session.
    pub target: String,
    /// Only the process with this pid among those `target` means (refused when it is not one
    /// of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Only modules matching these patterns (default: the program's own code).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// Never modules matching these patterns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// Only calls of these functions (`module:function`) and what they call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub functions: Vec<String>,
    /// Record call arguments.
    #[serde(default)]
    pub args: bool,
    /// Record return values.
    #[serde(default)]
    pub returns: bool,
    /// At most this many events a second per process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rate: Option<f64>,
    /// Stop by itself after this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<f64>,
}

/// What a trace selects and records: the request's options, as the trace keeps them (and as the
/// agents get them with the trace's id, `trace.start` in docs/protocol.md "Trace events").
///
/// Every field is always present in the JSON (empty lists, `null`), unlike in [`NewTrace`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TraceSpec {
    /// Only modules matching these patterns (empty: the program's own code).
    #[serde(default)]
    pub include: Vec<String>,
    /// Never modules matching these patterns.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Only calls of these functions (`module:function`) and what they call.
    #[serde(default)]
    pub functions: Vec<String>,
    /// Call arguments are recorded.
    #[serde(default)]
    pub args: bool,
    /// Return values are recorded.
    #[serde(default)]
    pub returns: bool,
    /// At most this many events a second per process (`null`: the agent's default).
    #[serde(default)]
    pub max_rate: Option<f64>,
    /// It stops by itself this many seconds after it started (`null`: when stopped).
    #[serde(default)]
    pub duration: Option<f64>,
}

impl From<&NewTrace> for TraceSpec {
    fn from(t: &NewTrace) -> TraceSpec {
        TraceSpec {
            include: t.include.clone(),
            exclude: t.exclude.clone(),
            functions: t.functions.clone(),
            args: t.args,
            returns: t.returns,
            max_rate: t.max_rate,
            duration: t.duration,
        }
    }
}

/// Where a trace stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceState {
    /// Started, and neither stopped nor past its duration.
    Running,
    /// Stopped (`POST /api/v1/traces/{id}/stop`).
    Stopped,
    /// Its duration passed.
    Ended,
}

impl TraceState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            TraceState::Running => "running",
            TraceState::Stopped => "stopped",
            TraceState::Ended => "ended",
        }
    }
}

/// A trace's status in one process, as its agent answers `trace.start` and `trace.stop`
/// (docs/protocol.md "Trace events"). Every field has a default, so that an agent of another
/// version that leaves one out is still understood.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TraceStatus {
    /// The trace id.
    #[serde(default)]
    pub id: String,
    /// The hook the agent uses: `sys.monitoring`, `bytecode` or `setprofile`.
    #[serde(default)]
    pub backend: Option<String>,
    /// The `sys.monitoring` tool id it holds (`null` with the other backends).
    #[serde(default)]
    pub tool_id: Option<u32>,
    /// How many functions were selected and instrumented.
    #[serde(default)]
    pub functions: u64,
    /// How many selected functions could not be instrumented.
    #[serde(default)]
    pub not_instrumented: u64,
    /// Records recorded so far (sent, or waiting for the link).
    #[serde(default)]
    pub recorded: u64,
    /// Records not recorded (over the `max_rate` budget, or a buffer the link could not drain).
    #[serde(default)]
    pub dropped: u64,
    /// Why it ended in that process (`stopped`, `duration`, `disconnected`); `null` while it
    /// runs.
    #[serde(default)]
    pub ended: Option<String>,
    /// What the agent wants said about it (e.g. why that backend).
    #[serde(default)]
    pub note: Option<String>,
    /// When it started in that process (epoch seconds).
    #[serde(default)]
    pub started_at: Option<f64>,
    /// Fields an agent of a newer version adds, kept as they are (after the known ones).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Why an agent did not do what the daemon asked of a trace: the agent's refusal or the call's
/// failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceFailure {
    /// What kind of failure: the agent's error kind (e.g. `busy`, `not_found`, `unavailable`),
    /// or `unsupported` (no trace engine there), `not_connected`, `failed`.
    pub kind: String,
    /// What happened, for a person.
    pub message: String,
}

/// One process a trace was started in (or could not be).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceProcess {
    /// Store row id of the process.
    pub process_id: i64,
    /// Its pid.
    pub pid: u32,
    /// The trace's status there: the agent's answer to the start, then to the stop. Absent when
    /// it did not start there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TraceStatus>,
    /// Why it did not start there (then there is no `status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TraceFailure>,
    /// Why stopping it there failed: usually it was already over there (its duration passed,
    /// the process disconnected), which is no error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<TraceFailure>,
}

/// A trace as every trace endpoint shows it (`POST /api/v1/traces`, `GET
/// /api/v1/traces/{id}`, `POST /api/v1/traces/{id}/stop`, the MCP tools `trace_start` and
/// `trace_stop`). The daemon keeps this document in its store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceView {
    /// What it was asked to trace, as given (a pid, a name, `all`, `run`, `run:SESSION`).
    pub target: String,
    /// What it selects and records.
    pub spec: TraceSpec,
    /// Where it stands now: a running trace whose duration passed shows `ended`.
    pub state: TraceState,
    /// When it started (epoch seconds).
    pub started_at: f64,
    /// When it stopped or ended (`null` while running).
    #[serde(default)]
    pub stopped_at: Option<f64>,
    /// Every process the target named, started or not.
    #[serde(default)]
    pub processes: Vec<TraceProcess>,
    /// What the start has to say about it: e.g. a process where it selected no function.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// What to do about the notes (e.g. the `module:function` a dotted include meant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// The trace id (`tr-…`), also the `source` of its events. It comes last in the JSON, as it
    /// always has.
    #[serde(default)]
    pub id: String,
}

/// `POST /api/v1/traces/stop`: stop the running traces of a process, named as `scry trace start`
/// names it; the answer is a [`TraceList`] of the traces it stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopTraces {
    /// A pid or a process name (as in [`NewTrace::target`]), or a trace's own target as it was
    /// given (`all`, `run:SESSION`): every running trace that runs in that process (or was
    /// started with that target) stops.
    pub target: String,
}

/// `GET /api/v1/traces`: the newest traces first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceList {
    /// The traces.
    pub traces: Vec<TraceView>,
}

/// `GET /api/v1/traces/{id}/events`: a page of the trace's events, oldest first. Each is an
/// event of kind `trace` whose `source` is the trace id and whose `data` is a batch of records
/// from one process as the agent sent it: `trace`, `start`, `functions`, `threads`, `records`,
/// `dropped`, and `ended` in a process's last one (docs/protocol.md "Trace events").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceEvents {
    /// The events.
    pub events: Vec<crate::Event>,
    /// More events matched than the page's limit allowed: ask again after the last id.
    pub truncated: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trace as the daemon has always written it (keys in this order): one process started,
    /// one refused, one whose stop failed.
    const STOPPED: &str = r#"{"target":"all","spec":{"include":["app."],"exclude":[],"functions":[],"args":true,"returns":false,"max_rate":5000.0,"duration":null},"state":"stopped","started_at":1795272325.85,"stopped_at":1795272330.5,"processes":[{"process_id":3,"pid":4242,"status":{"id":"tr-3f2a9c0d1e","backend":"sys.monitoring","tool_id":4,"functions":12,"not_instrumented":0,"recorded":310,"dropped":2,"ended":"stopped","note":null,"started_at":1795272325.86}},{"process_id":4,"pid":4243,"error":{"kind":"busy","message":"trace tr-1 is running in this process; stop it first"}},{"process_id":5,"pid":4244,"status":{"id":"tr-3f2a9c0d1e","backend":"setprofile","tool_id":null,"functions":1,"not_instrumented":1,"recorded":0,"dropped":0,"ended":null,"note":"threads started before the trace are not traced","started_at":1795272325.9},"stop":{"kind":"not_connected","message":"pid 4244 is not connected"}}],"id":"tr-3f2a9c0d1e"}"#;

    #[test]
    fn a_trace_reads_and_writes_back_byte_for_byte() {
        let view: TraceView = serde_json::from_str(STOPPED).expect("parse");
        assert_eq!(view.state, TraceState::Stopped);
        assert_eq!(view.processes.len(), 3);
        assert_eq!(
            view.processes[0].status.as_ref().map(|s| s.recorded),
            Some(310)
        );
        assert_eq!(
            view.processes[1].error.as_ref().map(|e| e.kind.as_str()),
            Some("busy")
        );
        assert_eq!(serde_json::to_string(&view).expect("json"), STOPPED);
    }

    #[test]
    fn an_agent_status_keeps_what_a_newer_agent_adds_and_tolerates_what_an_older_one_lacks() {
        let newer = r#"{"id":"tr-1","backend":"bytecode","tool_id":null,"functions":2,"not_instrumented":0,"recorded":5,"dropped":0,"ended":null,"note":null,"started_at":1.5,"threads":3}"#;
        let s: TraceStatus = serde_json::from_str(newer).expect("parse");
        assert_eq!(s.extra.get("threads"), Some(&serde_json::json!(3)));
        assert_eq!(serde_json::to_string(&s).expect("json"), newer);
        let older: TraceStatus =
            serde_json::from_str(r#"{"id":"tr-1","recorded":5}"#).expect("parse");
        assert_eq!(older.recorded, 5);
        assert_eq!(older.backend, None);
    }

    #[test]
    fn a_stored_trace_without_its_id_reads_and_the_spec_writes_every_field() {
        let stored = r#"{"target":"4242","spec":{"include":[],"exclude":[],"functions":["app:run"],"args":false,"returns":false,"max_rate":null,"duration":30.0},"state":"running","started_at":10.0,"stopped_at":null,"processes":[]}"#;
        let view: TraceView = serde_json::from_str(stored).expect("parse");
        assert_eq!(view.id, "");
        assert_eq!(
            serde_json::to_value(&view.spec).expect("json"),
            serde_json::json!({"include": [], "exclude": [], "functions": ["app:run"],
                "args": false, "returns": false, "max_rate": null, "duration": 30.0})
        );
    }

    #[test]
    fn an_event_page_writes_its_pid_even_when_unknown() {
        let page = r#"{"events":[{"id":7,"process_id":3,"kind":"trace","source":"tr-1","t_hit":1.25,"t_recv":1.5,"data":{"trace":"tr-1","records":[]},"pid":null,"name":null}],"truncated":false}"#;
        let events: TraceEvents = serde_json::from_str(page).expect("parse");
        assert_eq!(events.events[0].pid, None);
        assert_eq!(serde_json::to_string(&events).expect("json"), page);
    }
}

//! The types of scry's daemon API: what `POST /api/v1/...` takes and what it answers, shared by
//! the daemon (which serves them), the CLI and the MCP tools (which build them), so that a field
//! renamed on one side fails to compile on the other instead of turning into a silent `"?"`.
//!
//! What this crate is for: the JSON contract, documented here, field by field. What it is not
//! for: behaviour (validation beyond the shape, defaults that depend on the daemon's state, HTTP
//! status codes) — that is the daemon's. It depends on serde, `scry-proto` (the agent
//! protocol's types that the API carries as they are: rate modes, capture limits) and
//! `serde_json` for the payloads that are the agent's documents (captured values, a trace's
//! record batches, a kept dump).

pub mod attach;
pub mod daemon;
pub mod debug;
pub mod dumps;
pub mod error;
pub mod events;
pub mod lines;
pub mod probes;
pub mod processes;
pub mod repl;
pub mod traces;

pub use attach::{
    AttachPlan, AttachReport, AttachRequest, Detached, FollowList, FollowState, PidRequest,
    Restart, Unfollowed,
};
pub use daemon::{
    AgentEndpoint, Backpressure, DaemonStatus, Dropped, Health, ProcessCounts, RestoreOutcome,
    RestorePlan, RestoreTarget, Restored, Stopping, StoreStatus, SystemEvent, SystemEventList,
    UiLoginLink,
};
pub use debug::{DebugReport, DebugRequest, DebugTarget, NextWorker};
pub use dumps::{DumpAdded, DumpList, DumpSummary, DumpView};
pub use error::{Error, ErrorBody, ErrorKind};
pub use events::{
    Event, EventCounts, EventFilter, EventPage, EventStats, EventWait, ExpressionStats,
    NumericStats, ValueCounts,
};
pub use lines::{FoundLines, LineTable, LinesRequest};
pub use probes::{
    NewProbe, ProbeDef, ProbeInProcess, ProbeList, ProbeTotals, ProbeView, Removed, Target, Ttl,
};
pub use processes::{
    DiscoveredClient, ProcState, ProcessEntry, ProcessFailure, ProcessList, ProcessView, Slept,
    SleptProcess, WakeTarget, Woken, WokenProcess,
};
pub use repl::{
    BreakIn, BrokenIn, CompleteRequest, Completions, NewReplSession, ReplInput, ReplSent,
    ReplSessionCreated, ReplSessionDeleted, ReplSessionState, ReplSwitch, ReplView, TerminalEvent,
};
pub use scry_proto::{
    CaptureLimits, MetricKind, MetricSpec, ProbeSpec, ProbeState, ProbeStatus, RateMode,
};
pub use traces::{
    NewTrace, StopTraces, TraceEvents, TraceFailure, TraceList, TraceProcess, TraceSpec,
    TraceState, TraceStatus, TraceView,
};

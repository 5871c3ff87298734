//! The types of scry's daemon API: what `POST /api/v1/...` takes and what it answers, shared by
//! the daemon (which serves them), the CLI and the MCP tools (which build them), so that a field
//! renamed on one side fails to compile on the other instead of turning into a silent `"?"`.
//!
//! What this crate is for: the JSON contract, documented here, field by field. What it is not
//! for: behaviour (validation beyond the shape, defaults that depend on the daemon's state, HTTP
//! status codes) — that is the daemon's. It depends on serde, `scry-proto` (the agent
//! protocol's types that the API carries as they are: rate modes, capture limits) and
//! serde_json (for payloads that are open-ended JSON: a trace's record batches, a kept dump).
//!
//! The types move here one resource at a time (issue 15): errors, processes, probes, attaches,
//! debugpy, traces and kept dumps so far; the other resources still answer `serde_json::Value`
//! documents described in `docs/architecture.md`.

pub mod attach;
pub mod debug;
pub mod dumps;
pub mod error;
pub mod probes;
pub mod processes;
pub mod traces;

pub use attach::{AttachPlan, AttachReport, AttachRequest, PidRequest};
pub use debug::{DebugReport, DebugRequest};
pub use dumps::{DumpAdded, DumpList, DumpSummary, DumpView};
pub use error::{Error, ErrorBody, ErrorKind};
pub use probes::{
    NewProbe, ProbeDef, ProbeInProcess, ProbeList, ProbeTotals, ProbeView, Removed, Target, Ttl,
};
pub use processes::{DiscoveredClient, ProcState, ProcessEntry, ProcessList, ProcessView};
pub use scry_proto::{CaptureLimits, ProbeSpec, ProbeState, ProbeStatus, RateMode};
pub use traces::{
    NewTrace, TraceEvent, TraceEvents, TraceFailure, TraceList, TraceProcess, TraceSpec,
    TraceState, TraceStatus, TraceView,
};

//! The types of scry's daemon API: what `POST /api/v1/...` takes and what it answers, shared by
//! the daemon (which serves them), the CLI and the MCP tools (which build them), so that a field
//! renamed on one side fails to compile on the other instead of turning into a silent `"?"`.
//!
//! What this crate is for: the JSON contract, documented here, field by field. What it is not
//! for: behaviour (validation beyond the shape, defaults that depend on the daemon's state, HTTP
//! status codes) — that is the daemon's. It depends on serde and `scry-proto` only (the agent
//! protocol's types that the API carries as they are: rate modes, capture limits).
//!
//! The types move here one resource at a time (issue 15); probes first.

pub mod probes;

pub use probes::{NewProbe, Ttl};
pub use scry_proto::{CaptureLimits, RateMode};

//! What the daemon does, as typed async functions: one module per resource, each taking typed
//! inputs and returning a typed answer or a [`scry_api::Error`].
//!
//! The REST API ([`crate::api`]) and the MCP tools ([`crate::mcp`]) are thin adapters over these
//! functions; an agent's link ([`crate::link`]) calls some of them too (probe sync, REPL
//! notices). Nothing here knows HTTP: no status codes, no extractors, no responses. The state
//! they work on is [`crate::state::Shared`].
//!
//! Not for: parsing HTTP requests or shaping MCP answers (the adapters do that), SQL (the
//! store's), or another process's memory (`scry-proc`).

pub mod agents;
pub mod attach;
pub mod calls;
pub mod daemon;
pub mod debug;
pub mod dumps;
pub mod events;
pub mod follow;
pub mod lines;
pub mod metrics;
pub mod probes;
pub mod processes;
pub mod repl;
pub mod traces;

pub use scry_api::{Error, ErrorKind};

/// What every service function returns.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs a store call on the blocking pool; a store failure is an `internal` error.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, scry_store::StoreError> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(e.to_string()))?
        .map_err(store_error)
}

/// A store failure as a service error.
pub fn store_error(e: scry_store::StoreError) -> Error {
    Error::internal(format!("store: {e}"))
}

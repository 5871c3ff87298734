//! The one error type of the store.

use std::path::PathBuf;
use std::sync::Arc;

/// Everything that can go wrong in the store.
///
/// Errors that concern the database file name its path. A failed batch commit is shared by
/// every operation of that batch, so its cause is kept behind an [`Arc`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database file could not be opened or configured (missing parent directory, not a
    /// SQLite file, no permission, ...).
    #[error("cannot open the scry store at `{path}`")]
    Open {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },

    /// A schema migration step failed; the database was left at its previous version.
    #[error("upgrading the scry store at `{path}` to schema version {version} failed")]
    Migration {
        /// The database file.
        path: PathBuf,
        /// The schema version the failing step would have produced.
        version: i64,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },

    /// The database was written by a newer scry whose schema this one does not know.
    #[error(
        "the scry store at `{path}` has schema version {found}, but this scry supports only up \
         to version {supported}; use a newer scry, or another SCRY_HOME"
    )]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// The schema version found in the file (`PRAGMA user_version`).
        found: i64,
        /// The newest schema version this build knows.
        supported: i64,
    },

    /// The file is a SQLite database, but not one of scry's.
    #[error("`{path}` is a SQLite database but not a scry store: {reason}")]
    NotAScryStore {
        /// The database file.
        path: PathBuf,
        /// Why it was not recognised.
        reason: String,
    },

    /// A SQLite call outside the cases above failed.
    #[error("SQLite error")]
    Sqlite(#[from] rusqlite::Error),

    /// The batch this operation belonged to could not be committed (or was rolled back by
    /// SQLite); nothing of that batch was stored. Every operation of the batch gets this error.
    #[error("committing a batch of store writes failed; nothing in it was stored")]
    Commit {
        /// What SQLite said, shared by every operation of the batch.
        #[source]
        source: Arc<rusqlite::Error>,
    },

    /// A value could not be encoded as JSON.
    #[error("encoding {what} as JSON failed")]
    Json {
        /// What was being encoded.
        what: &'static str,
        /// What serde_json said.
        #[source]
        source: serde_json::Error,
    },

    /// An operation named a process row id that does not exist.
    #[error("no process with id {id} in the store")]
    UnknownProcess {
        /// The process row id.
        id: i64,
    },

    /// Another probe already has this name.
    #[error("a probe named `{name}` already exists")]
    ProbeNameTaken {
        /// The name in conflict.
        name: String,
    },

    /// The write queue is full: the writer cannot keep up. Nothing of the call was stored
    /// (including the `dropped` count passed with it); the caller should count these events as
    /// dropped.
    #[error("the store write queue is full; {events} events were not stored")]
    Backpressure {
        /// How many events the rejected call carried.
        events: usize,
    },

    /// The disk is full: events are not written (and counted as not stored) until space
    /// returns, so that the little room left serves process registrations and state changes.
    #[error("the disk of the store is full; these {events} events were not stored")]
    Full {
        /// How many events the rejected append carried.
        events: usize,
    },

    /// The writer thread has stopped (the store was closed, or the thread died).
    #[error("the store writer has stopped")]
    WriterGone,

    /// A blocking store call was made on the writer thread itself (from a commit callback),
    /// where it would wait for itself forever.
    #[error("a blocking store call was made from a commit callback, on the writer thread")]
    Reentrant,

    /// The writer thread could not be started.
    #[error("cannot start the store writer thread")]
    Spawn(#[source] std::io::Error),
}

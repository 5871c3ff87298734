//! SQLite persistence for the scry daemon: its memory across restarts.
//!
//! The daemon keeps here the processes it has seen, the probes it re-applies to every process
//! that (re)connects, the events agents report, its own system events, and how many events
//! were dropped on the way, per process and source, so that what was lost stays visible.
//!
//! # Main types
//!
//! - [`Store`]: a cloneable handle on one database file. [`Store::open`] creates or upgrades
//!   the schema and starts the writer thread; writes ([`Store::append_events`],
//!   [`Store::upsert_process`], [`Store::put_probe`], ...) go to that thread; reads
//!   ([`Store::events`], [`Store::processes`], ...) run on the caller's thread.
//! - Records going in: [`NewEvent`], [`ProcessRecord`], [`ProbeRecord`], [`SystemEvent`].
//!   Rows coming out: [`EventRow`], [`ProcessRow`], [`SystemEventRow`], [`DroppedRow`], all
//!   `Serialize` so the daemon can return them as JSON. JSON payloads are
//!   [`serde_json::Value`]s and stored as JSON text.
//! - [`EventQuery`] / [`EventPage`]: filtered, ordered, limited event reads; `after_id` with
//!   [`Order::Oldest`] follows new events without gaps.
//! - [`StoreOptions`] / [`Retention`]: batching and what is kept. Retention is enforced by
//!   the writer (age, and the newest N events per source).
//! - [`StoreError`]: the one error type.
//!
//! # Design: one writer thread, batched commits
//!
//! SQLite allows one writer at a time, and what makes it fast is few transactions, not many
//! connections. So every write goes through a single thread that owns the only write
//! connection: it takes operations from a bounded queue, executes as many as arrive within
//! `batch_delay` (up to `batch_max` events) in one transaction with cached prepared
//! statements, commits once, and then settles each operation (callbacks for appended events,
//! replies for calls that wait). Consequences:
//!
//! - Throughput: the commit cost is shared by a whole batch; JSON is encoded on the caller's
//!   thread, so the writer only binds and inserts (`examples/store_throughput.rs` measures it).
//! - No lock contention and no `SQLITE_BUSY` between our own writers; reads use separate
//!   connections and, thanks to WAL, never wait for the writer.
//! - Nothing is lost silently: a full queue is an error the caller sees
//!   ([`StoreError::Backpressure`]) and can count with [`Store::record_dropped`]; a failed
//!   commit is reported to every operation of its batch; an operation still queued when the
//!   writer stops is settled with [`StoreError::WriterGone`].
//! - An acknowledged event is committed with `synchronous=NORMAL` in WAL mode: it survives a
//!   crash of the daemon, though the last commits may be lost on power failure.
//!
//! # Not for
//!
//! No networking and no async runtime: the API is synchronous, and an async daemon wraps calls
//! in `spawn_blocking`. The store does not interpret what it keeps (probe specs and event
//! payloads are opaque JSON), and it decides nothing about processes (the daemon chooses keys
//! and states).

#![deny(missing_docs)]

mod error;
mod read;
mod schema;
mod store;
mod types;
mod writer;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags};

pub use error::StoreError;
pub use schema::SCHEMA_VERSION;
pub use store::{PendingAppend, Queued, Store};
pub use types::{
    CommitCallback, Counts, DroppedRow, DumpRecord, DumpRow, EventPage, EventQuery, EventRow,
    Level, NewEvent, Order, ProbeRecord, ProcessRecord, ProcessRow, ProcessState, Retention,
    RetentionReport, SourceTotals, StoreHealth, StoreOptions, StoreState, SystemEvent,
    SystemEventRow, TraceRecord, WriterStats, MAX_QUERY_LIMIT,
};

/// How long any connection waits for a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Now, in seconds since the epoch (0 if the clock is before it).
pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Opens the write connection and sets it up: WAL, `synchronous=NORMAL`, foreign keys.
pub(crate) fn open_writer_connection(path: &Path) -> Result<Connection, StoreError> {
    make_private(path);
    let setup = || -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(target: "store",
                path = %path.display(),
                %mode,
                "the store could not use WAL mode; reads will wait for writes"
            );
        }
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        // 32 MiB of page cache for the writer; the WAL is truncated back to 64 MiB.
        conn.pragma_update(None, "cache_size", -32_768)?;
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(conn)
    };
    setup().map_err(|source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    })
}

/// Makes the database file (created here when missing) and its `-wal` and `-shm` files mode
/// 0600 whatever the umask: the store holds what targets sent (values, stacks, REPL output).
/// SQLite creates `-wal` and `-shm` with the database file's own mode. Failures are left to
/// SQLite's open to report.
fn make_private(path: &Path) {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path);
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let p = std::path::PathBuf::from(p);
        // Never through a link: only a regular file of ours is tightened.
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_file()) {
            let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600));
        }
    }
}

//! The SQL the writer runs: transaction and savepoint helpers, and the statements the
//! operations share or that take more than one step (appends in multi-row chunks, report
//! claims, drop and unstored counts, process and probe upserts).
//!
//! Every function runs inside whatever transaction its caller opened and decides nothing:
//! when to begin, commit or give up is the batch loop's (`batch`). Operations of one plain
//! statement keep it inline in `Writer::execute`; retention's deletes are in `retention`.

use std::sync::OnceLock;

use rusqlite::{params, Connection, OptionalExtension};

use super::ops::{EncodedEvents, EncodedProbe, EncodedProcess};
use crate::{ProcessState, StoreError};

/// Runs one statement through the statement cache.
pub(super) fn exec_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

/// Runs `f` in a savepoint: all of it is kept, or none of it.
pub(super) fn in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    exec_cached(conn, "SAVEPOINT op")?;
    match f(conn) {
        Ok(v) => {
            exec_cached(conn, "RELEASE op")?;
            Ok(v)
        }
        Err(e) => {
            if !conn.is_autocommit() {
                let undo = exec_cached(conn, "ROLLBACK TO op")
                    .and_then(|()| exec_cached(conn, "RELEASE op"));
                if let Err(undo) = undo {
                    tracing::error!(target: "store", error = %undo, "store savepoint rollback failed");
                }
            }
            Err(e)
        }
    }
}

/// Runs `f` in its own transaction (used outside batches).
pub(super) fn in_transaction<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    exec_cached(conn, "BEGIN IMMEDIATE")?;
    let result = f(conn).and_then(|v| {
        exec_cached(conn, "COMMIT")?;
        Ok(v)
    });
    if result.is_err() {
        roll_back(conn);
    }
    result
}

/// Rolls the open transaction back, if there still is one (after some errors SQLite has
/// rolled it back itself).
pub(super) fn roll_back(conn: &Connection) {
    if !conn.is_autocommit() {
        if let Err(rollback) = conn.execute_batch("ROLLBACK") {
            tracing::error!(target: "store", error = %rollback, "store rollback failed");
        }
    }
}

/// How many events one multi-row `INSERT` carries: per-statement costs (the AUTOINCREMENT
/// bookkeeping, the foreign-key cursor) are paid once per chunk instead of once per event.
const INSERT_CHUNK: usize = 32;

fn insert_sql(rows: usize) -> String {
    let mut sql =
        String::from("INSERT INTO events (process_id, kind, source, t_hit, t_recv, data) VALUES ");
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str("(?1, ?, ?, ?, ?, ?)");
    }
    sql
}

/// The last report seq settled for (process, stream).
pub(super) fn last_claimed(
    conn: &Connection,
    process_id: i64,
    stream: &str,
) -> Result<Option<u64>, StoreError> {
    let last: Option<i64> = conn
        .prepare_cached("SELECT seq FROM report_streams WHERE process_id = ?1 AND stream = ?2")?
        .query_row(rusqlite::params![process_id, stream], |r| r.get(0))
        .optional()?;
    Ok(last.and_then(|s| u64::try_from(s).ok()))
}

/// Records `seq` as the last report of `stream`; false when it (or a later one) was settled
/// already. Reports of one stream are queued in order, so the last seq is enough.
pub(super) fn claim_report(
    conn: &Connection,
    process_id: i64,
    stream: &str,
    seq: u64,
) -> Result<bool, StoreError> {
    if last_claimed(conn, process_id, stream)?.is_some_and(|last| last >= seq) {
        return Ok(false);
    }
    let seq = i64::try_from(seq).unwrap_or(i64::MAX);
    conn.prepare_cached(
        "INSERT INTO report_streams (process_id, stream, seq) VALUES (?1, ?2, ?3)
         ON CONFLICT (process_id, stream) DO UPDATE SET seq = excluded.seq",
    )?
    .execute(rusqlite::params![process_id, stream, seq])?;
    Ok(true)
}

pub(super) fn append(
    conn: &Connection,
    process_id: i64,
    events: &EncodedEvents,
    dropped: u64,
    t_recv: f64,
) -> Result<(), StoreError> {
    static CHUNK_SQL: OnceLock<String> = OnceLock::new();
    require_process(conn, process_id)?;
    let mut chunks = events.rows.chunks_exact(INSERT_CHUNK);
    if chunks.len() > 0 {
        let mut stmt = conn.prepare_cached(CHUNK_SQL.get_or_init(|| insert_sql(INSERT_CHUNK)))?;
        stmt.raw_bind_parameter(1, process_id)?;
        for chunk in &mut chunks {
            for (i, row) in chunk.iter().enumerate() {
                events.bind(&mut stmt, row, 2 + 5 * i, t_recv)?;
            }
            stmt.raw_execute()?;
        }
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut stmt = conn.prepare_cached(&insert_sql(1))?;
        stmt.raw_bind_parameter(1, process_id)?;
        for row in rest {
            events.bind(&mut stmt, row, 2, t_recv)?;
            stmt.raw_execute()?;
        }
    }
    if dropped > 0 {
        add_dropped(conn, process_id, "", dropped, t_recv)?;
    }
    Ok(())
}

/// Fails with [`StoreError::UnknownProcess`] unless process `process_id` is registered.
fn require_process(conn: &Connection, process_id: i64) -> Result<(), StoreError> {
    let known = conn
        .prepare_cached("SELECT 1 FROM processes WHERE id = ?1")?
        .exists([process_id])?;
    if !known {
        return Err(StoreError::UnknownProcess { id: process_id });
    }
    Ok(())
}

pub(super) fn add_dropped(
    conn: &Connection,
    process_id: i64,
    source: &str,
    count: u64,
    at: f64,
) -> Result<(), StoreError> {
    if count == 0 {
        return Ok(());
    }
    require_process(conn, process_id)?;
    let count = i64::try_from(count).unwrap_or(i64::MAX);
    conn.prepare_cached(
        "INSERT INTO dropped_counts (process_id, source, dropped, updated_at) \
         VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (process_id, source) DO UPDATE SET \
         dropped = dropped + excluded.dropped, updated_at = excluded.updated_at",
    )?
    .execute(params![process_id, source, count, at])?;
    Ok(())
}

pub(super) fn upsert_process(conn: &Connection, e: &EncodedProcess) -> Result<i64, StoreError> {
    let p = &e.record;
    let id = conn
        .prepare_cached(
            "INSERT INTO processes (key, pid, ppid, host, name, python_version, executable, \
             argv, cwd, origin, state, state_since, first_seen, connected_since, last_heard, info) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?14, ?12, ?13, ?14, ?15) \
             ON CONFLICT (key) DO UPDATE SET \
             pid = excluded.pid, ppid = excluded.ppid, host = excluded.host, \
             name = excluded.name, python_version = excluded.python_version, \
             executable = excluded.executable, argv = excluded.argv, cwd = excluded.cwd, \
             origin = excluded.origin, \
             state_since = CASE WHEN state = excluded.state THEN state_since \
                           ELSE excluded.state_since END, \
             state = excluded.state, \
             first_seen = min(first_seen, excluded.first_seen), \
             connected_since = excluded.connected_since, \
             last_heard = max(last_heard, excluded.last_heard), info = excluded.info \
             RETURNING id",
        )?
        .query_row(
            params![
                p.key,
                p.pid,
                p.ppid,
                p.host,
                p.name,
                p.python_version,
                p.executable,
                e.argv,
                p.cwd,
                p.origin,
                p.state,
                p.first_seen,
                p.connected_since,
                p.last_heard,
                e.info
            ],
            |r| r.get(0),
        )?;
    Ok(id)
}

pub(super) fn set_process_state(
    conn: &Connection,
    id: i64,
    state: ProcessState,
    at: f64,
) -> Result<(), StoreError> {
    let changed = conn
        .prepare_cached(
            "UPDATE processes SET \
             state_since = CASE WHEN state = ?2 THEN state_since ELSE ?3 END, \
             connected_since = CASE WHEN ?2 <> 'awake' THEN NULL \
                               WHEN state = 'awake' THEN coalesce(connected_since, ?3) \
                               ELSE ?3 END, \
             last_heard = CASE WHEN ?2 = 'awake' THEN max(last_heard, ?3) ELSE last_heard END, \
             state = ?2 \
             WHERE id = ?1",
        )?
        .execute(params![id, state, at])?;
    if changed == 0 {
        return Err(StoreError::UnknownProcess { id });
    }
    Ok(())
}

pub(super) fn put_probe(conn: &Connection, p: &EncodedProbe) -> Result<(), StoreError> {
    if let Some(name) = &p.name {
        let taken = conn
            .prepare_cached("SELECT 1 FROM probes WHERE name = ?1 AND id <> ?2")?
            .exists(params![name, p.id])?;
        if taken {
            return Err(StoreError::ProbeNameTaken { name: name.clone() });
        }
    }
    conn.prepare_cached(
        "INSERT INTO probes (id, name, spec, enabled, group_name, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
         ON CONFLICT (id) DO UPDATE SET \
         name = excluded.name, spec = excluded.spec, enabled = excluded.enabled, \
         group_name = excluded.group_name, updated_at = excluded.updated_at",
    )?
    .execute(params![
        p.id,
        p.name,
        p.spec,
        p.enabled,
        p.group_name,
        p.created_at,
        p.updated_at
    ])?;
    Ok(())
}

/// Adds `n` to the durable count of events of `source` that a full disk kept out.
pub(super) fn count_unstored(conn: &Connection, source: &str, n: u64) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO unstored_counts (source, disk_full) VALUES (?1, ?2)
         ON CONFLICT (source) DO UPDATE SET disk_full = disk_full + excluded.disk_full",
    )?
    .execute(params![source, i64::try_from(n).unwrap_or(i64::MAX)])?;
    Ok(())
}

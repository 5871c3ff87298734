//! Reads: a small pool of read-only connections and the queries that use them.
//!
//! In WAL mode readers never block the writer nor wait for it, so reads run on the caller's
//! thread. Each query is its own read transaction: it sees everything committed before it
//! started (in particular everything before a returned [`Store::flush`](crate::Store::flush)).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, Value as SqlValue, ValueRef};
use rusqlite::{params_from_iter, Connection, OpenFlags};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{
    Counts, DroppedRow, DumpRecord, DumpRow, EventPage, EventQuery, EventRow, Order, ProbeRecord,
    ProcessRecord, ProcessRow, SourceTotals, StoreError, SystemEvent, SystemEventRow, TraceRecord,
    MAX_QUERY_LIMIT,
};

/// How many idle read connections are kept for reuse.
const MAX_IDLE_READERS: usize = 4;

/// A JSON text column, decoded into `T`.
struct Json<T>(T);

impl<T: DeserializeOwned> FromSql for Json<T> {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        serde_json::from_str(value.as_str()?)
            .map(Json)
            .map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

/// Read connections, opened on demand and kept for reuse.
pub(crate) struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    pub(crate) fn new(path: &Path) -> Self {
        Readers {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` on an idle read connection (opening one if none is idle) and puts the
    /// connection back afterwards.
    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let reused = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match reused {
            Some(conn) => conn,
            None => open_reader(&self.path).map_err(|source| StoreError::Open {
                path: self.path.clone(),
                source,
            })?,
        };
        let result = f(&conn);
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
        result
    }

    pub(crate) fn processes(&self) -> Result<Vec<ProcessRow>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, key, pid, ppid, host, name, python_version, executable, argv, cwd, \
                 origin, state, first_seen, connected_since, last_heard, info, state_since \
                 FROM processes ORDER BY id",
            )?;
            let rows = stmt
                .query_map([], |r| {
                    let Json(argv): Json<Vec<String>> = r.get(8)?;
                    let Json(info): Json<Value> = r.get(15)?;
                    Ok(ProcessRow {
                        id: r.get(0)?,
                        process: ProcessRecord {
                            key: r.get(1)?,
                            pid: r.get(2)?,
                            ppid: r.get(3)?,
                            host: r.get(4)?,
                            name: r.get(5)?,
                            python_version: r.get(6)?,
                            executable: r.get(7)?,
                            argv,
                            cwd: r.get(9)?,
                            origin: r.get(10)?,
                            state: r.get(11)?,
                            first_seen: r.get(12)?,
                            connected_since: r.get(13)?,
                            last_heard: r.get(14)?,
                            info,
                        },
                        state_since: r.get(16)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
    }

    pub(crate) fn dumps(&self, limit: usize) -> Result<Vec<DumpRow>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, taken_at, root_pid, tree, processes, python_processes, command, \
                 'null' FROM dumps ORDER BY id DESC LIMIT ?1",
            )?;
            let rows = stmt
                .query_map([limit.min(MAX_QUERY_LIMIT) as i64], dump_row)?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
    }

    pub(crate) fn dump(&self, id: i64) -> Result<Option<DumpRow>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, taken_at, root_pid, tree, processes, python_processes, command, \
                 data FROM dumps WHERE id = ?1",
            )?;
            let mut rows = stmt.query_map([id], dump_row)?;
            Ok(rows.next().transpose()?)
        })
    }

    pub(crate) fn traces(&self, limit: usize) -> Result<Vec<TraceRecord>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, created_at, updated_at, data FROM traces \
                 ORDER BY created_at DESC, id LIMIT ?1",
            )?;
            let rows = stmt
                .query_map([limit.min(MAX_QUERY_LIMIT) as i64], trace_row)?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
    }

    pub(crate) fn trace(&self, id: &str) -> Result<Option<TraceRecord>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, created_at, updated_at, data FROM traces WHERE id = ?1",
            )?;
            let mut rows = stmt.query_map([id], trace_row)?;
            Ok(rows.next().transpose()?)
        })
    }

    pub(crate) fn probes(&self) -> Result<Vec<ProbeRecord>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, name, spec, enabled, group_name, created_at, updated_at \
                 FROM probes ORDER BY created_at, id",
            )?;
            let rows = stmt
                .query_map([], |r| {
                    let Json(spec): Json<Value> = r.get(2)?;
                    Ok(ProbeRecord {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        spec,
                        enabled: r.get(3)?,
                        group_name: r.get(4)?,
                        created_at: r.get(5)?,
                        updated_at: r.get(6)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
    }

    pub(crate) fn events(&self, q: &EventQuery) -> Result<EventPage, StoreError> {
        let limit = q.limit.min(MAX_QUERY_LIMIT);
        // Following (`after_id`) walks the rowid from the cursor: the unary `+` keeps SQLite
        // from preferring the source/process indexes and sorting everything they match.
        let following = q.after_id.is_some();
        let hint = if following { "+" } else { "" };
        let mut sql =
            String::from("SELECT id, process_id, kind, source, t_hit, t_recv, data FROM events");
        let mut conditions: Vec<String> = Vec::new();
        let mut args: Vec<SqlValue> = Vec::new();
        if let Some(source) = &q.source {
            conditions.push(format!("{hint}source = ?"));
            args.push(SqlValue::Text(source.clone()));
        }
        if let Some(process_id) = q.process_id {
            conditions.push(format!("{hint}process_id = ?"));
            args.push(SqlValue::Integer(process_id));
        }
        if let Some(kind) = &q.kind {
            conditions.push("kind = ?".to_string());
            args.push(SqlValue::Text(kind.clone()));
        }
        if let Some(since) = q.since {
            conditions.push(format!("{hint}t_hit >= ?"));
            args.push(SqlValue::Real(since));
        }
        if let Some(until) = q.until {
            conditions.push(format!("{hint}t_hit < ?"));
            args.push(SqlValue::Real(until));
        }
        if let Some(after_id) = q.after_id {
            conditions.push("id > ?".to_string());
            args.push(SqlValue::Integer(after_id));
        }
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(match (following, q.order) {
            (true, Order::Newest) => " ORDER BY id DESC",
            (true, Order::Oldest) => " ORDER BY id ASC",
            (false, Order::Newest) => " ORDER BY t_hit DESC, id DESC",
            (false, Order::Oldest) => " ORDER BY t_hit ASC, id ASC",
        });
        // One more than asked tells whether the page is truncated.
        sql.push_str(" LIMIT ?");
        args.push(SqlValue::Integer(limit as i64 + 1));

        self.with(|conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut events: Vec<EventRow> = stmt
                .query_map(params_from_iter(args), |r| {
                    let Json(data): Json<Value> = r.get(6)?;
                    Ok(EventRow {
                        id: r.get(0)?,
                        process_id: r.get(1)?,
                        kind: r.get(2)?,
                        source: r.get(3)?,
                        t_hit: r.get(4)?,
                        t_recv: r.get(5)?,
                        data,
                    })
                })?
                .collect::<Result<_, _>>()?;
            let truncated = events.len() > limit;
            events.truncate(limit);
            Ok(EventPage { events, truncated })
        })
    }

    pub(crate) fn counts(&self) -> Result<Counts, StoreError> {
        self.with(|conn| {
            let counts = conn
                .prepare_cached(
                    "SELECT (SELECT count(*) FROM processes), (SELECT count(*) FROM probes), \
                     (SELECT count(*) FROM events), (SELECT count(*) FROM system_events), \
                     (SELECT coalesce(sum(dropped), 0) FROM dropped_counts)",
                )?
                .query_row([], |r| {
                    Ok(Counts {
                        processes: r.get(0)?,
                        probes: r.get(1)?,
                        events: r.get(2)?,
                        system_events: r.get(3)?,
                        dropped: r.get(4)?,
                    })
                })?;
            Ok(counts)
        })
    }

    pub(crate) fn totals_of(&self, source: &str) -> Result<SourceTotals, StoreError> {
        self.with(|conn| {
            let n: i64 = conn
                .prepare_cached("SELECT count(*) FROM events WHERE source = ?1")?
                .query_row([source], |r| r.get(0))?;
            let retired: i64 = conn
                .prepare_cached(
                    "SELECT coalesce(sum(by_age + by_cap), 0) FROM retired_counts WHERE source = ?1",
                )?
                .query_row([source], |r| r.get(0))?;
            let disk_full: i64 = conn
                .prepare_cached(
                    "SELECT coalesce(sum(disk_full), 0) FROM unstored_counts WHERE source = ?1",
                )?
                .query_row([source], |r| r.get(0))?;
            Ok(SourceTotals {
                stored: u64::try_from(n).unwrap_or(0),
                removed_by_retention: u64::try_from(retired).unwrap_or(0),
                not_stored_disk_full: u64::try_from(disk_full).unwrap_or(0),
            })
        })
    }

    pub(crate) fn dropped(&self) -> Result<Vec<DroppedRow>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT process_id, source, dropped, updated_at FROM dropped_counts \
                 ORDER BY process_id, source",
            )?;
            let rows = stmt
                .query_map([], |r| {
                    let source: String = r.get(1)?;
                    Ok(DroppedRow {
                        process_id: r.get(0)?,
                        source: (!source.is_empty()).then_some(source),
                        dropped: r.get(2)?,
                        updated_at: r.get(3)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
    }

    pub(crate) fn system_events(
        &self,
        since: Option<f64>,
        limit: usize,
    ) -> Result<Vec<SystemEventRow>, StoreError> {
        let limit = limit.min(MAX_QUERY_LIMIT) as i64;
        self.with(|conn| {
            // The newest `limit` rows, returned oldest first.
            let (sql, args) = match since {
                Some(since) => (
                    "SELECT * FROM (SELECT id, t, level, kind, message, data FROM system_events \
                     WHERE t >= ?1 ORDER BY t DESC, id DESC LIMIT ?2) ORDER BY t, id",
                    vec![SqlValue::Real(since), SqlValue::Integer(limit)],
                ),
                None => (
                    "SELECT * FROM (SELECT id, t, level, kind, message, data FROM system_events \
                     ORDER BY t DESC, id DESC LIMIT ?1) ORDER BY t, id",
                    vec![SqlValue::Integer(limit)],
                ),
            };
            let mut stmt = conn.prepare_cached(sql)?;
            let rows = stmt
                .query_map(params_from_iter(args), |r| {
                    let Json(data): Json<Value> = r.get(5)?;
                    Ok(SystemEventRow {
                        id: r.get(0)?,
                        event: SystemEvent {
                            t: r.get(1)?,
                            level: r.get(2)?,
                            kind: r.get(3)?,
                            message: r.get(4)?,
                            data,
                        },
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
    }
}

fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(crate::BUSY_TIMEOUT)?;
    conn.pragma_update(None, "query_only", true)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

fn dump_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DumpRow> {
    let Json(data): Json<Value> = r.get(7)?;
    Ok(DumpRow {
        id: r.get(0)?,
        dump: DumpRecord {
            taken_at: r.get(1)?,
            root_pid: r.get(2)?,
            tree: r.get(3)?,
            processes: r.get(4)?,
            python_processes: r.get(5)?,
            command: r.get(6)?,
            data,
        },
    })
}

fn trace_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TraceRecord> {
    let Json(data): Json<Value> = r.get(3)?;
    Ok(TraceRecord {
        id: r.get(0)?,
        created_at: r.get(1)?,
        updated_at: r.get(2)?,
        data,
    })
}

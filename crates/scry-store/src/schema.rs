//! The schema and its migrations.
//!
//! The schema version is `PRAGMA user_version`. [`MIGRATIONS`] is the ordered list of steps;
//! step `i` (0-based) turns version `i` into version `i + 1`. At open, every missing step runs
//! in one `BEGIN IMMEDIATE` transaction together with the version bump, so a failing step
//! leaves the file exactly as it was. Steps are append-only: never edit a released one.
//!
//! `PRAGMA application_id` marks the file as scry's, so that pointing scry at some other
//! SQLite database is refused instead of adding tables to it.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use crate::StoreError;

/// `PRAGMA application_id` of a scry store ("scry" in ASCII).
pub(crate) const APPLICATION_ID: i32 = 0x7363_7279;

/// Version 1: the initial schema.
const V1: &str = r#"
CREATE TABLE processes (
    id              INTEGER PRIMARY KEY,
    key             TEXT    NOT NULL UNIQUE,
    pid             INTEGER NOT NULL,
    ppid            INTEGER,
    host            TEXT    NOT NULL,
    name            TEXT,
    python_version  TEXT    NOT NULL,
    executable      TEXT    NOT NULL,
    argv            TEXT    NOT NULL DEFAULT '[]',
    cwd             TEXT    NOT NULL,
    origin          TEXT    NOT NULL,
    state           TEXT    NOT NULL CHECK (state IN ('sleeping', 'awake', 'gone')),
    state_since     REAL    NOT NULL,
    first_seen      REAL    NOT NULL,
    connected_since REAL,
    last_heard      REAL    NOT NULL,
    info            TEXT    NOT NULL DEFAULT '{}'
);

CREATE TABLE probes (
    id         TEXT    PRIMARY KEY,
    name       TEXT    UNIQUE,
    spec       TEXT    NOT NULL,
    enabled    INTEGER NOT NULL CHECK (enabled IN (0, 1)),
    group_name TEXT,
    created_at REAL    NOT NULL,
    updated_at REAL    NOT NULL
);

CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    process_id INTEGER NOT NULL REFERENCES processes (id),
    kind       TEXT    NOT NULL,
    source     TEXT,
    t_hit      REAL    NOT NULL,
    t_recv     REAL    NOT NULL,
    data       TEXT    NOT NULL
);
CREATE INDEX events_source_t_hit ON events (source, t_hit);
CREATE INDEX events_t_hit ON events (t_hit);
CREATE INDEX events_process_t_hit ON events (process_id, t_hit);

CREATE TABLE system_events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    t       REAL    NOT NULL,
    level   TEXT    NOT NULL CHECK (level IN ('debug', 'info', 'warn', 'error')),
    kind    TEXT    NOT NULL,
    message TEXT    NOT NULL,
    data    TEXT    NOT NULL DEFAULT '{}'
);
CREATE INDEX system_events_t ON system_events (t);

CREATE TABLE dropped_counts (
    process_id INTEGER NOT NULL REFERENCES processes (id) ON DELETE CASCADE,
    source     TEXT    NOT NULL DEFAULT '',
    dropped    INTEGER NOT NULL DEFAULT 0,
    updated_at REAL    NOT NULL,
    PRIMARY KEY (process_id, source)
) WITHOUT ROWID;
"#;

/// Version 2: stack dumps (`scry dump`), kept whole as JSON with a few columns to list them.
const V2: &str = r#"
CREATE TABLE dumps (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    taken_at         REAL    NOT NULL,
    root_pid         INTEGER NOT NULL,
    tree             INTEGER NOT NULL CHECK (tree IN (0, 1)),
    processes        INTEGER NOT NULL,
    python_processes INTEGER NOT NULL,
    command          TEXT    NOT NULL,
    data             TEXT    NOT NULL
);
CREATE INDEX dumps_taken_at ON dumps (taken_at);
"#;

/// Version 3: call traces (`scry trace`): one row per trace with its spec, targets and state as
/// JSON; the trace's events are in `events` under `source` = the trace id.
const V3: &str = r#"
CREATE TABLE traces (
    id         TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    data       TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX traces_created_at ON traces (created_at);
"#;

/// Version 4: the last report settled per agent report stream, so a report resent after a
/// reconnect (or a daemon restart) is stored (or counted) at most once; and how many events of
/// each source retention removed or a full disk kept out, so that they stay accounted for.
const V4: &str = r#"
CREATE TABLE report_streams (
    process_id INTEGER NOT NULL REFERENCES processes (id) ON DELETE CASCADE,
    stream     TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    PRIMARY KEY (process_id, stream)
) WITHOUT ROWID;

-- Events retention removed, per source: what was stored once and is no more is still counted.
CREATE TABLE retired_counts (
    source  TEXT    NOT NULL PRIMARY KEY,
    by_age  INTEGER NOT NULL DEFAULT 0,
    by_cap  INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- Events that reached the store while its disk was full, per source: counted, not stored.
CREATE TABLE unstored_counts (
    source    TEXT    NOT NULL PRIMARY KEY,
    disk_full INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
"#;

/// The ordered migration steps; the schema version of this build is their number.
pub(crate) const MIGRATIONS: &[&str] = &[V1, V2, V3, V4];

/// The schema version this build creates and understands.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// What [`migrate`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Migrated {
    /// Version found in the file.
    pub from: i64,
    /// Version after the migration.
    pub to: i64,
}

/// Brings the database at `path` (open on `conn`) to `steps.len()`, or refuses it.
pub(crate) fn migrate(
    conn: &mut Connection,
    path: &Path,
    steps: &[&str],
) -> Result<Migrated, StoreError> {
    let open_err = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    let supported = steps.len() as i64;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(open_err)?;

    let found: i64 = tx
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(open_err)?;
    let app_id: i32 = tx
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(open_err)?;
    if app_id != 0 && app_id != APPLICATION_ID {
        return Err(StoreError::NotAScryStore {
            path: path.to_path_buf(),
            reason: format!("its application id is {app_id:#x}"),
        });
    }
    if app_id == 0 {
        let tables: i64 = tx
            .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
            .map_err(open_err)?;
        if found != 0 || tables != 0 {
            return Err(StoreError::NotAScryStore {
                path: path.to_path_buf(),
                reason: "it already has tables but no scry application id".to_string(),
            });
        }
    }
    if found > supported {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found,
            supported,
        });
    }
    if found == supported {
        // Nothing to do; the transaction is rolled back on drop.
        return Ok(Migrated {
            from: found,
            to: found,
        });
    }

    for (index, sql) in steps.iter().enumerate().skip(found as usize) {
        let version = index as i64 + 1;
        tx.execute_batch(sql)
            .map_err(|source| StoreError::Migration {
                path: path.to_path_buf(),
                version,
                source,
            })?;
    }
    let bump = |source| StoreError::Migration {
        path: path.to_path_buf(),
        version: supported,
        source,
    };
    tx.pragma_update(None, "user_version", supported)
        .map_err(bump)?;
    tx.pragma_update(None, "application_id", APPLICATION_ID)
        .map_err(bump)?;
    tx.commit().map_err(bump)?;
    tracing::info!(target: "store", path = %path.display(), from = found, to = supported, "store schema migrated");
    Ok(Migrated {
        from: found,
        to: supported,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Store, StoreOptions};

    fn raw(path: &Path) -> Connection {
        Connection::open(path).expect("open raw connection")
    }

    fn user_version(conn: &Connection) -> i64 {
        conn.pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("user_version")
    }

    #[test]
    fn version_1_store_gains_dumps_and_keeps_its_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("scry.db");
        let mut conn = raw(&path);
        migrate(&mut conn, &path, &MIGRATIONS[..1]).expect("v1");
        conn.execute(
            "INSERT INTO probes (id, spec, enabled, created_at, updated_at) \
             VALUES ('p1', '{}', 1, 1.0, 1.0)",
            [],
        )
        .expect("insert");
        drop(conn);
        let store = Store::open(&path, StoreOptions::default()).expect("open v1 store");
        assert_eq!(store.probes().expect("probes").len(), 1);
        assert!(store.dumps(10).expect("dumps table exists").is_empty());
        assert!(store.traces(10).expect("traces table exists").is_empty());
        store.close().expect("close");
        assert_eq!(user_version(&raw(&path)), SCHEMA_VERSION);
    }

    #[test]
    fn fresh_database_gets_current_schema_and_pragmas() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("scry.db");
        let store = Store::open(&path, StoreOptions::default()).expect("open");
        store.close().expect("close");

        let conn = raw(&path);
        assert_eq!(user_version(&conn), SCHEMA_VERSION);
        let app: i32 = conn
            .pragma_query_value(None, "application_id", |r| r.get(0))
            .expect("application_id");
        assert_eq!(app, APPLICATION_ID);
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .expect("journal_mode");
        assert_eq!(mode, "wal");
        let mut tables: Vec<String> = conn
            .prepare(
                "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            )
            .expect("prepare")
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        tables.sort();
        assert_eq!(
            tables,
            [
                "dropped_counts",
                "dumps",
                "events",
                "probes",
                "processes",
                "report_streams",
                "retired_counts",
                "system_events",
                "traces",
                "unstored_counts"
            ]
        );
    }

    #[test]
    fn upgrade_applies_only_the_missing_steps_and_keeps_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("scry.db");
        let mut conn = raw(&path);
        assert_eq!(
            migrate(&mut conn, &path, &[V1]).expect("v1"),
            Migrated { from: 0, to: 1 }
        );
        conn.execute(
            "INSERT INTO probes (id, spec, enabled, created_at, updated_at) VALUES ('p1', '{}', 1, 1, 1)",
            [],
        )
        .expect("insert");

        // A hypothetical second step, as a future release would add it.
        let v2 = "ALTER TABLE probes ADD COLUMN note TEXT NOT NULL DEFAULT 'none';";
        assert_eq!(
            migrate(&mut conn, &path, &[V1, v2]).expect("v2"),
            Migrated { from: 1, to: 2 }
        );
        assert_eq!(user_version(&conn), 2);
        let note: String = conn
            .query_row("SELECT note FROM probes WHERE id = 'p1'", [], |r| r.get(0))
            .expect("kept row");
        assert_eq!(note, "none");
        // Already current: nothing happens.
        assert_eq!(
            migrate(&mut conn, &path, &[V1, v2]).expect("again"),
            Migrated { from: 2, to: 2 }
        );
    }

    #[test]
    fn failing_step_is_reported_and_rolls_back_everything() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("scry.db");
        let mut conn = raw(&path);
        migrate(&mut conn, &path, &[V1]).expect("v1");

        let v2 = "CREATE TABLE extra (x INTEGER);";
        let v3 = "THIS IS NOT SQL;";
        let err = migrate(&mut conn, &path, &[V1, v2, v3]).expect_err("must fail");
        match err {
            StoreError::Migration {
                version, path: p, ..
            } => {
                assert_eq!(version, 3);
                assert_eq!(p, path);
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert_eq!(user_version(&conn), 1);
        let extra: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = 'extra'",
                [],
                |r| r.get(0),
            )
            .expect("query");
        assert_eq!(extra, 0, "step 2 must be rolled back with step 3");
    }

    #[test]
    fn database_from_a_newer_scry_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("scry.db");
        Store::open(&path, StoreOptions::default())
            .expect("open")
            .close()
            .expect("close");
        raw(&path)
            .pragma_update(None, "user_version", SCHEMA_VERSION + 5)
            .expect("bump");

        match Store::open(&path, StoreOptions::default()) {
            Err(StoreError::TooNew {
                found,
                supported,
                path: p,
            }) => {
                assert_eq!(found, SCHEMA_VERSION + 5);
                assert_eq!(supported, SCHEMA_VERSION);
                assert_eq!(p, path);
            }
            Err(other) => panic!("unexpected error {other:?}"),
            Ok(_) => panic!("a too-new store must be refused"),
        }
        // Refusing did not touch it.
        assert_eq!(user_version(&raw(&path)), SCHEMA_VERSION + 5);
    }

    #[test]
    fn foreign_database_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("other.db");
        raw(&path)
            .execute_batch("CREATE TABLE mine (x INTEGER);")
            .expect("create");
        assert!(matches!(
            Store::open(&path, StoreOptions::default()),
            Err(StoreError::NotAScryStore { .. })
        ));
    }

    #[test]
    fn garbage_file_is_an_open_error_naming_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("garbage.db");
        std::fs::write(&path, vec![0x42u8; 8192]).expect("write");
        match Store::open(&path, StoreOptions::default()) {
            Err(err @ StoreError::Open { .. }) => {
                assert!(err.to_string().contains("garbage.db"), "{err}");
            }
            Err(other) => panic!("unexpected error {other:?}"),
            Ok(_) => panic!("garbage must be refused"),
        }
        let missing = dir.path().join("no/such/dir/scry.db");
        assert!(matches!(
            Store::open(&missing, StoreOptions::default()),
            Err(StoreError::Open { .. })
        ));
    }
}

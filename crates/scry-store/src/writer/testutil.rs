//! Fixtures shared by the unit tests of the writer's modules: a fresh database with one
//! process, and appends whose callbacks record how they were settled.

use std::sync::{Arc, Mutex};

use rusqlite::Connection;

use super::{Completion, EncodedEvents, Op};
use crate::{NewEvent, StoreError};

/// Opens a migrated writer connection on a fresh file, with one process (id 1).
pub(super) fn setup(dir: &tempfile::TempDir) -> Connection {
    let path = dir.path().join("scry.db");
    let mut conn = crate::open_writer_connection(&path).expect("open");
    crate::schema::migrate(&mut conn, &path, crate::schema::MIGRATIONS).expect("migrate");
    conn.execute(
        "INSERT INTO processes (key, pid, host, python_version, executable, cwd, origin, \
         state, state_since, first_seen, last_heard) \
         VALUES ('k', 1, 'h', '3.12', '/py', '/', 'test', 'awake', 0, 0, 0)",
        [],
    )
    .expect("process");
    conn
}

fn events(n: usize) -> EncodedEvents {
    let events = (0..n)
        .map(|i| NewEvent {
            kind: "probe".to_string(),
            source: (i % 2 == 0).then(|| "p1".to_string()),
            t_hit: i as f64,
            data: serde_json::value::to_raw_value(&serde_json::json!({ "i": i })).expect("raw"),
        })
        .collect();
    EncodedEvents::encode(events).expect("encode")
}

pub(super) type Results = Arc<Mutex<Vec<Result<(), String>>>>;

pub(super) fn recording_append(process_id: i64, n: usize, results: &Results) -> Op {
    let results = Arc::clone(results);
    Op::Append {
        process_id,
        events: events(n),
        dropped: 0,
        t_recv: 0.0,
        done: Completion::new(Some(Box::new(move |r: Result<(), StoreError>| {
            results
                .lock()
                .expect("lock")
                .push(r.map_err(|e| format!("{e:?}")));
        }))),
        report: None,
    }
}

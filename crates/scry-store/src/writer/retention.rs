//! Retention: deleting what the store's [`Retention`] limits do not keep (rows older than the
//! maximum age, events beyond the newest N of their source, the oldest events while the
//! database is over its size), and counting the events deleted per source, durably and in
//! [`Counters`].
//!
//! Not for deciding when it runs (the batch loop schedules it, and runs it for
//! `Store::apply_retention`) nor for committing: it runs inside its caller's transaction.

use rusqlite::{params, Connection, OptionalExtension};

use super::batch::Counters;
use crate::{Retention, RetentionReport, StoreError};

/// Adds to the durable counts of events of `source` ("" for none) that retention removed
/// (probe totals read them as `removed_by_retention`).
/// The same numbers go to the in-memory `counters` (`scry status`'s `retention_deleted`).
fn retire(
    conn: &Connection,
    counters: &Counters,
    source: &str,
    by_age: i64,
    by_cap: i64,
) -> Result<(), StoreError> {
    counters.count_retention(vec![(
        source.to_owned(),
        u64::try_from(by_age + by_cap).unwrap_or(0),
    )]);
    conn.prepare_cached(
        "INSERT INTO retired_counts (source, by_age, by_cap) VALUES (?1, ?2, ?3)
         ON CONFLICT (source) DO UPDATE SET by_age = by_age + excluded.by_age,
                                            by_cap = by_cap + excluded.by_cap",
    )?
    .execute(params![source, by_age, by_cap])?;
    Ok(())
}

/// Deletes what `retention` does not keep, as of `now` (seconds since the epoch), counting
/// the events deleted per source in `counters` (the accounting reads them as dropped by
/// `retention`).
pub(super) fn run_retention(
    conn: &Connection,
    retention: &Retention,
    now: f64,
    counters: &Counters,
) -> Result<RetentionReport, StoreError> {
    let mut report = RetentionReport::default();
    if let Some(max_age) = retention.max_age {
        let cutoff = now - max_age.as_secs_f64();
        for (source, n) in per_source(
            conn,
            "SELECT coalesce(source, ''), count(*) FROM events WHERE t_hit < ?1 GROUP BY source",
            params![cutoff],
        )? {
            retire(conn, counters, &source, n as i64, 0)?;
        }
        report.events_by_age = conn
            .prepare_cached("DELETE FROM events WHERE t_hit < ?1")?
            .execute([cutoff])? as u64;
        report.system_events_by_age = conn
            .prepare_cached("DELETE FROM system_events WHERE t < ?1")?
            .execute([cutoff])? as u64;
        report.dumps_by_age = conn
            .prepare_cached("DELETE FROM dumps WHERE taken_at < ?1")?
            .execute([cutoff])? as u64;
        report.processes = conn
            .prepare_cached(
                "DELETE FROM processes WHERE state = 'gone' AND last_heard < ?1 \
                 AND NOT EXISTS (SELECT 1 FROM events WHERE events.process_id = processes.id)",
            )?
            .execute([cutoff])? as u64;
    }
    if let Some(cap) = retention.max_events_per_source {
        let cap = i64::try_from(cap).unwrap_or(i64::MAX);
        let over: Vec<Option<String>> = conn
            .prepare_cached("SELECT source FROM events GROUP BY source HAVING count(*) > ?1")?
            .query_map([cap], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for source in over {
            // The newest row that is *not* kept; it and everything older goes.
            let first_gone: Option<(f64, i64)> = conn
                .prepare_cached(
                    "SELECT t_hit, id FROM events WHERE source IS ?1 \
                     ORDER BY t_hit DESC, id DESC LIMIT 1 OFFSET ?2",
                )?
                .query_row(params![source, cap], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            if let Some((t_hit, id)) = first_gone {
                let n = conn
                    .prepare_cached(
                        "DELETE FROM events WHERE source IS ?1 \
                         AND (t_hit < ?2 OR (t_hit = ?2 AND id <= ?3))",
                    )?
                    .execute(params![source, t_hit, id])? as u64;
                report.events_by_cap += n;
                retire(conn, counters, source.as_deref().unwrap_or(""), 0, n as i64)?;
            }
        }
    }
    if let Some(max_bytes) = retention.max_db_bytes {
        report.events_by_size = shrink_to(conn, max_bytes, counters)?;
    }
    Ok(report)
}

/// Deleted events per source for a `SELECT source, count(*) … GROUP BY source`.
fn per_source(
    conn: &Connection,
    sql: &str,
    args: impl rusqlite::Params,
) -> Result<Vec<(String, u64)>, StoreError> {
    let rows = conn
        .prepare_cached(sql)?
        .query_map(args, |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows
        .into_iter()
        .map(|(s, n)| (s, u64::try_from(n).unwrap_or(0)))
        .collect())
}

/// Bytes of database pages in use (the file minus its free pages).
fn used_bytes(conn: &Connection) -> Result<u64, StoreError> {
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    Ok(u64::try_from((pages - free).max(0) * page_size).unwrap_or(0))
}

/// Deletes the oldest events (by the order they were stored, whatever their sources) until the
/// pages in use fit in `max_bytes`, aiming 10 % below so that it does not run every pass.
fn shrink_to(conn: &Connection, max_bytes: u64, counters: &Counters) -> Result<u64, StoreError> {
    let mut deleted = 0u64;
    // A few rounds at most: each deletes the share of events that the excess suggests.
    for _ in 0..8 {
        let used = used_bytes(conn)?;
        if used <= max_bytes {
            break;
        }
        let target = max_bytes - max_bytes / 10;
        let total: i64 = conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0))?;
        if total == 0 {
            break;
        }
        let share = (used - target) as f64 / used as f64;
        let n = ((total as f64 * share).ceil() as i64).clamp(1, total);
        let last: i64 = conn.query_row(
            "SELECT id FROM events ORDER BY id LIMIT 1 OFFSET ?1",
            [n - 1],
            |r| r.get(0),
        )?;
        // Counted as removed by the cap: the durable counts have no column of their own for size.
        for (source, n) in per_source(
            conn,
            "SELECT coalesce(source, ''), count(*) FROM events WHERE id <= ?1 GROUP BY source",
            params![last],
        )? {
            retire(conn, counters, &source, 0, n as i64)?;
        }
        deleted += conn
            .prepare_cached("DELETE FROM events WHERE id <= ?1")?
            .execute([last])? as u64;
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::writer::sql::append;
    use crate::writer::testutil::setup;
    use crate::writer::EncodedEvents;
    use crate::NewEvent;

    #[test]
    fn retention_by_size_caps_events_whose_sources_are_all_distinct() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = setup(&dir);
        let counters = Counters::default();
        let n = 20_000usize;
        let distinct: Vec<NewEvent> = (0..n)
            .map(|i| NewEvent {
                kind: "probe".to_string(),
                source: Some(format!("p{i}")),
                t_hit: crate::unix_now(),
                data: serde_json::value::to_raw_value(
                    &serde_json::json!({ "i": i, "pad": "x".repeat(100) }),
                )
                .expect("raw"),
            })
            .collect();
        let encoded = EncodedEvents::encode(distinct).expect("encode");
        append(&conn, 1, &encoded, 0, 0.0).expect("append");
        let before = used_bytes(&conn).expect("used");
        let mut retention = Retention {
            max_age: Some(Duration::from_secs(3600)),
            max_events_per_source: Some(100),
            max_db_bytes: None,
            check_interval: Duration::from_secs(3600),
        };
        // Age and per-source caps alone keep them all (each source has one event).
        let report = run_retention(&conn, &retention, crate::unix_now(), &counters).expect("run");
        assert_eq!(report, RetentionReport::default());
        // The size cap does not care about sources.
        retention.max_db_bytes = Some(before / 4);
        let report = run_retention(&conn, &retention, crate::unix_now(), &counters).expect("run");
        assert!(report.events_by_size > 0, "{report:?}");
        assert!(used_bytes(&conn).expect("used") <= before / 4);
        let left = count_events_conn(&conn);
        assert_eq!(left + report.events_by_size, n as u64);
        // What retention deleted is counted per source, for the accounting.
        let health = counters.health();
        let counted: u64 = health.retention_deleted.values().sum();
        assert_eq!(counted, report.events_by_size);
        assert_eq!(counters.retention_deleted_for("p0"), 1);
        assert_eq!(counters.retention_deleted_for(&format!("p{}", n - 1)), 0);
    }

    fn count_events_conn(conn: &Connection) -> u64 {
        let n: i64 = conn
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .expect("count");
        u64::try_from(n).expect("count")
    }
}

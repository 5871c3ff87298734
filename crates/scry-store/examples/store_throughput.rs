//! Measures sustained event throughput into the store from one process.
//!
//! One producer thread plays the daemon's connection task: it builds agent-sized reports
//! (default 1024 events, the protocol's `max_batch`) of probe hits with typed values, and
//! appends them, waiting for room when the writer's queue is full, so nothing is dropped. The
//! figure is events committed per second, from the first append until `flush` returns, and
//! the store is checked to hold every event afterwards.
//!
//! ```text
//! cargo run --release -p scry-store --example store_throughput -- [EVENTS] [REPORT_SIZE]
//! ```
#![allow(clippy::print_stdout)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use scry_store::{
    CommitCallback, NewEvent, ProcessRecord, ProcessState, Retention, Store, StoreOptions,
};
use serde_json::json;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let total: u64 = args.next().map_or(Ok(2_000_000), |a| a.parse())?;
    let report: u64 = args.next().map_or(Ok(1024), |a| a.parse())?;

    let dir = tempfile::tempdir().map_err(|e| format!("creating a temporary directory: {e}"))?;
    let path = dir.path().join("scry.db");
    // Default batching; retention off so that every event can be counted at the end.
    let opts = StoreOptions {
        retention: Retention {
            max_age: None,
            max_events_per_source: None,
            ..Retention::default()
        },
        ..StoreOptions::default()
    };
    let store = Store::open(&path, opts.clone())?;
    let pid = store.upsert_process(&ProcessRecord {
        key: "bench:4242:1".to_string(),
        pid: 4242,
        ppid: Some(1),
        host: "bench".to_string(),
        name: Some("bench".to_string()),
        python_version: "3.12.4".to_string(),
        executable: "/usr/bin/python3".to_string(),
        argv: vec!["python3".to_string(), "app.py".to_string()],
        cwd: "/srv".to_string(),
        origin: "embedded".to_string(),
        state: ProcessState::Awake,
        first_seen: 0.0,
        connected_since: Some(0.0),
        last_heard: 0.0,
        info: json!({}),
    })?;

    let sources: Vec<String> = (0..8).map(|i| format!("p-{i}")).collect();
    let acked = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    let mut sent = 0u64;
    while sent < total {
        let n = report.min(total - sent);
        let events: Vec<NewEvent> = (sent..sent + n)
            .map(|i| NewEvent {
                kind: "probe".to_string(),
                source: Some(sources[(i % 8) as usize].clone()),
                t_hit: base + i as f64 * 1e-6,
                data: serde_json::value::to_raw_value(&serde_json::json!({
                    "line": 127,
                    "thread": "MainThread",
                    "values": {
                        "order.total": {"t": "float", "v": 12.5 + i as f64},
                        "order.id": {"t": "int", "v": i},
                        "user": {"t": "str", "v": "alice@example.com"},
                    },
                }))
                .expect("raw"),
            })
            .collect();
        let acked = Arc::clone(&acked);
        let on_commit: CommitCallback = Box::new(move |r| {
            if r.is_ok() {
                acked.fetch_add(n, Ordering::Relaxed);
            }
        });
        store.append_events_blocking(pid, events, 0, Some(on_commit))?;
        sent += n;
    }
    store.flush()?;
    let elapsed = t0.elapsed().as_secs_f64();

    let stats = store.writer_stats();
    let stored = store.counts()?.events;
    let acked = acked.load(Ordering::Relaxed);
    if acked != total || stored != total {
        return Err(format!("{stored} of {total} events stored, {acked} acknowledged").into());
    }
    let db_bytes = std::fs::metadata(&path)
        .map_err(|e| format!("reading metadata of `{}`: {e}", path.display()))?
        .len();
    println!(
        "{total} events in reports of {report}: {elapsed:.2} s, {:.0} events/s \
         ({} commits, {:.0} events/commit, batch_max {}, db {:.0} MiB)",
        total as f64 / elapsed,
        stats.batches,
        stats.events as f64 / stats.batches.max(1) as f64,
        opts.batch_max,
        db_bytes as f64 / (1024.0 * 1024.0),
    );
    // On a shared machine the wall-clock figure depends on what else runs: the CPU time each
    // side spent says what it can do on its own, and the time it waited for a CPU says how
    // much of the wall-clock time the machine took away.
    if let (Some(writer), Some(producer)) = (
        thread_sched("scry-store-writ"),
        thread_sched("store_throughpu"),
    ) {
        println!(
            "writer thread: {:.2} s on CPU ({:.0} events/s of writer CPU), {:.2} s waiting for \
             a CPU; producer thread: {:.2} s on CPU ({:.0} events/s), {:.2} s waiting for a CPU",
            writer.0,
            total as f64 / writer.0,
            writer.1,
            producer.0,
            total as f64 / producer.0,
            producer.1,
        );
    }
    store.close()?;
    Ok(())
}

/// Seconds on a CPU and seconds waiting for one, so far, of the thread of this process
/// named `comm` (Linux only: `/proc/self/task/*/schedstat`).
fn thread_sched(comm: &str) -> Option<(f64, f64)> {
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = task.ok()?.path();
        let name = std::fs::read_to_string(dir.join("comm")).ok()?;
        if name.trim_end() == comm {
            let schedstat = std::fs::read_to_string(dir.join("schedstat")).ok()?;
            let mut fields = schedstat.split_whitespace();
            let on_cpu: f64 = fields.next()?.parse().ok()?;
            let waiting: f64 = fields.next()?.parse().ok()?;
            return Some((on_cpu / 1e9, waiting / 1e9));
        }
    }
    None
}

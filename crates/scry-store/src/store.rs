//! [`Store`], the handle the daemon holds.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, ThreadId};

use crate::read::Readers;
use crate::writer::{
    Completion, Counters, EncodedDump, EncodedEvents, EncodedProbe, EncodedProcess,
    EncodedSystemEvent, Op, Reply, Writer,
};
use crate::{
    CommitCallback, Counts, DroppedRow, DumpRecord, DumpRow, EventPage, EventQuery, NewEvent,
    ProbeRecord, ProcessRecord, ProcessRow, ProcessState, RetentionReport, SourceTotals,
    StoreError, StoreHealth, StoreOptions, SystemEvent, SystemEventRow, TraceRecord, WriterStats,
};

/// The reserve file beside the database (`store.db-reserve`, like SQLite's `-wal`).
fn reserve_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-reserve");
    PathBuf::from(s)
}

/// The daemon's persistent memory: a handle on one SQLite database and its writer thread.
///
/// Cloning is cheap and every clone talks to the same writer. Writes go through the writer
/// thread; reads run on the calling thread on their own connections. Every method may block
/// (briefly for reads and queued writes, for a commit in the methods that wait for one), so an
/// async caller wraps calls in `spawn_blocking`.
///
/// The writer stops when [`Store::close`] is called or the last clone is dropped, after
/// committing everything queued before.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    tx: SyncSender<Op>,
    writer: Mutex<Option<JoinHandle<()>>>,
    writer_thread: ThreadId,
    readers: Readers,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

fn encode<T: serde::Serialize>(what: &'static str, value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|source| StoreError::Json { what, source })
}

impl Store {
    /// Opens (creating if needed) the database at `path`, brings its schema up to date and
    /// starts the writer thread. The parent directory must exist.
    ///
    /// Fails with [`StoreError::TooNew`] for a database written by a newer scry, and with
    /// [`StoreError::NotAScryStore`] for some other application's database.
    pub fn open(path: &Path, opts: StoreOptions) -> Result<Store, StoreError> {
        let mut conn = crate::open_writer_connection(path)?;
        crate::schema::migrate(&mut conn, path, crate::schema::MIGRATIONS)?;

        let (tx, rx) = sync_channel(opts.queue_capacity.max(1));
        let counters = Arc::new(Counters::default());
        let writer = Writer::new(
            conn,
            rx,
            opts.batch_max,
            opts.batch_delay,
            opts.retention,
            Arc::clone(&counters),
        )
        .with_reserve(reserve_path(path));
        let handle = std::thread::Builder::new()
            .name("scry-store-writer".to_string())
            .spawn(move || writer.run())
            .map_err(StoreError::Spawn)?;
        tracing::debug!(target: "store", path = %path.display(), "store opened");
        Ok(Store {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                tx,
                writer_thread: handle.thread().id(),
                writer: Mutex::new(Some(handle)),
                readers: Readers::new(path),
                counters,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Queues events reported by the process with row id `process_id`, with the number of hits
    /// the agent `dropped` since its last report (counted for that process, attributed to no
    /// source). Sets `t_recv` to now.
    ///
    /// Never waits: if the writer's queue is full it fails with
    /// [`StoreError::Backpressure`] and stores nothing, so the caller can count the events as
    /// dropped (see [`Store::record_dropped`]). `Ok` means queued: `on_commit` is then called
    /// exactly once, after the batch holding these events committed (`Ok`) or failed (the
    /// error, e.g. [`StoreError::UnknownProcess`] or [`StoreError::Commit`]). When this method
    /// returns `Err`, `on_commit` is never called.
    pub fn append_events(
        &self,
        process_id: i64,
        events: Vec<NewEvent>,
        dropped: u64,
        on_commit: Option<CommitCallback>,
    ) -> Result<(), StoreError> {
        let op = append_op(process_id, events, dropped, on_commit, None)?;
        match self.inner.tx.try_send(op) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(op)) => Err(reject(op, true)),
            Err(TrySendError::Disconnected(op)) => Err(reject(op, false)),
        }
    }

    /// Like [`Store::append_events`], but waits for room in the queue instead of failing with
    /// [`StoreError::Backpressure`]. For callers that can slow their producer down instead of
    /// dropping (e.g. by not reading the agent's socket meanwhile).
    pub fn append_events_blocking(
        &self,
        process_id: i64,
        events: Vec<NewEvent>,
        dropped: u64,
        on_commit: Option<CommitCallback>,
    ) -> Result<(), StoreError> {
        self.check_not_writer()?;
        let op = append_op(process_id, events, dropped, on_commit, None)?;
        self.inner
            .tx
            .send(op)
            .map_err(|std::sync::mpsc::SendError(op)| reject(op, false))
    }

    /// Queues an agent's report `seq` of `stream` like [`Store::append_events`], to be stored
    /// at most once: a report whose seq is not above the last stored seq of that stream of
    /// that process (a resend after a reconnect or a daemon restart) stores nothing, and
    /// `on_commit` still gets `Ok`, so the agent can forget it.
    ///
    /// Never waits: when the writer's queue is full the report comes back as
    /// [`Queued::Full`], whole, for the caller to wait for room with [`PendingAppend::wait`]
    /// (off its async thread) while it stops reading that agent: backpressure, not a drop.
    pub fn append_report(
        &self,
        process_id: i64,
        stream: Option<&str>,
        seq: u64,
        events: Vec<NewEvent>,
        dropped: u64,
        on_commit: Option<CommitCallback>,
    ) -> Result<Queued, StoreError> {
        let report = stream.map(|s| (s.to_string(), seq));
        let op = append_op(process_id, events, dropped, on_commit, report)?;
        match self.inner.tx.try_send(op) {
            Ok(()) => Ok(Queued::Done),
            Err(TrySendError::Full(op)) => Ok(Queued::Full(Box::new(PendingAppend {
                store: self.clone(),
                op,
            }))),
            Err(TrySendError::Disconnected(op)) => Err(reject(op, false)),
        }
    }

    /// Adds `count` to the dropped counter of `source` (e.g. a probe id; `None`: not
    /// attributed) for a process, e.g. events the daemon could not store because of
    /// [`StoreError::Backpressure`]. Waits for room in the queue, not for the commit.
    pub fn record_dropped(
        &self,
        process_id: i64,
        source: Option<&str>,
        count: u64,
    ) -> Result<(), StoreError> {
        self.send(Op::Dropped {
            process_id,
            source: source.map(str::to_string),
            count,
            at: crate::unix_now(),
        })
    }

    /// Inserts or updates (by `key`) a process and returns its row id, once committed.
    ///
    /// An update keeps the earliest `first_seen` and the latest `last_heard`.
    pub fn upsert_process(&self, p: &ProcessRecord) -> Result<i64, StoreError> {
        let process = EncodedProcess {
            argv: encode("process argv", &p.argv)?,
            info: encode("process info", &p.info)?,
            record: Box::new(p.clone()),
        };
        self.call(|reply| Op::UpsertProcess { process, reply })
    }

    /// Sets the state of process `id` as of `at` (seconds since the epoch), once committed.
    /// Becoming awake sets `connected_since` (and `last_heard`) to `at`; any other state
    /// clears `connected_since`. Fails with [`StoreError::UnknownProcess`] for an unknown id.
    pub fn set_process_state(
        &self,
        id: i64,
        state: ProcessState,
        at: f64,
    ) -> Result<(), StoreError> {
        self.call(|reply| Op::SetProcessState {
            id,
            state,
            at,
            reply,
        })
    }

    /// Records that process `id` was heard from at `at` (a heartbeat). Queued; does not wait
    /// for the commit. A failure is only logged.
    pub fn touch_process(&self, id: i64, at: f64) -> Result<(), StoreError> {
        self.send(Op::TouchProcess { id, at })
    }

    /// Marks every process that is not gone as gone as of `at`, and returns how many changed.
    /// The daemon calls it at start: no agent is connected to a daemon that just started.
    pub fn mark_all_gone(&self, at: f64) -> Result<u64, StoreError> {
        self.call(|reply| Op::MarkAllGone { at, reply })
    }

    /// Queues a daemon-side event. Waits for room in the queue, not for the commit; a failure
    /// to store it is logged.
    pub fn record_system_event(&self, ev: SystemEvent) -> Result<(), StoreError> {
        let ev = EncodedSystemEvent {
            data: encode("system event data", &ev.data)?,
            t: ev.t,
            level: ev.level,
            kind: ev.kind,
            message: ev.message,
        };
        self.send(Op::SystemEvent(ev))
    }

    /// Inserts or replaces (by `id`) a probe, once committed. `created_at` of an existing
    /// probe is kept. Fails with [`StoreError::ProbeNameTaken`] if another probe has the name.
    pub fn put_probe(&self, p: &ProbeRecord) -> Result<(), StoreError> {
        let probe = EncodedProbe {
            id: p.id.clone(),
            name: p.name.clone(),
            spec: encode("probe spec", &p.spec)?,
            enabled: p.enabled,
            group_name: p.group_name.clone(),
            created_at: p.created_at,
            updated_at: p.updated_at,
        };
        self.call(|reply| Op::PutProbe { probe, reply })
    }

    /// Keeps a stack dump and returns its id, once committed.
    pub fn put_dump(&self, d: &DumpRecord) -> Result<i64, StoreError> {
        let dump = EncodedDump {
            taken_at: d.taken_at,
            root_pid: d.root_pid,
            tree: d.tree,
            processes: d.processes,
            python_processes: d.python_processes,
            command: d.command.clone(),
            data: encode("dump", &d.data)?,
        };
        self.call(|reply| Op::PutDump { dump, reply })
    }

    /// Keeps (or updates) a call trace's metadata, once committed.
    pub fn put_trace(&self, t: &TraceRecord) -> Result<(), StoreError> {
        let data = encode("trace", &t.data)?;
        let (id, created_at, updated_at) = (t.id.clone(), t.created_at, t.updated_at);
        self.call(|reply| Op::PutTrace {
            id,
            created_at,
            updated_at,
            data,
            reply,
        })
    }

    /// The newest `limit` traces, newest first.
    pub fn traces(&self, limit: usize) -> Result<Vec<TraceRecord>, StoreError> {
        self.inner.readers.traces(limit)
    }

    /// One trace, if there is one with this id.
    pub fn trace(&self, id: &str) -> Result<Option<TraceRecord>, StoreError> {
        self.inner.readers.trace(id)
    }

    /// The newest `limit` dumps, newest first, without their data.
    pub fn dumps(&self, limit: usize) -> Result<Vec<DumpRow>, StoreError> {
        self.inner.readers.dumps(limit)
    }

    /// One dump with its data, if there is one with this id.
    pub fn dump(&self, id: i64) -> Result<Option<DumpRow>, StoreError> {
        self.inner.readers.dump(id)
    }

    /// Deletes a probe, once committed; `false` if there was none with this id. Its events
    /// stay (until retention removes them).
    pub fn delete_probe(&self, id: &str) -> Result<bool, StoreError> {
        self.call(|reply| Op::DeleteProbe {
            id: id.to_string(),
            reply,
        })
    }

    /// Returns once everything queued before the call is committed (or failed: such failures
    /// are reported to their own callers, not here).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.call(|reply| Op::Flush { reply })
    }

    /// Enforces the retention policy now (the writer also does it every `check_interval`)
    /// and reports what was deleted.
    pub fn apply_retention(&self) -> Result<RetentionReport, StoreError> {
        let now = crate::unix_now();
        self.call(|reply| Op::Retention { now, reply })
    }

    /// Every process, by row id.
    pub fn processes(&self) -> Result<Vec<ProcessRow>, StoreError> {
        self.inner.readers.processes()
    }

    /// Every probe, oldest first.
    pub fn probes(&self) -> Result<Vec<ProbeRecord>, StoreError> {
        self.inner.readers.probes()
    }

    /// A page of events matching `q`.
    pub fn events(&self, q: &EventQuery) -> Result<EventPage, StoreError> {
        self.inner.readers.events(q)
    }

    /// Row counts, and the total of the dropped counters.
    pub fn counts(&self) -> Result<Counts, StoreError> {
        self.inner.readers.counts()
    }

    /// What became of the events of `source` (e.g. a probe id) that reached the store.
    pub fn totals_of(&self, source: &str) -> Result<SourceTotals, StoreError> {
        self.inner.readers.totals_of(source)
    }

    /// Every dropped counter, by process and source.
    pub fn dropped_counts(&self) -> Result<Vec<DroppedRow>, StoreError> {
        self.inner.readers.dropped()
    }

    /// The newest `limit` system events (capped at
    /// [`MAX_QUERY_LIMIT`](crate::MAX_QUERY_LIMIT)) with `t >= since`, oldest first.
    pub fn system_events(
        &self,
        since: Option<f64>,
        limit: usize,
    ) -> Result<Vec<SystemEventRow>, StoreError> {
        self.inner.readers.system_events(since, limit)
    }

    /// Counters of the writer thread.
    pub fn writer_stats(&self) -> WriterStats {
        self.inner.counters.snapshot()
    }

    /// Whether the store can write (or its disk is full), and what it could not store.
    pub fn health(&self) -> StoreHealth {
        self.inner.counters.health()
    }

    /// Events of `source` (a probe id; `""` for none) deleted by retention since the store was
    /// opened: the accounting counts them as dropped with the reason `retention`.
    pub fn retention_deleted_for(&self, source: &str) -> u64 {
        self.inner.counters.retention_deleted_for(source)
    }

    /// Stops the writer after committing everything queued before, and waits for it. Other
    /// clones of this handle get [`StoreError::WriterGone`] from writes afterwards (reads keep
    /// working). Dropping the last clone does the same; `close` only makes it explicit and
    /// reports a writer that died.
    pub fn close(self) -> Result<(), StoreError> {
        self.inner.shutdown()
    }

    fn check_not_writer(&self) -> Result<(), StoreError> {
        if std::thread::current().id() == self.inner.writer_thread {
            return Err(StoreError::Reentrant);
        }
        Ok(())
    }

    /// Queues `op`, waiting for room; does not wait for the commit.
    fn send(&self, op: Op) -> Result<(), StoreError> {
        self.check_not_writer()?;
        self.inner.tx.send(op).map_err(|_| StoreError::WriterGone)
    }

    /// Queues the op built around a reply channel and waits for its result.
    fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Op) -> Result<T, StoreError> {
        self.check_not_writer()?;
        let (reply, result) = sync_channel(1);
        self.inner
            .tx
            .send(make(reply))
            .map_err(|_| StoreError::WriterGone)?;
        result.recv().map_err(|_| StoreError::WriterGone)?
    }
}

/// What [`Store::append_report`] did with a report.
#[must_use]
pub enum Queued {
    /// Queued: `on_commit` will be called.
    Done,
    /// The writer's queue is full; nothing was queued yet.
    Full(Box<PendingAppend>),
}

/// A report waiting for room in the writer's queue (see [`Store::append_report`]).
pub struct PendingAppend {
    store: Store,
    op: Op,
}

impl PendingAppend {
    /// Waits for room and queues the report (blocks: call it off an async thread).
    pub fn wait(self) -> Result<(), StoreError> {
        self.store.check_not_writer()?;
        self.store
            .inner
            .tx
            .send(self.op)
            .map_err(|std::sync::mpsc::SendError(op)| reject(op, false))
    }

    /// How many events it holds.
    pub fn len(&self) -> usize {
        match &self.op {
            Op::Append { events, .. } => events.len(),
            _ => 0,
        }
    }

    /// Whether it holds no event (a report of dropped counts only).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn append_op(
    process_id: i64,
    events: Vec<NewEvent>,
    dropped: u64,
    on_commit: Option<CommitCallback>,
    report: Option<(String, u64)>,
) -> Result<Op, StoreError> {
    // Encode here, on the caller's thread, so the writer only binds and inserts.
    let events = EncodedEvents::encode(events)?;
    Ok(Op::Append {
        process_id,
        events,
        dropped,
        t_recv: crate::unix_now(),
        done: Completion::new(on_commit),
        report,
    })
}

/// Turns an append that could not be queued into its error, without calling its callback.
fn reject(op: Op, full: bool) -> StoreError {
    match op {
        Op::Append { events, done, .. } => {
            done.disarm();
            if full {
                StoreError::Backpressure {
                    events: events.len(),
                }
            } else {
                StoreError::WriterGone
            }
        }
        _ => StoreError::WriterGone,
    }
}

impl Inner {
    fn shutdown(&self) -> Result<(), StoreError> {
        if std::thread::current().id() == self.writer_thread {
            // Dropped or closed from a commit callback: the writer cannot wait for itself.
            // It stops on its own once every sender is gone.
            return Err(StoreError::Reentrant);
        }
        let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(handle) = handle else {
            return Ok(());
        };
        // Fails only if the writer is already gone; joining tells how it ended.
        let _ = self.tx.send(Op::Shutdown);
        handle.join().map_err(|_| {
            tracing::error!(target: "store", "the store writer thread panicked");
            StoreError::WriterGone
        })
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        match self.shutdown() {
            Ok(()) | Err(StoreError::Reentrant) => {}
            Err(error) => tracing::error!(target: "store", %error, "closing the store failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Level, Order, Retention, MAX_QUERY_LIMIT};
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc::channel;
    use std::time::Duration;

    /// Options with retention off, so events with small `t_hit` values stay.
    fn opts() -> StoreOptions {
        StoreOptions {
            retention: Retention {
                max_age: None,
                max_events_per_source: None,
                max_db_bytes: None,
                check_interval: Duration::from_secs(3600),
            },
            ..StoreOptions::default()
        }
    }

    fn open(dir: &tempfile::TempDir) -> Store {
        Store::open(&dir.path().join("scry.db"), opts()).expect("open")
    }

    fn process(key: &str, pid: u32) -> ProcessRecord {
        ProcessRecord {
            key: key.to_string(),
            pid,
            ppid: Some(1),
            host: "box".to_string(),
            name: Some("checkout".to_string()),
            python_version: "3.12.4".to_string(),
            executable: "/usr/bin/python3".to_string(),
            argv: vec!["python3".to_string(), "-m".to_string(), "app".to_string()],
            cwd: "/srv".to_string(),
            origin: "embedded".to_string(),
            state: ProcessState::Awake,
            first_seen: 10.0,
            connected_since: Some(10.0),
            last_heard: 10.0,
            info: json!({"threads": 3}),
        }
    }

    fn probe(id: &str, name: Option<&str>) -> ProbeRecord {
        ProbeRecord {
            id: id.to_string(),
            name: name.map(str::to_string),
            spec: json!({"location": "app/orders.py:127", "exprs": ["order.total"]}),
            enabled: true,
            group_name: None,
            created_at: 5.0,
            updated_at: 5.0,
        }
    }

    fn ev(source: Option<&str>, kind: &str, t_hit: f64) -> NewEvent {
        NewEvent {
            kind: kind.to_string(),
            source: source.map(str::to_string),
            t_hit,
            data: serde_json::value::to_raw_value(&serde_json::json!({"t": t_hit})).expect("raw"),
        }
    }

    fn query() -> EventQuery {
        EventQuery {
            limit: MAX_QUERY_LIMIT,
            ..EventQuery::default()
        }
    }

    fn t_hits(page: &EventPage) -> Vec<f64> {
        page.events.iter().map(|e| e.t_hit).collect()
    }

    #[test]
    fn everything_survives_close_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir);
        let pid = store
            .upsert_process(&process("box:42:1", 42))
            .expect("upsert");
        store.put_probe(&probe("p1", Some("total"))).expect("probe");
        store
            .append_events(pid, vec![ev(Some("p1"), "probe", 11.0)], 3, None)
            .expect("append");
        store
            .record_system_event(SystemEvent {
                t: 12.0,
                level: Level::Info,
                kind: "process_connected".to_string(),
                message: "pid 42 connected".to_string(),
                data: serde_json::json!({"pid": 42}),
            })
            .expect("system event");
        store.close().expect("close");

        let store = open(&dir);
        let processes = store.processes().expect("processes");
        assert_eq!(processes.len(), 1);
        assert_eq!(processes[0].id, pid);
        assert_eq!(processes[0].process, process("box:42:1", 42));
        assert_eq!(
            store.probes().expect("probes"),
            vec![probe("p1", Some("total"))]
        );
        let page = store.events(&query()).expect("events");
        assert_eq!(page.events.len(), 1);
        assert_eq!(page.events[0].data, json!({"t": 11.0}));
        assert_eq!(page.events[0].process_id, pid);
        let system = store.system_events(None, 10).expect("system events");
        assert_eq!(system.len(), 1);
        assert_eq!(system[0].event.kind, "process_connected");
        assert_eq!(
            store.counts().expect("counts"),
            Counts {
                processes: 1,
                probes: 1,
                events: 1,
                system_events: 1,
                dropped: 3
            }
        );
    }

    #[test]
    fn dropping_the_last_handle_commits_what_was_queued() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir);
        let pid = store.upsert_process(&process("k", 1)).expect("upsert");
        let events = (0..100).map(|i| ev(None, "log", f64::from(i))).collect();
        store.append_events(pid, events, 0, None).expect("append");
        let clone = store.clone();
        drop(store);
        drop(clone);
        assert_eq!(open(&dir).counts().expect("counts").events, 100);
    }

    #[test]
    fn upsert_is_keyed_by_key_and_tracks_state_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir);
        let a = store.upsert_process(&process("a", 1)).expect("a");
        let b = store.upsert_process(&process("b", 2)).expect("b");
        assert_ne!(a, b);

        let mut again = process("a", 1);
        again.first_seen = 50.0; // later: the earliest is kept
        again.last_heard = 60.0;
        again.name = None;
        again.state = ProcessState::Sleeping;
        again.connected_since = None;
        assert_eq!(store.upsert_process(&again).expect("again"), a);

        let rows = store.processes().expect("processes");
        let row = rows.iter().find(|r| r.id == a).expect("row a");
        assert_eq!(row.process.first_seen, 10.0);
        assert_eq!(row.process.last_heard, 60.0);
        assert_eq!(row.process.name, None);
        assert_eq!(row.process.state, ProcessState::Sleeping);
        assert_eq!(row.state_since, 60.0, "state changed with this upsert");

        store
            .set_process_state(a, ProcessState::Awake, 70.0)
            .expect("wake");
        store
            .set_process_state(a, ProcessState::Awake, 80.0)
            .expect("still awake");
        let rows = store.processes().expect("processes");
        let row = rows.iter().find(|r| r.id == a).expect("row a");
        assert_eq!(row.process.state, ProcessState::Awake);
        assert_eq!(row.process.connected_since, Some(70.0));
        assert_eq!(row.state_since, 70.0);
        assert_eq!(row.process.last_heard, 80.0);

        store.touch_process(a, 90.0).expect("touch");
        assert_eq!(store.mark_all_gone(100.0).expect("gone"), 2);
        assert_eq!(store.mark_all_gone(101.0).expect("gone again"), 0);
        for row in store.processes().expect("processes") {
            assert_eq!(row.process.state, ProcessState::Gone);
            assert_eq!(row.process.connected_since, None);
            assert_eq!(row.state_since, 100.0);
            if row.id == a {
                assert_eq!(row.process.last_heard, 90.0);
            }
        }

        assert!(matches!(
            store.set_process_state(999, ProcessState::Awake, 1.0),
            Err(StoreError::UnknownProcess { id: 999 })
        ));
    }

    #[test]
    fn dumps_are_kept_and_listed_newest_first_without_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir);
        let record = |pid: u32| DumpRecord {
            taken_at: 100.0 + f64::from(pid),
            root_pid: pid,
            tree: true,
            processes: 3,
            python_processes: 2,
            command: "python3 app.py".to_string(),
            data: json!({"schema": 1, "root_pid": pid}),
        };
        let first = store.put_dump(&record(7)).expect("put");
        let second = store.put_dump(&record(8)).expect("put");
        assert!(second > first);
        let list = store.dumps(10).expect("list");
        assert_eq!(
            list.iter().map(|d| d.id).collect::<Vec<_>>(),
            [second, first]
        );
        assert_eq!(list[0].dump.data, serde_json::Value::Null);
        assert_eq!(list[0].dump.root_pid, 8);
        let one = store.dump(first).expect("read").expect("stored");
        assert_eq!(one.dump, record(7));
        assert!(store.dump(first + 100).expect("read").is_none());
    }

    #[test]
    fn probes_are_upserted_by_id_with_unique_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir);
        store.put_probe(&probe("p1", Some("total"))).expect("p1");
        store.put_probe(&probe("p2", None)).expect("p2");
        store
            .put_probe(&probe("p3", None))
            .expect("two unnamed probes are fine");

        let mut changed = probe("p1", Some("total"));
        changed.enabled = false;
        changed.group_name = Some("checkout".to_string());
        changed.created_at = 99.0; // ignored: the stored creation time stays
        changed.updated_at = 20.0;
        store.put_probe(&changed).expect("update");

        match store.put_probe(&probe("p2", Some("total"))) {
            Err(StoreError::ProbeNameTaken { name }) => assert_eq!(name, "total"),
            other => panic!("expected ProbeNameTaken, got {other:?}"),
        }

        let probes = store.probes().expect("probes");
        assert_eq!(probes.len(), 3);
        let p1 = &probes[0];
        assert_eq!(p1.id, "p1");
        assert!(!p1.enabled);
        assert_eq!(p1.group_name.as_deref(), Some("checkout"));
        assert_eq!(p1.created_at, 5.0);
        assert_eq!(p1.updated_at, 20.0);
        assert_eq!(probes[1].name, None, "the failed rename changed nothing");

        assert!(store.delete_probe("p2").expect("delete"));
        assert!(!store.delete_probe("p2").expect("delete again"));
        assert_eq!(store.counts().expect("counts").probes, 2);
    }

    #[test]
    fn fifty_thousand_events_are_all_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir);
        let pid = store.upsert_process(&process("k", 1)).expect("upsert");
        let acked = Arc::new(AtomicUsize::new(0));
        for batch in 0..50 {
            let events = (0..1000)
                .map(|i| ev(Some("p1"), "probe", f64::from(batch * 1000 + i)))
                .collect();
            let acked = Arc::clone(&acked);
            let on_commit: CommitCallback = Box::new(move |r| {
                if r.is_ok() {
                    acked.fetch_add(1000, Ordering::SeqCst);
                }
            });
            store
                .append_events_blocking(pid, events, 0, Some(on_commit))
                .expect("append");
        }
        store.flush().expect("flush");
        assert_eq!(acked.load(Ordering::SeqCst), 50_000);
        assert_eq!(store.counts().expect("counts").events, 50_000);
        assert_eq!(store.writer_stats().events, 50_000);
        let oldest = store
            .events(&EventQuery {
                order: Order::Oldest,
                limit: 1,
                ..EventQuery::default()
            })
            .expect("events");
        assert_eq!(t_hits(&oldest), [0.0]);
    }

    #[test]
    fn a_resent_report_is_stored_once_and_still_acknowledged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir);
        let pid = store.upsert_process(&process("k", 1)).expect("upsert");
        let (tx, rx) = channel();
        let send = |stream: &str, seq: u64, n: usize, dropped: u64| {
            let tx = tx.clone();
            let events = (0..n).map(|i| ev(Some("p1"), "probe", i as f64)).collect();
            let cb: CommitCallback = Box::new(move |r| {
                let _ = tx.send((seq, r.is_ok()));
            });
            match store
                .append_report(pid, Some(stream), seq, events, dropped, Some(cb))
                .expect("append")
            {
                Queued::Done => {}
                Queued::Full(p) => p.wait().expect("wait"),
            }
        };
        send("a", 1, 3, 1);
        send("a", 2, 2, 0);
        // The reconnect resends 2 (already stored) and goes on with 3.
        send("a", 2, 2, 0);
        send("a", 1, 3, 1);
        send("a", 3, 4, 2);
        // Another stream of the same process counts from 1 again.
        send("b", 1, 5, 0);
        store.flush().expect("flush");
        let acks: Vec<(u64, bool)> = rx.try_iter().collect();
        assert_eq!(acks.len(), 6, "every report is acknowledged: {acks:?}");
        assert!(acks.iter().all(|(_, ok)| *ok), "{acks:?}");
        let counts = store.counts().expect("counts");
        assert_eq!(counts.events, 3 + 2 + 4 + 5);
        assert_eq!(counts.dropped, 1 + 2);
        // A store opened again remembers the streams (a restarted daemon).
        store.close().expect("close");
        let store = open(&dir);
        match store
            .append_report(pid, Some("a"), 3, vec![ev(None, "log", 1.0)], 0, None)
            .expect("append")
        {
            Queued::Done => {}
            Queued::Full(p) => p.wait().expect("wait"),
        }
        store.flush().expect("flush");
        assert_eq!(store.counts().expect("counts").events, 14);
    }

    #[test]
    fn appended_events_come_back_exactly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir);
        let pid = store.upsert_process(&process("k", 1)).expect("upsert");
        // 70 events: two full multi-row inserts and a remainder.
        let events: Vec<NewEvent> = (0..70)
            .map(|i| NewEvent {
                kind: if i % 3 == 0 { "log" } else { "probe" }.to_string(),
                source: (i % 2 == 0).then(|| format!("p{i}")),
                t_hit: 1000.0 + f64::from(i) / 8.0,
                data: serde_json::value::to_raw_value(&serde_json::json!({"i": i, "s": "ünïcødé \"quoted\"", "nested": [1, {"a": null}]})).expect("raw"),
            })
            .collect();
        let before = crate::unix_now();
        store
            .append_events(pid, events.clone(), 0, None)
            .expect("append");
        store.flush().expect("flush");
        let page = store
            .events(&EventQuery {
                order: Order::Oldest,
                ..query()
            })
            .expect("events");
        assert_eq!(page.events.len(), 70);
        for (row, sent) in page.events.iter().zip(&events) {
            assert_eq!(row.process_id, pid);
            assert_eq!(row.kind, sent.kind);
            assert_eq!(row.source, sent.source);
            assert_eq!(row.t_hit, sent.t_hit);
            assert_eq!(row.data.to_string(), sent.data.get());
            assert!(row.t_recv >= before);
        }
    }

    #[test]
    fn appends_are_batched_and_callbacks_run_after_the_commit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(
            &dir.path().join("scry.db"),
            StoreOptions {
                // Long enough that the 200 appends below always land in few batches.
                batch_delay: Duration::from_millis(500),
                queue_capacity: 4096,
                ..opts()
            },
        )
        .expect("open");
        let pid = store.upsert_process(&process("k", 1)).expect("upsert");
        let before = store.writer_stats();

        let (tx, rx) = channel();
        for i in 0..200 {
            let source = format!("s{i}");
            let events = vec![
                ev(Some(&source), "probe", 1.0),
                ev(Some(&source), "probe", 2.0),
            ];
            let reader = store.clone();
            let tx = tx.clone();
            let on_commit: CommitCallback = Box::new(move |r| {
                // Runs after the commit: a reader already sees this append's events.
                let visible = reader
                    .events(&EventQuery {
                        source: Some(source),
                        ..EventQuery::default()
                    })
                    .map(|page| page.events.len());
                let _ = tx.send((r.is_ok(), visible.ok()));
            });
            store
                .append_events(pid, events, 0, Some(on_commit))
                .expect("append");
        }
        drop(tx);
        store.flush().expect("flush");
        let results: Vec<_> = rx.iter().collect();
        assert_eq!(results.len(), 200);
        assert!(results
            .iter()
            .all(|&(ok, visible)| ok && visible == Some(2)));

        let stats = store.writer_stats();
        let batches = stats.batches - before.batches;
        assert!(batches < 20, "200 appends took {batches} commits");
        assert_eq!(stats.events - before.events, 400);
        assert_eq!(store.counts().expect("counts").events, 400);
    }

    #[test]
    fn full_queue_is_backpressure_not_a_silent_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(
            &dir.path().join("scry.db"),
            StoreOptions {
                queue_capacity: 2,
                batch_delay: Duration::ZERO,
                ..opts()
            },
        )
        .expect("open");
        let pid = store.upsert_process(&process("k", 1)).expect("upsert");

        // Hold the writer inside a callback until the queue has been filled.
        let (entered_tx, entered) = channel();
        let (release, release_rx) = channel::<()>();
        let blocker: CommitCallback = Box::new(move |_| {
            let _ = entered_tx.send(());
            let _ = release_rx.recv();
        });
        store
            .append_events(pid, vec![ev(None, "log", 0.0)], 0, Some(blocker))
            .expect("first");
        entered.recv().expect("writer entered the callback");

        let called = Arc::new(AtomicUsize::new(0));
        let mut outcomes = Vec::new();
        for i in 0..4 {
            let called = Arc::clone(&called);
            let cb: CommitCallback = Box::new(move |_| {
                called.fetch_add(1, Ordering::SeqCst);
            });
            outcomes.push(store.append_events(
                pid,
                vec![ev(None, "log", f64::from(i)); 3],
                0,
                Some(cb),
            ));
        }
        assert!(outcomes[0].is_ok() && outcomes[1].is_ok());
        for outcome in &outcomes[2..] {
            assert!(
                matches!(outcome, Err(StoreError::Backpressure { events: 3 })),
                "{outcome:?}"
            );
        }
        // Release the writer; the caller counts what was refused.
        drop(release);
        store.record_dropped(pid, None, 6).expect("record_dropped");
        store.flush().expect("flush");
        assert_eq!(
            called.load(Ordering::SeqCst),
            2,
            "rejected calls never call back"
        );
        let counts = store.counts().expect("counts");
        assert_eq!(counts.events, 1 + 2 * 3);
        assert_eq!(counts.dropped, 6);
    }

    #[test]
    fn dropped_counts_are_kept_per_process_and_source() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir);
        let a = store.upsert_process(&process("a", 1)).expect("a");
        let b = store.upsert_process(&process("b", 2)).expect("b");
        store.append_events(a, vec![], 5, None).expect("report");
        store.append_events(a, vec![], 2, None).expect("report");
        store.record_dropped(a, Some("p1"), 4).expect("p1");
        store.record_dropped(b, Some("p1"), 1).expect("p1 b");
        store.flush().expect("flush");

        let rows: Vec<_> = store
            .dropped_counts()
            .expect("dropped")
            .into_iter()
            .map(|r| (r.process_id, r.source, r.dropped))
            .collect();
        assert_eq!(
            rows,
            [
                (a, None, 7),
                (a, Some("p1".to_string()), 4),
                (b, Some("p1".to_string()), 1)
            ]
        );
        assert_eq!(store.counts().expect("counts").dropped, 12);
    }

    #[test]
    fn event_queries_filter_order_and_page() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir);
        let a = store.upsert_process(&process("a", 1)).expect("a");
        let b = store.upsert_process(&process("b", 2)).expect("b");
        // Hit times 0..10 from `a` (p1 probe / p2 log alternating), then 10..15 from `b`.
        let from_a = (0..10)
            .map(|i| {
                let t = f64::from(i);
                if i % 2 == 0 {
                    ev(Some("p1"), "probe", t)
                } else {
                    ev(Some("p2"), "log", t)
                }
            })
            .collect();
        store.append_events(a, from_a, 0, None).expect("a");
        let from_b = (10..15)
            .map(|i| ev(Some("p1"), "probe", f64::from(i)))
            .collect();
        store.append_events(b, from_b, 0, None).expect("b");
        store.flush().expect("flush");

        let all = store
            .events(&EventQuery {
                order: Order::Oldest,
                ..query()
            })
            .expect("all");
        assert_eq!(all.events.len(), 15);
        assert!(!all.truncated);
        assert!(all.events.windows(2).all(|w| w[0].id < w[1].id));

        let p1 = store
            .events(&EventQuery {
                source: Some("p1".to_string()),
                order: Order::Oldest,
                ..query()
            })
            .expect("p1");
        assert_eq!(
            t_hits(&p1),
            [0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 11.0, 12.0, 13.0, 14.0]
        );

        let logs = store
            .events(&EventQuery {
                kind: Some("log".to_string()),
                ..query()
            })
            .expect("logs");
        assert_eq!(t_hits(&logs), [9.0, 7.0, 5.0, 3.0, 1.0], "newest first");

        let of_b = store
            .events(&EventQuery {
                process_id: Some(b),
                since: Some(11.0),
                until: Some(13.0),
                ..query()
            })
            .expect("b window");
        assert_eq!(
            t_hits(&of_b),
            [12.0, 11.0],
            "since inclusive, until exclusive"
        );

        let combined = store
            .events(&EventQuery {
                source: Some("p1".to_string()),
                process_id: Some(a),
                kind: Some("probe".to_string()),
                since: Some(3.0),
                ..query()
            })
            .expect("combined");
        assert_eq!(t_hits(&combined), [8.0, 6.0, 4.0]);

        // Newest page: the tail, truncated.
        let tail = store
            .events(&EventQuery {
                limit: 4,
                ..EventQuery::default()
            })
            .expect("tail");
        assert_eq!(t_hits(&tail), [14.0, 13.0, 12.0, 11.0]);
        assert!(tail.truncated);
        let exact = store
            .events(&EventQuery {
                limit: 15,
                ..EventQuery::default()
            })
            .expect("exact");
        assert!(!exact.truncated, "exactly `limit` matches is not truncated");

        // Following: oldest-first pages after the last id seen, without gaps.
        let mut seen = Vec::new();
        let mut after_id = None;
        loop {
            let page = store
                .events(&EventQuery {
                    after_id,
                    limit: 4,
                    order: Order::Oldest,
                    ..EventQuery::default()
                })
                .expect("follow");
            seen.extend(t_hits(&page));
            after_id = page.events.last().map(|e| e.id).or(after_id);
            if !page.truncated {
                break;
            }
        }
        assert_eq!(seen, t_hits(&all));
        store
            .append_events(b, vec![ev(None, "pulse", 99.0)], 0, None)
            .expect("new");
        store.flush().expect("flush");
        let next = store
            .events(&EventQuery {
                after_id,
                order: Order::Oldest,
                ..query()
            })
            .expect("next");
        assert_eq!(t_hits(&next), [99.0]);
        assert_eq!(next.events[0].source, None);

        // The limit is capped.
        let capped = store
            .events(&EventQuery {
                limit: usize::MAX,
                ..EventQuery::default()
            })
            .expect("capped");
        assert_eq!(capped.events.len(), 16);
    }

    #[test]
    fn pages_are_by_hit_time_and_following_is_by_arrival() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir);
        let a = store.upsert_process(&process("a", 1)).expect("a");
        let b = store.upsert_process(&process("b", 2)).expect("b");
        let hits = |ts: &[f64]| ts.iter().map(|&t| ev(Some("p1"), "probe", t)).collect();
        store
            .append_events(a, hits(&[10.0, 20.0, 30.0]), 0, None)
            .expect("a");
        store.flush().expect("flush");
        let seen = store
            .events(&EventQuery {
                order: Order::Oldest,
                ..query()
            })
            .expect("first look");
        let cursor = seen.events.last().map(|e| e.id);

        // `b` reports late: its hits are older than what was already seen.
        store
            .append_events(b, hits(&[15.0, 25.0]), 0, None)
            .expect("b");
        store.flush().expect("flush");

        let newest = store
            .events(&EventQuery {
                source: Some("p1".to_string()),
                ..query()
            })
            .expect("newest");
        assert_eq!(t_hits(&newest), [30.0, 25.0, 20.0, 15.0, 10.0]);
        let oldest = store
            .events(&EventQuery {
                process_id: Some(b),
                order: Order::Oldest,
                ..query()
            })
            .expect("oldest");
        assert_eq!(t_hits(&oldest), [15.0, 25.0]);
        let followed = store
            .events(&EventQuery {
                source: Some("p1".to_string()),
                after_id: cursor,
                order: Order::Oldest,
                ..query()
            })
            .expect("follow");
        assert_eq!(t_hits(&followed), [15.0, 25.0], "late hits are not missed");
    }

    #[test]
    fn event_ids_are_never_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(
            &dir.path().join("scry.db"),
            StoreOptions {
                retention: Retention {
                    max_age: Some(Duration::from_secs(3600)),
                    max_events_per_source: None,
                    max_db_bytes: None,
                    check_interval: Duration::from_secs(3600),
                },
                ..StoreOptions::default()
            },
        )
        .expect("open");
        let pid = store.upsert_process(&process("k", 1)).expect("upsert");
        store
            .append_events(pid, vec![ev(None, "log", 1.0); 3], 0, None)
            .expect("old");
        store.flush().expect("flush");
        let last = store.events(&query()).expect("events").events[0].id;
        assert_eq!(store.apply_retention().expect("retention").events_by_age, 3);
        assert_eq!(store.counts().expect("counts").events, 0);

        let now = crate::unix_now();
        store
            .append_events(pid, vec![ev(None, "log", now)], 0, None)
            .expect("new");
        store.flush().expect("flush");
        let page = store
            .events(&EventQuery {
                after_id: Some(last),
                order: Order::Oldest,
                ..query()
            })
            .expect("follow");
        assert_eq!(t_hits(&page), [now], "a follower still sees new events");
    }

    #[test]
    fn retention_deletes_by_age() {
        let dir = tempfile::tempdir().expect("tempdir");
        let day = 24.0 * 3600.0;
        let now = crate::unix_now();
        let store = Store::open(
            &dir.path().join("scry.db"),
            StoreOptions {
                retention: Retention {
                    max_age: Some(Duration::from_secs(7 * 24 * 3600)),
                    max_events_per_source: None,
                    max_db_bytes: None,
                    check_interval: Duration::from_secs(3600),
                },
                ..StoreOptions::default()
            },
        )
        .expect("open");
        let mut live = process("live", 1);
        live.last_heard = now - 30.0 * day;
        let live = store.upsert_process(&live).expect("live");
        let mut old_gone = process("old-gone", 2);
        old_gone.state = ProcessState::Gone;
        old_gone.connected_since = None;
        old_gone.last_heard = now - 30.0 * day;
        store.upsert_process(&old_gone).expect("old gone");

        let events = vec![
            ev(Some("p1"), "probe", now - 10.0 * day),
            ev(Some("p1"), "probe", now - 8.0 * day),
            ev(Some("p1"), "probe", now - 6.0 * day),
            ev(None, "log", now - 9.0 * day),
            ev(None, "log", now),
        ];
        store.append_events(live, events, 0, None).expect("append");
        for t in [now - 8.0 * day, now - 1.0] {
            store
                .record_system_event(SystemEvent {
                    t,
                    level: Level::Warn,
                    kind: "k".to_string(),
                    message: "m".to_string(),
                    data: serde_json::json!(null),
                })
                .expect("system");
        }
        for (t, pid) in [(now - 8.0 * day, 11), (now - 1.0, 12)] {
            store
                .put_dump(&DumpRecord {
                    taken_at: t,
                    root_pid: pid,
                    tree: false,
                    processes: 1,
                    python_processes: 1,
                    command: "python app.py".to_string(),
                    data: serde_json::json!({"schema": 1}),
                })
                .expect("dump");
        }

        let report = store.apply_retention().expect("retention");
        assert_eq!(
            report,
            RetentionReport {
                events_by_age: 3,
                events_by_cap: 0,
                system_events_by_age: 1,
                dumps_by_age: 1,
                processes: 1,
                events_by_size: 0,
            }
        );
        let dumps = store.dumps(10).expect("dumps");
        assert_eq!(dumps.len(), 1, "the old dump goes, the recent one stays");
        assert_eq!(dumps[0].dump.root_pid, 12);
        let left = store.events(&query()).expect("events");
        assert_eq!(left.events.len(), 2);
        assert!(left.events.iter().all(|e| e.t_hit >= now - 7.0 * day));
        let processes = store.processes().expect("processes");
        assert_eq!(
            processes.len(),
            1,
            "a process with events, or not gone, stays"
        );
        assert_eq!(processes[0].id, live);
        assert_eq!(store.system_events(None, 10).expect("system").len(), 1);
        assert_eq!(
            store.apply_retention().expect("again"),
            RetentionReport::default()
        );
    }

    #[test]
    fn retention_keeps_the_newest_events_of_each_source() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(
            &dir.path().join("scry.db"),
            StoreOptions {
                retention: Retention {
                    max_age: None,
                    max_events_per_source: Some(3),
                    max_db_bytes: None,
                    check_interval: Duration::from_secs(3600),
                },
                ..StoreOptions::default()
            },
        )
        .expect("open");
        let pid = store.upsert_process(&process("k", 1)).expect("upsert");
        // p1 arrives out of hit-time order with a three-way tie at 4.0 across the cut; p2 is
        // under the cap; events without a source are capped as one more source. `n` numbers
        // the events in arrival order.
        let sent = [
            (Some("p1"), 5.0),
            (Some("p1"), 1.0),
            (Some("p1"), 4.0),
            (Some("p1"), 2.0),
            (Some("p1"), 4.0),
            (Some("p1"), 4.0),
            (Some("p2"), 1.0),
            (Some("p2"), 2.0),
            (None, 1.0),
            (None, 2.0),
            (None, 3.0),
            (None, 4.0),
        ];
        let events = sent
            .iter()
            .enumerate()
            .map(|(n, &(source, t_hit))| NewEvent {
                kind: "probe".to_string(),
                source: source.map(str::to_string),
                t_hit,
                data: serde_json::value::to_raw_value(&serde_json::json!({ "n": n })).expect("raw"),
            })
            .collect();
        store.append_events(pid, events, 0, None).expect("append");
        let report = store.apply_retention().expect("retention");
        assert_eq!(report.events_by_cap, 3 + 1);
        assert_eq!(report.events_by_age, 0);

        let kept = |source: Option<&str>| -> Vec<(f64, u64)> {
            let page = store
                .events(&EventQuery {
                    source: source.map(str::to_string),
                    order: Order::Oldest,
                    ..query()
                })
                .expect("events");
            page.events
                .iter()
                .filter(|e| e.source.as_deref() == source)
                .map(|e| (e.t_hit, e.data["n"].as_u64().unwrap_or(u64::MAX)))
                .collect()
        };
        // Of the tied 4.0s, the two stored last are kept.
        assert_eq!(kept(Some("p1")), [(4.0, 4), (4.0, 5), (5.0, 0)]);
        assert_eq!(kept(Some("p2")), [(1.0, 6), (2.0, 7)]);
        assert_eq!(kept(None), [(2.0, 9), (3.0, 10), (4.0, 11)]);
        assert_eq!(store.counts().expect("counts").events, 8);
    }

    #[test]
    fn retention_runs_on_its_own_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir);
        let pid = store.upsert_process(&process("k", 1)).expect("upsert");
        store
            .append_events(pid, vec![ev(None, "log", 1.0)], 0, None)
            .expect("append");
        store.close().expect("close");

        // Default retention (7 days): an event from 1970 goes before anything else is done.
        let store =
            Store::open(&dir.path().join("scry.db"), StoreOptions::default()).expect("reopen");
        store.flush().expect("flush");
        assert!(store.writer_stats().retention_runs >= 1);
        assert_eq!(store.counts().expect("counts").events, 0);
    }

    #[test]
    fn system_events_are_the_newest_oldest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir);
        for t in 1..=5 {
            store
                .record_system_event(SystemEvent {
                    t: f64::from(t),
                    level: Level::Info,
                    kind: "tick".to_string(),
                    message: format!("tick {t}"),
                    data: serde_json::json!({"n": t}),
                })
                .expect("record");
        }
        store.flush().expect("flush");
        let ts = |rows: Vec<SystemEventRow>| rows.iter().map(|r| r.event.t).collect::<Vec<_>>();
        assert_eq!(
            ts(store.system_events(None, 3).expect("tail")),
            [3.0, 4.0, 5.0]
        );
        assert_eq!(
            ts(store.system_events(Some(4.0), 10).expect("since")),
            [4.0, 5.0]
        );
        let rows = store.system_events(None, 1).expect("one");
        assert_eq!(rows[0].event.data, json!({"n": 5}));
        assert_eq!(rows[0].event.level, Level::Info);
    }

    #[test]
    fn closed_store_refuses_writes_and_still_reads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir);
        let pid = store.upsert_process(&process("k", 1)).expect("upsert");
        let other = store.clone();
        store.close().expect("close");
        assert!(matches!(
            other.append_events(pid, vec![ev(None, "log", 1.0)], 0, None),
            Err(StoreError::WriterGone)
        ));
        assert!(matches!(other.flush(), Err(StoreError::WriterGone)));
        assert!(matches!(
            other.upsert_process(&process("k2", 2)),
            Err(StoreError::WriterGone)
        ));
        assert_eq!(other.processes().expect("reads work").len(), 1);
    }

    #[test]
    fn callbacks_cannot_deadlock_or_kill_the_writer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir);
        let pid = store.upsert_process(&process("k", 1)).expect("upsert");

        let (tx, rx) = channel();
        let inner = store.clone();
        let reentrant: CommitCallback = Box::new(move |_| {
            let _ = tx.send(matches!(inner.flush(), Err(StoreError::Reentrant)));
        });
        store
            .append_events(pid, vec![], 0, Some(reentrant))
            .expect("append");
        let panicking: CommitCallback = Box::new(|_| panic!("callback bug"));
        store
            .append_events(pid, vec![], 0, Some(panicking))
            .expect("append");
        store.flush().expect("writer survived");
        assert!(
            rx.recv().expect("called"),
            "flush from a callback is refused"
        );
        store
            .append_events(pid, vec![ev(None, "log", 1.0)], 0, None)
            .expect("append");
        store.flush().expect("flush");
        assert_eq!(store.counts().expect("counts").events, 1);
    }
}

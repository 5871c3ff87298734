//! The writer thread: the only code that writes to the database.
//!
//! Operations arrive on a bounded queue. The writer opens a transaction for the first one,
//! executes every operation as it arrives (each inside a savepoint, so one failing operation
//! does not spoil the others), and commits when the batch holds `batch_max` events, when
//! `batch_delay` has passed, or as soon as the queue is empty if someone is waiting for an
//! operation of the batch. After the commit it settles every operation of the batch: with its
//! own result, or with the commit's error if the commit failed.
//!
//! An operation that is dropped without being settled (the writer stopped, or it was still
//! queued when the store was closed) settles itself with [`StoreError::WriterGone`], so no
//! callback is ever forgotten.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params, Connection, OptionalExtension};

use crate::{
    CommitCallback, Level, NewEvent, ProcessState, Retention, RetentionReport, StoreError,
    StoreHealth, StoreState, WriterStats,
};

/// Size of the reserve file kept beside the database: on a full disk it is deleted, and the
/// room it leaves takes process registrations and state changes while events wait for space.
pub(crate) const RESERVE_BYTES: usize = 1024 * 1024;
/// SQLite's default checkpoint interval (WAL pages), and the one used while the disk is full.
const WAL_PAGES: i64 = 1000;
const WAL_PAGES_WHILE_FULL: i64 = 8;
/// How long the writer waits without work before it gives its page cache back.
const SHRINK_AFTER_IDLE: Duration = Duration::from_secs(3);
/// While full: how often what was kept out is counted in the store.
const UNSTORED_EVERY: Duration = Duration::from_secs(1);
/// How often a full store tries to make its reserve again (which is how it sees space return).
const FULL_RECHECK: Duration = Duration::from_secs(1);

/// Where a blocking caller waits for the result of its operation.
pub(crate) type Reply<T> = SyncSender<Result<T, StoreError>>;

/// The events of one append, ready for the database: all their text (kinds, sources and the
/// JSON of their data, encoded on the caller's thread) in one buffer, so that an append costs
/// the writer a couple of frees instead of several per event.
#[derive(Debug, Default)]
pub(crate) struct EncodedEvents {
    text: Vec<u8>,
    rows: Vec<EventSlot>,
}

/// Where one event's fields are in [`EncodedEvents::text`].
#[derive(Debug)]
struct EventSlot {
    kind: Range<usize>,
    source: Option<Range<usize>>,
    t_hit: f64,
    data: Range<usize>,
}

impl EncodedEvents {
    pub(crate) fn encode(events: Vec<NewEvent>) -> Result<Self, StoreError> {
        let mut text = Vec::with_capacity(events.len() * 160);
        let mut rows = Vec::with_capacity(events.len());
        let push = |text: &mut Vec<u8>, bytes: &[u8]| {
            let start = text.len();
            text.extend_from_slice(bytes);
            start..text.len()
        };
        for e in events {
            let kind = push(&mut text, e.kind.as_bytes());
            let source = e.source.map(|s| push(&mut text, s.as_bytes()));
            let data = push(&mut text, e.data.get().as_bytes());
            rows.push(EventSlot {
                kind,
                source,
                t_hit: e.t_hit,
                data,
            });
        }
        Ok(EncodedEvents { text, rows })
    }

    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    /// How many events each source has ("" for events without one); reports hold one or two.
    fn per_source(&self) -> Vec<(&str, u64)> {
        let mut counts: Vec<(&str, u64)> = Vec::new();
        for row in &self.rows {
            let source = row
                .source
                .as_ref()
                .and_then(|r| std::str::from_utf8(&self.text[r.clone()]).ok())
                .unwrap_or("");
            match counts.iter_mut().find(|(s, _)| *s == source) {
                Some((_, n)) => *n += 1,
                None => counts.push((source, 1)),
            }
        }
        counts
    }

    /// Binds event `row` to parameters `first..first + 5` of `stmt` (all but `process_id`).
    fn bind(
        &self,
        stmt: &mut rusqlite::Statement<'_>,
        row: &EventSlot,
        first: usize,
        t_recv: f64,
    ) -> rusqlite::Result<()> {
        // The slices were cut by `encode` from UTF-8 strings and serde_json output.
        let text = |r: &Range<usize>| ToSqlOutput::Borrowed(ValueRef::Text(&self.text[r.clone()]));
        stmt.raw_bind_parameter(first, text(&row.kind))?;
        stmt.raw_bind_parameter(first + 1, row.source.as_ref().map(text))?;
        stmt.raw_bind_parameter(first + 2, row.t_hit)?;
        stmt.raw_bind_parameter(first + 3, t_recv)?;
        stmt.raw_bind_parameter(first + 4, text(&row.data))?;
        Ok(())
    }
}

/// A process record ready for the database.
#[derive(Debug)]
pub(crate) struct EncodedProcess {
    pub key: String,
    pub pid: u32,
    pub ppid: Option<u32>,
    pub host: String,
    pub name: Option<String>,
    pub python_version: String,
    pub executable: String,
    pub argv: String,
    pub cwd: String,
    pub origin: String,
    pub state: ProcessState,
    pub first_seen: f64,
    pub connected_since: Option<f64>,
    pub last_heard: f64,
    pub info: String,
}

/// A probe record ready for the database.
#[derive(Debug)]
pub(crate) struct EncodedProbe {
    pub id: String,
    pub name: Option<String>,
    pub spec: String,
    pub enabled: bool,
    pub group_name: Option<String>,
    pub created_at: f64,
    pub updated_at: f64,
}

/// A dump ready for the database.
pub(crate) struct EncodedDump {
    pub taken_at: f64,
    pub root_pid: u32,
    pub tree: bool,
    pub processes: u32,
    pub python_processes: u32,
    pub command: String,
    pub data: String,
}

/// A system event ready for the database.
#[derive(Debug)]
pub(crate) struct EncodedSystemEvent {
    pub t: f64,
    pub level: Level,
    pub kind: String,
    pub message: String,
    pub data: String,
}

/// A callback that is settled exactly once: by the writer, or with `WriterGone` when dropped.
pub(crate) struct Completion(Option<CommitCallback>);

impl Completion {
    pub(crate) fn new(callback: Option<CommitCallback>) -> Self {
        Completion(callback)
    }

    fn settle(mut self, result: Result<(), StoreError>) {
        if let Some(callback) = self.0.take() {
            run_callback(callback, result);
        }
    }

    /// Takes the callback out without calling it (the call that carried it failed instead).
    pub(crate) fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if let Some(callback) = self.0.take() {
            run_callback(callback, Err(StoreError::WriterGone));
        }
    }
}

fn run_callback(callback: CommitCallback, result: Result<(), StoreError>) {
    if catch_unwind(AssertUnwindSafe(|| callback(result))).is_err() {
        tracing::error!(target: "store", "a store commit callback panicked; the writer carries on");
    }
}

/// One unit of work for the writer.
pub(crate) enum Op {
    Append {
        process_id: i64,
        events: EncodedEvents,
        dropped: u64,
        t_recv: f64,
        done: Completion,
        /// The report's stream and seq: stored only if newer than the stream's last.
        report: Option<(String, u64)>,
    },
    Dropped {
        process_id: i64,
        source: Option<String>,
        count: u64,
        at: f64,
    },
    UpsertProcess {
        process: EncodedProcess,
        reply: Reply<i64>,
    },
    SetProcessState {
        id: i64,
        state: ProcessState,
        at: f64,
        reply: Reply<()>,
    },
    TouchProcess {
        id: i64,
        at: f64,
    },
    MarkAllGone {
        at: f64,
        reply: Reply<u64>,
    },
    SystemEvent(EncodedSystemEvent),
    PutProbe {
        probe: EncodedProbe,
        reply: Reply<()>,
    },
    PutDump {
        dump: EncodedDump,
        reply: Reply<i64>,
    },
    PutTrace {
        id: String,
        created_at: f64,
        updated_at: f64,
        data: String,
        reply: Reply<()>,
    },
    DeleteProbe {
        id: String,
        reply: Reply<bool>,
    },
    Flush {
        reply: Reply<()>,
    },
    Retention {
        now: f64,
        reply: Reply<RetentionReport>,
    },
    Shutdown,
    /// Runs arbitrary SQL inside the batch (tests use it to make a commit fail).
    #[cfg(test)]
    Exec(&'static str),
}

impl Op {
    /// How much of a batch this operation fills.
    fn weight(&self) -> usize {
        match self {
            Op::Append { events, .. } => events.len().max(1),
            _ => 1,
        }
    }

    /// Whether somebody blocks until this operation is committed.
    fn is_waited_for(&self) -> bool {
        matches!(
            self,
            Op::UpsertProcess { .. }
                | Op::SetProcessState { .. }
                | Op::MarkAllGone { .. }
                | Op::PutProbe { .. }
                | Op::PutDump { .. }
                | Op::PutTrace { .. }
                | Op::DeleteProbe { .. }
                | Op::Flush { .. }
                | Op::Retention { .. }
        )
    }
}

/// Shared counters behind [`WriterStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    batches: AtomicU64,
    failed_batches: AtomicU64,
    ops: AtomicU64,
    events: AtomicU64,
    retention_runs: AtomicU64,
    /// Events that could not be stored (disk full, failed commits).
    not_stored: AtomicU64,
    /// Not `ok` since when, and why.
    trouble: Mutex<Option<Trouble>>,
    /// Events deleted by retention, per source (`""`: none).
    retention_deleted: Mutex<HashMap<String, u64>>,
}

#[derive(Debug, Clone)]
struct Trouble {
    state: StoreState,
    since: f64,
    last_error: String,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> WriterStats {
        WriterStats {
            batches: self.batches.load(Ordering::Relaxed),
            failed_batches: self.failed_batches.load(Ordering::Relaxed),
            ops: self.ops.load(Ordering::Relaxed),
            events: self.events.load(Ordering::Relaxed),
            retention_runs: self.retention_runs.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn health(&self) -> StoreHealth {
        let trouble = self
            .trouble
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let retention_deleted: BTreeMap<String, u64> = self
            .retention_deleted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        StoreHealth {
            state: trouble.as_ref().map_or(StoreState::Ok, |t| t.state),
            since: trouble.as_ref().map(|t| t.since),
            not_stored: self.not_stored.load(Ordering::Relaxed),
            last_error: trouble.map(|t| t.last_error),
            retention_deleted,
        }
    }

    pub(crate) fn retention_deleted_for(&self, source: &str) -> u64 {
        self.retention_deleted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(source)
            .copied()
            .unwrap_or(0)
    }

    fn count_retention(&self, deleted: Vec<(String, u64)>) {
        let mut map = self
            .retention_deleted
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (source, n) in deleted {
            *map.entry(source).or_default() += n;
        }
    }

    /// Notes a failed write; returns whether the state changed (to log it once).
    fn set_trouble(&self, state: StoreState, error: String) -> bool {
        let mut t = self.trouble.lock().unwrap_or_else(|e| e.into_inner());
        let changed = t.as_ref().is_none_or(|t| t.state != state);
        let since = match t.as_ref() {
            Some(old) if !changed => old.since,
            _ => crate::unix_now(),
        };
        *t = Some(Trouble {
            state,
            since,
            last_error: error,
        });
        changed
    }

    /// Writes succeed again; returns since when they had not (to log it once).
    fn clear_trouble(&self) -> Option<f64> {
        self.trouble
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .map(|t| t.since)
    }
}

/// Makes the reserve file with real blocks (a sparse file would hold no room).
fn make_reserve(path: &std::path::Path) -> std::io::Result<()> {
    if std::fs::metadata(path).is_ok_and(|m| m.len() >= RESERVE_BYTES as u64) {
        return Ok(());
    }
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)?;
        let chunk = [0u8; 64 * 1024];
        for _ in 0..RESERVE_BYTES / chunk.len() {
            f.write_all(&chunk)?;
        }
        f.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Whether SQLite says the disk (or the database's size limit) is full.
fn is_full(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull)
}

/// Settles one operation once the fate of its batch is known.
type Finish = Box<dyn FnOnce(Option<&Arc<rusqlite::Error>>)>;

/// Combines an operation's own result with the outcome of its batch's commit.
fn outcome<T>(
    own: Result<T, StoreError>,
    commit: Option<&Arc<rusqlite::Error>>,
) -> Result<T, StoreError> {
    match (own, commit) {
        (Err(e), _) => Err(e),
        (Ok(_), Some(source)) => Err(StoreError::Commit {
            source: Arc::clone(source),
        }),
        (Ok(v), None) => Ok(v),
    }
}

fn reply_finish<T: 'static>(reply: Reply<T>, own: Result<T, StoreError>) -> Finish {
    Box::new(move |commit| {
        // The caller may have given up waiting; nothing to do then.
        let _ = reply.send(outcome(own, commit));
    })
}

fn log_finish(what: &'static str, own: Result<(), StoreError>) -> Finish {
    Box::new(move |commit| {
        if let Err(error) = outcome(own, commit) {
            tracing::warn!(target: "store", %error, "store write ({what}) failed");
        }
    })
}

/// The writer's state; [`Writer::run`] is the thread's body.
pub(crate) struct Writer {
    conn: Connection,
    rx: Receiver<Op>,
    batch_max: usize,
    batch_delay: Duration,
    retention: Retention,
    next_retention: Option<Instant>,
    counters: Arc<Counters>,
    /// The reserve file (none in unit tests that do not ask for one).
    reserve: Option<PathBuf>,
    /// Set while the disk is full: when the reserve is next tried again.
    full_recheck: Option<Instant>,
    /// While full: what arrived and was not stored, to be counted in one small write a second.
    unstored: Unstored,
    /// When the writer, idle since its last batch, gives its page cache back.
    shrink_at: Option<Instant>,
}

/// Reports kept out by a full disk and not counted in the store yet. Counting each report as
/// it comes would spend the reserve on WAL pages; one write a second keeps to a few.
#[derive(Default)]
struct Unstored {
    /// Events per source.
    by_source: std::collections::HashMap<String, u64>,
    /// The newest report seq per (process, stream): claimed with the counts.
    claims: std::collections::HashMap<(i64, String), u64>,
    /// Agents' own drop counts: (process, count, at).
    dropped: Vec<(i64, u64, f64)>,
    /// Reports settled when the counts are written (or fail to be).
    waiting: Vec<(Completion, usize)>,
    /// When the counts are next written.
    due: Option<Instant>,
}

/// What executing one operation produced.
struct Executed {
    /// How to settle the operation once its batch is committed or failed.
    finish: Finish,
    /// The SQLite error it failed with, to report if that error aborted the transaction.
    sqlite_error: Option<rusqlite::Error>,
    /// Events it inserted.
    events: u64,
}

/// Whether the writer loop goes on.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

impl Writer {
    pub(crate) fn new(
        conn: Connection,
        rx: Receiver<Op>,
        batch_max: usize,
        batch_delay: Duration,
        retention: Retention,
        counters: Arc<Counters>,
    ) -> Self {
        Writer {
            conn,
            rx,
            batch_max: batch_max.max(1),
            batch_delay,
            retention,
            // Enforce retention first thing, before any operation: a daemon restarted after a
            // week cleans up before it writes anything new.
            next_retention: Some(Instant::now()),
            counters,
            reserve: None,
            full_recheck: None,
            unstored: Unstored::default(),
            shrink_at: None,
        }
    }

    /// Keeps a reserve file at `path` (made now if there is room).
    pub(crate) fn with_reserve(mut self, path: PathBuf) -> Self {
        if let Err(e) = make_reserve(&path) {
            tracing::warn!(target: "store", path = %path.display(), "cannot make the store's reserve file: {e}");
        }
        self.reserve = Some(path);
        self
    }

    /// The disk is full: free the reserve for registrations and state changes, and stop
    /// writing events until there is room again.
    fn enter_full(&mut self, error: &rusqlite::Error) {
        if self
            .counters
            .set_trouble(StoreState::Full, error.to_string())
        {
            tracing::error!(target: "store", %error, "the store's disk is full: events are counted as not stored until space returns");
        }
        if self.full_recheck.is_none() {
            if let Some(path) = &self.reserve {
                let _ = std::fs::remove_file(path);
            }
            // While full, what is written (counts, claims, registrations) must fit in the
            // reserve: checkpoint often so the WAL keeps reusing a few pages instead of
            // growing by up to 1,000 of them between checkpoints.
            if let Err(error) =
                self.conn
                    .pragma_update(None, "wal_autocheckpoint", WAL_PAGES_WHILE_FULL)
            {
                tracing::debug!(target: "store", %error, "cannot shorten the WAL checkpoint interval");
            }
        }
        self.full_recheck = Some(Instant::now() + FULL_RECHECK);
    }

    /// While full: is there room again? Making the reserve anew is the test.
    fn recheck_full(&mut self) {
        let Some(at) = self.full_recheck else { return };
        if self.unstored.due.is_some_and(|due| Instant::now() >= due) {
            self.write_unstored();
        }
        if Instant::now() < at {
            return;
        }
        let room = match &self.reserve {
            Some(path) => {
                // What was committed before the disk filled sits in the WAL, and a checkpoint
                // since may have grown the database with it: the WAL's blocks are then ours
                // to give back. Without this, space freed by someone else can be eaten by
                // that checkpoint and the store stays "full" on a disk with room in it.
                make_reserve(path).is_ok() || {
                    self.truncate_wal();
                    make_reserve(path).is_ok()
                }
            }
            // Without a reserve: just try writing events again.
            None => true,
        };
        if room {
            // Counted before anything newer is stored: acks are cumulative.
            self.write_unstored();
            self.full_recheck = None;
            if let Err(error) = self
                .conn
                .pragma_update(None, "wal_autocheckpoint", WAL_PAGES)
            {
                tracing::debug!(target: "store", %error, "cannot restore the WAL checkpoint interval");
            }
            if let Some(since) = self.counters.clear_trouble() {
                tracing::info!(target: "store",
                    not_stored = self.counters.not_stored.load(Ordering::Relaxed),
                    "the store has room again after {:.0} s; events are stored again",
                    crate::unix_now() - since);
            }
        } else {
            self.full_recheck = Some(Instant::now() + FULL_RECHECK);
        }
    }

    /// Writes what a full disk kept out (counts per source, report claims, agents' drop
    /// counts) in one transaction, and settles the reports waiting for that: `Ok` once
    /// counted, the error else (their caller counts them instead).
    fn write_unstored(&mut self) {
        let u = std::mem::take(&mut self.unstored);
        // Drop counts and claims come with the reports that wait.
        if u.waiting.is_empty() {
            return;
        }
        let result = in_transaction(&self.conn, |c| {
            for ((process_id, stream), seq) in &u.claims {
                claim_report(c, *process_id, stream, *seq)?;
            }
            for (process_id, count, at) in &u.dropped {
                add_dropped(c, *process_id, "", *count, *at)?;
            }
            for (source, n) in &u.by_source {
                count_unstored(c, source, *n)?;
            }
            Ok(())
        });
        // Called while full (or stopping): a failure changes no state, its reports' callers
        // count them instead.
        if let Err(error) = &result {
            tracing::debug!(target: "store", %error, "events kept out by a full disk not counted in the store");
        }
        for (done, events) in u.waiting {
            done.settle(match &result {
                Ok(()) => Ok(()),
                Err(_) => Err(StoreError::Full { events }),
            });
        }
    }

    /// Checkpoints the whole WAL into the database and truncates it to nothing. Fails
    /// harmlessly (and is tried again a second later) when a reader holds old pages or the
    /// database itself has no room to grow.
    fn truncate_wal(&self) {
        let result: rusqlite::Result<(i64, i64, i64)> =
            self.conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                });
        match result {
            Ok((0, _, _)) => {}
            Ok((busy, log, done)) => {
                tracing::debug!(target: "store", busy, log, done, "WAL checkpoint incomplete")
            }
            Err(error) => tracing::debug!(target: "store", %error, "WAL checkpoint failed"),
        }
    }

    /// Runs until the store is closed or every sender is gone; everything received before
    /// that is committed (or settled with its error).
    pub(crate) fn run(mut self) {
        loop {
            self.recheck_full();
            if self.next_retention.is_some_and(|at| Instant::now() >= at) {
                self.scheduled_retention();
            }
            if self.shrink_at.is_some_and(|at| Instant::now() >= at) {
                self.shrink_at = None;
                // The page cache (up to `cache_size`, 32 MB) filled during a load: give it back.
                if let Err(error) = self.conn.execute_batch("PRAGMA shrink_memory") {
                    tracing::debug!(target: "store", %error, "cannot shrink the writer's cache");
                }
            }
            let wake = [
                self.next_retention,
                self.full_recheck,
                self.unstored.due,
                self.shrink_at,
            ]
            .into_iter()
            .flatten()
            .min();
            let received = match wake {
                Some(at) => self
                    .rx
                    .recv_timeout(at.saturating_duration_since(Instant::now())),
                None => self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            let flow = match received {
                Ok(op) => {
                    self.shrink_at = Some(Instant::now() + SHRINK_AFTER_IDLE);
                    self.run_batch(op)
                }
                Err(RecvTimeoutError::Timeout) => Flow::Continue,
                Err(RecvTimeoutError::Disconnected) => Flow::Stop,
            };
            if flow == Flow::Stop {
                break;
            }
        }
        self.write_unstored();
        // Anything still queued (sent after `close`) is dropped here and settles itself with
        // `WriterGone`.
        while self.rx.try_recv().is_ok() {}
        tracing::debug!(target: "store", "store writer stopped");
    }

    fn scheduled_retention(&mut self) {
        self.next_retention = Instant::now().checked_add(self.retention.check_interval);
        let counters = Arc::clone(&self.counters);
        let result = in_transaction(&self.conn, |conn| {
            run_retention(conn, &self.retention, crate::unix_now(), &counters)
        });
        self.counters.retention_runs.fetch_add(1, Ordering::Relaxed);
        // A pass over millions of rows fills the page cache: give it back soon after.
        self.shrink_at = Some(Instant::now() + SHRINK_AFTER_IDLE);
        match result {
            Ok(report) if report != RetentionReport::default() => {
                tracing::info!(target: "store", ?report, "store retention deleted rows");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(target: "store", %error, "store retention failed"),
        }
    }

    /// Executes `first` and whatever follows it into one transaction, commits, settles.
    fn run_batch(&mut self, first: Op) -> Flow {
        if matches!(first, Op::Shutdown) {
            return Flow::Stop;
        }
        if let Err(e) = exec_cached(&self.conn, "BEGIN IMMEDIATE") {
            let source = Arc::new(e);
            tracing::error!(target: "store", error = %source, "cannot begin a store transaction");
            self.counters.failed_batches.fetch_add(1, Ordering::Relaxed);
            self.fail(first, &source);
            return Flow::Continue;
        }

        let deadline = Instant::now() + self.batch_delay;
        let mut finishes: Vec<Finish> = Vec::new();
        let mut weight = 0usize;
        let mut events = 0u64;
        let mut attempted = 0u64;
        let mut waited_for = false;
        let mut flow = Flow::Continue;
        let mut aborted: Option<Arc<rusqlite::Error>> = None;
        let mut next = Some(first);

        loop {
            if let Some(op) = next.take() {
                if matches!(op, Op::Shutdown) {
                    flow = Flow::Stop;
                    break;
                }
                weight += op.weight();
                waited_for |= op.is_waited_for();
                if let Op::Append { events, .. } = &op {
                    attempted += events.len() as u64;
                }
                let Executed {
                    finish,
                    sqlite_error: own_error,
                    events: written,
                } = self.execute(op);
                finishes.push(finish);
                events += written;
                // A statement can fail for lack of room without aborting the transaction.
                if let Some(e) = own_error.as_ref().filter(|e| is_full(e)) {
                    self.enter_full(e);
                }
                if self.conn.is_autocommit() {
                    // SQLite rolled the whole transaction back (disk full, I/O error, ...):
                    // everything executed so far in this batch is gone.
                    let source = own_error.unwrap_or_else(|| {
                        rusqlite::Error::SqliteFailure(
                            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
                            Some("the store transaction was rolled back".to_string()),
                        )
                    });
                    aborted = Some(Arc::new(source));
                    break;
                }
            }
            if weight >= self.batch_max {
                break;
            }
            match self.rx.try_recv() {
                Ok(op) => {
                    next = Some(op);
                    continue;
                }
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => {
                    flow = Flow::Stop;
                    break;
                }
            }
            if waited_for {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match self.rx.recv_timeout(deadline - now) {
                Ok(op) => next = Some(op),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    flow = Flow::Stop;
                    break;
                }
            }
        }

        let failure = match aborted {
            Some(source) => Some(source),
            None => match exec_cached(&self.conn, "COMMIT") {
                Ok(()) => None,
                Err(e) => {
                    if !self.conn.is_autocommit() {
                        if let Err(rollback) = self.conn.execute_batch("ROLLBACK") {
                            tracing::error!(target: "store", error = %rollback, "store rollback failed");
                        }
                    }
                    Some(Arc::new(e))
                }
            },
        };
        match &failure {
            None => {
                // Appends refused while full, or failing on their own, stored nothing.
                self.counters
                    .not_stored
                    .fetch_add(attempted.saturating_sub(events), Ordering::Relaxed);
                if self.full_recheck.is_none() && self.counters.clear_trouble().is_some() {
                    tracing::info!(target: "store", "store writes succeed again");
                }
                self.counters.batches.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .ops
                    .fetch_add(finishes.len() as u64, Ordering::Relaxed);
                self.counters.events.fetch_add(events, Ordering::Relaxed);
            }
            Some(source) => {
                self.counters.failed_batches.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .not_stored
                    .fetch_add(attempted, Ordering::Relaxed);
                if is_full(source) {
                    self.enter_full(source);
                } else {
                    self.counters
                        .set_trouble(StoreState::Failing, source.to_string());
                }
                tracing::error!(target: "store", error = %source, ops = finishes.len(), "store batch commit failed");
            }
        }
        for finish in finishes {
            finish(failure.as_ref());
        }
        flow
    }

    /// Settles an operation that could not even start a transaction with that failure.
    fn fail(&mut self, op: Op, source: &Arc<rusqlite::Error>) {
        if is_full(source) {
            self.enter_full(source);
        } else {
            self.counters
                .set_trouble(StoreState::Failing, source.to_string());
        }
        let error = || StoreError::Commit {
            source: Arc::clone(source),
        };
        // Blocking callers may have given up waiting; nothing to do then.
        match op {
            Op::Append { done, events, .. } => {
                self.counters
                    .not_stored
                    .fetch_add(events.len() as u64, Ordering::Relaxed);
                done.settle(Err(error()))
            }
            Op::UpsertProcess { reply, .. } | Op::PutDump { reply, .. } => {
                drop(reply.send(Err(error())))
            }
            Op::SetProcessState { reply, .. }
            | Op::PutProbe { reply, .. }
            | Op::PutTrace { reply, .. }
            | Op::Flush { reply } => drop(reply.send(Err(error()))),
            Op::MarkAllGone { reply, .. } => drop(reply.send(Err(error()))),
            Op::DeleteProbe { reply, .. } => drop(reply.send(Err(error()))),
            Op::Retention { reply, .. } => drop(reply.send(Err(error()))),
            Op::Dropped { .. } | Op::TouchProcess { .. } | Op::SystemEvent(_) => {
                tracing::warn!(target: "store", error = %error(), "store write failed");
            }
            Op::Shutdown => {}
            #[cfg(test)]
            Op::Exec(_) => {}
        }
    }

    /// Executes one operation inside the open transaction.
    fn execute(&mut self, op: Op) -> Executed {
        let conn = &self.conn;
        let mut sqlite_error = None;
        let mut written = 0;
        let finish: Finish = match op {
            Op::Append {
                process_id,
                events,
                dropped,
                t_recv,
                done,
                report,
            } if self.full_recheck.is_some() => {
                // The disk is full: the events are not stored; they are counted per source
                // with the report claimed (a resend after a reconnect is not counted twice),
                // in one write a second, and the report is settled then (`Ok`: the agent
                // gets its ack).
                let resent = match &report {
                    Some((stream, seq)) => {
                        let key = (process_id, stream.clone());
                        let last = match self.unstored.claims.get(&key) {
                            Some(&pending) => Some(pending),
                            None => note(&mut sqlite_error, last_claimed(conn, process_id, stream))
                                .unwrap_or(None),
                        };
                        let resent = last.is_some_and(|last| last >= *seq);
                        if !resent {
                            self.unstored.claims.insert(key, *seq);
                        }
                        resent
                    }
                    None => false,
                };
                if resent {
                    Box::new(move |commit| done.settle(outcome(Ok(()), commit)))
                } else {
                    let u = &mut self.unstored;
                    for (source, n) in events.per_source() {
                        *u.by_source.entry(source.to_owned()).or_default() += n;
                    }
                    if dropped > 0 {
                        u.dropped.push((process_id, dropped, t_recv));
                    }
                    u.waiting.push((done, events.len()));
                    u.due.get_or_insert_with(|| Instant::now() + UNSTORED_EVERY);
                    Box::new(|_| {})
                }
            }
            Op::Append {
                process_id,
                events,
                dropped,
                t_recv,
                done,
                report,
            } => {
                let own = note(
                    &mut sqlite_error,
                    in_savepoint(conn, |c| {
                        if let Some((stream, seq)) = &report {
                            if !claim_report(c, process_id, stream, *seq)? {
                                // Stored before (a resend after a reconnect): ack, store nothing.
                                return Ok(false);
                            }
                        }
                        append(c, process_id, &events, dropped, t_recv).map(|()| true)
                    }),
                );
                let own = match own {
                    Ok(stored) => {
                        if stored {
                            written = events.len() as u64;
                        }
                        Ok(())
                    }
                    Err(e) => Err(e),
                };
                Box::new(move |commit| done.settle(outcome(own, commit)))
            }
            Op::Dropped {
                process_id,
                source,
                count,
                at,
            } => {
                let own = note(
                    &mut sqlite_error,
                    in_savepoint(conn, |c| {
                        add_dropped(c, process_id, source.as_deref().unwrap_or(""), count, at)
                    }),
                );
                log_finish("dropped count", own)
            }
            Op::UpsertProcess { process, reply } => {
                let mut id = 0;
                let own = note(
                    &mut sqlite_error,
                    in_savepoint(conn, |c| {
                        id = upsert_process(c, &process)?;
                        Ok(())
                    }),
                );
                reply_finish(reply, own.map(|()| id))
            }
            Op::SetProcessState {
                id,
                state,
                at,
                reply,
            } => {
                let own = note(
                    &mut sqlite_error,
                    in_savepoint(conn, |c| set_process_state(c, id, state, at)),
                );
                reply_finish(reply, own)
            }
            Op::TouchProcess { id, at } => {
                let own = note(
                    &mut sqlite_error,
                    in_savepoint(conn, |c| {
                        c.prepare_cached(
                            "UPDATE processes SET last_heard = max(last_heard, ?2) WHERE id = ?1",
                        )?
                        .execute(params![id, at])?;
                        Ok(())
                    }),
                );
                log_finish("last heard", own)
            }
            Op::MarkAllGone { at, reply } => {
                let mut n = 0;
                let own = note(
                    &mut sqlite_error,
                    in_savepoint(conn, |c| {
                        n = c
                            .prepare_cached(
                                "UPDATE processes SET state = 'gone', connected_since = NULL, \
                             state_since = ?1 WHERE state <> 'gone'",
                            )?
                            .execute([at])? as u64;
                        Ok(())
                    }),
                );
                reply_finish(reply, own.map(|()| n))
            }
            Op::SystemEvent(ev) => {
                let own = note(
                    &mut sqlite_error,
                    in_savepoint(conn, |c| {
                        c.prepare_cached(
                            "INSERT INTO system_events (t, level, kind, message, data) \
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                        )?
                        .execute(params![ev.t, ev.level, ev.kind, ev.message, ev.data])?;
                        Ok(())
                    }),
                );
                log_finish("system event", own)
            }
            Op::PutProbe { probe, reply } => {
                let own = note(
                    &mut sqlite_error,
                    in_savepoint(conn, |c| put_probe(c, &probe)),
                );
                reply_finish(reply, own)
            }
            Op::PutDump { dump, reply } => {
                let mut id = 0;
                let own = note(
                    &mut sqlite_error,
                    in_savepoint(conn, |c| {
                        c.prepare_cached(
                            "INSERT INTO dumps (taken_at, root_pid, tree, processes, \
                             python_processes, command, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                        )?
                        .execute(params![
                            dump.taken_at,
                            dump.root_pid,
                            dump.tree,
                            dump.processes,
                            dump.python_processes,
                            dump.command,
                            dump.data
                        ])?;
                        id = c.last_insert_rowid();
                        Ok(())
                    }),
                );
                reply_finish(reply, own.map(|()| id))
            }
            Op::PutTrace {
                id,
                created_at,
                updated_at,
                data,
                reply,
            } => {
                let own = note(
                    &mut sqlite_error,
                    in_savepoint(conn, |c| {
                        c.prepare_cached(
                            "INSERT INTO traces (id, created_at, updated_at, data) \
                             VALUES (?1, ?2, ?3, ?4) ON CONFLICT (id) DO UPDATE SET \
                             updated_at = excluded.updated_at, data = excluded.data",
                        )?
                        .execute(params![id, created_at, updated_at, data])?;
                        Ok(())
                    }),
                );
                reply_finish(reply, own)
            }
            Op::DeleteProbe { id, reply } => {
                let mut deleted = false;
                let own = note(
                    &mut sqlite_error,
                    in_savepoint(conn, |c| {
                        deleted = c
                            .prepare_cached("DELETE FROM probes WHERE id = ?1")?
                            .execute([&id])?
                            > 0;
                        Ok(())
                    }),
                );
                reply_finish(reply, own.map(|()| deleted))
            }
            Op::Flush { reply } => reply_finish(reply, Ok(())),
            Op::Retention { now, reply } => {
                // No savepoint: it would journal every page the deletes touch, and a partly
                // applied retention pass deletes nothing that should have stayed.
                let own = note(
                    &mut sqlite_error,
                    run_retention(conn, &self.retention, now, &self.counters),
                );
                self.counters.retention_runs.fetch_add(1, Ordering::Relaxed);
                reply_finish(reply, own)
            }
            // Handled by the batch loop; never executed.
            Op::Shutdown => Box::new(|_| {}),
            #[cfg(test)]
            Op::Exec(sql) => {
                let own = note(
                    &mut sqlite_error,
                    conn.execute_batch(sql).map_err(StoreError::from),
                );
                log_finish("test statement", own)
            }
        };
        Executed {
            finish,
            sqlite_error,
            events: written,
        }
    }
}

/// Passes `r` through, keeping a copy of its SQLite error (if any) in `slot`.
fn note<T>(slot: &mut Option<rusqlite::Error>, r: Result<T, StoreError>) -> Result<T, StoreError> {
    if let Err(StoreError::Sqlite(e)) = &r {
        *slot = Some(clone_sqlite_error(e));
    }
    r
}

/// `rusqlite::Error` is not `Clone`; keep what matters of it for the batch-abort report.
fn clone_sqlite_error(e: &rusqlite::Error) -> rusqlite::Error {
    match e {
        rusqlite::Error::SqliteFailure(code, message) => {
            rusqlite::Error::SqliteFailure(*code, message.clone())
        }
        other => rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(other.to_string()),
        ),
    }
}

/// Runs one statement through the statement cache.
fn exec_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

/// Runs `f` in a savepoint: all of it is kept, or none of it.
fn in_savepoint<T>(
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
fn in_transaction<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    exec_cached(conn, "BEGIN IMMEDIATE")?;
    let result = f(conn).and_then(|v| {
        exec_cached(conn, "COMMIT")?;
        Ok(v)
    });
    if result.is_err() && !conn.is_autocommit() {
        if let Err(rollback) = conn.execute_batch("ROLLBACK") {
            tracing::error!(target: "store", error = %rollback, "store rollback failed");
        }
    }
    result
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
fn last_claimed(
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
fn claim_report(
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

fn append(
    conn: &Connection,
    process_id: i64,
    events: &EncodedEvents,
    dropped: u64,
    t_recv: f64,
) -> Result<(), StoreError> {
    static CHUNK_SQL: OnceLock<String> = OnceLock::new();
    let known = conn
        .prepare_cached("SELECT 1 FROM processes WHERE id = ?1")?
        .exists([process_id])?;
    if !known {
        return Err(StoreError::UnknownProcess { id: process_id });
    }
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

fn add_dropped(
    conn: &Connection,
    process_id: i64,
    source: &str,
    count: u64,
    at: f64,
) -> Result<(), StoreError> {
    if count == 0 {
        return Ok(());
    }
    let known = conn
        .prepare_cached("SELECT 1 FROM processes WHERE id = ?1")?
        .exists([process_id])?;
    if !known {
        return Err(StoreError::UnknownProcess { id: process_id });
    }
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

fn upsert_process(conn: &Connection, p: &EncodedProcess) -> Result<i64, StoreError> {
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
                p.argv,
                p.cwd,
                p.origin,
                p.state,
                p.first_seen,
                p.connected_since,
                p.last_heard,
                p.info
            ],
            |r| r.get(0),
        )?;
    Ok(id)
}

fn set_process_state(
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

fn put_probe(conn: &Connection, p: &EncodedProbe) -> Result<(), StoreError> {
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

/// Adds `n` to the durable count of events of `source` that a full disk kept out.
fn count_unstored(conn: &Connection, source: &str, n: u64) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO unstored_counts (source, disk_full) VALUES (?1, ?2)
         ON CONFLICT (source) DO UPDATE SET disk_full = disk_full + excluded.disk_full",
    )?
    .execute(params![source, i64::try_from(n).unwrap_or(i64::MAX)])?;
    Ok(())
}

/// Deletes what `retention` does not keep, as of `now` (seconds since the epoch), counting
/// the events deleted per source in `counters` (the accounting reads them as dropped by
/// `retention`).
pub(crate) fn run_retention(
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
pub(crate) fn used_bytes(conn: &Connection) -> Result<u64, StoreError> {
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
    use super::*;
    use std::sync::mpsc::sync_channel;
    use std::sync::Mutex;

    /// Opens a migrated writer connection on a fresh file, with one process (id 1).
    fn setup(dir: &tempfile::TempDir) -> Connection {
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

    type Results = Arc<Mutex<Vec<Result<(), String>>>>;

    fn recording_append(process_id: i64, n: usize, results: &Results) -> Op {
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

    /// Runs a writer over a queue that is already full, so batching is deterministic.
    fn run_queued(conn: Connection, ops: Vec<Op>, batch_max: usize) -> WriterStats {
        run_writer(conn, ops, batch_max).snapshot()
    }

    /// [`run_queued`], returning the writer's counters.
    fn run_writer(conn: Connection, ops: Vec<Op>, batch_max: usize) -> Arc<Counters> {
        let (tx, rx) = sync_channel(ops.len() + 1);
        for op in ops {
            tx.send(op).expect("queue");
        }
        drop(tx);
        let counters = Arc::new(Counters::default());
        let retention = Retention {
            max_age: None,
            max_events_per_source: None,
            max_db_bytes: None,
            check_interval: Duration::from_secs(3600),
        };
        Writer::new(
            conn,
            rx,
            batch_max,
            Duration::from_secs(10),
            retention,
            Arc::clone(&counters),
        )
        .run();
        counters
    }

    fn count_events(dir: &tempfile::TempDir) -> i64 {
        Connection::open(dir.path().join("scry.db"))
            .expect("open")
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .expect("count")
    }

    #[test]
    fn a_full_disk_counts_every_event_it_could_not_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = setup(&dir);
        // SQLite answers SQLITE_FULL past max_page_count, exactly as on a full disk.
        let pages: i64 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .expect("pages");
        conn.pragma_update(None, "max_page_count", pages + 4)
            .expect("limit");
        let results: Results = Arc::default();
        let ops: Vec<Op> = (0..40)
            .map(|_| recording_append(1, 200, &results))
            .collect();
        let counters = run_writer(conn, ops, 200);

        let health = counters.health();
        assert_eq!(health.state, StoreState::Full, "{health:?}");
        assert!(health.since.is_some());
        let stored = u64::try_from(count_events(&dir)).expect("count");
        // Nothing vanished: every event is stored or counted as not stored.
        assert_eq!(stored + health.not_stored, 40 * 200, "{health:?}");
        assert!(health.not_stored > 0);
        // Counted where it shows per probe: durably in the store while there is room for
        // that, else by the caller, which gets the error.
        let counted: i64 = Connection::open(dir.path().join("scry.db"))
            .expect("open")
            .query_row(
                "SELECT coalesce(sum(disk_full), 0) FROM unstored_counts",
                [],
                |r| r.get(0),
            )
            .expect("unstored");
        let results = results.lock().expect("lock");
        let refused = results.iter().filter(|r| r.is_err()).count() as u64 * 200;
        assert!(counted > 0, "nothing counted in the store");
        assert_eq!(
            u64::try_from(counted).expect("count") + refused,
            health.not_stored,
            "{results:?}"
        );
    }

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

    #[test]
    fn queued_appends_are_committed_in_few_batches() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = setup(&dir);
        let results: Results = Arc::default();
        let ops = (0..100)
            .map(|_| recording_append(1, 10, &results))
            .collect();
        let stats = run_queued(conn, ops, 300);

        // 100 ops of 10 events, at most 300 events per batch: 4 batches, not 100.
        assert_eq!(stats.batches, 4);
        assert_eq!(stats.ops, 100);
        assert_eq!(stats.events, 1000);
        assert_eq!(stats.failed_batches, 0);
        let results = results.lock().expect("lock");
        assert_eq!(results.len(), 100);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(count_events(&dir), 1000);
    }

    #[test]
    fn failed_commit_is_reported_to_every_callback_of_the_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = setup(&dir);
        let results: Results = Arc::default();
        let ops = vec![
            recording_append(1, 5, &results),
            recording_append(1, 5, &results),
            // A deferred foreign-key violation only shows at COMMIT, which then fails.
            Op::Exec(
                "PRAGMA defer_foreign_keys = ON; \
                 INSERT INTO events (process_id, kind, t_hit, t_recv, data) \
                 VALUES (999, 'x', 0, 0, '{}');",
            ),
            recording_append(1, 5, &results),
        ];
        let stats = run_queued(conn, ops, 1000);

        assert_eq!(stats.failed_batches, 1);
        assert_eq!(stats.batches, 0);
        let results = results.lock().expect("lock");
        assert_eq!(results.len(), 3);
        for r in results.iter() {
            let e = r.as_ref().expect_err("commit failure must be reported");
            assert!(e.starts_with("Commit"), "{e}");
        }
        assert_eq!(count_events(&dir), 0, "nothing of a failed batch is stored");
    }

    #[test]
    fn failing_operation_does_not_spoil_its_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = setup(&dir);
        let results: Results = Arc::default();
        let ops = vec![
            recording_append(1, 3, &results),
            recording_append(42, 3, &results),
            recording_append(1, 3, &results),
        ];
        let stats = run_queued(conn, ops, 1000);
        assert_eq!(stats.batches, 1);
        assert_eq!(stats.events, 6, "only what was stored is counted");
        let results = results.lock().expect("lock");
        assert!(results[0].is_ok());
        assert!(
            results[1]
                .as_ref()
                .is_err_and(|e| e.contains("UnknownProcess { id: 42 }")),
            "{:?}",
            results[1]
        );
        assert!(results[2].is_ok());
        assert_eq!(count_events(&dir), 6);
    }

    #[test]
    fn unsettled_operations_report_writer_gone() {
        let results: Results = Arc::default();
        let op = recording_append(1, 1, &results);
        drop(op);
        let results = results.lock().expect("lock");
        assert_eq!(results.len(), 1);
        assert!(results[0].as_ref().is_err_and(|e| e == "WriterGone"));
    }
}

//! The writer thread's body: [`Writer`] takes operations off the queue, executes them in
//! batches of one transaction each, commits, and settles every operation with its outcome.
//!
//! Also here, because they change how the loop behaves: the full-disk mode (the reserve file
//! given up and remade, events kept out and counted once a second, short WAL checkpoints),
//! the scheduled retention passes and the idle cache shrink; and the [`Counters`] the loop
//! keeps, which the store reads for its stats and health.
//!
//! Not for what operations carry (`ops`), for the statements they run (`sql`), nor for what
//! retention deletes (`retention`).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection};

use super::ops::{Completion, Op, Reply};
use super::retention::run_retention;
use super::sql::{
    add_dropped, append, claim_report, count_unstored, exec_cached, in_savepoint, in_transaction,
    last_claimed, put_probe, roll_back, set_process_state, upsert_process,
};
use crate::{Retention, RetentionReport, StoreError, StoreHealth, StoreState, WriterStats};

/// Size of the reserve file kept beside the database: on a full disk it is deleted, and the
/// room it leaves takes process registrations and state changes while events wait for space.
const RESERVE_BYTES: usize = 1024 * 1024;
/// SQLite's default checkpoint interval (WAL pages), and the one used while the disk is full.
const WAL_PAGES: i64 = 1000;
const WAL_PAGES_WHILE_FULL: i64 = 8;
/// How long the writer waits without work before it gives its page cache back.
const SHRINK_AFTER_IDLE: Duration = Duration::from_secs(3);
/// While full: how often what was kept out is counted in the store.
const UNSTORED_EVERY: Duration = Duration::from_secs(1);
/// How often a full store tries to make its reserve again (which is how it sees space return).
const FULL_RECHECK: Duration = Duration::from_secs(1);

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

    pub(super) fn count_retention(&self, deleted: Vec<(String, u64)>) {
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

    /// A write failed with `error`: the full-disk mode if the disk is full, `Failing` else.
    fn enter_trouble(&mut self, error: &rusqlite::Error) {
        if is_full(error) {
            self.enter_full(error);
        } else {
            self.counters
                .set_trouble(StoreState::Failing, error.to_string());
        }
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
                    roll_back(&self.conn);
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
                self.enter_trouble(source);
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
        self.enter_trouble(source);
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

#[cfg(test)]
mod tests {
    use std::sync::mpsc::sync_channel;

    use super::*;
    use crate::writer::testutil::{recording_append, setup, Results};

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
}

//! The operations callers hand the writer, and how each is answered.
//!
//! An [`Op`] carries its records already encoded on the caller's thread ([`EncodedEvents`],
//! [`EncodedProcess`], ...), so that the writer only binds and inserts, and the way its result
//! goes back: a [`Reply`] for a caller that blocks, a [`Completion`] (settled exactly once,
//! with `WriterGone` if dropped) for an append that does not.
//!
//! Not for executing operations (that is the batch loop in `batch`) nor for SQL (`sql`); the
//! one exception is [`EncodedEvents::bind`], which needs the buffer's layout.

use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::SyncSender;

use rusqlite::types::{ToSqlOutput, ValueRef};

use crate::{
    CommitCallback, Level, NewEvent, ProcessRecord, ProcessState, RetentionReport, StoreError,
};

/// Where a blocking caller waits for the result of its operation.
pub(crate) type Reply<T> = SyncSender<Result<T, StoreError>>;

/// The events of one append, ready for the database: all their text (kinds, sources and the
/// JSON of their data, encoded on the caller's thread) in one buffer, so that an append costs
/// the writer a couple of frees instead of several per event.
#[derive(Debug, Default)]
pub(crate) struct EncodedEvents {
    text: Vec<u8>,
    pub(super) rows: Vec<EventSlot>,
}

/// Where one event's fields are in [`EncodedEvents::text`].
#[derive(Debug)]
pub(super) struct EventSlot {
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
    pub(super) fn per_source(&self) -> Vec<(&str, u64)> {
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
    pub(super) fn bind(
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

/// A process record ready for the database: the record, with its two JSON columns encoded.
#[derive(Debug)]
pub(crate) struct EncodedProcess {
    pub record: Box<ProcessRecord>,
    pub argv: String,
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

    pub(super) fn settle(mut self, result: Result<(), StoreError>) {
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
    pub(super) fn weight(&self) -> usize {
        match self {
            Op::Append { events, .. } => events.len().max(1),
            _ => 1,
        }
    }

    /// Whether somebody blocks until this operation is committed.
    pub(super) fn is_waited_for(&self) -> bool {
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::writer::testutil::{recording_append, Results};

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

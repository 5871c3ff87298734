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
//! queued when the store was closed) settles itself with [`crate::StoreError::WriterGone`],
//! so no callback is ever forgotten.
//!
//! # Layout
//!
//! - [`ops`]: what callers hand the writer: the [`Op`]s, their encoded records, and how each
//!   is answered ([`Reply`], [`Completion`]).
//! - [`batch`]: the thread itself ([`Writer`]): batching, commits, settling, the full-disk
//!   mode, and the [`Counters`] the store reads its health from.
//! - [`sql`]: the transaction helpers and the statements that operations share.
//! - [`retention`]: what is deleted to keep the store within its [`crate::Retention`] limits.
//!
//! Not for reads, which run on their own connections (`read`), nor for anything public:
//! [`crate::Store`] is the only way in.

mod batch;
mod ops;
mod retention;
mod sql;
#[cfg(test)]
mod testutil;

pub(crate) use batch::{Counters, Writer};
pub(crate) use ops::{
    Completion, EncodedDump, EncodedEvents, EncodedProbe, EncodedProcess, EncodedSystemEvent, Op,
    Reply,
};

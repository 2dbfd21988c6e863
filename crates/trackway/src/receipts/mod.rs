//! Delivery receipts: what became of each event, per destination, as it happens.
//!
//! Two ways to learn it, both fed by the worker at the one place each outcome is decided
//! (delivered, dead-lettered, skipped, dropped by the store) and by the caller for events a
//! `before_send` hook filters:
//!
//! - **The outcome stream** ([`OutcomeStream`], from [`Client::outcomes`](crate::Client::outcomes)
//!   or, to see the outcomes of events an earlier process left in the store,
//!   [`ClientBuilder::outcomes`](crate::ClientBuilder::outcomes) with
//!   [`Client::take_outcomes`](crate::Client::take_outcomes)): every outcome of every event.
//!   Bounded: a subscriber that falls behind loses the oldest outcomes and is told how many
//!   ([`RecvError::Missed`]); the worker never waits for it and its memory never grows past the
//!   capacity.
//! - **Receipts** ([`Receipt`], from [`Client::track_confirmed`](crate::Client::track_confirmed)
//!   and [`Client::capture_confirmed`](crate::Client::capture_confirmed)): one event's outcome at
//!   every destination it was routed to, awaited (`receipt.await`) or waited for
//!   ([`Receipt::wait`]). The event is queued, stored and retried exactly as a plain `track`
//!   one; the receipt only watches, and dropping it changes nothing about delivery. Receipts
//!   belong to their process: an event a later process delivers shows up in that process's
//!   stream, not in a receipt.
//!
//! With no stream and no open receipt the worker pays one atomic load per batch of outcomes and
//! per drain of the queue, and the caller nothing.
//!
//! # Limits
//!
//! An outcome names the event by its message id, which the worker learns when the event is
//! queued or read from the store while someone listens. An event of an earlier run that the
//! store drops (its size bound, a damaged chunk) before this process read it has no outcome line;
//! it is counted in [`Stats::dropped`](crate::Stats::dropped) as always.

mod batch;
mod hub;
mod receipt;
mod stream;
mod tracker;

use trackway_wire::{MessageId, Timestamp};

pub(crate) use batch::Batch;
pub(crate) use hub::{Ended, Hub, Registration, Watch};
use std::sync::Arc;

/// Destination names by lane, shared (set once per lane: lanes are appended, never reused).
pub(crate) type Names = [Option<Arc<str>>];

pub use receipt::{Confirmation, DestinationOutcome, Pending, Receipt, ReceiptError, Resolution};
pub use stream::{OutcomeStream, RecvError};
pub(crate) use tracker::Tracker;

/// What became of one event at one destination. Final: an event has at most one outcome per
/// destination and process (a dead letter requeued later is a new attempt and gets another).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The server took it.
    Delivered,
    /// The server (or the destination's encoder) refused it: dead-lettered with the reason.
    Rejected {
        /// The HTTP status of the answer, when the server gave one.
        status: Option<u16>,
        /// What the server said (the answer's body, secrets redacted) or why it was refused.
        detail: String,
    },
    /// It kept failing alone while other events were delivered (`max_attempts` strikes):
    /// dead-lettered as `retries_exhausted`.
    RetriesExhausted {
        /// The dead letter's detail.
        detail: String,
    },
    /// Older than `max_event_age` before it could be sent: dead-lettered as `expired`.
    Expired {
        /// The dead letter's detail.
        detail: String,
    },
    /// Removed without being sent; counted in [`Stats::dropped`](crate::Stats::dropped).
    Dropped(DropReason),
    /// The destination has nothing to send for it (counted as `skipped`).
    Skipped,
    /// A `before_send` hook dropped it: nothing was queued.
    Filtered,
}

impl Outcome {
    /// Whether the destination has the event.
    pub fn is_delivered(&self) -> bool {
        matches!(self, Outcome::Delivered)
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Delivered => f.write_str("delivered"),
            Outcome::Rejected { status: Some(status), detail } => write!(f, "rejected ({status}): {detail}"),
            Outcome::Rejected { status: None, detail } => write!(f, "rejected: {detail}"),
            Outcome::RetriesExhausted { detail } => write!(f, "retries exhausted: {detail}"),
            Outcome::Expired { detail } => write!(f, "expired: {detail}"),
            Outcome::Dropped(reason) => write!(f, "dropped: {reason}"),
            Outcome::Skipped => f.write_str("skipped (nothing to send for it)"),
            Outcome::Filtered => f.write_str("filtered by before_send"),
        }
    }
}

/// Why the store removed an event without sending it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DropReason {
    /// The store's size bound dropped the oldest events (`store_full`).
    StoreFull,
    /// The disk was full when it was to be committed (`disk_full`).
    DiskFull,
    /// The store failed when it was to be committed (`store_error`).
    StoreError,
    /// Its stored chunk was damaged (`store_corrupt`).
    Corrupt,
    /// [`Client::erase_user`](crate::Client::erase_user) or
    /// [`Client::purge_queued`](crate::Client::purge_queued) removed it (`purged`).
    Purged,
}

impl DropReason {
    /// The counter's name in [`Stats::dropped`](crate::Stats::dropped).
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::StoreFull => "store_full",
            DropReason::DiskFull => "disk_full",
            DropReason::StoreError => "store_error",
            DropReason::Corrupt => "store_corrupt",
            DropReason::Purged => "purged",
        }
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One outcome as the stream reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutcomeRecord {
    /// The event's message id.
    pub id: MessageId,
    /// The destination's name, shared by its records (a reference count per record, not an
    /// allocation on the reader's thread).
    pub destination: Arc<str>,
    /// What became of the event there.
    pub outcome: Outcome,
    /// When it was decided (the client's clock).
    pub at: Timestamp,
}

/// One outcome as a receipt keeps it: the destination by its lane, its name in a table
/// handed over with the batch ([`Names`]).
#[derive(Clone, Debug)]
pub(crate) struct Decided {
    /// The destination's route bit.
    pub(crate) lane: usize,
    pub(crate) id: MessageId,
    pub(crate) outcome: Outcome,
    pub(crate) at: Timestamp,
}

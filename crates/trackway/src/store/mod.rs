//! The outbox: where accepted events wait until every destination they were routed to has
//! delivered or dead-lettered them.
//!
//! # Design
//!
//! - The worker thread is the only writer. It appends whatever the channel holds in **one**
//!   append call (one transaction in a durable store: group commit), together with any
//!   client-state change carried by those events, so a state change and the events it causes are
//!   committed together.
//! - Each event gets a sequence number (`seq`), increasing in enqueue order, and a set of routes
//!   (destination indices). Delivery state is kept **per (event, destination)**: a destination's
//!   cursor is its lowest pending `seq`; acks may arrive out of order (parallel requests, retries),
//!   so the store keeps the exact set of pending seqs, not just a cursor.
//! - An event is deleted once every destination it was routed to has acked or dead-lettered it.
//! - Dead letters keep the event bytes, the destination, the reason and the server's answer.
//! - Key/value state (identity, session, destination tokens) lives beside the events.
//!
//! [`MemoryStore`] implements this in memory, [`SqliteStore`] in a file (the default); the
//! [`Store`] trait they share is sealed.

use std::fmt;

use bytes::Bytes;
use trackway_wire::{MessageId, Timestamp};

use crate::destination::EventRecord;

pub(crate) mod destinations;
mod memory;
mod sqlite;

pub use memory::MemoryStore;
pub(crate) use sealed::{Appended, Committed, Evicted, NewEvent, Outbox, Recovered, StagingFill, StateChange};
#[cfg(feature = "fuzzing")]
pub(crate) use sqlite::chunk;
pub use sqlite::{DEFAULT_STAGING_LIMIT, Inspection, SCHEMA_VERSION, SqliteStore, Synchronous, WhenFull};

/// The destination indices in a route bitmask, lowest first.
///
/// One step per set bit: testing all 64 bits, twice per event (routing in the drain, counting in
/// the memory store's append), was ~15 % of the worker's time in the pipeline benchmark.
pub(crate) fn routes(mut mask: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if mask == 0 {
            return None;
        }
        let i = mask.trailing_zeros() as usize;
        mask &= mask - 1;
        Some(i)
    })
}

/// Whether two contexts are the same bytes: one buffer (pointer and length; an empty slice at a
/// buffer's start has its pointer too), or equal contents. A client's events share one `Bytes`
/// for their context, so the pointer nearly always decides.
pub(crate) fn same_context(a: &Bytes, b: &Bytes) -> bool {
    (a.as_ptr() == b.as_ptr() && a.len() == b.len()) || a == b
}

#[cfg(test)]
mod route_tests {
    #[test]
    fn routes_are_the_set_bits_lowest_first() {
        assert_eq!(super::routes(0).count(), 0);
        assert_eq!(super::routes(0b1011).collect::<Vec<_>>(), vec![0, 1, 3]);
        assert_eq!(super::routes(1 << 63 | 1).collect::<Vec<_>>(), vec![0, 63]);
        assert_eq!(super::routes(u64::MAX).count(), 64);
    }
}

/// Why an event was dead-lettered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeadLetterReason {
    /// The server rejected it (a permanent status or a per-item error).
    Rejected,
    /// It kept failing while later events were delivered.
    RetriesExhausted,
    /// It grew older than `max_event_age` before it could be delivered.
    Expired,
}

impl DeadLetterReason {
    /// The reason as used in stats and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Rejected => "rejected",
            DeadLetterReason::RetriesExhausted => "retries_exhausted",
            DeadLetterReason::Expired => "expired",
        }
    }
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event one destination gave up on, with the reason and the server's answer.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The dead letter's key in the store (for requeueing it).
    pub key: u64,
    /// The event's outbox position.
    pub seq: u64,
    /// The event's message id.
    pub id: MessageId,
    /// The destination that gave up.
    pub destination: String,
    /// Why.
    pub reason: DeadLetterReason,
    /// Details: the status and body the server answered, or what went wrong.
    pub detail: String,
    /// When it was dead-lettered.
    pub at: Timestamp,
    /// The event's compact JSON.
    pub event: Bytes,
}

/// What the salvage of a damaged store found: the file is moved aside (kept for inspection),
/// every event that read back with a valid checksum is in the fresh file, and the rest is
/// counted here (and in [`Dropped::store_corrupt`](crate::Dropped::store_corrupt)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Salvage {
    /// Where the damaged file was moved.
    pub moved_to: std::path::PathBuf,
    /// What was wrong with it.
    pub reason: String,
    /// Pending events read back intact and kept.
    pub recovered: u64,
    /// Pending events lost (their chunk failed its checksum, or could not be read). Exact,
    /// except for the events of `lost_chunks`, counted by their range of sequence numbers: an
    /// upper bound.
    pub lost: u64,
    /// Chunks lost with their delivery state, whose events are counted in `lost` by range.
    pub lost_chunks: u64,
}

impl fmt::Display for Salvage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the store {}; salvaged: {} pending events recovered, {} lost",
            self.reason, self.recovered, self.lost
        )?;
        if self.lost_chunks > 0 {
            write!(f, " (at most: {} chunk(s) were unreadable, counted by their range)", self.lost_chunks)?;
        }
        write!(f, "; the damaged file was moved to {}", self.moved_to.display())
    }
}

/// An error from the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The disk (or the store's page limit) is full: nothing of this write was stored.
    #[error("disk full: {0}")]
    DiskFull(String),
    /// Another process holds the store open for writing.
    #[error("store {} in use by {}", .path.display(), .pid.map_or_else(|| "another process".to_owned(), |p| format!("pid {p}")))]
    Locked {
        /// The store file.
        path: std::path::PathBuf,
        /// The holder's pid, when the lock file records it.
        pid: Option<u32>,
    },
    /// The file is not a trackway store (a text file, another application's database, a store
    /// from a newer trackway): it was left exactly as it was, neither renamed nor written to.
    #[error("{} {why}; it was left untouched: pass another store path, or move it away yourself", .path.display())]
    NotAStore {
        /// The file.
        path: std::path::PathBuf,
        /// What it is instead.
        why: String,
    },
    /// The store cannot be written (a read-only file or directory, a read-only file system):
    /// refused when it is opened, before anything is sent, since nothing delivered could be
    /// recorded and every run would send the backlog again.
    #[error(
        "store {} is not writable ({why}): make the file and its directory writable, or use another store \
         (read-only inspection, `trackway outbox stats`, works as it is)",
        .path.display()
    )]
    ReadOnly {
        /// The file.
        path: std::path::PathBuf,
        /// What refused the write.
        why: String,
    },
    /// Anything else the backend reports.
    #[error("store error: {0}")]
    Backend(String),
}

/// A store a client can use: [`MemoryStore`] or [`SqliteStore`], chosen with
/// [`ClientBuilder::store`](crate::ClientBuilder::store).
///
/// Sealed: it cannot be implemented outside trackway. Its methods (how the worker appends,
/// stages, commits and acknowledges) are internals that change with the pipeline; the delivery
/// engine itself (lanes, backoff, health) does not depend on them.
pub trait Store: sealed::Outbox {}

impl Store for MemoryStore {}
impl Store for SqliteStore {}

/// The methods behind [`Store`], out of reach of other crates (the sealed-trait pattern).
pub(crate) mod sealed {
    use std::collections::BTreeMap;

    use bytes::Bytes;
    use trackway_wire::{EventKind, MessageId};

    use super::{DeadLetter, DeadLetterReason, EventRecord, StoreError, Timestamp, fmt};

    /// An event to append.
    #[derive(Clone, Debug)]
    pub struct NewEvent {
        /// Sequence number assigned by the worker (increasing).
        pub seq: u64,
        /// Message id.
        pub id: MessageId,
        /// Event kind.
        pub kind: EventKind,
        /// When the event happened.
        pub timestamp: Timestamp,
        /// When it was enqueued (differs from `timestamp` for imports); `max_event_age` counts from here.
        pub queued_at: Timestamp,
        /// The destinations it is routed to: bit `i` set means destination `i` (at most 64).
        pub routes: u64,
        /// The event's compact JSON: its head if `context` is set, else the complete event.
        pub bytes: Bytes,
        /// The context JSON that completes `bytes` (shared between the events of a client; stores
        /// keep each distinct context once).
        pub context: Option<Bytes>,
        /// The buffer `bytes` was cut from, shared by the events of one drain: the memory store
        /// keeps a span of it per event instead of a handle (`None`: `bytes` stands alone).
        pub run: Option<Bytes>,
    }

    /// A change to the key/value state: `None` deletes the key.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct StateChange {
        /// Key, e.g. `identity` or `dest/umami/cache`.
        pub key: String,
        /// New value.
        pub value: Option<Vec<u8>>,
    }

    /// What a store holds when it is opened.
    #[derive(Clone, Debug, Default)]
    #[non_exhaustive]
    pub struct Recovered {
        /// The next sequence number to assign.
        pub next_seq: u64,
        /// Key/value client state.
        pub state: BTreeMap<String, Vec<u8>>,
        /// Per destination index: number of pending events and their total bytes.
        pub pending: Vec<(u64, u64)>,
        /// Set when the file was damaged and was salvaged into a fresh one: what happened.
        pub reset: Option<String>,
        /// The salvage of a damaged file, with its counts.
        pub salvage: Option<super::Salvage>,
        /// Stored destinations no longer configured that still have events pending (kept),
        /// with how many.
        pub orphaned: Vec<(String, u64)>,
        /// Destinations added at run time in an earlier run that are kept (current, or with
        /// events pending), at the indexes after the configured ones, in this order.
        pub(crate) runtime: Vec<super::destinations::RecoveredDestination>,
    }

    /// What an append did besides storing the events.
    #[derive(Clone, Debug, Default)]
    #[non_exhaustive]
    pub struct Appended {
        /// Events dropped to keep the store under its size bound (oldest first).
        pub evicted: Vec<Evicted>,
    }

    /// What a [`Store::commit`] did.
    #[derive(Debug, Default)]
    #[non_exhaustive]
    pub struct Committed {
        /// Events dropped to keep the store under its size bound (oldest first).
        pub evicted: Vec<Evicted>,
        /// Events that could not be written (the write failed) and were dropped.
        pub lost: Vec<Evicted>,
        /// Why the write failed, when it did.
        pub error: Option<StoreError>,
        /// The lowest seq not yet on disk after this commit, staged or handed to the writer
        /// thread and not yet written (`None`: everything is written).
        pub staged_from: Option<u64>,
        /// More is staged and the writer can take it now: commit again soon. (When the writer
        /// holds all the rounds it takes, its answer wakes the worker instead, see
        /// [`Outbox::written`].)
        pub more: bool,
        /// The writer thread died (a panic) and was replaced this many times (logged by the store).
        pub writer_restarts: u64,
    }

    /// How full a write-behind store's staging (accepted events not yet written) is.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum StagingFill {
        /// Writes may wait for `commit_delay`.
        Room,
        /// Past half its bound: write now, without waiting for `commit_delay`.
        WriteNow,
        /// At its bound: write, and drain no more of the queue until writes make room.
        Full,
    }

    /// An event dropped to keep the store under its size bound.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    #[non_exhaustive]
    pub struct Evicted {
        /// Its outbox position.
        pub seq: u64,
        /// The destinations that had not delivered it (client route mask).
        pub routes: u64,
        /// Its size in bytes.
        pub bytes: u64,
    }

    /// The outbox interface the worker drives. The worker thread owns the store; no method is
    /// called concurrently.
    pub trait Outbox: Send + fmt::Debug + 'static {
        /// Opens the store for these destinations (index = position; names are the stable keys) and
        /// returns what it holds. Called once, before anything else. A durable store also keeps
        /// the run-time destinations its state names (see [`destinations`](super::destinations)):
        /// they take the indexes after these, in the order of [`Recovered::runtime`].
        ///
        /// # Errors
        /// When the store cannot be opened.
        fn open(&mut self, destinations: &[String]) -> Result<Recovered, StoreError>;

        /// Adds a destination (added at run time) at the next index, with nothing pending.
        ///
        /// # Errors
        /// When the store already has 64 destinations, or cannot record it.
        fn add_destination(&mut self, name: &str) -> Result<(), StoreError>;

        /// Appends events and applies state changes, atomically. A store with a size bound may drop
        /// its oldest events to make room and reports them.
        ///
        /// # Errors
        /// When nothing could be written; then nothing was.
        fn append(&mut self, events: &[NewEvent], state: &[StateChange]) -> Result<Appended, StoreError>;

        /// Up to `max_events` pending events of `destination` with `seq >= from`, in seq order, stopping
        /// before `max_bytes` would be exceeded (at least one event is returned if any is pending).
        ///
        /// # Errors
        /// Backend failures.
        fn read(
            &mut self,
            destination: usize,
            from: u64,
            max_events: usize,
            max_bytes: usize,
        ) -> Result<Vec<EventRecord>, StoreError>;

        /// The pending events of `destination` among `seqs` (others are skipped).
        ///
        /// # Errors
        /// Backend failures.
        fn read_seqs(&mut self, destination: usize, seqs: &[u64]) -> Result<Vec<EventRecord>, StoreError>;

        /// Marks events delivered to `destination`; returns how many were pending (an event dropped
        /// meanwhile, e.g. evicted, is not counted).
        ///
        /// # Errors
        /// Backend failures.
        fn ack(&mut self, destination: usize, seqs: &[u64]) -> Result<u64, StoreError>;

        /// Moves events of `destination` to the dead letters; returns how many were pending.
        ///
        /// # Errors
        /// Backend failures.
        fn dead_letter(
            &mut self,
            destination: usize,
            letters: &[(u64, DeadLetterReason, String)],
            at: Timestamp,
        ) -> Result<u64, StoreError>;

        /// The lowest pending seq of `destination` (its cursor), if any.
        ///
        /// # Errors
        /// Backend failures.
        fn lowest_pending(&mut self, destination: usize) -> Result<Option<u64>, StoreError>;

        /// Applies state changes alone (e.g. a destination's token after a response).
        ///
        /// # Errors
        /// Backend failures.
        fn set_state(&mut self, changes: &[StateChange]) -> Result<(), StoreError>;

        /// The dead letters, oldest first, at most `limit`.
        ///
        /// # Errors
        /// Backend failures.
        fn dead_letters(&mut self, limit: usize) -> Result<Vec<DeadLetter>, StoreError>;

        /// Commits what earlier calls staged, oldest first, at most `max_events` events in one
        /// transaction (so the caller can get back to other work between calls). A write-behind
        /// store ([`SqliteStore`](super::SqliteStore)) keeps appended events in memory, serves reads from there, and
        /// writes them here, skipping those delivered meanwhile; a store that commits in `append`
        /// has nothing to do (the default).
        fn commit(&mut self, max_events: usize) -> Committed {
            let _ = max_events;
            Committed::default()
        }

        /// Makes the acks and dead letters recorded since the last call durable: in one transaction,
        /// or (a store with a writer thread) with the writer's next round. The worker calls it
        /// after handling the answers that were ready together, before sending anything new. A
        /// store that records them at once has nothing to do (the default).
        ///
        /// # Errors
        /// Backend failures (the acks stay recorded in memory and are written with the next call).
        fn sync(&mut self) -> Result<(), StoreError> {
            Ok(())
        }

        /// Whether new events must be refused at the call for now (the store is at its bound
        /// and set to [`WhenFull::Refuse`](super::WhenFull::Refuse)). Asked after each commit and sync.
        fn refuses_new(&self) -> bool {
            false
        }

        /// Pending events found damaged since the last call (their chunk failed its checksum
        /// when read back) and removed: the worker counts them as `store_corrupt`.
        fn take_corrupt(&mut self) -> Vec<Evicted> {
            Vec::new()
        }

        /// Whether writes are still under way: staged events, or rounds handed to a writer thread
        /// and not yet answered (at shutdown the worker commits and waits until there are none).
        fn writing(&self) -> bool {
            false
        }

        /// Whether acks or dead letters recorded are not on disk yet (a store that records them
        /// at once: never).
        fn acks_unwritten(&self) -> bool {
            false
        }

        /// Whether a commit now would hand something to the writer (it is not holding all the
        /// rounds it takes).
        fn write_ready(&self) -> bool {
            true
        }

        /// Notified each time a writer thread finishes a transaction (or dies): the worker then
        /// commits, which applies the outcomes (answers `persisted` barriers, counts failures)
        /// and hands over what is staged next. `None` for a store without a writer thread.
        fn written(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
            None
        }

        /// Blocks up to `timeout` for the writer to finish a transaction (at shutdown).
        fn wait_written(&mut self, timeout: std::time::Duration) {
            let _ = timeout;
        }

        /// Whether `append` only stages (see [`commit`](Self::commit)).
        fn writes_behind(&self) -> bool {
            false
        }

        /// How full the staging is (a store that commits in `append` stages nothing).
        fn staging(&self) -> StagingFill {
            StagingFill::Room
        }

        /// Removes the dead letters with these keys and returns them (to be queued again).
        ///
        /// # Errors
        /// Backend failures.
        fn take_dead_letters(&mut self, keys: &[u64]) -> Result<Vec<DeadLetter>, StoreError>;
    }
}

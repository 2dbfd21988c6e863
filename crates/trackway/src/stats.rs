//! Counters of everything the client did with the events it was given: nothing is dropped without
//! being counted under a reason.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use trackway_wire::Timestamp;

/// A snapshot of a client's counters, from [`Client::stats`](crate::Client::stats).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Events accepted into the channel.
    pub enqueued: u64,
    /// Events committed to the store (safe from a process crash with the durable store).
    pub persisted: u64,
    /// Events not accepted, by reason.
    pub dropped: Dropped,
    /// Per destination, in the order they were added.
    pub destinations: Vec<DestinationStats>,
}

/// Events that never reached the store, by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Dropped {
    /// The channel to the worker was full (the caller is never blocked).
    pub queue_full: u64,
    /// The `before_send` hook dropped the event.
    pub filtered: u64,
    /// The client was already shut down.
    pub shutdown: u64,
    /// The store was over its size bound: these, the oldest undelivered events, were dropped.
    pub store_full: u64,
    /// The disk was full when these were to be committed.
    pub disk_full: u64,
    /// The store failed for another reason when these were to be committed.
    pub store_error: u64,
    /// Events lost because the store file was damaged and moved aside when it was opened
    /// (counted once per reset; the number of events in the damaged file is unknown).
    pub store_reset: u64,
    /// Calls refused while tracking was off (`set_enabled(false)`).
    pub disabled: u64,
    /// Queued events removed on request (`purge_queued`, `erase_user`).
    pub purged: u64,
}

/// What happened to the events routed to one destination.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DestinationStats {
    /// The destination's name.
    pub name: String,
    /// Events the server accepted.
    pub delivered: u64,
    /// Item attempts that failed and were scheduled again.
    pub retried: u64,
    /// Requests sent (every attempt).
    pub requests: u64,
    /// Requests that failed as a whole (transport error, timeout, 5xx, 429, …).
    pub failed_requests: u64,
    /// Events routed here and not yet delivered or dead-lettered.
    pub pending: u64,
    /// Events dead-lettered because the server rejected them.
    pub rejected: u64,
    /// Events dead-lettered after failing repeatedly while later events were delivered.
    pub retries_exhausted: u64,
    /// Events dropped because they grew older than `max_event_age`.
    pub expired: u64,
    /// Values shortened to fit the server's limits (counted once per event, on its first
    /// attempt); the event itself was sent.
    pub truncated: u64,
    /// The most recent request that failed as a whole (one of `failed_requests`): why events
    /// are still pending. Kept after later successes; compare its time with when you look.
    pub last_error: Option<LastError>,
}

/// Why a request to a destination failed as a whole, in [`DestinationStats::last_error`].
///
/// Displays as its message: `connection refused to 127.0.0.1:9`, or
/// `503 Service Unavailable: <the first line of the body>`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LastError {
    /// What kind of failure it was.
    pub kind: FailureKind,
    /// The HTTP status, when the server answered.
    pub status: Option<u16>,
    /// What happened, for people (never the URL's path or credentials).
    pub message: String,
    /// When the answer (or the failure) came, by the client's clock.
    pub at: Timestamp,
}

/// The kind of a [`LastError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// No connection could be made (refused, no route, the host name did not resolve).
    Connect,
    /// The request timed out (`HttpOptions::timeout`).
    Timeout,
    /// The connection failed otherwise (reset, TLS, a broken answer).
    Transport,
    /// The server answered with a status that failed the request (5xx, 429, 408, …).
    Status,
}

impl fmt::Display for LastError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The live counters behind [`Stats`]; atomics so the caller's thread never takes a lock (only
/// `stats()` reads the last errors, behind a lock the worker takes when a request fails).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) enqueued: AtomicU64,
    pub(crate) persisted: AtomicU64,
    pub(crate) queue_full: AtomicU64,
    pub(crate) filtered: AtomicU64,
    pub(crate) shutdown: AtomicU64,
    pub(crate) store_full: AtomicU64,
    pub(crate) disk_full: AtomicU64,
    pub(crate) store_error: AtomicU64,
    pub(crate) store_reset: AtomicU64,
    pub(crate) disabled: AtomicU64,
    pub(crate) purged: AtomicU64,
    pub(crate) destinations: Box<[DestinationCounters]>,
}

#[derive(Debug, Default)]
pub(crate) struct DestinationCounters {
    pub(crate) name: String,
    pub(crate) delivered: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) failed_requests: AtomicU64,
    pub(crate) pending: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) retries_exhausted: AtomicU64,
    pub(crate) expired: AtomicU64,
    pub(crate) truncated: AtomicU64,
    /// Written by the worker only when a request fails; read by `stats()`.
    pub(crate) last_error: Mutex<Option<LastError>>,
}

impl DestinationCounters {
    pub(crate) fn set_last_error(&self, error: LastError) {
        *self.last_error.lock().unwrap_or_else(PoisonError::into_inner) = Some(error);
    }
}

/// Relaxed is enough: counters are statistics, never used to synchronize data.
pub(crate) fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn new(names: impl IntoIterator<Item = String>) -> Self {
        Counters {
            destinations: names.into_iter().map(|name| DestinationCounters { name, ..Default::default() }).collect(),
            ..Default::default()
        }
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            enqueued: get(&self.enqueued),
            persisted: get(&self.persisted),
            dropped: Dropped {
                queue_full: get(&self.queue_full),
                filtered: get(&self.filtered),
                shutdown: get(&self.shutdown),
                store_full: get(&self.store_full),
                disk_full: get(&self.disk_full),
                store_error: get(&self.store_error),
                store_reset: get(&self.store_reset),
                disabled: get(&self.disabled),
                purged: get(&self.purged),
            },
            destinations: self
                .destinations
                .iter()
                .map(|d| DestinationStats {
                    name: d.name.clone(),
                    delivered: get(&d.delivered),
                    retried: get(&d.retried),
                    requests: get(&d.requests),
                    failed_requests: get(&d.failed_requests),
                    pending: get(&d.pending),
                    rejected: get(&d.rejected),
                    retries_exhausted: get(&d.retries_exhausted),
                    expired: get(&d.expired),
                    truncated: get(&d.truncated),
                    last_error: d.last_error.lock().unwrap_or_else(PoisonError::into_inner).clone(),
                })
                .collect(),
        }
    }
}

impl Stats {
    /// The stats of the destination called `name`.
    pub fn destination(&self, name: &str) -> Option<&DestinationStats> {
        self.destinations.iter().find(|d| d.name == name)
    }
}

//! Counters of everything the client did with the events it was given: nothing is dropped without
//! being counted under a reason.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::pipeline::health::Health;

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
    /// Events a purge ([`purge_queued`](crate::Client::purge_queued),
    /// [`erase_user`](crate::Client::erase_user)) found already in a request on the wire: the
    /// server may have them, so they are not counted as purged then. Their answer is applied:
    /// a delivered one counts as delivered; any other outcome removes it (counted in
    /// [`Dropped::purged`]) instead of retrying or dead-lettering it.
    pub purge_in_flight: u64,
    /// Per destination, in the order they were added.
    pub destinations: Vec<DestinationStats>,
    /// What the client found in its store when it opened it.
    pub store: StoreReport,
}

/// What a client found in its store when it opened it (fixed for the client's life).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreReport {
    /// The store was damaged and salvaged into a fresh file: what was recovered and lost.
    pub salvage: Option<crate::store::Salvage>,
    /// Events waiting in the store for destinations that are not configured, by name: kept,
    /// never sent elsewhere, until `trackway outbox move` or `drop` (or
    /// [`SqliteStore::move_pending`](crate::store::SqliteStore::move_pending) /
    /// [`drop_pending`](crate::store::SqliteStore::drop_pending)) says what to do with them, or
    /// the destination is configured again. They count toward the store's size bound.
    pub orphaned: Vec<(String, u64)>,
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
    /// Calls refused because the store was at its size bound and set to refuse new events
    /// ([`WhenFull::Refuse`](crate::store::WhenFull::Refuse)): the caller got
    /// [`Error::StoreFull`](crate::Error::StoreFull) and may call again (nothing stored was lost).
    pub store_refused: u64,
    /// The disk was full when these were to be committed.
    pub disk_full: u64,
    /// The store failed for another reason when these were to be committed.
    pub store_error: u64,
    /// Times the store file was found damaged when it was opened, salvaged into a fresh file
    /// and moved aside (what was recovered and lost: [`StoreReport::salvage`]).
    pub store_reset: u64,
    /// Events lost to a damaged store: those of a salvage that did not read back, and those of
    /// chunks that failed their checksum when read back later (each logged as an error).
    pub store_corrupt: u64,
    /// Calls refused while tracking was off (`set_enabled(false)`).
    pub disabled: u64,
    /// Queued events removed on request (`purge_queued`, `erase_user`).
    pub purged: u64,
    /// Events lost because the worker thread stopped unexpectedly (a panic): those accepted
    /// but still in the channel, and the calls refused afterwards.
    pub worker_stopped: u64,
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
    /// Requests that probed the server (e.g. Umami's `/api/batch` on a release without it)
    /// and led to another way of sending the same events; neither failures nor retries.
    pub probes: u64,
    /// Delivered events whose own timestamp the server does not store, so they are filed at
    /// delivery time (e.g. imports to an Umami server older than 2.17).
    pub dropped_timestamps: u64,
    /// Other values of delivered events the server does not store, one per field per event
    /// (e.g. Umami's `tag` before 2.11, its distinct `id` before 2.18).
    pub dropped_fields: u64,
    /// Events not sent because the server has nothing for them (e.g. a `web` push device at
    /// Customer.io, whose platforms are ios and android); done, not dead-lettered.
    pub skipped: u64,
    /// Healthy, failing, unreachable, misconfigured or stopped; since when; the last error.
    pub health: Health,
    /// [Direct calls](crate::direct) to this destination (not events: not in the counts above).
    pub direct: DirectStats,
}

/// What became of one destination's [direct calls](crate::direct).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DirectStats {
    /// Calls answered with success.
    pub ok: u64,
    /// Calls that may have reached the server and did not succeed (an error status, a broken
    /// connection, no answer in time).
    pub failed: u64,
    /// Calls that never reached the server (refused before sending, or nothing could be sent).
    pub not_sent: u64,
}

/// The live counters behind [`Stats`]; atomics so the caller's thread never takes a lock (only
/// `stats()` reads the health, behind a lock the worker takes when it changes).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) enqueued: AtomicU64,
    pub(crate) persisted: AtomicU64,
    pub(crate) purge_in_flight: AtomicU64,
    pub(crate) queue_full: AtomicU64,
    pub(crate) filtered: AtomicU64,
    pub(crate) shutdown: AtomicU64,
    pub(crate) store_full: AtomicU64,
    pub(crate) store_refused: AtomicU64,
    pub(crate) disk_full: AtomicU64,
    pub(crate) store_error: AtomicU64,
    pub(crate) store_reset: AtomicU64,
    pub(crate) store_corrupt: AtomicU64,
    pub(crate) disabled: AtomicU64,
    pub(crate) purged: AtomicU64,
    pub(crate) worker_stopped: AtomicU64,
    /// One per possible destination index (destinations added at run time take the next), so
    /// the worker and callers index them without a lock; the first `active` are in use.
    pub(crate) destinations: Box<[DestinationCounters]>,
    active: AtomicUsize,
    /// Set once, when the client is built.
    pub(crate) store: OnceLock<StoreReport>,
}

#[derive(Debug, Default)]
pub(crate) struct DestinationCounters {
    /// Set once, when the destination takes this index.
    pub(crate) name: OnceLock<String>,
    pub(crate) delivered: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) failed_requests: AtomicU64,
    pub(crate) pending: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) retries_exhausted: AtomicU64,
    pub(crate) expired: AtomicU64,
    pub(crate) truncated: AtomicU64,
    pub(crate) probes: AtomicU64,
    pub(crate) dropped_timestamps: AtomicU64,
    pub(crate) dropped_fields: AtomicU64,
    pub(crate) skipped: AtomicU64,
    /// Written by the worker on each change (rarely: failures and changes of state).
    pub(crate) health: Mutex<Health>,
    pub(crate) direct_ok: AtomicU64,
    pub(crate) direct_failed: AtomicU64,
    pub(crate) direct_not_sent: AtomicU64,
}

/// Relaxed is enough: counters are statistics, never used to synchronize data.
pub(crate) fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn new(names: impl IntoIterator<Item = String>) -> Self {
        let counters = Counters {
            destinations: (0..crate::policy::MAX_DESTINATIONS).map(|_| DestinationCounters::default()).collect(),
            ..Default::default()
        };
        for name in names {
            counters.add(name);
        }
        counters
    }

    /// Counters for the next destination index, called `name`; its index.
    pub(crate) fn add(&self, name: String) -> usize {
        let index = self.active.load(Ordering::Acquire);
        if let Some(d) = self.destinations.get(index) {
            let _ = d.name.set(name);
            self.active.store(index + 1, Ordering::Release);
        }
        index
    }

    /// The counters of the destinations in use.
    pub(crate) fn active(&self) -> &[DestinationCounters] {
        &self.destinations[..self.active.load(Ordering::Acquire).min(self.destinations.len())]
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            enqueued: get(&self.enqueued),
            persisted: get(&self.persisted),
            purge_in_flight: get(&self.purge_in_flight),
            dropped: Dropped {
                queue_full: get(&self.queue_full),
                filtered: get(&self.filtered),
                shutdown: get(&self.shutdown),
                store_full: get(&self.store_full),
                store_refused: get(&self.store_refused),
                disk_full: get(&self.disk_full),
                store_error: get(&self.store_error),
                store_reset: get(&self.store_reset),
                store_corrupt: get(&self.store_corrupt),
                disabled: get(&self.disabled),
                purged: get(&self.purged),
                worker_stopped: get(&self.worker_stopped),
            },
            destinations: self
                .active()
                .iter()
                .map(|d| DestinationStats {
                    name: d.name.get().cloned().unwrap_or_default(),
                    delivered: get(&d.delivered),
                    retried: get(&d.retried),
                    requests: get(&d.requests),
                    failed_requests: get(&d.failed_requests),
                    pending: get(&d.pending),
                    rejected: get(&d.rejected),
                    retries_exhausted: get(&d.retries_exhausted),
                    expired: get(&d.expired),
                    truncated: get(&d.truncated),
                    probes: get(&d.probes),
                    dropped_timestamps: get(&d.dropped_timestamps),
                    dropped_fields: get(&d.dropped_fields),
                    skipped: get(&d.skipped),
                    health: d.health.lock().unwrap_or_else(|e| e.into_inner()).clone(),
                    direct: DirectStats {
                        ok: get(&d.direct_ok),
                        failed: get(&d.direct_failed),
                        not_sent: get(&d.direct_not_sent),
                    },
                })
                .collect(),
            store: self.store.get().cloned().unwrap_or_default(),
        }
    }
}

impl Stats {
    /// The stats of the destination called `name`.
    pub fn destination(&self, name: &str) -> Option<&DestinationStats> {
        self.destinations.iter().find(|d| d.name == name)
    }
}

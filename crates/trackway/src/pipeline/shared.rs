//! What the worker shares with the client handle: the queue between them, the counters, the
//! destinations, the clock, the context and the consent flag. The worker needs nothing else of
//! the client, so the pipeline does not depend on the client module.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use trackway_wire::Context;

use super::DestinationTable;
use crate::clock::Clock;
use crate::queue::Queue;
use crate::stats::Counters;

/// The worker's view of a client, shared with the caller side.
pub(crate) struct Shared {
    /// The bounded channel from callers to the worker.
    pub(crate) queue: Queue,
    pub(crate) counters: Counters,
    /// By index: a route bit `i` is `destinations.get(i)`; run-time destinations are appended.
    pub(crate) destinations: DestinationTable,
    pub(crate) clock: Clock,
    pub(crate) context: Arc<Context>,
    /// `context` serialized once: it is the same in every event, and stores keep it once.
    pub(crate) context_json: Bytes,
    /// Consent: false after `set_enabled(false)`; nothing is queued or sent.
    pub(crate) enabled: AtomicBool,
    /// Whether the store refuses new events for now (`WhenFull::Refuse` at its bound).
    pub(crate) room: StoreRoom,
    /// Outcome streams and receipts ([`crate::receipts`]); idle (one load) when nobody listens.
    pub(crate) receipts: Arc<crate::receipts::Hub>,
}

/// The store's "full, refusing new events" flag: read by callers on every event (one atomic
/// load), set by the worker after commits and syncs, waited on by importers.
#[derive(Debug, Default)]
pub(crate) struct StoreRoom {
    full: AtomicBool,
    /// Set once for good when the client closes or its worker stops: the store will never free
    /// room again, so waiters must not sit out their timeout.
    ended: AtomicBool,
    lock: Mutex<()>,
    freed: Condvar,
    /// Wakes async waiters ([`wait_async`](Self::wait_async)), which must not block on `freed`.
    freed_async: tokio::sync::Notify,
}

impl StoreRoom {
    pub(crate) fn is_full(&self) -> bool {
        self.full.load(Ordering::Acquire)
    }

    /// Called by the worker; wakes the waiters when room comes back.
    pub(crate) fn set(&self, full: bool) {
        if self.full.swap(full, Ordering::AcqRel) && !full {
            // Taken after the store: a waiter either saw `false` or is waiting and is woken.
            let _guard = super::lock(&self.lock);
            self.freed.notify_all();
            self.freed_async.notify_waiters();
        }
    }

    /// Ends every wait, now and later (the client closed or its worker stopped): waiters return
    /// at once, and look at the client's state to say why.
    pub(crate) fn end(&self) {
        self.ended.store(true, Ordering::Release);
        // Taken after the store, as in `set`: no waiter misses the wake-up.
        let _guard = super::lock(&self.lock);
        self.freed.notify_all();
        self.freed_async.notify_waiters();
    }

    fn has_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// [`wait`](Self::wait) without blocking the thread: awaits the worker's wake-up.
    pub(crate) async fn wait_async(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before the flag is read: a wake-up between the two is not missed.
            let freed = self.freed_async.notified();
            let mut freed = std::pin::pin!(freed);
            freed.as_mut().enable();
            if !self.is_full() || self.has_ended() {
                return !self.is_full();
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return !self.is_full();
            }
        }
    }

    /// Waits until the store has room, at most `timeout` (or until [`end`](Self::end)); whether
    /// it has.
    pub(crate) fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut guard = super::lock(&self.lock);
        while self.is_full() && !self.has_ended() {
            let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else {
                return false;
            };
            guard = match self.freed.wait_timeout(guard, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        !self.is_full()
    }
}

impl Shared {
    pub(crate) fn new(
        queue: Queue,
        counters: Counters,
        destinations: DestinationTable,
        clock: Clock,
        context: Context,
        enabled: bool,
    ) -> Self {
        Shared {
            queue,
            counters,
            destinations,
            clock,
            context_json: Bytes::from(serde_json::to_vec(&context).unwrap_or_default()),
            context: Arc::new(context),
            enabled: AtomicBool::new(enabled),
            room: StoreRoom::default(),
            receipts: Arc::default(),
        }
    }

    /// Whether tracking is on (`set_enabled`).
    pub(crate) fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }
}

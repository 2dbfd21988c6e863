//! The hub between the worker and the listeners: the open streams, the receipts' watches, and
//! how many of them there are (the one number the worker reads to know whether to report).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use trackway_wire::MessageId;

use super::stream::{OutcomeStream, Ring};
use super::{Batch, Decided, Names};
use crate::pipeline::lock;

/// The test hook a confirmed call runs between its push and its return.
#[cfg(feature = "testing")]
pub(crate) type AfterPush = Arc<dyn Fn(MessageId) + Send + Sync>;

/// Why no more outcomes will come from this process's worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The worker finished (shutdown, or the last clone dropped).
    Shutdown,
    /// The worker panicked with this message.
    WorkerStopped(String),
}

/// What one receipt waits for: one event's outcome at each destination it was routed to.
#[derive(Debug)]
pub(crate) struct Watch {
    pub(super) state: Mutex<WatchState>,
    pub(super) changed: Condvar,
    pub(super) notify: tokio::sync::Notify,
}

#[derive(Debug)]
pub(super) struct WatchState {
    /// The destinations (route bits) the event went to.
    pub(super) routes: u64,
    /// Those without an outcome yet.
    pub(super) remaining: u64,
    /// In arrival order (each knows its route bit), with the destination's name.
    pub(super) results: Vec<(Decided, Arc<str>)>,
    pub(super) ended: Option<Ended>,
    /// Threads blocked in [`Receipt::wait`](super::Receipt::wait): the condvar is signalled
    /// only when one is (a signal is a system call even with nobody waiting).
    pub(super) waiters: usize,
}

impl Watch {
    fn new(routes: u64) -> Self {
        Watch {
            state: Mutex::new(WatchState { routes, remaining: routes, results: Vec::new(), ended: None, waiters: 0 }),
            changed: Condvar::new(),
            notify: tokio::sync::Notify::new(),
        }
    }

    /// `waiters`: read under the state's lock by the caller, so a thread about to wait either
    /// was counted or will see the new state before it waits.
    fn wake(&self, waiters: usize) {
        if waiters > 0 {
            self.changed.notify_all();
        }
        // One waiter per receipt (`resolved` takes `&self`, but a receipt is awaited once):
        // `notify_waiters` wakes every one registered, and each re-checks the state.
        self.notify.notify_waiters();
    }

    /// Records an outcome; whether every destination has one now.
    fn add(&self, record: Decided, name: Arc<str>) -> bool {
        let mut state = lock(&self.state);
        let bit = 1u64 << record.lane;
        if state.remaining & bit != 0 {
            state.remaining &= !bit;
            state.results.push((record, name));
        }
        let done = state.remaining == 0;
        let waiters = state.waiters;
        drop(state);
        self.wake(waiters);
        done
    }

    fn end(&self, why: &Ended) {
        let mut state = lock(&self.state);
        state.ended.get_or_insert_with(|| why.clone());
        let waiters = state.waiters;
        drop(state);
        self.wake(waiters);
    }
}

/// Shared by the client, the worker and every stream and receipt.
pub(crate) struct Hub {
    /// Open streams plus open watches: zero means nobody listens, and the worker reports nothing.
    active: AtomicUsize,
    streams: Mutex<Vec<Arc<Ring>>>,
    watches: Mutex<HashMap<MessageId, Arc<Watch>>>,
    ended: Mutex<Option<Ended>>,
    /// The subscription made on the builder, until `Client::take_outcomes` takes it.
    pub(crate) initial: Mutex<Option<OutcomeStream>>,
    /// Test hook: called by a confirmed call between its push and its return.
    #[cfg(feature = "testing")]
    pub(crate) after_push: Mutex<Option<AfterPush>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("active", &self.active.load(Ordering::Relaxed)).finish_non_exhaustive()
    }
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            active: AtomicUsize::new(0),
            streams: Mutex::new(Vec::new()),
            watches: Mutex::new(HashMap::new()),
            ended: Mutex::new(None),
            initial: Mutex::new(None),
            #[cfg(feature = "testing")]
            after_push: Mutex::new(None),
        }
    }
}

impl Hub {
    /// Whether anyone listens. Acquire: a watch registered before its event was pushed is seen
    /// by the worker that pops the event (the queue orders the two).
    #[inline]
    pub(crate) fn is_active(&self) -> bool {
        // The receipts bench's A/B build: the worker never reports, as if the feature were not
        // there (streams and receipts then get nothing; never a build to ship).
        if cfg!(trackway_no_receipts) {
            return false;
        }
        self.active.load(Ordering::Acquire) != 0
    }

    /// A new stream of every outcome from now on, keeping at most `capacity` unread.
    pub(crate) fn subscribe(self: &Arc<Self>, capacity: usize) -> OutcomeStream {
        let ring = Arc::new(Ring::new(capacity));
        // Under the `ended` lock, as in `watch`: `end` either sees this stream or it saw `ended`.
        let ended = lock(&self.ended);
        if ended.is_some() {
            ring.close();
        }
        self.active.fetch_add(1, Ordering::AcqRel);
        lock(&self.streams).push(ring.clone());
        drop(ended);
        OutcomeStream::new(ring, Arc::downgrade(self))
    }

    /// A stream was dropped: one listener fewer (it is pruned at the next outcome).
    pub(super) fn unsubscribed(&self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
    }

    /// Starts watching the event `id`, routed to `routes`. Registered before the event is
    /// pushed, so no outcome can come before the watch exists.
    pub(crate) fn watch(&self, id: MessageId, routes: u64) -> Arc<Watch> {
        let watch = Arc::new(Watch::new(routes));
        // Held while inserting: `end` either drains this watch or this call sees `ended`.
        let ended = lock(&self.ended);
        if let Some(ended) = ended.as_ref() {
            watch.end(ended);
            return watch;
        }
        if routes == 0 {
            return watch;
        }
        let mut watches = lock(&self.watches);
        if watches.insert(id, watch.clone()).is_none() {
            self.active.fetch_add(1, Ordering::AcqRel);
        }
        watch
    }

    /// Stops watching `id` (the receipt was dropped, or its call failed after registering).
    pub(crate) fn unwatch(&self, id: MessageId) {
        if lock(&self.watches).remove(&id).is_some() {
            self.active.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Hands outcomes to every stream and to the watches they complete: one lock per stream
    /// for the whole batch. `batch` is emptied (its buffers are left to the caller for the next
    /// step); `names` gives each lane's destination name. Returns whether a stream's reader is
    /// still to be signalled ([`signal`](Self::signal)): streams are signalled in bulk.
    #[must_use]
    pub(crate) fn emit(&self, batch: &mut Batch, names: &Names) -> bool {
        if batch.is_empty() {
            return false;
        }
        // Matched under the lock, woken outside it: callers registering watches wait for a
        // lookup per outcome, not for the receipts' wake-ups.
        let matched: Vec<(Arc<Watch>, Decided)> = {
            let watches = lock(&self.watches);
            if watches.is_empty() {
                Vec::new()
            } else {
                batch
                    .iter()
                    .flat_map(|(run, ids)| ids.iter().map(move |id| (run, id)))
                    .filter_map(|(run, id)| {
                        let watch = watches.get(id)?.clone();
                        Some((watch, Decided { lane: run.lane, id: *id, outcome: run.outcome.clone(), at: run.at }))
                    })
                    .collect()
            }
        };
        for (watch, record) in matched {
            let id = record.id;
            // Every emitter names each lane it emits for; "?" only guards a broken invariant.
            let name = names.get(record.lane).cloned().flatten().unwrap_or_else(|| Arc::from("?"));
            if watch.add(record, name) {
                // As `unwatch`: only the remover counts it off (a receipt dropped meanwhile did).
                self.unwatch(id);
            }
        }
        let mut streams = lock(&self.streams);
        streams.retain(|ring| !ring.is_dropped());
        let mut unsignalled = false;
        for ring in streams.iter() {
            unsignalled |= ring.push_all(batch, names);
        }
        drop(streams);
        batch.clear();
        unsignalled
    }

    /// Signals every stream's reader of the outcomes pushed since it was last signalled.
    pub(crate) fn signal(&self) {
        for ring in lock(&self.streams).iter() {
            ring.signal();
        }
    }

    /// No more outcomes: every open receipt resolves (pending, or with the worker's error) and
    /// every stream ends once read.
    pub(crate) fn end(&self, why: Ended) {
        let mut ended = lock(&self.ended);
        *ended = Some(why.clone());
        let watches: Vec<Arc<Watch>> = lock(&self.watches).drain().map(|(_, w)| w).collect();
        self.active.fetch_sub(watches.len(), Ordering::AcqRel);
        for ring in lock(&self.streams).iter() {
            ring.close();
        }
        drop(ended);
        for watch in watches {
            watch.end(&why);
        }
    }
}

/// A watch registered by a call that has not returned yet: dropped on an error path, it
/// unregisters the watch; [`keep`](Self::keep) leaves it registered.
pub(crate) struct Registration<'a> {
    hub: &'a Hub,
    id: MessageId,
    armed: bool,
}

impl<'a> Registration<'a> {
    pub(crate) fn new(hub: &'a Hub, id: MessageId) -> Self {
        Registration { hub, id, armed: true }
    }

    /// The call succeeded: the receipt owns the watch now.
    pub(crate) fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.hub.unwatch(self.id);
        }
    }
}

//! The delivery pipeline: one worker thread that owns its runtime, the store and all I/O.
//!
//! # Design
//!
//! ```text
//! caller threads ──push──▶ Queue ──drain──▶ Store.append (one call per drain: group commit)
//!                                              │
//!                       per destination (Lane) ▼
//!                 read next batch ─▶ encode (pure) ─▶ HTTP ─▶ classify (pure, per item)
//!                                              Delivered ─▶ ack
//!                                              Reject    ─▶ dead letter (status + body)
//!                                              Retry     ─▶ group, backoff with full jitter
//!                                              Throttled ─▶ pause the lane (Retry-After)
//!                                              Misconfigured ─▶ hold, probe at a growing interval
//! ```
//!
//! Invariants:
//! - The worker is the only writer of the store. A barrier or flush travels through the same
//!   FIFO queue as events, so "everything queued before it" is exact.
//! - First attempts go out in seq order; a destination's `fresh` cursor only moves forward.
//!   Retried events wait in groups with a due time; parallel destinations may send them after
//!   later events, ordered destinations send nothing later until the group is delivered.
//! - A lane whose last [`health::FAILING_AFTER`] requests failed as a whole is *unhealthy*
//!   (failing) and sends one request at a time (a probe), so an outage costs one request per
//!   backoff period, not a storm. A failure among requests that work leaves it healthy, at full
//!   concurrency: the failed batch waits for its own backoff while the others go on.
//! - A batch the server throttled (429 or 503 with `Retry-After`) waits for the pause and goes
//!   out whole again: it is not split, and its events get no strike.
//! - A failed group of several events is split in halves once the destination is known to work
//!   (something was delivered since) or after two failures, so one poison event is isolated.
//!   An event that fails alone while the destination delivers others gets a *strike*; after
//!   `max_attempts` strikes it is dead-lettered as `retries_exhausted`.
//! - Every final outcome of an event at a destination (delivered, dead-lettered, skipped,
//!   dropped by the store) is reported at the one place the worker decides it, to
//!   [`crate::receipts`], only while a stream or a receipt is open (one atomic load otherwise);
//!   they are handed over once per loop turn, before flushes are answered.
//! - Deadlines (batch interval, backoff, pauses) are read from the injected [`Clock`]; a manual
//!   clock wakes the worker when advanced.
//! - Each lane has one health state machine ([`health`]): a misconfigured destination holds its
//!   events and probes at a growing interval; destination code that panics is caught (the batch
//!   is split like a poison batch, a single event dead-lettered) and stops only its destination.
//!   A panic of the worker itself leaves a thread that refuses and counts every later call.
//!
//! [`Clock`]: crate::Clock

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::config::RetryPolicy;
use crate::store::{Recovered, Store};

mod backoff;
pub mod health;
mod lane;
mod redact;
mod shared;
mod stopped;
mod table;
mod transport;
mod worker;

pub(crate) use backoff::{backoff_ceiling, full_jitter};
pub(crate) use shared::{Shared, StoreRoom};
pub(crate) use table::DestinationTable;
pub(crate) use transport::Transport;

/// How one destination's requests go out: its HTTP side and its own policies.
#[derive(Debug)]
pub(crate) struct LaneSetup {
    pub(crate) transport: Transport,
    /// The destination's retry policy (the client's unless its `HttpOptions` set one).
    pub(crate) retry: RetryPolicy,
    /// A cap on requests per second, if any.
    pub(crate) max_requests_per_second: Option<f64>,
}

/// Worker settings taken from the builder.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) batch_interval: Duration,
    pub(crate) commit_delay: Duration,
    pub(crate) max_event_age: Duration,
    /// Lanes (by index) of run-time destinations that could not be re-created, with why: they
    /// start stopped, holding their events.
    pub(crate) held: Vec<(usize, String)>,
}

/// The running worker thread.
#[derive(Debug)]
pub(crate) struct WorkerThread {
    pub(crate) thread: JoinHandle<()>,
    /// Resolves once the worker has stopped and dropped its runtime (also if it panicked: the
    /// sender is dropped then), so an async caller can wait for the end without `join`, which
    /// blocks.
    pub(crate) exited: oneshot::Receiver<()>,
    /// The worker's runtime, where direct calls run.
    pub(crate) runtime: tokio::runtime::Handle,
}

/// Locks `m`, ignoring poisoning: the data behind these locks stays consistent when a holder
/// panics (each critical section makes one change).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts the worker thread with its own current-thread runtime.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    store: Box<dyn Store>,
    recovered: Recovered,
    lanes: Vec<LaneSetup>,
    settings: Settings,
) -> std::io::Result<WorkerThread> {
    // Built here, not in the thread, so a failure is a build() error rather than a silent worker.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (exit, exited) = oneshot::channel();
    let handle = runtime.handle().clone();
    // Healthy from now on, before the first `stats()` can look.
    let now = shared.clock.now();
    for d in shared.counters.active() {
        *lock(&d.health) = health::Health::healthy_since(now);
    }
    // Also before the first `stats()`: a destination that could not be re-created is stopped.
    for (i, reason) in &settings.held {
        if let Some(d) = shared.counters.destinations.get(*i) {
            *lock(&d.health) = health::Health::unavailable(reason, now);
        }
    }
    let thread = std::thread::Builder::new().name("trackway-worker".into()).spawn(move || {
        let worker = worker::Worker::new(shared.clone(), store, recovered, lanes, settings);
        // A panic of the worker (a bug, or a store that panics) must not leave callers talking
        // to a channel nobody reads: the thread stays to refuse and count what comes.
        if let Err(message) = health::catch(|| runtime.block_on(worker.run())) {
            stopped::run(&shared, &message);
        }
        // The runtime's own teardown (its I/O driver, connection pools) is part of stopping.
        drop(runtime);
        let _ = exit.send(());
    })?;
    Ok(WorkerThread { thread, exited, runtime: handle })
}

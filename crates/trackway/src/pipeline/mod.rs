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
//! ```
//!
//! Invariants:
//! - The worker is the only writer of the store. A barrier or flush travels through the same
//!   FIFO queue as events, so "everything queued before it" is exact.
//! - First attempts go out in seq order; a destination's `fresh` cursor only moves forward.
//!   Retried events wait in groups with a due time; parallel destinations may send them after
//!   later events, ordered destinations send nothing later until the group is delivered.
//! - A lane whose last request failed as a whole is *unhealthy* and sends one request at a time
//!   (a probe), so an outage costs one request per backoff period, not a storm.
//! - A failed group of several events is split in halves once the destination is known to work
//!   (something was delivered since) or after two failures, so one poison event is isolated.
//!   An event that fails alone while the destination delivers others gets a *strike*; after
//!   `max_attempts` strikes it is dead-lettered as `retries_exhausted`.
//! - Deadlines (batch interval, backoff, pauses) are read from the injected [`Clock`]; a manual
//!   clock wakes the worker when advanced.
//!
//! [`Clock`]: crate::Clock

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::client::Shared;
use crate::config::RetryPolicy;
use crate::store::{Recovered, Store};

mod backoff;
mod lane;
mod transport;
mod worker;

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
}

/// Starts the worker thread with its own current-thread runtime.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    store: Box<dyn Store>,
    recovered: Recovered,
    lanes: Vec<LaneSetup>,
    settings: Settings,
) -> std::io::Result<JoinHandle<()>> {
    // Built here, not in the thread, so a failure is a build() error rather than a silent worker.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::Builder::new().name("trackway-worker".into()).spawn(move || {
        let worker = worker::Worker::new(shared, store, recovered, lanes, settings);
        runtime.block_on(worker.run());
    })
}

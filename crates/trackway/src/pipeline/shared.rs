//! What the worker shares with the client handle: the queue between them, the counters, the
//! destinations, the clock, the context and the consent flag. The worker needs nothing else of
//! the client, so the pipeline does not depend on the client module.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
        }
    }

    /// Whether tracking is on (`set_enabled`).
    pub(crate) fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }
}

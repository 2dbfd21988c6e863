//! An in-process destination for tests: keeps what it "receives" and answers from a script.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use trackway_wire::{Event, EventKind, Timestamp};

use super::{BatchLimits, Delivery, Destination, DestinationState, Encoded, EventRecord, Request, Response};

/// A destination that keeps delivered events in memory (behind the `testing` feature).
///
/// Clones share the same storage, so keep one clone to inspect what arrived.
///
/// ```
/// use trackway::destination::InMemoryDestination;
/// let dest = InMemoryDestination::new("memory");
/// dest.fail_next(503, 2); // the next two requests get a 503
/// assert!(dest.received().is_empty());
/// ```
#[derive(Clone, Debug)]
pub struct InMemoryDestination {
    name: String,
    limits: BatchLimits,
    delivery: Delivery,
    kinds: Option<Vec<EventKind>>,
    event_types: Option<Vec<super::EventType>>,
    shared: Arc<Mutex<Shared>>,
}

#[derive(Debug, Default)]
struct Shared {
    received: Vec<Received>,
    script: VecDeque<u16>,
}

/// One event as received by an [`InMemoryDestination`].
#[derive(Clone, Debug)]
pub struct Received {
    /// The event.
    pub event: Event,
    /// Which request (0-based) carried it.
    pub request: usize,
}

impl InMemoryDestination {
    /// An empty destination that accepts every kind.
    pub fn new(name: impl Into<String>) -> Self {
        InMemoryDestination {
            name: name.into(),
            limits: BatchLimits::default(),
            delivery: Delivery::Parallel { max_in_flight: 4 },
            kinds: None,
            event_types: None,
            shared: Arc::default(),
        }
    }

    /// Most events per request.
    #[must_use]
    pub fn batch_size(mut self, n: usize) -> Self {
        self.limits.max_events = n.max(1);
        self
    }

    /// Takes only these kinds.
    #[must_use]
    pub fn kinds(mut self, kinds: &[EventKind]) -> Self {
        self.kinds = Some(kinds.to_vec());
        self
    }

    /// Takes only these event types (default: all), e.g. a mapped project that takes only
    /// payments.
    #[must_use]
    pub fn event_types(mut self, types: &[super::EventType]) -> Self {
        self.event_types = Some(types.to_vec());
        self
    }

    /// Sends one request at a time, in order.
    #[must_use]
    pub fn ordered(mut self) -> Self {
        self.delivery = Delivery::Ordered;
        self
    }

    /// The next `times` requests are answered with `status` (and nothing is kept from them).
    pub fn fail_next(&self, status: u16, times: usize) {
        self.lock().script.extend(std::iter::repeat_n(status, times));
    }

    /// Every event received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.lock().received.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Destination for InMemoryDestination {
    fn name(&self) -> &str {
        &self.name
    }
    fn accepts(&self, kind: EventKind) -> bool {
        self.kinds.as_ref().is_none_or(|k| k.contains(&kind))
    }
    fn accepts_event_type(&self, event_type: super::EventType) -> bool {
        self.accepts(event_type.kind()) && self.event_types.as_ref().is_none_or(|t| t.contains(&event_type))
    }
    fn batch_limits(&self) -> BatchLimits {
        self.limits
    }
    fn delivery(&self) -> Delivery {
        self.delivery
    }
    fn encode(&self, events: &[EventRecord], _: &DestinationState, _: Timestamp) -> Encoded {
        let body = serde_json::to_vec(&events.iter().map(|e| e.event().ok()).collect::<Vec<_>>()).unwrap_or_default();
        Encoded { requests: vec![Request::post("memory://", body, (0..events.len()).collect())], ..Encoded::default() }
    }
    fn respond_locally(&self, request: &Request) -> Option<Response> {
        let mut shared = self.lock();
        if let Some(status) = shared.script.pop_front() {
            return Some(Response::new(status, "scripted failure"));
        }
        let events: Vec<Option<Event>> = serde_json::from_slice(&request.body).unwrap_or_default();
        let request_no = shared.received.last().map_or(0, |r| r.request + 1);
        shared.received.extend(events.into_iter().flatten().map(|event| Received { event, request: request_no }));
        Some(Response::new(200, ""))
    }
}

//! [`Receipt`]: one confirmed event's outcome at every destination it was routed to, awaited or
//! waited for, and what a destination without an outcome is doing (its health).

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use trackway_wire::{MessageId, Timestamp};

use super::Outcome;
use super::hub::{Ended, Watch, WatchState};
use crate::pipeline::health::{HealthState, LastError};
use crate::pipeline::{Shared, lock};

/// Why a receipt cannot say what became of its event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiptError {
    /// The delivery worker died (it panicked): no outcome will come in this process. What was
    /// committed to the store stays there for the next run.
    #[error("the delivery worker stopped: {0}")]
    WorkerStopped(String),
}

/// Where one destination stands for the event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// It has an outcome.
    Done {
        /// What became of the event there.
        outcome: Outcome,
        /// When it was decided.
        at: Timestamp,
    },
    /// Not yet: the event is still queued (and retried) for it.
    Pending(Pending),
}

/// Why a destination has no outcome for the event yet: its health, as
/// [`Client::stats`](crate::Client::stats) shows it, in words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    /// The destination's health state.
    pub state: HealthState,
    /// Its last failure, if any (kept after a recovery).
    pub last_error: Option<LastError>,
    /// Why, in one sentence (retrying with the last error, misconfigured, stopped, tracking
    /// off, the client shut down).
    pub reason: String,
}

/// One destination's line of a [`Confirmation`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestinationOutcome {
    /// The destination's name.
    pub destination: String,
    /// Its outcome, or why there is none yet.
    pub resolution: Resolution,
}

impl DestinationOutcome {
    /// The outcome, when there is one.
    pub fn outcome(&self) -> Option<&Outcome> {
        match &self.resolution {
            Resolution::Done { outcome, .. } => Some(outcome),
            Resolution::Pending(_) => None,
        }
    }
}

/// What a [`Receipt`] knows: per destination the event was routed to, in the client's order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Confirmation {
    /// The event's message id.
    pub id: MessageId,
    /// One line per destination the event was routed to.
    pub destinations: Vec<DestinationOutcome>,
}

impl Confirmation {
    /// Whether every destination has an outcome (of any kind).
    pub fn is_complete(&self) -> bool {
        self.destinations.iter().all(|d| d.outcome().is_some())
    }

    /// Whether every destination has the event.
    pub fn is_delivered(&self) -> bool {
        self.destinations.iter().all(|d| d.outcome().is_some_and(Outcome::is_delivered))
    }

    /// The line of the destination `name`.
    pub fn destination(&self, name: &str) -> Option<&DestinationOutcome> {
        self.destinations.iter().find(|d| d.destination == name)
    }
}

/// The handle of a confirmed call ([`Client::track_confirmed`](crate::Client::track_confirmed),
/// [`Client::capture_confirmed`](crate::Client::capture_confirmed)): resolves when every
/// destination the event was routed to has an outcome.
///
/// The event is queued, stored and retried exactly as a plain call's; the receipt only watches.
/// Dropping it changes nothing about delivery. It belongs to this process: if the process ends
/// first, a later run delivers the event (it shows up in that run's
/// [`OutcomeStream`](super::OutcomeStream)), not to this receipt.
///
/// - `receipt.await` (any runtime, no timer needed) resolves with every outcome, or with the
///   destinations still pending when the client shuts down, or with
///   [`ReceiptError::WorkerStopped`] when the worker dies;
/// - [`wait`](Self::wait) blocks for at most a timeout and then says, for each destination
///   still pending, why (its health and last error);
/// - [`status`](Self::status) says where it stands now.
#[derive(Debug)]
#[must_use = "a receipt does nothing unless awaited or waited for (the event is queued either way)"]
pub struct Receipt {
    id: MessageId,
    watch: Arc<Watch>,
    shared: Weak<Shared>,
}

impl Receipt {
    pub(crate) fn new(id: MessageId, watch: Arc<Watch>, shared: &Arc<Shared>) -> Self {
        Receipt { id, watch, shared: Arc::downgrade(shared) }
    }

    /// The event's message id.
    pub fn id(&self) -> MessageId {
        self.id
    }

    /// Where it stands now: done destinations with their outcome, the others pending with why.
    ///
    /// # Errors
    /// [`ReceiptError::WorkerStopped`] when the worker died.
    pub fn status(&self) -> Result<Confirmation, ReceiptError> {
        self.snapshot(&lock(&self.watch.state))
    }

    /// Blocks until every destination has an outcome, the client shuts down, or `timeout`
    /// passes; then returns where it stands (pending destinations say why). In async code,
    /// `.await` the receipt instead.
    ///
    /// # Errors
    /// [`ReceiptError::WorkerStopped`] when the worker died.
    pub fn wait(&self, timeout: Duration) -> Result<Confirmation, ReceiptError> {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.watch.state);
        while !finished(&state) {
            let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else {
                break;
            };
            state.waiters += 1;
            state = match self.watch.changed.wait_timeout(state, left) {
                Ok((state, _)) => state,
                Err(poisoned) => poisoned.into_inner().0,
            };
            state.waiters -= 1;
        }
        self.snapshot(&state)
    }

    /// Resolves when every destination has an outcome or the client's worker ended (what
    /// `.await` on the receipt does, without consuming it: wrap it in your runtime's timeout and
    /// call [`status`](Self::status) after).
    ///
    /// # Errors
    /// [`ReceiptError::WorkerStopped`] when the worker died.
    pub async fn resolved(&self) -> Result<Confirmation, ReceiptError> {
        loop {
            let notified = self.watch.notify.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check: a wake-up between the two is not lost.
            notified.as_mut().enable();
            {
                let state = lock(&self.watch.state);
                if finished(&state) {
                    return self.snapshot(&state);
                }
            }
            notified.await;
        }
    }

    fn snapshot(&self, state: &WatchState) -> Result<Confirmation, ReceiptError> {
        if let Some(Ended::WorkerStopped(why)) = &state.ended
            && state.remaining != 0
        {
            return Err(ReceiptError::WorkerStopped(why.clone()));
        }
        let shared = self.shared.upgrade();
        let destinations = crate::store::routes(state.routes)
            .map(|lane| {
                if let Some((record, name)) = state.results.iter().find(|(r, _)| r.lane == lane) {
                    return DestinationOutcome {
                        destination: name.to_string(),
                        resolution: Resolution::Done { outcome: record.outcome.clone(), at: record.at },
                    };
                }
                let name = shared
                    .as_ref()
                    .and_then(|s| s.destinations.iter().find(|(i, _)| *i == lane).map(|(_, d)| d.name().to_owned()))
                    .unwrap_or_else(|| format!("destination #{lane}"));
                DestinationOutcome {
                    destination: name,
                    resolution: Resolution::Pending(pending(shared.as_deref(), lane, state)),
                }
            })
            .collect();
        Ok(Confirmation { id: self.id, destinations })
    }
}

fn finished(state: &WatchState) -> bool {
    state.remaining == 0 || state.ended.is_some()
}

/// Why lane `lane` has no outcome yet, from its health.
fn pending(shared: Option<&Shared>, lane: usize, state: &WatchState) -> Pending {
    let Some(shared) = shared else {
        return Pending { state: HealthState::Stopped, last_error: None, reason: "the client is gone".into() };
    };
    let health = shared.counters.destinations.get(lane).map(|d| lock(&d.health).clone()).unwrap_or_default();
    let last = health.last_error.as_ref().map(|e| e.message.clone());
    let with_last = |what: &str| match &last {
        Some(e) => format!("{what}; the last error: {e}"),
        None => what.to_owned(),
    };
    let reason = if state.ended.is_some() {
        with_last(
            "the client shut down before the destination had an outcome; the event stays in the outbox for a later run",
        )
    } else if !shared.is_enabled() {
        "tracking is disabled (set_enabled(false)): the event is kept, not sent".to_owned()
    } else {
        match health.state {
            // A failure since it became healthy: a request failed, but not enough in a row to
            // call the destination failing; the event waits for its retry.
            HealthState::Healthy if health.last_error.as_ref().is_some_and(|e| e.at >= health.since) => {
                with_last("retrying after a failed request")
            }
            HealthState::Healthy => "waiting for its batch or the server's answer".to_owned(),
            HealthState::Failing => with_last("the destination is failing; retrying with backoff"),
            HealthState::Unreachable => with_last("the destination is unreachable; retrying"),
            HealthState::Misconfigured => {
                with_last("the destination is misconfigured; its events are held until it answers a probe")
            }
            HealthState::Stopped => with_last("the destination is stopped; its events stay pending in the store"),
        }
    };
    Pending { state: health.state, last_error: health.last_error, reason }
}

impl Drop for Receipt {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.receipts.unwatch(self.id);
        }
    }
}

impl IntoFuture for Receipt {
    type Output = Result<Confirmation, ReceiptError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { self.resolved().await })
    }
}

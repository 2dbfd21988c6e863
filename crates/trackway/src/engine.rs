//! Delivering a batch through one destination without the SDK's store or worker: the relay's
//! workers (and any other queue that owns its own retries) hand a batch of stored events to a
//! [`Deliverer`] and get one [`Verdict`] per event.
//!
//! It goes through the same code as the SDK's pipeline: the destination's `encode` and
//! `classify`, the pipeline's HTTP transport (redirects, secret headers, redaction of answers,
//! fallback base URLs), its backoff with full jitter and its `Retry-After` cap. What the pipeline
//! keeps in the store (cursors, retry groups, strikes) is the caller's: a verdict says when to try
//! again, the caller's queue keeps the event until then.
//!
//! ```
//! # let collector = trackway_collector::Collector::start().unwrap();
//! use trackway::destination::{EventRecord, JsonHttp};
//! use trackway::engine::{Deliverer, Verdict};
//! use trackway::{HttpOptions, Timestamp};
//!
//! let deliverer = Deliverer::new(JsonHttp::new(collector.url("/events")), &HttpOptions::default())?;
//! let json = br#"{"id":"0190a0c4-1b2c-7000-8000-000000000001","type":"track","name":"signup","timestamp":"2024-07-01T00:00:00.000Z","identity":{"user_id":"u1"},"context":{"library":"x","library_version":"1"}}"#;
//! let id = "0190a0c4-1b2c-7000-8000-000000000001".parse()?;
//! let record = EventRecord::new(1, id, Timestamp::from_unix_millis(0), bytes::Bytes::from_static(json));
//! let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! let verdicts = runtime.block_on(deliverer.deliver(&[record], 1));
//! assert_eq!(verdicts, vec![Verdict::Delivered]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::destination::{Delivery, Destination, DestinationState, EventRecord, Outcome, Request};
use crate::pipeline::{LaneSetup, health, lock};
use crate::{HttpOptions, RetryPolicy, Timestamp};

/// What became of one event handed to [`Deliverer::deliver`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// The server has it.
    Delivered,
    /// Not delivered yet: send it again after `after` (backoff with full jitter, or the server's
    /// `Retry-After` capped by the retry policy).
    Retry {
        /// How long to wait before the next attempt.
        after: Duration,
    },
    /// The server will never take it (or the destination cannot encode it): keep it as a dead
    /// letter with this reason (the server's status and body).
    Dead(String),
    /// The destination has nothing to send for it (e.g. a device type its server does not
    /// keep): done, not a dead letter.
    Skipped(String),
    /// The destination's configuration is wrong (bad credentials, an unknown project): keep the
    /// event and try again after `after`; never dead-letter it for this.
    Held {
        /// The server's answer.
        reason: String,
        /// How long to wait before probing again (growing with the attempt number).
        after: Duration,
    },
}

/// One destination with its HTTP side and retry policy, ready to deliver batches.
#[derive(Debug)]
pub struct Deliverer {
    destination: Arc<dyn Destination>,
    setup: LaneSetup,
    /// The destination's state (session tokens and the like), kept between batches in memory.
    state: Mutex<DestinationState>,
}

impl Deliverer {
    /// A deliverer for `destination` with `options` (headers, timeouts, retry policy, proxy).
    ///
    /// # Errors
    /// The destination's own configuration check, or options that do not build an HTTP client.
    pub fn new(destination: impl Destination, options: &HttpOptions) -> Result<Self, String> {
        Deliverer::from_arc(Arc::new(destination), options)
    }

    /// Like [`new`](Self::new), for a destination already shared.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn from_arc(destination: Arc<dyn Destination>, options: &HttpOptions) -> Result<Self, String> {
        destination.check_config()?;
        let setup = options.lane_setup(&*destination, &RetryPolicy::default(), &crate::Clock::system())?;
        Ok(Deliverer { destination, setup, state: Mutex::new(DestinationState::default()) })
    }

    /// The destination's name.
    pub fn name(&self) -> &str {
        self.destination.name()
    }

    /// The destination.
    pub fn destination(&self) -> &dyn Destination {
        &*self.destination
    }

    /// The destination's state as it stands (session and cache tokens its answers left), for a
    /// caller that shares it between processes (the relay keeps it in a JetStream KV bucket):
    /// each key with its value.
    pub fn state(&self) -> Vec<(String, Vec<u8>)> {
        let state = lock(&self.state);
        state.keys().filter_map(|k| Some((k.to_owned(), state.get(k)?.to_vec()))).collect()
    }

    /// Replaces the destination's state with `values` (read from where another process left
    /// it): the next batch is encoded with it.
    pub fn set_state(&self, values: impl IntoIterator<Item = (String, Vec<u8>)>) {
        *lock(&self.state) = DestinationState::from_map(values.into_iter().collect());
    }

    /// The first wait of a destination found misconfigured before it is tried again, and the
    /// longest (the wait doubles in between): the same as the SDK's health probes.
    pub fn probe_backoff(&self) -> (Duration, Duration) {
        (health::MISCONFIGURED_PROBE_FIRST, health::MISCONFIGURED_PROBE_MAX)
    }

    /// The retry policy in force (the options' or the default).
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.setup.retry
    }

    /// Delivers `events` (at most the destination's [`batch_limits`](Destination::batch_limits))
    /// and returns one verdict per event, in order. `attempt` is how many times these events
    /// have been tried, this time included (1 on the first): it sets the backoff.
    ///
    /// Requests go out one after another. For an [ordered](Delivery::Ordered) destination, and
    /// one that keeps order per person ([`identity_order`](Destination::identity_order)), the
    /// events after a request that did not fully succeed are not sent (they get `Retry`), and
    /// each next request is encoded again with the state the previous answer left.
    pub async fn deliver(&self, events: &[EventRecord], attempt: u32) -> Vec<Verdict> {
        let mut verdicts: Vec<Option<Verdict>> = vec![None; events.len()];
        // A destination that keeps order per person is sent like an ordered one here: a
        // person's later event must not go out in a request after one that failed.
        let ordered = matches!(self.destination.delivery(), Delivery::Ordered) || self.destination.identity_order();
        // Indices (into `events`) still to encode.
        let mut pending: Vec<usize> = (0..events.len()).collect();
        while !pending.is_empty() {
            let batch: Vec<&EventRecord> = pending.iter().map(|&i| &events[i]).collect();
            let Some(encoded) = self.encode(&batch) else {
                // The destination's code panicked on these events: like the pipeline, it is
                // treated as a poison batch; here each event is dead-lettered with the panic.
                for &i in &pending {
                    verdicts[i] = Some(Verdict::Dead("the destination's encode panicked".into()));
                }
                break;
            };
            for (k, reason) in encoded.rejected {
                verdicts[pending[k]] = Some(Verdict::Dead(reason));
            }
            for (k, reason) in encoded.skipped {
                verdicts[pending[k]] = Some(Verdict::Skipped(reason));
            }
            let mut requests = encoded.requests.into_iter();
            let mut stop = false;
            let mut reencode = Vec::new();
            for request in requests.by_ref() {
                let items: Vec<usize> = request.items.iter().map(|&k| pending[k]).collect();
                let outcomes = self.send(request, attempt).await;
                let all_delivered = outcomes.iter().all(|v| *v == Verdict::Delivered);
                for (i, v) in items.into_iter().zip(outcomes) {
                    verdicts[i] = Some(v);
                }
                if ordered {
                    // The state may have changed: what is left is encoded again with it, and
                    // nothing later goes out past a failure (the order must hold).
                    stop = !all_delivered;
                    break;
                }
            }
            for request in requests {
                reencode.extend(request.items.iter().map(|&k| pending[k]));
            }
            if stop {
                let after = self.backoff(attempt);
                for i in reencode {
                    verdicts[i] = Some(Verdict::Retry { after });
                }
                break;
            }
            pending = reencode;
        }
        let after = self.backoff(attempt);
        // An index no request carried (a destination that broke the contract) is retried, not lost.
        verdicts.into_iter().map(|v| v.unwrap_or(Verdict::Retry { after })).collect()
    }

    fn encode(&self, batch: &[&EventRecord]) -> Option<crate::destination::Encoded> {
        // `encode` takes a slice of records; the batch is re-assembled from references by
        // cloning the cheap `Bytes` handles the records hold.
        let owned: Vec<EventRecord> = batch.iter().map(|r| r.shallow_clone()).collect();
        let state = lock(&self.state).clone();
        health::catch(|| self.destination.encode(&owned, &state, Timestamp::now())).ok()
    }

    /// Sends one request and turns the answer into a verdict per item.
    async fn send(&self, request: Request, attempt: u32) -> Vec<Verdict> {
        let n = request.items.len();
        let answer = self.setup.transport.send(request.clone()).await;
        let outcomes = match answer {
            Ok(response) => match health::catch(|| self.destination.classify(&request, &response)) {
                Ok(classified) if classified.outcomes.len() == n => {
                    lock(&self.state).apply(&classified.state);
                    classified.outcomes
                }
                // A destination that broke the contract (one outcome per item): retried, not lost.
                Ok(_) => vec![Outcome::Retry; n],
                Err(panic) => vec![Outcome::Reject(format!("the destination's classify panicked: {panic}")); n],
            },
            Err(error) => match health::catch(|| self.destination.classify_error(&request, &error)) {
                Ok(outcome) => vec![outcome; n],
                Err(panic) => vec![Outcome::Reject(format!("the destination's classify_error panicked: {panic}")); n],
            },
        };
        outcomes.into_iter().map(|o| self.verdict(o, attempt)).collect()
    }

    fn verdict(&self, outcome: Outcome, attempt: u32) -> Verdict {
        match outcome {
            Outcome::Delivered => Verdict::Delivered,
            Outcome::Retry => Verdict::Retry { after: self.backoff(attempt) },
            Outcome::Throttled(d) => Verdict::Retry { after: d.min(self.setup.retry.max_retry_after) },
            Outcome::Reject(reason) => Verdict::Dead(reason),
            Outcome::Misconfigured(reason) => Verdict::Held {
                reason,
                after: crate::pipeline::backoff_ceiling(
                    health::MISCONFIGURED_PROBE_FIRST,
                    health::MISCONFIGURED_PROBE_MAX,
                    attempt,
                ),
            },
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        crate::pipeline::full_jitter(self.setup.retry.base_backoff, self.setup.retry.max_backoff, attempt.max(1))
    }
}

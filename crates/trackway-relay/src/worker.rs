//! `relay work`: pulls each destination's events from its shared consumer, delivers them through
//! the destination's own code ([`trackway::engine::Deliverer`]) and settles each message: ack
//! when delivered, skipped or dead-lettered, nak with the backoff delay when it must be retried.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use trackway::destination::EventRecord;
use trackway::engine::{Deliverer, Verdict};
use trackway_wire::Event;

use crate::config::{WorkerConfig, consumer_name};
use crate::engine::{Engine, Pulled};
use crate::ingest::{CALL_HEADER, DESTINATIONS_HEADER};
use crate::metrics::Metrics;

/// Header of a dead letter: the destination that refused it.
pub const DEAD_DESTINATION_HEADER: &str = "Trackway-Destination";
/// Header of a dead letter: why (the server's status and body, or the relay's reason).
pub const DEAD_REASON_HEADER: &str = "Trackway-Reason";
/// Header of a dead letter: the original message id.
pub const DEAD_MSG_ID_HEADER: &str = "Trackway-Msg-Id";

/// Delivery workers for a set of destinations.
#[derive(Debug)]
pub struct Workers<E> {
    engine: Arc<E>,
    deliverers: Vec<Arc<Deliverer>>,
    config: WorkerConfig,
    /// Dead letters go to `<prefix><destination>`.
    dead_prefix: String,
    metrics: Arc<Metrics>,
    /// Destinations that take a Segment `alias` as a Customer.io merge (`merge_aliases`).
    merge_aliases: std::collections::HashSet<String>,
}

impl<E: Engine> Workers<E> {
    /// Workers delivering through `deliverers`, dead letters appended under `dead_prefix`
    /// followed by the destination's consumer name.
    pub fn new(
        engine: Arc<E>,
        deliverers: Vec<Deliverer>,
        config: WorkerConfig,
        dead_prefix: String,
        metrics: Arc<Metrics>,
    ) -> Self {
        Workers {
            engine,
            deliverers: deliverers.into_iter().map(Arc::new).collect(),
            config,
            dead_prefix,
            metrics,
            merge_aliases: std::collections::HashSet::new(),
        }
    }

    /// The destinations (Customer.io ones) that get a Segment `alias` as a merge of previousId
    /// into userId ([`alias_as_merge`](crate::segment::alias_as_merge)); at the others an alias
    /// is a dead letter.
    #[must_use]
    pub fn merge_aliases(mut self, destinations: impl IntoIterator<Item = String>) -> Self {
        self.merge_aliases.extend(destinations);
        self
    }

    /// Runs until `stop` turns true; the batches in flight are settled before it returns.
    pub async fn run(self, stop: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let mut tasks = Vec::new();
        for d in &this.deliverers {
            for _ in 0..this.config.pullers.max(1) {
                let (this, d, stop) = (this.clone(), d.clone(), stop.clone());
                tasks.push(tokio::spawn(async move { this.lane(d, stop).await }));
            }
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    async fn lane(&self, deliverer: Arc<Deliverer>, mut stop: watch::Receiver<bool>) {
        let name = deliverer.name().to_owned();
        let limits = deliverer.destination().batch_limits();
        let max = self.config.batch.max(1).min(limits.max_events);
        while !*stop.borrow() {
            let pulled = tokio::select! {
                r = self.engine.pull(&name, max, Duration::from_millis(500)) => r,
                _ = stop.changed() => break,
            };
            match pulled {
                Ok(messages) if messages.is_empty() => {}
                Ok(messages) => self.process(&deliverer, messages).await,
                Err(e) => {
                    tracing::warn!(destination = %name, error = %e, "pull failed; retrying in 1 s");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.changed() => break,
                    }
                }
            }
        }
    }

    /// Delivers one pulled batch and settles every message of it.
    async fn process(&self, deliverer: &Deliverer, messages: Vec<E::Message>) {
        let name = deliverer.name();
        let mut records = Vec::new();
        let mut to_deliver = Vec::new();
        for m in messages {
            let meant = m.header(DESTINATIONS_HEADER).is_some_and(|list| list.split(',').any(|d| d == name));
            if !meant {
                self.count("trackway_relay_skipped_total", name);
                self.settle_ack(m).await;
                continue;
            }
            // A Segment call that is no trackway event: an alias becomes a merge where the
            // destination takes it, anything else is a dead letter with the reason.
            let mut merge = None;
            if let Some(call) = m.header(CALL_HEADER) {
                if call == "alias" && self.merge_aliases.contains(name) {
                    match crate::segment::alias_as_merge(m.payload()) {
                        Ok(payload) => merge = Some(Bytes::from(payload)),
                        Err(reason) => {
                            self.dead_letter(name, m, &reason).await;
                            continue;
                        }
                    }
                } else {
                    let reason = format!("Segment `{call}` calls have no equivalent at destination `{name}`");
                    self.dead_letter(name, m, &reason).await;
                    continue;
                }
            }
            let payload = merge.unwrap_or_else(|| Bytes::copy_from_slice(m.payload()));
            let event: Event = match serde_json::from_slice(&payload) {
                Ok(e) => e,
                Err(e) => {
                    self.dead_letter(name, m, &format!("stored event is not valid: {e}")).await;
                    continue;
                }
            };
            if !deliverer.destination().accepts(event.kind) {
                self.count("trackway_relay_skipped_total", name);
                self.settle_ack(m).await;
                continue;
            }
            records.push(EventRecord::new(m.sequence(), event.id, event.timestamp, payload));
            to_deliver.push(m);
        }
        if to_deliver.is_empty() {
            return;
        }
        let attempt = to_deliver.iter().map(Pulled::attempt).max().unwrap_or(1);
        let verdicts = deliverer.deliver(&records, attempt).await;
        let any_delivered = verdicts.contains(&Verdict::Delivered);
        for (m, verdict) in to_deliver.into_iter().zip(verdicts) {
            match verdict {
                Verdict::Delivered => {
                    self.count("trackway_relay_delivered_total", name);
                    self.settle_ack(m).await;
                }
                Verdict::Skipped(_) => {
                    self.count("trackway_relay_skipped_total", name);
                    self.settle_ack(m).await;
                }
                Verdict::Dead(reason) => self.dead_letter(name, m, &reason).await,
                // An event that keeps failing while the others of its batch go through is the
                // problem, not the destination: it is given up on, as the SDK does.
                Verdict::Retry { .. } if any_delivered && m.attempt() >= self.config.max_attempts => {
                    self.dead_letter(name, m, "retries_exhausted").await;
                }
                Verdict::Retry { after } | Verdict::Held { after, .. } => {
                    self.count("trackway_relay_retried_total", name);
                    if let Err(e) = m.nak(after).await {
                        // Not settled: the server hands it out again after the ack wait.
                        tracing::warn!(destination = %name, error = %e, "nak failed");
                    }
                }
                _ => {
                    self.count("trackway_relay_retried_total", name);
                    let _ = m.nak(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn count(&self, metric: &'static str, destination: &str) {
        self.metrics.add(metric, &[("destination", destination)], 1);
    }

    async fn settle_ack(&self, m: E::Message) {
        if let Err(e) = m.ack().await {
            // Not acknowledged: it comes back after the ack wait and is delivered again (a
            // duplicate the destination's message id lets it drop), never lost.
            tracing::warn!(error = %e, "ack failed");
        }
    }

    /// Appends the message to the dead-letter stream with `reason`, then acks it. If the append
    /// fails the message is nak'ed instead: it stays in the log until it can be dead-lettered.
    async fn dead_letter(&self, destination: &str, m: E::Message, reason: &str) {
        let subject = format!("{}{}", self.dead_prefix, consumer_name(destination));
        // Keyed on the stream position: a redelivery after a crash between the append and the
        // ack makes no second dead letter; a requeued copy is a new position.
        let msg_id = format!("dead:{destination}:{}", m.sequence());
        let original = m.header("Nats-Msg-Id").unwrap_or_default().to_owned();
        // Header values are one line.
        let reason_line: String = reason.chars().map(|c| if c.is_control() { ' ' } else { c }).take(2000).collect();
        let headers = [
            (DEAD_DESTINATION_HEADER, destination),
            (DEAD_REASON_HEADER, reason_line.as_str()),
            (DEAD_MSG_ID_HEADER, original.as_str()),
            (DESTINATIONS_HEADER, destination),
        ];
        let mut headers: Vec<(&str, &str)> = headers.to_vec();
        let call = m.header(CALL_HEADER).map(str::to_owned);
        if let Some(call) = &call {
            headers.push((CALL_HEADER, call.as_str()));
        }
        let payload = Bytes::copy_from_slice(m.payload());
        match self.engine.append(&msg_id, &subject, &headers, payload).await {
            Ok(_) => {
                tracing::info!(destination, reason = %reason_line, "dead-lettered");
                self.count("trackway_relay_dead_total", destination);
                self.settle_ack(m).await;
            }
            Err(e) => {
                tracing::warn!(destination, error = %e, "dead letter not stored; retrying later");
                let _ = m.nak(Duration::from_secs(5)).await;
            }
        }
    }
}

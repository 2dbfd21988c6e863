//! `relay work`: pulls each destination's events from its shared consumer, delivers them through
//! the destination's own code ([`trackway::engine::Deliverer`]) and settles each message: ack
//! when delivered, skipped or dead-lettered, nak with the backoff delay when it must be retried.
//!
//! A destination that keeps order per person
//! ([`identity_order`](trackway::destination::Destination::identity_order)) is pulled partition
//! by partition ([`Engine::pull_partition`]: one worker process at a time per partition), and
//! within the worker a person's later event is not sent while an earlier one is unacked: a
//! retried event is not nak'ed (the log would hand out the next one meanwhile) but held here,
//! with the person's later events behind it, each kept from redelivery by "in progress" acks,
//! and sent again after its backoff. Other people's events go on meanwhile.
//!
//! Before each batch the worker reads the destination's shared health ([`crate::state`]): while
//! it is misconfigured, only the worker holding the probe sends, one event.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;
use trackway::destination::EventRecord;
use trackway::engine::{Deliverer, Verdict};
use trackway_wire::Event;

use crate::config::{WorkerConfig, consumer_name};
use crate::engine::{Engine, Pulled};
use crate::ingest::{CALL_HEADER, DESTINATIONS_HEADER};
use crate::metrics::Metrics;
use crate::state::{self, Gate, Tokens};

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
    /// Partitions of the events stream (`[relay.nats] partitions`).
    partitions: u32,
    /// Destinations that take a Segment `alias` as a Customer.io merge (`merge_aliases`).
    merge_aliases: std::collections::HashSet<String>,
    /// This process's name in the shared health (who holds a probe).
    worker_id: String,
    /// Per destination, until when it is taken as healthy without reading the shared health
    /// again: every lane of a destination in this process shares one read per interval.
    healthy_until: std::sync::Mutex<std::collections::HashMap<String, Instant>>,
}

/// How long a healthy destination's shared health is not read again (a destination that just
/// failed may get this much more from this process before the gate closes).
const HEALTHY_RECHECK: Duration = Duration::from_millis(250);

/// A message held by an ordered lane until it is delivered.
struct HeldMessage<M> {
    message: M,
    record: EventRecord,
    /// The person (`None`: no identity, no order to keep).
    identity: Option<String>,
    /// Attempts made here (the log's count stays at 1 while it is held, never nak'ed).
    attempt: u32,
    /// Not sent again before this.
    not_before: Instant,
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
        let worker_id = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
        );
        Workers {
            engine,
            deliverers: deliverers.into_iter().map(Arc::new).collect(),
            config,
            dead_prefix,
            metrics,
            partitions: crate::config::NatsConfig::default().partitions,
            merge_aliases: std::collections::HashSet::new(),
            worker_id,
            healthy_until: std::sync::Mutex::default(),
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

    /// Pulls ordered destinations' `partitions` partitions (default `[relay.nats] partitions`'
    /// default, 16; it must match the ingest's).
    #[must_use]
    pub fn partitions(mut self, partitions: u32) -> Self {
        self.partitions = partitions.max(1);
        self
    }

    /// Runs until `stop` turns true; the batches in flight are settled before it returns.
    pub async fn run(self, stop: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let mut tasks = Vec::new();
        for d in &this.deliverers {
            if d.destination().identity_order() {
                for p in 0..this.partitions {
                    let (this, d, stop) = (this.clone(), d.clone(), stop.clone());
                    tasks.push(tokio::spawn(async move { this.ordered_lane(d, p, stop).await }));
                }
                continue;
            }
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
        let mut tokens = Tokens::default();
        while !*stop.borrow() {
            let pulled = tokio::select! {
                r = self.engine.pull(&name, max, Duration::from_millis(500)) => r,
                _ = stop.changed() => break,
            };
            match pulled {
                Ok(messages) if messages.is_empty() => {}
                Ok(messages) => self.process(&deliverer, messages, &mut tokens).await,
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

    /// Settles a pulled message that is not to be delivered (not meant for this destination,
    /// a call it has no equivalent for, a stored event that does not read back, a type it does
    /// not take); returns the others with their record to deliver.
    async fn sort(&self, deliverer: &Deliverer, m: E::Message) -> Option<(E::Message, EventRecord)> {
        let name = deliverer.name();
        let meant = m.header(DESTINATIONS_HEADER).is_some_and(|list| list.split(',').any(|d| d == name));
        if !meant {
            self.count("trackway_relay_skipped_total", name);
            self.settle_ack(m).await;
            return None;
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
                        return None;
                    }
                }
            } else {
                let reason = format!("Segment `{call}` calls have no equivalent at destination `{name}`");
                self.dead_letter(name, m, &reason).await;
                return None;
            }
        }
        let payload = merge.unwrap_or_else(|| Bytes::copy_from_slice(m.payload()));
        let event: Event = match serde_json::from_slice(&payload) {
            Ok(e) => e,
            Err(e) => {
                self.dead_letter(name, m, &format!("stored event is not valid: {e}")).await;
                return None;
            }
        };
        if !deliverer.destination().accepts(event.kind) {
            self.count("trackway_relay_skipped_total", name);
            self.settle_ack(m).await;
            return None;
        }
        let record = EventRecord::new(m.sequence(), event.id, event.timestamp, payload);
        Some((m, record))
    }

    /// Delivers through `deliverer` after the shared health allows it, keeping the shared
    /// tokens in step: `None` when the gate is closed for this long (nothing was sent), else
    /// the verdicts of the events sent (the first `n`, all but one only when probing).
    async fn deliver_gated(
        &self,
        deliverer: &Deliverer,
        records: &[EventRecord],
        attempt: u32,
        tokens: &mut Tokens,
    ) -> Result<Vec<Verdict>, Duration> {
        let name = deliverer.name();
        let known_healthy = crate::lock(&self.healthy_until).get(name).is_some_and(|t| Instant::now() < *t);
        let gate =
            if known_healthy { Gate::Open } else { state::gate(&*self.engine, deliverer, &self.worker_id).await };
        if gate == Gate::Open && !known_healthy {
            crate::lock(&self.healthy_until).insert(name.to_owned(), Instant::now() + HEALTHY_RECHECK);
        }
        let records = match gate {
            Gate::Closed(wait) => return Err(wait),
            Gate::Probe => {
                tracing::info!(destination = deliverer.name(), "probing a misconfigured destination with one event");
                &records[..records.len().min(1)]
            }
            Gate::Open => records,
        };
        tokens.load(&*self.engine, deliverer).await;
        let verdicts = deliverer.deliver(records, attempt).await;
        tokens.store(&*self.engine, deliverer).await;
        if let Some(Verdict::Held { reason, .. }) = verdicts.iter().find(|v| matches!(v, Verdict::Held { .. })) {
            if !verdicts.contains(&Verdict::Delivered) {
                crate::lock(&self.healthy_until).remove(name);
                state::record_failure(&*self.engine, deliverer, &self.worker_id, reason).await;
            }
        } else if gate == Gate::Probe && verdicts.contains(&Verdict::Delivered) {
            state::record_success(&*self.engine, deliverer).await;
        }
        Ok(verdicts)
    }

    /// Delivers one pulled batch and settles every message of it.
    async fn process(&self, deliverer: &Deliverer, messages: Vec<E::Message>, tokens: &mut Tokens) {
        let name = deliverer.name();
        let mut records = Vec::new();
        let mut to_deliver = Vec::new();
        for m in messages {
            if let Some((m, record)) = self.sort(deliverer, m).await {
                records.push(record);
                to_deliver.push(m);
            }
        }
        if to_deliver.is_empty() {
            return;
        }
        let attempt = to_deliver.iter().map(Pulled::attempt).max().unwrap_or(1);
        let verdicts = match self.deliver_gated(deliverer, &records, attempt, tokens).await {
            Ok(v) => v,
            Err(wait) => {
                // Held back by the shared health: handed out again once the probe is due.
                for m in to_deliver {
                    let _ = m.nak(wait.max(Duration::from_millis(200))).await;
                }
                return;
            }
        };
        let any_delivered = verdicts.contains(&Verdict::Delivered);
        let mut to_ack = Vec::with_capacity(verdicts.len());
        let mut to_deliver = to_deliver.into_iter();
        for (m, verdict) in to_deliver.by_ref().zip(verdicts) {
            match verdict {
                Verdict::Delivered => {
                    self.count("trackway_relay_delivered_total", name);
                    to_ack.push(m);
                }
                Verdict::Skipped(_) => {
                    self.count("trackway_relay_skipped_total", name);
                    to_ack.push(m);
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
        // Not sent (the probe took only the first): out again at once, to go through the gate.
        for m in to_deliver {
            let _ = m.nak(Duration::ZERO).await;
        }
        self.settle_acks(to_ack).await;
    }

    /// One partition of an ordered destination: pulls, holds each person's events in order and
    /// sends a person's next event only once the earlier ones are settled.
    async fn ordered_lane(&self, deliverer: Arc<Deliverer>, partition: u32, mut stop: watch::Receiver<bool>) {
        let name = deliverer.name().to_owned();
        let max = self.config.batch.max(1).min(deliverer.destination().batch_limits().max_events);
        // Held messages by stream position: a person's events come out in the order stored.
        let mut held: BTreeMap<u64, HeldMessage<E::Message>> = BTreeMap::new();
        let mut tokens = Tokens::default();
        let mut gate_until: Option<Instant> = None;
        // Half the ack wait: held messages are marked in progress well before it runs out.
        let progress_every = Duration::from_millis(self.config.ack_wait_secs.max(1) * 500);
        let mut last_progress = Instant::now();
        // When messages last came: a lane that starts getting messages after a pause may have
        // just been handed the partition by a worker that died with messages unacked.
        let mut last_received: Option<Instant> = None;
        // Until when to wait for another worker's unsettled messages of this partition.
        let mut takeover: Option<Instant> = None;
        let takeover_wait = Duration::from_secs(self.config.ack_wait_secs.max(1)) + Duration::from_secs(1);
        while !*stop.borrow() {
            let now = Instant::now();
            let next_ready = held.values().map(|h| h.not_before).min();
            let wait = match next_ready {
                None => Duration::from_millis(500),
                Some(t) => {
                    t.saturating_duration_since(now).clamp(Duration::from_millis(10), Duration::from_millis(200))
                }
            };
            // While the gate is closed or a takeover waits, nothing is due sooner than the next
            // look at the shared health or the consumer: no need to spin.
            let wait =
                if gate_until.is_some() || takeover.is_some() { wait.max(Duration::from_millis(100)) } else { wait };
            let room = max.saturating_mul(2).saturating_sub(held.len()).max(1);
            let pulled = tokio::select! {
                r = self.engine.pull_partition(&name, partition, room, wait) => r,
                _ = stop.changed() => break,
            };
            match pulled {
                Ok(messages) => {
                    if !messages.is_empty() {
                        if held.is_empty() && last_received.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                            takeover = Some(Instant::now() + takeover_wait);
                        }
                        last_received = Some(Instant::now());
                    }
                    for m in messages {
                        if let Some((m, record)) = self.sort(&deliverer, m).await {
                            let identity = crate::partition::identity_of(m.payload());
                            let seq = m.sequence();
                            // A redelivery of a message held here (its ack wait ran out) replaces
                            // the old copy: the same event, its newer handle.
                            let attempt = held.get(&seq).map_or(1, |h| h.attempt);
                            let not_before = held.get(&seq).map_or(Instant::now(), |h| h.not_before);
                            held.insert(seq, HeldMessage { message: m, record, identity, attempt, not_before });
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(destination = %name, partition, error = %e, "partition pull failed");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = stop.changed() => break,
                    }
                }
            }
            if last_progress.elapsed() >= progress_every {
                for h in held.values() {
                    let _ = h.message.in_progress().await;
                }
                last_progress = Instant::now();
            }
            if gate_until.is_some_and(|t| Instant::now() < t) || held.is_empty() {
                continue;
            }
            if let Some(until) = takeover {
                // Messages another worker was handed and did not settle come back here after
                // the ack wait: until then, a person's later event must not go out before them.
                let theirs = match self.engine.partition_unsettled(&name, partition).await {
                    Ok(unsettled) => unsettled > held.len(),
                    Err(_) => true,
                };
                if theirs && Instant::now() < until {
                    continue;
                }
                takeover = None;
            }
            gate_until = None;
            self.send_held(&deliverer, &mut held, max, &mut tokens, &mut gate_until).await;
        }
    }

    /// Sends what may go now of an ordered lane's held messages: for each person whose earliest
    /// held event is due, that event and the person's later ones (up to `max` in all); settles
    /// what is done, and holds the rest with the person blocked for the backoff.
    async fn send_held(
        &self,
        deliverer: &Deliverer,
        held: &mut BTreeMap<u64, HeldMessage<E::Message>>,
        max: usize,
        tokens: &mut Tokens,
        gate_until: &mut Option<Instant>,
    ) {
        let name = deliverer.name();
        let now = Instant::now();
        let mut blocked: HashSet<&str> = HashSet::new();
        let mut chosen: Vec<u64> = Vec::new();
        for (seq, h) in held.iter() {
            if chosen.len() >= max {
                break;
            }
            if let Some(id) = &h.identity {
                if blocked.contains(id.as_str()) {
                    continue;
                }
                if h.not_before > now {
                    // This person's earliest event waits: so do all of its later ones.
                    blocked.insert(id.as_str());
                    continue;
                }
            } else if h.not_before > now {
                continue;
            }
            chosen.push(*seq);
        }
        if chosen.is_empty() {
            return;
        }
        let records: Vec<EventRecord> = chosen.iter().map(|s| held[s].record.shallow_clone()).collect();
        let attempt = chosen.iter().map(|s| held[s].attempt).max().unwrap_or(1);
        let verdicts = match self.deliver_gated(deliverer, &records, attempt, tokens).await {
            Ok(v) => v,
            Err(wait) => {
                *gate_until = Some(Instant::now() + wait);
                return;
            }
        };
        let any_delivered = verdicts.contains(&Verdict::Delivered);
        // People with an event not settled in this batch: their later events of the batch are
        // held too, whatever their verdict says (for a destination whose answers are per event,
        // a later one can only have been sent in a request after the failed one's).
        let mut failed: HashSet<String> = HashSet::new();
        let mut to_ack = Vec::with_capacity(verdicts.len());
        for (seq, verdict) in chosen.iter().copied().zip(verdicts) {
            let identity = held[&seq].identity.clone();
            match verdict {
                Verdict::Delivered | Verdict::Skipped(_) | Verdict::Dead(_) => {
                    if identity.as_ref().is_some_and(|id| failed.contains(id)) {
                        tracing::warn!(destination = name, "a person's later event went through before an earlier one");
                    }
                    let Some(h) = held.remove(&seq) else { continue };
                    match verdict {
                        Verdict::Delivered => {
                            self.count("trackway_relay_delivered_total", name);
                            to_ack.push(h.message);
                        }
                        Verdict::Dead(reason) => self.dead_letter(name, h.message, &reason).await,
                        _ => {
                            self.count("trackway_relay_skipped_total", name);
                            to_ack.push(h.message);
                        }
                    }
                }
                Verdict::Retry { .. } if any_delivered && held[&seq].attempt >= self.config.max_attempts => {
                    if let Some(h) = held.remove(&seq) {
                        self.dead_letter(name, h.message, "retries_exhausted").await;
                    }
                }
                Verdict::Retry { after } | Verdict::Held { after, .. } => {
                    self.count("trackway_relay_retried_total", name);
                    if let Some(id) = identity {
                        failed.insert(id);
                    }
                    if let Some(h) = held.get_mut(&seq) {
                        h.attempt = h.attempt.saturating_add(1);
                        h.not_before = Instant::now() + after;
                    }
                }
                _ => {
                    if let Some(h) = held.get_mut(&seq) {
                        h.not_before = Instant::now() + Duration::from_secs(1);
                    }
                }
            }
        }
        self.settle_acks(to_ack).await;
        // What was not sent (a probe takes only the first) stays held, due at once: it goes
        // through the gate with the next batch.
    }

    fn count(&self, metric: &'static str, destination: &str) {
        self.metrics.add(metric, &[("destination", destination)], 1);
    }

    /// Acks `messages` together: each double ack waits for the server's answer, so one after
    /// the other they cost a round trip each (one worker drained ~15 000 events/s that way,
    /// measured with `benches/relay.rs`). Every ack is still answered before the next pull.
    async fn settle_acks(&self, messages: Vec<E::Message>) {
        futures_util::future::join_all(messages.into_iter().map(|m| self.settle_ack(m))).await;
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

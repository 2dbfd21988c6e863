//! The worker's answers: applying a server's verdict per event (deliver, retry, dead-letter),
//! committing what a write-behind store staged, and letting go of events a store dropped.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::task::Id;
use trackway_wire::Timestamp;

use super::unwritten::drop_reason;
use super::{Answer, Dropped, Worker, state_prefix};
use crate::destination::{Classified, Outcome, TransportError, TransportErrorKind};
use crate::pipeline::backoff::full_jitter;
use crate::pipeline::health::{LastError, catch, panic_message};
use crate::pipeline::lane::Group;
use crate::pipeline::lock;
use crate::policy::{COMMIT_PART, STORE_ERROR_PAUSE};
use crate::stats::bump;
use crate::store::{DeadLetterReason, Evicted, StateChange, StoreError, routes};

impl Worker {
    /// The store could not read or record these events: keep them as a retry group, and pause
    /// the destination briefly.
    pub(super) fn retry_later(&mut self, i: usize, seqs: Vec<u64>, failures: u32, now: Duration) {
        let lane = &mut self.lanes[i];
        let due = now + STORE_ERROR_PAUSE;
        lane.paused_until = Some(due);
        let epoch = lane.delivered;
        lane.groups.push(Group { seqs, due, failures, epoch, halved: false });
    }

    /// Commits (part of) what a write-behind store staged, then answers the barriers it covers.
    pub(super) fn commit(&mut self) {
        self.commit_part(COMMIT_PART);
    }

    /// The store's writer finished a round: apply its outcome (barriers, failures) and hand it
    /// the acks since. Staged events go too only when their commit is due (or the staging is
    /// pressed, or a barrier waits): events delivered within `commit_delay` are never written.
    pub(super) fn written(&mut self) {
        let due = self.commit_at.is_some_and(|t| Instant::now() >= t)
            || self.staging_pressed()
            || !self.barriers.is_empty()
            || self.shutdown.is_some();
        if due {
            self.commit();
        } else {
            let at = self.commit_at;
            self.commit_part(0);
            self.commit_at = at;
        }
    }

    fn commit_part(&mut self, max_events: usize) {
        self.commit_at = None;
        if !self.store.writes_behind() {
            // `append` committed and counted these already: counting `next_seq - committed_below`
            // here would count every event twice (the shutdown commit did).
            self.committed_below = self.next_seq;
            return;
        }
        let committed = self.store.commit(max_events);
        self.shared.room.set(self.store.refuses_new());
        let lost = committed.lost.len() as u64;
        let below = committed.staged_from.unwrap_or(self.next_seq).max(self.committed_below);
        bump(&self.shared.counters.persisted, (below - self.committed_below).saturating_sub(lost));
        self.committed_below = below;
        if committed.more {
            // More to hand over: the next part goes after the worker has drained and dispatched.
            // (When the writer holds all it takes, its answer wakes the worker: `wait`.)
            self.commit_at = Some(Instant::now());
        }
        if !committed.evicted.is_empty() {
            self.forget_dropped(&committed.evicted, Dropped::StoreFull);
        }
        let failure = committed.error.map(|e| {
            let reason = if matches!(e, StoreError::DiskFull(_)) { Dropped::DiskFull } else { Dropped::StoreError };
            if !self.store_failed {
                tracing::error!(error = %e, "trackway: could not commit events to the store; dropping them (counted; logged once)");
                self.store_failed = true;
            }
            (format!("{lost} events could not be committed: {e}"), reason)
        });
        if let Some((_, reason)) = &failure {
            self.write_failed(&committed.lost, *reason);
        }
        self.answer_barriers(failure.map(|(why, _)| why));
    }

    /// Answers the persist barriers that can be. A `failure` fails every barrier waiting; a
    /// barrier is answered once every event before it is committed (or, failed, at once),
    /// and none of them waits for the answer that decides a failed write (`unwritten`), so the
    /// counts a caller reads after it add up.
    pub(super) fn answer_barriers(&mut self, failure: Option<String>) {
        let unwritten = self.unwritten.lowest();
        let committed_below = self.committed_below;
        let mut done = Vec::new();
        for mut barrier in std::mem::take(&mut self.barriers) {
            if let Some(why) = &failure {
                barrier.failed.get_or_insert_with(|| why.clone());
            }
            let covered = barrier.failed.is_some() || barrier.upto.is_none_or(|u| u < committed_below);
            let decided = unwritten.is_none_or(|l| barrier.upto.is_none_or(|u| u < l));
            if covered && decided { done.push(barrier) } else { self.barriers.push(barrier) }
        }
        for barrier in done {
            match barrier.failed {
                Some(why) => barrier.reply.fail(why),
                None => barrier.reply.send(),
            }
        }
    }

    /// Commits everything staged, and waits until it is written (at shutdown).
    pub(super) fn commit_all(&mut self) {
        loop {
            self.commit();
            if !self.store.writing() && self.commit_at.is_none() {
                break;
            }
            if !self.store.writing() {
                continue;
            }
            self.store.wait_written(Duration::from_millis(100));
        }
    }

    /// The store dropped these events: stop tracking them, and count them under `reason`.
    pub(super) fn forget_dropped(&mut self, evicted: &[Evicted], reason: Dropped) {
        self.count_dropped(reason, evicted.len() as u64);
        self.forget_routes(evicted, reason);
    }

    /// Counts `n` events dropped for `reason` (once per event, whatever its destinations).
    pub(super) fn count_dropped(&mut self, reason: Dropped, n: u64) {
        let counters = &self.shared.counters;
        let counter = match reason {
            Dropped::Purged => &counters.purged,
            Dropped::StoreFull => &counters.store_full,
            Dropped::Corrupt => &counters.store_corrupt,
            Dropped::DiskFull => &counters.disk_full,
            Dropped::StoreError => &counters.store_error,
        };
        bump(counter, n);
        if reason == Dropped::StoreFull && n > 0 && !self.warned_store_full {
            tracing::warn!(
                "trackway: the store is over its size bound; dropping the oldest events (counted as store_full; logged once)"
            );
            self.warned_store_full = true;
        }
    }

    /// Stops tracking the events on each of their routes (their lanes, pending counts,
    /// receipts and streams).
    pub(super) fn forget_routes(&mut self, evicted: &[Evicted], reason: Dropped) {
        let report = self.receipts.on().then(|| self.shared.clock.now());
        for ev in evicted {
            for r in routes(ev.routes) {
                let Some(lane) = self.lanes.get_mut(r) else { continue };
                if let Some(at) = report {
                    let outcome = crate::receipts::Outcome::Dropped(drop_reason(reason));
                    self.receipts.decided(r, lane.dest.name(), ev.seq, outcome, at);
                }
                if ev.seq >= lane.next_fresh {
                    // Lanes count full events; the store reports heads.
                    lane.forget_fresh(ev.bytes + self.context_len as u64);
                } else {
                    lane.forget_sent(ev.seq);
                }
                self.shared.counters.destinations[r].pending.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Lets go of the events the store found damaged when reading them back (logged there).
    pub(super) fn forget_corrupt(&mut self) {
        let corrupt = self.store.take_corrupt();
        if !corrupt.is_empty() {
            self.forget_dropped(&corrupt, Dropped::Corrupt);
        }
    }

    pub(super) fn completed(&mut self, joined: Result<(Id, Answer), tokio::task::JoinError>) {
        match joined {
            Ok((id, answer)) => self.complete(id, answer),
            Err(e) => {
                // The task ran the request: the server may have it.
                let id = e.id();
                let why = if e.is_panic() {
                    format!("the request task panicked: {}", panic_message(&*e.into_panic()))
                } else {
                    "the request task was cancelled".to_owned()
                };
                self.complete(id, Err(TransportError::new(TransportErrorKind::MaybeSent, why)));
            }
        }
    }

    /// Applies the answer to one request.
    pub(super) fn complete(&mut self, id: Id, answer: Answer) {
        let Some(flight) = self.in_flight.remove(&id) else { return };
        let i = flight.lane;
        if self.answered_unwritten.len() <= i {
            self.answered_unwritten.resize(i + 1, 0);
        }
        self.answered_unwritten[i] += 1;
        let now = self.shared.clock.elapsed();
        let now_ts = self.shared.clock.now();
        self.lanes[i].in_flight = self.lanes[i].in_flight.saturating_sub(1);
        let n = flight.seqs.len();
        let dest = self.lanes[i].dest.clone();
        let classified = match &answer {
            Ok(response) => catch(|| dest.classify(&flight.request, response)),
            // A request without an answer: one outcome for all its events.
            Err(error) => catch(|| dest.classify_error(&flight.request, error)).map(|o| Classified::new(vec![o; n])),
        };
        let classified = match classified {
            Ok(classified) => classified,
            Err(message) => {
                let what = if answer.is_ok() { "classify" } else { "classify_error" };
                let seqs: Vec<u64> =
                    flight.seqs.iter().copied().filter(|&seq| !self.unwritten_answered(i, seq, false)).collect();
                let (purged, seqs): (Vec<u64>, Vec<u64>) =
                    seqs.into_iter().partition(|&seq| self.was_purged_in_flight(i, seq));
                self.remove_purged(i, &purged);
                if !seqs.is_empty() {
                    self.destination_panicked(i, seqs, flight.failures, what, &message);
                }
                return;
            }
        };
        let probe = classified.probe;
        let counters = &self.shared.counters.destinations[i];
        bump(&counters.dropped_timestamps, classified.dropped_timestamps);
        bump(&counters.dropped_fields, classified.dropped_fields);
        let (mut outcomes, state) = (classified.outcomes, classified.state);
        self.lanes[i].health.classified();
        if !state.is_empty() {
            self.lanes[i].state.apply(&state);
            let prefix = state_prefix(self.lanes[i].dest.name());
            let changes: Vec<StateChange> =
                state.iter().map(|(k, v)| StateChange { key: format!("{prefix}{k}"), value: v.clone() }).collect();
            if let Err(e) = self.store.set_state(&changes) {
                tracing::warn!(error = %e, "trackway: could not store destination state");
            }
            if self.store.writes_behind() {
                self.commit_at.get_or_insert(Instant::now() + self.settings.commit_delay);
            }
        }
        // A classifier that returns too few outcomes leaves the rest to be retried.
        outcomes.resize(n, Outcome::Retry);

        let shared = self.shared.clone();
        let counters = &shared.counters.destinations[i];
        let mut delivered = Vec::new();
        let mut letters = Vec::new();
        let mut retry = Vec::new();
        // Held for a configuration error: not the events' fault, so no strike, no dead letter.
        let mut held = Vec::new();
        let mut misconfigured: Option<String> = None;
        let mut pause: Option<Duration> = None;
        // Events a purge found on the wire: delivered is delivered; otherwise they go now.
        let mut purged = Vec::new();
        for (&seq, outcome) in flight.seqs.iter().zip(outcomes) {
            if self.unwritten_answered(i, seq, matches!(outcome, Outcome::Delivered)) {
                continue;
            }
            if self.was_purged_in_flight(i, seq) && !matches!(outcome, Outcome::Delivered) {
                purged.push(seq);
                continue;
            }
            match outcome {
                Outcome::Delivered => delivered.push(seq),
                Outcome::Reject(reason) => letters.push((seq, DeadLetterReason::Rejected, reason)),
                Outcome::Retry => retry.push(seq),
                Outcome::Throttled(d) => {
                    pause = Some(pause.map_or(d, |p| p.max(d)));
                    retry.push(seq);
                }
                Outcome::Misconfigured(why) => {
                    misconfigured.get_or_insert(why);
                    held.push(seq);
                }
            }
        }
        self.remove_purged(i, &purged);
        // The server took or judged events: the destination works. Not for a transport error
        // (whatever its classification) nor an answer that says the configuration is wrong.
        let server_answered_ok =
            answer.is_ok() && misconfigured.is_none() && (!delivered.is_empty() || !letters.is_empty());
        if probe && !server_answered_ok && pause.is_none() && misconfigured.is_none() {
            // The answer told the destination how to send these events instead (e.g. Umami's
            // /api/send after a 404 on /api/batch): no failure, no backoff, no strike.
            bump(&counters.probes, 1);
            let lane = &mut self.lanes[i];
            let due = now;
            lane.groups.push(Group {
                seqs: retry,
                due,
                failures: flight.failures,
                epoch: lane.delivered,
                halved: false,
            });
            return;
        }
        if !delivered.is_empty() {
            match self.store.ack(i, &delivered) {
                // Counted as the store saw them: an event evicted meanwhile was already uncounted.
                Ok(released) => {
                    bump(&counters.delivered, released);
                    counters.pending.fetch_sub(released, Ordering::Relaxed);
                }
                Err(e) => {
                    // They stay pending in the store; send them again later (at least once).
                    tracing::error!(error = %e, "trackway: could not record deliveries");
                    self.retry_later(i, delivered.clone(), 0, now);
                    delivered.clear();
                }
            }
            if self.receipts.on() {
                let name = self.lanes[i].dest.name();
                self.receipts.decided_all(i, name, &delivered, crate::receipts::Outcome::Delivered, now_ts);
            }
            let lane = &mut self.lanes[i];
            lane.delivered += delivered.len() as u64;
            // Retry bookkeeping exists only for events that failed once: none, nearly always.
            if !lane.items.is_empty() {
                for seq in &delivered {
                    lane.items.remove(seq);
                }
            }
        }
        if !letters.is_empty() {
            if let Err(e) = &answer {
                tracing::debug!(error = %e, "rejection without a response (classify_error)");
            }
            let status = answer.as_ref().ok().map(|r| r.status.as_u16());
            self.dead_letter_with(i, letters, now_ts, status);
        }
        let lane = &mut self.lanes[i];
        match (&misconfigured, &answer) {
            (Some(why), answer) => {
                let error = LastError::misconfigured(answer.as_ref().ok(), why.clone(), now_ts);
                let wait = lane.health.misconfigured(error, flight.sent_at, now);
                // Nothing goes out before the probe is due: one request per interval.
                let probe_at = lane.paused_until.map_or(now + wait, |p| p.max(now + wait));
                lane.paused_until = Some(probe_at);
                if !held.is_empty() {
                    // The group's failures stay as they were: a held group is not split.
                    let epoch = lane.delivered;
                    lane.groups.push(Group {
                        seqs: held,
                        due: probe_at,
                        failures: flight.failures,
                        epoch,
                        halved: false,
                    });
                }
            }
            (None, _) if server_answered_ok => lane.health.worked(now_ts),
            (None, Ok(response)) => lane.health.failed(LastError::answer(response, now_ts), now),
            (None, Err(error)) => lane.health.failed(LastError::transport(error, now_ts), now),
        }
        if let Some(health) = lane.health.take_changed() {
            *lock(&counters.health) = health;
        }
        let lane = &mut self.lanes[i];
        if server_answered_ok {
            lane.failures = 0;
        } else {
            lane.failures = lane.failures.saturating_add(1);
            bump(&counters.failed_requests, 1);
            if let Err(e) = &answer {
                tracing::debug!(destination = lane.dest.name(), error = %e, "trackway: request failed");
            }
        }
        if let Some(d) = pause {
            let d = d.min(lane.retry.max_retry_after);
            lane.paused_until = Some(lane.paused_until.map_or(now + d, |p| p.max(now + d)));
        }
        if retry.is_empty() {
            return;
        }
        bump(&counters.retried, retry.len() as u64);

        // Poison detection: a strike for each event that failed while the destination worked,
        // either in this very response or since the event's previous failure.
        let max_attempts = lane.retry.max_attempts;
        let mut exhausted = Vec::new();
        let mut keep = Vec::with_capacity(retry.len());
        for seq in retry {
            let known = lane.items.contains_key(&seq);
            let item = lane.items.entry(seq).or_default();
            let worked_since = known && lane.delivered > item.epoch;
            // No strike when the server asked to wait (429, 503 with Retry-After): rate limits
            // say nothing about the event.
            if pause.is_none() && (server_answered_ok || (n == 1 && worked_since)) {
                item.strikes += 1;
            }
            item.epoch = lane.delivered;
            if item.strikes >= max_attempts {
                lane.items.remove(&seq);
                exhausted.push((
                    seq,
                    DeadLetterReason::RetriesExhausted,
                    format!("failed {max_attempts} times while other events were delivered"),
                ));
            } else {
                keep.push(seq);
            }
        }
        if !keep.is_empty() {
            // A throttled batch (the server asked to wait) did nothing wrong: it goes out whole
            // after the pause, not split in halves like a batch that may hold a poison event.
            let failures = if pause.is_some() { flight.failures } else { flight.failures + 1 };
            let retry_policy = &lane.retry;
            let backoff = full_jitter(retry_policy.base_backoff, retry_policy.max_backoff, failures.max(lane.failures));
            let due = lane.paused_until.filter(|p| *p > now).unwrap_or(now + backoff);
            lane.groups.push(Group { seqs: keep, due, failures, epoch: lane.delivered, halved: false });
        }
        if !exhausted.is_empty() {
            self.dead_letter(i, exhausted, now_ts);
        }
    }

    /// Destination code (`what`) panicked on the events `seqs` (`failures`: of their group so
    /// far). Handled like a poison batch: several events are split in halves and tried again at
    /// once; a single event is dead-lettered, and after `STOP_AFTER_PANICS` of those in a row
    /// the destination stops (its events stay pending). Other destinations go on.
    pub(super) fn destination_panicked(
        &mut self,
        i: usize,
        mut seqs: Vec<u64>,
        failures: u32,
        what: &str,
        message: &str,
    ) {
        let now = self.shared.clock.elapsed();
        let now_ts = self.shared.clock.now();
        let lane = &mut self.lanes[i];
        let alone = seqs.len() == 1;
        lane.health.panicked(LastError::panicked(what, message, now_ts), alone);
        if let Some(health) = lane.health.take_changed() {
            *lock(&self.shared.counters.destinations[i].health) = health;
        }
        if alone {
            let letters = seqs
                .into_iter()
                .map(|seq| (seq, DeadLetterReason::Rejected, format!("destination panicked: {message}")));
            self.dead_letter(i, letters.collect(), now_ts);
            return;
        }
        tracing::debug!(
            destination = lane.dest.name(),
            events = seqs.len(),
            "trackway: {what} panicked on a batch; splitting it"
        );
        let epoch = lane.delivered;
        let second = seqs.split_off(seqs.len() / 2);
        for half in [seqs, second] {
            if !half.is_empty() {
                // Halved already: each half is split again only if it panics again.
                lane.groups.push(Group { seqs: half, due: now, failures, epoch, halved: true });
            }
        }
    }

    /// Events the destination has nothing to send for: done (acked) without a request, counted
    /// as `skipped`.
    pub(super) fn skip(&mut self, i: usize, seqs: Vec<u64>) {
        let counters = &self.shared.counters.destinations[i];
        match self.store.ack(i, &seqs) {
            Ok(released) => {
                bump(&counters.skipped, released);
                counters.pending.fetch_sub(released, Ordering::Relaxed);
                if self.receipts.on() {
                    let (name, at) = (self.lanes[i].dest.name(), self.shared.clock.now());
                    self.receipts.decided_all(i, name, &seqs, crate::receipts::Outcome::Skipped, at);
                }
                let lane = &mut self.lanes[i];
                for seq in &seqs {
                    lane.items.remove(seq);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "trackway: could not record skipped events");
                let now = self.shared.clock.elapsed();
                self.retry_later(i, seqs, 0, now);
            }
        }
    }

    pub(super) fn dead_letter(&mut self, i: usize, letters: Vec<(u64, DeadLetterReason, String)>, at: Timestamp) {
        self.dead_letter_with(i, letters, at, None);
    }

    /// [`dead_letter`](Self::dead_letter), for letters of a server's answer with this `status`
    /// (the outcome stream reports it).
    pub(super) fn dead_letter_with(
        &mut self,
        i: usize,
        letters: Vec<(u64, DeadLetterReason, String)>,
        at: Timestamp,
        status: Option<u16>,
    ) {
        let moved = match self.store.dead_letter(i, &letters, at) {
            Ok(moved) => moved,
            Err(e) => {
                // They stay pending in the store: try them again later rather than forget them.
                tracing::error!(error = %e, "trackway: could not store dead letters");
                let now = self.shared.clock.elapsed();
                self.retry_later(i, letters.iter().map(|(seq, _, _)| *seq).collect(), 0, now);
                return;
            }
        };
        let counters = &self.shared.counters.destinations[i];
        let lane = &mut self.lanes[i];
        let name = lane.dest.name();
        for (seq, reason, detail) in &letters {
            lane.items.remove(seq);
            let counter = match reason {
                DeadLetterReason::Rejected => &counters.rejected,
                DeadLetterReason::RetriesExhausted => &counters.retries_exhausted,
                DeadLetterReason::Expired => &counters.expired,
            };
            bump(counter, 1);
            tracing::warn!(destination = name, reason = %reason, detail = %detail, "trackway: event dead-lettered");
        }
        if self.receipts.on() {
            for (seq, reason, detail) in letters {
                let detail = detail.clone();
                let outcome = match reason {
                    DeadLetterReason::Rejected => crate::receipts::Outcome::Rejected { status, detail },
                    DeadLetterReason::RetriesExhausted => crate::receipts::Outcome::RetriesExhausted { detail },
                    DeadLetterReason::Expired => crate::receipts::Outcome::Expired { detail },
                };
                self.receipts.decided(i, name, seq, outcome, at);
            }
        }
        // Only what the store still held: an event evicted meanwhile was already uncounted.
        counters.pending.fetch_sub(moved, Ordering::Relaxed);
    }
}

//! One destination's delivery state inside the worker: what to send next and when.
//!
//! Kept free of I/O so the scheduling rules (batching, retry groups, splitting, probing, pauses)
//! can be read in one place; the worker does the reading, sending and storing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use trackway_wire::Timestamp;

use super::health::{HealthState, Tracker};
use super::transport::Transport;
use crate::config::RetryPolicy;
use crate::destination::{BatchLimits, Delivery, Destination, DestinationState};

/// A group is split in halves from this many failed attempts on (its first retry goes whole).
pub(crate) const SPLIT_AFTER: u32 = 2;

/// Events that failed together and will be retried together (until split).
#[derive(Debug, Clone)]
pub(crate) struct Group {
    pub(crate) seqs: Vec<u64>,
    /// Clock time (elapsed) when it may be sent.
    pub(crate) due: Duration,
    /// Consecutive failed attempts of this group.
    pub(crate) failures: u32,
    /// `Lane::delivered` when it last failed; more since means the destination works.
    pub(crate) epoch: u64,
    /// One half of a split that has not failed since: it goes out whole (halved again only
    /// if it fails, so a batch is bisected once per failure, not cut down to single events).
    pub(crate) halved: bool,
}

/// Per-event retry bookkeeping, only for events that failed at least once.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ItemState {
    /// Failures while the destination was delivering other events.
    pub(crate) strikes: u32,
    /// `Lane::delivered` at its last failure.
    pub(crate) epoch: u64,
}

/// What the lane wants to send next.
#[derive(Debug)]
pub(crate) enum Next {
    /// A retry of these seqs; `failures` so far.
    Retry { seqs: Vec<u64>, failures: u32 },
    /// The next first-attempt batch.
    Fresh,
}

pub(crate) struct Lane {
    pub(crate) dest: Arc<dyn Destination>,
    pub(crate) http: Transport,
    /// This destination's retry policy (the client's unless its `HttpOptions` set one).
    pub(crate) retry: RetryPolicy,
    /// Least time between two requests (a request-rate cap), if any.
    pub(crate) min_spacing: Option<Duration>,
    /// When the rate cap lets the next request go (clock elapsed).
    pub(crate) rate_next: Duration,
    pub(crate) limits: BatchLimits,
    pub(crate) ordered: bool,
    pub(crate) max_in_flight: usize,
    pub(crate) state: DestinationState,
    /// First seq never read for a first attempt.
    pub(crate) next_fresh: u64,
    /// Pending events at or after `next_fresh`: count and bytes.
    pub(crate) fresh: u64,
    pub(crate) fresh_bytes: u64,
    /// When the oldest of them arrived (clock elapsed).
    pub(crate) fresh_since: Option<Duration>,
    pub(crate) groups: Vec<Group>,
    pub(crate) items: HashMap<u64, ItemState>,
    pub(crate) in_flight: usize,
    pub(crate) paused_until: Option<Duration>,
    /// Consecutive requests that failed as a whole (the backoff grows with it; the health state,
    /// not this count, decides the concurrency).
    pub(crate) failures: u32,
    /// Events delivered so far (the epoch for poison detection).
    pub(crate) delivered: u64,
    /// Send partial batches at once up to this seq (flush, shutdown).
    pub(crate) flush_upto: Option<u64>,
    /// Healthy, failing, unreachable, misconfigured or stopped.
    pub(crate) health: Tracker,
}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane")
            .field("dest", &self.dest.name())
            .field("fresh", &self.fresh)
            .field("groups", &self.groups.len())
            .field("in_flight", &self.in_flight)
            .field("failures", &self.failures)
            .field("health", &self.health.state())
            .finish_non_exhaustive()
    }
}

impl Lane {
    /// A lane healthy since `now`.
    pub(crate) fn new(
        dest: Arc<dyn Destination>,
        http: Transport,
        retry: RetryPolicy,
        state: DestinationState,
        now: Timestamp,
    ) -> Self {
        let (ordered, max_in_flight) = match dest.delivery() {
            Delivery::Ordered => (true, 1),
            Delivery::Parallel { max_in_flight } => (false, max_in_flight.max(1)),
        };
        Lane {
            health: Tracker::new(dest.name(), now),
            limits: dest.batch_limits(),
            dest,
            http,
            retry,
            min_spacing: None,
            rate_next: Duration::ZERO,
            ordered,
            max_in_flight,
            state,
            next_fresh: 0,
            fresh: 0,
            fresh_bytes: 0,
            fresh_since: None,
            groups: Vec::new(),
            items: HashMap::new(),
            in_flight: 0,
            paused_until: None,
            failures: 0,
            delivered: 0,
            flush_upto: None,
        }
    }

    /// An ordered destination sends nothing newer while a retry waits.
    fn holds_fresh(&self) -> bool {
        self.ordered && !self.groups.is_empty()
    }

    /// Requests allowed at once now: one while unhealthy or ordered, none once stopped. A healthy
    /// lane keeps its full concurrency after a failed request (health turns failing only after
    /// several in a row): the failed batch waits for its own backoff while the rest go on.
    fn capacity(&self) -> usize {
        match self.health.state() {
            HealthState::Stopped => 0,
            HealthState::Healthy if !self.ordered => self.max_in_flight,
            _ => 1,
        }
    }

    /// Whether one more request may start now (below the in-flight limit and the rate cap).
    pub(crate) fn may_start(&self, now: Duration) -> bool {
        self.in_flight < self.capacity() && self.rate_next <= now
    }

    /// An event routed here was appended.
    pub(crate) fn on_appended(&mut self, bytes: u64, now: Duration) {
        self.fresh += 1;
        self.fresh_bytes += bytes;
        self.fresh_since.get_or_insert(now);
    }

    /// Whether a first-attempt batch should go now.
    fn fresh_due(&self, now: Duration, interval: Duration) -> bool {
        if self.fresh == 0 {
            return false;
        }
        self.fresh >= self.limits.max_events as u64
            || self.fresh_bytes >= self.limits.max_bytes as u64
            || self.fresh_since.is_some_and(|t| t + interval <= now)
            || self.flush_upto.is_some_and(|upto| upto >= self.next_fresh)
    }

    /// Decides the next request, if one may go now. Takes the group out of `groups`.
    pub(crate) fn next(&mut self, now: Duration, interval: Duration) -> Option<Next> {
        if self.in_flight >= self.capacity() || self.paused_until.is_some_and(|t| t > now) || self.rate_next > now {
            return None;
        }
        // Retries first, lowest seq first: it is the oldest data. An ordered destination takes
        // only its oldest group, once that is due: a request in backoff is retried before the
        // requests that were waiting behind it.
        let due = if self.ordered {
            self.oldest_group(|_| true).filter(|&i| self.groups[i].due <= now)
        } else {
            self.oldest_group(|g| g.due <= now)
        };
        if let Some(i) = due {
            let mut group = self.groups.swap_remove(i);
            // Only a group that failed more than once is split (to isolate a poison event): one
            // failed request says nothing about its events (a 503 among requests that work is the
            // server's moment, not the batch's content), so it is retried whole first, costing
            // one request instead of two halves. One an ordered destination deferred behind an
            // earlier request (no failure) goes out whole too.
            if group.seqs.len() > 1 && group.failures >= SPLIT_AFTER && !group.halved {
                let second = group.seqs.split_off(group.seqs.len() / 2);
                let (failures, epoch) = (group.failures, group.epoch);
                self.groups.push(Group { seqs: second, due: now, failures, epoch, halved: true });
            }
            return Some(Next::Retry { seqs: group.seqs, failures: group.failures });
        }
        // An ordered destination sends nothing newer while a retry waits. An unhealthy one may
        // probe with fresh events: a poison event in backoff must not hold back the rest.
        if self.holds_fresh() {
            return None;
        }
        self.fresh_due(now, interval).then_some(Next::Fresh)
    }

    /// The index of the group holding the lowest seq among those `eligible`.
    fn oldest_group(&self, eligible: impl Fn(&Group) -> bool) -> Option<usize> {
        self.groups
            .iter()
            .enumerate()
            .filter(|(_, g)| eligible(g))
            .min_by_key(|(_, g)| g.seqs.first().copied().unwrap_or(u64::MAX))
            .map(|(i, _)| i)
    }

    /// Caps this lane at `per_second` requests per second (spaced evenly: no burst above it).
    pub(crate) fn set_rate_cap(&mut self, per_second: f64) {
        self.min_spacing = Some(Duration::from_secs_f64(1.0 / per_second));
    }

    /// A request is starting now: the rate cap's next slot moves on.
    pub(crate) fn on_request(&mut self, now: Duration) {
        if let Some(spacing) = self.min_spacing {
            self.rate_next = self.rate_next.max(now) + spacing;
        }
    }

    /// A first-attempt batch of `count` events ending at `last_seq` was read.
    pub(crate) fn took_fresh(&mut self, count: u64, bytes: u64, last_seq: u64) {
        self.next_fresh = last_seq + 1;
        self.fresh = self.fresh.saturating_sub(count);
        self.fresh_bytes = self.fresh_bytes.saturating_sub(bytes);
        if self.fresh == 0 {
            self.fresh_since = None;
            self.fresh_bytes = 0;
        }
        // A remainder smaller than a batch waits its own interval (a full one still goes at once).
        // Its oldest arrival time is unknown; the time of this read is a conservative stand-in.
    }

    /// Restarts the batching clock for what is left after a read (see `took_fresh`).
    pub(crate) fn restart_interval(&mut self, now: Duration) {
        if self.fresh > 0 {
            self.fresh_since = Some(now);
        }
    }

    /// A first-attempt event that will never be sent after all (the store dropped it).
    pub(crate) fn forget_fresh(&mut self, bytes: u64) {
        self.fresh = self.fresh.saturating_sub(1);
        self.fresh_bytes = self.fresh_bytes.saturating_sub(bytes);
        if self.fresh == 0 {
            self.fresh_since = None;
            self.fresh_bytes = 0;
        }
    }

    /// An event already sent at least once that the store dropped: no more retries for it.
    pub(crate) fn forget_sent(&mut self, seq: u64) {
        self.items.remove(&seq);
        for group in &mut self.groups {
            group.seqs.retain(|s| *s != seq);
        }
        self.groups.retain(|g| !g.seqs.is_empty());
    }

    /// The earliest clock time at which `next` could return something. `None` while the lane is
    /// at its in-flight limit: a completion wakes the worker then, and a deadline already in the
    /// past would make it spin.
    pub(crate) fn next_deadline(&self, interval: Duration) -> Option<Duration> {
        // A stopped lane never sends again: no deadline (0 >= 0).
        if self.in_flight >= self.capacity() {
            return None;
        }
        let mut best: Option<Duration> = None;
        let mut consider = |t: Duration| best = Some(best.map_or(t, |b| b.min(t)));
        if self.ordered {
            if let Some(i) = self.oldest_group(|_| true) {
                consider(self.groups[i].due);
            }
        } else {
            for g in &self.groups {
                consider(g.due);
            }
        }
        if self.fresh > 0
            && !self.holds_fresh()
            && let Some(since) = self.fresh_since
        {
            // A full batch (or a flush) is due at once: only a pause or the rate cap holds it.
            let full = self.fresh >= self.limits.max_events as u64
                || self.fresh_bytes >= self.limits.max_bytes as u64
                || self.flush_upto.is_some_and(|upto| upto >= self.next_fresh);
            consider(if full { Duration::ZERO } else { since + interval });
        }
        // Nothing goes out before a pause ends, nor before the rate cap allows.
        let not_before = self.paused_until.unwrap_or_default().max(self.rate_next);
        best.map(|b| b.max(not_before))
    }

    /// True when nothing is queued, waiting or in flight here, or nothing will ever be sent
    /// (stopped: its events stay in the store, and shutdown need not wait for them).
    pub(crate) fn is_idle(&self) -> bool {
        self.in_flight == 0
            && ((self.fresh == 0 && self.groups.is_empty()) || self.health.state() == HealthState::Stopped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destination::{DestinationState, Encoded, EventRecord};
    use trackway_wire::Timestamp;

    #[derive(Debug)]
    struct Fake(Delivery);
    impl Destination for Fake {
        fn name(&self) -> &str {
            "fake"
        }
        fn delivery(&self) -> Delivery {
            self.0
        }
        fn batch_limits(&self) -> BatchLimits {
            BatchLimits::new(10, 1 << 20)
        }
        fn encode(&self, _: &[EventRecord], _: &DestinationState, _: Timestamp) -> Encoded {
            Encoded::default()
        }
    }

    fn lane(delivery: Delivery) -> Lane {
        let http = Transport::new(reqwest::Client::new(), http::HeaderMap::new(), Vec::new(), Vec::new());
        Lane::new(
            Arc::new(Fake(delivery)),
            http,
            RetryPolicy::default(),
            DestinationState::default(),
            Timestamp::from_unix_millis(0),
        )
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn partial_batch_waits_for_the_interval_full_batch_goes_at_once() {
        let mut l = lane(Delivery::Parallel { max_in_flight: 4 });
        l.on_appended(10, Duration::ZERO);
        assert!(l.next(Duration::from_millis(500), S).is_none());
        assert!(matches!(l.next(S, S), Some(Next::Fresh)));
        let mut l = lane(Delivery::Parallel { max_in_flight: 4 });
        for _ in 0..10 {
            l.on_appended(10, Duration::ZERO);
        }
        assert!(matches!(l.next(Duration::ZERO, S), Some(Next::Fresh)));
    }

    /// Fails `n` whole requests in a row on `l`'s health.
    fn fail_requests(l: &mut Lane, n: u32) {
        use crate::pipeline::health::{LastError, LastErrorKind};
        for _ in 0..n {
            let error = LastError {
                kind: LastErrorKind::Status,
                status: Some(503),
                message: "503".into(),
                at: Timestamp::from_unix_millis(0),
            };
            l.health.failed(error, Duration::ZERO);
            l.failures += 1;
        }
    }

    #[test]
    fn one_failed_request_keeps_full_concurrency_and_its_retry_waits_for_its_own_backoff() {
        let mut l = lane(Delivery::Parallel { max_in_flight: 4 });
        fail_requests(&mut l, 1);
        l.groups.push(Group { seqs: vec![1, 2], due: 2 * S, failures: 1, epoch: 0, halved: false });
        for _ in 0..40 {
            l.on_appended(10, Duration::ZERO);
        }
        l.in_flight = 2;
        assert!(matches!(l.next(S, S), Some(Next::Fresh)), "fresh batches go while the retry backs off");
        l.in_flight = 3;
        assert!(matches!(l.next(S, S), Some(Next::Fresh)), "up to max_in_flight");
        l.in_flight = 4;
        assert!(l.next(S, S).is_none(), "at the limit");
        l.in_flight = 3;
        assert!(matches!(l.next(2 * S, S), Some(Next::Retry { ref seqs, .. }) if seqs == &[1, 2]), "then the retry");
    }

    #[test]
    fn unhealthy_lane_probes_one_request_at_a_time_retries_first() {
        use crate::pipeline::health::FAILING_AFTER;
        let mut l = lane(Delivery::Parallel { max_in_flight: 4 });
        fail_requests(&mut l, FAILING_AFTER);
        assert_eq!(l.health.state(), HealthState::Failing);
        l.groups.push(Group { seqs: vec![1, 2], due: Duration::ZERO, failures: 1, epoch: 0, halved: false });
        for _ in 0..20 {
            l.on_appended(10, Duration::ZERO);
        }
        let first = l.next(S, S);
        assert!(matches!(first, Some(Next::Retry { ref seqs, .. }) if seqs == &[1, 2]));
        l.in_flight = 1;
        assert!(l.next(S, S).is_none(), "one probe at a time");
    }

    #[test]
    fn a_group_that_failed_once_is_retried_whole_and_split_after_its_second_failure() {
        let mut l = lane(Delivery::Parallel { max_in_flight: 4 });
        l.groups.push(Group { seqs: vec![1, 2, 3, 4], due: Duration::ZERO, failures: 1, epoch: 0, halved: false });
        // Other requests work meanwhile: still one failure of this batch, retried whole.
        l.delivered = 5;
        match l.next(S, S) {
            Some(Next::Retry { seqs, failures: 1 }) => assert_eq!(seqs, vec![1, 2, 3, 4]),
            other => panic!("expected the whole group, got {other:?}"),
        }
        assert!(l.groups.is_empty());
        l.groups.push(Group {
            seqs: vec![1, 2, 3, 4],
            due: Duration::ZERO,
            failures: SPLIT_AFTER,
            epoch: 5,
            halved: false,
        });
        match l.next(S, S) {
            Some(Next::Retry { seqs, .. }) => assert_eq!(seqs, vec![1, 2]),
            other => panic!("expected a retry, got {other:?}"),
        }
        assert_eq!(l.groups[0].seqs, vec![3, 4]);
        // The other half has not failed since: it goes whole, not halved again.
        match l.next(S, S) {
            Some(Next::Retry { seqs, .. }) => assert_eq!(seqs, vec![3, 4]),
            other => panic!("expected the other half, got {other:?}"),
        }
        assert!(l.groups.is_empty(), "no quarter left behind: {:?}", l.groups);
    }

    #[test]
    fn ordered_lane_holds_fresh_events_behind_a_waiting_retry() {
        let mut l = lane(Delivery::Ordered);
        l.groups.push(Group { seqs: vec![1], due: 10 * S, failures: 1, epoch: 0, halved: false });
        for _ in 0..10 {
            l.on_appended(10, Duration::ZERO);
        }
        assert!(l.next(S, S).is_none());
        assert!(matches!(l.next(10 * S, S), Some(Next::Retry { .. })));
    }

    #[test]
    fn an_ordered_lane_retries_its_oldest_group_before_younger_ones_that_are_due() {
        let mut l = lane(Delivery::Ordered);
        let now = Duration::from_secs(10);
        l.groups.push(Group { seqs: vec![5, 6], due: now, failures: 0, epoch: 0, halved: false });
        l.groups.push(Group { seqs: vec![1], due: now + Duration::from_secs(2), failures: 1, epoch: 0, halved: false });
        assert!(l.next(now, Duration::from_secs(1)).is_none(), "seq 1 waits for its backoff; 5 and 6 wait for it");
        assert_eq!(l.next_deadline(Duration::from_secs(1)), Some(now + Duration::from_secs(2)));
        match l.next(now + Duration::from_secs(2), Duration::from_secs(1)) {
            Some(Next::Retry { seqs, .. }) => assert_eq!(seqs, vec![1]),
            other => panic!("expected the retry of seq 1, got {other:?}"),
        }
    }

    #[test]
    fn a_lane_at_its_in_flight_limit_has_no_deadline() {
        let mut l = lane(Delivery::Parallel { max_in_flight: 2 });
        for _ in 0..5 {
            l.on_appended(10, Duration::ZERO);
        }
        assert_eq!(l.next_deadline(S), Some(S));
        l.in_flight = 2;
        assert_eq!(l.next_deadline(S), None, "a completion will wake the worker");
    }

    #[test]
    fn a_stopped_lane_sends_nothing_and_counts_as_idle() {
        use crate::pipeline::health::{LastError, LastErrorKind};
        let mut l = lane(Delivery::Parallel { max_in_flight: 4 });
        for _ in 0..10 {
            l.on_appended(10, Duration::ZERO);
        }
        l.groups.push(Group { seqs: vec![1], due: Duration::ZERO, failures: 1, epoch: 0, halved: false });
        assert!(!l.is_idle());
        let panic = || LastError {
            kind: LastErrorKind::Panicked,
            status: None,
            message: "boom".into(),
            at: Timestamp::from_unix_millis(0),
        };
        for _ in 0..3 {
            l.health.panicked(panic(), true);
        }
        assert_eq!(l.health.state(), HealthState::Stopped);
        assert!(l.next(10 * S, S).is_none());
        assert_eq!(l.next_deadline(S), None, "no wake-ups for a lane that never sends");
        assert!(l.is_idle(), "shutdown does not wait for it");
    }

    #[test]
    fn a_full_batch_is_due_at_once_unless_paused() {
        let mut l = lane(Delivery::Parallel { max_in_flight: 2 });
        for _ in 0..10 {
            l.on_appended(10, Duration::ZERO);
        }
        assert_eq!(l.next_deadline(S), Some(Duration::ZERO));
        l.paused_until = Some(2 * S);
        assert_eq!(l.next_deadline(S), Some(2 * S));
    }

    #[test]
    fn a_rate_cap_spaces_requests_evenly() {
        let mut l = lane(Delivery::Parallel { max_in_flight: 4 });
        l.set_rate_cap(4.0);
        for _ in 0..40 {
            l.on_appended(10, Duration::ZERO);
        }
        let quarter = Duration::from_millis(250);
        assert!(l.next(Duration::ZERO, S).is_some());
        l.on_request(Duration::ZERO);
        assert!(l.next(Duration::from_millis(249), S).is_none(), "the next slot is 250 ms later");
        assert_eq!(l.next_deadline(S), Some(quarter));
        assert!(l.next(quarter, S).is_some());
        l.on_request(quarter);
        assert_eq!(l.rate_next, 2 * quarter);
    }

    #[test]
    fn a_pause_blocks_everything_until_it_ends() {
        let mut l = lane(Delivery::Parallel { max_in_flight: 4 });
        l.paused_until = Some(2 * S);
        for _ in 0..10 {
            l.on_appended(10, Duration::ZERO);
        }
        assert!(l.next(S, S).is_none());
        assert_eq!(l.next_deadline(S), Some(2 * S));
        assert!(l.next(2 * S, S).is_some());
    }
}

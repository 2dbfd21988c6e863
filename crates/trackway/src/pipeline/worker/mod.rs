//! The worker loop: drain the queue into the store, send what is due, apply the answers.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::task::{Id, JoinSet};

use super::lane::{Group, Lane, Next};
use super::{LaneSetup, Settings};
use crate::destination::{DestinationState, EventRecord, Request, Response, TransportError};
use crate::pipeline::Shared;
use crate::pipeline::health::catch;
use crate::policy::{DRAIN_DELAY, STORE_ERROR_PAUSE};
use crate::queue::{Control, Item, Reply, Taken};
use crate::stats::bump;
use crate::store::{DeadLetterReason, NewEvent, Recovered, StagingFill, Store, StoreError, routes};

mod answers;
mod purge;
mod segments;
mod unwritten;

use segments::Segments;

/// One request in flight: what the worker needs when its answer comes back.
struct InFlight {
    lane: usize,
    seqs: Vec<u64>,
    request: Request,
    /// Failures of the group it retries (0 for a first attempt).
    failures: u32,
    /// Clock time (elapsed) when it was sent.
    sent_at: Duration,
}

/// A `persisted` call waiting for its answer.
struct Barrier {
    /// The last event it covers (`None`: none came before it).
    upto: Option<u64>,
    reply: Reply,
    /// A commit failed while it waited: it fails (once nothing before it waits for an answer).
    failed: Option<String>,
}

/// The server's answer, or why there is none (classified: nothing sent, or maybe sent).
type Answer = Result<Response, TransportError>;

pub(crate) struct Worker {
    shared: Arc<Shared>,
    store: Box<dyn Store>,
    lanes: Vec<Lane>,
    settings: Settings,
    next_seq: u64,
    tasks: JoinSet<Answer>,
    in_flight: HashMap<Id, InFlight>,
    flushes: Vec<(u64, Reply)>,
    shutdown: Option<(Instant, Reply)>,
    /// When the queue is next drained. Set when a caller wakes the worker: the events of the next
    /// `DRAIN_DELAY` gather into one append, and while the queue is not empty callers make no
    /// wake-up calls, so the caller's cost stays free of system calls.
    drain_at: Option<Instant>,
    /// When a write-behind store commits what it staged (at most `commit_delay` after the first).
    commit_at: Option<Instant>,
    /// Every seq below this is committed (write-behind stores; others commit in `append`).
    committed_below: u64,
    /// Persist barriers waiting for every event up to their seq to be committed.
    barriers: Vec<Barrier>,
    segments: Segments,
    /// The events of a drain on their way into the store, kept between drains (emptied) so a
    /// drain does not map and fault in a fresh buffer of up to a ring's worth of events.
    staging: Vec<NewEvent>,
    /// What `,"context":<context>}` adds to an event head.
    context_len: usize,
    store_failed: bool,
    warned_store_full: bool,
    /// Outcomes for streams and receipts (idle when nobody listens).
    receipts: crate::receipts::Tracker,
    /// (lane, seq) of events a purge found in an in-flight request: when the answer comes, a
    /// delivered one counts as delivered, any other is removed instead of retried (`purge`).
    purged_in_flight: std::collections::HashSet<(usize, u64)>,
    /// Events whose write failed while a request carried them: their answer decides.
    unwritten: unwritten::UnwrittenOnWire,
    /// Per lane: requests answered since the store last had every ack on disk. A lane sends
    /// nothing new while these and its requests on the wire make `max_in_flight`, so a crash
    /// re-sends at most `max_in_flight` requests, as before acks were written behind
    /// (`tests/crash.rs` checks it; counting only the answered ones let 2 700 redeliveries
    /// through against its bound of 2 400 once). The price: under a long burst a lane waits
    /// for the writer's event rounds ahead of its acks (at most `ROUNDS_IN_FLIGHT` of them).
    answered_unwritten: Vec<usize>,
}

impl Worker {
    pub(crate) fn new(
        shared: Arc<Shared>,
        store: Box<dyn Store>,
        recovered: Recovered,
        setups: Vec<LaneSetup>,
        mut settings: Settings,
    ) -> Self {
        let now = shared.clock.elapsed();
        let now_ts = shared.clock.now();
        let mut lanes: Vec<Lane> = shared
            .destinations
            .iter()
            .zip(setups)
            .map(|((i, dest), setup)| {
                let prefix = state_prefix(dest.name());
                let state = recovered
                    .state
                    .iter()
                    .filter_map(|(k, v)| k.strip_prefix(&prefix).map(|k| (k.to_owned(), v.clone())))
                    .collect();
                let mut lane =
                    Lane::new(dest.clone(), setup.transport, setup.retry, DestinationState::from_map(state), now_ts);
                if let Some(rate) = setup.max_requests_per_second {
                    lane.set_rate_cap(rate);
                }
                // Everything pending from an earlier run is a first attempt for this process.
                if let Some(&(count, bytes)) = recovered.pending.get(i)
                    && count > 0
                {
                    lane.fresh = count;
                    lane.fresh_bytes = bytes;
                    lane.fresh_since = Some(now);
                }
                lane
            })
            .collect();
        // Run-time destinations that could not be re-created hold their events, stopped.
        for (i, reason) in std::mem::take(&mut settings.held) {
            // Its stats say so already (`spawn`); this is the lane's own state machine, and the log.
            if let Some(lane) = lanes.get_mut(i) {
                lane.health.unavailable(reason, now_ts);
                let _ = lane.health.take_changed();
            }
        }
        let context_len = shared_context_len(&shared);
        let receipts = crate::receipts::Tracker::new(shared.receipts.clone());
        // A backlog may hold the store at its bound already.
        shared.room.set(store.refuses_new());
        Worker {
            shared,
            store,
            lanes,
            settings,
            next_seq: recovered.next_seq,
            tasks: JoinSet::new(),
            in_flight: HashMap::new(),
            flushes: Vec::new(),
            shutdown: None,
            drain_at: None,
            commit_at: None,
            committed_below: recovered.next_seq,
            barriers: Vec::new(),
            segments: Segments::default(),
            staging: Vec::new(),
            context_len,
            store_failed: false,
            warned_store_full: false,
            receipts,
            purged_in_flight: std::collections::HashSet::new(),
            unwritten: unwritten::UnwrittenOnWire::default(),
            answered_unwritten: Vec::new(),
        }
    }

    pub(crate) async fn run(mut self) {
        loop {
            // A full ring spills only while the store has room to spare: past half its staging
            // bound a burst is already taking memory, and at the bound the worker holds back, so
            // then a full ring refuses (counted), and a burst the store cannot take does not grow
            // the memory held (a 1 000 000-event burst held 7 MB more in the spill otherwise).
            self.shared.queue.set_absorbing(self.may_drain() && self.store.staging() == StagingFill::Room);
            if self.drain_due() {
                self.drain();
                // A push that reserved its slot before this drain may land just after it without
                // waking anyone (the queue was not empty): come back for it.
                self.drain_at = (self.shared.queue.len() > 0).then(|| Instant::now() + DRAIN_DELAY);
            }
            // A due commit goes first: with `commit_delay(0)` every event is then handed to the
            // store's writer before it is sent (written a moment later: `persisted` waits for
            // that). A staging past half its bound is written without waiting.
            if self.commit_at.is_some_and(|t| Instant::now() >= t) || self.staging_pressed() {
                self.commit();
            }
            self.dispatch();
            // Before the flushes are answered: a caller that flushed then reads its stream
            // finds the outcomes there.
            self.receipts.flush();
            self.receipts.signal_due(false);
            // A barrier may have waited for an answer that decided a failed write (`unwritten`).
            if !self.barriers.is_empty() {
                self.answer_barriers(None);
            }
            self.answer_flushes();
            if let Some((deadline, _)) = &self.shutdown {
                // With tracking off nothing will be sent: what is stored stays for a later run.
                let done = (self.held() || self.lanes.iter().all(Lane::is_idle)) && self.shared.queue.len() == 0;
                if done || Instant::now() >= *deadline {
                    break;
                }
            }
            self.wait().await;
        }
        // Commit anything that raced in behind the shutdown request, then answer.
        self.drain();
        self.commit_all();
        self.unwritten_at_shutdown();
        self.receipts.flush();
        // No more outcomes from this process: open receipts resolve with what is still pending.
        self.shared.receipts.end(crate::receipts::Ended::Shutdown);
        if let Some((_, reply)) = self.shutdown.take() {
            reply.send();
        }
        for (_, reply) in self.flushes.drain(..) {
            drop(reply);
        }
    }

    fn drain_due(&self) -> bool {
        let queue = &self.shared.queue;
        if self.shutdown.is_some() {
            return true;
        }
        self.may_drain() && (queue.is_past_threshold() || self.drain_at.is_some_and(|t| Instant::now() >= t))
    }

    /// The queue may be drained: not paused, and the store's staging is below its bound. At the
    /// bound the worker writes until there is room; the queue fills meanwhile and refuses what
    /// it cannot hold (`queue_full`), which keeps memory bounded however long a burst lasts.
    fn may_drain(&self) -> bool {
        !self.shared.queue.is_paused() && self.store.staging() != StagingFill::Full
    }

    /// The store stages more than half its bound: write without waiting for `commit_delay`
    /// (when the writer can take more: else its answer wakes the worker).
    fn staging_pressed(&self) -> bool {
        self.store.staging() != StagingFill::Room && self.store.write_ready()
    }

    /// Sleeps until something may need doing: an answer, new items, a deadline, the clock moving.
    async fn wait(&mut self) {
        let clock = self.shared.clock.clone();
        let interval = self.settings.batch_interval;
        // With tracking off nothing is sent, so no lane deadline can be met: sleeping until one
        // would spin. Turning tracking on queues a control, which wakes the worker.
        let deadline =
            if self.held() { None } else { self.lanes.iter().filter_map(|l| l.next_deadline(interval)).min() };
        let sleep_for = deadline.and_then(|d| clock.real_wait(d));
        let now = Instant::now();
        let drain_in = self.drain_at.filter(|_| self.may_drain()).map(|t| t.saturating_duration_since(now));
        let commit_in = match self.commit_at {
            Some(_) if self.staging_pressed() => Some(Duration::ZERO),
            at => at.map(|t| t.saturating_duration_since(now)),
        };
        let shutdown_in = self.shutdown.as_ref().map(|(d, _)| d.saturating_duration_since(now));
        let signal_in = self.receipts.wake_at().map(|t| t.saturating_duration_since(now));
        // Held back by the store (its staging is full, or its file near the bound while
        // deliveries make room): look again soon, since what holds it back changes without an
        // event of its own (the time since the last delivery).
        let held_in = (!self.shared.queue.is_paused() && !self.may_drain()).then_some(HELD_RECHECK);
        let written = self.store.written();
        let queue = &self.shared.queue;
        let has_tasks = !self.tasks.is_empty();
        tokio::select! {
            biased;
            Some(joined) = self.tasks.join_next_with_id(), if has_tasks => {
                self.completed(joined);
                // Every other answer that is ready too, then their acks in one write: prompt (before
                // anything new is sent), but one transaction instead of one per answer.
                while let Some(joined) = self.tasks.try_join_next_with_id() {
                    self.completed(joined);
                }
                if let Err(e) = self.store.sync() {
                    tracing::warn!(error = %e, "trackway: could not record deliveries; will retry with the next ones");
                }
                // Deliveries may have made room in a store that refuses new events at its bound.
                self.shared.room.set(self.store.refuses_new());
            }
            () = queue.notified() => {
                // New items (or the threshold was passed, which drain_due sees by itself).
                self.drain_at.get_or_insert(now + DRAIN_DELAY);
            }
            () = queue.resumed(), if queue.is_paused() => {}
            () = notified_opt(written.as_deref()) => {
                // The writer finished a round (or died): apply its outcome, hand it the next one.
                self.written();
            }
            () = sleep_opt(held_in) => {}
            () = sleep_opt(drain_in) => {}
            () = sleep_opt(commit_in) => {}
            () = sleep_opt(sleep_for) => {}
            () = clock.changed() => {}
            () = sleep_opt(shutdown_in) => {}
            () = sleep_opt(signal_in) => {}
        }
    }

    /// Moves everything in the queue into the store in one append, then handles controls in order.
    fn drain(&mut self) {
        let mut events = std::mem::take(&mut self.staging);
        events.reserve(self.shared.queue.len().min(self.shared.queue.slot_count()));
        let mut state = Vec::new();
        let mut controls = Vec::new();
        let now = self.shared.clock.elapsed();
        let mut taken = Taken::default();
        // Pending counts per lane, published once per drain: an atomic add per event on a
        // counter the stats readers share cost more than the rest of the routing.
        let mut routed = vec![0u64; self.lanes.len()];
        // At most one ring's worth per drain: producers as fast as the worker would otherwise
        // keep it here forever, with nothing committed, sent or answered.
        for popped in 1..=self.shared.queue.slot_count() {
            let segments = &mut self.segments;
            let copy = |bytes: &[u8]| {
                segments.copy(bytes);
                bytes.len()
            };
            let Some(item) = self.shared.queue.pop(copy, &mut taken) else { break };
            if popped % 256 == 0 {
                // A long drain hands capacity back as it goes, so callers never see a full queue
                // that is actually being emptied.
                self.shared.queue.release(&mut taken);
            }
            match item {
                Item::Event(e, len) => {
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    // Counted as the full event (head + context), the unit batches are cut in.
                    let full_len = len + if e.head_only { self.context_len } else { 0 };
                    for r in routes(e.routes) {
                        self.lanes[r].on_appended(full_len as u64, now);
                        // A lane added earlier in this drain is past the vector's end.
                        if r >= routed.len() {
                            routed.resize(r + 1, 0);
                        }
                        routed[r] += 1;
                    }
                    state.extend(e.state);
                    events.push(NewEvent {
                        seq,
                        id: e.id,
                        kind: e.kind,
                        timestamp: e.timestamp,
                        queued_at: e.queued_at,
                        routes: e.routes,
                        // Its slice of the drain's run, given by `segments.finish` below.
                        bytes: Bytes::new(),
                        context: e.head_only.then(|| self.shared.context_json.clone()),
                        run: None,
                    });
                }
                // A control answers only after the events queued before it are committed, so it
                // waits until this drain's append.
                // A checkpoint goes into this drain's append, atomically with the events before it.
                Item::Control(Control::State(changes)) => state.extend(changes),
                // At once: the events queued after it are routed to its lane. Its spec is stored
                // with this drain's append.
                Item::Control(Control::AddDestination { index, destination, setup, spec, reply }) => {
                    match self.add_lane(index, destination, *setup) {
                        Ok(()) => {
                            state.push(spec);
                            reply.answer(Ok(()));
                        }
                        Err(why) => reply.answer(Err(why)),
                    }
                }
                // At once, not after the append: what was queued behind it stays in the channel.
                #[cfg(feature = "testing")]
                Item::Control(Control::PanicForTest) => panic!("worker panic requested by panic_worker_for_test"),
                Item::Control(c) => controls.push((self.next_seq, c)),
            }
        }
        self.shared.queue.release(&mut taken);
        self.segments.finish(&mut events);
        // Before the append: an eviction or a failed append below takes its events off again.
        for (r, &count) in routed.iter().enumerate() {
            if count > 0 {
                bump(&self.shared.counters.destinations[r].pending, count);
            }
        }
        let state = last_change_per_key(state);
        let mut lost: Option<String> = None;
        if !events.is_empty() || !state.is_empty() {
            match self.store.append(&events, &state) {
                Ok(appended) => {
                    if self.receipts.on() {
                        for ev in &events {
                            self.receipts.appended(ev.seq, ev.id, ev.routes);
                        }
                    }
                    if self.store.writes_behind() {
                        self.commit_at.get_or_insert(Instant::now() + self.settings.commit_delay);
                    } else {
                        bump(&self.shared.counters.persisted, events.len() as u64);
                    }
                    if !appended.evicted.is_empty() {
                        self.forget_dropped(&appended.evicted, Dropped::StoreFull);
                    }
                }
                Err(e) => {
                    // Nothing was written; these events cannot be delivered. Undo their routing.
                    let counters = &self.shared.counters;
                    let (counter, what) = match e {
                        StoreError::DiskFull(_) => (&counters.disk_full, "the disk is full"),
                        _ => (&counters.store_error, "the store failed"),
                    };
                    bump(counter, events.len() as u64);
                    lost = Some(format!("{} events could not be committed: {e}", events.len()));
                    if !self.store_failed {
                        tracing::error!(error = %e, "trackway: {what}; dropping the events that could not be committed (counted; logged once)");
                        self.store_failed = true;
                    }
                    let report = self.receipts.on().then(|| {
                        let at = self.shared.clock.now();
                        let reason = match e {
                            StoreError::DiskFull(_) => crate::receipts::DropReason::DiskFull,
                            _ => crate::receipts::DropReason::StoreError,
                        };
                        (at, reason)
                    });
                    for ev in &events {
                        for r in routes(ev.routes) {
                            if let Some((at, reason)) = report {
                                let name = self.lanes[r].dest.name();
                                let outcome = crate::receipts::Outcome::Dropped(reason);
                                self.receipts.decided_id(r, name, ev.id, outcome, at);
                            }
                            self.lanes[r].forget_fresh(ev.bytes.len() as u64 + self.context_len as u64);
                            self.shared.counters.destinations[r].pending.fetch_sub(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
        events.clear();
        self.staging = events;
        for (next_seq, control) in controls {
            match (control, &lost) {
                // A barrier behind events that could not be committed must not say "safe".
                (Control::Persisted(reply), Some(why)) => reply.fail(why.clone()),
                // A write-behind store answers once everything before is committed: now.
                (Control::Persisted(reply), None) if self.store.writes_behind() => {
                    self.barriers.push(Barrier { upto: next_seq.checked_sub(1), reply, failed: None });
                }
                (control, _) => self.control(next_seq, control),
            }
        }
        if !self.barriers.is_empty() {
            self.commit();
        }
    }

    /// Takes dead letters out of the store and appends them as new events for their destination.
    fn requeue(&mut self, destination: Option<&str>, limit: usize) -> Result<usize, StoreError> {
        let names: Vec<String> = self.lanes.iter().map(|l| l.dest.name().to_owned()).collect();
        let index_of = |name: &str| names.iter().position(|n| n == name);
        let keys: Vec<u64> = self
            .store
            .dead_letters(usize::MAX)?
            .into_iter()
            .filter(|d| destination.is_none_or(|n| n == d.destination) && index_of(&d.destination).is_some())
            .take(limit)
            .map(|d| d.key)
            .collect();
        let letters = self.store.take_dead_letters(&keys)?;
        let now = self.shared.clock.now();
        let elapsed = self.shared.clock.elapsed();
        let mut events = Vec::with_capacity(letters.len());
        for letter in letters {
            let Some(lane) = index_of(&letter.destination) else { continue };
            // The kind and time are read back from the event itself.
            let (kind, timestamp) = serde_json::from_slice::<trackway_wire::Event>(&letter.event)
                .map(|e| (e.kind, e.timestamp))
                .unwrap_or((trackway_wire::EventKind::Track, now));
            let seq = self.next_seq;
            self.next_seq += 1;
            self.lanes[lane].on_appended(letter.event.len() as u64, elapsed);
            bump(&self.shared.counters.destinations[lane].pending, 1);
            events.push(NewEvent {
                seq,
                id: letter.id,
                kind,
                timestamp,
                queued_at: now,
                routes: 1 << lane,
                bytes: letter.event,
                context: None,
                run: None,
            });
        }
        let n = events.len();
        if n > 0 {
            self.store.append(&events, &[])?;
            // Taken out of the dead letters already: written back soon, not whenever next.
            if self.store.writes_behind() {
                self.commit_at.get_or_insert(Instant::now() + self.settings.commit_delay);
            } else {
                // Counted as the write-behind store's commit counts them.
                bump(&self.shared.counters.persisted, n as u64);
            }
        }
        Ok(n)
    }

    fn control(&mut self, next_seq: u64, control: Control) {
        // Everything queued before the control has a seq below `next_seq`.
        let upto = next_seq.checked_sub(1);
        match control {
            Control::Persisted(reply) => reply.send(),
            Control::Flush(reply) => match upto {
                Some(upto) => {
                    for lane in &mut self.lanes {
                        lane.flush_upto = Some(lane.flush_upto.map_or(upto, |u| u.max(upto)));
                    }
                    self.flushes.push((upto, reply));
                }
                None => reply.send(),
            },
            Control::Shutdown { budget, done } => {
                for lane in &mut self.lanes {
                    lane.flush_upto = Some(u64::MAX);
                }
                self.shutdown = Some((Instant::now() + budget, done));
            }
            Control::Requeue { destination, limit, reply } => {
                let n = self.requeue(destination.as_deref(), limit).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "trackway: could not requeue dead letters");
                    0
                });
                reply.answer(n);
            }
            Control::DeadLetters { limit, reply } => {
                let letters = self.store.dead_letters(limit).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "trackway: could not read dead letters");
                    Vec::new()
                });
                reply.answer(letters);
            }
            Control::Purge { user, reply } => {
                let n = self.purge(user.as_deref()).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "trackway: could not purge the outbox");
                    0
                });
                reply.answer(n);
            }
            // Taken in `drain`.
            #[cfg(feature = "testing")]
            Control::PanicForTest => panic!("worker panic requested by panic_worker_for_test"),
            // Taken in `drain`; reached only if a caller bypasses it.
            Control::AddDestination { index, destination, setup, spec, reply } => {
                let added = self
                    .add_lane(index, destination, *setup)
                    .and_then(|()| self.store.set_state(&[spec]).map_err(|e| e.to_string()));
                reply.answer(added);
            }
            Control::State(changes) => {
                if let Err(e) = self.store.set_state(&changes) {
                    tracing::warn!(error = %e, "trackway: could not store a checkpoint");
                }
            }
        }
    }

    /// Opens the lane (and the store's cursor) of a destination added at run time.
    fn add_lane(
        &mut self,
        index: usize,
        destination: Arc<dyn crate::destination::Destination>,
        setup: LaneSetup,
    ) -> Result<(), String> {
        if index != self.lanes.len() {
            return Err(format!("expected destination index {}, got {index}", self.lanes.len()));
        }
        self.store.add_destination(destination.name()).map_err(|e| e.to_string())?;
        let mut lane =
            Lane::new(destination, setup.transport, setup.retry, DestinationState::default(), self.shared.clock.now());
        if let Some(rate) = setup.max_requests_per_second {
            lane.set_rate_cap(rate);
        }
        // A flush or shutdown in progress covers what is queued before it, none of it this lane's.
        lane.flush_upto = self.lanes.first().and_then(|l| l.flush_upto);
        self.lanes.push(lane);
        Ok(())
    }

    /// Answers flushes whose events are all delivered or dead-lettered.
    fn answer_flushes(&mut self) {
        if self.flushes.is_empty() {
            return;
        }
        // Tracking is off: nothing will be sent, so waiting would only time out.
        if self.held() {
            for (_, reply) in self.flushes.drain(..) {
                reply.send();
            }
            return;
        }
        let mut lowest: Option<u64> = None;
        for i in 0..self.lanes.len() {
            match self.store.lowest_pending(i) {
                Ok(Some(seq)) => lowest = Some(lowest.map_or(seq, |l| l.min(seq))),
                Ok(None) => {}
                // Unknown is not "nothing pending": answer later.
                Err(_) => return,
            }
        }
        // An event whose write failed on the wire is pending until its answer comes.
        if let Some(l) = self.unwritten.lowest() {
            lowest = Some(lowest.map_or(l, |x| x.min(l)));
        }
        let (done, waiting): (Vec<_>, Vec<_>) =
            self.flushes.drain(..).partition(|(upto, _)| lowest.is_none_or(|l| l > *upto));
        self.flushes = waiting;
        if !done.is_empty() {
            // A caller that flushed may wait on its stream next: it is signalled now.
            self.receipts.signal_due(true);
        }
        for (_, reply) in done {
            reply.send();
        }
    }

    /// Tracking is off (`set_enabled(false)`): events are kept in the store and not sent.
    fn held(&self) -> bool {
        !self.shared.is_enabled()
    }

    /// Starts every request that may go now.
    fn dispatch(&mut self) {
        // Consent withdrawn: the events stay in the store, unsent.
        if self.held() {
            return;
        }
        let interval = self.settings.batch_interval;
        if !self.store.acks_unwritten() {
            self.answered_unwritten.clear();
        }
        for i in 0..self.lanes.len() {
            loop {
                // The requests a crash would send again (on the wire, or answered with their
                // acks not on disk yet) stay within `max_in_flight`, as before acks were
                // written behind: `tests/crash.rs` checks that bound.
                let unwritten = self.answered_unwritten.get(i).copied().unwrap_or(0);
                if unwritten > 0 && unwritten + self.lanes[i].in_flight >= self.lanes[i].max_in_flight {
                    break;
                }
                let now = self.shared.clock.elapsed();
                let Some(next) = self.lanes[i].next(now, interval) else { break };
                let first_attempt = matches!(next, Next::Fresh);
                let (records, failures) = match next {
                    Next::Retry { seqs, failures } => match self.store.read_seqs(i, &seqs) {
                        Ok(records) => {
                            self.forget_corrupt();
                            (Ok(records), failures)
                        }
                        Err(e) => {
                            // Keep the events: put the group back and try again later.
                            self.retry_later(i, seqs, failures, now);
                            (Err(e), failures)
                        }
                    },
                    Next::Fresh => {
                        let lane = &self.lanes[i];
                        let read = self.store.read(i, lane.next_fresh, lane.limits.max_events, lane.limits.max_bytes);
                        // Before the lane moves past them: damaged events were never sent.
                        self.forget_corrupt();
                        if let Ok(records) = &read {
                            let bytes = records.iter().map(|r| r.json_len() as u64).sum();
                            match records.last() {
                                Some(last) => {
                                    self.lanes[i].took_fresh(records.len() as u64, bytes, last.seq());
                                    self.lanes[i].restart_interval(now);
                                }
                                // The counters disagree with the store (events dropped elsewhere).
                                None => {
                                    let lane = &mut self.lanes[i];
                                    lane.took_fresh(u64::MAX, u64::MAX, lane.next_fresh.saturating_sub(1));
                                }
                            }
                        }
                        (read, 0)
                    }
                };
                match records {
                    Ok(records) if !records.is_empty() => self.send(i, records, failures, first_attempt),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(error = %e, destination = self.lanes[i].dest.name(), "trackway: could not read from the store");
                        // Pause rather than spin on a store that keeps failing.
                        self.lanes[i].paused_until = Some(now + STORE_ERROR_PAUSE);
                        break;
                    }
                }
            }
        }
    }

    /// Encodes `records` for lane `i` and starts the requests.
    /// `first_attempt`: the events were read fresh (a retry, or a request an ordered destination
    /// deferred, encodes them again).
    fn send(&mut self, i: usize, records: Vec<EventRecord>, failures: u32, first_attempt: bool) {
        if self.receipts.on() {
            self.receipts.read(i, &records);
        }
        let now_ts = self.shared.clock.now();
        let max_age = self.settings.max_event_age;
        let fresh = |r: &EventRecord| now_ts.saturating_duration_since(r.queued_at()) <= max_age;
        // Nearly always none has expired: no second pair of vectors for the common case.
        let (records, expired): (Vec<_>, Vec<_>) =
            if records.iter().all(fresh) { (records, Vec::new()) } else { records.into_iter().partition(fresh) };
        if !expired.is_empty() {
            let letters = expired
                .iter()
                .map(|r| (r.seq(), DeadLetterReason::Expired, format!("older than max_event_age ({max_age:?})")))
                .collect::<Vec<_>>();
            self.dead_letter(i, letters, now_ts);
        }
        if records.is_empty() {
            return;
        }
        let lane = &self.lanes[i];
        let encoded = match catch(|| lane.dest.encode(&records, &lane.state, now_ts)) {
            Ok(encoded) => encoded,
            Err(message) => {
                let seqs = records.iter().map(EventRecord::seq).collect();
                self.destination_panicked(i, seqs, failures, "encode", &message);
                return;
            }
        };
        // Retries and deferred requests encode the same events again: count truncations once,
        // when the events are first encoded.
        if first_attempt && encoded.truncated > 0 {
            bump(&self.shared.counters.destinations[i].truncated, encoded.truncated);
        }
        let mut covered = vec![false; records.len()];
        let mut skipped = Vec::new();
        for (idx, _) in &encoded.skipped {
            if let Some(r) = records.get(*idx) {
                covered[*idx] = true;
                skipped.push(r.seq());
            }
        }
        if !skipped.is_empty() {
            self.skip(i, skipped);
        }
        let mut rejected = Vec::new();
        for (idx, reason) in encoded.rejected {
            if let Some(r) = records.get(idx) {
                covered[idx] = true;
                rejected.push((r.seq(), DeadLetterReason::Rejected, format!("could not be encoded: {reason}")));
            }
        }
        for (n, request) in encoded.requests.into_iter().enumerate() {
            let seqs: Vec<u64> = request.items.iter().filter_map(|&idx| records.get(idx).map(|r| r.seq())).collect();
            for &idx in &request.items {
                if let Some(c) = covered.get_mut(idx) {
                    *c = true;
                }
            }
            let now = self.shared.clock.elapsed();
            if n > 0 && (self.lanes[i].ordered || !self.lanes[i].may_start(now)) {
                // An ordered destination sends one request at a time, each carrying the state the
                // previous answer left (a session token); a parallel one as many as its
                // `max_in_flight` (and rate cap) allow, however many requests one batch made.
                // The rest wait, first in line, one group per request, and are encoded again
                // when their turn comes.
                let lane = &mut self.lanes[i];
                lane.groups.push(Group { seqs, due: now, failures, epoch: lane.delivered, halved: false });
                continue;
            }
            self.start(i, request, seqs, failures);
        }
        for (idx, r) in records.iter().enumerate() {
            if !covered[idx] {
                rejected.push((
                    r.seq(),
                    DeadLetterReason::Rejected,
                    "the destination produced no request for it".into(),
                ));
            }
        }
        if !rejected.is_empty() {
            self.dead_letter(i, rejected, now_ts);
        }
    }

    fn start(&mut self, i: usize, request: Request, seqs: Vec<u64>, failures: u32) {
        let now = self.shared.clock.elapsed();
        let lane = &mut self.lanes[i];
        lane.in_flight += 1;
        lane.on_request(now);
        bump(&self.shared.counters.destinations[i].requests, 1);
        let dest = lane.dest.clone();
        let http = lane.http.clone();
        let req = request.clone();
        let handle = self.tasks.spawn(async move {
            if let Some(local) = dest.respond_locally(&req) {
                return Ok(local);
            }
            http.send(req).await
        });
        let sent_at = self.shared.clock.elapsed();
        self.in_flight.insert(handle.id(), InFlight { lane: i, seqs, request, failures, sent_at });
    }
}

fn shared_context_len(shared: &Shared) -> usize {
    shared.context_json.len() + trackway_wire::CONTEXT_KEY.len() + 1
}

/// Why the store dropped events (which counter they go under).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dropped {
    Purged,
    StoreFull,
    Corrupt,
    DiskFull,
    StoreError,
}

/// Keeps only the last change of each key (app-mode events each move the session's last-seen
/// time: a burst would otherwise write the same key once per event), in the order of those last
/// changes.
fn last_change_per_key(changes: Vec<crate::store::StateChange>) -> Vec<crate::store::StateChange> {
    if changes.len() < 2 {
        return changes;
    }
    let mut seen = std::collections::HashSet::new();
    let mut kept: Vec<_> = changes.into_iter().rev().filter(|c| seen.insert(c.key.clone())).collect();
    kept.reverse();
    kept
}

/// Store keys of a destination's state.
fn state_prefix(name: &str) -> String {
    format!("dest/{name}/")
}

/// Waits for a notification, or forever without one to wait on.
async fn notified_opt(n: Option<&tokio::sync::Notify>) {
    match n {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
    }
}

/// How often the worker looks again while the store holds draining back (see `wait`).
const HELD_RECHECK: Duration = Duration::from_millis(20);

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::last_change_per_key;

    use crate::store::StateChange;

    fn change(key: &str, value: &str) -> StateChange {
        StateChange { key: key.into(), value: Some(value.as_bytes().to_vec()) }
    }

    #[test]
    fn only_the_last_change_of_each_key_is_written() {
        let kept = last_change_per_key(vec![change("a", "1"), change("b", "1"), change("a", "2"), change("c", "1")]);
        assert_eq!(kept, vec![change("b", "1"), change("a", "2"), change("c", "1")]);
    }
}

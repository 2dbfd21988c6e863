//! The outcome stream: a bounded ring per subscriber. The worker pushes without ever waiting;
//! when the ring is full the oldest outcome goes and the subscriber is told how many it missed.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use trackway_wire::MessageId;

use super::batch::Run;
use super::hub::Hub;
use super::{Batch, Names, OutcomeRecord};
use crate::pipeline::lock;

/// Why [`OutcomeStream::try_recv`] and its kin returned no outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// The subscriber fell behind: this many outcomes were dropped (the oldest) since the last
    /// read. The next call returns the oldest one kept.
    #[error("{0} outcomes were missed (the subscriber fell behind its capacity)")]
    Missed(u64),
    /// Nothing arrived (yet, or within the timeout).
    #[error("no outcome yet")]
    Empty,
    /// The client's worker ended and every outcome was read: none will come.
    #[error("the client's worker ended; no more outcomes")]
    Closed,
}

#[derive(Debug)]
struct RingState {
    /// Compact, as the worker hands them over: runs (lane, outcome, time, how many) over the
    /// ids in order, 16 bytes an outcome; the public records (the lane's shared name, an
    /// `Outcome` each) are made by the reader, on its thread. `ids` never holds more than the
    /// capacity.
    runs: VecDeque<Run>,
    ids: VecDeque<MessageId>,
    /// Each lane's name, set by the worker when a lane first shows up: the worker moves no
    /// reference count per outcome (the reader clones the name into each record it makes).
    names: Vec<Option<Arc<str>>>,
    /// Dropped since the last read.
    missed: u64,
    /// Dropped in all.
    missed_total: u64,
    closed: bool,
    /// Threads blocked in `recv_timeout`: the condvar is signalled only when one is (a signal
    /// is a system call even with nobody waiting, once per batch the worker pushes).
    waiters: usize,
    /// The worker signalled the waiters and none has woken yet (cleared by the first that
    /// does): it does not signal again for every batch it pushes meanwhile.
    signalled: bool,
    /// Outcomes pushed since the reader was last signalled: the worker signals once this many
    /// are there, or when its wake-up deadline passes ([`Ring::signal`]), not per push.
    unsignalled: usize,
}

impl RingState {
    /// The oldest outcome kept, as the public record.
    fn next(&mut self) -> Option<OutcomeRecord> {
        let id = self.ids.pop_front()?;
        let run = self.runs.front_mut()?;
        let (lane, at) = (run.lane, run.at);
        // The run's last outcome is moved out; the others are clones (a tag for `Delivered`).
        let outcome = if run.len <= 1 {
            self.runs.pop_front()?.outcome
        } else {
            run.len -= 1;
            run.outcome.clone()
        };
        let destination = match self.names.get(lane).and_then(Option::as_ref) {
            Some(name) => name.clone(),
            // Never: a lane's name is set with its first record.
            None => format!("destination #{lane}").into(),
        };
        Some(OutcomeRecord { id, destination, outcome, at })
    }

    /// Moves the `max` oldest outcomes (or all there are) to `local`, the reader's own, with
    /// their lanes' names; returns how many.
    fn move_to(&mut self, local: &mut RingState, max: usize) -> usize {
        let n = max.min(self.ids.len());
        local.ids.extend(self.ids.drain(..n));
        let mut left = n;
        while left > 0 {
            let Some(front) = self.runs.front_mut() else { break };
            let run = if front.len <= left {
                let Some(run) = self.runs.pop_front() else { break };
                run
            } else {
                front.len -= left;
                Run { len: left, ..front.clone() }
            };
            left -= run.len;
            if local.names.get(run.lane).is_none_or(Option::is_none) {
                if local.names.len() <= run.lane {
                    local.names.resize(run.lane + 1, None);
                }
                local.names[run.lane] = self.names.get(run.lane).cloned().flatten();
            }
            local.runs.push_back(run);
        }
        n
    }

    /// Lets the `n` oldest outcomes go (`n` at most what is kept).
    fn drop_oldest(&mut self, mut n: usize) {
        self.ids.drain(..n.min(self.ids.len()));
        while n > 0 {
            let Some(front) = self.runs.front_mut() else { break };
            if front.len > n {
                front.len -= n;
                break;
            }
            n -= front.len;
            self.runs.pop_front();
        }
    }
}

/// One subscriber's buffer.
#[derive(Debug)]
pub(crate) struct Ring {
    capacity: usize,
    /// Unsignalled outcomes that signal the reader at once (see [`WAKE_AT`]).
    wake_at: usize,
    state: Mutex<RingState>,
    changed: Condvar,
    notify: tokio::sync::Notify,
    dropped: AtomicBool,
}

impl RingState {
    fn with_capacity(ids: usize) -> Self {
        RingState {
            runs: VecDeque::new(),
            ids: VecDeque::with_capacity(ids),
            missed: 0,
            missed_total: 0,
            closed: false,
            waiters: 0,
            signalled: false,
            unsignalled: 0,
            names: Vec::new(),
        }
    }
}

/// Outcomes a reader takes out of the ring under one lock: the lock then moves once per this
/// many outcomes instead of once per outcome, between the reader's thread and the worker's.
/// They are no longer in the ring, so a reader holds up to this many more than the capacity
/// (never fewer), and what the ring drops when full is the oldest it still holds.
const READ_BATCH: usize = 64;

/// The most outcomes pushed before a waiting reader is signalled. A signal per answered request
/// woke the reader a few thousand times a second under load; signalled in bulk, its CPU per
/// outcome halved (`benches/receipts.rs`). Capped at half the capacity, so a small ring is read
/// before it overflows.
const WAKE_AT: usize = 1024;

impl Ring {
    pub(super) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Ring {
            capacity,
            wake_at: (capacity / 2).clamp(1, WAKE_AT),
            // Grows to `capacity` as outcomes come, never past it.
            state: Mutex::new(RingState::with_capacity(capacity.min(1024))),
            changed: Condvar::new(),
            notify: tokio::sync::Notify::new(),
            dropped: AtomicBool::new(false),
        }
    }

    pub(super) fn is_dropped(&self) -> bool {
        self.dropped.load(Ordering::Acquire)
    }

    /// One lock for the whole batch. When it does not fit, the oldest outcomes go (those kept
    /// first, then the batch's own oldest if it alone is over the capacity), each counted missed.
    /// Returns whether the reader is still to be signalled ([`signal`](Self::signal)): it is
    /// at once only when enough outcomes wait.
    #[must_use]
    pub(super) fn push_all(&self, batch: &Batch, names: &Names) -> bool {
        let mut state = lock(&self.state);
        let n = batch.len();
        let mut skip = n.saturating_sub(self.capacity);
        let kept = n - skip;
        let over = (state.ids.len() + n - skip).saturating_sub(self.capacity);
        state.drop_oldest(over);
        let lost = (over + skip) as u64;
        state.missed += lost;
        state.missed_total += lost;
        for (run, ids) in batch.iter() {
            if skip >= ids.len() {
                skip -= ids.len();
                continue;
            }
            let ids = &ids[std::mem::take(&mut skip)..];
            let lane = run.lane;
            // A lane's name is set once (lanes are never reused): one check, no reference count.
            if state.names.get(lane).is_none_or(Option::is_none) {
                if state.names.len() <= lane {
                    state.names.resize(lane + 1, None);
                }
                state.names[lane] = names.get(lane).cloned().flatten();
            }
            state.ids.extend(ids);
            if let Some(last) = state.runs.back_mut()
                && last.lane == lane
                && last.at == run.at
                && last.outcome == run.outcome
            {
                last.len += ids.len();
            } else {
                state.runs.push_back(Run { lane, outcome: run.outcome.clone(), at: run.at, len: ids.len() });
            }
        }
        state.unsignalled += kept;
        if state.unsignalled < self.wake_at {
            // Signalled later, by the worker's deadline (or by a later push): true.
            return true;
        }
        self.signal_locked(state);
        false
    }

    /// Signals the reader of the outcomes pushed since it was last signalled, if any.
    pub(super) fn signal(&self) {
        let state = lock(&self.state);
        if state.unsignalled > 0 {
            self.signal_locked(state);
        }
    }

    fn signal_locked(&self, mut state: std::sync::MutexGuard<'_, RingState>) {
        state.unsignalled = 0;
        // Once per wake-up: pushes before the woken reader runs need no second system call.
        let waiters = if state.signalled { 0 } else { state.waiters };
        state.signalled |= waiters > 0;
        drop(state);
        self.wake(waiters);
    }

    pub(super) fn close(&self) {
        let mut state = lock(&self.state);
        state.closed = true;
        let waiters = state.waiters;
        drop(state);
        self.wake(waiters);
    }

    /// `waiters` was read under the lock the waiting thread counts itself under: it either was
    /// counted, or it sees the new state before it waits.
    fn wake(&self, waiters: usize) {
        if waiters > 0 {
            self.changed.notify_all();
        }
        // One reader per stream (`recv` takes `&mut self`): a stored permit is never lost.
        self.notify.notify_one();
    }

    /// Refills the reader's `local` outcomes from the ring (which `local` holds none of).
    fn refill(state: &mut RingState, local: &mut RingState) -> Result<(), RecvError> {
        if state.missed > 0 {
            return Err(RecvError::Missed(std::mem::take(&mut state.missed)));
        }
        let moved = state.move_to(local, READ_BATCH);
        // What the reader took needs no signal any more: the count is of those still waiting.
        state.unsignalled = state.unsignalled.min(state.ids.len());
        match moved {
            0 if state.closed => Err(RecvError::Closed),
            0 => Err(RecvError::Empty),
            _ => Ok(()),
        }
    }
}

/// A subscription to every outcome, per event and destination, as the worker decides it.
///
/// Made with [`Client::outcomes`](crate::Client::outcomes) (outcomes from then on) or on the
/// builder with [`ClientBuilder::outcomes`](crate::ClientBuilder::outcomes) (everything the
/// worker decides, including the events an earlier process left in the store; taken with
/// [`Client::take_outcomes`](crate::Client::take_outcomes)).
///
/// It keeps at most its capacity of unread outcomes (plus up to 64 a reader has begun taking
/// out under one lock): beyond that the oldest are dropped and the next read returns
/// [`RecvError::Missed`] with how many. Delivery never waits for a subscriber.
/// Dropping the stream unsubscribes it.
///
/// ```
/// use std::time::Duration;
/// use trackway::{Client, props, destination::JsonHttp, store::MemoryStore};
/// # let collector = trackway_collector::Collector::start().unwrap();
/// let client = Client::builder().destination(JsonHttp::new(collector.url("/events"))).store(MemoryStore::new()).build()?;
/// let mut outcomes = client.outcomes(1024);
/// let id = client.track("user123", "signed_up", props! {})?;
/// let record = outcomes.recv_timeout(Duration::from_secs(5))?;
/// assert_eq!((record.id, &*record.destination), (id, "json"));
/// assert!(record.outcome.is_delivered());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct OutcomeStream {
    ring: Arc<Ring>,
    hub: Weak<Hub>,
    /// Outcomes taken out of the ring and not yet returned (older than any in the ring).
    local: RingState,
}

impl OutcomeStream {
    pub(super) fn new(ring: Arc<Ring>, hub: Weak<Hub>) -> Self {
        OutcomeStream { ring, hub, local: RingState::with_capacity(READ_BATCH) }
    }

    /// The next outcome from `state` (the ring, locked), through the reader's local ones.
    fn take(local: &mut RingState, state: &mut RingState) -> Result<OutcomeRecord, RecvError> {
        Ring::refill(state, local)?;
        local.next().ok_or(RecvError::Empty)
    }

    /// The next outcome if one is there, without waiting.
    ///
    /// # Errors
    /// [`RecvError::Missed`] once after outcomes were dropped, [`RecvError::Empty`] when none
    /// is there, [`RecvError::Closed`] when the worker ended and all were read.
    pub fn try_recv(&mut self) -> Result<OutcomeRecord, RecvError> {
        if let Some(record) = self.local.next() {
            return Ok(record);
        }
        Self::take(&mut self.local, &mut lock(&self.ring.state))
    }

    /// The next outcome, waiting at most `timeout` (blocks the thread: in async code use
    /// [`recv`](Self::recv)).
    ///
    /// # Errors
    /// As [`try_recv`](Self::try_recv); [`RecvError::Empty`] at the timeout.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<OutcomeRecord, RecvError> {
        if let Some(record) = self.local.next() {
            return Ok(record);
        }
        let mut state = lock(&self.ring.state);
        // Read the clock only when there is nothing to return: a reader that keeps up takes
        // most outcomes from a non-empty ring, and a clock read per outcome was a sixth of its
        // time.
        let mut deadline = None;
        loop {
            match Self::take(&mut self.local, &mut state) {
                Err(RecvError::Empty) => {}
                other => return other,
            }
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + timeout);
            let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else {
                return Err(RecvError::Empty);
            };
            state.waiters += 1;
            state = match self.ring.changed.wait_timeout(state, left) {
                Ok((state, _)) => state,
                Err(poisoned) => poisoned.into_inner().0,
            };
            state.waiters -= 1;
            state.signalled = false;
        }
    }

    /// The next outcome, waiting as long as it takes (any async runtime: it needs no timer).
    ///
    /// # Errors
    /// [`RecvError::Missed`] once after outcomes were dropped; [`RecvError::Closed`] when the
    /// worker ended and all were read. Never [`RecvError::Empty`].
    pub async fn recv(&mut self) -> Result<OutcomeRecord, RecvError> {
        let ring = self.ring.clone();
        loop {
            let notified = ring.notify.notified();
            match self.try_recv() {
                Err(RecvError::Empty) => notified.await,
                other => return other,
            }
        }
    }

    /// Every outcome there is now, without waiting; the count of missed ones is added to
    /// `missed`.
    pub fn drain(&mut self, missed: &mut u64) -> Vec<OutcomeRecord> {
        let mut records: Vec<OutcomeRecord> = std::iter::from_fn(|| self.local.next()).collect();
        let mut state = lock(&self.ring.state);
        *missed += std::mem::take(&mut state.missed);
        records.reserve(state.ids.len());
        records.extend(std::iter::from_fn(|| state.next()));
        state.unsignalled = 0;
        records
    }

    /// How many outcomes this subscriber missed in all (dropped because it fell behind).
    pub fn missed_total(&self) -> u64 {
        lock(&self.ring.state).missed_total
    }

    /// The most outcomes it keeps unread.
    pub fn capacity(&self) -> usize {
        self.ring.capacity
    }
}

impl Drop for OutcomeStream {
    fn drop(&mut self) {
        self.ring.dropped.store(true, Ordering::Release);
        if let Some(hub) = self.hub.upgrade() {
            hub.unsubscribed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receipts::Outcome;
    use trackway_wire::Timestamp;

    fn id(n: usize) -> MessageId {
        MessageId::from_uuid(uuid::Uuid::from_u128(n as u128 + 1))
    }

    fn batch(range: std::ops::Range<usize>, outcome: &Outcome) -> Batch {
        let mut b = Batch::default();
        for n in range {
            // Two runs per batch at least: a lane change midway.
            b.push(n % 2, id(n), outcome.clone(), Timestamp::from_unix_millis(n as i64 / 3));
        }
        b
    }

    /// Batches over a small ring, some larger than it: what is kept is always the newest
    /// `capacity` outcomes, in order, with their own lane, outcome and time, and every other
    /// one is counted missed exactly once.
    #[test]
    fn overflow_keeps_the_newest_and_counts_the_rest() {
        let names: Vec<Option<Arc<str>>> = vec![Some("a".into()), Some("b".into())];
        let rejected = Outcome::Rejected { status: Some(400), detail: "no".into() };
        let ring = Ring::new(5);
        let mut next = 0;
        let mut seen = Vec::new();
        let mut missed = 0u64;
        for (k, size) in [3usize, 4, 12, 1, 5, 0, 7].into_iter().enumerate() {
            let outcome = if k % 2 == 0 { Outcome::Delivered } else { rejected.clone() };
            let _ = ring.push_all(&batch(next..next + size, &outcome), &names);
            next += size;
            if k % 3 == 2 {
                let mut state = lock(&ring.state);
                let mut local = RingState::with_capacity(0);
                loop {
                    match OutcomeStream::take(&mut local, &mut state) {
                        Ok(r) => {
                            seen.push(r);
                            seen.extend(std::iter::from_fn(|| local.next()));
                        }
                        Err(RecvError::Missed(m)) => missed += m,
                        Err(_) => break,
                    }
                }
            }
            assert!(lock(&ring.state).ids.len() <= 5);
        }
        let mut rest = 0;
        let mut stream = OutcomeStream::new(Arc::new(ring), Weak::new());
        seen.extend(stream.drain(&mut rest));
        missed += rest;
        assert_eq!(seen.len() as u64 + missed, next as u64, "each outcome seen or counted missed");
        assert_eq!(stream.missed_total(), missed);
        for pair in seen.windows(2) {
            assert!(pair[0].id < pair[1].id, "in order");
        }
        for r in &seen {
            let n = (0..next).find(|&n| id(n) == r.id).expect("a pushed id");
            assert_eq!(&*r.destination, if n % 2 == 0 { "a" } else { "b" });
            assert_eq!(r.at, Timestamp::from_unix_millis(n as i64 / 3));
        }
        // The last batch (7 into 5) left its 5 newest.
        let last: Vec<MessageId> = seen.iter().rev().take(5).rev().map(|r| r.id).collect();
        assert_eq!(last, (next - 5..next).map(id).collect::<Vec<_>>());
    }

    /// A reader takes outcomes out in batches: those it took are kept when the ring overflows,
    /// returned first, then the gap (counted exactly), then the newest.
    #[test]
    fn what_a_reader_took_out_survives_an_overflow_and_comes_first() {
        let names: Vec<Option<Arc<str>>> = vec![Some("a".into()), Some("b".into())];
        let ring = Arc::new(Ring::new(100));
        let mut stream = OutcomeStream::new(ring.clone(), Weak::new());
        let _ = ring.push_all(&batch(0..100, &Outcome::Delivered), &names);
        assert_eq!(stream.try_recv().map(|r| r.id), Ok(id(0)));
        assert_eq!(lock(&ring.state).ids.len(), 100 - READ_BATCH, "a batch taken out at once");
        let _ = ring.push_all(&batch(100..200, &Outcome::Delivered), &names);
        let mut ids = Vec::new();
        let mut missed = 0;
        loop {
            match stream.try_recv() {
                Ok(r) => ids.push(r.id),
                Err(RecvError::Missed(m)) => {
                    assert_eq!(ids.len(), READ_BATCH - 1, "after what was taken out");
                    missed += m;
                }
                Err(_) => break,
            }
        }
        assert_eq!(missed, (100 - READ_BATCH) as u64, "the ring's oldest went");
        let expected: Vec<MessageId> = (1..READ_BATCH).chain(100..200).map(id).collect();
        assert_eq!(ids, expected);
        assert_eq!(stream.missed_total(), missed);
    }

    /// Pushes signal a waiting reader once `WAKE_AT` outcomes wait (at most half the capacity),
    /// not per push; `signal` wakes it for fewer; what a reader took needs no signal.
    #[test]
    fn readers_are_signalled_in_bulk() {
        let names: Vec<Option<Arc<str>>> = vec![Some("a".into()), Some("b".into())];
        let ring = Arc::new(Ring::new(1 << 16));
        let pushes = WAKE_AT / 100;
        for k in 0..pushes {
            assert!(ring.push_all(&batch(k * 100..(k + 1) * 100, &Outcome::Delivered), &names), "push {k} waits");
        }
        let n = pushes * 100;
        assert!(!ring.push_all(&batch(n..n + 100, &Outcome::Delivered), &names), "past WAKE_AT: signalled");
        assert_eq!(lock(&ring.state).unsignalled, 0);
        assert!(ring.push_all(&batch(n + 100..n + 110, &Outcome::Delivered), &names));
        ring.signal();
        assert_eq!(lock(&ring.state).unsignalled, 0);
        // A small ring signals at half its capacity, before it could overflow.
        let small = Arc::new(Ring::new(10));
        assert!(small.push_all(&batch(0..4, &Outcome::Delivered), &names));
        assert!(!small.push_all(&batch(4..5, &Outcome::Delivered), &names));
        // A reader that took outcomes out leaves only the rest to signal.
        let mut stream = OutcomeStream::new(small.clone(), Weak::new());
        assert!(small.push_all(&batch(5..8, &Outcome::Delivered), &names));
        assert!(stream.try_recv().is_ok());
        assert_eq!(lock(&small.state).unsignalled, 0);
    }

    /// A reader blocked in `recv_timeout` is woken by `signal`, long before its timeout.
    #[test]
    fn a_signal_wakes_a_waiting_reader() {
        let names: Vec<Option<Arc<str>>> = vec![Some("a".into()), Some("b".into())];
        let ring = Arc::new(Ring::new(1 << 16));
        let mut stream = OutcomeStream::new(ring.clone(), Weak::new());
        let reader = std::thread::spawn(move || {
            let started = Instant::now();
            let got = stream.recv_timeout(Duration::from_secs(20)).map(|r| r.id);
            (got, started.elapsed())
        });
        // Until the reader waits (the watchdog: 10 s).
        let deadline = Instant::now() + Duration::from_secs(10);
        while lock(&ring.state).waiters == 0 {
            assert!(Instant::now() < deadline, "the reader never waited");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(ring.push_all(&batch(0..3, &Outcome::Delivered), &names));
        ring.signal();
        let (got, waited) = reader.join().expect("reader");
        assert_eq!(got, Ok(id(0)));
        assert!(waited < Duration::from_secs(15), "woken by the signal, not the timeout: {waited:?}");
    }
}

//! The worker's side: which message id each stored seq is, while someone listens, and the
//! outcomes of one step gathered into one hand-over to the hub.
//!
//! The seq → id table is a [`Window`]: the worker appends events with dense, increasing seqs
//! and decides them roughly in that order, so a deque indexed by `seq - base` finds an entry
//! with a subtraction where a hash map paid a hash, a probe and a removal per event (the
//! largest cost of a subscriber, in the profile). The rare entries that do not fit (an earlier
//! run's events, or one that lingers in retries while thousands after it are delivered) go to a
//! small side map.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use trackway_wire::{MessageId, Timestamp};

use super::{Batch, Hub, Outcome};
use crate::destination::EventRecord;

/// The span (24 bytes a slot: 3 MiB) past which the window's oldest open entries move to the
/// side map, while the window is sparse (fewer than half its slots open: a few entries lingering
/// in retries while thousands after them were decided). A dense window (a backlog: most events
/// in the store still open) grows past it instead: its slots take less memory than side-map
/// entries would, and moving each event aside and back cost the worker a map insert and removal
/// per event once more than this many were in the store.
const MAX_WINDOW: usize = 1 << 17;
/// The widest hole of never-seen seqs the window fills with empty slots to take a seq past its
/// end; past that it starts again at the new seq (its open entries move to the side map).
const MAX_GAP: u64 = 4096;

/// Owned by the worker. Every method is called only after [`on`](Self::on) said yes, so with
/// nobody listening the worker pays that one load per step.
#[derive(Debug)]
pub(crate) struct Tracker {
    hub: Arc<Hub>,
    /// Seq → (message id, the routes without an outcome yet), for the events queued or read
    /// while someone listens. An entry goes when its last route has an outcome.
    ids: Window,
    /// Each lane's name, shared by its outcomes.
    names: Vec<Option<Arc<str>>>,
    /// This step's outcomes, as runs per answered request (see [`Batch`]).
    batch: Batch,
    /// When the streams' readers are signalled of outcomes handed over without a signal (see
    /// [`WAKE_DELAY`]).
    wake_at: Option<Instant>,
}

/// How long an outcome may wait in a stream before its reader is signalled: the worker signals
/// up to 1 024 outcomes at a time instead of once per answered request (see `stream.rs`'s
/// `WAKE_AT`), at the cost of up to this much latency for a reader that waits.
pub(crate) const WAKE_DELAY: Duration = Duration::from_millis(1);

impl Tracker {
    pub(crate) fn new(hub: Arc<Hub>) -> Self {
        Tracker { hub, ids: Window::new(MAX_WINDOW), names: Vec::new(), batch: Batch::default(), wake_at: None }
    }

    /// Whether anyone listens. When nobody does any more, what was noted is let go.
    #[inline]
    pub(crate) fn on(&mut self) -> bool {
        let on = self.hub.is_active();
        if !on && !self.ids.is_empty() {
            self.ids = Window::new(MAX_WINDOW);
        }
        on
    }

    /// An event appended to the store with these routes.
    pub(crate) fn appended(&mut self, seq: u64, id: MessageId, routes: u64) {
        self.ids.add(seq, id, routes);
    }

    /// Events read from the store for lane `lane` (an earlier run's, or queued while nobody
    /// listened): now known by id for that lane.
    pub(crate) fn read<'a>(&mut self, lane: usize, records: impl IntoIterator<Item = &'a EventRecord>) {
        for r in records {
            self.ids.add(r.seq, r.id, 1 << lane);
        }
    }

    /// Notes lane `lane`'s name the first time it decides something (a lane's name is fixed:
    /// lanes are appended, never reused).
    #[inline]
    fn name(&mut self, lane: usize, destination: &str) {
        if self.names.get(lane).is_some_and(Option::is_some) {
            return;
        }
        if self.names.len() <= lane {
            self.names.resize(lane + 1, None);
        }
        self.names[lane] = Some(Arc::from(destination));
    }

    /// Lane `lane` (named `destination`) decided `outcome` for the event `seq`.
    pub(crate) fn decided(&mut self, lane: usize, destination: &str, seq: u64, outcome: Outcome, at: Timestamp) {
        let Some(id) = self.ids.take(seq, 1u64 << lane) else { return };
        self.name(lane, destination);
        self.batch.push(lane, id, outcome, at);
    }

    /// Lane `lane` decided the same `outcome` at `at` for all of `seqs` (one answered
    /// request): one name check and one run for the lot.
    pub(crate) fn decided_all(
        &mut self,
        lane: usize,
        destination: &str,
        seqs: &[u64],
        outcome: Outcome,
        at: Timestamp,
    ) {
        if seqs.is_empty() {
            return;
        }
        self.name(lane, destination);
        let bit = 1u64 << lane;
        let before = self.batch.len();
        self.batch.ids.extend(seqs.iter().filter_map(|&seq| self.ids.take(seq, bit)));
        let len = self.batch.len() - before;
        self.batch.cover(lane, outcome, at, len);
    }

    /// An outcome for an event known by id (never stored, or decided on the caller's side).
    pub(crate) fn decided_id(
        &mut self,
        lane: usize,
        destination: &str,
        id: MessageId,
        outcome: Outcome,
        at: Timestamp,
    ) {
        self.name(lane, destination);
        self.batch.push(lane, id, outcome, at);
    }

    /// Hands what this step decided to the streams and receipts.
    pub(crate) fn flush(&mut self) {
        if !self.batch.is_empty() {
            // Drained, not taken: the buffer is kept for the next step, not grown again.
            if self.hub.emit(&mut self.batch, &self.names) {
                self.wake_at.get_or_insert_with(|| Instant::now() + WAKE_DELAY);
            }
        }
    }

    /// When the worker must call [`signal_due`](Self::signal_due) next (its sleep's deadline).
    pub(crate) fn wake_at(&self) -> Option<Instant> {
        self.wake_at
    }

    /// Signals the readers once the outcomes handed over without a signal have waited long
    /// enough, or at once with `now` set (a flush is answered: its caller may read next).
    pub(crate) fn signal_due(&mut self, now: bool) {
        if self.wake_at.is_some_and(|at| now || Instant::now() >= at) {
            self.wake_at = None;
            self.hub.signal();
        }
    }
}

/// One seq's entry: its id and the routes still without an outcome (none: an empty slot).
#[derive(Clone, Copy, Debug)]
struct Slot {
    id: MessageId,
    routes: u64,
}

/// Seq → [`Slot`]: a deque of slots for `base..base + len`, and a side map for the seqs outside
/// it. A seq is in at most one of the two with open routes: the window's slot is used only when
/// the side map does not hold the seq.
#[derive(Debug)]
struct Window {
    base: u64,
    slots: VecDeque<Slot>,
    /// Open entries outside the window: below it (an earlier run's, or moved out because they
    /// lingered past `limit`).
    side: HashMap<u64, Slot, SeqHash>,
    /// No side entry is above this (reset when the side map empties): an append, past every
    /// seq seen, skips the side map's lookup.
    side_max: u64,
    limit: usize,
    /// How many of `slots` are open (routes not 0): whether the window is dense.
    open_slots: usize,
}

impl Window {
    fn new(limit: usize) -> Self {
        Window {
            base: 0,
            slots: VecDeque::new(),
            side: HashMap::default(),
            side_max: 0,
            limit: limit.max(1),
            open_slots: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.slots.is_empty() && self.side.is_empty()
    }

    /// `seq`'s index in the deque, if it is in the window's span.
    #[inline]
    fn index(&self, seq: u64) -> Option<usize> {
        let i = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        (i < self.slots.len()).then_some(i)
    }

    /// Notes `routes` open for `seq`, known as `id`. Inlined for the two cases of nearly every
    /// event, twice each: a seq read for sending that its append already noted, and an append
    /// just past the end (no side entry can be at or above it, no trim is due).
    #[inline]
    fn add(&mut self, seq: u64, id: MessageId, routes: u64) {
        let len = self.slots.len();
        if let Some(i) = self.index(seq) {
            let slot = &mut self.slots[i];
            if slot.routes != 0 {
                slot.routes |= routes;
                return;
            }
        } else if len != 0
            && routes != 0
            // No trim due after the push: within the limit, or dense (see `trim`).
            && (len < self.limit || (self.open_slots + 1) * 2 > len)
            && seq == self.base + len as u64
            && (self.side.is_empty() || seq > self.side_max)
        {
            self.slots.push_back(Slot { id, routes });
            self.open_slots += 1;
            return;
        }
        self.add_slow(seq, id, routes);
    }

    /// [`add`](Self::add)'s other cases.
    #[cold]
    fn add_slow(&mut self, seq: u64, id: MessageId, routes: u64) {
        if let Some(i) = self.index(seq) {
            if self.slots[i].routes != 0 {
                self.slots[i].routes |= routes;
                return;
            }
            if let Some(side) = self.side_get_mut(seq) {
                side.routes |= routes;
                return;
            }
            self.slots[i] = Slot { id, routes };
            self.open_slots += usize::from(routes != 0);
            return;
        }
        if let Some(side) = self.side_get_mut(seq) {
            side.routes |= routes;
            return;
        }
        if self.slots.is_empty() {
            self.base = seq;
        }
        let end = self.base + self.slots.len() as u64;
        if seq >= end {
            if seq - end > MAX_GAP {
                // Far past the window: start it again here, its open entries aside.
                self.spill_all();
                self.base = seq;
            }
            let end = self.base + self.slots.len() as u64;
            // The hole (seqs never seen, e.g. queued while nobody listened) as empty slots.
            self.slots.extend((end..seq).map(|_| Slot { id, routes: 0 }));
            self.slots.push_back(Slot { id, routes });
            self.open_slots += usize::from(routes != 0);
            self.trim();
            return;
        }
        // Below the window.
        self.side_insert(seq, Slot { id, routes });
    }

    fn side_insert(&mut self, seq: u64, slot: Slot) {
        if self.side.is_empty() {
            self.side_max = seq;
        }
        self.side_max = self.side_max.max(seq);
        self.side.insert(seq, slot);
    }

    /// Closes route `bit` of `seq`: its id if that route was open.
    #[inline]
    fn take(&mut self, seq: u64, bit: u64) -> Option<MessageId> {
        if let Some(i) = self.index(seq) {
            let slot = &mut self.slots[i];
            if slot.routes & bit != 0 {
                slot.routes &= !bit;
                let id = slot.id;
                if slot.routes == 0 {
                    self.open_slots -= 1;
                }
                if i == 0 {
                    self.pop_empty_front();
                }
                return Some(id);
            }
        }
        let slot = self.side_get_mut(seq)?;
        if slot.routes & bit == 0 {
            return None;
        }
        slot.routes &= !bit;
        let id = slot.id;
        if slot.routes == 0 {
            self.side.remove(&seq);
        }
        Some(id)
    }

    fn side_get_mut(&mut self, seq: u64) -> Option<&mut Slot> {
        if self.side.is_empty() || seq > self.side_max { None } else { self.side.get_mut(&seq) }
    }

    fn pop_empty_front(&mut self) {
        while self.slots.front().is_some_and(|s| s.routes == 0) {
            self.slots.pop_front();
            self.base += 1;
        }
    }

    /// Keeps a sparse window's span within `limit`: the open entries that fall off the front go
    /// aside. A dense one is left to grow (see [`MAX_WINDOW`]).
    fn trim(&mut self) {
        while self.slots.len() > self.limit && self.open_slots * 2 < self.slots.len() {
            if let Some(slot) = self.slots.pop_front()
                && slot.routes != 0
            {
                self.open_slots -= 1;
                self.side_insert(self.base, slot);
            }
            self.base += 1;
        }
        self.pop_empty_front();
    }

    fn spill_all(&mut self) {
        self.open_slots = 0;
        let base = self.base;
        let open: Vec<(u64, Slot)> = std::mem::take(&mut self.slots)
            .into_iter()
            .zip(base..)
            .filter(|(s, _)| s.routes != 0)
            .map(|(s, q)| (q, s))
            .collect();
        for (seq, slot) in open {
            self.side_insert(seq, slot);
        }
    }

    /// How many entries are open (for tests).
    #[cfg(test)]
    fn open(&self) -> usize {
        let in_window = self.slots.iter().filter(|s| s.routes != 0).count();
        assert_eq!(in_window, self.open_slots, "the open count is kept right");
        in_window + self.side.len()
    }
}

/// Seqs are dense and trusted (the worker makes them): a multiply spreads them over the table
/// at a fraction of SipHash's cost.
#[derive(Clone, Copy, Debug, Default)]
struct SeqHash;

impl std::hash::BuildHasher for SeqHash {
    type Hasher = SeqHasher;

    fn build_hasher(&self) -> SeqHasher {
        SeqHasher(0)
    }
}

#[derive(Debug)]
struct SeqHasher(u64);

impl std::hash::Hasher for SeqHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> MessageId {
        MessageId::from_uuid(uuid::Uuid::from_u128(u128::from(n) + 1))
    }

    /// Many more events than the deque's buffer pass through it (its ring wraps many times),
    /// each resolving once, in order and slightly out of order, and it ends empty and small.
    #[test]
    fn wraps_around_and_resolves_each_once() {
        let mut w = Window::new(64);
        let ids: Vec<MessageId> = (0..10_000).map(id).collect();
        let mut next = 0u64;
        for seq in 0..10_000u64 {
            w.add(seq, ids[seq as usize], 1);
            // Decide in pairs, the second of each pair first.
            if seq % 2 == 1 {
                assert_eq!(w.take(seq, 1), Some(ids[seq as usize]));
                assert_eq!(w.take(seq - 1, 1), Some(ids[seq as usize - 1]));
                assert_eq!(w.take(seq - 1, 1), None, "each route resolves once");
                next = seq + 1;
            }
            assert!(w.slots.len() <= 2, "the window stays as short as what is open");
        }
        assert_eq!(next, 10_000);
        assert!(w.is_empty());
        assert!(w.slots.capacity() < 64, "the buffer was reused, not grown");
    }

    /// One entry lingers (in retries) while many after it resolve: it moves to the side map
    /// when the span passes the limit, still resolves, and the window does not grow past it.
    #[test]
    fn lingering_entries_go_aside_and_still_resolve() {
        let mut w = Window::new(16);
        w.add(0, id(0), 0b11);
        for seq in 1..1_000u64 {
            w.add(seq, id(seq), 0b11);
            assert_eq!(w.take(seq, 0b01), Some(id(seq)));
            assert_eq!(w.take(seq, 0b10), Some(id(seq)));
            assert!(w.slots.len() <= 17);
        }
        assert_eq!(w.open(), 1);
        assert_eq!(w.take(0, 0b10), Some(id(0)));
        assert_eq!(w.open(), 1, "route 0b01 is still open");
        assert_eq!(w.take(0, 0b01), Some(id(0)));
        assert!(w.is_empty());
    }

    /// A backlog (every entry open) past the limit stays in the window, where moving each
    /// entry aside and back cost a map insert and removal; once it is decided in order the
    /// window is empty again, and a lingering entry in a sparse window still goes aside.
    #[test]
    fn a_dense_backlog_grows_the_window_instead_of_going_aside() {
        let mut w = Window::new(16);
        for seq in 0..200u64 {
            w.add(seq, id(seq), 0b1);
            w.add(seq, id(seq), 0b1);
        }
        assert!(w.side.is_empty() && w.slots.len() == 200);
        assert_eq!(w.open(), 200);
        // Decided in order except seq 0, which lingers: the window turns sparse and 0 goes aside.
        for seq in 1..200u64 {
            assert_eq!(w.take(seq, 0b1), Some(id(seq)));
        }
        for seq in 200..240u64 {
            w.add(seq, id(seq), 0b1);
            assert_eq!(w.take(seq, 0b1), Some(id(seq)));
        }
        assert_eq!(w.open(), 1);
        assert!(w.side.contains_key(&0), "the lingering entry went aside");
        assert!(w.slots.len() <= 17);
        assert_eq!(w.take(0, 0b1), Some(id(0)));
        assert!(w.is_empty());
        assert_eq!(w.open(), 0);
    }

    /// An earlier run's events (below the window) and a jump far past it are kept aside; a
    /// seq read for a second lane joins its existing entry, wherever it is.
    #[test]
    fn below_and_far_past_the_window() {
        let mut w = Window::new(1 << 10);
        w.add(100, id(100), 0b1);
        w.add(5, id(5), 0b1);
        w.add(5, id(5), 0b10);
        w.add(100 + MAX_GAP * 4, id(7), 0b1);
        w.add(100, id(100), 0b10);
        assert_eq!(w.open(), 3);
        assert_eq!(w.take(5, 0b1), Some(id(5)));
        assert_eq!(w.take(5, 0b10), Some(id(5)));
        assert_eq!(w.take(100, 0b10), Some(id(100)));
        assert_eq!(w.take(100, 0b1), Some(id(100)));
        assert_eq!(w.take(100 + MAX_GAP * 4, 0b1), Some(id(7)));
        assert_eq!(w.take(6, 0b1), None, "never noted");
        assert!(w.is_empty());
    }

    /// Sixty-four lanes, each deciding every event in its own order: an entry stays until its
    /// last lane, each lane gets the id once, and nothing is left.
    #[test]
    fn many_lanes() {
        let mut w = Window::new(256);
        let all = u64::MAX;
        for seq in 1_000..1_500u64 {
            w.add(seq, id(seq), all);
        }
        // Lanes advance at different speeds: lane k decides seqs in steps, rotated by k.
        for lane in 0..64u64 {
            for j in 0..500u64 {
                let seq = 1_000 + (j + lane * 7) % 500;
                assert_eq!(w.take(seq, 1 << lane), Some(id(seq)), "lane {lane} seq {seq}");
                assert_eq!(w.take(seq, 1 << lane), None);
            }
            if lane < 63 {
                assert_eq!(w.open(), 500, "open until the last lane");
            }
        }
        assert!(w.is_empty());
    }

    /// The window starts again below a seq kept aside: that seq is still found in the side map
    /// (not given a second, empty entry in the window).
    #[test]
    fn a_restarted_window_below_a_side_entry() {
        let mut w = Window::new(4);
        w.add(500, id(500), 1);
        // Each decided as it comes, 500 lingering: a sparse window, so 500 goes aside.
        for seq in 501..510u64 {
            w.add(seq, id(seq), 1);
            assert_eq!(w.take(seq, 1), Some(id(seq)));
        }
        assert!(w.slots.is_empty() && w.side.contains_key(&500), "500 lingered aside");
        w.add(498, id(498), 1);
        w.add(500, id(500), 0b10);
        w.add(501, id(501), 1);
        assert_eq!(w.take(500, 0b10), Some(id(500)));
        assert_eq!(w.take(500, 1), Some(id(500)));
        assert_eq!(w.take(498, 1), Some(id(498)));
        assert_eq!(w.take(501, 1), Some(id(501)));
        assert!(w.is_empty());
    }

    /// A hole of seqs never seen (queued while nobody listened) within the gap is filled with
    /// empty slots; reads of those seqs later fill them.
    #[test]
    fn holes_are_filled_by_later_reads() {
        let mut w = Window::new(1 << 10);
        w.add(10, id(10), 1);
        w.add(20, id(20), 1);
        assert_eq!(w.take(15, 1), None);
        w.add(15, id(15), 1);
        assert_eq!(w.take(10, 1), Some(id(10)));
        assert_eq!(w.base, 15, "the front moved past the empty slots");
        assert_eq!(w.take(15, 1), Some(id(15)));
        assert_eq!(w.take(20, 1), Some(id(20)));
        assert!(w.is_empty());
    }
}

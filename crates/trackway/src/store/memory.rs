//! The in-memory outbox: the same contract as the durable store, for tests and for applications
//! that want no disk. Everything is lost when the process exits.
//!
//! Events sit in fixed-size blocks indexed by `seq - base`; each slot carries a bitmask of the
//! destinations that still have to deliver it, and its bytes as a span of a run (the bytes of
//! the events of one drain, one `Bytes`): 12 bytes per event instead of a 32-byte handle, with
//! the slot at 64 bytes instead of 80 (3 MB of a 200 000-event burst held in memory). A run's
//! bytes are released once none of its events is pending; a
//! block is dropped when none of its events is pending, so memory follows the oldest undelivered
//! event. This keeps the per-event cost to a few word operations (a B-tree per destination cost
//! the worker a third of its time in the benchmark), and fixed blocks never reallocate the whole
//! backlog the way a growing `VecDeque` would (two copies alive at once at the peak).

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use trackway_wire::{EventKind, MessageId, Timestamp};

use super::{
    Appended, DeadLetter, DeadLetterReason, Evicted, NewEvent, Outbox, Recovered, StateChange, StoreError, routes,
};
use crate::destination::EventRecord;

/// Dead letters kept in memory; the oldest are dropped beyond this (they are still counted in stats).
const MAX_DEAD_LETTERS: usize = 10_000;

/// Slots per block.
const BLOCK: usize = 4096;

#[derive(Debug)]
struct Block {
    slots: Vec<Slot>,
    /// Slots with a destination still pending.
    live: usize,
}

/// An outbox held in memory, bounded to [`DEFAULT_MAX_BYTES`](MemoryStore::DEFAULT_MAX_BYTES) of event bytes unless
/// [`max_bytes`](MemoryStore::max_bytes) says otherwise: past the bound the oldest undelivered
/// events are dropped and counted as `store_full` in [`Stats`](crate::Stats).
#[derive(Debug)]
pub struct MemoryStore {
    /// Bytes of events held at most (`None`: unbounded, for the durable store's hot part, which
    /// bounds itself).
    max_bytes: Option<u64>,
    destinations: Vec<String>,
    /// The seq of the first slot of `blocks[0]`.
    base: u64,
    blocks: VecDeque<Block>,
    /// Per destination: events still to deliver, and a seq below which none is pending.
    pending: Vec<u64>,
    cursor: Vec<u64>,
    state: BTreeMap<String, Vec<u8>>,
    dead: VecDeque<DeadLetter>,
    next_seq: u64,
    /// Each distinct context once; slots refer to them by index.
    contexts: Vec<Bytes>,
    next_dead_key: u64,
    /// Bytes of event bodies still held (released events free theirs at once).
    live_bytes: u64,
    /// The slots of the last block dropped, empty, for the next block: a steady stream then
    /// writes into memory that is already mapped instead of faulting in a fresh block each time.
    spare: Option<Vec<Slot>>,
    /// The runs slots take their bytes from, oldest first; `runs[0]` has the id `run_base`.
    runs: VecDeque<Run>,
    run_base: u32,
}

/// The bytes of some events (a drain's), and how many of them are still pending.
#[derive(Debug)]
struct Run {
    bytes: Bytes,
    live: u32,
}

/// A slot whose bytes are a complete event (no context to add).
const NO_CONTEXT: u32 = u32::MAX;

#[derive(Debug)]
struct Slot {
    id: MessageId,
    kind: EventKind,
    timestamp: Timestamp,
    queued_at: Timestamp,
    /// The event's head (the complete event when `context` is `NO_CONTEXT`): `len` bytes from
    /// `start` of the run `run`; `len` 0 once released.
    run: u32,
    start: u32,
    len: u32,
    context: u32,
    /// Destinations that still have to deliver or dead-letter it.
    pending: u64,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    /// The most bytes of events a [`MemoryStore::new`] holds by default (128 MiB, the durable
    /// store's default bound too): past it the oldest undelivered events are dropped, counted as
    /// `store_full`, so a destination that is down cannot take all the memory.
    pub const DEFAULT_MAX_BYTES: u64 = 128 << 20;

    /// An empty store, bounded to [`DEFAULT_MAX_BYTES`](Self::DEFAULT_MAX_BYTES) of events.
    pub fn new() -> Self {
        MemoryStore { max_bytes: Some(Self::DEFAULT_MAX_BYTES), ..MemoryStore::unbounded() }
    }

    /// The most bytes of events (their serialized JSON) the store holds: past it the oldest
    /// undelivered events are dropped to make room, counted as `store_full`. At least 1.
    #[must_use]
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = Some(bytes.max(1));
        self
    }

    /// A store without a bound (the durable store's events in memory, which it bounds itself).
    pub(crate) fn unbounded() -> Self {
        MemoryStore {
            max_bytes: None,
            destinations: Vec::new(),
            base: 0,
            blocks: VecDeque::new(),
            pending: Vec::new(),
            cursor: Vec::new(),
            state: BTreeMap::new(),
            dead: VecDeque::new(),
            next_seq: 0,
            contexts: Vec::new(),
            next_dead_key: 0,
            live_bytes: 0,
            spare: None,
            runs: VecDeque::new(),
            run_base: 0,
        }
    }

    /// Drops the oldest undelivered events while more than `max_bytes` are held.
    fn evict_over_bound(&mut self) -> Vec<Evicted> {
        let mut evicted = Vec::new();
        let Some(max) = self.max_bytes else { return evicted };
        let mut seq = self.base;
        while self.live_bytes > max && seq < self.next_seq {
            if let Some((routes, bytes)) = self.release_all(seq) {
                evicted.push(Evicted { seq, routes, bytes });
            }
            // Released slots at the front are trimmed away: go on from the new base.
            seq = (seq + 1).max(self.base);
        }
        evicted
    }

    fn index(&self, seq: u64) -> Option<(usize, usize)> {
        let i = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        Some((i / BLOCK, i % BLOCK))
    }

    fn slot(&self, seq: u64) -> Option<&Slot> {
        let (b, o) = self.index(seq)?;
        self.blocks.get(b)?.slots.get(o)
    }

    /// Slots from `seq` on, with their seqs, across blocks.
    fn slots_from(&self, seq: u64) -> impl Iterator<Item = (u64, &Slot)> {
        let start = usize::try_from(seq.saturating_sub(self.base)).unwrap_or(usize::MAX);
        let base = self.base;
        self.blocks.iter().enumerate().skip(start / BLOCK).flat_map(move |(b, block)| {
            let skip = if b == start / BLOCK { start % BLOCK } else { 0 };
            block.slots.iter().enumerate().skip(skip).map(move |(o, s)| (base + (b * BLOCK + o) as u64, s))
        })
    }

    /// Drops leading blocks that are full and have nothing pending.
    fn trim(&mut self) {
        while self.blocks.front().is_some_and(|b| b.live == 0 && b.slots.len() == BLOCK) {
            if let Some(mut block) = self.blocks.pop_front()
                && self.spare.is_none()
            {
                block.slots.clear();
                self.spare = Some(block.slots);
            }
            self.base += BLOCK as u64;
        }
        if self.blocks.len() == 1 && self.blocks[0].live == 0 {
            // Everything is done: restart the numbering at the next seq, keeping the block.
            self.base += self.blocks[0].slots.len() as u64;
            self.blocks[0].slots.clear();
        }
    }

    fn len(&self) -> u64 {
        self.blocks.iter().map(|b| b.slots.len() as u64).sum()
    }

    fn push_slot(&mut self, slot: Slot) {
        if self.blocks.back().is_none_or(|b| b.slots.len() == BLOCK) {
            let slots = self.spare.take().unwrap_or_else(|| Vec::with_capacity(BLOCK));
            self.blocks.push_back(Block { slots, live: 0 });
        }
        self.live_bytes += u64::from(slot.len);
        if let Some(block) = self.blocks.back_mut() {
            block.live += usize::from(slot.pending != 0);
            block.slots.push(slot);
        }
    }

    fn record(&self, seq: u64, s: &Slot) -> EventRecord {
        let bytes = self.bytes(s);
        let record = match self.contexts.get(s.context as usize) {
            Some(context) => EventRecord::from_head(seq, s.id, s.timestamp, bytes, context.clone()),
            None => EventRecord::new(seq, s.id, s.timestamp, bytes),
        };
        record.with_queued_at(s.queued_at)
    }

    /// A slot's bytes (empty once released).
    fn bytes(&self, s: &Slot) -> Bytes {
        if s.len == 0 {
            return Bytes::new();
        }
        let run = &self.runs[s.run.wrapping_sub(self.run_base) as usize];
        run.bytes.slice(s.start as usize..(s.start + s.len) as usize)
    }

    /// The run holding `e`'s bytes, and where they start in it: the run it carries (the first
    /// event of a drain's run does), else the last run taken if its bytes lie in it (the drain's
    /// other events), else the event's bytes as a run of their own.
    fn run_for(&mut self, e: &NewEvent) -> (u32, u32) {
        let within = |run: &Bytes| {
            let start = (e.bytes.as_ptr() as usize).checked_sub(run.as_ptr() as usize)?;
            (start + e.bytes.len() <= run.len()).then_some(start as u32)
        };
        let carried = e.run.as_ref().and_then(|run| within(run).map(|start| (run.clone(), start)));
        let last = self.runs.back().and_then(|r| within(&r.bytes));
        let (run, start) = match (carried, last) {
            (Some(carried), _) => carried,
            // In the last run: nothing to push (`same` below), no handle to take.
            (None, Some(start)) => (Bytes::new(), start),
            (None, None) => (e.bytes.clone(), 0),
        };
        let same = run.is_empty()
            || self.runs.back().is_some_and(|r| r.bytes.as_ptr() == run.as_ptr() && r.bytes.len() == run.len());
        if !same {
            self.runs.push_back(Run { bytes: run, live: 0 });
        }
        let id = self.run_base.wrapping_add(self.runs.len() as u32 - 1);
        if let Some(r) = self.runs.back_mut() {
            r.live += 1;
        }
        (id, start)
    }

    /// A slot let go of its bytes: its run frees them with its last event, and runs leave from
    /// the front once done.
    fn drop_bytes(&mut self, run: u32) {
        let Some(r) = self.runs.get_mut(run.wrapping_sub(self.run_base) as usize) else { return };
        r.live -= 1;
        if r.live == 0 {
            // Now, not when it reaches the front: one old event still pending must not keep the
            // bytes of everything after it.
            r.bytes = Bytes::new();
        }
        while self.runs.front().is_some_and(|r| r.live == 0) {
            self.runs.pop_front();
            self.run_base = self.run_base.wrapping_add(1);
        }
    }

    /// The index of `context`, adding it if new. A client has one context, so this is nearly
    /// always the last one (compared by pointer first, then by content).
    fn intern(&mut self, context: &Bytes) -> u32 {
        if let Some(i) = self.contexts.iter().rposition(|c| super::same_context(c, context)) {
            return i as u32;
        }
        self.contexts.push(context.clone());
        (self.contexts.len() - 1) as u32
    }

    /// The full JSON length of a slot's event.
    fn json_len(&self, s: &Slot) -> usize {
        s.len as usize
            + self.contexts.get(s.context as usize).map_or(0, |c| c.len() + trackway_wire::CONTEXT_KEY.len() + 1)
    }

    /// Drops `destination`'s claim on `seq`. Returns the event's id and full JSON if the claim
    /// existed and `want_event` (dead letters keep the event).
    fn release(&mut self, destination: usize, seq: u64, want_event: bool) -> Option<(MessageId, Bytes)> {
        let bit = 1u64 << destination;
        let (b, o) = self.index(seq)?;
        let event = match self.slot(seq) {
            Some(s) if s.pending & bit != 0 => {
                if want_event {
                    self.record(seq, s).json().clone()
                } else {
                    Bytes::new()
                }
            }
            _ => return None,
        };
        let block = self.blocks.get_mut(b)?;
        let slot = block.slots.get_mut(o)?;
        slot.pending &= !bit;
        let out = (slot.id, event);
        let mut freed = None;
        let emptied = slot.pending == 0 && {
            // Free the bytes now; the slot itself goes with its block.
            self.live_bytes -= u64::from(slot.len);
            if std::mem::take(&mut slot.len) > 0 {
                freed = Some(slot.run);
            }
            block.live -= 1;
            block.live == 0
        };
        if let Some(run) = freed {
            self.drop_bytes(run);
        }
        self.pending[destination] -= 1;
        // Only a block that just emptied can be dropped: no trim for each of its other events.
        if emptied {
            self.trim();
        }
        Some(out)
    }

    // === for the SQLite store, which keeps its own process's events here (hot) ===

    /// A stored event, for writing it elsewhere; `None` if unknown.
    pub(crate) fn view(&self, seq: u64) -> Option<HotEvent> {
        let s = self.slot(seq)?;
        Some(HotEvent {
            id: s.id,
            kind: s.kind,
            timestamp: s.timestamp,
            queued_at: s.queued_at,
            head: self.bytes(s),
            context: self.contexts.get(s.context as usize).cloned(),
            pending: s.pending,
        })
    }

    /// Whether `seq` is still pending for any destination.
    pub(crate) fn is_pending(&self, seq: u64) -> bool {
        self.slot(seq).is_some_and(|s| s.pending != 0)
    }

    /// Drops every claim on `seq`; returns the destinations that still had it and its size.
    pub(crate) fn release_all(&mut self, seq: u64) -> Option<(u64, u64)> {
        let (b, o) = self.index(seq)?;
        let block = self.blocks.get_mut(b)?;
        let slot = block.slots.get_mut(o)?;
        let routes = slot.pending;
        if routes == 0 {
            return None;
        }
        let len = u64::from(std::mem::take(&mut slot.len));
        let run = slot.run;
        slot.pending = 0;
        block.live -= 1;
        self.live_bytes -= len;
        if len > 0 {
            self.drop_bytes(run);
        }
        for d in super::routes(routes) {
            if let Some(p) = self.pending.get_mut(d) {
                *p -= 1;
            }
        }
        self.trim();
        Some((routes, len))
    }

    /// Bytes of event bodies held.
    pub(crate) fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    /// Forgets the oldest blocks, pending or not, until at most `keep` bytes are held, but only
    /// blocks entirely below `below` (what the caller has written elsewhere; the last block always
    /// stays). Returns the first seq still held: older events must be read from wherever they
    /// were written.
    pub(crate) fn forget_oldest(&mut self, keep: u64, below: u64) -> u64 {
        while self.live_bytes > keep && self.blocks.len() > 1 && self.base + (BLOCK as u64) <= below {
            let Some(block) = self.blocks.pop_front() else { break };
            for slot in &block.slots {
                self.live_bytes -= u64::from(slot.len);
                if slot.len > 0 {
                    self.drop_bytes(slot.run);
                }
                for d in super::routes(slot.pending) {
                    if let Some(p) = self.pending.get_mut(d) {
                        *p -= 1;
                    }
                }
            }
            self.base += BLOCK as u64;
        }
        self.base
    }
}

/// An event held in memory, as the SQLite store writes it.
#[derive(Debug, Clone)]
pub(crate) struct HotEvent {
    pub(crate) id: MessageId,
    pub(crate) kind: EventKind,
    pub(crate) timestamp: Timestamp,
    pub(crate) queued_at: Timestamp,
    pub(crate) head: Bytes,
    pub(crate) context: Option<Bytes>,
    /// Destinations (client indices) still to deliver it.
    pub(crate) pending: u64,
}

impl Outbox for MemoryStore {
    fn open(&mut self, destinations: &[String]) -> Result<Recovered, StoreError> {
        self.destinations = destinations.to_vec();
        self.pending.resize(destinations.len(), 0);
        self.cursor.resize(destinations.len(), 0);
        let pending = (0..destinations.len())
            .map(|d| {
                let bytes = self
                    .slots_from(0)
                    .filter(|(_, s)| s.pending & (1 << d) != 0)
                    .map(|(_, s)| self.json_len(s) as u64)
                    .sum();
                (self.pending[d], bytes)
            })
            .collect();
        Ok(Recovered {
            next_seq: self.next_seq,
            state: self.state.clone(),
            pending,
            reset: None,
            salvage: None,
            orphaned: Vec::new(),
            // A memory store starts empty in each run: no run-time destination of an earlier one.
            runtime: Vec::new(),
        })
    }

    fn add_destination(&mut self, name: &str) -> Result<(), StoreError> {
        if self.destinations.len() >= 64 {
            return Err(StoreError::Backend("more than 64 destinations".into()));
        }
        self.destinations.push(name.to_owned());
        self.pending.push(0);
        self.cursor.push(0);
        Ok(())
    }

    fn append(&mut self, events: &[NewEvent], state: &[StateChange]) -> Result<Appended, StoreError> {
        let n = self.destinations.len();
        let known = if n >= 64 { u64::MAX } else { (1u64 << n) - 1 };
        // Slots held, kept up to date here rather than summed over the blocks for each event.
        let mut len = self.len();
        for e in events {
            if e.seq < self.base + len {
                return Err(StoreError::Backend(format!("seq {} appended out of order", e.seq)));
            }
            if len == 0 {
                self.base = e.seq;
            }
            // Seqs are consecutive in practice; a gap gets empty slots so indexing stays direct.
            for _ in self.base + len..e.seq {
                len += 1;
                self.push_slot(Slot {
                    id: e.id,
                    kind: e.kind,
                    timestamp: e.timestamp,
                    queued_at: e.queued_at,
                    run: 0,
                    start: 0,
                    len: 0,
                    context: NO_CONTEXT,
                    pending: 0,
                });
            }
            let context = e.context.as_ref().map_or(NO_CONTEXT, |c| self.intern(c));
            let mask = e.routes & known;
            for d in routes(mask) {
                self.pending[d] += 1;
            }
            // An event no destination takes keeps no bytes.
            let size = if mask == 0 { 0 } else { u32::try_from(e.bytes.len()).unwrap_or(u32::MAX) };
            let (run, start) = if size == 0 { (0, 0) } else { self.run_for(e) };
            self.push_slot(Slot {
                id: e.id,
                kind: e.kind,
                timestamp: e.timestamp,
                queued_at: e.queued_at,
                run,
                start,
                len: size,
                context,
                pending: mask,
            });
            len += 1;
            self.next_seq = self.next_seq.max(e.seq + 1);
        }
        self.trim();
        self.set_state(state)?;
        Ok(Appended { evicted: self.evict_over_bound() })
    }

    fn read(
        &mut self,
        destination: usize,
        from: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let bit = 1u64 << destination;
        let mut out = Vec::with_capacity(max_events.min(self.pending.get(destination).copied().unwrap_or(0) as usize));
        let mut bytes = 0;
        for (seq, slot) in self.slots_from(from) {
            if slot.pending & bit == 0 {
                continue;
            }
            let len = self.json_len(slot);
            if out.len() >= max_events || (!out.is_empty() && bytes + len > max_bytes) {
                break;
            }
            bytes += len;
            out.push(self.record(seq, slot));
        }
        Ok(out)
    }

    fn read_seqs(&mut self, destination: usize, seqs: &[u64]) -> Result<Vec<EventRecord>, StoreError> {
        let bit = 1u64 << destination;
        Ok(seqs
            .iter()
            .filter_map(|&seq| self.slot(seq).filter(|s| s.pending & bit != 0).map(|s| self.record(seq, s)))
            .collect())
    }

    fn ack(&mut self, destination: usize, seqs: &[u64]) -> Result<u64, StoreError> {
        Ok(seqs.iter().filter(|&&seq| self.release(destination, seq, false).is_some()).count() as u64)
    }

    fn dead_letter(
        &mut self,
        destination: usize,
        letters: &[(u64, DeadLetterReason, String)],
        at: Timestamp,
    ) -> Result<u64, StoreError> {
        let name = self.destinations.get(destination).cloned().unwrap_or_default();
        let mut moved = 0;
        for (seq, reason, detail) in letters {
            let Some((id, event)) = self.release(destination, *seq, true) else { continue };
            moved += 1;
            if self.dead.len() >= MAX_DEAD_LETTERS {
                self.dead.pop_front();
            }
            self.next_dead_key += 1;
            self.dead.push_back(DeadLetter {
                key: self.next_dead_key,
                seq: *seq,
                id,
                destination: name.clone(),
                reason: *reason,
                detail: detail.clone(),
                at,
                event,
            });
        }
        Ok(moved)
    }

    fn lowest_pending(&mut self, destination: usize) -> Result<Option<u64>, StoreError> {
        if self.pending.get(destination).copied().unwrap_or(0) == 0 {
            return Ok(None);
        }
        let bit = 1u64 << destination;
        // The cursor only moves forward, so repeated calls cost amortized O(1).
        let seq = self.slots_from(self.cursor[destination]).find(|(_, s)| s.pending & bit != 0).map(|(seq, _)| seq);
        if let Some(seq) = seq {
            self.cursor[destination] = seq;
        }
        Ok(seq)
    }

    fn set_state(&mut self, changes: &[StateChange]) -> Result<(), StoreError> {
        for c in changes {
            match &c.value {
                Some(v) => {
                    self.state.insert(c.key.clone(), v.clone());
                }
                None => {
                    self.state.remove(&c.key);
                }
            }
        }
        Ok(())
    }

    fn dead_letters(&mut self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        Ok(self.dead.iter().take(limit).cloned().collect())
    }

    fn take_dead_letters(&mut self, keys: &[u64]) -> Result<Vec<DeadLetter>, StoreError> {
        let (taken, kept): (VecDeque<_>, VecDeque<_>) = self.dead.drain(..).partition(|d| keys.contains(&d.key));
        self.dead = kept;
        Ok(taken.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trackway_wire::EventKind;

    fn event(seq: u64, routes: u64) -> NewEvent {
        let t = Timestamp::from_unix_millis(0);
        NewEvent {
            seq,
            id: MessageId::new_v7(t),
            kind: EventKind::Track,
            timestamp: t,
            queued_at: t,
            routes,
            bytes: Bytes::from(format!("{{\"seq\":{seq}")),
            context: Some(Bytes::from_static(b"{}")),
            run: None,
        }
    }

    /// Events `seqs` appended as one drain's run (as the worker cuts them).
    fn drain(m: &mut MemoryStore, seqs: std::ops::Range<u64>) {
        let heads: Vec<Bytes> = seqs.clone().map(|seq| event(seq, 1).bytes).collect();
        let run = Bytes::from(heads.concat());
        let mut at = 0;
        let events: Vec<NewEvent> = seqs
            .zip(&heads)
            .map(|(seq, head)| {
                let bytes = run.slice(at..at + head.len());
                at += head.len();
                // As the worker cuts them: only the first event carries the run.
                let run = (at == head.len()).then(|| run.clone());
                NewEvent { bytes, run, ..event(seq, 1) }
            })
            .collect();
        m.append(&events, &[]).expect("append");
    }

    #[test]
    fn a_slot_is_64_bytes() {
        // Under a burst every undelivered event has one: 16 bytes here are 3 MB of 200 000.
        assert!(std::mem::size_of::<Slot>() <= 64, "{}", std::mem::size_of::<Slot>());
    }

    #[test]
    fn a_drain_shares_one_run_whose_bytes_go_with_its_last_event() {
        let mut m = MemoryStore::new();
        m.open(&["a".into()]).expect("open");
        drain(&mut m, 0..3);
        drain(&mut m, 3..6);
        assert_eq!(m.runs.len(), 2, "one run per drain");
        let read = m.read(0, 0, 10, usize::MAX).expect("read");
        assert_eq!(seqs(&read), (0..6).collect::<Vec<_>>());
        assert!(read.iter().all(|r| r.json().starts_with(format!("{{\"seq\":{}", r.seq()).as_bytes())));
        // One old event still pending keeps its run, not the bytes of the runs after it.
        m.ack(0, &[1, 2, 3, 4, 5]).expect("ack");
        assert_eq!(m.runs.len(), 2, "the front run holds seq 0");
        assert!(m.runs[1].bytes.is_empty(), "the second run's bytes are freed with its last event");
        assert_eq!(seqs(&m.read(0, 0, 10, usize::MAX).expect("read")), vec![0]);
        m.ack(0, &[0]).expect("ack");
        assert!(m.runs.is_empty() && m.live_bytes() == 0);
        // An event without a run (or outside it) gets a run of its own.
        m.append(&[event(6, 1), NewEvent { run: Some(Bytes::from_static(b"elsewhere")), ..event(7, 1) }], &[])
            .expect("append");
        assert_eq!(m.runs.len(), 2);
        assert_eq!(seqs(&m.read(0, 0, 10, usize::MAX).expect("read")), vec![6, 7]);
    }

    #[test]
    fn past_its_bound_the_oldest_undelivered_events_are_dropped_and_reported() {
        let mut m = MemoryStore::new().max_bytes(100);
        m.open(&["a".into(), "b".into()]).expect("open");
        let size = event(10, 0b11).bytes.len() as u64;
        let batch: Vec<_> = (10..20).map(|s| event(s, 0b11)).collect();
        let appended = m.append(&batch, &[]).expect("append");
        let kept = (100 / size) as usize;
        let evicted: Vec<u64> = appended.evicted.iter().map(|e| e.seq).collect();
        assert_eq!(evicted, (10..20 - kept as u64).collect::<Vec<_>>(), "the oldest go first");
        assert!(appended.evicted.iter().all(|e| e.routes == 0b11 && e.bytes == size));
        assert!(m.live_bytes() <= 100);
        // Delivered events make room: nothing more is dropped while under the bound.
        let first_kept = 20 - kept as u64;
        m.ack(0, &[first_kept]).expect("ack a");
        m.ack(1, &[first_kept]).expect("ack b");
        let appended = m.append(&[event(20, 0b01)], &[]).expect("append");
        assert!(appended.evicted.is_empty(), "{:?}", appended.evicted);
        assert_eq!(seqs(&m.read(1, 0, 100, usize::MAX).expect("read")).len(), kept - 1);
        // The durable store's part in memory has no bound of its own.
        let mut hot = MemoryStore::unbounded();
        hot.open(&["a".into()]).expect("open");
        let many: Vec<_> = (0..1000).map(|s| event(s, 0b1)).collect();
        assert!(hot.append(&many, &[]).expect("append").evicted.is_empty());
        assert_eq!(MemoryStore::default().max_bytes, Some(MemoryStore::DEFAULT_MAX_BYTES));
    }

    fn seqs(records: &[EventRecord]) -> Vec<u64> {
        records.iter().map(EventRecord::seq).collect()
    }

    #[test]
    fn each_destination_sees_its_own_pending_events_and_acks_out_of_order() {
        let mut s = MemoryStore::new();
        s.open(&["a".into(), "b".into()]).expect("open");
        s.append(&[event(0, 0b11), event(1, 0b01), event(2, 0b10), event(3, 0b11)], &[]).expect("append");
        assert_eq!(seqs(&s.read(0, 0, 10, 1 << 20).expect("read")), vec![0, 1, 3]);
        assert_eq!(seqs(&s.read(1, 0, 10, 1 << 20).expect("read")), vec![0, 2, 3]);
        s.ack(0, &[3, 0]).expect("ack");
        assert_eq!(s.lowest_pending(0).expect("cursor"), Some(1));
        assert_eq!(s.lowest_pending(1).expect("cursor"), Some(0));
        s.ack(1, &[0]).expect("ack");
        assert!(s.slot(0).is_some_and(|slot| slot.pending == 0 && slot.len == 0), "seq 0 released");
        s.dead_letter(0, &[(1, DeadLetterReason::Rejected, "400".into())], Timestamp::from_unix_millis(0)).expect("dl");
        assert_eq!(s.lowest_pending(0).expect("cursor"), None);
        let letter = &s.dead_letters(10).expect("dl")[0];
        assert_eq!((letter.seq, &letter.event[..]), (1, &br#"{"seq":1,"context":{}}"#[..]));
        assert_eq!(s.contexts.len(), 1, "one context kept for all events");
        s.ack(1, &[2, 3]).expect("ack");
        assert_eq!(s.len(), 0, "all done: nothing kept");
        assert_eq!(s.pending, vec![0, 0]);
    }

    #[test]
    fn blocks_are_dropped_as_they_are_delivered_across_many_blocks() {
        let mut s = MemoryStore::new();
        s.open(&["a".into()]).expect("open");
        let n = (BLOCK * 3 + 17) as u64;
        s.append(&(0..n).map(|i| event(i, 1)).collect::<Vec<_>>(), &[]).expect("append");
        assert_eq!(s.blocks.len(), 4);
        let first = s.read(0, 0, BLOCK + 5, usize::MAX).expect("read");
        assert_eq!(first.len(), BLOCK + 5);
        assert_eq!(first.last().map(EventRecord::seq), Some(BLOCK as u64 + 4));
        s.ack(0, &first.iter().map(EventRecord::seq).collect::<Vec<_>>()).expect("ack");
        assert_eq!(s.blocks.len(), 3, "the first block is gone");
        assert_eq!(s.lowest_pending(0).expect("cursor"), Some(BLOCK as u64 + 5));
        let rest: Vec<u64> = s.read(0, 0, usize::MAX, usize::MAX).expect("read").iter().map(EventRecord::seq).collect();
        assert_eq!(rest.len() as u64, n - BLOCK as u64 - 5);
        s.ack(0, &rest).expect("ack");
        assert_eq!((s.len(), s.lowest_pending(0).expect("cursor")), (0, None));
        s.append(&[event(n, 1)], &[]).expect("append after everything was delivered");
        assert_eq!(seqs(&s.read(0, 0, 10, 1 << 20).expect("read")), vec![n]);
    }

    #[test]
    fn reads_respect_count_and_byte_limits_and_the_from_cursor() {
        let mut s = MemoryStore::new();
        s.open(&["a".into()]).expect("open");
        s.append(&(0..10).map(|i| event(i, 1)).collect::<Vec<_>>(), &[]).expect("append");
        assert_eq!(seqs(&s.read(0, 4, 3, 1 << 20).expect("read")), vec![4, 5, 6]);
        assert_eq!(s.read(0, 0, 10, 1).expect("read").len(), 1, "at least one event even over the byte limit");
        assert_eq!(seqs(&s.read_seqs(0, &[9, 2, 42]).expect("read")), vec![9, 2]);
        s.ack(0, &[2]).expect("ack");
        assert_eq!(seqs(&s.read_seqs(0, &[2, 3]).expect("read")), vec![3]);
    }
}

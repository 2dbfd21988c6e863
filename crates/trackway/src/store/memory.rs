//! The in-memory outbox: the same contract as the durable store, for tests and for applications
//! that want no disk. Everything is lost when the process exits.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use trackway_wire::{MessageId, Timestamp};

use super::{DeadLetter, DeadLetterReason, NewEvent, Recovered, StateChange, Store, StoreError};
use crate::destination::EventRecord;

/// Dead letters kept in memory; the oldest are dropped beyond this (they are still counted in stats).
const MAX_DEAD_LETTERS: usize = 10_000;

/// An outbox held in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    destinations: Vec<String>,
    events: BTreeMap<u64, Stored>,
    /// Per destination: the seqs still to deliver. `first()` is the cursor.
    pending: Vec<BTreeSet<u64>>,
    state: BTreeMap<String, Vec<u8>>,
    dead: VecDeque<DeadLetter>,
    next_seq: u64,
}

#[derive(Debug)]
struct Stored {
    id: MessageId,
    timestamp: Timestamp,
    queued_at: Timestamp,
    bytes: Bytes,
    /// Destinations that still have to deliver or dead-letter it.
    remaining: u32,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    fn record(seq: u64, s: &Stored) -> EventRecord {
        EventRecord::new(seq, s.id, s.timestamp, s.bytes.clone()).with_queued_at(s.queued_at)
    }

    /// Drops `destination`'s claim on `seq`, deleting the event once no destination needs it.
    /// Returns the event's id and bytes if the claim existed.
    fn release(&mut self, destination: usize, seq: u64) -> Option<(MessageId, Bytes)> {
        if !self.pending.get_mut(destination)?.remove(&seq) {
            return None;
        }
        let s = self.events.get_mut(&seq)?;
        s.remaining = s.remaining.saturating_sub(1);
        let out = (s.id, s.bytes.clone());
        if s.remaining == 0 {
            self.events.remove(&seq);
        }
        Some(out)
    }
}

impl Store for MemoryStore {
    fn open(&mut self, destinations: &[String]) -> Result<Recovered, StoreError> {
        self.destinations = destinations.to_vec();
        self.pending.resize_with(destinations.len(), BTreeSet::new);
        let pending = self
            .pending
            .iter()
            .map(|set| {
                (set.len() as u64, set.iter().filter_map(|s| self.events.get(s)).map(|e| e.bytes.len() as u64).sum())
            })
            .collect();
        Ok(Recovered { next_seq: self.next_seq, state: self.state.clone(), pending })
    }

    fn append(&mut self, events: &[NewEvent], state: &[StateChange]) -> Result<(), StoreError> {
        for e in events {
            let mut remaining = 0;
            for &r in &e.routes {
                if let Some(set) = self.pending.get_mut(r) {
                    set.insert(e.seq);
                    remaining += 1;
                }
            }
            if remaining > 0 {
                self.events.insert(
                    e.seq,
                    Stored {
                        id: e.id,
                        timestamp: e.timestamp,
                        queued_at: e.queued_at,
                        bytes: e.bytes.clone(),
                        remaining,
                    },
                );
            }
            self.next_seq = self.next_seq.max(e.seq + 1);
        }
        self.set_state(state)
    }

    fn read(
        &mut self,
        destination: usize,
        from: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let Some(set) = self.pending.get(destination) else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        let mut bytes = 0;
        for &seq in set.range(from..) {
            let Some(s) = self.events.get(&seq) else { continue };
            if out.len() >= max_events || (!out.is_empty() && bytes + s.bytes.len() > max_bytes) {
                break;
            }
            bytes += s.bytes.len();
            out.push(Self::record(seq, s));
        }
        Ok(out)
    }

    fn read_seqs(&mut self, destination: usize, seqs: &[u64]) -> Result<Vec<EventRecord>, StoreError> {
        let Some(set) = self.pending.get(destination) else { return Ok(Vec::new()) };
        Ok(seqs
            .iter()
            .filter(|s| set.contains(s))
            .filter_map(|&seq| self.events.get(&seq).map(|s| Self::record(seq, s)))
            .collect())
    }

    fn ack(&mut self, destination: usize, seqs: &[u64]) -> Result<(), StoreError> {
        for &seq in seqs {
            self.release(destination, seq);
        }
        Ok(())
    }

    fn dead_letter(
        &mut self,
        destination: usize,
        letters: &[(u64, DeadLetterReason, String)],
        at: Timestamp,
    ) -> Result<(), StoreError> {
        let name = self.destinations.get(destination).cloned().unwrap_or_default();
        for (seq, reason, detail) in letters {
            let Some((id, event)) = self.release(destination, *seq) else { continue };
            let letter = DeadLetter {
                seq: *seq,
                id,
                destination: name.clone(),
                reason: *reason,
                detail: detail.clone(),
                at,
                event,
            };
            if self.dead.len() >= MAX_DEAD_LETTERS {
                self.dead.pop_front();
            }
            self.dead.push_back(letter);
        }
        Ok(())
    }

    fn lowest_pending(&mut self, destination: usize) -> Result<Option<u64>, StoreError> {
        Ok(self.pending.get(destination).and_then(|s| s.first().copied()))
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
}

//! The worker's side: which message id each stored seq is, while someone listens, and the
//! outcomes of one step gathered into one hand-over to the hub.

use std::collections::HashMap;
use std::sync::Arc;

use trackway_wire::{MessageId, Timestamp};

use super::{Hub, Outcome, OutcomeRecord};
use crate::destination::EventRecord;

/// Owned by the worker. Every method is called only after [`on`](Self::on) said yes, so with
/// nobody listening the worker pays that one load per step.
#[derive(Debug)]
pub(crate) struct Tracker {
    hub: Arc<Hub>,
    /// Seq → (message id, the routes without an outcome yet), for the events queued or read
    /// while someone listens. An entry goes when its last route has an outcome.
    ids: HashMap<u64, (MessageId, u64), SeqHash>,
    batch: Vec<(usize, OutcomeRecord)>,
}

impl Tracker {
    pub(crate) fn new(hub: Arc<Hub>) -> Self {
        Tracker { hub, ids: HashMap::default(), batch: Vec::new() }
    }

    /// Whether anyone listens. When nobody does any more, what was noted is let go.
    #[inline]
    pub(crate) fn on(&mut self) -> bool {
        let on = self.hub.is_active();
        if !on && !self.ids.is_empty() {
            self.ids = HashMap::default();
        }
        on
    }

    /// An event appended to the store with these routes.
    pub(crate) fn appended(&mut self, seq: u64, id: MessageId, routes: u64) {
        self.ids.insert(seq, (id, routes));
    }

    /// Events read from the store for lane `lane` (an earlier run's, or queued while nobody
    /// listened): now known by id for that lane.
    pub(crate) fn read<'a>(&mut self, lane: usize, records: impl IntoIterator<Item = &'a EventRecord>) {
        for r in records {
            self.ids.entry(r.seq).or_insert((r.id, 0)).1 |= 1 << lane;
        }
    }

    /// Lane `lane` (named `destination`) decided `outcome` for the event `seq`.
    pub(crate) fn decided(&mut self, lane: usize, destination: &str, seq: u64, outcome: Outcome, at: Timestamp) {
        let bit = 1u64 << lane;
        let Some(entry) = self.ids.get_mut(&seq) else { return };
        if entry.1 & bit == 0 {
            return;
        }
        entry.1 &= !bit;
        let id = entry.0;
        if entry.1 == 0 {
            self.ids.remove(&seq);
        }
        self.batch.push((lane, OutcomeRecord { id, destination: destination.to_owned(), outcome, at }));
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
        self.batch.push((lane, OutcomeRecord { id, destination: destination.to_owned(), outcome, at }));
    }

    /// Hands what this step decided to the streams and receipts.
    pub(crate) fn flush(&mut self) {
        if !self.batch.is_empty() {
            self.hub.emit(std::mem::take(&mut self.batch));
        }
    }
}

/// Seqs are dense and trusted (the worker makes them): a multiply spreads them over the table
/// at a fraction of SipHash's cost, which this map pays twice per event while someone listens.
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

//! Events whose write to the store failed while a request carrying them was on the wire.
//!
//! A write-behind store sends events before they are written. When the write then fails (a
//! full disk), the store drops them, but the bytes already sent cannot be taken back: the server
//! may take them. Counting such an event as `disk_full` at once and then seeing it delivered
//! would report a loss that did not happen (`tests/durable.rs` caught it: 551 events delivered
//! of 550 kept). So its answer decides, as for a purge that finds an event on the wire: a
//! delivery counts as delivered (and, delivered everywhere, the event counts as `persisted`,
//! as an event delivered before it was written does); any other answer drops it then, counted
//! under the write's reason, never retried (the store no longer has it).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;

use super::{Dropped, Worker};
use crate::receipts::{DropReason, Outcome};
use crate::stats::bump;
use crate::store::{Evicted, routes};

/// One such event: why its write failed, and where it is still on the wire.
#[derive(Clone, Copy, Debug)]
pub(super) struct Unwritten {
    reason: Dropped,
    /// Route bits of the requests still carrying it.
    on_wire: u64,
    /// Some destination will not get it (not on the wire there, or its answer was no delivery).
    lost: bool,
}

/// The events of failed writes still on the wire, by seq.
#[derive(Debug, Default)]
pub(super) struct UnwrittenOnWire {
    events: BTreeMap<u64, Unwritten>,
}

impl UnwrittenOnWire {
    /// The lowest seq still waiting for an answer: flushes and persist barriers behind it wait
    /// for it too (until then it is neither delivered, nor committed, nor counted as lost).
    pub(super) fn lowest(&self) -> Option<u64> {
        self.events.first_key_value().map(|(seq, _)| *seq)
    }

    /// Whether `seq`'s answer from lane `i` is one this set decides (it forgets that route).
    fn take(&mut self, i: usize, seq: u64) -> Option<Unwritten> {
        if self.events.is_empty() {
            return None;
        }
        let entry = self.events.get_mut(&seq)?;
        let bit = 1u64 << i;
        if entry.on_wire & bit == 0 {
            return None;
        }
        entry.on_wire &= !bit;
        Some(*entry)
    }
}

impl Worker {
    /// The store could not write `lost` (its round failed with `reason`). Events on the wire
    /// wait for their answer (see the module docs); the rest are dropped and counted now.
    pub(super) fn write_failed(&mut self, lost: &[Evicted], reason: Dropped) {
        let flying: HashSet<(usize, u64)> =
            self.in_flight.values().flat_map(|f| f.seqs.iter().map(move |&seq| (f.lane, seq))).collect();
        let mut now_lost = Vec::with_capacity(lost.len());
        for ev in lost {
            let on_wire = routes(ev.routes).filter(|&r| flying.contains(&(r, ev.seq))).fold(0u64, |m, r| m | 1 << r);
            if on_wire == 0 {
                now_lost.push(*ev);
                continue;
            }
            // The destinations not carrying it lose it now; the event is counted once, when
            // the last answer comes.
            let elsewhere = ev.routes & !on_wire;
            if elsewhere != 0 {
                self.forget_routes(&[Evicted { routes: elsewhere, ..*ev }], reason);
            }
            self.unwritten.events.insert(ev.seq, Unwritten { reason, on_wire, lost: elsewhere != 0 });
        }
        self.forget_dropped(&now_lost, reason);
    }

    /// Applies lane `i`'s answer for `seq` if a failed write left it on the wire (returns
    /// whether it did; if not, the answer is applied as usual). `delivered`: the answer
    /// delivered it.
    pub(super) fn unwritten_answered(&mut self, i: usize, seq: u64, delivered: bool) -> bool {
        let Some(entry) = self.unwritten.take(i, seq) else { return false };
        let counters = &self.shared.counters.destinations[i];
        counters.pending.fetch_sub(1, Ordering::Relaxed);
        let lane = &mut self.lanes[i];
        lane.items.remove(&seq);
        let outcome = if delivered {
            bump(&counters.delivered, 1);
            lane.delivered += 1;
            Outcome::Delivered
        } else {
            Outcome::Dropped(drop_reason(entry.reason))
        };
        if self.receipts.on() {
            let at = self.shared.clock.now();
            self.receipts.decided(i, lane.dest.name(), seq, outcome, at);
        }
        let lost = entry.lost || !delivered;
        if entry.on_wire != 0 {
            if let Some(e) = self.unwritten.events.get_mut(&seq) {
                e.lost = lost;
            }
            return true;
        }
        self.unwritten.events.remove(&seq);
        if lost {
            self.count_dropped(entry.reason, 1);
        } else {
            // Delivered everywhere without being written, as an event delivered while staged
            // is: nothing of it is left to lose.
            bump(&self.shared.counters.persisted, 1);
        }
        true
    }

    /// At shutdown: answers that will not come leave these events lost (counted).
    pub(super) fn unwritten_at_shutdown(&mut self) {
        for (_, entry) in std::mem::take(&mut self.unwritten.events) {
            self.count_dropped(entry.reason, 1);
        }
    }
}

pub(super) fn drop_reason(reason: Dropped) -> DropReason {
    match reason {
        Dropped::Purged => DropReason::Purged,
        Dropped::StoreFull => DropReason::StoreFull,
        Dropped::Corrupt => DropReason::Corrupt,
        Dropped::DiskFull => DropReason::DiskFull,
        Dropped::StoreError => DropReason::StoreError,
    }
}

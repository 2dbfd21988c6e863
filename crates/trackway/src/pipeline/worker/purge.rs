//! Removing queued events on request: everything (`purge_queued`, after consent is withdrawn)
//! or one person's events and dead letters (`erase_user`).
//!
//! An event already in a request on the wire cannot be taken back: the server may have it.
//! The purge leaves it pending and counts it (`purge_in_flight`); its answer is then applied
//! as usual if it was delivered (counted as delivered: what the server holds is the server's to
//! erase), and otherwise it is removed then (counted as purged), never retried or
//! dead-lettered.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;

use super::{Dropped, Worker};
use crate::destination::EventRecord;
use crate::store::{Evicted, StoreError};

impl Worker {
    /// Removes the pending events (of `user`, when given) for every destination, and that user's
    /// dead letters; returns how many events were removed.
    pub(super) fn purge(&mut self, user: Option<&str>) -> Result<u64, StoreError> {
        // Staged events are served by `read` too, so nothing queued before the request escapes.
        let mut removed: BTreeMap<u64, Evicted> = BTreeMap::new();
        let flying: HashSet<(usize, u64)> =
            self.in_flight.values().flat_map(|f| f.seqs.iter().map(move |&seq| (f.lane, seq))).collect();
        for lane in 0..self.lanes.len() {
            let records = self.store.read(lane, 0, usize::MAX, usize::MAX)?;
            let (seqs, on_the_wire): (Vec<u64>, Vec<u64>) = records
                .iter()
                .filter(|r| user.is_none_or(|u| belongs_to(r, u)))
                .map(EventRecord::seq)
                .partition(|&seq| !flying.contains(&(lane, seq)));
            for seq in on_the_wire {
                if self.purged_in_flight.insert((lane, seq)) {
                    crate::stats::bump(&self.shared.counters.purge_in_flight, 1);
                }
            }
            if seqs.is_empty() {
                continue;
            }
            self.store.ack(lane, &seqs)?;
            if self.receipts.on() {
                self.receipts.read(lane, records.iter().filter(|r| seqs.contains(&r.seq())));
            }
            for r in records.iter().filter(|r| seqs.contains(&r.seq())) {
                let head = (r.json_len() as u64).saturating_sub(self.context_len as u64);
                let entry = removed.entry(r.seq()).or_insert(Evicted { seq: r.seq(), routes: 0, bytes: head });
                entry.routes |= 1 << lane;
            }
        }
        self.store.sync()?;
        let evicted: Vec<Evicted> = removed.into_values().collect();
        let mut count = evicted.len() as u64;
        self.forget_dropped(&evicted, Dropped::Purged);
        if let Some(user) = user {
            let keys: Vec<u64> = self
                .store
                .dead_letters(usize::MAX)?
                .into_iter()
                .filter(|d| event_belongs_to(&d.event, user))
                .map(|d| d.key)
                .collect();
            let taken = self.store.take_dead_letters(&keys)?;
            count += taken.len() as u64;
            crate::stats::bump(&self.shared.counters.purged, taken.len() as u64);
        }
        Ok(count)
    }

    /// Whether the purge found this event of lane `i` on the wire; forgets it either way (it
    /// is asked once, when the answer comes).
    pub(super) fn was_purged_in_flight(&mut self, i: usize, seq: u64) -> bool {
        !self.purged_in_flight.is_empty() && self.purged_in_flight.remove(&(i, seq))
    }

    /// Removes events a purge found on the wire whose answer was not a delivery: counted as
    /// purged and reported `Dropped(Purged)` to receipts and streams, never retried or
    /// dead-lettered.
    pub(super) fn remove_purged(&mut self, i: usize, seqs: &[u64]) {
        if seqs.is_empty() {
            return;
        }
        match self.store.ack(i, seqs) {
            Ok(released) => {
                crate::stats::bump(&self.shared.counters.purged, released);
                self.shared.counters.destinations[i].pending.fetch_sub(released, Ordering::Relaxed);
                for seq in seqs {
                    self.lanes[i].items.remove(seq);
                }
                // Their receipts and streams learn it too, as for the purged events not on
                // the wire (`forget_dropped`): else a receipt would stay pending for good.
                if self.receipts.on() {
                    let (name, at) = (self.lanes[i].dest.name(), self.shared.clock.now());
                    let outcome = crate::receipts::Outcome::Dropped(crate::receipts::DropReason::Purged);
                    for &seq in seqs {
                        self.receipts.decided(i, name, seq, outcome.clone(), at);
                    }
                }
            }
            // They stay pending in the store; a later purge or run sees them again.
            Err(e) => tracing::warn!(error = %e, "trackway: could not remove purged events after their answer"),
        }
    }
}

fn belongs_to(record: &EventRecord, user: &str) -> bool {
    record.event().is_ok_and(|e| identity_matches(&e.identity, user))
}

fn event_belongs_to(json: &[u8], user: &str) -> bool {
    serde_json::from_slice::<trackway_wire::Event>(json).is_ok_and(|e| identity_matches(&e.identity, user))
}

/// Whether `user` is any of the identity's ids.
fn identity_matches(identity: &trackway_wire::Identity, user: &str) -> bool {
    identity.user_id.as_deref() == Some(user)
        || identity.anonymous_id.as_deref() == Some(user)
        || identity.ids.values().any(|v| v == user)
}

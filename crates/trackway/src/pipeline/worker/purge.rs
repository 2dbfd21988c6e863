//! Removing queued events on request: everything (`purge_queued`, after consent is withdrawn)
//! or one person's events and dead letters (`erase_user`).

use std::collections::BTreeMap;

use super::{Dropped, Worker};
use crate::destination::EventRecord;
use crate::store::{Evicted, StoreError};

impl Worker {
    /// Removes the pending events (of `user`, when given) for every destination, and that user's
    /// dead letters; returns how many events were removed.
    pub(super) fn purge(&mut self, user: Option<&str>) -> Result<u64, StoreError> {
        // Staged events are served by `read` too, so nothing queued before the request escapes.
        let mut removed: BTreeMap<u64, Evicted> = BTreeMap::new();
        for lane in 0..self.lanes.len() {
            let records = self.store.read(lane, 0, usize::MAX, usize::MAX)?;
            let seqs: Vec<u64> =
                records.iter().filter(|r| user.is_none_or(|u| belongs_to(r, u))).map(EventRecord::seq).collect();
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

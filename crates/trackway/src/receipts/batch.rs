//! The hand-over from the worker to the hub: one step's outcomes as runs (lane, outcome, time,
//! how many) over one array of message ids.
//!
//! The worker decides outcomes a request at a time: a hundred events delivered at one instant
//! share their lane, outcome and time. A run keeps those once and the ids as 16 bytes each,
//! where an [`OutcomeRecord`](super::OutcomeRecord)-like item per event (64 bytes, with an
//! `Outcome` of its own) was written by the worker, copied into every ring and walked through
//! the cache again when the ring wrapped. The streams make the per-event records on the reader's
//! thread.

use trackway_wire::{MessageId, Timestamp};

use super::Outcome;

/// Consecutive outcomes that share lane, outcome and time.
#[derive(Clone, Debug)]
pub(crate) struct Run {
    /// The destination's route bit.
    pub(crate) lane: usize,
    pub(crate) outcome: Outcome,
    pub(crate) at: Timestamp,
    /// How many ids of the batch (or ring) are this run's, in order; never 0.
    pub(crate) len: usize,
}

/// Outcomes in order: `runs[0]` covers `ids[..runs[0].len]`, the next run the next ids.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub(crate) runs: Vec<Run>,
    pub(crate) ids: Vec<MessageId>,
}

impl Batch {
    /// Appends one outcome, joining the last run when lane, time and outcome match (for the
    /// common `Delivered` an enum tag and two integers compared).
    #[inline]
    pub(crate) fn push(&mut self, lane: usize, id: MessageId, outcome: Outcome, at: Timestamp) {
        self.ids.push(id);
        self.cover(lane, outcome, at, 1);
    }

    /// Gives the last `len` ids pushed (already in `ids`) this lane, outcome and time.
    #[inline]
    pub(crate) fn cover(&mut self, lane: usize, outcome: Outcome, at: Timestamp, len: usize) {
        if len == 0 {
            return;
        }
        if let Some(last) = self.runs.last_mut()
            && last.lane == lane
            && last.at == at
            && last.outcome == outcome
        {
            last.len += len;
            return;
        }
        self.runs.push(Run { lane, outcome, at, len });
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    /// Empties it, keeping both buffers for the next step.
    pub(crate) fn clear(&mut self) {
        self.runs.clear();
        self.ids.clear();
    }

    /// Each run with its ids.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&Run, &[MessageId])> {
        let mut start = 0;
        self.runs.iter().map(move |run| {
            let ids = &self.ids[start..start + run.len];
            start += run.len;
            (run, ids)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> MessageId {
        MessageId::from_uuid(uuid::Uuid::from_u128(n + 1))
    }

    /// Same lane, time and outcome join one run; any difference starts another, and the runs
    /// cover the ids in order.
    #[test]
    fn runs_join_only_equal_neighbours() {
        let (t0, t1) = (Timestamp::from_unix_millis(1), Timestamp::from_unix_millis(2));
        let mut b = Batch::default();
        b.push(0, id(0), Outcome::Delivered, t0);
        b.push(0, id(1), Outcome::Delivered, t0);
        b.push(1, id(2), Outcome::Delivered, t0);
        b.push(1, id(3), Outcome::Delivered, t1);
        b.push(1, id(4), Outcome::Skipped, t1);
        b.push(1, id(5), Outcome::Skipped, t1);
        let runs: Vec<(usize, Outcome, Vec<MessageId>)> =
            b.iter().map(|(r, ids)| (r.lane, r.outcome.clone(), ids.to_vec())).collect();
        assert_eq!(
            runs,
            vec![
                (0, Outcome::Delivered, vec![id(0), id(1)]),
                (1, Outcome::Delivered, vec![id(2)]),
                (1, Outcome::Delivered, vec![id(3)]),
                (1, Outcome::Skipped, vec![id(4), id(5)]),
            ]
        );
        assert_eq!(b.len(), 6);
        b.clear();
        assert!(b.is_empty() && b.runs.is_empty());
    }
}

//! The set of staged events (accepted, not yet handed to the writer), with their sizes.
//!
//! Staged seqs are recent and nearly contiguous: events are staged in seq order and leave oldest
//! first (handed to the writer) or here and there (delivered before they were written). A
//! window of sizes from the oldest staged seq on, 4 bytes per seq, holds them: under a burst
//! the store stages ~150 000 events, for which a `BTreeMap<u64, u32>` cost ~25 bytes each
//! (half-full nodes from sequential inserts), about 4 MB of the burst's peak memory.

use std::collections::VecDeque;

/// Staged seqs and their sizes (head bytes).
#[derive(Debug, Default)]
pub(super) struct Staged {
    /// The seq of `sizes[0]`.
    base: u64,
    /// Per seq from `base`: its size, or 0 when it is not staged. The front is always staged.
    sizes: VecDeque<u32>,
    /// Staged seqs (non-zero sizes).
    count: usize,
}

impl Staged {
    /// Stages `seq` (higher than every seq staged so far) with its size.
    pub(super) fn insert(&mut self, seq: u64, size: u32) {
        if self.sizes.is_empty() {
            self.base = seq;
        }
        let Some(at) = seq.checked_sub(self.base).and_then(|i| usize::try_from(i).ok()) else {
            debug_assert!(false, "staged out of order: {seq} < {}", self.base);
            return;
        };
        if at < self.sizes.len() {
            debug_assert!(false, "staged twice or out of order: {seq}");
            return;
        }
        self.sizes.resize(at, 0);
        // A size of 0 would read as "not staged".
        self.sizes.push_back(size.max(1));
        self.count += 1;
    }

    /// Takes `seq` out; returns its size if it was staged.
    pub(super) fn remove(&mut self, seq: u64) -> Option<u32> {
        let at = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        let size = std::mem::take(self.sizes.get_mut(at)?);
        if size == 0 {
            return None;
        }
        self.count -= 1;
        if at == 0 {
            // Keep the front staged: drop the seqs that left before it.
            while self.sizes.front() == Some(&0) {
                self.sizes.pop_front();
                self.base += 1;
            }
            if self.sizes.is_empty() {
                // Give back a burst's worth of room once it is all written.
                self.sizes.shrink_to(4096);
            }
        }
        Some(size)
    }

    pub(super) fn contains(&self, seq: u64) -> bool {
        seq.checked_sub(self.base)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.sizes.get(i))
            .is_some_and(|&s| s != 0)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The oldest staged seq.
    pub(super) fn first(&self) -> Option<u64> {
        (!self.sizes.is_empty()).then_some(self.base)
    }

    /// The oldest `max` staged seqs, in order (they stay staged).
    pub(super) fn oldest(&self, max: usize) -> Vec<u64> {
        let mut out = Vec::with_capacity(max.min(self.count));
        for (i, &size) in self.sizes.iter().enumerate() {
            if out.len() == max {
                break;
            }
            if size != 0 {
                out.push(self.base + i as u64);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::Staged;

    #[test]
    fn seqs_leave_in_any_order_and_the_front_stays_the_oldest() {
        let mut s = Staged::default();
        for seq in 10..20 {
            s.insert(seq, 100);
        }
        s.insert(25, 7);
        assert_eq!((s.first(), s.count), (Some(10), 11));
        assert_eq!(s.remove(12), Some(100));
        assert_eq!(s.remove(12), None, "once");
        assert!(!s.contains(12) && s.contains(13) && !s.contains(21) && s.contains(25));
        assert_eq!(s.oldest(3), vec![10, 11, 13]);
        assert_eq!(s.remove(10), Some(100));
        assert_eq!(s.remove(11), Some(100));
        assert_eq!(s.first(), Some(13), "the front skips what left");
        for seq in 13..20 {
            s.remove(seq);
        }
        assert_eq!((s.first(), s.oldest(10)), (Some(25), vec![25]));
        assert_eq!(s.remove(25), Some(7));
        assert!(s.is_empty() && s.first().is_none());
        s.insert(40, 0);
        assert_eq!((s.first(), s.remove(40)), (Some(40), Some(1)), "a zero size still counts as staged");
        assert_eq!(s.remove(5), None, "below the window");
    }
}

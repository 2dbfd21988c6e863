//! The client's destinations by index (a route bit `i` is slot `i`): those configured at
//! `build()` first, then those added at run time. Slots are filled once and never change, so the
//! caller's threads read them without a lock; only [`Client::add_destination`] appends, one at
//! a time.
//!
//! [`Client::add_destination`]: crate::Client::add_destination

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crate::destination::Destination;
use crate::policy::MAX_DESTINATIONS;

/// At most [`MAX_DESTINATIONS`] destinations, appended in index order.
pub(crate) struct DestinationTable {
    slots: Box<[OnceLock<Arc<dyn Destination>>]>,
    /// Slots filled; published after the slot is set.
    len: AtomicUsize,
    /// How many were configured at `build()` (they come first).
    configured: usize,
}

impl DestinationTable {
    /// A table holding `destinations`, the first `configured` of them from the builder.
    pub(crate) fn new(destinations: Vec<Arc<dyn Destination>>, configured: usize) -> Self {
        let slots: Box<[OnceLock<Arc<dyn Destination>>]> = (0..MAX_DESTINATIONS).map(|_| OnceLock::new()).collect();
        let len = destinations.len().min(MAX_DESTINATIONS);
        for (slot, d) in slots.iter().zip(destinations) {
            let _ = slot.set(d);
        }
        DestinationTable { slots, len: AtomicUsize::new(len), configured: configured.min(len) }
    }

    /// How many destinations there are.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Every destination with its index.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (usize, &Arc<dyn Destination>)> {
        let len = self.len();
        self.slots[..len].iter().enumerate().filter_map(|(i, s)| Some((i, s.get()?)))
    }

    /// The index of the destination called `name`.
    pub(crate) fn index_of(&self, name: &str) -> Option<usize> {
        self.iter().find(|(_, d)| d.name() == name).map(|(i, _)| i)
    }

    /// The route mask of the destinations called one of `names` (unknown names add nothing).
    pub(crate) fn mask_of(&self, names: &[String]) -> u64 {
        self.iter().filter(|(_, d)| names.iter().any(|n| n == d.name())).fold(0, |m, (i, _)| m | (1 << i))
    }

    /// The route mask of the destinations configured at `build()`.
    pub(crate) fn configured_mask(&self) -> u64 {
        if self.configured >= 64 { u64::MAX } else { (1u64 << self.configured) - 1 }
    }

    /// Appends `destination`; returns its index, or `None` when the table is full. Callers
    /// serialize their appends (the client's add lock).
    pub(crate) fn push(&self, destination: Arc<dyn Destination>) -> Option<usize> {
        let index = self.len();
        self.slots.get(index)?.set(destination).ok()?;
        self.len.store(index + 1, Ordering::Release);
        Some(index)
    }
}

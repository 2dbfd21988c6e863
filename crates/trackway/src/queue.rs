//! The bounded channel between callers and the worker, bounded by count **and** bytes.
//!
//! The caller side never blocks and never makes a system call in the common case: a push is a few
//! atomic operations on a lock-free array queue. The worker is woken only when the queue goes from
//! empty to non-empty or when it passes the wake threshold, not per event: every wake-up of a
//! parked thread costs the waker a system call.
//!
//! Ordinary events may use `capacity` slots. State-changing calls (identify) and control messages
//! (flush, persist barrier, shutdown) may also use `reserved` extra slots, so a flood of ordinary
//! events can never make an `identify` vanish silently.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crossbeam_queue::ArrayQueue;
use tokio::sync::{Notify, oneshot};
use trackway_wire::{EventKind, MessageId, Timestamp};

use crate::store::StateChange;

/// Serialized events up to this size travel inside the queue slot itself: no allocation on the
/// caller's thread, and no memory freed by another thread (which contends on the allocator).
pub(crate) const INLINE_EVENT_BYTES: usize = 480;

/// An event's serialized bytes, inline when small.
pub(crate) type EventBytes = smallvec::SmallVec<[u8; INLINE_EVENT_BYTES]>;

/// An event serialized on the caller's thread, with what the worker needs without parsing it.
#[derive(Debug)]
pub(crate) struct QueuedEvent {
    pub(crate) id: MessageId,
    pub(crate) kind: EventKind,
    pub(crate) timestamp: Timestamp,
    pub(crate) queued_at: Timestamp,
    /// Bit i set: routed to destination i.
    pub(crate) routes: u64,
    pub(crate) bytes: EventBytes,
    /// Client state to commit together with this event (identify).
    pub(crate) state: Vec<StateChange>,
}

/// Where the worker sends its answer to a control request: a blocking caller waits on a std
/// channel (with a timeout), an async caller on a oneshot.
#[derive(Debug)]
pub(crate) enum Reply {
    Sync(std::sync::mpsc::SyncSender<()>),
    Async(oneshot::Sender<()>),
    /// No one is waiting.
    Discard,
}

impl Reply {
    pub(crate) fn send(self) {
        match self {
            // The caller may have timed out and gone; that is fine.
            Reply::Sync(tx) => {
                let _ = tx.try_send(());
            }
            Reply::Async(tx) => {
                let _ = tx.send(());
            }
            Reply::Discard => {}
        }
    }
}

/// Requests from the client handle to the worker, ordered with the events around them.
#[derive(Debug)]
pub(crate) enum Control {
    /// Answer once every event queued before this one is committed to the store.
    Persisted(Reply),
    /// Answer once every event queued before this one is delivered or dead-lettered.
    Flush(Reply),
    /// Commit what is queued, deliver within the budget, then stop.
    Shutdown { budget: std::time::Duration, done: Reply },
    /// Read the dead letters.
    DeadLetters { limit: usize, reply: std::sync::mpsc::SyncSender<Vec<crate::store::DeadLetter>> },
}

// Events are inline on purpose: boxing them would put an allocation back on the hot path.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Item {
    Event(QueuedEvent),
    Control(Control),
}

impl Item {
    fn size(&self) -> usize {
        match self {
            Item::Event(e) => e.bytes.len(),
            Item::Control(_) => 0,
        }
    }
}

/// Which capacity a push may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Priority {
    /// Ordinary events: `capacity` slots, `max_bytes`.
    Normal,
    /// State changes and controls: also the reserved slots, and not bounded by bytes.
    Reserved,
}

#[derive(Debug)]
pub(crate) struct Queue {
    items: ArrayQueue<Item>,
    /// Slots taken, counted *before* the push so the worker's decrement can never underflow.
    slots: AtomicUsize,
    bytes: AtomicUsize,
    capacity: usize,
    max_bytes: usize,
    wake_threshold: usize,
    notify: Notify,
    /// Test hook: while set, the worker does not drain.
    paused: AtomicBool,
    resume: Notify,
}

impl Queue {
    pub(crate) fn new(capacity: usize, reserved: usize, max_bytes: usize, wake_threshold: usize) -> Self {
        Queue {
            items: ArrayQueue::new(capacity + reserved),
            slots: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            capacity,
            max_bytes,
            wake_threshold: wake_threshold.clamp(1, capacity.max(1)),
            notify: Notify::new(),
            paused: AtomicBool::new(false),
            resume: Notify::new(),
        }
    }

    /// Pushes without blocking; gives the item back when the queue is full.
    // The item is returned by value so a control request can be retried; no allocation either way.
    #[allow(clippy::result_large_err)]
    pub(crate) fn push(&self, item: Item, priority: Priority) -> Result<(), Item> {
        let limit = match priority {
            Priority::Normal => self.capacity,
            Priority::Reserved => self.items.capacity(),
        };
        let prev = self.slots.fetch_add(1, Ordering::AcqRel);
        if prev >= limit {
            self.slots.fetch_sub(1, Ordering::AcqRel);
            return Err(item);
        }
        let size = item.size();
        let prev_bytes = self.bytes.fetch_add(size, Ordering::AcqRel);
        if priority == Priority::Normal && prev_bytes + size > self.max_bytes {
            self.bytes.fetch_sub(size, Ordering::AcqRel);
            self.slots.fetch_sub(1, Ordering::AcqRel);
            return Err(item);
        }
        if let Err(item) = self.items.push(item) {
            // Unreachable while slots <= items.capacity(); undo rather than lose the item.
            self.bytes.fetch_sub(size, Ordering::AcqRel);
            self.slots.fetch_sub(1, Ordering::AcqRel);
            return Err(item);
        }
        if prev == 0 || prev + 1 == self.wake_threshold {
            self.notify.notify_one();
        }
        Ok(())
    }

    /// Takes the oldest item (worker side).
    pub(crate) fn pop(&self) -> Option<Item> {
        let item = self.items.pop()?;
        self.bytes.fetch_sub(item.size(), Ordering::AcqRel);
        self.slots.fetch_sub(1, Ordering::AcqRel);
        Some(item)
    }

    /// Items waiting, including pushes in progress.
    pub(crate) fn len(&self) -> usize {
        self.slots.load(Ordering::Acquire)
    }

    /// At or past the wake threshold: the worker should drain now rather than linger.
    pub(crate) fn is_past_threshold(&self) -> bool {
        self.len() >= self.wake_threshold
    }

    /// Resolves when a caller signalled new items (a stored permit makes it return at once).
    pub(crate) async fn notified(&self) {
        self.notify.notified().await;
    }

    #[cfg(feature = "testing")]
    pub(crate) fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Release);
        if !paused {
            self.resume.notify_one();
            self.notify.notify_one();
        }
    }

    pub(crate) fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    pub(crate) async fn resumed(&self) {
        self.resume.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(size: usize) -> Item {
        let t = Timestamp::from_unix_millis(0);
        Item::Event(QueuedEvent {
            id: MessageId::new_v7(t),
            kind: EventKind::Track,
            timestamp: t,
            queued_at: t,
            routes: 1,
            bytes: EventBytes::from_elem(b'x', size),
            state: Vec::new(),
        })
    }

    #[test]
    fn bounded_by_count_with_reserved_slots_for_state_changes() {
        let q = Queue::new(3, 2, 1 << 20, 2);
        for _ in 0..3 {
            assert!(q.push(event(1), Priority::Normal).is_ok());
        }
        assert!(q.push(event(1), Priority::Normal).is_err());
        assert!(q.push(event(1), Priority::Reserved).is_ok());
        assert!(q.push(event(1), Priority::Reserved).is_ok());
        assert!(q.push(event(1), Priority::Reserved).is_err());
        assert_eq!(q.len(), 5);
        while q.pop().is_some() {}
        assert_eq!(q.len(), 0);
        assert!(q.push(event(1), Priority::Normal).is_ok());
    }

    #[test]
    fn bounded_by_bytes() {
        let q = Queue::new(100, 0, 10, 50);
        assert!(q.push(event(6), Priority::Normal).is_ok());
        assert!(q.push(event(5), Priority::Normal).is_err());
        assert!(q.push(event(4), Priority::Normal).is_ok());
        q.pop();
        assert!(q.push(event(5), Priority::Normal).is_ok());
    }
}

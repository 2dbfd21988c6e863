//! The bounded channel between callers and the worker, bounded by count **and** bytes.
//!
//! The caller side never blocks and never makes a system call in the common case. It is a ring
//! of preallocated slots (after D. Vyukov's bounded MPMC queue): a producer reserves capacity,
//! claims the next position, and copies the event's serialized bytes straight into that slot's
//! reusable buffer. Nothing is allocated per event, nothing large is moved (moving 500-byte
//! items by value cost the caller 16% of its time in the benchmark), and no memory allocated on
//! one thread is freed on another.
//!
//! Each slot's payload sits behind its own `Mutex`, which the slot's stamp already serializes
//! (the producer writes, then publishes the stamp; the worker reads only published slots), so the
//! lock is never contended and the code needs no `unsafe`.
//!
//! The worker is woken only when the queue goes from empty to non-empty or passes the wake
//! threshold, not per event: every wake-up of a parked thread costs the waker a system call.
//!
//! Ordinary events may use `capacity` slots. State-changing calls (identify) and control messages
//! (flush, persist barrier, shutdown) may also use `reserved` extra slots, so a flood of ordinary
//! events can never make an `identify` vanish silently.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::{Notify, oneshot};
use trackway_wire::{EventKind, MessageId, Timestamp};

use crate::store::StateChange;

/// Event heads up to this size are stored inside the slot itself. The slots are one contiguous
/// array, so consecutive pushes write consecutive memory (the prefetcher keeps up, no allocator
/// headers in between) and nothing is allocated per event. Larger events use the slot's
/// overflow buffer, which is kept for reuse.
const SLOT_INLINE: usize = 320;

/// `usage` keeps the byte count in its low bits and the slot count above them.
const COUNT_SHIFT: u32 = 40;
const ONE_SLOT: u64 = 1 << COUNT_SHIFT;
const BYTES_MASK: u64 = ONE_SLOT - 1;

/// Most slots a queue may have (the count must fit above the bytes in `usage`).
pub(crate) const MAX_SLOTS: usize = 1 << 22;

/// An overflow buffer that grew past this (one huge event) is released instead of kept for reuse.
const KEEP_SLOT_BUFFER: usize = 16 * 1024;

/// What the worker needs about an event without parsing its bytes.
#[derive(Debug)]
pub(crate) struct EventMeta {
    pub(crate) id: MessageId,
    pub(crate) kind: EventKind,
    pub(crate) timestamp: Timestamp,
    pub(crate) queued_at: Timestamp,
    /// Bit i set: routed to destination i.
    pub(crate) routes: u64,
    /// The bytes are an event head to complete with the client's context (the usual case); false
    /// when they are a complete event (a `before_send` hook swapped the context).
    pub(crate) head_only: bool,
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
    /// Queue dead letters again; answers how many.
    Requeue { destination: Option<String>, limit: usize, reply: std::sync::mpsc::SyncSender<usize> },
}

/// What the worker takes out of the queue.
#[derive(Debug)]
pub(crate) enum Item {
    /// An event and its bytes (copied out by the worker's `copy` function).
    Event(EventMeta, Bytes),
    Control(Control),
}

/// Which capacity a push may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Priority {
    /// Ordinary events: `capacity` slots, `max_bytes`.
    Normal,
    /// State changes and controls: also the reserved slots, and not bounded by bytes.
    Reserved,
}

/// Capacity popped but not yet handed back (see [`Queue::release`]).
#[derive(Debug, Default)]
pub(crate) struct Taken {
    usage: u64,
}

/// The push failed: the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Full;

#[derive(Debug)]
struct Payload {
    meta: Option<EventMeta>,
    control: Option<Control>,
    len: usize,
    inline: [u8; SLOT_INLINE],
    overflow: Vec<u8>,
}

impl Default for Payload {
    fn default() -> Self {
        Payload { meta: None, control: None, len: 0, inline: [0; SLOT_INLINE], overflow: Vec::new() }
    }
}

impl Payload {
    fn write(&mut self, bytes: &[u8]) {
        self.len = bytes.len();
        if bytes.len() <= SLOT_INLINE {
            self.inline[..bytes.len()].copy_from_slice(bytes);
        } else {
            self.overflow.clear();
            self.overflow.extend_from_slice(bytes);
        }
    }

    fn bytes(&self) -> &[u8] {
        if self.len <= SLOT_INLINE { &self.inline[..self.len] } else { &self.overflow }
    }
}

/// Aligned to two cache lines (the adjacent-line prefetcher pairs them), so the counters callers
/// update and the one the worker updates never share a line.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

#[derive(Debug)]
struct Slot {
    /// `pos` when free for the producer of position `pos`; `pos + 1` once that producer published.
    stamp: AtomicUsize,
    payload: Mutex<Payload>,
}

#[derive(Debug)]
pub(crate) struct Queue {
    slots: Box<[Slot]>,
    /// Next position a producer claims.
    tail: Padded<AtomicUsize>,
    /// Next position the worker reads (only the worker writes it).
    head: Padded<AtomicUsize>,
    /// Slots reserved (high bits) and bytes queued (low bits) in one word, so a push costs one
    /// read-modify-write here. Reserved *before* a position is claimed, so claimed positions never
    /// outrun the slots the worker has freed; the worker releases in bulk after a drain.
    usage: Padded<AtomicU64>,
    capacity: usize,
    max_bytes: usize,
    wake_threshold: usize,
    notify: Notify,
    /// Test hook: while set, the worker does not drain.
    paused: AtomicBool,
    resume: Notify,
}

fn lock(m: &Mutex<Payload>) -> MutexGuard<'_, Payload> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Queue {
    pub(crate) fn new(capacity: usize, reserved: usize, max_bytes: usize, wake_threshold: usize) -> Self {
        let total = (capacity + reserved).min(MAX_SLOTS);
        let capacity = capacity.min(total);
        let max_bytes = max_bytes.min(BYTES_MASK as usize / 2);
        Queue {
            slots: (0..total).map(|i| Slot { stamp: AtomicUsize::new(i), payload: Mutex::default() }).collect(),
            tail: Padded::default(),
            head: Padded::default(),
            usage: Padded::default(),
            capacity,
            max_bytes,
            wake_threshold: wake_threshold.clamp(1, capacity.max(1)),
            notify: Notify::new(),
            paused: AtomicBool::new(false),
            resume: Notify::new(),
        }
    }

    /// Copies an event into the queue without blocking.
    pub(crate) fn push_event(&self, meta: EventMeta, bytes: &[u8], priority: Priority) -> Result<(), Full> {
        let (pos, prev) = self.claim(bytes.len(), priority)?;
        self.publish(pos, prev, |p| {
            p.meta = Some(meta);
            p.write(bytes);
        });
        Ok(())
    }

    /// Queues a control request (reserved capacity); gives it back when even that is full.
    pub(crate) fn push_control(&self, control: Control) -> Result<(), Control> {
        match self.claim(0, Priority::Reserved) {
            Ok((pos, prev)) => {
                self.publish(pos, prev, |p| p.control = Some(control));
                Ok(())
            }
            Err(Full) => Err(control),
        }
    }

    /// Reserves capacity and claims a position; returns it with the previous reservation count.
    fn claim(&self, size: usize, priority: Priority) -> Result<(usize, usize), Full> {
        let limit = match priority {
            Priority::Normal => self.capacity,
            Priority::Reserved => self.slots.len(),
        };
        // Events bigger than the whole byte budget still count as the budget, not more, so the
        // bytes field cannot overflow into the count.
        let size = (size as u64).min(self.max_bytes as u64);
        let prev = self.usage.fetch_add(ONE_SLOT + size, Ordering::AcqRel);
        let (count, bytes) = ((prev >> COUNT_SHIFT) as usize, prev & BYTES_MASK);
        if count >= limit || (priority == Priority::Normal && bytes + size > self.max_bytes as u64) {
            self.usage.fetch_sub(ONE_SLOT + size, Ordering::AcqRel);
            return Err(Full);
        }
        Ok((self.tail.fetch_add(1, Ordering::AcqRel), count))
    }

    fn publish(&self, pos: usize, prev: usize, write: impl FnOnce(&mut Payload)) {
        let slot = &self.slots[pos % self.slots.len()];
        // The reservation guarantees the worker has freed this slot (it frees before releasing
        // the reservation), so this loop does not spin; it is a guard, not a wait.
        while slot.stamp.load(Ordering::Acquire) != pos {
            std::thread::yield_now();
        }
        write(&mut lock(&slot.payload));
        slot.stamp.store(pos + 1, Ordering::Release);
        if prev == 0 || prev + 1 == self.wake_threshold {
            self.notify.notify_one();
        }
    }

    /// Takes the oldest published item (worker side); `copy` turns event bytes into the worker's
    /// own storage. `None` when empty or when the next position is claimed but not yet written.
    ///
    /// The slot is free again at once, but its capacity is handed back only by
    /// [`release`](Self::release): one atomic operation per drain instead of one per item keeps
    /// the counter's cache line with the callers.
    pub(crate) fn pop(&self, copy: impl FnOnce(&[u8]) -> Bytes, taken: &mut Taken) -> Option<Item> {
        let head = self.head.load(Ordering::Relaxed);
        let slot = &self.slots[head % self.slots.len()];
        if slot.stamp.load(Ordering::Acquire) != head + 1 {
            return None;
        }
        let (item, size) = {
            let mut p = lock(&slot.payload);
            let item = match (p.meta.take(), p.control.take()) {
                (Some(meta), _) => Item::Event(meta, copy(p.bytes())),
                (None, Some(control)) => Item::Control(control),
                // Unreachable: a published slot holds one or the other.
                (None, None) => Item::Control(Control::Persisted(Reply::Discard)),
            };
            let size = std::mem::take(&mut p.len);
            if p.overflow.capacity() > KEEP_SLOT_BUFFER {
                p.overflow = Vec::new();
            }
            (item, size)
        };
        slot.stamp.store(head + self.slots.len(), Ordering::Release);
        self.head.store(head + 1, Ordering::Relaxed);
        taken.usage += ONE_SLOT + (size as u64).min(self.max_bytes as u64);
        Some(item)
    }

    /// Hands back the capacity of the items popped since the last release.
    pub(crate) fn release(&self, taken: &mut Taken) {
        if taken.usage > 0 {
            self.usage.fetch_sub(taken.usage, Ordering::AcqRel);
            taken.usage = 0;
        }
    }

    /// Items waiting, including pushes in progress (and popped items not yet released).
    pub(crate) fn len(&self) -> usize {
        (self.usage.load(Ordering::Acquire) >> COUNT_SHIFT) as usize
    }

    /// At or past the wake threshold: the worker should drain now rather than wait.
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
    use std::sync::Arc;

    use super::*;

    fn meta() -> EventMeta {
        let t = Timestamp::from_unix_millis(0);
        EventMeta {
            id: MessageId::new_v7(t),
            kind: EventKind::Track,
            timestamp: t,
            queued_at: t,
            routes: 1,
            head_only: false,
            state: Vec::new(),
        }
    }

    fn pop_bytes(q: &Queue) -> Option<Vec<u8>> {
        let mut taken = Taken::default();
        let item = q.pop(Bytes::copy_from_slice, &mut taken);
        q.release(&mut taken);
        match item? {
            Item::Event(_, b) => Some(b.to_vec()),
            Item::Control(_) => Some(b"control".to_vec()),
        }
    }

    #[test]
    fn bounded_by_count_with_reserved_slots_for_state_changes() {
        let q = Queue::new(3, 2, 1 << 20, 2);
        for _ in 0..3 {
            assert!(q.push_event(meta(), b"x", Priority::Normal).is_ok());
        }
        assert_eq!(q.push_event(meta(), b"x", Priority::Normal), Err(Full));
        assert!(q.push_event(meta(), b"x", Priority::Reserved).is_ok());
        assert!(q.push_control(Control::Flush(Reply::Discard)).is_ok());
        assert!(q.push_control(Control::Flush(Reply::Discard)).is_err());
        assert_eq!(q.len(), 5);
        let mut n = 0;
        while pop_bytes(&q).is_some() {
            n += 1;
        }
        assert_eq!((n, q.len()), (5, 0));
        assert!(q.push_event(meta(), b"x", Priority::Normal).is_ok());
    }

    #[test]
    fn bounded_by_bytes() {
        let q = Queue::new(100, 0, 10, 50);
        assert!(q.push_event(meta(), &[1; 6], Priority::Normal).is_ok());
        assert!(q.push_event(meta(), &[1; 5], Priority::Normal).is_err());
        assert!(q.push_event(meta(), &[1; 4], Priority::Normal).is_ok());
        pop_bytes(&q);
        assert!(q.push_event(meta(), &[1; 5], Priority::Normal).is_ok());
    }

    #[test]
    fn fifo_across_many_laps_of_the_ring() {
        let q = Queue::new(4, 1, 1 << 20, 2);
        let mut expected = 0u32;
        for i in 0..1000u32 {
            q.push_event(meta(), &i.to_le_bytes(), Priority::Normal).expect("room");
            if i % 3 == 2 {
                while let Some(b) = pop_bytes(&q) {
                    assert_eq!(b, expected.to_le_bytes());
                    expected += 1;
                }
            }
        }
    }

    #[test]
    fn many_producers_one_consumer_lose_nothing_and_keep_each_producers_order() {
        let q = Arc::new(Queue::new(64, 8, 1 << 20, 16));
        let producers = 4;
        let per = 20_000u32;
        let handles: Vec<_> = (0..producers)
            .map(|p| {
                let q = q.clone();
                std::thread::spawn(move || {
                    let mut i = 0;
                    while i < per {
                        let mut b = [0u8; 8];
                        b[..4].copy_from_slice(&(p as u32).to_le_bytes());
                        b[4..].copy_from_slice(&i.to_le_bytes());
                        if q.push_event(meta(), &b, Priority::Normal).is_ok() {
                            i += 1;
                        } else {
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        let mut next = vec![0u32; producers];
        let mut total = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while total < producers * per as usize {
            assert!(std::time::Instant::now() < deadline, "watchdog: consumer stalled at {total}");
            match pop_bytes(&q) {
                Some(b) => {
                    let p = u32::from_le_bytes(b[..4].try_into().expect("4")) as usize;
                    let i = u32::from_le_bytes(b[4..].try_into().expect("4"));
                    assert_eq!(i, next[p], "producer {p} out of order");
                    next[p] += 1;
                    total += 1;
                }
                None => std::thread::yield_now(),
            }
        }
        for h in handles {
            h.join().expect("producer");
        }
        assert_eq!(q.len(), 0);
    }
}

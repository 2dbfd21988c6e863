//! The bounded channel between callers and the worker, bounded by count **and** bytes.
//!
//! The caller side never blocks and never makes a system call in the common case. It is a ring
//! of preallocated slots (after D. Vyukov's bounded MPMC queue): a producer reserves capacity,
//! claims the next position, and copies the event's serialized bytes straight into that slot's
//! reusable buffer. Nothing large is moved (moving 500-byte items by value cost the caller 16% of
//! its time in the benchmark), and in the common case (an event head of up to `SLOT_INLINE`
//! bytes that changes no client state) nothing is allocated per event.
//!
//! Memory does cross threads, in three cases: a larger event grows its slot's overflow buffer on
//! the caller's thread, and the worker frees that buffer once the buffers kept for reuse pass a
//! quarter of the byte budget; the state changes an event carries (app mode, checkpoints) are
//! allocated by the caller and dropped by the worker; and so are control requests (their reply
//! channel, a user id to purge).
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
//!
//! # The spill
//!
//! A full ring does not refuse an ordinary event at once: while the worker is draining, the event
//! goes to the *spill*, a list behind one mutex, within what is left of the byte budget. The ring
//! is sized for the common case (it is preallocated: every slot costs its inline buffer whether
//! used or not); a burst that outruns the worker for a few milliseconds (a drain of a full ring
//! takes 9 to 23 ms on the 2-core benchmark machine, as long as the caller takes to fill it again)
//! lands in memory allocated only then, instead of being dropped as `queue_full` (it lost 5 000
//! to 40 000 events of a 200 000-event burst in some runs). Only callers in such a burst pay for
//! it (a lock and an allocation per event): one that finds the ring full, and, while events wait
//! in the spill, every ordinary push (so that it does not overtake them), until the worker has
//! emptied it. The byte budget counts each spilled event's entry too; the ring's own check does
//! not look at the spill, so a producer that raced the first spill past the ring may exceed the
//! budget by its one event.
//!
//! The worker closes the spill while a durable store's staging is past half its bound (the burst
//! is already taking memory there, and at the bound the worker stops draining) and while the
//! test hook pauses it: a full ring then refuses and counts, as before, so memory does not grow
//! with a burst the store cannot take (a 1 000 000-event burst held 7 MB more in the spill while
//! it stayed open until the bound).
//!
//! Order is kept: a spilled event records the ring's tail when it was spilled, and the worker
//! takes it once every ring position claimed before it is taken. While anything is spilled,
//! ordinary events go to the spill too, so one thread's events never overtake each other.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

// Positions are u64 everywhere: a usize position would wrap on 32-bit targets after 2^32 pushes,
// and `%` by a slot count that is not a power of two would then jump.
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::{Notify, oneshot};
use trackway_wire::{EventKind, MessageId, Timestamp};

use crate::store::StateChange;

/// Event heads up to this size are stored inside the slot itself. The slots are one contiguous
/// array, so consecutive pushes write consecutive memory (the prefetcher keeps up, no allocator
/// headers in between) and nothing is allocated per event. Larger events use the slot's
/// overflow buffer, which is kept for reuse (within a share of the byte budget).
///
/// 384 rather than 320: an app-mode event carries an anonymous id and a session id (~90 bytes
/// more than the same server-mode event), and at 320 a typical one with a few default properties
/// spilled into the overflow buffers, taking its p99 from 1.6 µs to 12 µs (`benches/app_mode.rs`).
/// The extra 64 bytes per slot (1 MiB at the default capacity) did not move the pipeline
/// benchmark's peak RSS beyond its noise.
const SLOT_INLINE: usize = 384;

/// `usage` keeps the byte count in its low bits and the slot count above them.
const COUNT_SHIFT: u32 = 40;
const ONE_SLOT: u64 = 1 << COUNT_SHIFT;
const BYTES_MASK: u64 = ONE_SLOT - 1;

/// Most slots a queue may have (the count must fit above the bytes in `usage`).
pub(crate) const MAX_SLOTS: usize = 1 << 22;

/// Overflow buffers (events over `SLOT_INLINE`) are kept for reuse only within this share of the
/// queue's byte budget, so large events cannot pin memory beyond what `max_bytes` promises.
const KEEP_OVERFLOW_SHARE: usize = 4;

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

/// What a barrier (flush, persist, shutdown) answers: done, or why it could not be done.
pub(crate) type Done = Result<(), String>;

/// Where the worker sends its answer to a control request: a blocking caller waits on a std
/// channel (with a timeout), an async caller on a oneshot.
#[derive(Debug)]
pub(crate) enum Reply<T = Done> {
    Sync(std::sync::mpsc::SyncSender<T>),
    Async(oneshot::Sender<T>),
    /// No one is waiting.
    Discard,
}

impl<T> Reply<T> {
    /// Sends the answer. The caller may have timed out and gone; that is fine.
    pub(crate) fn answer(self, value: T) {
        match self {
            Reply::Sync(tx) => {
                let _ = tx.try_send(value);
            }
            Reply::Async(tx) => {
                let _ = tx.send(value);
            }
            Reply::Discard => {}
        }
    }
}

impl Reply {
    /// Answers "done".
    pub(crate) fn send(self) {
        self.answer(Ok(()));
    }

    /// Answers "this could not be done", with why.
    pub(crate) fn fail(self, why: String) {
        self.answer(Err(why));
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
    DeadLetters { limit: usize, reply: Reply<Vec<crate::store::DeadLetter>> },
    /// Queue dead letters again; answers how many.
    Requeue { destination: Option<String>, limit: usize, reply: Reply<usize> },
    /// State changes committed with the events queued before them (a checkpoint).
    State(Vec<crate::store::StateChange>),
    /// Remove the queued events (of one user, when given); answers how many.
    Purge { user: Option<String>, reply: Reply<u64> },
    /// Open a lane (and a store cursor) for a destination added at run time, at `index`, and
    /// store its spec with the events queued before it. Taken at once in the drain, so every
    /// event queued after it finds the lane.
    AddDestination {
        index: usize,
        destination: std::sync::Arc<dyn crate::destination::Destination>,
        setup: Box<crate::pipeline::LaneSetup>,
        spec: crate::store::StateChange,
        reply: Reply<Result<(), String>>,
    },
    /// Test hook: the worker panics when it takes this out of the queue.
    #[cfg(feature = "testing")]
    PanicForTest,
}

/// What the worker takes out of the queue.
#[derive(Debug)]
pub(crate) enum Item<B = Bytes> {
    /// An event and what the worker's `copy` function made of its bytes.
    Event(EventMeta, B),
    Control(Control),
}

/// Which capacity a push may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Priority {
    /// Ordinary events: `capacity` slots, then the spill (see the module doc), within `max_bytes`.
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
    /// Boxed: controls are rare, and unboxed the largest (`AddDestination`) made every one of
    /// the ring's slots ~100 bytes bigger (1.5 MB of a full 16 384-slot ring).
    control: Option<Box<Control>>,
    len: usize,
    inline: [u8; SLOT_INLINE],
    overflow: Vec<u8>,
    /// The part of `overflow`'s capacity counted in `Queue::retained` (worker side).
    counted: usize,
}

impl Default for Payload {
    fn default() -> Self {
        Payload { meta: None, control: None, len: 0, inline: [0; SLOT_INLINE], overflow: Vec::new(), counted: 0 }
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
    stamp: AtomicU64,
    payload: Mutex<Payload>,
}

/// An ordinary event that found the ring full (see the module doc).
#[derive(Debug)]
struct Spilled {
    /// The ring's tail when it was spilled: it is taken after every ring position below.
    after: u64,
    meta: EventMeta,
    bytes: Box<[u8]>,
}

/// What a spilled event costs beyond its bytes: its entry in the list and its allocation's
/// header (counted against the byte budget).
const SPILLED_ENTRY: usize = std::mem::size_of::<Spilled>() + 16;

/// The spilled events, oldest first, and what they cost (bytes and entries).
#[derive(Debug, Default)]
struct Spill {
    events: VecDeque<Spilled>,
    bytes: usize,
}

#[derive(Debug)]
pub(crate) struct Queue {
    slots: Box<[Slot]>,
    /// Next position a producer claims.
    tail: Padded<AtomicU64>,
    /// Next position the worker reads (only the worker writes it).
    head: Padded<AtomicU64>,
    /// Slots reserved (high bits) and bytes queued (low bits) in one word, so a push costs one
    /// read-modify-write here. Reserved *before* a position is claimed, so claimed positions never
    /// outrun the slots the worker has freed; the worker releases in bulk after a drain.
    usage: Padded<AtomicU64>,
    capacity: usize,
    max_bytes: usize,
    wake_threshold: usize,
    /// Bytes of overflow buffers kept for reuse (only the worker changes it).
    retained: AtomicUsize,
    spill: Mutex<Spill>,
    /// Events in `spill` (changed under its lock; read without it, to skip the lock when 0).
    spilled: Padded<AtomicUsize>,
    /// The worker is draining: a full ring spills. False while it holds back on purpose.
    absorbing: AtomicBool,
    notify: Notify,
    /// Test hook: while set, the worker does not drain.
    paused: AtomicBool,
    resume: Notify,
    /// The worker panicked: nothing is stored or sent any more (see `pipeline::stopped`).
    worker_gone: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Queue {
    pub(crate) fn new(capacity: usize, reserved: usize, max_bytes: usize, wake_threshold: usize) -> Self {
        let total = capacity.saturating_add(reserved).min(MAX_SLOTS);
        let capacity = capacity.min(total);
        let max_bytes = max_bytes.min(BYTES_MASK as usize / 2);
        Queue {
            slots: (0..total).map(|i| Slot { stamp: AtomicU64::new(i as u64), payload: Mutex::default() }).collect(),
            tail: Padded::default(),
            head: Padded::default(),
            usage: Padded::default(),
            capacity,
            max_bytes,
            wake_threshold: wake_threshold.clamp(1, capacity.max(1)),
            retained: AtomicUsize::new(0),
            spill: Mutex::default(),
            spilled: Padded::default(),
            absorbing: AtomicBool::new(true),
            notify: Notify::new(),
            paused: AtomicBool::new(false),
            resume: Notify::new(),
            worker_gone: AtomicBool::new(false),
        }
    }

    /// Copies an event into the queue without blocking: into the ring, or when that is full (or
    /// events wait in the spill already, which it must not overtake) into the spill.
    pub(crate) fn push_event(&self, meta: EventMeta, bytes: &[u8], priority: Priority) -> Result<(), Full> {
        if priority == Priority::Normal && self.spilled.load(Ordering::Acquire) > 0 {
            return self.push_spilled(meta, bytes);
        }
        match self.claim(bytes.len(), priority) {
            Ok((pos, prev)) => {
                self.publish(pos, prev, |p| {
                    p.meta = Some(meta);
                    p.write(bytes);
                });
                Ok(())
            }
            Err(Full) if priority == Priority::Normal => self.push_spilled(meta, bytes),
            Err(Full) => Err(Full),
        }
    }

    /// Adds an event to the spill, if the worker is draining and the byte budget has room.
    fn push_spilled(&self, meta: EventMeta, bytes: &[u8]) -> Result<(), Full> {
        if !self.absorbing.load(Ordering::Acquire) || self.is_paused() {
            return Err(Full);
        }
        let mut spill = lock(&self.spill);
        let in_ring = (self.usage.load(Ordering::Acquire) & BYTES_MASK) as usize;
        // Each spilled event counts with its entry, not its bytes alone: small events would
        // otherwise let the list's own memory pass the budget several times over.
        let cost = bytes.len() + SPILLED_ENTRY;
        if in_ring + spill.bytes + cost > self.max_bytes {
            return Err(Full);
        }
        // Read under the lock, so the spill's `after`s never decrease.
        let after = self.tail.load(Ordering::Acquire);
        spill.events.push_back(Spilled { after, meta, bytes: bytes.into() });
        spill.bytes += cost;
        let before = self.spilled.fetch_add(1, Ordering::AcqRel);
        drop(spill);
        if before == 0 {
            self.notify.notify_one();
        }
        Ok(())
    }

    /// Takes the oldest spilled event if no ring position claimed before it is still to be taken.
    fn pop_spilled<B>(&self, head: u64, copy: impl FnOnce(&[u8]) -> B) -> Result<Item<B>, impl FnOnce(&[u8]) -> B> {
        if self.spilled.load(Ordering::Acquire) == 0 {
            return Err(copy);
        }
        let mut spill = lock(&self.spill);
        if spill.events.front().is_none_or(|s| s.after > head) {
            return Err(copy);
        }
        let Some(s) = spill.events.pop_front() else { return Err(copy) };
        spill.bytes -= s.bytes.len() + SPILLED_ENTRY;
        if spill.events.is_empty() {
            // A burst's list is let go with its last event, not kept for the life of the client.
            spill.events = VecDeque::new();
        }
        self.spilled.fetch_sub(1, Ordering::AcqRel);
        drop(spill);
        Ok(Item::Event(s.meta, copy(&s.bytes)))
    }

    /// The worker says whether it is draining (a full ring then spills) or holding back on
    /// purpose (a full ring refuses). Called every loop: it writes only when that changes.
    pub(crate) fn set_absorbing(&self, absorbing: bool) {
        if self.absorbing.load(Ordering::Relaxed) != absorbing {
            self.absorbing.store(absorbing, Ordering::Release);
        }
    }

    /// Queues a control request (reserved capacity); gives it back when even that is full.
    pub(crate) fn push_control(&self, control: Control) -> Result<(), Control> {
        match self.claim(0, Priority::Reserved) {
            Ok((pos, prev)) => {
                self.publish(pos, prev, |p| p.control = Some(Box::new(control)));
                Ok(())
            }
            Err(Full) => Err(control),
        }
    }

    /// Reserves capacity and claims a position; returns it with the previous reservation count.
    ///
    /// A compare-and-swap loop rather than add-then-undo: a failing push never inflates the
    /// count, even for an instant, so a reserved push (identify, flush) cannot be refused while
    /// reserved slots are free.
    fn claim(&self, size: usize, priority: Priority) -> Result<(u64, usize), Full> {
        let limit = match priority {
            Priority::Normal => self.capacity,
            Priority::Reserved => self.slots.len(),
        };
        // An event bigger than the whole byte budget counts as the budget, so the bytes field
        // cannot overflow into the count (the client caps event size well below it anyway).
        let size = (size as u64).min(self.max_bytes as u64);
        let mut current = self.usage.load(Ordering::Acquire);
        loop {
            let (count, bytes) = ((current >> COUNT_SHIFT) as usize, current & BYTES_MASK);
            if count >= limit || (priority == Priority::Normal && bytes + size > self.max_bytes as u64) {
                return Err(Full);
            }
            match self.usage.compare_exchange_weak(
                current,
                current + ONE_SLOT + size,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok((self.tail.fetch_add(1, Ordering::AcqRel), count)),
                Err(actual) => current = actual,
            }
        }
    }

    fn slot(&self, pos: u64) -> &Slot {
        &self.slots[(pos % self.slots.len() as u64) as usize]
    }

    fn publish(&self, pos: u64, prev: usize, write: impl FnOnce(&mut Payload)) {
        let slot = self.slot(pos);
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

    /// Takes the oldest item (worker side): a spilled event whose ring positions before it are
    /// all taken, else the ring's next published slot. `copy` turns event bytes into the
    /// worker's own storage. `None` when empty, or when the next position is claimed but not
    /// yet written (and no spilled event may go before it).
    ///
    /// The slot is free again at once, but its capacity is handed back only by
    /// [`release`](Self::release): one atomic operation per drain instead of one per item keeps
    /// the counter's cache line with the callers.
    pub(crate) fn pop<B>(&self, copy: impl FnOnce(&[u8]) -> B, taken: &mut Taken) -> Option<Item<B>> {
        let head = self.head.load(Ordering::Relaxed);
        let slot = self.slot(head);
        // The stamp before the spill: a producer spills, then publishes its next ring item (a
        // flush, an identify), so a published slot makes that spill visible here, and the
        // spilled event goes first. Read the other way round, the spill could look empty, then
        // both land, and the flush would overtake the event its own thread queued before it.
        let published = slot.stamp.load(Ordering::Acquire) == head + 1;
        let copy = match self.pop_spilled(head, copy) {
            Ok(item) => return Some(item),
            Err(copy) => copy,
        };
        if !published {
            return None;
        }
        let (item, size) = {
            let mut p = lock(&slot.payload);
            let item = match (p.meta.take(), p.control.take()) {
                (Some(meta), _) => Item::Event(meta, copy(p.bytes())),
                (None, Some(control)) => Item::Control(*control),
                // Unreachable: a published slot holds one or the other.
                (None, None) => Item::Control(Control::Persisted(Reply::Discard)),
            };
            let size = std::mem::take(&mut p.len);
            self.keep_or_release_overflow(&mut p);
            (item, size)
        };
        slot.stamp.store(head + self.slots.len() as u64, Ordering::Release);
        self.head.store(head + 1, Ordering::Relaxed);
        taken.usage += ONE_SLOT + (size as u64).min(self.max_bytes as u64);
        Some(item)
    }

    /// Keeps a slot's overflow buffer for the next large event only while the buffers kept stay
    /// within a quarter of the byte budget; otherwise frees it.
    fn keep_or_release_overflow(&self, p: &mut Payload) {
        let capacity = p.overflow.capacity();
        if capacity == p.counted {
            return;
        }
        let retained = self.retained.load(Ordering::Relaxed) - p.counted;
        if retained + capacity <= self.max_bytes / KEEP_OVERFLOW_SHARE {
            self.retained.store(retained + capacity, Ordering::Relaxed);
            p.counted = capacity;
        } else {
            self.retained.store(retained, Ordering::Relaxed);
            p.overflow = Vec::new();
            p.counted = 0;
        }
    }

    /// Hands back the capacity of the items popped since the last release.
    pub(crate) fn release(&self, taken: &mut Taken) {
        if taken.usage > 0 {
            self.usage.fetch_sub(taken.usage, Ordering::AcqRel);
            taken.usage = 0;
        }
    }

    /// Most items one drain should take: a drain that never ends would starve everything else.
    pub(crate) fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Items waiting, including pushes in progress (and popped items not yet released), and the
    /// spilled events.
    pub(crate) fn len(&self) -> usize {
        self.ring_len() + self.spilled.load(Ordering::Acquire)
    }

    /// Items in the ring, including pushes in progress (and popped items not yet released).
    fn ring_len(&self) -> usize {
        (self.usage.load(Ordering::Acquire) >> COUNT_SHIFT) as usize
    }

    /// Whether an ordinary event would find no room now (a waiting enqueue checks this before it
    /// prepares the event again): the ring is full and the spill is closed or has no room for
    /// another entry. A hint: an event larger than the room left is still refused, and the
    /// waiting enqueue then pauses and looks again.
    pub(crate) fn looks_full(&self) -> bool {
        let ring_full = self.ring_len() >= self.capacity || self.spilled.load(Ordering::Acquire) > 0;
        ring_full && {
            let open = self.absorbing.load(Ordering::Acquire) && !self.is_paused();
            let in_ring = (self.usage.load(Ordering::Acquire) & BYTES_MASK) as usize;
            !open || in_ring + lock(&self.spill).bytes + SPILLED_ENTRY >= self.max_bytes
        }
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

    /// Marks the worker as gone (it panicked): callers check this before queuing anything.
    pub(crate) fn set_worker_gone(&self) {
        self.worker_gone.store(true, Ordering::Release);
    }

    /// Whether the worker panicked: what is queued now is refused and counted, never stored.
    pub(crate) fn worker_gone(&self) -> bool {
        self.worker_gone.load(Ordering::Acquire)
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
    fn a_ring_slot_is_its_inline_buffer_plus_a_little() {
        // A full ring is 16 384 of these: every byte here is 16 KB of a burst's peak memory.
        let size = std::mem::size_of::<Slot>();
        assert!(size <= SLOT_INLINE + 136, "{size} bytes per slot (520 with the control boxed, 617 before)");
    }

    #[test]
    fn bounded_by_count_with_reserved_slots_for_state_changes() {
        let q = Queue::new(3, 2, 1 << 20, 2);
        // The worker holds back: a full ring refuses instead of spilling.
        q.set_absorbing(false);
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
    fn reserved_pushes_get_in_while_ordinary_pushes_flood_a_full_queue() {
        let q = Arc::new(Queue::new(32, 4, 1 << 20, 8));
        q.set_absorbing(false);
        for _ in 0..32 {
            q.push_event(meta(), b"x", Priority::Normal).expect("room");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flooders: Vec<_> = (0..8)
            .map(|_| {
                let (q, stop) = (q.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        assert!(q.push_event(meta(), b"x", Priority::Normal).is_err(), "the queue is full");
                    }
                })
            })
            .collect();
        // Failing ordinary pushes never inflate the count, so every reserved push finds its slot.
        for _ in 0..2_000 {
            q.push_control(Control::Flush(Reply::Discard)).expect("a reserved slot is free");
            let mut taken = Taken::default();
            // Pop the control back out (it is behind the 32 events): rotate them.
            while let Some(item) = q.pop(Bytes::copy_from_slice, &mut taken) {
                if matches!(item, Item::Control(_)) {
                    break;
                }
                q.release(&mut taken);
                q.push_event(meta(), b"x", Priority::Reserved).expect("room again");
            }
            q.release(&mut taken);
        }
        stop.store(true, Ordering::Relaxed);
        for f in flooders {
            f.join().expect("flooder");
        }
    }

    /// Pops everything, as numbers (each event's bytes are its number).
    fn pop_numbers(q: &Queue) -> Vec<u32> {
        std::iter::from_fn(|| pop_bytes(q)).map(|b| u32::from_le_bytes(b[..4].try_into().expect("4"))).collect()
    }

    fn push_number(q: &Queue, i: u32, priority: Priority) -> Result<(), Full> {
        q.push_event(meta(), &i.to_le_bytes(), priority)
    }

    #[test]
    fn a_drained_spill_lets_its_list_go() {
        let q = Queue::new(1, 0, 1 << 20, 1);
        for i in 0..1000 {
            push_number(&q, i, Priority::Normal).expect("room");
        }
        assert!(lock(&q.spill).events.capacity() >= 999);
        assert_eq!(pop_numbers(&q).len(), 1000);
        assert_eq!(lock(&q.spill).events.capacity(), 0, "the burst's list is freed");
    }

    #[test]
    fn a_full_ring_spills_within_the_byte_budget_and_keeps_the_order() {
        // 4 in the ring (16 bytes), then 6 spilled, each its 4 bytes and its entry.
        let q = Queue::new(4, 1, 16 + 6 * (4 + SPILLED_ENTRY), 2);
        for i in 0..10 {
            push_number(&q, i, Priority::Normal).expect("room in the ring or the spill");
        }
        assert_eq!(push_number(&q, 10, Priority::Normal), Err(Full), "the byte budget is spent");
        assert_eq!(q.len(), 10);
        assert!(q.looks_full());
        // The ring's four out, then two spilled ones: room for two more entries, which still
        // queue behind the spilled events though the ring is empty.
        let first: Vec<u32> =
            (0..6).filter_map(|_| pop_bytes(&q)).map(|b| u32::from_le_bytes(b[..4].try_into().expect("4"))).collect();
        assert_eq!(first, [0, 1, 2, 3, 4, 5]);
        assert!(!q.looks_full());
        push_number(&q, 10, Priority::Normal).expect("room");
        push_number(&q, 11, Priority::Normal).expect("room");
        assert_eq!(q.spilled.load(Ordering::Relaxed), 6, "behind the spilled ones, not in the ring");
        assert_eq!(pop_numbers(&q), (6..12).collect::<Vec<_>>());
        assert_eq!((q.len(), lock(&q.spill).bytes), (0, 0));
        // Empty again: the ring is used first.
        push_number(&q, 12, Priority::Normal).expect("room");
        assert_eq!(q.spilled.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_flush_never_overtakes_the_event_its_thread_spilled_before_it() {
        // The race a review found: the worker looked at the spill (empty), the producer spilled
        // an event and published a flush in a reserved slot, and the worker then took the flush
        // first. Round after round for about a second: the ring is full by count (one popped,
        // not released), the producer spills `A` then queues a flush, and the worker must take
        // `A` first. Before the fix this failed within a few thousand rounds.
        let q = Arc::new(Queue::new(1, 1, 1 << 20, 1));
        let round = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let producer = {
            let (q, round, stop) = (q.clone(), round.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut r = 0;
                while !stop.load(Ordering::Acquire) {
                    // Odd: the worker popped its event and waits; go.
                    if round.load(Ordering::Acquire) != 2 * r + 1 {
                        std::hint::spin_loop();
                        continue;
                    }
                    q.push_event(meta(), b"A", Priority::Normal).expect("spilled");
                    q.push_control(Control::Flush(Reply::Discard)).expect("a reserved slot");
                    r += 1;
                }
            })
        };
        let started = std::time::Instant::now();
        let deadline = started + std::time::Duration::from_secs(30);
        let mut r = 0;
        while started.elapsed() < std::time::Duration::from_secs(1) {
            let mut taken = Taken::default();
            q.push_event(meta(), b"X", Priority::Normal).expect("the ring is empty");
            assert!(matches!(q.pop(|b| b.to_vec(), &mut taken), Some(Item::Event(..))));
            round.store(2 * r + 1, Ordering::Release);
            let mut next = || loop {
                assert!(std::time::Instant::now() < deadline, "watchdog: nothing to pop in round {r}");
                if let Some(item) = q.pop(|b| b.to_vec(), &mut taken) {
                    break item;
                }
            };
            assert!(
                matches!(next(), Item::Event(..)),
                "round {r}: the flush came out before the event queued before it"
            );
            assert!(matches!(next(), Item::Control(Control::Flush(_))));
            q.release(&mut taken);
            round.store(2 * r + 2, Ordering::Release);
            r += 1;
        }
        stop.store(true, Ordering::Release);
        producer.join().expect("producer");
    }

    #[test]
    fn an_event_in_a_reserved_slot_comes_after_the_events_spilled_before_it() {
        let q = Queue::new(2, 2, 1 << 20, 2);
        for i in 0..4 {
            push_number(&q, i, Priority::Normal).expect("room");
        }
        // An identify: a reserved slot, at a ring position claimed after 2 and 3 were spilled.
        push_number(&q, 4, Priority::Reserved).expect("a reserved slot");
        push_number(&q, 5, Priority::Normal).expect("spilled");
        assert_eq!(pop_numbers(&q), [0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn a_worker_that_holds_back_or_is_paused_closes_the_spill() {
        let q = Queue::new(2, 0, 1 << 20, 2);
        for i in 0..2 {
            push_number(&q, i, Priority::Normal).expect("room");
        }
        q.set_absorbing(false);
        assert_eq!(push_number(&q, 2, Priority::Normal), Err(Full));
        assert!(q.looks_full());
        q.set_absorbing(true);
        push_number(&q, 2, Priority::Normal).expect("spilled");
        q.paused.store(true, Ordering::Release);
        assert_eq!(push_number(&q, 3, Priority::Normal), Err(Full), "paused: refused, as with a full ring before");
        q.paused.store(false, Ordering::Release);
        assert_eq!(pop_numbers(&q), [0, 1, 2]);
    }

    #[test]
    fn large_events_do_not_pin_more_than_a_share_of_the_byte_budget() {
        let q = Queue::new(64, 0, 64 * 1024, 8);
        let big = vec![7u8; 10_000];
        for _ in 0..10 {
            for _ in 0..6 {
                q.push_event(meta(), &big, Priority::Normal).expect("room");
            }
            while pop_bytes(&q).is_some() {}
        }
        let retained = q.retained.load(Ordering::Relaxed);
        assert!(retained <= 64 * 1024 / KEEP_OVERFLOW_SHARE, "{retained} bytes of overflow buffers kept");
    }

    #[test]
    fn many_producers_one_consumer_lose_nothing_and_keep_each_producers_order() {
        let q = Arc::new(Queue::new(64, 8, 1 << 20, 16));
        assert_producers_order(&q);
    }

    #[test]
    fn many_producers_through_a_tiny_ring_spill_and_keep_each_producers_order() {
        // A 4-slot ring: most events go through the spill, and back to the ring when it empties.
        let q = Arc::new(Queue::new(4, 2, 1 << 24, 2));
        let most_spilled = assert_producers_order(&q);
        assert!(most_spilled > 0, "the spill was used");
    }

    /// Four producers, one consumer; returns the most events seen in the spill.
    fn assert_producers_order(q: &Arc<Queue>) -> usize {
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
        let mut most_spilled = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while total < producers * per as usize {
            assert!(std::time::Instant::now() < deadline, "watchdog: consumer stalled at {total}");
            most_spilled = most_spilled.max(q.spilled.load(Ordering::Relaxed));
            match pop_bytes(q) {
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
        most_spilled
    }
}

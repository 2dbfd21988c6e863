//! Event bytes copied out of the queue into shared chunks, cut into one run per drain.
//!
//! One allocation per ~200 events instead of one per event, all made and freed on the worker
//! thread. Chunks are small (64 KiB) because one long-lived event (a destination that is down)
//! keeps its whole chunk alive. Chunks are reused once every event in them is gone: the profile
//! showed a quarter of the worker's time in page faults, zeroing fresh memory for each new chunk
//! that the allocator had just handed back to the system after the previous ones were delivered.
//!
//! A drain's events are cut as one run (one frozen `Bytes`, or a few where a chunk filled), and
//! each event gets its slice, the first of a run the run too (`NewEvent::run`): the memory store
//! keeps a span of the run (12 bytes) per event instead of a `Bytes` handle (32), which under a
//! burst of 200 000 events held in memory is ~3 MB of the peak.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::store::NewEvent;

/// The chunks, and the run being cut in the current drain.
#[derive(Debug, Default)]
pub(super) struct Segments {
    current: BytesMut,
    /// Chunks handed out, oldest first (each handle keeps its chunk's memory; it is taken back
    /// once the events cut from it are all dropped).
    used: VecDeque<BytesMut>,
    /// `current` is a chunk (not the initial empty handle).
    started: bool,
    /// This drain's runs cut so far (a chunk filled).
    runs: Vec<Bytes>,
    /// Per event copied in this drain: its run (index in `runs`, or the next one) and range.
    cuts: Vec<(u32, u32, u32)>,
}

impl Segments {
    const CHUNK: usize = 64 << 10;
    /// Chunks remembered for reuse (16 MiB): enough for the backlog of a burst; older ones are
    /// let go, to be freed with their last event.
    const KEEP: usize = 256;

    /// Copies the next event's bytes (its slice comes with [`finish`](Self::finish)).
    pub(super) fn copy(&mut self, data: &[u8]) {
        if self.current.capacity() - self.current.len() < data.len() {
            self.cut();
            self.next_chunk(data.len());
        }
        let start = self.current.len() as u32;
        self.current.extend_from_slice(data);
        self.cuts.push((self.runs.len() as u32, start, data.len() as u32));
    }

    /// Ends the drain: gives the events copied since the last `finish`, in order, their bytes
    /// and run. `events` are those events (the drain pushes one per copy).
    pub(super) fn finish(&mut self, events: &mut [NewEvent]) {
        self.cut();
        debug_assert_eq!(events.len(), self.cuts.len(), "one event per copy");
        let mut previous = None;
        for (e, (run, start, len)) in events.iter_mut().zip(self.cuts.drain(..)) {
            let Some(bytes) = self.runs.get(run as usize) else { continue };
            e.bytes = bytes.slice(start as usize..(start + len) as usize);
            // Only the first event of a run carries it: the store finds the others in the run it
            // took last (two reference-count operations fewer per event).
            if previous.replace(run) != Some(run) {
                e.run = Some(bytes.clone());
            }
        }
        self.runs.clear();
    }

    /// Freezes what was copied into `current` since the last cut as a run.
    fn cut(&mut self) {
        // Ranges count from the start of the run: the start of what `split` takes.
        if !self.current.is_empty() {
            self.runs.push(self.current.split().freeze());
        }
    }

    /// Makes `current` a chunk with room for `len` bytes: the oldest one whose events are all
    /// gone if there is one, else a new one.
    fn next_chunk(&mut self, len: usize) {
        let want = Self::CHUNK.max(len);
        // `try_reclaim` succeeds only when this handle is the last one left on the chunk.
        let reusable = want == Self::CHUNK && self.used.front_mut().is_some_and(|oldest| oldest.try_reclaim(want));
        let reused = if reusable { self.used.pop_front() } else { None };
        let next = reused.unwrap_or_else(|| BytesMut::with_capacity(want));
        let spent = std::mem::replace(&mut self.current, next);
        // The first `current` is an empty handle on no chunk: nothing to take back.
        if std::mem::replace(&mut self.started, true) {
            self.used.push_back(spent);
        }
        if self.used.len() > Self::KEEP {
            self.used.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use trackway_wire::{EventKind, MessageId, Timestamp};

    use super::Segments;
    use crate::store::NewEvent;

    /// Copies one event as a drain of its own, and returns its bytes.
    fn one(segments: &mut Segments, data: &[u8]) -> Bytes {
        let mut events = [event()];
        segments.copy(data);
        segments.finish(&mut events);
        let [e] = events;
        assert!(e.run.as_ref().is_some_and(|r| r.as_ptr() == e.bytes.as_ptr()), "its run starts with it");
        e.bytes
    }

    fn event() -> NewEvent {
        let t = Timestamp::from_unix_millis(0);
        NewEvent {
            seq: 0,
            id: MessageId::new_v7(t),
            kind: EventKind::Track,
            timestamp: t,
            queued_at: t,
            routes: 1,
            bytes: Bytes::new(),
            context: None,
            run: None,
        }
    }

    #[test]
    fn a_drain_is_one_run_and_each_event_its_slice_of_it() {
        let mut segments = Segments::default();
        let mut events = vec![event(), event(), event()];
        for data in [&b"one"[..], b"two!", b"three"] {
            segments.copy(data);
        }
        segments.finish(&mut events);
        let run = events[0].run.clone().expect("a run");
        assert_eq!(&run[..], b"onetwo!three");
        assert!(events[1..].iter().all(|e| e.run.is_none()), "only the first carries it");
        let bytes: Vec<&[u8]> = events.iter().map(|e| &e.bytes[..]).collect();
        assert_eq!(bytes, [&b"one"[..], b"two!", b"three"]);
    }

    #[test]
    fn a_drain_that_fills_a_chunk_is_cut_in_two_runs() {
        let mut segments = Segments::default();
        let big = vec![1u8; Segments::CHUNK - 10];
        let mut events = vec![event(), event()];
        segments.copy(&big);
        segments.copy(b"does not fit");
        segments.finish(&mut events);
        let (a, b) = (events[0].run.clone().expect("run"), events[1].run.clone().expect("run"));
        assert_ne!(a.as_ptr(), b.as_ptr());
        assert_eq!((&events[0].bytes[..], &events[1].bytes[..]), (&big[..], &b"does not fit"[..]));
    }

    #[test]
    fn a_chunk_is_reused_once_its_events_are_gone_and_kept_while_one_lives() {
        let mut segments = Segments::default();
        let event = [7u8; 1000];
        let per_chunk = Segments::CHUNK / event.len();
        let first: Vec<_> = (0..per_chunk).map(|_| one(&mut segments, &event)).collect();
        let first_chunk = first[0].as_ptr();
        // The next copy needs a new chunk; the first still holds live events.
        let second = one(&mut segments, &event);
        assert_ne!(second.as_ptr(), first_chunk);
        let kept = first[per_chunk / 2].clone();
        drop(first);
        let rest: Vec<_> = (1..per_chunk).map(|_| one(&mut segments, &event)).collect();
        let third = one(&mut segments, &event);
        assert_ne!(third.as_ptr(), first_chunk, "an event still alive keeps its chunk");
        assert_eq!(&kept[..], &event[..], "and its bytes");
        drop((kept, second, rest));
        let more: Vec<_> = (1..per_chunk).map(|_| one(&mut segments, &event)).collect();
        let fourth = one(&mut segments, &event);
        assert_eq!(fourth.as_ptr(), first_chunk, "the oldest chunk is taken back once all its events are gone");
        assert!(more.iter().chain([&third, &fourth]).all(|b| b[..] == event[..]));
    }
}

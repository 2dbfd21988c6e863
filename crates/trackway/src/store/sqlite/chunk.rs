//! Chunks: how events are laid out in the file, and the in-memory index of their delivery state.
//!
//! A commit writes the events it has to keep as chunks of up to [`CHUNK_EVENTS`] consecutive
//! events: one `chunks` row with their data, one small `chunk_state` row with, per event, its seq
//! and the mask of destinations that still have to deliver it. An ack rewrites only the small
//! state row (or deletes both rows once no event of the chunk is pending), instead of updating
//! and deleting a row per event. The state rows of the whole file are loaded at open, held in
//! memory as about 5 bytes per stored event (see [`Chunk`]).
//!
//! Encodings (little-endian):
//! - data: per event `seq u64, id [16], kind u8, ts i64, queued_at i64, context i64 (-1: none),
//!   len u32, head [len]`;
//! - state: per event `seq u64, pending u64`.
//!
//! Since schema 2 both rows carry the CRC-32 of their bytes (`crc`): a row that reads back with
//! another checksum is damaged, and only its own events are lost (see `salvage.rs`). Rows written
//! by schema 1 have no checksum (`NULL`) and are trusted when they decode, as before.

use std::collections::BTreeMap;

use bytes::Bytes;
use trackway_wire::{EventKind, MessageId, Timestamp};

/// Most events per chunk.
pub(crate) const CHUNK_EVENTS: usize = 256;

/// CRC-32 (IEEE 802.3, the polynomial of zip and PNG) of `data`: the checksum of a stored row.
/// `crc32fast` (SIMD where the CPU has it): every committed chunk is checksummed, and every chunk
/// read back from the file is checked, so a byte-at-a-time table cost the worker ~20 % of its time.
pub(crate) fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// Whether a row's bytes match its stored checksum (`None`: a schema-1 row, trusted).
pub(crate) fn checksum_ok(data: &[u8], crc: Option<i64>) -> bool {
    crc.is_none_or(|crc| crc == i64::from(crc32(data)))
}

/// One event as stored in a chunk.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StoredEvent {
    pub(crate) seq: u64,
    pub(crate) id: MessageId,
    pub(crate) kind: EventKind,
    pub(crate) timestamp: Timestamp,
    pub(crate) queued_at: Timestamp,
    /// Context id in the `contexts` table, if the head needs one.
    pub(crate) context: Option<i64>,
    pub(crate) head: Bytes,
}

fn kind_code(kind: EventKind) -> u8 {
    match kind {
        EventKind::Track => 0,
        EventKind::Page => 1,
        EventKind::Screen => 2,
        EventKind::Identify => 3,
    }
}

fn kind_from(code: u8) -> Option<EventKind> {
    Some(match code {
        0 => EventKind::Track,
        1 => EventKind::Page,
        2 => EventKind::Screen,
        3 => EventKind::Identify,
        _ => return None,
    })
}

/// Appends one event to a chunk's data.
pub(crate) fn encode_event(out: &mut Vec<u8>, e: &StoredEvent) {
    out.extend_from_slice(&e.seq.to_le_bytes());
    out.extend_from_slice(e.id.as_uuid().as_bytes());
    out.push(kind_code(e.kind));
    out.extend_from_slice(&e.timestamp.unix_millis().to_le_bytes());
    out.extend_from_slice(&e.queued_at.unix_millis().to_le_bytes());
    out.extend_from_slice(&e.context.unwrap_or(-1).to_le_bytes());
    out.extend_from_slice(&(e.head.len() as u32).to_le_bytes());
    out.extend_from_slice(&e.head);
}

/// Reads a chunk's data back; `None` if it is not a valid encoding (a damaged file).
pub(crate) fn decode_events(data: &Bytes) -> Option<Vec<StoredEvent>> {
    let mut out = Vec::new();
    let mut at = 0usize;
    let take = |at: &mut usize, n: usize| -> Option<std::ops::Range<usize>> {
        let range = *at..at.checked_add(n)?;
        (range.end <= data.len()).then(|| {
            *at = range.end;
            range
        })
    };
    let u64_at = |r: std::ops::Range<usize>| u64::from_le_bytes(data[r].try_into().unwrap_or([0; 8]));
    while at < data.len() {
        let seq = u64_at(take(&mut at, 8)?);
        let id = uuid::Uuid::from_slice(&data[take(&mut at, 16)?]).ok()?;
        let kind = kind_from(data[take(&mut at, 1)?][0])?;
        let ts = u64_at(take(&mut at, 8)?) as i64;
        let queued_at = u64_at(take(&mut at, 8)?) as i64;
        let context = u64_at(take(&mut at, 8)?) as i64;
        let len = u32::from_le_bytes(data[take(&mut at, 4)?].try_into().ok()?) as usize;
        let head = data.slice(take(&mut at, len)?);
        out.push(StoredEvent {
            seq,
            id: MessageId::from_uuid(id),
            kind,
            timestamp: Timestamp::from_unix_millis(ts),
            queued_at: Timestamp::from_unix_millis(queued_at),
            context: (context >= 0).then_some(context),
            head,
        });
    }
    Some(out)
}

/// The delivery state of one chunk: its events' seqs and pending masks (stored bits).
///
/// Held for every chunk in the file, so kept compact: seqs as offsets from the first, masks in
/// the narrowest integer that holds them (a byte with up to 8 destinations). 5 bytes per stored
/// event instead of 16 (a backlog of 400 000 events in the file: 2 MB instead of 6.4).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Chunk {
    first: u64,
    offsets: Packed,
    masks: Packed,
    /// Events with a destination still pending.
    pub(crate) live: usize,
    /// Size of the data row, for the store's size bound.
    pub(crate) bytes: u64,
}

impl Chunk {
    /// A chunk of the events `seqs` (increasing) with their pending masks.
    pub(crate) fn new(seqs: Vec<u64>, pending: Vec<u64>, bytes: u64) -> Self {
        let live = pending.iter().filter(|p| **p != 0).count();
        let first = seqs.first().copied().unwrap_or(0);
        let offsets = Packed::from(seqs.iter().map(|s| s.wrapping_sub(first)));
        Chunk { first, offsets, masks: Packed::from(pending.iter().copied()), live, bytes }
    }

    /// Events in the chunk (pending or not).
    pub(crate) fn len(&self) -> usize {
        self.offsets.len()
    }

    pub(crate) fn last(&self) -> u64 {
        self.offsets.len().checked_sub(1).map_or(0, |i| self.first + self.offsets.get(i))
    }

    /// `(seq, pending mask)` of each event, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        (0..self.len()).map(|i| (self.first + self.offsets.get(i), self.masks.get(i)))
    }

    /// `seq`'s pending mask, if the chunk holds it.
    pub(crate) fn mask_of(&self, seq: u64) -> Option<u64> {
        self.index_of(seq).map(|i| self.masks.get(i))
    }

    fn index_of(&self, seq: u64) -> Option<usize> {
        let offset = seq.checked_sub(self.first)?;
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.offsets.get(mid).cmp(&offset) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    pub(crate) fn encode_state(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len() * 16);
        for (seq, pending) in self.iter() {
            out.extend_from_slice(&seq.to_le_bytes());
            out.extend_from_slice(&pending.to_le_bytes());
        }
        out
    }

    pub(crate) fn decode_state(state: &[u8], bytes: u64) -> Option<Chunk> {
        if !state.len().is_multiple_of(16) {
            return None;
        }
        let (seqs, pending): (Vec<u64>, Vec<u64>) = state
            .chunks_exact(16)
            .map(|c| {
                let seq = u64::from_le_bytes(c[..8].try_into().unwrap_or([0; 8]));
                let mask = u64::from_le_bytes(c[8..].try_into().unwrap_or([0; 8]));
                (seq, mask)
            })
            .unzip();
        // Offsets from the first need increasing seqs (a damaged row may have others).
        if seqs.windows(2).any(|w| w[0] >= w[1]) {
            return None;
        }
        Some(Chunk::new(seqs, pending, bytes))
    }

    /// Clears `bit` for `seq`; returns whether it was set.
    pub(crate) fn clear(&mut self, seq: u64, bit: u64) -> bool {
        let Some(i) = self.index_of(seq) else { return false };
        let mask = self.masks.get(i);
        if mask & bit == 0 {
            return false;
        }
        self.masks.set(i, mask & !bit);
        if mask & !bit == 0 {
            self.live -= 1;
        }
        true
    }

    /// Moves every pending `from` bit to `to` (`to` 0: drops it); returns how many events
    /// had it.
    pub(crate) fn move_bit(&mut self, from: u64, to: u64) -> usize {
        let mut moved = 0;
        for i in 0..self.len() {
            let mask = self.masks.get(i);
            if mask & from != 0 {
                self.masks.set(i, (mask & !from) | to);
                moved += 1;
            }
        }
        self.live = (0..self.len()).filter(|&i| self.masks.get(i) != 0).count();
        moved
    }
}

/// Integers in the narrowest width that holds them all (widened when a bigger one is set).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Packed {
    U8(Vec<u8>),
    U32(Vec<u32>),
    U64(Vec<u64>),
}

impl Default for Packed {
    fn default() -> Self {
        Packed::U8(Vec::new())
    }
}

impl Packed {
    fn from(values: impl Iterator<Item = u64> + Clone) -> Self {
        let max = values.clone().max().unwrap_or(0);
        if max <= u64::from(u8::MAX) {
            Packed::U8(values.map(|v| v as u8).collect())
        } else if max <= u64::from(u32::MAX) {
            Packed::U32(values.map(|v| v as u32).collect())
        } else {
            Packed::U64(values.collect())
        }
    }

    fn len(&self) -> usize {
        match self {
            Packed::U8(v) => v.len(),
            Packed::U32(v) => v.len(),
            Packed::U64(v) => v.len(),
        }
    }

    fn get(&self, i: usize) -> u64 {
        match self {
            Packed::U8(v) => u64::from(v[i]),
            Packed::U32(v) => u64::from(v[i]),
            Packed::U64(v) => v[i],
        }
    }

    fn set(&mut self, i: usize, value: u64) {
        match self {
            Packed::U8(v) if value <= u64::from(u8::MAX) => v[i] = value as u8,
            Packed::U32(v) if value <= u64::from(u32::MAX) => v[i] = value as u32,
            Packed::U64(v) => v[i] = value,
            _ => {
                let mut wide: Vec<u64> = (0..self.len()).map(|j| self.get(j)).collect();
                wide[i] = value;
                *self = Packed::from(wide.into_iter());
            }
        }
    }
}

/// Every chunk in the file, by first seq.
#[derive(Debug, Default)]
pub(crate) struct ChunkIndex {
    pub(crate) chunks: BTreeMap<u64, Chunk>,
}

impl ChunkIndex {
    /// How many events `bit` has pending, and about how many bytes (chunks know only their
    /// total size).
    pub(crate) fn pending_of(&self, bit: u64) -> (u64, u64) {
        let (mut n, mut b) = (0u64, 0u64);
        for chunk in self.chunks.values() {
            let here = chunk.iter().filter(|(_, m)| m & bit != 0).count() as u64;
            n += here;
            b += chunk.bytes * here / chunk.len().max(1) as u64;
        }
        (n, b)
    }

    /// The first seq of the chunk holding `seq`, if any.
    pub(crate) fn chunk_of(&self, seq: u64) -> Option<u64> {
        let (first, chunk) = self.chunks.range(..=seq).next_back()?;
        (seq <= chunk.last() && chunk.mask_of(seq).is_some()).then_some(*first)
    }

    /// Pending events of `bit` with `from <= seq < below`, in order, at most `max`.
    pub(crate) fn pending(&self, bit: u64, from: u64, below: u64, max: usize) -> Vec<(u64, u64)> {
        let start = self.chunks.range(..=from).next_back().map_or(from, |(first, _)| *first);
        let mut out = Vec::new();
        for (first, chunk) in self.chunks.range(start..below) {
            for (seq, p) in chunk.iter() {
                if seq >= from && seq < below && p & bit != 0 {
                    out.push((seq, *first));
                    if out.len() >= max {
                        return out;
                    }
                }
            }
        }
        out
    }

    /// Total data bytes.
    pub(crate) fn bytes(&self) -> u64 {
        self.chunks.values().map(|c| c.bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, head: &'static [u8], context: Option<i64>) -> StoredEvent {
        StoredEvent {
            seq,
            id: MessageId::new_v7(Timestamp::from_unix_millis(1_700_000_000_000)),
            kind: EventKind::Page,
            timestamp: Timestamp::from_unix_millis(-5),
            queued_at: Timestamp::from_unix_millis(1_700_000_000_000),
            context,
            head: Bytes::from_static(head),
        }
    }

    #[test]
    fn event_data_round_trips_and_damage_is_detected() {
        let events = vec![event(7, br#"{"id":"x""#, Some(3)), event(9, b"", None)];
        let mut data = Vec::new();
        for e in &events {
            encode_event(&mut data, e);
        }
        let data = Bytes::from(data);
        assert_eq!(decode_events(&data).expect("decodes"), events);
        assert!(decode_events(&data.slice(..data.len() - 1)).is_none(), "truncated");
    }

    #[test]
    fn crc32_is_the_standard_one() {
        // The check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        assert!(checksum_ok(b"abc", None), "schema-1 rows have no checksum");
        assert!(checksum_ok(b"abc", Some(i64::from(crc32(b"abc")))));
        assert!(!checksum_ok(b"abd", Some(i64::from(crc32(b"abc")))));
    }

    #[test]
    fn state_round_trips_and_clear_counts_live_events() {
        let mut chunk = Chunk::new(vec![10, 11, 13], vec![0b01, 0b11, 0b10], 100);
        assert_eq!(chunk.live, 3);
        assert_eq!(Chunk::decode_state(&chunk.encode_state(), 100), Some(chunk.clone()));
        assert!(chunk.clear(10, 0b01));
        assert!(!chunk.clear(10, 0b01), "already clear");
        assert!(!chunk.clear(12, 0b01), "not in the chunk");
        assert_eq!(chunk.live, 2);
    }

    #[test]
    fn a_chunk_packs_its_state_and_widens_it_when_needed() {
        let mut chunk = Chunk::new(vec![1_000_000, 1_000_001, 1_000_300], vec![1, 3, 1], 0);
        assert_eq!((&chunk.offsets, &chunk.masks), (&Packed::U32(vec![0, 1, 300]), &Packed::U8(vec![1, 3, 1])));
        assert_eq!(chunk.iter().collect::<Vec<_>>(), vec![(1_000_000, 1), (1_000_001, 3), (1_000_300, 1)]);
        assert_eq!((chunk.mask_of(1_000_300), chunk.mask_of(1_000_002), chunk.last()), (Some(1), None, 1_000_300));
        // A destination past the 8th moves in: the masks widen.
        assert_eq!(chunk.move_bit(1, 1 << 40), 3);
        assert_eq!(chunk.iter().map(|(_, m)| m).collect::<Vec<_>>(), vec![1 << 40, (1 << 40) | 2, 1 << 40]);
        assert!(chunk.clear(1_000_001, 1 << 40) && chunk.clear(1_000_001, 2));
        assert_eq!(chunk.live, 2);
        assert_eq!(
            Chunk::decode_state(&chunk.encode_state(), 0).map(|c| c.iter().collect::<Vec<_>>()),
            Some(chunk.iter().collect())
        );
        let swapped: Vec<u8> = [5u64, 1, 3, 1].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert!(Chunk::decode_state(&swapped, 0).is_none(), "seqs out of order");
    }

    #[test]
    fn the_index_finds_chunks_and_pending_events_in_order() {
        let mut index = ChunkIndex::default();
        index.chunks.insert(0, Chunk::new(vec![0, 1, 2], vec![1, 2, 1], 10));
        index.chunks.insert(5, Chunk::new(vec![5, 7], vec![1, 1], 10));
        assert_eq!(index.chunk_of(1), Some(0));
        assert_eq!(index.chunk_of(6), None);
        assert_eq!(index.chunk_of(7), Some(5));
        assert_eq!(index.pending(1, 1, u64::MAX, 10), vec![(2, 0), (5, 5), (7, 5)]);
        assert_eq!(index.pending(1, 0, 6, 10), vec![(0, 0), (2, 0), (5, 5)]);
        assert_eq!(index.pending(1, 0, u64::MAX, 2).len(), 2);
    }
}

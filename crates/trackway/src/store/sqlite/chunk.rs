//! Chunks: how events are laid out in the file, and the in-memory index of their delivery state.
//!
//! A commit writes the events it has to keep as chunks of up to [`CHUNK_EVENTS`] consecutive
//! events: one `chunks` row with their data, one small `chunk_state` row with, per event, its seq
//! and the mask of destinations that still have to deliver it. An ack rewrites only the small
//! state row (or deletes both rows once no event of the chunk is pending), instead of updating
//! and deleting a row per event. The state rows of the whole file are loaded at open: 16 bytes
//! per stored event.
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Chunk {
    pub(crate) seqs: Vec<u64>,
    pub(crate) pending: Vec<u64>,
    /// Events with a destination still pending.
    pub(crate) live: usize,
    /// Size of the data row, for the store's size bound.
    pub(crate) bytes: u64,
}

impl Chunk {
    pub(crate) fn new(seqs: Vec<u64>, pending: Vec<u64>, bytes: u64) -> Self {
        let live = pending.iter().filter(|p| **p != 0).count();
        Chunk { seqs, pending, live, bytes }
    }

    pub(crate) fn last(&self) -> u64 {
        self.seqs.last().copied().unwrap_or(0)
    }

    pub(crate) fn encode_state(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.seqs.len() * 16);
        for (seq, pending) in self.seqs.iter().zip(&self.pending) {
            out.extend_from_slice(&seq.to_le_bytes());
            out.extend_from_slice(&pending.to_le_bytes());
        }
        out
    }

    pub(crate) fn decode_state(state: &[u8], bytes: u64) -> Option<Chunk> {
        if !state.len().is_multiple_of(16) {
            return None;
        }
        let (seqs, pending) = state
            .chunks_exact(16)
            .map(|c| {
                let seq = u64::from_le_bytes(c[..8].try_into().unwrap_or([0; 8]));
                let mask = u64::from_le_bytes(c[8..].try_into().unwrap_or([0; 8]));
                (seq, mask)
            })
            .unzip();
        Some(Chunk::new(seqs, pending, bytes))
    }

    /// Clears `bit` for `seq`; returns whether it was set.
    pub(crate) fn clear(&mut self, seq: u64, bit: u64) -> bool {
        let Ok(i) = self.seqs.binary_search(&seq) else { return false };
        if self.pending[i] & bit == 0 {
            return false;
        }
        self.pending[i] &= !bit;
        if self.pending[i] == 0 {
            self.live -= 1;
        }
        true
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
            let here = chunk.pending.iter().filter(|m| **m & bit != 0).count() as u64;
            n += here;
            b += chunk.bytes * here / chunk.seqs.len().max(1) as u64;
        }
        (n, b)
    }

    /// The first seq of the chunk holding `seq`, if any.
    pub(crate) fn chunk_of(&self, seq: u64) -> Option<u64> {
        let (first, chunk) = self.chunks.range(..=seq).next_back()?;
        (seq <= chunk.last() && chunk.seqs.binary_search(&seq).is_ok()).then_some(*first)
    }

    /// Pending events of `bit` with `from <= seq < below`, in order, at most `max`.
    pub(crate) fn pending(&self, bit: u64, from: u64, below: u64, max: usize) -> Vec<(u64, u64)> {
        let start = self.chunks.range(..=from).next_back().map_or(from, |(first, _)| *first);
        let mut out = Vec::new();
        for (first, chunk) in self.chunks.range(start..below) {
            for (seq, p) in chunk.seqs.iter().zip(&chunk.pending) {
                if *seq >= from && *seq < below && p & bit != 0 {
                    out.push((*seq, *first));
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

//! Entry points for the fuzz targets in `fuzz/` (the non-default `fuzzing` feature).
//!
//! **Not a stable API**: hidden from the docs, it reaches internals and changes whenever they do.
//! It is kept to thin wrappers so a change inside the crate only has to touch this file, not the
//! fuzz targets.

use bytes::Bytes;
use trackway_wire::{EventKind, MessageId, Timestamp};

use crate::store::chunk::{self, Chunk, StoredEvent};

/// One event as the SQLite store lays it out in a chunk's data row.
#[derive(Clone, Debug, PartialEq)]
pub struct ChunkEvent {
    /// The event's seq.
    pub seq: u64,
    /// Its message id.
    pub id: MessageId,
    /// Its kind.
    pub kind: EventKind,
    /// When it happened.
    pub timestamp: Timestamp,
    /// When it was enqueued.
    pub queued_at: Timestamp,
    /// The id of its context row, if its head needs one.
    pub context: Option<i64>,
    /// Its JSON head (or the whole event when `context` is `None`).
    pub head: Bytes,
}

/// A chunk's data row holding `events`, as the store writes it.
pub fn encode_chunk(events: &[ChunkEvent]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        let stored = StoredEvent {
            seq: e.seq,
            id: e.id,
            kind: e.kind,
            timestamp: e.timestamp,
            queued_at: e.queued_at,
            context: e.context,
            head: e.head.clone(),
        };
        chunk::encode_event(&mut out, &stored);
    }
    out
}

/// The events of a chunk's data row as the store reads them back; `None` for a damaged row.
pub fn decode_chunk(data: &[u8]) -> Option<Vec<ChunkEvent>> {
    let events = chunk::decode_events(&Bytes::copy_from_slice(data))?;
    Some(
        events
            .into_iter()
            .map(|e| ChunkEvent {
                seq: e.seq,
                id: e.id,
                kind: e.kind,
                timestamp: e.timestamp,
                queued_at: e.queued_at,
                context: e.context,
                head: e.head,
            })
            .collect(),
    )
}

/// A chunk's state row read back as `(seq, pending mask)` pairs and its count of live events;
/// `None` for a damaged row.
pub fn decode_chunk_state(state: &[u8]) -> Option<(Vec<(u64, u64)>, usize)> {
    let chunk = Chunk::decode_state(state, 0)?;
    Some((chunk.iter().collect(), chunk.live))
}

/// A state row for `(seq, pending mask)` pairs, as the store writes it.
pub fn encode_chunk_state(entries: &[(u64, u64)]) -> Vec<u8> {
    let (seqs, pending) = entries.iter().copied().unzip();
    Chunk::new(seqs, pending, 0).encode_state()
}

/// The Umami destination's verdict on `response` to `request`, as the pipeline asks for it.
#[cfg(feature = "umami")]
pub fn umami_classify(
    umami: &crate::destination::Umami,
    request: &crate::destination::Request,
    response: &crate::destination::Response,
) -> crate::destination::Classified {
    crate::destination::Destination::classify(umami, request, response)
}

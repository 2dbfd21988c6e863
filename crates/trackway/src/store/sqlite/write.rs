//! The write side of the SQLite store: the rounds handed to the writer thread (staged events as
//! chunks, chunk states, deletes, client state, contexts), eviction, and dead-letter rows.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use rusqlite::{Connection, params};
use trackway_wire::{MessageId, Timestamp};

use super::chunk::{self, CHUNK_EVENTS, Chunk, ChunkIndex, StoredEvent};
use super::file::backend;
use super::writer::Round;
use super::{Open, to_bits, to_routes};
use crate::store::{DeadLetter, DeadLetterReason, Evicted, StateChange, StoreError};

/// A round handed to the writer, as the worker remembers it until the writer answers: what to
/// undo if it fails, what to hand over again if the writer dies.
#[derive(Debug)]
pub(super) struct InFlight {
    pub(super) round: Arc<Round>,
    /// The lowest seq of its events (`None`: it writes no event).
    pub(super) low: Option<u64>,
    /// Staged bytes of its events, released from the staging bound once it is written.
    pub(super) bytes: u64,
    /// The chunks it adds (in the index already).
    pub(super) firsts: Vec<u64>,
    /// The chunks whose state row it rewrites.
    pub(super) states: Vec<u64>,
}

/// Builds the next round for the writer: the staged events of `part` still pending (encoded as
/// chunks, added to the index at once so that acks meanwhile find them), the staged state of
/// events below `state_below`, the changed chunk states and the chunks to delete. Takes `part`
/// out of the staged events (their bytes stay counted until the round is written).
pub(super) fn build_round(open: &mut Open, part: &[u64], state_below: u64, id: u64) -> InFlight {
    let Open {
        index, dirty, cache, hot, staged, staged_state, contexts, bits, next_seq, deletes, retry_contexts, ..
    } = open;
    let mut round = Round { id, next_seq: *next_seq, contexts: std::mem::take(retry_contexts), ..Round::default() };
    let mut firsts = Vec::new();
    let mut bytes = 0u64;
    // Room for a full chunk of typical events: no regrowth while encoding.
    let mut data = Vec::with_capacity(CHUNK_EVENTS * 320);
    let mut seqs = Vec::new();
    let mut masks = Vec::new();
    let mut close = |data: &mut Vec<u8>, seqs: &mut Vec<u64>, masks: &mut Vec<u64>, round: &mut Round| {
        let Some(&first) = seqs.first() else { return };
        let chunk = Chunk::new(std::mem::take(seqs), std::mem::take(masks), data.len() as u64);
        round.chunks.push((
            first,
            std::mem::replace(data, Vec::with_capacity(CHUNK_EVENTS * 320)),
            chunk.encode_state(),
        ));
        index.chunks.insert(first, chunk);
        firsts.push(first);
    };
    for &seq in part {
        if let Some(b) = staged.remove(seq) {
            bytes += u64::from(b);
        }
        // Delivered (or dead-lettered) everywhere while staged: never written.
        let Some(event) = hot.view(seq).filter(|e| e.pending != 0) else { continue };
        let context = event.context.as_ref().map(|c| intern(contexts, &mut round.contexts, c));
        let stored = StoredEvent {
            seq,
            id: event.id,
            kind: event.kind,
            timestamp: event.timestamp,
            queued_at: event.queued_at,
            context,
            head: event.head,
        };
        chunk::encode_event(&mut data, &stored);
        seqs.push(seq);
        masks.push(to_bits(bits, event.pending));
        if seqs.len() == CHUNK_EVENTS {
            close(&mut data, &mut seqs, &mut masks, &mut round);
        }
    }
    close(&mut data, &mut seqs, &mut masks, &mut round);
    round.state = staged_state.iter().filter(|(seq, _)| *seq < state_below).map(|(_, c)| c.clone()).collect();
    staged_state.retain(|(seq, _)| *seq >= state_below);
    let mut states = Vec::new();
    for first in std::mem::take(dirty) {
        let Some(chunk) = index.chunks.get(&first) else { continue };
        if chunk.live == 0 {
            // No destination needs it any more: it leaves the index now, the file with this round.
            index.chunks.remove(&first);
            if cache.as_ref().is_some_and(|(f, _)| *f == first) {
                *cache = None;
            }
            round.deletes.push(first);
        } else {
            round.states.push((first, chunk.encode_state()));
            states.push(first);
        }
    }
    round.deletes.append(deletes);
    InFlight { round: Arc::new(round), low: part.first().copied(), bytes, firsts, states }
}

/// Inserts one chunk's data and state rows, each with its checksum.
pub(super) fn insert_chunk(
    tx: &rusqlite::Transaction<'_>,
    first: u64,
    data: &[u8],
    state: &[u8],
) -> Result<(), StoreError> {
    tx.prepare_cached("INSERT INTO chunks (first, data, crc) VALUES (?1, ?2, ?3)")
        .and_then(|mut s| s.execute(params![first as i64, data, chunk::crc32(data)]))
        .map_err(backend)?;
    tx.prepare_cached("INSERT INTO chunk_state (first, state, crc) VALUES (?1, ?2, ?3)")
        .and_then(|mut s| s.execute(params![first as i64, state, chunk::crc32(state)]))
        .map_err(backend)?;
    Ok(())
}

/// Drops the oldest chunks while the file holds more than `max_bytes` of events (down to 90% of
/// it, so this is not paid on every commit); their rows are deleted with the next round.
/// Returns the pending events dropped.
pub(super) fn evict(open: &mut Open, max_bytes: u64) -> Vec<Evicted> {
    let mut size = open.index.bytes();
    if size <= max_bytes {
        return Vec::new();
    }
    let target = max_bytes / 10 * 9;
    let mut victims = Vec::new();
    for (first, chunk) in &open.index.chunks {
        if size <= target {
            break;
        }
        size -= chunk.bytes;
        victims.push(*first);
    }
    let mut evicted = Vec::new();
    for first in victims {
        let Some(chunk) = open.index.chunks.remove(&first) else { continue };
        open.dirty.remove(&first);
        open.deletes.push(first);
        let per_event = chunk.bytes / chunk.len().max(1) as u64;
        for (seq, mask) in chunk.iter().filter(|(_, m)| *m != 0) {
            if seq >= open.hot_start {
                open.hot.release_all(seq);
            }
            evicted.push(Evicted { seq, routes: to_routes(&open.bits, mask), bytes: per_event });
        }
    }
    open.cache = None;
    evicted
}

/// Writes the state of changed chunks in `tx`: rewrites their state row, or deletes a chunk no
/// destination needs any more (used by `trackway outbox move` / `drop`, which write directly).
pub(super) fn write_dirty(
    tx: &rusqlite::Transaction<'_>,
    index: &ChunkIndex,
    dirty: &BTreeSet<u64>,
) -> Result<(), StoreError> {
    for first in dirty {
        let Some(chunk) = index.chunks.get(first) else { continue };
        if chunk.live == 0 {
            tx.prepare_cached("DELETE FROM chunks WHERE first = ?1")
                .and_then(|mut s| s.execute([*first as i64]))
                .map_err(backend)?;
            tx.prepare_cached("DELETE FROM chunk_state WHERE first = ?1")
                .and_then(|mut s| s.execute([*first as i64]))
                .map_err(backend)?;
        } else {
            let state = chunk.encode_state();
            tx.prepare_cached("UPDATE chunk_state SET state = ?2, crc = ?3 WHERE first = ?1")
                .and_then(|mut s| s.execute(params![*first as i64, state, chunk::crc32(&state)]))
                .map_err(backend)?;
        }
    }
    Ok(())
}

pub(super) fn write_state(tx: &rusqlite::Transaction<'_>, changes: &[StateChange]) -> Result<(), StoreError> {
    for c in changes {
        match &c.value {
            Some(v) => tx.execute("INSERT OR REPLACE INTO state (key, value) VALUES (?1, ?2)", params![c.key, v]),
            None => tx.execute("DELETE FROM state WHERE key = ?1", [&c.key]),
        }
        .map_err(backend)?;
    }
    Ok(())
}

/// The id of `context` in the contexts table, giving it the next id (and adding it to the
/// round, which writes it) if it is new. Compared by pointer first, since a client's events
/// share one `Bytes`.
fn intern(cache: &mut Vec<(i64, Bytes)>, new: &mut Vec<(i64, Bytes)>, context: &Bytes) -> i64 {
    if let Some((id, _)) = cache.iter().rev().find(|(_, c)| crate::store::same_context(c, context)) {
        return *id;
    }
    let id = cache.iter().map(|(id, _)| *id).max().unwrap_or(0) + 1;
    cache.push((id, context.clone()));
    new.push((id, context.clone()));
    id
}

pub(super) fn dead_letter_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeadLetter> {
    let id: Vec<u8> = r.get(2)?;
    let reason: String = r.get(4)?;
    Ok(DeadLetter {
        key: r.get::<_, i64>(0)? as u64,
        seq: r.get::<_, i64>(1)? as u64,
        id: uuid::Uuid::from_slice(&id)
            .map(MessageId::from_uuid)
            .unwrap_or_else(|_| MessageId::from_uuid(uuid::Uuid::nil())),
        destination: r.get(3)?,
        reason: match reason.as_str() {
            "retries_exhausted" => DeadLetterReason::RetriesExhausted,
            "expired" => DeadLetterReason::Expired,
            _ => DeadLetterReason::Rejected,
        },
        detail: r.get(5)?,
        at: Timestamp::from_unix_millis(r.get(6)?),
        event: Bytes::from(r.get::<_, Vec<u8>>(7)?),
    })
}

pub(super) fn query_dead_letters(conn: &Connection, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
    let mut stmt = conn
        .prepare("SELECT key, seq, id, destination, reason, detail, at, event FROM dead_letters ORDER BY key LIMIT ?1")
        .map_err(backend)?;
    let rows = stmt.query_map([limit as i64], dead_letter_row).map_err(backend)?;
    rows.collect::<Result<_, _>>().map_err(backend)
}

//! The write side of the SQLite store: commits of staged events, chunk-state writes, eviction,
//! client state, contexts and dead-letter rows.

use std::collections::BTreeSet;

use bytes::Bytes;
use rusqlite::{Connection, TransactionBehavior, params};
use trackway_wire::{MessageId, Timestamp};

use super::chunk::{self, CHUNK_EVENTS, Chunk, ChunkIndex, StoredEvent};
use super::file::backend;
use super::{Open, to_bits, to_routes};
use crate::store::{DeadLetter, DeadLetterReason, Evicted, StateChange, StoreError};

/// Writes, in one transaction, the given staged events still pending (as chunks), the staged
/// state of events below `state_below`, the next seq and any dirty chunk state. Returns the new
/// chunks.
pub(super) fn commit_tx(open: &mut Open, part: &[u64], state_below: u64) -> Result<Vec<(u64, Chunk)>, StoreError> {
    let Open { conn, index, dirty, cache, hot, staged_state, contexts, bits, next_seq, .. } = open;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
    let mut written = Vec::new();
    // Room for a full chunk of typical events: no regrowth while encoding.
    let mut data = Vec::with_capacity(CHUNK_EVENTS * 320);
    let mut seqs = Vec::new();
    let mut masks = Vec::new();
    let write_chunk =
        |data: &mut Vec<u8>, seqs: &mut Vec<u64>, masks: &mut Vec<u64>| -> Result<Option<(u64, Chunk)>, StoreError> {
            let Some(&first) = seqs.first() else { return Ok(None) };
            let chunk = Chunk::new(std::mem::take(seqs), std::mem::take(masks), data.len() as u64);
            insert_chunk(&tx, first, data, &chunk.encode_state())?;
            data.clear();
            Ok(Some((first, chunk)))
        };
    for &seq in part {
        // Delivered (or dead-lettered) everywhere while staged: never written.
        let Some(event) = hot.view(seq).filter(|e| e.pending != 0) else { continue };
        let context = match &event.context {
            Some(c) => Some(intern(&tx, contexts, c)?),
            None => None,
        };
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
            written.extend(write_chunk(&mut data, &mut seqs, &mut masks)?);
        }
    }
    written.extend(write_chunk(&mut data, &mut seqs, &mut masks)?);
    let state: Vec<StateChange> =
        staged_state.iter().filter(|(seq, _)| *seq < state_below).map(|(_, c)| c.clone()).collect();
    write_state(&tx, &state)?;
    tx.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('next_seq', ?1)", [*next_seq as i64])
        .map_err(backend)?;
    write_dirty(&tx, index, dirty)?;
    tx.commit().map_err(backend)?;
    dirty_written(index, dirty, cache);
    Ok(written)
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
/// it, so this is not paid on every commit). Returns the pending events dropped.
pub(super) fn evict(open: &mut Open, max_bytes: u64) -> Result<Vec<Evicted>, StoreError> {
    let mut size = open.index.bytes();
    if size <= max_bytes {
        return Ok(Vec::new());
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
    let tx = open.conn.transaction().map_err(backend)?;
    for first in &victims {
        tx.execute("DELETE FROM chunks WHERE first = ?1", [*first as i64]).map_err(backend)?;
        tx.execute("DELETE FROM chunk_state WHERE first = ?1", [*first as i64]).map_err(backend)?;
    }
    tx.commit().map_err(backend)?;
    let mut evicted = Vec::new();
    for first in victims {
        let Some(chunk) = open.index.chunks.remove(&first) else { continue };
        open.dirty.remove(&first);
        let per_event = chunk.bytes / chunk.seqs.len().max(1) as u64;
        for (seq, mask) in chunk.seqs.iter().zip(&chunk.pending).filter(|(_, m)| **m != 0) {
            if *seq >= open.hot_start {
                open.hot.release_all(*seq);
            }
            evicted.push(Evicted { seq: *seq, routes: to_routes(&open.bits, *mask), bytes: per_event });
        }
    }
    open.cache = None;
    Ok(evicted)
}

/// Writes the state of changed chunks: rewrites their state row, or deletes a chunk no
/// destination needs any more.
/// Writes the state of changed chunks in `tx`: rewrites their state row, or deletes a chunk no
/// destination needs any more. Changes nothing in memory: the caller applies the result with
/// [`dirty_written`] once the transaction has committed (a failed write must leave the dirty
/// set and the index as they were, to be written again).
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

/// After a committed [`write_dirty`]: finished chunks leave the index, the dirty set empties.
pub(super) fn dirty_written(
    index: &mut ChunkIndex,
    dirty: &mut BTreeSet<u64>,
    cache: &mut Option<(u64, Vec<StoredEvent>)>,
) {
    for first in std::mem::take(dirty) {
        if index.chunks.get(&first).is_some_and(|c| c.live == 0) {
            index.chunks.remove(&first);
            if cache.as_ref().is_some_and(|(f, _)| *f == first) {
                *cache = None;
            }
        }
    }
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

/// The id of `context` in the contexts table, adding it if new (cached; compared by pointer
/// first, since a client's events share one `Bytes`).
pub(super) fn intern(
    tx: &rusqlite::Transaction<'_>,
    cache: &mut Vec<(i64, Bytes)>,
    context: &Bytes,
) -> Result<i64, StoreError> {
    if let Some((id, _)) = cache.iter().rev().find(|(_, c)| c.as_ptr() == context.as_ptr() || c == context) {
        return Ok(*id);
    }
    tx.execute("INSERT OR IGNORE INTO contexts (json) VALUES (?1)", [&context[..]]).map_err(backend)?;
    let id: i64 =
        tx.query_row("SELECT id FROM contexts WHERE json = ?1", [&context[..]], |r| r.get(0)).map_err(backend)?;
    cache.push((id, context.clone()));
    Ok(id)
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

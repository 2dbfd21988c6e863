//! Salvage of a damaged store: every row that reads back (and matches its checksum) is copied
//! into a fresh file, the rest is counted, and nothing is thrown away silently.
//!
//! A damaged page makes SQLite fail a scan where it meets it, so each table is scanned by key
//! forwards until the first error and backwards until the next one: what lies on both sides of
//! the damage is read. Chunks are then read one by one; a chunk whose data fails its checksum is
//! lost (its state row says how many events that was), one whose state row is lost is kept and
//! sent again to every destination (at least once: a duplicate rather than a loss).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};

use super::chunk::{self, CHUNK_EVENTS, Chunk, StoredEvent};
use super::file::{backend, open_read_only, sidecar};
use super::write::insert_chunk;
use crate::store::StoreError;

/// What could be read back from a damaged store.
#[derive(Debug, Default)]
pub(super) struct Salvaged {
    destinations: BTreeMap<i64, String>,
    contexts: Vec<(i64, Vec<u8>)>,
    state: Vec<(String, Vec<u8>)>,
    next_seq: u64,
    dead_letters: Vec<DeadRow>,
    /// Recovered events, with the stored bits of the destinations still to deliver them.
    events: Vec<(StoredEvent, u64)>,
    /// Pending events lost (their chunk's data did not read back or failed its checksum, or
    /// their context is gone), with those of `lost_chunks` counted by their seq range.
    pub(super) lost: u64,
    /// Chunks lost whose state row is gone too: their events are counted by the chunk's range
    /// of seqs (up to the next chunk, less the seqs read back from other chunks), an upper bound.
    pub(super) lost_chunks: u64,
}

impl Salvaged {
    /// Pending events recovered.
    pub(super) fn recovered(&self) -> u64 {
        self.events.len() as u64
    }
}

/// One dead letter row, as stored.
#[derive(Debug)]
struct DeadRow {
    seq: i64,
    id: Vec<u8>,
    destination: String,
    reason: String,
    detail: String,
    at: i64,
    event: Vec<u8>,
}

/// The keys of `table`'s rows that can be read: a forward scan up to the first error, then a
/// backward one up to the next error (or to a key the first scan saw).
fn scan_keys(conn: &Connection, table: &str, key: &str) -> BTreeSet<i64> {
    let mut keys = BTreeSet::new();
    for order in ["ASC", "DESC"] {
        let Ok(mut stmt) = conn.prepare(&format!("SELECT {key} FROM {table} ORDER BY {key} {order}")) else {
            continue;
        };
        let Ok(mut rows) = stmt.query([]) else { continue };
        while let Ok(Some(row)) = rows.next() {
            let Ok(k) = row.get::<_, i64>(0) else { break };
            if !keys.insert(k) && order == "DESC" {
                break;
            }
        }
    }
    keys
}

/// Every row of `table` that reads back, by rowid, through `read`.
fn rows<T>(
    conn: &Connection,
    table: &str,
    columns: &str,
    read: impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Vec<T> {
    let Ok(mut stmt) = conn.prepare(&format!("SELECT {columns} FROM {table} WHERE rowid = ?1")) else {
        return Vec::new();
    };
    scan_keys(conn, table, "rowid").into_iter().filter_map(|rowid| stmt.query_row([rowid], &read).ok()).collect()
}

/// Reads what can be read of the damaged store at `path` (the file is not changed: a copy is
/// read, see [`patched_copy`]).
pub(super) fn read(path: &Path) -> Salvaged {
    let copy = sidecar(path, ".salvage");
    let out = patched_copy(path, &copy).map(|()| read_copy(&copy));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(sidecar(&copy, suffix));
    }
    out.unwrap_or_else(|e| {
        tracing::error!(error = %e, "trackway: could not copy the damaged store to salvage it");
        Salvaged::default()
    })
}

/// Copies the store (and its WAL) to `copy` with the header's page count set to the pages the
/// file really has: SQLite trusts that count, and a truncated file fails every query, even of
/// the first page, until it matches.
fn patched_copy(path: &Path, copy: &Path) -> std::io::Result<()> {
    let mut bytes = std::fs::read(path)?;
    if bytes.len() >= 100 {
        let size = u16::from_be_bytes([bytes[16], bytes[17]]);
        let page = if size == 1 { 65_536 } else { usize::from(size).max(512) };
        let pages = u32::try_from(bytes.len() / page).unwrap_or(u32::MAX);
        bytes[28..32].copy_from_slice(&pages.to_be_bytes());
    }
    std::fs::write(copy, bytes)?;
    let wal = sidecar(path, "-wal");
    if wal.exists() {
        std::fs::copy(&wal, sidecar(copy, "-wal"))?;
    }
    Ok(())
}

fn read_copy(path: &Path) -> Salvaged {
    let mut out = Salvaged::default();
    // Nothing reads back: nothing can be counted either (the report says the file was lost).
    let Ok(conn) = open_read_only(path) else { return out };
    out.destinations = rows(&conn, "destinations", "bit, name", |r| Ok((r.get(0)?, r.get(1)?)))
        .into_iter()
        .filter(|(bit, _): &(i64, String)| (0..64).contains(bit))
        .collect();
    out.contexts = rows(&conn, "contexts", "id, json", |r| Ok((r.get(0)?, r.get(1)?)));
    out.state = rows(&conn, "state", "key, value", |r| Ok((r.get(0)?, r.get(1)?)));
    let stored_next: Option<i64> =
        conn.query_row("SELECT value FROM meta WHERE key = 'next_seq'", [], |r| r.get(0)).optional().ok().flatten();
    out.dead_letters = rows(&conn, "dead_letters", "seq, id, destination, reason, detail, at, event", |r| {
        Ok(DeadRow {
            seq: r.get(0)?,
            id: r.get(1)?,
            destination: r.get(2)?,
            reason: r.get(3)?,
            detail: r.get(4)?,
            at: r.get(5)?,
            event: r.get(6)?,
        })
    });
    let contexts: BTreeSet<i64> = out.contexts.iter().map(|(id, _)| *id).collect();
    // Schema 1 has no checksum columns: NULL stands in for them.
    let has_crc = conn.prepare("SELECT crc FROM chunks LIMIT 0").is_ok();
    let crc = if has_crc { "crc" } else { "NULL" };
    let mut keys = scan_keys(&conn, "chunk_state", "first");
    keys.extend(scan_keys(&conn, "chunks", "first"));
    let one = |sql: String, first: i64| -> Option<(Vec<u8>, Option<i64>)> {
        conn.query_row(&sql, [first], |r| Ok((r.get(0)?, r.get(1)?))).ok()
    };
    let mut max_seq = None;
    let mut unknown = Vec::new();
    // Every seq read back from a chunk, pending or not: a lost chunk's range does not count them.
    let mut seen = BTreeSet::new();
    let all_keys: Vec<i64> = keys.iter().copied().collect();
    for first in keys {
        let state = one(format!("SELECT state, {crc} FROM chunk_state WHERE first = ?1"), first)
            .filter(|(state, crc)| chunk::checksum_ok(state, *crc))
            .and_then(|(state, _)| Chunk::decode_state(&state, 0));
        let events = one(format!("SELECT data, {crc} FROM chunks WHERE first = ?1"), first)
            .filter(|(data, crc)| chunk::checksum_ok(data, *crc))
            .and_then(|(data, _)| chunk::decode_events(&Bytes::from(data)));
        let Some(events) = events else {
            match state {
                Some(state) => out.lost += state.live as u64,
                None => unknown.push(first),
            }
            continue;
        };
        // A state row that does not describe these events is as good as lost.
        let state = state.filter(|s| s.iter().map(|(seq, _)| seq).eq(events.iter().map(|e| e.seq)));
        let masks: Option<Vec<u64>> = state.map(|s| s.iter().map(|(_, m)| m).collect());
        seen.extend(events.iter().map(|e| e.seq));
        for (i, event) in events.into_iter().enumerate() {
            let mask = match &masks {
                Some(masks) => masks[i],
                // Its delivery state is gone: sent again to every destination.
                None => out.destinations.keys().fold(0u64, |m, bit| m | (1 << bit)).max(1),
            };
            if mask == 0 {
                continue;
            }
            if event.context.is_some_and(|c| !contexts.contains(&c)) {
                out.lost += 1;
                continue;
            }
            max_seq = max_seq.max(Some(event.seq));
            out.events.push((event, mask));
        }
    }
    // Bits still set whose destination row is gone: kept under a name of their own, so the
    // events wait (reported as for a destination no longer configured) instead of vanishing.
    let used = out.events.iter().fold(0u64, |m, (_, mask)| m | mask);
    for bit in (0..64).filter(|b| used & (1 << b) != 0) {
        out.destinations.entry(bit).or_insert_with(|| format!("unnamed-{bit}"));
    }
    let dead_max = out.dead_letters.iter().map(|d| d.seq).max().map_or(0, |s| s as u64 + 1);
    out.next_seq = (stored_next.unwrap_or(0).max(0) as u64).max(max_seq.map_or(0, |m| m + 1)).max(dead_max);
    let (lost, lost_chunks) = lost_in_unknown_chunks(&unknown, &all_keys, out.next_seq, stored_next.is_some(), &seen);
    out.lost += lost;
    out.lost_chunks += lost_chunks;
    out
}

/// The events lost in chunks of which neither row reads back, and how many such chunks there
/// were. A chunk holds consecutive seqs, at most `CHUNK_EVENTS`, up to the next chunk's first
/// and below `next_seq`: each is counted by that range, less the seqs read back from other
/// chunks. A damaged page can make a scan return keys of no chunk, whose point lookups find
/// nothing:
/// - stale keys (cells of chunks merged long ago, on a page the damage made reachable), whose
///   range lies in chunks that did read back: they count nothing (counted whole, one such key
///   reported 218 events lost that had all been recovered);
/// - garbage keys past every event, which were counted up to `CHUNK_EVENTS` each (a store of
///   20 000 events reported 783 lost where 14 were): no chunk starts at or after the stored
///   `next_seq` (it is written with the chunks), so they count nothing. When that row is lost too (`next_seq_stored` false), such
///   a key may be a chunk written after the last one read back: it counts one event, as before.
fn lost_in_unknown_chunks(
    unknown: &[i64],
    keys: &[i64],
    next_seq: u64,
    next_seq_stored: bool,
    seen: &BTreeSet<u64>,
) -> (u64, u64) {
    let bound = i64::try_from(next_seq).unwrap_or(i64::MAX);
    let (mut lost, mut chunks) = (0, 0);
    for &first in unknown {
        let next = keys.iter().copied().find(|k| *k > first).unwrap_or(bound);
        // Any key a damaged scan returns, `i64::MAX` and negative ones included: saturating.
        let mut end = next.min(first.saturating_add(CHUNK_EVENTS as i64)).min(bound);
        if end <= first {
            if next_seq_stored {
                continue;
            }
            end = first.saturating_add(1);
        }
        let start = first.max(0) as u64;
        let end = (end.max(0) as u64).max(start);
        let missing = (end - start) - seen.range(start..end).count() as u64;
        if missing > 0 {
            lost += missing;
            chunks += 1;
        }
    }
    (lost, chunks)
}

/// Writes what was salvaged into the fresh (migrated, empty) store, in one transaction.
///
/// # Errors
/// When the fresh store cannot be written.
pub(super) fn write(conn: &mut Connection, salvaged: &Salvaged) -> Result<(), StoreError> {
    let tx = conn.transaction().map_err(backend)?;
    for (bit, name) in &salvaged.destinations {
        tx.execute("INSERT OR IGNORE INTO destinations (bit, name) VALUES (?1, ?2)", params![bit, name])
            .map_err(backend)?;
    }
    for (id, json) in &salvaged.contexts {
        tx.execute("INSERT OR IGNORE INTO contexts (id, json) VALUES (?1, ?2)", params![id, json]).map_err(backend)?;
    }
    for (key, value) in &salvaged.state {
        tx.execute("INSERT OR REPLACE INTO state (key, value) VALUES (?1, ?2)", params![key, value])
            .map_err(backend)?;
    }
    for d in &salvaged.dead_letters {
        tx.execute(
            "INSERT INTO dead_letters (seq, id, destination, reason, detail, at, event) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![d.seq, d.id, d.destination, d.reason, d.detail, d.at, d.event],
        )
        .map_err(backend)?;
    }
    tx.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('next_seq', ?1)", [salvaged.next_seq as i64])
        .map_err(backend)?;
    let mut data = Vec::new();
    for part in salvaged.events.chunks(CHUNK_EVENTS) {
        data.clear();
        for (event, _) in part {
            chunk::encode_event(&mut data, event);
        }
        let state = Chunk::new(part.iter().map(|(e, _)| e.seq).collect(), part.iter().map(|(_, m)| *m).collect(), 0);
        insert_chunk(&tx, part[0].0.seq, &data, &state.encode_state())?;
    }
    tx.commit().map_err(backend)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::lost_in_unknown_chunks;

    #[test]
    fn a_lost_chunk_counts_its_range_up_to_the_next_key() {
        // Chunks at 0, 256 and 512; the one at 256 is lost; 600 events in all.
        let seen: BTreeSet<u64> = (0..256).chain(512..600).collect();
        assert_eq!(lost_in_unknown_chunks(&[256], &[0, 256, 512], 600, true, &seen), (256, 1));
        // The last chunk lost: its range ends at next_seq.
        let seen: BTreeSet<u64> = (0..512).collect();
        assert_eq!(lost_in_unknown_chunks(&[512], &[0, 256, 512], 600, true, &seen), (88, 1));
    }

    #[test]
    fn a_stale_key_inside_chunks_that_read_back_counts_nothing() {
        // A damaged scan returned 3 and 25, keys of small chunks rewritten long ago into the
        // chunk at 0, which read back whole; the chunk at 9967 is really lost.
        let seen: BTreeSet<u64> = (0..9967).chain(10_000..20_000).collect();
        let keys = [0, 3, 25, 256, 9967, 10_000];
        assert_eq!(lost_in_unknown_chunks(&[3, 25, 9967], &keys, 20_000, true, &seen), (33, 1));
    }

    #[test]
    fn any_key_a_damaged_scan_returns_is_counted_without_a_panic() {
        let seen: BTreeSet<u64> = (0..10).collect();
        for stored in [true, false] {
            assert_eq!(lost_in_unknown_chunks(&[i64::MIN, -5], &[i64::MIN, -5, 0], 10, stored, &seen), (0, 0));
        }
        // Past the stored next seq: no chunk starts there. Each such key counted up to a whole
        // chunk (a damaged store reported 783 events lost where 14 were).
        let garbage = [25_000, 40_000, 1_039_775_089];
        assert_eq!(lost_in_unknown_chunks(&garbage, &garbage, 10, true, &seen), (0, 0));
        // With that row lost, such a key may be a chunk after the last one read back: one each.
        assert_eq!(lost_in_unknown_chunks(&garbage, &garbage, 10, false, &seen), (3, 3));
        // The largest key: no panic, and no range to count.
        assert_eq!(lost_in_unknown_chunks(&[i64::MAX], &[0, i64::MAX], 10, false, &seen), (0, 0));
    }

    #[test]
    fn a_range_is_capped_at_one_chunk() {
        // Nothing read back after the lost chunk and no key after it: at most CHUNK_EVENTS.
        let seen: BTreeSet<u64> = (0..256).collect();
        let (lost, chunks) = lost_in_unknown_chunks(&[256], &[0, 256], 100_000, true, &seen);
        assert_eq!((lost, chunks), (super::CHUNK_EVENTS as u64, 1));
    }
}

//! Moving or dropping the pending events of one stored destination, on request: what to do
//! with the events of a destination that was renamed or removed from the configuration (the
//! CLI's `trackway outbox move` and `drop`). Nothing else ever moves or drops them.

use std::collections::BTreeSet;
use std::path::Path;

use rusqlite::params;

use super::file::{Found, backend, classify, lock, migrate, open_checked, prove_writable, writing_error};
use super::write::write_dirty;
use super::{SqliteStore, Synchronous, load};
use crate::store::StoreError;

impl SqliteStore {
    /// Moves the pending events of the stored destination `from` to the destination `to`
    /// (stored or not yet: the next client configured with `to` delivers them), and forgets
    /// `from`. An event pending for both stays pending once, for `to`. Takes the store's lock:
    /// no client may have it open.
    ///
    /// ```no_run
    /// use trackway::store::SqliteStore;
    /// // `warehouse` was renamed `wh` in the configuration: its backlog follows.
    /// let moved = SqliteStore::move_pending("outbox.db", "warehouse", "wh")?;
    /// println!("{moved} events now wait for wh");
    /// # Ok::<(), trackway::store::StoreError>(())
    /// ```
    ///
    /// # Errors
    /// No store at `path`, or not a trackway store; [`StoreError::Locked`] while a client has
    /// it open; `from` has no events stored (the message lists the stored destinations); a
    /// damaged store (open it with a client first, which salvages it); a read-only store.
    pub fn move_pending(path: impl AsRef<Path>, from: &str, to: &str) -> Result<u64, StoreError> {
        if from == to {
            return Err(StoreError::Backend(format!("moving the events of `{from}` to itself")));
        }
        rewrite(path.as_ref(), from, Some(to))
    }

    /// Drops the pending events of the stored destination `from` (an event another destination
    /// still has to deliver stays for that one) and forgets `from`. Returns how many events
    /// were pending for it. Takes the store's lock.
    ///
    /// # Errors
    /// As [`move_pending`](Self::move_pending).
    pub fn drop_pending(path: impl AsRef<Path>, from: &str) -> Result<u64, StoreError> {
        rewrite(path.as_ref(), from, None)
    }
}

fn rewrite(path: &Path, from: &str, to: Option<&str>) -> Result<u64, StoreError> {
    if classify(path)? == Found::Nothing {
        return Err(StoreError::Backend(format!("no store at {}", path.display())));
    }
    let _lock = lock(path)?;
    let damaged = |reason: String| {
        StoreError::Backend(format!(
            "store {} {reason}: open it with a client first (`trackway import` or `outbox requeue`), which salvages it",
            path.display()
        ))
    };
    let mut conn = open_checked(path, Synchronous::Normal)?.map_err(damaged)?;
    migrate(&conn).map_err(|e| writing_error(path, e))?;
    prove_writable(&conn, path)?;
    let mut index = load(&conn)?.map_err(damaged)?.index;
    let tx = conn.transaction().map_err(backend)?;
    let known: Vec<(i64, String)> = {
        let mut stmt = tx.prepare("SELECT bit, name FROM destinations ORDER BY bit").map_err(backend)?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).map_err(backend)?;
        rows.collect::<Result<_, _>>().map_err(backend)?
    };
    let Some(from_bit) = known.iter().find(|(_, n)| n == from).map(|(b, _)| 1u64 << b) else {
        let names: Vec<&str> = known.iter().map(|(_, n)| n.as_str()).collect();
        return Err(StoreError::Backend(format!(
            "no events are stored for destination `{from}` (stored: {})",
            if names.is_empty() { "none".to_owned() } else { names.join(", ") }
        )));
    };
    let to_bit = match to {
        None => 0,
        Some(to) => match known.iter().find(|(_, n)| n == to) {
            Some((bit, _)) => 1u64 << bit,
            None => {
                let free = (0..64)
                    .find(|b| !known.iter().any(|(k, _)| k == b))
                    .ok_or_else(|| StoreError::Backend("the store already has 64 destinations".into()))?;
                tx.execute("INSERT INTO destinations (bit, name) VALUES (?1, ?2)", params![free, to])
                    .map_err(backend)?;
                1u64 << free
            }
        },
    };
    let mut moved = 0;
    let mut dirty = BTreeSet::new();
    for (first, chunk) in &mut index.chunks {
        let here = chunk.move_bit(from_bit, to_bit);
        if here > 0 {
            moved += here as u64;
            dirty.insert(*first);
        }
    }
    write_dirty(&tx, &index, &dirty)?;
    tx.execute("DELETE FROM destinations WHERE bit = ?1", [from_bit.trailing_zeros()]).map_err(backend)?;
    tx.commit().map_err(backend)?;
    Ok(moved)
}

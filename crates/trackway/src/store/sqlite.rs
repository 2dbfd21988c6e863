//! The durable outbox: one SQLite file (WAL mode) holding the events, their delivery state per
//! destination, the dead letters and the client's state.
//!
//! # Layout (schema version 1)
//!
//! | table | what |
//! |---|---|
//! | `events(seq, id, kind, ts, queued_at, context, pending, body)` | one row per stored event; `body` is its JSON head, `pending` a bitmask of the destinations that still have to deliver it |
//! | `destinations(bit, name)` | which bit of `pending` belongs to which destination (by name, so reordering destinations is harmless) |
//! | `contexts(id, json)` | each distinct context once (it completes an event's head) |
//! | `dead_letters(key, seq, id, destination, reason, detail, at, event)` | what a destination gave up on, with the server's answer |
//! | `state(key, value)` | client state: identity, session, destination tokens |
//! | `meta(key, value)` | the next sequence number |
//!
//! # Durability
//!
//! Every [`Store::append`] is one transaction: the events drained from the channel and the state
//! changes they carry commit together (group commit). With `synchronous = NORMAL` (the default)
//! a committed transaction survives a crash of the process; a power loss may lose the last
//! transactions (WAL frames not yet checkpointed are not fsynced), never corrupt the file. With
//! `synchronous = FULL` every commit is fsynced and survives power loss too, at the cost of one
//! fsync per drain.
//!
//! # One writer
//!
//! A process that opens the store for writing holds an exclusive lock on `<file>.lock`, which
//! records its pid; a second writer fails with "store in use by pid N". Readers
//! ([`SqliteStore::inspect`], [`SqliteStore::read_dead_letters`]) need no lock.
//!
//! # Recovery
//!
//! A file that is not a valid store (not SQLite, truncated, failing `quick_check`, or written by
//! a newer schema) is renamed `<file>.bad-<unix time>` with its `-wal` and `-shm` files, a fresh
//! store is created, and the loss is reported ([`Recovered::reset`]). A locked or busy file is
//! never treated as corrupt.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params};
use trackway_wire::{EventKind, MessageId, Timestamp};

use super::{
    Appended, Committed, DeadLetter, DeadLetterReason, Evicted, MemoryStore, NewEvent, Recovered, StateChange, Store,
    StoreError, routes,
};
use crate::destination::EventRecord;

/// The schema version this code writes; files with a higher one are from a newer trackway.
pub const SCHEMA_VERSION: i64 = 1;

/// Dead letters kept; older ones are deleted beyond this (they stay counted in stats).
const MAX_DEAD_LETTERS: i64 = 10_000;

/// Per-row overhead added to body lengths when estimating the store's size.
const ROW_OVERHEAD: u64 = 64;

/// How SQLite syncs commits to disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Synchronous {
    /// Commits survive a process crash; a power loss may lose the last ones (default).
    #[default]
    Normal,
    /// Every commit is fsynced: commits survive power loss too.
    Full,
}

/// The durable outbox. Build one with [`SqliteStore::new`] and hand it to
/// [`ClientBuilder::store`](crate::ClientBuilder::store), or let the client open the default one
/// (see [`ClientBuilder::app`](crate::ClientBuilder::app)).
///
/// ```no_run
/// use trackway::store::{SqliteStore, Synchronous};
/// let store = SqliteStore::new("/var/lib/myapp/outbox.db").synchronous(Synchronous::Full).max_bytes(64 << 20);
/// ```
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    synchronous: Synchronous,
    max_bytes: u64,
    max_page_count: Option<u64>,
    open: Option<Open>,
}

#[derive(Debug)]
struct Open {
    conn: Connection,
    /// Held for as long as the store is open: the single-writer lock.
    _lock: File,
    /// Client destination index -> its bit in `pending`.
    bits: Vec<u64>,
    names: Vec<String>,
    contexts: Vec<(i64, Bytes)>,
    /// Estimated size of the stored events (bodies plus a per-row overhead).
    bytes: u64,
    cursors: Vec<u64>,
    next_seq: u64,
    /// This process's events, in memory: reads are served from here and appends only stage
    /// (write-behind); `commit` writes what is still pending.
    hot: MemoryStore,
    /// Events below this seq are only in the file (an earlier process's backlog, or events moved
    /// out of memory).
    hot_start: u64,
    /// Hot events not yet written.
    staged: BTreeSet<u64>,
    staged_state: Vec<StateChange>,
    /// Per destination: known to have nothing pending below `hot_start`.
    cold_done: Vec<bool>,
}

/// Memory kept for this process's events; beyond it the oldest (already written) are read back
/// from the file instead.
const HOT_LIMIT: u64 = 32 * 1024 * 1024;

/// What a read-only look at a store found (see [`SqliteStore::inspect`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Inspection {
    /// Stored events.
    pub events: u64,
    /// Per destination name: events still to deliver.
    pub pending: Vec<(String, u64)>,
    /// Dead letters kept.
    pub dead_letters: u64,
    /// Size of the database file and its WAL, in bytes.
    pub file_bytes: u64,
}

impl SqliteStore {
    /// A store in the file at `path` (created, with its directory, when the client is built).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SqliteStore {
            path: path.into(),
            synchronous: Synchronous::Normal,
            max_bytes: 128 * 1024 * 1024,
            max_page_count: None,
            open: None,
        }
    }

    /// The default location for an application: `<per-user data dir>/<app name>/trackway/outbox.db`
    /// (e.g. `~/.local/share/myapp/trackway/outbox.db` on Linux).
    ///
    /// # Errors
    /// A message asking for an explicit path where the platform has no per-user data directory
    /// (mobile, some containers), or when `app_name` is not usable as a directory name.
    pub fn default_path(app_name: &str) -> Result<PathBuf, String> {
        if app_name.is_empty() || app_name.contains(['/', '\\']) || app_name == "." || app_name == ".." {
            return Err(format!("application name {app_name:?} cannot be used as a directory name"));
        }
        let base = dirs::data_local_dir().ok_or_else(|| {
            "this platform has no per-user data directory: give the store an explicit path with \
             ClientBuilder::store(SqliteStore::new(path))"
                .to_owned()
        })?;
        Ok(base.join(app_name).join("trackway").join("outbox.db"))
    }

    /// How commits are synced (default [`Synchronous::Normal`]).
    #[must_use]
    pub fn synchronous(mut self, mode: Synchronous) -> Self {
        self.synchronous = mode;
        self
    }

    /// The most bytes of events the store keeps (default 128 MiB). Beyond it the oldest events
    /// are dropped and counted as `store_full`.
    #[must_use]
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes.max(1);
        self
    }

    /// Caps the database at this many pages (SQLite's `max_page_count`), as if the disk had only
    /// that much room: writes beyond it fail like a full disk. For tests of disk-full handling.
    #[must_use]
    pub fn max_page_count(mut self, pages: u64) -> Self {
        self.max_page_count = Some(pages);
        self
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Looks at a store without writing to it or taking its lock: works while another process
    /// has it open.
    ///
    /// # Errors
    /// When the file does not exist or cannot be read as a store.
    pub fn inspect(path: impl AsRef<Path>) -> Result<Inspection, StoreError> {
        let path = path.as_ref();
        let conn = open_read_only(path)?;
        let file_bytes = [path.to_path_buf(), sidecar(path, "-wal")]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(backend)?;
        if version == 0 {
            // Being created by its writer right now (or never written): nothing in it yet.
            return Ok(Inspection { file_bytes, ..Inspection::default() });
        }
        if version > SCHEMA_VERSION {
            return Err(StoreError::Backend(format!("{} is from a newer trackway (schema {version})", path.display())));
        }
        let events: i64 = conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0)).map_err(backend)?;
        let dead: i64 = conn.query_row("SELECT count(*) FROM dead_letters", [], |r| r.get(0)).map_err(backend)?;
        let mut stmt = conn.prepare("SELECT bit, name FROM destinations ORDER BY bit").map_err(backend)?;
        let dests: Vec<(i64, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(backend)?
            .collect::<Result<_, _>>()
            .map_err(backend)?;
        let mut pending = Vec::new();
        for (bit, name) in dests {
            let n: i64 = conn
                .query_row("SELECT count(*) FROM events WHERE (pending & ?1) != 0", [1i64 << bit], |r| r.get(0))
                .map_err(backend)?;
            pending.push((name, n as u64));
        }
        Ok(Inspection { events: events as u64, pending, dead_letters: dead as u64, file_bytes })
    }

    /// Reads the dead letters of a store without taking its lock (oldest first, at most `limit`).
    ///
    /// # Errors
    /// When the file does not exist or cannot be read as a store.
    pub fn read_dead_letters(path: impl AsRef<Path>, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        let conn = open_read_only(path.as_ref())?;
        query_dead_letters(&conn, limit)
    }

    fn inner(&mut self) -> Result<&mut Open, StoreError> {
        self.open.as_mut().ok_or_else(|| StoreError::Backend("store used before open()".into()))
    }
}

// === opening, locking, recovery ===

fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn backend(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => StoreError::DiskFull(e.to_string()),
        _ => StoreError::Backend(e.to_string()),
    }
}

fn open_read_only(path: &Path) -> Result<Connection, StoreError> {
    if !path.exists() {
        return Err(StoreError::Backend(format!("no store at {}", path.display())));
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(backend)?;
    conn.busy_timeout(Duration::from_secs(2)).map_err(backend)?;
    Ok(conn)
}

/// Takes the single-writer lock, recording our pid in the lock file.
fn lock(path: &Path) -> Result<File, StoreError> {
    let lock_path = sidecar(path, ".lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|e| StoreError::Backend(format!("cannot open lock file {}: {e}", lock_path.display())))?;
    match file.try_lock() {
        Ok(()) => {
            let pid = std::process::id().to_string();
            let written = file.set_len(0).and_then(|()| file.rewind()).and_then(|()| file.write_all(pid.as_bytes()));
            written.map_err(|e| StoreError::Backend(format!("cannot write lock file: {e}")))?;
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let pid = holder.trim().parse().ok();
            Err(StoreError::Locked { path: path.to_path_buf(), pid })
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(StoreError::Backend(format!("cannot lock {}: {e}", lock_path.display())))
        }
    }
}

/// Why a file cannot be used as a store, when the answer is "it is damaged", as opposed to
/// "it is busy" or "we cannot read it" (which are never grounds for moving it aside).
fn is_damage(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt))
}

/// Opens and checks the file; `Ok(Err(reason))` means it is damaged and should be moved aside.
fn open_checked(path: &Path, synchronous: Synchronous) -> Result<Result<Connection, String>, StoreError> {
    let conn = Connection::open(path).map_err(backend)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(backend)?;
    let check = || -> rusqlite::Result<Result<(), String>> {
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Ok(Err(format!(
                "written by a newer trackway (schema {version}, this one reads up to {SCHEMA_VERSION})"
            )));
        }
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(rusqlite::Error::InvalidQuery);
        }
        let quick: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if quick != "ok" {
            return Ok(Err(format!("failed its integrity check: {quick}")));
        }
        let sync = match synchronous {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        };
        conn.execute_batch(&format!("PRAGMA synchronous = {sync}; PRAGMA foreign_keys = OFF;"))?;
        Ok(Ok(()))
    };
    match check() {
        Ok(Ok(())) => Ok(Ok(conn)),
        Ok(Err(reason)) => Ok(Err(reason)),
        Err(e) if is_damage(&e) => Ok(Err(format!("is not a valid database: {e}"))),
        Err(e) => Err(backend(e)),
    }
}

/// Renames a damaged file (and its WAL and shared-memory files) out of the way.
fn move_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let stamp = Timestamp::now().unix_seconds();
    let target = sidecar(path, &format!(".bad-{stamp}"));
    std::fs::rename(path, &target).map_err(|e| StoreError::Backend(format!("cannot move damaged store aside: {e}")))?;
    for suffix in ["-wal", "-shm"] {
        let from = sidecar(path, suffix);
        if from.exists() {
            let _ = std::fs::rename(&from, sidecar(&target, suffix));
        }
    }
    Ok(target)
}

fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version < 1 {
        conn.execute_batch(
            "BEGIN;
             CREATE TABLE events (
                 seq INTEGER PRIMARY KEY, id BLOB NOT NULL, kind INTEGER NOT NULL, ts INTEGER NOT NULL,
                 queued_at INTEGER NOT NULL, context INTEGER, pending INTEGER NOT NULL, body BLOB NOT NULL);
             CREATE TABLE destinations (bit INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
             CREATE TABLE contexts (id INTEGER PRIMARY KEY, json BLOB NOT NULL UNIQUE);
             CREATE TABLE dead_letters (
                 key INTEGER PRIMARY KEY, seq INTEGER NOT NULL, id BLOB NOT NULL, destination TEXT NOT NULL,
                 reason TEXT NOT NULL, detail TEXT NOT NULL, at INTEGER NOT NULL, event BLOB NOT NULL);
             CREATE TABLE state (key TEXT PRIMARY KEY, value BLOB NOT NULL);
             CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
             PRAGMA user_version = 1;
             COMMIT;",
        )?;
    }
    // Later versions migrate here, one step at a time, each in its own transaction.
    Ok(())
}

fn kind_code(kind: EventKind) -> i64 {
    match kind {
        EventKind::Track => 0,
        EventKind::Page => 1,
        EventKind::Screen => 2,
        EventKind::Identify => 3,
    }
}

impl Open {
    /// Assigns each configured destination its bit (existing by name, else the lowest free one)
    /// and releases the bits of destinations no longer configured. Returns how many events were
    /// dropped because only removed destinations still needed them.
    fn map_destinations(&mut self, names: &[String]) -> Result<u64, StoreError> {
        let tx = self.conn.transaction().map_err(backend)?;
        let known: Vec<(i64, String)> = {
            let mut stmt = tx.prepare("SELECT bit, name FROM destinations").map_err(backend)?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).map_err(backend)?;
            rows.collect::<Result<_, _>>().map_err(backend)?
        };
        let mut bits = Vec::with_capacity(names.len());
        let mut used: Vec<i64> = known.iter().filter(|(_, n)| names.contains(n)).map(|(b, _)| *b).collect();
        for name in names {
            let bit = match known.iter().find(|(_, n)| n == name) {
                Some((bit, _)) => *bit,
                None => {
                    let free = (0..64)
                        .find(|b| !used.contains(b))
                        .ok_or_else(|| StoreError::Backend("more than 64 destinations".into()))?;
                    tx.execute("INSERT INTO destinations (bit, name) VALUES (?1, ?2)", params![free, name])
                        .map_err(backend)?;
                    used.push(free);
                    free
                }
            };
            bits.push(1u64 << bit);
        }
        let mut dropped = 0;
        for (bit, name) in known.iter().filter(|(_, n)| !names.contains(n)) {
            let mask = 1i64 << bit;
            tx.execute("UPDATE events SET pending = pending & ~?1 WHERE (pending & ?1) != 0", [mask])
                .map_err(backend)?;
            dropped += tx.execute("DELETE FROM events WHERE pending = 0", []).map_err(backend)? as u64;
            tx.execute("DELETE FROM destinations WHERE bit = ?1", [bit]).map_err(backend)?;
            tracing::warn!(destination = %name, "trackway: destination no longer configured; its pending events are released");
        }
        tx.commit().map_err(backend)?;
        self.bits = bits;
        self.names = names.to_vec();
        self.cursors = vec![0; names.len()];
        Ok(dropped)
    }

    fn bit(&self, destination: usize) -> Result<u64, StoreError> {
        self.bits
            .get(destination)
            .copied()
            .ok_or_else(|| StoreError::Backend(format!("unknown destination {destination}")))
    }

    /// Pending events of `destination` from the file, below `hot_start`.
    fn read_cold(
        &self,
        destination: usize,
        from: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let bit = self.bit(destination)?;
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "{SELECT_EVENT} WHERE seq >= ?1 AND seq < ?4 AND (pending & ?2) != 0 ORDER BY seq LIMIT ?3"
            ))
            .map_err(backend)?;
        let mut rows =
            stmt.query(params![from as i64, bit as i64, max_events as i64, self.hot_start as i64]).map_err(backend)?;
        let mut out = Vec::new();
        let mut bytes = 0;
        while let Some(row) = rows.next().map_err(backend)? {
            let record = self.record(row).map_err(backend)?;
            if !out.is_empty() && bytes + record.json_len() > max_bytes {
                break;
            }
            bytes += record.json_len();
            out.push(record);
        }
        Ok(out)
    }

    fn context_bytes(&self, id: Option<i64>) -> Option<Bytes> {
        let id = id?;
        self.contexts.iter().find(|(i, _)| *i == id).map(|(_, b)| b.clone())
    }

    fn record(&self, row: &rusqlite::Row<'_>) -> rusqlite::Result<EventRecord> {
        let seq: i64 = row.get(0)?;
        let id: Vec<u8> = row.get(1)?;
        let ts: i64 = row.get(2)?;
        let queued_at: i64 = row.get(3)?;
        let context: Option<i64> = row.get(4)?;
        let body: Vec<u8> = row.get(5)?;
        let id = uuid::Uuid::from_slice(&id)
            .map(MessageId::from_uuid)
            .unwrap_or_else(|_| MessageId::from_uuid(uuid::Uuid::nil()));
        let ts = Timestamp::from_unix_millis(ts);
        let record = match self.context_bytes(context) {
            Some(c) => EventRecord::from_head(seq as u64, id, ts, Bytes::from(body), c),
            None => EventRecord::new(seq as u64, id, ts, Bytes::from(body)),
        };
        Ok(record.with_queued_at(Timestamp::from_unix_millis(queued_at)))
    }
}

const SELECT_EVENT: &str = "SELECT seq, id, ts, queued_at, context, body FROM events";

impl Store for SqliteStore {
    fn open(&mut self, destinations: &[String]) -> Result<Recovered, StoreError> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Backend(format!("cannot create {}: {e}", dir.display())))?;
        }
        let lock = lock(&self.path)?;
        let mut reset = None;
        let conn = match open_checked(&self.path, self.synchronous)? {
            Ok(conn) => conn,
            Err(reason) => {
                let moved = move_aside(&self.path)?;
                let message =
                    format!("store {} {reason}; moved to {} and started empty", self.path.display(), moved.display());
                tracing::error!("trackway: {message}");
                reset = Some(message);
                open_checked(&self.path, self.synchronous)?
                    .map_err(|reason| StoreError::Backend(format!("fresh store {reason}")))?
            }
        };
        migrate(&conn).map_err(backend)?;
        if let Some(pages) = self.max_page_count {
            conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(())).map_err(backend)?;
        }
        let mut open = Open {
            conn,
            _lock: lock,
            bits: Vec::new(),
            names: Vec::new(),
            contexts: Vec::new(),
            bytes: 0,
            cursors: Vec::new(),
            next_seq: 0,
            hot: MemoryStore::new(),
            hot_start: 0,
            staged: BTreeSet::new(),
            staged_state: Vec::new(),
            cold_done: vec![false; destinations.len()],
        };
        let released = open.map_destinations(destinations)?;
        let conn = &open.conn;
        open.contexts = {
            let mut stmt = conn.prepare("SELECT id, json FROM contexts").map_err(backend)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, i64>(0)?, Bytes::from(r.get::<_, Vec<u8>>(1)?))))
                .map_err(backend)?;
            rows.collect::<Result<_, _>>().map_err(backend)?
        };
        let max_seq: Option<i64> = conn.query_row("SELECT max(seq) FROM events", [], |r| r.get(0)).map_err(backend)?;
        let stored_next: Option<i64> = conn
            .query_row("SELECT value FROM meta WHERE key = 'next_seq'", [], |r| r.get(0))
            .optional()
            .map_err(backend)?;
        open.next_seq = stored_next.unwrap_or(0).max(max_seq.map_or(0, |m| m + 1)) as u64;
        let (count, body): (i64, i64) = conn
            .query_row("SELECT count(*), coalesce(sum(length(body)), 0) FROM events", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(backend)?;
        open.bytes = body as u64 + count as u64 * ROW_OVERHEAD;
        let mut pending = Vec::with_capacity(destinations.len());
        for &bit in &open.bits {
            let (n, b): (i64, i64) = conn
                .query_row(
                    "SELECT count(*), coalesce(sum(length(body)), 0) FROM events WHERE (pending & ?1) != 0",
                    [bit as i64],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(backend)?;
            pending.push((n as u64, b as u64));
        }
        let state = {
            let mut stmt = conn.prepare("SELECT key, value FROM state").map_err(backend)?;
            let rows =
                stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))).map_err(backend)?;
            rows.collect::<Result<BTreeMap<_, _>, _>>().map_err(backend)?
        };
        let next_seq = open.next_seq;
        open.hot.open(destinations)?;
        open.hot_start = next_seq;
        self.open = Some(open);
        Ok(Recovered { next_seq, state, pending, reset, released_unconfigured: released })
    }

    fn append(&mut self, events: &[NewEvent], state: &[StateChange]) -> Result<Appended, StoreError> {
        let open = self.inner()?;
        // Staged only: `commit` writes what is still pending a moment later, in one
        // transaction (and events delivered by then are never written at all).
        open.hot.append(events, &[])?;
        open.staged.extend(events.iter().map(|e| e.seq));
        open.staged_state.extend_from_slice(state);
        open.next_seq = events.iter().map(|e| e.seq + 1).fold(open.next_seq, u64::max);
        Ok(Appended::default())
    }

    fn writes_behind(&self) -> bool {
        true
    }

    fn commit(&mut self) -> Committed {
        let max_bytes = self.max_bytes;
        let Ok(open) = self.inner() else { return Committed::default() };
        if open.staged.is_empty() && open.staged_state.is_empty() {
            return Committed::default();
        }
        let contexts_before = open.contexts.len();
        match commit_tx(open, max_bytes) {
            Ok(evicted) => {
                open.staged.clear();
                open.staged_state.clear();
                if open.hot.live_bytes() > HOT_LIMIT {
                    // Everything in memory is written now: keep the newest, read the rest back.
                    let start = open.hot.forget_oldest(HOT_LIMIT / 2);
                    if start > open.hot_start {
                        open.hot_start = start;
                        open.cold_done.fill(false);
                    }
                }
                Committed { evicted, ..Committed::default() }
            }
            Err(e) => {
                // Nothing of this transaction was written: those events are lost to the store.
                open.contexts.truncate(contexts_before);
                open.staged_state.clear();
                let staged = std::mem::take(&mut open.staged);
                let lost = staged
                    .into_iter()
                    .filter_map(|seq| open.hot.release_all(seq).map(|(routes, bytes)| Evicted { seq, routes, bytes }))
                    .collect();
                Committed { lost, error: Some(e), ..Committed::default() }
            }
        }
    }

    fn read(
        &mut self,
        destination: usize,
        from: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let open = self.inner()?;
        let mut out =
            if from < open.hot_start { open.read_cold(destination, from, max_events, max_bytes)? } else { Vec::new() };
        if out.len() < max_events {
            let used: usize = out.iter().map(EventRecord::json_len).sum();
            let rest = open.hot.read(
                destination,
                from.max(open.hot_start),
                max_events - out.len(),
                max_bytes.saturating_sub(used),
            )?;
            if out.is_empty() || used + rest.first().map_or(0, EventRecord::json_len) <= max_bytes {
                out.extend(rest);
            }
        }
        Ok(out)
    }

    fn read_seqs(&mut self, destination: usize, seqs: &[u64]) -> Result<Vec<EventRecord>, StoreError> {
        let open = self.inner()?;
        let (hot, cold): (Vec<u64>, Vec<u64>) = seqs.iter().partition(|&&s| s >= open.hot_start);
        let mut out = open.hot.read_seqs(destination, &hot)?;
        if !cold.is_empty() {
            let bit = open.bit(destination)?;
            let mut stmt = open
                .conn
                .prepare_cached(&format!("{SELECT_EVENT} WHERE seq = ?1 AND (pending & ?2) != 0"))
                .map_err(backend)?;
            for seq in cold {
                let mut rows = stmt.query(params![seq as i64, bit as i64]).map_err(backend)?;
                if let Some(row) = rows.next().map_err(backend)? {
                    out.push(open.record(row).map_err(backend)?);
                }
            }
        }
        Ok(out)
    }

    fn ack(&mut self, destination: usize, seqs: &[u64]) -> Result<u64, StoreError> {
        let open = self.inner()?;
        let bit = open.bit(destination)? as i64;
        let mut released = 0u64;
        let mut cold = Vec::new();
        let mut written = Vec::new();
        for &seq in seqs {
            if seq < open.hot_start {
                cold.push(seq);
            } else if open.hot.ack(destination, &[seq])? == 1 {
                released += 1;
                if !open.staged.contains(&seq) {
                    // Already in the file: its row must learn it too.
                    written.push(seq);
                } else if !open.hot.is_pending(seq) {
                    // Delivered everywhere before it was written: it never will be.
                    open.staged.remove(&seq);
                }
            }
        }
        if cold.is_empty() && written.is_empty() {
            return Ok(released);
        }
        let tx = open.conn.transaction().map_err(backend)?;
        let mut freed = 0u64;
        released += sql_release(&tx, bit, &cold, &mut freed)?;
        sql_release(&tx, bit, &written, &mut freed)?;
        tx.commit().map_err(backend)?;
        open.bytes = open.bytes.saturating_sub(freed);
        Ok(released)
    }

    fn dead_letter(
        &mut self,
        destination: usize,
        letters: &[(u64, DeadLetterReason, String)],
        at: Timestamp,
    ) -> Result<u64, StoreError> {
        let open = self.inner()?;
        let bit = open.bit(destination)?;
        let name = open.names.get(destination).cloned().unwrap_or_default();
        // The full event of each letter, from memory or from the file.
        let mut found = Vec::with_capacity(letters.len());
        for (seq, reason, detail) in letters {
            let record = if *seq >= open.hot_start {
                open.hot.read_seqs(destination, &[*seq])?.pop()
            } else {
                let mut stmt = open
                    .conn
                    .prepare_cached(&format!("{SELECT_EVENT} WHERE seq = ?1 AND (pending & ?2) != 0"))
                    .map_err(backend)?;
                let mut rows = stmt.query(params![*seq as i64, bit as i64]).map_err(backend)?;
                rows.next().map_err(backend)?.map(|row| open.record(row)).transpose().map_err(backend)?
            };
            if let Some(record) = record {
                found.push((record, *reason, detail.clone()));
            }
        }
        let mut in_file = Vec::new();
        for (record, _, _) in &found {
            let seq = record.seq();
            if seq < open.hot_start {
                in_file.push(seq);
            } else {
                open.hot.ack(destination, &[seq])?;
                if !open.staged.contains(&seq) {
                    in_file.push(seq);
                } else if !open.hot.is_pending(seq) {
                    open.staged.remove(&seq);
                }
            }
        }
        let tx = open.conn.transaction().map_err(backend)?;
        let mut freed = 0;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO dead_letters (seq, id, destination, reason, detail, at, event) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(backend)?;
            for (record, reason, detail) in &found {
                insert
                    .execute(params![
                        record.seq() as i64,
                        record.id().as_uuid().as_bytes().as_slice(),
                        name,
                        reason.as_str(),
                        detail,
                        at.unix_millis(),
                        &record.json()[..]
                    ])
                    .map_err(backend)?;
            }
        }
        sql_release(&tx, bit as i64, &in_file, &mut freed)?;
        tx.execute(
            "DELETE FROM dead_letters WHERE key <= (SELECT max(key) FROM dead_letters) - ?1",
            [MAX_DEAD_LETTERS],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)?;
        open.bytes = open.bytes.saturating_sub(freed);
        Ok(found.len() as u64)
    }

    fn lowest_pending(&mut self, destination: usize) -> Result<Option<u64>, StoreError> {
        let open = self.inner()?;
        if !open.cold_done[destination] {
            let bit = open.bit(destination)?;
            let cursor = open.cursors.get(destination).copied().unwrap_or(0);
            let seq: Option<i64> = open
                .conn
                .prepare_cached(
                    "SELECT seq FROM events WHERE seq >= ?1 AND seq < ?2 AND (pending & ?3) != 0 ORDER BY seq LIMIT 1",
                )
                .and_then(|mut s| {
                    s.query_row(params![cursor as i64, open.hot_start as i64, bit as i64], |r| r.get(0)).optional()
                })
                .map_err(backend)?;
            match seq {
                // Seqs below the lowest pending one never become pending again: the hint only grows.
                Some(seq) => {
                    open.cursors[destination] = seq as u64;
                    return Ok(Some(seq as u64));
                }
                None => open.cold_done[destination] = true,
            }
        }
        open.hot.lowest_pending(destination)
    }

    fn set_state(&mut self, changes: &[StateChange]) -> Result<(), StoreError> {
        // Written with the next commit, a moment later.
        self.inner()?.staged_state.extend_from_slice(changes);
        Ok(())
    }

    fn dead_letters(&mut self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        query_dead_letters(&self.inner()?.conn, limit)
    }

    fn take_dead_letters(&mut self, keys: &[u64]) -> Result<Vec<DeadLetter>, StoreError> {
        let open = self.inner()?;
        let tx = open.conn.transaction().map_err(backend)?;
        let mut taken = Vec::with_capacity(keys.len());
        {
            let mut stmt = tx
                .prepare_cached(
                    "DELETE FROM dead_letters WHERE key = ?1 RETURNING key, seq, id, destination, reason, detail, at, event",
                )
                .map_err(backend)?;
            for &key in keys {
                if let Some(letter) = stmt.query_row([key as i64], dead_letter_row).optional().map_err(backend)? {
                    taken.push(letter);
                }
            }
        }
        tx.commit().map_err(backend)?;
        Ok(taken)
    }
}

/// Clears `bit` on these rows and deletes those no destination needs any more; returns how many
/// had the bit. Acks come in runs of consecutive seqs (a batch): two statements per run.
fn sql_release(tx: &rusqlite::Transaction<'_>, bit: i64, seqs: &[u64], freed: &mut u64) -> Result<u64, StoreError> {
    if seqs.is_empty() {
        return Ok(0);
    }
    let mut sorted = seqs.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut clear = tx
        .prepare_cached("UPDATE events SET pending = pending & ~?1 WHERE seq BETWEEN ?2 AND ?3 AND (pending & ?1) != 0")
        .map_err(backend)?;
    let mut delete = tx
        .prepare_cached("DELETE FROM events WHERE seq BETWEEN ?1 AND ?2 AND pending = 0 RETURNING length(body)")
        .map_err(backend)?;
    let mut released = 0;
    for (first, last) in runs(&sorted) {
        released += clear.execute(params![bit, first as i64, last as i64]).map_err(backend)? as u64;
        let mut rows = delete.query(params![first as i64, last as i64]).map_err(backend)?;
        while let Some(row) = rows.next().map_err(backend)? {
            *freed += row.get::<_, i64>(0).map_err(backend)? as u64 + ROW_OVERHEAD;
        }
    }
    Ok(released)
}

/// Client route mask -> stored bit mask.
fn to_bits(bits: &[u64], routes_mask: u64) -> u64 {
    routes(routes_mask).filter_map(|i| bits.get(i)).fold(0, |m, b| m | b)
}

/// Stored bit mask -> client route mask.
fn to_routes(bits: &[u64], pending: u64) -> u64 {
    bits.iter().enumerate().filter(|(_, b)| pending & **b != 0).fold(0, |m, (i, _)| m | (1 << i))
}

/// Consecutive runs in a sorted, deduplicated list: `[1,2,3,7,8]` -> `(1,3), (7,8)`.
fn runs(sorted: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &s in sorted {
        match out.last_mut() {
            Some((_, last)) if *last + 1 == s => *last = s,
            _ => out.push((s, s)),
        }
    }
    out
}

fn write_state(tx: &rusqlite::Transaction<'_>, changes: &[StateChange]) -> Result<(), StoreError> {
    for c in changes {
        match &c.value {
            Some(v) => tx.execute("INSERT OR REPLACE INTO state (key, value) VALUES (?1, ?2)", params![c.key, v]),
            None => tx.execute("DELETE FROM state WHERE key = ?1", [&c.key]),
        }
        .map_err(backend)?;
    }
    Ok(())
}

/// Writes the staged events still pending (and the staged state) in one transaction; drops the
/// oldest events if the file is over its size bound.
fn commit_tx(open: &mut Open, max_bytes: u64) -> Result<Vec<Evicted>, StoreError> {
    let Open { conn, hot, staged, staged_state, contexts, bits, bytes, next_seq, hot_start, .. } = open;
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
    let mut added = 0u64;
    {
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO events (seq, id, kind, ts, queued_at, context, pending, body) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .map_err(backend)?;
        for &seq in staged.iter() {
            // Delivered (or dead-lettered) everywhere while staged: never written.
            let Some(event) = hot.view(seq).filter(|e| e.pending != 0) else { continue };
            let context = match &event.context {
                Some(c) => Some(intern(&tx, contexts, c)?),
                None => None,
            };
            insert
                .execute(params![
                    seq as i64,
                    event.id.as_uuid().as_bytes().as_slice(),
                    kind_code(event.kind),
                    event.timestamp.unix_millis(),
                    event.queued_at.unix_millis(),
                    context,
                    to_bits(bits, event.pending) as i64,
                    &event.head[..]
                ])
                .map_err(backend)?;
            added += event.head.len() as u64 + ROW_OVERHEAD;
        }
    }
    write_state(&tx, staged_state)?;
    tx.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('next_seq', ?1)", [*next_seq as i64])
        .map_err(backend)?;
    let mut evicted = Vec::new();
    let mut size = *bytes + added;
    if size > max_bytes {
        // Over the bound: drop the oldest events until back under 90% of it, so this is not
        // paid again on every commit.
        let target = max_bytes / 10 * 9;
        let mut last = None;
        {
            let mut stmt = tx.prepare("SELECT seq, pending, length(body) FROM events ORDER BY seq").map_err(backend)?;
            let mut rows = stmt.query([]).map_err(backend)?;
            while size > target {
                let Some(row) = rows.next().map_err(backend)? else { break };
                let seq: i64 = row.get(0).map_err(backend)?;
                let pending: i64 = row.get(1).map_err(backend)?;
                let len: i64 = row.get(2).map_err(backend)?;
                size = size.saturating_sub(len as u64 + ROW_OVERHEAD);
                evicted.push(Evicted { seq: seq as u64, routes: to_routes(bits, pending as u64), bytes: len as u64 });
                last = Some(seq);
            }
        }
        if let Some(last) = last {
            tx.execute("DELETE FROM events WHERE seq <= ?1", [last]).map_err(backend)?;
        }
    }
    tx.commit().map_err(backend)?;
    // Evicted events still in memory go too.
    for e in &evicted {
        if e.seq >= *hot_start {
            hot.release_all(e.seq);
        }
    }
    *bytes = size;
    Ok(evicted)
}

/// The id of `context` in the contexts table, adding it if new (cached; compared by pointer
/// first, since a client's events share one `Bytes`).
fn intern(tx: &rusqlite::Transaction<'_>, cache: &mut Vec<(i64, Bytes)>, context: &Bytes) -> Result<i64, StoreError> {
    if let Some((id, _)) = cache.iter().rev().find(|(_, c)| c.as_ptr() == context.as_ptr() || c == context) {
        return Ok(*id);
    }
    tx.execute("INSERT OR IGNORE INTO contexts (json) VALUES (?1)", [&context[..]]).map_err(backend)?;
    let id: i64 =
        tx.query_row("SELECT id FROM contexts WHERE json = ?1", [&context[..]], |r| r.get(0)).map_err(backend)?;
    cache.push((id, context.clone()));
    Ok(id)
}

fn dead_letter_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeadLetter> {
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

fn query_dead_letters(conn: &Connection, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
    let mut stmt = conn
        .prepare("SELECT key, seq, id, destination, reason, detail, at, event FROM dead_letters ORDER BY key LIMIT ?1")
        .map_err(backend)?;
    let rows = stmt.query_map([limit as i64], dead_letter_row).map_err(backend)?;
    rows.collect::<Result<_, _>>().map_err(backend)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_path_is_per_application_and_refuses_unusable_names() {
        if let Ok(path) = SqliteStore::default_path("shop") {
            assert!(path.ends_with("shop/trackway/outbox.db"), "{}", path.display());
        }
        for bad in ["", "a/b", "..", r"a\b"] {
            assert!(SqliteStore::default_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn runs_groups_consecutive_seqs() {
        assert_eq!(runs(&[1, 2, 3, 7, 8, 10]), vec![(1, 3), (7, 8), (10, 10)]);
        assert!(runs(&[]).is_empty());
    }
}

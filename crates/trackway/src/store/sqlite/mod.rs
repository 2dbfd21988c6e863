//! The durable outbox: one SQLite file (WAL mode) holding the events, their delivery state per
//! destination, the dead letters and the client's state.
//!
//! # Layout (schema version 2)
//!
//! | table | what |
//! |---|---|
//! | `chunks(first, data, crc)` | events, in chunks of up to 256 consecutive ones (see `chunk.rs`), with the CRC-32 of `data` |
//! | `chunk_state(first, state, crc)` | per event of a chunk: its seq and the mask of destinations still to deliver it, with its CRC-32 |
//! | `destinations(bit, name)` | which mask bit belongs to which destination (by name, so reordering destinations is harmless) |
//! | `contexts(id, json)` | each distinct context once (it completes an event's head) |
//! | `dead_letters(key, seq, id, destination, reason, detail, at, event)` | what a destination gave up on, with the server's answer |
//! | `state(key, value)` | client state: identity, session, destination tokens |
//! | `meta(key, value)` | the next sequence number, the time of the last open (the write that proves the file writable) |
//!
//! The header's `application_id` is `TRKW` (since schema 2). Schema 1 stores are upgraded when
//! opened; their rows have no checksum (`NULL`) and are read as before.
//!
//! # Write-behind
//!
//! The events of this process are also kept in memory (a [`MemoryStore`]), which serves every
//! read: the file is for durability and for the next process. `append` only stages;
//! `commit`, which the worker calls at most `commit_delay` later (at once for a persist
//! barrier), encodes what is still pending into chunks and hands them, with the state changes
//! of those events, the changed chunk states and the deletes, to the **writer thread**
//! (`writer.rs`) as one *round*; the writer, on a connection of its own, writes each round in a
//! transaction (the rounds waiting together in one: group commit) and computes the CRCs. The
//! worker never waits for SQLite's writes: it goes on draining the queue and sending meanwhile.
//! Events delivered before their round is built are never written. Acks and dead letters
//! change the in-memory chunk index at once (a delivered event frees its room in the store's
//! accounting then) and reach the file with the next round: the worker's `sync` hands over a
//! round of its own when none is in flight, else they are folded into the round after the one
//! in flight. Reads of events no longer in memory (an earlier process's backlog) use the
//! worker's connection; they only ever touch chunks already written.
//!
//! At most a few rounds are in flight (`writer::ROUNDS_IN_FLIGHT`); the rest stays staged.
//! The staged events, with those in rounds not yet written, are bounded
//! ([`SqliteStore::staging_limit`], 48 MiB of event bytes by default): past half of it they are
//! handed over without waiting for `commit_delay`, and at the limit the worker stops draining
//! the queue until writes make room (the queue then refuses what it cannot hold, counted as
//! `queue_full`), so a burst longer than the disk can take costs bounded memory. The same
//! holds while the file is within 10 % of [`max_bytes`](SqliteStore::max_bytes) and events are
//! being delivered: the worker waits for the deliveries to make room instead of dropping the
//! oldest accepted events as `store_full` (a destination that delivers nothing lets the bound
//! act as [`WhenFull`] says). WAL checkpoints run on a thread of their own (`checkpoint.rs`,
//! owned by the writer), never inside the commits.
//!
//! A round that fails (disk full, an I/O error) is undone as a whole: its events still pending
//! are dropped and counted (`disk_full` or `store_error`; the worker waits for the answer of
//! those already on the wire, see `pipeline/worker/unwritten.rs`), its chunk states, deletes and client
//! state go with the next round. A writer thread that dies (a panic) is reported (an error in
//! the log), replaced by a new one on a new connection, and handed again every round it had not
//! answered; every write of a round is idempotent, so one it wrote before dying is harmless to
//! write twice.
//!
//! # Durability
//!
//! An event is *persisted* (counted in `Stats::persisted`; [`Client::persisted`](crate::Client::persisted)
//! answers for it) once the writer's transaction holding it has committed, not when it is handed
//! over: a barrier waits for the writer's round. With `synchronous = NORMAL` (the default) a
//! committed transaction survives a crash of the process; a power loss may lose the last
//! transactions (WAL frames not yet checkpointed are not fsynced), never corrupt the file. With
//! `synchronous = FULL` every commit is fsynced and survives power loss too. What was not
//! committed yet is lost in a crash: the accepted events not yet delivered of the last
//! `commit_delay`, those in rounds the writer has not committed, plus what was still in the
//! channel. Under a burst the writes (rounds of 1 024 events) can fall behind `commit_delay`,
//! and then the window is longer; [`Client::persisted`](crate::Client::persisted) is the exact
//! barrier.
//!
//! # One writer
//!
//! A process that opens the store for writing holds an exclusive lock on `<file>.lock`, which
//! records its pid; a second writer fails with "store in use by pid N". Readers
//! ([`SqliteStore::inspect`], [`SqliteStore::read_dead_letters`]) need no lock.
//!
//! # What is opened, and what is refused
//!
//! Before anything else (even the lock file), the file is looked at read-only: a file that is
//! not a trackway store (text, another application's SQLite database, a store of a newer
//! schema) is refused with [`StoreError::NotAStore`] and left exactly as it was. A store that
//! cannot be written (a write-protected file, a read-only directory or file system) is refused
//! with [`StoreError::ReadOnly`] when it is opened, before anything is sent: one committed write
//! proves it. [`SqliteStore::inspect`] reads such a store all the same (as immutable, when its
//! directory cannot take SQLite's shared-memory file).
//!
//! # Damage and salvage
//!
//! A store that fails `quick_check`, cannot be read, or has a chunk state that fails its
//! checksum when opened is *salvaged* (see `salvage.rs`): every row that reads back with a valid
//! checksum is copied into a fresh file, the damaged one is renamed `<file>.bad-<unix time>`
//! (with its `-wal` and `-shm`), and what was recovered and lost is reported
//! ([`Salvage`], in `Stats::store` and `dropped.store_reset` / `store_corrupt`). A chunk whose
//! data fails its checksum later, when read back, is removed and its events counted as
//! `store_corrupt`, with an error logged. A locked or busy file is never treated as damaged.
//!
//! # Destinations no longer configured
//!
//! A stored destination missing from the configuration keeps its bit and its pending events
//! (an orphan, reported when the store is opened and in `Stats::store`); nothing is sent to
//! another destination until [`SqliteStore::move_pending`] says so, and nothing is dropped
//! until [`SqliteStore::drop_pending`] does (or the size bound, counted as `store_full`). A
//! run-time destination that is forgotten is one with nothing pending.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};
use trackway_wire::Timestamp;

use super::{
    Appended, Committed, DeadLetter, DeadLetterReason, Evicted, MemoryStore, NewEvent, Outbox, Recovered, Salvage,
    StagingFill, StateChange, StoreError, routes,
};
use crate::destination::EventRecord;
use crate::store::destinations;

// `pub(crate)` for the `fuzzing` feature's entry points (crate::fuzzing) only.
mod checkpoint;
pub(crate) mod chunk;
mod file;
mod manage;
mod salvage;
mod staged;
mod write;
mod writer;

use chunk::{Chunk, ChunkIndex, StoredEvent};
use file::{
    backend, classify, io_error, is_damage, lock, migrate, move_aside, open_checked, open_read_only, prove_writable,
    sidecar, writing_error,
};
use write::{InFlight, build_round, dead_letter_row, evict, query_dead_letters, write_state};
use writer::{Done, Hooks, ROUNDS_IN_FLIGHT, Writer};

/// The schema version this code writes; files with a higher one are from a newer trackway.
pub const SCHEMA_VERSION: i64 = 2;

/// Dead letters kept; older ones are deleted beyond this (they stay counted in stats).
const MAX_DEAD_LETTERS: i64 = 10_000;

/// WAL pages past which the writer's own commit checkpoints (see where it is set).
const WAL_BACKSTOP_PAGES: u32 = 16_384;

/// Default memory kept for this process's events; beyond it the oldest (already written) are
/// read back from the file instead.
const DEFAULT_MEMORY_LIMIT: u64 = 32 * 1024 * 1024;

/// Default [`SqliteStore::staging_limit`]: events accepted but not yet written, in bytes (their
/// heads). About 150 000 typical events: a burst of 200 000 arriving about twice as fast as one
/// core writes them fits, with deliveries taking some out before they are written. (Measured on
/// 2 cores, 2026-12-03: at 48 MiB the pipeline benchmark's 200 000-event burst peaks at ~70 MB
/// of RSS and a 1 000 000-event one at ~98 MB, the excess refused as `queue_full`; at 32 MiB
/// the 1 000 000 burst peaks at 77–82 MB, but the 200 000 one lost part of itself as
/// `queue_full` in 1 of 24 runs.)
pub const DEFAULT_STAGING_LIMIT: u64 = 48 * 1024 * 1024;

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

/// What a [`SqliteStore`] does when it holds [`max_bytes`](SqliteStore::max_bytes) of events.
///
/// ```no_run
/// use trackway::store::{SqliteStore, WhenFull};
/// // An importer that must never lose a line: refuse, wait for room, go on.
/// let store = SqliteStore::new("import.db").max_bytes(64 << 20).when_full(WhenFull::Refuse);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum WhenFull {
    /// Drop the oldest undelivered events to make room, counted as `store_full` (the default:
    /// an app keeps tracking, its newest events kept).
    #[default]
    DropOldest,
    /// Never drop a stored event: while the store holds `max_bytes` or more, new events are
    /// refused at the call with [`Error::StoreFull`](crate::Error::StoreFull) (counted as
    /// `store_refused`), until deliveries make room
    /// ([`Client::wait_for_store_room`](crate::Client::wait_for_store_room) waits for it). The
    /// size is checked after each commit, so events already accepted when the bound is reached
    /// are still stored: the file can pass the bound by that much.
    Refuse,
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
    when_full: WhenFull,
    max_page_count: Option<u64>,
    memory_limit: u64,
    staging_limit: u64,
    /// Test hooks of the writer thread (a slow or a panicking writer).
    hooks: Hooks,
    open: Option<Open>,
}

/// While deliveries came this recently, a file near its size bound makes the worker wait for
/// them (the queue refuses the excess as `queue_full`) instead of dropping the oldest stored
/// events (`store_full`); a destination that delivers nothing lets the bound act as configured.
const DELIVERING: Duration = Duration::from_millis(500);

#[derive(Debug)]
struct Open {
    conn: Connection,
    /// Held for as long as the store is open: the single-writer lock.
    _lock: File,
    /// Client destination index -> its bit in the stored masks.
    bits: Vec<u64>,
    names: Vec<String>,
    contexts: Vec<(i64, Bytes)>,
    /// Delivery state of everything in the file.
    index: ChunkIndex,
    /// Chunks whose state changed and is not yet written.
    dirty: BTreeSet<u64>,
    /// The last chunk read back from the file, decoded.
    cache: Option<(u64, Vec<StoredEvent>)>,
    next_seq: u64,
    /// This process's events, in memory (see the module docs).
    hot: MemoryStore,
    /// Events below this seq are only in the file (an earlier process's backlog, or events moved
    /// out of memory).
    hot_start: u64,
    /// Hot events not yet written, with their size (head bytes).
    staged: staged::Staged,
    /// The sum of `staged`'s sizes: the staging buffer's fill, bounded by `staging_limit`.
    staged_bytes: u64,
    /// State changes to write, each with the seq of the last event appended with it: it is
    /// written with the part of the commit that writes that event, never before it.
    staged_state: Vec<(u64, StateChange)>,
    /// Per destination: no event below this is pending in the file (below `hot_start`).
    cursors: Vec<u64>,
    /// Pending events of chunks found damaged when read, not yet taken by the worker.
    corrupt: Vec<Evicted>,
    /// Runs every write of the commits off the worker's thread (see `writer.rs`).
    writer: Writer,
    /// Rounds handed to the writer and not yet answered, oldest first.
    in_flight: VecDeque<InFlight>,
    /// The id of the next round.
    next_round: u64,
    /// Outcomes received while waiting, not yet applied.
    ready: Vec<Done>,
    /// Chunks to delete with the next round (dropped at the size bound).
    deletes: Vec<u64>,
    /// Contexts of failed rounds: written with the next one (events refer to them by id).
    retry_contexts: Vec<(i64, Bytes)>,
    /// When an event was last delivered (see [`DELIVERING`]).
    last_ack: Option<Instant>,
    /// `index.bytes()` as of the last commit (it is a sum over every chunk).
    file_bytes: u64,
    /// The last round answered failed: acks are not held back for the writer then (see
    /// `acks_unwritten`), or a full disk would stop every delivery.
    failing: bool,
}

/// What a read-only look at a store found (see [`SqliteStore::inspect`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Inspection {
    /// Stored events (committed, not yet delivered everywhere).
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
            when_full: WhenFull::DropOldest,
            max_page_count: None,
            memory_limit: DEFAULT_MEMORY_LIMIT,
            staging_limit: DEFAULT_STAGING_LIMIT,
            hooks: Hooks::default(),
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

    /// The most bytes of events the file keeps (default 128 MiB). Beyond it the oldest events
    /// are dropped and counted as `store_full`, or new ones refused: see [`when_full`](Self::when_full).
    #[must_use]
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes.max(1);
        self
    }

    /// What to do at the size bound (default [`WhenFull::DropOldest`]).
    #[must_use]
    pub fn when_full(mut self, when_full: WhenFull) -> Self {
        self.when_full = when_full;
        self
    }

    /// Caps the database at this many pages (SQLite's `max_page_count`), as if the disk had only
    /// that much room: writes beyond it fail like a full disk. For tests of disk-full handling.
    #[must_use]
    pub fn max_page_count(mut self, pages: u64) -> Self {
        self.max_page_count = Some(pages);
        self
    }

    /// The most bytes of this process's events kept in memory to serve reads (default 32 MiB);
    /// beyond it the oldest already written are read back from the file when needed.
    #[must_use]
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.memory_limit = bytes;
        self
    }

    /// The most bytes of accepted events waiting in memory to be written (default
    /// [`DEFAULT_STAGING_LIMIT`], 48 MiB; at least 1 MiB). Under a burst faster than the disk
    /// takes it, events wait here, compactly, while the worker keeps draining the queue; from
    /// half of it on they are written without waiting for `commit_delay`, and at the limit the
    /// worker stops draining until writes make room: the queue then fills and further events
    /// are refused with [`Error::QueueFull`](crate::Error::QueueFull) (counted as `queue_full`),
    /// so memory stays bounded however long the burst.
    #[must_use]
    pub fn staging_limit(mut self, bytes: u64) -> Self {
        self.staging_limit = bytes.max(1 << 20);
        self
    }

    /// Test hook: the writer thread sleeps this long before each transaction (a slow disk).
    #[cfg(any(test, feature = "testing"))]
    #[doc(hidden)]
    #[must_use]
    pub fn slow_writer_for_test(mut self, delay: Duration) -> Self {
        self.hooks.delay = delay;
        self
    }

    /// Test hook: the writer thread panics at its `transactions`-th transaction (once).
    #[cfg(any(test, feature = "testing"))]
    #[doc(hidden)]
    #[must_use]
    pub fn panic_writer_for_test(self, transactions: u64) -> Self {
        self.hooks.panic_in.store(transactions, std::sync::atomic::Ordering::Relaxed);
        self
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Looks at a store without writing to it or taking its lock: works while another process
    /// has it open. Shows what is committed.
    ///
    /// # Errors
    /// When the file does not exist or cannot be read as a store.
    pub fn inspect(path: impl AsRef<Path>) -> Result<Inspection, StoreError> {
        let path = path.as_ref();
        classify(path)?;
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
        let dead: i64 = conn.query_row("SELECT count(*) FROM dead_letters", [], |r| r.get(0)).map_err(backend)?;
        let dests: Vec<(i64, String)> = {
            let mut stmt = conn.prepare("SELECT bit, name FROM destinations ORDER BY bit").map_err(backend)?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).map_err(backend)?;
            rows.collect::<Result<_, _>>().map_err(backend)?
        };
        let mut per_bit = [0u64; 64];
        let mut events = 0;
        let mut stmt = conn.prepare("SELECT state FROM chunk_state").map_err(backend)?;
        let mut rows = stmt.query([]).map_err(backend)?;
        while let Some(row) = rows.next().map_err(backend)? {
            let state: Vec<u8> = row.get(0).map_err(backend)?;
            let chunk =
                Chunk::decode_state(&state, 0).ok_or_else(|| StoreError::Backend("damaged chunk state".into()))?;
            for mask in chunk.iter().map(|(_, m)| m).filter(|m| *m != 0) {
                events += 1;
                for (bit, count) in per_bit.iter_mut().enumerate() {
                    *count += u64::from(mask & (1 << bit) != 0);
                }
            }
        }
        let pending = dests.into_iter().map(|(bit, name)| (name, per_bit[bit as usize])).collect();
        Ok(Inspection { events, pending, dead_letters: dead as u64, file_bytes })
    }

    /// Whether a process could open the store at `path` for writing now: takes its
    /// single-writer lock and lets it go at once. Creates the lock file if there is none.
    ///
    /// # Errors
    /// [`StoreError::Locked`] (with the holder's pid when the lock file records it) while
    /// another process holds the store; `Backend` when the lock file cannot be opened.
    pub fn check_unlocked(path: impl AsRef<Path>) -> Result<(), StoreError> {
        lock(path.as_ref()).map(drop)
    }

    /// Reads the dead letters of a store without taking its lock (oldest first, at most `limit`).
    ///
    /// # Errors
    /// When the file does not exist or cannot be read as a store.
    pub fn read_dead_letters(path: impl AsRef<Path>, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        classify(path.as_ref())?;
        let conn = open_read_only(path.as_ref())?;
        query_dead_letters(&conn, limit)
    }

    fn inner(&mut self) -> Result<&mut Open, StoreError> {
        self.open.as_mut().ok_or_else(|| StoreError::Backend("store used before open()".into()))
    }
}

/// What `open` reads from a file that is not damaged.
struct Loaded {
    contexts: Vec<(i64, Bytes)>,
    index: ChunkIndex,
    state: BTreeMap<String, Vec<u8>>,
}

/// Reads the contexts, the chunk index (checking every state row's checksum) and the client
/// state; `Ok(Err(reason))`: the file is damaged.
fn load(conn: &Connection) -> Result<Result<Loaded, String>, StoreError> {
    let run = || -> rusqlite::Result<Result<Loaded, String>> {
        let contexts = {
            let mut stmt = conn.prepare("SELECT id, json FROM contexts")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, Bytes::from(r.get::<_, Vec<u8>>(1)?))))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut index = ChunkIndex::default();
        let mut stmt = conn
            .prepare("SELECT s.first, s.state, s.crc, length(c.data) FROM chunk_state s JOIN chunks c USING (first)")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let first: i64 = row.get(0)?;
            let state: Vec<u8> = row.get(1)?;
            if !chunk::checksum_ok(&state, row.get(2)?) {
                return Ok(Err(format!("has a damaged chunk (the state of chunk {first} fails its checksum)")));
            }
            let Some(chunk) = Chunk::decode_state(&state, row.get::<_, i64>(3)? as u64) else {
                return Ok(Err(format!("has a damaged chunk (the state of chunk {first} does not decode)")));
            };
            index.chunks.insert(first as u64, chunk);
        }
        let state = {
            let mut stmt = conn.prepare("SELECT key, value FROM state")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
            rows.collect::<Result<BTreeMap<_, _>, _>>()?
        };
        Ok(Ok(Loaded { contexts, index, state }))
    };
    match run() {
        Ok(loaded) => Ok(loaded),
        Err(e) if is_damage(&e) => Ok(Err(format!("could not be read: {e}"))),
        Err(e) => Err(backend(e)),
    }
}

impl SqliteStore {
    /// Opens the file, upgrades its schema, proves it writable and loads it; `Ok(Err(reason))`:
    /// it is damaged.
    fn open_and_load(&self) -> Result<Result<(Connection, Loaded), String>, StoreError> {
        let conn = match open_checked(&self.path, self.synchronous)? {
            Ok(conn) => conn,
            Err(reason) => return Ok(Err(reason)),
        };
        match migrate(&conn) {
            Ok(()) => {}
            Err(e) if is_damage(&e) => return Ok(Err(format!("could not be upgraded: {e}"))),
            Err(e) => return Err(writing_error(&self.path, e)),
        }
        prove_writable(&conn, &self.path)?;
        Ok(load(&conn)?.map(|loaded| (conn, loaded)))
    }

    /// Salvages the damaged store: reads back every row that can be read, moves the file aside,
    /// writes what was read into a fresh one and opens that.
    fn salvage(&self, reason: &str) -> Result<((Connection, Loaded), Salvage), StoreError> {
        let salvaged = salvage::read(&self.path);
        let moved_to = move_aside(&self.path)?;
        let fresh = || -> Result<(Connection, Loaded), StoreError> {
            let mut conn = open_checked(&self.path, self.synchronous)?
                .map_err(|reason| StoreError::Backend(format!("fresh store {reason}")))?;
            migrate(&conn).map_err(|e| writing_error(&self.path, e))?;
            prove_writable(&conn, &self.path)?;
            salvage::write(&mut conn, &salvaged)?;
            let loaded = load(&conn)?.map_err(|reason| StoreError::Backend(format!("salvaged store {reason}")))?;
            Ok((conn, loaded))
        };
        let opened = fresh()?;
        let report = Salvage {
            moved_to,
            reason: reason.to_owned(),
            recovered: salvaged.recovered(),
            lost: salvaged.lost,
            lost_chunks: salvaged.lost_chunks,
        };
        tracing::error!("trackway: {report}");
        Ok((opened, report))
    }
}

impl Drop for Open {
    /// A clean close with nothing left to deliver gives the backlog's space back (SQLite keeps
    /// freed pages, so the file would stay at the backlog's high-water mark) and empties the
    /// WAL. Rebuilding a nearly empty file is quick; with events still stored it is skipped.
    /// Best effort: a crash skips it harmlessly.
    fn drop(&mut self) {
        // The writer finishes the rounds it holds (and stops its checkpointer, which would only
        // be in the way of the full checkpoint below).
        self.writer.stop();
        if self.index.chunks.is_empty() && self.staged.is_empty() {
            let _ = self.conn.execute_batch("VACUUM;");
        }
        let _ = self.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    }
}

/// Client route mask -> stored bit mask.
fn to_bits(bits: &[u64], routes_mask: u64) -> u64 {
    routes(routes_mask).filter_map(|i| bits.get(i)).fold(0, |m, b| m | b)
}

/// Stored bit mask -> client route mask.
fn to_routes(bits: &[u64], pending: u64) -> u64 {
    bits.iter().enumerate().filter(|(_, b)| pending & **b != 0).fold(0, |m, (i, _)| m | (1 << i))
}

impl Open {
    /// Assigns each configured destination its bit (existing by name, else the lowest free one).
    /// A stored destination that is no longer configured keeps its bit and its events while any
    /// is pending (an *orphan*: reported, moved or dropped only on request, see
    /// [`SqliteStore::move_pending`]); one with nothing pending is forgotten. A bit set in the
    /// stored masks that belongs to no stored destination (left by damage) gets one of its own,
    /// `unnamed-{bit}`, so its events wait too. Returns the orphans with their pending counts.
    /// The chunk index must be loaded.
    fn map_destinations(&mut self, names: &[String]) -> Result<Vec<(String, u64)>, StoreError> {
        let Open { conn, index, .. } = self;
        let tx = conn.transaction().map_err(backend)?;
        let mut known: Vec<(i64, String)> = {
            let mut stmt = tx.prepare("SELECT bit, name FROM destinations").map_err(backend)?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).map_err(backend)?;
            rows.collect::<Result<_, _>>().map_err(backend)?
        };
        let in_use = index.chunks.values().flat_map(|c| c.iter()).fold(0u64, |m, (_, p)| m | p);
        let unnamed: Vec<i64> =
            (0..64).filter(|b| in_use & (1 << b) != 0 && !known.iter().any(|(k, _)| k == b)).collect();
        for bit in unnamed {
            let name = format!("unnamed-{bit}");
            tx.execute("INSERT OR REPLACE INTO destinations (bit, name) VALUES (?1, ?2)", params![bit, name])
                .map_err(backend)?;
            known.push((bit, name));
        }
        let mut orphaned = Vec::new();
        for (bit, name) in known.iter().filter(|(_, n)| !names.contains(n)) {
            match index.pending_of(1 << bit).0 {
                0 => {
                    tx.execute("DELETE FROM destinations WHERE bit = ?1", [bit]).map_err(backend)?;
                }
                n => orphaned.push((*bit, name.clone(), n)),
            }
        }
        let mut bits = Vec::with_capacity(names.len());
        let mut used: Vec<i64> = known
            .iter()
            .filter(|(b, n)| names.contains(n) || orphaned.iter().any(|(o, _, _)| o == b))
            .map(|(b, _)| *b)
            .collect();
        for name in names {
            let bit = match known.iter().find(|(_, n)| n == name) {
                Some((bit, _)) => *bit,
                None => {
                    let free = (0..64).find(|b| !used.contains(b)).ok_or_else(|| {
                        StoreError::Backend(format!(
                            "more than 64 destinations ({} of them kept for destinations no longer configured, \
                             with events pending: move or drop those with `trackway outbox move` / `drop`)",
                            orphaned.len()
                        ))
                    })?;
                    tx.execute("INSERT INTO destinations (bit, name) VALUES (?1, ?2)", params![free, name])
                        .map_err(backend)?;
                    used.push(free);
                    free
                }
            };
            bits.push(1u64 << bit);
        }
        tx.commit().map_err(backend)?;
        self.bits = bits;
        self.names = names.to_vec();
        self.cursors = vec![0; names.len()];
        Ok(orphaned.into_iter().map(|(_, name, n)| (name, n)).collect())
    }

    /// Events pending per stored destination name, from the chunk index (before mapping).
    fn pending_by_name(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT bit, name FROM destinations").map_err(backend)?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))).map_err(backend)?;
        rows.map(|row| row.map(|(bit, name)| (name, self.index.pending_of(1 << bit).0)))
            .collect::<Result<_, _>>()
            .map_err(backend)
    }

    fn bit(&self, destination: usize) -> Result<u64, StoreError> {
        self.bits
            .get(destination)
            .copied()
            .ok_or_else(|| StoreError::Backend(format!("unknown destination {destination}")))
    }

    fn context_bytes(&self, id: Option<i64>) -> Option<Bytes> {
        let id = id?;
        self.contexts.iter().find(|(i, _)| *i == id).map(|(_, b)| b.clone())
    }

    fn record(&self, e: &StoredEvent) -> EventRecord {
        let record = match self.context_bytes(e.context) {
            Some(c) => EventRecord::from_head(e.seq, e.id, e.timestamp, e.head.clone(), c),
            None => EventRecord::new(e.seq, e.id, e.timestamp, e.head.clone()),
        };
        record.with_queued_at(e.queued_at)
    }

    /// The events of the chunk starting at `first`, read back from the file (cached: reads of one
    /// chunk come together). A chunk that fails its checksum or does not decode is damaged: it is
    /// removed, its pending events are reported through [`Outbox::take_corrupt`] and none is
    /// returned.
    fn chunk_events(&mut self, first: u64) -> Result<&[StoredEvent], StoreError> {
        if self.cache.as_ref().is_none_or(|(f, _)| *f != first) {
            let (data, crc): (Vec<u8>, Option<i64>) = self
                .conn
                .prepare_cached("SELECT data, crc FROM chunks WHERE first = ?1")
                .and_then(|mut s| s.query_row([first as i64], |r| Ok((r.get(0)?, r.get(1)?))))
                .map_err(backend)?;
            let events =
                Some(data).filter(|d| chunk::checksum_ok(d, crc)).and_then(|d| chunk::decode_events(&Bytes::from(d)));
            match events {
                Some(events) => self.cache = Some((first, events)),
                None => {
                    self.drop_damaged(first)?;
                    return Ok(&[]);
                }
            }
        }
        Ok(self.cache.as_ref().map_or(&[][..], |(_, e)| e.as_slice()))
    }

    /// Removes a chunk whose data is damaged, and keeps its pending events for `take_corrupt`.
    fn drop_damaged(&mut self, first: u64) -> Result<(), StoreError> {
        let tx = self.conn.transaction().map_err(backend)?;
        tx.execute("DELETE FROM chunks WHERE first = ?1", [first as i64]).map_err(backend)?;
        tx.execute("DELETE FROM chunk_state WHERE first = ?1", [first as i64]).map_err(backend)?;
        tx.commit().map_err(backend)?;
        let Some(chunk) = self.index.chunks.remove(&first) else { return Ok(()) };
        self.dirty.remove(&first);
        let per_event = chunk.bytes / chunk.len().max(1) as u64;
        let lost: Vec<Evicted> = chunk
            .iter()
            .filter(|(_, m)| *m != 0)
            .map(|(seq, mask)| Evicted { seq, routes: to_routes(&self.bits, mask), bytes: per_event })
            .collect();
        tracing::error!(
            chunk = first,
            events = lost.len(),
            "trackway: a chunk of the store is damaged (it fails its checksum); its events are lost (counted as store_corrupt)"
        );
        self.corrupt.extend(lost);
        Ok(())
    }

    /// A cold event (in the file only) as a record.
    fn cold_record(&mut self, first: u64, seq: u64) -> Result<Option<EventRecord>, StoreError> {
        let event = self.chunk_events(first)?.iter().find(|e| e.seq == seq).cloned();
        Ok(event.map(|e| self.record(&e)))
    }

    /// Clears `bit` of `seq` in the file's state (written at the next `write_dirty`).
    fn file_clear(&mut self, seq: u64, bit: u64) -> bool {
        let Some(first) = self.index.chunk_of(seq) else { return false };
        let cleared = self.index.chunks.get_mut(&first).is_some_and(|c| c.clear(seq, bit));
        if cleared {
            self.dirty.insert(first);
        }
        cleared
    }

    /// Releases `bit` of `seq` wherever the event lives; returns whether it was pending.
    fn release(&mut self, destination: usize, bit: u64, seq: u64) -> Result<bool, StoreError> {
        self.last_ack = Some(Instant::now());
        if seq < self.hot_start {
            return Ok(self.file_clear(seq, bit));
        }
        if self.hot.ack(destination, &[seq])? == 0 {
            return Ok(false);
        }
        if !self.staged.contains(seq) {
            // Already in the file: its state there must learn it too.
            self.file_clear(seq, bit);
        } else if !self.hot.is_pending(seq) {
            // Delivered everywhere before it was written: it never will be.
            self.unstage(seq);
        }
        Ok(true)
    }

    /// Takes `seq` out of the staged events (written, lost, or delivered before it was written).
    fn unstage(&mut self, seq: u64) {
        if let Some(bytes) = self.staged.remove(seq) {
            self.staged_bytes -= u64::from(bytes);
        }
    }

    /// Hands the writer a round: the oldest staged events (up to `max_events`), with the state
    /// changes that go with them, the changed chunk states and the deletes. Nothing when the
    /// writer holds [`ROUNDS_IN_FLIGHT`] rounds already, or there is nothing to write.
    fn hand_over(&mut self, max_events: usize) {
        if self.in_flight.len() >= ROUNDS_IN_FLIGHT {
            return;
        }
        if self.staged.is_empty()
            && self.staged_state.is_empty()
            && self.dirty.is_empty()
            && self.deletes.is_empty()
            && self.retry_contexts.is_empty()
        {
            return;
        }
        let mut part = self.staged.oldest(max_events.saturating_add(1));
        let upto = (part.len() > max_events).then(|| part[max_events]);
        part.truncate(max_events);
        // State changes go with the part holding their event (all of them with the last part).
        let state_below = upto.unwrap_or(u64::MAX);
        let id = self.next_round;
        self.next_round += 1;
        let flight = build_round(self, &part, state_below, id);
        if flight.round.is_empty() && flight.low.is_none() {
            return;
        }
        // A writer that is gone gives it back: it stays in flight, and is handed again to the
        // writer that replaces it (see `collect`).
        let _ = self.writer.send(flight.round.clone());
        self.in_flight.push_back(flight);
    }

    /// Applies the writer's answers so far; replaces a writer that died.
    fn collect(&mut self, out: &mut Committed) {
        let mut dones = std::mem::take(&mut self.ready);
        match self.writer.finished() {
            Ok(more) => dones.extend(more),
            Err(()) if dones.is_empty() => {
                self.replace_writer(out);
                return;
            }
            Err(()) => {}
        }
        for done in dones {
            self.settle(done, out);
        }
    }

    /// The writer thread died (a panic): a new one gets every round not answered, in order
    /// (rounds are idempotent, so one it wrote before dying is written again harmlessly).
    fn replace_writer(&mut self, out: &mut Committed) {
        let rounds = self.in_flight.len();
        tracing::error!(
            rounds,
            "trackway: the store's writer thread died; starting another one and handing it the {rounds} unwritten round(s) again"
        );
        out.writer_restarts += 1;
        match self.writer.restart() {
            Ok(()) => {
                for flight in &self.in_flight {
                    let _ = self.writer.send(flight.round.clone());
                }
            }
            Err(e) => {
                // No writer: the rounds cannot be written. Each fails, counted, as a failed write would.
                tracing::error!(error = %e, "trackway: could not restart the store's writer thread");
                let ids: Vec<u64> = self.in_flight.iter().map(|f| f.round.id).collect();
                for id in ids {
                    let result = Err(StoreError::Backend(format!("the store's writer thread died: {e}")));
                    self.settle(Done { id, result }, out);
                }
            }
        }
    }

    /// Applies one round's outcome: written, its events' bytes leave the staging bound; failed,
    /// its new chunks leave the index and their pending events are lost (reported in
    /// `out.lost`), its state rows and deletes are written with the next round.
    fn settle(&mut self, done: Done, out: &mut Committed) {
        let Some(at) = self.in_flight.iter().position(|f| f.round.id == done.id) else { return };
        let Some(flight) = self.in_flight.remove(at) else { return };
        self.staged_bytes -= flight.bytes.min(self.staged_bytes);
        self.failing = done.result.is_err();
        let Err(error) = done.result else { return };
        for first in &flight.firsts {
            let Some(chunk) = self.index.chunks.remove(first) else { continue };
            self.dirty.remove(first);
            let per_event = chunk.bytes / chunk.len().max(1) as u64;
            for (seq, mask) in chunk.iter().filter(|(_, m)| *m != 0) {
                if seq >= self.hot_start {
                    self.hot.release_all(seq);
                }
                out.lost.push(Evicted { seq, routes: to_routes(&self.bits, mask), bytes: per_event });
            }
        }
        for first in &flight.states {
            if self.index.chunks.contains_key(first) {
                self.dirty.insert(*first);
            }
        }
        self.deletes.extend(flight.round.deletes.iter().copied());
        self.retry_contexts.extend(flight.round.contexts.iter().cloned());
        // Client state is not lost with the events: written with the next round, before what
        // was staged since (which is newer).
        let state = flight.round.state.iter().map(|c| (0, c.clone()));
        self.staged_state.splice(0..0, state);
        out.error.get_or_insert(error);
    }

    /// The lowest seq not yet written (staged, or in a round not answered); `None`: all are.
    fn unwritten_from(&self) -> Option<u64> {
        let flying = self.in_flight.iter().find_map(|f| f.low);
        let staged = self.staged.first();
        match (flying, staged) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl Outbox for SqliteStore {
    fn open(&mut self, destinations: &[String]) -> Result<Recovered, StoreError> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| io_error(&self.path, &format!("cannot create {}", dir.display()), &e))?;
        }
        // Before the lock file is made beside it: a file that is not a store is left alone.
        classify(&self.path)?;
        let lock = lock(&self.path)?;
        let mut salvage = None;
        let (conn, loaded) = match self.open_and_load()? {
            Ok(opened) => opened,
            Err(reason) => {
                let (opened, report) = self.salvage(&reason)?;
                salvage = Some(report);
                opened
            }
        };
        if let Some(pages) = self.max_page_count {
            conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(())).map_err(backend)?;
        }
        // Checkpoints run on their own thread, not inside the worker's commits. But under a
        // sustained stream of commits its PASSIVE checkpoints never catch up with the end of the
        // WAL, which then never restarts and grows on disk (437 MB for a 1 000 000-event burst):
        // past 64 MiB of WAL the worker's commit finishes the checkpoint (most of it is copied
        // already) so that the next write starts the WAL over.
        conn.execute_batch(&format!("PRAGMA wal_autocheckpoint = {WAL_BACKSTOP_PAGES};")).map_err(backend)?;
        let writer =
            Writer::start(&self.path, self.synchronous, self.max_page_count, WAL_BACKSTOP_PAGES, self.hooks.clone())?;
        let Loaded { contexts, index, mut state } = loaded;
        let mut open = Open {
            conn,
            _lock: lock,
            bits: Vec::new(),
            names: Vec::new(),
            contexts,
            index,
            dirty: BTreeSet::new(),
            cache: None,
            next_seq: 0,
            hot: MemoryStore::unbounded(),
            hot_start: 0,
            staged: staged::Staged::default(),
            staged_bytes: 0,
            staged_state: Vec::new(),
            cursors: Vec::new(),
            corrupt: Vec::new(),
            writer,
            in_flight: VecDeque::new(),
            next_round: 0,
            ready: Vec::new(),
            deletes: Vec::new(),
            retry_contexts: Vec::new(),
            last_ack: None,
            file_bytes: 0,
            failing: false,
        };
        // Run-time destinations the state names are kept with the configured ones, so their
        // pending events are not released; one that is not current and has nothing pending is
        // forgotten here, before any bit is mapped.
        let stored = destinations::stored(&state, destinations);
        let stored_pending = open.pending_by_name()?;
        let (runtime, forget) = destinations::keep_or_forget(stored, |name| {
            stored_pending.iter().find(|(n, _)| n == name).map_or(0, |(_, count)| *count)
        });
        let mut names = destinations.to_vec();
        names.extend(runtime.iter().map(|d| d.name.clone()));
        if !forget.is_empty() {
            let changes: Vec<StateChange> =
                forget.iter().flat_map(|d| destinations::forget_changes(&d.name, &state)).collect();
            let tx = open.conn.transaction().map_err(backend)?;
            write_state(&tx, &changes)?;
            tx.commit().map_err(backend)?;
            for c in &changes {
                state.remove(&c.key);
            }
            for d in forget {
                tracing::info!(destination = %d.name, "trackway: run-time destination no longer routed to and idle; forgotten");
            }
        }
        // Destinations removed from the configuration keep their events, reported.
        let orphaned = open.map_destinations(&names)?;
        for (name, n) in &orphaned {
            tracing::warn!(
                destination = %name,
                events = n,
                "trackway: {n} events wait for destination `{name}`, which is not configured \
                 (kept; `trackway outbox move` or `drop` them)"
            );
        }
        let stored_next: Option<i64> = open
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'next_seq'", [], |r| r.get(0))
            .optional()
            .map_err(backend)?;
        let max_seq = open.index.chunks.values().map(Chunk::last).max();
        open.next_seq = (stored_next.unwrap_or(0) as u64).max(max_seq.map_or(0, |m| m + 1));
        let pending = open.bits.iter().map(|&bit| open.index.pending_of(bit)).collect();
        let next_seq = open.next_seq;
        open.hot.open(&names)?;
        open.hot_start = next_seq;
        open.file_bytes = open.index.bytes();
        self.open = Some(open);
        let reset = salvage.as_ref().map(ToString::to_string);
        Ok(Recovered { next_seq, state, pending, reset, salvage, orphaned, runtime })
    }

    fn add_destination(&mut self, name: &str) -> Result<(), StoreError> {
        let open = self.inner()?;
        let used: u64 = open.bits.iter().fold(0, |m, b| m | b);
        let free = (0..64)
            .find(|b| used & (1 << b) == 0)
            .ok_or_else(|| StoreError::Backend("more than 64 destinations".into()))?;
        // Every bit not in use was cleared from the stored masks when the store was opened, so
        // the new destination starts with nothing pending.
        open.conn
            .execute("INSERT OR REPLACE INTO destinations (bit, name) VALUES (?1, ?2)", params![free, name])
            .map_err(backend)?;
        open.hot.add_destination(name)?;
        open.bits.push(1 << free);
        open.names.push(name.to_owned());
        open.cursors.push(open.hot_start);
        Ok(())
    }

    fn append(&mut self, events: &[NewEvent], state: &[StateChange]) -> Result<Appended, StoreError> {
        let open = self.inner()?;
        // Staged only: `commit` writes what is still pending a moment later (see module docs).
        open.hot.append(events, &[])?;
        for e in events {
            let bytes = u32::try_from(e.bytes.len()).unwrap_or(u32::MAX);
            open.staged_bytes += u64::from(bytes);
            open.staged.insert(e.seq, bytes);
        }
        open.next_seq = events.iter().map(|e| e.seq + 1).fold(open.next_seq, u64::max);
        let with = open.next_seq.saturating_sub(1);
        open.staged_state.extend(state.iter().map(|c| (with, c.clone())));
        Ok(Appended::default())
    }

    fn writes_behind(&self) -> bool {
        true
    }

    fn staging(&self) -> StagingFill {
        let Some(open) = self.open.as_ref() else { return StagingFill::Room };
        let staged = open.staged_bytes;
        // Near the size bound while events are being delivered: wait for the deliveries to make
        // room rather than drop accepted events from the file (see `DELIVERING`).
        let delivering = open.last_ack.is_some_and(|t| t.elapsed() < DELIVERING);
        let near_bound = open.file_bytes + staged >= self.max_bytes / 10 * 9;
        if staged >= self.staging_limit || (delivering && near_bound && self.when_full == WhenFull::DropOldest) {
            StagingFill::Full
        } else if staged >= self.staging_limit / 2 {
            StagingFill::WriteNow
        } else {
            StagingFill::Room
        }
    }

    fn refuses_new(&self) -> bool {
        self.when_full == WhenFull::Refuse && self.open.as_ref().is_some_and(|o| o.index.bytes() >= self.max_bytes)
    }

    fn take_corrupt(&mut self) -> Vec<Evicted> {
        self.open.as_mut().map(|o| std::mem::take(&mut o.corrupt)).unwrap_or_default()
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        let open = self.inner()?;
        // Acks go in a round of their own now (the writer puts the rounds waiting together in
        // one transaction); when it holds all the rounds it takes, they are folded into the
        // next one, which the writer's answer makes the worker hand over.
        open.hand_over(0);
        Ok(())
    }

    fn writing(&self) -> bool {
        self.open.as_ref().is_some_and(|o| !o.in_flight.is_empty() || !o.staged.is_empty() || !o.ready.is_empty())
    }

    fn acks_unwritten(&self) -> bool {
        self.open.as_ref().is_some_and(|o| {
            !o.failing
                && (!o.dirty.is_empty()
                    || !o.deletes.is_empty()
                    || o.in_flight.iter().any(|f| !f.round.states.is_empty() || !f.round.deletes.is_empty()))
        })
    }

    fn write_ready(&self) -> bool {
        self.open.as_ref().is_some_and(|o| o.in_flight.len() < ROUNDS_IN_FLIGHT)
    }

    fn written(&self) -> Option<Arc<tokio::sync::Notify>> {
        self.open.as_ref().map(|o| o.writer.notify())
    }

    fn wait_written(&mut self, timeout: Duration) {
        let Some(open) = self.open.as_mut() else { return };
        if open.in_flight.is_empty() || !open.ready.is_empty() {
            return;
        }
        match open.writer.wait(timeout) {
            Some(done) => open.ready.push(done),
            // Gone (the next commit replaces it) or still writing: the caller comes back.
            None => std::thread::sleep(Duration::from_millis(1).min(timeout)),
        }
    }

    fn commit(&mut self, max_events: usize) -> Committed {
        let (max_bytes, when_full) = (self.max_bytes, self.when_full);
        let memory_limit = self.memory_limit;
        let Ok(open) = self.inner() else { return Committed::default() };
        let mut out = Committed::default();
        open.collect(&mut out);
        // A store that refuses new events at its bound never drops a stored one.
        if when_full != WhenFull::Refuse {
            out.evicted = evict(open, max_bytes);
        }
        open.hand_over(max_events);
        open.file_bytes = open.index.bytes();
        if open.hot.live_bytes() > memory_limit {
            // Keep the newest in memory; what is written may be read back from the file, what is
            // not yet written (staged, or in a round not answered) must stay.
            let written_below = open.unwritten_from().unwrap_or(u64::MAX);
            let start = open.hot.forget_oldest(memory_limit / 2, written_below);
            if start > open.hot_start {
                open.hot_start = start;
                open.cursors.fill(0);
            }
        }
        out.staged_from = open.unwritten_from();
        out.more = max_events > 0 && !open.staged.is_empty() && open.in_flight.len() < ROUNDS_IN_FLIGHT;
        out
    }

    fn read(
        &mut self,
        destination: usize,
        from: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let open = self.inner()?;
        let bit = open.bit(destination)?;
        let mut out = Vec::new();
        let mut used = 0;
        if from < open.hot_start {
            for (seq, first) in open.index.pending(bit, from, open.hot_start, max_events) {
                let Some(record) = open.cold_record(first, seq)? else { continue };
                if !out.is_empty() && used + record.json_len() > max_bytes {
                    return Ok(out);
                }
                used += record.json_len();
                out.push(record);
            }
        }
        if out.len() < max_events {
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
        let bit = open.bit(destination)?;
        let (hot, cold): (Vec<u64>, Vec<u64>) = seqs.iter().partition(|&&s| s >= open.hot_start);
        let mut out = open.hot.read_seqs(destination, &hot)?;
        for seq in cold {
            let Some(first) = open.index.chunk_of(seq) else { continue };
            let pending = open.index.chunks.get(&first).is_some_and(|c| c.mask_of(seq).is_some_and(|m| m & bit != 0));
            if pending && let Some(record) = open.cold_record(first, seq)? {
                out.push(record);
            }
        }
        Ok(out)
    }

    fn ack(&mut self, destination: usize, seqs: &[u64]) -> Result<u64, StoreError> {
        let open = self.inner()?;
        let bit = open.bit(destination)?;
        let mut released = 0;
        for &seq in seqs {
            released += u64::from(open.release(destination, bit, seq)?);
        }
        // Written by `sync`, once for all the answers handled together.
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
        // The events still pending here, read without releasing them: if writing the letters
        // fails, nothing has changed and the worker tries again later.
        let mut found = Vec::with_capacity(letters.len());
        for (seq, reason, detail) in letters {
            let record = if *seq >= open.hot_start {
                open.hot.read_seqs(destination, &[*seq])?.pop()
            } else {
                let pending = open.index.chunk_of(*seq).filter(|first| {
                    open.index.chunks.get(first).is_some_and(|c| c.mask_of(*seq).is_some_and(|m| m & bit != 0))
                });
                match pending {
                    Some(first) => open.cold_record(first, *seq)?,
                    None => None,
                }
            };
            if let Some(record) = record {
                found.push((record, *reason, detail.clone()));
            }
        }
        if found.is_empty() {
            return Ok(0);
        }
        {
            let tx = open.conn.transaction().map_err(backend)?;
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
            tx.execute(
                "DELETE FROM dead_letters WHERE key <= (SELECT max(key) FROM dead_letters) - ?1",
                [MAX_DEAD_LETTERS],
            )
            .map_err(backend)?;
            tx.commit().map_err(backend)?;
        }
        // The letters are durable: now the events are no longer pending here. Their state in the
        // file follows with the next sync (a crash before it sends them once more).
        for (record, _, _) in &found {
            open.release(destination, bit, record.seq())?;
        }
        Ok(found.len() as u64)
    }

    fn lowest_pending(&mut self, destination: usize) -> Result<Option<u64>, StoreError> {
        let open = self.inner()?;
        let bit = open.bit(destination)?;
        let cursor = open.cursors.get(destination).copied().unwrap_or(0);
        if cursor < open.hot_start {
            match open.index.pending(bit, cursor, open.hot_start, 1).first() {
                // Seqs below the lowest pending one never become pending again: the hint only grows.
                Some(&(seq, _)) => {
                    open.cursors[destination] = seq;
                    return Ok(Some(seq));
                }
                None => open.cursors[destination] = open.hot_start,
            }
        }
        open.hot.lowest_pending(destination)
    }

    fn set_state(&mut self, changes: &[StateChange]) -> Result<(), StoreError> {
        // Written with the next commit, a moment later (it belongs to no staged event).
        self.inner()?.staged_state.extend(changes.iter().map(|c| (0, c.clone())));
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

#[cfg(test)]
mod tests;

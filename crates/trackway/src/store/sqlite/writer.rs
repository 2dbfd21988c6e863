//! The writer thread: every write of the worker's commits (new chunks, chunk states, deletes,
//! client state, the next seq) runs here, on a connection of its own, so the worker goes on
//! draining the queue and sending while SQLite encodes pages and syncs them (the profile of
//! issue 17 put most of the durable worker's time under its commits).
//!
//! The worker hands over *rounds* ([`Round`]): the chunks it encoded (raw bytes, no per-event
//! structs), the state rows of chunks whose delivery state changed, the chunks to delete, the
//! contexts first used, the client state. At most [`ROUNDS_IN_FLIGHT`] rounds wait here; the
//! worker keeps the rest staged, and at the staging bound stops draining the queue (which then
//! refuses events as `queue_full`), so memory stays bounded. The rounds waiting when the thread
//! gets to them go into one transaction (group commit: under a burst, one sync for several
//! rounds), applied in order; each round's outcome is sent back ([`Done`]) and the worker is
//! woken ([`Writer::notify`]).
//!
//! Every write is idempotent (`INSERT OR REPLACE`, `UPDATE`, `DELETE`), so a round may be
//! applied again: when the thread dies (a panic) the worker starts another one and hands it
//! again every round it had not heard back about (see [`Writer::restart`]).
//!
//! The thread owns the checkpointer (`checkpoint.rs`): it nudges it after each transaction.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use rusqlite::{Connection, TransactionBehavior, params};

use super::Synchronous;
use super::checkpoint::Checkpointer;
use super::chunk;
use super::file::backend;
use super::write::write_state;
use crate::store::{StateChange, StoreError};

/// Rounds handed over and not yet answered, at most: with rounds of up to 1 024 events (~330 KB
/// of chunk data) that is a few MB of encoded bytes, and several ms of the writer's work queued.
pub(super) const ROUNDS_IN_FLIGHT: usize = 4;

/// One transaction's worth of writes, in the order they are applied.
#[derive(Debug, Default)]
pub(super) struct Round {
    /// Its number (increasing): how its [`Done`] is matched.
    pub(super) id: u64,
    /// Contexts first used by the events of this round: `(id, json)`.
    pub(super) contexts: Vec<(i64, Bytes)>,
    /// New chunks: `(first seq, data, state)`; the CRCs are computed here.
    pub(super) chunks: Vec<(u64, Vec<u8>, Vec<u8>)>,
    /// State rows of chunks whose delivery state changed: `(first seq, state)`.
    pub(super) states: Vec<(u64, Vec<u8>)>,
    /// Chunks to delete (delivered everywhere, or dropped at the size bound).
    pub(super) deletes: Vec<u64>,
    /// Client state changes.
    pub(super) state: Vec<StateChange>,
    /// The next sequence number, recorded in `meta`.
    pub(super) next_seq: u64,
}

impl Round {
    /// Whether it writes nothing but the next seq.
    pub(super) fn is_empty(&self) -> bool {
        self.contexts.is_empty()
            && self.chunks.is_empty()
            && self.states.is_empty()
            && self.deletes.is_empty()
            && self.state.is_empty()
    }
}

/// The outcome of one round.
#[derive(Debug)]
pub(super) struct Done {
    pub(super) id: u64,
    /// `Err`: nothing of the round was written (its transaction rolled back).
    pub(super) result: Result<(), StoreError>,
}

/// Test hooks: a writer that is slow, or that panics.
#[derive(Debug, Clone, Default)]
pub(super) struct Hooks {
    /// Slept before each transaction.
    pub(super) delay: Duration,
    /// Transactions left before the writer panics (once; 0: never).
    pub(super) panic_in: Arc<AtomicU64>,
}

/// How the writer's connection is opened (kept to start a replacement).
#[derive(Debug, Clone)]
struct Setup {
    path: PathBuf,
    synchronous: Synchronous,
    max_page_count: Option<u64>,
    wal_backstop_pages: u32,
    hooks: Hooks,
}

/// The writer thread of an open store. Dropping it (or [`Writer::stop`]) lets it finish the
/// rounds it holds, then joins it.
#[derive(Debug)]
pub(super) struct Writer {
    setup: Setup,
    rounds: Option<SyncSender<Arc<Round>>>,
    done: Receiver<Done>,
    thread: Option<JoinHandle<()>>,
    notify: Arc<tokio::sync::Notify>,
}

impl Writer {
    /// Opens the writer's connection and starts the thread (and its checkpointer).
    ///
    /// # Errors
    /// When the connection or a thread cannot be made.
    pub(super) fn start(
        path: &Path,
        synchronous: Synchronous,
        max_page_count: Option<u64>,
        wal_backstop_pages: u32,
        hooks: Hooks,
    ) -> Result<Self, StoreError> {
        let setup = Setup { path: path.to_path_buf(), synchronous, max_page_count, wal_backstop_pages, hooks };
        let notify = Arc::new(tokio::sync::Notify::new());
        let (rounds, done, thread) = spawn(&setup, notify.clone())?;
        Ok(Writer { setup, rounds: Some(rounds), done, thread: Some(thread), notify })
    }

    /// Woken after each transaction (a permit is kept when nobody waits: no wake-up is lost).
    pub(super) fn notify(&self) -> Arc<tokio::sync::Notify> {
        self.notify.clone()
    }

    /// Hands a round over; gives it back when the writer already holds [`ROUNDS_IN_FLIGHT`]
    /// (the caller counts what it handed over, so this is a backstop) or is gone.
    pub(super) fn send(&self, round: Arc<Round>) -> Result<(), Arc<Round>> {
        match &self.rounds {
            Some(tx) => tx.try_send(round).map_err(|e| match e {
                TrySendError::Full(r) | TrySendError::Disconnected(r) => r,
            }),
            None => Err(round),
        }
    }

    /// The outcomes ready now; `Err(())` when the thread is gone (it panicked): the rounds not
    /// answered were not (all) written, see [`restart`](Self::restart).
    pub(super) fn finished(&self) -> Result<Vec<Done>, ()> {
        let mut out = Vec::new();
        loop {
            match self.done.try_recv() {
                Ok(done) => out.push(done),
                Err(TryRecvError::Empty) => return Ok(out),
                // The outcomes it sent before dying are still delivered first.
                Err(TryRecvError::Disconnected) => return if out.is_empty() { Err(()) } else { Ok(out) },
            }
        }
    }

    /// Waits up to `timeout` for one outcome (at shutdown, and for `persisted` barriers).
    pub(super) fn wait(&self, timeout: Duration) -> Option<Done> {
        self.done.recv_timeout(timeout).ok()
    }

    /// Replaces a dead writer with a new thread on a new connection (the dead one's transaction
    /// was rolled back when its connection closed during the unwinding).
    ///
    /// # Errors
    /// When the connection or the thread cannot be made.
    pub(super) fn restart(&mut self) -> Result<(), StoreError> {
        self.stop();
        let (rounds, done, thread) = spawn(&self.setup, self.notify.clone())?;
        self.rounds = Some(rounds);
        self.done = done;
        self.thread = Some(thread);
        Ok(())
    }

    /// Lets the thread finish what it holds, and waits for it.
    pub(super) fn stop(&mut self) {
        self.rounds = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop();
    }
}

type Spawned = (SyncSender<Arc<Round>>, Receiver<Done>, JoinHandle<()>);

fn spawn(setup: &Setup, notify: Arc<tokio::sync::Notify>) -> Result<Spawned, StoreError> {
    let conn = Connection::open(&setup.path).map_err(backend)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(backend)?;
    let sync = match setup.synchronous {
        Synchronous::Normal => "NORMAL",
        Synchronous::Full => "FULL",
    };
    // Past this many WAL pages the writer's own commit finishes the checkpoint, so that a
    // sustained stream (which the PASSIVE checkpoints never catch up with) restarts the WAL.
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {sync}; PRAGMA foreign_keys = OFF; PRAGMA wal_autocheckpoint = {};",
        setup.wal_backstop_pages
    ))
    .map_err(backend)?;
    if let Some(pages) = setup.max_page_count {
        conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(())).map_err(backend)?;
    }
    let checkpointer = Checkpointer::start(&setup.path)?;
    let (rounds, taken) = mpsc::sync_channel(ROUNDS_IN_FLIGHT);
    let (done_tx, done) = mpsc::channel();
    let hooks = setup.hooks.clone();
    let thread = std::thread::Builder::new()
        .name("trackway-writer".into())
        .spawn(move || run(conn, &taken, &done_tx, &notify, &checkpointer, &hooks))
        .map_err(|e| StoreError::Backend(format!("cannot start the store's writer thread: {e}")))?;
    Ok((rounds, done, thread))
}

fn run(
    mut conn: Connection,
    taken: &Receiver<Arc<Round>>,
    done: &mpsc::Sender<Done>,
    notify: &tokio::sync::Notify,
    checkpointer: &Checkpointer,
    hooks: &Hooks,
) {
    // Wakes the worker when this thread ends, also by a panic: it then replaces the writer.
    struct Wake<'a>(&'a tokio::sync::Notify);
    impl Drop for Wake<'_> {
        fn drop(&mut self) {
            self.0.notify_one();
        }
    }
    let _wake = Wake(notify);
    while let Ok(first) = taken.recv() {
        let mut batch = vec![first];
        while batch.len() < ROUNDS_IN_FLIGHT
            && let Ok(next) = taken.try_recv()
        {
            batch.push(next);
        }
        if !hooks.delay.is_zero() {
            std::thread::sleep(hooks.delay);
        }
        let left = hooks.panic_in.load(Ordering::Relaxed);
        if left > 0 && hooks.panic_in.fetch_sub(1, Ordering::Relaxed) == 1 {
            panic!("trackway store writer panic requested by a test");
        }
        let result = apply(&mut conn, &batch);
        for round in &batch {
            let result = match &result {
                Ok(()) => Ok(()),
                Err(StoreError::DiskFull(why)) => Err(StoreError::DiskFull(why.clone())),
                Err(e) => Err(StoreError::Backend(e.to_string())),
            };
            if done.send(Done { id: round.id, result }).is_err() {
                return;
            }
        }
        notify.notify_one();
        checkpointer.nudge();
    }
}

/// Applies the rounds in one transaction: all of them, or (on an error) none.
fn apply(conn: &mut Connection, rounds: &[Arc<Round>]) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
    {
        let mut context =
            tx.prepare_cached("INSERT OR IGNORE INTO contexts (id, json) VALUES (?1, ?2)").map_err(backend)?;
        let mut data = tx
            .prepare_cached("INSERT OR REPLACE INTO chunks (first, data, crc) VALUES (?1, ?2, ?3)")
            .map_err(backend)?;
        let mut state = tx
            .prepare_cached("INSERT OR REPLACE INTO chunk_state (first, state, crc) VALUES (?1, ?2, ?3)")
            .map_err(backend)?;
        let mut update =
            tx.prepare_cached("UPDATE chunk_state SET state = ?2, crc = ?3 WHERE first = ?1").map_err(backend)?;
        let mut delete_data = tx.prepare_cached("DELETE FROM chunks WHERE first = ?1").map_err(backend)?;
        let mut delete_state = tx.prepare_cached("DELETE FROM chunk_state WHERE first = ?1").map_err(backend)?;
        for round in rounds {
            for (id, json) in &round.contexts {
                context.execute(params![id, &json[..]]).map_err(backend)?;
            }
            for (first, bytes, chunk_state) in &round.chunks {
                data.execute(params![*first as i64, bytes, chunk::crc32(bytes)]).map_err(backend)?;
                state.execute(params![*first as i64, chunk_state, chunk::crc32(chunk_state)]).map_err(backend)?;
            }
            for (first, chunk_state) in &round.states {
                update.execute(params![*first as i64, chunk_state, chunk::crc32(chunk_state)]).map_err(backend)?;
            }
            for first in &round.deletes {
                delete_data.execute([*first as i64]).map_err(backend)?;
                delete_state.execute([*first as i64]).map_err(backend)?;
            }
            write_state(&tx, &round.state)?;
        }
    }
    let next_seq = rounds.iter().map(|r| r.next_seq).max().unwrap_or(0);
    tx.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('next_seq', ?1)", [next_seq as i64])
        .map_err(backend)?;
    tx.commit().map_err(backend)
}

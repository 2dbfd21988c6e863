//! WAL checkpoints on a thread of their own, with their own connection, so that copying the
//! log back into the database never stalls the worker (the profile of issue 17 put ~19 % of the
//! durable worker's time in the checkpoints SQLite ran inside its commits, each one a stall of
//! several milliseconds during which the ring was not drained).
//!
//! After each of the worker's writes it nudges this thread, which waits [`GATHER`] for more
//! writes and then runs one `PASSIVE` checkpoint: it takes no lock a writer needs, so commits go
//! on meanwhile. The worker's connection checkpoints itself only past a WAL of 64 MiB (a
//! sustained stream outruns these checkpoints, and the WAL restarts only after a complete one). Durability is unchanged: a
//! transaction is durable once it is in the WAL (the checkpoint only moves it), and a kill
//! during a checkpoint is something SQLite recovers from by design. An idle store gets no
//! nudges, and the thread sleeps on its channel without waking up.

use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::file::backend;
use crate::store::StoreError;

/// How long a nudge waits for further writes before the checkpoint: the pages written (and
/// often rewritten: chunk states change with every ack) in this window are copied once.
const GATHER: Duration = Duration::from_millis(50);

/// The checkpoint thread of an open store; stopped (and joined) by [`Checkpointer::stop`] or
/// when dropped.
#[derive(Debug)]
pub(super) struct Checkpointer {
    nudge: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Opens a second connection to the store at `path` and starts the thread.
    ///
    /// # Errors
    /// When the connection or the thread cannot be made.
    pub(super) fn start(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(backend)?;
        // A checkpoint that finds the database busy just returns; the timeout is for the
        // connection's own reads of the WAL index.
        conn.busy_timeout(Duration::from_secs(5)).map_err(backend)?;
        // One nudge pending is enough: the checkpoint covers every write before it.
        let (nudge, nudged) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("trackway-checkpoint".into())
            .spawn(move || run(&conn, &nudged))
            .map_err(|e| StoreError::Backend(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Checkpointer { nudge: Some(nudge), thread: Some(thread) })
    }

    /// Says the worker wrote to the WAL; never blocks.
    pub(super) fn nudge(&self) {
        if let Some(nudge) = &self.nudge {
            match nudge.try_send(()) {
                Ok(()) | Err(TrySendError::Full(())) => {}
                Err(TrySendError::Disconnected(())) => tracing::debug!("trackway: the checkpoint thread is gone"),
            }
        }
    }

    /// Stops the thread after the checkpoint it may be running, and waits for it.
    pub(super) fn stop(&mut self) {
        self.nudge = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(conn: &Connection, nudged: &Receiver<()>) {
    // Ends when the store closes (the sender is dropped), also in the middle of a gathering
    // window: closing does a full checkpoint of its own.
    while nudged.recv().is_ok() {
        let deadline = Instant::now() + GATHER;
        loop {
            // The nudges of the gathering window are covered by the one checkpoint.
            match nudged.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(()) => {}
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            // The WAL keeps the data (durable as it is); the next nudge tries again.
            tracing::debug!(error = %e, "trackway: WAL checkpoint failed");
        }
    }
}

//! Requests to the worker (flush, the persist barrier, shutdown, dead letters, purges,
//! checkpoints) and how a caller waits for them.
//!
//! Every request is the same sequence, written once in [`Client::request`]: check the client is
//! open (or close it, for a shutdown), make the reply channel, push the control (waiting for
//! room while even the reserved slots are full), wait for the answer. It is generic over
//! [`Wait`]: [`Block`] blocks the calling thread, [`Await`] awaits without ever blocking the
//! runtime's thread.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{CHECKPOINT_PREFIX, Client, Inner, check_len, lock};
use crate::error::{Error, FlushError, FlushReport, PersistError, ShutdownError};
use crate::pipeline::{StoreRoom, WorkerThread};
use crate::policy::{CONTROL_TIMEOUT, MAX_EVENT_BYTES, ROOM_POLL, SHUTDOWN_MARGIN};
use crate::queue::{Control, Done, Queue, Reply};
use crate::stats::Stats;
use crate::store::{DeadLetter, StateChange};

/// How a caller waits for the worker.
pub(crate) trait Wait {
    /// The receiving end of a reply.
    type Rx<T: Send + 'static>;
    /// A reply channel.
    fn channel<T: Send + 'static>() -> (Reply<T>, Self::Rx<T>);
    /// Waits a moment before looking for room in the queue again.
    fn pause() -> impl Future<Output = ()>;
    /// The answer, or `None` when `timeout` passed first (or the worker went away).
    fn recv<T: Send + 'static>(rx: Self::Rx<T>, timeout: Duration) -> impl Future<Output = Option<T>>;
    /// Waits (up to `timeout`) for the worker thread to end, after it answered a shutdown.
    fn join(worker: WorkerThread, timeout: Duration) -> impl Future<Output = ()>;
    /// Waits (up to `timeout`) for a store at its bound to have room again; whether it has.
    fn store_room(room: &StoreRoom, timeout: Duration) -> impl Future<Output = bool>;
}

/// Waits by blocking the calling thread. Its futures never return `Pending` (every wait blocks
/// inside `poll` instead), so [`blocking`] runs them to the end in one poll.
pub(crate) struct Block;

/// Waits by awaiting tokio primitives: the runtime's thread goes on with other tasks.
pub(crate) struct Await;

impl Wait for Block {
    type Rx<T: Send + 'static> = std::sync::mpsc::Receiver<T>;

    fn channel<T: Send + 'static>() -> (Reply<T>, Self::Rx<T>) {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        (Reply::Sync(tx), rx)
    }

    async fn pause() {
        std::thread::sleep(ROOM_POLL);
    }

    async fn recv<T: Send + 'static>(rx: Self::Rx<T>, timeout: Duration) -> Option<T> {
        rx.recv_timeout(timeout).ok()
    }

    async fn join(worker: WorkerThread, _timeout: Duration) {
        // The worker has answered and is returning; joining is quick. A panic inside it is not
        // re-raised: Drop must never panic.
        let _ = worker.thread.join();
    }

    async fn store_room(room: &StoreRoom, timeout: Duration) -> bool {
        room.wait(timeout)
    }
}

impl Wait for Await {
    type Rx<T: Send + 'static> = oneshot::Receiver<T>;

    fn channel<T: Send + 'static>() -> (Reply<T>, Self::Rx<T>) {
        let (tx, rx) = oneshot::channel();
        (Reply::Async(tx), rx)
    }

    async fn pause() {
        tokio::time::sleep(ROOM_POLL).await;
    }

    async fn recv<T: Send + 'static>(rx: Self::Rx<T>, timeout: Duration) -> Option<T> {
        tokio::time::timeout(timeout, rx).await.ok().and_then(Result::ok)
    }

    async fn join(worker: WorkerThread, timeout: Duration) {
        // `exited` resolves once the thread has nothing left to do; the handle is then dropped
        // (detached) rather than joined, since `join` blocks.
        let WorkerThread { thread, exited, .. } = worker;
        let _ = tokio::time::timeout(timeout, exited).await;
        drop(thread);
    }

    async fn store_room(room: &StoreRoom, timeout: Duration) -> bool {
        room.wait_async(timeout).await
    }
}

/// Runs a future made with [`Block`] to its end on this thread (see [`Block`]: one poll does it;
/// the loop only guards against a future that would not).
pub(crate) fn blocking<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::yield_now();
    }
}

/// Calls `attempt` until it succeeds or `timeout` passes, pausing between attempts. An attempt
/// that takes a lock releases it before returning, so other threads go on while this one waits
/// for room. Returns whether an attempt succeeded.
pub(crate) async fn retry_until_room<W: Wait>(timeout: Duration, mut attempt: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    loop {
        if attempt() {
            return true;
        }
        if started.elapsed() >= timeout {
            return false;
        }
        W::pause().await;
    }
}

/// Pushes a control using the reserved slots, waiting for room under a flood. Returns false if
/// `timeout` passed first.
pub(crate) async fn push<W: Wait>(queue: &Queue, control: Control, timeout: Duration) -> bool {
    let mut slot = Some(control);
    retry_until_room::<W>(timeout, || {
        let Some(control) = slot.take() else { return true };
        match queue.push_control(control) {
            Ok(()) => true,
            Err(back) => {
                slot = Some(back);
                false
            }
        }
    })
    .await
}

/// What a request does to the client's open/closed flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Gate {
    /// Refused on a closed client.
    Open,
    /// Closes the client (a shutdown); refused when it was closed already.
    Close,
}

/// Why a request got no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unanswered {
    /// The client is shut down (or, for [`Gate::Close`], was already).
    Closed,
    /// No room in the queue, or no answer, within the time given.
    Timeout,
    /// The worker thread ended unexpectedly (a panic): nothing will answer.
    WorkerStopped,
}

impl Inner {
    /// The control sequence: the gate, the reply channel, the push (waiting for room until
    /// `timeout`), the answer (until `timeout` plus `margin`).
    pub(crate) async fn request<W: Wait, T: Send + 'static>(
        &self,
        gate: Gate,
        timeout: Duration,
        margin: Duration,
        make: impl FnOnce(Reply<T>) -> Control,
    ) -> Result<T, Unanswered> {
        let started = Instant::now();
        let shared = &*self.shared;
        let closed = match gate {
            Gate::Open => shared.closed.load(Ordering::Acquire),
            Gate::Close => shared.closed.swap(true, Ordering::AcqRel),
        };
        if closed {
            return Err(Unanswered::Closed);
        }
        if shared.pipe.queue.worker_gone() {
            return Err(Unanswered::WorkerStopped);
        }
        if gate == Gate::Close {
            // The session timer thread sees the client is closed and ends; calls waiting for
            // store room stop waiting (a closed client frees none).
            shared.session_timer.wake();
            shared.pipe.room.end();
        }
        let (reply, rx) = W::channel();
        let gone = || if shared.pipe.queue.worker_gone() { Unanswered::WorkerStopped } else { Unanswered::Timeout };
        if !push::<W>(&shared.pipe.queue, make(reply), timeout).await {
            return Err(gone());
        }
        // A worker that died drops the reply channel: no answer, and `gone` says why.
        W::recv(rx, (timeout + margin).saturating_sub(started.elapsed())).await.ok_or_else(gone)
    }

    /// Asks the worker to stop within `budget` and waits for it to end (the caller's shutdown, or
    /// `Drop`).
    async fn stop<W: Wait>(&self, budget: Duration) -> Result<(), ShutdownError> {
        // The worker stops itself at the budget; the margin covers the final commit.
        match self
            .request::<W, Done>(Gate::Close, budget, SHUTDOWN_MARGIN, |done| Control::Shutdown { budget, done })
            .await
        {
            Ok(_) => {
                let worker = lock(&self.worker).take();
                if let Some(worker) = worker {
                    W::join(worker, SHUTDOWN_MARGIN).await;
                }
                Ok(())
            }
            Err(Unanswered::Closed) => Err(ShutdownError::AlreadyShutdown),
            Err(Unanswered::WorkerStopped) => Err(ShutdownError::WorkerStopped),
            // What is pending says what did not happen.
            Err(Unanswered::Timeout) => Ok(()),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // A shutdown that already happened is the only error, and then there is nothing to do.
        let _ = blocking(self.stop::<Block>(self.shutdown_timeout));
    }
}

impl Client {
    /// A flush or persist barrier.
    async fn barrier<W: Wait>(&self, timeout: Duration, make: fn(Reply) -> Control) -> Result<(), FlushError> {
        let started = Instant::now();
        match self.inner.request::<W, Done>(Gate::Open, timeout, Duration::ZERO, make).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => Err(FlushError::NotCommitted(why)),
            Err(Unanswered::Closed) => Err(FlushError::AlreadyShutdown),
            Err(Unanswered::WorkerStopped) => Err(FlushError::WorkerStopped),
            Err(Unanswered::Timeout) => Err(self.timeout_error(started.elapsed())),
        }
    }

    /// A request answered with a value (dead letters, requeue, purge), waiting [`CONTROL_TIMEOUT`].
    pub(crate) async fn ask<W: Wait, T: Send + 'static>(
        &self,
        make: impl FnOnce(Reply<T>) -> Control,
    ) -> Result<T, FlushError> {
        self.inner.request::<W, T>(Gate::Open, CONTROL_TIMEOUT, Duration::ZERO, make).await.map_err(|e| match e {
            Unanswered::Closed => FlushError::AlreadyShutdown,
            Unanswered::WorkerStopped => FlushError::WorkerStopped,
            Unanswered::Timeout => FlushError::Timeout { waited: CONTROL_TIMEOUT, pending: Vec::new() },
        })
    }

    // === checkpoints ===

    /// Records `value` under `key`, committed to the store **atomically with every event queued
    /// before this call**: after a crash, the recovered value ([`checkpoint_value`]) never claims
    /// an event the store lost, and every event it covers is in the store. This is what makes a
    /// bulk import resumable: checkpoint the input position every few thousand events, and a
    /// rerun skips what the store already holds. [`persisted`](Self::persisted) after it waits
    /// until the checkpoint is committed.
    ///
    /// Keys are the caller's own namespace (trackway's own state is kept apart).
    ///
    /// [`checkpoint_value`]: Self::checkpoint_value
    ///
    /// ```
    /// # use trackway::{Client, props, destination::InMemoryDestination, store::MemoryStore};
    /// # let client = Client::builder().destination(InMemoryDestination::new("memory")).store(MemoryStore::new()).build()?;
    /// let start: u64 = client
    ///     .checkpoint_value("import:events.jsonl")
    ///     .map_or(0, |v| String::from_utf8_lossy(&v).parse().unwrap_or(0));
    /// for line in start..10 {
    ///     client.track("user-1", "Imported", props! { "line" => line })?;
    /// }
    /// client.checkpoint("import:events.jsonl", 10u64.to_string())?;
    /// assert_eq!(client.checkpoint_value("import:events.jsonl").as_deref(), Some(&b"10"[..]));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// `EmptyKey`, `TooLong` (key over [`MAX_NAME_BYTES`](crate::MAX_NAME_BYTES) or value over
    /// 1 MiB), `ShutDown`, `QueueFull` if the channel stays full for 5 s.
    pub fn checkpoint(&self, key: &str, value: impl Into<Vec<u8>>) -> Result<(), Error> {
        blocking(self.checkpoint_with::<Block>(key, value.into()))
    }

    /// Async [`checkpoint`](Self::checkpoint): waits for room in the queue (under a flood)
    /// without blocking the runtime's thread.
    ///
    /// # Errors
    /// As [`checkpoint`](Self::checkpoint).
    pub async fn checkpoint_async(&self, key: &str, value: impl Into<Vec<u8>>) -> Result<(), Error> {
        self.checkpoint_with::<Await>(key, value.into()).await
    }

    pub(crate) async fn checkpoint_with<W: Wait>(&self, key: &str, value: Vec<u8>) -> Result<(), Error> {
        check_checkpoint(key, &value)?;
        let shared = &*self.inner.shared;
        if shared.closed.load(Ordering::Acquire) {
            return Err(Error::ShutDown);
        }
        if shared.pipe.queue.worker_gone() {
            return Err(Error::WorkerStopped);
        }
        let store_key = format!("{CHECKPOINT_PREFIX}{key}");
        // The map is locked across the push: concurrent checkpoints of a key reach the store in
        // the order the map sees them, so the value read back is the one the store keeps. It is
        // released while waiting for room.
        let pushed = retry_until_room::<W>(CONTROL_TIMEOUT, || {
            let mut checkpoints = lock(&shared.checkpoints);
            let change = StateChange { key: store_key.clone(), value: Some(value.clone()) };
            let pushed = shared.pipe.queue.push_control(Control::State(vec![change])).is_ok();
            if pushed {
                checkpoints.insert(key.to_owned(), value.clone());
            }
            pushed
        })
        .await;
        if pushed { Ok(()) } else { Err(Error::QueueFull) }
    }

    /// The latest value recorded under `key` by [`checkpoint`](Self::checkpoint), in this run or,
    /// recovered from the store, in an earlier one.
    pub fn checkpoint_value(&self, key: &str) -> Option<Vec<u8>> {
        lock(&self.inner.shared.checkpoints).get(key).cloned()
    }

    // === delivery control ===

    /// Blocks until every event queued before this call is delivered or dead-lettered, or
    /// `timeout` passes. Backoffs are not shortened: a destination that is down makes this time out.
    ///
    /// # Errors
    /// `Timeout` with the pending count per destination; `AlreadyShutdown`.
    pub fn flush(&self, timeout: Duration) -> Result<FlushReport, FlushError> {
        blocking(self.barrier::<Block>(timeout, Control::Flush))?;
        Ok(self.report())
    }

    /// Async [`flush`](Self::flush): awaits without blocking the runtime's thread.
    ///
    /// # Errors
    /// As [`flush`](Self::flush).
    pub async fn flush_async(&self, timeout: Duration) -> Result<FlushReport, FlushError> {
        self.barrier::<Await>(timeout, Control::Flush).await?;
        Ok(self.report())
    }

    /// The persist barrier: blocks until every event queued before this call is committed to the
    /// store (with the durable store: safe from a process crash).
    ///
    /// # Errors
    /// [`PersistError`]: `Timeout` with the count not yet committed; `NotCommitted` when the
    /// store failed; `AlreadyShutdown`; `WorkerStopped`.
    pub fn persisted(&self, timeout: Duration) -> Result<(), PersistError> {
        blocking(self.barrier::<Block>(timeout, Control::Persisted))
            .map_err(|e| PersistError::from_barrier(e, &self.stats()))
    }

    /// Async [`persisted`](Self::persisted).
    ///
    /// # Errors
    /// As [`persisted`](Self::persisted).
    pub async fn persisted_async(&self, timeout: Duration) -> Result<(), PersistError> {
        self.barrier::<Await>(timeout, Control::Persisted)
            .await
            .map_err(|e| PersistError::from_barrier(e, &self.stats()))
    }

    /// Blocks until the store has room for new events again, at most `timeout`: for a store
    /// set to [`WhenFull::Refuse`](crate::store::WhenFull::Refuse), whose calls return
    /// [`Error::StoreFull`] at its size bound. Returns at once when the store has room (or
    /// never refuses). An importer queues until refused, waits here, and queues the refused
    /// event again:
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # fn next(client: &trackway::Client) -> Result<(), trackway::Error> {
    /// let event = || client.track("u1", "imported", trackway::props! {});
    /// match event() {
    ///     Err(trackway::Error::StoreFull) => {
    ///         client.wait_for_store_room(Duration::from_secs(60))?;
    ///         event().map(drop)
    ///     }
    ///     other => other.map(drop),
    /// }
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::StoreFull`] when the store is still full after `timeout` (nothing was
    /// delivered meanwhile: the destinations are down or slow); [`Error::ShutDown`] once the
    /// client is shut down and [`Error::WorkerStopped`] once its worker stopped (no room will
    /// come: the wait ends at once), as the plain call would return.
    ///
    /// To wait for room in the queue too, and queue the event once there is, use
    /// [`waiting`](Self::waiting).
    pub fn wait_for_store_room(&self, timeout: Duration) -> Result<(), Error> {
        let room = blocking(Block::store_room(&self.inner.shared.pipe.room, timeout));
        self.store_room_answer(room)
    }

    /// Async [`wait_for_store_room`](Self::wait_for_store_room): awaits the worker's wake-up
    /// without blocking the runtime's thread.
    ///
    /// # Errors
    /// As [`wait_for_store_room`](Self::wait_for_store_room).
    pub async fn wait_for_store_room_async(&self, timeout: Duration) -> Result<(), Error> {
        let room = Await::store_room(&self.inner.shared.pipe.room, timeout).await;
        self.store_room_answer(room)
    }

    /// What a wait for store room returns: a closed client or a stopped worker ends the wait
    /// (`StoreRoom::end`) without making room, and says so rather than `StoreFull`.
    fn store_room_answer(&self, room: bool) -> Result<(), Error> {
        let shared = &self.inner.shared;
        if shared.closed.load(std::sync::atomic::Ordering::Acquire) {
            Err(Error::ShutDown)
        } else if shared.pipe.queue.worker_gone() {
            Err(Error::WorkerStopped)
        } else if room {
            Ok(())
        } else {
            Err(Error::StoreFull)
        }
    }

    /// Tries to deliver everything queued within `budget` (events are committed on their usual
    /// `commit_delay` meanwhile), then commits whatever is still uncommitted, delivered or not,
    /// and stops the worker: what was not delivered stays in the store. Idempotent: later calls (from any clone) return `AlreadyShutdown`. Afterwards every call
    /// returns `Error::ShutDown` and is counted.
    ///
    /// Dropping the last clone does the same with the builder's `shutdown_timeout` (default 2 s).
    /// `std::process::exit` skips `Drop`: call `shutdown` (or `flush`) before exiting, and for a
    /// client in a `static`, which is never dropped.
    ///
    /// # Errors
    /// `AlreadyShutdown`; `Timeout` with what is still pending (it stays in the store). With
    /// tracking off (`set_enabled(false)`) it stops at once and returns `Ok`: pending events are
    /// held on purpose, and the report counts them.
    pub fn shutdown(&self, budget: Duration) -> Result<FlushReport, ShutdownError> {
        blocking(self.shutdown_with::<Block>(budget))
    }

    /// Async [`shutdown`](Self::shutdown): waits for room in the queue, for the worker's answer
    /// and for the worker thread to end without blocking the runtime's thread.
    ///
    /// # Errors
    /// As [`shutdown`](Self::shutdown).
    pub async fn shutdown_async(&self, budget: Duration) -> Result<FlushReport, ShutdownError> {
        self.shutdown_with::<Await>(budget).await
    }

    async fn shutdown_with<W: Wait>(&self, budget: Duration) -> Result<FlushReport, ShutdownError> {
        self.inner.stop::<W>(budget).await?;
        let report = self.report();
        let pending = pending_of(&report.destinations);
        // With tracking off, pending events are held on purpose (they stay in the store).
        let held = !self.inner.shared.pipe.is_enabled();
        if !held && pending.iter().any(|(_, n)| *n > 0) {
            return Err(ShutdownError::Timeout { budget, pending });
        }
        Ok(report)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.inner.shared.pipe.counters.snapshot()
    }

    /// The dead letters (oldest first, at most `limit`), read through the worker.
    ///
    /// # Errors
    /// `AlreadyShutdown` after shutdown; `Timeout` if the worker does not answer in 5 s.
    pub fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, FlushError> {
        blocking(self.ask::<Block, _>(|reply| Control::DeadLetters { limit, reply }))
    }

    /// Async [`dead_letters`](Self::dead_letters).
    ///
    /// # Errors
    /// As [`dead_letters`](Self::dead_letters).
    pub async fn dead_letters_async(&self, limit: usize) -> Result<Vec<DeadLetter>, FlushError> {
        self.ask::<Await, _>(|reply| Control::DeadLetters { limit, reply }).await
    }

    /// Queues dead letters again, each for the destination that gave up on it (at most `limit`;
    /// only those of `destination` when given). They keep their message id; their age counts
    /// again from now. Returns how many were queued.
    ///
    /// # Errors
    /// `AlreadyShutdown`; `Timeout` if the worker does not answer in 5 s.
    pub fn requeue_dead_letters(&self, destination: Option<&str>, limit: usize) -> Result<usize, FlushError> {
        let destination = destination.map(str::to_owned);
        blocking(self.ask::<Block, _>(|reply| Control::Requeue { destination, limit, reply }))
    }

    /// Async [`requeue_dead_letters`](Self::requeue_dead_letters).
    ///
    /// # Errors
    /// As [`requeue_dead_letters`](Self::requeue_dead_letters).
    pub async fn requeue_dead_letters_async(
        &self,
        destination: Option<&str>,
        limit: usize,
    ) -> Result<usize, FlushError> {
        let destination = destination.map(str::to_owned);
        self.ask::<Await, _>(|reply| Control::Requeue { destination, limit, reply }).await
    }

    fn report(&self) -> FlushReport {
        FlushReport { destinations: self.stats().destinations }
    }

    /// `persisted` turns this into its own error, with the uncommitted count.
    fn timeout_error(&self, waited: Duration) -> FlushError {
        FlushError::Timeout { waited, pending: pending_of(&self.stats().destinations) }
    }
}

fn pending_of(destinations: &[crate::DestinationStats]) -> Vec<(String, u64)> {
    destinations.iter().map(|d| (d.name.clone(), d.pending)).collect()
}

pub(super) fn check_checkpoint(key: &str, value: &[u8]) -> Result<(), Error> {
    if key.is_empty() {
        return Err(Error::EmptyKey);
    }
    check_len("checkpoint key", key)?;
    if value.len() > MAX_EVENT_BYTES {
        return Err(Error::TooLong { what: "checkpoint value", len: value.len(), max: MAX_EVENT_BYTES });
    }
    Ok(())
}

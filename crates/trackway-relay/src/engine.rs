//! The log the relay stores events in, behind a small trait so another engine (Kafka, Redis
//! Streams) can be added later: append with a message id the engine deduplicates on, pull a
//! batch for one destination's shared consumer, and settle each message (ack, nak with a delay,
//! term), pull a partition of an ordered destination's events (one worker at a time), and keep
//! small shared values (destination health, cached tokens) with compare-and-set. Only JetStream
//! is built ([`crate::jetstream`]).

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

/// Why the engine could not do what was asked. Ingest answers 503 for any of them.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct EngineError(pub String);

/// What an append returned once the engine stored the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The message's position in the log.
    pub sequence: u64,
    /// The engine already had a message with this id within its duplicate window (nothing new
    /// was stored; the first copy stands).
    pub duplicate: bool,
}

/// A message pulled for one destination, to be settled exactly once.
pub trait Pulled: Send + Sync + 'static {
    /// The stored bytes.
    fn payload(&self) -> &[u8];
    /// A header stored with it.
    fn header(&self, name: &str) -> Option<&str>;
    /// Its position in the log (unique, never reused).
    fn sequence(&self) -> u64;
    /// How many times it has been handed out, this time included (1 the first time).
    fn attempt(&self) -> u32;
    /// Done with it (delivered, skipped or dead-lettered): never handed out again.
    fn ack(self) -> impl Future<Output = Result<(), EngineError>> + Send;
    /// Hand it out again after `delay`.
    fn nak(self, delay: Duration) -> impl Future<Output = Result<(), EngineError>> + Send;
    /// Still being worked on (held back behind an earlier event of the same person, or
    /// retried in place): restart the ack wait so it is not handed to another worker.
    fn in_progress(&self) -> impl Future<Output = Result<(), EngineError>> + Send;
}

/// A shared value with the revision it was read at, for [`Engine::state_update`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    /// The stored bytes.
    pub value: Vec<u8>,
    /// Its revision (changes with every write).
    pub revision: u64,
}

/// A persistent log with per-destination consumers shared by every worker process.
pub trait Engine: Send + Sync + 'static {
    /// What [`pull`](Self::pull) hands out.
    type Message: Pulled;

    /// Stores `payload` with `headers` under `subject`, deduplicated on `msg_id`; returns once
    /// the engine acknowledged it.
    fn append(
        &self,
        msg_id: &str,
        subject: &str,
        headers: &[(&str, &str)],
        payload: Bytes,
    ) -> impl Future<Output = Result<Appended, EngineError>> + Send;

    /// Up to `max` messages for `destination`'s consumer, waiting at most `wait` for the first.
    fn pull(
        &self,
        destination: &str,
        max: usize,
        wait: Duration,
    ) -> impl Future<Output = Result<Vec<Self::Message>, EngineError>> + Send;

    /// Up to `max` messages of partition `partition` of `destination`'s events (an ordered
    /// destination's), waiting at most `wait` for the first. The engine hands a partition to
    /// one worker process at a time: another one gets nothing from it until that one is gone.
    fn pull_partition(
        &self,
        destination: &str,
        partition: u32,
        max: usize,
        wait: Duration,
    ) -> impl Future<Output = Result<Vec<Self::Message>, EngineError>> + Send;

    /// How many messages of partition `partition` of `destination` are handed out and not yet
    /// settled, by any worker: a worker that just took a partition over waits until these are
    /// only its own (the previous worker's come back to it after the ack wait) before sending,
    /// so a person's earlier event cannot come after a later one.
    fn partition_unsettled(
        &self,
        destination: &str,
        partition: u32,
    ) -> impl Future<Output = Result<usize, EngineError>> + Send;

    /// The shared value under `key`, if any.
    fn state_get(&self, key: &str) -> impl Future<Output = Result<Option<Versioned>, EngineError>> + Send;

    /// Writes `value` under `key` if it is still at `revision` (`None`: if there is no value
    /// yet). Returns the new revision, or `None` when another worker wrote it first.
    fn state_update(
        &self,
        key: &str,
        value: Vec<u8>,
        revision: Option<u64>,
    ) -> impl Future<Output = Result<Option<u64>, EngineError>> + Send;

    /// Whether appends can be expected to succeed now (for `/readyz`).
    fn ready(&self) -> bool;

    /// `destination`'s lag: messages not yet handed out, and handed out but not settled.
    fn lag(&self, destination: &str) -> impl Future<Output = Result<(u64, usize), EngineError>> + Send;
}

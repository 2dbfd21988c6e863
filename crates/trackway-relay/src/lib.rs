//! trackway relay: a first-party ingest and delivery service on NATS JetStream.
//!
//! - **Ingest** ([`ingest`], `trackway relay serve`): trackway's own JSON and the Segment HTTP
//!   Tracking API ([`segment`]), write keys with the destinations each may reach, an append per
//!   event with its message id as `Nats-Msg-Id`, 200 only once JetStream acknowledged.
//! - **Workers** ([`worker`], `trackway relay work`): one durable pull consumer per destination,
//!   shared by every worker process, delivering through the SDK's destination code
//!   ([`trackway::engine`]).
//! - **Order per person** ([`partition`]): events are appended to one of `partitions` subjects
//!   by a hash of their identity; a destination that needs each person's events in order
//!   ([`Destination::identity_order`](trackway::destination::Destination::identity_order)) has
//!   a consumer per partition, each pulled by one worker at a time.
//! - **Shared destination state** ([`worker`]): health (one probe at a time across workers for
//!   a misconfigured destination) and cached tokens in the `<stream>_STATE` KV bucket.
//! - **Dead letters** ([`dead`], `trackway relay dead`): their own stream, listed and requeued.
//!
//! The log is behind the [`engine::Engine`] trait; [`jetstream`] is the one implementation.

pub mod config;
pub mod dead;
pub mod engine;
pub mod ingest;
pub mod jetstream;
pub mod metrics;
pub mod partition;
pub mod ratelimit;
pub mod segment;
pub mod state;
pub mod worker;

pub use config::{RelayConfig, WriteKey};

/// Locks `m`, ignoring poisoning: each critical section here makes one change.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

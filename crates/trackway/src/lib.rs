//! trackway: customer-event tracking with one API, many destinations, a durable outbox, nothing
//! blocked and nothing lost silently.
//!
//! # Quickstart
//!
//! ```
//! use std::time::Duration;
//! use trackway::{props, Client, Page, destination::JsonHttp, store::SqliteStore};
//!
//! # let collector = trackway_collector::Collector::start().unwrap();
//! # let url = collector.url("/events");
//! # let dir = std::env::temp_dir().join(format!("trackway-doc-{}", std::process::id()));
//! let client = Client::builder()
//!     .destination(JsonHttp::new(url))
//!     .app("shop", "2.4.0")
//!     // Without this, the outbox is <user data dir>/shop/trackway/outbox.db.
//!     .store(SqliteStore::new(dir.join("outbox.db")))
//!     .build()?;
//!
//! // Server mode: each call names its user.
//! client.track("user123", "purchase_completed", props! { "amount" => 99.99, "currency" => "USD" })?;
//! client.page("user123", Page::new("/pricing").title("Pricing"))?;
//! client.identify("user123", props! { "plan" => "pro" })?;
//!
//! // Before the process exits: deliver what is queued.
//! client.shutdown(Duration::from_secs(5))?;
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Concepts
//!
//! - **[`Client`]**: a cheap handle (clone it). Calls validate, stamp (message id, timestamp,
//!   identity snapshot) and serialize the event on the caller's thread, then push it into a
//!   bounded channel without blocking.
//! - **Event**: [`Event`] is what destinations receive; its message id (UUIDv7) and timestamp are
//!   fixed at enqueue, so retries and replays carry the same ones.
//! - **Modes**: *server mode* calls name their user ([`Client::track`], or `.user(..)` on a
//!   message); *app mode* messages name none and carry the client's current user
//!   ([`Client::capture`] with [`Identify`] to set it).
//! - **[`Destination`](destination::Destination)**: a backend. Destinations are pure (encode a
//!   batch, classify the answer per event); the pipeline owns all I/O.
//! - **Store**: the outbox ([`store`]). Every accepted event is appended there by the worker and
//!   kept until each destination it was routed to has delivered or dead-lettered it.
//!
//! # Threads, runtimes and async
//!
//! The worker runs on its own thread with its own single-threaded tokio runtime. Calls never
//! block and need no runtime; [`Client::flush`] and [`Client::shutdown`] block the calling thread
//! (with a timeout) and cannot deadlock a caller's runtime, because the worker does not run on it.
//! In async code prefer [`Client::flush_async`] and [`Client::shutdown_async`].
//!
//! # Delivery guarantees and shutdown
//!
//! - At least once per destination. First attempts go out in enqueue order; a retried event may
//!   arrive after later ones unless the destination is ordered.
//! - An event is committed to the store within `commit_delay` (default 2 ms) of the call;
//!   [`Client::persisted`] waits for that. Before the commit, an event lives only in the channel.
//! - Nothing is dropped silently: every event not delivered is counted in [`Client::stats`] under
//!   a reason, and events a destination gave up on are kept as [dead letters](Client::dead_letters)
//!   with the server's answer.
//! - Dropping the last clone commits the channel and tries delivery for `shutdown_timeout`
//!   (default 2 s); it never panics and never prints. **`std::process::exit` skips `Drop`, and a
//!   client in a `static` is never dropped**: call [`Client::shutdown`] before exiting.
//!
//! # Feature flags
//!
//! - `json` (default): [`destination::JsonHttp`], the generic JSON-over-HTTP destination.
//! - `testing`: [`destination::InMemoryDestination`] and worker pause hooks for tests.
//!
//! # Supported Rust versions
//!
//! The minimum supported Rust version is 1.85. It may be raised in a minor release, never to a
//! version younger than the last three stable releases.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod client;
mod clock;
mod config;
pub mod destination;
mod error;
mod message;
mod pipeline;
mod queue;
mod stats;
pub mod store;

pub use client::{Client, MAX_EVENT_BYTES, MAX_NAME_BYTES};
pub use clock::{Clock, ManualClock};
pub use config::{ClientBuilder, HttpOptions, RetryPolicy};
pub use error::{BuildError, Error, FlushError, FlushReport, ShutdownError};
pub use message::{Identify, Message, Page, Screen, Track};
pub use stats::{DestinationStats, Dropped, Stats};
pub use trackway_wire::{
    Event, EventKind, Identity, MessageId, PageInfo, Properties, PropertyError, Timestamp, Value, props,
};

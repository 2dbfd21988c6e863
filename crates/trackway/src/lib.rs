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
//!     // Name and version, sent in every event's context. The default store needs the name (its
//!     // file is under it): without `.app` or `.store`, build() fails. No version? Pass "".
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
//! - **Modes**: *server mode* calls name their user ([`Client::track`], [`Client::identify`], or
//!   `.user(..)` on a message given to [`Client::capture`]). *App mode* is on when the builder
//!   says so ([`ClientBuilder::app_mode`], or [`ClientBuilder::app_lifecycle`]): messages that
//!   name no user carry the client's current user, which [`Client::identify_customer`] sets. A
//!   client in app mode still takes server-mode calls; a client not in app mode refuses a
//!   message without a user ([`Error::NoUser`]) rather than guess whose it is.
//! - **[`Destination`](destination::Destination)**: a backend. Destinations are pure (encode a
//!   batch, classify the answer per event); the pipeline owns all I/O. Each has its own lane and
//!   cursor. One configuration may stand for several
//!   ([`DestinationSet`](destination::DestinationSet), [`ClientBuilder::destinations`]: a main
//!   project and mapped ones), and destinations may be added at run time
//!   ([`Client::add_destination`], made by a [`DestinationFactory`](destination::DestinationFactory)
//!   registered with [`ClientBuilder::runtime_destinations`]; the store keeps their spec, no
//!   secrets, so the next `build()` re-creates them before their pending events are sent, holds
//!   those events stopped when the factory is missing, and forgets a run-time destination that is
//!   no longer routed to and has nothing pending).
//! - **Routing** is by [`EventType`](destination::EventType) (installation, session start and
//!   end, custom, page, screen, customer update, payment, push token), fixed into each event at
//!   enqueue: [`Destination::accepts_event_type`](destination::Destination::accepts_event_type),
//!   and in app mode what [`Client::anonymize`] chose ([`Anonymize::destinations`] and the
//!   per-type mapping [`Anonymize::route`]). A later change of routing never moves a queued event.
//! - **Receipts** ([`receipts`]): [`Client::track_confirmed`] and [`Client::capture_confirmed`]
//!   return a [`Receipt`](receipts::Receipt) that resolves (`.await` or `wait(timeout)`) with the
//!   event's outcome at each destination, or why it is still pending; [`Client::outcomes`] and
//!   [`ClientBuilder::outcomes`] subscribe to every outcome as it happens (bounded, missed ones
//!   counted). Nobody listening costs the worker one atomic load per step.
//! - **Store**: the outbox ([`store`]). Every accepted event is appended there by the worker and
//!   kept until each destination it was routed to has delivered or dead-lettered it.
//!
//! # App mode
//!
//! An app (desktop, mobile, CLI, game) has one current user, and the client keeps that user's
//! state in the store, committed together with the events it causes, so it survives restarts:
//!
//! - **Identity**: an anonymous id (a lowercase UUID made on first use; Bloomreach's `cookie`)
//!   and the hard ids given to an app-mode [`Identify`], which **replace** the stored ones. The
//!   primary user id is the one `.primary(..)` or [`ClientBuilder::primary_id`] names (default:
//!   the only id given). Every event carries a snapshot: later calls never change queued events.
//! - **Sessions** ([`AppLifecycle`]): automatic ones follow [`Client::app_foreground`] /
//!   [`Client::app_background`] with a timeout (60 s). A return within it continues the session;
//!   a later one tracks `session_end` (with `duration`) at the session's last-seen time and
//!   `session_start` for a new one. A session left in the background is ended when the timeout
//!   passes, without waiting for the app to come back. A session left open by a crash or kill is ended at its
//!   last-seen time on the next start. Manual ones: [`Client::session_start`] /
//!   [`Client::session_end`]. Every app-mode event in between carries the session id.
//! - **`installation`** on the first run, **push tokens** ([`Client::track_push_token`], with a
//!   [`TokenFrequency`]), **payments** ([`Client::track_payment`]), **[`Client::anonymize`]**
//!   (sign-out: a new anonymous user, the push token moved over, optionally other destinations
//!   and a per-event-type mapping, as Bloomreach's project switch does).
//! - **Default properties** ([`ClientBuilder::default_properties`],
//!   [`Client::set_default_properties`]): copied into each event at enqueue; the event's own
//!   properties win over them, and fields trackway sets win over both.
//! - **Consent**: [`Client::set_enabled`]`(false)` persists; nothing is queued or sent until it
//!   is turned on again. [`Client::purge_queued`] empties the outbox; [`Client::erase_user`]
//!   removes one person's queued events and dead letters.
//!
//! Server-mode calls (that name their user) never touch this state. A lifecycle call that changes
//! the state without queuing an event (`app_background`, part of `anonymize`, `set_enabled`)
//! uses the queue's reserved slots; only when a flood has filled those too does it wait for
//! room, at most 5 s, then return `QueueFull`.
//!
//! ```
//! use std::time::Duration;
//! use trackway::{AppLifecycle, Client, Identify, Payment, PushToken, Screen, Track, props};
//! # use trackway::{destination::InMemoryDestination, store::MemoryStore};
//! let client = Client::builder()
//!     .app("notes", "1.4.0")
//!     .app_lifecycle(AppLifecycle::default()) // installation + automatic sessions
//!     .default_properties(props! { "build" => "release" })
//! #   .destination(InMemoryDestination::new("memory")).store(MemoryStore::new())
//!     .build()?; // tracks `installation` on the first run, then `session_start`
//!
//! client.capture(Screen::new("Notes"))?;
//! client.identify_customer(Identify::new().id("registered", "jane@example.com").property("plan", "pro"))?;
//! client.track_push_token(PushToken::fcm("token-from-firebase"))?;
//! client.track_payment(Payment::new(4.99, "EUR").product_id("pro_monthly"))?;
//! client.app_background()?; // from your lifecycle hook; app_foreground() when it returns
//! client.anonymize(trackway::Anonymize::new())?; // on sign-out
//! client.shutdown(Duration::from_secs(5))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Threads, runtimes and async
//!
//! The worker runs on its own thread with its own single-threaded tokio runtime. Calls never
//! block and need no runtime; [`Client::flush`] and [`Client::shutdown`] block the calling thread
//! (with a timeout) and cannot deadlock a caller's runtime, because the worker does not run on it.
//! In async code use the `_async` forms ([`Client::flush_async`], [`Client::persisted_async`],
//! [`Client::shutdown_async`], [`Client::checkpoint_async`], [`Client::dead_letters_async`],
//! [`Client::requeue_dead_letters_async`], [`Client::purge_queued_async`],
//! [`Client::erase_user_async`], [`Client::wait_for_store_room_async`], and those of
//! [`Waiting`]): they never block the runtime's thread, not even while a flood has filled the
//! queue and they wait for room, or while the worker thread ends.
//!
//! # The durable outbox
//!
//! By default events wait in a SQLite file (WAL mode), [`store::SqliteStore`], at
//! `<per-user data dir>/<app name>/trackway/outbox.db`: the builder needs the application name
//! ([`ClientBuilder::app`]), so two applications, or parallel tests, never share a file. Give an
//! explicit path with [`ClientBuilder::store`] where there is no per-user data directory
//! (mobile, some containers); [`store::MemoryStore`] keeps everything in memory instead.
//!
//! - **When an event is safe.** An accepted event is committed at most `commit_delay` (200 ms)
//!   after the call, or delivered before that (then it is never written at all). A crash loses
//!   the accepted events not yet committed or delivered (under a burst the commits can fall
//!   behind `commit_delay`); [`Client::persisted`] commits at once and returns once everything
//!   queued before it is safe (a [`PersistError`] if it could not be, or not within its
//!   timeout), and [`Stats::persisted`] counts what is.
//! - **Crash vs power loss.** With `synchronous = NORMAL` (the default) a commit survives a crash
//!   of the process; a power loss may lose the last commits, never corrupt the file. With
//!   [`store::Synchronous::Full`] every commit is fsynced and survives power loss too.
//! - **Restarts.** Each destination resumes where it stopped: an event is deleted once every
//!   destination it was routed to has delivered or dead-lettered it.
//! - **One writer.** The process that opens the store holds a lock naming its pid; a second
//!   writer fails with "store in use by pid N". [`store::SqliteStore::inspect`] and
//!   [`store::SqliteStore::read_dead_letters`] read a store another process is using.
//! - **Damaged files.** Every stored chunk carries a CRC-32. A damaged or truncated store is
//!   salvaged: each chunk that reads back with a valid checksum goes into a fresh file, the
//!   damaged one is kept as `outbox.db.bad-<time>`, and what was recovered and lost is logged as
//!   an error and reported (`Stats::store.salvage`, `dropped.store_reset`,
//!   `dropped.store_corrupt`). A file that is not a trackway store (text, another application's
//!   database, a newer schema) is refused and left untouched; a busy file is never taken for
//!   damaged; a store that cannot be written is refused when opened, before anything is sent.
//! - **Destinations no longer configured** keep their pending events: logged, reported in
//!   `Stats::store.orphaned`, never sent elsewhere, until
//!   [`store::SqliteStore::move_pending`] or [`drop_pending`](store::SqliteStore::drop_pending).
//! - **Bounds.** At most 128 MiB of events ([`store::SqliteStore::max_bytes`]): beyond it the
//!   oldest are dropped and counted (`store_full`), or, with
//!   [`WhenFull::Refuse`](store::WhenFull::Refuse), new events are refused at the call
//!   ([`Error::StoreFull`]) until deliveries make room ([`Client::wait_for_store_room`]; or
//!   queue through [`Client::waiting`], which waits for room itself). Events older than
//!   `max_event_age` (7 days)
//!   are dead-lettered as `expired`. A full disk drops the new events it refuses (`disk_full`);
//!   what is stored stays intact, and writing resumes when space returns. An event already in
//!   a request on the wire when its write fails is decided by that request's answer:
//!   delivered, or dropped then (`disk_full`).
//!
//! # Delivery guarantees and shutdown
//!
//! - At least once per destination. First attempts go out in enqueue order; a retried event may
//!   arrive after later ones unless the destination is ordered.
//! - Nothing is dropped silently: every event not delivered is counted in [`Client::stats`] under
//!   a reason, and events a destination gave up on are kept as [dead letters](Client::dead_letters)
//!   with the server's answer.
//! - Each destination has a [`health`] state in [`Client::stats`]: healthy, failing,
//!   unreachable (only "nothing was sent" errors for 5 minutes), misconfigured (the server says
//!   the configuration is wrong: its events are **held**, never dead-lettered for it, and it is
//!   probed at a growing interval), or stopped (its code panicked on 3 events in a row), with
//!   since when and the last error; every change is logged once. Dead letters are for what an
//!   event did, not for what the configuration did.
//! - A panic in a destination's code never takes the client down: it is an error of the call
//!   (`validate`), of `build()` (`check_config`), or handled like a poison event on the worker.
//!   If the worker thread itself dies, every later call returns
//!   [`Error::WorkerStopped`] and what was still queued is counted.
//! - Dropping the last clone commits the channel and tries delivery for `shutdown_timeout`
//!   (default 2 s); it never panics and never prints. **`std::process::exit` skips `Drop`, and a
//!   client in a `static` is never dropped**: call [`Client::shutdown`] before exiting.
//!
//! # Feature flags
//!
//! - `json` (default): [`destination::JsonHttp`], the generic JSON-over-HTTP destination.
//! - `umami` (default): [`destination::Umami`], page views, custom events and identify for Umami
//!   v2.x and v3.x.
//! - `customerio`: [`destination::customerio::CustomerIo`], Customer.io's Track API (v2 batch
//!   or v1): people, events, page and screen views, devices, deletes and suppression.
//! - `opencdp` (default): [`destination::opencdp`], OpenCDP's identify, track and
//!   registerDevice as events, transactional email, push and SMS as direct calls; with
//!   `customerio` too, its dual-write to Customer.io.
//! - `bloomreach` (default): [`destination::Bloomreach`], Bloomreach Engagement's tracking API
//!   with project mapping (see [`destination::bloomreach`]); reads gzip and Brotli answers.
//! - `testing`: test helpers: [`destination::InMemoryDestination`], the manual clock
//!   ([`Clock::manual`], [`ManualClock`]) and the worker pause hooks ([`Client::pause_worker`]).
//!
//! # Supported Rust versions
//!
//! The minimum supported Rust version is 1.89. It may be raised in a minor release (noted in the
//! changelog), never past the stable release of six months before.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod app;
mod client;
mod clock;
mod config;
pub mod destination;
mod device;
pub mod direct;
pub mod engine;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod message;
mod pipeline;
mod policy;
mod queue;
pub mod receipts;
mod stats;
pub mod store;

pub use app::{Anonymize, AppLifecycle, Payment, PushPlatform, PushToken, TokenFrequency};
pub use client::{Client, Waiting};
pub use clock::Clock;
#[cfg(feature = "testing")]
pub use clock::ManualClock;
pub use config::{ClientBuilder, HttpOptions, RetryPolicy};
pub use device::{DEVICE_EVENT, Device, DevicePlatform};
pub use error::{BuildError, Error, FlushError, FlushReport, PersistError, ShutdownError};
pub use message::{Identify, Message, Page, Screen, Track};
pub use pipeline::health;
pub use pipeline::health::{Health, HealthState, LastError};
pub use policy::{MAX_EVENT_BYTES, MAX_NAME_BYTES};
pub use stats::{DestinationStats, DirectStats, Dropped, Stats, StoreReport};
pub use trackway_wire::{
    Event, EventKind, Identity, MessageId, PageInfo, Properties, PropertyError, Timestamp, Value, props,
};

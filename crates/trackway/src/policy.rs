//! Every limit, default and timeout of the client, the app-mode calls and the worker, in one
//! place with a name: what a setting's default is, how long a call waits, how big things may be.
//!
//! Destinations and stores keep the numbers of their own formats (Umami's fields, SQLite's
//! pages) next to the code that needs them.

use std::time::Duration;

// === what a call accepts ===

/// Longest event name, screen name, identifier or id trackway accepts (destinations may have
/// tighter limits, checked in the same call).
pub const MAX_NAME_BYTES: usize = 1024;

/// Largest serialized event accepted (1 MiB): bigger ones are an error at the call, before they
/// can fill the queue or be refused by every server.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// Most destinations one client may have (routes are bits of a `u64`).
pub(crate) const MAX_DESTINATIONS: usize = 64;

// === builder defaults and bounds ===

/// Default [`queue_capacity`](crate::ClientBuilder::queue_capacity).
pub(crate) const QUEUE_CAPACITY: usize = 16_384;
/// Largest `queue_capacity` accepted.
pub(crate) const MAX_QUEUE_CAPACITY: usize = 1_000_000;
/// Default [`queue_max_bytes`](crate::ClientBuilder::queue_max_bytes).
pub(crate) const QUEUE_MAX_BYTES: usize = 16 * 1024 * 1024;
/// Default [`reserved_capacity`](crate::ClientBuilder::reserved_capacity).
pub(crate) const RESERVED_CAPACITY: usize = 256;
/// Fewest reserved slots: enough for a few controls and identifies under a flood.
pub(crate) const MIN_RESERVED_CAPACITY: usize = 8;
/// Default [`batch_interval`](crate::ClientBuilder::batch_interval).
pub(crate) const BATCH_INTERVAL: Duration = Duration::from_secs(1);
/// Default [`commit_delay`](crate::ClientBuilder::commit_delay).
pub(crate) const COMMIT_DELAY: Duration = Duration::from_millis(200);
/// Longest `commit_delay` accepted: it is how long accepted events stay unpersisted.
pub(crate) const MAX_COMMIT_DELAY: Duration = Duration::from_secs(1);
/// Default [`max_event_age`](crate::ClientBuilder::max_event_age): 7 days.
pub(crate) const MAX_EVENT_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default [`shutdown_timeout`](crate::ClientBuilder::shutdown_timeout): what `Drop` spends.
pub(crate) const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);
/// Default whole-request timeout of a destination ([`HttpOptions`](crate::HttpOptions)).
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default connect timeout of a destination.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default first backoff ceiling ([`RetryPolicy`](crate::RetryPolicy)).
pub(crate) const BASE_BACKOFF: Duration = Duration::from_millis(500);
/// Default largest backoff ceiling.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Default longest `Retry-After` honoured.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// Default failures (while others are delivered) before an event is dead-lettered.
pub(crate) const MAX_ATTEMPTS: u32 = 10;
/// Default session timeout of [`AppLifecycle`](crate::AppLifecycle).
pub(crate) const SESSION_TIMEOUT: Duration = Duration::from_secs(60);

// === how long a call waits for the worker ===

/// How long a request to the worker (dead letters, requeue, purge, a checkpoint or state change
/// that needs a reserved slot) waits for room in the queue and then for the answer.
pub(crate) const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a caller looks again for room when even the reserved slots are full (a flood).
pub(crate) const ROOM_POLL: Duration = Duration::from_millis(1);
/// What a shutdown waits beyond its budget: the worker stops itself at the budget, then commits.
pub(crate) const SHUTDOWN_MARGIN: Duration = Duration::from_secs(1);

// === the worker ===

/// Queued events at which a caller wakes the worker before its commit delay is up. Each wake-up
/// of a parked worker costs the caller a system call, so this is rare (one call in thousands);
/// the commit delay still bounds how long an event waits to be persisted.
pub(crate) const WAKE_THRESHOLD: usize = 2048;
/// How long events gather in the channel after a caller wakes the worker (the wake threshold
/// cuts it short under load): one drain and one wake-up cover many events.
pub(crate) const DRAIN_DELAY: Duration = Duration::from_millis(2);
/// Most events a write-behind store writes in one commit: the worker drains and dispatches
/// between parts, so a burst never leaves the channel unattended for long.
pub(crate) const COMMIT_PART: usize = 1024;
/// How long a destination waits after the store failed to read or record its events.
pub(crate) const STORE_ERROR_PAUSE: Duration = Duration::from_secs(1);
/// Response bodies are read up to this size; dead letters keep an excerpt.
pub(crate) const MAX_RESPONSE_BODY: usize = 1 << 20;

// === app mode ===

/// How often the session timer looks at a manual clock (tests); a system clock is slept on
/// exactly.
pub(crate) const MANUAL_CLOCK_POLL: Duration = Duration::from_millis(10);

// === HTTP ===

/// Redirects followed for one request (as browsers and reqwest's default policy allow, minus the
/// method change).
pub(crate) const MAX_REDIRECTS: usize = 5;

/// After failing over to a fallback base URL, how long before the primary is tried again.
pub(crate) const FALLBACK_PRIMARY_RETRY: Duration = Duration::from_secs(300);

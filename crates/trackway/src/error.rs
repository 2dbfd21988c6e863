//! Errors: one enum per operation, with messages a user can act on.
//!
//! Display texts are meant for people and may change between versions; match on the variants.

use std::time::Duration;

use trackway_wire::PropertyError;

use crate::stats::DestinationStats;

/// Why a call (`track`, `page`, `screen`, `identify`, `capture`, `import`) did not queue its event.
///
/// Validation errors are returned before anything is queued or any I/O is done. `QueueFull` and
/// `ShutDown` are also counted in [`Stats::dropped`](crate::Stats::dropped).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The user identifier was empty (server mode).
    #[error("Identifier cannot be empty")]
    EmptyIdentifier,
    /// An anonymous id was given but empty.
    #[error("Anonymous id cannot be empty")]
    EmptyAnonymousId,
    /// A checkpoint key was empty.
    #[error("checkpoint key cannot be empty")]
    EmptyKey,
    /// The event name was empty.
    #[error("Event name cannot be empty")]
    EmptyEventName,
    /// A page view without a URL.
    #[error("Page URL cannot be empty")]
    EmptyUrl,
    /// A screen view without a screen name.
    #[error("Screen name cannot be empty")]
    EmptyScreenName,
    /// The message names no user and the client is not in app mode: trackway does not guess
    /// whose event it is.
    #[error(
        "the message names no user and this client is not in app mode: name the user (track(user, ..), \
         .user(..) or .anonymous_id(..) on the message), or build the client with .app_mode() or \
         .app_lifecycle(..) to track the app's current user"
    )]
    NoUser,
    /// [`Client::identify_customer`](crate::Client::identify_customer) was given an identify
    /// that names a user: that is a server-mode identify.
    #[error(
        "identify_customer sets the app's current user from hard ids (.id(name, value)); to send the \
         properties of a named user, call identify(user, properties)"
    )]
    UserInAppIdentify,
    /// `identify` in app mode with no id at all.
    #[error("identify needs at least one id: pass a user id or hard ids")]
    NoIds,
    /// A name or id longer than trackway accepts for any destination.
    #[error("{what} is {len} bytes long; the limit is {max}")]
    TooLong {
        /// What is too long ("event name", "identifier", …).
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A property value cannot be sent (NaN, infinity, empty key, unserializable).
    #[error(transparent)]
    InvalidProperty(#[from] PropertyError),
    /// The event breaks a limit of one of the destinations it is routed to; nothing was queued
    /// for any destination.
    #[error("destination `{destination}`: {message}")]
    DestinationLimit {
        /// The destination's name.
        destination: String,
        /// The broken limit, with the numbers.
        message: String,
    },
    /// No destination of this client takes this kind of event.
    #[error("no destination takes {kind} events")]
    NoRoute {
        /// The event kind.
        kind: &'static str,
    },
    /// The channel to the worker is full; the event was dropped and counted as `queue_full`.
    /// Calls that change client state (identify) use reserved capacity and only fail when that is
    /// full too; their state change is then not applied.
    #[error("the event queue is full; the event was dropped (counted as queue_full)")]
    QueueFull,
    /// The store is at its size bound and set to refuse new events
    /// ([`WhenFull::Refuse`](crate::store::WhenFull::Refuse)): nothing was queued, nothing
    /// stored was dropped. Counted as `store_refused`. Wait for room
    /// ([`Client::wait_for_store_room`](crate::Client::wait_for_store_room)) and call again.
    #[error(
        "the store is full (at its max_bytes, set to refuse new events): nothing was queued (counted as \
         store_refused); wait for deliveries to make room and call again"
    )]
    StoreFull,
    /// A waiting call ([`Client::waiting`](crate::Client::waiting)) found no room for its event
    /// within the time it was given: nothing was queued. `store` says what stayed full: the
    /// store at its size bound (nothing was delivered meanwhile; counted as `store_refused`),
    /// or else the event queue (the worker did not take events; counted as `queue_full`).
    #[error(
        "no room for the event within {waited:?}: {}; nothing was queued",
        if *store {
            "the store stayed at its size bound (nothing was delivered meanwhile; counted as store_refused)"
        } else {
            "the event queue stayed full (the worker did not take events; counted as queue_full)"
        }
    )]
    NoRoom {
        /// How long the call waited.
        waited: Duration,
        /// The store stayed full (else the event queue did).
        store: bool,
    },
    /// The client was shut down; the event was dropped and counted.
    #[error("the client is shut down")]
    ShutDown,
    /// Tracking is off (`set_enabled(false)`, the user's choice): nothing was queued. Counted as
    /// `disabled`; not a fault of the caller.
    #[error("tracking is disabled (set_enabled(false)); nothing was queued")]
    Disabled,
    /// A manual session call on a client that tracks sessions by itself.
    #[error(
        "sessions are automatic on this client: call app_foreground/app_background, or configure AppLifecycle::default().manual_sessions()"
    )]
    AutomaticSessions,
    /// `session_end` with no session open.
    #[error("no session is open: call session_start first")]
    NoSession,
    /// A destination name the client does not have.
    #[error("no destination is called `{0}`")]
    UnknownDestination(String),
    /// [`Client::direct`](crate::Client::direct) asked for a destination type (with the name, if
    /// given) the client does not have.
    #[error("the client has no destination of type `{kind}`{}", named(.name))]
    NoDestinationOfType {
        /// The type asked for.
        kind: &'static str,
        /// The name asked for, if any.
        name: Option<String>,
    },
    /// [`Client::add_destination`](crate::Client::add_destination) with a kind that has no
    /// factory on this client.
    #[error(
        "no factory for run-time destinations of kind `{0}`: register one with ClientBuilder::runtime_destinations"
    )]
    UnknownDestinationKind(String),
    /// A destination added at run time could not be made: the factory refused its
    /// configuration, its name is invalid, its `check_config` or HTTP options failed.
    #[error("run-time destination `{destination}`: {message}")]
    DestinationConfig {
        /// The destination's name (or its kind, when the factory made none).
        destination: String,
        /// What is wrong.
        message: String,
    },
    /// A client has at most 64 destinations, configured and added at run time together (routes
    /// are bits of a `u64`); run-time destinations that are no longer routed to and have nothing
    /// pending are forgotten at the next `build()`.
    #[error("a client has at most 64 destinations (configured and added at run time)")]
    TooManyDestinations,
    /// A push token that is empty.
    #[error("Push token cannot be empty")]
    EmptyPushToken,
    /// A payment that cannot be sent.
    #[error("invalid payment: {0}")]
    InvalidPayment(String),
    /// A device given to [`Client::register_device`](crate::Client::register_device) lacks a
    /// required field (`deviceId cannot be empty`, `fcmToken cannot be empty`).
    #[error("{0}")]
    InvalidDevice(String),
    /// An event name trackway keeps for its own events (e.g. [`DEVICE_EVENT`](crate::DEVICE_EVENT),
    /// which destinations read as a device registration).
    #[error("event name `{0}` is reserved (use the call made for it, e.g. register_device)")]
    ReservedEventName(&'static str),
    /// A destination's `validate` panicked on this event (a bug in the destination); nothing
    /// was queued for any destination.
    #[error("destination `{destination}` panicked in validate: {message}")]
    DestinationPanicked {
        /// The destination's name.
        destination: String,
        /// The panic's message.
        message: String,
    },
    /// The delivery worker stopped unexpectedly (it panicked; the log says why): nothing more
    /// is queued, stored or sent by this client. Counted as `worker_stopped`.
    #[error(
        "the delivery worker stopped unexpectedly (it panicked; see the log); nothing was queued (counted as worker_stopped)"
    )]
    WorkerStopped,
}

/// Why [`ClientBuilder::build`](crate::ClientBuilder::build) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The client needs at least one destination.
    #[error("no destination configured: add one with ClientBuilder::destination")]
    NoDestination,
    /// Two destinations share a name (names key their delivery state).
    #[error("two destinations are named `{0}`; names must be unique (rename one)")]
    DuplicateDestination(String),
    /// A destination's configuration is invalid.
    #[error("destination `{destination}`: {message}")]
    Destination {
        /// The destination's name.
        destination: String,
        /// What to fix.
        message: String,
    },
    /// A builder setting is invalid.
    #[error("invalid setting `{setting}`: {message}")]
    InvalidSetting {
        /// The setting.
        setting: &'static str,
        /// What to fix.
        message: String,
    },
    /// The HTTP client could not be created (bad proxy or CA certificate, say).
    #[error("destination `{destination}`: HTTP client: {message}")]
    Http {
        /// The destination's name.
        destination: String,
        /// What went wrong.
        message: String,
    },
    /// The store could not be opened.
    #[error("store: {0}")]
    Store(String),
    /// The worker thread could not be started.
    #[error("could not start the worker thread: {0}")]
    Thread(String),
}

/// Why [`Client::flush`](crate::Client::flush) did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FlushError {
    /// Time ran out; events are still pending (per destination: name, pending count).
    #[error("flush timed out after {waited:?}; still pending: {}", pending_list(.pending))]
    Timeout {
        /// How long the call waited.
        waited: Duration,
        /// Pending events per destination.
        pending: Vec<(String, u64)>,
    },
    /// The client was already shut down.
    #[error("the client is already shut down")]
    AlreadyShutdown,
    /// Internal: how the persist barrier's failure reaches [`Client::persisted`](crate::Client::persisted),
    /// which returns it as [`PersistError::NotCommitted`]; `flush` never returns it.
    #[doc(hidden)]
    #[error("not everything queued could be committed: {0}")]
    NotCommitted(String),
    /// The delivery worker stopped unexpectedly (it panicked; the log says why): nothing more
    /// will be stored or delivered by this client.
    #[error("the delivery worker stopped unexpectedly (it panicked; see the log)")]
    WorkerStopped,
    /// [`Client::erase_user`](crate::Client::erase_user) erased the local events, but could not
    /// queue the deletes for the destinations that erase people (why, e.g. the queue is full).
    #[error("the local events are erased, but the destinations' deletes could not be queued: {0}")]
    DeleteNotQueued(String),
}

/// Why [`Client::persisted`](crate::Client::persisted) (the persist barrier) did not confirm that
/// everything queued before it is committed to the store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PersistError {
    /// Time ran out before the store committed everything queued before the call. The events are
    /// not lost: they are committed later (within `commit_delay` once the worker gets to them).
    #[error("events not yet committed to the store within {waited:?}: {uncommitted} accepted event(s) still to commit")]
    Timeout {
        /// How long the call waited.
        waited: Duration,
        /// Events accepted and not yet committed when the call gave up (from
        /// [`Stats`](crate::Stats): enqueued, less persisted and those dropped before the store).
        uncommitted: u64,
    },
    /// The client was already shut down.
    #[error("the client is already shut down")]
    AlreadyShutdown,
    /// Events queued before the barrier could not be committed to the store (a full disk, say);
    /// they were dropped and counted in `Stats::dropped`.
    #[error("not everything queued could be committed: {0}")]
    NotCommitted(String),
    /// The delivery worker stopped unexpectedly (it panicked; the log says why): nothing more
    /// will be stored or delivered by this client.
    #[error("the delivery worker stopped unexpectedly (it panicked; see the log)")]
    WorkerStopped,
}

impl PersistError {
    /// The barrier's error from the control channel's, with the uncommitted count from `stats`.
    pub(crate) fn from_barrier(error: FlushError, stats: &crate::Stats) -> Self {
        match error {
            FlushError::Timeout { waited, .. } => {
                let never_stored = stats.dropped.disk_full + stats.dropped.store_error;
                let uncommitted = stats.enqueued.saturating_sub(stats.persisted + never_stored);
                PersistError::Timeout { waited, uncommitted }
            }
            FlushError::AlreadyShutdown => PersistError::AlreadyShutdown,
            FlushError::NotCommitted(why) | FlushError::DeleteNotQueued(why) => PersistError::NotCommitted(why),
            FlushError::WorkerStopped => PersistError::WorkerStopped,
        }
    }
}

impl FlushError {
    /// Pending count of destination `name` (0 if unknown or not a timeout).
    pub fn pending_for(&self, name: &str) -> u64 {
        match self {
            FlushError::Timeout { pending, .. } => pending.iter().find(|(n, _)| n == name).map_or(0, |(_, c)| *c),
            FlushError::AlreadyShutdown
            | FlushError::NotCommitted(_)
            | FlushError::WorkerStopped
            | FlushError::DeleteNotQueued(_) => 0,
        }
    }
}

fn named(name: &Option<String>) -> String {
    name.as_deref().map(|n| format!(" named `{n}`")).unwrap_or_default()
}

fn pending_list(pending: &[(String, u64)]) -> String {
    pending.iter().map(|(n, c)| format!("{n}: {c}")).collect::<Vec<_>>().join(", ")
}

/// Why [`Client::shutdown`](crate::Client::shutdown) did not complete cleanly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShutdownError {
    /// The client was already shut down (by another call or clone).
    #[error("the client is already shut down")]
    AlreadyShutdown,
    /// The delivery worker had stopped unexpectedly (it panicked; the log says why): what it
    /// had stored stays in the store (a durable store delivers it on the next start).
    #[error("the delivery worker stopped unexpectedly (it panicked; see the log)")]
    WorkerStopped,
    /// The budget ran out with events still pending; they stay in the store (a durable store
    /// delivers them on the next start).
    #[error("shutdown budget of {budget:?} ran out; still pending: {}", pending_list(.pending))]
    Timeout {
        /// The budget.
        budget: Duration,
        /// Pending events per destination.
        pending: Vec<(String, u64)>,
    },
}

/// What a successful flush or shutdown saw, per destination.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FlushReport {
    /// Per destination counters at the time the flush completed (pending is 0 for the events
    /// enqueued before the flush).
    pub destinations: Vec<DestinationStats>,
}

impl FlushReport {
    /// The counters of destination `name`.
    pub fn destination(&self, name: &str) -> Option<&DestinationStats> {
        self.destinations.iter().find(|d| d.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_send_sync_static() {
        fn check<T: Send + Sync + 'static + std::error::Error>() {}
        check::<Error>();
        check::<BuildError>();
        check::<FlushError>();
        check::<PersistError>();
        check::<ShutdownError>();
    }

    #[test]
    fn seed_messages_are_exact() {
        assert_eq!(Error::EmptyIdentifier.to_string(), "Identifier cannot be empty");
        assert_eq!(Error::EmptyEventName.to_string(), "Event name cannot be empty");
    }
}

//! The [`Client`] handle: validates and stamps events on the caller's thread, then hands them to
//! the worker without blocking.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use trackway_wire::{Context, Event, EventKind, Identity, MessageId, Properties, Timestamp};

use crate::app::{AppLifecycle, AppState};
use crate::clock::Clock;
use crate::config::{BeforeSend, ClientBuilder};
use crate::destination::Destination;
use crate::error::{BuildError, Error, FlushError, FlushReport, ShutdownError};
use crate::message::{Message, Page, Track};
use crate::pipeline;
use crate::queue::{Control, EventMeta, Priority, Queue, Reply};
use crate::stats::{Counters, Stats, bump};
use crate::store::{DeadLetter, StateChange};

/// Longest event name, screen name, identifier or id trackway accepts (destinations may have
/// tighter limits, checked in the same call).
pub const MAX_NAME_BYTES: usize = 1024;

/// Queued events at which a caller wakes the worker before its commit delay is up. Each wake-up
/// of a parked worker costs the caller a system call, so this is rare (one call in thousands);
/// the commit delay still bounds how long an event waits to be persisted.
const WAKE_THRESHOLD: usize = 2048;

/// Largest serialized event accepted (1 MiB): bigger ones are an error at the call, before they
/// can fill the queue or be refused by every server.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// Store keys of [`Client::checkpoint`] values start with this, apart from trackway's own state.
const CHECKPOINT_PREFIX: &str = "checkpoint/";

/// The tracking client. Cheap to clone (an `Arc` inside): clone it, don't wrap it in an `Arc`.
///
/// Calls validate their input and return a typed [`Error`] before anything is queued; accepted
/// events are serialized on the caller's thread and handed to a background worker, which owns
/// its own runtime, so the client works the same from sync code and from any async runtime.
///
/// # Examples
///
/// Server mode: every call names its user.
///
/// ```
/// use std::time::Duration;
/// use trackway::{props, Client, destination::JsonHttp, store::MemoryStore};
///
/// # let collector = trackway_collector::Collector::start().unwrap();
/// # let url = collector.url("/events");
/// // An in-memory outbox for the example; the default is the durable SQLite store.
/// let client = Client::builder().destination(JsonHttp::new(url)).store(MemoryStore::new()).build()?;
/// client.track("user123", "purchase_completed", props! { "amount" => 99.99, "currency" => "USD" })?;
/// assert_eq!(client.track("", "x", props! {}).unwrap_err().to_string(), "Identifier cannot be empty");
/// client.flush(Duration::from_secs(5))?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) shared: Arc<Shared>,
    worker: Mutex<Option<JoinHandle<()>>>,
    shutdown_timeout: Duration,
}

/// What the caller side and the worker share.
pub(crate) struct Shared {
    pub(crate) queue: Queue,
    pub(crate) counters: Counters,
    pub(crate) destinations: Vec<Arc<dyn Destination>>,
    pub(crate) clock: Clock,
    /// Bit i of `routes[kind]`: destination i takes that kind.
    routes: [u64; 4],
    /// Bit i of `app_routes[event]`: destination i takes that app event.
    app_routes: [u64; 5],
    pub(crate) context: Arc<Context>,
    /// `context` serialized once: it is the same in every event, and stores keep it once.
    pub(crate) context_json: Bytes,
    before_send: Option<BeforeSend>,
    /// App-mode state. Locked briefly to snapshot it, and again around the push of an event that
    /// changes it, so a change is applied exactly when its event is queued.
    pub(crate) app: Mutex<AppState>,
    /// What the app does by itself (installation, sessions, push-token frequency).
    pub(crate) lifecycle: AppLifecycle,
    /// Serializes lifecycle transitions (foreground, anonymize, …), which queue several events,
    /// and holds what only this process knows.
    pub(crate) launch: Mutex<crate::app::Launch>,
    /// Ends a session that stays in the background for the timeout.
    pub(crate) session_timer: crate::app::SessionTimer,
    /// Which hard id is the primary user id when an identify does not say.
    pub(crate) primary_id: Option<String>,
    /// Destination names, by index.
    pub(crate) names: Vec<String>,
    /// Consent: false after `set_enabled(false)`; nothing is queued or sent.
    pub(crate) enabled: AtomicBool,
    /// Default properties, copied into each event at enqueue (`has_defaults` spares the lock
    /// when there are none).
    pub(crate) defaults: Mutex<Arc<Properties>>,
    pub(crate) has_defaults: AtomicBool,
    /// The latest value of each checkpoint: recovered from the store, then as set.
    checkpoints: Mutex<std::collections::BTreeMap<String, Vec<u8>>>,
    pub(crate) closed: AtomicBool,
    warned_queue_full: AtomicBool,
}

/// What an app-mode event leaves of the app state once it is queued.
enum NextApp {
    /// Only the open session's last-seen time moved (the common case).
    Seen(crate::app::SessionState),
    /// Anything else: the whole new state.
    Whole(AppState),
}

/// How an internal call differs from a plain one.
#[derive(Default)]
pub(crate) struct Options<'a> {
    /// The caller's own message id and timestamp (imports).
    pub(crate) import: Option<(MessageId, Timestamp)>,
    /// An event time other than now, not an import (a `session_end` at the last-seen time).
    pub(crate) at: Option<Timestamp>,
    /// A checkpoint committed with the event.
    pub(crate) checkpoint: Option<(&'a str, Vec<u8>)>,
    /// App mode: the session the event belongs to instead of the current one (`Some(None)`:
    /// none).
    pub(crate) session: Option<Option<String>>,
    /// App mode: a change of the app state committed with the event.
    pub(crate) update: Option<&'a dyn Fn(&mut AppState)>,
    /// Leave the default properties out (push-token events).
    pub(crate) no_defaults: bool,
    /// Which app event this is: it goes only to the destinations that take it, and when none
    /// does, its state change is still applied (without an event).
    pub(crate) app_event: Option<crate::destination::AppEvent>,
}

fn kind_index(kind: EventKind) -> usize {
    match kind {
        EventKind::Track => 0,
        EventKind::Page => 1,
        EventKind::Screen => 2,
        EventKind::Identify => 3,
    }
}

impl Client {
    /// Starts building a client.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    pub(crate) fn from_builder(b: ClientBuilder) -> Result<Client, BuildError> {
        if let Some(e) = b.error {
            return Err(e);
        }
        if b.destinations.is_empty() {
            return Err(BuildError::NoDestination);
        }
        if b.destinations.len() > 64 {
            return Err(BuildError::InvalidSetting {
                setting: "destination",
                message: "at most 64 destinations".into(),
            });
        }
        let mut names: Vec<String> = Vec::new();
        let mut http_clients = Vec::new();
        for (d, http) in &b.destinations {
            let name = d.name().to_owned();
            if names.contains(&name) {
                return Err(BuildError::DuplicateDestination(name));
            }
            d.check_config().map_err(|message| BuildError::Destination { destination: name.clone(), message })?;
            http_clients.push(
                http.lane_setup(d.as_ref(), &b.retry, &b.clock)
                    .map_err(|message| BuildError::Http { destination: name.clone(), message })?,
            );
            names.push(name);
        }
        let mut store: Box<dyn crate::store::Store> = match b.store {
            Some(store) => store,
            None => {
                // The durable store is the default; its file lives under the application's name
                // so two applications (or parallel tests) never share one.
                let app_name = b.app_name.as_deref().ok_or_else(|| {
                    BuildError::Store(
                        "the default durable store needs the application name: call .app(name, version), \
                         or choose a store with .store(SqliteStore::new(path)) or .store(MemoryStore::new())"
                            .into(),
                    )
                })?;
                let path = crate::store::SqliteStore::default_path(app_name).map_err(BuildError::Store)?;
                Box::new(crate::store::SqliteStore::new(path))
            }
        };
        let recovered = store.open(&names).map_err(|e| BuildError::Store(e.to_string()))?;
        let mut app = AppState::recover(&recovered.state);
        if app.identity.anonymous_id.is_none() {
            // Created now, so concurrent first calls cannot mint two; stored with the first
            // app-mode event (the OS generator: an anonymous id should not be guessable).
            app.identity.anonymous_id = Some(crate::app::new_anonymous_id());
            app.unsaved = true;
        }
        let enabled = recovered.state.get(crate::app::CONSENT_KEY).is_none_or(|v| v.as_slice() != b"false");
        // Defaults from the builder are the code's current word; without them, the ones set at
        // run time in an earlier run come back.
        let defaults = match b.default_properties {
            Some(d) => d,
            None => recovered
                .state
                .get(crate::app::DEFAULTS_KEY)
                .and_then(|v| serde_json::from_slice(v).ok())
                .unwrap_or_default(),
        };

        let mut routes = [0u64; 4];
        for (i, (d, _)) in b.destinations.iter().enumerate() {
            for &kind in EventKind::ALL {
                if d.accepts(kind) {
                    routes[kind_index(kind)] |= 1 << i;
                }
            }
        }
        let mut app_routes = [0u64; 5];
        for (i, (d, _)) in b.destinations.iter().enumerate() {
            for event in crate::destination::AppEvent::ALL {
                if d.accepts_app_event(event) {
                    app_routes[event.index()] |= 1 << i;
                }
            }
        }
        let context = Arc::new(Context {
            library: "trackway".into(),
            library_version: env!("CARGO_PKG_VERSION").into(),
            os: Some(std::env::consts::OS.into()),
            locale: b.locale.or_else(locale_from_env),
            app_name: b.app_name,
            app_version: b.app_version,
        });
        let counters = Counters::new(names.iter().cloned());
        if recovered.reset.is_some() {
            bump(&counters.store_reset, 1);
        }
        for (i, (count, _)) in recovered.pending.iter().enumerate() {
            if let Some(d) = counters.destinations.get(i) {
                bump(&d.pending, *count);
            }
        }
        let shared = Arc::new(Shared {
            queue: Queue::new(b.queue_capacity, b.reserved_capacity, b.queue_max_bytes, WAKE_THRESHOLD),
            counters,
            destinations: b.destinations.iter().map(|(d, _)| d.clone()).collect(),
            clock: b.clock,
            routes,
            app_routes,
            context_json: Bytes::from(serde_json::to_vec(&*context).unwrap_or_default()),
            context,
            before_send: b.before_send,
            app: Mutex::new(app),
            lifecycle: b.lifecycle.clone().unwrap_or_else(AppLifecycle::none),
            launch: Mutex::new(crate::app::Launch::default()),
            session_timer: crate::app::SessionTimer::default(),
            primary_id: b.primary_id,
            names: names.clone(),
            enabled: AtomicBool::new(enabled),
            has_defaults: AtomicBool::new(!defaults.is_empty()),
            defaults: Mutex::new(Arc::new(defaults)),
            checkpoints: Mutex::new(
                recovered
                    .state
                    .iter()
                    .filter_map(|(k, v)| Some((k.strip_prefix(CHECKPOINT_PREFIX)?.to_owned(), v.clone())))
                    .collect(),
            ),
            closed: AtomicBool::new(false),
            warned_queue_full: AtomicBool::new(false),
        });
        let settings = pipeline::Settings {
            batch_interval: b.batch_interval,
            commit_delay: b.commit_delay,
            max_event_age: b.max_event_age,
        };
        let worker = pipeline::spawn(shared.clone(), store, recovered, http_clients, settings)
            .map_err(|e| BuildError::Thread(e.to_string()))?;
        let client = Client {
            inner: Arc::new(Inner { shared, worker: Mutex::new(Some(worker)), shutdown_timeout: b.shutdown_timeout }),
        };
        // The first run's `installation`, and the session of an app that starts in front.
        client.launch();
        Ok(client)
    }

    // === server-mode shortcuts ===

    /// Tracks `event` for the user `identifier` (server mode).
    ///
    /// # Errors
    /// `EmptyIdentifier`, `EmptyEventName`, `TooLong`, `InvalidProperty` (NaN, infinity),
    /// `DestinationLimit`, `QueueFull` (dropped and counted), `ShutDown`.
    pub fn track(&self, identifier: &str, event: &str, properties: Properties) -> Result<MessageId, Error> {
        self.enqueue(Track::new(event).user(identifier).properties(properties).into(), Options::default())
    }

    /// Records a page view for the user `identifier` (server mode).
    ///
    /// # Errors
    /// As [`track`](Self::track), with `EmptyUrl` instead of `EmptyEventName`.
    pub fn page(&self, identifier: &str, page: Page) -> Result<MessageId, Error> {
        self.enqueue(page.user(identifier).into(), Options::default())
    }

    /// Records a screen view for the user `identifier` (server mode).
    ///
    /// # Errors
    /// As [`track`](Self::track), with `EmptyScreenName`.
    pub fn screen(&self, identifier: &str, screen: &str, properties: Properties) -> Result<MessageId, Error> {
        self.enqueue(crate::Screen::new(screen).user(identifier).properties(properties).into(), Options::default())
    }

    /// Sends the user properties of `identifier` (server mode; the client's state is untouched).
    ///
    /// # Errors
    /// As [`track`](Self::track).
    pub fn identify(&self, identifier: &str, properties: Properties) -> Result<MessageId, Error> {
        self.enqueue(crate::Identify::new().user(identifier).properties(properties).into(), Options::default())
    }

    // === general calls ===

    /// Queues any message: server mode when it names its user, app mode (the client's current
    /// user) when it does not.
    ///
    /// # Errors
    /// See [`Error`].
    pub fn capture(&self, message: impl Into<Message>) -> Result<MessageId, Error> {
        self.enqueue(message.into(), Options::default())
    }

    /// Queues a message with a message id and timestamp supplied by the caller (backfills and
    /// imports). Destinations that let the server stamp live events send the timestamp for these.
    ///
    /// # Errors
    /// See [`Error`].
    pub fn import(&self, message: impl Into<Message>, id: MessageId, timestamp: Timestamp) -> Result<MessageId, Error> {
        self.enqueue(message.into(), Options { import: Some((id, timestamp)), ..Options::default() })
    }

    /// [`import`](Self::import), with a [`checkpoint`](Self::checkpoint) carried **by the event
    /// itself**: the store commits both or neither, so after a crash the recovered checkpoint
    /// says exactly which events the store holds. A resumable import that checkpoints its input
    /// position this way enqueues no input twice, whenever it is killed.
    ///
    /// **Exactly once needs `commit_delay(Duration::ZERO)`.** With write-behind (the default
    /// 200 ms), an event may be delivered before it is committed; a crash in that window loses
    /// its checkpoint, and a rerun queues it again (with the same message id, the server sees a
    /// duplicate). With a zero delay every event is committed before it is sent.
    ///
    /// If a `before_send` hook drops the event, the checkpoint is still recorded (through
    /// [`checkpoint`](Self::checkpoint)). On an error nothing is recorded.
    ///
    /// # Errors
    /// As [`import`](Self::import) and [`checkpoint`](Self::checkpoint).
    pub fn import_with_checkpoint(
        &self,
        message: impl Into<Message>,
        id: MessageId,
        timestamp: Timestamp,
        key: &str,
        value: impl Into<Vec<u8>>,
    ) -> Result<MessageId, Error> {
        let value = value.into();
        check_checkpoint(key, &value)?;
        self.enqueue(
            message.into(),
            Options { import: Some((id, timestamp)), checkpoint: Some((key, value)), ..Options::default() },
        )
    }

    pub(crate) fn enqueue(&self, mut m: Message, opts: Options<'_>) -> Result<MessageId, Error> {
        let shared = &*self.inner.shared;
        if shared.closed.load(Ordering::Acquire) {
            bump(&shared.counters.shutdown, 1);
            return Err(Error::ShutDown);
        }
        if !shared.enabled.load(Ordering::Acquire) {
            bump(&shared.counters.disabled, 1);
            return Err(Error::Disabled);
        }
        validate_message(&m)?;
        let mut routes = shared.routes[kind_index(m.kind)];
        let server_mode = m.user.is_some() || m.anonymous_id.is_some();
        let is_identify = m.kind == EventKind::Identify;
        let (ids, primary) = (std::mem::take(&mut m.ids), m.primary.take());

        // App mode snapshots the identity under the lock and releases it at once: a before_send
        // hook (user code) runs next and may itself track. The state change is worked out again
        // on the live state when the event is pushed.
        let (identity, session_id) = if server_mode {
            let identity = Identity {
                user_id: m.user.take(),
                anonymous_id: m.anonymous_id.take().map(String::from),
                ip: m.ip.take(),
                user_agent: m.user_agent.take(),
                ..Identity::default()
            };
            (identity, None)
        } else {
            let app = lock(&shared.app);
            // App-mode events go only where `anonymize` pointed them.
            routes &= crate::app::routes_mask(&app, &shared.names);
            let mut who = app.identity.clone();
            if is_identify {
                crate::app::apply_identify(&mut who, &ids, primary.as_deref(), shared.primary_id.as_deref());
            }
            let session_id = match &opts.session {
                Some(explicit) => explicit.clone(),
                None => app.session.as_ref().map(|s| s.id.clone()),
            };
            drop(app);
            (who.into_event_identity(m.ip.take(), m.user_agent.take()), session_id)
        };
        if let Some(event) = opts.app_event {
            routes &= shared.app_routes[event.index()];
            if routes == 0 {
                // No destination takes it: the session, token or flag still changes.
                if let Some(update) = opts.update {
                    self.update_app_state(update)?;
                }
                return Ok(MessageId::new_v7(shared.clock.now()));
            }
        }
        if routes == 0 {
            return Err(Error::NoRoute { kind: m.kind.as_str() });
        }
        let queued_at = shared.clock.now();
        let (id, timestamp) = match (opts.import, opts.at) {
            (Some(import), _) => import,
            (None, Some(at)) => (MessageId::new_v7(at), at),
            (None, None) => (MessageId::new_v7(queued_at), queued_at),
        };
        let mut properties = m.properties;
        if !opts.no_defaults && shared.has_defaults.load(Ordering::Relaxed) {
            // defaults < event properties (< fields trackway sets, which the calls that own them
            // put among the event's properties).
            let defaults = Arc::clone(&lock(&shared.defaults));
            properties.fill_missing_from(&defaults);
        }
        let mut event = Event {
            id,
            kind: m.kind,
            name: m.name,
            timestamp,
            properties,
            identity,
            session_id,
            page: m.page,
            context: shared.context.clone(),
            imported: opts.import.is_some(),
        };
        if let Some(hook) = &shared.before_send
            && !hook(&mut event)
        {
            bump(&shared.counters.filtered, 1);
            // A lifecycle event the hook drops still moves the app state (a session still starts).
            if let Some(update) = opts.update {
                self.update_app_state(update)?;
            }
            if let Some((key, value)) = opts.checkpoint {
                self.checkpoint(key, value)?;
            }
            return Ok(id);
        }
        for (i, d) in shared.destinations.iter().enumerate() {
            if routes & (1 << i) != 0 {
                d.validate(&event)
                    .map_err(|e| Error::DestinationLimit { destination: d.name().to_owned(), message: e.message })?;
            }
        }
        let mut state = Vec::new();
        // Held until the event is queued, as in `checkpoint`.
        let mut checkpoints = opts.checkpoint.as_ref().map(|(key, value)| {
            state.push(StateChange { key: format!("{CHECKPOINT_PREFIX}{key}"), value: Some(value.clone()) });
            lock(&shared.checkpoints)
        });
        // App mode: the change this event makes to the live state, committed with it. Most
        // events only move the session's last-seen time: that one field is copied and written,
        // not the whole state.
        let mut app = (!server_mode).then(|| lock(&shared.app));
        let activity = opts.session.is_none().then_some(event.session_id.as_deref()).flatten();
        let next = app.as_ref().and_then(|current| {
            let seen = activity.and_then(|id| current.seen_at(Some(id), timestamp));
            if !is_identify && opts.update.is_none() && !current.unsaved {
                let seen = seen?;
                state.push(AppState::session_change(&seen));
                return Some(NextApp::Seen(seen));
            }
            let mut next = AppState::clone(current);
            if is_identify {
                crate::app::apply_identify(&mut next.identity, &ids, primary.as_deref(), shared.primary_id.as_deref());
            }
            if let Some(seen) = seen {
                next.session = Some(seen);
            }
            if let Some(update) = opts.update {
                update(&mut next);
            }
            state.extend(current.changes_to(&mut next));
            Some(NextApp::Whole(next))
        });
        let priority =
            if (is_identify && !server_mode) || opts.update.is_some() { Priority::Reserved } else { Priority::Normal };
        let meta = EventMeta { id, kind: event.kind, timestamp, queued_at, routes, head_only: true, state };
        if encode_and_push(&event, shared, meta, priority)?.is_err() {
            bump(&shared.counters.queue_full, 1);
            if !shared.warned_queue_full.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    capacity = shared.queue.len(),
                    "trackway: event queue full, dropping events (counted as queue_full; logged once)"
                );
            }
            return Err(Error::QueueFull);
        }
        bump(&shared.counters.enqueued, 1);
        match (app.as_mut(), next) {
            (Some(current), Some(NextApp::Whole(next))) => **current = next,
            (Some(current), Some(NextApp::Seen(seen))) => current.session = Some(seen),
            _ => {}
        }
        drop(app);
        if let (Some(map), Some((key, value))) = (checkpoints.as_mut(), opts.checkpoint) {
            map.insert(key.to_owned(), value);
        }
        drop(checkpoints);
        Ok(id)
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
    /// `EmptyKey`, `TooLong` (key over [`MAX_NAME_BYTES`] or value over 1 MiB), `ShutDown`, `QueueFull`
    /// if the channel stays full for 5 s.
    pub fn checkpoint(&self, key: &str, value: impl Into<Vec<u8>>) -> Result<(), Error> {
        let value = value.into();
        check_checkpoint(key, &value)?;
        let shared = &*self.inner.shared;
        if shared.closed.load(Ordering::Acquire) {
            return Err(Error::ShutDown);
        }
        // Held across the push: concurrent checkpoints of a key reach the store in the order the
        // map sees them, so the value read back is the one the store keeps.
        let change = StateChange { key: format!("{CHECKPOINT_PREFIX}{key}"), value: Some(value.clone()) };
        let mut checkpoints = lock(&shared.checkpoints);
        if !push_control(shared, Control::State(vec![change]), Duration::from_secs(5)) {
            return Err(Error::QueueFull);
        }
        checkpoints.insert(key.to_owned(), value);
        Ok(())
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
        let started = Instant::now();
        self.control(timeout, Control::Flush)?;
        Ok(self.report(started.elapsed()))
    }

    /// Async [`flush`](Self::flush): awaits without blocking the runtime's thread.
    ///
    /// # Errors
    /// As [`flush`](Self::flush).
    pub async fn flush_async(&self, timeout: Duration) -> Result<FlushReport, FlushError> {
        let started = Instant::now();
        self.control_async(timeout, Control::Flush).await?;
        Ok(self.report(started.elapsed()))
    }

    /// The persist barrier: blocks until every event queued before this call is committed to the
    /// store (with the durable store: safe from a process crash).
    ///
    /// # Errors
    /// `Timeout` (pending is the count not yet persisted); `AlreadyShutdown`.
    pub fn persisted(&self, timeout: Duration) -> Result<(), FlushError> {
        self.control(timeout, Control::Persisted)
    }

    /// Async [`persisted`](Self::persisted).
    ///
    /// # Errors
    /// As [`persisted`](Self::persisted).
    pub async fn persisted_async(&self, timeout: Duration) -> Result<(), FlushError> {
        self.control_async(timeout, Control::Persisted).await
    }

    /// Commits what is queued, then tries to deliver it within `budget`, then stops the worker.
    /// Idempotent: later calls (from any clone) return `AlreadyShutdown`. Afterwards every call
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
        let rx = self.begin_shutdown(budget)?;
        // The worker stops itself at the budget; the margin covers the final commit.
        let answered = rx.recv_timeout(budget + Duration::from_secs(1)).is_ok();
        self.finish_shutdown(budget, answered)
    }

    /// Async [`shutdown`](Self::shutdown).
    ///
    /// # Errors
    /// As [`shutdown`](Self::shutdown).
    pub async fn shutdown_async(&self, budget: Duration) -> Result<FlushReport, ShutdownError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let shared = &self.inner.shared;
        if shared.closed.swap(true, Ordering::AcqRel) {
            return Err(ShutdownError::AlreadyShutdown);
        }
        shared.session_timer.wake();
        let started = Instant::now();
        push_control(shared, Control::Shutdown { budget, done: Reply::Async(tx) }, budget);
        let answered =
            tokio::time::timeout(budget.saturating_sub(started.elapsed()) + Duration::from_secs(1), rx).await.is_ok();
        self.finish_shutdown(budget, answered)
    }

    fn begin_shutdown(&self, budget: Duration) -> Result<std::sync::mpsc::Receiver<Result<(), String>>, ShutdownError> {
        let shared = &self.inner.shared;
        if shared.closed.swap(true, Ordering::AcqRel) {
            return Err(ShutdownError::AlreadyShutdown);
        }
        shared.session_timer.wake();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        push_control(shared, Control::Shutdown { budget, done: Reply::Sync(tx) }, budget);
        Ok(rx)
    }

    fn finish_shutdown(&self, budget: Duration, answered: bool) -> Result<FlushReport, ShutdownError> {
        if answered {
            // The worker has answered and is returning; joining is quick. A panic inside it is
            // not re-raised: Drop must never panic.
            if let Some(handle) = lock(&self.inner.worker).take() {
                let _ = handle.join();
            }
        }
        let report = self.report(budget);
        let pending = pending_of(&report.destinations);
        // With tracking off, pending events are held on purpose (they stay in the store).
        let held = !self.inner.shared.enabled.load(Ordering::Acquire);
        if !held && pending.iter().any(|(_, n)| *n > 0) {
            return Err(ShutdownError::Timeout { budget, pending });
        }
        Ok(report)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.inner.shared.counters.snapshot()
    }

    /// The dead letters (oldest first, at most `limit`), read through the worker.
    ///
    /// # Errors
    /// `AlreadyShutdown` after shutdown; `Timeout` if the worker does not answer in 5 s.
    pub fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, FlushError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        if self.inner.shared.closed.load(Ordering::Acquire) {
            return Err(FlushError::AlreadyShutdown);
        }
        let timeout = Duration::from_secs(5);
        if !push_control(&self.inner.shared, Control::DeadLetters { limit, reply: tx }, timeout) {
            return Err(FlushError::Timeout { waited: timeout, pending: Vec::new() });
        }
        rx.recv_timeout(timeout).map_err(|_| FlushError::Timeout { waited: timeout, pending: Vec::new() })
    }

    /// Queues dead letters again, each for the destination that gave up on it (at most `limit`;
    /// only those of `destination` when given). They keep their message id; their age counts
    /// again from now. Returns how many were queued.
    ///
    /// # Errors
    /// `AlreadyShutdown`; `Timeout` if the worker does not answer in 5 s.
    pub fn requeue_dead_letters(&self, destination: Option<&str>, limit: usize) -> Result<usize, FlushError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        if self.inner.shared.closed.load(Ordering::Acquire) {
            return Err(FlushError::AlreadyShutdown);
        }
        let timeout = Duration::from_secs(5);
        let control = Control::Requeue { destination: destination.map(str::to_owned), limit, reply: tx };
        if !push_control(&self.inner.shared, control, timeout) {
            return Err(FlushError::Timeout { waited: timeout, pending: Vec::new() });
        }
        rx.recv_timeout(timeout).map_err(|_| FlushError::Timeout { waited: timeout, pending: Vec::new() })
    }

    fn report(&self, _elapsed: Duration) -> FlushReport {
        FlushReport { destinations: self.stats().destinations }
    }

    fn control(&self, timeout: Duration, make: fn(Reply) -> Control) -> Result<(), FlushError> {
        let started = Instant::now();
        let shared = &self.inner.shared;
        if shared.closed.load(Ordering::Acquire) {
            return Err(FlushError::AlreadyShutdown);
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        if !push_control(shared, make(Reply::Sync(tx)), timeout) {
            return Err(self.timeout_error(started.elapsed(), make));
        }
        match rx.recv_timeout(timeout.saturating_sub(started.elapsed())) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => Err(FlushError::NotCommitted(why)),
            Err(_) => Err(self.timeout_error(started.elapsed(), make)),
        }
    }

    async fn control_async(&self, timeout: Duration, make: fn(Reply) -> Control) -> Result<(), FlushError> {
        let started = Instant::now();
        let shared = &self.inner.shared;
        if shared.closed.load(Ordering::Acquire) {
            return Err(FlushError::AlreadyShutdown);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut control = make(Reply::Async(tx));
        // The channel is full only under a flood; wait for room without blocking the runtime.
        while let Err(back) = shared.queue.push_control(control) {
            if started.elapsed() >= timeout {
                return Err(self.timeout_error(started.elapsed(), make));
            }
            control = back;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        match tokio::time::timeout(timeout.saturating_sub(started.elapsed()), rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(why))) => Err(FlushError::NotCommitted(why)),
            _ => Err(self.timeout_error(started.elapsed(), make)),
        }
    }

    fn timeout_error(&self, waited: Duration, make: fn(Reply) -> Control) -> FlushError {
        let stats = self.stats();
        let is_persist = matches!(make(Reply::Discard), Control::Persisted(_));
        let pending = if is_persist {
            vec![("store".to_owned(), stats.enqueued.saturating_sub(stats.persisted))]
        } else {
            pending_of(&stats.destinations)
        };
        FlushError::Timeout { waited, pending }
    }

    /// Test hook: stops the worker from draining the channel until [`resume_worker`](Self::resume_worker).
    #[cfg(feature = "testing")]
    pub fn pause_worker(&self) {
        self.inner.shared.queue.set_paused(true);
    }

    /// Test hook: lets a paused worker drain again.
    #[cfg(feature = "testing")]
    pub fn resume_worker(&self) {
        self.inner.shared.queue.set_paused(false);
    }

    /// The current app-mode identity (anonymous id, user id, hard ids).
    pub fn current_identity(&self) -> Identity {
        let app = lock(&self.inner.shared.app);
        app.identity.clone().into_event_identity(None, None)
    }
}

thread_local! {
    /// Reused serialization buffer: serializing allocates nothing once it has grown.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(1024));
}

/// Serializes `event` (validating its properties) and copies the bytes into the queue: its head
/// when it carries the client's context (the worker adds the context once in the store), the
/// whole event when a `before_send` hook swapped the context.
///
/// The outer error is a validation error; the inner one says the queue was full.
fn encode_and_push(
    event: &Event,
    shared: &Shared,
    mut meta: EventMeta,
    priority: Priority,
) -> Result<Result<(), crate::queue::Full>, Error> {
    let own_context = Arc::ptr_eq(&event.context, &shared.context);
    let write = |buf: &mut Vec<u8>| -> Result<(), Error> {
        trackway_wire::encode_event_head(event, buf)?;
        if !own_context {
            let context = serde_json::to_vec(&*event.context).unwrap_or_default();
            trackway_wire::finish_event(buf, &context);
        }
        if buf.len() > MAX_EVENT_BYTES {
            return Err(Error::TooLong { what: "serialized event", len: buf.len(), max: MAX_EVENT_BYTES });
        }
        Ok(())
    };
    meta.head_only = own_context;
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut buf) => {
            buf.clear();
            let pushed = write(&mut buf).map(|()| shared.queue.push_event(meta, &buf, priority));
            // Do not let one huge event pin a huge buffer on this thread forever.
            if buf.capacity() > 64 * 1024 {
                *buf = Vec::with_capacity(1024);
            }
            pushed
        }
        // Re-entered from a before_send hook that tracks: use a fresh buffer.
        Err(_) => {
            let mut buf = Vec::with_capacity(512);
            write(&mut buf)?;
            Ok(shared.queue.push_event(meta, &buf, priority))
        }
    })
}

fn pending_of(destinations: &[crate::DestinationStats]) -> Vec<(String, u64)> {
    destinations.iter().map(|d| (d.name.clone(), d.pending)).collect()
}

/// Pushes a control message using the reserved slots, waiting (briefly sleeping) for room under a
/// flood. Returns false if `timeout` passed first.
pub(crate) fn push_control(shared: &Shared, control: Control, timeout: Duration) -> bool {
    let started = Instant::now();
    let mut control = control;
    loop {
        match shared.queue.push_control(control) {
            Ok(()) => return true,
            Err(back) => {
                if started.elapsed() >= timeout {
                    return false;
                }
                control = back;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn check_checkpoint(key: &str, value: &[u8]) -> Result<(), Error> {
    if key.is_empty() {
        return Err(Error::EmptyKey);
    }
    check_len("checkpoint key", key)?;
    if value.len() > MAX_EVENT_BYTES {
        return Err(Error::TooLong { what: "checkpoint value", len: value.len(), max: MAX_EVENT_BYTES });
    }
    Ok(())
}

pub(crate) fn check_len(what: &'static str, s: &str) -> Result<(), Error> {
    if s.len() > MAX_NAME_BYTES {
        return Err(Error::TooLong { what, len: s.len(), max: MAX_NAME_BYTES });
    }
    Ok(())
}

/// Checks what every destination needs, before anything else is done.
fn validate_message(m: &Message) -> Result<(), Error> {
    if let Some(user) = &m.user {
        if user.trim().is_empty() {
            return Err(Error::EmptyIdentifier);
        }
        check_len("identifier", user)?;
    }
    if let Some(anonymous_id) = &m.anonymous_id {
        if anonymous_id.trim().is_empty() {
            return Err(Error::EmptyAnonymousId);
        }
        check_len("anonymous id", anonymous_id)?;
    }
    match m.kind {
        EventKind::Track => {
            let name = m.name.as_deref().unwrap_or("");
            if name.trim().is_empty() {
                return Err(Error::EmptyEventName);
            }
            check_len("event name", name)?;
        }
        EventKind::Screen => {
            let name = m.name.as_deref().unwrap_or("");
            if name.trim().is_empty() {
                return Err(Error::EmptyScreenName);
            }
            check_len("screen name", name)?;
        }
        EventKind::Page => {
            let url = m.page.as_ref().map_or("", |p| p.url.as_str());
            if url.trim().is_empty() {
                return Err(Error::EmptyUrl);
            }
        }
        EventKind::Identify => {
            if m.user.is_none() && m.ids.is_empty() {
                return Err(Error::NoIds);
            }
            for (name, value) in &m.ids {
                if name.is_empty() || value.trim().is_empty() {
                    return Err(Error::EmptyIdentifier);
                }
                check_len("id", value)?;
            }
        }
    }
    // Properties (finite numbers, non-empty keys) are checked while the event is serialized,
    // still before anything is queued: one pass over them instead of two.
    Ok(())
}

fn locale_from_env() -> Option<String> {
    ["LC_ALL", "LANG"].iter().find_map(|k| {
        let v = std::env::var(k).ok()?;
        let tag = v.split('.').next()?.replace('_', "-");
        (!tag.is_empty() && tag != "C" && tag != "POSIX").then_some(tag)
    })
}

impl Drop for Inner {
    fn drop(&mut self) {
        let shared = &self.shared;
        if shared.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        shared.session_timer.wake();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let budget = self.shutdown_timeout;
        push_control(shared, Control::Shutdown { budget, done: Reply::Sync(tx) }, budget);
        if rx.recv_timeout(budget + Duration::from_secs(1)).is_ok()
            && let Some(handle) = lock(&self.worker).take()
        {
            let _ = handle.join();
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.inner.shared.destinations.iter().map(|d| d.name()).collect();
        f.debug_struct("Client").field("destinations", &names).finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// Builds the client: checks every setting and destination, opens the store and starts the
    /// worker thread.
    ///
    /// # Errors
    /// The first invalid setting, a destination with an invalid configuration, duplicate
    /// destination names, a store that cannot be opened.
    pub fn build(self) -> Result<Client, BuildError> {
        Client::from_builder(self)
    }
}

//! The [`Client`] handle: validates and stamps events on the caller's thread, then hands them to
//! the worker without blocking.
//!
//! - [`build`]: `ClientBuilder::build`, which recovers the state and starts the worker;
//! - [`enqueue`]: the one path every call takes to queue an event;
//! - [`control`]: requests to the worker (flush, persist, shutdown, dead letters, checkpoints)
//!   and how blocking and async callers wait for them;
//! - [`waiting`]: calls that wait for room in the queue and the store ([`Client::waiting`]).
//!
//! The worker sees only [`pipeline::Shared`]; everything else here is the caller side's.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use trackway_wire::{Identity, MessageId, Properties, Timestamp};

use crate::app::{AppLifecycle, AppState};
use crate::config::{BeforeSend, ClientBuilder};
use crate::error::Error;
use crate::message::{Message, Page, Track};
use crate::pipeline::{self, WorkerThread};

mod build;
mod confirmed;
mod control;
mod enqueue;
mod routing;
mod waiting;

pub(crate) use control::{Await, Block, Wait, blocking, push, retry_until_room};
pub(crate) use enqueue::{Options, check_len};
pub use waiting::Waiting;

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
    /// Taken by the shutdown that joins it.
    worker: Mutex<Option<WorkerThread>>,
    shutdown_timeout: Duration,
    /// The worker's runtime: direct calls run there, so they work from any caller.
    pub(crate) runtime: tokio::runtime::Handle,
    /// Per destination, in order: what its direct calls go out with.
    pub(crate) direct: Vec<crate::direct::DirectSetup>,
}

/// What the clones of a client share: the caller side's state, and the part the worker sees.
pub(crate) struct Shared {
    /// What the worker shares (queue, counters, destinations, clock, context, consent).
    pub(crate) pipe: Arc<pipeline::Shared>,
    /// Which destinations take each event type.
    pub(crate) routing: routing::Routing,
    /// Factories and specs of the destinations added at run time.
    pub(crate) runtime: routing::Runtime,
    before_send: Option<BeforeSend>,
    /// App-mode state. Locked briefly to snapshot it, and again around the push of an event that
    /// changes it, so a change is applied exactly when its event is queued.
    pub(crate) app: Mutex<AppState>,
    /// Built for app mode: a message that names no user is the app's current user's.
    pub(crate) app_mode: bool,
    /// What the app does by itself (installation, sessions, push-token frequency).
    pub(crate) lifecycle: AppLifecycle,
    /// Serializes lifecycle transitions (foreground, anonymize, …), which queue several events,
    /// and holds what only this process knows.
    pub(crate) launch: Mutex<crate::app::Launch>,
    /// Ends a session that stays in the background for the timeout.
    pub(crate) session_timer: crate::app::SessionTimer,
    /// Which hard id is the primary user id when an identify does not say.
    pub(crate) primary_id: Option<String>,
    /// Default properties, copied into each event at enqueue (`has_defaults` spares the lock
    /// when there are none).
    pub(crate) defaults: Mutex<Arc<Properties>>,
    pub(crate) has_defaults: AtomicBool,
    /// The latest value of each checkpoint: recovered from the store, then as set.
    checkpoints: Mutex<std::collections::BTreeMap<String, Vec<u8>>>,
    pub(crate) closed: AtomicBool,
    warned_queue_full: AtomicBool,
}

impl Client {
    /// Starts building a client.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
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
    /// To set the current user of an app, see [`identify_customer`](Self::identify_customer).
    ///
    /// # Errors
    /// As [`track`](Self::track).
    pub fn identify(&self, identifier: &str, properties: Properties) -> Result<MessageId, Error> {
        self.enqueue(crate::Identify::new().user(identifier).properties(properties).into(), Options::default())
    }

    // === app mode ===

    /// Identifies the app's current user (app mode; Bloomreach's `identifyCustomer`): the hard
    /// ids given (`.id(name, value)`) **replace** the stored ones, the primary one becomes the
    /// user id, the properties are sent, and every later app-mode event carries the new
    /// identity (kept in the store across restarts). `capture(identify)` does the same on an app-mode
    /// client.
    ///
    /// ```
    /// use trackway::{Client, Identify, destination::JsonHttp, store::MemoryStore};
    /// let client = Client::builder()
    ///     .app_mode()
    ///     .destination(JsonHttp::new("http://127.0.0.1:9/events"))
    ///     .store(MemoryStore::new())
    ///     .build()?;
    /// client.identify_customer(Identify::new().id("registered", "jane@example.com").property("plan", "pro"))?;
    /// assert_eq!(client.current_identity().user_id.as_deref(), Some("jane@example.com"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// `NoUser` on a client not built for app mode ([`ClientBuilder::app_mode`]);
    /// `UserInAppIdentify` when the identify names a user (use [`identify`](Self::identify));
    /// `NoIds`, `EmptyIdentifier`, `TooLong`, `InvalidProperty`, `QueueFull`, `ShutDown`.
    pub fn identify_customer(&self, identify: crate::Identify) -> Result<MessageId, Error> {
        let message = Message::from(identify);
        if message.user.is_some() || message.anonymous_id.is_some() {
            return Err(Error::UserInAppIdentify);
        }
        self.enqueue(message, Options::default())
    }

    // === general calls ===

    /// Queues any message. Server mode when it names its user (`.user(..)` or
    /// `.anonymous_id(..)`); otherwise, on a client built for app mode
    /// ([`ClientBuilder::app_mode`], [`ClientBuilder::app_lifecycle`]), the app's current user's
    /// (an [`Identify`](crate::Identify) then does what [`identify_customer`](Self::identify_customer)
    /// does).
    ///
    /// # Errors
    /// `NoUser` for a message that names no user on a client not in app mode; see [`Error`].
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
        control::check_checkpoint(key, &value)?;
        self.enqueue(
            message.into(),
            Options { import: Some((id, timestamp)), checkpoint: Some((key, value)), ..Options::default() },
        )
    }

    /// Test hook: stops the worker from draining the channel until [`resume_worker`](Self::resume_worker).
    #[cfg(feature = "testing")]
    pub fn pause_worker(&self) {
        self.inner.shared.pipe.queue.set_paused(true);
    }

    /// Test hook: lets a paused worker drain again.
    #[cfg(feature = "testing")]
    pub fn resume_worker(&self) {
        self.inner.shared.pipe.queue.set_paused(false);
    }

    /// Test hook: the worker panics when it takes this request out of the channel (what was
    /// queued after it stays there), to test what callers see when the worker dies.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn panic_worker_for_test(&self) {
        let _ = control::blocking(control::push::<control::Block>(
            &self.inner.shared.pipe.queue,
            crate::queue::Control::PanicForTest,
            crate::policy::CONTROL_TIMEOUT,
        ));
    }

    /// The current app-mode identity (anonymous id, user id, hard ids).
    pub fn current_identity(&self) -> Identity {
        let app = lock(&self.inner.shared.app);
        app.identity.clone().into_event_identity(None, None)
    }
}

pub(crate) use crate::pipeline::lock;

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.inner.shared.pipe.destinations.iter().map(|(_, d)| d.name()).collect();
        f.debug_struct("Client").field("destinations", &names).finish_non_exhaustive()
    }
}

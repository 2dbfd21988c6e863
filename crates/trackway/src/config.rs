//! The client builder and its settings.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use trackway_wire::Event;

use crate::clock::Clock;
use crate::destination::Destination;
use crate::error::BuildError;
use crate::policy;
use crate::store::Store;

/// A hook that may change an event or drop it (return `false`) before it is queued.
pub(crate) type BeforeSend = Arc<dyn Fn(&mut Event) -> bool + Send + Sync>;

/// Builds a [`Client`](crate::Client). Setters never fail; the first invalid value is kept and
/// returned by [`build`](Self::build).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use trackway::{Client, destination::JsonHttp, store::MemoryStore};
///
/// let client = Client::builder()
///     .destination(JsonHttp::new("http://127.0.0.1:9/events"))
///     .batch_interval(Duration::from_millis(500))
///     .app("shop", "2.4.0")
///     // The default is the durable store at <user data dir>/shop/trackway/outbox.db.
///     .store(MemoryStore::new())
///     .build()?;
/// # Ok::<(), trackway::BuildError>(())
/// ```
#[must_use]
pub struct ClientBuilder {
    pub(crate) destinations: Vec<(Arc<dyn Destination>, HttpOptions)>,
    pub(crate) store: Option<Box<dyn Store>>,
    pub(crate) clock: Clock,
    pub(crate) queue_capacity: usize,
    pub(crate) queue_max_bytes: usize,
    pub(crate) reserved_capacity: usize,
    pub(crate) batch_interval: Duration,
    pub(crate) commit_delay: Duration,
    pub(crate) retry: RetryPolicy,
    pub(crate) max_event_age: Duration,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) before_send: Option<BeforeSend>,
    pub(crate) app_name: Option<String>,
    pub(crate) app_version: Option<String>,
    pub(crate) locale: Option<String>,
    /// What the application says of the device (model, type, OS version), for the context.
    pub(crate) device: DeviceInfo,
    pub(crate) lifecycle: Option<crate::AppLifecycle>,
    /// Messages that name no user are the app's current user's (`app_mode`, `app_lifecycle`).
    pub(crate) app_mode: bool,
    pub(crate) default_properties: Option<trackway_wire::Properties>,
    pub(crate) primary_id: Option<String>,
    /// Bloomreach projects whose way of sending follows the client's mode, expanded at `build()`.
    #[cfg(feature = "bloomreach")]
    pub(crate) bloomreach: Vec<crate::destination::bloomreach::BloomreachProjects>,
    /// Factories of run-time destinations, by kind.
    pub(crate) factories: Vec<(String, Arc<dyn crate::destination::DestinationFactory>)>,
    /// The capacity of an outcome stream subscribed before the worker starts (`outcomes`).
    pub(crate) outcomes: Option<usize>,
    pub(crate) error: Option<BuildError>,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            destinations: Vec::new(),
            store: None,
            clock: Clock::system(),
            queue_capacity: policy::QUEUE_CAPACITY,
            queue_max_bytes: policy::QUEUE_MAX_BYTES,
            reserved_capacity: policy::RESERVED_CAPACITY,
            batch_interval: policy::BATCH_INTERVAL,
            commit_delay: policy::COMMIT_DELAY,
            retry: RetryPolicy::default(),
            max_event_age: policy::MAX_EVENT_AGE,
            shutdown_timeout: policy::SHUTDOWN_TIMEOUT,
            before_send: None,
            app_name: None,
            app_version: None,
            locale: None,
            device: DeviceInfo::default(),
            lifecycle: None,
            app_mode: false,
            default_properties: None,
            primary_id: None,
            #[cfg(feature = "bloomreach")]
            bloomreach: Vec::new(),
            factories: Vec::new(),
            outcomes: None,
            error: None,
        }
    }
}

impl ClientBuilder {
    /// Subscribes an [outcome stream](crate::receipts::OutcomeStream) keeping at most
    /// `capacity` unread outcomes, **before the worker starts**: it sees every outcome of this
    /// process, including those of the events an earlier process left in the store (after a
    /// crash or an offline period) and delivers now. Take it with
    /// [`Client::take_outcomes`](crate::Client::take_outcomes). A stream made after `build()`
    /// with [`Client::outcomes`](crate::Client::outcomes) sees outcomes from then on.
    ///
    /// Subscribe only what you read: it costs the worker a little per outcome (nothing when no
    /// stream and no receipt is open). A stream never taken stays subscribed: it fills to its
    /// capacity and then counts what it misses.
    pub fn outcomes(mut self, capacity: usize) -> Self {
        if capacity == 0 {
            return self.invalid("outcomes", "the capacity must be at least 1");
        }
        self.outcomes = Some(capacity);
        self
    }

    fn invalid(mut self, setting: &'static str, message: &str) -> Self {
        if self.error.is_none() {
            self.error = Some(BuildError::InvalidSetting { setting, message: message.to_owned() });
        }
        self
    }

    /// Adds a destination with default HTTP options (10 s request timeout, 5 s connect timeout).
    pub fn destination(self, destination: impl Destination) -> Self {
        self.destination_with(destination, HttpOptions::default())
    }

    /// Adds a destination with its own HTTP options (timeouts, extra headers, proxy, CA).
    pub fn destination_with(mut self, destination: impl Destination, http: HttpOptions) -> Self {
        self.destinations.push((Arc::new(destination), http));
        self
    }

    /// Adds every destination of a set (e.g. a main project and the projects its mapping sends
    /// chosen event types to), each its own lane with its own cursor. Names must be distinct,
    /// contain no `/` and be derived from what each destination delivers to, not its position
    /// (see [`DestinationSet`](crate::destination::DestinationSet)).
    pub fn destinations(mut self, set: impl crate::destination::DestinationSet) -> Self {
        self.destinations.extend(set.expand());
        self
    }

    /// Adds a Bloomreach project (and the projects its mapping names) whose way of sending
    /// follows the client's mode, whatever the order of the builder calls: one request per
    /// event in app mode (as the mobile SDKs), batch commands otherwise, unless
    /// [`Bloomreach::sending`](crate::destination::bloomreach::Bloomreach::sending) chose.
    ///
    /// ```
    /// use trackway::{Client, destination::bloomreach::{Authorization, Bloomreach}};
    /// let builder = Client::builder()
    ///     .bloomreach(Bloomreach::new("0aef3a96-3e2b-11ef", Authorization::basic("key-id", "secret")));
    /// ```
    #[cfg(feature = "bloomreach")]
    pub fn bloomreach(mut self, projects: impl Into<crate::destination::bloomreach::BloomreachProjects>) -> Self {
        self.bloomreach.push(projects.into());
        self
    }

    /// Registers the factory of run-time destinations of `kind`:
    /// [`Client::add_destination`](crate::Client::add_destination) makes them with it, and
    /// `build()` re-creates with it those the store still holds (events pending, or still named by
    /// the app's routing) before any of their events is sent. A stored destination whose kind has
    /// no factory is kept **stopped**: its events are held and counted, never sent elsewhere or
    /// dropped, until a build registers the factory.
    pub fn runtime_destinations(
        mut self,
        kind: impl Into<String>,
        factory: impl crate::destination::DestinationFactory,
    ) -> Self {
        let kind = kind.into();
        if kind.is_empty() {
            return self.invalid("runtime_destinations", "the kind cannot be empty");
        }
        self.factories.retain(|(k, _)| *k != kind);
        self.factories.push((kind, Arc::new(factory)));
        self
    }

    /// The outbox. Default: the durable SQLite outbox ([`SqliteStore`](crate::store::SqliteStore))
    /// at [`SqliteStore::default_path`](crate::store::SqliteStore::default_path) of the name given
    /// to [`app`](Self::app), which the default therefore needs;
    /// [`MemoryStore`](crate::store::MemoryStore) keeps everything in memory instead.
    pub fn store(mut self, store: impl Store) -> Self {
        self.store = Some(Box::new(store));
        self
    }

    /// The clock for timestamps, backoff and age limits. Default: the system clock.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Slots of the channel's ring to the worker (default 16 384), preallocated. When the ring
    /// is full while the worker is draining, events wait in an overflow list allocated only
    /// then, within [`queue_max_bytes`](Self::queue_max_bytes) for the ring and the list
    /// together: a burst that outruns the worker for a few milliseconds is absorbed, not
    /// dropped. Beyond that, or while a durable store's staging is past half its bound (see
    /// [`SqliteStore::staging_limit`](crate::store::SqliteStore::staging_limit)), events are
    /// dropped and counted as `queue_full`; the caller is
    /// never blocked (unless it asks to wait for room: [`Client::waiting`](crate::Client::waiting)).
    pub fn queue_capacity(mut self, events: usize) -> Self {
        if events == 0 || events > policy::MAX_QUEUE_CAPACITY {
            return self.invalid("queue_capacity", "must be between 1 and 1 000 000");
        }
        self.queue_capacity = events;
        self
    }

    /// Most bytes of serialized events waiting in the channel, its ring and its overflow list
    /// together (default 16 MiB).
    pub fn queue_max_bytes(mut self, bytes: usize) -> Self {
        if bytes == 0 {
            return self.invalid("queue_max_bytes", "must be at least 1");
        }
        self.queue_max_bytes = bytes;
        self
    }

    /// Extra channel slots only state-changing calls (identify) and control requests (flush,
    /// shutdown) may use (default 256).
    pub fn reserved_capacity(mut self, slots: usize) -> Self {
        self.reserved_capacity = slots.max(policy::MIN_RESERVED_CAPACITY);
        self
    }

    /// How long a partial batch waits for more events before it is sent (default 1 s). A full
    /// batch goes at once.
    pub fn batch_interval(mut self, interval: Duration) -> Self {
        self.batch_interval = interval;
        self
    }

    /// The longest an accepted event waits before it is committed to the durable store (default
    /// 200 ms): a crash of the process loses at most the accepted events of this window that
    /// were not delivered yet. [`Client::persisted`](crate::Client::persisted) commits at once,
    /// whatever this is.
    ///
    /// Events delivered within this time are never written at all, which is most of the durable
    /// store's throughput under load. Measured with a 200 000-event burst on 2 cores: 200 ms
    /// delivers 1.6-1.8x a plain serialize-and-POST loop, 100 ms 0.7-0.8x, 50 ms 0.6-0.8x. At
    /// low rates (batches wait for `batch_interval`) every event is committed either way.
    ///
    /// `Duration::ZERO` commits every event before it is sent (write-ahead): what a resumable
    /// import needs (see [`Client::import_with_checkpoint`](crate::Client::import_with_checkpoint)).
    pub fn commit_delay(mut self, delay: Duration) -> Self {
        if delay > policy::MAX_COMMIT_DELAY {
            return self
                .invalid("commit_delay", "must be at most 1 s: it is how long accepted events stay unpersisted");
        }
        self.commit_delay = delay;
        self
    }

    /// Backoff and give-up rules for failed deliveries.
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Events older than this (since they were enqueued) are dead-lettered as `expired` instead of
    /// being sent (default 7 days).
    pub fn max_event_age(mut self, age: Duration) -> Self {
        if age.is_zero() {
            return self.invalid("max_event_age", "must be more than zero");
        }
        self.max_event_age = age;
        self
    }

    /// How long dropping the last clone may spend delivering what is queued (default 2 s).
    /// What is not delivered stays in the store.
    pub fn shutdown_timeout(mut self, budget: Duration) -> Self {
        self.shutdown_timeout = budget;
        self
    }

    /// A hook run on the caller's thread before an event is validated and queued: it may change
    /// the event, or return `false` to drop it (counted as `filtered`). It may track events
    /// itself, but must not call the lifecycle methods (`app_foreground`, `app_background`,
    /// `session_start`, `session_end`, `anonymize`, `track_push_token`): they may be what is
    /// running the hook, and wait for it.
    pub fn before_send(mut self, hook: impl Fn(&mut Event) -> bool + Send + Sync + 'static) -> Self {
        self.before_send = Some(Arc::new(hook));
        self
    }

    /// The application's name and version, sent in every event's context.
    ///
    /// The default store (the durable outbox) needs the name: its file lives under it, so
    /// without `app` (or an explicit [`store`](Self::store)) `build()` fails. Pass `""` as the
    /// version when the application has none (events then carry no version), or
    /// `env!("CARGO_PKG_VERSION")` for the crate's own.
    pub fn app(mut self, name: impl Into<String>, version: impl Into<String>) -> Self {
        self.app_name = Some(name.into());
        self.app_version = Some(version.into()).filter(|v: &String| !v.is_empty());
        self
    }

    /// The locale sent in every event's context (default: from `LC_ALL` / `LANG`, if set).
    pub fn locale(mut self, locale: impl Into<String>) -> Self {
        self.locale = Some(locale.into());
        self
    }

    /// The device model sent in every event's context (e.g. `Pixel 8`, `iPhone 15`), as
    /// Bloomreach's `device_model`. Default: none (trackway cannot know it, and never guesses).
    pub fn device_model(mut self, model: impl Into<String>) -> Self {
        self.device.model = Some(model.into()).filter(|m: &String| !m.trim().is_empty());
        self
    }

    /// The device type sent in every event's context (e.g. `mobile`, `tablet`, `desktop`), as
    /// Bloomreach's `device_type`. Default: none.
    pub fn device_type(mut self, device_type: impl Into<String>) -> Self {
        self.device.kind = Some(device_type.into()).filter(|t: &String| !t.trim().is_empty());
        self
    }

    /// The operating system's version sent in every event's context (`os_version`), for
    /// platforms where trackway cannot read it (on Linux and Android it reads the kernel
    /// release; elsewhere the default is none).
    pub fn os_version(mut self, version: impl Into<String>) -> Self {
        self.device.os_version = Some(version.into()).filter(|v: &String| !v.trim().is_empty());
        self
    }

    /// Makes this client an app's ([`app_mode`](Self::app_mode)) with a lifecycle:
    /// `installation` on the first run and sessions that follow
    /// [`Client::app_foreground`](crate::Client::app_foreground) /
    /// [`app_background`](crate::Client::app_background) (see [`AppLifecycle`](crate::AppLifecycle)).
    /// `build()` treats the app as being in the foreground. With [`app_mode`](Self::app_mode)
    /// alone, neither is tracked and sessions are manual.
    ///
    /// ```
    /// use trackway::{AppLifecycle, Client, destination::JsonHttp};
    /// let builder = Client::builder()
    ///     .app("notes", "1.4.0")
    ///     .app_lifecycle(AppLifecycle::default())
    ///     .destination(JsonHttp::new("https://collector.example.com/events"));
    /// ```
    pub fn app_lifecycle(mut self, lifecycle: crate::AppLifecycle) -> Self {
        self.lifecycle = Some(lifecycle);
        self.app_mode = true;
        self
    }

    /// Puts the client in app mode without a lifecycle (no `installation`, manual sessions): a
    /// message that names no user is the app's current user's (an anonymous id made on first
    /// use, then the ids given to [`Client::identify_customer`](crate::Client::identify_customer)),
    /// kept in the store across restarts. Calls that name their user (server mode) still work.
    ///
    /// Without app mode (the default, right for a server) a message that names no user is an
    /// error ([`Error::NoUser`](crate::Error::NoUser)), never filed under one shared anonymous id.
    ///
    /// ```
    /// use trackway::{Client, Screen, destination::JsonHttp, store::MemoryStore};
    /// let client = Client::builder()
    ///     .app_mode()
    ///     .destination(JsonHttp::new("http://127.0.0.1:9/events"))
    ///     .store(MemoryStore::new())
    ///     .build()?;
    /// client.capture(Screen::new("Settings"))?; // the app's current (anonymous) user
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn app_mode(mut self) -> Self {
        self.app_mode = true;
        self
    }

    /// Properties copied into every event (except push-token events), beneath the event's own.
    /// They replace defaults stored by [`Client::set_default_properties`](crate::Client::set_default_properties)
    /// in an earlier run. NaN, infinities and empty keys are an error at `build()`.
    pub fn default_properties(mut self, properties: trackway_wire::Properties) -> Self {
        if let Err(e) = properties.validate() {
            self.error
                .get_or_insert(BuildError::InvalidSetting { setting: "default_properties", message: e.to_string() });
        }
        self.default_properties = Some(properties);
        self
    }

    /// Which hard id is the primary user id (e.g. `registered`) when an app-mode
    /// [`Identify`](crate::Identify) does not say with `.primary(..)`. Default: the only id given.
    pub fn primary_id(mut self, name: impl Into<String>) -> Self {
        self.primary_id = Some(name.into());
        self
    }
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("destinations", &self.destinations)
            .field("queue_capacity", &self.queue_capacity)
            .field("batch_interval", &self.batch_interval)
            .field("retry", &self.retry)
            .field("max_event_age", &self.max_event_age)
            .finish_non_exhaustive()
    }
}

/// What the application configured about the device ([`ClientBuilder::device_model`],
/// [`ClientBuilder::device_type`], [`ClientBuilder::os_version`]).
#[derive(Clone, Debug, Default)]
pub(crate) struct DeviceInfo {
    pub(crate) model: Option<String>,
    pub(crate) kind: Option<String>,
    pub(crate) os_version: Option<String>,
}

/// Backoff and give-up rules.
///
/// Failed requests are retried after `rand(0, min(max_backoff, base_backoff × 2^(failures−1)))`
/// (exponential backoff with full jitter), or after the server's `Retry-After` (capped at
/// `max_retry_after`). A destination that is down is probed with one request at a time, so an
/// outage never turns into a retry storm.
///
/// An event is dead-lettered as `retries_exhausted` only once it has failed `max_attempts` times
/// **while the destination was delivering other events** (a poison event); while the destination
/// is simply down, events wait until `max_event_age`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// First backoff ceiling (default 500 ms).
    pub base_backoff: Duration,
    /// Largest backoff ceiling (default 5 min).
    pub max_backoff: Duration,
    /// Longest `Retry-After` honoured (default 5 min); longer values are capped.
    pub max_retry_after: Duration,
    /// Failures while other events are delivered before giving up on an event (default 10).
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base_backoff: policy::BASE_BACKOFF,
            max_backoff: policy::MAX_BACKOFF,
            max_retry_after: policy::MAX_RETRY_AFTER,
            max_attempts: policy::MAX_ATTEMPTS,
        }
    }
}

impl RetryPolicy {
    /// Backoff from `base` up to `max`.
    #[must_use]
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.base_backoff = base;
        self.max_backoff = max.max(base);
        self
    }

    /// Caps `Retry-After`.
    #[must_use]
    pub fn max_retry_after(mut self, cap: Duration) -> Self {
        self.max_retry_after = cap;
        self
    }

    /// Failures (while others succeed) before an event is dead-lettered.
    #[must_use]
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }
}

/// HTTP settings of one destination. Header values are treated as secrets: they never appear in
/// `Debug` output, logs or errors.
///
/// ```
/// use std::time::Duration;
/// let http = trackway::HttpOptions::default()
///     .timeout(Duration::from_secs(5))
///     .header("authorization", "Bearer s3cr3t");
/// assert!(!format!("{http:?}").contains("s3cr3t"));
/// ```
#[derive(Clone)]
#[must_use]
pub struct HttpOptions {
    pub(crate) timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) proxy: Option<String>,
    pub(crate) ca_certs_pem: Vec<Vec<u8>>,
    pub(crate) user_agent: Option<String>,
    pub(crate) retry: Option<RetryPolicy>,
    pub(crate) max_requests_per_second: Option<f64>,
    pub(crate) fallback_base_urls: Vec<String>,
    /// Host names resolved to fixed addresses (tests only, through `resolve`).
    pub(crate) resolve: Vec<(String, std::net::SocketAddr)>,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            timeout: policy::REQUEST_TIMEOUT,
            connect_timeout: policy::CONNECT_TIMEOUT,
            headers: Vec::new(),
            proxy: None,
            ca_certs_pem: Vec::new(),
            user_agent: None,
            retry: None,
            max_requests_per_second: None,
            fallback_base_urls: Vec::new(),
            resolve: Vec::new(),
        }
    }
}

impl HttpOptions {
    /// Whole-request timeout (default 10 s). Always on: zero is replaced by the default.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        if !timeout.is_zero() {
            self.timeout = timeout;
        }
        self
    }

    /// Connect timeout (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        if !timeout.is_zero() {
            self.connect_timeout = timeout;
        }
        self
    }

    /// An extra header on every request (its value is redacted everywhere).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// An HTTP(S) proxy URL for this destination.
    pub fn proxy(mut self, url: impl Into<String>) -> Self {
        self.proxy = Some(url.into());
        self
    }

    /// Trusts an extra CA certificate (PEM), e.g. a self-hosted server's private CA.
    pub fn ca_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_certs_pem.push(pem.into());
        self
    }

    /// Overrides the `User-Agent` header.
    pub fn user_agent(mut self, ua: impl Into<String>) -> Self {
        self.user_agent = Some(ua.into());
        self
    }

    /// This destination's own retry policy (attempts, backoff range, `Retry-After` cap) instead
    /// of the client's ([`ClientBuilder::retry_policy`]).
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// Sends at most `per_second` requests per second to this destination, evenly spaced (default:
    /// no cap). Customer.io budgets about 100 requests/s per workspace, Bloomreach 100 per IP.
    /// Values that are not positive and finite are refused at `build()`.
    pub fn max_requests_per_second(mut self, per_second: f64) -> Self {
        self.max_requests_per_second = Some(per_second);
        self
    }

    /// Base URLs to fail over to, in order, when the destination's own base URL sends nothing
    /// (connection refused, DNS, TLS), times out or answers 5xx; never on a 4xx, which says the
    /// request itself is wrong. After a failover the primary is tried again after 5 minutes.
    ///
    /// Only for destinations that name their base URL ([`Destination::base_url`]): a request URL
    /// that starts with it has that prefix replaced. Default: none.
    ///
    /// [`Destination::base_url`]: crate::destination::Destination::base_url
    pub fn fallback_base_urls<S: Into<String>>(mut self, urls: impl IntoIterator<Item = S>) -> Self {
        self.fallback_base_urls = urls.into_iter().map(Into::into).collect();
        self
    }

    /// Resolves `host` to `addr` instead of asking DNS, and treats it as loopback (plain http
    /// redirects between such hosts keep credentials). For tests that need host names on
    /// `127.0.0.1`; the port comes from the URL.
    #[cfg(feature = "testing")]
    pub fn resolve(mut self, host: impl Into<String>, addr: std::net::SocketAddr) -> Self {
        self.resolve.push((host.into(), addr));
        self
    }

    /// The lane setup these options describe for `destination`: its HTTP client and transport,
    /// its retry policy (`default_retry` unless set here) and its rate cap.
    pub(crate) fn lane_setup(
        &self,
        destination: &dyn crate::destination::Destination,
        default_retry: &RetryPolicy,
        clock: &crate::Clock,
    ) -> Result<crate::pipeline::LaneSetup, String> {
        if let Some(rate) = self.max_requests_per_second
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err(format!("max_requests_per_second must be a positive number, not {rate}"));
        }
        let (client, secrets) = self.build_client()?;
        let loopback_hosts = self.resolve.iter().map(|(h, _)| h.clone()).collect();
        let mut transport =
            crate::pipeline::Transport::new(client, secrets, destination.trusted_redirect_suffixes(), loopback_hosts);
        if !self.fallback_base_urls.is_empty() {
            let Some(primary) = destination.base_url() else {
                return Err("fallback base URLs are set, but this destination does not name its base URL".into());
            };
            for url in &self.fallback_base_urls {
                crate::destination::parse_http_url("fallback base URL", url)?;
            }
            let fallbacks = self.fallback_base_urls.iter().map(|u| u.trim_end_matches('/').to_owned()).collect();
            transport = transport.with_fallbacks(primary.trim_end_matches('/').to_owned(), fallbacks, clock.clone());
        }
        Ok(crate::pipeline::LaneSetup {
            transport,
            retry: self.retry.clone().unwrap_or_else(|| default_retry.clone()),
            max_requests_per_second: self.max_requests_per_second,
        })
    }

    /// Builds the reqwest client these options describe, and the secret headers that go on each
    /// request (not as default headers: a redirect to a foreign host must be able to drop them).
    fn build_client(&self) -> Result<(reqwest::Client, http::HeaderMap), String> {
        let mut b = reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.connect_timeout)
            // Redirects are followed by the pipeline, which keeps the method, body and secrets right.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(self.user_agent.clone().unwrap_or_else(|| format!("trackway/{}", env!("CARGO_PKG_VERSION"))));
        for (host, addr) in &self.resolve {
            b = b.resolve(host, *addr);
        }
        let mut headers = http::HeaderMap::new();
        for (name, value) in &self.headers {
            let name = http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("header name {name:?} is not valid"))?;
            let mut value = http::HeaderValue::from_str(value)
                .map_err(|_| format!("the value of header {name} is not a valid header value"))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        match &self.proxy {
            Some(url) => {
                let proxy = reqwest::Proxy::all(url)
                    .map_err(|_| format!("proxy URL {} is not valid", crate::destination::redact_url(url)))?;
                b = b.proxy(proxy);
            }
            // No proxy from the environment unless asked: loopback tests and collectors must not
            // be routed through a proxy a user set for their browser.
            None => b = b.no_proxy(),
        }
        for pem in &self.ca_certs_pem {
            let cert =
                reqwest::Certificate::from_pem(pem).map_err(|e| format!("CA certificate is not valid PEM: {e}"))?;
            b = b.add_root_certificate(cert);
        }
        Ok((b.build().map_err(|e| e.to_string())?, headers))
    }
}

impl fmt::Debug for HttpOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<String> = self.headers.iter().map(|(n, _)| format!("{n}: [redacted]")).collect();
        f.debug_struct("HttpOptions")
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("headers", &headers)
            .field("proxy", &self.proxy.as_deref().map(crate::destination::redact_url))
            .field("ca_certs", &self.ca_certs_pem.len())
            .field("user_agent", &self.user_agent)
            .field("retry", &self.retry)
            .field("max_requests_per_second", &self.max_requests_per_second)
            .field(
                "fallback_base_urls",
                &self.fallback_base_urls.iter().map(|u| crate::destination::redact_url(u)).collect::<Vec<_>>(),
            )
            .finish()
    }
}

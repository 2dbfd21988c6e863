//! The destination contract: destinations are pure, the pipeline owns all I/O.
//!
//! A destination
//! 1. says which [`EventType`]s it takes ([`Destination::accepts_event_type`], by default from
//!    [`Destination::accepts`] and [`Destination::accepts_app_event`]): events are routed at
//!    enqueue, so the others never see them;
//! 2. checks its server's limits on the caller's thread ([`Destination::validate`]), so a
//!    violation is an error at the call, not a 400 later;
//! 3. turns a batch of stored events into HTTP requests ([`Destination::encode`]), possibly several
//!    (a batch may be split), using its [`DestinationState`] (e.g. a session token);
//! 4. reads the server's answer into one [`Outcome`] per event ([`Destination::classify`]) plus an
//!    optional state update, and a request that got no answer ([`Destination::classify_error`]).
//!
//! `encode`, `classify` and `classify_error` run on the worker thread; a panic in them is caught
//! and handled like a poison event (see [`Outcome`]), a panic in `validate` is an error of the
//! call, one in `check_config` a build error.
//!
//! Timeouts, retries, backoff, `Retry-After`, concurrency and dead letters belong to the pipeline.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use trackway_wire::{Event, EventKind, MessageId, Timestamp};

#[cfg(feature = "bloomreach")]
pub mod bloomreach;
#[cfg(feature = "customerio")]
pub mod customerio;
mod event_type;
#[cfg(feature = "json")]
mod json;
#[cfg(feature = "testing")]
mod memory;
#[cfg(feature = "opencdp")]
pub mod opencdp;
mod parse;
mod set;
mod status;
mod transport;
#[cfg(feature = "umami")]
pub mod umami;

#[cfg(feature = "bloomreach")]
pub use bloomreach::Bloomreach;
#[cfg(feature = "customerio")]
pub use customerio::CustomerIo;
pub use event_type::EventType;
#[cfg(feature = "json")]
pub use json::JsonHttp;
#[cfg(feature = "testing")]
pub use memory::{InMemoryDestination, Received};
#[cfg(feature = "opencdp")]
pub use opencdp::{OpenCdp, OpenCdpConfig};
pub use set::{DestinationFactory, DestinationSet};
pub(crate) use set::{Unavailable, check_name};
pub(crate) use status::status_and_first_line;
pub use status::{classify_status, parse_retry_after};
pub use transport::{TransportError, TransportErrorKind};
#[cfg(feature = "umami")]
pub use umami::Umami;

/// A backend that events are delivered to.
///
/// # Examples
///
/// A destination that POSTs each event's name as plain text, one request per event:
///
/// ```
/// use trackway::destination::{Destination, DestinationState, Encoded, EventRecord, Request};
/// use trackway::Timestamp;
///
/// #[derive(Debug)]
/// struct Names { url: String }
///
/// impl Destination for Names {
///     fn name(&self) -> &str { "names" }
///     fn encode(&self, events: &[EventRecord], _: &DestinationState, _: Timestamp) -> Encoded {
///         let mut out = Encoded::default();
///         for (i, record) in events.iter().enumerate() {
///             match record.event() {
///                 Ok(e) => out.requests.push(Request::post(&self.url, e.name.as_deref().unwrap_or_default().to_owned(), vec![i])),
///                 Err(reason) => out.rejected.push((i, reason.to_string())),
///             }
///         }
///         out
///     }
/// }
/// ```
pub trait Destination: std::any::Any + Send + Sync + fmt::Debug + 'static {
    /// A short, stable name: used in stats, errors and as the key of its delivery state in the store.
    fn name(&self) -> &str;

    /// Whether this destination takes events of `kind`. Default: all kinds.
    fn accepts(&self, kind: EventKind) -> bool {
        let _ = kind;
        true
    }

    /// Whether this destination takes the events app mode tracks by itself (sessions,
    /// installation, push tokens, payments). Default: all. A destination whose server keeps its
    /// own sessions, or that should never see push tokens, says no here; the app state changes
    /// all the same.
    fn accepts_app_event(&self, event: AppEvent) -> bool {
        let _ = event;
        true
    }

    /// Whether this destination takes events of type `event_type` (the unit of routing: a
    /// destination that stands for a mapped project takes only the types mapped to it).
    /// Default: [`accepts`](Self::accepts) the type's kind and, for the events app mode tracks
    /// by itself, [`accepts_app_event`](Self::accepts_app_event).
    fn accepts_event_type(&self, event_type: EventType) -> bool {
        self.accepts(event_type.kind()) && event_type.app_event().is_none_or(|e| self.accepts_app_event(e))
    }

    /// How many events (and bytes of stored events) one `encode` call may receive.
    fn batch_limits(&self) -> BatchLimits {
        BatchLimits::default()
    }

    /// Whether one person's events must reach this destination in the order they were tracked
    /// (an `identify` before the `track` that follows it, a profile update before the next),
    /// when a queue outside the SDK delivers them (the relay: its workers keep each identity's
    /// events in order for such destinations, and may deliver them out of order otherwise).
    /// Default: no (a destination that stores each event on its own, like JSON over HTTP).
    /// Customer.io, Bloomreach, Umami and OpenCDP say yes: a `track` before the person exists
    /// there, or a profile update applied out of turn, changes what the server keeps.
    fn identity_order(&self) -> bool {
        false
    }

    /// Whether requests must go out one at a time in order (stateful destinations) or may be sent
    /// in parallel.
    fn delivery(&self) -> Delivery {
        Delivery::Parallel { max_in_flight: 4 }
    }

    /// Checks the server's limits on the caller's thread, before anything is queued.
    ///
    /// # Errors
    /// A [`LimitError`] naming the limit; the client wraps it with this destination's name.
    fn validate(&self, event: &Event) -> Result<(), LimitError> {
        let _ = event;
        Ok(())
    }

    /// Encodes a batch (in enqueue order) into requests. Every event index must appear in exactly
    /// one request's `items` or in `rejected`.
    fn encode(&self, events: &[EventRecord], state: &DestinationState, now: Timestamp) -> Encoded;

    /// Classifies the server's answer to `request`: one outcome per entry of `request.items`, in
    /// the same order. Default: the status code decides for the whole request
    /// ([`classify_status`]: 401, 403 and 404 say the configuration is wrong).
    ///
    /// The body it gets has the request's secrets replaced by `<redacted>` (a server may echo the
    /// request into its error page): the values of the headers set with
    /// [`HttpOptions::header`](crate::HttpOptions::header), and of the destination's own headers
    /// that carry credentials by name (`authorization`, `x-api-key`, any name with `key`, `token`,
    /// `secret` or `auth`) or are marked sensitive, with a `Bearer`/`Basic` credential alone and
    /// decoded. A secret carried elsewhere (in the URL or the body) is not searched for.
    fn classify(&self, request: &Request, response: &Response) -> Classified {
        let outcome = classify_status(response);
        Classified::new(vec![outcome; request.items.len()])
    }

    /// Classifies a request that got no answer at all (refused, reset, timed out); the outcome
    /// applies to every event of `request`. [`TransportError::kind`] says whether the server may
    /// have the request. Default: [`Outcome::Retry`] (events are retried whatever the kind).
    fn classify_error(&self, request: &Request, error: &TransportError) -> Outcome {
        let _ = (request, error);
        Outcome::Retry
    }

    /// Whether [`Client::erase_user`](crate::Client::erase_user) also deletes the person here:
    /// it then queues, for this destination only, a `track` event named [`ERASE_USER_EVENT`]
    /// carrying the id, which `encode` turns into the server's delete (Customer.io's `DELETE
    /// /api/v1/customers/{id}`). Default: no (nothing is sent).
    fn erases_people(&self) -> bool {
        false
    }

    /// Checks the destination's configuration when the client is built (e.g. that its URL parses).
    ///
    /// # Errors
    /// A message saying what to fix; `build()` returns it as a [`BuildError`](crate::BuildError).
    fn check_config(&self) -> Result<(), String> {
        Ok(())
    }

    /// How many of this destination's [direct calls](crate::direct) may be in flight at once
    /// (they never take the event lane's slots). Default: 4.
    fn direct_concurrency(&self) -> usize {
        4
    }

    /// The base URL every request of this destination starts with, if it has one: what
    /// [`HttpOptions::fallback_base_urls`](crate::HttpOptions::fallback_base_urls) replaces when
    /// failing over. Default: `None` (no failover).
    fn base_url(&self) -> Option<&str> {
        None
    }

    /// Host suffixes (such as `.customer.io`) that a redirect may lead to with this destination's
    /// credentials. A redirect to the request's own host keeps them too; any other host gets the
    /// request without `Authorization`, cookies or the configured headers. Default: none.
    fn trusted_redirect_suffixes(&self) -> Vec<String> {
        Vec::new()
    }

    /// Answers a request in-process instead of over HTTP. Only in-process destinations (such as
    /// the testing feature's `InMemoryDestination`) override it; real destinations leave `None`.
    #[doc(hidden)]
    fn respond_locally(&self, request: &Request) -> Option<Response> {
        let _ = request;
        None
    }
}

/// The name of the event [`Client::erase_user`](crate::Client::erase_user) queues for each
/// destination that [erases people](Destination::erases_people).
pub const ERASE_USER_EVENT: &str = "$erase_user";

/// An event app mode tracks by itself, for [`Destination::accepts_app_event`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AppEvent {
    /// `installation`, on the first run and after `anonymize`.
    Installation,
    /// `session_start`.
    SessionStart,
    /// `session_end`.
    SessionEnd,
    /// `notification_state` (a push token registered or invalidated).
    PushToken,
    /// `payment`.
    Payment,
}

impl AppEvent {
    /// Every app event.
    pub const ALL: [AppEvent; 5] =
        [AppEvent::Installation, AppEvent::SessionStart, AppEvent::SessionEnd, AppEvent::PushToken, AppEvent::Payment];
}

/// Batch size limits of a destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchLimits {
    /// Most events per `encode` call.
    pub max_events: usize,
    /// Most bytes of stored (serialized) events per `encode` call.
    pub max_bytes: usize,
}

impl BatchLimits {
    /// Limits of `max_events` events and `max_bytes` bytes.
    pub fn new(max_events: usize, max_bytes: usize) -> Self {
        BatchLimits { max_events: max_events.max(1), max_bytes: max_bytes.max(1) }
    }
}

impl Default for BatchLimits {
    /// 100 events, 512 KiB.
    fn default() -> Self {
        BatchLimits { max_events: 100, max_bytes: 512 * 1024 }
    }
}

/// How a destination's requests may be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Delivery {
    /// One request at a time, in order; a failed request is retried before anything later is sent.
    /// For destinations whose requests carry state from the previous answer: when `encode`
    /// returns several requests, only the first is sent, and the events of the others are
    /// encoded again (with the state its answer left) once it is answered.
    Ordered,
    /// Up to `max_in_flight` requests at once; a retried event may arrive after later ones.
    Parallel {
        /// Most concurrent requests.
        max_in_flight: usize,
    },
}

/// A server limit an event breaks.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct LimitError {
    /// What limit is broken, with the numbers (e.g. "event name is 60 UTF-16 units; the limit is 50").
    pub message: String,
}

impl LimitError {
    /// A limit error with a message a user can act on.
    pub fn new(message: impl Into<String>) -> Self {
        LimitError { message: message.into() }
    }
}

/// One stored event as handed to [`Destination::encode`]: the compact JSON written at enqueue,
/// parsed lazily so a destination that forwards the bytes as they are never pays for parsing.
///
/// Stores keep an event's *head* (its JSON without the context, the last field) and each
/// distinct context once; [`write_json`](Self::write_json) splices them together without an
/// intermediate copy, [`json`](Self::json) assembles (and caches) the full JSON.
pub struct EventRecord {
    pub(crate) seq: u64,
    pub(crate) id: MessageId,
    pub(crate) timestamp: Timestamp,
    pub(crate) queued_at: Timestamp,
    head: Bytes,
    /// `None`: `head` is already a complete event.
    context: Option<Bytes>,
    full: OnceLock<Bytes>,
    parsed: OnceLock<Result<Event, String>>,
}

impl EventRecord {
    /// A record over a complete serialized event.
    pub fn new(seq: u64, id: MessageId, timestamp: Timestamp, json: Bytes) -> Self {
        EventRecord {
            seq,
            id,
            timestamp,
            queued_at: timestamp,
            head: json,
            context: None,
            full: OnceLock::new(),
            parsed: OnceLock::new(),
        }
    }

    /// A record over an event head (see `trackway_wire::encode_event_head`) and its context JSON.
    pub fn from_head(seq: u64, id: MessageId, timestamp: Timestamp, head: Bytes, context: Bytes) -> Self {
        EventRecord { context: Some(context), ..EventRecord::new(seq, id, timestamp, head) }
    }

    /// A record over the same bytes (the `Bytes` handles are shared, the parse cache is not):
    /// for handing a subset of a batch to `encode` again, or one held by a queue outside the SDK.
    pub fn shallow_clone(&self) -> Self {
        EventRecord {
            context: self.context.clone(),
            ..EventRecord::new(self.seq, self.id, self.timestamp, self.head.clone())
        }
        .with_queued_at(self.queued_at)
    }

    /// Sets when the event was enqueued, if it differs from its timestamp (imports).
    #[must_use]
    pub fn with_queued_at(mut self, queued_at: Timestamp) -> Self {
        self.queued_at = queued_at;
        self
    }

    /// A record for `event` (serializes it); for tests and custom pipelines.
    ///
    /// # Errors
    /// When the event cannot be serialized.
    pub fn from_event(seq: u64, event: &Event) -> Result<Self, serde_json::Error> {
        let bytes = Bytes::from(serde_json::to_vec(event)?);
        Ok(EventRecord::new(seq, event.id, event.timestamp, bytes))
    }

    /// The event's position in the outbox (increasing in enqueue order).
    pub fn seq(&self) -> u64 {
        self.seq
    }
    /// The event's message id.
    pub fn id(&self) -> MessageId {
        self.id
    }
    /// When the event happened.
    pub fn timestamp(&self) -> Timestamp {
        self.timestamp
    }
    /// When the event was enqueued (equals [`timestamp`](Self::timestamp) except for imports).
    pub fn queued_at(&self) -> Timestamp {
        self.queued_at
    }

    /// Length of the full JSON, without assembling it.
    pub fn json_len(&self) -> usize {
        match &self.context {
            Some(c) => self.head.len() + trackway_wire::CONTEXT_KEY.len() + c.len() + 1,
            None => self.head.len(),
        }
    }

    /// Appends the full JSON of the event to `out`, without an intermediate copy.
    pub fn write_json(&self, out: &mut bytes::BytesMut) {
        out.extend_from_slice(&self.head);
        if let Some(c) = &self.context {
            out.extend_from_slice(trackway_wire::CONTEXT_KEY);
            out.extend_from_slice(c);
            out.extend_from_slice(b"}");
        }
    }

    /// The event as compact JSON (assembled once from head and context if needed).
    pub fn json(&self) -> &Bytes {
        match &self.context {
            None => &self.head,
            Some(_) => self.full.get_or_init(|| {
                let mut out = bytes::BytesMut::with_capacity(self.json_len());
                self.write_json(&mut out);
                out.freeze()
            }),
        }
    }

    /// The parsed event.
    ///
    /// # Errors
    /// A description if the stored bytes are not a valid event (a store written by a newer version).
    pub fn event(&self) -> Result<&Event, &str> {
        self.parsed
            .get_or_init(|| {
                // A head and its shared context: the context parsed once, not once per event.
                let shared = self.context.as_ref().and_then(|context| parse::event_from_head(&self.head, context));
                shared.map_or_else(
                    || serde_json::from_slice(self.json()).map_err(|e| format!("stored event is not valid: {e}")),
                    Ok,
                )
            })
            .as_ref()
            .map_err(String::as_str)
    }
}

impl fmt::Debug for EventRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventRecord")
            .field("seq", &self.seq)
            .field("id", &self.id)
            .field("bytes", &self.json_len())
            .finish()
    }
}

/// An HTTP request built by a destination.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Request {
    /// HTTP method.
    pub method: http::Method,
    /// Absolute URL.
    pub url: String,
    /// Headers specific to this request (the destination's configured extra headers are added by
    /// the pipeline).
    pub headers: http::HeaderMap,
    /// The body.
    pub body: Bytes,
    /// Indices (into the `events` slice given to `encode`) of the events this request carries.
    pub items: Vec<usize>,
}

impl Request {
    /// A POST of `body` to `url` carrying the events at `items`.
    pub fn post(url: &str, body: impl Into<Bytes>, items: Vec<usize>) -> Self {
        Request {
            method: http::Method::POST,
            url: url.to_owned(),
            headers: http::HeaderMap::new(),
            body: body.into(),
            items,
        }
    }

    /// A GET of `url` without a body (a direct call such as a ping; it carries no events).
    pub fn get(url: &str) -> Self {
        Request {
            method: http::Method::GET,
            url: url.to_owned(),
            headers: http::HeaderMap::new(),
            body: Bytes::new(),
            items: Vec::new(),
        }
    }

    /// Adds a header.
    #[must_use]
    pub fn header(mut self, name: http::HeaderName, value: http::HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }
}

/// The server's answer.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Response {
    /// Status code.
    pub status: http::StatusCode,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Body (read in full, up to a limit).
    pub body: Bytes,
}

impl Response {
    /// A response, for tests of `classify`.
    pub fn new(status: u16, body: impl Into<Bytes>) -> Self {
        Response {
            status: http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR),
            headers: http::HeaderMap::new(),
            body: body.into(),
        }
    }

    /// The body as text (lossy), trimmed to 1 KiB: what dead letters and logs keep.
    pub fn body_excerpt(&self) -> String {
        let end = self.body.len().min(1024);
        String::from_utf8_lossy(&self.body[..end]).into_owned()
    }
}

/// The verdict on one event of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The server has it.
    Delivered,
    /// A transient failure: send again after a backoff.
    Retry,
    /// The server asked to wait: pause this destination for at least this long, then send again.
    Throttled(Duration),
    /// The server will never take it: dead-letter it with this reason (status and body).
    Reject(String),
    /// The server says the destination's configuration is wrong (bad credentials, an unknown
    /// website or project, a wrong endpoint), with the server's answer. It applies to the whole
    /// request: its events are **held**, never dead-lettered for it, the destination shows as
    /// misconfigured in [`Stats`](crate::Stats) and probes with one request at a growing interval
    /// until an answer works again. A 400 about one event's content is a [`Reject`](Self::Reject).
    Misconfigured(String),
}

/// The result of [`Destination::classify`].
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Classified {
    /// One outcome per entry of the request's `items`, in order.
    pub outcomes: Vec<Outcome>,
    /// State changes to store for the next requests (key, value; `None` removes the key).
    pub state: Vec<(String, Option<Vec<u8>>)>,
    /// The request probed the server (e.g. an endpoint an older release lacks) and the answer
    /// chose another way: its events go again at once, and the request counts as a probe in
    /// [`DestinationStats::probes`](crate::DestinationStats::probes), not as a failure.
    pub probe: bool,
    /// Delivered events whose own timestamp the server does not store (they are filed at
    /// delivery time): added to [`DestinationStats::dropped_timestamps`](crate::DestinationStats::dropped_timestamps).
    pub dropped_timestamps: u64,
    /// Other values of delivered events the server does not store, one per field per event:
    /// added to [`DestinationStats::dropped_fields`](crate::DestinationStats::dropped_fields).
    pub dropped_fields: u64,
}

impl Classified {
    /// Outcomes without a state change.
    pub fn new(outcomes: Vec<Outcome>) -> Self {
        Classified { outcomes, ..Classified::default() }
    }
}

/// The result of [`Destination::encode`].
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Encoded {
    /// Requests to send, in order.
    pub requests: Vec<Request>,
    /// Events that cannot be encoded, with the reason; they are dead-lettered.
    pub rejected: Vec<(usize, String)>,
    /// Values the destination shortened to fit its server's limits (e.g. an Umami title over 500
    /// UTF-16 units). Added to the destination's `truncated` stat on an event's first attempt.
    pub truncated: u64,
    /// Events the server has nothing for (e.g. a `web` device at Customer.io), with the reason:
    /// done without being sent, counted in the destination's `skipped` stat, never dead-lettered.
    pub skipped: Vec<(usize, String)>,
}

impl Encoded {
    /// The event of `record` (at index `i` of the batch), or `None` after rejecting it with the
    /// reason when its stored bytes do not read back as an event.
    #[cfg_attr(not(any(feature = "umami", feature = "customerio", feature = "bloomreach")), allow(dead_code))]
    pub(crate) fn parse<'a>(&mut self, i: usize, record: &'a EventRecord) -> Option<&'a Event> {
        match record.event() {
            Ok(event) => Some(event),
            Err(reason) => {
                self.rejected.push((i, reason.to_owned()));
                None
            }
        }
    }
}

/// A destination's stored state: small values kept in the store next to its delivery cursor, e.g. a
/// session token the server hands back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DestinationState {
    values: BTreeMap<String, Vec<u8>>,
}

impl DestinationState {
    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.values.get(key).map(Vec::as_slice)
    }

    /// Every key held, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// Applies changes from [`Classified::state`].
    pub(crate) fn apply(&mut self, changes: &[(String, Option<Vec<u8>>)]) {
        for (k, v) in changes {
            match v {
                Some(v) => {
                    self.values.insert(k.clone(), v.clone());
                }
                None => {
                    self.values.remove(k);
                }
            }
        }
    }

    pub(crate) fn from_map(values: BTreeMap<String, Vec<u8>>) -> Self {
        DestinationState { values }
    }
}

/// A URL with any user:password part replaced, for messages. A string that does not parse is not
/// echoed at all: where its credentials would be cannot be known.
pub(crate) fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("redacted");
            let _ = u.set_password(None);
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => format!("<unparseable URL of {} bytes>", url.len()),
    }
}

/// Parses a destination's URL (`what` names it in messages: "URL", "base URL"), refusing what
/// would send events somewhere other than meant: a scheme other than http or https, and an empty
/// port (`http://host:/path`), which URL parsing accepts as the scheme's default port.
pub(crate) fn parse_http_url(what: &str, url: &str) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{what} {} is not valid: {e}", redact_url(url)))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("{what} scheme must be http or https, not {:?}", parsed.scheme()));
    }
    if let Some(host) = empty_port(url) {
        let default = parsed.port_or_known_default().unwrap_or(80);
        return Err(format!(
            "{what} has an empty port after `{host}:`, which would dial port {default} ({}'s default): \
             write the port (`{host}:8080`) or remove the `:`",
            parsed.scheme()
        ));
    }
    Ok(parsed)
}

/// The host of a URL whose authority ends in `:` with no port, without any user:password part.
fn empty_port(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '\\', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or(authority);
    host_port.strip_suffix(':')
}

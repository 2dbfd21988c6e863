//! The Bloomreach Engagement (formerly Exponea) destination: custom events, page and screen
//! views, sessions, `installation`, payments, push tokens and customer updates on the tracking
//! API, one request per event (app mode, as the mobile SDKs send) or through batch commands
//! (server mode), with project mapping (extra projects per event type).
//!
//! The module is split by concern: this file holds the configuration and its checks,
//! [`project`] the project mapping and project switches, `encode` the requests, `classify` the
//! answers.
//!
//! # Wire
//!
//! | trackway call | request | body |
//! |---|---|---|
//! | `track(name, props)` | `POST {base}/track/v2/projects/{token}/customers/events` | `event_type: name` |
//! | `screen(name, props)` | the same | `event_type: "screen_view"`, `screen_name` |
//! | `page(Page::new(url).title(..).referrer(..))` | the same | `event_type: "page_visit"`, `location`, `title`, `referrer` |
//! | `installation`, `session_start`, `session_end` (with `duration`), `payment` | the same | plus the device properties |
//! | `notification_state` (push token) | the same | no default properties |
//! | `identify`, `identify_customer` | `POST …/customers` | no `event_type`, no `application_id` / `device_id` |
//!
//! Every body has `timestamp` (Unix seconds as a float, **always sent**: the time the call gave,
//! e.g. [`Track::timestamp`](crate::Track::timestamp), else the time it was queued, so a late
//! delivery keeps its time), `customer_ids` (`cookie`: the app's anonymous id, or a server-mode
//! call's `.anonymous_id(..)`; the hard ids of an app-mode identity; a server-mode call's user
//! under [`Bloomreach::hard_id`], default `registered`) and `properties`. Events (not customer
//! updates) carry `application_id` and, in app mode, `device_id` (a UUID made once per install
//! and kept in the store); those two win over the event's own properties, which win over the
//! default properties (as Android: §5).
//!
//! The device properties are `os_name`, `os_version` (where the platform tells it),
//! `device_model` and `device_type` (from [`ClientBuilder::device_model`](crate::ClientBuilder::device_model)
//! and [`device_type`](crate::ClientBuilder::device_type), absent when not given: never invented),
//! `app_version` (from [`ClientBuilder::app`](crate::ClientBuilder::app)), `sdk: "trackway"` and
//! `sdk_version`.
//!
//! # Batching
//!
//! [`Sending::Batch`] (the default in server mode) sends `POST …/batch` with up to 50 commands,
//! each with `command_id` = the event's message id, and reads `results[i]` as the answer to
//! `commands[i]`. Commands of one batch run in any order (spec §1.5), so a batch never holds a
//! customer update together with later events of the same customer: such an event starts the
//! next request. [`Sending::PerEvent`] (the default of a client in app mode) sends one request
//! per event, as the Android and iOS SDKs do: the docs say high-volume imports through batch
//! "will be blocked". Either way requests go out one at a time, in order.
//!
//! # Answers
//!
//! | answer | events |
//! |---|---|
//! | 2xx with `success: true` (body, or the command's result) | delivered |
//! | 2xx with `success: false`, or no `success` at all | dead-lettered with the server's `errors` (never a success, unlike Android, which does not read the body) |
//! | 2xx batch with fewer results than commands | the commands without a result are retried |
//! | 400, other 4xx | dead-lettered with the server's `errors` |
//! | 401, 403, 404 (the path holds the project token) | misconfigured: held, not dead-lettered, probed at a growing interval |
//! | 429, 5xx | retried with backoff, after `Retry-After` when given |
//! | no answer (refused, reset, timed out) | retried; a destination that is down costs no tries (Android counts network errors as tries and retries 5xx with no backoff: neither here) |
//!
//! **Assumed** (spec §12): the result of a failing batch command is `{"success": false,
//! "errors": …}`, as a failing whole request is; nothing real confirmed it. Gzip and Brotli
//! response bodies are read.
//!
//! # Where the Android and iOS SDKs disagree (spec §10), and what trackway does
//!
//! | topic | trackway | why |
//! |---|---|---|
//! | identify ids | replace the stored ids (Android) | merging keeps a previous user's ids on the next user when an app forgets `anonymize` |
//! | `customer_ids` of queued events | frozen when queued (Android) | an event belongs to who did it; iOS's flush-time ids file a guest's cart under the next sign-in |
//! | killed in the foreground | `session_end` at the last-seen time on the next start | iOS ends it at relaunch (inflated duration), Android never ends it (the lost `session_end` of android-sdk#86) |
//! | 5xx and network errors | backoff, no tries spent while the destination is down | Android burns tries on network errors and hammers 5xx |
//! | max tries | `RetryPolicy::max_attempts`, counted only while the destination delivers others | neither SDK's fixed 10 or 5 tells an outage from a poison event |
//! | send order | one request at a time, in queue order (Android) | iOS's concurrent sends reorder identify and events |
//! | flush delay | at once, after the batch interval (Android's `IMMEDIATE`) | iOS's 3 s delay loses events of a short-lived process |
//! | push permission required | not by default (Android) | [`AppLifecycle::require_push_permission`](crate::AppLifecycle::require_push_permission) turns it on |
//! | cookie case | lowercase UUID (Android) | the server compares ids as strings: one case everywhere |
//!
//! # What users complain about (spec §11), and what trackway does
//!
//! - Installs without sessions (android-sdk#86), duplicate installs after `anonymize`
//!   (react-native#97): `installation` is once per install and once per `anonymize`, as the
//!   SDKs, but the client is built once (no lazy second init) and sessions start at `build()`.
//! - "Was my token sent?" (android-sdk#25, ios-sdk#19): [`Client::stats`](crate::Client::stats)
//!   per project and `flush` say what was delivered where; misconfigured projects show as such.
//! - Main-thread stalls (android-sdk#46, #71, ios-sdk#27…): calls never do I/O on the caller's
//!   thread; the store is written by the worker.
//! - Flushes that never succeed (react-native#40): every failure is classified and counted,
//!   one log line per change of health.

use std::collections::BTreeSet;
use std::fmt;

use trackway_wire::bloomreach::{
    self as wire, DEFAULT_APPLICATION_ID, DEFAULT_BASE_URL, DEFAULT_HARD_ID, MAX_BATCH_COMMANDS,
    MAX_CUSTOMER_PROPERTY_BYTES, MAX_CUSTOMER_UPDATE_BYTES,
};
use trackway_wire::{Event, EventKind, Timestamp};

use super::{
    BatchLimits, Classified, Delivery, Destination, DestinationState, Encoded, EventRecord, EventType, LimitError,
    Request, Response, TransportError, parse_http_url,
};

mod classify;
mod encode;
pub mod project;
#[cfg(test)]
mod tests;

pub use project::{BloomreachProject, BloomreachProjects, BloomreachRuntime, ProjectChange};

/// The kind under which [`BloomreachRuntime`] is registered with
/// [`ClientBuilder::runtime_destinations`](crate::ClientBuilder::runtime_destinations).
pub const KIND: &str = "bloomreach";

/// How a project's requests are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Sending {
    /// One request per event (what the mobile SDKs do).
    PerEvent,
    /// `POST …/batch` with up to 50 commands.
    Batch,
}

/// How requests authenticate (the `Authorization` header). The secret never appears in
/// `Debug`, logs or errors.
///
/// ```
/// use trackway::destination::bloomreach::Authorization;
/// let app = Authorization::token("abcd1234");           // Authorization: Token abcd1234
/// let server = Authorization::basic("key-id", "s3cr3t-v4lue"); // Authorization: Basic base64(key-id:s3cr3t-v4lue)
/// assert!(!format!("{server:?}").contains("s3cr3t-v4lue"));
/// ```
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Authorization {
    /// `Token <public API key>`: the only form the mobile SDKs accept, for apps.
    Token(String),
    /// `Basic base64(key_id:secret)`: a private access key, for servers.
    Basic {
        /// The private key's id.
        key_id: String,
        /// The private key's secret.
        secret: String,
    },
}

impl Authorization {
    /// A public API key (a leading `Token ` is accepted and not doubled).
    pub fn token(key: impl Into<String>) -> Self {
        let key: String = key.into();
        let key = key.strip_prefix("Token ").map(str::to_owned).unwrap_or(key);
        Authorization::Token(key.trim().to_owned())
    }

    /// A private access key: its id and secret.
    pub fn basic(key_id: impl Into<String>, secret: impl Into<String>) -> Self {
        Authorization::Basic { key_id: key_id.into(), secret: secret.into() }
    }

    /// The header value.
    pub(crate) fn header(&self) -> String {
        match self {
            Authorization::Token(key) => format!("Token {key}"),
            Authorization::Basic { key_id, secret } => {
                format!("Basic {}", base64(format!("{key_id}:{secret}").as_bytes()))
            }
        }
    }

    fn check(&self) -> Result<(), String> {
        match self {
            Authorization::Token(key) if key.is_empty() => {
                Err("the public API key is empty (Authorization::token)".into())
            }
            Authorization::Token(key) if key.starts_with("Basic ") => {
                Err("Authorization::token was given a `Basic …` value: use Authorization::basic(key_id, secret)".into())
            }
            Authorization::Basic { key_id, .. } if key_id.trim().is_empty() || key_id.contains(':') => {
                Err("the private key id is empty or contains `:` (Authorization::basic)".into())
            }
            Authorization::Basic { secret, .. } if secret.is_empty() => {
                Err("the private key's secret is empty (Authorization::basic)".into())
            }
            _ if self.header().chars().any(char::is_control) => {
                Err("the authorization contains a control character".into())
            }
            _ => Ok(()),
        }
    }
}

impl fmt::Debug for Authorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Authorization::Token(_) => f.write_str("Token(<redacted>)"),
            Authorization::Basic { key_id, .. } => write!(f, "Basic {{ key_id: {key_id:?}, secret: <redacted> }}"),
        }
    }
}

/// Standard base64 with padding (the `Basic` credentials; no crate for 20 lines).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Sends events and customer updates to one Bloomreach Engagement project.
///
/// ```
/// use trackway::destination::bloomreach::{Authorization, Bloomreach, Sending};
///
/// let project = Bloomreach::new("0aef3a96-3e2b-11ef-9a4b-6a1f1c6e1b0f", Authorization::token("public-key"))
///     .base_url("https://api-eu.exponea.com")
///     .application_id("com.example.shop")
///     .sending(Sending::PerEvent);
/// ```
///
/// For extra projects per event type, see [`Bloomreach::map`].
#[derive(Clone)]
pub struct Bloomreach {
    name: Option<String>,
    token: String,
    authorization: Authorization,
    base_url: String,
    application_id: String,
    hard_id: String,
    allow_default_customer_properties: bool,
    sending: Option<Sending>,
    device_id: Option<String>,
    /// A mapped project takes only these types; `None`: every type.
    only: Option<BTreeSet<EventType>>,
}

impl fmt::Debug for Bloomreach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bloomreach")
            .field("name", &self.name())
            .field("token", &self.token)
            .field("authorization", &self.authorization)
            .field("base_url", &self.base_url)
            .field("application_id", &self.application_id)
            .field("sending", &self.sending)
            .finish_non_exhaustive()
    }
}

impl Bloomreach {
    /// A destination named `bloomreach` for the project `token` on `https://api.exponea.com`.
    /// The token is checked at `build()` (letters, digits and `-`).
    pub fn new(token: impl Into<String>, authorization: Authorization) -> Self {
        Bloomreach {
            name: None,
            token: token.into(),
            authorization,
            base_url: DEFAULT_BASE_URL.to_owned(),
            application_id: DEFAULT_APPLICATION_ID.to_owned(),
            hard_id: DEFAULT_HARD_ID.to_owned(),
            allow_default_customer_properties: true,
            sending: None,
            device_id: None,
            only: None,
        }
    }

    /// Renames the destination (default `bloomreach`).
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The tenant's base URL (Project settings > Access management > API), e.g.
    /// `https://api-eu.exponea.com`; one trailing `/` is tolerated. Default:
    /// `https://api.exponea.com`.
    #[must_use]
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        let url: String = url.into();
        self.base_url = url.strip_suffix('/').map(str::to_owned).unwrap_or(url);
        self
    }

    /// The `application_id` of every event (lowercase groups of letters and digits joined by
    /// `-` or `.`, at most 50). Default: `default-application`.
    #[must_use]
    pub fn application_id(mut self, id: impl Into<String>) -> Self {
        self.application_id = id.into();
        self
    }

    /// The hard id a server-mode call's user is sent under (`customer_ids.<name>`). Default:
    /// `registered`.
    #[must_use]
    pub fn hard_id(mut self, name: impl Into<String>) -> Self {
        self.hard_id = name.into();
        self
    }

    /// Whether customer updates carry the default properties (default: true, as the SDKs'
    /// `allowDefaultCustomerProperties`).
    #[must_use]
    pub fn allow_default_customer_properties(mut self, allow: bool) -> Self {
        self.allow_default_customer_properties = allow;
        self
    }

    /// How requests are sent. Default: [`Sending::Batch`], or [`Sending::PerEvent`] on a client
    /// in app mode (see [`resolve_sending`](Self::resolve_sending)).
    #[must_use]
    pub fn sending(mut self, sending: Sending) -> Self {
        self.sending = Some(sending);
        self
    }

    /// The `device_id` of every event instead of the install's own (app mode makes one per
    /// install and keeps it in the store; a server has none).
    #[must_use]
    pub fn device_id(mut self, id: impl Into<String>) -> Self {
        self.device_id = Some(id.into());
        self
    }

    /// Also sends events of `event_type` to `project` (Bloomreach's project mapping): each
    /// mapped project is a destination of its own (`bloomreach:<token>`), with its own cursor
    /// and stats, so one being down never delays another. A project without a base URL
    /// inherits this one's. Give the result to
    /// [`ClientBuilder::destinations`](crate::ClientBuilder::destinations).
    ///
    /// ```
    /// use trackway::destination::{EventType, bloomreach::{Authorization, Bloomreach, BloomreachProject}};
    /// let projects = Bloomreach::new("main-project", Authorization::token("main-key")).map(
    ///     EventType::Payment,
    ///     BloomreachProject::new("payments-project", Authorization::token("payments-key")),
    /// );
    /// ```
    pub fn map(self, event_type: EventType, project: BloomreachProject) -> BloomreachProjects {
        BloomreachProjects::new(self).map(event_type, project)
    }

    /// Sets the default way of sending for a client in app mode or not, unless
    /// [`sending`](Self::sending) chose. [`ClientBuilder::destinations`](crate::ClientBuilder::destinations)
    /// and `destination` cannot see the mode, so a Bloomreach destination given to an app-mode
    /// client should be given [`Sending::PerEvent`] or go through
    /// [`ClientBuilder::bloomreach`](crate::ClientBuilder::bloomreach), which calls this.
    #[must_use]
    pub fn resolve_sending(mut self, app_mode: bool) -> Self {
        self.sending.get_or_insert(if app_mode { Sending::PerEvent } else { Sending::Batch });
        self
    }

    /// The project token.
    pub fn token(&self) -> &str {
        &self.token
    }

    fn effective_sending(&self) -> Sending {
        self.sending.unwrap_or(Sending::Batch)
    }

    /// `{base}/track/v2/projects/{token}/{command}`.
    fn url(&self, command: &str) -> String {
        format!("{}{}", self.base_url, wire::path(&self.token, command))
    }

    /// A copy of these settings for another project (mapped, or switched to).
    pub(crate) fn for_project(&self, project: &BloomreachProject) -> Bloomreach {
        Bloomreach {
            name: None,
            token: project.token.clone(),
            authorization: project.authorization.clone(),
            base_url: project.base_url.clone().unwrap_or_else(|| self.base_url.clone()),
            only: None,
            ..self.clone()
        }
    }

    /// The name a project destination gets: `bloomreach:<token>`, plus `@<host>` when its base
    /// URL is not the default one (two tenants may share a token's form, never a name).
    pub(crate) fn project_name(token: &str, base_url: &str) -> String {
        if base_url == DEFAULT_BASE_URL {
            return format!("bloomreach:{token}");
        }
        let host = reqwest::Url::parse(base_url)
            .ok()
            .and_then(|u| {
                u.host_str().map(|h| match u.port() {
                    Some(p) => format!("{h}:{p}"),
                    None => h.to_owned(),
                })
            })
            .unwrap_or_default();
        format!("bloomreach:{token}@{host}")
    }
}

impl Destination for Bloomreach {
    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("bloomreach")
    }

    fn accepts_event_type(&self, event_type: EventType) -> bool {
        self.only.as_ref().is_none_or(|only| only.contains(&event_type))
    }

    fn batch_limits(&self) -> BatchLimits {
        match self.effective_sending() {
            // Requests go one at a time and the rest would be encoded again: hand over one event.
            Sending::PerEvent => BatchLimits::new(1, 1024 * 1024),
            Sending::Batch => BatchLimits::new(MAX_BATCH_COMMANDS, 4 * 1024 * 1024),
        }
    }

    /// Ordered per identity: customer updates and events apply in arrival order.
    fn identity_order(&self) -> bool {
        true
    }

    /// Ordered: batch commands run in any order, so what must stay in order goes in separate
    /// requests, and those go one at a time.
    fn delivery(&self) -> Delivery {
        Delivery::Ordered
    }

    fn base_url(&self) -> Option<&str> {
        Some(&self.base_url)
    }

    fn check_config(&self) -> Result<(), String> {
        wire::check_project_token(&self.token)?;
        wire::check_application_id(&self.application_id)?;
        self.authorization.check()?;
        parse_http_url("base URL", &self.base_url)?;
        if self.hard_id.trim().is_empty() || self.hard_id == wire::COOKIE {
            return Err(format!("hard id name {:?} must be a hard id such as `registered`", self.hard_id));
        }
        if let Some(d) = &self.device_id
            && d.trim().is_empty()
        {
            return Err("device id is empty".into());
        }
        Ok(())
    }

    fn validate(&self, event: &Event) -> Result<(), LimitError> {
        if event.kind != EventKind::Identify {
            return Ok(());
        }
        // The customer update limits ("update customer properties"): each value, then the whole.
        let mut total = 0;
        for (key, value) in event.properties.iter() {
            let len = serde_json::to_vec(value).map_or(0, |v| v.len());
            if len >= MAX_CUSTOMER_PROPERTY_BYTES {
                return Err(LimitError::new(format!(
                    "customer property `{key}` is {len} bytes of JSON; Bloomreach's limit is under {MAX_CUSTOMER_PROPERTY_BYTES}"
                )));
            }
            total += key.len() + len + 4;
        }
        if total >= MAX_CUSTOMER_UPDATE_BYTES {
            return Err(LimitError::new(format!(
                "customer update is about {total} bytes of JSON; Bloomreach's limit is under {MAX_CUSTOMER_UPDATE_BYTES}"
            )));
        }
        Ok(())
    }

    fn encode(&self, events: &[EventRecord], _: &DestinationState, _: Timestamp) -> Encoded {
        encode::encode(self, events)
    }

    fn classify(&self, request: &Request, response: &Response) -> Classified {
        classify::classify(request, response)
    }

    fn classify_error(&self, _: &Request, _: &TransportError) -> super::Outcome {
        super::Outcome::Retry
    }
}

//! The Customer.io destination: people, events, page and screen views, push devices, deletes
//! and suppression through the Track API, batched through `POST /api/v2/batch` by default or
//! one v1 call per event.
//!
//! This file holds the configuration and the limits checked at the call; `ops` maps events to
//! Customer.io operations, `encode` builds the requests and `classify` reads the answers.
//!
//! # Wire table
//!
//! | trackway call | v1 request (`Api::V1`) | v2 batch item (default) |
//! |---|---|---|
//! | `identify(id, props)` | `PUT /api/v1/customers/{id}`, the props as attributes, `_timestamp` | `{"type":"person","action":"identify","identifiers":{"id"},"attributes","timestamp"}` |
//! | `track(id, name, props)` | `POST /api/v1/customers/{id}/events` `{name, data, timestamp, id}` | `action: "event"`, `name`, `id`, `timestamp`, `attributes` (the data) |
//! | `page(id, Page)` | the same with `type: "page"`, `name` = the URL, `title`/`referrer` in `data` | `action: "page"` |
//! | `screen(id, name, props)` | the same with `type: "screen"` | `action: "screen"` |
//! | an anonymous event (`.anonymous_id(..)`, app mode before `identify`) | `POST /api/v1/events` with `anonymous_id` | v1 as well |
//! | a push token (app mode) / `registerDevice` (OpenCDP) | `PUT /api/v1/customers/{id}/devices` `{"device":{"id":<token>,"platform","last_used","attributes"}}` | v1 as well |
//! | an invalidated push token | `DELETE /api/v1/customers/{id}/devices/{token}` | v1 as well |
//! | [`Client::erase_user`](crate::Client::erase_user) | `DELETE /api/v1/customers/{id}` | `action: "delete"` |
//! | [`Direct::suppress`](crate::direct::Direct::suppress) / `unsuppress` | `POST /api/v1/customers/{id}/suppress` / `unsuppress` | `action: "suppress"` / `"unsuppress"` |
//! | a [`MERGE_EVENT`] (the relay's Segment `alias`) | `POST /api/v1/merge_customers` `{"primary":{"id"},"secondary":{"id"}}` | `action: "merge"`, `primary`, `secondary` |
//!
//! - Every event carries `timestamp`, its time in Unix seconds (taken at enqueue; an import's
//!   own), and `id`, the event's UUIDv7 message id written as a ULID (the same 128 bits, so the
//!   same millisecond time): a retry, or a replay after a crash, is dropped by Customer.io as a
//!   duplicate.
//! - Identify: `created_at` given as a timestamp (RFC 3339 text, as `Value::from(Timestamp)`
//!   makes) is sent in Unix seconds; in app mode the anonymous id goes along as `anonymous_id`,
//!   so Customer.io merges the visitor's anonymous events into the person.
//! - Path ids are escaped as `encodeURIComponent` does.
//! - A batch holds at most 500 KB, each operation at most 32 KB; an operation over 32 KB (within
//!   the v1 limits) goes as its own v1 call.
//!
//! # Not sent
//!
//! - Sessions and installation events (Customer.io keeps no sessions); payments are custom
//!   events (`payment`).
//! - A `web` device (OpenCDP's third platform) and Huawei push tokens: Customer.io's platforms
//!   are `ios` and `android`. They are counted as
//!   [`DestinationStats::skipped`](crate::DestinationStats::skipped) and warned once.
//! - An event of a user without any id is dead-lettered (Customer.io needs a person or an
//!   anonymous id).
//!
//! # Answers
//!
//! | answer | events |
//! |---|---|
//! | 2xx (v1), 200 on a batch | delivered |
//! | 207 on a batch | the operations named in `errors[].batch_index` dead-lettered with their `reason`, `field` and `message`; the others delivered |
//! | 400 (and other 4xx but those below) | dead-lettered; the reason is built from `meta.errors` / `meta.error` |
//! | 401, 403, 404 | **held** (misconfigured: wrong site id, API key, or region), never dead-lettered |
//! | 408, 429, 5xx (522 and 524 too) | retried with backoff; a `Retry-After` (seconds or a date) is waited for |
//! | 301/302/307/308 | followed; `Authorization` goes along only to `*.customer.io` |
//!
//! # Limits
//!
//! Checked at the call, before anything is queued (spec §2.3), as
//! [`Error::DestinationLimit`](crate::Error::DestinationLimit): person id ≤ 150 bytes, attribute
//! name ≤ 150 bytes, attribute value ≤ 1000 bytes (a string's bytes, else its JSON), ≤ 300
//! attributes per identify, event name ≤ 100 bytes (a page view's URL is its name), event data ≤
//! 100 000 bytes (its JSON).

use std::fmt;
use std::sync::atomic::AtomicBool;

use base64::Engine as _;
use http::HeaderValue;
use trackway_wire::customerio::{
    ATTRIBUTE_NAME_MAX, ATTRIBUTE_VALUE_MAX, ATTRIBUTES_MAX, EVENT_DATA_MAX, EVENT_NAME_MAX, ID_MAX,
};
use trackway_wire::{Event, EventKind, MessageId, Timestamp, Value};

use super::{
    AppEvent, BatchLimits, Classified, Delivery, Destination, DestinationState, Encoded, EventRecord, LimitError,
    Request, Response, parse_http_url,
};

mod classify;
mod encode;
mod handle;
mod ops;
#[cfg(test)]
mod tests;

pub use ops::{Device, DevicePlatform, Mapped, Operation, Person};

/// Customer.io's US Track API host.
pub const US_URL: &str = "https://track.customer.io";
/// Customer.io's EU Track API host.
pub const EU_URL: &str = "https://track-eu.customer.io";

/// Event names starting with this are Customer.io commands queued by trackway itself
/// (suppress, unsuppress); a call that tracks such a name is refused.
pub const COMMAND_PREFIX: &str = "$customerio:";
pub(crate) const SUPPRESS_EVENT: &str = "$customerio:suppress";
pub(crate) const UNSUPPRESS_EVENT: &str = "$customerio:unsuppress";
/// A Customer.io merge: the event's person (user id) is the primary, its `secondary_id`
/// property the person merged into it (`POST /api/v1/merge_customers`, v2 `action: "merge"`).
/// The relay queues it for a Segment `alias` (previousId → userId) where `merge_aliases` is on;
/// the SDK has no call that tracks it.
pub const MERGE_EVENT: &str = "$customerio:merge";

/// The event name OpenCDP's `registerDevice` events carry unless
/// [`CustomerIo::opencdp_device_event`] says another.
/// (`Client::register_device`'s events, [`DEVICE_EVENT`](crate::DEVICE_EVENT)).
pub const OPENCDP_DEVICE_EVENT: &str = crate::DEVICE_EVENT;

/// A Customer.io account's region: which host its data lives on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Region {
    /// `track.customer.io` (the default).
    #[default]
    Us,
    /// `track-eu.customer.io`. An EU account sending to the US host is redirected (through US
    /// servers); a US account sending to the EU host fails.
    Eu,
}

impl std::str::FromStr for Region {
    type Err = String;

    /// `us` or `eu`, in any case (OpenCDP's SDK takes only lowercase `eu` and sends `"EU"` to
    /// the US host without a word).
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "us" => Ok(Region::Us),
            "eu" => Ok(Region::Eu),
            _ => Err(format!("Customer.io region {s:?} is not \"us\" or \"eu\"")),
        }
    }
}

/// Which Track API calls carry the events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Api {
    /// `POST /api/v2/batch`, many operations per request (the default); what v2 does not
    /// document (anonymous events, devices) goes through v1.
    #[default]
    V2Batch,
    /// One v1 call per event.
    V1,
}

/// Sends people, events, devices, deletes and suppressions to Customer.io's Track API.
///
/// ```
/// use trackway::destination::customerio::{Api, CustomerIo, Region};
///
/// let cio = CustomerIo::new("site-id", "api-key").region(Region::Eu);
/// let v1 = CustomerIo::new("site-id", "api-key").api(Api::V1).name("cio-v1");
/// // From plain settings (e.g. a configuration file):
/// let from_settings = CustomerIo::new("site-id", "api-key").region("EU".parse()?);
/// assert!(!format!("{cio:?}").contains("api-key"), "the key is never shown");
/// # Ok::<(), String>(())
/// ```
pub struct CustomerIo {
    name: String,
    site_id: String,
    /// `Basic base64(site:key)`, marked sensitive (redacted in any Debug of a request).
    auth: HeaderValue,
    /// Empty key or site: `check_config` says so (the header is built anyway).
    credentials_given: bool,
    base_url: String,
    api: Api,
    limits: BatchLimits,
    opencdp_devices: Option<String>,
    warned_skipped: AtomicBool,
}

impl fmt::Debug for CustomerIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CustomerIo")
            .field("name", &self.name)
            .field("site_id", &self.site_id)
            .field("api_key", &"<redacted>")
            .field("base_url", &self.base_url)
            .field("api", &self.api)
            .finish_non_exhaustive()
    }
}

impl CustomerIo {
    /// A destination named `customerio` for the workspace `site_id` with its Track API key, on
    /// the US host, batching through `/api/v2/batch`.
    pub fn new(site_id: impl Into<String>, api_key: impl AsRef<str>) -> Self {
        let site_id: String = site_id.into();
        let api_key = api_key.as_ref();
        let credentials_given = !site_id.trim().is_empty() && !api_key.trim().is_empty();
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{site_id}:{api_key}"));
        let mut auth =
            HeaderValue::from_str(&format!("Basic {encoded}")).unwrap_or_else(|_| HeaderValue::from_static("Basic"));
        auth.set_sensitive(true);
        CustomerIo {
            name: "customerio".to_owned(),
            site_id,
            auth,
            credentials_given,
            base_url: US_URL.to_owned(),
            api: Api::default(),
            limits: BatchLimits::new(100, 512 * 1024),
            opencdp_devices: Some(OPENCDP_DEVICE_EVENT.to_owned()),
            warned_skipped: AtomicBool::new(false),
        }
    }

    /// Renames the destination (names must be unique within a client).
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The account's region: US (default) or EU.
    #[must_use]
    pub fn region(mut self, region: Region) -> Self {
        self.base_url = match region {
            Region::Us => US_URL,
            Region::Eu => EU_URL,
        }
        .to_owned();
        self
    }

    /// A Track API host of your own (a proxy, the local collector): `https://host[:port]`, with
    /// or without a trailing `/api/v1`. Replaces the region's host.
    #[must_use]
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        let url: String = url.into();
        let trimmed = url.trim_end_matches('/');
        let root = trimmed.strip_suffix("/api/v1").or_else(|| trimmed.strip_suffix("/api/v2")).unwrap_or(trimmed);
        self.base_url = root.to_owned();
        self
    }

    /// Which calls carry the events: `/api/v2/batch` (default) or one v1 call each.
    #[must_use]
    pub fn api(mut self, api: Api) -> Self {
        self.api = api;
        self
    }

    /// Most events per request (default 100; a batch also stays under 500 KB).
    #[must_use]
    pub fn batch_size(mut self, events: usize) -> Self {
        self.limits.max_events = events.max(1);
        self
    }

    /// The event name of OpenCDP's `registerDevice` events, sent as devices (see
    /// [`Device::from_opencdp`]); `None` sends such events as custom events. Default:
    /// [`OPENCDP_DEVICE_EVENT`].
    #[must_use]
    pub fn opencdp_device_event(mut self, name: Option<&str>) -> Self {
        self.opencdp_devices = name.map(str::to_owned);
        self
    }

    /// What `event` (with message id `id`) becomes at Customer.io.
    ///
    /// # Errors
    /// Why it cannot be sent (no person, an invalid device).
    pub fn operation(&self, event: &Event, id: MessageId) -> Result<Mapped, String> {
        ops::operation(event, id, self.opencdp_devices.as_deref())
    }

    /// The Track API host in use (without `/api/v1`).
    pub fn host_url(&self) -> &str {
        &self.base_url
    }

    /// `base_url` + `path`.
    fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }
}

fn fail<T>(message: String) -> Result<T, LimitError> {
    Err(LimitError::new(message))
}

/// The size a value counts for against the attribute value limit: a string's bytes, else its JSON.
fn value_bytes(value: &Value) -> usize {
    match value {
        Value::String(s) => s.len(),
        other => serde_json::to_vec(other).map_or(0, |v| v.len()),
    }
}

impl Destination for CustomerIo {
    fn name(&self) -> &str {
        &self.name
    }

    fn accepts(&self, kind: EventKind) -> bool {
        let _ = kind;
        true
    }

    /// Customer.io keeps no sessions and has no installation event; push tokens become devices
    /// and payments custom events.
    fn accepts_app_event(&self, event: AppEvent) -> bool {
        matches!(event, AppEvent::PushToken | AppEvent::Payment)
    }

    fn erases_people(&self) -> bool {
        true
    }

    fn batch_limits(&self) -> BatchLimits {
        self.limits
    }

    /// Ordered per identity: a `track` for a person not yet identified creates a bare profile.
    fn identity_order(&self) -> bool {
        true
    }

    fn delivery(&self) -> Delivery {
        Delivery::Parallel { max_in_flight: 4 }
    }

    fn base_url(&self) -> Option<&str> {
        Some(&self.base_url)
    }

    fn trusted_redirect_suffixes(&self) -> Vec<String> {
        vec![".customer.io".to_owned()]
    }

    fn check_config(&self) -> Result<(), String> {
        if !self.credentials_given {
            return Err("the site id and API key must not be empty (Customer.io: Settings → API Credentials)".into());
        }
        if self.site_id.contains(':') {
            return Err("the site id cannot contain `:` (it is the user part of HTTP Basic auth)".into());
        }
        parse_http_url("base URL", &self.base_url).map(|_| ())
    }

    fn validate(&self, event: &Event) -> Result<(), LimitError> {
        for (what, id) in
            [("person id", event.identity.user_id.as_deref()), ("anonymous id", event.identity.anonymous_id.as_deref())]
        {
            if let Some(id) = id
                && id.len() > ID_MAX
            {
                return fail(format!("{what} is {} bytes; Customer.io's limit is {ID_MAX}", id.len()));
            }
        }
        match event.kind {
            EventKind::Identify => {
                if event.properties.len() > ATTRIBUTES_MAX {
                    return fail(format!(
                        "identify has {} attributes; Customer.io takes at most {ATTRIBUTES_MAX} per call",
                        event.properties.len()
                    ));
                }
                for (key, value) in event.properties.iter() {
                    if key.len() > ATTRIBUTE_NAME_MAX {
                        let start: String = key.chars().take(40).collect();
                        return fail(format!(
                            "attribute name `{start}…` is {} bytes; Customer.io's limit is {ATTRIBUTE_NAME_MAX}",
                            key.len()
                        ));
                    }
                    let n = value_bytes(value);
                    if n > ATTRIBUTE_VALUE_MAX {
                        return fail(format!(
                            "value for attribute '{key}' is {n} bytes; Customer.io's limit is {ATTRIBUTE_VALUE_MAX}"
                        ));
                    }
                }
                Ok(())
            }
            kind => {
                let (what, name) = match kind {
                    EventKind::Page => {
                        ("page URL (the page event's name)", event.page.as_ref().map_or("", |p| p.url.as_str()))
                    }
                    _ => ("event name", event.name.as_deref().unwrap_or_default()),
                };
                if kind == EventKind::Track && (name.starts_with(COMMAND_PREFIX) || name == super::ERASE_USER_EVENT) {
                    return fail(format!(
                        "event name {name:?} is reserved for trackway's Customer.io commands (use erase_user, \
                         suppress, unsuppress)"
                    ));
                }
                if name.len() > EVENT_NAME_MAX {
                    return fail(format!("{what} is {} bytes; Customer.io's limit is {EVENT_NAME_MAX}", name.len()));
                }
                let data = serde_json::to_vec(&event.properties).map_or(0, |v| v.len());
                if data > EVENT_DATA_MAX {
                    return fail(format!(
                        "event data is {data} bytes of JSON; Customer.io's limit is {EVENT_DATA_MAX}"
                    ));
                }
                Ok(())
            }
        }
    }

    fn encode(&self, events: &[EventRecord], state: &DestinationState, now: Timestamp) -> Encoded {
        let _ = (state, now);
        encode::encode(self, events)
    }

    fn classify(&self, request: &Request, response: &Response) -> Classified {
        classify::classify(request, response)
    }
}

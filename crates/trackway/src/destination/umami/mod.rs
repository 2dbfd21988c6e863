//! The Umami destination: page views, custom events and `identify` for Umami v2.x and v3.x
//! servers (self-hosted or Umami Cloud), byte-compatible with what the official clients send.
//!
//! The module is split by concern: this file holds the configuration and its checks, `encode`
//! turns stored events into `/api/batch` or `/api/send` requests, and `classify` reads the
//! answers (per-item `details`, cache tokens, the fallback to `/api/send`).
//!
//! # Mapping
//!
//! | trackway call | Umami payload |
//! |---|---|
//! | `track(name, props)` | `type: "event"`, `name`, `data` |
//! | `page(Page::new(url).title(..).referrer(..))` | `type: "event"` without `name` (a page view): `url` (as a path), `title`, `referrer`, `data` |
//! | `screen(name, props)` | a page view of the path `/<name>` (percent-encoded) titled `<name>`: apps have no URLs, and a `name` would make it a custom event, not a view |
//! | `identify(user, props)` | `type: "identify"`, `id`, `data` (always an object: servers before v2.19 require it) |
//!
//! Two reserved properties are lifted out of `data`: `$tag` (a string, sent as `tag`) and `$url`
//! (the path a custom event or identify happened on). Without a URL the path `/` is sent.
//!
//! A per-event user agent (server mode's `.user_agent(..)`) that Umami's bot check would discard
//! is dead-lettered at send time with that reason rather than sent to be dropped in silence.
//!
//! The distinct `id` is the event's primary user id (`identity.user_id`): set on every event once
//! the user is identified, omitted while anonymous. Sending the anonymous id instead would make
//! each install one endless Umami session that `identify` then splits.
//!
//! # Cache tokens
//!
//! Umami answers each hit with an opaque `x-umami-cache` token that the next hit of the same
//! visitor should carry. Tokens are kept in the destination's stored state, one per (website,
//! distinct id, IP, user agent), and picked when a request is encoded, so an `identify` between
//! queued events starts a fresh token for the events after it. A request (even a batch) never
//! mixes two identities. At most [`Umami::cache_capacity`] tokens are kept (1 000 by default,
//! least recently used evicted), which bounds the state of a server that forwards many visitors.
//!
//! # Old servers
//!
//! Batches go to `POST /api/batch` (v3.0.2+). A 404 or 405 there, or a 500 there while a probe
//! through `/api/send` succeeds, means the server has no working batch endpoint: the same events go
//! one by one through `/api/send` from then on, and that choice is stored. The destination is
//! ordered, so these requests go out one at a time, each encoded after the previous answer and
//! carrying the token it handed out.

use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use trackway_wire::umami::{
    HOSTNAME_MAX, ID_MAX, LANGUAGE_MAX, NAME_MAX, SCREEN_MAX, TAG_MAX, TEXT_MAX, is_bot_user_agent, is_screen, is_uuid,
    utf16_len,
};
use trackway_wire::{Event, EventKind, Properties, Timestamp, Value};

use super::{
    AppEvent, BatchLimits, Classified, Delivery, Destination, DestinationState, Encoded, EventRecord, LimitError,
    Request, Response, parse_http_url,
};

mod classify;
mod encode;
#[cfg(test)]
mod tests;

/// The property lifted out of `data` into Umami's `tag`.
pub const TAG_PROPERTY: &str = "$tag";
/// The property lifted out of `data` into Umami's `url` for custom events and identify.
pub const URL_PROPERTY: &str = "$url";

/// Umami Cloud, the default base URL (as in umami-kotlin).
const DEFAULT_BASE_URL: &str = "https://cloud.umami.is";

/// Sends page views, custom events and `identify` to an Umami server.
///
/// ```
/// use std::time::Duration;
/// use trackway::destination::Umami;
///
/// let umami = Umami::new("b59e9c65-ae32-47f1-8400-119fcf4861c4")
///     .base_url("https://analytics.example.com")
///     .hostname("myapp.example")
///     .language("en-US")
///     .screen("1920x1080")
///     .late_after(Duration::from_secs(120));
/// ```
#[derive(Debug)]
pub struct Umami {
    name: String,
    /// As given, for the error message; `website` is its lowercase form (the server hashes the
    /// literal string into the session id, so one case everywhere keeps one session).
    website_given: String,
    website: String,
    base_url: String,
    hostname: Option<String>,
    language: Option<String>,
    screen: Option<String>,
    ip: Option<String>,
    user_agent: Option<String>,
    late_after: Duration,
    limits: BatchLimits,
    cache_capacity: usize,
    /// Last use of each cache-token key, for the LRU bound (see `classify`).
    lru: Mutex<classify::Lru>,
    warned_beep: AtomicBool,
    warned_truncated: AtomicBool,
}

impl Umami {
    /// A destination named `umami` for the website `website_id` (a UUID, sent lowercase) on
    /// Umami Cloud; batches of up to 100 events.
    pub fn new(website_id: impl Into<String>) -> Self {
        let website_given: String = website_id.into();
        Umami {
            name: "umami".to_owned(),
            website: website_given.trim().to_ascii_lowercase(),
            website_given,
            base_url: DEFAULT_BASE_URL.to_owned(),
            hostname: None,
            language: None,
            screen: None,
            ip: None,
            user_agent: None,
            late_after: Duration::from_secs(60),
            limits: BatchLimits::new(100, 512 * 1024),
            cache_capacity: 1000,
            lru: Mutex::new(classify::Lru::default()),
            warned_beep: AtomicBool::new(false),
            warned_truncated: AtomicBool::new(false),
        }
    }

    /// Renames the destination (names must be unique within a client).
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The server's base URL, e.g. `https://analytics.example.com` or, behind a `BASE_PATH`,
    /// `https://example.com/umami`. Default: `https://cloud.umami.is`.
    #[must_use]
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = url.into();
        self
    }

    /// The `hostname` of every hit (at most 100 UTF-16 units), e.g. `myapp.example`.
    #[must_use]
    pub fn hostname(mut self, hostname: impl Into<String>) -> Self {
        self.hostname = Some(hostname.into());
        self
    }

    /// The `language` of every hit (at most 35 UTF-16 units), e.g. `en-US`. Default: the
    /// client's locale, when it has one.
    #[must_use]
    pub fn language(mut self, language: impl Into<String>) -> Self {
        self.language = Some(language.into());
        self
    }

    /// The `screen` of every hit, `WxH` (e.g. `1920x1080`, at most 11 characters).
    #[must_use]
    pub fn screen(mut self, screen: impl Into<String>) -> Self {
        self.screen = Some(screen.into());
        self
    }

    /// The IP address sent as `ip` when an event carries none (server mode forwards each
    /// visitor's own with `.ip(..)` on the call).
    #[must_use]
    pub fn ip(mut self, ip: impl Into<String>) -> Self {
        self.ip = Some(ip.into());
        self
    }

    /// The `User-Agent` header when an event carries none. It must pass Umami's bot check (see
    /// [`is_bot_user_agent`]), or `build()` fails:
    /// `/api/batch` drops a bot's events without saying so. Default:
    /// `Mozilla/5.0 (<OS>; <arch>) <app>/<version>`, with the client's `app(..)` name and version
    /// (else `trackway/<version>`).
    #[must_use]
    pub fn user_agent(mut self, ua: impl Into<String>) -> Self {
        self.user_agent = Some(ua.into());
        self
    }

    /// Events older than this when they are sent carry their own `timestamp` (integer seconds);
    /// newer ones carry none, so the server's visit logic works as for live traffic. Imported
    /// events always carry theirs. Default: 60 s.
    #[must_use]
    pub fn late_after(mut self, age: Duration) -> Self {
        self.late_after = age;
        self
    }

    /// Most events per request (default 100).
    #[must_use]
    pub fn batch_size(mut self, events: usize) -> Self {
        self.limits.max_events = events.max(1);
        self
    }

    /// Most cache tokens kept, one per identity (default 1 000); the least recently used goes.
    #[must_use]
    pub fn cache_capacity(mut self, identities: usize) -> Self {
        self.cache_capacity = identities.max(1);
        self
    }

    /// `base_url` + `path`, without a doubled slash.
    fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.base_url.trim_end_matches('/'))
    }
}

/// Checks one length counted in UTF-16 units.
fn check_len(what: &str, value: &str, max: usize) -> Result<(), String> {
    let len = utf16_len(value);
    if len > max { Err(format!("{what} is {len} UTF-16 units; Umami's limit is {max}")) } else { Ok(()) }
}

impl Destination for Umami {
    fn name(&self) -> &str {
        &self.name
    }

    fn accepts(&self, kind: EventKind) -> bool {
        matches!(kind, EventKind::Track | EventKind::Page | EventKind::Screen | EventKind::Identify)
    }

    /// Umami keeps its own sessions (from the visitor hash), and a push token is no analytics
    /// data: only `installation` and `payment` go there, as custom events.
    fn accepts_app_event(&self, event: AppEvent) -> bool {
        matches!(event, AppEvent::Installation | AppEvent::Payment)
    }

    fn batch_limits(&self) -> BatchLimits {
        self.limits
    }

    /// Ordered: each request carries the cache token of the previous answer.
    fn delivery(&self) -> Delivery {
        Delivery::Ordered
    }

    fn check_config(&self) -> Result<(), String> {
        if !is_uuid(&self.website) {
            return Err(format!(
                "website id {:?} is not a UUID (copy it from Umami's website settings)",
                self.website_given
            ));
        }
        parse_http_url("base URL", &self.base_url)?;
        if let Some(h) = &self.hostname {
            if h.trim().is_empty() {
                return Err("hostname is empty".into());
            }
            check_len("hostname", h, HOSTNAME_MAX)?;
        }
        if let Some(l) = &self.language {
            if l.trim().is_empty() {
                return Err("language is empty".into());
            }
            check_len("language", l, LANGUAGE_MAX)?;
        }
        if let Some(s) = &self.screen {
            check_len("screen", s, SCREEN_MAX)?;
            if !is_screen(s) {
                return Err(format!("screen {s:?} must have the form WxH, e.g. 1920x1080"));
            }
        }
        if let Some(ip) = &self.ip
            && ip.parse::<std::net::IpAddr>().is_err()
        {
            return Err(format!("ip {ip:?} is not an IPv4 or IPv6 address"));
        }
        if let Some(ua) = &self.user_agent
            && is_bot_user_agent(ua)
        {
            return Err(format!(
                "user agent {ua:?} would be discarded by Umami's bot check (on /api/batch without a word); \
                 use the form \"Mozilla/5.0 (<OS>; <arch>) <app>/<version>\", or leave the default"
            ));
        }
        Ok(())
    }

    fn validate(&self, event: &Event) -> Result<(), LimitError> {
        let fail = |m: String| Err(LimitError::new(m));
        if event.kind == EventKind::Track
            && let Some(name) = &event.name
            && let Err(m) = check_len("event name", name, NAME_MAX)
        {
            return fail(m);
        }
        // The distinct id is checked where it is given: at identify, and on every server-mode
        // call (which names its user; app mode marks its identity with the primary id's name).
        // An app-mode id stored before Umami was added is dead-lettered at send time instead of
        // failing every call for every destination.
        let given_here = event.kind == EventKind::Identify || event.identity.primary.is_none();
        if given_here
            && let Some(id) = &event.identity.user_id
            && let Err(m) = check_len("user id (Umami's distinct id)", id, ID_MAX)
        {
            return fail(m);
        }
        match event.properties.get(TAG_PROPERTY) {
            None => {}
            Some(Value::String(tag)) => {
                if let Err(m) = check_len("tag ($tag)", tag, TAG_MAX) {
                    return fail(m);
                }
            }
            Some(other) => return fail(format!("$tag must be a string, not {}", other.type_name())),
        }
        match event.properties.get(URL_PROPERTY) {
            None | Some(Value::String(_)) => {}
            Some(other) => return fail(format!("$url must be a string, not {}", other.type_name())),
        }
        check_data(&event.properties, &mut String::new()).or_else(fail)
    }

    fn encode(&self, events: &[EventRecord], state: &DestinationState, now: Timestamp) -> Encoded {
        encode::encode(self, events, state, now)
    }

    fn classify(&self, request: &Request, response: &Response) -> Classified {
        classify::classify(self, request, response)
    }
}

/// Checks what the server cannot store: flattened data keys over 500 units (Postgres
/// `varchar(500)`) and numbers beyond `decimal(19,4)` (both a 500 that would be retried forever).
fn check_data(props: &Properties, prefix: &mut String) -> Result<(), String> {
    for (key, value) in props.iter() {
        if prefix.is_empty() && (key == TAG_PROPERTY || key == URL_PROPERTY) {
            continue;
        }
        let len = prefix.len();
        if !prefix.is_empty() {
            prefix.push('.');
        }
        prefix.push_str(key);
        let keylen = utf16_len(prefix);
        if keylen > TEXT_MAX {
            let start: String = prefix.chars().take(40).collect();
            return Err(format!("data key `{start}…` is {keylen} UTF-16 units; Umami's limit is {TEXT_MAX}"));
        }
        check_value(value, prefix)?;
        prefix.truncate(len);
    }
    Ok(())
}

fn check_value(value: &Value, path: &mut String) -> Result<(), String> {
    // decimal(19,4): 15 digits before the point.
    const MAX_NUMBER: f64 = 1e15;
    let too_big = match value {
        Value::Int(i) => i.unsigned_abs() >= 1_000_000_000_000_000,
        Value::UInt(u) => *u >= 1_000_000_000_000_000,
        Value::Float(f) => f.abs() >= MAX_NUMBER,
        Value::Object(inner) => return check_data(inner, path),
        _ => false,
    };
    if too_big {
        return Err(format!("data `{path}` is a number beyond Umami's decimal(19,4) (at most 15 integer digits)"));
    }
    Ok(())
}

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
//! Two reserved properties are lifted out of `data`: `$tag` (a string, sent as `tag`; set it
//! with `.tag(..)` on [`Track`](crate::Track), [`Page`](crate::Page) or [`Screen`](crate::Screen))
//! and `$url` (the path a custom event or identify happened on; `.url(..)` on `Track` or
//! [`Identify`](crate::Identify)). Without a URL the path `/` is sent. Every other top-level
//! property whose name starts with `$` is an error at the call (a misspelled `$tagg` would
//! otherwise become ordinary data without a word), and so is a `$tag` or `$url` that is not a
//! string.
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
//! # Server releases
//!
//! Older Umami servers answer 200 to fields they do not know and drop them without a word, so
//! an imported or late event lands at delivery time. What each release stores:
//!
//! | release | `/api/batch` | `tag` | `timestamp` | distinct `id` | `browser`/`os`/`device` | unknown website |
//! |---|---|---|---|---|---|---|
//! | 2.10 | 404 | dropped | dropped | dropped | dropped | 403 (before 2024-05), else 404 |
//! | 2.11 – 2.16 | 404 | stored | dropped | dropped | dropped | 404 (≤ 2.15), 400 (2.16) |
//! | 2.17 | yes, may answer 500; no `cache` | stored | stored | dropped | dropped | 400 |
//! | 2.18 – 3.0.1 | yes, may answer 500; no `cache` | stored | stored | stored | dropped | 400 |
//! | 3.0.2 and newer | yes, with `cache` | stored | stored | stored | stored | 400 |
//!
//! The destination learns what it can from the answers, and [`Umami::server_version`] tells it
//! the rest:
//! - A 404 (or 405) on `/api/batch` followed by a success on `/api/send` at the same base URL
//!   means a server older than 2.17 (a wrong base URL answers 404 on both: see
//!   [Answers](#answers)). A 500 on `/api/batch` while `/api/send` works means a batch route
//!   that fails (2.17 to 3.0.1). Either way the events go one by one through `/api/send`, one at
//!   a time, in order, each carrying the token the previous answer handed out.
//! - A batch answer with a `cache` token means 3.0.2 or newer; one without, 2.17 to 3.0.1.
//!
//! What was learned is stored per base URL and website (a fixed URL or another website starts
//! afresh) and tested again after [`REPROBE_AFTER`] (24 h). The request that found the batch
//! endpoint missing counts as a probe in [`DestinationStats::probes`](crate::DestinationStats::probes),
//! not as a failed request or retried events.
//!
//! Fields are still sent to a server known to drop them (an upgrade stores them at once), and
//! delivered events are counted: timestamps in
//! [`DestinationStats::dropped_timestamps`](crate::DestinationStats::dropped_timestamps), `tag`
//! and `id` in [`DestinationStats::dropped_fields`](crate::DestinationStats::dropped_fields).
//! The first time, a warning says so: "imports land at delivery time on this server". Only what
//! is known is counted: without a configured version, a server older than 2.17 counts its
//! dropped timestamps and ids, not its tags (2.11 is not visible in its answers).
//!
//! # Answers
//!
//! What each answer means. "Misconfigured" is [`Outcome::Misconfigured`](crate::destination::Outcome::Misconfigured):
//! the events are **held** (pending, never dead-lettered for it), the destination shows as
//! misconfigured in [`DestinationStats::health`](crate::DestinationStats::health) with the answer,
//! one error line names it, and it is probed with one request at a growing interval (5 s doubling
//! to 5 min) until an answer works; events still expire by `max_event_age`.
//!
//! | answer | meaning | events |
//! |---|---|---|
//! | 2xx on `/api/send`, `{"cache":…}` or a text token | delivered | delivered, token kept |
//! | 200 `{"beep":"boop"}` | the bot check discarded it | dead-lettered, one warning |
//! | 200 on `/api/batch` | per item: delivered, or its `details` entry decides (rows below) | per item |
//! | 404 or 405 on `/api/batch` | no batch route (before 2.17), or a wrong base URL | the same events go through `/api/send` at once (a probe) |
//! | 500 on `/api/batch` | a broken batch route (2.17 to 3.0.1), or a failing server | through `/api/send` at once (a probe) |
//! | 404 on `/api/send` | every release has it: the base URL is wrong (or, on ≤ 2.15, the website id is unknown) | misconfigured |
//! | "Website not found." in any status, or in a `details` entry | the website id is unknown (2.16 and newer: 400) | misconfigured |
//! | 403, the request's events carry their own `ip` (server mode's `.ip(..)`) | the server's `IGNORE_IP` lists that visitor | dead-lettered |
//! | 403 otherwise (status or `details`) | an unknown website before 2024-05 (2.10 answers 403 `Forbidden`), or `IGNORE_IP` lists this sender or the configured [`Umami::ip`] | misconfigured |
//! | 401 | a proxy in front wants credentials | misconfigured |
//! | 400 (status or `details`), other 4xx | that event's content | dead-lettered |
//! | 5xx (status or `details`), 408 | the server failed | retried with backoff |
//! | 429, 503 with `Retry-After` | the server asks to wait | retried after the wait |
//!
//! While misconfigured after a `/api/batch` probe, the probes go to `/api/send` alone (one
//! request each); the first answer that works there teaches nothing of the release (the batch
//! 404 may have been the same mistake), so the next events try `/api/batch` again. A fixed base
//! URL or website id starts afresh (what is learned is keyed to both), so a server that has
//! `/api/batch` gets the held events through it.
//!
//! A 403 for an event with its own `ip` on a 2.10 server whose website id is wrong cannot be told
//! from `IGNORE_IP` and is dead-lettered.
//!
//! # User agent
//!
//! Umami reads the browser and OS from the user agent (`detect-browser`) and discards bots
//! (`isbot`). The default, `Mozilla/5.0 (<OS>; <arch>) <app>/<version>`, passes the bot check but
//! names no browser that `detect-browser` knows, so a server would record none: until the
//! server is known to be 3.0.2 or newer, the default ends in ` Chrome/0` (a browser rule
//! `detect-browser` matches; version 0 says it is none). With the default, every payload also
//! carries `browser` (the app's name), `os` (Umami's name for it) and, when a `screen` is
//! configured, `device`: 3.0.2 and newer store those instead of parsing the user agent (older
//! releases ignore them, and they are not counted as dropped). A configured or per-event user
//! agent is sent as it is, without them.

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
mod server;
#[cfg(test)]
mod tests;

pub use server::REPROBE_AFTER;

/// The property lifted out of `data` into Umami's `tag`; set it with `Track::tag(..)`,
/// `Page::tag(..)` or `Screen::tag(..)`. It must be a string of at most 50 UTF-16 units.
pub const TAG_PROPERTY: &str = trackway_wire::umami::TAG_PROPERTY;
/// The property lifted out of `data` into Umami's `url` for custom events and identify; set it
/// with `Track::url(..)` or `Identify::url(..)`. It must be a string.
pub const URL_PROPERTY: &str = trackway_wire::umami::URL_PROPERTY;

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
    /// As given to `server_version`, checked at `build()`.
    server_version_given: Option<String>,
    server_version: Option<server::Version>,
    late_after: Duration,
    limits: BatchLimits,
    cache_capacity: usize,
    /// Last use of each cache-token key, for the LRU bound (see `classify`).
    lru: Mutex<classify::Lru>,
    /// What the last `encode` read about the server, for the `classify` of its request.
    seen: Mutex<classify::Seen>,
    warned_beep: AtomicBool,
    warned_truncated: AtomicBool,
    warned_dropped: AtomicBool,
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
            server_version_given: None,
            server_version: None,
            late_after: Duration::from_secs(60),
            limits: BatchLimits::new(100, 512 * 1024),
            cache_capacity: 1000,
            lru: Mutex::new(classify::Lru::default()),
            seen: Mutex::new(classify::Seen::default()),
            warned_beep: AtomicBool::new(false),
            warned_truncated: AtomicBool::new(false),
            warned_dropped: AtomicBool::new(false),
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
    /// (else `trackway/<version>`), plus ` Chrome/0` until the server is known to be 3.0.2 or
    /// newer (see [User agent](self#user-agent)).
    #[must_use]
    pub fn user_agent(mut self, ua: impl Into<String>) -> Self {
        self.user_agent = Some(ua.into());
        self
    }

    /// The server's release, e.g. `"2.10"` or `"3.1.0"`, when known: what it drops is counted
    /// from the first event (see the [module docs](self)), a release before 2.17 is sent
    /// `/api/send` requests without a probe of `/api/batch`, and 3.0.2 or newer gets the default
    /// user agent without the browser token. What the server's answers show wins over it.
    /// `build()` fails on a string that is not a version.
    #[must_use]
    pub fn server_version(mut self, version: impl Into<String>) -> Self {
        let given = version.into();
        self.server_version = server::Version::parse(&given);
        self.server_version_given = Some(given);
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

    /// The stored-state keys of what is known of this base URL's server for this website.
    fn server_keys(&self) -> (String, String) {
        server::keys(&self.base_url, &self.website)
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

    /// Ordered per identity: a session starts with its first event.
    fn identity_order(&self) -> bool {
        true
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
        if let Some(given) = &self.server_version_given
            && self.server_version.is_none()
        {
            return Err(format!("server version {given:?} is not a version such as \"2.10\" or \"3.1.0\""));
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
        if let Some(key) = event
            .properties
            .iter()
            .map(|(k, _)| k)
            .find(|k| k.starts_with('$') && *k != TAG_PROPERTY && *k != URL_PROPERTY)
        {
            return fail(format!(
                "property {key:?}: names starting with `$` are reserved, and Umami knows only `$tag` and `$url` \
                 (set them with `.tag(..)` and `.url(..)`)"
            ));
        }
        match event.properties.get(TAG_PROPERTY) {
            None => {}
            Some(Value::String(tag)) => {
                if let Err(m) = check_len("tag ($tag)", tag, TAG_MAX) {
                    return fail(m);
                }
            }
            Some(other) => return fail(format!("$tag (the tag) must be a string, not {}", other.type_name())),
        }
        match event.properties.get(URL_PROPERTY) {
            None | Some(Value::String(_)) => {}
            Some(other) => return fail(format!("$url (the URL) must be a string, not {}", other.type_name())),
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

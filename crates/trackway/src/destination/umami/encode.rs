//! Stored events to Umami requests: one `/api/batch` request per run of events of one identity,
//! or one `/api/send` request per event on a server without a working batch endpoint.

use std::cell::Cell;
use std::sync::atomic::Ordering;

use http::HeaderValue;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use trackway_wire::umami::{TEXT_MAX, is_bot_user_agent, is_umami_date, truncate_utf16, utf16_len};
use trackway_wire::{Context, Event, EventKind, Properties, Timestamp, Value};

use super::classify::{CACHE_HEADER, Probe, Seen, cache_key};
use super::server::{self, BATCH_SINCE, CLIENT_INFO_SINCE, Fact};
use super::{TAG_PROPERTY, URL_PROPERTY, Umami};
use crate::destination::{DestinationState, Encoded, EventRecord, Request};

/// One item of a body: `{"type":…,"payload":{…}}`.
#[derive(Serialize)]
pub(super) struct Item<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    payload: Payload<'a>,
}

/// The payload, fields in the order of the spec's examples; absent fields are omitted, never
/// `null` (zod's `.optional()` rejects `null` with a 400).
#[derive(Serialize)]
struct Payload<'a> {
    website: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    hostname: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    language: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    screen: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<&'a str>,
    url: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    referrer: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Data<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ip: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<i64>,
    /// With the default user agent only: what 3.0.2+ stores instead of parsing it.
    #[serde(skip_serializing_if = "Option::is_none")]
    browser: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    os: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<&'static str>,
}

/// Event data in the caller's key order, with the reserved keys and `null`s left out, strings
/// truncated to 500 units, and RFC 3339 dates rewritten in the one form Umami types as a date.
#[derive(Clone, Copy)]
struct Data<'a> {
    props: &'a Properties,
    top: bool,
    truncated: &'a Cell<u64>,
}

impl Serialize for Data<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let entries = self
            .props
            .iter()
            .filter(|(k, v)| !matches!(v, Value::Null) && !(self.top && (*k == TAG_PROPERTY || *k == URL_PROPERTY)));
        let mut map = s.serialize_map(None)?;
        for (k, v) in entries {
            map.serialize_entry(k, &DataValue { value: v, truncated: self.truncated })?;
        }
        map.end()
    }
}

struct DataValue<'a> {
    value: &'a Value,
    truncated: &'a Cell<u64>,
}

impl Serialize for DataValue<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.value {
            // Filtered out by the containers; kept total for safety.
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::UInt(u) => s.serialize_u64(*u),
            Value::Float(f) => s.serialize_f64(*f),
            Value::String(text) => {
                if let Some(date) = as_umami_date(text) {
                    return s.serialize_str(&date);
                }
                s.serialize_str(self.truncate(text))
            }
            Value::Array(items) => {
                let mut seq = s.serialize_seq(None)?;
                for v in items.iter().filter(|v| !matches!(v, Value::Null)) {
                    seq.serialize_element(&DataValue { value: v, truncated: self.truncated })?;
                }
                seq.end()
            }
            Value::Object(inner) => Data { props: inner, top: false, truncated: self.truncated }.serialize(s),
        }
    }
}

impl DataValue<'_> {
    fn truncate<'s>(&self, text: &'s str) -> &'s str {
        let cut = truncate_utf16(text, TEXT_MAX);
        if cut.len() < text.len() {
            self.truncated.set(self.truncated.get() + 1);
        }
        cut
    }
}

/// An RFC 3339 date not in Umami's date form (`…T10:00:00Z`, an offset, nanoseconds), rewritten
/// as `YYYY-MM-DDTHH:MM:SS.sssZ` so the server stores it as a date, not a string.
fn as_umami_date(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let looks_like_date =
        b.len() >= 20 && b.len() <= 40 && b[4] == b'-' && b[10] == b'T' && b[..4].iter().all(u8::is_ascii_digit);
    if !looks_like_date || is_umami_date(text) {
        return None;
    }
    text.parse::<Timestamp>().ok().map(|t| t.to_string())
}

/// What an event is sent as, resolved once per event.
struct Hit<'a> {
    key: String,
    user_agent: String,
    item: Item<'a>,
}

/// The default user agent and what it stands for, resolved once per encode.
struct DefaultAgent {
    /// The `User-Agent` header.
    header: String,
    /// `browser`: the app's name, at most 20 UTF-16 units (Postgres `varchar(20)`).
    browser: String,
    /// `os`, in the names Umami's `detect-browser` gives.
    os: Option<&'static str>,
    /// `device`, as Umami derives it from `screen` and the OS.
    device: Option<&'static str>,
}

/// The `browser`/`os`/`device` columns are `varchar(20)`.
const CLIENT_INFO_MAX: usize = 20;

/// `Mozilla/5.0 (<OS>; <arch>) <app>/<version>`: the form the spec recommends (§2.1), which
/// passes the bot check and lets Umami's UA parser find the OS. Unless the server is known to
/// take `browser` from the payload (`honest`), ` Chrome/0` follows: `detect-browser` finds no
/// browser in the plain form, so Umami would record none.
pub(super) fn default_user_agent(context: &Context, honest: bool) -> String {
    let arch = std::env::consts::ARCH;
    let os = match std::env::consts::OS {
        "linux" => format!("X11; Linux {arch}"),
        "macos" => "Macintosh; Intel Mac OS X 10_15_7".to_owned(),
        "windows" => "Windows NT 10.0; Win64; x64".to_owned(),
        "android" => format!("Linux; Android; {arch}"),
        "ios" => "iPhone; CPU iPhone OS like Mac OS X".to_owned(),
        other => format!("{other}; {arch}"),
    };
    let browser = if honest { "" } else { " Chrome/0" };
    let fallback = || format!("Mozilla/5.0 ({os}) trackway/{}{browser}", env!("CARGO_PKG_VERSION"));
    let ua = match (&context.app_name, &context.app_version) {
        (Some(name), Some(version)) => format!("Mozilla/5.0 ({os}) {}/{}{browser}", token(name), token(version)),
        (Some(name), None) => format!("Mozilla/5.0 ({os}) {}/0{browser}", token(name)),
        _ => fallback(),
    };
    // An app called, say, "chatbot" would trip the bot check and lose every event in silence.
    if is_bot_user_agent(&ua) { fallback() } else { ua }
}

/// A name or version as one user-agent product token.
fn token(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_graphic() && c != '/' { c } else { '-' }).collect()
}

/// What the default user agent stands for, in Umami's terms.
fn default_agent(dest: &Umami, context: &Context, honest: bool) -> DefaultAgent {
    let name = context.app_name.as_deref().map(token).filter(|n| !n.is_empty());
    let browser = truncate_utf16(name.as_deref().unwrap_or("trackway"), CLIENT_INFO_MAX).to_owned();
    // detect-browser's names, for the OS this runs on.
    let os = match std::env::consts::OS {
        "linux" => Some("Linux"),
        "macos" => Some("Mac OS"),
        "windows" => Some("Windows 10"),
        "android" => Some("Android OS"),
        "ios" => Some("iOS"),
        "openbsd" => Some("Open BSD"),
        _ => None,
    };
    DefaultAgent {
        header: default_user_agent(context, honest),
        browser,
        os,
        device: dest.screen.as_deref().and_then(|s| umami_device(s, os)),
    }
}

/// Umami's `getDevice(screen, os)`: the device type from the screen width and the OS.
fn umami_device(screen: &str, os: Option<&str>) -> Option<&'static str> {
    let width: u32 = screen.split('x').next()?.parse().ok()?;
    match os {
        Some("Android OS" | "iOS") => Some(if width > 479 { "tablet" } else { "mobile" }),
        Some("Chrome OS") => Some("laptop"),
        Some(_) => Some(if width < 1920 { "laptop" } else { "desktop" }),
        None => Some(match width {
            1920.. => "desktop",
            1024.. => "laptop",
            479.. => "tablet",
            _ => "mobile",
        }),
    }
}

/// `url` as a path (v2 ≤ 2.15 split on `?` only, so a path works everywhere), and the host of an
/// absolute URL (the server would have taken it from there).
fn split_url(url: &str) -> (String, Option<String>) {
    if url.contains("://")
        && let Ok(parsed) = reqwest::Url::parse(url)
    {
        let mut path = parsed.path().to_owned();
        if let Some(q) = parsed.query() {
            path.push('?');
            path.push_str(q);
        }
        if let Some(f) = parsed.fragment() {
            path.push('#');
            path.push_str(f);
        }
        // A host the server would refuse as `hostname` (over 100 units) is left to the server.
        let host = parsed.host_str().filter(|h| utf16_len(h) <= trackway_wire::umami::HOSTNAME_MAX);
        return (path, host.map(str::to_owned));
    }
    if url.starts_with('/') { (url.to_owned(), None) } else { (format!("/{url}"), None) }
}

/// The path of a screen: `/` + its name, percent-encoded outside the unreserved set.
fn screen_path(name: &str) -> String {
    if name.starts_with('/') {
        return name.to_owned();
    }
    let mut out = String::with_capacity(name.len() + 1);
    out.push('/');
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Encodes a batch; see the module docs for the choice of endpoint.
pub(super) fn encode(dest: &Umami, events: &[EventRecord], state: &DestinationState, now: Timestamp) -> Encoded {
    let mut out = Encoded::default();
    let truncated = Cell::new(0u64);
    // What is known of the server at this base URL, for this website.
    let (server_key, probe_key) = dest.server_keys();
    let now_secs = now.unix_seconds();
    let fact = server::fresh_fact(state, &server_key, now_secs);
    let probing = state.get(&probe_key).map(Probe::decode);
    *dest.seen.lock().unwrap_or_else(|e| e.into_inner()) = Seen { fact, probing, now_secs };
    let range = server::range(dest.server_version, fact);
    let single = probing.is_some() || range.before(BATCH_SINCE) || fact == Some(Fact::BatchBroken);
    let honest = range.from(CLIENT_INFO_SINCE);

    // Owned strings the payloads borrow: built first, so the payloads can point into them.
    struct Owned {
        url: String,
        title: Option<String>,
        host: Option<String>,
    }
    let mut owned: Vec<Option<Owned>> = Vec::with_capacity(events.len());
    let mut parsed: Vec<Option<&Event>> = Vec::with_capacity(events.len());
    for (i, record) in events.iter().enumerate() {
        let Some(event) = out.parse(i, record) else {
            owned.push(None);
            parsed.push(None);
            continue;
        };
        let (url, host, title) = match event.kind {
            EventKind::Page => {
                let page = event.page.as_ref();
                let (path, host) = split_url(page.map_or("/", |p| p.url.as_str()));
                let title = page.and_then(|p| p.title.clone()).or_else(|| event.name.as_ref().map(|n| n.to_string()));
                (path, host, title)
            }
            EventKind::Screen => {
                let name = event.name.as_deref().unwrap_or_default();
                (screen_path(name), None, Some(name.to_owned()))
            }
            _ => {
                let (path, host) = match event.properties.get(URL_PROPERTY).and_then(Value::as_str) {
                    Some(u) => split_url(u),
                    None => ("/".to_owned(), None),
                };
                (path, host, None)
            }
        };
        let url = if utf16_len(&url) > TEXT_MAX {
            truncated.set(truncated.get() + 1);
            truncate_utf16(&url, TEXT_MAX).to_owned()
        } else {
            url
        };
        let title = title.map(|t| {
            if utf16_len(&t) > TEXT_MAX {
                truncated.set(truncated.get() + 1);
                truncate_utf16(&t, TEXT_MAX).to_owned()
            } else {
                t
            }
        });
        owned.push(Some(Owned { url, title, host }));
        parsed.push(Some(event));
    }

    // The default user agent of the batch (the first event's app; a batch shares one context).
    let agent: Option<DefaultAgent> = match dest.user_agent {
        Some(_) => None,
        None => parsed.iter().flatten().next().map(|e| default_agent(dest, &e.context, honest)),
    };
    let mut hits: Vec<(usize, Hit<'_>)> = Vec::with_capacity(events.len());
    for (i, (event, own)) in parsed.iter().zip(&owned).enumerate() {
        let (Some(event), Some(own)) = (event, own) else { continue };
        let mut client_info = None;
        let user_agent = match (&event.identity.user_agent, &dest.user_agent) {
            (Some(ua), _) => {
                if is_bot_user_agent(ua) {
                    out.rejected.push((i, format!("user agent {ua:?} would be discarded by Umami's bot check")));
                    continue;
                }
                ua.clone()
            }
            (None, Some(ua)) => ua.clone(),
            (None, None) => match &agent {
                Some(agent) => {
                    client_info = Some((agent.browser.as_str(), agent.os, agent.device));
                    agent.header.clone()
                }
                None => default_user_agent(&event.context, honest),
            },
        };
        let ip = event.identity.ip.as_deref().or(dest.ip.as_deref());
        let id = event.identity.user_id.as_deref();
        // A user id stored before this destination was added can be over Umami's limit (an
        // identify through it could not): the server would refuse it, so it is dead-lettered
        // here, for this destination only.
        if let Some(id) = id
            && utf16_len(id) > super::ID_MAX
        {
            out.rejected.push((
                i,
                format!("user id is {} UTF-16 units; Umami's distinct id takes {}", utf16_len(id), super::ID_MAX),
            ));
            continue;
        }
        let key = cache_key(&dest.website, id, ip, &user_agent);
        let tag = event.properties.get(TAG_PROPERTY).and_then(Value::as_str);
        let has_data =
            event.properties.iter().any(|(k, v)| k != TAG_PROPERTY && k != URL_PROPERTY && !matches!(v, Value::Null));
        let data = Data { props: &event.properties, top: true, truncated: &truncated };
        let language = dest.language.as_deref().or_else(|| {
            event
                .context
                .locale
                .as_deref()
                .filter(|l| !l.is_empty() && utf16_len(l) <= trackway_wire::umami::LANGUAGE_MAX)
        });
        let late = event.imported || now.saturating_duration_since(event.timestamp) > dest.late_after;
        let payload = Payload {
            website: &dest.website,
            hostname: dest.hostname.as_deref().or(own.host.as_deref()),
            language,
            screen: dest.screen.as_deref(),
            title: own.title.as_deref(),
            url: &own.url,
            referrer: event.page.as_ref().and_then(|p| p.referrer.as_deref()),
            name: if event.kind == EventKind::Track { event.name.as_deref() } else { None },
            tag,
            id,
            // identify always carries an object: servers before v2.19 answer 400 without one.
            data: (has_data || event.kind == EventKind::Identify).then_some(data),
            ip,
            timestamp: late.then(|| event.timestamp.unix_seconds()),
            browser: client_info.map(|c| c.0),
            os: client_info.and_then(|c| c.1),
            device: client_info.and_then(|c| c.2),
        };
        let kind = if event.kind == EventKind::Identify { "identify" } else { "event" };
        hits.push((i, Hit { key, user_agent, item: Item { kind, payload } }));
    }

    {
        let mut lru = dest.lru.lock().unwrap_or_else(|e| e.into_inner());
        lru.seed(state);
        // Only identities holding a token count against the bound.
        for (_, hit) in hits.iter().filter(|(_, h)| state.get(&h.key).is_some()) {
            lru.touch(&hit.key);
        }
    }

    // One request per identity (in order of first appearance, each identity's events in enqueue
    // order): a request never mixes two, as they would share headers and token. On /api/send,
    // one request per event.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (n, (_, hit)) in hits.iter().enumerate() {
        match groups.iter_mut().find(|g| !single && hits[g[0]].1.key == hit.key) {
            Some(group) => group.push(n),
            None => groups.push(vec![n]),
        }
    }
    for group in groups {
        let run: Vec<&(usize, Hit<'_>)> = group.iter().map(|&n| &hits[n]).collect();
        let items: Vec<usize> = run.iter().map(|(i, _)| *i).collect();
        let first = &run[0].1;
        let body = if single {
            serde_json::to_vec(&first.item)
        } else {
            serde_json::to_vec(&run.iter().map(|(_, h)| &h.item).collect::<Vec<_>>())
        };
        let path = if single { "/api/send" } else { "/api/batch" };
        match (body, HeaderValue::from_str(&first.user_agent)) {
            (Ok(body), Ok(ua)) => {
                let mut request = Request::post(&dest.endpoint(path), body, items)
                    .header(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"))
                    .header(http::header::USER_AGENT, ua);
                if let Some(token) = state.get(&first.key).and_then(|t| HeaderValue::from_bytes(t).ok()) {
                    request = request.header(http::HeaderName::from_static(CACHE_HEADER), token);
                }
                out.requests.push(request);
            }
            (Err(e), _) => out.rejected.extend(items.into_iter().map(|i| (i, format!("cannot serialize: {e}")))),
            (_, Err(_)) => out
                .rejected
                .extend(items.into_iter().map(|i| (i, "the user agent is not a valid HTTP header value".to_owned()))),
        }
    }

    out.truncated = truncated.get();
    if out.truncated > 0 && !dest.warned_truncated.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            destination = dest.name.as_str(),
            "trackway: Umami keeps at most 500 UTF-16 units of a title, URL or data string; longer values were \
             truncated (counted as `truncated` in stats; logged once)"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_become_paths() {
        assert_eq!(split_url("https://myapp.example/a/b?x=1#h"), ("/a/b?x=1#h".into(), Some("myapp.example".into())));
        assert_eq!(split_url("/settings"), ("/settings".into(), None));
        assert_eq!(split_url("settings"), ("/settings".into(), None));
        assert_eq!(screen_path("Order Details"), "/Order%20Details");
        assert_eq!(screen_path("/home"), "/home");
    }

    #[test]
    fn devices_as_umami_derives_them() {
        assert_eq!(umami_device("1920x1080", Some("Linux")), Some("desktop"));
        assert_eq!(umami_device("1440x900", Some("Mac OS")), Some("laptop"));
        assert_eq!(umami_device("390x844", Some("iOS")), Some("mobile"));
        assert_eq!(umami_device("820x1180", Some("iOS")), Some("tablet"));
        assert_eq!(umami_device("800x600", None), Some("tablet"));
        assert_eq!(umami_device("wide", Some("Linux")), None);
    }

    #[test]
    fn dates_are_rewritten_in_umamis_form() {
        assert_eq!(as_umami_date("2024-01-15T10:00:00Z").as_deref(), Some("2024-01-15T10:00:00.000Z"));
        assert_eq!(as_umami_date("2024-01-15T11:00:00+01:00").as_deref(), Some("2024-01-15T10:00:00.000Z"));
        assert_eq!(as_umami_date("2024-01-15T10:00:00.000Z"), None, "already in the form");
        assert_eq!(as_umami_date("not a date at all, no"), None);
    }

    #[test]
    fn default_user_agent_passes_the_bot_check() {
        let ctx = Context { app_name: Some("my app".into()), app_version: Some("1.2.3".into()), ..Context::default() };
        let ua = default_user_agent(&ctx, true);
        assert!(ua.starts_with("Mozilla/5.0 ("), "{ua}");
        assert!(ua.ends_with(") my-app/1.2.3"), "{ua}");
        assert!(!is_bot_user_agent(&ua), "{ua}");
        assert_eq!(default_user_agent(&ctx, false), format!("{ua} Chrome/0"));
        for honest in [true, false] {
            assert!(!is_bot_user_agent(&default_user_agent(&Context::default(), honest)));
            let bot_named = Context { app_name: Some("chatbot".into()), ..Context::default() };
            let ua = default_user_agent(&bot_named, honest);
            assert!(!is_bot_user_agent(&ua) && ua.contains("trackway/"), "falls back to trackway/<version>: {ua}");
        }
    }
}

//! Umami's collection endpoints, `POST /api/send` and `POST /api/batch`, answered as a given
//! Umami release does ([`UmamiMode`]: 2.10, 2.15, 2.17, 2.18 or 3.1), and what that release
//! stores of each hit ([`UmamiRow`], from [`RunningCollector::umami_stored`](crate::RunningCollector::umami_stored)).
//!
//! What is imitated (spec `umami.md` §2–§3): zod's validation of the payload (lengths in UTF-16
//! units, `null` refused, `type` one of `event`/`identify`/`performance`), the 400 body with the
//! failing field, the bot check (`{"beep":"boop"}` on send; silently processed on batch), the
//! answer to an unknown website (when [`CollectorBuilder::umami_websites`](crate::CollectorBuilder::umami_websites)
//! names the known ones), a cache token in every success body, and, per release, the fields
//! it silently drops and the browser, OS and device it derives (see `detect`). The token is
//! readable on purpose, `<sessionId>.<n>`, so a test can tell whose it is; a real server's is
//! an opaque JWT.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value, json};
use trackway_wire::umami::{
    HOSTNAME_MAX, LANGUAGE_MAX, NAME_MAX, SCREEN_MAX, TAG_MAX, is_bot_user_agent, is_uuid, utf16_len,
};

use super::{Backend, BackendRequest, DecodedEvent, json_objects};
use crate::reply::Reply;

mod detect;

/// The label of Umami's requests and events in the inspection API.
pub(crate) const LABEL: &str = "umami";
const SEND: &str = "/api/send";
const BATCH: &str = "/api/batch";

/// Which Umami release the collector behaves like. What each does differently:
///
/// | mode | `/api/batch` | success body | stores `tag` / `timestamp` / `id` / `browser`,`os`,`device` | bot check reads | unknown website |
/// |---|---|---|---|---|---|
/// | `V2_10` | 404 | text/plain token | no / no / no / no | header | 403 text |
/// | `V2_15` | 404 | text/plain token | yes / no / no / no | header | 404 text |
/// | `V2_17` | items, no `cache` | JSON | yes / yes / no / no | header | 400 `{"error":"Website not found."}` |
/// | `V2_18` | items, no `cache` | JSON | yes / yes / yes / no | `payload.userAgent`, else header | 400 as 2.17 |
/// | `V3` (3.1) | items and `cache` | JSON | yes / yes / yes / yes | as 2.18 | 400 `{"error":{"message":"Website not found.",…}}` |
///
/// A dropped field is accepted (200) and not stored, as zod strips unknown keys. `payload.userAgent`
/// (2.16+) overrides the header for parsing from 2.17 on here (2.16 stored it as the country).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum UmamiMode {
    /// Umami 2.10 (January 2024): no `tag` yet, an unknown website answers 403.
    V2_10,
    /// Umami 2.11 to 2.15: `tag`, still no `/api/batch` (404), a plain-text token.
    V2_15,
    /// Umami 2.17: `/api/batch`, `timestamp`, JSON bodies; no distinct `id` yet.
    V2_17,
    /// Umami 2.18 to 3.0.1: the distinct `id`; the bot check reads `payload.userAgent`.
    V2_18,
    /// Umami 3.1 (and 3.0.2+): `/api/batch` answers a `cache`; `browser`/`os`/`device` in the
    /// payload replace the user agent's parsing.
    #[default]
    V3,
}

impl std::str::FromStr for UmamiMode {
    type Err = String;

    /// A release number, `v` optional: `2.10` → [`V2_10`](UmamiMode::V2_10),
    /// [`V2_15`](UmamiMode::V2_15) from 2.11 to 2.15; `2.17` → [`V2_17`](UmamiMode::V2_17);
    /// `2.18` to `3.0.1` → [`V2_18`](UmamiMode::V2_18); `3.0.2` and newer, `3`, `v3` →
    /// [`V3`](UmamiMode::V3). 2.16 (JSON tokens without `/api/batch`) and releases before 2.10
    /// are refused.
    fn from_str(s: &str) -> Result<Self, String> {
        let v = s.trim().trim_start_matches('v');
        let mut parts = v.split('.');
        // A missing part means the newest release it covers: `3` and `3.0` are 3.0.2+.
        let mut number = || parts.next().map_or(Some(u32::MAX), |m| m.parse::<u32>().ok());
        let (major, minor, patch) = (number(), number(), number());
        match (major, minor, patch) {
            (Some(3), Some(0), Some(0 | 1)) => Ok(UmamiMode::V2_18),
            (Some(3..), Some(_), Some(_)) => Ok(UmamiMode::V3),
            (Some(2), Some(10), Some(_)) => Ok(UmamiMode::V2_10),
            (Some(2), Some(11..=15), Some(_)) => Ok(UmamiMode::V2_15),
            (Some(2), Some(17), Some(_)) => Ok(UmamiMode::V2_17),
            (Some(2), Some(18..=u32::MAX), Some(_)) if minor != Some(u32::MAX) => Ok(UmamiMode::V2_18),
            (Some(2), Some(16), Some(_)) => Err(format!(
                "{s:?}: the collector imitates Umami 2.10, 2.11-2.15, 2.17, 2.18-3.0.1 and 3.0.2+, not 2.16"
            )),
            _ => Err(format!(
                "{s:?} is not an Umami release the collector imitates (2.10 to 3.x, e.g. 2.10, 2.15, 2.17, 2.18, 3.1)"
            )),
        }
    }
}

impl UmamiMode {
    /// Answers the token as `text/plain` and errors as plain text (before 2.16).
    fn plain_text(self) -> bool {
        self <= UmamiMode::V2_15
    }
}

/// Whether `path` is one of Umami's collection endpoints.
pub(crate) fn claims(path: &str) -> bool {
    path == SEND || path == BATCH
}

/// One hit as the release stores it (Umami's `website_event` row with its session's columns):
/// what a field-dropping release drops is `None` here though it was sent.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct UmamiRow {
    /// The website id, lowercase.
    pub website: String,
    /// `pageview`, `event` or `identify`.
    pub kind: String,
    /// The event name (custom events).
    pub name: Option<String>,
    /// The URL path (`url_path`).
    pub url: Option<String>,
    /// The tag, from 2.11.
    pub tag: Option<String>,
    /// The distinct id, from 2.18.
    pub distinct_id: Option<String>,
    /// The session the hit is filed under.
    pub session_id: String,
    /// The event's own time (Unix seconds) when the release stores `timestamp` (2.17+); `None`
    /// means the hit was filed at the time it arrived.
    pub created_at: Option<i64>,
    /// The browser: from the payload (3.0.2+), else `detect-browser`'s name for the user agent.
    pub browser: Option<String>,
    /// The OS, the same way.
    pub os: Option<String>,
    /// The device, the same way (from `screen` and the OS).
    pub device: Option<String>,
    /// The event data or session data, as sent.
    pub data: Option<Value>,
}

/// The simulated server.
#[derive(Clone, Debug, Default)]
pub(crate) struct UmamiServer {
    mode: UmamiMode,
    /// The website ids the server knows (lowercase); `None`: every one.
    websites: Option<Vec<String>>,
    /// Tokens issued so far (numbers them, so each success gets a new one).
    issued: Arc<AtomicU64>,
    /// What was stored, in order.
    stored: Arc<Mutex<Vec<UmamiRow>>>,
}

/// One item's result from the send handler.
enum Handled {
    Ok {
        cache: String,
        session: String,
    },
    Bot,
    Error(Value),
    /// An unknown website: the answer differs by release (and, on a batch, it is an item error).
    UnknownWebsite,
}

impl UmamiServer {
    pub(crate) fn new(mode: UmamiMode) -> Self {
        UmamiServer { mode, ..UmamiServer::default() }
    }

    /// Only these website ids exist; the others get the release's "unknown website" answer.
    pub(crate) fn with_websites(mut self, websites: Option<Vec<String>>) -> Self {
        self.websites = websites.map(|w| w.iter().map(|id| id.trim().to_ascii_lowercase()).collect());
        self
    }

    /// What was stored so far, in order.
    pub(crate) fn stored(&self) -> Vec<UmamiRow> {
        self.stored.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn answer(&self, path: &str, headers: &http::HeaderMap, body: &[u8]) -> Reply {
        let header_ua = headers.get(http::header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("");
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        if path == BATCH {
            if self.mode < UmamiMode::V2_17 {
                return Reply::status(404)
                    .header("content-type", "text/html")
                    .body("<h1>404</h1>This page could not be found.");
            }
            let Some(Value::Array(items)) = parsed else {
                return Reply::status(400).json(bad_request(Vec::new()));
            };
            let mut details = Vec::new();
            let mut cache: Option<String> = None;
            for (index, item) in items.iter().enumerate() {
                match self.handle(item, header_ua) {
                    Handled::Ok { cache: token, .. } => {
                        cache.get_or_insert(token);
                    }
                    Handled::Bot => {}
                    Handled::Error(response) => details.push(json!({ "index": index, "response": response })),
                    Handled::UnknownWebsite => {
                        details.push(json!({ "index": index, "response": self.unknown_website_body() }));
                    }
                }
            }
            let mut out = json!({
                "size": items.len(),
                "processed": items.len() - details.len(),
                "errors": details.len(),
                "details": details,
            });
            // The batch answer carries a token from 3.0.2 on.
            if let Some(cache) = cache
                && self.mode >= UmamiMode::V3
            {
                out["cache"] = Value::String(cache);
            }
            return Reply::status(200).json(out);
        }
        let Some(item) = parsed else {
            return self.error(bad_request(Vec::new()));
        };
        match self.handle(&item, header_ua) {
            Handled::Ok { cache, session } if self.mode.plain_text() => {
                let _ = session;
                Reply::status(200).header("content-type", "text/plain").body(cache)
            }
            Handled::Ok { cache, session } => Reply::status(200).json(json!({
                "cache": cache,
                "sessionId": session,
                "visitId": uuid_from(&[&session, "visit"]),
            })),
            Handled::Bot => Reply::status(200).json(json!({ "beep": "boop" })),
            Handled::Error(body) => self.error(body),
            Handled::UnknownWebsite => match self.mode {
                UmamiMode::V2_10 => Reply::status(403).header("content-type", "text/plain").body("Forbidden"),
                UmamiMode::V2_15 => Reply::status(404).header("content-type", "text/plain").body("Not Found"),
                _ => Reply::status(400).json(self.unknown_website_body()),
            },
        }
    }

    /// The 400 body for an unknown website, 2.17+ (v3's structured error, v2's string).
    fn unknown_website_body(&self) -> Value {
        if self.mode >= UmamiMode::V3 {
            json!({ "error": { "message": "Website not found.", "code": "bad-request", "status": 400 } })
        } else {
            json!({ "error": "Website not found." })
        }
    }

    /// A 400 in this release's form: v3's JSON, v2.17's `{"error": …}`, or v2's plain text.
    fn error(&self, body: Value) -> Reply {
        if self.mode.plain_text() {
            return Reply::status(400).header("content-type", "text/plain").body("Bad Request");
        }
        Reply::status(400).json(body)
    }

    /// The send handler for one `{type, payload}` item: validation, the bot check, the session,
    /// and the row this release stores.
    fn handle(&self, item: &Value, header_ua: &str) -> Handled {
        if let Err(errors) = validate(item) {
            return Handled::Error(bad_request(errors));
        }
        let mode = self.mode;
        let payload = &item["payload"];
        let text = |k: &str| payload.get(k).and_then(Value::as_str);
        // payload.userAgent (2.16+) is what the parser reads (from 2.17 here); the bot check
        // reads it from 2.18 on, only the header before.
        let ua = text("userAgent").filter(|_| mode >= UmamiMode::V2_17).unwrap_or(header_ua);
        let bot_ua = if mode >= UmamiMode::V2_18 { ua } else { header_ua };
        if is_bot_user_agent(bot_ua) {
            return Handled::Bot;
        }
        let website = text("website").unwrap_or("").to_ascii_lowercase();
        if self.websites.as_ref().is_some_and(|known| !known.contains(&website)) {
            return Handled::UnknownWebsite;
        }
        // As the server: a distinct id alone names the session (2.18+); else IP and user agent do.
        let distinct_id = text("id").filter(|_| mode >= UmamiMode::V2_18);
        let session = match distinct_id {
            Some(id) => uuid_from(&[&website, id]),
            None => uuid_from(&[&website, text("ip").unwrap_or("127.0.0.1"), ua]),
        };
        let client_info = |field: &str, parsed: Option<&'static str>| {
            text(field).filter(|_| mode >= UmamiMode::V3).map(str::to_owned).or(parsed.map(str::to_owned))
        };
        let os = client_info("os", detect::os(ua));
        let row = UmamiRow {
            website: website.clone(),
            kind: kind_of(item).to_owned(),
            name: text("name").map(str::to_owned),
            url: text("url").map(|u| u.split(['?', '#']).next().unwrap_or("").to_owned()),
            tag: text("tag").filter(|_| mode >= UmamiMode::V2_15).map(str::to_owned),
            distinct_id: distinct_id.map(str::to_owned),
            session_id: session.clone(),
            created_at: payload
                .get("timestamp")
                .filter(|_| mode >= UmamiMode::V2_17)
                .and_then(|t| t.as_i64().or_else(|| t.as_str().and_then(|s| s.trim().parse().ok())))
                .filter(|t| *t != 0),
            browser: client_info("browser", detect::browser(ua)),
            device: client_info("device", detect::device(text("screen"), os.as_deref())),
            os,
            data: payload.get("data").cloned(),
        };
        self.stored.lock().unwrap_or_else(|e| e.into_inner()).push(row);
        let n = self.issued.fetch_add(1, Ordering::Relaxed) + 1;
        Handled::Ok { cache: format!("{session}.{n}"), session }
    }
}

/// Field errors as zod reports them: `(field, message)`.
type FieldErrors = Vec<(String, String)>;

/// Umami v3.1's schema for one item: `type` and the payload fields it checks.
fn validate(item: &Value) -> Result<(), FieldErrors> {
    let mut errors = FieldErrors::new();
    let mut fail = |field: &str, message: String| errors.push((field.to_owned(), message));
    let Some(object) = item.as_object() else {
        return Err(vec![("payload".into(), "Invalid input: expected object".into())]);
    };
    match object.get("type").and_then(Value::as_str) {
        Some("event" | "identify" | "performance") => {}
        _ => fail("type", "Invalid option: expected one of \"event\"|\"identify\"|\"performance\"".into()),
    }
    let Some(payload) = object.get("payload").and_then(Value::as_object) else {
        fail("payload", "Invalid input: expected object, received undefined".into());
        return Err(errors);
    };
    let string = |p: &Map<String, Value>, k: &str, max: Option<usize>| -> Option<String> {
        match p.get(k) {
            None => None,
            Some(Value::String(s)) => match max {
                Some(max) if utf16_len(s) > max => Some(format!("Too big: expected string to have <={max} characters")),
                _ => None,
            },
            // zod's .optional() refuses null like any other non-string.
            Some(_) => Some("Invalid input: expected string".into()),
        }
    };
    for (k, max) in [
        ("hostname", Some(HOSTNAME_MAX)),
        ("language", Some(LANGUAGE_MAX)),
        ("screen", Some(SCREEN_MAX)),
        ("name", Some(NAME_MAX)),
        ("tag", Some(TAG_MAX)),
        ("url", None),
        ("referrer", None),
        ("title", None),
        ("id", None),
        ("ip", None),
        ("userAgent", None),
    ] {
        if let Some(message) = string(payload, k, max) {
            fail(k, message);
        }
    }
    match payload.get("website") {
        Some(Value::String(w)) if is_uuid(w) => {}
        Some(_) => fail("website", "Invalid UUID".into()),
        None if payload.contains_key("link") || payload.contains_key("pixel") => {}
        None => fail("website", "Invalid input: expected string, received undefined".into()),
    }
    for k in ["url", "referrer"] {
        if let Some(Value::String(u)) = payload.get(k)
            && (u.contains(char::is_whitespace) && !u.starts_with('/'))
        {
            fail(k, "Invalid URL".into());
        }
    }
    match payload.get("data") {
        None | Some(Value::Object(_)) => {}
        Some(_) => fail("data", "Invalid input: expected record".into()),
    }
    match payload.get("timestamp") {
        None => {}
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => {}
        Some(Value::String(s)) if s.trim().parse::<i64>().is_ok() => {}
        Some(_) => fail("timestamp", "Invalid input: expected int, received number".into()),
    }
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

/// v3.1's 400 body (zod's `treeifyError`, under `error`).
fn bad_request(errors: FieldErrors) -> Value {
    let mut properties = Map::new();
    for (field, message) in errors {
        properties.insert(field, json!({ "errors": [message] }));
    }
    json!({
        "error": {
            "message": "Bad request",
            "code": "bad-request",
            "status": 400,
            "errors": [],
            "properties": { "payload": { "errors": [], "properties": properties } },
        }
    })
}

/// A UUID-shaped id from FNV-1a hashes of `parts` (the server uses UUIDv5 over SHA-512).
fn uuid_from(parts: &[&str]) -> String {
    let hash = |seed: u64| {
        let mut h = seed;
        for part in parts {
            for b in part.bytes().chain([0xff]) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        h
    };
    let (a, b) = (hash(0xcbf2_9ce4_8422_2325), hash(0x8422_2325_cbf2_9ce4));
    format!(
        "{:08x}-{:04x}-5{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | (b >> 48 & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

/// The events of an Umami body, as the inspection API shows them: `type` (`pageview`, `event`
/// or `identify`), `name`, `url`, `user` (the distinct `id`), `data`, and the raw `payload`.
/// What an Umami `{type, payload}` item is: `pageview` (an `event` without a name), `event`,
/// `identify`, or its own `type`.
pub(crate) fn kind_of(item: &Value) -> &str {
    match item.get("type").and_then(Value::as_str) {
        Some("event") if item.pointer("/payload/name").is_some() => "event",
        Some("event") => "pageview",
        Some(other) => other,
        None => "",
    }
}

pub(crate) fn decode(body: Value) -> Vec<Value> {
    let items = match body {
        Value::Array(items) => items,
        item @ Value::Object(_) => vec![item],
        _ => Vec::new(),
    };
    items
        .into_iter()
        .filter(Value::is_object)
        .map(|item| {
            let kind = kind_of(&item);
            let payload = item.get("payload").cloned().unwrap_or(Value::Null);
            let mut event = Map::new();
            event.insert("type".into(), Value::String(kind.to_owned()));
            for (out, key) in [("name", "name"), ("url", "url"), ("title", "title"), ("user", "id"), ("data", "data")] {
                if let Some(v) = payload.get(key) {
                    event.insert(out.into(), v.clone());
                }
            }
            event.insert("payload".into(), payload);
            Value::Object(event)
        })
        .collect()
}

/// The collector's side: [`UmamiServer::answer`] on Umami's paths, [`decode`] for the events.
impl Backend for UmamiServer {
    fn label(&self) -> &str {
        LABEL
    }

    fn claims(&self, method: &str, path: &str) -> bool {
        method == "POST" && claims(path)
    }

    fn answer(&self, request: &BackendRequest<'_>) -> Option<Reply> {
        // The inherent `UmamiServer::answer`, not this trait method.
        Some(UmamiServer::answer(self, request.path(), &request.headers(), request.body()))
    }

    /// Umami's success answer without validating anything or parsing an item: a token on
    /// `/api/send`, and on `/api/batch` every item processed (counted, not parsed). What the
    /// sink cannot answer cheaply (a batch that is not an array, v2's missing batch route) it
    /// answers as the server does.
    fn sink_answer(&self, request: &BackendRequest<'_>) -> Option<Reply> {
        let cache = || {
            let session = uuid_from(&["sink"]);
            let n = self.issued.fetch_add(1, Ordering::Relaxed) + 1;
            (format!("{session}.{n}"), session)
        };
        match (request.path(), self.mode) {
            (SEND, mode) if mode.plain_text() => {
                Some(Reply::status(200).header("content-type", "text/plain").body(cache().0))
            }
            (SEND, _) => {
                let (cache, session) = cache();
                let visit = uuid_from(&[&session, "visit"]);
                Some(Reply::status(200).json(json!({ "cache": cache, "sessionId": session, "visitId": visit })))
            }
            (BATCH, mode) if mode >= UmamiMode::V2_17 => {
                match serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(request.body()) {
                    Ok(items) => {
                        let n = items.len();
                        let mut out = json!({ "size": n, "processed": n, "errors": 0, "details": [] });
                        // Only 3.0.2+ answers a batch with a cache token.
                        if n > 0 && mode == UmamiMode::V3 {
                            out["cache"] = Value::String(cache().0);
                        }
                        Some(Reply::status(200).json(out))
                    }
                    Err(_) => Backend::answer(self, request),
                }
            }
            _ => Backend::answer(self, request),
        }
    }

    fn decode<'a>(&self, request: &BackendRequest<'a>) -> Vec<DecodedEvent<'a>> {
        json_objects(request.body(), false)
            .into_iter()
            .filter_map(|raw| Some(DecodedEvent::new(decode(serde_json::from_str(raw).ok()?).pop()?, Some(raw))))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(server: &UmamiServer, path: &str, ua: &str, body: Value) -> (u16, String) {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::USER_AGENT, http::HeaderValue::from_str(ua).expect("ua"));
        let reply = server.answer(path, &headers, body.to_string().as_bytes());
        (reply.recorded_status(), String::from_utf8_lossy(reply.body_bytes()).into_owned())
    }

    const UA: &str = "Mozilla/5.0 (X11; Linux x86_64) t/1";
    const SITE: &str = "b59e9c65-ae32-47f1-8400-119fcf4861c4";

    #[test]
    fn validation_matches_zod() {
        let ok = json!({"type": "event", "payload": {"website": SITE, "name": "😀".repeat(25)}});
        assert!(validate(&ok).is_ok());
        let long = json!({"type": "event", "payload": {"website": SITE, "name": "😀".repeat(26)}});
        assert_eq!(validate(&long).expect_err("26")[0].1, "Too big: expected string to have <=50 characters");
        assert!(validate(&json!({"type": "event", "payload": {"website": SITE, "name": null}})).is_err());
        assert!(validate(&json!({"type": "page", "payload": {"website": SITE}})).is_err());
        assert!(validate(&json!({"type": "event", "payload": {"website": SITE, "timestamp": 1.5}})).is_err());
        assert!(validate(&json!({"type": "event", "payload": {"website": SITE, "data": [1]}})).is_err());
    }

    #[test]
    fn send_batch_and_old_release_answers() {
        let v3 = UmamiServer::new(UmamiMode::V3);
        let item = json!({"type": "event", "payload": {"website": SITE, "url": "/"}});
        let (status, body) = answer(&v3, SEND, UA, item.clone());
        assert_eq!(status, 200);
        assert!(body.contains("\"cache\"") && body.contains("sessionId"), "{body}");
        assert_eq!(answer(&v3, SEND, "curl/8.0.1", item.clone()), (200, r#"{"beep":"boop"}"#.to_owned()));
        let bad = json!({"type": "event", "payload": {"website": SITE, "name": "x".repeat(51)}});
        let (status, body) = answer(&v3, BATCH, UA, json!([item, bad]));
        assert_eq!(status, 200);
        let body: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(
            (body["size"].as_u64(), body["processed"].as_u64(), body["errors"].as_u64()),
            (Some(2), Some(1), Some(1))
        );
        assert_eq!(body["details"][0]["index"], 1);
        assert_eq!(body["details"][0]["response"]["error"]["status"], 400);

        let v2 = UmamiServer::new(UmamiMode::V2_15);
        assert_eq!(answer(&v2, BATCH, UA, json!([])).0, 404);
        let (status, token) = answer(&v2, SEND, UA, json!({"type": "event", "payload": {"website": SITE}}));
        assert_eq!(status, 200);
        assert!(!token.starts_with('{'), "{token}");
    }

    #[test]
    fn versions_parse_to_modes() {
        assert_eq!("2.10".parse(), Ok(UmamiMode::V2_10));
        assert_eq!("2.15".parse(), Ok(UmamiMode::V2_15));
        assert_eq!("2.11.3".parse(), Ok(UmamiMode::V2_15));
        assert_eq!("2.17".parse(), Ok(UmamiMode::V2_17));
        assert_eq!("2.19".parse(), Ok(UmamiMode::V2_18));
        assert_eq!("3.0.1".parse(), Ok(UmamiMode::V2_18));
        assert_eq!("3.0.2".parse(), Ok(UmamiMode::V3));
        assert_eq!("3.1".parse(), Ok(UmamiMode::V3));
        assert_eq!("v3".parse(), Ok(UmamiMode::V3));
        assert!("banana".parse::<UmamiMode>().is_err());
        assert!("2.16".parse::<UmamiMode>().is_err());
        assert!("2.9".parse::<UmamiMode>().is_err());
        assert!("2".parse::<UmamiMode>().is_err(), "which 2.x?");
    }

    /// One item of `kind` with `payload`, answered by a server of `mode`; its stored row.
    fn stored_by(mode: UmamiMode, ua: &str, payload: Value) -> (u16, Option<UmamiRow>) {
        let server = UmamiServer::new(mode);
        let (status, _) = answer(&server, SEND, ua, json!({"type": "event", "payload": payload}));
        (status, server.stored().pop())
    }

    #[test]
    fn each_release_stores_what_it_knows_and_drops_the_rest_silently() {
        let payload = json!({"website": SITE, "url": "/a?x=1", "name": "buy", "tag": "beta", "id": "u1",
            "timestamp": 1_700_000_000, "screen": "1920x1080", "browser": "myapp", "os": "Linux", "device": "desktop"});
        let ua = "Mozilla/5.0 (X11; Linux x86_64) myapp/1.2 Chrome/0";
        let fields = |mode| {
            let (status, row) = stored_by(mode, ua, payload.clone());
            let row = row.expect("stored");
            assert_eq!((status, row.url.as_deref(), row.name.as_deref()), (200, Some("/a"), Some("buy")));
            (row.tag.is_some(), row.created_at, row.distinct_id.is_some(), row.browser)
        };
        let chrome = Some("chrome".to_owned());
        assert_eq!(fields(UmamiMode::V2_10), (false, None, false, chrome.clone()));
        assert_eq!(fields(UmamiMode::V2_15), (true, None, false, chrome.clone()));
        assert_eq!(fields(UmamiMode::V2_17), (true, Some(1_700_000_000), false, chrome.clone()));
        assert_eq!(fields(UmamiMode::V2_18), (true, Some(1_700_000_000), true, chrome));
        assert_eq!(fields(UmamiMode::V3), (true, Some(1_700_000_000), true, Some("myapp".to_owned())));
        // Without a browser token, no browser; the OS and device all the same.
        let (_, row) = stored_by(UmamiMode::V2_18, UA, json!({"website": SITE, "screen": "1920x1080"}));
        let row = row.expect("stored");
        assert_eq!((row.browser, row.os.as_deref(), row.device.as_deref()), (None, Some("Linux"), Some("desktop")));
    }

    #[test]
    fn the_bot_check_reads_the_payload_agent_from_2_18() {
        let payload = json!({"website": SITE, "userAgent": "curl/8.0.1"});
        assert_eq!(stored_by(UmamiMode::V2_17, UA, payload.clone()).0, 200);
        assert!(stored_by(UmamiMode::V2_17, UA, payload.clone()).1.is_some(), "2.17 checks the header only");
        assert!(stored_by(UmamiMode::V2_18, UA, payload).1.is_none(), "2.18 discards it");
    }

    #[test]
    fn unknown_websites_are_answered_as_each_release_did() {
        let other = "c59e9c65-ae32-47f1-8400-119fcf4861c4";
        let answer_for = |mode| {
            let server = UmamiServer::new(mode).with_websites(Some(vec![SITE.to_uppercase()]));
            assert_eq!(answer(&server, SEND, UA, json!({"type": "event", "payload": {"website": SITE}})).0, 200);
            let (status, body) = answer(&server, SEND, UA, json!({"type": "event", "payload": {"website": other}}));
            assert_eq!(server.stored().len(), 1, "nothing stored for the unknown website");
            (status, body)
        };
        assert_eq!(answer_for(UmamiMode::V2_10), (403, "Forbidden".to_owned()));
        assert_eq!(answer_for(UmamiMode::V2_15), (404, "Not Found".to_owned()));
        assert_eq!(answer_for(UmamiMode::V2_17), (400, r#"{"error":"Website not found."}"#.to_owned()));
        let (status, body) = answer_for(UmamiMode::V3);
        assert!(status == 400 && body.contains(r#""message":"Website not found.""#), "{body}");
        let server = UmamiServer::new(UmamiMode::V2_18).with_websites(Some(vec![SITE.to_owned()]));
        let (_, body) = answer(&server, BATCH, UA, json!([{"type": "event", "payload": {"website": other}}]));
        assert!(body.contains(r#""errors":1"#) && !body.contains("cache"), "{body}");
    }

    #[test]
    fn decoded_events_name_their_kind() {
        let events = decode(json!([
            {"type": "event", "payload": {"url": "/a"}},
            {"type": "event", "payload": {"name": "buy", "data": {"x": 1}}},
            {"type": "identify", "payload": {"id": "u1"}},
        ]));
        assert_eq!(events[0]["type"], "pageview");
        assert_eq!(events[1]["type"], "event");
        assert_eq!(events[1]["data"]["x"], 1);
        assert_eq!(events[2]["user"], "u1");
    }
}

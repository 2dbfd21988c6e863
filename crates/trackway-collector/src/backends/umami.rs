//! Umami's collection endpoints, `POST /api/send` and `POST /api/batch`, answered as Umami v3.1
//! does (or, in [`UmamiMode::V2Legacy`], as v2.x up to 2.15 did).
//!
//! What is imitated (spec `umami.md` §2–§3): zod's validation of the payload (lengths in UTF-16
//! units, `null` refused, `type` one of `event`/`identify`/`performance`), the 400 body with the
//! failing field, the bot check (`{"beep":"boop"}` on send; silently processed on batch), and a
//! cache token in every success body. The token is readable on purpose, `<sessionId>.<n>`, so a
//! test can tell whose it is; a real server's is an opaque JWT. Every website id is accepted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value, json};
use trackway_wire::umami::{
    HOSTNAME_MAX, LANGUAGE_MAX, NAME_MAX, SCREEN_MAX, TAG_MAX, is_bot_user_agent, is_uuid, utf16_len,
};

use super::{Backend, BackendRequest, DecodedEvent, json_objects};
use crate::reply::Reply;

/// The label of Umami's requests and events in the inspection API.
pub(crate) const LABEL: &str = "umami";
const SEND: &str = "/api/send";
const BATCH: &str = "/api/batch";

/// Which Umami release the collector behaves like.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum UmamiMode {
    /// Umami v3.1: `/api/batch` with per-item `details` and a `cache`, JSON bodies everywhere.
    #[default]
    V3,
    /// Umami v2.x up to 2.15: no `/api/batch` (404), and `/api/send` answers the token as
    /// `text/plain`.
    V2Legacy,
}

impl std::str::FromStr for UmamiMode {
    type Err = String;

    /// `3`, `3.1`, `v3`, `2.17`… → [`UmamiMode::V3`]; `2`, `2.15` (any 2.x up to 2.15) →
    /// [`UmamiMode::V2Legacy`]; `2.16` (JSON tokens, no batch) is refused.
    fn from_str(s: &str) -> Result<Self, String> {
        let v = s.trim().trim_start_matches('v');
        let mut parts = v.split('.');
        let major = parts.next().and_then(|m| m.parse::<u32>().ok());
        let minor = parts.next().map_or(Some(0), |m| m.parse::<u32>().ok());
        match (major, minor) {
            (Some(3..), Some(_)) => Ok(UmamiMode::V3),
            (Some(2), Some(..=15)) => Ok(UmamiMode::V2Legacy),
            // No /api/batch yet, but JSON tokens already: neither mode is that server.
            (Some(2), Some(16)) => Err(format!(
                "{s:?}: the collector imitates Umami up to 2.15 (no /api/batch, text/plain tokens) or 2.17+/3.x, not 2.16"
            )),
            (Some(2), Some(_)) => Ok(UmamiMode::V3),
            _ => Err(format!("{s:?} is not an Umami version the collector imitates (2.x or 3.x)")),
        }
    }
}

/// Whether `path` is one of Umami's collection endpoints.
pub(crate) fn claims(path: &str) -> bool {
    path == SEND || path == BATCH
}

/// The simulated server.
#[derive(Clone, Debug, Default)]
pub(crate) struct UmamiServer {
    mode: UmamiMode,
    /// Tokens issued so far (numbers them, so each success gets a new one).
    issued: Arc<AtomicU64>,
}

/// One item's result from the send handler.
enum Handled {
    Ok { cache: String, session: String },
    Bot,
    Error(Value),
}

impl UmamiServer {
    pub(crate) fn new(mode: UmamiMode) -> Self {
        UmamiServer { mode, issued: Arc::default() }
    }

    pub(crate) fn answer(&self, path: &str, headers: &http::HeaderMap, body: &[u8]) -> Reply {
        let header_ua = headers.get(http::header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("");
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        if path == BATCH {
            if self.mode == UmamiMode::V2Legacy {
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
                }
            }
            let mut out = json!({
                "size": items.len(),
                "processed": items.len() - details.len(),
                "errors": details.len(),
                "details": details,
            });
            if let Some(cache) = cache {
                out["cache"] = Value::String(cache);
            }
            return Reply::status(200).json(out);
        }
        let Some(item) = parsed else {
            return self.error(bad_request(Vec::new()));
        };
        match self.handle(&item, header_ua) {
            Handled::Ok { cache, session } => match self.mode {
                UmamiMode::V3 => Reply::status(200).json(json!({
                    "cache": cache,
                    "sessionId": session,
                    "visitId": uuid_from(&[&session, "visit"]),
                })),
                UmamiMode::V2Legacy => Reply::status(200).header("content-type", "text/plain").body(cache),
            },
            Handled::Bot => Reply::status(200).json(json!({ "beep": "boop" })),
            Handled::Error(body) => self.error(body),
        }
    }

    /// A 400 in this mode's form: v3's JSON, or v2's plain text.
    fn error(&self, body: Value) -> Reply {
        match self.mode {
            UmamiMode::V3 => Reply::status(400).json(body),
            UmamiMode::V2Legacy => Reply::status(400).header("content-type", "text/plain").body("Bad Request"),
        }
    }

    /// The send handler for one `{type, payload}` item.
    fn handle(&self, item: &Value, header_ua: &str) -> Handled {
        if let Err(errors) = validate(item) {
            return Handled::Error(bad_request(errors));
        }
        let payload = &item["payload"];
        let text = |k: &str| payload.get(k).and_then(Value::as_str);
        let ua = text("userAgent").unwrap_or(header_ua);
        if is_bot_user_agent(ua) {
            return Handled::Bot;
        }
        let website = text("website").unwrap_or("").to_ascii_lowercase();
        // As the server: a distinct id alone names the session; else IP and user agent do.
        let session = match text("id") {
            Some(id) => uuid_from(&[&website, id]),
            None => uuid_from(&[&website, text("ip").unwrap_or("127.0.0.1"), ua]),
        };
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
            (SEND, UmamiMode::V3) => {
                let (cache, session) = cache();
                let visit = uuid_from(&[&session, "visit"]);
                Some(Reply::status(200).json(json!({ "cache": cache, "sessionId": session, "visitId": visit })))
            }
            (SEND, UmamiMode::V2Legacy) => {
                Some(Reply::status(200).header("content-type", "text/plain").body(cache().0))
            }
            (BATCH, UmamiMode::V3) => match serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(request.body()) {
                Ok(items) => {
                    let n = items.len();
                    let mut out = json!({ "size": n, "processed": n, "errors": 0, "details": [] });
                    if n > 0 {
                        out["cache"] = Value::String(cache().0);
                    }
                    Some(Reply::status(200).json(out))
                }
                Err(_) => Backend::answer(self, request),
            },
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
    fn send_batch_and_legacy_answers() {
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

        let v2 = UmamiServer::new(UmamiMode::V2Legacy);
        assert_eq!(answer(&v2, BATCH, UA, json!([])).0, 404);
        let (status, token) = answer(&v2, SEND, UA, json!({"type": "event", "payload": {"website": SITE}}));
        assert_eq!(status, 200);
        assert!(!token.starts_with('{'), "{token}");
    }

    #[test]
    fn versions_parse_to_modes() {
        assert_eq!("2.15".parse(), Ok(UmamiMode::V2Legacy));
        assert_eq!("3.1".parse(), Ok(UmamiMode::V3));
        assert_eq!("v3".parse(), Ok(UmamiMode::V3));
        assert!("banana".parse::<UmamiMode>().is_err());
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

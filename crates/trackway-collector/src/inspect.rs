//! The collector's own HTTP API under `/_trackway/`, for looking at (and steering) a running
//! collector from outside the process (a benchmark or test that spawned the binary, a person
//! with curl).
//!
//! The prefix cannot collide with a destination's path, and requests under it are neither
//! recorded nor counted, do not consume the script, and are never faulted.
//!
//! - `GET /_trackway/api/stats`: the counters, plus `events_by_path`, `statuses` (requests
//!   per answered status; 0 is a connection closed without an answer) and `limits` (the
//!   [`LimitStats`](crate::LimitStats): kept and evicted requests and bytes, bodies refused as
//!   too large or too slow).
//! - `GET /_trackway/api/requests?cursor=SEQ&limit=N`: the recorded requests kept in memory,
//!   oldest first, one page at a time: at most `limit` (default 1000, at most 10 000) from
//!   sequence number `cursor` on (default 0), and at most 8 MiB of bodies per page (one request
//!   at least). Each has its `seq`, its `destination` (the label of the backend that claimed
//!   it: `umami` for Umami's paths, `json` for what none claims), its headers with credentials
//!   redacted (as on the live page and in the `--store` file) and the collector's `answer`
//!   (status, headers, body). When more follow, the answer has an `x-trackway-next-cursor`
//!   header and a `link: <...>; rel="next"`; `x-trackway-evicted` counts the requests evicted
//!   from memory so far (a `cursor` below the oldest kept one starts at that one).
//! - `GET /_trackway/api/events?user=&name=&type=&path=&status=&destination=&limit=`: the events
//!   decoded from the recorded request bodies by their backends, oldest first, each with the
//!   `destination` its request was for. Umami events are shown as
//!   `{type: pageview|event|identify, name, url, title, user, data, payload}`.
//! - `GET`, `PUT`, `DELETE /_trackway/api/faults`: read, replace, clear the [`Faults`].

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};

use crate::archive::redacted;
use crate::faults::Faults;
use crate::recorder::RecordedRequest;
use crate::state::Shared;

const PREFIX: &str = "/_trackway/";
const STATS: &str = "/_trackway/api/stats";
const REQUESTS: &str = "/_trackway/api/requests";
const EVENTS: &str = "/_trackway/api/events";
const FAULTS: &str = "/_trackway/api/faults";
/// Events answered by `GET /_trackway/api/events` when no `limit` is given.
const DEFAULT_EVENT_LIMIT: usize = 1000;
/// Requests per page of `GET /_trackway/api/requests` when no `limit` is given, and at most.
const DEFAULT_REQUEST_LIMIT: usize = 1000;
const MAX_REQUEST_LIMIT: usize = 10_000;
/// Bytes of bodies per page of `GET /_trackway/api/requests` (one request at least): the answer
/// stays a few MiB whatever the collector holds.
const PAGE_BYTES: usize = 8 * 1024 * 1024;

/// Whether `path` belongs to the inspection API rather than to the simulated destination.
pub(crate) fn is_inspection(path: &str) -> bool {
    path.starts_with(PREFIX)
}

/// Answers a request under [`PREFIX`].
pub(crate) fn answer(
    shared: &Shared,
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: &[u8],
) -> Response<Full<Bytes>> {
    let read_only = method == Method::GET || method == Method::HEAD;
    match path {
        STATS | REQUESTS | EVENTS if !read_only => method_not_allowed(),
        STATS => stats(shared),
        REQUESTS => match Page::parse(query.unwrap_or("")) {
            Ok(page) => requests(shared, &page),
            Err(message) => error(StatusCode::BAD_REQUEST, &message),
        },
        EVENTS => match EventFilter::parse(query.unwrap_or("")) {
            Ok(filter) => respond(StatusCode::OK, &Value::Array(events(shared, &filter))),
            Err(message) => error(StatusCode::BAD_REQUEST, &message),
        },
        FAULTS => faults(shared, method, body),
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

fn stats(shared: &Shared) -> Response<Full<Bytes>> {
    let stats = shared.recorder.stats();
    let breakdown = shared.recorder.breakdown();
    respond(
        StatusCode::OK,
        &json!({
            "requests": stats.requests,
            "events": stats.events,
            "bytes": stats.bytes,
            "json_errors": stats.json_errors,
            "events_by_path": breakdown.events_by_path,
            "statuses": breakdown.statuses,
            "limits": limits_json(shared),
            "customerio": {
                "stored": shared.backends.customerio.stored(),
                "duplicates": shared.backends.customerio.duplicates(),
            },
        }),
    )
}

/// The [`LimitStats`](crate::LimitStats) and the limits themselves, for the stats and the live page.
pub(crate) fn limits_json(shared: &Shared) -> Value {
    let (too_large, timed_out) = shared.refused.counts();
    let l = shared.recorder.limit_stats(too_large, timed_out);
    json!({
        "kept_requests": l.kept_requests,
        "kept_bytes": l.kept_bytes,
        "evicted_requests": l.evicted_requests,
        "evicted_bytes": l.evicted_bytes,
        "too_large": l.too_large,
        "timed_out": l.timed_out,
        "max_kept_bytes": shared.limits.max_kept_bytes,
        "max_body_bytes": shared.limits.max_body_bytes,
        "body_timeout_ms": u64::try_from(shared.limits.body_timeout.as_millis()).unwrap_or(u64::MAX),
    })
}

/// The query of `GET /_trackway/api/requests`.
#[derive(Debug, PartialEq, Eq)]
struct Page {
    cursor: u64,
    limit: usize,
}

impl Page {
    fn parse(query: &str) -> Result<Self, String> {
        let mut page = Page { cursor: 0, limit: DEFAULT_REQUEST_LIMIT };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "cursor" => {
                    page.cursor = value.parse().map_err(|_| format!("cursor: {value:?} is not a sequence number"))?;
                }
                "limit" => {
                    page.limit = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_REQUEST_LIMIT).contains(n))
                        .ok_or_else(|| format!("limit: {value:?} is not a count from 1 to {MAX_REQUEST_LIMIT}"))?;
                }
                other => return Err(format!("unknown parameter {other:?} (known: cursor, limit)")),
            }
        }
        Ok(page)
    }
}

/// One page of the kept requests, with the cursor of the next one in the headers.
fn requests(shared: &Shared, page: &Page) -> Response<Full<Bytes>> {
    let (requests, next) = shared.recorder.page(page.cursor, page.limit, PAGE_BYTES);
    let items: Vec<Value> = requests.iter().map(request_json).collect();
    let mut response = respond(StatusCode::OK, &Value::Array(items));
    let headers = response.headers_mut();
    let evicted = shared.recorder.limit_stats(0, 0).evicted_requests;
    headers.insert("x-trackway-evicted", HeaderValue::from(evicted));
    if let Some(next) = next {
        headers.insert("x-trackway-next-cursor", HeaderValue::from(next));
        let link = format!("<{REQUESTS}?cursor={next}&limit={}>; rel=\"next\"", page.limit);
        if let Ok(link) = HeaderValue::from_str(&link) {
            headers.insert(http::header::LINK, link);
        }
    }
    response
}

fn faults(shared: &Shared, method: &Method, body: &[u8]) -> Response<Full<Bytes>> {
    if method == Method::GET || method == Method::HEAD {
        return faults_json(&shared.faults());
    }
    if method == Method::DELETE {
        if let Err(e) = shared.set_faults(Faults::default()) {
            // Cannot happen: the default faults are valid.
            return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string());
        }
        return faults_json(&shared.faults());
    }
    if method != Method::PUT {
        return method_not_allowed();
    }
    let faults: Faults = match serde_json::from_slice(body) {
        Ok(faults) => faults,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("invalid faults JSON: {e}")),
    };
    match shared.set_faults(faults) {
        Ok(()) => faults_json(&shared.faults()),
        Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

fn faults_json(faults: &Faults) -> Response<Full<Bytes>> {
    match serde_json::to_value(faults) {
        Ok(value) => respond(StatusCode::OK, &value),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// The query of `GET /_trackway/api/events`; every given filter must match.
#[derive(Debug, Default, PartialEq, Eq)]
struct EventFilter {
    /// `identity.user_id` or `identity.anonymous_id` (or Segment's `userId` / `anonymousId`).
    user: Option<String>,
    /// The event's `name` (or Segment's `event`).
    name: Option<String>,
    /// The event's `type`.
    kind: Option<String>,
    /// The request path.
    path: Option<String>,
    /// The status the request was answered.
    status: Option<u16>,
    /// The destination the request was for (`umami`, `json`).
    destination: Option<String>,
    limit: usize,
}

impl EventFilter {
    fn parse(query: &str) -> Result<Self, String> {
        let mut filter = EventFilter { limit: DEFAULT_EVENT_LIMIT, ..EventFilter::default() };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value).ok_or_else(|| format!("{key}: invalid percent-encoding"))?;
            match key {
                "user" => filter.user = Some(value),
                "name" => filter.name = Some(value),
                "type" => filter.kind = Some(value),
                "path" => filter.path = Some(value),
                "destination" => filter.destination = Some(value),
                "status" => {
                    filter.status = Some(value.parse().map_err(|_| format!("status: {value:?} is not a status code"))?);
                }
                "limit" => filter.limit = value.parse().map_err(|_| format!("limit: {value:?} is not a count"))?,
                other => {
                    return Err(format!(
                        "unknown parameter {other:?} (known: user, name, type, path, status, destination, limit)"
                    ));
                }
            }
        }
        Ok(filter)
    }

    fn matches_request(&self, request: &RecordedRequest) -> bool {
        self.path.as_ref().is_none_or(|p| *p == request.path)
            && self.status.is_none_or(|s| s == request.status)
            && self.destination.as_ref().is_none_or(|d| *d == request.destination)
    }

    fn matches_event(&self, event: &Value) -> bool {
        let field = |names: &[&str]| -> Vec<&str> { names.iter().filter_map(|n| event.pointer(n)?.as_str()).collect() };
        let user_ok = self.user.as_ref().is_none_or(|u| {
            field(&["/identity/user_id", "/identity/anonymous_id", "/userId", "/anonymousId", "/user"])
                .contains(&u.as_str())
        });
        let name_ok = self.name.as_ref().is_none_or(|n| field(&["/name", "/event"]).contains(&n.as_str()));
        let kind_ok = self.kind.as_ref().is_none_or(|t| event.get("type").and_then(Value::as_str) == Some(t));
        user_ok && name_ok && kind_ok
    }
}

/// The last `filter.limit` matching events, oldest first.
fn events(shared: &Shared, filter: &EventFilter) -> Vec<Value> {
    let requests = shared.recorder.requests();
    let mut found = Vec::new();
    'requests: for request in requests.iter().rev().filter(|r| filter.matches_request(r)) {
        let mut in_request: Vec<Value> = request.events().into_iter().filter(|e| filter.matches_event(e)).collect();
        while let Some(event) = in_request.pop() {
            if found.len() >= filter.limit {
                break 'requests;
            }
            found.push(json!({
                "path": request.path,
                "destination": request.destination,
                "received_at_ms": shared.unix_ms(request.received_at),
                "status": request.status,
                "event": event,
            }));
        }
    }
    found.reverse();
    found
}

/// Decodes `%XX` escapes and `+` (a space, as in HTML forms); `None` for a bad escape or
/// invalid UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn method_not_allowed() -> Response<Full<Bytes>> {
    error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    respond(status, &json!({ "error": message }))
}

fn request_json(request: &RecordedRequest) -> Value {
    json!({
        "seq": request.seq,
        "method": request.method,
        "path": request.path,
        "destination": request.destination,
        "query": request.query,
        "status": request.status,
        // Redacted as on the live page and in the store: the API is as easy to reach (curl, a
        // browser tab) and its answers end up in logs.
        "headers": redacted(&request.headers),
        "body": request.body_str(),
        "answer": {
            "status": request.status,
            "headers": request.answer_headers,
            "body": String::from_utf8_lossy(&request.answer_body),
        },
    })
}

fn respond(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c%2Fd").as_deref(), Some("a b c/d"));
        assert_eq!(percent_decode("%C3%A9").as_deref(), Some("é"));
        assert_eq!(percent_decode("%2"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%FF"), None);
    }

    #[test]
    fn event_filter_parsing() {
        let f =
            EventFilter::parse("user=u%201&name=purchase&type=track&path=%2Fevents&status=200&limit=5").expect("valid");
        assert_eq!(
            f,
            EventFilter {
                user: Some("u 1".into()),
                name: Some("purchase".into()),
                kind: Some("track".into()),
                path: Some("/events".into()),
                status: Some(200),
                destination: None,
                limit: 5,
            }
        );
        assert_eq!(EventFilter::parse("").expect("empty").limit, DEFAULT_EVENT_LIMIT);
        assert!(EventFilter::parse("limit=x").is_err());
        assert!(EventFilter::parse("nme=x").is_err());
    }

    #[test]
    fn page_parsing() {
        assert_eq!(Page::parse("").expect("empty"), Page { cursor: 0, limit: DEFAULT_REQUEST_LIMIT });
        assert_eq!(Page::parse("cursor=7&limit=2").expect("valid"), Page { cursor: 7, limit: 2 });
        assert!(Page::parse("limit=0").is_err());
        assert!(Page::parse(&format!("limit={}", MAX_REQUEST_LIMIT + 1)).is_err());
        assert!(Page::parse("cursor=-1").is_err());
        assert!(Page::parse("after=3").is_err());
    }

    #[test]
    fn event_matching() {
        let event = json!({"type": "track", "name": "purchase", "identity": {"user_id": "u1", "anonymous_id": "a1"}});
        let filter = |q: &str| EventFilter::parse(q).expect("valid");
        assert!(filter("").matches_event(&event));
        assert!(filter("user=u1&name=purchase&type=track").matches_event(&event));
        assert!(filter("user=a1").matches_event(&event));
        assert!(!filter("user=u2").matches_event(&event));
        assert!(!filter("name=signup").matches_event(&event));
        assert!(!filter("type=page").matches_event(&event));
        assert!(filter("user=s1&name=e").matches_event(&json!({"userId": "s1", "event": "e"})));
    }
}

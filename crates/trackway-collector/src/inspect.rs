//! The collector's own HTTP API under `/_trackway/`, for looking at (and steering) a running
//! collector from outside the process (a benchmark or test that spawned the binary, a person
//! with curl).
//!
//! The prefix cannot collide with a destination's path, and requests under it are neither
//! recorded nor counted, do not consume the script, and are never faulted.
//!
//! - `GET /_trackway/api/stats`: the counters, plus `events_by_path` and `statuses` (requests
//!   per answered status; 0 is a connection closed without an answer).
//! - `GET /_trackway/api/requests`: the recorded requests, each with its `destination` (the
//!   label of the backend that claimed it: `umami` for Umami's paths, `json` for what none
//!   claims) and the collector's `answer` (status, headers, body).
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
        REQUESTS => {
            let requests: Vec<Value> = shared.recorder.requests().iter().map(request_json).collect();
            respond(StatusCode::OK, &Value::Array(requests))
        }
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
            "customerio": {
                "stored": shared.backends.customerio.stored(),
                "duplicates": shared.backends.customerio.duplicates(),
            },
        }),
    )
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
        "method": request.method,
        "path": request.path,
        "destination": request.destination,
        "query": request.query,
        "status": request.status,
        "headers": request.headers,
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

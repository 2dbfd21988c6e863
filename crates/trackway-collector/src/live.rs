//! The live page at `/`: a web view of the requests the collector receives, updated as they
//! arrive, with per-destination counters and the faults currently injected.
//!
//! The page is three static files compiled into the binary (`live/index.html`, `app.js`,
//! `style.css`: plain HTML, CSS and JavaScript, no build step, nothing fetched from elsewhere, so
//! it works offline). It gets its data from one server-sent-events stream,
//! `GET /_trackway/live/stream`:
//!
//! 1. `event: hello`: the counters of the requests not replayed, the current faults, and whether
//!    the collector is in sink mode (which keeps no request to show);
//! 2. `event: request`, one per kept request: the newest [`REPLAY`] requests received so far, then
//!    every new one as it is recorded, oldest first, each with its sequence number.
//!
//! Replay and live updates come from the same loop reading the recorder by sequence number, so a
//! request recorded while the page loads is sent exactly once, and a page that falls behind
//! catches up rather than losing requests. A page that reconnects gets a new `hello` and
//! starts over.
//!
//! Header values that carry credentials are redacted here, as in the `--store` file.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::archive::redacted;
use crate::inspect;
use crate::recorder::{DestinationCounter, Evicted, RecordedRequest};
use crate::reply::CloseConnection;
use crate::state::Shared;

const PAGE: &str = include_str!("live/index.html");
const SCRIPT: &str = include_str!("live/app.js");
const STYLE: &str = include_str!("live/style.css");

const STREAM_PATH: &str = "/_trackway/live/stream";
const SCRIPT_PATH: &str = "/_trackway/live/app.js";
const STYLE_PATH: &str = "/_trackway/live/style.css";

/// Requests replayed to a page that connects; older ones only count in the `hello` counters.
/// The page keeps about as many rows, so replaying more would only be thrown away.
pub(crate) const REPLAY: usize = 2000;

/// A comment sent on an idle stream, so a page that went away is noticed (the write fails) and
/// its feeding task ends.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// Stream frames buffered per page before the feeding task waits for the page to read.
const STREAM_BUFFER: usize = 256;

/// The body of every collector response: a whole body, or the live stream.
pub(crate) type LiveBody = Either<Full<Bytes>, StreamBody>;

/// Answers the live page, its assets and its stream; passes every other request to `fallback`
/// (the collector's normal handling: inspection API, faults, rules, script).
///
/// Only `GET` and `HEAD` are taken, so a destination that `POST`s to `/` is still recorded.
pub(crate) async fn route<F, Fut>(
    shared: Arc<Shared>,
    request: Request<Incoming>,
    fallback: F,
) -> Result<Response<LiveBody>, CloseConnection>
where
    F: FnOnce(Arc<Shared>, Request<Incoming>) -> Fut,
    Fut: Future<Output = Result<Response<Full<Bytes>>, CloseConnection>>,
{
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        let asset = match request.uri().path() {
            "/" => Some((PAGE, "text/html; charset=utf-8")),
            SCRIPT_PATH => Some((SCRIPT, "text/javascript; charset=utf-8")),
            STYLE_PATH => Some((STYLE, "text/css; charset=utf-8")),
            STREAM_PATH => return Ok(stream(shared)),
            _ => None,
        };
        if let Some((text, content_type)) = asset {
            return Ok(static_asset(text, content_type));
        }
    }
    fallback(shared, request).await.map(|response| response.map(Either::Left))
}

fn static_asset(text: &'static str, content_type: &'static str) -> Response<LiveBody> {
    let mut response = Response::new(Either::Left(Full::new(Bytes::from_static(text.as_bytes()))));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The assets change with the binary, and a developer restarts the collector often.
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Starts a task feeding one page and answers with its stream.
fn stream(shared: Arc<Shared>) -> Response<LiveBody> {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(feed(shared, tx));
    let mut response = Response::new(Either::Right(StreamBody(rx)));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Sends the `hello`, the replay and then every new request to one page, until the page goes
/// away (a send fails) or the collector stops (its runtime drops this task). A page that fell so
/// far behind that requests it had not been sent were evicted starts over with a new `hello`,
/// so its counters stay right.
async fn feed(shared: Arc<Shared>, tx: mpsc::Sender<Bytes>) {
    'hello: loop {
        // Subscribed before the first read: a request recorded after that read wakes the loop.
        let mut kept = shared.recorder.watch_kept();
        let since = shared.recorder.requests_since(0);
        let all = since.requests;
        let replay_from = all.len().saturating_sub(REPLAY);
        let stats = shared.recorder.stats();
        let hello = json!({
            "sink": shared.sink,
            "faults": shared.faults(),
            "counters": counters(&all[..replay_from], &since.evicted),
            "not_replayed": since.evicted.requests + replay_from as u64,
            "totals": { "requests": stats.requests, "events": stats.events },
            "limits": inspect::limits_json(&shared),
        });
        if tx.send(frame("hello", &hello)).await.is_err() {
            return;
        }
        let mut next = all.get(replay_from).map_or(since.next, |r| r.seq);
        let mut evicted = since.evicted.requests;
        let mut pending = all.into_iter().skip(replay_from).collect::<Vec<_>>();
        loop {
            if pending.first().is_some_and(|r| r.seq > next) {
                continue 'hello;
            }
            for request in pending.drain(..) {
                let entry = entry_json(&shared, &request, evicted);
                if tx.send(frame("request", &entry)).await.is_err() {
                    return;
                }
                next = request.seq + 1;
            }
            tokio::select! {
                changed = kept.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(KEEPALIVE) => {
                    if tx.send(Bytes::from_static(b": keepalive\n\n")).await.is_err() {
                        return;
                    }
                }
            }
            let since = shared.recorder.requests_since(next);
            pending = since.requests;
            evicted = since.evicted.requests;
        }
    }
}

/// One server-sent event. `data` is compact JSON, so it never contains a newline.
fn frame(event: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

/// Requests, events and requests per answered status, per destination: of `requests` and of
/// the `evicted` ones (and Customer.io duplicates, when any).
fn counters(requests: &[RecordedRequest], evicted: &Evicted) -> Value {
    let mut by_destination: BTreeMap<String, DestinationCounter> = evicted.by_destination.clone();
    for request in requests {
        let counter = by_destination.entry(card_of(&request.destination, &request.path)).or_default();
        counter.add(request.status, request.decoded().len() as u64, duplicates(request));
    }
    by_destination
        .into_iter()
        .map(|(name, c)| {
            let mut counts = json!({"requests": c.requests, "events": c.events, "statuses": c.statuses});
            if c.duplicates > 0 {
                counts["duplicates"] = json!(c.duplicates);
            }
            (name, counts)
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// The live page's card for a request of `destination` to `path`: the destination, except that
/// each Bloomreach project gets its own card (`bloomreach:<project token>`), since one SDK
/// destination may map event types to several projects and each is a separate store there.
pub(crate) fn card_of(destination: &str, path: &str) -> String {
    if destination == "bloomreach"
        && let Some(token) = path.strip_prefix("/track/v2/projects/").and_then(|rest| rest.split('/').next())
        && !token.is_empty()
    {
        return format!("bloomreach:{token}");
    }
    destination.to_owned()
}

/// How many events of `request` the backend answered as duplicates (Customer.io's, by event id).
pub(crate) fn duplicates(request: &RecordedRequest) -> u64 {
    request
        .answer_headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(crate::backends::customerio::DUPLICATES_HEADER))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// What the page shows of one request: the request as received (credentials redacted, JSON
/// bodies indented), the collector's answer, and a summary of each event in the body.
fn entry_json(shared: &Shared, request: &RecordedRequest, evicted: u64) -> Value {
    let body = request.body_str();
    // Summarized from the event as its backend decoded it (so Umami's items say `pageview`, as
    // in the events API), shown as sent.
    let events: Vec<Value> = request
        .decoded()
        .into_iter()
        .map(|decoded| {
            let event = &decoded.event;
            json!({
                "type": first_text(event, &["/type"]),
                "name": first_text(event, &["/name", "/event", "/payload/name"]),
                "user": first_text(
                    event,
                    &["/identity/user_id", "/userId", "/payload/id", "/identity/anonymous_id", "/anonymousId", "/user"],
                ),
                "id": first_text(event, &["/id", "/messageId", "/message_id"]),
                "url": first_text(event, &["/page/path", "/page/url", "/payload/url", "/properties/url", "/url"]),
                "json": match decoded.raw {
                    Some(raw) => indent_json(raw),
                    None => indent_json(&event.to_string()),
                },
            })
        })
        .collect();
    let is_json = serde_json::from_str::<serde::de::IgnoredAny>(&body).is_ok();
    let answer_body = String::from_utf8_lossy(&request.answer_body);
    json!({
        "seq": request.seq,
        "evicted": evicted,
        "at_ms": shared.unix_ms(request.received_at),
        "destination": request.destination,
        "card": card_of(&request.destination, &request.path),
        "method": request.method,
        "path": request.path,
        "query": request.query,
        "headers": redacted(&request.headers),
        "body": if is_json { indent_json(&body) } else { body.to_string() },
        "body_json": is_json,
        "body_bytes": request.body.len(),
        "status": request.status,
        "duplicates": duplicates(request),
        "answer": {
            "headers": request.answer_headers,
            "body": if serde_json::from_str::<serde::de::IgnoredAny>(&answer_body).is_ok() {
                indent_json(&answer_body)
            } else {
                answer_body.to_string()
            },
        },
        "events": events,
    })
}

fn first_text(event: &Value, pointers: &[&str]) -> Option<String> {
    pointers.iter().find_map(|p| event.pointer(p)?.as_str().map(str::to_owned))
}

/// Re-indents valid JSON text by two spaces, keeping its keys, numbers and escapes exactly as
/// written (parsing into a `Value` would sort the keys and could reformat numbers).
fn indent_json(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 2);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut chars = text.trim().chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.extend(std::iter::repeat_n("  ", depth));
    };
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                // An empty object or array stays on one line.
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
                if matches!(chars.peek(), Some('}' | ']')) {
                    out.extend(chars.next());
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

/// The live stream's body: the frames a feeding task sends, until it stops.
#[derive(Debug)]
pub(crate) struct StreamBody(mpsc::Receiver<Bytes>);

impl Body for StreamBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|frame| frame.map(|bytes| Ok(Frame::data(bytes))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::test_request;

    #[test]
    fn indenting_keeps_order_numbers_and_strings() {
        let text = r#"{"z":1,"a":[1.50,{}],"s":"a,b:{\"c\"}","e":[ ],"n":null}"#;
        let expected = "{\n  \"z\": 1,\n  \"a\": [\n    1.50,\n    {}\n  ],\n  \"s\": \"a,b:{\\\"c\\\"}\",\n  \"e\": [],\n  \"n\": null\n}";
        assert_eq!(indent_json(text), expected);
        assert_eq!(indent_json(" 42 "), "42");
        let reparsed: Value = serde_json::from_str(&indent_json(text)).expect("still JSON");
        assert_eq!(reparsed, serde_json::from_str::<Value>(text).expect("JSON"));
    }

    #[test]
    fn counters_per_destination() {
        let request =
            |path: &str, status: u16, body: &'static [u8]| RecordedRequest { status, ..test_request(path, body) };
        let got = counters(
            &[
                request("/events", 200, b"[{},{}]"),
                request("/events", 503, b"[{}]"),
                request("/api/send", 200, br#"{"type":"event","payload":{}}"#),
                request("/api/batch", 0, b"[]"),
            ],
            &Evicted {
                requests: 1,
                bytes: 9,
                by_destination: [(
                    "json".to_owned(),
                    DestinationCounter { requests: 1, events: 4, duplicates: 0, statuses: [(200, 1)].into() },
                )]
                .into(),
            },
        );
        assert_eq!(
            got,
            json!({
                "json": {"requests": 3, "events": 7, "statuses": {"200": 2, "503": 1}},
                "umami": {"requests": 2, "events": 1, "statuses": {"0": 1, "200": 1}},
            })
        );
    }

    #[test]
    fn each_bloomreach_project_has_its_own_card() {
        assert_eq!(card_of("bloomreach", "/track/v2/projects/shop/customers/events"), "bloomreach:shop");
        assert_eq!(card_of("bloomreach", "/track/v2/projects/pay-1/batch"), "bloomreach:pay-1");
        assert_eq!(card_of("bloomreach", "/somewhere"), "bloomreach");
        assert_eq!(card_of("umami", "/track/v2/projects/x/customers"), "umami");
        let got = counters(
            &[
                test_request("/track/v2/projects/shop/customers/events", br#"{"event_type":"a"}"#),
                test_request("/track/v2/projects/pay/customers/events", br#"{"event_type":"payment"}"#),
            ],
            &Evicted::default(),
        );
        let names: Vec<&String> = got.as_object().unwrap().keys().collect();
        assert_eq!(names, ["bloomreach:pay", "bloomreach:shop"]);
    }
}

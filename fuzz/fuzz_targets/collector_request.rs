//! The collector's decoding of request bodies: the events the inspection API and the store
//! show, sink mode's event count, and the Umami backend's answers.
//!
//! Checks: the decoders agree with each other and with their documented rules (sink counts an
//! array's elements, a `batch` array's elements, or 1; the inspection API keeps the objects
//! among them; Umami items become `{type, payload, …}`); the Umami backend answers only its
//! paths, with a status its mode can give and a JSON body in v3; a v3 batch answer's counts and
//! `details` are consistent; and the SDK's Umami classifier reads the collector's answer as the
//! collector meant it (an item named in `details`, a 400 or a bot reply is rejected, anything
//! else accepted is delivered).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use trackway::destination::{Outcome, Request, Response, Umami};
use trackway::fuzzing::umami_classify;
use trackway_collector::UmamiMode;
use trackway_collector::fuzzing::{backend_answer, count_events, decode_events};

const WEBSITE: &str = "b59e9c65-ae32-47f1-8400-119fcf4861c4";
const PATHS: &[&str] = &["/api/send", "/api/batch", "/v1/batch", "/events", "/api/batch/"];
const TYPES: &[&str] = &["event", "identify", "performance", "page", ""];

/// A JSON value of a field the fuzzer shapes: the type zod checks, or another.
#[derive(Arbitrary, Debug)]
enum Field {
    Str(String),
    Int(i64),
    Float(f64),
    Null,
    Object(Vec<(String, String)>),
}

impl Field {
    fn json(&self) -> Value {
        match self {
            Field::Str(s) => json!(s),
            Field::Int(i) => json!(i),
            Field::Float(f) => json!(f),
            Field::Null => Value::Null,
            Field::Object(entries) => Value::Object(entries.iter().map(|(k, v)| (k.clone(), json!(v))).collect()),
        }
    }
}

/// One `{type, payload}` item of an Umami request.
#[derive(Arbitrary, Debug)]
struct Item {
    kind: Option<u8>,
    website: Option<Field>,
    fields: Vec<(u8, Field)>,
    not_an_object: bool,
}

const PAYLOAD_KEYS: &[&str] = &[
    "hostname",
    "language",
    "screen",
    "name",
    "tag",
    "url",
    "referrer",
    "title",
    "id",
    "ip",
    "userAgent",
    "data",
    "timestamp",
    "link",
];

impl Item {
    fn json(&self) -> Value {
        if self.not_an_object {
            return json!(self.fields.len());
        }
        let mut payload = serde_json::Map::new();
        match &self.website {
            Some(Field::Null) | None => {}
            Some(Field::Int(_)) => {
                payload.insert("website".into(), json!(WEBSITE));
            }
            Some(other) => {
                payload.insert("website".into(), other.json());
            }
        }
        for (k, v) in &self.fields {
            payload.insert(PAYLOAD_KEYS[usize::from(*k) % PAYLOAD_KEYS.len()].into(), v.json());
        }
        let mut item = json!({ "payload": payload });
        if let Some(kind) = self.kind {
            item["type"] = json!(TYPES[usize::from(kind) % TYPES.len()]);
        }
        item
    }
}

#[derive(Arbitrary, Debug)]
enum Body {
    Raw(Vec<u8>),
    Items(Vec<Item>),
    One(Item),
    Wrapped { batch: Vec<Item>, other: Option<String> },
}

#[derive(Arbitrary, Debug)]
struct Case {
    path: u8,
    legacy: bool,
    user_agent: Option<String>,
    body: Body,
}

impl Body {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Body::Raw(b) => b.clone(),
            Body::Items(items) => Value::Array(items.iter().map(Item::json).collect()).to_string().into_bytes(),
            Body::One(item) => item.json().to_string().into_bytes(),
            Body::Wrapped { batch, other } => {
                let mut body = json!({ "batch": batch.iter().map(Item::json).collect::<Vec<_>>() });
                if let Some(other) = other {
                    body["sentAt"] = json!(other);
                }
                body.to_string().into_bytes()
            }
        }
    }
}

/// Sink mode's documented count, from the parsed body.
fn expected_count(json: &Value) -> (u64, Vec<&Value>) {
    match json {
        Value::Array(items) => (items.len() as u64, items.iter().collect()),
        Value::Object(o) => match o.get("batch") {
            Some(Value::Array(items)) => (items.len() as u64, items.iter().collect()),
            _ => (1, vec![json]),
        },
        other => (1, vec![other]),
    }
}

fn check_decoding(path: &str, body: &[u8]) {
    let events = decode_events(path, body);
    let umami = path == "/api/send" || path == "/api/batch";
    let Ok(json) = serde_json::from_slice::<Value>(body) else {
        assert!(events.is_empty(), "events decoded from a body that is not JSON");
        if !body.iter().all(u8::is_ascii_whitespace) {
            assert_eq!(count_events(body), None, "sink counted a body that is not JSON");
        }
        return;
    };
    let (count, candidates) = expected_count(&json);
    assert_eq!(count_events(body), Some(count), "sink count");
    assert!(events.iter().all(Value::is_object));
    if umami {
        let items: Vec<&Value> = match &json {
            Value::Array(items) => items.iter().filter(|i| i.is_object()).collect(),
            Value::Object(_) => vec![&json],
            _ => Vec::new(),
        };
        assert_eq!(events.len(), items.len(), "one Umami event per item object");
        for (event, item) in events.iter().zip(items) {
            assert!(event["type"].is_string(), "{event}");
            assert_eq!(event["payload"], item.get("payload").cloned().unwrap_or(Value::Null));
        }
    } else {
        let objects: Vec<&Value> = candidates.into_iter().filter(|c| c.is_object()).collect();
        assert_eq!(events.iter().collect::<Vec<_>>(), objects, "JSON events are the objects of the body");
    }
}

fuzz_target!(|case: Case| {
    let path = PATHS[usize::from(case.path) % PATHS.len()];
    let body = case.body.bytes();
    check_decoding(path, &body);

    let mode = if case.legacy { UmamiMode::V2_15 } else { UmamiMode::V3 };
    let mut headers = http::HeaderMap::new();
    if let Some(ua) = case.user_agent.as_deref().and_then(|ua| http::HeaderValue::from_str(ua).ok()) {
        headers.insert(http::header::USER_AGENT, ua);
    }
    let Some((status, answer)) = backend_answer(mode, path, &headers, &body) else {
        assert!(path != "/api/send" && path != "/api/batch", "no answer on an Umami path");
        return;
    };
    assert!(path == "/api/send" || path == "/api/batch", "a backend claimed {path}");
    let batch = path == "/api/batch";
    match (mode, batch) {
        (UmamiMode::V2_15, true) => assert_eq!(status, 404),
        _ => assert!(status == 200 || status == 400, "status {status}"),
    }
    let answer_json = serde_json::from_slice::<Value>(&answer);
    if mode == UmamiMode::V3 {
        assert!(answer_json.is_ok(), "v3 answers JSON: {}", String::from_utf8_lossy(&answer));
    }
    let items = if batch {
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Array(items)) => items.len(),
            _ => 0,
        }
    } else {
        1
    };
    let mut named = Vec::new();
    if mode == UmamiMode::V3 && batch && status == 200 {
        let answer = answer_json.expect("checked");
        let size = answer["size"].as_u64().expect("size");
        assert_eq!(size, items as u64);
        assert_eq!(answer["processed"].as_u64().expect("processed") + answer["errors"].as_u64().expect("errors"), size);
        named = answer["details"]
            .as_array()
            .expect("details")
            .iter()
            .map(|d| d["index"].as_u64().expect("index"))
            .collect();
        assert!(named.windows(2).all(|w| w[0] < w[1]) && named.iter().all(|i| *i < size), "details {named:?}");
    }

    // The SDK reads the collector's answer as the collector meant it.
    let url = format!("http://127.0.0.1:1{path}");
    let request = Request::post(&url, body.clone(), (0..items).collect());
    let classified = umami_classify(&Umami::new(WEBSITE), &request, &Response::new(status, answer.clone()));
    assert_eq!(classified.outcomes.len(), items);
    let bot = answer.starts_with(br#"{"beep""#);
    for (i, outcome) in classified.outcomes.iter().enumerate() {
        let rejected = status == 400 || bot || named.contains(&(i as u64));
        // Not an exhaustive match: outcomes the SDK adds later need no change here.
        if matches!(outcome, Outcome::Reject(_)) {
            assert!(rejected, "item {i} rejected: {outcome:?}");
        } else if *outcome == Outcome::Delivered {
            assert!(!rejected && status == 200, "item {i} delivered");
        } else if *outcome == Outcome::Retry {
            // The v2 server's 404 on /api/batch: send the same events through /api/send.
            assert!(batch && status == 404, "item {i} retried after {status}");
        } else {
            panic!("item {i}: {outcome:?} after the collector's {status}");
        }
    }
});

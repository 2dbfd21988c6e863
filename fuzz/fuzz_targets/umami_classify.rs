//! The Umami destination's classifier on any server answer (status, headers, body) to a request
//! it sent to `/api/batch` or `/api/send`.
//!
//! Checks: exactly one outcome per item of the request; no answer outside 2xx delivers; on a
//! 2xx `/api/batch` an item the `details` do not name is never rejected and one they give a 5xx
//! is never delivered; a 404 on `/api/batch` switches to `/api/send`; the state it writes has
//! only its own keys, and every cache token it stores is one the next request can carry as a
//! header.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use trackway::destination::{Outcome, Request, Response, Umami};
use trackway::fuzzing::umami_classify;

const WEBSITE: &str = "b59e9c65-ae32-47f1-8400-119fcf4861c4";

/// One `details[]` entry of a batch answer.
#[derive(Arbitrary, Debug)]
struct Detail {
    index: Option<i64>,
    status: Option<u16>,
    /// `response.error.status` (v3) rather than `response.status`.
    nested: bool,
    message: String,
}

#[derive(Arbitrary, Debug)]
enum Body {
    Raw(Vec<u8>),
    Text(String),
    Batch { details: Vec<Detail>, cache: Option<String>, extra: Option<(String, String)> },
    Send { cache: Option<String>, beep: bool, session: Option<String> },
}

impl Body {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Body::Raw(b) => b.clone(),
            Body::Text(t) => t.clone().into_bytes(),
            Body::Batch { details, cache, extra } => {
                let details: Vec<Value> = details
                    .iter()
                    .map(|d| {
                        let response = match (d.nested, d.status) {
                            (true, s) => json!({ "error": { "status": s, "message": d.message } }),
                            (false, s) => json!({ "status": s, "message": d.message }),
                        };
                        json!({ "index": d.index, "response": response })
                    })
                    .collect();
                let mut body = json!({ "size": details.len(), "details": details });
                if let Some(cache) = cache {
                    body["cache"] = json!(cache);
                }
                if let Some((k, v)) = extra {
                    body[k.as_str()] = json!(v);
                }
                body.to_string().into_bytes()
            }
            Body::Send { cache, beep, session } => {
                let mut body = json!({});
                if let Some(cache) = cache {
                    body["cache"] = json!(cache);
                }
                if *beep {
                    body["beep"] = json!("boop");
                }
                if let Some(session) = session {
                    body["sessionId"] = json!(session);
                }
                body.to_string().into_bytes()
            }
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Case {
    batch: bool,
    items: u8,
    user_id: Option<String>,
    ip: Option<String>,
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    retry_after: Option<String>,
    body: Body,
}

/// The request the destination would have sent: its items carry one identity.
fn request(case: &Case, n: usize) -> Request {
    let item = |_| json!({ "type": "event", "payload": { "website": WEBSITE, "id": case.user_id, "ip": case.ip } });
    let (url, body) = if case.batch {
        ("https://umami.example/api/batch", Value::Array((0..n).map(item).collect()))
    } else {
        ("https://umami.example/api/send", item(0))
    };
    let request = Request::post(url, body.to_string(), (0..n).collect());
    request.header(http::header::USER_AGENT, http::HeaderValue::from_static("Mozilla/5.0 (X11; Linux x86_64) t/1"))
}

fn response(case: &Case) -> Response {
    let mut response = Response::new(case.status, case.body.bytes());
    for (name, value) in &case.headers {
        if let (Ok(name), Ok(value)) =
            (http::HeaderName::from_bytes(name.as_bytes()), http::HeaderValue::from_bytes(value))
        {
            response.headers.append(name, value);
        }
    }
    if let Some(value) = case.retry_after.as_deref().and_then(|v| http::HeaderValue::from_str(v).ok()) {
        response.headers.insert(http::header::RETRY_AFTER, value);
    }
    response
}

/// The items the `details` of a batch answer name, with the status they give.
fn named(body: &[u8]) -> Vec<(u64, Option<u64>)> {
    let Ok(body) = serde_json::from_slice::<Value>(body) else { return Vec::new() };
    let details = body.get("details").and_then(Value::as_array).cloned().unwrap_or_default();
    details
        .iter()
        .filter_map(|d| {
            let index = d.get("index")?.as_u64()?;
            let r = d.get("response");
            let status = r.and_then(|r| r.pointer("/error/status").or_else(|| r.get("status"))).and_then(Value::as_u64);
            Some((index, status))
        })
        .collect()
}

fuzz_target!(|case: Case| {
    // A send request carries one event; a batch up to the destination's 100.
    let n = if case.batch { usize::from(case.items % 101) } else { 1 };
    let umami = Umami::new(WEBSITE);
    let request = request(&case, n);
    let response = response(&case);
    let classified = umami_classify(&umami, &request, &response);
    let outcomes = &classified.outcomes;
    assert_eq!(outcomes.len(), n, "one outcome per item");
    if !response.status.is_success() {
        assert!(!outcomes.contains(&Outcome::Delivered), "{} delivered: {outcomes:?}", response.status);
    }
    if case.batch && response.status.is_success() {
        let named = named(&response.body);
        for (i, outcome) in outcomes.iter().enumerate() {
            let said: Vec<_> = named.iter().filter(|(at, _)| *at == i as u64).collect();
            if said.is_empty() {
                assert!(!matches!(outcome, Outcome::Reject(_)), "item {i} rejected without a detail: {outcome:?}");
            }
            // The last detail for an item wins.
            if let Some((_, Some(500..=599))) = said.last() {
                assert_ne!(outcome, &Outcome::Delivered, "item {i} delivered despite a 5xx detail");
            }
        }
    }
    if case.batch && response.status.as_u16() == 404 {
        // The old-server probe: /api/send next, marked under this base URL and website.
        assert!(classified.state.iter().any(|(k, v)| k.starts_with("probe/") && v.is_some()), "{:?}", classified.state);
    }
    for (key, value) in &classified.state {
        // Its own keys: what it learned of the server, the probe marker, cache tokens, and the
        // removal of the unkeyed keys of earlier versions.
        let own = ["server/", "probe/", "cache/"].iter().any(|p| key.starts_with(p));
        let legacy = (key == "no_batch" || key == "probe") && value.is_none();
        assert!(own || legacy, "unknown state key {key:?}");
        if key.starts_with("cache/")
            && let Some(token) = value
        {
            assert!(
                http::HeaderValue::from_bytes(token).is_ok(),
                "stored a cache token no request can carry: {:?}",
                String::from_utf8_lossy(token)
            );
        }
    }
});

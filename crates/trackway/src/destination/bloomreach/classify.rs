//! Bloomreach's answers → one outcome per event: `success` must be `true` (in the body, or in a
//! batch command's result), the status decides the rest.

use std::time::SystemTime;

use serde_json::Value;

use crate::destination::{Classified, Outcome, Request, Response, classify_status, parse_retry_after};

pub(super) fn classify(request: &Request, response: &Response) -> Classified {
    let n = request.items.len();
    let status = response.status.as_u16();
    if !(200..300).contains(&status) {
        return Classified::new(vec![by_status(response); n]);
    }
    let body: Option<Value> = serde_json::from_slice(&response.body).ok();
    let Some(body) = body else {
        let why = format!("{status} without `success: true` (body: {})", response.body_excerpt());
        return Classified::new(vec![Outcome::Reject(why); n]);
    };
    if body.get("success") != Some(&Value::Bool(true)) {
        return Classified::new(vec![Outcome::Reject(rejection(status, &body)); n]);
    }
    if !request.url.ends_with("/batch") {
        return Classified::new(vec![Outcome::Delivered; n]);
    }
    // `results[i]` answers `commands[i]`; a command without a result was not answered.
    let results = body.get("results").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let outcomes = (0..n)
        .map(|i| match results.get(i) {
            None => Outcome::Retry,
            Some(r) if r.get("success") == Some(&Value::Bool(true)) => Outcome::Delivered,
            Some(r) => Outcome::Reject(format!("command {i}: {}", rejection(status, r))),
        })
        .collect();
    Classified::new(outcomes)
}

/// The status rule: 400 and other 4xx rejected, 401/403/404 misconfigured, 429 and 5xx retried
/// (after `Retry-After` when given, on any 5xx, not only 503).
fn by_status(response: &Response) -> Outcome {
    let status = response.status.as_u16();
    if (500..600).contains(&status)
        && let Some(after) = response
            .headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()))
    {
        return Outcome::Throttled(after);
    }
    match classify_status(response) {
        Outcome::Reject(_) => {
            let body: Option<Value> = serde_json::from_slice(&response.body).ok();
            match body {
                Some(b) => Outcome::Reject(rejection(status, &b)),
                None => Outcome::Reject(format!("{}: {}", response.status, response.body_excerpt())),
            }
        }
        other => other,
    }
}

/// "<status> success:false: <errors>" with the server's `errors` (or `error`) as it sent them.
fn rejection(status: u16, body: &Value) -> String {
    let errors = body.get("errors").or_else(|| body.get("error"));
    let what = match body.get("success") {
        Some(Value::Bool(false)) => "success: false",
        Some(_) | None => "no `success: true`",
    };
    match errors {
        Some(e) => format!("{status} {what}: errors {e}"),
        None => format!("{status} {what}: {}", truncate(&body.to_string())),
    }
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(1024);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

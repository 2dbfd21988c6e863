//! Customer.io's answers: per-operation results of a `207` batch, error messages built from
//! `meta.errors` / `meta.error`, credentials refused (held, not dead-lettered) and the transient
//! statuses customerio-node retries, with `Retry-After`.

use std::time::SystemTime;

use serde::Deserialize;
use trackway_wire::customerio::meta_message;

use super::encode::BATCH_PATH;
use crate::destination::{Classified, Outcome, Request, Response, classify_status, parse_retry_after};

/// One entry of a 207's `errors`.
#[derive(Deserialize)]
struct BatchError {
    batch_index: usize,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    field: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
struct BatchAnswer {
    #[serde(default)]
    errors: Vec<BatchError>,
}

fn is_batch(request: &Request) -> bool {
    request.url.ends_with(BATCH_PATH)
}

/// What the request was, for messages: `PUT /api/v1/customers/…` without the id.
fn what(request: &Request) -> String {
    let path = reqwest::Url::parse(&request.url).map(|u| u.path().to_owned()).unwrap_or_default();
    let shown = if path.starts_with("/api/v1/customers/") { "/api/v1/customers/…".to_owned() } else { path };
    format!("{} {shown}", request.method)
}

/// The server's words: the `meta` errors, else the first line of the body.
fn message(response: &Response) -> String {
    meta_message(&response.body).unwrap_or_else(|| crate::destination::status_and_first_line(response))
}

pub(super) fn classify(request: &Request, response: &Response) -> Classified {
    let n = request.items.len();
    let status = response.status.as_u16();
    let retry_after = response
        .headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    let outcome = match status {
        200..=299 if is_batch(request) => return batch(request, response),
        200..=299 => Outcome::Delivered,
        401 => Outcome::Misconfigured(format!(
            "401 on {}: Customer.io refused the site id and API key (check both, and the region: a US \
             account cannot send to the EU host): {}",
            what(request),
            message(response)
        )),
        // customerio-node's retry list: 408, 429, 5xx, and Cloudflare's 522 and 524, waiting for
        // a Retry-After wherever one is given.
        408 | 429 | 500..=599 => match retry_after {
            Some(wait) => Outcome::Throttled(wait),
            None => classify_status(response),
        },
        400..=499 if !matches!(status, 403 | 404) => {
            Outcome::Reject(format!("{status} on {}: {}", what(request), message(response)))
        }
        _ => match classify_status(response) {
            Outcome::Misconfigured(_) => Outcome::Misconfigured(format!(
                "{status} on {}: {} (is the base URL a Customer.io Track API host?)",
                what(request),
                message(response)
            )),
            other => other,
        },
    };
    Classified::new(vec![outcome; n])
}

/// A 2xx batch answer: every operation delivered but those a `207`'s `errors` name.
fn batch(request: &Request, response: &Response) -> Classified {
    let mut outcomes = vec![Outcome::Delivered; request.items.len()];
    let answer: Option<BatchAnswer> = serde_json::from_slice(&response.body).ok();
    for error in answer.map(|a| a.errors).unwrap_or_default() {
        if let Some(slot) = outcomes.get_mut(error.batch_index) {
            let mut why = format!("{} on {BATCH_PATH}, operation {}", response.status.as_u16(), error.batch_index);
            for (label, part) in [("reason", &error.reason), ("field", &error.field), ("message", &error.message)] {
                if let Some(part) = part {
                    why.push_str(&format!("; {label}: {part}"));
                }
            }
            *slot = Outcome::Reject(why);
        }
    }
    Classified::new(outcomes)
}

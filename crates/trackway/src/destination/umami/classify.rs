//! Umami's answers: per-item outcomes from `/api/batch` `details`, cache tokens (JSON `cache` or
//! a v2 ≤ 2.15 `text/plain` token), the bot reply, and the switch to `/api/send`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use serde::Deserialize;
use serde_json::Value as Json;

use super::Umami;
use crate::destination::{Classified, DestinationState, Outcome, Request, Response, classify_status};

/// The header carrying the token of the previous answer.
pub(super) const CACHE_HEADER: &str = "x-umami-cache";
/// State key: the server has no working `/api/batch`; use `/api/send` (stored, so it survives a
/// restart).
pub(super) const NO_BATCH: &str = "no_batch";
/// State key: `/api/batch` answered 500; the next events go through `/api/send` to find out
/// whether the batch endpoint is missing (send works) or the server is failing (send fails too).
pub(super) const PROBE: &str = "probe";
/// Prefix of the state keys holding cache tokens.
const CACHE_PREFIX: &str = "cache/";

/// The state key of the cache token for one identity: FNV-1a over (website, distinct id, IP,
/// user agent). Stable across versions and runs, unlike `std`'s hasher, because it is stored.
pub(super) fn cache_key(website: &str, id: Option<&str>, ip: Option<&str>, user_agent: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [website, id.unwrap_or(""), ip.unwrap_or(""), user_agent] {
        for b in part.bytes().chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{CACHE_PREFIX}{h:016x}")
}

/// When each cache-token key was last used, to keep at most `cache_capacity` tokens.
#[derive(Debug, Default)]
pub(super) struct Lru {
    seeded: bool,
    tick: u64,
    used: HashMap<String, u64>,
}

impl Lru {
    /// Learns the keys already stored (once: after a restart they count as least recent).
    pub(super) fn seed(&mut self, state: &DestinationState) {
        if !self.seeded {
            self.seeded = true;
            for key in state.keys().filter(|k| k.starts_with(CACHE_PREFIX)) {
                self.used.entry(key.to_owned()).or_insert(0);
            }
        }
    }

    pub(super) fn touch(&mut self, key: &str) {
        self.tick += 1;
        self.used.insert(key.to_owned(), self.tick);
    }

    /// The least recently used keys beyond `capacity`, removed.
    fn evict(&mut self, capacity: usize) -> Vec<String> {
        let mut gone = Vec::new();
        while self.used.len() > capacity {
            let Some(oldest) = self.used.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone()) else { break };
            self.used.remove(&oldest);
            gone.push(oldest);
        }
        gone
    }
}

#[derive(Deserialize)]
struct KeyItem {
    payload: KeyPayload,
}

#[derive(Deserialize)]
struct KeyPayload {
    website: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    ip: Option<String>,
}

/// The cache key of the identity a request was sent for (all its items share it).
fn request_key(request: &Request) -> Option<String> {
    let first: KeyItem = if request.url.ends_with("/api/batch") {
        serde_json::from_slice::<Vec<KeyItem>>(&request.body).ok()?.into_iter().next()?
    } else {
        serde_json::from_slice(&request.body).ok()?
    };
    let ua = request.headers.get(http::header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("");
    Some(cache_key(&first.payload.website, first.payload.id.as_deref(), first.payload.ip.as_deref(), ua))
}

pub(super) fn classify(dest: &Umami, request: &Request, response: &Response) -> Classified {
    let n = request.items.len();
    let mut out =
        if request.url.ends_with("/api/batch") { batch(n, response) } else { send(dest, request, n, response) };
    // A token that is no valid header value could never be sent back (`encode` skips it):
    // storing it would only replace, or evict, one that can.
    if let Some(token) = out.1.filter(|t| http::HeaderValue::from_bytes(t.as_bytes()).is_ok())
        && let Some(key) = request_key(request)
    {
        let mut lru = dest.lru.lock().unwrap_or_else(|e| e.into_inner());
        lru.touch(&key);
        for gone in lru.evict(dest.cache_capacity) {
            out.0.state.push((gone, None));
        }
        out.0.state.push((key, Some(token.into_bytes())));
    }
    out.0
}

fn all(n: usize, outcome: Outcome) -> Vec<Outcome> {
    vec![outcome; n]
}

/// `/api/batch`: per-item results from `details`, a token in `cache` (v3.0.2+).
fn batch(n: usize, response: &Response) -> (Classified, Option<String>) {
    match response.status.as_u16() {
        200..=299 => {
            let body: Json = serde_json::from_slice(&response.body).unwrap_or(Json::Null);
            let mut outcomes = all(n, Outcome::Delivered);
            for detail in body.get("details").and_then(Json::as_array).into_iter().flatten() {
                let Some(i) = detail.get("index").and_then(Json::as_u64).and_then(|i| usize::try_from(i).ok()) else {
                    continue;
                };
                if let Some(slot) = outcomes.get_mut(i) {
                    *slot = item_outcome(detail.get("response").unwrap_or(&Json::Null));
                }
            }
            let token = body.get("cache").and_then(Json::as_str).filter(|t| !t.is_empty()).map(str::to_owned);
            (Classified::new(outcomes), token)
        }
        // No batch route (before v2.17): the same events go through /api/send from now on.
        404 | 405 => {
            let mut c = Classified::new(all(n, Outcome::Retry));
            c.state.push((NO_BATCH.to_owned(), Some(b"1".to_vec())));
            (c, None)
        }
        // Either the batch route is broken (v2.17 to v3.0.1) or the server is failing: probe.
        500 => {
            let mut c = Classified::new(all(n, Outcome::Retry));
            c.state.push((PROBE.to_owned(), Some(b"1".to_vec())));
            (c, None)
        }
        _ => (Classified::new(all(n, classify_status(response))), None),
    }
}

/// One `details[].response`: the error body the send handler gave that item.
fn item_outcome(response: &Json) -> Outcome {
    let status =
        response.pointer("/error/status").or_else(|| response.get("status")).and_then(Json::as_u64).unwrap_or(400);
    if (500..600).contains(&status) {
        Outcome::Retry
    } else {
        Outcome::Reject(format!("{status} in /api/batch details: {response}"))
    }
}

/// `/api/send`: a JSON `{cache,…}` or a plain-text token on success, `{"beep":"boop"}` for a bot.
fn send(dest: &Umami, request: &Request, n: usize, response: &Response) -> (Classified, Option<String>) {
    match response.status.as_u16() {
        200..=299 => {
            // /api/send works: stay on it (the probe, if any, is answered).
            let mut c = Classified::new(all(n, Outcome::Delivered));
            c.state.push((NO_BATCH.to_owned(), Some(b"1".to_vec())));
            c.state.push((PROBE.to_owned(), None));
            let token = match serde_json::from_slice::<Json>(&response.body) {
                Ok(body @ Json::Object(_)) => {
                    if body.get("beep").is_some() {
                        if !dest.warned_beep.swap(true, Ordering::Relaxed) {
                            let ua = request.headers.get(http::header::USER_AGENT).and_then(|v| v.to_str().ok());
                            tracing::warn!(
                                destination = dest.name.as_str(),
                                user_agent = ua.unwrap_or(""),
                                "trackway: Umami's bot check discarded an event (dead-lettered; logged once)"
                            );
                        }
                        // The token is neither replaced nor cleared: this answer says nothing about it.
                        c.outcomes = all(
                            n,
                            Outcome::Reject(format!(
                                "discarded by Umami's bot check ({}); send a browser-like User-Agent",
                                response.body_excerpt()
                            )),
                        );
                        None
                    } else {
                        body.get("cache").and_then(Json::as_str).filter(|t| !t.is_empty()).map(str::to_owned)
                    }
                }
                // v2 ≤ 2.15 answers the raw JWT as text/plain.
                _ => {
                    let text = String::from_utf8_lossy(&response.body).trim().to_owned();
                    (!text.is_empty() && !text.contains(char::is_whitespace)).then_some(text)
                }
            };
            (c, token)
        }
        404 => (
            Classified::new(all(
                n,
                Outcome::Reject(format!(
                    "404 on /api/send (wrong base URL, or an unknown website on Umami ≤ 2.15): {}",
                    response.body_excerpt()
                )),
            )),
            None,
        ),
        500..=599 => {
            // The server fails on /api/send too: the batch endpoint was not the problem.
            let mut c = Classified::new(all(n, classify_status(response)));
            c.state.push((PROBE.to_owned(), None));
            (c, None)
        }
        _ => (Classified::new(all(n, classify_status(response))), None),
    }
}

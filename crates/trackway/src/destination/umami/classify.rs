//! Umami's answers: per-item outcomes from `/api/batch` `details`, cache tokens (JSON `cache` or
//! a v2 ≤ 2.15 `text/plain` token), the bot reply, the switch to `/api/send`, and the answers
//! that say the configuration is wrong (see the module docs' table).

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use serde::Deserialize;
use serde_json::Value as Json;

use super::Umami;
use super::server::{self, Fact};
use crate::destination::{Classified, DestinationState, Outcome, Request, Response, classify_status};

/// What the last `encode` read about the server, for the `classify` of the request it produced
/// (an ordered destination has one request in flight, answered before the next encode).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Seen {
    /// The stored lesson about this base URL's server, if still fresh.
    pub(super) fact: Option<Fact>,
    /// The probe through `/api/send` in progress, if any.
    pub(super) probing: Option<Probe>,
    /// The client's clock at that encode, Unix seconds: when a lesson is learned.
    pub(super) now_secs: i64,
}

/// Why the events go through `/api/send` until an answer ends it (stored under the probe key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Probe {
    /// `/api/batch` answered this status (404 or 405: no route; 500: a broken one): a success on
    /// `/api/send` tells which.
    Batch(u16),
    /// `/api/send` said the configuration is wrong while probing: the destination's probes go
    /// there (one request each, not a 404 on `/api/batch` first), and the first answer that works
    /// teaches nothing of the release (the batch 404 may have been the same mistake).
    Held,
}

/// The stored value of [`Probe::Held`].
const HELD: &str = "misconfigured";

impl Probe {
    /// The stored value (a status, or [`HELD`]).
    fn encode(self) -> Vec<u8> {
        match self {
            Probe::Batch(status) => status.to_string().into_bytes(),
            Probe::Held => HELD.as_bytes().to_vec(),
        }
    }

    /// Reads a stored value; anything unreadable counts as a 404 on `/api/batch` (a probe was
    /// pending, and a 404 is what most often starts one).
    pub(super) fn decode(value: &[u8]) -> Probe {
        match std::str::from_utf8(value) {
            Ok(HELD) => Probe::Held,
            Ok(s) => Probe::Batch(s.parse().unwrap_or(404)),
            Err(_) => Probe::Batch(404),
        }
    }
}

/// What every Umami release answers about a website id it does not know (2.16 and newer as
/// JSON, in `/api/batch` `details` too; 2.15 and 2.10 answer a bare 404 or 403 instead).
const WEBSITE_NOT_FOUND: &str = "Website not found.";

/// The header carrying the token of the previous answer.
pub(super) const CACHE_HEADER: &str = "x-umami-cache";
/// State keys of earlier versions, kept for every base URL at once (the bug the keyed ones
/// fix): removed when a lesson is stored.
const LEGACY_KEYS: [&str; 2] = ["no_batch", "probe"];
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

/// The first item of a request (all its items share one identity: website, id, IP, agent).
fn first_item(request: &Request) -> Option<KeyItem> {
    if is_batch(request) {
        serde_json::from_slice::<Vec<KeyItem>>(&request.body).ok()?.into_iter().next()
    } else {
        serde_json::from_slice(&request.body).ok()
    }
}

fn is_batch(request: &Request) -> bool {
    request.url.ends_with("/api/batch")
}

/// The cache key of the identity a request was sent for (all its items share it).
fn request_key(request: &Request) -> Option<String> {
    let first = first_item(request)?;
    let ua = request.headers.get(http::header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("");
    Some(cache_key(&first.payload.website, first.payload.id.as_deref(), first.payload.ip.as_deref(), ua))
}

pub(super) fn classify(dest: &Umami, request: &Request, response: &Response) -> Classified {
    let n = request.items.len();
    let (server_key, probe_key) = dest.server_keys();
    let seen = *dest.seen.lock().unwrap_or_else(|e| e.into_inner());
    let own_ip = carries_own_ip(dest, request);
    let (mut out, token, learned) = if is_batch(request) {
        batch(dest, own_ip, n, response, &probe_key)
    } else {
        send(dest, request, own_ip, n, response, seen.probing, &probe_key)
    };
    if let Some(fact) = learned
        && seen.fact != Some(fact)
    {
        out.state.push((server_key, Some(server::encode_fact(fact, seen.now_secs))));
        out.state.extend(LEGACY_KEYS.iter().map(|k| ((*k).to_owned(), None)));
        dest.seen.lock().unwrap_or_else(|e| e.into_inner()).fact = Some(fact);
    }
    count_dropped(dest, request, &mut out, learned.or(seen.fact));
    // A token that is no valid header value could never be sent back (`encode` skips it):
    // storing it would only replace, or evict, one that can.
    if let Some(token) = token.filter(|t| http::HeaderValue::from_bytes(t.as_bytes()).is_ok())
        && let Some(key) = request_key(request)
    {
        let mut lru = dest.lru.lock().unwrap_or_else(|e| e.into_inner());
        lru.touch(&key);
        for gone in lru.evict(dest.cache_capacity) {
            out.state.push((gone, None));
        }
        out.state.push((key, Some(token.into_bytes())));
    }
    out
}

/// Counts the fields of delivered items that a server of the known releases drops, and warns
/// the first time.
fn count_dropped(dest: &Umami, request: &Request, out: &mut Classified, fact: Option<Fact>) {
    let range = server::range(dest.server_version, fact);
    let dropped = range.dropped_fields();
    if dropped.is_empty() {
        return;
    }
    let items = match serde_json::from_slice::<Json>(&request.body) {
        Ok(Json::Array(items)) => items,
        Ok(item) => vec![item],
        Err(_) => return,
    };
    let mut seen_fields: Vec<&str> = Vec::new();
    for (item, outcome) in items.iter().zip(&out.outcomes) {
        if *outcome != Outcome::Delivered {
            continue;
        }
        for &field in &dropped {
            if item.get("payload").and_then(|p| p.get(field)).is_some() {
                if field == "timestamp" {
                    out.dropped_timestamps += 1;
                } else {
                    out.dropped_fields += 1;
                }
                if !seen_fields.contains(&field) {
                    seen_fields.push(field);
                }
            }
        }
    }
    if seen_fields.is_empty() || dest.warned_dropped.swap(true, Ordering::Relaxed) {
        return;
    }
    let source = fact.map_or("its configured server_version", Fact::source);
    let mut consequences = Vec::new();
    if seen_fields.contains(&"timestamp") {
        consequences.push("imports land at delivery time on this server");
    }
    if seen_fields.contains(&"id") {
        consequences.push("events are not filed under the distinct id");
    }
    if seen_fields.contains(&"tag") {
        consequences.push("tags are lost");
    }
    tracing::warn!(
        destination = dest.name.as_str(),
        server = range.describe().as_str(),
        learned_from = source,
        "trackway: this Umami server does not store {}: {} (counted as dropped_timestamps / dropped_fields in \
         stats; logged once)",
        seen_fields.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", "),
        consequences.join("; "),
    );
}

fn all(n: usize, outcome: Outcome) -> Vec<Outcome> {
    vec![outcome; n]
}

/// `/api/batch`: per-item results from `details`, a token in `cache` (v3.0.2+), and what the
/// answer says of the server.
fn batch(
    dest: &Umami,
    own_ip: bool,
    n: usize,
    response: &Response,
    probe_key: &str,
) -> (Classified, Option<String>, Option<Fact>) {
    if let Some(outcome) = whole_refusal(dest, own_ip, "/api/batch", response) {
        return (Classified::new(all(n, outcome)), None, None);
    }
    match response.status.as_u16() {
        200..=299 => {
            let body: Json = serde_json::from_slice(&response.body).unwrap_or(Json::Null);
            let mut outcomes = all(n, Outcome::Delivered);
            for detail in body.get("details").and_then(Json::as_array).into_iter().flatten() {
                let Some(i) = detail.get("index").and_then(Json::as_u64).and_then(|i| usize::try_from(i).ok()) else {
                    continue;
                };
                if let Some(slot) = outcomes.get_mut(i) {
                    *slot = item_outcome(dest, own_ip, detail.get("response").unwrap_or(&Json::Null));
                }
            }
            let token = body.get("cache").and_then(Json::as_str).filter(|t| !t.is_empty()).map(str::to_owned);
            // Without a token, the release shows only when an item went through (an answer of
            // errors alone carries none on any release).
            let fact = match &token {
                Some(_) => Some(Fact::BatchWithCache),
                None if outcomes.contains(&Outcome::Delivered) => Some(Fact::BatchWithoutCache),
                None => None,
            };
            (Classified::new(outcomes), token, fact)
        }
        // No batch route (before v2.17, or a wrong base URL), or a broken one (v2.17 to v3.0.1)
        // or a failing server: the same events go through /api/send at once, and its answer
        // tells which (a 404 there too: the base URL is wrong). A probe, not a failure.
        status @ (404 | 405 | 500) => {
            let mut c = Classified::new(all(n, Outcome::Retry));
            c.state.push((probe_key.to_owned(), Some(Probe::Batch(status).encode())));
            c.probe = true;
            (c, None, None)
        }
        _ => (Classified::new(all(n, classify_status(response))), None, None),
    }
}

/// One `details[].response`: the error body the send handler gave that item.
fn item_outcome(dest: &Umami, own_ip: bool, response: &Json) -> Outcome {
    let status =
        response.pointer("/error/status").or_else(|| response.get("status")).and_then(Json::as_u64).unwrap_or(400);
    let status = u16::try_from(status).unwrap_or(400);
    if let Some(outcome) = refused(dest, own_ip, "/api/batch details", status, &response.to_string()) {
        outcome
    } else if (500..600).contains(&status) {
        Outcome::Retry
    } else {
        Outcome::Reject(format!("{status} in /api/batch details: {response}"))
    }
}

/// Whether the request's events carry their own `ip` (server mode's `.ip(..)`), not the
/// destination's: then a 403 is Umami's `IGNORE_IP` refusing that visitor, not this sender.
fn carries_own_ip(dest: &Umami, request: &Request) -> bool {
    first_item(request).and_then(|item| item.payload.ip).is_some_and(|ip| dest.ip.as_deref() != Some(ip.as_str()))
}

/// The answers Umami gives a sender it refuses as a whole, from any endpoint: "Website not
/// found." in any status (every release from 2.16, and `/api/batch` details), and a 403 for a
/// request that carries no visitor's own ip (an unknown website before 2024-05, as 2.10 answers,
/// or the server's `IGNORE_IP` listing this sender's address). A 403 for a visitor's own ip is
/// that event's rejection. `None`: the answer says something else.
fn refused(dest: &Umami, own_ip: bool, endpoint: &str, status: u16, body: &str) -> Option<Outcome> {
    if body.contains(WEBSITE_NOT_FOUND) {
        return Some(Outcome::Misconfigured(format!(
            "{status} on {endpoint}, \"{WEBSITE_NOT_FOUND}\": this Umami server has no website {} (copy the id from \
             Umami's website settings)",
            dest.website
        )));
    }
    match status {
        403 if own_ip => Some(Outcome::Reject(format!(
            "403 on {endpoint} for an event carrying its own ip: the server ignores that address (Umami's \
             IGNORE_IP): {}",
            first_line(body)
        ))),
        403 => Some(Outcome::Misconfigured(format!(
            "403 on {endpoint}: Umami refuses this sender: the website id {} is unknown (Umami before 2024-05, \
             e.g. 2.10), or the server's IGNORE_IP lists this sender's address or the configured ip",
            dest.website
        ))),
        _ => None,
    }
}

/// [`refused`] for a whole answer that failed (a success's body is no refusal: a batch's
/// `details` are read item by item).
fn whole_refusal(dest: &Umami, own_ip: bool, endpoint: &str, response: &Response) -> Option<Outcome> {
    let status = response.status.as_u16();
    if response.status.is_success() {
        return None;
    }
    refused(dest, own_ip, endpoint, status, &response.body_excerpt())
}

/// The first non-empty line of a body, for a message that must not carry a whole HTML page.
fn first_line(body: &str) -> &str {
    body.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("")
}

/// `/api/send`: a JSON `{cache,…}` or a plain-text token on success, `{"beep":"boop"}` for a
/// bot; after a probe, what the pair of answers says of the server.
fn send(
    dest: &Umami,
    request: &Request,
    own_ip: bool,
    n: usize,
    response: &Response,
    probing: Option<Probe>,
    probe_key: &str,
) -> (Classified, Option<String>, Option<Fact>) {
    let status = response.status.as_u16();
    let refusal = whole_refusal(dest, own_ip, "/api/send", response);
    let (mut c, token, fact) = match (status, refusal) {
        (_, Some(outcome)) => (Classified::new(all(n, outcome)), None, None),
        (200..=299, None) => {
            let mut c = Classified::new(all(n, Outcome::Delivered));
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
            // /api/send works where /api/batch did not: the probe is answered.
            let fact = match probing {
                Some(Probe::Batch(404 | 405)) => Some(Fact::Before2_17),
                Some(Probe::Batch(_)) => Some(Fact::BatchBroken),
                Some(Probe::Held) | None => None,
            };
            (c, token, fact)
        }
        // Every release has /api/send: nothing answers there.
        (404, None) => {
            let why = format!(
                "404 on /api/send: the base URL is wrong (no Umami answers there; behind a BASE_PATH, include it), \
                 or on Umami ≤ 2.15 the website id {} is unknown: {}",
                dest.website,
                crate::destination::status_and_first_line(response)
            );
            (Classified::new(all(n, Outcome::Misconfigured(why))), None, None)
        }
        (_, None) => (Classified::new(all(n, classify_status(response))), None, None),
    };
    if probing.is_some() {
        if c.outcomes.iter().any(|o| matches!(o, Outcome::Misconfigured(_))) {
            // Held: the probes stay on /api/send, one request each.
            if probing != Some(Probe::Held) {
                c.state.push((probe_key.to_owned(), Some(Probe::Held.encode())));
            }
        } else {
            // Any other answer ends the probe: a failing server learns nothing, and the next
            // events try /api/batch again.
            c.state.push((probe_key.to_owned(), None));
        }
    }
    (c, token, fact)
}

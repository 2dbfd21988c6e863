//! `relay serve`: the HTTP ingest. It takes trackway's own JSON (what the `JsonHttp` destination
//! sends, `POST /v1/events`) and the Segment HTTP Tracking API (`POST /v1/track|identify|page|
//! screen|alias|group|batch`), checks the write key, converts, appends each event to the log
//! with its message id, and answers 200 only once the log acknowledged every event of the
//! request; 503 with `Retry-After` when the log is unreachable.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use futures_util::future::join_all;
use trackway_wire::{Event, Timestamp};

use crate::config::{IngestConfig, Source, WriteKey};
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::segment::{self, Call, Converted, Refused};

/// Headers stored with each message.
pub const DESTINATIONS_HEADER: &str = "Trackway-Destinations";
/// The write key's name (not its value).
pub const KEY_HEADER: &str = "Trackway-Key";
/// The Segment call, for calls that are not trackway events (`alias`, `group`).
pub const CALL_HEADER: &str = "Trackway-Call";

/// What the ingest needs.
#[derive(Debug)]
pub struct Ingest<E> {
    engine: Arc<E>,
    keys: Vec<WriteKey>,
    config: IngestConfig,
    subject: String,
    destinations: Vec<String>,
    metrics: Arc<Metrics>,
    limits: crate::ratelimit::RateLimits,
    /// Events go to `<subject>.<partition>`.
    partitions: u32,
}

impl<E: Engine> Ingest<E> {
    /// An ingest appending to `subject` of `engine`; `destinations` are all configured ones (for
    /// the lag gauges).
    pub fn new(
        engine: Arc<E>,
        keys: Vec<WriteKey>,
        config: IngestConfig,
        subject: String,
        destinations: Vec<String>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let partitions = crate::config::NatsConfig::default().partitions;
        Ingest { engine, keys, config, subject, destinations, metrics, limits: Default::default(), partitions }
    }

    /// Appends to `partitions` subjects, `<subject>.<p>` with `p` a hash of the person
    /// (default `[relay.nats] partitions`' default, 16): see [`crate::partition`].
    #[must_use]
    pub fn partitions(mut self, partitions: u32) -> Self {
        self.partitions = partitions.max(1);
        self
    }

    /// Serves on `listener` until `shutdown` resolves, then finishes the requests in flight.
    ///
    /// # Errors
    /// The listener failing.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let app = Router::new()
            .route("/v1/{call}", post(handle::<E>))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz::<E>))
            .route("/metrics", get(metrics::<E>))
            .with_state(Arc::new(self));
        axum::serve(listener, app).with_graceful_shutdown(shutdown).await
    }
}

fn answer(status: StatusCode, message: &str) -> Response {
    let body = if status.is_success() {
        serde_json::json!({ "success": true })
    } else {
        serde_json::json!({ "success": false, "message": message })
    };
    (status, axum::Json(body)).into_response()
}

fn unavailable(retry_after: u64, why: &str) -> Response {
    let mut r = answer(StatusCode::SERVICE_UNAVAILABLE, &format!("the event log is unavailable ({why}); retry later"));
    if let Ok(v) = header::HeaderValue::from_str(&retry_after.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

/// The write key from `Authorization`: HTTP Basic with the key as user (Segment), or `Bearer`.
fn header_key(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    if let Some(b64) = value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic ")) {
        let decoded = base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?;
        let text = String::from_utf8(decoded).ok()?;
        return Some(text.split_once(':').map_or(text.as_str(), |(user, _)| user).to_owned());
    }
    value.strip_prefix("Bearer ").map(|t| t.trim().to_owned())
}

impl<E: Engine> Ingest<E> {
    fn key(&self, value: Option<&str>) -> Option<&WriteKey> {
        let value = value?;
        // Compared in full whatever the prefix, so timing tells little about a near miss.
        self.keys.iter().find(|k| constant_time_eq(k.value.as_bytes(), value.as_bytes()))
    }

    fn reject(&self, reason: &'static str, status: StatusCode, message: &str) -> Response {
        self.metrics.add("trackway_relay_rejected_total", &[("reason", reason)], 1);
        answer(status, message)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

async fn handle<E: Engine>(
    State(ingest): State<Arc<Ingest<E>>>,
    Path(call): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let kind = match call.as_str() {
        "events" => None,
        "batch" | "import" => Some(None),
        other => match Call::parse(other) {
            Some(c) => Some(Some(c)),
            None => return ingest.reject("not_found", StatusCode::NOT_FOUND, "no such endpoint"),
        },
    };
    let from_header = header_key(&headers);
    if from_header.is_some() && ingest.key(from_header.as_deref()).is_none() {
        return ingest.reject("bad_key", StatusCode::UNAUTHORIZED, "Invalid write key");
    }
    let limit = ingest.config.max_body_bytes;
    let read = tokio::time::timeout(
        Duration::from_secs(ingest.config.body_timeout_secs.max(1)),
        axum::body::to_bytes(body, limit),
    )
    .await;
    let body: Bytes = match read {
        Err(_) => {
            return ingest.reject("timeout", StatusCode::REQUEST_TIMEOUT, "the request body did not arrive in time");
        }
        Ok(Err(_)) => return ingest.reject("too_large", StatusCode::BAD_REQUEST, segment::PAYLOAD_LIMIT_MESSAGE),
        Ok(Ok(b)) => b,
    };
    let received = Timestamp::now();
    let parsed = match kind {
        None => parse_trackway(&body).map(|items| (None, items)),
        Some(None) => segment::parse_batch(&body, received),
        Some(Some(call)) => segment::parse_single(call, &body, received).map(|(k, c)| (k, vec![c])),
    };
    // The key is checked before the body's validity is told: a caller without a key learns
    // nothing about the payload. Without an `Authorization` header, Segment's `writeKey` in the
    // body counts.
    let body_key = parsed.as_ref().ok().and_then(|(k, _)| k.clone());
    let Some(key) = ingest.key(from_header.as_deref().or(body_key.as_deref())) else {
        return ingest.reject("bad_key", StatusCode::UNAUTHORIZED, "Invalid write key");
    };
    let source = if kind.is_none() { Source::Trackway } else { Source::Segment };
    if !key.sources.contains(&source) {
        return ingest.reject(
            "source_not_allowed",
            StatusCode::FORBIDDEN,
            &format!("write key `{}` may not send through the {} API", key.name, source.as_str()),
        );
    }
    let items = match parsed {
        Ok((_, items)) => items,
        Err(Refused { message, .. }) => {
            let reason = if message.starts_with(segment::PAYLOAD_LIMIT_MESSAGE) { "too_large" } else { "invalid" };
            return ingest.reject(reason, StatusCode::BAD_REQUEST, &message);
        }
    };
    if let Some(rate) = key.max_events_per_second
        && let Err(wait) = ingest.limits.take(&key.name, rate, items.len(), std::time::Instant::now())
    {
        ingest.metrics.add("trackway_relay_rejected_total", &[("reason", "rate_limited")], 1);
        let mut r =
            answer(StatusCode::TOO_MANY_REQUESTS, &format!("write key `{}`: over {rate} events per second", key.name));
        let secs = wait.as_secs_f64().ceil().max(1.0);
        if let Ok(v) = header::HeaderValue::from_str(&format!("{secs}")) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    if !ingest.engine.ready() {
        // Not connected: nothing is handed to the client's buffer (it would be sent on
        // reconnection, after a 503 told the sender it was not stored; harmless thanks to the
        // message id, but the answer would wait for the publish timeout for nothing).
        ingest.metrics.add("trackway_relay_rejected_total", &[("reason", "log_unavailable")], 1);
        return unavailable(ingest.config.retry_after_secs, "not connected");
    }
    let destinations = key.destinations.join(",");
    let appends = items.iter().map(|c| {
        let msg_id = format!("{}:{}", key.name, c.msg_id);
        let mut headers = vec![(DESTINATIONS_HEADER, destinations.as_str()), (KEY_HEADER, key.name.as_str())];
        if matches!(c.call, Call::Alias | Call::Group) {
            headers.push((CALL_HEADER, c.call.as_str()));
        }
        let engine = ingest.engine.clone();
        let subject = format!("{}.{}", ingest.subject, crate::partition::partition_of(&c.payload, ingest.partitions));
        let payload = Bytes::from(c.payload.clone());
        async move { engine.append(&msg_id, &subject, &headers, payload).await }
    });
    let results = join_all(appends).await;
    let mut duplicates = 0;
    for r in &results {
        match r {
            Ok(a) if a.duplicate => duplicates += 1,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(key = %key.name, error = %e, "append failed: answering 503");
                ingest.metrics.add("trackway_relay_rejected_total", &[("reason", "log_unavailable")], 1);
                return unavailable(ingest.config.retry_after_secs, "not acknowledged");
            }
        }
    }
    let stored = results.len() as u64 - duplicates;
    ingest.metrics.add("trackway_relay_ingested_total", &[("key", &key.name)], stored);
    if duplicates > 0 {
        ingest.metrics.add("trackway_relay_duplicates_total", &[("key", &key.name)], duplicates);
    }
    answer(StatusCode::OK, "")
}

/// trackway's own JSON: an array of events (or one), each kept as sent.
fn parse_trackway(body: &[u8]) -> Result<Vec<Converted>, Refused> {
    let bad = |message: String| Refused { status: 400, message };
    let trimmed = body.trim_ascii_start();
    let raws: Vec<Box<serde_json::value::RawValue>> = if trimmed.first() == Some(&b'[') {
        serde_json::from_slice(body)
            .map_err(|e| bad(format!("the body is not a JSON array of trackway events: {e}")))?
    } else {
        vec![serde_json::from_slice(body).map_err(|e| bad(format!("the body is not a trackway event: {e}")))?]
    };
    raws.iter()
        .enumerate()
        .map(|(i, raw)| {
            let text = raw.get();
            if text.len() > trackway::MAX_EVENT_BYTES {
                return Err(bad(format!(
                    "event {i} is {} bytes; the limit is {} bytes",
                    text.len(),
                    trackway::MAX_EVENT_BYTES
                )));
            }
            let event: Event =
                serde_json::from_str(text).map_err(|e| bad(format!("event {i} is not a valid trackway event: {e}")))?;
            Ok(Converted { msg_id: event.id.to_string(), call: call_of(&event), payload: text.as_bytes().to_vec() })
        })
        .collect()
}

fn call_of(event: &Event) -> Call {
    match event.kind {
        trackway_wire::EventKind::Track => Call::Track,
        trackway_wire::EventKind::Page => Call::Page,
        trackway_wire::EventKind::Screen => Call::Screen,
        trackway_wire::EventKind::Identify => Call::Identify,
    }
}

async fn readyz<E: Engine>(State(ingest): State<Arc<Ingest<E>>>) -> Response {
    if ingest.engine.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "the event log is not connected\n").into_response()
    }
}

async fn metrics<E: Engine>(State(ingest): State<Arc<Ingest<E>>>) -> Response {
    let mut extra = String::from(
        "# HELP trackway_relay_consumer_pending Events not yet handed to a destination's workers.\n\
         # TYPE trackway_relay_consumer_pending gauge\n\
         # HELP trackway_relay_consumer_ack_pending Events handed out and not yet settled.\n\
         # TYPE trackway_relay_consumer_ack_pending gauge\n",
    );
    for d in &ingest.destinations {
        // A consumer not created yet (no worker started) has no lag to show.
        if let Ok(Ok((pending, ack_pending))) = tokio::time::timeout(Duration::from_secs(2), ingest.engine.lag(d)).await
        {
            let d = crate::metrics::escape(d);
            extra.push_str(&format!(
                "trackway_relay_consumer_pending{{destination=\"{d}\"}} {pending}\n\
                 trackway_relay_consumer_ack_pending{{destination=\"{d}\"}} {ack_pending}\n"
            ));
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], ingest.metrics.render(&extra)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_keys_come_from_basic_or_bearer() {
        let mut h = HeaderMap::new();
        // "key1:" in base64, as Segment's libraries send it.
        h.insert(header::AUTHORIZATION, "Basic a2V5MTo=".parse().expect("header"));
        assert_eq!(header_key(&h).as_deref(), Some("key1"));
        h.insert(header::AUTHORIZATION, "Bearer key2".parse().expect("header"));
        assert_eq!(header_key(&h).as_deref(), Some("key2"));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}

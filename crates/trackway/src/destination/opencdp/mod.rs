//! The OpenCDP destination: `identify`, `track` and `registerDevice` as durable events, and the
//! transactional email, push and SMS (plus `ping`) as [direct calls](crate::direct), wire-
//! compatible with the official Node SDK (`@codematic.io/cdp-node` 5.0.13, spec §1).
//!
//! # Configuration
//!
//! [`OpenCdpConfig`] takes the SDK's options (`cdpApiKey`, `cdpEndpoint`,
//! `cdpFallbackEndpoints`, `timeout`, `maxConcurrentRequests`, the Customer.io dual-write) and
//! is given to [`ClientBuilder::destinations`](crate::ClientBuilder::destinations): it stands
//! for one destination, [`OpenCdp`], or two with a dual-write.
//!
//! ```
//! use std::time::Duration;
//! use trackway::{Client, props, destination::opencdp::OpenCdpConfig, store::MemoryStore};
//! # let collector = trackway_collector::Collector::start().unwrap();
//! let client = Client::builder()
//!     .destinations(
//!         OpenCdpConfig::new("your-cdp-key")
//! #           .endpoint(collector.url(""))
//!             .timeout(Duration::from_secs(5))
//!             .max_concurrent_requests(10),
//!     )
//!     .store(MemoryStore::new())
//!     .build()?;
//! client.identify("user123", props! { "email" => "jane@example.com", "plan" => "pro" })?;
//! client.track("user123", "purchase_completed", props! { "amount" => 99.99 })?;
//! assert_eq!(client.track("", "x", props! {}).unwrap_err().to_string(), "Identifier cannot be empty");
//! assert_eq!(client.track("user123", " ", props! {}).unwrap_err().to_string(), "Event name cannot be empty");
//! // The SDK's `await client.track(..)` resolves once the event is sent: here, `flush` waits
//! // for everything queued before it.
//! client.flush(Duration::from_secs(5))?;
//! # assert_eq!(collector.requests().len(), 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Requests
//!
//! | call | request |
//! |---|---|
//! | [`Client::identify`](crate::Client::identify) | `POST {base}/v1/persons/identify` `{"identifier","properties"}` |
//! | [`Client::track`](crate::Client::track) | `POST {base}/v1/persons/track` `{"identifier","eventName","properties"}` |
//! | [`Client::register_device`](crate::Client::register_device) | `POST {base}/v1/persons/registerDevice` `{"identifier", "deviceId", "platform", "fcmToken", …}` |
//! | [`send_email`](crate::direct::Direct::send_email) | `POST {base}/v1/send/email` |
//! | [`send_push`](crate::direct::Direct::send_push) | `POST {base}/v1/send/push` |
//! | [`send_sms`](crate::direct::Direct::send_sms) | `POST {base}/v1/send/sms` |
//! | [`ping`](crate::direct::Direct::ping) | `GET {base}/v1/health/ping` |
//!
//! Every request carries `Authorization: <api key>` (raw, no `Bearer`, as the SDK sends it; never
//! shown in `Debug`, logs or errors) and, with a body, `Content-Type: application/json`. The API
//! has no batch call and no idempotency key: each event is one request, and up to
//! [`max_concurrent_requests`](OpenCdpConfig::max_concurrent_requests) are in flight at once.
//! Page and screen views are not OpenCDP calls and are not routed here. App mode's push tokens
//! are (they are push devices): a valid FCM token of an identified user is registered as an
//! `android` device whose id is the token; others are dead-lettered with the reason.
//!
//! # Validation
//!
//! Before anything is queued or sent, with the SDK's messages: `Identifier cannot be empty`
//! (also whitespace-only), `Event name cannot be empty`, and for transactional messages the
//! SDK's whole table (see [`SendEmail`], [`SendPush`], [`SendSms`]).
//!
//! # Answers and failover
//!
//! Any 2xx is a success, whatever its body (the server's bodies are undocumented). 401, 403 and
//! 404 mean a bad key or endpoint: events are held, not dead-lettered, and the destination shows
//! as misconfigured. 429 and 503 with `Retry-After` pause it, other 5xx and 408 are retried with
//! backoff, other 4xx dead-letter the event with the server's answer.
//!
//! With [`fallback_endpoints`](OpenCdpConfig::fallback_endpoints), an event goes to the next
//! endpoint when nothing was sent (refused, DNS, TLS), on a timeout or another lost connection,
//! and on a 5xx; **never on a 4xx** (the SDK's failover on 400, 401 and 429 is a bug: those
//! answers are about the request, and the next host would say the same). The primary is tried
//! again 5 minutes after a failover. A transactional message fails over only when nothing was
//! sent: one that may have reached a server is never sent again (a second email).

use std::fmt;
use std::time::Duration;

use trackway_wire::{Event, EventKind};

use super::{
    AppEvent, BatchLimits, Delivery, Destination, DestinationState, Encoded, EventRecord, LimitError, parse_http_url,
};
use crate::config::HttpOptions;
use crate::device::DEVICE_EVENT;

mod config;
mod encode;
mod transactional;
mod validate;

pub use config::{DEFAULT_CONCURRENCY, DEFAULT_ENDPOINT, EXAMPLE_FALLBACK_ENDPOINTS, MAX_CONCURRENCY, OpenCdpConfig};
pub use transactional::{Answer, Identifiers, Ping, SendEmail, SendPush, SendSms, TemplateId};

/// The OpenCDP destination, made by [`OpenCdpConfig`]. Reach its direct calls through
/// `client.direct::<OpenCdp>()` ([`send_email`](crate::direct::Direct::send_email),
/// [`send_push`](crate::direct::Direct::send_push), [`send_sms`](crate::direct::Direct::send_sms),
/// [`ping`](crate::direct::Direct::ping)).
pub struct OpenCdp {
    name: String,
    /// The endpoint, without a trailing `/`.
    base: String,
    /// `Authorization`, marked sensitive (redacted in `Debug` of requests and headers).
    authorization: Result<http::HeaderValue, String>,
    concurrency: usize,
}

impl fmt::Debug for OpenCdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenCdp")
            .field("name", &self.name)
            .field("endpoint", &super::redact_url(&self.base))
            .field("api_key", &"[redacted]")
            .field("concurrency", &self.concurrency)
            .finish()
    }
}

impl OpenCdp {
    /// The endpoint `path` goes to (`path` starts with `/`).
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The request's `Authorization` header, if the key is a valid header value (checked at
    /// `build()`; a request without it would only be answered 401).
    fn authorize(&self, request: super::Request) -> super::Request {
        match &self.authorization {
            Ok(value) => request.header(http::header::AUTHORIZATION, value.clone()),
            Err(_) => request,
        }
    }

    /// The HTTP options this destination goes out with, from `base` and the config's settings.
    fn http_options(base: HttpOptions, timeout: Option<Duration>, fallbacks: &[String]) -> HttpOptions {
        let mut http = base;
        if let Some(t) = timeout {
            http = http.timeout(t);
        }
        if !fallbacks.is_empty() {
            http = http.fallback_base_urls(fallbacks.iter().cloned());
        }
        http
    }
}

impl Destination for OpenCdp {
    fn name(&self) -> &str {
        &self.name
    }

    /// Custom events and identify; no page or screen views (OpenCDP has no call for them).
    fn accepts(&self, kind: EventKind) -> bool {
        matches!(kind, EventKind::Track | EventKind::Identify)
    }

    /// Push devices only ([`Client::register_device`](crate::Client::register_device) and app
    /// mode's push tokens); sessions, installations and payments are app analytics OpenCDP
    /// has no call for.
    fn accepts_app_event(&self, event: AppEvent) -> bool {
        event == AppEvent::PushToken
    }

    /// One event per request: the API has no batch call.
    fn batch_limits(&self) -> BatchLimits {
        BatchLimits::new(1, 2 * crate::MAX_EVENT_BYTES)
    }

    /// Ordered per identity: a `track` for a person not yet identified creates a bare profile.
    fn identity_order(&self) -> bool {
        true
    }

    fn delivery(&self) -> Delivery {
        Delivery::Parallel { max_in_flight: self.concurrency }
    }

    fn direct_concurrency(&self) -> usize {
        self.concurrency
    }

    fn base_url(&self) -> Option<&str> {
        Some(&self.base)
    }

    fn check_config(&self) -> Result<(), String> {
        parse_http_url("endpoint", &self.base)?;
        self.authorization.as_ref().map(|_| ()).map_err(Clone::clone)
    }

    /// Every OpenCDP call names its person: an event without a user id (an anonymous visitor,
    /// an app-mode user not yet identified) could never be sent. App mode's push tokens are
    /// checked when encoded instead, so a sign-out never fails for it.
    fn validate(&self, event: &Event) -> Result<(), LimitError> {
        let app_push = event.kind == EventKind::Track && event.name.as_deref() == Some(encode::PUSH_TOKEN_EVENT);
        if !app_push && event.identity.user_id.as_deref().is_none_or(|u| u.trim().is_empty()) {
            return Err(LimitError::new(
                "OpenCDP needs an identifier: name the user (server mode), or identify the app's user first",
            ));
        }
        if event.kind == EventKind::Track
            && event.name.as_deref() == Some(DEVICE_EVENT)
            && event.properties.get("platform").is_none()
        {
            return Err(LimitError::new("a device registration needs its platform"));
        }
        Ok(())
    }

    fn encode(&self, events: &[EventRecord], _: &DestinationState, _: trackway_wire::Timestamp) -> Encoded {
        encode::encode(self, events)
    }
}

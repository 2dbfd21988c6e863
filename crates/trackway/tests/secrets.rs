//! A server that echoes the request (credentials included) into its error answers: the secrets
//! the destination sent never reach a dead letter, `last_error` or a log line.

mod support;

use std::time::Duration;

use support::{fast_builder, json, wait_until, watchdog};
use trackway::destination::{Destination, DestinationState, Encoded, EventRecord, JsonHttp};
use trackway::{HttpOptions, Timestamp, props};
use trackway_collector::{Collector, Faults, RunningCollector};

const LIMIT: Duration = Duration::from_secs(30);
/// Configured through `HttpOptions::header`.
const SECRET: &str = "Bearer tw-echo-s3cr3t";
/// Set by the destination itself: base64 of `site-7:key-echo-9f8e7d`.
const BASIC: &str = "Basic c2l0ZS03OmtleS1lY2hvLTlmOGU3ZA==";

/// The JSON destination plus a credential header of its own, as Customer.io's Basic auth is.
#[derive(Debug)]
struct WithBasicAuth(JsonHttp);

impl Destination for WithBasicAuth {
    fn name(&self) -> &str {
        Destination::name(&self.0)
    }
    fn encode(&self, events: &[EventRecord], state: &DestinationState, now: Timestamp) -> Encoded {
        let mut encoded = self.0.encode(events, state, now);
        for request in &mut encoded.requests {
            request.headers.insert(http::header::AUTHORIZATION, http::HeaderValue::from_static(BASIC));
        }
        encoded
    }
}

fn echoing(status: u16) -> RunningCollector {
    let faults = Faults { fail_every: Some(1), fail_status: status, echo_request: true, ..Faults::default() };
    Collector::builder().faults(faults).start().expect("collector")
}

fn assert_clean(text: &str) {
    for secret in ["tw-echo-s3cr3t", "c2l0ZS03OmtleS1lY2hvLTlmOGU3ZA", "key-echo-9f8e7d"] {
        assert!(!text.contains(secret), "a secret got through: {text}");
    }
}

#[test]
fn a_rejection_echoing_the_request_is_dead_lettered_without_the_secret() {
    watchdog(LIMIT, || {
        let collector = echoing(400);
        let http = HttpOptions::default().header("x-api-key", SECRET);
        let client =
            fast_builder().destination_with(json("echo", collector.url("/events")), http).build().expect("build");
        client.track("u1", "echoed", props! {}).expect("track");
        client.flush(Duration::from_secs(10)).expect("settled");
        // The server did get the secret, and did echo it.
        let requests = collector.requests();
        assert_eq!(requests[0].header("x-api-key"), Some(SECRET));
        assert!(String::from_utf8_lossy(&requests[0].answer_body).contains(SECRET));

        let letters = client.dead_letters(10).expect("dead letters");
        assert_eq!(letters.len(), 1);
        let detail = &letters[0].detail;
        assert!(detail.starts_with("400 Bad Request: "), "{detail}");
        assert!(detail.contains(r#"["x-api-key","<redacted>"]"#), "{detail}");
        assert_clean(detail);
        let _ = client.shutdown(Duration::from_secs(2));
    });
}

#[test]
fn a_failure_echoing_the_request_leaves_no_secret_in_last_error() {
    watchdog(LIMIT, || {
        let collector = echoing(500);
        let http = HttpOptions::default().header("x-api-key", SECRET);
        let dest = WithBasicAuth(json("basic", collector.url("/events")));
        let client = fast_builder().destination_with(dest, http).build().expect("build");
        client.track("u1", "echoed", props! {}).expect("track");
        let failed = wait_until(Duration::from_secs(10), || {
            client.stats().destination("basic").is_some_and(|d| d.health.last_error.is_some())
        });
        assert!(failed, "no failure recorded");
        let requests = collector.requests();
        assert_eq!(requests[0].header("authorization"), Some(BASIC));
        assert_eq!(requests[0].header("x-api-key"), Some(SECRET));
        let echoed = String::from_utf8_lossy(&requests[0].answer_body).into_owned();
        assert!(echoed.contains(BASIC) && echoed.contains(SECRET), "{echoed}");
        let stats = client.stats();
        let error = stats.destination("basic").and_then(|d| d.health.last_error.clone()).expect("last error");
        let text = error.to_string();
        assert!(text.starts_with("500 Internal Server Error: "), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
        assert_clean(&text);
        let _ = client.shutdown(Duration::ZERO);
    });
}

#[test]
fn a_destinations_own_basic_credentials_are_redacted_decoded_too() {
    watchdog(LIMIT, || {
        // The server names the decoded key in its answer, as an "invalid API key X" page would.
        let collector = Collector::builder()
            .default_reply(trackway_collector::Reply::status(400).body("invalid credentials site-7:key-echo-9f8e7d"))
            .start()
            .expect("collector");
        let dest = WithBasicAuth(json("own", collector.url("/events")));
        let client = fast_builder().destination(dest).build().expect("build");
        client.track("u1", "echoed", props! {}).expect("track");
        client.flush(Duration::from_secs(10)).expect("settled");
        assert_eq!(collector.requests()[0].header("authorization"), Some(BASIC));
        let letters = client.dead_letters(10).expect("dead letters");
        assert_eq!(letters[0].detail, "400 Bad Request: invalid credentials <redacted>");
        let _ = client.shutdown(Duration::ZERO);
    });
}

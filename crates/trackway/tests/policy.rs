//! Per-destination policy against the collector on loopback: redirects (method, body and
//! credentials), the request-rate cap, fallback base URLs and a destination's own retry policy.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::{fast_builder, ids_in, json, wait_until, watchdog};
use trackway::destination::{Destination, DestinationState, Encoded, EventRecord, JsonHttp};
use trackway::{Clock, HttpOptions, RetryPolicy, Timestamp, props};
use trackway_collector::{Collector, RecordedRequest, Reply};

const LIMIT: Duration = Duration::from_secs(30);
const SECRET: &str = "Bearer s3cr3t";

/// The JSON destination, trusting redirects to hosts under `.example.test`.
#[derive(Debug)]
struct Trusting(JsonHttp);

impl Destination for Trusting {
    fn name(&self) -> &str {
        Destination::name(&self.0)
    }
    fn encode(&self, events: &[EventRecord], state: &DestinationState, now: Timestamp) -> Encoded {
        self.0.encode(events, state, now)
    }
    fn trusted_redirect_suffixes(&self) -> Vec<String> {
        vec![".example.test".into()]
    }
}

/// Host names that resolve to loopback (the port comes from each URL).
fn loopback_names(http: HttpOptions) -> HttpOptions {
    let lo = SocketAddr::from(([127, 0, 0, 1], 0));
    http.resolve("api.example.test", lo).resolve("eu.example.test", lo).resolve("elsewhere.test", lo)
}

fn named_url(host: &str, collector: &trackway_collector::RunningCollector, path: &str) -> String {
    format!("http://{host}:{}{path}", collector.addr().port())
}

/// Sends one event through a destination at `api.example.test` on a collector whose first answer
/// is a `status` redirect to `location`; returns what that collector received.
fn redirected(status: u16, location: String) -> Vec<RecordedRequest> {
    let first =
        Collector::builder().script([Reply::status(status).header("location", &location)]).start().expect("collector");
    let url = named_url("api.example.test", &first, "/v1/events");
    let http = loopback_names(HttpOptions::default().header("authorization", SECRET));
    let client = fast_builder().destination_with(Trusting(json("wh", url)), http).build().expect("build");
    client.track("u1", "redirected", props! {}).expect("track");
    client.flush(Duration::from_secs(10)).expect("delivered");
    first.requests()
}

#[test]
fn a_307_to_a_trusted_host_keeps_the_post_body_and_the_credentials() {
    watchdog(LIMIT, || {
        let second = Collector::start().expect("collector");
        let first = redirected(307, named_url("eu.example.test", &second, "/v1/events"));
        assert_eq!(first.len(), 1);
        let got = second.requests();
        assert_eq!(got.len(), 1, "followed once");
        assert_eq!(got[0].method, "POST");
        assert_eq!(ids_in(&got[0]).len(), 1, "the body came along: {}", got[0].body_str());
        assert_eq!(got[0].header("authorization"), Some(SECRET));
    });
}

#[test]
fn a_301_and_a_302_resend_the_post_not_a_bodiless_get() {
    watchdog(LIMIT, || {
        for status in [301, 302, 308] {
            let second = Collector::start().expect("collector");
            redirected(status, named_url("api.example.test", &second, "/v2/events"));
            let got = second.requests();
            assert_eq!(got.len(), 1, "{status}");
            assert_eq!(got[0].method, "POST", "{status}");
            assert_eq!(ids_in(&got[0]).len(), 1, "{status}: {}", got[0].body_str());
            assert_eq!(got[0].header("authorization"), Some(SECRET), "{status}: same host");
        }
    });
}

#[test]
fn a_redirect_to_a_foreign_host_drops_the_credentials() {
    watchdog(LIMIT, || {
        let second = Collector::start().expect("collector");
        redirected(307, named_url("elsewhere.test", &second, "/collect"));
        let got = second.requests();
        assert_eq!(got.len(), 1);
        assert_eq!(ids_in(&got[0]).len(), 1, "the events still go");
        assert_eq!(got[0].header("authorization"), None, "no credentials for another host");
    });
}

#[test]
fn a_redirect_without_location_is_an_error_naming_the_status() {
    watchdog(LIMIT, || {
        let collector = Collector::builder().default_reply(Reply::status(302)).start().expect("collector");
        let client = fast_builder().destination(json("wh", collector.url("/v1/events"))).build().expect("build");
        client.track("u1", "e", props! {}).expect("track");
        assert!(wait_until(Duration::from_secs(10), || client.stats().destinations[0].failed_requests > 0));
        assert_eq!(client.stats().destinations[0].delivered, 0);
    });
}

#[test]
fn the_rate_cap_holds_over_a_burst() {
    watchdog(LIMIT, || {
        let collector = Collector::start().expect("collector");
        let rate = 20.0;
        let http = HttpOptions::default().max_requests_per_second(rate);
        let client = fast_builder()
            .destination_with(json("wh", collector.url("/v1/events")).batch_size(1), http)
            .build()
            .expect("build");
        let started = Instant::now();
        for i in 0..30 {
            client.track("u1", &format!("e{i}"), props! {}).expect("track");
        }
        client.flush(Duration::from_secs(20)).expect("delivered");
        let elapsed = started.elapsed();
        let times: Vec<Instant> = collector.requests().iter().map(|r| r.received_at).collect();
        assert_eq!(times.len(), 30);
        // 30 requests 50 ms apart take at least 29 × 50 ms.
        assert!(elapsed >= Duration::from_millis(1400), "30 requests at 20/s took {elapsed:?}");
        for (i, t) in times.iter().enumerate() {
            let in_window = times[i..].iter().take_while(|u| u.duration_since(*t) < Duration::from_secs(1)).count();
            // One request of slack: arrival times vary a little around the send times.
            assert!(in_window <= rate as usize + 1, "{in_window} requests within 1 s from request {i}");
        }
    });
}

/// A port with nothing listening on it.
fn refused_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

#[test]
fn a_refused_primary_fails_over_to_the_fallback() {
    watchdog(LIMIT, || {
        let fallback = Collector::start().expect("collector");
        let primary = format!("http://127.0.0.1:{}/v1/events", refused_port());
        let http = HttpOptions::default().fallback_base_urls([fallback.url("/v1/events")]);
        let client = fast_builder().destination_with(json("wh", primary), http).build().expect("build");
        client.track("u1", "e", props! {}).expect("track");
        client.flush(Duration::from_secs(10)).expect("delivered through the fallback");
        assert_eq!(fallback.requests().len(), 1);
        assert_eq!(client.stats().destinations[0].delivered, 1);
    });
}

#[test]
fn a_503_fails_over_a_400_does_not() {
    watchdog(LIMIT, || {
        for (status, fails_over) in [(503, true), (500, true), (400, false)] {
            let primary = Collector::builder().default_reply(Reply::status(status)).start().expect("collector");
            let fallback = Collector::start().expect("collector");
            let http = HttpOptions::default().fallback_base_urls([fallback.url("/v1/events")]);
            let client =
                fast_builder().destination_with(json("wh", primary.url("/v1/events")), http).build().expect("build");
            client.track("u1", "e", props! {}).expect("track");
            let _ = client.flush(Duration::from_secs(5));
            let stats = client.stats();
            if fails_over {
                assert_eq!(fallback.requests().len(), 1, "{status}");
                assert_eq!(stats.destinations[0].delivered, 1, "{status}");
            } else {
                assert!(fallback.requests().is_empty(), "{status}: a 4xx is about the request, not the server");
                assert_eq!(stats.destinations[0].delivered, 0, "{status}");
            }
        }
    });
}

#[test]
fn the_primary_is_tried_again_after_five_minutes() {
    watchdog(LIMIT, || {
        let primary = Collector::builder().default_reply(Reply::status(503)).start().expect("collector");
        let fallback = Collector::start().expect("collector");
        let (clock, hand) = Clock::manual(Timestamp::from_unix_millis(1_700_000_000_000));
        let http = HttpOptions::default().fallback_base_urls([fallback.url("/v1/events")]);
        let client = fast_builder()
            .clock(clock)
            .max_event_age(Duration::from_secs(3600))
            .destination_with(json("wh", primary.url("/v1/events")), http)
            .build()
            .expect("build");
        client.track("u1", "during_outage", props! {}).expect("track");
        client.flush(Duration::from_secs(10)).expect("delivered");
        assert_eq!(fallback.requests().len(), 1);
        primary.set_default_reply(Reply::ok());
        let before = primary.requests().len();
        client.track("u1", "still_on_fallback", props! {}).expect("track");
        client.flush(Duration::from_secs(10)).expect("delivered");
        assert_eq!(fallback.requests().len(), 2, "the fallback stays in use within 5 minutes");
        assert_eq!(primary.requests().len(), before);
        hand.advance(Duration::from_secs(301));
        client.track("u1", "back_on_primary", props! {}).expect("track");
        client.flush(Duration::from_secs(10)).expect("delivered");
        assert_eq!(primary.requests().len(), before + 1, "the primary again after 5 minutes");
        assert_eq!(fallback.requests().len(), 2);
    });
}

#[test]
fn a_destination_retry_policy_overrides_the_clients() {
    watchdog(LIMIT, || {
        // A poison event (500 only for it, while the rest are delivered) is dead-lettered after this
        // destination's 2 attempts, not the client's 10.
        let collector = Collector::builder()
            .rule(trackway_collector::Rule::body_contains("poison", Reply::status(500)))
            .start()
            .expect("collector");
        let http = HttpOptions::default().retry_policy(
            RetryPolicy::default().max_attempts(2).backoff(Duration::from_millis(5), Duration::from_millis(20)),
        );
        let client = fast_builder()
            .retry_policy(RetryPolicy::default().max_attempts(10))
            .destination_with(json("wh", collector.url("/v1/events")).batch_size(1), http)
            .build()
            .expect("build");
        client.track("u1", "poison", props! {}).expect("track");
        // A strike counts only while other events are delivered: keep some flowing.
        let mut i = 0;
        assert!(wait_until(Duration::from_secs(15), || {
            i += 1;
            client.track("u1", &format!("fine{i}"), props! {}).expect("track");
            std::thread::sleep(Duration::from_millis(10));
            client.stats().destinations[0].retries_exhausted == 1
        }));
        let poison_attempts = collector.requests().iter().filter(|r| r.body_str().contains("poison")).count();
        // The client's policy would need 10 strikes (10 attempts at least); a failure while nothing
        // else was delivered gives no strike, so 2 strikes can take a few more than 2 attempts.
        assert!(poison_attempts < 10, "{poison_attempts} attempts of the poison event with max_attempts(2)");
    });
}

//! The OpenCDP destination against the collector's OpenCDP gateway: golden requests for every
//! call (checked against spec §1.2's examples), the SDK's validation messages (§1.3), failover
//! (§1.5, without the SDK's failover on 4xx), transactional messages never sent twice, `ping`,
//! and the concurrency limit.

mod support;

use std::time::Duration;

use serde_json::{Value as Json, json};
use support::{fast_builder, wait_until, watchdog};
use trackway::destination::opencdp::{Identifiers, OpenCdp, OpenCdpConfig, SendEmail, SendPush, SendSms};
use trackway::direct::DirectError;
use trackway::{Client, Clock, Device, DevicePlatform, HealthState, Timestamp, Value, props};
use trackway_collector::{Collector, Faults, RecordedRequest, RunningCollector};

const LIMIT: Duration = Duration::from_secs(60);
const KEY: &str = "cdp-key-123";
/// The SDK's default base path.
const BASE: &str = "/gateway/data-gateway";

fn config(collector: &RunningCollector) -> OpenCdpConfig {
    OpenCdpConfig::new(KEY).endpoint(collector.url(BASE))
}

fn start(config: OpenCdpConfig) -> Client {
    fast_builder().destinations(config).build().expect("build")
}

/// The request's body as JSON.
fn body(r: &RecordedRequest) -> Json {
    serde_json::from_slice(&r.body).unwrap_or(Json::Null)
}

/// Checks what every OpenCDP request carries.
fn check_headers(r: &RecordedRequest) {
    assert_eq!(r.header("authorization"), Some(KEY), "the raw key, no Bearer: {}", r.path);
    if r.method == "POST" {
        assert_eq!(r.header("content-type"), Some("application/json"), "{}", r.path);
    }
    assert_eq!(r.destination, "opencdp");
}

/// Every request answered `status` (before the gateway's own answer).
fn failing(status: u16) -> Faults {
    Faults { fail_every: Some(1), fail_status: status, ..Faults::default() }
}

/// A port with nothing listening on it.
fn refused_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

#[test]
fn every_call_sends_the_sdks_request() {
    watchdog(LIMIT, || {
        let collector = Collector::builder().opencdp_api_keys([KEY]).start().expect("collector");
        let client = start(config(&collector));
        // Spec §1.2's examples, call by call.
        client.identify("user_123", props! { "email" => "a@b.com", "plan" => "pro" }).expect("identify");
        client.flush(Duration::from_secs(10)).expect("flush");
        client.track("user_123", "purchase", props! { "amount" => 99.9 }).expect("track");
        client.flush(Duration::from_secs(10)).expect("flush");
        let device = Device::new("device-abc", DevicePlatform::Android, "tok")
            .apn_token("apn")
            .name("Jane's phone")
            .os_version("14")
            .model("Pixel 8")
            .app_version("1.0.0")
            .last_active_at(Timestamp::from_unix_millis(1_700_000_000_000))
            .attributes(props! { "theme" => "dark" });
        client.register_device("user_123", device).expect("register");
        client.flush(Duration::from_secs(10)).expect("flush");

        let requests = collector.requests();
        assert_eq!(requests.len(), 3);
        for r in &requests {
            check_headers(r);
            assert_eq!((r.method.as_str(), r.status), ("POST", 200));
        }
        assert_eq!(requests[0].path, format!("{BASE}/v1/persons/identify"));
        assert_eq!(body(&requests[0]), json!({"identifier":"user_123","properties":{"email":"a@b.com","plan":"pro"}}));
        assert_eq!(requests[1].path, format!("{BASE}/v1/persons/track"));
        assert_eq!(
            body(&requests[1]),
            json!({"identifier":"user_123","eventName":"purchase","properties":{"amount":99.9}})
        );
        assert_eq!(requests[2].path, format!("{BASE}/v1/persons/registerDevice"));
        assert_eq!(
            body(&requests[2]),
            json!({"identifier":"user_123","deviceId":"device-abc","platform":"android","fcmToken":"tok",
                   "apnToken":"apn","name":"Jane's phone","osVersion":"14","model":"Pixel 8","appVersion":"1.0.0",
                   "last_active_at":"2023-11-14T22:13:20.000Z","attributes":{"theme":"dark"}})
        );

        let cdp = client.direct::<OpenCdp>().expect("direct");
        let email = SendEmail::new()
            .to("jane@example.com")
            .identifiers(Identifiers::email("jane@example.com"))
            .template("welcome")
            .message_data(props! { "name" => "Jane" })
            .cc(["c@example.com"])
            .bcc(["b@example.com"])
            .reply_to("r@example.com")
            .preheader("pre")
            .headers(props! { "X-Tag" => "t" })
            .send_at(1_700_000_000)
            .disable_message_retention(false)
            .send_to_unsubscribed(true)
            .queue_draft(false)
            .fake_bcc(false)
            .disable_css_preprocessing(true)
            .tracked(true)
            .body("<p>Hi</p>")
            .amp_body("<amp/>")
            .plaintext_body("Hi")
            .subject("Welcome")
            .from("hello@example.com")
            .language("en");
        let answer = cdp.send_email_blocking(email).expect("email");
        assert_eq!((answer.status, answer.json()), (200, Some(json!({}))));
        cdp.send_push_blocking(
            SendPush::new()
                .identifiers(Identifiers::cdp_id("cdp-1"))
                .template(7u64)
                .title("T")
                .body("B")
                .message_data(props! { "k" => 1 }),
        )
        .expect("push");
        cdp.send_sms_blocking(
            SendSms::new()
                .identifiers(Identifiers::id("user_123"))
                .template(9u64)
                .to("+15551234567")
                .from("+15557654321")
                .body("code 1")
                .message_data(props! { "code" => "1" }),
        )
        .expect("sms");
        cdp.ping_blocking().expect("ping");

        let requests = collector.requests();
        assert_eq!(requests.len(), 7, "each direct call is one request");
        for r in &requests[3..] {
            check_headers(r);
        }
        assert_eq!(requests[3].path, format!("{BASE}/v1/send/email"));
        let email = body(&requests[3]);
        let keys: Vec<&str> = email.as_object().expect("object").keys().map(String::as_str).collect();
        let mut expected = vec![
            "to",
            "identifiers",
            "message_data",
            "send_at",
            "disable_message_retention",
            "send_to_unsubscribed",
            "queue_draft",
            "bcc",
            "cc",
            "fake_bcc",
            "reply_to",
            "preheader",
            "headers",
            "disable_css_preprocessing",
            "tracked",
            "transactional_message_id",
            "body",
            "body_amp",
            "body_plain",
            "subject",
            "from",
            "language",
        ];
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        expected.sort_unstable();
        assert_eq!(sorted, expected, "every field of §1.2, amp_body as body_amp, plaintext_body as body_plain");
        assert_eq!(email["identifiers"], json!({"email": "jane@example.com"}));
        assert_eq!((email["send_at"].clone(), email["tracked"].clone()), (json!(1_700_000_000), json!(true)));
        assert_eq!((email["bcc"].clone(), email["headers"].clone()), (json!(["b@example.com"]), json!({"X-Tag": "t"})));
        assert_eq!(requests[4].path, format!("{BASE}/v1/send/push"));
        assert_eq!(
            body(&requests[4]),
            json!({"identifiers":{"cdp_id":"cdp-1"},"transactional_message_id":7,"title":"T","body":"B","message_data":{"k":1}})
        );
        assert_eq!(requests[5].path, format!("{BASE}/v1/send/sms"));
        assert_eq!(
            body(&requests[5]),
            json!({"identifiers":{"id":"user_123"},"transactional_message_id":"9","to":"+15551234567",
                   "from":"+15557654321","body":"code 1","message_data":{"code":"1"}}),
            "a numeric template id is sent as text, as the SDK does"
        );
        assert_eq!((requests[6].method.as_str(), requests[6].path.clone()), ("GET", format!("{BASE}/v1/health/ping")));
        assert!(requests[6].body.is_empty());
        let stats = client.stats();
        assert_eq!((stats.destinations[0].delivered, stats.destinations[0].direct.ok), (3, 4));
        // The key is nowhere in what a user prints.
        assert!(!format!("{client:?} {stats:?}").contains(KEY));
    });
}

#[test]
fn validation_errors_are_the_sdks_and_send_nothing() {
    watchdog(LIMIT, || {
        let collector = Collector::start().expect("collector");
        let client = start(config(&collector));
        for id in ["", "   "] {
            assert_eq!(client.track(id, "e", props! {}).unwrap_err().to_string(), "Identifier cannot be empty");
            assert_eq!(client.identify(id, props! {}).unwrap_err().to_string(), "Identifier cannot be empty");
            let d = Device::new("d", DevicePlatform::Ios, "t");
            assert_eq!(client.register_device(id, d).unwrap_err().to_string(), "Identifier cannot be empty");
        }
        for name in ["", " \t"] {
            assert_eq!(client.track("user123", name, props! {}).unwrap_err().to_string(), "Event name cannot be empty");
        }
        let bad_device = Device::new("", DevicePlatform::Web, "t");
        assert_eq!(client.register_device("u", bad_device).unwrap_err().to_string(), "deviceId cannot be empty");
        assert!(client.track("u", trackway::DEVICE_EVENT, props! {}).is_err(), "the device event's name is reserved");

        let cdp = client.direct::<OpenCdp>().expect("direct");
        let who = || Identifiers::id("u");
        let email = || SendEmail::new().to("jane@example.com").identifiers(who()).template("t");
        let raw = || SendEmail::new().to("jane@example.com").identifiers(who());
        let exactly_one = "identifiers must contain exactly one of: id, email, or cdp_id";
        let emails = [
            (SendEmail::new(), "to is required"),
            (SendEmail::new().to(" "), "Email address cannot be empty"),
            (SendEmail::new().to("jane@example"), "Invalid email address format"),
            (SendEmail::new().to("jane@example.com"), "identifiers is required"),
            (SendEmail::new().to("jane@example.com").identifiers(Identifiers::cdp_id("c")), exactly_one),
            (email().from("x"), "Invalid email address format"),
            (email().cc(["x"]), "Invalid email address format"),
            (email().bcc(["x@y"]), "Invalid email address format"),
            (email().reply_to("@y.z"), "Invalid email address format"),
            (email().send_at(-5), "send_at must be a positive integer"),
            (email().body(" "), "body cannot be empty if provided"),
            (email().amp_body(" "), "amp_body cannot be empty if provided"),
            (email().plaintext_body(" "), "plaintext_body cannot be empty if provided"),
            (email().headers(Value::from("x")), "headers must be an object"),
            (
                raw(),
                "When not using a template: body is required when not using a template, subject is required when \
                 not using a template, from is required when not using a template",
            ),
        ];
        for (call, message) in emails {
            assert_eq!(cdp.send_email_blocking(call), Err(DirectError::Invalid(message.into())));
        }
        let push = || SendPush::new().identifiers(who());
        for (call, message) in [
            (SendPush::new(), "identifiers is required"),
            (SendPush::new().identifiers(Identifiers::email("")), exactly_one),
            (push(), "transactional_message_id is required"),
            (push().template(1u64).body(""), "body cannot be empty if provided"),
        ] {
            assert_eq!(cdp.send_push_blocking(call), Err(DirectError::Invalid(message.into())));
        }
        let sms = || SendSms::new().identifiers(who());
        let format = "Phone number must be in international format (e.g., +1234567890)";
        for (call, message) in [
            (SendSms::new(), "identifiers is required"),
            (SendSms::new().identifiers(Identifiers::cdp_id("")), exactly_one),
            (sms(), "body is required when not using a template"),
            (sms().body("x").to("555-1234"), format),
            (sms().body("x").from("+0123"), format),
            (sms().body("x").to(" "), "Phone number cannot be empty"),
            (sms().template(1u64).body(" "), "body cannot be empty if provided"),
            (sms().body("x").message_data(Value::from(vec![1])), "message_data must be an object"),
        ] {
            assert_eq!(cdp.send_sms_blocking(call), Err(DirectError::Invalid(message.into())));
        }
        client.flush(Duration::from_secs(5)).expect("flush");
        assert!(collector.requests().is_empty(), "nothing is sent for an invalid call");
        let stats = client.stats();
        assert_eq!((stats.destinations[0].direct.not_sent, stats.destinations[0].direct.ok), (27, 0));
    });
}

#[test]
fn events_fail_over_on_503_and_refused_connections_not_on_400_or_401() {
    watchdog(LIMIT, || {
        // A refused primary.
        let fallback = Collector::start().expect("collector");
        let primary = format!("http://127.0.0.1:{}{BASE}", refused_port());
        let client = start(OpenCdpConfig::new(KEY).endpoint(primary).fallback_endpoints([fallback.url(BASE)]));
        client.track("u1", "e", props! {}).expect("track");
        client.flush(Duration::from_secs(10)).expect("delivered through the fallback");
        assert_eq!(fallback.requests().len(), 1);
        check_headers(&fallback.requests()[0]);
        drop(client);

        for (status, fails_over) in [(503, true), (400, false), (401, false)] {
            let primary = Collector::builder().faults(failing(status)).start().expect("collector");
            let fallback = Collector::start().expect("collector");
            let client = start(config(&primary).fallback_endpoints([fallback.url(BASE)]));
            client.track("u1", "e", props! {}).expect("track");
            let _ = client.flush(Duration::from_secs(3));
            let stats = client.stats();
            if fails_over {
                assert_eq!((fallback.requests().len(), stats.destinations[0].delivered), (1, 1), "{status}");
            } else {
                assert!(fallback.requests().is_empty(), "{status}: a 4xx is about the request, not the host");
                assert_eq!(stats.destinations[0].delivered, 0, "{status}");
            }
            if status == 401 {
                assert_eq!(stats.destinations[0].health.state, HealthState::Misconfigured, "a bad key holds events");
                assert_eq!(stats.destinations[0].rejected, 0);
            }
            if status == 400 {
                assert_eq!(stats.destinations[0].rejected, 1, "a 400 dead-letters that event");
            }
        }
    });
}

#[test]
fn the_primary_is_tried_again_after_five_minutes() {
    watchdog(LIMIT, || {
        let primary = Collector::builder().faults(failing(503)).start().expect("collector");
        let fallback = Collector::start().expect("collector");
        let (clock, hand) = Clock::manual(Timestamp::from_unix_millis(1_700_000_000_000));
        let client = fast_builder()
            .clock(clock)
            .max_event_age(Duration::from_secs(3600))
            .destinations(config(&primary).fallback_endpoints([fallback.url(BASE)]))
            .build()
            .expect("build");
        client.track("u1", "during_outage", props! {}).expect("track");
        client.flush(Duration::from_secs(10)).expect("delivered");
        assert_eq!(fallback.requests().len(), 1);
        primary.clear_faults();
        let before = primary.requests().len();
        client.track("u1", "still_on_fallback", props! {}).expect("track");
        client.flush(Duration::from_secs(10)).expect("delivered");
        assert_eq!((fallback.requests().len(), primary.requests().len()), (2, before), "within 5 minutes");
        hand.advance(Duration::from_secs(301));
        client.track("u1", "back_on_primary", props! {}).expect("track");
        client.flush(Duration::from_secs(10)).expect("delivered");
        assert_eq!((primary.requests().len(), fallback.requests().len()), (before + 1, 2), "after 5 minutes");
        assert_eq!(body(&primary.requests()[before])["eventName"], "back_on_primary");
    });
}

#[test]
fn a_transactional_email_that_timed_out_after_it_was_written_is_not_sent_again() {
    watchdog(LIMIT, || {
        let faults = Faults { latency_ms: Some(1500), ..Faults::default() };
        let primary = Collector::builder().faults(faults).start().expect("collector");
        let fallback = Collector::start().expect("collector");
        let client =
            start(config(&primary).timeout(Duration::from_millis(300)).fallback_endpoints([fallback.url(BASE)]));
        let cdp = client.direct::<OpenCdp>().expect("direct");
        let email = SendEmail::new().to("jane@example.com").identifiers(Identifiers::id("u")).template("welcome");
        let err = cdp.send_email_blocking(email).expect_err("times out");
        assert!(matches!(err, DirectError::MaybeSent(_) | DirectError::TimedOut(_)), "{err:?}");
        // Long enough for any retry or failover to have happened.
        std::thread::sleep(Duration::from_millis(1800));
        assert_eq!(primary.request_count(), 1, "sent once");
        assert_eq!(fallback.request_count(), 0, "a call that may have arrived never fails over");
        assert_eq!(client.stats().destinations[0].direct.failed, 1);
    });
}

#[test]
fn a_transactional_call_fails_over_only_when_nothing_was_sent() {
    watchdog(LIMIT, || {
        let fallback = Collector::start().expect("collector");
        let primary = format!("http://127.0.0.1:{}{BASE}", refused_port());
        let client = start(OpenCdpConfig::new(KEY).endpoint(primary).fallback_endpoints([fallback.url(BASE)]));
        let cdp = client.direct::<OpenCdp>().expect("direct");
        let sms = SendSms::new().identifiers(Identifiers::id("u")).body("hi");
        assert_eq!(cdp.send_sms_blocking(sms).expect("through the fallback").status, 200);
        assert_eq!(fallback.request_count(), 1);

        // A 503 answer was an answer: the call returns it, nothing goes to the fallback.
        let down = Collector::builder().faults(failing(503)).start().expect("collector");
        let fallback = Collector::start().expect("collector");
        let client = start(config(&down).fallback_endpoints([fallback.url(BASE)]));
        let err = client.direct::<OpenCdp>().expect("direct").ping_blocking().expect_err("503");
        assert!(matches!(err, DirectError::Status { status: 503, .. }), "{err:?}");
        assert_eq!((down.request_count(), fallback.request_count()), (1, 0));
    });
}

#[test]
fn ping_unknown_templates_and_the_rate_limit_answer_as_typed_errors() {
    watchdog(LIMIT, || {
        let collector = Collector::builder()
            .opencdp_api_keys([KEY])
            .opencdp_templates(["welcome"])
            .opencdp_rate_limit(3)
            .start()
            .expect("collector");
        let good = start(config(&collector));
        let cdp = good.direct::<OpenCdp>().expect("direct");
        assert_eq!(cdp.ping_blocking().expect("ping").status, 200);
        let email = |t: &str| SendEmail::new().to("a@b.co").identifiers(Identifiers::id("u")).template(t);
        let err = cdp.send_email_blocking(email("nope")).expect_err("unknown template");
        assert!(
            matches!(&err, DirectError::Status { status: 404, body } if body.contains("Template not found")),
            "{err:?}"
        );
        assert_eq!(cdp.send_email_blocking(email("welcome")).expect("known").status, 200);
        let err = cdp.ping_blocking().expect_err("over the rate");
        assert!(matches!(err, DirectError::Status { status: 429, .. }), "{err:?}");

        let bad = start(OpenCdpConfig::new("wrong-key").endpoint(collector.url(BASE)));
        std::thread::sleep(Duration::from_millis(1100));
        let err = bad.direct::<OpenCdp>().expect("direct").ping_blocking().expect_err("bad key");
        assert!(matches!(err, DirectError::Status { status: 401, .. }), "{err:?}");
        assert!(!err.to_string().contains("wrong-key"), "{err}");
    });
}

#[test]
fn events_go_out_with_at_most_the_concurrency_limit_in_flight() {
    watchdog(LIMIT, || {
        let faults = Faults { latency_ms: Some(80), ..Faults::default() };
        let collector = Collector::builder().faults(faults).start().expect("collector");
        let client = start(config(&collector).max_concurrent_requests(4));
        for i in 0..24 {
            client.track(&format!("u{i}"), "e", props! { "i" => i }).expect("track");
        }
        client.flush(Duration::from_secs(20)).expect("delivered");
        assert_eq!(collector.request_count(), 24, "one request per event");
        let peak = collector.peak_concurrent_requests();
        assert!(peak <= 4, "{peak} requests in flight at once");
        assert!(peak >= 2, "sent in parallel, not one by one (peak {peak})");
        assert_eq!(client.stats().destinations[0].delivered, 24);
    });
}

#[test]
fn more_than_thirty_concurrent_requests_are_capped_at_thirty() {
    watchdog(LIMIT, || {
        let faults = Faults { latency_ms: Some(150), ..Faults::default() };
        let collector = Collector::builder().faults(faults).start().expect("collector");
        let client = start(config(&collector).max_concurrent_requests(100));
        for i in 0..60 {
            client.track("u", "e", props! { "i" => i }).expect("track");
        }
        client.flush(Duration::from_secs(20)).expect("delivered");
        let peak = collector.peak_concurrent_requests();
        assert!(peak <= 30, "{peak} in flight");
        assert!(wait_until(Duration::from_secs(1), || collector.request_count() == 60));
    });
}

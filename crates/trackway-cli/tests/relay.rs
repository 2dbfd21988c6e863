//! `trackway relay serve|work|dead` as processes, against real `nats-server` processes (JetStream
//! in a temporary directory, on a free loopback port) and the collector as the destinations; the
//! setup is the fixture in `support/relay.rs`.
//!
//! Without `nats-server` on PATH these tests are skipped with a message, except under `CI=true`,
//! where they fail: `.ci/run` installs it.

#![allow(clippy::print_stderr, reason = "the kill and cluster tests report their counts")]

#[path = "support/relay.rs"]
mod fixture;
mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use fixture::{
    APP_KEY, Fixture, KEY, SLOW_KEY, Settings, batch, delivered, delivered_ids, get_text, http, nats_available, post,
    track, wait_until,
};
use support::watchdog;
use trackway_collector::{Collector, Reply};

/// Segment bodies as its libraries send them (docs/segment-http.md), with the trackway type and
/// name each must arrive as.
const GOLDEN: &[(&str, &str, &str, Option<&str>)] = &[
    (
        "/v1/track",
        r#"{"userId":"019mr8mf4r","event":"Item Purchased","properties":{"name":"Leap to Conclusions Mat","revenue":14.99},"context":{"ip":"24.5.68.47","library":{"name":"analytics-ruby","version":"2.2.0"}},"timestamp":"2012-12-02T00:30:12.984Z","sentAt":"2012-12-02T00:30:13.000Z","messageId":"golden-track"}"#,
        "track",
        Some("Item Purchased"),
    ),
    (
        "/v1/identify",
        r#"{"userId":"019mr8mf4r","traits":{"email":"pgibbons@example.com","name":"Peter Gibbons","industry":"Technology"},"context":{"ip":"24.5.68.47"},"timestamp":"2012-12-02T00:30:08.276Z","messageId":"golden-identify"}"#,
        "identify",
        None,
    ),
    (
        "/v1/page",
        r#"{"userId":"019mr8mf4r","name":"Tracking HTTP API","properties":{"url":"https://example.com/docs/http","title":"HTTP API","referrer":"https://example.com/"},"timestamp":"2012-12-02T00:30:08.276Z","messageId":"golden-page"}"#,
        "page",
        Some("Tracking HTTP API"),
    ),
    (
        "/v1/screen",
        r#"{"anonymousId":"3a12eab0-bca7-11e4-8dfc-aa07a5b093db","name":"Home","properties":{"Feed Type":"private"},"messageId":"golden-screen"}"#,
        "screen",
        Some("Home"),
    ),
];

#[test]
fn segment_calls_are_delivered_as_trackway_events_and_alias_is_dead_lettered() {
    if !nats_available() {
        return;
    }
    watchdog(Duration::from_secs(180), || {
        let f = Fixture::builder().start();
        let (a, b) = (&f.a, &f.b);
        let (_serve, url) = f.serve();
        let _work = f.work();
        for (path, body, _, _) in GOLDEN {
            let (status, _, answer) = post(&url, path, KEY, body);
            assert_eq!(status, 200, "{path}: {answer}");
            assert_eq!(answer, r#"{"success":true}"#);
        }
        let batch = r#"{"batch":[{"type":"track","userId":"u9","event":"Batched","messageId":"golden-b1"},
        {"type":"alias","previousId":"anon-1","userId":"u9","messageId":"golden-alias"}],
        "sentAt":"2024-01-01T00:00:00.000Z"}"#;
        assert_eq!(post(&url, "/v1/batch", KEY, batch).0, 200);

        // Four single calls and the batched track reach both destinations; the alias none.
        for c in [a, b] {
            assert!(wait_until(Duration::from_secs(30), || delivered(c).len() >= 5), "delivered: {:?}", delivered(c));
            let events = delivered(c);
            for (path, _, kind, name) in GOLDEN {
                let e = events
                    .iter()
                    .find(|e| e["type"] == *kind)
                    .unwrap_or_else(|| panic!("{path}: no {kind} event in {events:?}"));
                assert_eq!(e["name"].as_str(), *name, "{e}");
                assert_eq!(e["imported"], true, "relayed events carry their own time: {e}");
            }
            let purchase =
                events.iter().find(|e| e["type"] == "track" && e["name"] == "Item Purchased").expect("track");
            assert_eq!(purchase["identity"]["user_id"], "019mr8mf4r");
            assert_eq!(purchase["identity"]["ip"], "24.5.68.47");
            assert_eq!(purchase["properties"]["revenue"], 14.99);
            assert_eq!(purchase["context"]["library"], "analytics-ruby");
            let identify = events.iter().find(|e| e["type"] == "identify").expect("identify");
            assert_eq!(identify["properties"]["email"], "pgibbons@example.com");
            let page = events.iter().find(|e| e["type"] == "page").expect("page");
            assert_eq!(page["page"]["url"], "https://example.com/docs/http");
            assert_eq!(page["page"]["title"], "HTTP API");
            let screen = events.iter().find(|e| e["type"] == "screen").expect("screen");
            assert_eq!(screen["identity"]["anonymous_id"], "3a12eab0-bca7-11e4-8dfc-aa07a5b093db");
            assert!(events.iter().any(|e| e["name"] == "Batched"));
            assert_eq!(events.len(), 5, "{events:?}");
        }

        // The alias is a dead letter at each destination, with the reason.
        let listed = || f.run(&["dead", "list"]);
        assert!(wait_until(Duration::from_secs(20), || listed().contains("2 dead letter(s)")), "{}", listed());
        let text = listed();
        assert!(text.contains("web:golden-alias"), "{text}");
        assert!(text.contains("Segment `alias` calls have no equivalent at destination `a`"), "{text}");
        assert!(text.contains("Segment `alias` calls have no equivalent at destination `b`"), "{text}");

        // Requeued for `a` only: it goes through `a`'s worker again (and is dead-lettered again,
        // at a new position, since `alias` still has no equivalent there); `b`'s stays put.
        assert!(f.run(&["dead", "requeue", "--destination", "a"]).contains("1 dead letter(s) requeued"));
        let positions = |text: &str, destination: &str| -> Vec<u64> {
            text.lines()
                .filter(|l| l.split('\t').nth(1) == Some(destination))
                .filter_map(|l| l.split('\t').next()?.parse().ok())
                .collect()
        };
        let first_a = positions(&text, "a");
        assert!(
            wait_until(Duration::from_secs(20), || {
                let now = listed();
                now.contains("2 dead letter(s)") && positions(&now, "a") != first_a
            }),
            "{}",
            listed()
        );
        assert_eq!(positions(&listed(), "b"), positions(&text, "b"));
        assert_eq!(delivered(a).len(), 5, "nothing else was delivered");
    });
}

#[test]
fn a_bad_key_is_401_an_oversized_event_400_with_segments_message_and_a_key_over_its_rate_429() {
    if !nats_available() {
        return;
    }
    watchdog(Duration::from_secs(180), || {
        let f = Fixture::builder().start();
        let (_serve, url) = f.serve();

        let (status, _, body) = post(&url, "/v1/track", "wrong-key", &track(1));
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("Invalid write key"), "{body}");

        let big = format!(r#"{{"userId":"u","event":"Big","properties":{{"blob":"{}"}}}}"#, "x".repeat(33 * 1024));
        let (status, _, body) = post(&url, "/v1/track", KEY, &big);
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("Exceed payload limit"), "{body}");
        // In a batch: the message is named.
        let big_item = big.replacen('{', r#"{"type":"track","#, 1);
        let (status, _, body) = post(&url, "/v1/batch", KEY, &format!(r#"{{"batch":[{},{big_item}]}}"#, track(1)));
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("Exceed payload limit") && body.contains("batch[1]"), "{body}");
        // Over 2 500 messages.
        let (status, _, body) = post(&url, "/v1/batch", KEY, &batch(0..2501));
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("Exceed payload limit"), "{body}");

        // A key over its rate: 429 with Retry-After, after a burst of one second's worth.
        assert_eq!(post(&url, "/v1/batch", SLOW_KEY, &batch(0..5)).0, 200);
        let (status, retry_after, body) = post(&url, "/v1/track", SLOW_KEY, &track(6));
        assert_eq!(status, 429, "{body}");
        assert_eq!(retry_after.as_deref(), Some("1"));

        // Nothing of the refused requests was stored.
        let metrics = http().get(format!("{url}/metrics")).send().expect("metrics").text().expect("text");
        assert!(metrics.contains(r#"trackway_relay_ingested_total{key="slow"} 5"#), "{metrics}");
        assert!(!metrics.contains(r#"trackway_relay_ingested_total{key="web"}"#), "{metrics}");
        assert!(metrics.contains(r#"trackway_relay_rejected_total{reason="rate_limited"} 1"#), "{metrics}");
        assert!(metrics.contains(r#"trackway_relay_rejected_total{reason="bad_key"} 1"#), "{metrics}");
        assert!(metrics.contains(r#"trackway_relay_rejected_total{reason="too_large"} 3"#), "{metrics}");
    });
}

#[test]
fn a_key_read_from_a_file_sends_only_through_its_allowed_api() {
    if !nats_available() {
        return;
    }
    watchdog(Duration::from_secs(180), || {
        let f = Fixture::builder().start();
        let (_serve, url) = f.serve();
        let _work = f.work();
        // `app` may use the Segment API only: trackway's own JSON is refused before anything is
        // stored, with a message naming the key and the API.
        let trackway_json = r#"[{"id":"0190b5a0-0000-7000-8000-000000000001","type":"track","name":"opened","timestamp":"2026-12-03T10:00:00Z","identity":{"user_id":"u1"}}]"#;
        let (status, _, body) = post(&url, "/v1/events", APP_KEY, trackway_json);
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("write key `app` may not send through the trackway API"), "{body}");
        let (status, _, body) = post(&url, "/v1/track", APP_KEY, &track(1));
        assert_eq!(status, 200, "{body}");
        assert!(wait_until(Duration::from_secs(30), || delivered(&f.a).len() == 1), "the Segment call reached a");
        let metrics = get_text(&format!("{url}/metrics"));
        assert!(metrics.contains(r#"trackway_relay_rejected_total{reason="source_not_allowed"} 1"#), "{metrics}");
        assert!(metrics.contains(r#"trackway_relay_ingested_total{key="app"} 1"#), "{metrics}");
    });
}

#[test]
fn the_same_message_id_twice_is_delivered_once() {
    if !nats_available() {
        return;
    }
    watchdog(Duration::from_secs(180), || {
        let f = Fixture::builder().start();
        let (a, b) = (&f.a, &f.b);
        let (_serve, url) = f.serve();
        let _work = f.work();
        assert_eq!(post(&url, "/v1/track", KEY, &track(7)).0, 200);
        // A client retry: same messageId, in a batch this time, with a new one after it.
        assert_eq!(post(&url, "/v1/batch", KEY, &batch(7..9)).0, 200);
        assert!(wait_until(Duration::from_secs(30), || delivered(a).len() >= 2 && delivered(b).len() >= 2));
        // Time for a wrongly stored copy to arrive too.
        std::thread::sleep(Duration::from_secs(1));
        for c in [a, b] {
            let ids = delivered_ids(c);
            assert_eq!(ids.len(), 2, "{ids:?}");
            assert!(ids.values().all(|n| *n == 1), "{ids:?}");
        }
        let metrics = http().get(format!("{url}/metrics")).send().expect("metrics").text().expect("text");
        assert!(metrics.contains(r#"trackway_relay_duplicates_total{key="web"} 1"#), "{metrics}");
    });
}

#[test]
fn jetstream_down_answers_503_with_retry_after_and_nothing_unstored_is_acknowledged() {
    if !nats_available() {
        return;
    }
    watchdog(Duration::from_secs(180), || {
        let mut f = Fixture::builder().start();
        let a = &f.a;
        let (_serve, url) = f.serve();
        let _work = f.work();
        let mut acknowledged = BTreeSet::new();
        assert_eq!(post(&url, "/v1/track", KEY, &track(1)).0, 200);
        acknowledged.insert(1);

        f.nats[0].kill();
        for i in 2..5 {
            let (status, retry_after, body) = post(&url, "/v1/track", KEY, &track(i));
            assert_eq!(status, 503, "{body}");
            assert_eq!(retry_after.as_deref(), Some("5"));
            assert!(body.contains("unavailable"), "{body}");
        }
        let ready = http().get(format!("{url}/readyz")).send().expect("readyz").status().as_u16();
        assert_eq!(ready, 503);

        f.nats[0].restart();
        // The relay reconnects; a sender retrying gets a 200 once the append is stored.
        let stored = wait_until(Duration::from_secs(30), || post(&url, "/v1/track", KEY, &track(5)).0 == 200);
        assert!(stored, "the relay did not recover after JetStream came back");
        acknowledged.insert(5);
        assert!(wait_until(Duration::from_secs(30), || delivered_ids(a).len() >= 2));
        std::thread::sleep(Duration::from_secs(1));
        let names: BTreeSet<String> =
            delivered(a).iter().map(|e| e["name"].as_str().unwrap_or_default().to_owned()).collect();
        let expected: BTreeSet<String> = acknowledged.iter().map(|i| format!("Item {i}")).collect();
        assert_eq!(names, expected, "exactly what was answered 200 is delivered");
    });
}

#[test]
fn a_worker_killed_mid_run_leaves_everything_to_the_other() {
    if !nats_available() {
        return;
    }
    watchdog(Duration::from_secs(300), || {
        const N: usize = 1500;
        // A slow destination, so the kill lands while batches are in flight.
        let slow = Collector::builder()
            .default_reply(Reply::ok().delay(Duration::from_millis(30)))
            .start()
            .expect("collector");
        let settings = Settings { ack_wait_secs: 2, max_ack_pending: 100, pullers: 2, batch: 20, replicas: 1 };
        let f = Fixture::builder().a(slow).settings(settings.clone()).start();
        let (a, b) = (&f.a, &f.b);
        let (_serve, url) = f.serve();
        let mut killed = f.work();
        let _survivor = f.work();
        for start in (0..N).step_by(100) {
            let (status, _, body) = post(&url, "/v1/batch", KEY, &batch(start..start + 100));
            assert_eq!(status, 200, "{body}");
        }
        assert!(wait_until(Duration::from_secs(60), || delivered(a).len() >= N / 5), "no progress");
        // SIGKILL: no graceful shutdown, its unacked messages come back after the ack wait.
        let before = delivered_ids(a).len();
        killed.0.kill().expect("SIGKILL");
        let _ = killed.0.wait();
        assert!(
            wait_until(Duration::from_secs(120), || delivered_ids(a).len() == N && delivered_ids(b).len() == N),
            "a: {} of {N}, b: {} of {N}",
            delivered_ids(a).len(),
            delivered_ids(b).len()
        );
        std::thread::sleep(Duration::from_secs(3));
        for c in [a, b] {
            let ids = delivered_ids(c);
            assert_eq!(ids.len(), N);
            let duplicates: usize = ids.values().map(|n| n - 1).sum();
            eprintln!("killed at {before} of {N} delivered to a; {duplicates} duplicates");
            assert!(before < N, "the kill must land mid-run");
            assert!(
                duplicates <= settings.max_ack_pending as usize,
                "{duplicates} duplicates; at most max_ack_pending = {}",
                settings.max_ack_pending
            );
        }
    });
}

#[test]
fn a_destination_down_the_whole_run_lags_then_catches_up() {
    if !nats_available() {
        return;
    }
    watchdog(Duration::from_secs(300), || {
        const N: usize = 400;
        let down = Collector::builder().default_reply(Reply::status(503)).start().expect("collector");
        let f = Fixture::builder().b(down).start();
        let (a, b) = (&f.a, &f.b);
        let (_serve, url) = f.serve();
        let _work = f.work();
        for start in (0..N).step_by(100) {
            assert_eq!(post(&url, "/v1/batch", KEY, &batch(start..start + 100)).0, 200);
        }
        assert!(
            wait_until(Duration::from_secs(60), || delivered_ids(a).len() == N),
            "a got {}",
            delivered_ids(a).len()
        );
        assert!(delivered(b).is_empty(), "b is down");
        assert!(b.request_count() > 0, "b was tried");
        // The last acks may still be on their way when the collector has answered: wait for them.
        let fetch = || http().get(format!("{url}/metrics")).send().expect("metrics").text().expect("text");
        let lag_in = |metrics: &str, d: &str| -> u64 {
            ["trackway_relay_consumer_pending", "trackway_relay_consumer_ack_pending"]
                .iter()
                .filter_map(|m| {
                    let prefix = format!("{m}{{destination=\"{d}\"}} ");
                    metrics.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.parse::<u64>().ok())
                })
                .sum()
        };
        assert!(wait_until(Duration::from_secs(10), || lag_in(&fetch(), "a") == 0), "a's lag: {}", fetch());
        let metrics = fetch();
        assert!(lag_in(&metrics, "b") > 0, "b's consumer lags: {metrics}");

        b.set_default_reply(Reply::ok());
        assert!(
            wait_until(Duration::from_secs(60), || delivered_ids(b).len() == N),
            "b caught up to {}",
            delivered_ids(b).len()
        );
    });
}

#[test]
fn a_worker_serves_its_metrics_and_stops_cleanly_on_sigterm() {
    if !nats_available() {
        return;
    }
    watchdog(Duration::from_secs(180), || {
        let f = Fixture::builder().worker_lines("metrics_listen = \"127.0.0.1:0\"\n").start();
        let (a, b) = (&f.a, &f.b);
        let (_serve, url) = f.serve();
        let (mut worker, line) = f.relay(&["work"]);
        let metrics_url = line.rsplit(' ').next().expect("metrics URL").to_owned();
        assert!(metrics_url.ends_with("/metrics"), "{line}");
        assert_eq!(post(&url, "/v1/batch", KEY, &batch(0..10)).0, 200);
        assert!(wait_until(Duration::from_secs(30), || delivered_ids(a).len() == 10 && delivered_ids(b).len() == 10));
        let read = || http().get(&metrics_url).send().expect("metrics").text().expect("text");
        assert!(
            wait_until(Duration::from_secs(10), || read()
                .contains(r#"trackway_relay_delivered_total{destination="b"} 10"#)),
            "{}",
            read()
        );
        assert!(read().contains(r#"trackway_relay_delivered_total{destination="a"} 10"#), "{}", read());

        let pid = worker.0.id().to_string();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs").success());
        // Watchdog: a clean stop within 10 s, exit code 0.
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = worker.0.try_wait().expect("wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "the worker did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "{status:?}");
    });
}

#[test]
fn the_sdks_json_destination_pointed_at_the_relay_delivers_through_it() {
    use trackway::destination::JsonHttp;
    use trackway::store::MemoryStore;
    use trackway::{Client, HttpOptions, props};

    if !nats_available() {
        return;
    }
    watchdog(Duration::from_secs(180), || {
        let f = Fixture::builder().start();
        let (a, b) = (&f.a, &f.b);
        let (_serve, url) = f.serve();
        let _work = f.work();
        let client = Client::builder()
            .destination_with(
                JsonHttp::new(format!("{url}/v1/events")).name("relay"),
                HttpOptions::default().header("Authorization", format!("Bearer {KEY}")),
            )
            .store(MemoryStore::new())
            .build()
            .expect("client");
        client.track("u1", "checkout", props! { "amount" => 12.5 }).expect("track");
        client.identify("u1", props! { "plan" => "pro" }).expect("identify");
        // The relay answered 200 for both: they are in JetStream.
        let report = client.flush(Duration::from_secs(20)).expect("flushed");
        assert_eq!(client.stats().destinations[0].delivered, 2, "{report:?}");
        client.shutdown(Duration::from_secs(5)).expect("shutdown");
        for c in [a, b] {
            assert!(wait_until(Duration::from_secs(30), || delivered(c).len() == 2), "{:?}", delivered(c));
            let events = delivered(c);
            let track = events.iter().find(|e| e["type"] == "track").expect("track");
            assert_eq!(track["name"], "checkout");
            assert_eq!(track["properties"]["amount"], 12.5);
            assert!(events.iter().any(|e| e["type"] == "identify" && e["properties"]["plan"] == "pro"));
        }
    });
}

/// POSTs `body` until the relay answers 200 (a sender's retries: 503 while JetStream elects a
/// leader or a node is down), for at most `timeout`.
fn post_until_stored(url: &str, body: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let answer = http()
            .post(format!("{url}/v1/batch"))
            .basic_auth(KEY, Some(""))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send();
        match answer {
            Ok(r) if r.status().as_u16() == 200 => return,
            Ok(r) => assert_eq!(r.status().as_u16(), 503, "only 503 is retried"),
            Err(_) => {}
        }
        assert!(Instant::now() < deadline, "not stored within {timeout:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_three_node_cluster_loses_nothing_when_a_node_is_killed_mid_run() {
    if !nats_available() {
        return;
    }
    watchdog(Duration::from_secs(900), || {
        // 20 000 in CI; TRACKWAY_RELAY_CLUSTER_EVENTS=100000 for the longer run.
        let n: usize =
            std::env::var("TRACKWAY_RELAY_CLUSTER_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
        let n = n.div_ceil(100) * 100;
        let settings = Settings { ack_wait_secs: 5, max_ack_pending: 1000, pullers: 2, batch: 100, replicas: 3 };
        let mut f = Fixture::builder().cluster().settings(settings).start();
        let (a, b) = (&f.a, &f.b);
        let (_serve, url) = f.serve();
        let _workers = [f.work(), f.work()];
        let start = Instant::now();
        for (k, first) in (0..n).step_by(100).enumerate() {
            if k == n / 300 {
                // A third of the way: the first node (which the relay processes connected to first)
                // goes down; the stream keeps its quorum on the other two.
                f.nats[0].kill();
            }
            post_until_stored(&url, &batch(first..first + 100), Duration::from_secs(60));
        }
        let ingested = start.elapsed();
        // The collectors' counters first (cheap to poll), then nothing left unsettled in the stream,
        // then the ids: every event at each destination (duplicates after the failover are allowed,
        // a loss is not).
        let complete = wait_until(Duration::from_secs(300), || {
            a.sink_stats().events >= n as u64 && b.sink_stats().events >= n as u64
        });
        assert!(complete, "a: {} b: {} of {n}", a.sink_stats().events, b.sink_stats().events);
        let metrics = || http().get(format!("{url}/metrics")).send().and_then(|r| r.text()).unwrap_or_default();
        let settled = wait_until(Duration::from_secs(60), || {
            let m = metrics();
            ["a", "b"].iter().all(|d| {
                ["trackway_relay_consumer_pending", "trackway_relay_consumer_ack_pending"]
                    .iter()
                    .all(|g| m.contains(&format!("{g}{{destination=\"{d}\"}} 0\n")))
            })
        });
        assert!(settled, "{}", metrics());
        for c in [a, b] {
            let ids = delivered_ids(c);
            assert_eq!(ids.len(), n, "distinct events delivered");
            let duplicates: usize = ids.values().map(|k| k - 1).sum();
            eprintln!(
                "cluster: {n} events ingested in {ingested:?} with a node killed; 0 lost, {duplicates} duplicates"
            );
        }
    });
}

#[test]
fn opencdp_and_its_customer_io_dual_write_are_delivered_through_the_relay() {
    if !nats_available() {
        return;
    }
    watchdog(Duration::from_secs(180), || {
        // One collector answers both, with these credentials only (a key read wrongly is a 401).
        let collector = Collector::builder()
            .opencdp_api_keys(["cdp-secret"])
            .customerio_credentials("site-7", "cio-secret")
            .start()
            .expect("collector");
        // Destination `a` is OpenCDP; its dual-write `b` is Customer.io: two consumers.
        let mut f = Fixture::builder()
            .a(collector)
            .destinations(
                "[[destination]]\nname = \"a\"\ntype = \"opencdp\"\napi_key = { env = \"RELAY_TEST_CDP_KEY\" }\n\
                 endpoint = \"{a}/gateway/data-gateway\"\n[destination.customer_io]\nname = \"b\"\n\
                 site_id = \"site-7\"\napi_key = { env = \"RELAY_TEST_CIO_KEY\" }\nbase_url = \"{a}\"\napi = \"v1\"\n",
            )
            .start();
        f.env("RELAY_TEST_CDP_KEY", "cdp-secret");
        f.env("RELAY_TEST_CIO_KEY", "cio-secret");
        let (_serve, url) = f.serve();
        let _work = f.work();
        let identify = r#"{"userId":"u1","traits":{"email":"u1@example.com"},"messageId":"cdp-identify"}"#;
        assert_eq!(post(&url, "/v1/identify", KEY, identify).0, 200);
        let purchase = r#"{"userId":"u1","event":"purchase","properties":{"amount":9.5},"messageId":"cdp-track"}"#;
        assert_eq!(post(&url, "/v1/track", KEY, purchase).0, 200);

        let ok = |path: &str| f.a.requests().into_iter().filter(|r| r.path == path && r.status == 200).count();
        let paths = [
            "/gateway/data-gateway/v1/persons/identify",
            "/gateway/data-gateway/v1/persons/track",
            "/api/v1/customers/u1",
            "/api/v1/customers/u1/events",
        ];
        assert!(
            wait_until(Duration::from_secs(30), || paths.iter().all(|p| ok(p) >= 1)),
            "{:?}",
            f.a.requests().iter().map(|r| (r.path.clone(), r.status)).collect::<Vec<_>>()
        );
        let requests = f.a.requests();
        let cdp = requests.iter().find(|r| r.path == paths[1]).expect("OpenCDP track");
        assert_eq!(cdp.header("authorization"), Some("cdp-secret"), "OpenCDP's key, raw");
        assert_eq!(cdp.json().expect("json")["eventName"], "purchase");
        let cio = requests.iter().find(|r| r.path == paths[3]).expect("Customer.io event");
        let event = cio.json().expect("json");
        assert_eq!((event["name"].as_str(), event["data"]["amount"].as_f64()), (Some("purchase"), Some(9.5)));
        // Each once: the two destinations have their own consumers, neither delivers the other's.
        std::thread::sleep(Duration::from_millis(500));
        assert!(paths.iter().all(|p| ok(p) == 1), "{:?}", paths.map(ok));
    });
}

#[test]
fn an_alias_is_a_customer_io_merge_where_merge_aliases_is_on_and_a_dead_letter_elsewhere() {
    if !nats_available() {
        return;
    }
    watchdog(Duration::from_secs(180), || {
        let cio = Collector::builder().customerio_credentials("site-7", "cio-secret").start().expect("collector");
        // `a` is Customer.io (v2 batches) with merge_aliases; `b` is JSON, where an alias has no
        // equivalent.
        let mut f = Fixture::builder()
            .a(cio)
            .destinations(
                "[[destination]]\nname = \"a\"\ntype = \"customerio\"\nsite_id = \"site-7\"\n\
                 api_key = { env = \"RELAY_TEST_CIO_KEY\" }\nbase_url = \"{a}\"\nmerge_aliases = true\n\n\
                 [[destination]]\nname = \"b\"\ntype = \"json\"\nurl = \"{b}/b\"\n",
            )
            .start();
        f.env("RELAY_TEST_CIO_KEY", "cio-secret");
        let (_serve, url) = f.serve();
        let _work = f.work();
        let alias = r#"{"previousId":"anon-1","userId":"u1","messageId":"the-alias"}"#;
        assert_eq!(post(&url, "/v1/alias", KEY, alias).0, 200);
        // No previousId: a dead letter at `a` too, with the reason.
        let half = r#"{"userId":"u2","messageId":"half-alias"}"#;
        assert_eq!(post(&url, "/v1/alias", KEY, half).0, 200);

        let merges = || -> Vec<serde_json::Value> {
            f.a.requests()
                .into_iter()
                .filter(|r| r.status == 200 && r.path == "/api/v2/batch")
                .filter_map(|r| r.json())
                .flat_map(|b| b["batch"].as_array().cloned().unwrap_or_default())
                .filter(|item| item["action"] == "merge")
                .collect()
        };
        assert!(wait_until(Duration::from_secs(30), || !merges().is_empty()), "{:?}", f.a.requests());
        assert_eq!(
            merges()[0],
            serde_json::json!({ "type": "person", "action": "merge", "primary": { "id": "u1" }, "secondary": { "id": "anon-1" } })
        );
        let listed = || f.run(&["dead", "list"]);
        assert!(wait_until(Duration::from_secs(20), || listed().contains("3 dead letter(s)")), "{}", listed());
        let text = listed();
        assert!(text.contains("Segment `alias` calls have no equivalent at destination `b`"), "{text}");
        let at_a: Vec<&str> = text.lines().filter(|l| l.split('\t').nth(1) == Some("a")).collect();
        assert_eq!(at_a.len(), 1, "{text}");
        assert!(at_a[0].contains("web:half-alias") && at_a[0].contains("previousId"), "{text}");
        assert_eq!(merges().len(), 1, "merged once");
        assert!(delivered(&f.b).is_empty(), "nothing reached b");
    });
}

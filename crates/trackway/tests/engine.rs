//! `trackway::engine::Deliverer` against the collector: one verdict per event from the
//! destination's own `encode`/`classify`, the pipeline's transport and backoff.

use std::time::Duration;

use bytes::Bytes;
use trackway::destination::{EventRecord, JsonHttp};
use trackway::engine::{Deliverer, Verdict};
use trackway::{HttpOptions, MessageId, RetryPolicy, Timestamp};
use trackway_collector::{Collector, Reply};

fn record(i: u64) -> EventRecord {
    let t = Timestamp::from_unix_millis(1_700_000_000_000);
    let id = MessageId::new_v7(t);
    let json = format!(
        r#"{{"id":"{id}","type":"track","name":"e{i}","timestamp":"2023-11-14T22:13:20.000Z","identity":{{"user_id":"u"}},"context":{{"library":"t","library_version":"1"}}}}"#
    );
    EventRecord::new(i, id, t, Bytes::from(json))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

fn deliver(deliverer: &Deliverer, n: u64, attempt: u32) -> Vec<Verdict> {
    let records: Vec<EventRecord> = (0..n).map(record).collect();
    // Watchdog: a hung request fails the test instead of blocking it.
    runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(30), deliverer.deliver(&records, attempt)).await.expect("in time")
    })
}

#[test]
fn answers_become_one_verdict_per_event() {
    let collector = Collector::builder()
        .script([
            Reply::ok(),
            Reply::status(400).body("bad event"),
            Reply::status(503),
            Reply::status(429).retry_after("7"),
            Reply::status(401).body("bad token"),
        ])
        .start()
        .expect("collector");
    let retry = RetryPolicy::default().backoff(Duration::from_millis(100), Duration::from_secs(1));
    let options = HttpOptions::default().retry_policy(retry);
    let deliverer = Deliverer::new(JsonHttp::new(collector.url("/events")).name("j"), &options).expect("deliverer");
    assert_eq!(deliverer.name(), "j");

    assert_eq!(deliver(&deliverer, 3, 1), vec![Verdict::Delivered; 3]);
    let events = collector.requests()[0].events();
    assert_eq!(events.len(), 3);
    assert_eq!(events[2]["name"], "e2");

    let dead = deliver(&deliverer, 2, 1);
    assert!(
        matches!(&dead[0], Verdict::Dead(reason) if reason.contains("400") && reason.contains("bad event")),
        "{dead:?}"
    );
    assert_eq!(dead[0], dead[1]);

    // Full jitter under the ceiling of attempt 3: 100 ms × 2² = 400 ms.
    let retried = deliver(&deliverer, 1, 3);
    assert!(matches!(retried[0], Verdict::Retry { after } if after <= Duration::from_millis(400)), "{retried:?}");

    // Retry-After wins over the backoff.
    assert_eq!(deliver(&deliverer, 1, 1), vec![Verdict::Retry { after: Duration::from_secs(7) }]);

    // A configuration error holds the event (never a dead letter).
    let held = deliver(&deliverer, 1, 1);
    assert!(matches!(&held[0], Verdict::Held { reason, .. } if reason.contains("bad token")), "{held:?}");
}

#[test]
fn no_answer_is_a_retry() {
    // A port nothing listens on: the connection is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let deliverer =
        Deliverer::new(JsonHttp::new(format!("http://127.0.0.1:{port}/events")), &HttpOptions::default()).expect("d");
    let verdicts = deliver(&deliverer, 2, 1);
    assert!(verdicts.iter().all(|v| matches!(v, Verdict::Retry { .. })), "{verdicts:?}");
}

#[test]
fn a_bad_configuration_is_refused_when_made() {
    let err = Deliverer::new(JsonHttp::new("ftp://example.invalid/"), &HttpOptions::default()).expect_err("bad URL");
    assert!(err.contains("scheme"), "{err}");
}

//! Destination health against the collector on loopback: transport errors classified (nothing
//! sent / maybe sent), misconfigured destinations holding their events, unreachable ones, and
//! destination or worker code that panics.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{delivered_ids, fast_builder, json, log_lines, logs, wait_until, watchdog};
use trackway::destination::{
    Classified, Destination, DestinationState, Encoded, EventRecord, JsonHttp, LimitError, Outcome, Request, Response,
    TransportError, TransportErrorKind,
};
use trackway::health::{FAILING_AFTER, HealthState, LastErrorKind, MISCONFIGURED_PROBE_FIRST, UNREACHABLE_AFTER};
use trackway::store::DeadLetterReason;
use trackway::{BuildError, Client, Clock, Error, Event, FlushError, ShutdownError, Timestamp, props};
use trackway_collector::{Collector, Faults, Reply};

const LIMIT: Duration = Duration::from_secs(60);

// === destinations for the tests ===

/// JSON over HTTP that records the kind of every transport error and dead-letters the events
/// with it (so a flush completes).
#[derive(Debug)]
struct Kinds {
    inner: JsonHttp,
    seen: Arc<Mutex<Vec<TransportErrorKind>>>,
}

impl Destination for Kinds {
    fn name(&self) -> &str {
        Destination::name(&self.inner)
    }
    fn encode(&self, events: &[EventRecord], state: &DestinationState, now: Timestamp) -> Encoded {
        self.inner.encode(events, state, now)
    }
    fn classify_error(&self, _: &Request, error: &TransportError) -> Outcome {
        self.seen.lock().expect("lock").push(error.kind());
        Outcome::Reject(format!("transport: {error}"))
    }
}

fn kinds(name: &str, url: String) -> (Kinds, Arc<Mutex<Vec<TransportErrorKind>>>) {
    let seen = Arc::default();
    (Kinds { inner: json(name, url), seen: Arc::clone(&seen) }, seen)
}

/// JSON over HTTP whose code panics: `encode` on batches holding an event whose properties
/// contain `poison` (every batch when `poison` is empty), `classify` when `classify` is set,
/// `validate` on an event named `validate-boom`, `check_config` when `config` is set.
#[derive(Debug, Default)]
struct Panicky {
    inner: Option<JsonHttp>,
    poison: &'static str,
    encode: bool,
    classify: bool,
    config: bool,
}

impl Destination for Panicky {
    fn name(&self) -> &str {
        self.inner.as_ref().map_or("panicky", Destination::name)
    }
    fn validate(&self, event: &Event) -> Result<(), LimitError> {
        if event.name.as_deref() == Some("validate-boom") {
            panic!("validate boom");
        }
        Ok(())
    }
    fn check_config(&self) -> Result<(), String> {
        if self.config {
            panic!("config boom");
        }
        Ok(())
    }
    fn encode(&self, events: &[EventRecord], state: &DestinationState, now: Timestamp) -> Encoded {
        let poisoned = |r: &EventRecord| String::from_utf8_lossy(r.json()).contains(self.poison);
        if self.encode && events.iter().any(poisoned) {
            panic!("encode boom on {} events", events.len());
        }
        self.inner.as_ref().expect("a url").encode(events, state, now)
    }
    fn classify(&self, request: &Request, response: &Response) -> Classified {
        if self.classify {
            panic!("classify boom");
        }
        self.inner.as_ref().expect("a url").classify(request, response)
    }
}

fn stats_of(client: &Client, name: &str) -> trackway::DestinationStats {
    client.stats().destination(name).cloned().expect("destination stats")
}

/// Advances the manual clock by `by` and waits until the worker has seen `failed` failed
/// requests of `name` (answers are applied at the clock time they arrive: advancing again before
/// would move the next probe).
fn advance_and_wait(hand: &trackway::ManualClock, by: Duration, client: &Client, name: &str, failed: u64) -> bool {
    hand.advance(by);
    wait_until(Duration::from_secs(10), || stats_of(client, name).failed_requests >= failed)
}

// === part 1: transport errors, classified ===

#[test]
fn a_refused_connection_is_classified_not_sent() {
    watchdog(LIMIT, || {
        let reserved = Collector::builder().reserve().expect("reserve");
        let (dest, seen) = kinds("refused", reserved.url("/e"));
        let client = fast_builder().destination(dest).build().expect("client");
        client.track("u1", "e", props! {}).expect("track");
        client.flush(Duration::from_secs(10)).expect("dead-lettered by classify_error");
        assert_eq!(*seen.lock().expect("lock"), vec![TransportErrorKind::NotSent]);
        let letters = client.dead_letters(10).expect("dead letters");
        assert!(letters[0].detail.contains("not sent"), "{}", letters[0].detail);
        let health = stats_of(&client, "refused").health;
        let last = health.last_error.expect("a last error");
        assert_eq!((last.kind, last.status), (LastErrorKind::NotSent, None));
        let port = reserved.addr().port();
        assert!(last.message.ends_with(&format!("to 127.0.0.1:{port}")), "{last}");
        assert!(last.message.to_lowercase().contains("refused"), "{last}");
        assert!(!last.message.contains("/e"), "no URL path in messages: {last}");
    });
}

#[test]
fn a_connection_closed_without_an_answer_is_classified_maybe_sent() {
    watchdog(LIMIT, || {
        let collector = Collector::builder().script([Reply::close_connection()]).start().expect("collector");
        let (dest, seen) = kinds("closed", collector.url("/e"));
        let client = fast_builder().destination(dest).build().expect("client");
        client.track("u1", "e", props! {}).expect("track");
        client.flush(Duration::from_secs(10)).expect("dead-lettered by classify_error");
        assert_eq!(collector.request_count(), 1, "the server did receive it");
        assert_eq!(*seen.lock().expect("lock"), vec![TransportErrorKind::MaybeSent]);
        let last = stats_of(&client, "closed").health.last_error.expect("a last error");
        assert_eq!(last.kind, LastErrorKind::MaybeSent);
    });
}

#[test]
fn an_answer_cut_off_mid_body_is_classified_maybe_sent() {
    watchdog(LIMIT, || {
        // A server that reads the request, promises 100 bytes of body, sends 5 and hangs up.
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/e", listener.local_addr().expect("addr"));
        let server = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut buf).expect("read");
                assert!(n > 0, "client hung up");
                got.extend_from_slice(&buf[..n]);
            }
            socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort").expect("write");
        });
        let (dest, seen) = kinds("cut", url);
        let client = fast_builder().destination(dest).build().expect("client");
        client.track("u1", "e", props! {}).expect("track");
        client.flush(Duration::from_secs(10)).expect("dead-lettered by classify_error");
        server.join().expect("server thread");
        assert_eq!(*seen.lock().expect("lock"), vec![TransportErrorKind::MaybeSent]);
    });
}

// === part 5: misconfigured and unreachable ===

#[test]
fn a_401_holds_the_events_probes_rarely_logs_once_and_delivers_after_the_fix() {
    logs();
    watchdog(LIMIT, || {
        let collector = Collector::builder()
            .default_reply(Reply::status(401).body("invalid API token\nsecond line"))
            .start()
            .expect("collector");
        let (clock, hand) = Clock::manual(Timestamp::from_unix_millis(1_700_000_000_000));
        let client =
            fast_builder().clock(clock).destination(json("bad-token", collector.url("/e"))).build().expect("client");
        let mut ids: Vec<String> =
            (0..10).map(|i| client.track("u1", "e", props! { "i" => i }).expect("track").to_string()).collect();
        let err = client.flush(Duration::from_millis(500)).expect_err("held, not delivered");
        assert_eq!(err.pending_for("bad-token"), 10, "{err:?}");

        let stats = stats_of(&client, "bad-token");
        assert_eq!(stats.health.state, HealthState::Misconfigured, "{stats:?}");
        assert_eq!(stats.health.since, Timestamp::from_unix_millis(1_700_000_000_000));
        let last = stats.health.last_error.clone().expect("last error");
        assert_eq!((last.kind, last.status), (LastErrorKind::Misconfigured, Some(401)));
        assert_eq!(last.to_string(), "401 Unauthorized: invalid API token");
        assert_eq!((stats.pending, stats.rejected, stats.retries_exhausted), (10, 0, 0));
        assert!(client.dead_letters(10).expect("dead letters").is_empty());
        assert_eq!(collector.request_count(), 1);

        // New events wait too; nothing goes out before the probe is due (5 s), then one request.
        ids.extend((10..15).map(|i| client.track("u1", "e", props! { "i" => i }).expect("track").to_string()));
        hand.advance(MISCONFIGURED_PROBE_FIRST - Duration::from_millis(100));
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(collector.request_count(), 1, "no request before the probe is due");
        assert!(advance_and_wait(&hand, Duration::from_millis(100), &client, "bad-token", 2), "the first probe");
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(collector.request_count(), 2, "one probe, not a request per batch");
        // The next probe waits twice as long.
        hand.advance(MISCONFIGURED_PROBE_FIRST);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(collector.request_count(), 2, "the interval doubled");
        assert!(advance_and_wait(&hand, MISCONFIGURED_PROBE_FIRST, &client, "bad-token", 3), "the second probe");

        // The configuration is fixed (here: the server starts accepting): the next probe works.
        collector.set_default_reply(Reply::ok());
        hand.advance(4 * MISCONFIGURED_PROBE_FIRST);
        client.flush(Duration::from_secs(10)).expect("delivered after the fix");
        let delivered = delivered_ids(&collector.requests());
        for id in &ids {
            assert_eq!(delivered.get(id), Some(&1), "event {id} delivered once");
        }
        let stats = stats_of(&client, "bad-token");
        assert_eq!((stats.delivered, stats.rejected, stats.retries_exhausted), (15, 0, 0));
        assert_eq!(stats.health.state, HealthState::Healthy);
        assert_eq!(stats.health.last_error.map(|e| e.status), Some(Some(401)), "the last error is kept");
        assert!(client.dead_letters(10).expect("dead letters").is_empty());
        assert!(collector.request_count() <= 6, "{} requests", collector.request_count());

        let errors = log_lines(&["ERROR", "destination misconfigured", "destination=\"bad-token\""]);
        assert_eq!(errors.len(), 1, "one error line per change of state: {errors:#?}");
        assert!(errors[0].contains("401 Unauthorized: invalid API token"), "{}", errors[0]);
        assert_eq!(log_lines(&["INFO", "answers again", "destination=\"bad-token\""]).len(), 1);
    });
}

#[test]
fn held_events_still_expire_by_max_event_age() {
    watchdog(LIMIT, || {
        let collector = Collector::builder().default_reply(Reply::status(403)).start().expect("collector");
        let (clock, hand) = Clock::manual(Timestamp::from_unix_millis(1_700_000_000_000));
        let client = fast_builder()
            .clock(clock)
            .max_event_age(Duration::from_secs(60))
            .destination(json("forbidden", collector.url("/e")))
            .build()
            .expect("client");
        client.track("u1", "e", props! {}).expect("track");
        assert!(client.flush(Duration::from_millis(300)).is_err(), "held");
        assert_eq!(stats_of(&client, "forbidden").health.state, HealthState::Misconfigured);
        hand.advance(Duration::from_secs(120));
        client.flush(Duration::from_secs(10)).expect("expired at the probe");
        let stats = stats_of(&client, "forbidden");
        assert_eq!((stats.expired, stats.rejected, stats.pending), (1, 0, 0));
        assert_eq!(client.dead_letters(10).expect("dead letters")[0].reason, DeadLetterReason::Expired);
    });
}

#[test]
fn five_minutes_of_refused_connections_is_unreachable_logged_once() {
    logs();
    watchdog(LIMIT, || {
        let reserved = Collector::builder().reserve().expect("reserve");
        let (clock, hand) = Clock::manual(Timestamp::from_unix_millis(1_700_000_000_000));
        let client =
            fast_builder().clock(clock).destination(json("nowhere", reserved.url("/e"))).build().expect("client");
        let id = client.track("u1", "e", props! {}).expect("track");
        // In the store before the clock moves: the batch interval counts from its arrival.
        client.persisted(Duration::from_secs(5)).expect("persisted");
        let failed = |n: u64| wait_until(Duration::from_secs(10), || stats_of(&client, "nowhere").failed_requests >= n);
        hand.advance(Duration::from_millis(20));
        assert!(failed(1), "the first attempt");
        let health = stats_of(&client, "nowhere").health;
        assert_eq!(health.state, HealthState::Healthy, "one failure alone does not make it failing");
        assert_eq!(health.last_error.map(|e| e.kind), Some(LastErrorKind::NotSent), "but it is reported");

        let step = Duration::from_secs(30);
        let steps = UNREACHABLE_AFTER.as_secs() / step.as_secs();
        for n in 1..steps {
            hand.advance(step);
            assert!(failed(1 + n), "retry {n}");
            let expected = if 1 + n >= u64::from(FAILING_AFTER) { HealthState::Failing } else { HealthState::Healthy };
            assert_eq!(stats_of(&client, "nowhere").health.state, expected, "after {n} steps");
        }
        hand.advance(step);
        assert!(failed(1 + steps));
        let health = stats_of(&client, "nowhere").health;
        assert_eq!(health.state, HealthState::Unreachable, "{health:?}");
        hand.advance(step);
        assert!(failed(2 + steps));
        assert_eq!(log_lines(&["WARN", "destination unreachable", "destination=\"nowhere\""]).len(), 1, "logged once");

        // The server comes up: delivered, healthy again.
        let collector = reserved.start().expect("start on the reserved port");
        hand.advance(step);
        client.flush(Duration::from_secs(10)).expect("delivered once the server is up");
        assert_eq!(delivered_ids(&collector.requests()).get(&id.to_string()), Some(&1));
        assert_eq!(stats_of(&client, "nowhere").health.state, HealthState::Healthy);
    });
}

#[test]
fn a_503_now_and_then_leaves_the_destination_healthy_at_full_concurrency_and_delivers_everything() {
    logs();
    watchdog(LIMIT, || {
        // Every 5th request fails (never several in a row); a little latency so requests overlap.
        let faults = Faults { fail_every: Some(5), latency_ms: Some(5), ..Faults::default() };
        let collector = Collector::builder().faults(faults).start().expect("collector");
        let client =
            fast_builder().destination(json("flaky", collector.url("/e")).batch_size(10)).build().expect("client");
        let ids: Vec<String> =
            (0..400).map(|i| client.track("u1", "e", props! { "i" => i }).expect("track").to_string()).collect();
        client.flush(Duration::from_secs(30)).expect("everything delivered");
        let stats = stats_of(&client, "flaky");
        assert!(stats.failed_requests > 0, "some requests failed: {stats:?}");
        assert_eq!(stats.health.state, HealthState::Healthy, "a failure among successes is not an outage");
        assert_eq!(stats.health.last_error.and_then(|e| e.status), Some(503), "but it is reported");
        let delivered = delivered_ids(&collector.requests());
        assert!(ids.iter().all(|id| delivered.contains_key(id)), "every event delivered");
        assert!(
            collector.peak_concurrent_requests() > 1,
            "requests kept overlapping (peak {})",
            collector.peak_concurrent_requests()
        );
        assert!(log_lines(&["destination failing", "destination=\"flaky\""]).is_empty(), "no failing state logged");
    });
}

// === part 6: panics ===

#[test]
fn an_encode_panic_on_one_event_dead_letters_it_and_delivers_the_rest() {
    watchdog(LIMIT, || {
        let collector = Collector::start().expect("collector");
        let dest = Panicky {
            inner: Some(json("p1", collector.url("/e"))),
            poison: "poison",
            encode: true,
            ..Panicky::default()
        };
        let client = fast_builder().destination(dest).build().expect("client");
        let ids: Vec<_> = (0..10)
            .map(|i| {
                let props = if i == 3 {
                    props! { "i" => i, "poison" => true }
                } else {
                    props! { "i" => i }
                };
                client.track("u1", "e", props).expect("track")
            })
            .collect();
        client.flush(Duration::from_secs(10)).expect("flush");
        let letters = client.dead_letters(10).expect("dead letters");
        assert_eq!(letters.len(), 1);
        assert_eq!((letters[0].id, letters[0].reason), (ids[3], DeadLetterReason::Rejected));
        assert_eq!(letters[0].detail, "destination panicked: encode boom on 1 events");
        let delivered = delivered_ids(&collector.requests());
        for (n, id) in ids.iter().enumerate().filter(|(n, _)| *n != 3) {
            assert_eq!(delivered.get(&id.to_string()), Some(&1), "event {n}");
        }
        let stats = stats_of(&client, "p1");
        assert_eq!((stats.delivered, stats.rejected), (9, 1));
        assert_eq!(stats.health.state, HealthState::Healthy, "one poison event does not stop it");
        assert_eq!(stats.health.last_error.map(|e| e.kind), Some(LastErrorKind::Panicked));
    });
}

#[test]
fn encode_panicking_on_every_event_stops_its_destination_after_three_and_others_go_on() {
    logs();
    watchdog(LIMIT, || {
        let collector = Collector::start().expect("collector");
        let dest = Panicky { inner: Some(json("p-all", collector.url("/p"))), encode: true, ..Panicky::default() };
        let client =
            fast_builder().destination(dest).destination(json("b", collector.url("/b"))).build().expect("client");
        for i in 0..10 {
            client.track("u1", "e", props! { "i" => i }).expect("track");
        }
        assert!(
            wait_until(Duration::from_secs(10), || stats_of(&client, "p-all").health.state == HealthState::Stopped),
            "{:?}",
            client.stats()
        );
        let stopped = stats_of(&client, "p-all");
        assert_eq!(
            (stopped.rejected, stopped.pending, stopped.delivered),
            (3, 7, 0),
            "three dead letters, the rest held"
        );
        assert_eq!(
            stopped.health.last_error.map(|e| e.message),
            Some("encode panicked: encode boom on 1 events".to_owned())
        );
        let letters = client.dead_letters(10).expect("dead letters");
        assert_eq!(letters.len(), 3);
        assert!(letters.iter().all(|l| l.detail.starts_with("destination panicked: encode boom")));

        // The other destination goes on, now and later.
        for i in 10..15 {
            client.track("u1", "e", props! { "i" => i }).expect("track");
        }
        assert!(wait_until(Duration::from_secs(10), || stats_of(&client, "b").delivered == 15), "{:?}", client.stats());
        assert!(collector.requests().iter().all(|r| r.path == "/b"), "nothing was sent for the stopped destination");
        assert_eq!(stats_of(&client, "p-all").pending, 12, "held, counted as pending");
        assert_eq!(log_lines(&["ERROR", "destination stopped", "destination=\"p-all\""]).len(), 1, "logged once");
        // Shutdown does not wait for a destination that will never send.
        let started = Instant::now();
        let err = client.shutdown(Duration::from_secs(5)).expect_err("p-all still holds events");
        assert!(matches!(err, ShutdownError::Timeout { .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    });
}

#[test]
fn a_classify_panic_dead_letters_a_single_event() {
    watchdog(LIMIT, || {
        let collector = Collector::start().expect("collector");
        let dest =
            Panicky { inner: Some(json("p-classify", collector.url("/e"))), classify: true, ..Panicky::default() };
        let client = fast_builder().destination(dest).build().expect("client");
        let id = client.track("u1", "e", props! {}).expect("track");
        client.flush(Duration::from_secs(10)).expect("flush");
        let letters = client.dead_letters(10).expect("dead letters");
        assert_eq!(letters.len(), 1);
        assert_eq!((letters[0].id, letters[0].detail.as_str()), (id, "destination panicked: classify boom"));
        let stats = stats_of(&client, "p-classify");
        assert_eq!(stats.health.last_error.map(|e| e.message), Some("classify panicked: classify boom".to_owned()));
        assert_eq!(stats.health.state, HealthState::Healthy);
    });
}

#[test]
fn a_validate_panic_is_an_error_of_the_call_and_a_check_config_panic_a_build_error() {
    watchdog(LIMIT, || {
        let collector = Collector::start().expect("collector");
        let dest = Panicky { inner: Some(json("p-validate", collector.url("/e"))), ..Panicky::default() };
        let client = fast_builder().destination(dest).build().expect("client");
        let err = client.track("u1", "validate-boom", props! {}).expect_err("validate panicked");
        assert_eq!(
            err,
            Error::DestinationPanicked { destination: "p-validate".into(), message: "validate boom".into() }
        );
        client.track("u1", "fine", props! {}).expect("the client works on");
        client.flush(Duration::from_secs(10)).expect("flush");
        assert_eq!(collector.request_count(), 1);

        let err = fast_builder()
            .destination(Panicky { config: true, ..Panicky::default() })
            .build()
            .expect_err("check_config panicked");
        assert_eq!(
            err,
            BuildError::Destination {
                destination: "panicky".into(),
                message: "check_config panicked: config boom".into()
            }
        );
    });
}

#[test]
fn after_the_worker_panics_every_call_is_an_error_and_queued_events_are_counted() {
    watchdog(LIMIT, || {
        let collector = Collector::start().expect("collector");
        let client = fast_builder().destination(json("w", collector.url("/e"))).build().expect("client");
        client.track("u1", "before", props! {}).expect("track");
        client.flush(Duration::from_secs(10)).expect("flush");

        // Three events accepted behind the request that makes the worker panic.
        client.pause_worker();
        client.panic_worker_for_test();
        for _ in 0..3 {
            client.track("u1", "stuck", props! {}).expect("accepted into the channel");
        }
        client.resume_worker();
        assert!(
            wait_until(Duration::from_secs(10), || client.track("u1", "after", props! {}) == Err(Error::WorkerStopped)),
            "track must fail once the worker is gone"
        );
        let started = Instant::now();
        assert_eq!(client.flush(Duration::from_secs(10)).unwrap_err(), FlushError::WorkerStopped);
        assert_eq!(client.persisted(Duration::from_secs(10)).unwrap_err(), trackway::PersistError::WorkerStopped);
        assert_eq!(client.dead_letters(10).unwrap_err(), FlushError::WorkerStopped);
        assert_eq!(client.checkpoint("k", "v").unwrap_err(), Error::WorkerStopped);
        assert!(started.elapsed() < Duration::from_secs(1), "answered at once: {:?}", started.elapsed());

        assert!(wait_until(Duration::from_secs(5), || client.stats().dropped.worker_stopped >= 4));
        let stats = client.stats();
        // The three stuck events, and every refused call (at least the one that saw the error).
        assert!(stats.dropped.worker_stopped >= 4, "{stats:?}");
        let w = stats.destination("w").expect("w");
        assert_eq!(w.delivered, 1);
        assert_eq!(w.health.state, HealthState::Stopped);
        assert!(w.health.last_error.as_ref().is_some_and(|e| e.message.contains("panic_worker_for_test")), "{w:?}");

        let started = Instant::now();
        assert_eq!(client.shutdown(Duration::from_secs(5)).unwrap_err(), ShutdownError::WorkerStopped);
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(client.track("u1", "x", props! {}), Err(Error::ShutDown));
    });
}

//! Delivery receipts and the outcome stream (issue 18), against the collector on loopback:
//! confirmed calls resolve with each destination's outcome or say why one is pending, the
//! stream is bounded and reports missed outcomes, an earlier process's event shows up in the
//! next process's stream, and no watch misses a fast delivery.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use support::{fast_builder, json, wait_until, watchdog};
use trackway::destination::InMemoryDestination;
use trackway::receipts::{Outcome, OutcomeRecord, ReceiptError, RecvError, Resolution};
use trackway::store::SqliteStore;
use trackway::{Client, HealthState, MessageId, props};
use trackway_collector::{Collector, Reply};

const LIMIT: Duration = Duration::from_secs(60);

/// Reads outcomes from `stream` until one for `id` comes, at most `limit`.
fn outcome_for(stream: &mut trackway::receipts::OutcomeStream, id: MessageId, limit: Duration) -> OutcomeRecord {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(!left.is_zero(), "no outcome for {id} within {limit:?}");
        match stream.recv_timeout(left) {
            Ok(record) if record.id == id => return record,
            Ok(_) | Err(RecvError::Missed(_) | RecvError::Empty) => {}
            Err(e) => panic!("stream: {e}"),
        }
    }
}

/// A client whose destination `a` is down (its port reserved, nothing listening), and a stream.
fn down_client() -> (trackway_collector::ReservedCollector, Client, trackway::receipts::OutcomeStream) {
    let reserved = Collector::builder().reserve().expect("reserve");
    let client = fast_builder().destination(json("a", reserved.url("/e"))).build().expect("client");
    let stream = client.outcomes(64);
    (reserved, client, stream)
}

#[test]
fn a_confirmed_call_resolves_delivered_after_a_503_then_a_200() {
    watchdog(LIMIT, || {
        let collector = Collector::builder().script([Reply::status(503), Reply::ok()]).start().expect("collector");
        let client = fast_builder().destination(json("a", collector.url("/e"))).build().expect("client");
        let receipt = client.track_confirmed("u1", "paid", props! { "amount" => 5 }).expect("track");
        let confirmation = receipt.wait(Duration::from_secs(20)).expect("receipt");
        assert!(confirmation.is_delivered(), "{confirmation:?}");
        assert_eq!(confirmation.id, receipt.id());
        assert_eq!(confirmation.destinations.len(), 1);
        assert_eq!(confirmation.destinations[0].destination, "a");
        assert_eq!(collector.request_count(), 2, "the 503, then the 200");
        assert_eq!(client.stats().destination("a").expect("a").retried, 1);
    });
}

#[test]
fn a_confirmed_call_resolves_rejected_with_the_status_and_body_after_a_400() {
    watchdog(LIMIT, || {
        let collector = Collector::builder()
            .script([Reply::status(400).body("event name is reserved")])
            .start()
            .expect("collector");
        let client = fast_builder().destination(json("a", collector.url("/e"))).build().expect("client");
        let receipt = client.track_confirmed("u1", "e", props! {}).expect("track");
        let confirmation = receipt.wait(Duration::from_secs(20)).expect("receipt");
        let outcome = confirmation.destination("a").and_then(|d| d.outcome()).expect("an outcome").clone();
        let Outcome::Rejected { status, detail } = outcome else { panic!("expected a rejection: {outcome:?}") };
        assert_eq!(status, Some(400));
        assert!(detail.contains("event name is reserved"), "{detail}");
        // The dead letter says the same.
        let letters = client.dead_letters(10).expect("dead letters");
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].id, receipt.id());
    });
}

#[test]
fn pending_at_the_timeout_while_down_says_why_then_the_stream_reports_the_delivery() {
    watchdog(LIMIT, || {
        let (reserved, client, mut stream) = down_client();
        let receipt = client.track_confirmed("u1", "e", props! {}).expect("track");
        // Failing after a few whole requests failed in a row (`health::FAILING_AFTER`).
        assert!(
            wait_until(Duration::from_secs(10), || client
                .stats()
                .destination("a")
                .is_some_and(|a| a.health.state == HealthState::Failing)),
            "the destination must be failing first"
        );
        let confirmation = receipt.wait(Duration::from_millis(300)).expect("receipt");
        assert!(!confirmation.is_complete(), "{confirmation:?}");
        let Resolution::Pending(pending) = &confirmation.destinations[0].resolution else {
            panic!("expected pending: {confirmation:?}")
        };
        assert_eq!(pending.state, HealthState::Failing, "{pending:?}");
        let last = pending.last_error.as_ref().expect("the last error");
        assert!(pending.reason.contains("retrying") && pending.reason.contains(&last.message), "{pending:?}");
        assert!(matches!(stream.try_recv(), Err(RecvError::Empty)), "nothing decided yet");

        let collector = reserved.start().expect("start on the reserved port");
        let record = outcome_for(&mut stream, receipt.id(), Duration::from_secs(20));
        assert_eq!((&*record.destination, record.outcome.clone()), ("a", Outcome::Delivered));
        // The same receipt now resolves.
        assert!(receipt.wait(Duration::from_secs(5)).expect("receipt").is_delivered());
        assert!(collector.request_count() >= 1);
    });
}

#[test]
fn one_receipt_holds_both_destinations_one_delivered_one_rejected() {
    watchdog(LIMIT, || {
        let good = Collector::start().expect("collector a");
        let bad =
            Collector::builder().default_reply(Reply::status(422).body("bad payload")).start().expect("collector b");
        let client = fast_builder()
            .destination(json("a", good.url("/e")))
            .destination(json("b", bad.url("/e")))
            .build()
            .expect("client");
        let receipt = client.track_confirmed("u1", "e", props! {}).expect("track");
        let confirmation = receipt.wait(Duration::from_secs(20)).expect("receipt");
        assert!(confirmation.is_complete(), "{confirmation:?}");
        assert!(!confirmation.is_delivered());
        let names: Vec<&str> = confirmation.destinations.iter().map(|d| d.destination.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(confirmation.destination("a").and_then(|d| d.outcome()), Some(&Outcome::Delivered));
        let b = confirmation.destination("b").and_then(|d| d.outcome()).expect("b's outcome");
        assert!(
            matches!(b, Outcome::Rejected { status: Some(422), detail } if detail.contains("bad payload")),
            "{b:?}"
        );
    });
}

#[test]
fn a_subscriber_that_never_reads_misses_outcomes_minus_capacity_and_flush_completes() {
    watchdog(LIMIT, || {
        const N: u64 = 500;
        const CAPACITY: usize = 50;
        let collector = Collector::start().expect("collector");
        let client = fast_builder().destination(json("a", collector.url("/e"))).build().expect("client");
        let mut stream = client.outcomes(CAPACITY);
        let ids: Vec<MessageId> =
            (0..N).map(|i| client.track("u1", "e", props! { "i" => i }).expect("track")).collect();
        client.flush(Duration::from_secs(20)).expect("flush completes with a subscriber that never reads");
        assert_eq!(client.stats().destination("a").expect("a").delivered, N);
        let mut missed = 0;
        let records = stream.drain(&mut missed);
        assert_eq!(missed, N - CAPACITY as u64);
        assert_eq!(stream.missed_total(), N - CAPACITY as u64);
        assert_eq!(records.len(), CAPACITY);
        // The newest outcomes are kept: distinct events of this run (requests go out in parallel,
        // so outcomes need not come in enqueue order).
        let kept: std::collections::HashSet<MessageId> = records.iter().map(|r| r.id).collect();
        assert_eq!(kept.len(), CAPACITY);
        assert!(kept.iter().all(|id| ids.contains(id)));
        assert!(records.iter().all(|r| r.outcome == Outcome::Delivered));
    });
}

#[test]
fn a_read_after_falling_behind_says_how_many_were_missed_first() {
    watchdog(LIMIT, || {
        let collector = Collector::start().expect("collector");
        let client = fast_builder().destination(json("a", collector.url("/e"))).build().expect("client");
        let mut stream = client.outcomes(2);
        for i in 0..5 {
            client.track("u1", "e", props! { "i" => i }).expect("track");
        }
        client.flush(Duration::from_secs(20)).expect("flush");
        assert_eq!(stream.try_recv(), Err(RecvError::Missed(3)));
        assert!(stream.try_recv().is_ok());
        assert!(stream.try_recv().is_ok());
        assert_eq!(stream.try_recv(), Err(RecvError::Empty));
    });
}

/// Helper process for [`an_event_left_by_a_killed_process_shows_up_in_the_next_process_stream`]:
/// queues one event for a destination that is down, makes it durable, prints its id, and waits
/// to be killed.
#[test]
fn killed_process_helper() {
    let Ok(dir) = std::env::var("TRACKWAY_RECEIPTS_HELPER") else { return };
    let url = std::env::var("TRACKWAY_RECEIPTS_URL").expect("url");
    let client = Client::builder()
        .store(SqliteStore::new(std::path::Path::new(&dir).join("outbox.db")))
        .destination(json("a", url))
        .build()
        .expect("client");
    let id = client.track("u1", "left_behind", props! {}).expect("track");
    client.persisted(Duration::from_secs(10)).expect("persisted");
    // On its own line: the harness prints the test name without a newline before it.
    println!("\nhelper-id={id}");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn an_event_left_by_a_killed_process_shows_up_in_the_next_process_stream() {
    watchdog(LIMIT, || {
        let dir = tempfile::tempdir().expect("temp dir");
        let reserved = Collector::builder().reserve().expect("reserve");
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", "killed_process_helper", "--nocapture", "--test-threads=1"])
            .env("TRACKWAY_RECEIPTS_HELPER", dir.path())
            .env("TRACKWAY_RECEIPTS_URL", reserved.url("/e"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("helper");
        let stdout = child.stdout.take().expect("stdout");
        let id = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| line.split_once("helper-id=").map(|(_, id)| id.trim().to_owned()))
            .expect("the helper prints the id");
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");

        let collector = reserved.start().expect("collector up");
        let client = fast_builder()
            .store(SqliteStore::new(dir.path().join("outbox.db")))
            .destination(json("a", collector.url("/e")))
            .outcomes(16)
            .build()
            .expect("client");
        let mut stream = client.take_outcomes().expect("the builder's stream");
        assert!(client.take_outcomes().is_none(), "taken once");
        let id: MessageId = serde_json::from_value(serde_json::Value::String(id)).expect("a message id");
        let record = outcome_for(&mut stream, id, Duration::from_secs(20));
        assert_eq!(record.outcome, Outcome::Delivered);
        assert_eq!(&*record.destination, "a");
        client.shutdown(Duration::from_secs(5)).expect("shutdown");
    });
}

#[test]
fn no_watch_misses_a_delivery_made_before_the_confirmed_call_returns() {
    watchdog(Duration::from_secs(120), || {
        const RUNS: u64 = 1_000;
        let dest = InMemoryDestination::new("memory");
        let client =
            fast_builder().destination(dest.clone()).batch_interval(Duration::from_millis(1)).build().expect("client");
        // Between its push and its return, each confirmed call waits until the worker has
        // delivered (and counted) its event: a watch registered after the push would miss it.
        let delivered_before = Arc::new(AtomicU64::new(0));
        let hook_client = client.clone();
        let seen = delivered_before.clone();
        client.on_confirmed_push(Some(Arc::new(move |_id| {
            let want = seen.load(Ordering::SeqCst) + 1;
            assert!(
                wait_until(Duration::from_secs(10), || hook_client.stats().destinations[0].delivered >= want),
                "the worker did not deliver within the hook's wait"
            );
        })));
        for run in 0..RUNS {
            delivered_before.store(run, Ordering::SeqCst);
            let receipt = client.track_confirmed("u1", "e", props! { "run" => run }).expect("track");
            let confirmation = receipt.wait(Duration::from_secs(10)).expect("receipt");
            assert!(confirmation.is_delivered(), "run {run}: {confirmation:?}");
        }
        assert_eq!(dest.received().len() as u64, RUNS);
        client.on_confirmed_push(None);
        drop(client);
    });
}

#[test]
fn a_receipt_resolves_with_the_error_when_the_worker_dies() {
    watchdog(LIMIT, || {
        let reserved = Collector::builder().reserve().expect("reserve");
        let client = fast_builder().destination(json("a", reserved.url("/e"))).build().expect("client");
        let receipt = client.track_confirmed("u1", "e", props! {}).expect("track");
        client.panic_worker_for_test();
        let err = receipt.wait(Duration::from_secs(10)).expect_err("the worker died");
        let ReceiptError::WorkerStopped(why) = err else { panic!("{err:?}") };
        assert!(why.contains("panic_worker_for_test"), "{why}");
    });
}

#[test]
fn a_filtered_event_resolves_at_once_and_shutdown_resolves_what_is_pending() {
    watchdog(LIMIT, || {
        let reserved = Collector::builder().reserve().expect("reserve");
        let client = fast_builder()
            .destination(json("a", reserved.url("/e")))
            .before_send(|e| e.name.as_deref() != Some("secret"))
            .build()
            .expect("client");
        let filtered = client.track_confirmed("u1", "secret", props! {}).expect("track");
        let confirmation = filtered.status().expect("status");
        assert_eq!(confirmation.destinations[0].outcome(), Some(&Outcome::Filtered));

        let pending = client.track_confirmed("u1", "kept", props! {}).expect("track");
        let _ = client.shutdown(Duration::from_millis(100));
        let confirmation = pending.wait(Duration::from_secs(5)).expect("resolved by the shutdown");
        let Resolution::Pending(why) = &confirmation.destinations[0].resolution else { panic!("{confirmation:?}") };
        assert!(why.reason.contains("shut down"), "{why:?}");
    });
}

#[test]
fn an_awaited_receipt_resolves_on_any_runtime() {
    watchdog(LIMIT, || {
        let collector = Collector::start().expect("collector");
        let client = fast_builder().destination(json("a", collector.url("/e"))).build().expect("client");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let confirmations = runtime.block_on(async {
            // Started in a batch, then awaited: one request carries them.
            let receipts: Vec<_> =
                (0..20).map(|i| client.track_confirmed("u1", "e", props! { "i" => i }).expect("track")).collect();
            let mut out = Vec::new();
            for receipt in receipts {
                out.push(receipt.await.expect("receipt"));
            }
            out
        });
        assert!(confirmations.iter().all(|c| c.is_delivered()));
    });
}

#[test]
fn an_event_erased_by_erase_user_resolves_dropped_purged() {
    watchdog(LIMIT, || {
        let (_reserved, client, mut stream) = down_client();
        let erased = client.track_confirmed("u1", "e", props! {}).expect("track");
        let kept = client.track_confirmed("u2", "e", props! {}).expect("track");
        assert!(wait_until(Duration::from_secs(10), || client.stats().destinations[0].failed_requests >= 1));
        assert_eq!(client.erase_user("u1").expect("erase"), 1);
        let confirmation = erased.wait(Duration::from_secs(10)).expect("receipt");
        assert_eq!(
            confirmation.destinations[0].outcome(),
            Some(&Outcome::Dropped(trackway::receipts::DropReason::Purged)),
            "{confirmation:?}"
        );
        let record = outcome_for(&mut stream, erased.id(), Duration::from_secs(5));
        assert_eq!(record.outcome, Outcome::Dropped(trackway::receipts::DropReason::Purged));
        assert!(!kept.status().expect("status").is_complete(), "the other user's event is still pending");
    });
}

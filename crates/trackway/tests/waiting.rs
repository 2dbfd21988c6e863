//! `Client::waiting`: calls that wait up to a timeout for room in the event queue (a paused
//! worker) and in a store at its bound (a destination that is down), then queue the event, or
//! give up with `Error::NoRoom`; and the async wait for store room on a current-thread runtime.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::{delivered_ids, fast_builder, json, watchdog};
use trackway::store::{SqliteStore, WhenFull};
use trackway::{Client, Error, Track, props};
use trackway_collector::{Collector, Reply};

const LIMIT: Duration = Duration::from_secs(120);
const CAPACITY: usize = 8;

/// A client whose worker is paused and whose queue is full (`CAPACITY` events in it).
fn full_queue(collector: &trackway_collector::RunningCollector) -> Client {
    let client =
        fast_builder().queue_capacity(CAPACITY).destination(json("a", collector.url("/e"))).build().expect("client");
    client.pause_worker();
    for i in 0..CAPACITY {
        client.track("u", "e", props! { "i" => i }).expect("room in the queue");
    }
    assert_eq!(client.track("u", "e", props! {}), Err(Error::QueueFull), "the queue is full");
    client
}

/// A durable client with a small store set to refuse, filled to its bound while the destination
/// answers 503. Returns the client and how many events it accepted.
fn full_store(dir: &tempfile::TempDir, collector: &trackway_collector::RunningCollector) -> (Client, usize) {
    let store = SqliteStore::new(dir.path().join("outbox.db")).max_bytes(40_000).when_full(WhenFull::Refuse);
    let client = fast_builder()
        .store(store)
        .commit_delay(Duration::ZERO)
        .destination(json("a", collector.url("/e")))
        .build()
        .expect("client");
    let mut accepted = 0;
    for i in 0..5000 {
        match client.track("u", "e", props! { "i" => i, "pad" => "p".repeat(100) }) {
            Ok(_) => accepted += 1,
            Err(Error::StoreFull) => break,
            Err(e) => panic!("{e}"),
        }
        if i % 50 == 49 {
            client.persisted(Duration::from_secs(10)).expect("persisted");
        }
    }
    assert!(client.wait_for_store_room(Duration::ZERO).is_err(), "the store reached its bound");
    (client, accepted)
}

#[test]
fn a_waiting_capture_queues_its_event_once_the_worker_makes_room_in_the_queue() {
    watchdog(LIMIT, || {
        let collector = Collector::start().expect("collector");
        let client = full_queue(&collector);
        let resumer = {
            let client = client.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                client.resume_worker();
            })
        };
        let started = Instant::now();
        let id = client
            .waiting(Duration::from_secs(30))
            .capture(Track::new("patient").user("u"))
            .expect("queued once the worker drained");
        assert!(started.elapsed() >= Duration::from_millis(200), "it waited for room: {:?}", started.elapsed());
        resumer.join().expect("resumer");
        let stats = client.stats();
        assert_eq!(stats.dropped.queue_full, 1, "only the plain call's refusal is counted: {stats:?}");
        client.flush(Duration::from_secs(30)).expect("flush");
        let got = delivered_ids(&collector.requests());
        assert!(got.contains_key(&id.to_string()), "the waiting call's event is delivered");
        assert_eq!(got.len(), CAPACITY + 1);
    });
}

#[test]
fn a_waiting_capture_gives_up_after_its_timeout_with_a_clear_error_and_counts_one_drop() {
    watchdog(LIMIT, || {
        let collector = Collector::start().expect("collector");
        let client = full_queue(&collector);
        let started = Instant::now();
        let err = client.waiting(Duration::from_millis(250)).capture(Track::new("late").user("u")).unwrap_err();
        let waited = started.elapsed();
        assert!(matches!(err, Error::NoRoom { store: false, .. }), "{err:?}");
        assert!(waited >= Duration::from_millis(250) && waited < Duration::from_secs(10), "{waited:?}");
        let text = err.to_string();
        assert!(text.contains("no room for the event within") && text.contains("event queue stayed full"), "{text}");
        assert_eq!(client.stats().dropped.queue_full, 2, "the plain refusal and the waiting one, once each");
        client.resume_worker();
        client.flush(Duration::from_secs(30)).expect("flush");
        assert_eq!(delivered_ids(&collector.requests()).len(), CAPACITY, "the late event was never queued");
    });
}

#[test]
fn a_waiting_import_waits_for_deliveries_to_make_room_in_a_full_store() {
    watchdog(LIMIT, || {
        let dir = tempfile::tempdir().expect("tempdir");
        let collector = Arc::new(Collector::builder().default_reply(Reply::status(503)).start().expect("collector"));
        let (client, accepted) = full_store(&dir, &collector);
        let refused_before = client.stats().dropped.store_refused;

        // Still down: the waiting call gives up, naming the store.
        let id = trackway::MessageId::new_v7(trackway::Timestamp::now());
        let err = client
            .waiting(Duration::from_millis(300))
            .import(Track::new("imported").user("u"), id, trackway::Timestamp::now())
            .unwrap_err();
        assert!(matches!(err, Error::NoRoom { store: true, .. }), "{err:?}");
        assert!(err.to_string().contains("store stayed at its size bound"), "{err}");
        assert_eq!(client.stats().dropped.store_refused, refused_before + 1);

        // The destination comes back while the call waits: the event is queued.
        let healer = std::thread::spawn({
            let collector = collector.clone();
            move || {
                std::thread::sleep(Duration::from_millis(300));
                collector.set_default_reply(Reply::ok());
            }
        });
        let imported = client
            .waiting(Duration::from_secs(60))
            .import_with_checkpoint(Track::new("imported").user("u"), id, trackway::Timestamp::now(), "pos", "1")
            .expect("queued once deliveries made room");
        healer.join().expect("healer");
        assert_eq!(imported, id);
        assert_eq!(client.checkpoint_value("pos").as_deref(), Some(&b"1"[..]));
        assert_eq!(client.stats().dropped.store_refused, refused_before + 1, "the wait itself counted nothing");
        client.flush(Duration::from_secs(60)).expect("flush");
        let got = delivered_ids(&collector.requests());
        assert!(got.contains_key(&id.to_string()));
        assert_eq!(got.len(), accepted + 1, "every accepted event and the imported one");
    });
}

#[test]
fn the_async_wait_for_store_room_does_not_block_a_current_thread_runtime() {
    watchdog(LIMIT, || {
        let dir = tempfile::tempdir().expect("tempdir");
        let collector = Arc::new(Collector::builder().default_reply(Reply::status(503)).start().expect("collector"));
        let (client, _) = full_store(&dir, &collector);
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
        rt.block_on(async {
            assert_eq!(client.wait_for_store_room_async(Duration::from_millis(100)).await, Err(Error::StoreFull));
            let ticks = Arc::new(AtomicU64::new(0));
            let ticker = tokio::spawn({
                let ticks = ticks.clone();
                async move {
                    loop {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        ticks.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
            let healer = std::thread::spawn({
                let collector = collector.clone();
                move || {
                    std::thread::sleep(Duration::from_millis(300));
                    collector.set_default_reply(Reply::ok());
                }
            });
            let started = Instant::now();
            client.wait_for_store_room_async(Duration::from_secs(60)).await.expect("room after deliveries");
            let waited = started.elapsed();
            let during = ticks.load(Ordering::Relaxed);
            ticker.abort();
            healer.join().expect("healer");
            assert!(waited >= Duration::from_millis(200), "it waited for the deliveries: {waited:?}");
            assert!(during >= 10, "the runtime's thread kept running: {during} ticks in {waited:?}");
            client
                .waiting(Duration::from_secs(10))
                .capture_async(Track::new("after").user("u"))
                .await
                .expect("room in the store again");
        });
    });
}

/// Whether a waiting capture on a full store ends with `expected` well before its 60 s timeout,
/// once `stop` (run by another thread after a moment) closed the client or stopped its worker.
fn ends_at_once_when(stop: impl FnOnce(&Client) + Send + 'static, expected: &Error) {
    let capture = |client: &Client| {
        client.waiting(Duration::from_secs(60)).capture(Track::new("late").user("u")).expect_err("no room, stopped")
    };
    call_ends_at_once_when(stop, capture, expected);
}

/// Whether `call` on a client whose store is full ends with `expected` well before its 60 s
/// timeout once `stop` (run by another thread after a moment) closed the client or stopped its
/// worker, and at once when called after that. Returns the client.
fn call_ends_at_once_when(
    stop: impl FnOnce(&Client) + Send + 'static,
    call: impl Fn(&Client) -> Error,
    expected: &Error,
) -> Client {
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::builder().default_reply(Reply::status(503)).start().expect("collector");
    let (client, _) = full_store(&dir, &collector);
    let stopper = std::thread::spawn({
        let client = client.clone();
        move || {
            std::thread::sleep(Duration::from_millis(300));
            stop(&client);
        }
    });
    let started = Instant::now();
    let err = call(&client);
    let waited = started.elapsed();
    stopper.join().expect("stopper");
    assert_eq!(&err, expected, "the same error as the plain call");
    assert!(waited < Duration::from_secs(10), "it returned at the stop, not at its timeout: {waited:?}");
    // Already closed or stopped before the call: no wait at all.
    let started = Instant::now();
    assert_eq!(&call(&client), expected, "a stopped client refuses");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    client
}

#[test]
fn a_waiting_capture_on_a_full_store_returns_at_once_when_the_client_is_shut_down() {
    watchdog(LIMIT, || {
        ends_at_once_when(
            |client| {
                // The destination stays down: the shutdown ends at its budget, events kept.
                let _ = client.shutdown(Duration::from_millis(500));
            },
            &Error::ShutDown,
        );
    });
}

#[test]
fn a_waiting_capture_on_a_full_store_returns_at_once_when_the_worker_stops() {
    watchdog(LIMIT, || {
        ends_at_once_when(|client| client.panic_worker_for_test(), &Error::WorkerStopped);
    });
}

#[test]
fn waiting_for_store_room_on_a_shut_down_client_says_shut_down_not_store_full() {
    watchdog(LIMIT, || {
        let shut_down = |client: &Client| {
            let _ = client.shutdown(Duration::from_millis(500));
        };
        let wait = |client: &Client| client.wait_for_store_room(Duration::from_secs(60)).expect_err("no room");
        let client = call_ends_at_once_when(shut_down, wait, &Error::ShutDown);
        // The async form too, at once.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let started = Instant::now();
        let answer = runtime.block_on(client.wait_for_store_room_async(Duration::from_secs(60)));
        assert_eq!(answer, Err(Error::ShutDown));
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    });
}

#[test]
fn waiting_for_store_room_with_a_stopped_worker_says_worker_stopped() {
    watchdog(LIMIT, || {
        let wait = |client: &Client| client.wait_for_store_room(Duration::from_secs(60)).expect_err("no room");
        call_ends_at_once_when(|client| client.panic_worker_for_test(), wait, &Error::WorkerStopped);
    });
}

//! The durable store's writer thread, through a client against the collector: a slow writer
//! fills the staging and the bound acts on the caller's side (`queue_full`, never `store_full`
//! of an accepted event), and `persisted` answers only once the writer's round is on disk.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use support::{delivered_ids, fast_builder, json, wait_until, watchdog};
use trackway::store::SqliteStore;
use trackway::{Error, props};
use trackway_collector::{Collector, Reply};

const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn a_slow_writer_fills_the_staging_and_the_excess_is_refused_as_queue_full_never_dropped_from_the_store() {
    watchdog(LIMIT, || {
        // Slow deliveries too: what is delivered before it is written leaves the staging
        // without a write, and would hide the bound.
        let collector = Collector::builder()
            .default_reply(Reply::ok().delay(Duration::from_millis(20)))
            .start()
            .expect("collector");
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::new(dir.path().join("outbox.db"))
            .staging_limit(1 << 20)
            .slow_writer_for_test(Duration::from_millis(100));
        let client = fast_builder()
            .store(store)
            .queue_capacity(1024)
            .destination(json("a", collector.url("/e")))
            .build()
            .expect("client");
        const N: usize = 30_000;
        let mut accepted = HashSet::new();
        let mut refused = 0;
        for i in 0..N {
            match client.track("u", "e", props! { "i" => i, "pad" => "p".repeat(1000) }) {
                Ok(id) => {
                    accepted.insert(id.to_string());
                }
                Err(Error::QueueFull) => refused += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(refused > 0, "30 MB against a 1 MiB staging and a slow writer: the bound acted");
        client.flush(Duration::from_secs(90)).expect("every accepted event delivered");
        let stats = client.stats();
        assert_eq!(stats.dropped.queue_full, refused as u64, "{stats:?}");
        assert_eq!(stats.dropped.store_full, 0, "no accepted event dropped from the store: {stats:?}");
        assert_eq!(stats.dropped.disk_full, 0, "{stats:?}");
        let delivered = delivered_ids(&collector.requests());
        let missing = accepted.iter().filter(|id| !delivered.contains_key(*id)).count();
        assert_eq!(missing, 0, "of {} accepted", accepted.len());
    });
}

#[test]
fn persisted_answers_once_the_writers_round_is_on_disk() {
    watchdog(LIMIT, || {
        // Nothing is delivered (503): every event must be written to be safe.
        let collector = Collector::builder().default_reply(Reply::status(503)).start().expect("collector");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("outbox.db");
        let store = SqliteStore::new(&path).slow_writer_for_test(Duration::from_millis(300));
        let client = fast_builder()
            .store(store)
            .commit_delay(Duration::ZERO)
            .destination(json("a", collector.url("/e")))
            .build()
            .expect("client");
        // The writer's first transaction (the store's open is done by then) may be under way:
        // wait until it is idle, so the one below is timed from its start.
        std::thread::sleep(Duration::from_millis(400));
        for i in 0..10 {
            client.track("u", "e", props! { "i" => i }).expect("queued");
        }
        let started = Instant::now();
        client.persisted(Duration::from_secs(30)).expect("persisted");
        assert!(started.elapsed() >= Duration::from_millis(250), "waited for the writer: {:?}", started.elapsed());
        assert_eq!(SqliteStore::inspect(&path).expect("inspect").events, 10, "on disk when persisted answers");
        assert!(wait_until(Duration::from_secs(5), || client.stats().persisted >= 10), "{:?}", client.stats());
    });
}

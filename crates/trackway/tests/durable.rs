//! The durable outbox: restarts, damaged files, one writer, bounds, disk full, dead letters.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{delivered_ids, json, wait_until, watchdog};
use trackway::store::{DeadLetterReason, SqliteStore};
use trackway::{BuildError, Client, ClientBuilder, Clock, PersistError, RetryPolicy, Timestamp, props};
use trackway_collector::{Collector, Reply, RunningCollector};

const LIMIT: Duration = Duration::from_secs(60);

/// Fast timings, a durable store at `path`.
fn durable(store: SqliteStore) -> ClientBuilder {
    Client::builder()
        .store(store)
        .batch_interval(Duration::from_millis(10))
        .retry_policy(RetryPolicy::default().backoff(Duration::from_millis(5), Duration::from_millis(40)))
        .shutdown_timeout(Duration::from_millis(200))
}

/// A client on the store at `path`, delivering to `collector` as the destination `a`.
fn store_at(path: &Path, collector: &RunningCollector) -> ClientBuilder {
    durable(SqliteStore::new(path)).destination(json("a", collector.url("/e")))
}

fn store_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("outbox.db")
}

fn moved_aside(dir: &tempfile::TempDir) -> Vec<PathBuf> {
    std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.contains(".bad-") && !n.ends_with("-wal") && !n.ends_with("-shm"))
        })
        .collect()
}

#[test]
fn a_backlog_left_by_a_clean_shutdown_is_delivered_by_the_next_process() {
    watchdog(LIMIT, || {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = store_path(&dir);
        let down = Collector::builder().default_reply(Reply::status(503)).start().expect("collector");
        let sent: Vec<String> = {
            let client = store_at(&path, &down).build().expect("client");
            let ids =
                (0..50).map(|i| client.track("u", "e", props! { "i" => i }).expect("track").to_string()).collect();
            assert!(
                client.shutdown(Duration::from_millis(200)).is_err(),
                "the destination is down: shutdown times out"
            );
            ids
        };
        let inspected = SqliteStore::inspect(&path).expect("inspect");
        assert_eq!(inspected.pending, vec![("a".to_owned(), 50)]);

        let up = Collector::start().expect("collector");
        let client = store_at(&path, &up).build().expect("reopen");
        assert_eq!(client.stats().destination("a").expect("a").pending, 50);
        client.flush(Duration::from_secs(10)).expect("backlog delivered");
        let delivered = delivered_ids(&up.requests());
        for id in &sent {
            assert!(delivered.contains_key(id), "{id} not delivered after restart");
        }
        drop(client);
        let after = SqliteStore::inspect(&path).expect("inspect");
        assert_eq!(after.events, 0, "delivered events are deleted");
        assert!(after.file_bytes < 256 * 1024, "a clean close with nothing pending gives the space back: {after:?}");
    });
}

#[test]
fn app_identity_survives_a_restart() {
    watchdog(LIMIT, || {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = store_path(&dir);
        let collector = Collector::start().expect("collector");
        let first = {
            let client = store_at(&path, &collector).app_mode().build().expect("client");
            client.identify_customer(trackway::Identify::new().id("registered", "jane@example.com")).expect("identify");
            client.flush(Duration::from_secs(5)).expect("flush");
            client.current_identity()
        };
        let client = store_at(&path, &collector).app_mode().build().expect("client");
        assert_eq!(client.current_identity(), first);
        assert_eq!(first.user_id.as_deref(), Some("jane@example.com"));
    });
}

#[test]
fn a_truncated_file_is_salvaged_moved_aside_and_reported() {
    watchdog(LIMIT, || {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = store_path(&dir);
        let down = Collector::builder().default_reply(Reply::status(503)).start().expect("collector");
        {
            let client = store_at(&path, &down).build().expect("client");
            for i in 0..2000 {
                client.track("u", "e", props! { "i" => i, "pad" => "x".repeat(200) }).expect("track");
            }
            let _ = client.shutdown(Duration::from_millis(100));
        }
        let len = std::fs::metadata(&path).expect("file").len();
        assert!(len > 100_000, "a real store to truncate ({len} bytes)");
        let file = std::fs::OpenOptions::new().write(true).open(&path).expect("open");
        file.set_len(len / 2).expect("truncate");
        drop(file);
        let client = store_at(&path, &down).build().expect("recovers");
        assert_eq!(client.stats().dropped.store_reset, 1);
        assert_eq!(moved_aside(&dir).len(), 1);
    });
}

// A text file, another application's database and a newer schema are refused and left
// untouched: tests/store_safety.rs.

#[test]
fn a_second_writer_is_refused_with_the_holders_pid_and_a_reader_is_allowed() {
    watchdog(LIMIT, || {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = store_path(&dir);
        let down = Collector::builder().default_reply(Reply::status(503)).start().expect("collector");
        let writer = store_at(&path, &down).build().expect("client");
        writer.track("u", "e", props! {}).expect("track");
        writer.persisted(Duration::from_secs(5)).expect("persisted");

        let second = store_at(&path, &down).build();
        let err = second.expect_err("a second writer must be refused");
        let BuildError::Store(message) = &err else { panic!("unexpected {err:?}") };
        assert!(message.contains(&format!("in use by pid {}", std::process::id())), "{message}");
        assert!(moved_aside(&dir).is_empty(), "a locked file is never treated as corrupt");

        let seen = SqliteStore::inspect(&path).expect("a reader needs no lock");
        assert_eq!(seen.pending, vec![("a".to_owned(), 1)]);
        assert!(SqliteStore::read_dead_letters(&path, 10).expect("dead letters").is_empty());
    });
}

#[test]
fn disk_full_counts_new_events_keeps_the_stored_ones_and_recovers_when_space_returns() {
    watchdog(LIMIT, || {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = store_path(&dir);
        let collector = Collector::builder().default_reply(Reply::status(503)).start().expect("collector");
        // 60 pages of 4 KiB: room for a few hundred events, as if the disk were nearly full.
        let client = durable(SqliteStore::new(&path).max_page_count(60))
            .destination(json("a", collector.url("/e")))
            .build()
            .expect("client");
        let mut sent = Vec::new();
        let mut i = 0;
        while client.stats().dropped.disk_full == 0 && i < 20_000 {
            sent.push(
                client.track("u", "e", props! { "i" => i, "pad" => "y".repeat(100) }).expect("track").to_string(),
            );
            i += 1;
            if i % 50 == 0 {
                // Whether the commit that hits the full disk is run by a barrier or by the
                // `commit_delay` timer depends on timing, so each answer is checked for what it
                // claims, and the refusal itself by the barrier below.
                let barrier = client.persisted(Duration::from_secs(5));
                let stats = client.stats();
                match barrier {
                    // "Safe" means every event before it is committed, or counted as refused.
                    Ok(()) => assert_eq!(stats.persisted + stats.dropped.disk_full, i as u64, "{stats:?}"),
                    Err(PersistError::NotCommitted(why)) => {
                        assert!(why.contains("disk full"), "{why}");
                        assert!(stats.dropped.disk_full > 0, "a refusal is counted: {stats:?}");
                    }
                    Err(e) => panic!("unexpected {e}"),
                }
            }
        }
        assert!(client.stats().dropped.disk_full > 0, "the disk filled within {i} events");
        let _ = client.persisted(Duration::from_secs(5));
        // While the disk is still full, a barrier behind an event that cannot fit (200 KB needs
        // about 50 new pages) must say it was not committed.
        sent.push(client.track("u", "e", props! { "pad" => "z".repeat(200_000) }).expect("track").to_string());
        let barrier = client.persisted(Duration::from_secs(5));
        assert!(matches!(barrier, Err(PersistError::NotCommitted(_))), "{barrier:?}");
        // A request carrying an event whose write failed is answered before it is counted (see
        // the next test): every request is answered (503) before the counts are read.
        assert!(
            wait_until(Duration::from_secs(10), || {
                let a = client.stats().destinations[0].clone();
                a.requests == a.failed_requests && collector.request_count() as u64 == a.requests
            }),
            "every request answered: {:?}",
            client.stats()
        );
        let stats = client.stats();
        assert!(stats.dropped.disk_full > 0, "the page limit was reached: {stats:?}");
        let kept = stats.persisted;
        assert_eq!(kept + stats.dropped.disk_full, sent.len() as u64);

        // Space returns when the backlog is delivered and deleted.
        collector.set_default_reply(Reply::ok());
        client.flush(Duration::from_secs(20)).expect("the stored events are delivered");
        let delivered = delivered_ids(&collector.requests());
        assert_eq!(delivered.len() as u64, kept, "every event stored before the disk filled is intact and delivered");
        let after = client.track("u", "after", props! {}).expect("track").to_string();
        client.flush(Duration::from_secs(10)).expect("writing resumed");
        assert!(delivered_ids(&collector.requests()).contains_key(&after));
        assert_eq!(client.stats().dropped.disk_full, stats.dropped.disk_full, "no new losses once space returned");
    });
}

/// A client whose store cannot write a 300 KB event (the disk is "full"), that sends it before
/// it tries to write it, to a collector answering `reply` a second later.
fn unwritten_on_the_wire(reply: Reply) -> (tempfile::TempDir, RunningCollector, Client) {
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::builder().default_reply(reply.delay(Duration::from_secs(1))).start().expect("collector");
    let client = durable(SqliteStore::new(store_path(&dir)).max_page_count(60))
        // Sent after 10 ms (`batch_interval`), written (and refused) at 300 ms, answered at 1 s.
        .commit_delay(Duration::from_millis(300))
        .destination(json("a", collector.url("/e")))
        .build()
        .expect("client");
    (dir, collector, client)
}

#[test]
fn an_event_whose_write_failed_on_the_wire_counts_as_delivered_when_the_server_takes_it() {
    watchdog(LIMIT, || {
        let (_dir, collector, client) = unwritten_on_the_wire(Reply::ok());
        let id = client.track("u", "big", props! { "pad" => "z".repeat(300_000) }).expect("track").to_string();
        assert!(wait_until(Duration::from_secs(5), || collector.request_count() == 1), "sent before the write");
        client.flush(Duration::from_secs(10)).expect("flush");
        assert!(delivered_ids(&collector.requests()).contains_key(&id), "the server took it");
        let stats = client.stats();
        // Not a loss: delivered, and (delivered everywhere) nothing of it is left to lose.
        assert_eq!(stats.dropped.disk_full, 0, "{stats:?}");
        assert_eq!(stats.destinations[0].delivered, 1, "{stats:?}");
        assert_eq!(stats.destinations[0].pending, 0, "{stats:?}");
        assert_eq!(stats.persisted, 1, "{stats:?}");
    });
}

#[test]
fn an_event_whose_write_failed_on_the_wire_is_dropped_and_counted_when_its_request_fails() {
    watchdog(LIMIT, || {
        let (_dir, collector, client) = unwritten_on_the_wire(Reply::status(503));
        client.track("u", "big", props! { "pad" => "z".repeat(300_000) }).expect("track");
        assert!(wait_until(Duration::from_secs(5), || collector.request_count() == 1), "sent before the write");
        assert!(
            wait_until(Duration::from_secs(5), || client.stats().dropped.disk_full == 1),
            "counted once its answer came: {:?}",
            client.stats()
        );
        client.flush(Duration::from_secs(5)).expect("nothing left to deliver");
        std::thread::sleep(Duration::from_millis(200));
        let stats = client.stats();
        assert_eq!(collector.request_count(), 1, "not retried: the store no longer has it");
        assert_eq!((stats.persisted, stats.destinations[0].pending, stats.destinations[0].delivered), (0, 0, 0));
    });
}

#[test]
fn over_the_size_bound_the_oldest_events_are_dropped_and_counted() {
    watchdog(LIMIT, || {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = store_path(&dir);
        let collector = Collector::builder().default_reply(Reply::status(503)).start().expect("collector");
        let client = durable(SqliteStore::new(&path).max_bytes(40_000))
            .batch_interval(Duration::from_secs(3600))
            .destination(json("a", collector.url("/e")))
            .build()
            .expect("client");
        let sent: Vec<String> =
            (0..600).map(|i| client.track("u", "e", props! { "i" => i }).expect("track").to_string()).collect();
        client.persisted(Duration::from_secs(5)).expect("persisted");
        let dropped = client.stats().dropped.store_full;
        assert!(dropped > 0, "{:?}", client.stats());
        assert_eq!(client.stats().destination("a").expect("a").pending + dropped, 600);

        // Let every request already sent come back (as a 503) before the server accepts again:
        // a batch read before the eviction could otherwise still deliver evicted events.
        assert!(wait_until(Duration::from_secs(10), || {
            let a = client.stats().destinations[0].clone();
            a.requests == a.failed_requests && collector.request_count() as u64 == a.requests
        }));
        collector.set_default_reply(Reply::ok());
        client.flush(Duration::from_secs(10)).expect("flush");
        let delivered = delivered_ids(&collector.requests());
        assert_eq!(delivered.len() as u64 + dropped, 600);
        for (n, id) in sent.iter().enumerate() {
            assert_eq!(delivered.contains_key(id), n as u64 >= dropped, "event {n}: the oldest are the ones dropped");
        }
    });
}

#[test]
fn expired_events_are_dead_lettered_by_the_injected_clock_and_kept_on_disk() {
    watchdog(LIMIT, || {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = store_path(&dir);
        let down = Collector::builder().default_reply(Reply::status(503)).start().expect("collector");
        let (clock, hand) = Clock::manual(Timestamp::from_unix_millis(1_700_000_000_000));
        let client = durable(SqliteStore::new(&path))
            .clock(clock)
            .max_event_age(Duration::from_secs(3600))
            .destination(json("a", down.url("/e")))
            .build()
            .expect("client");
        let id = client.track("u", "e", props! {}).expect("track");
        client.persisted(Duration::from_secs(5)).expect("persisted");
        hand.advance(Duration::from_millis(20));
        assert!(wait_until(Duration::from_secs(5), || client
            .stats()
            .destination("a")
            .is_some_and(|a| a.failed_requests >= 1)));
        hand.advance(Duration::from_secs(2 * 3600));
        // Expiry is checked when an event is next sent. A retry that was in flight across the
        // jump comes back and is scheduled a backoff after the new time, which a frozen clock
        // never reaches (seen under load): keep time moving, by less than any backoff ceiling.
        assert!(wait_until(Duration::from_secs(5), || {
            hand.advance(Duration::from_millis(5));
            client.stats().destination("a").is_some_and(|a| a.expired == 1)
        }));
        drop(client);
        let letters = SqliteStore::read_dead_letters(&path, 10).expect("dead letters");
        assert_eq!((letters[0].id, letters[0].reason), (id, DeadLetterReason::Expired));
        assert!(
            String::from_utf8_lossy(&letters[0].event).contains("\"context\""),
            "the dead letter keeps the whole event"
        );
    });
}

#[test]
fn dead_letters_can_be_requeued() {
    watchdog(LIMIT, || {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = store_path(&dir);
        let collector =
            Collector::builder().script([Reply::status(400).body("temporarily refused")]).start().expect("collector");
        let client = store_at(&path, &collector).build().expect("client");
        let id = client.track("u", "e", props! {}).expect("track");
        client.flush(Duration::from_secs(5)).expect("flush");
        assert_eq!(client.dead_letters(10).expect("dead letters").len(), 1);
        assert_eq!(client.requeue_dead_letters(Some("a"), 10).expect("requeue"), 1);
        client.flush(Duration::from_secs(5)).expect("flush");
        assert!(client.dead_letters(10).expect("dead letters").is_empty());
        assert_eq!(delivered_ids(&collector.requests()).get(&id.to_string()), Some(&1), "delivered with its own id");
    });
}

#[test]
fn events_moved_out_of_memory_are_read_back_and_none_is_lost() {
    watchdog(LIMIT, || {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = store_path(&dir);
        let collector = Collector::builder().default_reply(Reply::status(503)).start().expect("collector");
        // A tiny memory budget: events are written in parts and the oldest leave memory while
        // later parts are still only staged (which once lost the staged ones).
        let client = durable(SqliteStore::new(&path).memory_limit(64 * 1024))
            .destination(json("a", collector.url("/e")))
            .build()
            .expect("client");
        let sent: Vec<String> = (0..20_000)
            .map(|i| client.track("u", "e", props! { "i" => i, "pad" => "p".repeat(64) }).expect("track").to_string())
            .collect();
        client.persisted(Duration::from_secs(10)).expect("persisted");
        collector.set_default_reply(Reply::ok());
        client.flush(Duration::from_secs(30)).expect("flush");
        let a = client.stats().destinations[0].clone();
        assert_eq!((a.delivered, a.pending), (20_000, 0), "{a:?}");
        let delivered = delivered_ids(&collector.requests());
        assert!(sent.iter().all(|id| delivered.contains_key(id)), "every event delivered");
    });
}

#[test]
fn the_default_store_needs_the_application_name() {
    let err = Client::builder().destination(json("a", "http://127.0.0.1:9/e".into())).build().expect_err("no app name");
    assert!(err.to_string().contains(".app(name, version)"), "{err}");
}

#[test]
fn checkpoints_are_recovered_after_a_restart_and_validated() {
    watchdog(LIMIT, || {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = store_path(&dir);
        let collector = Collector::start().expect("collector");
        let open = || store_at(&path, &collector).build().expect("client");
        {
            let client = open();
            assert_eq!(client.checkpoint_value("import"), None);
            assert_eq!(client.checkpoint("", "1"), Err(trackway::Error::EmptyKey));
            let now = Timestamp::now();
            let event = trackway::Track::new("e").user("u");
            client.import_with_checkpoint(event, trackway::MessageId::new_v7(now), now, "import", "1").expect("import");
            assert_eq!(client.checkpoint_value("import").as_deref(), Some(&b"1"[..]));
            client.checkpoint("import", "2").expect("checkpoint");
            client.checkpoint("other", "x").expect("checkpoint");
            client.persisted(Duration::from_secs(5)).expect("persisted");
            // Killed without a shutdown: what `persisted` confirmed must be there.
            std::mem::forget(client);
        }
        // The forgotten client still holds the lock and its worker runs on: reopen a copy of its
        // files, as a crash would leave them.
        let copy = dir.path().join("copy.db");
        copy_store(&path, &copy);
        let client = store_at(&copy, &collector).build().expect("reopen");
        assert_eq!(client.checkpoint_value("import").as_deref(), Some(&b"2"[..]));
        assert_eq!(client.checkpoint_value("other").as_deref(), Some(&b"x"[..]));
        assert_eq!(client.current_identity().user_id, None, "checkpoints are apart from trackway's own state");
    });
}

/// Copies a store that another client holds open, as a crash would leave it (file and WAL).
fn copy_store(from: &Path, to: &Path) {
    std::fs::copy(from, to).expect("copy store");
    let wal = |p: &Path| PathBuf::from(format!("{}-wal", p.display()));
    if wal(from).exists() {
        std::fs::copy(wal(from), wal(to)).expect("copy wal");
    }
}

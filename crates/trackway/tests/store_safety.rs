//! The store under bad conditions (issue 16): damaged files salvaged and counted, files that
//! are not stores left alone, events of a destination no longer configured kept, a read-only
//! store refused before anything is sent, a store that refuses instead of dropping.

mod support;

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{delivered_ids, fast_builder, json, wait_until, watchdog};
use trackway::store::{SqliteStore, WhenFull};
use trackway::{ClientBuilder, Error, props};
use trackway_collector::{Collector, Reply};

const LIMIT: Duration = Duration::from_secs(120);

/// The tests' fast timings, on a durable store.
fn durable(store: SqliteStore) -> ClientBuilder {
    fast_builder().store(store)
}

/// A store at `dir/outbox.db` holding `n` events pending for `a` (the server was down).
fn store_with_pending(dir: &tempfile::TempDir, n: usize) -> (PathBuf, Vec<String>) {
    let path = dir.path().join("outbox.db");
    let down = Collector::builder().default_reply(Reply::status(503)).start().expect("collector");
    let client = durable(SqliteStore::new(&path)).destination(json("a", down.url("/e"))).build().expect("client");
    let ids = (0..n)
        .map(|i| {
            client.track("u", "e", props! { "i" => i as i64, "pad" => "p".repeat(200) }).expect("track").to_string()
        })
        .collect();
    client.persisted(Duration::from_secs(30)).expect("persisted");
    let _ = client.shutdown(Duration::from_millis(100));
    drop(client);
    (path, ids)
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).expect("dir").filter_map(|e| Some(e.ok()?.file_name().to_str()?.to_owned())).collect();
    names.sort();
    names
}

/// Delivers what the store at `path` holds to a working collector; returns the client's stats
/// and the ids that arrived.
fn deliver(path: &Path) -> (trackway::Stats, std::collections::HashMap<String, usize>) {
    let up = Collector::start().expect("collector");
    let client = durable(SqliteStore::new(path)).destination(json("a", up.url("/e"))).build().expect("client");
    let opened = client.stats();
    client.flush(Duration::from_secs(60)).expect("everything salvaged is delivered");
    let stats = client.stats();
    assert_eq!(stats.store, opened.store);
    (stats, delivered_ids(&up.requests()))
}

#[test]
fn random_bytes_in_the_middle_of_a_store_lose_only_the_damaged_chunks_and_are_counted() {
    watchdog(LIMIT, || {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, ids) = store_with_pending(&dir, 20_000);
        let len = std::fs::metadata(&path).expect("store").len();
        assert!(len > 4_000_000, "a real store ({len} bytes)");
        // 4 KiB of noise at a chosen offset, across a page boundary in the middle.
        let mut file = std::fs::OpenOptions::new().write(true).open(&path).expect("open");
        file.seek(SeekFrom::Start(len / 2 + 1000)).expect("seek");
        let noise: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        file.write_all(&noise).expect("damage");
        drop(file);

        let (stats, got) = deliver(&path);
        let lost = stats.dropped.store_corrupt;
        assert!(lost > 0 && lost <= 1024, "at most the chunks the noise hit are lost: {stats:?}");
        assert_eq!(got.len() as u64 + lost, 20_000, "every event delivered or counted as lost: {stats:?}");
        assert!(got.keys().all(|id| ids.contains(id)));
        if let Some(salvage) = &stats.store.salvage {
            // Found when opened: salvaged, the damaged file kept aside.
            assert_eq!(stats.dropped.store_reset, 1);
            assert_eq!(salvage.recovered + salvage.lost, 20_000, "{salvage}");
            assert!(salvage.moved_to.exists(), "{salvage}");
        }
    });
}

#[test]
fn a_truncated_store_keeps_every_chunk_that_reads_back() {
    watchdog(LIMIT, || {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, _) = store_with_pending(&dir, 5_000);
        let len = std::fs::metadata(&path).expect("store").len();
        std::fs::OpenOptions::new().write(true).open(&path).expect("open").set_len(len / 2).expect("truncate");

        let (stats, got) = deliver(&path);
        let salvage = stats.store.salvage.clone().expect("salvaged when opened");
        assert_eq!(stats.dropped.store_reset, 1);
        assert!(salvage.recovered > 1_000, "the first half reads back: {salvage}");
        assert_eq!(got.len() as u64, salvage.recovered, "{salvage}");
        assert!(salvage.lost > 0, "{salvage}");
        assert!(salvage.to_string().contains("moved to"), "{salvage}");
    });
}

#[test]
fn a_text_file_another_database_and_a_newer_store_are_refused_and_left_untouched() {
    watchdog(LIMIT, || {
        let collector = Collector::start().expect("collector");
        let dir = tempfile::tempdir().expect("tempdir");
        let text = dir.path().join("notes.txt");
        std::fs::write(&text, "eggs, milk, bread\n").expect("write");
        let foreign = dir.path().join("app.db");
        rusqlite::Connection::open(&foreign)
            .and_then(|c| {
                c.execute_batch(
                    "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO users VALUES (1, 'jane');",
                )
            })
            .expect("another application's database");
        let (newer, _) = {
            let sub = tempfile::tempdir_in(dir.path()).expect("sub");
            let (path, ids) = store_with_pending(&sub, 3);
            let target = dir.path().join("newer.db");
            std::fs::copy(&path, &target).expect("copy");
            let mut bytes = std::fs::read(&target).expect("read");
            bytes[60..64].copy_from_slice(&99u32.to_be_bytes());
            std::fs::write(&target, bytes).expect("write");
            (target, ids)
        };
        for (path, expected) in [
            (&text, "is not a trackway store: it is not a SQLite database"),
            (&foreign, "the SQLite database of another application (tables: users)"),
            (&newer, "a store of a newer trackway (schema 99"),
        ] {
            let before = std::fs::read(path).expect("read");
            let files = files_in(dir.path());
            let err = durable(SqliteStore::new(path))
                .destination(json("a", collector.url("/e")))
                .build()
                .expect_err("refused");
            let message = err.to_string();
            assert!(message.contains(expected) && message.contains("left untouched"), "{message}");
            assert_eq!(std::fs::read(path).expect("read"), before, "not written: {}", path.display());
            assert_eq!(files_in(dir.path()), files, "nothing renamed or created beside it");
            let inspected = SqliteStore::inspect(path).expect_err("not inspected either").to_string();
            assert!(inspected.contains(expected), "{inspected}");
        }
        let tables: i64 = rusqlite::Connection::open(&foreign)
            .and_then(|c| c.query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table'", [], |r| r.get(0)))
            .expect("count");
        assert_eq!(tables, 1, "no table added to the other database");
        assert_eq!(collector.request_count(), 0);
    });
}

#[test]
fn events_of_a_renamed_destination_are_kept_reported_and_moved_on_request() {
    watchdog(LIMIT, || {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("outbox.db");
        let up = Collector::start().expect("collector");
        let down = Collector::builder().default_reply(Reply::status(503)).start().expect("collector");
        let old: Vec<String> = {
            let client = durable(SqliteStore::new(&path))
                .destination(json("warehouse", down.url("/e")))
                .build()
                .expect("client");
            let ids =
                (0..500).map(|i| client.track("u", "old", props! { "i" => i }).expect("track").to_string()).collect();
            client.persisted(Duration::from_secs(10)).expect("persisted");
            ids
        };
        // Renamed: the new name delivers new events; the 500 wait, reported.
        {
            let client =
                durable(SqliteStore::new(&path)).destination(json("wh", up.url("/e"))).build().expect("client");
            assert_eq!(client.stats().store.orphaned, vec![("warehouse".to_owned(), 500)]);
            client.track("u", "new", props! {}).expect("track");
            client.flush(Duration::from_secs(10)).expect("flush");
            assert_eq!(delivered_ids(&up.requests()).len(), 1, "the old events are not sent to another destination");
        }
        let inspected = SqliteStore::inspect(&path).expect("inspect");
        assert!(inspected.pending.contains(&("warehouse".to_owned(), 500)), "{inspected:?}");
        assert_eq!(inspected.events, 500);
        // Moved to `wh`, they are delivered by the next client.
        assert!(
            SqliteStore::move_pending(&path, "nope", "wh")
                .expect_err("unknown")
                .to_string()
                .contains("stored: warehouse")
        );
        assert_eq!(SqliteStore::move_pending(&path, "warehouse", "wh").expect("move"), 500);
        let client = durable(SqliteStore::new(&path)).destination(json("wh", up.url("/e"))).build().expect("client");
        assert!(client.stats().store.orphaned.is_empty());
        // The worker starts delivering at once: count what it has delivered already as well.
        let wh = client.stats().destination("wh").expect("wh").clone();
        assert_eq!(wh.pending + wh.delivered, 500, "{wh:?}");
        client.flush(Duration::from_secs(10)).expect("flush");
        let got = delivered_ids(&up.requests());
        assert!(old.iter().all(|id| got.contains_key(id)));
    });
}

#[test]
fn dropping_the_events_of_a_removed_destination_is_explicit_and_counted() {
    watchdog(LIMIT, || {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("outbox.db");
        let down = Collector::builder().default_reply(Reply::status(503)).start().expect("collector");
        {
            let client = durable(SqliteStore::new(&path))
                .destination(json("a", down.url("/e")))
                .destination(json("b", down.url("/e")))
                .build()
                .expect("client");
            for i in 0..10 {
                client.track("u", "e", props! { "i" => i }).expect("track");
            }
            client.persisted(Duration::from_secs(10)).expect("persisted");
            // Locked while a client has it.
            let err = SqliteStore::drop_pending(&path, "b").expect_err("locked");
            assert!(err.to_string().contains("in use by pid"), "{err}");
        }
        assert_eq!(SqliteStore::drop_pending(&path, "b").expect("drop"), 10);
        let inspected = SqliteStore::inspect(&path).expect("inspect");
        assert_eq!(inspected.pending, vec![("a".to_owned(), 10)], "a still has them");
        assert_eq!(SqliteStore::drop_pending(&path, "a").expect("drop"), 10);
        assert_eq!(SqliteStore::inspect(&path).expect("inspect").events, 0);
    });
}

#[test]
fn a_store_set_to_refuse_refuses_at_its_bound_drops_nothing_and_takes_events_again_when_delivered() {
    watchdog(LIMIT, || {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("outbox.db");
        let collector = Collector::builder().default_reply(Reply::status(503)).start().expect("collector");
        let client = durable(SqliteStore::new(&path).max_bytes(40_000).when_full(WhenFull::Refuse))
            .commit_delay(Duration::ZERO)
            .destination(json("a", collector.url("/e")))
            .build()
            .expect("client");
        let mut accepted = Vec::new();
        let mut refused = 0;
        for i in 0..2000 {
            match client.track("u", "e", props! { "i" => i }) {
                Ok(id) => accepted.push(id.to_string()),
                Err(Error::StoreFull) => refused += 1,
                Err(e) => panic!("{e}"),
            }
            if i % 100 == 99 {
                client.persisted(Duration::from_secs(10)).expect("persisted");
            }
        }
        let stats = client.stats();
        assert!(refused > 0, "the bound was reached: {stats:?}");
        assert_eq!(stats.dropped.store_refused, refused);
        assert_eq!(stats.dropped.store_full, 0, "nothing stored was dropped");
        assert_eq!(stats.destination("a").expect("a").pending, accepted.len() as u64);
        assert_eq!(client.wait_for_store_room(Duration::from_millis(300)), Err(Error::StoreFull), "still down");

        collector.set_default_reply(Reply::ok());
        client.wait_for_store_room(Duration::from_secs(30)).expect("deliveries make room");
        client.track("u", "e", props! { "after" => true }).expect("accepted again");
        client.flush(Duration::from_secs(30)).expect("flush");
        let got = delivered_ids(&collector.requests());
        assert!(accepted.iter().all(|id| got.contains_key(id)), "every accepted event delivered");
    });
}

#[test]
fn a_read_only_store_is_refused_when_opened_before_anything_is_sent() {
    watchdog(LIMIT, || {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, _) = store_with_pending(&dir, 20);
        let collector = Collector::start().expect("collector");
        let set_mode = |p: &Path, mode: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode));
        set_mode(&path, 0o444).expect("chmod file");
        set_mode(dir.path(), 0o555).expect("chmod dir");
        // Root writes through permission bits: there, the open-time refusal is tested in the
        // store's unit tests, through a connection SQLite opened read-only.
        let root = std::fs::write(dir.path().join("probe"), b"").is_ok();
        if !root {
            let err = durable(SqliteStore::new(&path))
                .destination(json("a", collector.url("/e")))
                .build()
                .expect_err("read-only store");
            assert!(err.to_string().contains("is not writable"), "{err}");
            // Read-only inspection works in a read-only directory.
            let inspected = SqliteStore::inspect(&path).expect("inspect");
            assert_eq!(inspected.events, 20);
        }
        assert!(wait_until(Duration::from_millis(200), || true));
        assert_eq!(collector.request_count(), 0, "nothing sent");
        set_mode(dir.path(), 0o755).expect("chmod back");
    });
}

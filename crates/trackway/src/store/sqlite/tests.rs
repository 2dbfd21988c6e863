//! Tests of the SQLite store, with failures injected through a second connection.
use super::*;
use std::time::{Duration, Instant};
use trackway_wire::{EventKind, MessageId};

fn event(seq: u64, routes: u64) -> NewEvent {
    let t = Timestamp::from_unix_millis(1_700_000_000_000);
    NewEvent {
        seq,
        id: MessageId::new_v7(t),
        kind: EventKind::Track,
        timestamp: t,
        queued_at: t,
        routes,
        bytes: Bytes::from(format!("{{\"seq\":{seq}}}")),
        context: None,
        run: None,
    }
}

fn opened(path: &Path, destinations: &[&str]) -> (SqliteStore, Recovered) {
    let mut store = SqliteStore::new(path);
    let names: Vec<String> = destinations.iter().map(|d| (*d).to_owned()).collect();
    let recovered = store.open(&names).expect("open");
    (store, recovered)
}

/// Waits (watchdog: 10 s) until the writer has answered every round handed over, without
/// handing over more; the outcomes applied.
fn idle(store: &mut SqliteStore) -> Committed {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Committed::default();
    let open = store.open.as_mut().expect("open");
    loop {
        open.collect(&mut out);
        if open.in_flight.is_empty() {
            return out;
        }
        assert!(Instant::now() < deadline, "the writer did not answer within 10 s");
        if let Some(done) = open.writer.wait(Duration::from_millis(50)) {
            open.ready.push(done);
        }
    }
}

/// A second connection to the file, to inject failures with triggers.
fn side(path: &Path) -> Connection {
    Connection::open(path).expect("side connection")
}

#[test]
fn a_failed_sync_is_written_in_full_by_the_next_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("o.db");
    let (mut store, _) = opened(&path, &["a"]);
    store.append(&(0..512).map(|i| event(i, 1)).collect::<Vec<_>>(), &[]).expect("append");
    store.commit(10_000);
    assert!(idle(&mut store).error.is_none());
    let side = side(&path);
    side.execute_batch(
        "CREATE TABLE fail(x); INSERT INTO fail VALUES (1);
         CREATE TRIGGER t BEFORE UPDATE ON chunk_state WHEN EXISTS (SELECT 1 FROM fail)
         BEGIN SELECT RAISE(ABORT, 'injected'); END;",
    )
    .expect("trigger");
    // All of the first chunk (deleted) and one event of the second (updated).
    assert_eq!(store.ack(0, &(0..256).collect::<Vec<_>>()).expect("ack"), 256);
    assert_eq!(store.ack(0, &[300]).expect("ack"), 1);
    store.sync().expect("handed over");
    assert!(idle(&mut store).error.is_some(), "the injected failure");
    side.execute_batch("DELETE FROM fail;").expect("clear");
    store.sync().expect("handed over again");
    assert!(idle(&mut store).error.is_none(), "the retry writes everything");
    drop(store);
    let (_, recovered) = opened(&path, &["a"]);
    assert_eq!(recovered.pending[0].0, 255, "nothing delivered is pending after a restart");
}

#[test]
fn a_failed_dead_letter_write_keeps_the_event_pending() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("o.db");
    let (mut store, _) = opened(&path, &["a"]);
    store.append(&[event(0, 1), event(1, 1)], &[]).expect("append");
    store.commit(10_000);
    assert!(idle(&mut store).error.is_none());
    let side = side(&path);
    side.execute_batch("CREATE TRIGGER t BEFORE INSERT ON dead_letters BEGIN SELECT RAISE(ABORT, 'injected'); END;")
        .expect("trigger");
    let letter = [(0, DeadLetterReason::Rejected, "400".to_owned())];
    assert!(store.dead_letter(0, &letter, Timestamp::from_unix_millis(0)).is_err());
    assert_eq!(store.read_seqs(0, &[0]).expect("read").len(), 1, "still pending after the failure");
    side.execute_batch("DROP TRIGGER t;").expect("drop trigger");
    assert_eq!(store.dead_letter(0, &letter, Timestamp::from_unix_millis(0)).expect("retry"), 1);
    store.sync().expect("sync");
    assert!(idle(&mut store).error.is_none());
    assert_eq!(store.dead_letters(10).expect("letters").len(), 1);
    drop(store);
    let (_, recovered) = opened(&path, &["a"]);
    assert_eq!(recovered.pending[0].0, 1, "only seq 1 is left");
}

#[test]
fn a_state_change_is_written_with_its_event_never_before_nor_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("o.db");
    let (mut store, _) = opened(&path, &["a"]);
    let change = StateChange { key: "identity".into(), value: Some(b"jane".to_vec()) };
    // The change comes with events 0..=4 (the last, 4, is "its" event); more follow.
    store.append(&(0..5).map(|i| event(i, 1)).collect::<Vec<_>>(), std::slice::from_ref(&change)).expect("append");
    store.append(&(5..11).map(|i| event(i, 1)).collect::<Vec<_>>(), &[]).expect("append");
    let state = |path: &Path| -> Option<Vec<u8>> {
        side(path)
            .query_row("SELECT value FROM state WHERE key = 'identity'", [], |r| r.get(0))
            .optional()
            .expect("query")
    };
    assert!(store.commit(3).staged_from.is_some(), "part 0..=2");
    assert!(idle(&mut store).error.is_none());
    assert_eq!(state(&path), None, "not before event 4 is written");
    assert!(store.commit(3).staged_from.is_some(), "part 3..=5, with event 4");
    assert!(idle(&mut store).error.is_none());
    assert_eq!(state(&path), Some(b"jane".to_vec()), "with event 4, not held back to the last part");
}

#[test]
fn a_bit_left_without_its_destination_keeps_its_events_under_a_name_of_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("o.db");
    let (mut store, _) = opened(&path, &["a", "b"]);
    store.append(&[event(0, 0b10), event(1, 0b10), event(2, 0b01)], &[]).expect("append");
    assert!(store.commit(10_000).error.is_none());
    drop(store);
    // As damage could leave it: "b" forgotten, its bit still set.
    side(&path).execute("DELETE FROM destinations WHERE name = 'b'", []).expect("forget b");
    let (mut store, recovered) = opened(&path, &["a", "c"]);
    assert_eq!(recovered.pending, vec![(1, recovered.pending[0].1), (0, 0)], "c inherits nothing");
    assert!(store.read(1, 0, 10, usize::MAX).expect("read").is_empty());
    assert_eq!(recovered.orphaned, vec![("unnamed-1".to_owned(), 2)], "kept, and reported");
}

#[test]
fn the_default_path_is_per_application_and_refuses_unusable_names() {
    if let Ok(path) = SqliteStore::default_path("shop") {
        assert!(path.ends_with("shop/trackway/outbox.db"), "{}", path.display());
    }
    for bad in ["", "a/b", "..", r"a\b"] {
        assert!(SqliteStore::default_path(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn a_connection_sqlite_could_only_open_read_only_is_refused_before_anything_is_sent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("o.db");
    drop(opened(&path, &["a"]));
    // What SQLite gives a process that may not write the file (even as root, who passes
    // permission bits: the flag stands in for them).
    let conn = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).expect("ro");
    for err in [file::refuse_read_only(&conn, &path), file::prove_writable(&conn, &path)] {
        match err {
            Err(StoreError::ReadOnly { why, .. }) => assert!(why.contains("write-protected"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
    let writable = Connection::open(&path).expect("rw");
    file::prove_writable(&writable, &path).expect("a writable store passes");
}

#[test]
fn a_schema_1_store_is_upgraded_and_its_chunks_without_checksum_read_as_before() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("o.db");
    {
        let conn = Connection::open(&path).expect("open");
        conn.execute_batch("PRAGMA journal_mode = WAL;").expect("wal");
        // Schema 1 exactly as it was written, then one chunk without a checksum.
        file::migrate_to_1_for_test(&conn).expect("schema 1");
        let mut data = Vec::new();
        for seq in 0..3 {
            let e = event(seq, 1);
            chunk::encode_event(
                &mut data,
                &StoredEvent {
                    seq,
                    id: e.id,
                    kind: e.kind,
                    timestamp: e.timestamp,
                    queued_at: e.queued_at,
                    context: None,
                    head: e.bytes,
                },
            );
        }
        let state = Chunk::new(vec![0, 1, 2], vec![1, 1, 0], 0).encode_state();
        conn.execute("INSERT INTO chunks (first, data) VALUES (0, ?1)", [&data]).expect("chunk");
        conn.execute("INSERT INTO chunk_state (first, state) VALUES (0, ?1)", [&state]).expect("state");
        conn.execute("INSERT INTO destinations (bit, name) VALUES (0, 'a')", []).expect("destination");
    }
    let (mut store, recovered) = opened(&path, &["a"]);
    assert!(recovered.salvage.is_none(), "{:?}", recovered.salvage);
    assert_eq!(recovered.pending[0].0, 2);
    assert_eq!(store.read(0, 0, 10, usize::MAX).expect("read").len(), 2, "read back without a checksum");
    let version: i64 = side(&path).query_row("PRAGMA user_version", [], |r| r.get(0)).expect("version");
    assert_eq!(version, SCHEMA_VERSION);
}

fn big_event(seq: u64) -> NewEvent {
    // 1 KiB heads, all of one size: the staging limit (at least 1 MiB) is reached with about a
    // thousand.
    NewEvent {
        bytes: Bytes::from(format!("{{\"seq\":\"{seq:06}\",\"pad\":\"{}\"}}", "x".repeat(1000))),
        ..event(seq, 1)
    }
}

#[test]
fn the_staging_fills_to_its_bound_and_empties_as_it_is_written_or_delivered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("o.db");
    let mut store = SqliteStore::new(&path).staging_limit(1 << 20);
    store.open(&["a".to_owned()]).expect("open");
    let size = big_event(0).bytes.len() as u64;
    let half = (1 << 19) / size + 1;
    let full = (1 << 20) / size + 1;
    store.append(&(0..half - 1).map(big_event).collect::<Vec<_>>(), &[]).expect("append");
    assert_eq!(store.staging(), StagingFill::Room);
    store.append(&[big_event(half - 1)], &[]).expect("append");
    assert_eq!(store.staging(), StagingFill::WriteNow, "past half: write without waiting");
    store.append(&(half..full).map(big_event).collect::<Vec<_>>(), &[]).expect("append");
    assert_eq!(store.staging(), StagingFill::Full, "at the bound: drain no more");
    // Delivered before being written: leaves the staging without a write.
    assert_eq!(store.ack(0, &(0..full - half).collect::<Vec<_>>()).expect("ack"), full - half);
    assert_eq!(store.staging(), StagingFill::WriteNow);
    assert!(store.commit(usize::MAX).error.is_none());
    assert_eq!(store.staging(), StagingFill::WriteNow, "handed to the writer: still counted until written");
    assert!(idle(&mut store).error.is_none());
    assert_eq!(store.staging(), StagingFill::Room, "written: nothing staged");
    assert_eq!(store.open.as_ref().map(|o| o.staged_bytes), Some(0));
}

#[test]
fn checkpoints_run_off_the_writers_thread() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("o.db");
    let (mut store, _) = opened(&path, &["a"]);
    let before = std::fs::metadata(&path).expect("db file").len();
    store.append(&(0..2048).map(big_event).collect::<Vec<_>>(), &[]).expect("append");
    assert!(store.commit(usize::MAX).error.is_none());
    // The writer's connection never checkpoints (wal_autocheckpoint = 0): only the checkpoint
    // thread copies the WAL into the database file, 50 ms after the nudge.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::metadata(&path).expect("db file").len() < before + (1 << 20) {
        assert!(std::time::Instant::now() < deadline, "no checkpoint within 10 s");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    drop(store);
    let (_, recovered) = opened(&path, &["a"]);
    assert_eq!(recovered.pending[0].0, 2048, "every committed event is there after a reopen");
}

#[test]
fn a_writer_that_panics_is_replaced_and_its_rounds_are_written_by_the_next_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("o.db");
    // Panics at its first transaction: the round it held is handed to its replacement.
    let mut store = SqliteStore::new(&path).panic_writer_for_test(1);
    store.open(&["a".to_owned()]).expect("open");
    store.append(&(0..600).map(|i| event(i, 1)).collect::<Vec<_>>(), &[]).expect("append");
    let committed = store.commit(usize::MAX);
    assert_eq!(committed.staged_from, Some(0), "handed over, not yet written");
    let mut out = idle(&mut store);
    // The death is seen once its thread is gone: `idle` may return before that; wait for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while out.writer_restarts == 0 {
        assert!(Instant::now() < deadline, "the dead writer was not replaced within 10 s");
        std::thread::sleep(Duration::from_millis(5));
        let more = idle(&mut store);
        out.writer_restarts += more.writer_restarts;
        out.lost.extend(more.lost);
        out.error = out.error.or(more.error);
    }
    assert_eq!(out.writer_restarts, 1, "reported");
    assert!(out.lost.is_empty() && out.error.is_none(), "nothing lost: {:?} {:?}", out.lost, out.error);
    assert_eq!(store.commit(usize::MAX).staged_from, None, "written by the replacement");
    assert_eq!(SqliteStore::inspect(&path).expect("inspect").events, 600, "on disk");
    drop(store);
    let (_, recovered) = opened(&path, &["a"]);
    assert_eq!(recovered.pending[0].0, 600, "every event is there after a reopen");
}

#[test]
fn a_failed_round_loses_only_its_pending_events_and_reports_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("o.db");
    let (mut store, _) = opened(&path, &["a"]);
    side(&path)
        .execute_batch("CREATE TRIGGER t BEFORE INSERT ON chunks WHEN NEW.first >= 100 BEGIN SELECT RAISE(ABORT, 'injected'); END;")
        .expect("trigger");
    store.append(&(0..100).map(|i| event(i, 1)).collect::<Vec<_>>(), &[]).expect("append");
    store.commit(usize::MAX);
    assert!(idle(&mut store).error.is_none());
    store.append(&(100..200).map(|i| event(i, 1)).collect::<Vec<_>>(), &[]).expect("append");
    store.commit(usize::MAX);
    // Delivered after the hand-over, before the failure: not lost.
    assert_eq!(store.ack(0, &[150]).expect("ack"), 1);
    let out = idle(&mut store);
    assert!(out.error.is_some());
    assert_eq!(out.lost.len(), 99, "the round's pending events");
    assert!(out.lost.iter().all(|e| e.seq >= 100 && e.seq != 150));
    assert_eq!(store.commit(usize::MAX).staged_from, None, "nothing left unwritten");
    assert_eq!(store.read(0, 0, 1000, usize::MAX).expect("read").len(), 100, "the lost ones are gone");
}

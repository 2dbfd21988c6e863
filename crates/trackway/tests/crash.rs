//! Crash test: a helper process sends 100 000 events through the durable client and is killed
//! with SIGKILL at seeded-random moments; every event up to each recorded progress must arrive.
//!
//! The helper is this test binary run again with `TRACKWAY_CRASH_HELPER` set (see
//! `crash_helper`), so no extra binary is needed. It calls the persist barrier every `K` events
//! and records its progress only after the barrier returns; on restart it resumes from there.
//!
//! `TRACKWAY_CRASH_SEED` replays a run. `cargo test --test crash -- --ignored` runs the long
//! version (25 kills), which CI does not.

// The test reports its seed (to replay a failure) and the redeliveries it measured.
#![allow(clippy::print_stdout)]

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use support::watchdog;
use trackway::destination::JsonHttp;
use trackway::store::SqliteStore;
use trackway::{Client, MessageId, RetryPolicy, Timestamp, Track, props};
use trackway_collector::Collector;

const HELPER_ENV: &str = "TRACKWAY_CRASH_HELPER";
/// Set for the checkpoint mode of the helper (see [`crash_with_checkpoints_enqueues_no_event_twice`]).
const CHECKPOINT_ENV: &str = "TRACKWAY_CRASH_CHECKPOINT";
const N: u64 = 100_000;
const K: u64 = 1_000;
const BATCH: usize = 100;
const IN_FLIGHT: usize = 4;

/// Entry point of the helper process; an ordinary run of the test suite does nothing here.
#[test]
fn crash_helper() {
    let Ok(dir) = std::env::var(HELPER_ENV) else { return };
    let url = std::env::var("TRACKWAY_CRASH_URL").expect("url");
    let dir = Path::new(&dir);
    let progress_file = dir.join("progress");
    let start: u64 = std::fs::read_to_string(&progress_file).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    // Checkpoint mode: progress lives in the store, carried by each event (exactly once).
    let checkpointed = std::env::var_os(CHECKPOINT_ENV).is_some();
    let client = Client::builder()
        .store(SqliteStore::new(dir.join("outbox.db")))
        // Exactly once needs every event committed before it is sent (see `import_with_checkpoint`).
        .commit_delay(if checkpointed { Duration::ZERO } else { Duration::from_millis(200) })
        .destination(JsonHttp::new(url).batch_size(BATCH).max_in_flight(IN_FLIGHT))
        .batch_interval(Duration::from_millis(20))
        .queue_capacity(2 * K as usize)
        .retry_policy(RetryPolicy::default().backoff(Duration::from_millis(10), Duration::from_millis(100)))
        .build()
        .expect("client");
    let start = if checkpointed {
        client.checkpoint_value("seq").map_or(0, |v| String::from_utf8_lossy(&v).parse().expect("checkpoint"))
    } else {
        start
    };
    for seq in start..N {
        if checkpointed {
            let now = Timestamp::now();
            let event = Track::new("crash_event").user("crash-user").properties(props! { "seq" => seq });
            client
                .import_with_checkpoint(event, MessageId::new_v7(now), now, "seq", (seq + 1).to_string())
                .expect("import");
        } else {
            client.track("crash-user", "crash_event", props! { "seq" => seq }).expect("track");
        }
        if (seq + 1) % K == 0 {
            // Also what keeps the queue from overflowing.
            client.persisted(Duration::from_secs(30)).expect("persisted");
            if checkpointed {
                continue;
            }
            // Progress is recorded only once the barrier says everything before is committed.
            let tmp = dir.join("progress.tmp");
            std::fs::write(&tmp, (seq + 1).to_string()).expect("write progress");
            std::fs::rename(&tmp, &progress_file).expect("commit progress");
        }
    }
    client.flush(Duration::from_secs(120)).expect("everything delivered");
    client.shutdown(Duration::from_secs(5)).expect("shutdown");
    std::fs::write(dir.join("done"), "done").expect("done");
}

fn spawn_helper(dir: &Path, url: &str, checkpointed: bool) -> Child {
    let mut command = Command::new(std::env::current_exe().expect("test binary"));
    if checkpointed {
        command.env(CHECKPOINT_ENV, "1");
    }
    command
        .args(["--exact", "crash_helper", "--nocapture", "--test-threads", "1"])
        .env(HELPER_ENV, dir)
        .env("TRACKWAY_CRASH_URL", url)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn helper")
}

/// A small deterministic generator, so a seed replays the same kill times.
struct SplitMix(u64);
impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// How often each seq arrived, and how often each message id did.
fn received(collector: &trackway_collector::RunningCollector) -> (HashMap<u64, usize>, HashMap<String, usize>) {
    let mut seqs = HashMap::new();
    let mut ids = HashMap::new();
    for r in collector.requests().iter().filter(|r| (200..300).contains(&r.status)) {
        if let Some(serde_json::Value::Array(events)) = r.json() {
            for e in events {
                if let Some(seq) = e["properties"]["seq"].as_u64() {
                    *seqs.entry(seq).or_insert(0) += 1;
                }
                if let Some(id) = e["id"].as_str() {
                    *ids.entry(id.to_owned()).or_insert(0) += 1;
                }
            }
        }
    }
    (seqs, ids)
}

/// While the helper process writes the store: a writer here is refused naming its pid, and a
/// read-only look works.
fn check_other_process_holds_the_store(dir: &Path, pid: u32) {
    let path = dir.join("outbox.db");
    let lock = dir.join("outbox.db.lock");
    let started = Instant::now();
    while std::fs::read_to_string(&lock).ok().and_then(|s| s.trim().parse::<u32>().ok()) != Some(pid) {
        assert!(started.elapsed() < Duration::from_secs(20), "watchdog: the helper never took the store");
        std::thread::sleep(Duration::from_millis(2));
    }
    let second = Client::builder()
        .store(SqliteStore::new(&path))
        .destination(JsonHttp::new("http://127.0.0.1:9/unused"))
        .build()
        .expect_err("another process holds the store");
    assert!(second.to_string().contains(&format!("store {} in use by pid {pid}", path.display())), "{second}");
    // The writer takes the lock before it creates the file, and may still be creating the
    // schema: a reader sees no file, then an empty store, until then.
    loop {
        if path.exists() {
            let seen = SqliteStore::inspect(&path).expect("a reader needs no lock");
            if seen.pending.len() == 1 {
                break;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(20), "watchdog: the helper never mapped its destination");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// `kills` SIGKILLs, each after a random delay in `delays_ms` (a whole run takes about half a
/// second here, so the range decides how far each process gets; kills during startup and
/// recovery are part of it).
fn run(kills: usize, delays_ms: std::ops::Range<u64>, checkpointed: bool) {
    let seed = std::env::var("TRACKWAY_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    println!("crash test: seed {seed} (replay with TRACKWAY_CRASH_SEED={seed}), {kills} kills");
    let mut rng = SplitMix(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start().expect("collector");
    let url = collector.url("/events");
    let mut recorded = Vec::new();
    for k in 0..kills {
        let mut child = spawn_helper(dir.path(), &url, checkpointed);
        if k == 0 {
            check_other_process_holds_the_store(dir.path(), child.id());
        }
        let delay = Duration::from_millis(delays_ms.start + rng.next() % (delays_ms.end - delays_ms.start));
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let progress: u64 =
            std::fs::read_to_string(dir.path().join("progress")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        println!("kill {k}: after {delay:?}, recorded progress {progress}");
        recorded.push(progress);
        assert!(
            !dir.path().join("done").exists(),
            "the helper finished before kill {k}: kills must land during the run"
        );
    }
    let mut child = spawn_helper(dir.path(), &url, checkpointed);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(180), "watchdog: the final helper run did not finish");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "the final helper run failed: {status}");
    assert!(dir.path().join("done").exists());

    let (seen, ids) = received(&collector);
    for &progress in &recorded {
        let missing: Vec<u64> = (0..progress).filter(|s| !seen.contains_key(s)).take(10).collect();
        assert!(missing.is_empty(), "events below recorded progress {progress} never arrived: {missing:?}");
    }
    let missing: Vec<u64> = (0..N).filter(|s| !seen.contains_key(s)).take(10).collect();
    assert!(missing.is_empty(), "events never arrived: {missing:?}");
    // Two kinds of repeats: the SDK delivering the same message again (its ack was not
    // committed when the process died: bounded by what was in flight), and the helper tracking
    // an event again after resuming from its last recorded progress (a new message id: the
    // application's choice of K, not the SDK's).
    let redelivered: usize = ids.values().map(|n| n - 1).sum();
    let retracked: usize = seen.values().map(|n| n - 1).sum::<usize>() - redelivered;
    let bound = recorded.len() * IN_FLIGHT * BATCH;
    println!(
        "crash test: {} kills, all {N} events arrived; redelivered by the SDK: {redelivered} (bound kills x in-flight x \
         batch = {bound}); tracked again by the helper after resuming: {retracked}",
        recorded.len()
    );
    assert!(redelivered <= bound, "{redelivered} redeliveries exceed the bound {bound}");
    if checkpointed {
        assert_eq!(retracked, 0, "with checkpoints carried by the events, no event is tracked twice");
    }
}

#[test]
fn crash_recovery_with_kills_at_random_moments() {
    watchdog(Duration::from_secs(300), || run(6, 20..100, false));
}

#[test]
#[ignore = "long: 25 kills; run with --ignored"]
fn crash_recovery_long() {
    watchdog(Duration::from_secs(1200), || run(25, 20..120, false));
}

/// The resumable-import pattern: progress is a checkpoint carried by each event
/// ([`Client::import_with_checkpoint`]), so after any kill the rerun resumes exactly where the
/// store's contents end and no event is tracked twice.
#[test]
fn crash_with_checkpoints_enqueues_no_event_twice() {
    watchdog(Duration::from_secs(300), || run(4, 20..100, true));
}

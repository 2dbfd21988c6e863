//! A crash while Customer.io holds its answer (issue 14): a helper process dual-writes 20 events
//! to OpenCDP and Customer.io through the durable client (`commit_delay(0)`: each event is
//! committed before it is sent), the collector receives the Customer.io batch and holds its
//! answer (`latency_ms`), and the helper is killed with SIGKILL meanwhile. The restarted process
//! sends the same events again with the same ids (our message ids as ULIDs) and timestamps, and
//! the collector's Customer.io backend counts every one as a duplicate: nothing new is stored.
//!
//! The helper is this test binary run again with `HELPER_ENV` set (as in `crash.rs`).

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{wait_until, watchdog};
use trackway::destination::customerio::CustomerIo;
use trackway::destination::opencdp::OpenCdpConfig;
use trackway::store::SqliteStore;
use trackway::{Client, HttpOptions, RetryPolicy, props};
use trackway_collector::{Collector, Faults, RunningCollector};

const HELPER_ENV: &str = "TRACKWAY_CIO_CRASH_DIR";
const URL_ENV: &str = "TRACKWAY_CIO_CRASH_URL";
/// `track` (send the events, then wait to be killed) or `resume` (deliver what is left).
const MODE_ENV: &str = "TRACKWAY_CIO_CRASH_MODE";
const EVENTS: u64 = 20;
const GATEWAY: &str = "/gateway/data-gateway";
/// Long enough that the killed process never sees the answer, short enough that a held
/// connection ends soon after the test.
const HELD_MS: u64 = 30_000;

/// The client both helper runs build: the same store, the same two destinations.
fn client(dir: &Path, url: &str) -> Client {
    // Customer.io's own timeout is above the hold: the first process never retries by itself,
    // so every repeat the collector sees comes from the restarted process.
    let cio_http = HttpOptions::default().timeout(Duration::from_secs(60));
    let config = OpenCdpConfig::new("cdp-key")
        .endpoint(format!("{url}{GATEWAY}"))
        .customer_io_with(CustomerIo::new("site", "key").base_url(url), cio_http);
    Client::builder()
        .store(SqliteStore::new(dir.join("outbox.db")))
        .commit_delay(Duration::ZERO)
        .destinations(config)
        .batch_interval(Duration::from_millis(20))
        .retry_policy(RetryPolicy::default().backoff(Duration::from_millis(10), Duration::from_millis(100)))
        .build()
        .expect("client")
}

/// Entry point of the helper process; an ordinary run of the test suite does nothing here.
#[test]
fn customerio_crash_helper() {
    let Ok(dir) = std::env::var(HELPER_ENV) else { return };
    let dir = Path::new(&dir);
    let url = std::env::var(URL_ENV).expect("url");
    let client = client(dir, &url);
    match std::env::var(MODE_ENV).as_deref() {
        Ok("track") => {
            // All 20 in one Customer.io batch, however slow the machine (the worker picks them
            // up together), so the whole batch is what the collector holds.
            client.pause_worker();
            for seq in 0..EVENTS {
                client.track("jane", "purchase_completed", props! { "seq" => seq }).expect("track");
            }
            client.resume_worker();
            // Committed (commit_delay 0 commits before sending; this says it is done).
            client.persisted(Duration::from_secs(30)).expect("persisted");
            std::fs::write(dir.join("tracked"), "tracked").expect("write tracked");
            // Waits to be killed; a bound, so an orphaned helper ends by itself.
            std::thread::sleep(Duration::from_secs(120));
            panic!("the helper was not killed within 120 s");
        }
        Ok("resume") => {
            client.flush(Duration::from_secs(60)).expect("everything delivered after the restart");
            let stats = client.stats();
            let delivered = |name: &str| stats.destination(name).map_or(0, |d| d.delivered);
            let line = format!("{} {}", delivered("opencdp"), delivered("customerio"));
            client.shutdown(Duration::from_secs(5)).expect("shutdown");
            std::fs::write(dir.join("delivered"), line).expect("write delivered");
        }
        other => panic!("unknown helper mode {other:?}"),
    }
}

/// A helper process, killed (SIGKILL) when dropped if it is still running.
struct Helper(Child);

impl Helper {
    fn spawn(dir: &Path, url: &str, mode: &str) -> Helper {
        let child = Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", "customerio_crash_helper", "--nocapture", "--test-threads", "1"])
            .env(HELPER_ENV, dir)
            .env(URL_ENV, url)
            .env(MODE_ENV, mode)
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn helper");
        Helper(child)
    }

    /// Waits for the process to end by itself, for at most `limit`.
    fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return status;
            }
            assert!(started.elapsed() < limit, "watchdog: the helper did not finish within {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.0.kill(); // SIGKILL
        let _ = self.0.wait();
    }
}

/// The Customer.io events (id → timestamp) in requests numbered `from` or later, and how many
/// events those requests carried in all.
fn customerio_events(collector: &RunningCollector, from: u64) -> (BTreeMap<String, Value>, usize) {
    let mut ids = BTreeMap::new();
    let mut total = 0;
    for r in collector.requests().iter().filter(|r| r.seq >= from && r.destination == "customerio") {
        assert_eq!(r.path, "/api/v2/batch", "the default is v2 batches");
        for e in r.events() {
            total += 1;
            let id = e["id"].as_str().expect("every Customer.io event carries an id").to_owned();
            ids.insert(id, e["timestamp"].clone());
        }
    }
    (ids, total)
}

/// The distinct `seq` properties OpenCDP's track calls carried.
fn opencdp_seqs(collector: &RunningCollector) -> std::collections::BTreeSet<u64> {
    let path = format!("{GATEWAY}/v1/persons/track");
    collector
        .requests()
        .iter()
        .filter(|r| r.path == path)
        .filter_map(|r| r.json()?["properties"]["seq"].as_u64())
        .collect()
}

#[test]
fn a_restart_after_sigkill_resends_the_same_customer_io_ids_as_duplicates() {
    watchdog(Duration::from_secs(180), || {
        let collector = Collector::builder()
            .customerio_credentials("site", "key")
            .faults(Faults { latency_ms: Some(HELD_MS), ..Faults::default() })
            .start()
            .expect("collector");
        let url = collector.url("");
        let dir = tempfile::tempdir().expect("tempdir");

        // 1. The events are committed and sent; the collector holds Customer.io's answer.
        let mut first = Helper::spawn(dir.path(), &url, "track");
        let all_sent = wait_until(Duration::from_secs(60), || {
            dir.path().join("tracked").exists() && customerio_events(&collector, 0).0.len() as u64 == EVENTS
        });
        assert!(all_sent, "the Customer.io batch never arrived: {:?}", customerio_events(&collector, 0));
        let (sent, total) = customerio_events(&collector, 0);
        assert_eq!(total as u64, EVENTS, "sent once before the kill (the answer is still held)");
        assert_eq!(collector.requests().iter().filter(|r| r.destination == "customerio").count(), 1, "one batch");
        assert_eq!((collector.customerio_stored(), collector.customerio_duplicates()), (EVENTS, 0));
        assert!(first.0.try_wait().expect("try_wait").is_none(), "the helper is still waiting for the answer");

        // 2. SIGKILL while the request is held: no answer ever reached the process.
        first.0.kill().expect("SIGKILL");
        first.0.wait().expect("reaped");
        collector.clear_faults();
        let next_seq = collector.requests().last().map_or(0, |r| r.seq + 1);

        // 3. The restarted process sends the same events again: same ids, same timestamps.
        let mut second = Helper::spawn(dir.path(), &url, "resume");
        let status = second.wait(Duration::from_secs(90));
        assert!(status.success(), "the restarted helper failed: {status}");
        let (resent, total) = customerio_events(&collector, next_seq);
        assert_eq!(resent, sent, "the restart re-sent exactly the same ids with the same timestamps");
        assert_eq!(total as u64, EVENTS, "each once");
        assert_eq!(
            (collector.customerio_stored(), collector.customerio_duplicates()),
            (EVENTS, EVENTS),
            "every re-sent event counted as a duplicate, none stored as new"
        );
        let delivered = std::fs::read_to_string(dir.path().join("delivered")).expect("the helper's counts");
        let (_, cio) = delivered.split_once(' ').expect("two counts");
        assert_eq!(cio.parse::<u64>().ok(), Some(EVENTS), "the restarted client delivered all 20 to Customer.io");
        // OpenCDP, its own cursor: every event arrived (at least once: OpenCDP has no ids to
        // deduplicate by, so what was in flight at the kill may arrive twice).
        assert_eq!(opencdp_seqs(&collector), (0..EVENTS).collect(), "OpenCDP got every event");
    });
}

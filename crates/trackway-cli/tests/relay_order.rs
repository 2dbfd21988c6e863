//! `trackway relay work` keeps each person's order for a destination that needs it (Customer.io
//! here: its events are partitioned by a hash of the person, each partition pulled by one worker
//! at a time, a person's later event held back while an earlier one is retried), across a
//! worker killed with SIGKILL, and shares a misconfigured destination's health between workers
//! (one probe at a time). Against real `nats-server` processes and the collector.
//!
//! Without `nats-server` on PATH these tests are skipped with a message, except under `CI=true`,
//! where they fail: `.ci/run` installs it.

#![allow(clippy::print_stderr, reason = "a skipped test says why; the tests report their counts")]

#[path = "support/relay.rs"]
mod fixture;
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fixture::{Nats, nats_available, start_relay, wait_until};
use support::KillOnDrop as Proc;
use trackway_collector::{Collector, Reply, RunningCollector};

const KEY: &str = "order-write-key";
/// People in the order tests.
const PEOPLE: usize = 4;

/// A nats-server (the shared fixture's) and its URL.
fn start_nats(dir: &Path) -> (Nats, String) {
    let nats = Nats::start(dir);
    let url = nats.url();
    (nats, url)
}

/// relay.toml with one destination, `[[destination]]` text `destination` named `dest`.
fn write_config(dir: &Path, nats: &str, destination: &str, batch: usize) -> PathBuf {
    let text = format!(
        r#"
{destination}

[relay.nats]
url = "{nats}"
stream = "ORDER"
duplicate_window_secs = 600
partitions = 8

[relay.ingest]
listen = "127.0.0.1:0"

[relay.worker]
ack_wait_secs = 2
max_ack_pending = 200
pullers = 1
batch = {batch}
base_backoff_ms = 100
max_backoff_secs = 1

[[relay.key]]
name = "web"
key = {{ env = "RELAY_ORDER_KEY" }}
destinations = ["dest"]
"#
    );
    let path = dir.join("relay.toml");
    std::fs::write(&path, text).expect("config");
    path
}

fn customerio(c: &RunningCollector) -> String {
    format!(
        "[[destination]]\nname = \"dest\"\ntype = \"customerio\"\nsite_id = \"site\"\napi_key = {{ env = \"RELAY_ORDER_CIO_KEY\" }}\nbase_url = \"{}\"\n",
        c.url("")
    )
}

/// The Customer.io API key the collector takes.
const CIO_KEY: &str = "cio-key";

/// Starts `trackway --config CONFIG relay ARGS` and waits (at most 30 s) for its first line.
fn relay(config: &Path, args: &[&str]) -> (Proc, String) {
    relay_with_key(config, args, CIO_KEY)
}

/// As [`relay`], with `cio_key` as the Customer.io API key.
fn relay_with_key(config: &Path, args: &[&str], cio_key: &str) -> (Proc, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_trackway"));
    command
        .arg("--config")
        .arg(config)
        .arg("relay")
        .args(args)
        .env("RELAY_ORDER_KEY", KEY)
        .env("RELAY_ORDER_CIO_KEY", cio_key);
    start_relay(command)
}

fn serve(config: &Path) -> (Proc, String) {
    let (proc, line) = relay(config, &["serve"]);
    let url = line.rsplit(' ').next().expect("an address").to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{line}");
    (proc, url)
}

fn work(config: &Path) -> Proc {
    work_with_key(config, CIO_KEY)
}

fn work_with_key(config: &Path, cio_key: &str) -> Proc {
    let (proc, line) = relay_with_key(config, &["work"], cio_key);
    assert!(line.contains("working for dest"), "{line}");
    proc
}

/// POSTs a Segment batch to the relay; asserts it was stored.
fn post_batch(url: &str, body: &str) {
    let r = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
        .post(format!("{url}/v1/batch"))
        .basic_auth(KEY, Some(""))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .expect("the relay answers");
    let status = r.status().as_u16();
    assert_eq!(status, 200, "{}", r.text().unwrap_or_default());
}

/// Event `n` of person `p` (a `track` with `properties.n`).
fn track(p: usize, n: usize) -> String {
    format!(
        r#"{{"type":"track","userId":"person-{p}","event":"Step","messageId":"m-{p}-{n}","properties":{{"n":{n}}}}}"#
    )
}

/// Events `range` of every person, interleaved.
fn round(range: std::ops::Range<usize>) -> String {
    let items: Vec<String> = range.flat_map(|n| (0..PEOPLE).map(move |p| track(p, n))).collect();
    format!(r#"{{"batch":[{}]}}"#, items.join(","))
}

fn find_n(v: &serde_json::Value) -> Option<u64> {
    match v {
        serde_json::Value::Object(m) => {
            m.get("n").and_then(serde_json::Value::as_u64).or_else(|| m.values().find_map(find_n))
        }
        serde_json::Value::Array(a) => a.iter().find_map(find_n),
        _ => None,
    }
}

/// Per person, the `n` of each event Customer.io answered 200 for, in the order it received them.
fn received(c: &RunningCollector) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut requests = c.requests();
    requests.sort_by_key(|r| r.seq);
    for r in requests.into_iter().filter(|r| r.status == 200) {
        for e in r.events() {
            let (Some(user), Some(n)) = (e["user"].as_str(), find_n(&e)) else { continue };
            out.entry(user.to_owned()).or_default().push(n);
        }
    }
    out
}

/// Asserts every person got events 0..n, each first received after all earlier ones (a copy of
/// an event sent again after a worker died, one the destination drops as a duplicate, may
/// follow its first copy).
fn assert_in_order(c: &RunningCollector, n: usize) {
    let got = received(c);
    assert_eq!(got.len(), PEOPLE, "{got:?}");
    for (person, ns) in &got {
        let mut firsts = Vec::new();
        for &k in ns {
            if !firsts.contains(&k) {
                firsts.push(k);
            }
        }
        let expected: Vec<u64> = (0..n as u64).collect();
        assert_eq!(firsts, expected, "{person}: events out of order or missing: {ns:?}");
    }
}

fn all_received(c: &RunningCollector, n: usize) -> bool {
    let got = received(c);
    got.len() == PEOPLE && got.values().all(|ns| (0..n as u64).all(|k| ns.contains(&k)))
}

#[test]
fn two_workers_deliver_each_persons_events_in_order_through_failures() {
    if !nats_available() {
        return;
    }
    const N: usize = 60;
    let dir = tempfile::tempdir().expect("dir");
    let (_nats, nats) = start_nats(dir.path());
    let cio = Collector::start().expect("collector");
    let config = write_config(dir.path(), &nats, &customerio(&cio), 10);
    let (_serve, url) = serve(&config);
    let _w1 = work(&config);
    let _w2 = work(&config);
    for start in (0..N).step_by(5) {
        // Failures on the way: each retried request must hold its people's later events back.
        if start % 15 == 5 {
            for _ in 0..3 {
                cio.push_reply(Reply::status(503));
            }
        }
        post_batch(&url, &round(start..start + 5));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(wait_until(Duration::from_secs(90), || all_received(&cio, N)), "received: {:?}", received(&cio));
    assert_in_order(&cio, N);
    let failed = cio.requests().iter().filter(|r| r.status == 503).count();
    assert!(failed > 0, "the test injected failures");
    eprintln!("{} requests, {failed} answered 503", cio.request_count());
}

#[test]
fn a_worker_killed_mid_run_hands_its_partitions_over_in_order_and_loses_nothing() {
    if !nats_available() {
        return;
    }
    const N: usize = 60;
    let dir = tempfile::tempdir().expect("dir");
    let (_nats, nats) = start_nats(dir.path());
    // Each answer a little slow, so the killed worker has requests in flight and unacked events.
    let cio =
        Collector::builder().default_reply(Reply::ok().delay(Duration::from_millis(30))).start().expect("collector");
    let config = write_config(dir.path(), &nats, &customerio(&cio), 5);
    let (_serve, url) = serve(&config);
    // The first worker pins every partition; the second waits for one to come free.
    let mut w1 = work(&config);
    post_batch(&url, &round(0..2));
    assert!(wait_until(Duration::from_secs(30), || all_received(&cio, 2)), "first events: {:?}", received(&cio));
    let _w2 = work(&config);
    for start in (2..N / 2).step_by(2) {
        post_batch(&url, &round(start..start + 2));
    }
    // Killed while it delivers: what it had pulled but not acked goes to the second worker.
    assert!(wait_until(Duration::from_secs(30), || received(&cio).values().any(|ns| ns.len() >= 8)));
    let _ = w1.0.kill();
    let _ = w1.0.wait();
    let at_kill = cio.request_count();
    let killed = Instant::now();
    for start in (N / 2..N).step_by(2) {
        post_batch(&url, &round(start..start + 2));
    }
    assert!(
        wait_until(Duration::from_secs(120), || all_received(&cio, N)),
        "after the kill, received: {:?}",
        received(&cio)
    );
    assert_in_order(&cio, N);
    assert!(cio.request_count() > at_kill, "the second worker delivered after the kill");
    let first_after = cio.requests().into_iter().skip(at_kill).map(|r| r.received_at).min().expect("a request");
    eprintln!("first request after the kill: {:.1} s later", first_after.duration_since(killed).as_secs_f64());
    let copies: usize = received(&cio).values().map(Vec::len).sum();
    eprintln!("{} events received for {} sent ({} sent again after the kill)", copies, N * PEOPLE, copies - N * PEOPLE);
}

#[test]
fn a_misconfigured_destination_gets_one_probe_at_a_time_across_workers_then_recovers() {
    if !nats_available() {
        return;
    }
    const N: usize = 20;
    let dir = tempfile::tempdir().expect("dir");
    let (_nats, nats) = start_nats(dir.path());
    // A JSON destination whose server refuses the credentials (401: misconfigured, held).
    let json = Collector::builder().default_reply(Reply::status(401)).start().expect("collector");
    let destination = format!("[[destination]]\nname = \"dest\"\ntype = \"json\"\nurl = \"{}\"\n", json.url("/j"));
    // One event per pull: without the shared health each held event would be its own request.
    let config = write_config(dir.path(), &nats, &destination, 1);
    let (_serve, url) = serve(&config);
    let _w1 = work(&config);
    let _w2 = work(&config);
    let items: Vec<String> = (0..N).map(|n| track(n % PEOPLE, n)).collect();
    post_batch(&url, &format!(r#"{{"batch":[{}]}}"#, items.join(",")));
    assert!(json.wait_for_requests(1, Duration::from_secs(30)), "the destination was tried");
    let first = Instant::now();
    std::thread::sleep(Duration::from_secs(12));
    let during = json.requests();
    // Before the first 401 is recorded each worker may send one request; then one probe after
    // 5 s, the next 10 s later: at most 2 + 1 within 12 s (one more allowed for the timing).
    assert!(during.len() <= 4, "{} requests in {:?} while misconfigured", during.len(), first.elapsed());
    assert!(during.iter().all(|r| r.status == 401));
    eprintln!("{} requests in 12 s while misconfigured", during.len());

    // Fixed: the next probe goes through and every worker resumes.
    json.set_default_reply(Reply::ok());
    let delivered = || -> usize {
        let mut ids: Vec<String> = json
            .requests()
            .into_iter()
            .filter(|r| r.status == 200)
            .flat_map(|r| r.events())
            .filter_map(|e| e["id"].as_str().map(str::to_owned))
            .collect();
        ids.sort();
        ids.dedup();
        ids.len()
    };
    assert!(wait_until(Duration::from_secs(60), || delivered() == N), "delivered {} of {N} after the fix", delivered());
}

#[test]
fn a_misconfigured_ordered_destination_is_probed_one_request_at_a_time_then_delivers_in_order() {
    if !nats_available() {
        return;
    }
    const N: usize = 10;
    let dir = tempfile::tempdir().expect("dir");
    let (_nats, nats) = start_nats(dir.path());
    let cio = Collector::builder().customerio_credentials("site", CIO_KEY).start().expect("collector");
    let config = write_config(dir.path(), &nats, &customerio(&cio), 10);
    let (_serve, url) = serve(&config);
    // Two workers with a wrong API key: Customer.io answers 401.
    let w1 = work_with_key(&config, "wrong-key");
    let w2 = work_with_key(&config, "wrong-key");
    post_batch(&url, &round(0..N));
    assert!(cio.wait_for_requests(1, Duration::from_secs(30)), "the destination was tried");
    std::thread::sleep(Duration::from_secs(12));
    let during = cio.requests();
    let t0 = during.first().map(|r| r.received_at).expect("a request");
    let times: Vec<String> =
        during.iter().map(|r| format!("{:.1}s {}", r.received_at.duration_since(t0).as_secs_f64(), r.status)).collect();
    eprintln!("while misconfigured (ordered): {times:?}");
    assert!(during.iter().all(|r| r.status == 401), "{times:?}");
    // Before the first 401 is recorded each partition holding people may send one request
    // (4 people: at most 4), then one probe at a time: 5 s later, 10 s after that.
    assert!(during.len() <= PEOPLE + 2, "{} requests in 12 s while misconfigured: {times:?}", during.len());

    // Fixed (the workers restarted with the right key): they find the shared health failing,
    // probe once it is due, then deliver everything in order.
    drop((w1, w2));
    let _w1 = work(&config);
    let _w2 = work(&config);
    assert!(wait_until(Duration::from_secs(60), || all_received(&cio, N)), "received: {:?}", received(&cio));
    assert_in_order(&cio, N);
}

/// Two workers' view of one destination, on the same JetStream (the relay's own engine, no
/// process): the shared health hands a due probe to exactly one of them, and tokens one writes
/// the other reads.
#[test]
fn one_worker_of_two_takes_a_due_probe_and_tokens_written_by_one_are_read_by_the_other() {
    use trackway::HttpOptions;
    use trackway::destination::JsonHttp;
    use trackway::engine::Deliverer;
    use trackway_relay::config::{NatsConfig, WorkerConfig};
    use trackway_relay::engine::Engine as _;
    use trackway_relay::jetstream::JetStream;
    use trackway_relay::state::{self, Gate, Health, Tokens};

    if !nats_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let (_nats, nats_url) = start_nats(dir.path());
    let collector = Collector::start().expect("collector");
    let deliverer = || Deliverer::new(JsonHttp::new(collector.url("/j")), &HttpOptions::default()).expect("deliverer");
    let (d1, d2) = (deliverer(), deliverer());
    let nats = NatsConfig { url: nats_url, stream: "STATE".into(), ..NatsConfig::default() };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        // Watchdog: the whole exchange within 60 s.
        tokio::time::timeout(Duration::from_secs(60), async {
            let js = JetStream::connect(&nats, &WorkerConfig::default()).await.expect("connect");
            js.ensure_streams().await.expect("streams");
            assert_eq!(state::gate(&js, &d1, "w1").await, Gate::Open, "healthy at first");

            state::record_failure(&js, &d1, "w1", "401 Unauthorized").await;
            assert!(
                matches!(state::gate(&js, &d2, "w2").await, Gate::Closed(wait) if wait <= Duration::from_secs(5)),
                "the other worker waits for the probe"
            );
            // Make the probe due now, then both ask at once: one gets it.
            let key = "health.json";
            let current = js.state_get(key).await.expect("read").expect("a health value");
            let mut due: Health = serde_json::from_slice(&current.value).expect("health");
            due.next_probe_ms = 0;
            let written = js
                .state_update(key, serde_json::to_vec(&due).expect("json"), Some(current.revision))
                .await
                .expect("write");
            assert!(written.is_some());
            let (g1, g2) = tokio::join!(state::gate(&js, &d1, "w1"), state::gate(&js, &d2, "w2"));
            let probes = [g1, g2].iter().filter(|g| **g == Gate::Probe).count();
            assert_eq!(probes, 1, "{g1:?} {g2:?}");
            state::record_success(&js, &d1).await;
            assert_eq!(state::gate(&js, &d2, "w2").await, Gate::Open, "healthy again for everyone");

            // Tokens: what one worker's deliverer holds, the other's gets.
            d1.set_state([("session".to_owned(), b"token-1".to_vec())]);
            let (mut t1, mut t2) = (Tokens::default(), Tokens::default());
            t1.store(&js, &d1).await;
            t2.load(&js, &d2).await;
            assert_eq!(d2.state(), vec![("session".to_owned(), b"token-1".to_vec())]);
        })
        .await
        .expect("within the watchdog");
    });
}

//! End-to-end: the `trackway collector` binary with injected faults, fed by the SDK, inspected
//! and steered through its HTTP API.
//!
//! Every test runs under a watchdog, the child process is killed by a guard even when an
//! assertion fails, and every HTTP client has a timeout.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use reqwest::blocking::Client as Http;
use serde_json::{Value, json};
use support::{KillOnDrop, watchdog};
use trackway::destination::JsonHttp;
use trackway::{Client, RetryPolicy, props};

const LIMIT: Duration = Duration::from_secs(60);

/// Spawns `trackway collector ARGS` and returns it with its base URL (no trailing `/`), read
/// from the first stdout line within 20 s. The rest of stdout is drained on a thread so the
/// child never blocks on a full pipe.
fn spawn_collector(args: &[&str]) -> (KillOnDrop, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_trackway"))
        .arg("collector")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn trackway collector");
    let stdout = child.stdout.take().expect("piped stdout");
    let guard = KillOnDrop(child);
    let (line_tx, line_rx) = mpsc::channel();
    thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut first = String::new();
        let read = reader.read_line(&mut first);
        let _ = line_tx.send(read.map(|_| first));
        // Drain until the child exits.
        let mut sink = Vec::new();
        let _ = reader.read_to_end(&mut sink);
    });
    let line = line_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("no first stdout line from the collector within 20 s")
        .expect("reading the collector's stdout");
    let url = line
        .trim_end()
        .strip_prefix("trackway collector listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .trim_end_matches('/')
        .to_owned();
    assert!(!url.ends_with(":0"), "the real port is printed: {url}");
    (guard, url)
}

fn http() -> Http {
    Http::builder().no_proxy().timeout(Duration::from_secs(10)).build().expect("reqwest client")
}

/// The response's status and body parsed as JSON.
fn json_response(response: reqwest::blocking::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().expect("body");
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
    (status, value)
}

#[test]
fn sdk_delivers_through_injected_failures_and_faults_change_at_run_time() {
    watchdog(LIMIT, || {
        let (_collector, base) =
            spawn_collector(&["--listen", "127.0.0.1:0", "--fail-every", "2", "--retry-after", "1"]);
        let http = http();

        // The faults given on the command line are visible over the API.
        let (status, faults) = json_response(http.get(format!("{base}/_trackway/api/faults")).send().expect("GET"));
        assert_eq!(status, 200);
        assert_eq!(faults["fail_every"], json!(2));
        assert_eq!(faults["fail_status"], json!(503));
        assert_eq!(faults["retry_after"], json!("1"));

        let client = Client::builder()
            .store(trackway::store::MemoryStore::new())
            .destination(JsonHttp::new(format!("{base}/events")))
            .retry_policy(
                RetryPolicy::default()
                    .backoff(Duration::from_millis(5), Duration::from_millis(50))
                    // Honour the 1 s Retry-After, but no longer than this, to keep the test fast.
                    .max_retry_after(Duration::from_millis(100)),
            )
            .batch_interval(Duration::from_millis(10))
            .build()
            .expect("client");
        for round in 0..5 {
            for i in 0..10 {
                client.track("u1", "purchase", props! { "round" => round, "i" => i }).expect("track");
            }
            client.flush(Duration::from_secs(15)).expect("flush");
        }
        let stats = client.stats();
        let json = stats.destination("json").expect("json destination stats");
        assert!(json.failed_requests >= 2, "every 2nd request fails: {json:?}");
        assert_eq!(json.delivered, 50, "{json:?}");
        assert_eq!(json.pending, 0, "{json:?}");

        // Every event arrived in a 200, with the attempts that got 503 recorded too.
        let events_url = format!("{base}/_trackway/api/events");
        let (status, events) =
            json_response(http.get(format!("{events_url}?name=purchase&user=u1")).send().expect("GET events"));
        assert_eq!(status, 200);
        let events = events.as_array().expect("array");
        let delivered: std::collections::HashSet<&str> = events
            .iter()
            .filter(|e| e["status"] == json!(200))
            .map(|e| e["event"]["id"].as_str().expect("event id"))
            .collect();
        assert_eq!(delivered.len(), 50);
        assert!(events.iter().any(|e| e["status"] == json!(503)), "failed attempts are listed too");
        for e in events {
            assert_eq!(e["path"], json!("/events"));
            assert_eq!(e["event"]["type"], json!("track"));
            assert_eq!(e["event"]["identity"]["user_id"], json!("u1"));
            assert!(e["received_at_ms"].as_u64().expect("received_at_ms") > 0);
        }
        let (_, filtered) = json_response(http.get(format!("{events_url}?status=200&limit=7")).send().expect("GET"));
        assert_eq!(filtered.as_array().expect("array").len(), 7);
        let (_, none) = json_response(http.get(format!("{events_url}?name=signup")).send().expect("GET"));
        assert_eq!(none, json!([]));

        let (_, stats) = json_response(http.get(format!("{base}/_trackway/api/stats")).send().expect("GET stats"));
        assert!(stats["statuses"]["503"].as_u64().expect("503 count") >= 2, "{stats}");
        assert!(stats["events_by_path"]["/events"].as_u64().expect("events on /events") >= 50, "{stats}");

        // Change the faults at run time: every request now fails with 429.
        let put = |body: &str| {
            json_response(
                http.put(format!("{base}/_trackway/api/faults")).body(body.to_owned()).send().expect("PUT faults"),
            )
        };
        let (status, faults) = put(r#"{"fail_every": 1, "fail_status": 429, "retry_after": "7"}"#);
        assert_eq!(status, 200);
        assert_eq!(faults["fail_status"], json!(429));
        let response = http.post(format!("{base}/events")).body("[]").send().expect("POST");
        assert_eq!(response.status().as_u16(), 429);
        assert_eq!(response.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("7"));

        // Bad JSON and unknown fields are refused and leave the faults as they were.
        let (status, error) = put("{not json");
        assert_eq!(status, 400);
        assert!(error["error"].as_str().expect("message").contains("invalid faults JSON"), "{error}");
        let (status, _) = put(r#"{"fail_evry": 3}"#);
        assert_eq!(status, 400);
        let (status, _) = put(r#"{"fail_every": 0}"#);
        assert_eq!(status, 400);
        let (_, faults) = json_response(http.get(format!("{base}/_trackway/api/faults")).send().expect("GET"));
        assert_eq!(faults["fail_every"], json!(1));

        // Clearing them: requests are answered normally again.
        let (status, faults) =
            json_response(http.delete(format!("{base}/_trackway/api/faults")).send().expect("DELETE faults"));
        assert_eq!(status, 200);
        assert_eq!(faults["fail_every"], Value::Null);
        for _ in 0..3 {
            let response = http.post(format!("{base}/events")).body("[]").send().expect("POST");
            assert_eq!(response.status().as_u16(), 200);
        }

        client.shutdown(Duration::from_secs(5)).expect("shutdown");
    });
}

#[test]
fn bad_listen_address_fails_with_a_clear_message() {
    watchdog(LIMIT, || {
        let child = Command::new(env!("CARGO_BIN_EXE_trackway"))
            .args(["collector", "--listen", "not-an-address"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn trackway collector");
        // Killed by the guard if it unexpectedly starts serving; the watchdog bounds the wait.
        let mut guard = KillOnDrop(child);
        let mut stderr = String::new();
        guard.0.stderr.take().expect("piped stderr").read_to_string(&mut stderr).expect("read stderr");
        let status = guard.0.wait().expect("wait");
        assert!(!status.success());
        assert!(stderr.contains("invalid --listen address \"not-an-address\""), "{stderr}");
    });
}

#[test]
fn store_keeps_the_requests_of_a_run_stopped_with_ctrl_c() {
    watchdog(LIMIT, || {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = dir.path().join("collector.db");
        let store_arg = store.to_str().expect("utf-8 path");
        let (mut guard, url) = spawn_collector(&["--listen", "127.0.0.1:0", "--store", store_arg]);
        let body = json!([{"id": "m1", "type": "track", "name": "Signed Up", "identity": {"user_id": "u1"}}]);
        let sent = http().post(format!("{url}/events")).body(body.to_string()).send().expect("send");
        assert_eq!(sent.status().as_u16(), 200);
        // Ctrl-C: the collector finishes its store and exits 0.
        let interrupted =
            Command::new("kill").args(["-s", "INT", "--", &guard.0.id().to_string()]).status().expect("kill -INT");
        assert!(interrupted.success());
        let started = std::time::Instant::now();
        let status = loop {
            if let Some(status) = guard.0.try_wait().expect("wait") {
                break status;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "the collector did not stop on Ctrl-C");
            thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{status}");

        let again = trackway_collector::Collector::builder().store(&store).start().expect("collector on the file");
        let requests = again.requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].path, "/events");
        assert_eq!(requests[0].json(), Some(body));
    });
}

#[test]
fn limit_flags_cap_bodies_and_memory_and_the_echo_fault_is_a_flag() {
    watchdog(LIMIT, || {
        let (_collector, base) = spawn_collector(&[
            "--listen",
            "127.0.0.1:0",
            "--max-body-bytes",
            "100",
            "--max-kept-bytes",
            "20",
            "--body-timeout-ms",
            "2000",
            "--fail-every",
            "3",
            "--fail-status",
            "400",
            "--fail-echo",
        ]);
        let http = http();
        let post = |body: String| http.post(format!("{base}/events")).header("x-api-key", "k-123").body(body).send();
        assert_eq!(post("[1]".into()).expect("post").status().as_u16(), 200);
        assert_eq!(post("x".repeat(101)).expect("post").status().as_u16(), 413);
        let echoed = post("[2]".into()).expect("post");
        assert_eq!(echoed.status().as_u16(), 400);
        assert!(echoed.text().expect("body").contains(r#"["x-api-key","k-123"]"#), "the request is echoed");

        let (_, stats) = json_response(http.get(format!("{base}/_trackway/api/stats")).send().expect("stats"));
        assert_eq!(stats["limits"]["too_large"], 1, "{stats}");
        assert_eq!(stats["limits"]["max_body_bytes"], 100, "{stats}");
        assert_eq!(stats["limits"]["body_timeout_ms"], 2000, "{stats}");
        assert!(stats["limits"]["kept_bytes"].as_u64().expect("kept") <= 20, "{stats}");
        assert!(stats["limits"]["evicted_requests"].as_u64().expect("evicted") >= 1, "{stats}");
        let (_, faults) = json_response(http.get(format!("{base}/_trackway/api/faults")).send().expect("faults"));
        assert_eq!(faults["echo_request"], true, "{faults}");
    });
}

//! Integration tests: a real HTTP client (reqwest, blocking) against a real collector.
//!
//! Every test runs under a watchdog, so a deadlock fails in seconds instead of hanging CI, and
//! every client has a request timeout.

mod support;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use serde_json::{Value, json};
use support::{client, watchdog};
use trackway_collector::{Collector, FaultClock, Faults, Reply, Rule, SinkStats};

const LIMIT: Duration = Duration::from_secs(20);

fn post(client: &Client, url: &str, body: &str) -> u16 {
    client.post(url).body(body.to_owned()).send().expect("request").status().as_u16()
}

/// The response body parsed as JSON (reqwest's `json` feature is not enabled in the workspace).
fn json_body(response: reqwest::blocking::Response) -> Value {
    let text = response.text().expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
}

#[test]
fn script_is_answered_in_order_then_the_default_reply() {
    watchdog(LIMIT, || {
        let collector = Collector::builder()
            .script([Reply::status(500), Reply::status(503)])
            .script(Reply::status(429).times(2))
            .default_reply(Reply::status(202).body("accepted"))
            .start()
            .expect("start");
        let client = client();
        let url = collector.url("/v1/batch");
        let statuses: Vec<u16> = (0..6).map(|_| post(&client, &url, "[]")).collect();
        assert_eq!(statuses, [500, 503, 429, 429, 202, 202]);

        let recorded: Vec<u16> = collector.requests().iter().map(|r| r.status).collect();
        assert_eq!(recorded, statuses);
        assert_eq!(collector.request_count(), 6);
    });
}

#[test]
fn default_answer_is_200_empty_json_object() {
    watchdog(LIMIT, || {
        let collector = Collector::start().expect("start");
        let response = client().get(collector.url("/anything?x=1")).send().expect("request");
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(response.headers().get("content-type").and_then(|v| v.to_str().ok()), Some("application/json"));
        assert_eq!(response.text().expect("body"), "{}");
    });
}

#[test]
fn push_reply_and_set_default_reply_at_run_time() {
    watchdog(LIMIT, || {
        let collector = Collector::start().expect("start");
        let client = client();
        let url = collector.url("/");
        assert_eq!(post(&client, &url, "1"), 200);
        collector.push_reply(Reply::status(502));
        collector.set_default_reply(Reply::status(204));
        assert_eq!(post(&client, &url, "2"), 502);
        assert_eq!(post(&client, &url, "3"), 204);
    });
}

#[test]
fn rule_by_body_substring_wins_and_does_not_consume_the_script() {
    watchdog(LIMIT, || {
        let collector = Collector::builder()
            .rule(Rule::body_contains("poison", Reply::status(400)))
            .rule(Rule::body_contains("poison", Reply::status(418))) // shadowed: first match wins
            .script([Reply::status(500)])
            .start()
            .expect("start");
        let client = client();
        let url = collector.url("/v1/batch");
        assert_eq!(post(&client, &url, r#"[{"event":"poison pill"}]"#), 400);
        assert_eq!(post(&client, &url, r#"[{"event":"fine"}]"#), 500);
        assert_eq!(post(&client, &url, r#"[{"event":"poison"}]"#), 400);
        assert_eq!(post(&client, &url, r#"[{"event":"fine"}]"#), 200);
    });
}

#[test]
fn rule_by_exact_path() {
    watchdog(LIMIT, || {
        let collector = Collector::builder().rule(Rule::path("/v1/track", Reply::status(404))).start().expect("start");
        let client = client();
        assert_eq!(post(&client, &collector.url("/v1/track"), "{}"), 404);
        assert_eq!(post(&client, &collector.url("/v1/track?x=1"), "{}"), 404);
        assert_eq!(post(&client, &collector.url("/v1/track/x"), "{}"), 200);
    });
}

#[test]
fn retry_after_and_custom_headers_are_sent() {
    watchdog(LIMIT, || {
        let collector = Collector::builder()
            .script([Reply::status(429)
                .retry_after("7")
                .header("X-Trackway-Test", "yes")
                .json(json!({"error": "slow down"}))])
            .start()
            .expect("start");
        let response = client().post(collector.url("/v1/batch")).body("[]").send().expect("request");
        assert_eq!(response.status().as_u16(), 429);
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        assert_eq!(header("retry-after").as_deref(), Some("7"));
        assert_eq!(header("x-trackway-test").as_deref(), Some("yes"));
        assert_eq!(header("content-type").as_deref(), Some("application/json"));
        let body = json_body(response);
        assert_eq!(body, json!({"error": "slow down"}));
    });
}

#[test]
fn delay_holds_the_answer_without_blocking_other_requests() {
    watchdog(LIMIT, || {
        let delay = Duration::from_millis(400);
        let collector =
            Collector::builder().rule(Rule::path("/slow", Reply::ok().delay(delay))).start().expect("start");
        let slow_url = collector.url("/slow");
        let slow = thread::spawn(move || {
            let started = Instant::now();
            let status = post(&client(), &slow_url, "[]");
            (status, started.elapsed())
        });
        // While the slow answer is pending, another connection is served at once.
        assert!(collector.wait_for_requests(1, Duration::from_secs(5)));
        let started = Instant::now();
        assert_eq!(post(&client(), &collector.url("/fast"), "[]"), 200);
        assert!(started.elapsed() < delay, "fast request waited {:?}", started.elapsed());

        let (status, elapsed) = slow.join().expect("slow client");
        assert_eq!(status, 200);
        assert!(elapsed >= delay, "answered after {elapsed:?}, delay {delay:?}");
    });
}

#[test]
fn close_connection_gives_the_client_a_connection_error() {
    watchdog(LIMIT, || {
        let collector = Collector::builder().script([Reply::close_connection()]).start().expect("start");
        let client = client();
        let result = client.post(collector.url("/v1/batch")).body(r#"[{"event":"lost"}]"#).send();
        let error = result.expect_err("the collector closed the connection without answering");
        assert!(error.status().is_none(), "got a status: {error:?}");
        assert!(!error.is_timeout(), "closed, not timed out: {error:?}");

        // The request was read and recorded (status 0), and the collector keeps serving.
        let requests = collector.requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].status, 0);
        assert_eq!(requests[0].body_str(), r#"[{"event":"lost"}]"#);
        assert_eq!(post(&client, &collector.url("/v1/batch"), "[]"), 200);
    });
}

#[test]
fn reserved_port_refuses_connections_until_started() {
    watchdog(LIMIT, || {
        let reserved = Collector::builder().script([Reply::status(201)]).reserve().expect("reserve");
        let addr = reserved.addr();
        assert_ne!(addr.port(), 0);
        assert_eq!(reserved.url("/x"), format!("http://{addr}/x"));

        let refused = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect_err("nothing listens yet");
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
        let client = client();
        let error = client.post(reserved.url("/v1/batch")).send().expect_err("refused");
        assert!(error.is_connect(), "{error:?}");

        let collector = reserved.start().expect("start on the reserved port");
        assert_eq!(collector.addr(), addr);
        assert_eq!(post(&client, &collector.url("/v1/batch"), "[]"), 201);
    });
}

#[test]
fn sink_mode_counts_events_and_keeps_no_request() {
    watchdog(LIMIT, || {
        let collector = Collector::builder()
            .sink(true)
            // Ignored in sink mode:
            .script([Reply::status(500)])
            .rule(Rule::body_contains("a", Reply::status(500)))
            .start()
            .expect("start");
        let client = client();
        let url = collector.url("/v1/batch");
        let bodies = [
            r#"[{"a":1},{"a":2},{"a":3}]"#,              // 3 events
            r#"{"batch":[{"a":1},{"a":2}],"sentAt":1}"#, // 2 events
            r#"{"type":"track","event":"a"}"#,           // 1 event
            "not json",                                  // a json error
        ];
        for body in bodies {
            assert_eq!(post(&client, &url, body), 200);
        }
        assert!(collector.requests().is_empty());
        assert_eq!(collector.request_count(), 4);
        assert_eq!(
            collector.sink_stats(),
            SinkStats { requests: 4, events: 6, bytes: bodies.iter().map(|b| b.len() as u64).sum(), json_errors: 1 }
        );
    });
}

#[test]
fn inspection_api_reports_stats_and_requests_without_being_recorded() {
    watchdog(LIMIT, || {
        let collector = Collector::builder().script([Reply::status(503)]).start().expect("start");
        let client = client();
        let get_json = |path: &str| -> Value {
            let response = client.get(collector.url(path)).send().expect("inspection request");
            assert_eq!(response.status().as_u16(), 200);
            json_body(response)
        };

        // Not recorded and not consuming the script.
        assert_eq!(
            get_json("/_trackway/api/stats"),
            json!({"requests": 0, "events": 0, "bytes": 0, "json_errors": 0, "events_by_path": {}, "statuses": {},
                "customerio": {"stored": 0, "duplicates": 0}})
        );
        assert_eq!(get_json("/_trackway/api/requests"), json!([]));
        let unknown = client.get(collector.url("/_trackway/nope")).send().expect("request");
        assert_eq!(unknown.status().as_u16(), 404);
        assert_eq!(collector.request_count(), 0);

        assert_eq!(post(&client, &collector.url("/v1/batch?k=v"), "[1,2]"), 503);
        assert_eq!(
            get_json("/_trackway/api/stats"),
            json!({
                "requests": 1, "events": 2, "bytes": 5, "json_errors": 0,
                "events_by_path": {"/v1/batch": 2}, "statuses": {"503": 1},
                "customerio": {"stored": 0, "duplicates": 0},
            })
        );
        let requests = get_json("/_trackway/api/requests");
        assert_eq!(requests[0]["method"], "POST");
        assert_eq!(requests[0]["path"], "/v1/batch");
        assert_eq!(requests[0]["query"], "k=v");
        assert_eq!(requests[0]["status"], 503);
        assert_eq!(requests[0]["body"], "[1,2]");
        assert_eq!(collector.request_count(), 1);
    });
}

#[test]
fn recorded_request_has_method_path_query_headers_and_body() {
    watchdog(LIMIT, || {
        let collector = Collector::start().expect("start");
        let before = Instant::now();
        client()
            .put(collector.url("/v1/identify?write_key=abc"))
            .header("X-Write-Key", "abc")
            .header("Content-Type", "application/json")
            .body(r#"{"userId":"u1"}"#)
            .send()
            .expect("request");
        let requests = collector.requests();
        assert_eq!(requests.len(), 1);
        let request = &requests[0];
        assert_eq!(request.method, "PUT");
        assert_eq!(request.path, "/v1/identify");
        assert_eq!(request.query.as_deref(), Some("write_key=abc"));
        assert_eq!(request.header("x-write-key"), Some("abc"));
        assert_eq!(request.header("Content-Type"), Some("application/json"));
        assert!(request.headers.iter().any(|(n, _)| n == "x-write-key"));
        assert!(request.headers.iter().all(|(n, _)| *n == n.to_ascii_lowercase()));
        assert_eq!(request.json(), Some(json!({"userId": "u1"})));
        assert_eq!(request.body_str(), r#"{"userId":"u1"}"#);
        assert_eq!(request.status, 200);
        assert!(request.received_at >= before);
    });
}

#[test]
fn wait_for_requests_times_out_then_succeeds() {
    watchdog(LIMIT, || {
        let collector = Collector::start().expect("start");
        let started = Instant::now();
        assert!(!collector.wait_for_requests(1, Duration::from_millis(200)));
        assert!(started.elapsed() >= Duration::from_millis(200));

        let url = collector.url("/v1/batch");
        let sender = thread::spawn(move || {
            thread::sleep(Duration::from_millis(100));
            let client = client();
            post(&client, &url, "[]");
            post(&client, &url, "[]");
        });
        assert!(collector.wait_for_requests(2, Duration::from_secs(10)));
        assert!(collector.requests().len() >= 2);
        assert!(collector.wait_for_requests(0, Duration::ZERO));
        sender.join().expect("sender");
    });
}

#[test]
fn drop_returns_promptly_with_a_request_in_flight() {
    watchdog(LIMIT, || {
        let collector =
            Collector::builder().default_reply(Reply::ok().delay(Duration::from_secs(60))).start().expect("start");
        let url = collector.url("/v1/batch");
        let addr = collector.addr();
        let in_flight = thread::spawn(move || client().post(url).body("[]").send().is_err());
        // An idle keep-alive connection must not hold up shutdown either.
        let _idle = TcpStream::connect(addr).expect("idle connection");
        assert!(collector.wait_for_requests(1, Duration::from_secs(5)));

        let started = Instant::now();
        drop(collector);
        assert!(started.elapsed() < Duration::from_secs(2), "drop took {:?}", started.elapsed());
        assert!(in_flight.join().expect("client thread"), "the in-flight request fails");
        assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err());
    });
}

#[test]
fn binary_prints_its_url_and_exits_when_stdin_closes() {
    watchdog(LIMIT, || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_trackway-collector"))
            .arg("--sink")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the binary");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("first line");
        let url = line
            .trim_end()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");

        let client = client();
        assert_eq!(post(&client, &format!("{url}/v1/batch"), "[1,2,3]"), 200);
        let stats = client.get(format!("{url}/_trackway/api/stats")).send().expect("stats");
        let stats = json_body(stats);
        assert_eq!(stats["events"], 3);

        drop(child.stdin.take()); // EOF on the child's stdin
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the binary did not exit after stdin closed");
            }
            thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{status:?}");
    });
}

#[test]
fn fail_every_applies_before_the_script_and_never_to_the_api() {
    watchdog(LIMIT, || {
        let faults = Faults { fail_every: Some(2), retry_after: Some("3".into()), ..Faults::default() };
        let collector =
            Collector::builder().faults(faults.clone()).script([Reply::status(202)]).start().expect("start");
        assert_eq!(collector.faults(), faults);
        let client = client();
        let url = collector.url("/v1/batch");
        let first = client.post(&url).body("[]").send().expect("request");
        assert_eq!(first.status().as_u16(), 202, "the script answers unfaulted requests");
        let second = client.post(&url).body("[]").send().expect("request");
        assert_eq!(second.status().as_u16(), 503);
        assert_eq!(second.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("3"));
        // The API is never faulted and does not count.
        for _ in 0..3 {
            let response = client.get(collector.url("/_trackway/api/faults")).send().expect("request");
            assert_eq!(response.status().as_u16(), 200);
        }
        let statuses: Vec<u16> = (0..4).map(|_| post(&client, &url, "[]")).collect();
        assert_eq!(statuses, [200, 503, 200, 503]);
        let recorded: Vec<u16> = collector.requests().iter().map(|r| r.status).collect();
        assert_eq!(recorded, [202, 503, 200, 503, 200, 503]);

        // Setting faults restarts the count; clearing them stops the failures.
        collector.set_faults(Faults { fail_every: Some(3), ..Faults::default() }).expect("valid faults");
        let statuses: Vec<u16> = (0..3).map(|_| post(&client, &url, "[]")).collect();
        assert_eq!(statuses, [200, 200, 503]);
        collector.clear_faults();
        assert_eq!(collector.faults(), Faults::default());
        assert!((0..4).all(|_| post(&client, &url, "[]") == 200));
    });
}

#[test]
fn invalid_faults_are_refused() {
    let err =
        Collector::builder().faults(Faults { fail_status: 42, ..Faults::default() }).start().expect_err("refused");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    watchdog(LIMIT, || {
        let collector = Collector::start().expect("start");
        let fail_every_2 = Faults { fail_every: Some(2), ..Faults::default() };
        collector.set_faults(fail_every_2.clone()).expect("valid");
        assert!(collector.set_faults(Faults { close_every: Some(0), ..Faults::default() }).is_err());
        assert_eq!(collector.faults(), fail_every_2, "a refused update keeps the faults");
    });
}

#[test]
fn fail_for_ms_is_an_outage_that_ends_by_itself() {
    watchdog(LIMIT, || {
        let (clock, time) = FaultClock::manual();
        let collector = Collector::builder()
            .faults(Faults { fail_for_ms: Some(1000), fail_status: 500, ..Faults::default() })
            .fault_clock(clock)
            .start()
            .expect("start");
        let client = client();
        let url = collector.url("/v1/batch");
        assert_eq!(post(&client, &url, "[]"), 500);
        time.advance(Duration::from_millis(999));
        assert_eq!(post(&client, &url, "[]"), 500, "still inside the window, however long the requests took");
        time.advance(Duration::from_millis(1));
        assert_eq!(post(&client, &url, "[]"), 200);
    });
}

#[test]
fn latency_delays_every_answer() {
    watchdog(LIMIT, || {
        let collector =
            Collector::builder().faults(Faults { latency_ms: Some(150), ..Faults::default() }).start().expect("start");
        let client = client();
        let start = Instant::now();
        assert_eq!(post(&client, &collector.url("/x"), "[]"), 200);
        assert!(start.elapsed() >= Duration::from_millis(150), "{:?}", start.elapsed());
        // The API is not delayed.
        let start = Instant::now();
        client.get(collector.url("/_trackway/api/stats")).send().expect("request");
        assert!(start.elapsed() < Duration::from_millis(150), "{:?}", start.elapsed());
    });
}

#[test]
fn close_every_drops_the_connection_without_an_answer() {
    watchdog(LIMIT, || {
        let collector =
            Collector::builder().faults(Faults { close_every: Some(2), ..Faults::default() }).start().expect("start");
        let client = client();
        let url = collector.url("/x");
        assert_eq!(post(&client, &url, "[]"), 200);
        assert!(client.post(&url).body("[]").send().is_err(), "the second request gets no answer");
        assert_eq!(post(&client, &url, "[]"), 200);
        let recorded: Vec<u16> = collector.requests().iter().map(|r| r.status).collect();
        assert_eq!(recorded, [200, 0, 200]);
    });
}

#[test]
fn rate_limit_answers_429_beyond_n_per_second() {
    watchdog(LIMIT, || {
        // The window is measured by a clock only this test moves: the five requests are in one
        // window however slowly the machine runs them.
        let (clock, time) = FaultClock::manual();
        let collector = Collector::builder()
            .faults(Faults { rate_limit: Some(3), ..Faults::default() })
            .fault_clock(clock)
            .start()
            .expect("start");
        let client = client();
        let url = collector.url("/x");
        let statuses: Vec<u16> = (0..5).map(|_| post(&client, &url, "[]")).collect();
        assert_eq!(statuses, [200, 200, 200, 429, 429]);
        time.advance(Duration::from_millis(999));
        let response = client.post(&url).body("[]").send().expect("request");
        assert_eq!(response.status().as_u16(), 429, "999 ms later: the same window");
        assert_eq!(response.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
        time.advance(Duration::from_millis(1));
        assert_eq!(post(&client, &url, "[]"), 200, "a new window");
    });
}

#[test]
fn faults_apply_in_sink_mode() {
    watchdog(LIMIT, || {
        let collector = Collector::builder()
            .sink(true)
            .faults(Faults { fail_every: Some(2), ..Faults::default() })
            .start()
            .expect("start");
        let client = client();
        let statuses: Vec<u16> = (0..4).map(|_| post(&client, &collector.url("/x"), "[1]")).collect();
        assert_eq!(statuses, [200, 503, 200, 503]);
        let stats = json_body(client.get(collector.url("/_trackway/api/stats")).send().expect("request"));
        assert_eq!(stats["statuses"], json!({"200": 2, "503": 2}));
        assert_eq!(stats["events_by_path"], json!({"/x": 4}));
    });
}

#[test]
fn faults_api_reads_replaces_and_clears() {
    watchdog(LIMIT, || {
        let collector = Collector::start().expect("start");
        let client = client();
        let faults_url = collector.url("/_trackway/api/faults");
        assert_eq!(json_body(client.get(&faults_url).send().expect("GET"))["fail_every"], Value::Null);

        let response = client.put(&faults_url).body(r#"{"fail_every":1,"fail_status":500}"#).send().expect("PUT");
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(collector.faults(), Faults { fail_every: Some(1), fail_status: 500, ..Faults::default() });
        assert_eq!(post(&client, &collector.url("/x"), "[]"), 500);

        let bad = client.put(&faults_url).body("{").send().expect("PUT");
        assert_eq!(bad.status().as_u16(), 400);
        assert!(json_body(bad)["error"].as_str().expect("message").starts_with("invalid faults JSON"));
        let bad = client.put(&faults_url).body(r#"{"fail_status":1}"#).send().expect("PUT");
        assert_eq!(bad.status().as_u16(), 400);
        assert_eq!(collector.faults().fail_status, 500);
        let post_to_api = client.post(&faults_url).body("{}").send().expect("POST");
        assert_eq!(post_to_api.status().as_u16(), 405);

        let cleared = client.delete(&faults_url).send().expect("DELETE");
        assert_eq!(cleared.status().as_u16(), 200);
        assert_eq!(collector.faults(), Faults::default());
        assert_eq!(post(&client, &collector.url("/x"), "[]"), 200);
    });
}

#[test]
fn events_api_decodes_filters_and_limits() {
    watchdog(LIMIT, || {
        let collector =
            Collector::builder().rule(Rule::body_contains("refund", Reply::status(500))).start().expect("start");
        let client = client();
        let event = |user: &str, kind: &str, name: &str| {
            json!({"id": format!("{user}-{name}"), "type": kind, "name": name,
                   "identity": {"user_id": user, "anonymous_id": format!("anon-{user}")}})
        };
        let batch =
            json!([event("u1", "track", "purchase"), event("u2", "track", "purchase"), event("u1", "page", "home")]);
        assert_eq!(post(&client, &collector.url("/events"), &batch.to_string()), 200);
        assert_eq!(post(&client, &collector.url("/single"), &event("u3", "track", "signup").to_string()), 200);
        assert_eq!(post(&client, &collector.url("/events"), &json!([event("u1", "track", "refund")]).to_string()), 500);
        assert_eq!(post(&client, &collector.url("/events"), "not json"), 200);

        let ids = |query: &str| -> Vec<String> {
            let response = client.get(collector.url(&format!("/_trackway/api/events{query}"))).send().expect("GET");
            assert_eq!(response.status().as_u16(), 200);
            json_body(response)
                .as_array()
                .expect("array")
                .iter()
                .map(|e| e["event"]["id"].as_str().expect("id").to_owned())
                .collect()
        };
        assert_eq!(ids(""), ["u1-purchase", "u2-purchase", "u1-home", "u3-signup", "u1-refund"]);
        assert_eq!(ids("?user=u1"), ["u1-purchase", "u1-home", "u1-refund"]);
        assert_eq!(ids("?user=anon-u2"), ["u2-purchase"]);
        assert_eq!(ids("?name=purchase"), ["u1-purchase", "u2-purchase"]);
        assert_eq!(ids("?type=page"), ["u1-home"]);
        assert_eq!(ids("?path=%2Fsingle"), ["u3-signup"]);
        assert_eq!(ids("?status=500"), ["u1-refund"]);
        assert_eq!(ids("?limit=2"), ["u3-signup", "u1-refund"], "the newest, oldest first");
        assert_eq!(ids("?user=u1&type=track&limit=1"), ["u1-refund"]);

        let all = json_body(client.get(collector.url("/_trackway/api/events?limit=1")).send().expect("GET"));
        assert_eq!(all[0]["path"], "/events");
        assert_eq!(all[0]["status"], 500);
        assert_eq!(all[0]["event"], event("u1", "track", "refund"));
        assert!(all[0]["received_at_ms"].as_u64().expect("ms") > 1_600_000_000_000);

        let bad = client.get(collector.url("/_trackway/api/events?limit=many")).send().expect("GET");
        assert_eq!(bad.status().as_u16(), 400);
    });
}

#[test]
fn a_store_file_keeps_a_run_for_the_next_collector_with_credentials_redacted() {
    watchdog(LIMIT, || {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("collector.db");
        let http = client();
        let first = Collector::builder().store(&path).start().expect("collector");
        let body = json!([{"id": "m1", "type": "track", "name": "Signed Up", "identity": {"user_id": "u1"}}]);
        let response = http
            .post(first.url("/v1/batch"))
            .header("authorization", "Bearer top-secret-value")
            .body(body.to_string())
            .send()
            .expect("send");
        assert_eq!(response.status().as_u16(), 200);
        first.shutdown();
        let raw = std::fs::read(&path).expect("store file");
        assert!(!raw.windows(16).any(|w| w == b"top-secret-value"), "a credential reached the store");

        let second = Collector::builder().store(&path).start().expect("collector on the same file");
        let events =
            http.get(second.url("/_trackway/api/events?user=u1")).send().expect("events").text().expect("body");
        let events: Value = serde_json::from_str(&events).expect("json");
        let events = events.as_array().expect("array");
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0]["event"]["id"], "m1");
        assert_eq!(events[0]["path"], "/v1/batch");
        let requests = second.requests();
        assert_eq!(requests[0].header("authorization"), Some("<redacted>"));
        assert!(
            Collector::builder().sink(true).store(&path).start().is_err(),
            "sink mode keeps nothing: a store makes no sense there"
        );
    });
}

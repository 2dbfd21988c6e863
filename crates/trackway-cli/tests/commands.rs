//! End-to-end: `trackway send`, `import` and `outbox` through the built binary, against a
//! collector started in this process on 127.0.0.1 (no other network).
//!
//! Every test runs under a watchdog, every child process has a deadline and is killed when it
//! passes (or when an assertion fails).

mod support;

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{KillOnDrop, watchdog};
use trackway_collector::{Collector, Faults, RunningCollector};

const LIMIT: Duration = Duration::from_secs(120);
/// The secret every test puts in the environment; it must never be printed.
const SECRET: &str = "Bearer tw-s3cr3t-0a9f";
const TOKEN_VAR: &str = "TRACKWAY_TEST_TOKEN";

/// What a finished command printed.
#[derive(Debug)]
struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Output {
    fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trackway"));
    cmd.args(args).env(TOKEN_VAR, SECRET).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

/// Reads a pipe to the end on a thread.
fn drain(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut pipe) = pipe {
        thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            let _ = tx.send(text);
        });
    }
    rx
}

/// Waits for a spawned command, killing it after `limit`.
fn finish(mut child: KillOnDrop, limit: Duration) -> Output {
    let stdout = drain(child.0.stdout.take());
    let stderr = drain(child.0.stderr.take());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(started.elapsed() < limit, "command still running after {limit:?}; killed");
        thread::sleep(Duration::from_millis(20));
    };
    let text = |rx: mpsc::Receiver<String>| rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
    Output { status, stdout: text(stdout), stderr: text(stderr) }
}

/// Runs `trackway ARGS` to completion (at most 60 s) with the secret in the environment.
fn run(args: &[&str]) -> Output {
    let child = command(args).spawn().expect("spawn trackway");
    finish(KillOnDrop(child), Duration::from_secs(60))
}

fn assert_no_secret(out: &Output) {
    assert!(!out.all().contains(SECRET) && !out.all().contains("tw-s3cr3t"), "the secret was printed: {out:?}");
}

/// A temporary directory with a configuration posting to `url`, its store in the directory.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Setup {
    fn new(url: &str) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("trackway.toml");
        std::fs::write(
            &config,
            format!(
                "[store]\npath = \"outbox.db\"\n\n[[destination]]\nname = \"warehouse\"\ntype = \"json\"\n\
                 url = \"{url}\"\nbatch_size = 100\n[destination.headers]\nAuthorization = {{ env = \"{TOKEN_VAR}\" }}\n"
            ),
        )
        .expect("write config");
        Setup { dir, config }
    }

    fn config(&self) -> &str {
        self.config.to_str().expect("utf-8 path")
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("outbox.db")
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write file");
        path
    }
}

fn collector() -> RunningCollector {
    Collector::start().expect("collector")
}

/// Message ids of the events the collector answered with `status`, with how often each came.
fn received(collector: &RunningCollector, status: u16) -> HashMap<String, usize> {
    let mut ids = HashMap::new();
    for r in collector.requests().iter().filter(|r| r.status == status) {
        if let Some(Value::Array(events)) = r.json() {
            for e in events {
                *ids.entry(e["id"].as_str().expect("event id").to_owned()).or_default() += 1;
            }
        }
    }
    ids
}

/// `n` JSON lines with fresh ids (`line` property = line number), `bad` replaced by garbage.
fn jsonl(n: u64, bad: Option<u64>) -> (String, Vec<String>) {
    let mut text = String::new();
    let mut ids = Vec::new();
    for line in 1..=n {
        if Some(line) == bad {
            text.push_str("{\"id\": oops\n");
            continue;
        }
        let id = format!("00000000-0000-4000-8000-{line:012}");
        // Every tenth line has an anonymous visitor instead of a user.
        let who = if line % 10 == 0 {
            format!("\"anonymous_id\":\"anon-{line}\"")
        } else {
            format!("\"user\":\"u{}\"", line % 7)
        };
        text.push_str(&format!(
            "{{\"id\":\"{id}\",\"timestamp\":\"2026-11-20T08:00:00Z\",{who},\"event\":\"imported\",\"properties\":{{\"line\":{line}}}}}\n"
        ));
        ids.push(id);
    }
    (text, ids)
}

/// The number after `label` on a line of `text`.
fn number_after(text: &str, label: &str) -> u64 {
    let line = text.lines().find(|l| l.starts_with(label)).unwrap_or_else(|| panic!("no {label:?} in {text}"));
    let digits: String = line[label.len()..].trim_start().chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap_or_else(|_| panic!("no number after {label:?}: {line:?}"))
}

#[test]
fn bad_configurations_fail_clearly_without_printing_secrets() {
    watchdog(LIMIT, || {
        let setup = Setup::new("http://127.0.0.1:9/events");
        let cases: &[(&str, &str)] = &[
            (
                "[[destination]]\nname = \"a\"\ntype = \"glean\"\nurl = \"http://x/\"\n",
                "unknown destination type \"glean\"",
            ),
            ("[[destination]]\nname = \"a\"\ntype = \"json\"\n", "missing `url`"),
            (
                "[[destination]]\nname = \"a\"\ntype = \"json\"\nurl = \"http://x/\"\n\n[destination.headers]\nX-Key = { env = \"TRACKWAY_TEST_UNSET_VAR\" }\n",
                "environment variable TRACKWAY_TEST_UNSET_VAR is not set",
            ),
            ("[[destination]]\nname = \"a\"\ntype = \"json\"\nurl = \"http://x/\"\nbatch_size = [\n", "bad.toml:5:"),
            (
                "[[destination]]\nname = \"a\"\ntype = \"json\"\nurl = \"http://x/\"\n[destination.headers]\nAuthorization = \"Bearer tw-s3cr3t-0a9f\"\n",
                "bad.toml:6:",
            ),
            ("[[destination]]\nname = \"a\"\ntyp = \"json\"\n", "unknown field `typ`"),
        ];
        for (text, expected) in cases {
            let bad = setup.file("bad.toml", text);
            let out = run(&["send", "--config", bad.to_str().expect("path"), "--user", "u1", "--event", "e"]);
            assert!(!out.status.success(), "{text}: {out:?}");
            assert!(out.stderr.contains(expected), "{text}: expected {expected:?} in {out:?}");
            assert_no_secret(&out);
        }
        let out = run(&["send", "--user", "u1", "--event", "e"]);
        assert!(!out.status.success());
        assert!(out.stderr.contains("pass --config FILE"), "{out:?}");
    });
}

#[test]
fn send_delivers_to_the_collector_and_reports_failures() {
    watchdog(LIMIT, || {
        let collector = collector();
        let setup = Setup::new(&collector.url("/events"));
        let out = run(&[
            "send",
            "--config",
            setup.config(),
            "--user",
            "u1",
            "--event",
            "purchase",
            "--prop",
            "amount=9.5",
            "--prop",
            "plan=pro",
            "--properties",
            r#"{"items":[1,2]}"#,
        ]);
        assert!(out.status.success(), "{out:?}");
        assert!(out.stdout.contains("warehouse: delivered"), "{out:?}");
        let id = out.stdout.lines().find_map(|l| l.strip_prefix("message id: ")).expect("message id").to_owned();
        let requests = collector.requests();
        let request = requests.iter().find(|r| r.body_str().contains(&id)).expect("the event arrived");
        assert_eq!(request.header("authorization"), Some(SECRET), "the secret is sent as the header");
        let event = &request.json().expect("json")[0];
        assert_eq!(event["name"], "purchase");
        assert_eq!(event["identity"]["user_id"], "u1");
        assert_eq!(event["properties"]["amount"], 9.5);
        assert_eq!(event["properties"]["plan"], "pro");
        assert_eq!(event["properties"]["items"], serde_json::json!([1, 2]));
        assert_no_secret(&out);

        let out = run(&["send", "--config", setup.config(), "--user", "u1", "--type", "page", "--event", "/pricing"]);
        assert!(out.status.success(), "{out:?}");

        // Rejected: dead-lettered with the server's answer, non-zero exit.
        collector.set_faults(Faults { fail_every: Some(1), fail_status: 400, ..Faults::default() }).expect("faults");
        let out = run(&["send", "--config", setup.config(), "--user", "u1", "--event", "purchase"]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(out.stdout.contains("warehouse: not delivered: rejected (400"), "{out:?}");
        assert_no_secret(&out);
        collector.clear_faults();

        // Unreachable: a closed port.
        let down = Setup::new("http://127.0.0.1:9/events");
        let out = run(&["send", "--config", down.config(), "--user", "u1", "--event", "e", "--timeout", "1.5"]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(out.stdout.contains("not delivered within"), "{out:?}");
        assert!(out.stdout.contains("failed request(s), the last: connection refused to 127.0.0.1:9\n"), "{out:?}");
        assert_no_secret(&out);

        let out = run(&["send", "--config", setup.config(), "--user", "", "--event", "e"]);
        assert!(!out.status.success());
        assert!(out.stderr.contains("Identifier cannot be empty"), "{out:?}");
    });
}

#[test]
fn help_and_every_command_keep_the_secret_out() {
    watchdog(LIMIT, || {
        let collector = collector();
        let setup = Setup::new(&collector.url("/events"));
        let (text, _) = jsonl(5, None);
        let file = setup.file("events.jsonl", &text);
        let file = file.to_str().expect("path");
        let c = setup.config();
        let runs: Vec<Vec<&str>> = vec![
            vec!["--help"],
            vec!["send", "--help"],
            vec!["import", "--help"],
            vec!["outbox", "requeue", "--help"],
            vec!["send", "--config", c, "--user", "u1", "--event", "e"],
            vec!["import", "--config", c, file],
            vec!["outbox", "stats", "--config", c],
            vec!["outbox", "stats", "--config", c, "--json"],
            vec!["outbox", "dead", "--config", c],
            vec!["outbox", "requeue", "--config", c],
        ];
        for args in &runs {
            let out = run(args);
            assert!(out.status.success(), "{args:?}: {out:?}");
            assert_no_secret(&out);
        }
        // Every request carried it.
        assert!(collector.requests().iter().all(|r| r.header("authorization") == Some(SECRET)));
    });
}

#[test]
fn import_reports_the_malformed_line_and_delivers_the_rest() {
    watchdog(LIMIT, || {
        let collector = collector();
        let setup = Setup::new(&collector.url("/events"));
        let (text, ids) = jsonl(10_000, Some(4321));
        let file = setup.file("events.jsonl", &text);
        let out = run(&["import", "--config", setup.config(), file.to_str().expect("path")]);
        assert_eq!(out.status.code(), Some(1), "one malformed line: {out:?}");
        assert!(out.stdout.contains("line 4321: invalid JSON"), "{out:?}");
        assert_eq!(number_after(&out.stdout, "lines read:"), 10_000, "{out:?}");
        assert_eq!(number_after(&out.stdout, "enqueued:"), 9_999, "{out:?}");
        assert_eq!(number_after(&out.stdout, "malformed:"), 1, "{out:?}");
        assert!(out.stdout.contains("warehouse: delivered 9999, dead-lettered 0, pending 0"), "{out:?}");
        let got = received(&collector, 200);
        assert_eq!(got.len(), 9_999);
        assert!(ids.iter().all(|id| got.contains_key(id)));
        let anonymous = collector
            .requests()
            .iter()
            .filter_map(|r| r.json())
            .flat_map(|body| body.as_array().cloned().unwrap_or_default())
            .find(|e| e["properties"]["line"] == 10)
            .expect("line 10 arrived");
        assert_eq!(anonymous["identity"]["anonymous_id"], "anon-10", "{anonymous}");
        assert_eq!(anonymous["timestamp"], "2026-11-20T08:00:00.000Z", "the line's own timestamp: {anonymous}");
        // The progress bar is hidden: stderr is not a terminal.
        assert_eq!(out.stderr, "", "{out:?}");

        // A rerun skips everything: the position was recorded.
        let out = run(&["import", "--config", setup.config(), file.to_str().expect("path")]);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(number_after(&out.stdout, "skipped:"), 10_000, "{out:?}");
        assert_eq!(number_after(&out.stdout, "enqueued:"), 0, "{out:?}");
    });
}

#[test]
fn an_import_left_pending_says_why_from_the_last_error() {
    watchdog(LIMIT, || {
        // A closed port: bound once to learn a free one, then released.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let down = Setup::new(&format!("http://127.0.0.1:{closed}/events"));
        let (text, _) = jsonl(3, None);
        let file = down.file("events.jsonl", &text);
        let out = run(&["import", "--config", down.config(), "--timeout", "1", file.to_str().expect("path")]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(out.stdout.contains("warehouse: delivered 0, dead-lettered 0, pending 3\n"), "{out:?}");
        let why = out.stdout.lines().find(|l| l.starts_with("  last error (")).unwrap_or_else(|| panic!("{out:?}"));
        assert!(why.ends_with(&format!("): connection refused to 127.0.0.1:{closed}")), "{why}");
        assert!(!out.stdout.contains("flush timed out"), "the flush's own wording is not the reason: {out:?}");

        // A server that answers 503 with a reason: its status and the body's first line.
        let collector = Collector::builder()
            .default_reply(trackway_collector::Reply::status(503).body("read-only mode\nsee status page"))
            .start()
            .expect("collector");
        let failing = Setup::new(&collector.url("/events"));
        let file = failing.file("events.jsonl", &text);
        let out = run(&["import", "--config", failing.config(), "--timeout", "1", file.to_str().expect("path")]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(out.stdout.contains("): 503 Service Unavailable: read-only mode\n"), "{out:?}");
        let out = run(&["send", "--config", failing.config(), "--user", "u1", "--event", "e", "--timeout", "1"]);
        assert!(out.stdout.contains("the last: 503 Service Unavailable: read-only mode\n"), "{out:?}");
        assert_no_secret(&out);
    });
}

#[test]
fn dead_letters_are_listed_read_only_and_requeued() {
    watchdog(LIMIT, || {
        let collector = collector();
        let setup = Setup::new(&collector.url("/events"));
        let (text, ids) = jsonl(3, None);
        let file = setup.file("events.jsonl", &text);
        collector.set_faults(Faults { fail_every: Some(1), fail_status: 400, ..Faults::default() }).expect("faults");
        let out = run(&["import", "--config", setup.config(), file.to_str().expect("path")]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(out.stdout.contains("dead-lettered 3"), "{out:?}");
        assert!(out.stdout.contains("rejected: 400 Bad Request"), "{out:?}");

        let store = setup.store();
        let store = store.to_str().expect("path");
        let out = run(&["outbox", "dead", "--store", store, "--json"]);
        assert!(out.status.success(), "{out:?}");
        let letters: Value = serde_json::from_str(&out.stdout).expect("JSON");
        let letters = letters.as_array().expect("array");
        assert_eq!(letters.len(), 3);
        for l in letters {
            assert_eq!(l["reason"], "rejected");
            assert_eq!(l["destination"], "warehouse");
            assert!(l["detail"].as_str().expect("detail").starts_with("400"), "{l}");
            assert!(ids.contains(&l["id"].as_str().expect("id").to_owned()));
        }
        let out = run(&["outbox", "dead", "--store", store]);
        assert!(out.stdout.contains("3 dead letter(s)") && out.stdout.contains("track \"imported\""), "{out:?}");
        let out = run(&["outbox", "stats", "--store", store, "--json"]);
        let stats: Value = serde_json::from_str(&out.stdout).expect("JSON");
        assert_eq!(stats["dead_letters"], 3);

        collector.clear_faults();
        let out = run(&["outbox", "requeue", "--config", setup.config(), "--json"]);
        assert!(out.status.success(), "{out:?}");
        let report: Value = serde_json::from_str(&out.stdout).expect("JSON");
        assert_eq!(report["requeued"], 3, "{report}");
        assert_eq!(report["delivered"], 3, "{report}");
        let got = received(&collector, 200);
        assert!(ids.iter().all(|id| got.contains_key(id)), "{got:?}");
        let out = run(&["outbox", "stats", "--store", store]);
        assert!(out.stdout.contains("dead letters: 0"), "{out:?}");
    });
}

#[test]
fn outbox_stats_works_while_another_process_holds_the_store_and_requeue_names_it() {
    watchdog(LIMIT, || {
        use trackway::destination::JsonHttp;
        use trackway::store::SqliteStore;
        let collector = collector();
        // Every request fails: the events stay pending in the store.
        collector.set_faults(Faults { fail_every: Some(1), fail_status: 503, ..Faults::default() }).expect("faults");
        let setup = Setup::new(&collector.url("/events"));
        let client = trackway::Client::builder()
            .destination(JsonHttp::new(collector.url("/events")).name("warehouse"))
            .store(SqliteStore::new(setup.store()))
            .build()
            .expect("client");
        for i in 0..25 {
            client.track("u1", "held", trackway::props! { "i" => i }).expect("track");
        }
        client.persisted(Duration::from_secs(10)).expect("persisted");
        let store = setup.store();
        let store = store.to_str().expect("path");

        let out = run(&["outbox", "stats", "--store", store]);
        assert!(out.status.success(), "{out:?}");
        assert!(out.stdout.contains("events:       25 stored"), "{out:?}");
        assert!(out.stdout.contains("pending:      25 for warehouse"), "{out:?}");
        let out = run(&["outbox", "dead", "--store", store]);
        assert!(out.status.success(), "{out:?}");

        let out = run(&["outbox", "requeue", "--config", setup.config(), "--store", store]);
        assert!(!out.status.success(), "{out:?}");
        let pid = std::process::id();
        assert!(out.stderr.contains(&format!("in use by pid {pid}")), "{out:?}");
        assert_no_secret(&out);

        let out = run(&["import", "--config", setup.config(), setup.file("x.jsonl", "").to_str().expect("path")]);
        assert!(!out.status.success(), "{out:?}");
        assert!(out.stderr.contains(&format!("in use by pid {pid}")), "{out:?}");
        drop(client);
    });
}

#[test]
fn an_import_killed_midway_resumes_without_enqueueing_committed_lines_again() {
    watchdog(LIMIT, || {
        let collector = collector();
        // Deliveries hang: the store fills up while the import runs.
        collector.set_faults(Faults { latency_ms: Some(30_000), ..Faults::default() }).expect("faults");
        let setup = Setup::new(&collector.url("/events"));
        let (text, ids) = jsonl(10_000, None);
        let file = setup.file("events.jsonl", &text);
        let file = file.to_str().expect("path");
        let store = setup.store();
        let store = store.to_str().expect("path");
        let child =
            command(&["import", "--config", setup.config(), "--max-rate", "2500", file]).spawn().expect("spawn import");
        let mut child = KillOnDrop(child);
        // Watch the store, read-only, while the import holds it, until 3000 events are in.
        let started = Instant::now();
        loop {
            assert!(started.elapsed() < Duration::from_secs(30), "the import never got to 3000 events");
            let out = run(&["outbox", "stats", "--store", store, "--json"]);
            if out.status.success() {
                let stats: Value = serde_json::from_str(&out.stdout).expect("JSON");
                if stats["events"].as_u64().unwrap_or(0) >= 3000 {
                    break;
                }
            }
            thread::sleep(Duration::from_millis(50));
        }
        // Between two of the import's own checkpoints (every 1000 lines, 0.4 s apart at this
        // rate): each event was committed with its line position before it was sent.
        thread::sleep(Duration::from_millis(300));
        child.0.kill().expect("kill");
        let _ = child.0.wait();
        drop(child);

        collector.clear_faults();
        let out = run(&["import", "--config", setup.config(), file]);
        assert!(out.status.success(), "{out:?}");
        let resumed = number_after(&out.stdout, "resuming after line");
        let skipped = number_after(&out.stdout, "skipped:");
        let enqueued = number_after(&out.stdout, "enqueued:");
        assert_eq!(skipped, resumed, "{out:?}");
        assert!((1..10_000).contains(&skipped), "{out:?}");
        assert_eq!(enqueued, 10_000 - skipped, "only the lines after the checkpoint are queued again: {out:?}");
        // Every line arrived. An id that came twice is an event that was in flight when the first
        // run was killed (at most 4 requests of 100), redelivered from the store: no line the
        // first run had committed was queued again.
        let got = received(&collector, 200);
        assert!(ids.iter().all(|id| got.contains_key(id)), "{} of 10000 arrived", got.len());
        let twice: Vec<u64> =
            ids.iter().enumerate().filter(|(_, id)| got[id.as_str()] > 1).map(|(i, _)| i as u64 + 1).collect();
        assert!(twice.len() <= 400, "{} events arrived twice", twice.len());
        assert!(twice.iter().all(|line| *line <= skipped), "lines after the checkpoint arrived twice: {twice:?}");
    });
}

#[test]
fn send_to_opencdp_dual_writes_to_customer_io_from_the_configuration() {
    watchdog(LIMIT, || {
        // One collector answers both: OpenCDP's gateway path and Customer.io's Track API, the
        // latter only with these credentials (so a key read wrongly is a 401, not a pass).
        let collector = Collector::builder().customerio_credentials("site-7", SECRET).start().expect("collector");
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("trackway.toml");
        std::fs::write(
            &config,
            format!(
                "[[destination]]\nname = \"cdp\"\ntype = \"opencdp\"\napi_key = {{ env = \"{TOKEN_VAR}\" }}\n\
                 endpoint = \"{}\"\n[destination.customer_io]\nname = \"cio\"\nsite_id = \"site-7\"\n\
                 api_key = {{ file = \"cio.key\" }}\nbase_url = \"{}\"\napi = \"v1\"\n",
                collector.url("/gateway/data-gateway"),
                collector.url(""),
            ),
        )
        .expect("write config");
        // The dual-write's key from a file next to the configuration (a mounted secret).
        std::fs::write(dir.path().join("cio.key"), format!("{SECRET}\n")).expect("write the key file");
        let config = config.to_str().expect("utf-8 path");
        let out = run(&["send", "--config", config, "--user", "u1", "--event", "purchase", "--prop", "amount=9.5"]);
        assert!(out.status.success(), "{out:?}");
        assert!(out.stdout.contains("cdp: delivered") && out.stdout.contains("cio: delivered"), "{out:?}");
        assert_no_secret(&out);
        let requests = collector.requests();
        let cdp = requests
            .iter()
            .find(|r| r.path == "/gateway/data-gateway/v1/persons/track")
            .unwrap_or_else(|| panic!("no OpenCDP track: {requests:?}"));
        assert_eq!(cdp.header("authorization"), Some(SECRET), "OpenCDP's key, raw");
        assert_eq!(cdp.json().expect("json")["eventName"], "purchase");
        let cio = requests
            .iter()
            .find(|r| r.path == "/api/v1/customers/u1/events")
            .unwrap_or_else(|| panic!("no Customer.io event: {requests:?}"));
        assert_eq!(cio.status, 200, "the dual-write's credentials were read: {cio:?}");
        let event = cio.json().expect("json");
        assert_eq!((event["name"].as_str(), event["data"]["amount"].as_f64()), (Some("purchase"), Some(9.5)));

        // OpenCDP's key missing from the environment: named, and nothing is sent.
        let out = command(&["send", "--config", config, "--user", "u1", "--event", "e"])
            .env_remove(TOKEN_VAR)
            .spawn()
            .expect("spawn");
        let out = finish(KillOnDrop(out), Duration::from_secs(60));
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert!(out.stderr.contains(TOKEN_VAR), "{out:?}");
    });
}

#[test]
fn import_reports_each_line_outcome_per_destination_and_json_lines() {
    watchdog(LIMIT, || {
        // Delivered: --json prints one line per event and destination on stdout.
        let collector = collector();
        let setup = Setup::new(&collector.url("/events"));
        let (text, ids) = jsonl(20, None);
        let file = setup.file("events.jsonl", &text);
        let out = run(&["import", "--json", "--config", setup.config(), file.to_str().expect("path")]);
        assert!(out.status.success(), "{out:?}");
        let lines: Vec<Value> =
            out.stdout.lines().map(|l| serde_json::from_str(l).expect("each stdout line is JSON")).collect();
        assert_eq!(lines.len(), 20, "{out:?}");
        for (n, (line, id)) in lines.iter().zip(&ids).enumerate() {
            assert_eq!(line["line"], n as u64 + 1, "{line}");
            assert_eq!(line["id"], id.as_str(), "{line}");
            assert_eq!(line["destination"], "warehouse", "{line}");
            assert_eq!(line["outcome"], "delivered", "{line}");
        }
        assert!(
            out.stderr.contains("warehouse: this run's lines: delivered 20, not delivered 0, pending 0"),
            "{out:?}"
        );

        // Rejected: each line with the server's answer.
        let rejecting = Collector::builder()
            .default_reply(trackway_collector::Reply::status(400).body("schema mismatch"))
            .start()
            .expect("collector");
        let setup = Setup::new(&rejecting.url("/events"));
        let (text, _) = jsonl(3, None);
        let file = setup.file("events.jsonl", &text);
        let out = run(&["import", "--config", setup.config(), file.to_str().expect("path")]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(out.stdout.contains("warehouse: this run's lines: delivered 0, not delivered 3, pending 0"), "{out:?}");
        let line = out.stdout.lines().find(|l| l.starts_with("  line 2 (")).expect("line 2's outcome");
        assert!(line.contains("at warehouse: rejected (400 Bad Request: schema mismatch"), "{out:?}");
        let out = run(&["import", "--json", "--from-start", "--config", setup.config(), file.to_str().expect("path")]);
        let first: Value = serde_json::from_str(out.stdout.lines().next().expect("a line")).expect("json");
        assert_eq!((first["outcome"].as_str(), first["status"].as_u64()), (Some("rejected"), Some(400)), "{out:?}");
        assert!(first["detail"].as_str().is_some_and(|d| d.contains("schema mismatch")), "{out:?}");

        // Pending: the destination is down; the reason is its last error.
        let down = Setup::new("http://127.0.0.1:9/events");
        let (text, _) = jsonl(2, None);
        let file = down.file("events.jsonl", &text);
        let out = run(&["import", "--json", "--timeout", "1", "--config", down.config(), file.to_str().expect("path")]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let first: Value = serde_json::from_str(out.stdout.lines().next().expect("a line")).expect("json");
        assert_eq!(first["outcome"], "pending", "{out:?}");
        assert!(first["reason"].as_str().is_some_and(|r| r.contains("connection refused")), "{out:?}");
        assert!(out.stderr.contains("pending 2"), "{out:?}");
        assert_no_secret(&out);
    });
}

#[test]
fn send_prints_the_receipt_per_destination_and_why_it_is_pending() {
    watchdog(LIMIT, || {
        let down = Setup::new("http://127.0.0.1:9/events");
        let out = run(&["send", "--config", down.config(), "--user", "u1", "--event", "e", "--timeout", "1"]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let pending = out.stdout.lines().find(|l| l.starts_with("  pending (")).expect("the pending line");
        assert!(pending.contains("retrying") && pending.contains("connection refused"), "{out:?}");
    });
}

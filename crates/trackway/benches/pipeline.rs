//! End-to-end pipeline benchmark: `cargo bench -p trackway --bench pipeline [-- --n 20000]`.
//!
//! Sends N `bench_event` events (user `user-{i % 1000}`, properties `bench_seq`, `plan`, `path`,
//! `amount`, `items`) in a tight loop through the generic JSON destination (batches of 100) to a
//! `trackway-collector` in sink mode, and compares with a baseline that serializes the same events
//! and POSTs them in batches of 100 with hyper's HTTP/1 client on one keep-alive connection, from one
//! thread, waiting for each answer (the cheapest honest sender).
//!
//! Every phase runs in its own child process (this binary re-executed with `TRACKWAY_BENCH_ROLE`),
//! so peak RSS is per phase, and each phase gets a fresh collector, also its own process
//! (`TRACKWAY_BENCH_ROLE=sink`, stopped by closing its stdin), so the counts are separate.
//!
//! The SDK runs three times, once per store: the in-memory store (`memory`), and the durable SQLite
//! store with `synchronous = NORMAL` (`normal`, the default) and `FULL` (`full`), each in a fresh
//! directory `<temp dir>/trackway-bench-<pid>-<phase>` that is removed after the phase.
//!
//! Knobs: `--n N` or `TRACKWAY_BENCH_N` (default 200 000); `TRACKWAY_BENCH_QUEUE_CAPACITY` overrides
//! the client's `queue_capacity` (default: the SDK default, 16 384); `TRACKWAY_BENCH_STAGING_MIB` the durable
//! store's `staging_limit` (default the SDK's, 48 MiB); `TRACKWAY_BENCH_PHASES` picks
//! phases for a quick run (comma-separated, default `memory,normal,full,baseline`).
//!
//! `TRACKWAY_BENCH_FAULT` (or `--fault`) runs every phase against a collector that fails requests
//! through its fault flags: `503` (every 20th request answered 503, 5 %) or `429` (every 20th
//! answered 429 with `Retry-After: 1`); the baseline then resends a failed batch (at once after a
//! 503, after sleeping `Retry-After` after a 429) until it is taken. Under 503 every store also
//! runs once clean just before its faulted run (its clean twin), and the first attempts are
//! compared with that run's rate. `--help` lists all of this.
//!
//! `TRACKWAY_BENCH_RATE` (or `--rate R`) paces the SDK phases' caller at R events/s instead of a
//! tight loop (sleeping whenever it is ahead of schedule by more than `PACE_SLACK`; the sleeps
//! are outside the timed region), and checks every store's peak RSS against 64 MB. Under a
//! fault, the first row is the whole-run rate (first call .. flush returned): the 1 000 000-event
//! 503 figure is `--n 1000000 --fault 503`.
//!
//! To profile the caller alone, start a sink (`TRACKWAY_BENCH_ROLE=sink`) and run the SDK phase
//! directly: `TRACKWAY_BENCH_ROLE=sdk TRACKWAY_BENCH_URL=http://127.0.0.1:PORT TRACKWAY_BENCH_N=20000`
//! (add `TRACKWAY_BENCH_STORE=normal|full` for the durable store, and optionally
//! `TRACKWAY_BENCH_STORE_DIR=DIR`; the directory is emptied first and removed at the end).
// A bench's whole output is the table it prints.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::hint::black_box;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use common::{PhaseResult, nanos, proc_status_bytes, run_child};
use serde::Serialize;
use trackway::destination::JsonHttp;
use trackway::{Client, Error, MessageId, Timestamp, props};

const ROLE_ENV: &str = "TRACKWAY_BENCH_ROLE";
const URL_ENV: &str = "TRACKWAY_BENCH_URL";
const N_ENV: &str = "TRACKWAY_BENCH_N";
const QUEUE_ENV: &str = "TRACKWAY_BENCH_QUEUE_CAPACITY";
/// The durable store's staging limit in MiB (default the SDK's); inherited by the SDK phase.
const STAGING_ENV: &str = "TRACKWAY_BENCH_STAGING_MIB";
const MEMORY_ENV: &str = "TRACKWAY_BENCH_MEMORY_MIB";
const PHASES_ENV: &str = "TRACKWAY_BENCH_PHASES";
const STORE_ENV: &str = "TRACKWAY_BENCH_STORE";
const STORE_DIR_ENV: &str = "TRACKWAY_BENCH_STORE_DIR";
const FAULT_ENV: &str = "TRACKWAY_BENCH_FAULT";
/// Events per second the SDK phases' caller is paced at (unset or empty: a tight loop).
const RATE_ENV: &str = "TRACKWAY_BENCH_RATE";
/// A directory: each SDK phase writes its sampler's timeline there (`trace-<store>.tsv`).
const TRACE_ENV: &str = "TRACKWAY_BENCH_TRACE_DIR";
/// Every this many requests the faulty collector fails one (5 %).
const FAIL_EVERY: u64 = 20;

const HELP: &str = "\
trackway pipeline bench: N events through the SDK (in-memory store, durable NORMAL, durable FULL)
and through a hyper HTTP/1 baseline, each against its own trackway-collector in sink mode.

usage: cargo bench -p trackway --bench pipeline -- [--n N] [--fault 503|429] [--rate R] [--help]

options and environment:
  --n N, TRACKWAY_BENCH_N=N                events per phase (default 200000)
  --fault F, TRACKWAY_BENCH_FAULT=F        503: every 20th request answered 503 (5 %);
                                           429: every 20th answered 429 + Retry-After: 1;
                                           the baseline resends (after Retry-After on a 429)
  --rate R, TRACKWAY_BENCH_RATE=R          pace the SDK phases' caller at R events/s (default: a
                                           tight loop); peak RSS is then checked <= 64 MB for
                                           every store (the issue: 200000 paced at 500000/s)
  TRACKWAY_BENCH_PHASES=a,b                memory, normal, full, baseline (default all)
  TRACKWAY_BENCH_QUEUE_CAPACITY=Q          the client's queue_capacity (default the SDK's)
  TRACKWAY_BENCH_TRACE_DIR=D               write each SDK phase's 2 ms samples (ms, RSS, its anon
                                           and file parts, enqueued, delivered, pending,
                                           queue_full) to D/trace-<store>.tsv
  TRACKWAY_BENCH_STAGING_MIB=M             the durable store's staging_limit in MiB (default the SDK's)
  TRACKWAY_BENCH_MEMORY_MIB=M              the durable store's memory_limit in MiB (default the SDK's)

rows: delivered events/s and ratio to the baseline; with a fault, first-attempt events/s (events
delivered or put to retry once / time to the last first attempt answered, sampled) and the retry
tail; caller cost percentiles; caller rate, store write rate, longest gap between two drains and
the ring's headroom in ms (sampled every 2 ms); peak RSS; losses by counter; requests sent.

Numbers on a shared machine are noisy: compare runs taken in the same sitting.";

const DEFAULT_N: usize = 200_000;
const BATCH: usize = 100;
const USERS: usize = 1_000;
const EVENT_PATH: &str = "/v1/events";
const PLANS: [&str; 3] = ["free", "pro", "enterprise"];
const PAGE_PATH: &str = "/checkout/confirm";

/// The SDK's default `queue_capacity` (shown in the header when not overridden).
const SDK_DEFAULT_QUEUE_CAPACITY: usize = 16_384;

// Targets from the issue.
const TARGET_P99_NS: u64 = 1_000;
const TARGET_SPEEDUP: f64 = 1.5;
/// 64 MB, read strictly as 64 × 10^6 bytes.
const TARGET_RSS_BYTES: u64 = 64_000_000;
/// The durable store: delivered events/s at least the baseline's.
const TARGET_DURABLE_SPEEDUP: f64 = 1.0;
/// The durable store: caller p50 / p99 "unchanged" = within 20 % or 150 ns of the in-memory store's.
const UNCHANGED_FRACTION: f64 = 0.20;
const UNCHANGED_NS: u64 = 150;
/// Under 429 + `Retry-After`: delivered events/s at least 0.95x the baseline that sleeps it.
const TARGET_THROTTLED: f64 = 0.95;
/// Under 503: first-attempt events/s at least 0.8x the same store's clean twin (same sitting).
const TARGET_FIRST_ATTEMPTS: f64 = 0.8;

/// Which store an SDK phase uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StoreKind {
    Memory,
    Normal,
    Full,
}

impl StoreKind {
    const ALL: [StoreKind; 3] = [StoreKind::Memory, StoreKind::Normal, StoreKind::Full];

    /// The name in `TRACKWAY_BENCH_PHASES` / `TRACKWAY_BENCH_STORE`.
    fn name(self) -> &'static str {
        match self {
            StoreKind::Memory => "memory",
            StoreKind::Normal => "normal",
            StoreKind::Full => "full",
        }
    }

    fn label(self) -> &'static str {
        match self {
            StoreKind::Memory => "in-memory SDK",
            StoreKind::Normal => "durable NORMAL",
            StoreKind::Full => "durable FULL",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        StoreKind::ALL.into_iter().find(|k| k.name() == s)
    }

    fn durable(self) -> bool {
        self != StoreKind::Memory
    }
}

fn main() -> anyhow::Result<()> {
    if std::env::args().skip(1).any(|a| a == "--help" || a == "-h") {
        println!("{HELP}");
        return Ok(());
    }
    match std::env::var(ROLE_ENV).ok().as_deref() {
        None | Some("") => orchestrate(),
        Some("sink") => run_sink(),
        Some("sdk") => run_sdk_phase(),
        Some("baseline") => run_baseline_phase(),
        Some(other) => bail!("unknown {ROLE_ENV}={other:?} (expected sink, sdk or baseline)"),
    }
}

// ================================================================================================
// The event, as the SDK builds it and as the baseline / serde comparison serialize it
// ================================================================================================

fn amount(i: usize) -> f64 {
    10.0 + (i % 200) as f64 * 0.25
}

fn items(i: usize) -> i64 {
    (i % 7) as i64 + 1
}

/// The same JSON shape the SDK sends (trackway's wire format for a server-mode track event).
#[derive(Serialize)]
struct WireEvent<'a> {
    id: MessageId,
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'static str,
    timestamp: Timestamp,
    properties: WireProps<'a>,
    identity: WireIdentity<'a>,
    context: &'a WireContext,
}

#[derive(Serialize)]
struct WireProps<'a> {
    bench_seq: u64,
    plan: &'a str,
    path: &'a str,
    amount: f64,
    items: i64,
}

#[derive(Serialize)]
struct WireIdentity<'a> {
    user_id: &'a str,
}

#[derive(Serialize)]
struct WireContext {
    library: &'static str,
    library_version: &'static str,
    os: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    locale: Option<String>,
}

impl WireContext {
    /// What the client puts in `context` by default (same locale rule as the SDK).
    fn like_the_sdk() -> Self {
        let locale = ["LC_ALL", "LANG"].iter().find_map(|k| {
            let v = std::env::var(k).ok()?;
            let tag = v.split('.').next()?.replace('_', "-");
            (!tag.is_empty() && tag != "C" && tag != "POSIX").then_some(tag)
        });
        WireContext {
            library: "trackway",
            library_version: env!("CARGO_PKG_VERSION"),
            os: std::env::consts::OS,
            locale,
        }
    }
}

fn wire_event<'a>(i: usize, users: &'a [String], context: &'a WireContext) -> WireEvent<'a> {
    let timestamp = Timestamp::now();
    WireEvent {
        id: MessageId::new_v7(timestamp),
        kind: "track",
        name: "bench_event",
        timestamp,
        properties: WireProps {
            bench_seq: i as u64,
            plan: PLANS[i % PLANS.len()],
            path: PAGE_PATH,
            amount: amount(i),
            items: items(i),
        },
        identity: WireIdentity { user_id: &users[i % USERS] },
        context,
    }
}

fn users() -> Vec<String> {
    (0..USERS).map(|u| format!("user-{u}")).collect()
}

// ================================================================================================
// Orchestrator
// ================================================================================================

fn parse_n() -> anyhow::Result<usize> {
    let n = match flag_or_env("--n", N_ENV)? {
        Some(v) => v.parse().with_context(|| format!("N {v:?} is not a number"))?,
        None => DEFAULT_N,
    };
    if n == 0 {
        bail!("N must be at least 1");
    }
    Ok(n)
}

/// An injected fault: every [`FAIL_EVERY`]th request fails with this status (429 with
/// `Retry-After: 1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Unavailable,
    TooMany,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Unavailable => "503",
            Fault::TooMany => "429",
        }
    }

    fn parse(s: &str) -> anyhow::Result<Self> {
        match s {
            "503" => Ok(Fault::Unavailable),
            "429" => Ok(Fault::TooMany),
            other => bail!("unknown fault {other:?} (expected 503 or 429)"),
        }
    }

    fn faults(self) -> trackway_collector::Faults {
        let mut f = trackway_collector::Faults { fail_every: Some(FAIL_EVERY), ..Default::default() };
        if self == Fault::TooMany {
            f.fail_status = 429;
            f.retry_after = Some("1".into());
        }
        f
    }

    fn describe(self) -> String {
        match self {
            Fault::Unavailable => format!("every {FAIL_EVERY}th request answered 503"),
            Fault::TooMany => format!("every {FAIL_EVERY}th request answered 429 + Retry-After: 1"),
        }
    }
}

/// The value of `--flag V` / `--flag=V` (the last one), else of the environment variable `env`
/// (empty counts as unset). cargo bench passes other arguments (`--bench`, a filter): skipped.
fn flag_or_env(flag: &str, env: &str) -> anyhow::Result<Option<String>> {
    let mut value = std::env::var(env).ok().filter(|v| !v.is_empty());
    let mut args = std::env::args().skip(1);
    let prefix = format!("{flag}=");
    while let Some(arg) = args.next() {
        if arg == flag {
            value = Some(args.next().with_context(|| format!("{flag} needs a value"))?);
        } else if let Some(v) = arg.strip_prefix(&prefix) {
            value = Some(v.to_owned());
        }
    }
    Ok(value)
}

/// The fault to inject: `--fault F` or `TRACKWAY_BENCH_FAULT`.
fn parse_fault() -> anyhow::Result<Option<Fault>> {
    flag_or_env("--fault", FAULT_ENV)?.as_deref().map(Fault::parse).transpose()
}

/// The caller's pace in events/s: `--rate R` or `TRACKWAY_BENCH_RATE` (`None`: a tight loop).
fn parse_rate() -> anyhow::Result<Option<u64>> {
    let Some(rate) = flag_or_env("--rate", RATE_ENV)? else { return Ok(None) };
    match rate.parse::<u64>() {
        Ok(r) if r > 0 => Ok(Some(r)),
        _ => bail!("the rate {rate:?} is not a positive number of events per second"),
    }
}

/// The phases to run: `TRACKWAY_BENCH_PHASES` (comma-separated `memory`, `normal`, `full`, `baseline`;
/// `sdk` is `memory`), default all.
struct Phases {
    stores: Vec<StoreKind>,
    baseline: bool,
}

fn parse_phases() -> anyhow::Result<Phases> {
    let Ok(list) = std::env::var(PHASES_ENV) else {
        return Ok(Phases { stores: StoreKind::ALL.to_vec(), baseline: true });
    };
    let mut phases = Phases { stores: Vec::new(), baseline: false };
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match name {
            "baseline" => phases.baseline = true,
            "sdk" => phases.stores.push(StoreKind::Memory),
            other => phases.stores.push(StoreKind::parse(other).with_context(|| {
                format!("{PHASES_ENV}: unknown phase {other:?} (expected memory, normal, full, baseline)")
            })?),
        }
    }
    // Always in the table's order, each once.
    phases.stores = StoreKind::ALL.into_iter().filter(|k| phases.stores.contains(k)).collect();
    if phases.stores.is_empty() && !phases.baseline {
        bail!("{PHASES_ENV}={list:?} selects no phase");
    }
    Ok(phases)
}

/// A directory removed when dropped (also when the phase fails).
struct PhaseDir(PathBuf);

impl Drop for PhaseDir {
    fn drop(&mut self) {
        remove_dir_if_exists(&self.0);
    }
}

fn remove_dir_if_exists(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        eprintln!("warning: could not remove {}: {e}", dir.display());
    }
}

/// An SDK phase's results with its collector's counts.
struct SdkRun {
    kind: StoreKind,
    result: PhaseResult,
    sink: SinkCounts,
}

/// The SDK runs of one bench run: one per store, and under 503 each store's clean twin.
struct SdkRuns {
    runs: Vec<SdkRun>,
    clean_twins: Vec<SdkRun>,
}

fn orchestrate() -> anyhow::Result<()> {
    let n = parse_n()?;
    let phases = parse_phases()?;
    let fault = parse_fault()?;
    let rate = parse_rate()?;
    let queue_capacity = std::env::var(QUEUE_ENV).ok();
    let http = reqwest::blocking::Client::builder().no_proxy().build().context("building the stats client")?;

    // The SDK phases, one per store (each its own process, its own collector, its own directory).
    // Under 503 each store also runs once clean just before (its *clean twin*): the 503 target
    // compares first attempts with a clean run's rate, and that ratio means something only
    // between runs of one sitting (the host's speed moves between sittings).
    let mut runs = Vec::new();
    let mut clean_twins = Vec::new();
    for kind in phases.stores {
        let sdk_run = |fault: Option<Fault>| -> anyhow::Result<SdkRun> {
            let dir = kind.durable().then(|| {
                PhaseDir(std::env::temp_dir().join(format!("trackway-bench-{}-{}", std::process::id(), kind.name())))
            });
            let mut env = vec![(STORE_ENV, kind.name().to_owned())];
            if let Some(dir) = &dir {
                env.push((STORE_DIR_ENV, dir.0.display().to_string()));
            }
            let sink = SinkProcess::start(fault)?;
            let result = run_phase("sdk", n, &sink.url, queue_capacity.as_deref(), rate, &env)?;
            let counts = sink.stats(&http)?;
            sink.stop()?;
            drop(dir);
            Ok(SdkRun { kind, result, sink: counts })
        };
        if fault == Some(Fault::Unavailable) {
            clean_twins.push(sdk_run(None)?);
        }
        runs.push(sdk_run(fault)?);
    }

    // The baseline (its own process, its own collector).
    let base = if phases.baseline {
        let sink = SinkProcess::start(fault)?;
        let result = run_phase("baseline", n, &sink.url, None, None, &[])?;
        let counts = sink.stats(&http)?;
        sink.stop()?;
        Some((result, counts))
    } else {
        None
    };

    // serde_json::to_vec of the same event, per call (in this process; no RSS taken).
    let serde_costs = measure_serde(n)?;

    let runs = SdkRuns { runs, clean_twins };
    print_table(n, queue_capacity.as_deref(), fault, rate, &runs, base.as_ref(), &serde_costs)
}

/// Runs the `role` phase in a child process (`common::run_child`, which parses its `RESULT`
/// lines) with its inputs in the environment.
fn run_phase(
    role: &str,
    n: usize,
    url: &str,
    queue_capacity: Option<&str>,
    rate: Option<u64>,
    env: &[(&str, String)],
) -> anyhow::Result<PhaseResult> {
    let mut all = vec![(ROLE_ENV, role.to_owned()), (URL_ENV, url.to_owned()), (N_ENV, n.to_string())];
    all.extend(queue_capacity.map(|q| (QUEUE_ENV, q.to_owned())));
    // Empty when not paced: the child must not inherit a rate the orchestrator's flag overrode.
    all.push((RATE_ENV, rate.map_or_else(String::new, |r| r.to_string())));
    all.extend(env.iter().cloned());
    run_child(&format!("the {role} phase"), &all)
}

/// A `trackway-collector` in sink mode in its own process: this binary with `ROLE=sink`.
struct SinkProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    url: String,
}

/// The collector's `/_trackway/api/stats`.
#[derive(Debug, Clone, Copy, Default)]
struct SinkCounts {
    requests: u64,
    events: u64,
    bytes: u64,
    json_errors: u64,
}

impl SinkProcess {
    fn start(fault: Option<Fault>) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating the bench binary")?;
        let mut child = Command::new(exe)
            .env(ROLE_ENV, "sink")
            .env(FAULT_ENV, fault.map_or("", Fault::name))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the collector process")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("collector stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).context("reading the collector's address")?;
        let Some(url) = line.trim().strip_prefix("listening on ") else {
            bail!("unexpected first line from the collector: {line:?}");
        };
        Ok(SinkProcess { url: url.to_owned(), child, stdin })
    }

    fn stats(&self, http: &reqwest::blocking::Client) -> anyhow::Result<SinkCounts> {
        let body = http
            .get(format!("{}/_trackway/api/stats", self.url))
            .send()
            .and_then(reqwest::blocking::Response::error_for_status)
            .and_then(reqwest::blocking::Response::bytes)
            .context("asking the collector for its stats")?;
        let v: serde_json::Value = serde_json::from_slice(&body).context("parsing the collector's stats")?;
        let field = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
        Ok(SinkCounts {
            requests: field("requests"),
            events: field("events"),
            bytes: field("bytes"),
            json_errors: field("json_errors"),
        })
    }

    fn stop(mut self) -> anyhow::Result<()> {
        drop(self.stdin.take());
        let status = self.child.wait().context("waiting for the collector")?;
        if !status.success() {
            bail!("the collector exited with {status}");
        }
        Ok(())
    }
}

impl Drop for SinkProcess {
    fn drop(&mut self) {
        // Closing stdin stops it (no-op after `stop`).
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

fn run_sink() -> anyhow::Result<()> {
    let mut builder = trackway_collector::Collector::builder().sink(true);
    if let Some(fault) = parse_fault()? {
        builder = builder.faults(fault.faults());
    }
    let collector = builder.start().context("starting the collector")?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {}", collector.url(""))?;
    stdout.flush()?;
    drop(stdout);
    // Serve until stdin reaches end of file.
    std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink()).context("reading stdin")?;
    collector.shutdown();
    Ok(())
}

// ================================================================================================
// Phase: the SDK
// ================================================================================================

#[derive(Default)]
struct LoopCounts {
    accepted: u64,
    queue_full: u64,
    other_errors: u64,
    first_other_error: Option<String>,
}

/// How far ahead of its schedule a paced caller may get before it sleeps: sleeping for less than
/// this costs more than the wait (timer slack), so the caller runs in short bursts at its full
/// speed and holds the rate on average.
const PACE_SLACK: Duration = Duration::from_micros(200);

/// The timed loop of `n` calls. Each call's cost (the time around building `props!` and calling
/// `client.track`) goes into `costs`. With `rate`, event `i` is not made before `i / rate`
/// seconds after the start.
#[inline(never)]
fn caller_loop(client: &Client, users: &[String], n: usize, costs: &mut Costs, rate: Option<u64>) -> LoopCounts {
    let mut counts = LoopCounts::default();
    let start = Instant::now();
    for i in 0..n {
        if let Some(rate) = rate {
            let due = Duration::from_nanos((i as u64).saturating_mul(1_000_000_000) / rate);
            let ahead = due.saturating_sub(start.elapsed());
            if ahead > PACE_SLACK {
                std::thread::sleep(ahead);
            }
        }
        let user = users[i % USERS].as_str();
        let plan = PLANS[i % PLANS.len()];
        let started = Instant::now();
        // ---- timed region: building the properties + the track call ----
        let result = client.track(
            user,
            "bench_event",
            props! {
                "bench_seq" => i as i64,
                "plan" => plan,
                "path" => PAGE_PATH,
                "amount" => amount(i),
                "items" => items(i),
            },
        );
        // ---- end of timed region ----
        let cost = nanos(started.elapsed());
        costs.all.record(cost);
        match result {
            Ok(_) => {
                counts.accepted += 1;
                costs.accepted.record(cost);
            }
            Err(Error::QueueFull) => counts.queue_full += 1,
            Err(e) => {
                counts.other_errors += 1;
                counts.first_other_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    counts
}

/// The caller's costs: of all calls, and of the calls accepted (not `QueueFull`).
struct Costs {
    all: CostHistogram,
    accepted: CostHistogram,
}

/// Call costs in 1 ns buckets up to `BUCKETS` ns, the rare slower ones kept as they are: memory
/// fixed whatever N is, so peak RSS compares across N (a `Vec` of every cost added 8 MB at
/// 1 000 000 events, which the "1 000 000 within 5 MB of 200 000" target would have counted as
/// the SDK's).
struct CostHistogram {
    buckets: Vec<u32>,
    slow: Vec<u64>,
    count: u64,
    sum: u64,
}

impl CostHistogram {
    const BUCKETS: usize = 1 << 16;

    /// Touched before the loop (a zeroed allocation is mapped lazily): no page fault lands in a
    /// timed region.
    fn new() -> Self {
        let mut buckets = vec![1u32; Self::BUCKETS];
        buckets.fill(0);
        CostHistogram { buckets, slow: Vec::with_capacity(4096), count: 0, sum: 0 }
    }

    fn record(&mut self, ns: u64) {
        self.count += 1;
        self.sum += ns;
        match self.buckets.get_mut(ns as usize) {
            Some(b) => *b += 1,
            None => self.slow.push(ns),
        }
    }

    /// The cost at quantile `q` (0..=1): the smallest cost with at least `q` of the calls at or
    /// below it.
    fn quantile(&mut self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let want = ((self.count as f64 * q).ceil() as u64).clamp(1, self.count);
        let mut seen = 0u64;
        for (ns, &c) in self.buckets.iter().enumerate() {
            seen += u64::from(c);
            if seen >= want {
                return ns as u64;
            }
        }
        self.slow.sort_unstable();
        self.slow[(want - seen - 1) as usize]
    }

    fn max(&mut self) -> u64 {
        self.quantile(1.0)
    }

    fn mean(&self) -> u64 {
        self.sum / self.count.max(1)
    }

    fn over(&self, ns: u64) -> u64 {
        let below: u64 = self.buckets.iter().take(ns as usize + 1).map(|&c| u64::from(c)).sum();
        self.count - below
    }
}

/// Highest channel occupancy, store backlog and store file size (database + WAL) seen by a
/// sampler thread (every 2 ms), and the times it saw things change (since the loop started).
#[derive(Default, Clone, Copy)]
struct Backlog {
    max_in_channel: u64,
    max_undelivered: u64,
    max_file_bytes: u64,
    /// Most events seen in the ring (accepted, not yet drained into the store: enqueued minus the
    /// destination's delivered and pending, which the drain counts).
    max_in_ring: u64,
    /// Longest time the ring held events while no drain took any.
    longest_drain_gap: Duration,
    /// When `persisted` first and last moved.
    first_persist: Option<Duration>,
    last_persist: Option<Duration>,
    /// When, after the loop, every accepted event had been delivered or put to retry once: the
    /// last first attempt was answered.
    first_attempts_done: Option<Duration>,
}

/// What the sampler watches: the stop flag, the loop's end, and the loop's start.
struct SamplerControl {
    stop: AtomicBool,
    loop_done: AtomicBool,
    started: Instant,
}

fn sample_backlog(
    client: Client,
    db: Option<PathBuf>,
    control: Arc<SamplerControl>,
) -> std::thread::JoinHandle<Backlog> {
    std::thread::Builder::new()
        .name(SAMPLER.into())
        .spawn(move || {
            let mut b = Backlog::default();
            // The timeline, when asked for: written after the run, so the file does not slow it.
            let trace = std::env::var_os(TRACE_ENV).map(PathBuf::from);
            let mut lines = String::new();
            let (mut persisted, mut drained, mut drained_at) = (0, 0, Duration::ZERO);
            while !control.stop.load(Ordering::Relaxed) {
                let loop_done = control.loop_done.load(Ordering::Relaxed);
                let s = client.stats();
                let now = control.started.elapsed();
                let delivered: u64 = s.destinations.iter().map(|d| d.delivered).sum();
                let retried: u64 = s.destinations.iter().map(|d| d.retried).sum();
                let pending: u64 = s.destinations.iter().map(|d| d.pending).sum();
                b.max_in_channel = b.max_in_channel.max(s.enqueued.saturating_sub(s.persisted));
                b.max_undelivered = b.max_undelivered.max(s.enqueued.saturating_sub(delivered));
                let in_ring = s.enqueued.saturating_sub(delivered + pending);
                b.max_in_ring = b.max_in_ring.max(in_ring);
                if delivered + pending != drained || in_ring == 0 {
                    (drained, drained_at) = (delivered + pending, now);
                } else {
                    b.longest_drain_gap = b.longest_drain_gap.max(now - drained_at);
                }
                if s.persisted != persisted {
                    persisted = s.persisted;
                    b.first_persist.get_or_insert(now);
                    b.last_persist = Some(now);
                }
                if loop_done && b.first_attempts_done.is_none() && delivered + retried >= s.enqueued {
                    b.first_attempts_done = Some(now);
                }
                if let Some(db) = &db {
                    b.max_file_bytes = b.max_file_bytes.max(store_file_bytes(db));
                }
                if trace.is_some() {
                    use std::fmt::Write as _;
                    let rss = proc_status_bytes("VmRSS") / 1024;
                    let (anon, file) = (proc_status_bytes("RssAnon") / 1024, proc_status_bytes("RssFile") / 1024);
                    let _ = writeln!(
                        lines,
                        "{}\t{rss}\t{anon}\t{file}\t{}\t{delivered}\t{pending}\t{}",
                        now.as_millis(),
                        s.enqueued,
                        s.dropped.queue_full
                    );
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            if let Some(dir) = trace {
                let store = std::env::var(STORE_ENV).unwrap_or_else(|_| "memory".to_owned());
                let header = "ms\trss_kib\tanon_kib\tfile_kib\tenqueued\tdelivered\tpending\tqueue_full\n";
                if let Err(e) = std::fs::write(dir.join(format!("trace-{store}.tsv")), format!("{header}{lines}")) {
                    eprintln!("warning: could not write the trace: {e}");
                }
            }
            b
        })
        .expect("starting the sampler thread")
}

/// The sampler thread's name (its CPU is left out of the SDK's).
const SAMPLER: &str = "bench-sampler";

fn cpu_of_sampler() -> u64 {
    common::cpu_of(SAMPLER)
}

/// `path` with `suffix` appended to its file name (`outbox.db` -> `outbox.db-wal`).
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Size of the store's database file plus its WAL (0 for a missing file).
fn store_file_bytes(db: &Path) -> u64 {
    let len = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    len(db) + len(&with_suffix(db, "-wal"))
}

/// This process's CPU time so far (ns), threads that ended included (`/proc/self/schedstat`
/// covers only the main thread, so the live threads are summed; a thread that ended is in
/// `getrusage`-style totals only: read from `/proc/self/stat`, in clock ticks).
fn process_cpu_ns() -> u64 {
    let live: u64 = common::thread_cpu_ns().iter().map(|(_, ns)| ns).sum();
    let ticks = std::fs::read_to_string("/proc/self/stat").ok().and_then(|stat| {
        // After the command name in parentheses: state is field 3, utime 14, stime 15.
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    });
    // USER_HZ is 100 on Linux: 10 ms per tick.
    live.max(ticks.unwrap_or(0) * 10_000_000)
}

/// The CPU the bench's own per-call work costs (two clock reads and two histogram records, as
/// `caller_loop` does around each call), in ns per call, measured on this thread over `n`
/// calls. The baseline does none of it, so it is the SDK's CPU per event minus this that
/// compares with the baseline's.
fn timing_cpu_per_call_ns(n: usize) -> f64 {
    let mut costs = Costs { all: CostHistogram::new(), accepted: CostHistogram::new() };
    let before = common::own_cpu_ns();
    for i in 0..n {
        let started = Instant::now();
        black_box(i);
        let cost = nanos(started.elapsed());
        costs.all.record(cost);
        costs.accepted.record(cost);
    }
    black_box(&costs);
    common::own_cpu_ns().saturating_sub(before) as f64 / n.max(1) as f64
}

fn timer_overhead_ns() -> u64 {
    let mut v = vec![0u64; 100_000];
    for slot in &mut v {
        let t = Instant::now();
        *slot = nanos(black_box(t).elapsed());
    }
    v.sort_unstable();
    v[v.len() / 2]
}

fn env_usize(key: &str) -> anyhow::Result<Option<usize>> {
    match std::env::var(key) {
        Ok(v) => Ok(Some(v.parse().with_context(|| format!("{key}={v:?} is not a number"))?)),
        Err(_) => Ok(None),
    }
}

fn run_sdk_phase() -> anyhow::Result<()> {
    let url = std::env::var(URL_ENV).with_context(|| format!("{URL_ENV} is not set"))?;
    let n = env_usize(N_ENV)?.unwrap_or(DEFAULT_N);
    let rate = parse_rate()?;
    let kind = match std::env::var(STORE_ENV) {
        Ok(v) => StoreKind::parse(&v).with_context(|| {
            format!("{STORE_ENV}={v:?}: expected {}", StoreKind::ALL.map(StoreKind::name).join(", "))
        })?,
        Err(_) => StoreKind::Memory,
    };
    // A fresh directory for the durable store, removed at the end of the phase.
    let dir = kind.durable().then(|| {
        PhaseDir(std::env::var_os(STORE_DIR_ENV).map_or_else(
            || std::env::temp_dir().join(format!("trackway-bench-{}-{}", std::process::id(), kind.name())),
            PathBuf::from,
        ))
    });
    if let Some(dir) = &dir {
        remove_dir_if_exists(&dir.0);
    }
    let db = dir.as_ref().map(|d| d.0.join("outbox.db"));
    let users = users();
    let builder = Client::builder().destination(JsonHttp::new(format!("{url}{EVENT_PATH}")).batch_size(BATCH));
    let staging = env_usize(STAGING_ENV)?.map_or(trackway::store::DEFAULT_STAGING_LIMIT, |mib| (mib as u64) << 20);
    let sqlite = |db: &PathBuf| -> anyhow::Result<trackway::store::SqliteStore> {
        let store = trackway::store::SqliteStore::new(db).staging_limit(staging);
        Ok(match env_usize(MEMORY_ENV)? {
            Some(mib) => store.memory_limit((mib as u64) << 20),
            None => store,
        })
    };
    let mut builder = match (kind, &db) {
        (StoreKind::Normal, Some(db)) => builder.store(sqlite(db)?),
        (StoreKind::Full, Some(db)) => builder.store(sqlite(db)?.synchronous(trackway::store::Synchronous::Full)),
        _ => builder.store(trackway::store::MemoryStore::new()),
    };
    if let Some(q) = env_usize(QUEUE_ENV)? {
        builder = builder.queue_capacity(q);
    }
    let client = builder.build().context("building the client")?;
    let rss_before = proc_status_bytes("VmRSS");
    let mut costs = Costs { all: CostHistogram::new(), accepted: CostHistogram::new() };

    let control = Arc::new(SamplerControl {
        stop: AtomicBool::new(false),
        loop_done: AtomicBool::new(false),
        started: Instant::now(),
    });
    let sampler = sample_backlog(client.clone(), db.clone(), control.clone());

    let cpu_before = process_cpu_ns();
    let worker_before = common::cpu_of("trackway-worker");
    let started = control.started;
    let counts = caller_loop(&client, &users, n, &mut costs, rate);
    let loop_elapsed = started.elapsed();
    control.loop_done.store(true, Ordering::Relaxed);
    let flush = client.flush(Duration::from_secs(300));
    let elapsed = started.elapsed();
    // The sampler thread's CPU is the bench's, not the SDK's.
    let cpu = process_cpu_ns().saturating_sub(cpu_before).saturating_sub(cpu_of_sampler());
    let worker_cpu = common::cpu_of("trackway-worker").saturating_sub(worker_before);
    // Right after flush, before shutdown: the WAL may still hold the data.
    let file_after_flush = db.as_deref().map_or(0, store_file_bytes);

    control.stop.store(true, Ordering::Relaxed);
    let backlog = sampler.join().unwrap_or_default();
    let hwm = proc_status_bytes("VmHWM");
    let rss_after = proc_status_bytes("VmRSS");
    let stats = client.stats();
    let shutdown = client.shutdown(Duration::from_secs(10));
    let file_after_shutdown = db.as_deref().map_or(0, store_file_bytes);
    drop(client);
    let file_after_drop = db.as_deref().map_or(0, store_file_bytes);
    let wal_after_drop =
        db.as_deref().map_or(0, |db| std::fs::metadata(with_suffix(db, "-wal")).map_or(0, |m| m.len()));
    drop(dir);
    let timer = timer_overhead_ns();
    let timing_cpu = timing_cpu_per_call_ns(n);

    let (a50, a99) = (costs.accepted.quantile(0.50), costs.accepted.quantile(0.99));
    let all = &mut costs.all;
    let (p50, p99, p999, max) = (all.quantile(0.50), all.quantile(0.99), all.quantile(0.999), all.max());
    let dest = stats.destinations.first().cloned().unwrap_or_default();
    let mut out = std::io::stdout().lock();
    let mut put = |k: &str, v: &dyn std::fmt::Display| writeln!(out, "RESULT {k}={v}");
    put("elapsed_ns", &nanos(elapsed))?;
    put("loop_ns", &nanos(loop_elapsed))?;
    put("p50", &p50)?;
    put("p99", &p99)?;
    put("p999", &p999)?;
    put("p50_accepted", &a50)?;
    put("p99_accepted", &a99)?;
    put("max", &max)?;
    put("mean", &costs.all.mean())?;
    put("over_1us", &costs.all.over(TARGET_P99_NS))?;
    put("timer_ns", &timer)?;
    put("timing_cpu_ns", &format!("{timing_cpu:.1}"))?;
    put("accepted", &counts.accepted)?;
    put("track_queue_full", &counts.queue_full)?;
    put("track_other_errors", &counts.other_errors)?;
    put("first_other_error", &counts.first_other_error.unwrap_or_default())?;
    put("enqueued", &stats.enqueued)?;
    put("persisted", &stats.persisted)?;
    put("dropped_queue_full", &stats.dropped.queue_full)?;
    put("dropped_store_full", &stats.dropped.store_full)?;
    put("dropped_disk_full", &stats.dropped.disk_full)?;
    put("dropped_store_error", &stats.dropped.store_error)?;
    put("delivered", &dest.delivered)?;
    put("requests", &dest.requests)?;
    put("failed_requests", &dest.failed_requests)?;
    put("retried", &dest.retried)?;
    put("pending", &dest.pending)?;
    put("flush", &flush.map_or_else(|e| e.to_string(), |_| "ok".to_owned()))?;
    put("shutdown", &shutdown.map_or_else(|e| e.to_string(), |_| "ok".to_owned()))?;
    put("hwm", &hwm)?;
    put("rss_before", &rss_before)?;
    put("rss_after", &rss_after)?;
    put("max_in_channel", &backlog.max_in_channel)?;
    put("max_undelivered", &backlog.max_undelivered)?;
    put("cpu_ns", &cpu)?;
    put("worker_cpu_ns", &worker_cpu)?;
    put("max_in_ring", &backlog.max_in_ring)?;
    put("longest_drain_gap_us", &backlog.longest_drain_gap.as_micros())?;
    let persist_span = backlog.last_persist.zip(backlog.first_persist).map_or(Duration::ZERO, |(l, f)| l - f);
    put("persist_span_ns", &nanos(persist_span))?;
    put("first_attempts_ns", &backlog.first_attempts_done.map_or(0, nanos))?;
    put("store", &kind.name())?;
    put("file_max", &backlog.max_file_bytes.max(file_after_flush))?;
    put("file_after_flush", &file_after_flush)?;
    put("file_after_shutdown", &file_after_shutdown)?;
    put("file_after_drop", &file_after_drop)?;
    put("wal_after_drop", &wal_after_drop)?;
    Ok(())
}

fn percentiles(sorted: &[u64]) -> (u64, u64, u64, u64) {
    let at = |q: f64| sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)];
    (at(0.50), at(0.99), at(0.999), sorted[sorted.len() - 1])
}

// ================================================================================================
// Phase: the baseline (serialize + POST batches of 100 with hyper HTTP/1, one connection, one thread)
// ================================================================================================

fn run_baseline_phase() -> anyhow::Result<()> {
    let url = std::env::var(URL_ENV).with_context(|| format!("{URL_ENV} is not set"))?;
    let n = env_usize(N_ENV)?.unwrap_or(DEFAULT_N);
    let users = users();
    let context = WireContext::like_the_sdk();
    // One thread: the runtime is current-thread and the connection task runs on it too.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("building the runtime")?;
    runtime.block_on(async {
        let mut conn = HyperConnection::open(&url).await?;
        let mut requests = 0u64;
        let mut failed = 0u64;
        let mut body: Vec<u8> = Vec::new();
        let cpu_before = process_cpu_ns();
        let started = Instant::now();
        for first in (0..n).step_by(BATCH) {
            body.clear();
            body.push(b'[');
            for i in first..(first + BATCH).min(n) {
                if i > first {
                    body.push(b',');
                }
                serde_json::to_writer(&mut body, &wire_event(i, &users, &context)).context("serializing")?;
            }
            body.push(b']');
            let body = bytes::Bytes::copy_from_slice(&body);
            loop {
                requests += 1;
                match conn.post(EVENT_PATH, body.clone()).await? {
                    Answer::Ok => break,
                    // Resent at once (the cheapest retry), or after the pause the server asked for.
                    Answer::Failed { retry_after } => {
                        failed += 1;
                        if let Some(pause) = retry_after {
                            tokio::time::sleep(pause).await;
                        }
                    }
                }
            }
        }
        let elapsed = started.elapsed();
        let mut out = std::io::stdout().lock();
        writeln!(out, "RESULT elapsed_ns={}", nanos(elapsed))?;
        writeln!(out, "RESULT cpu_ns={}", process_cpu_ns().saturating_sub(cpu_before))?;
        writeln!(out, "RESULT requests={requests}")?;
        writeln!(out, "RESULT failed_requests={failed}")?;
        writeln!(out, "RESULT hwm={}", proc_status_bytes("VmHWM"))?;
        Ok(())
    })
}

/// hyper's HTTP/1 client on one keep-alive connection: the baseline's sender.
struct HyperConnection {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    authority: String,
}

impl HyperConnection {
    /// Connects to `url` (`http://host:port`, as the sink prints it).
    async fn open(url: &str) -> anyhow::Result<Self> {
        let authority = url.strip_prefix("http://").with_context(|| format!("not an http:// URL: {url}"))?.to_owned();
        let stream =
            tokio::net::TcpStream::connect(&authority).await.with_context(|| format!("connecting to {authority}"))?;
        stream.set_nodelay(true).context("TCP_NODELAY")?;
        let (sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .context("HTTP/1 handshake")?;
        tokio::spawn(connection);
        Ok(HyperConnection { sender, authority })
    }

    /// POSTs a JSON body, reads the whole answer.
    async fn post(&mut self, path: &str, body: bytes::Bytes) -> anyhow::Result<Answer> {
        use http_body_util::BodyExt;
        let request = http::Request::post(path)
            .header(http::header::HOST, &self.authority)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(body))
            .context("building the request")?;
        self.sender.ready().await.context("the connection closed")?;
        let Ok(response) = self.sender.send_request(request).await else {
            return Ok(Answer::Failed { retry_after: None });
        };
        let ok = response.status().is_success();
        // Delay-seconds only: what the collector sends.
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let read = response.into_body().collect().await.is_ok();
        Ok(if ok && read { Answer::Ok } else { Answer::Failed { retry_after } })
    }
}

/// How the baseline's request went.
enum Answer {
    /// A 2xx, read in full.
    Ok,
    /// Anything else; resend, after `retry_after` if the server said so.
    Failed { retry_after: Option<Duration> },
}

// ================================================================================================
// serde_json::to_vec of the same event, per call
// ================================================================================================

fn measure_serde(n: usize) -> anyhow::Result<Vec<u64>> {
    let users = users();
    let context = WireContext::like_the_sdk();
    let mut costs = vec![u64::MAX; n];
    for (i, slot) in costs.iter_mut().enumerate() {
        let event = black_box(wire_event(i, &users, &context));
        let started = Instant::now();
        let bytes = serde_json::to_vec(&event).context("serializing")?;
        *slot = nanos(started.elapsed());
        black_box(bytes);
    }
    costs.sort_unstable();
    Ok(costs)
}

// ================================================================================================
// The table
// ================================================================================================

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB ({:.1} MB)", bytes as f64 / (1024.0 * 1024.0), bytes as f64 / 1e6)
}

fn mib_short(bytes: u64) -> String {
    format!("{:.2}", bytes as f64 / (1024.0 * 1024.0))
}

fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "MISS" }
}

/// "Unchanged": within 20 % or 150 ns of the in-memory store's value.
fn unchanged(value: u64, reference: u64) -> bool {
    value <= reference + UNCHANGED_NS || value as f64 <= reference as f64 * (1.0 + UNCHANGED_FRACTION)
}

/// Every target checked, for the summary line.
#[derive(Default)]
struct Checks(Vec<(String, bool)>);

impl Checks {
    fn check(&mut self, what: String, pass: bool) -> &'static str {
        self.0.push((what, pass));
        verdict(pass)
    }
}

/// One SDK phase's numbers, as the table uses them.
struct SdkCol<'a> {
    kind: StoreKind,
    r: &'a PhaseResult,
    sink: &'a SinkCounts,
    secs: f64,
    rate: f64,
    p50: u64,
    p99: u64,
    /// Events the collector took in answers that worked: its count, which includes the events of
    /// the requests it failed, less those (each failed request's events were put to retry).
    delivered: u64,
    lost: u64,
}

fn print_table(
    n: usize,
    queue_capacity: Option<&str>,
    fault: Option<Fault>,
    rate: Option<u64>,
    SdkRuns { runs, clean_twins }: &SdkRuns,
    base: Option<&(PhaseResult, SinkCounts)>,
    serde_costs: &[u64],
) -> anyhow::Result<()> {
    let n64 = n as u64;
    let secs = |ns: u64| ns as f64 / 1e9;
    let mut cols = Vec::new();
    for run in runs {
        let s = secs(run.result.get("elapsed_ns")?);
        let delivered = run.sink.events.saturating_sub(run.result.get("retried")?);
        cols.push(SdkCol {
            kind: run.kind,
            r: &run.result,
            sink: &run.sink,
            secs: s,
            rate: delivered as f64 / s,
            p50: run.result.get("p50")?,
            p99: run.result.get("p99")?,
            delivered,
            lost: n64.saturating_sub(delivered),
        });
    }
    let col = |k: StoreKind| cols.iter().find(|c| c.kind == k);
    let mem = col(StoreKind::Memory);
    let base_secs = base.map(|(r, _)| r.get("elapsed_ns").map(secs)).transpose()?;
    // The baseline resends each batch until it is taken: it delivered its N events, and the
    // collector's count beyond N is the events of the requests it failed.
    let base_delivered = |sink: &SinkCounts| if fault.is_some() { sink.events.min(n64) } else { sink.events };
    let base_rate = base.zip(base_secs).map(|((_, sink), s)| base_delivered(sink) as f64 / s);
    let (s50, s99, _, smax) = percentiles(serde_costs);
    let queue = queue_capacity.map_or_else(|| format!("{SDK_DEFAULT_QUEUE_CAPACITY} (default)"), str::to_owned);
    let mut checks = Checks::default();

    // One cell per SDK column ("-" for a phase not run), from a fallible function of the column.
    let per_col = |f: &mut dyn FnMut(&SdkCol<'_>) -> anyhow::Result<String>| -> anyhow::Result<[String; 3]> {
        let mut out: [String; 3] = Default::default();
        for (slot, kind) in out.iter_mut().zip(StoreKind::ALL) {
            *slot = match col(kind) {
                Some(c) => f(c)?,
                None => "-".to_owned(),
            };
        }
        Ok(out)
    };
    let base_cell = |f: &dyn Fn(&PhaseResult, &SinkCounts) -> anyhow::Result<String>| -> anyhow::Result<String> {
        base.map_or_else(|| Ok("-".to_owned()), |(r, sink)| f(r, sink))
    };

    println!();
    println!(
        "trackway pipeline bench: N = {n}, JsonHttp batch_size {BATCH}, queue_capacity {queue}, other settings default"
    );
    println!(
        "collector: trackway-collector in sink mode, own process, fresh per phase; each phase in its own process; \
         durable = SqliteStore in a fresh temp dir (synchronous NORMAL / FULL)"
    );
    if let Some(f) = fault {
        println!("fault: {} (the collector's fault flags); the baseline resends failed batches", f.describe());
    }
    if let Some(r) = rate {
        println!(
            "caller paced at {r} events/s (the SDK phases; the baseline is not paced): throughput ratios get no verdict"
        );
    }
    println!(
        "{:<40} {:>24} {:>24} {:>24} {:>20}   target",
        "metric", "in-memory SDK", "durable NORMAL", "durable FULL", "hyper baseline"
    );
    let row = |m: &str, [a, b, c]: [String; 3], d: String, t: &str| {
        let line = format!("{m:<40} {a:>24} {b:>24} {c:>24} {d:>20}   {t}");
        println!("{}", line.trim_end());
    };

    row(
        if fault.is_some() { "delivered events/s (whole run)" } else { "delivered events/s" },
        per_col(&mut |c| Ok(format!("{:.0}", c.rate)))?,
        base_cell(&|_, _| Ok(format!("{:.0}", base_rate.unwrap_or(0.0))))?,
        "",
    );
    row(
        "  ratio to baseline",
        per_col(&mut |c| {
            let Some(b) = base_rate else { return Ok("n/a (no baseline)".to_owned()) };
            let ratio = c.rate / b;
            if rate.is_some() {
                // The caller sets the pace: the rate says nothing about the pipeline's speed.
                return Ok(format!("{ratio:.2}x"));
            }
            let target = match fault {
                // Under 429 + Retry-After both wait out the same pauses: the SDK must keep up.
                Some(Fault::TooMany) => TARGET_THROTTLED,
                // The 503 target is against a clean run (the clean twin row): no verdict here.
                Some(Fault::Unavailable) => return Ok(format!("{ratio:.2}x")),
                None if c.kind.durable() => TARGET_DURABLE_SPEEDUP,
                None => TARGET_SPEEDUP,
            };
            let v = checks.check(format!("{} delivered >= {target:.1}x baseline", c.kind.label()), ratio >= target);
            Ok(format!("{ratio:.2}x {v}"))
        })?,
        String::new(),
        match fault {
            None => "in-memory >= 1.5x; durable >= 1.0x",
            Some(Fault::TooMany) => ">= 0.95x under 429 + Retry-After",
            Some(Fault::Unavailable) => "503: first attempts >= 0.8x of a clean run's rate",
        },
    );
    row(
        "  wall time, s",
        per_col(&mut |c| Ok(format!("{:.3}", c.secs)))?,
        base_secs.map_or_else(|| "-".to_owned(), |s| format!("{s:.3}")),
        "",
    );
    if fault.is_some() {
        row(
            "first-attempt events/s (sampled)",
            per_col(&mut |c| {
                let t = secs(c.r.get("first_attempts_ns")?);
                Ok(if t > 0.0 { format!("{:.0}", c.r.get("accepted")? as f64 / t) } else { "n/a".to_owned() })
            })?,
            String::new(),
            "accepted / (first call .. every event delivered or put to retry once)",
        );
        if !clean_twins.is_empty() {
            row(
                "  ratio to the clean twin",
                per_col(&mut |c| {
                    let t = secs(c.r.get("first_attempts_ns")?);
                    let Some(twin) = clean_twins.iter().find(|t| t.kind == c.kind) else { return Ok("-".to_owned()) };
                    let twin_rate = twin.sink.events as f64 / secs(twin.result.get("elapsed_ns")?).max(1e-9);
                    if t <= 0.0 || twin_rate <= 0.0 {
                        return Ok("n/a".to_owned());
                    }
                    let ratio = c.r.get("accepted")? as f64 / t / twin_rate;
                    if rate.is_some() {
                        return Ok(format!("{ratio:.2}x of {twin_rate:.0}"));
                    }
                    let v = checks.check(
                        format!("{} 503 first attempts >= {TARGET_FIRST_ATTEMPTS:.1}x its clean twin", c.kind.label()),
                        ratio >= TARGET_FIRST_ATTEMPTS,
                    );
                    Ok(format!("{ratio:.2}x of {twin_rate:.0} {v}"))
                })?,
                String::new(),
                "first attempts / the same store's clean run just before (delivered / wall time)",
            );
        }
        row(
            "  retry tail, s",
            per_col(&mut |c| {
                let t = c.r.get("first_attempts_ns")?;
                Ok(if t > 0 { format!("{:.3}", c.secs - secs(t)) } else { "n/a".to_owned() })
            })?,
            String::new(),
            "last first attempt answered .. flush returned",
        );
    }
    let ring_slots = queue_capacity.and_then(|q| q.parse::<f64>().ok()).unwrap_or(SDK_DEFAULT_QUEUE_CAPACITY as f64);
    let caller_rate = |c: &SdkCol<'_>| -> anyhow::Result<f64> {
        Ok(c.r.get("accepted")? as f64 / secs(c.r.get("loop_ns")?).max(1e-9))
    };
    let per_event = |cpu: u64, events: u64| cpu as f64 / events.max(1) as f64;
    let base_cpu = base.map(|(r, sink)| r.get("cpu_ns").map(|c| per_event(c, base_delivered(sink)))).transpose()?;
    row(
        "CPU per delivered event, ns (worker)",
        per_col(&mut |c| {
            let all = per_event(c.r.get("cpu_ns")?, c.delivered);
            let worker = per_event(c.r.get("worker_cpu_ns")?, c.delivered);
            Ok(match base_cpu {
                Some(b) => format!("{all:.0} ({worker:.0}) {:.2}x", all / b.max(1.0)),
                None => format!("{all:.0} ({worker:.0})"),
            })
        })?,
        base_cpu.map_or_else(|| "-".to_owned(), |b| format!("{b:.0}")),
        "process CPU (schedstat) / collector events; robust to load, unlike wall time",
    );
    row(
        "  less the bench's per-call timing",
        per_col(&mut |c| {
            // What caller_loop adds around each call (clock reads, histograms), which the
            // baseline does not do: measured on its own after the run, then taken out.
            let timing = c.r.text("timing_cpu_ns").parse::<f64>().unwrap_or(0.0) * c.r.get("accepted")? as f64;
            let all = (c.r.get("cpu_ns")? as f64 - timing).max(0.0) / c.delivered.max(1) as f64;
            Ok(match base_cpu {
                Some(b) => format!("{all:.0} {:.2}x", all / b.max(1.0)),
                None => format!("{all:.0}"),
            })
        })?,
        String::new(),
        "the same, minus timing_cpu_ns (the timing's CPU per call, measured after the run) per call",
    );
    row(
        "caller rate / store write rate, ev/s",
        per_col(&mut |c| {
            let span = secs(c.r.get("persist_span_ns")?);
            let write =
                if span > 0.0 { format!("{:.0}", c.r.get("persisted")? as f64 / span) } else { "n/a".to_owned() };
            Ok(format!("{:.0} / {write}", caller_rate(c)?))
        })?,
        String::new(),
        "store: persisted / (first .. last change of persisted)",
    );
    row(
        "longest drain gap / ring headroom, ms",
        per_col(&mut |c| {
            let gap = c.r.get("longest_drain_gap_us")? as f64 / 1000.0;
            let free = (ring_slots - c.r.get("max_in_ring")? as f64).max(0.0);
            Ok(format!("{gap:.1} / {:.1}", free / caller_rate(c)?.max(1.0) * 1000.0))
        })?,
        String::new(),
        "sampled every 2 ms; headroom = free slots at the peak / caller rate",
    );
    row(
        "caller cost p50 / p99 / max, ns",
        per_col(&mut |c| Ok(format!("{} / {} / {}", c.p50, c.p99, c.r.get("max")?)))?,
        String::new(),
        "",
    );
    row(
        "  caller p99, ns (durable: vs in-memory)",
        per_col(&mut |c| {
            if !c.kind.durable() {
                let v = checks.check(format!("{} p99 <= {TARGET_P99_NS} ns", c.kind.label()), c.p99 <= TARGET_P99_NS);
                return Ok(format!("{} {v}", c.p99));
            }
            let Some(m) = mem else { return Ok(format!("{} (no in-memory)", c.p99)) };
            let v = checks.check(format!("{} p99 unchanged", c.kind.label()), unchanged(c.p99, m.p99));
            Ok(format!("{} vs {} {v}", c.p99, m.p99))
        })?,
        String::new(),
        "in-memory <= 1000; durable within 20% or 150 ns of in-memory",
    );
    row(
        "  caller p50, ns (durable: vs in-memory)",
        per_col(&mut |c| {
            if !c.kind.durable() {
                return Ok(c.p50.to_string());
            }
            let Some(m) = mem else { return Ok(format!("{} (no in-memory)", c.p50)) };
            let v = checks.check(format!("{} p50 unchanged", c.kind.label()), unchanged(c.p50, m.p50));
            Ok(format!("{} vs {} {v}", c.p50, m.p50))
        })?,
        String::new(),
        "durable within 20% or 150 ns of in-memory",
    );
    row(
        "  p50 / p99 of accepted calls only, ns",
        per_col(&mut |c| {
            Ok(format!("{} / {} ({} acc.)", c.r.get("p50_accepted")?, c.r.get("p99_accepted")?, c.r.get("accepted")?))
        })?,
        String::new(),
        "(all-calls rows include QueueFull returns)",
    );
    row(
        "  caller p99.9 / mean, ns; calls > 1 us",
        per_col(&mut |c| Ok(format!("{} / {} ; {}", c.r.get("p999")?, c.r.get("mean")?, c.r.get("over_1us")?)))?,
        String::new(),
        "",
    );
    row(
        "serde_json::to_vec p50 / p99 / max, ns",
        [format!("{s50} / {s99} / {smax}"), String::new(), String::new()],
        String::new(),
        "",
    );
    row(
        "  caller / to_vec (p50, p99)",
        per_col(&mut |c| {
            Ok(format!("{:.1}x , {:.1}x", c.p50 as f64 / s50.max(1) as f64, c.p99 as f64 / s99.max(1) as f64))
        })?,
        String::new(),
        "",
    );
    row(
        "peak RSS (VmHWM)",
        per_col(&mut |c| {
            let hwm = c.r.get("hwm")?;
            // A tight loop bounds only the in-memory store; a paced caller every store (the issue).
            if c.kind.durable() && rate.is_none() {
                return Ok(mib(hwm));
            }
            let v = checks.check(format!("{} peak RSS <= 64 MB", c.kind.label()), hwm <= TARGET_RSS_BYTES);
            Ok(format!("{} {v}", mib(hwm)))
        })?,
        base_cell(&|r, _| Ok(mib(r.get("hwm")?)))?,
        if rate.is_some() { "every store <= 64 MB (paced)" } else { "in-memory <= 64 MB" },
    );
    row(
        "events lost (N - collector events)",
        per_col(&mut |c| {
            let v = checks.check(format!("{} 0 lost", c.kind.label()), c.lost == 0);
            Ok(format!("{} {v}", c.lost))
        })?,
        base_cell(&|_, sink| Ok(n64.saturating_sub(base_delivered(sink)).to_string()))?,
        "0",
    );
    row(
        "  delivered: collector - failed / client",
        per_col(&mut |c| {
            // Two counts of one thing: the collector's (less the failed requests' events) and the
            // client's own; duplicates beyond the failed requests would make the first larger.
            let client = c.r.get("delivered")?;
            let v = checks.check(format!("{} delivered counts agree", c.kind.label()), c.delivered == client);
            Ok(format!("{} / {client} {v}", c.delivered))
        })?,
        String::new(),
        "equal: duplicates only from failed requests",
    );
    row(
        "  dropped: queue/store_full/disk/error",
        per_col(&mut |c| {
            Ok(format!(
                "{} / {} / {} / {}",
                c.r.get("dropped_queue_full")?,
                c.r.get("dropped_store_full")?,
                c.r.get("dropped_disk_full")?,
                c.r.get("dropped_store_error")?
            ))
        })?,
        String::new(),
        "",
    );
    row(
        "requests sent (collector count)",
        per_col(&mut |c| Ok(c.sink.requests.to_string()))?,
        base_cell(&|_, sink| Ok(sink.requests.to_string()))?,
        "",
    );
    row(
        "store file MiB: peak / flush / shutdown",
        per_col(&mut |c| {
            if !c.kind.durable() {
                return Ok(String::new());
            }
            Ok(format!(
                "{} / {} / {}",
                mib_short(c.r.get("file_max")?),
                mib_short(c.r.get("file_after_flush")?),
                mib_short(c.r.get("file_after_shutdown")?)
            ))
        })?,
        String::new(),
        "db + wal; flush = right after flush()",
    );
    println!();
    println!("notes:");
    if let Some(m) = mem {
        println!(
            "  caller cost timed region: `props! {{ bench_seq, plan, path, amount, items }}` construction + \
             `client.track(user, \"bench_event\", props)` up to its return (user strings `user-{{i % 1000}}` \
             precomputed outside); Instant::now()/elapsed() pair costs ~{} ns and is included",
            m.r.get("timer_ns")?
        );
    }
    println!(
        "  serde_json::to_vec timed region: to_vec of a borrowed #[derive(Serialize)] struct with the SDK's wire \
         shape (id, type, name, timestamp, properties{{5 fields, typed}}, identity{{user_id}}, context); \
         the UUIDv7 id and the timestamp are made outside the timed region"
    );
    for c in &cols {
        let r = c.r;
        println!(
            "  {}: loop {:.3} s then flush; client: enqueued {} persisted {} delivered {} requests {} failed {} \
             retried {} pending {}; track() errors: queue_full {} other {} {}; flush: {}; shutdown: {}",
            c.kind.label(),
            secs(r.get("loop_ns")?),
            r.get("enqueued")?,
            r.get("persisted")?,
            r.get("delivered")?,
            r.get("requests")?,
            r.get("failed_requests")?,
            r.get("retried")?,
            r.get("pending")?,
            r.get("track_queue_full")?,
            r.get("track_other_errors")?,
            r.text("first_other_error"),
            r.text("flush"),
            r.text("shutdown"),
        );
        let file = if c.kind.durable() {
            format!(
                "; store file (db + wal) max {} B, after flush {} B, after shutdown {} B, after drop {} B (wal {} B)",
                r.get("file_max")?,
                r.get("file_after_flush")?,
                r.get("file_after_shutdown")?,
                r.get("file_after_drop")?,
                r.get("wal_after_drop")?,
            )
        } else {
            String::new()
        };
        println!(
            "  {} backlog (sampled every 2 ms): max in channel {} (capacity {queue}), max accepted-but-undelivered {}; \
             RSS before loop {}, after flush {}{file}",
            c.kind.label(),
            r.get("max_in_channel")?,
            r.get("max_undelivered")?,
            mib(r.get("rss_before")?),
            mib(r.get("rss_after")?),
        );
    }
    let mut collector: Vec<String> = cols
        .iter()
        .map(|c| {
            format!(
                "{} {} events, {:.0} B/event, {} JSON errors",
                c.kind.label(),
                c.sink.events,
                c.sink.bytes as f64 / c.sink.events.max(1) as f64,
                c.sink.json_errors
            )
        })
        .collect();
    if let Some((r, sink)) = base {
        collector.push(format!(
            "baseline {} events, {:.0} B/event, {} JSON errors, {} failed requests",
            sink.events,
            sink.bytes as f64 / sink.events.max(1) as f64,
            sink.json_errors,
            r.get("failed_requests")?
        ));
    }
    println!("  collector: {}", collector.join("; "));
    println!(
        "  delivered events/s = events in answers that worked (collector events - events of failed requests) / \
         (first track call .. flush return); RSS target read as 64 x 10^6 B"
    );
    let missed: Vec<&str> = checks.0.iter().filter(|(_, pass)| !pass).map(|(what, _)| what.as_str()).collect();
    println!(
        "  targets: {} PASS, {} MISS{}",
        checks.0.len() - missed.len(),
        missed.len(),
        if missed.is_empty() { String::new() } else { format!(" ({})", missed.join("; ")) }
    );
    Ok(())
}

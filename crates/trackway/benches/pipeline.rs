//! End-to-end pipeline benchmark: `cargo bench -p trackway --bench pipeline [-- --n 20000]`.
//!
//! Sends N `bench_event` events (user `user-{i % 1000}`, properties `bench_seq`, `plan`, `path`,
//! `amount`, `items`) in a tight loop through the generic JSON destination (batches of 100) to a
//! `trackway-collector` in sink mode, and compares with a baseline that serializes the same events
//! and POSTs them in batches of 100 from one thread, waiting for each answer.
//!
//! Every phase runs in its own child process (this binary re-executed with `TRACKWAY_BENCH_ROLE`),
//! so peak RSS is per phase, and each phase gets a fresh collector, also its own process
//! (`TRACKWAY_BENCH_ROLE=sink`, stopped by closing its stdin), so the counts are separate.
//!
//! Knobs: `--n N` or `TRACKWAY_BENCH_N` (default 200 000); `TRACKWAY_BENCH_QUEUE_CAPACITY` overrides
//! the client's `queue_capacity` (default: the SDK default, 10 000).
//!
//! To profile the caller alone, start a sink (`TRACKWAY_BENCH_ROLE=sink`) and run the SDK phase
//! directly: `TRACKWAY_BENCH_ROLE=sdk TRACKWAY_BENCH_URL=http://127.0.0.1:PORT TRACKWAY_BENCH_N=20000`.
// A bench's whole output is the table it prints.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::HashMap;
use std::hint::black_box;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use trackway::destination::JsonHttp;
use trackway::{Client, Error, MessageId, Timestamp, props};

const ROLE_ENV: &str = "TRACKWAY_BENCH_ROLE";
const URL_ENV: &str = "TRACKWAY_BENCH_URL";
const N_ENV: &str = "TRACKWAY_BENCH_N";
const QUEUE_ENV: &str = "TRACKWAY_BENCH_QUEUE_CAPACITY";

const DEFAULT_N: usize = 200_000;
const BATCH: usize = 100;
const USERS: usize = 1_000;
const EVENT_PATH: &str = "/v1/events";
const PLANS: [&str; 3] = ["free", "pro", "enterprise"];
const PAGE_PATH: &str = "/checkout/confirm";

/// The SDK's default `queue_capacity` (shown in the header when not overridden).
const SDK_DEFAULT_QUEUE_CAPACITY: usize = 10_000;

// Targets from the issue.
const TARGET_P99_NS: u64 = 1_000;
const TARGET_SPEEDUP: f64 = 1.5;
/// 64 MB, read strictly as 64 × 10^6 bytes.
const TARGET_RSS_BYTES: u64 = 64_000_000;

fn main() -> anyhow::Result<()> {
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
    let mut n = match std::env::var(N_ENV) {
        Ok(v) => v.parse().with_context(|| format!("{N_ENV}={v:?} is not a number"))?,
        Err(_) => DEFAULT_N,
    };
    // cargo bench passes `--bench` (and any filter); only `--n` is ours.
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = if arg == "--n" {
            args.next().context("--n needs a value")?
        } else if let Some(v) = arg.strip_prefix("--n=") {
            v.to_owned()
        } else {
            continue;
        };
        n = value.parse().with_context(|| format!("--n {value:?} is not a number"))?;
    }
    if n == 0 {
        bail!("N must be at least 1");
    }
    Ok(n)
}

fn orchestrate() -> anyhow::Result<()> {
    let n = parse_n()?;
    let queue_capacity = std::env::var(QUEUE_ENV).ok();
    let http = reqwest::blocking::Client::builder().no_proxy().build().context("building the stats client")?;

    // Phase 1: the SDK (its own process, its own collector).
    let sink = SinkProcess::start()?;
    let sdk = run_phase("sdk", n, &sink.url, queue_capacity.as_deref())?;
    let sdk_sink = sink.stats(&http)?;
    sink.stop()?;

    // Phase 2: the baseline (its own process, its own collector).
    let sink = SinkProcess::start()?;
    let base = run_phase("baseline", n, &sink.url, None)?;
    let base_sink = sink.stats(&http)?;
    sink.stop()?;

    // Phase 3: serde_json::to_vec of the same event, per call (in this process; no RSS taken).
    let serde_costs = measure_serde(n)?;

    print_table(n, queue_capacity.as_deref(), &sdk, &sdk_sink, &base, &base_sink, &serde_costs)
}

/// A phase's `RESULT key=value` lines.
struct PhaseResult(HashMap<String, String>);

impl PhaseResult {
    fn get(&self, key: &str) -> anyhow::Result<u64> {
        let v = self.0.get(key).with_context(|| format!("phase result has no {key}"))?;
        v.parse().with_context(|| format!("{key}={v:?} is not a number"))
    }

    fn text(&self, key: &str) -> &str {
        self.0.get(key).map_or("", String::as_str)
    }
}

fn run_phase(role: &str, n: usize, url: &str, queue_capacity: Option<&str>) -> anyhow::Result<PhaseResult> {
    let exe = std::env::current_exe().context("locating the bench binary")?;
    let mut cmd = Command::new(exe);
    cmd.env(ROLE_ENV, role).env(URL_ENV, url).env(N_ENV, n.to_string());
    if let Some(q) = queue_capacity {
        cmd.env(QUEUE_ENV, q);
    }
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running the {role} phase"))?;
    if !out.status.success() {
        bail!("the {role} phase failed: {}", out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let map = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("RESULT "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    Ok(PhaseResult(map))
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
    fn start() -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating the bench binary")?;
        let mut child = Command::new(exe)
            .env(ROLE_ENV, "sink")
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
    let collector = trackway_collector::Collector::builder().sink(true).start().context("starting the collector")?;
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

/// The timed loop. `costs[i]` is the time around building `props!` and calling `client.track`.
#[inline(never)]
fn caller_loop(client: &Client, users: &[String], costs: &mut [u64]) -> LoopCounts {
    let mut counts = LoopCounts::default();
    for (i, slot) in costs.iter_mut().enumerate() {
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
        *slot = nanos(started.elapsed());
        match result {
            Ok(_) => counts.accepted += 1,
            Err(Error::QueueFull) => counts.queue_full += 1,
            Err(e) => {
                counts.other_errors += 1;
                counts.first_other_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    counts
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Highest channel occupancy and store backlog seen by a sampler thread (every 2 ms).
#[derive(Default, Clone, Copy)]
struct Backlog {
    max_in_channel: u64,
    max_undelivered: u64,
}

fn sample_backlog(client: Client, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Backlog> {
    std::thread::spawn(move || {
        let mut b = Backlog::default();
        while !stop.load(Ordering::Relaxed) {
            let s = client.stats();
            let delivered: u64 = s.destinations.iter().map(|d| d.delivered).sum();
            b.max_in_channel = b.max_in_channel.max(s.enqueued.saturating_sub(s.persisted));
            b.max_undelivered = b.max_undelivered.max(s.enqueued.saturating_sub(delivered));
            std::thread::sleep(Duration::from_millis(2));
        }
        b
    })
}

/// A line of /proc/self/status in bytes (the kernel gives kB).
fn proc_status_bytes(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
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
    let users = users();
    let mut builder = Client::builder()
        .destination(JsonHttp::new(format!("{url}{EVENT_PATH}")).batch_size(BATCH))
        .store(trackway::store::MemoryStore::new());
    if let Some(q) = env_usize(QUEUE_ENV)? {
        builder = builder.queue_capacity(q);
    }
    let client = builder.build().context("building the client")?;
    let rss_before = proc_status_bytes("VmRSS");
    // Preallocated and touched (non-zero fill), so no page fault lands in a timed region.
    let mut costs = vec![u64::MAX; n];

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_backlog(client.clone(), stop.clone());

    let started = Instant::now();
    let counts = caller_loop(&client, &users, &mut costs);
    let loop_elapsed = started.elapsed();
    let flush = client.flush(Duration::from_secs(300));
    let elapsed = started.elapsed();

    stop.store(true, Ordering::Relaxed);
    let backlog = sampler.join().unwrap_or_default();
    let hwm = proc_status_bytes("VmHWM");
    let rss_after = proc_status_bytes("VmRSS");
    let stats = client.stats();
    let shutdown = client.shutdown(Duration::from_secs(10));
    let timer = timer_overhead_ns();

    costs.sort_unstable();
    let (p50, p99, p999, max) = percentiles(&costs);
    let dest = stats.destinations.first().cloned().unwrap_or_default();
    let mut out = std::io::stdout().lock();
    let mut put = |k: &str, v: &dyn std::fmt::Display| writeln!(out, "RESULT {k}={v}");
    put("elapsed_ns", &nanos(elapsed))?;
    put("loop_ns", &nanos(loop_elapsed))?;
    put("p50", &p50)?;
    put("p99", &p99)?;
    put("p999", &p999)?;
    put("max", &max)?;
    put("mean", &(costs.iter().sum::<u64>() / n as u64))?;
    put("over_1us", &costs.iter().filter(|&&c| c > TARGET_P99_NS).count())?;
    put("timer_ns", &timer)?;
    put("accepted", &counts.accepted)?;
    put("track_queue_full", &counts.queue_full)?;
    put("track_other_errors", &counts.other_errors)?;
    put("first_other_error", &counts.first_other_error.unwrap_or_default())?;
    put("enqueued", &stats.enqueued)?;
    put("persisted", &stats.persisted)?;
    put("dropped_queue_full", &stats.dropped.queue_full)?;
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
    Ok(())
}

fn percentiles(sorted: &[u64]) -> (u64, u64, u64, u64) {
    let at = |q: f64| sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)];
    (at(0.50), at(0.99), at(0.999), sorted[sorted.len() - 1])
}

// ================================================================================================
// Phase: the baseline (serialize + POST batches of 100 on one thread, one request at a time)
// ================================================================================================

fn run_baseline_phase() -> anyhow::Result<()> {
    let url = std::env::var(URL_ENV).with_context(|| format!("{URL_ENV} is not set"))?;
    let url = format!("{url}{EVENT_PATH}");
    let n = env_usize(N_ENV)?.unwrap_or(DEFAULT_N);
    let users = users();
    let context = WireContext::like_the_sdk();
    let http = reqwest::blocking::Client::builder().no_proxy().build().context("building the HTTP client")?;

    let mut requests = 0u64;
    let mut failed = 0u64;
    let mut body: Vec<u8> = Vec::new();
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
        requests += 1;
        let ok = http
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
            .and_then(|r| {
                let ok = r.status().is_success();
                r.bytes().map(|_| ok)
            })
            .unwrap_or(false);
        if !ok {
            failed += 1;
        }
    }
    let elapsed = started.elapsed();
    let mut out = std::io::stdout().lock();
    writeln!(out, "RESULT elapsed_ns={}", nanos(elapsed))?;
    writeln!(out, "RESULT requests={requests}")?;
    writeln!(out, "RESULT failed_requests={failed}")?;
    writeln!(out, "RESULT hwm={}", proc_status_bytes("VmHWM"))?;
    Ok(())
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

fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "MISS" }
}

#[allow(clippy::too_many_arguments)]
fn print_table(
    n: usize,
    queue_capacity: Option<&str>,
    sdk: &PhaseResult,
    sdk_sink: &SinkCounts,
    base: &PhaseResult,
    base_sink: &SinkCounts,
    serde_costs: &[u64],
) -> anyhow::Result<()> {
    let n64 = n as u64;
    let secs = |ns: u64| ns as f64 / 1e9;
    let sdk_secs = secs(sdk.get("elapsed_ns")?);
    let base_secs = secs(base.get("elapsed_ns")?);
    let sdk_rate = sdk_sink.events as f64 / sdk_secs;
    let base_rate = base_sink.events as f64 / base_secs;
    let speedup = sdk_rate / base_rate;
    let (s50, s99, _, smax) = percentiles(serde_costs);
    let (p50, p99, p999, max) = (sdk.get("p50")?, sdk.get("p99")?, sdk.get("p999")?, sdk.get("max")?);
    let sdk_lost = n64.saturating_sub(sdk_sink.events);
    let base_lost = n64.saturating_sub(base_sink.events);
    let hwm = sdk.get("hwm")?;
    let queue = queue_capacity.map_or_else(|| format!("{SDK_DEFAULT_QUEUE_CAPACITY} (default)"), str::to_owned);

    println!();
    println!(
        "trackway pipeline bench: N = {n}, JsonHttp batch_size {BATCH}, queue_capacity {queue}, other settings default"
    );
    println!("collector: trackway-collector in sink mode, own process, fresh per phase; each phase in its own process");
    println!(
        "{:<40} {:>26} {:>26} {:>18} {:>8}",
        "metric", "SDK (trackway)", "baseline (1 thread)", "target", "result"
    );
    let row = |m: &str, a: String, b: String, t: &str, r: &str| {
        println!("{m:<40} {a:>26} {b:>26} {t:>18} {r:>8}");
    };
    row(
        "delivered events/s",
        format!("{sdk_rate:.0}"),
        format!("{base_rate:.0}"),
        ">= 1.5x baseline",
        verdict(speedup >= TARGET_SPEEDUP),
    );
    row("  SDK / baseline", format!("{speedup:.2}x"), String::new(), "", "");
    row("  wall time, s", format!("{sdk_secs:.3}"), format!("{base_secs:.3}"), "", "");
    row(
        "caller cost p50 / p99 / max, ns",
        format!("{p50} / {p99} / {max}"),
        String::new(),
        "p99 <= 1000",
        verdict(p99 <= TARGET_P99_NS),
    );
    row(
        "  caller p99.9 / mean, ns; calls > 1 us",
        format!("{p999} / {} ; {}", sdk.get("mean")?, sdk.get("over_1us")?),
        String::new(),
        "",
        "",
    );
    row("serde_json::to_vec p50 / p99 / max, ns", format!("{s50} / {s99} / {smax}"), String::new(), "", "");
    row(
        "  caller / to_vec (p50, p99)",
        format!("{:.1}x , {:.1}x", p50 as f64 / s50.max(1) as f64, p99 as f64 / s99.max(1) as f64),
        String::new(),
        "",
        "",
    );
    row("peak RSS (VmHWM)", mib(hwm), mib(base.get("hwm")?), "<= 64 MB", verdict(hwm <= TARGET_RSS_BYTES));
    row("events lost (N - collector events)", sdk_lost.to_string(), base_lost.to_string(), "0", verdict(sdk_lost == 0));
    row("  client stats dropped.queue_full", sdk.get("dropped_queue_full")?.to_string(), String::new(), "", "");
    row("requests sent (collector count)", sdk_sink.requests.to_string(), base_sink.requests.to_string(), "", "");
    println!();
    println!("notes:");
    println!(
        "  caller cost timed region: `props! {{ bench_seq, plan, path, amount, items }}` construction + \
         `client.track(user, \"bench_event\", props)` up to its return (user strings `user-{{i % 1000}}` \
         precomputed outside); Instant::now()/elapsed() pair costs ~{} ns and is included",
        sdk.get("timer_ns")?
    );
    println!(
        "  serde_json::to_vec timed region: to_vec of a borrowed #[derive(Serialize)] struct with the SDK's wire \
         shape (id, type, name, timestamp, properties{{5 fields, typed}}, identity{{user_id}}, context); \
         the UUIDv7 id and the timestamp are made outside the timed region"
    );
    println!(
        "  SDK: loop {:.3} s then flush; client: enqueued {} persisted {} delivered {} requests {} failed {} \
         retried {} pending {}; track() errors: queue_full {} other {} {}; flush: {}; shutdown: {}",
        secs(sdk.get("loop_ns")?),
        sdk.get("enqueued")?,
        sdk.get("persisted")?,
        sdk.get("delivered")?,
        sdk.get("requests")?,
        sdk.get("failed_requests")?,
        sdk.get("retried")?,
        sdk.get("pending")?,
        sdk.get("track_queue_full")?,
        sdk.get("track_other_errors")?,
        sdk.text("first_other_error"),
        sdk.text("flush"),
        sdk.text("shutdown"),
    );
    println!(
        "  SDK backlog (sampled every 2 ms): max in channel {} (capacity {queue}), max accepted-but-undelivered {}; \
         RSS before loop {}, after flush {}",
        sdk.get("max_in_channel")?,
        sdk.get("max_undelivered")?,
        mib(sdk.get("rss_before")?),
        mib(sdk.get("rss_after")?),
    );
    println!(
        "  collector: SDK {} events, {:.0} B/event, {} JSON errors; baseline {} events, {:.0} B/event, {} JSON errors, \
         {} failed requests",
        sdk_sink.events,
        sdk_sink.bytes as f64 / sdk_sink.events.max(1) as f64,
        sdk_sink.json_errors,
        base_sink.events,
        base_sink.bytes as f64 / base_sink.events.max(1) as f64,
        base_sink.json_errors,
        base.get("failed_requests")?,
    );
    println!(
        "  delivered events/s = collector events / (first track call .. flush return); RSS target read as 64 x 10^6 B"
    );
    Ok(())
}

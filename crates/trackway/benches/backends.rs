//! Backend benchmark (issues 14 and 15): `cargo bench -p trackway --bench backends [-- --n 20000
//! --rounds 5 --rows dual-write,opencdp-baseline,...]`.
//!
//! Sends N `bench_event` tracks (user `user-{i % 1000}`, properties `bench_seq`, `plan`, `path`,
//! `amount`, `items`, as `benches/pipeline.rs` does) to a `trackway-collector` in sink mode,
//! started in this process on 127.0.0.1:0, fresh for every row of every round. Each row runs in
//! its own process (this binary re-executed with `TRACKWAY_BACKENDS_ROW`), so its peak RSS
//! (VmHWM) is its own and does not include the collector's. Rows:
//!
//! | row | sender |
//! |---|---|
//! | `dual-write` | the SDK: `OpenCdpConfig::customer_io(..)`, two destinations (OpenCDP one event per request, 10 in flight; Customer.io v2 batches of 100) |
//! | `opencdp-baseline` | hyper HTTP/1, one event per request on 10 keep-alive connections (10 tasks on one thread) |
//! | `customerio-baseline` | hyper HTTP/1, one keep-alive connection, one thread: Customer.io v2 batch bodies of 100 events, each answer awaited |
//! | `bloomreach` | the SDK: Bloomreach batches (`Sending::Batch`, 50 commands per request) |
//! | `bloomreach-baseline` | hyper HTTP/1, one keep-alive connection, one thread: the same Bloomreach batch bodies of 50 commands |
//!
//! The SDK rows use the in-memory store (the destinations' cost, not the store's: the pipeline
//! bench measures the durable store), the default queue, and `track` in a tight loop; a
//! `QueueFull` is waited out (200 µs, then the same event again) and counted, so every event is
//! accepted and N are owed. "delivered events/s" of a destination = the collector's events for
//! that destination / (first `track` .. the moment the client's stats show that destination
//! caught up), per round; the table shows the median of the rounds and the range. "lost" = N
//! minus the collector's events for the destination (2xx answers only), the worst round.
//!
//! Before the rounds, one event of each SDK row and of its baseline is sent to a recording
//! (non-sink) collector and their JSON shapes (the key paths) compared: a baseline that sends
//! less than the SDK would flatter it, so a difference is printed.
//!
//! Options: `--n N` (default 20 000), `--rounds R` (default 5), `--rows a,b` (default all).
// A bench's whole output is the table it prints.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;
use common::{HyperConnection, PhaseResult, median, mib, nanos, proc_status_bytes, report, run_child};
use serde::Serialize;
use serde_json::Value;
use trackway::destination::bloomreach::{Authorization, Bloomreach, Sending};
use trackway::destination::customerio::CustomerIo;
use trackway::destination::opencdp::OpenCdpConfig;
use trackway::store::MemoryStore;
use trackway::{Client, Error, MessageId, Timestamp, props};
use trackway_collector::{Collector, RunningCollector};

const ROW_ENV: &str = "TRACKWAY_BACKENDS_ROW";
const URL_ENV: &str = "TRACKWAY_BACKENDS_URL";
const N_ENV: &str = "TRACKWAY_BACKENDS_N";

const DEFAULT_N: usize = 20_000;
const DEFAULT_ROUNDS: usize = 5;
const USERS: usize = 1_000;
const PLANS: [&str; 3] = ["free", "pro", "enterprise"];
const PAGE_PATH: &str = "/checkout/confirm";

const CDP_KEY: &str = "bench-cdp-key";
const GATEWAY: &str = "/gateway/data-gateway";
const CDP_TRACK: &str = "/gateway/data-gateway/v1/persons/track";
/// OpenCDP's default `maxConcurrentRequests`, and the baseline's connections.
const CDP_CONNECTIONS: usize = 10;
const CIO_SITE: &str = "bench-site";
const CIO_KEY: &str = "bench-cio-key";
const CIO_BATCH: &str = "/api/v2/batch";
/// The Customer.io destination's default batch size.
const CIO_BATCH_EVENTS: usize = 100;
const BR_TOKEN: &str = "bench-project";
const BR_KEY_ID: &str = "bench-key-id";
const BR_SECRET: &str = "bench-secret";
const BR_BATCH: &str = "/track/v2/projects/bench-project/batch";
const BR_BATCH_COMMANDS: usize = trackway_wire::bloomreach::MAX_BATCH_COMMANDS;
/// Wait before offering an event again after `QueueFull`.
const QUEUE_FULL_WAIT: Duration = Duration::from_micros(200);
/// Bound on a row's flush (a stuck row fails instead of hanging the bench).
const FLUSH_LIMIT: Duration = Duration::from_secs(600);

/// A row of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Row {
    DualWrite,
    OpenCdpBaseline,
    CustomerIoBaseline,
    Bloomreach,
    BloomreachBaseline,
}

impl Row {
    const ALL: [Row; 5] =
        [Row::DualWrite, Row::OpenCdpBaseline, Row::CustomerIoBaseline, Row::Bloomreach, Row::BloomreachBaseline];

    fn name(self) -> &'static str {
        match self {
            Row::DualWrite => "dual-write",
            Row::OpenCdpBaseline => "opencdp-baseline",
            Row::CustomerIoBaseline => "customerio-baseline",
            Row::Bloomreach => "bloomreach",
            Row::BloomreachBaseline => "bloomreach-baseline",
        }
    }

    fn parse(s: &str) -> Option<Row> {
        Row::ALL.into_iter().find(|r| r.name() == s)
    }

    /// The destinations the row delivers to: (label, the collector path its events arrive on).
    fn destinations(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Row::DualWrite => &[("opencdp", CDP_TRACK), ("customerio", CIO_BATCH)],
            Row::OpenCdpBaseline => &[("opencdp", CDP_TRACK)],
            Row::CustomerIoBaseline => &[("customerio", CIO_BATCH)],
            Row::Bloomreach | Row::BloomreachBaseline => &[("bloomreach", BR_BATCH)],
        }
    }

    fn is_sdk(self) -> bool {
        matches!(self, Row::DualWrite | Row::Bloomreach)
    }
}

fn main() -> anyhow::Result<()> {
    match std::env::var(ROW_ENV).ok().as_deref() {
        None | Some("") => orchestrate(),
        Some(name) => {
            let row = Row::parse(name).with_context(|| format!("unknown {ROW_ENV}={name:?}"))?;
            let url = std::env::var(URL_ENV).with_context(|| format!("{URL_ENV} is not set"))?;
            let n: usize = std::env::var(N_ENV).ok().and_then(|v| v.parse().ok()).context("N is not set")?;
            run_row(row, &url, n)
        }
    }
}

// ================================================================================================
// The event, as the SDK is given it and as the baselines serialize it
// ================================================================================================

fn user(i: usize) -> String {
    format!("user-{}", i % USERS)
}

fn amount(i: usize) -> f64 {
    10.0 + (i % 200) as f64 * 0.25
}

fn items(i: usize) -> i64 {
    (i % 7) as i64 + 1
}

#[derive(Serialize)]
struct BenchProps {
    bench_seq: u64,
    plan: &'static str,
    path: &'static str,
    amount: f64,
    items: i64,
}

fn bench_props(i: usize) -> BenchProps {
    BenchProps {
        bench_seq: i as u64,
        plan: PLANS[i % PLANS.len()],
        path: PAGE_PATH,
        amount: amount(i),
        items: items(i),
    }
}

/// `POST {base}/v1/persons/track` (spec §1.2).
#[derive(Serialize)]
struct CdpTrack<'a> {
    identifier: &'a str,
    #[serde(rename = "eventName")]
    event_name: &'static str,
    properties: BenchProps,
}

/// One event operation of `POST /api/v2/batch`.
#[derive(Serialize)]
struct CioEvent {
    #[serde(rename = "type")]
    kind: &'static str,
    identifiers: CioIds,
    action: &'static str,
    name: &'static str,
    id: String,
    timestamp: i64,
    attributes: BenchProps,
}

#[derive(Serialize)]
struct CioIds {
    id: String,
}

/// One command of `POST /track/v2/projects/{token}/batch`.
#[derive(Serialize)]
struct BrCommand {
    name: &'static str,
    command_id: String,
    data: BrEvent,
}

#[derive(Serialize)]
struct BrEvent {
    event_type: &'static str,
    timestamp: f64,
    customer_ids: BrIds,
    properties: BrProps,
}

#[derive(Serialize)]
struct BrIds {
    registered: String,
}

#[derive(Serialize)]
struct BrProps {
    #[serde(flatten)]
    bench: BenchProps,
    application_id: &'static str,
}

fn cio_event(i: usize) -> CioEvent {
    let now = Timestamp::now();
    CioEvent {
        kind: "person",
        identifiers: CioIds { id: user(i) },
        action: "event",
        name: "bench_event",
        id: trackway_wire::customerio::ulid_from_uuid(MessageId::new_v7(now).as_uuid()),
        timestamp: now.unix_seconds(),
        attributes: bench_props(i),
    }
}

fn br_command(i: usize) -> BrCommand {
    let now = Timestamp::now();
    BrCommand {
        name: "customers/events",
        command_id: MessageId::new_v7(now).to_string(),
        data: BrEvent {
            event_type: "bench_event",
            timestamp: now.unix_millis() as f64 / 1000.0,
            customer_ids: BrIds { registered: user(i) },
            properties: BrProps {
                bench: bench_props(i),
                application_id: trackway_wire::bloomreach::DEFAULT_APPLICATION_ID,
            },
        },
    }
}

/// A batch body: `{"<field>":[item(first), …, item(end - 1)]}`.
fn batch_body<T: Serialize>(
    field: &str,
    range: std::ops::Range<usize>,
    item: impl Fn(usize) -> T,
) -> anyhow::Result<bytes::Bytes> {
    let mut body = Vec::with_capacity(range.len() * 300 + 16);
    body.extend_from_slice(format!("{{\"{field}\":[").as_bytes());
    for i in range.clone() {
        if i > range.start {
            body.push(b',');
        }
        serde_json::to_writer(&mut body, &item(i)).context("serializing")?;
    }
    body.extend_from_slice(b"]}");
    Ok(body.into())
}

fn basic(id: &str, secret: &str) -> anyhow::Result<http::HeaderValue> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
    http::HeaderValue::from_str(&format!("Basic {encoded}")).context("authorization header")
}

// ================================================================================================
// Orchestrator
// ================================================================================================

struct Options {
    n: usize,
    rounds: usize,
    rows: Vec<Row>,
}

fn parse_options() -> anyhow::Result<Options> {
    let mut o = Options { n: DEFAULT_N, rounds: DEFAULT_ROUNDS, rows: Row::ALL.to_vec() };
    // cargo bench passes `--bench` (and any filter); only these are ours.
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
            None => (arg.clone(), None),
        };
        if !matches!(key.as_str(), "--n" | "--rounds" | "--rows") {
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => args.next().with_context(|| format!("{key} needs a value"))?,
        };
        match key.as_str() {
            "--n" => o.n = value.parse().with_context(|| format!("--n {value:?} is not a number"))?,
            "--rounds" => o.rounds = value.parse().with_context(|| format!("--rounds {value:?} is not a number"))?,
            _ => {
                let mut rows = Vec::new();
                for name in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    rows.push(Row::parse(name).with_context(|| {
                        format!("--rows: unknown row {name:?} (rows: {})", Row::ALL.map(Row::name).join(", "))
                    })?);
                }
                o.rows = Row::ALL.into_iter().filter(|r| rows.contains(r)).collect();
            }
        }
    }
    if o.n == 0 || o.rounds == 0 || o.rows.is_empty() {
        bail!("--n and --rounds must be at least 1, and --rows must name a row");
    }
    Ok(o)
}

/// The sink collector every row sends to, with the credentials the rows use.
fn start_collector(sink: bool) -> anyhow::Result<RunningCollector> {
    Collector::builder()
        .sink(sink)
        .customerio_credentials(CIO_SITE, CIO_KEY)
        .opencdp_api_keys([CDP_KEY])
        .start()
        .context("starting the collector")
}

/// What the collector counted for one row run.
struct Counted {
    /// Events per path.
    events_by_path: BTreeMap<String, u64>,
    /// Requests per answered status.
    statuses: BTreeMap<String, u64>,
    bytes: u64,
    requests: u64,
}

fn counted(http: &reqwest::blocking::Client, collector: &RunningCollector) -> anyhow::Result<Counted> {
    let body = http
        .get(collector.url("/_trackway/api/stats"))
        .send()
        .and_then(reqwest::blocking::Response::error_for_status)
        .and_then(reqwest::blocking::Response::bytes)
        .context("asking the collector for its stats")?;
    let v: Value = serde_json::from_slice(&body).context("parsing the collector's stats")?;
    let map = |key: &str| -> BTreeMap<String, u64> {
        v[key].as_object().into_iter().flatten().map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0))).collect()
    };
    Ok(Counted {
        events_by_path: map("events_by_path"),
        statuses: map("statuses"),
        bytes: v["bytes"].as_u64().unwrap_or(0),
        requests: v["requests"].as_u64().unwrap_or(0),
    })
}

/// One round of one row.
struct RowRun {
    result: PhaseResult,
    counted: Counted,
}

fn orchestrate() -> anyhow::Result<()> {
    let options = parse_options()?;
    let http = reqwest::blocking::Client::builder().no_proxy().build().context("building the stats client")?;
    let shapes = compare_shapes(&options.rows)?;
    let mut runs: BTreeMap<&'static str, Vec<RowRun>> = BTreeMap::new();
    for round in 0..options.rounds {
        // Rows interleaved per round, so a slow spell of the machine hits all rows alike.
        for &row in &options.rows {
            let collector = start_collector(true)?;
            let env = [(ROW_ENV, row.name().to_owned()), (URL_ENV, collector.url("")), (N_ENV, options.n.to_string())];
            let result = run_child(&format!("row {} (round {})", row.name(), round + 1), &env)?;
            let counted = counted(&http, &collector)?;
            collector.shutdown();
            runs.entry(row.name()).or_default().push(RowRun { result, counted });
        }
        eprintln!("backends bench: round {} of {} done", round + 1, options.rounds);
    }
    print_table(&options, &runs, &shapes)
}

// ================================================================================================
// The rows
// ================================================================================================

fn run_row(row: Row, url: &str, n: usize) -> anyhow::Result<()> {
    match row {
        Row::DualWrite => {
            let config = OpenCdpConfig::new(CDP_KEY)
                .endpoint(format!("{url}{GATEWAY}"))
                .customer_io(CustomerIo::new(CIO_SITE, CIO_KEY).base_url(url));
            let client = Client::builder().store(MemoryStore::new()).destinations(config).build()?;
            run_sdk(&client, n, &["opencdp", "customerio"])
        }
        Row::Bloomreach => {
            let destination = Bloomreach::new(BR_TOKEN, Authorization::basic(BR_KEY_ID, BR_SECRET))
                .base_url(url)
                .sending(Sending::Batch);
            let client = Client::builder().store(MemoryStore::new()).bloomreach(destination).build()?;
            run_sdk(&client, n, &["bloomreach"])
        }
        Row::OpenCdpBaseline => run_opencdp_baseline(url, n),
        Row::CustomerIoBaseline => {
            run_batch_baseline(url, n, CIO_BATCH, &basic(CIO_SITE, CIO_KEY)?, |r| batch_body("batch", r, cio_event))
        }
        Row::BloomreachBaseline => run_batch_baseline(url, n, BR_BATCH, &basic(BR_KEY_ID, BR_SECRET)?, |r| {
            batch_body("commands", r, br_command)
        }),
    }
}

/// `track` N events in a tight loop (waiting out `QueueFull`), then flush; reports when each of
/// `destinations` caught up, as seen by a sampler every millisecond.
fn run_sdk(client: &Client, n: usize, destinations: &'static [&'static str]) -> anyhow::Result<()> {
    let users: Vec<String> = (0..USERS).map(|u| format!("user-{u}")).collect();
    let done: Arc<Vec<AtomicUsize>> = Arc::new(destinations.iter().map(|_| AtomicUsize::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let sampler = {
        let (client, done, stop) = (client.clone(), Arc::clone(&done), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let stats = client.stats();
                for (slot, name) in done.iter().zip(destinations) {
                    let delivered = stats.destination(name).map_or(0, |d| d.delivered);
                    if slot.load(Ordering::Relaxed) == 0 && delivered >= n as u64 {
                        slot.store(nanos(started.elapsed()).max(1) as usize, Ordering::Relaxed);
                    }
                }
                if done.iter().all(|d| d.load(Ordering::Relaxed) > 0) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let mut queue_full_waits = 0u64;
    for i in 0..n {
        loop {
            let result = client.track(
                users[i % USERS].as_str(),
                "bench_event",
                props! {
                    "bench_seq" => i as i64,
                    "plan" => PLANS[i % PLANS.len()],
                    "path" => PAGE_PATH,
                    "amount" => amount(i),
                    "items" => items(i),
                },
            );
            match result {
                Ok(_) => break,
                Err(Error::QueueFull) => {
                    queue_full_waits += 1;
                    std::thread::sleep(QUEUE_FULL_WAIT);
                }
                Err(e) => bail!("track failed: {e}"),
            }
        }
    }
    let loop_ns = nanos(started.elapsed());
    let flushed = client.flush(FLUSH_LIMIT);
    let elapsed_ns = nanos(started.elapsed());
    // The sampler ends once every destination caught up; a failed flush stops it here.
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let stats = client.stats();
    // A destination that caught up after the sampler's last look (within its 1 ms sleep) did
    // so by the time flush returned.
    for (slot, name) in done.iter().zip(destinations) {
        if slot.load(Ordering::Relaxed) == 0 && stats.destination(name).is_some_and(|d| d.delivered >= n as u64) {
            slot.store(elapsed_ns as usize, Ordering::Relaxed);
        }
    }
    let mut results = vec![
        ("elapsed_ns", elapsed_ns.to_string()),
        ("loop_ns", loop_ns.to_string()),
        ("queue_full_waits", queue_full_waits.to_string()),
        ("flush", if flushed.is_ok() { "ok".to_owned() } else { format!("{flushed:?}").replace(' ', "_") }),
    ];
    for (slot, name) in done.iter().zip(destinations) {
        let d = stats.destination(name).cloned().unwrap_or_default();
        results.push(("done_ns_".to_owned() + name, slot.load(Ordering::Relaxed).to_string()).leak_key());
        results.push((format!("delivered_{name}"), d.delivered.to_string()).leak_key());
        results.push((format!("rejected_{name}"), (d.rejected + d.pending).to_string()).leak_key());
        results.push((format!("retried_{name}"), d.retried.to_string()).leak_key());
    }
    client.shutdown(Duration::from_secs(5)).context("shutdown")?;
    results.push(("hwm", proc_status_bytes("VmHWM").to_string()));
    report(&results)
}

/// A `(String, String)` result as the `(&str, String)` [`report`] takes: the key is leaked,
/// which is fine in a child process that prints a few lines and exits.
trait LeakKey {
    fn leak_key(self) -> (&'static str, String);
}

impl LeakKey for (String, String) {
    fn leak_key(self) -> (&'static str, String) {
        (self.0.leak(), self.1)
    }
}

/// One event per request on [`CDP_CONNECTIONS`] keep-alive connections, 10 tasks on one thread
/// taking the next event from a shared counter.
fn run_opencdp_baseline(url: &str, n: usize) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("runtime")?;
    let authorization = http::HeaderValue::from_static(CDP_KEY);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let (requests, failed) = runtime.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..CDP_CONNECTIONS {
            let mut conn = HyperConnection::open(url).await?;
            let (next, authorization) = (Arc::clone(&next), authorization.clone());
            tasks.push(tokio::spawn(async move {
                let (mut requests, mut failed) = (0u64, 0u64);
                let mut body = Vec::with_capacity(256);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    body.clear();
                    let user = user(i);
                    let event = CdpTrack { identifier: &user, event_name: "bench_event", properties: bench_props(i) };
                    serde_json::to_writer(&mut body, &event)?;
                    requests += 1;
                    if !conn.post(CDP_TRACK, &authorization, bytes::Bytes::copy_from_slice(&body)).await? {
                        failed += 1;
                    }
                }
                anyhow::Ok((requests, failed))
            }));
        }
        let (mut requests, mut failed) = (0, 0);
        for task in tasks {
            let (r, f) = task.await.context("a sender task panicked")??;
            requests += r;
            failed += f;
        }
        anyhow::Ok((requests, failed))
    })?;
    report(&[
        ("elapsed_ns", nanos(started.elapsed()).to_string()),
        ("requests", requests.to_string()),
        ("failed_requests", failed.to_string()),
        ("hwm", proc_status_bytes("VmHWM").to_string()),
    ])
}

/// Batch bodies of `BATCH` events POSTed one after the other on one keep-alive connection from
/// one thread, each answer awaited (the pipeline bench's baseline, with this backend's bodies).
fn run_batch_baseline(
    url: &str,
    n: usize,
    path: &str,
    authorization: &http::HeaderValue,
    body: impl Fn(std::ops::Range<usize>) -> anyhow::Result<bytes::Bytes>,
) -> anyhow::Result<()> {
    let batch = if path == CIO_BATCH { CIO_BATCH_EVENTS } else { BR_BATCH_COMMANDS };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("runtime")?;
    let started = Instant::now();
    let (requests, failed) = runtime.block_on(async {
        let mut conn = HyperConnection::open(url).await?;
        let (mut requests, mut failed) = (0u64, 0u64);
        for first in (0..n).step_by(batch) {
            let bytes = body(first..(first + batch).min(n))?;
            requests += 1;
            if !conn.post(path, authorization, bytes).await? {
                failed += 1;
            }
        }
        anyhow::Ok((requests, failed))
    })?;
    report(&[
        ("elapsed_ns", nanos(started.elapsed()).to_string()),
        ("requests", requests.to_string()),
        ("failed_requests", failed.to_string()),
        ("hwm", proc_status_bytes("VmHWM").to_string()),
    ])
}

// ================================================================================================
// Shapes: the baselines send what the SDK sends
// ================================================================================================

/// Every key path of `v` (`a.b`, arrays as `[]`), for comparing shapes, not values.
fn key_paths(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                out.insert(path.clone());
                key_paths(v, &path, out);
            }
        }
        Value::Array(items) => {
            for item in items {
                key_paths(item, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

/// For each SDK row in `rows`: sends one event through the SDK and one through the baseline
/// bodies to a recording collector, and says whether the key paths of the bodies differ.
fn compare_shapes(rows: &[Row]) -> anyhow::Result<Vec<String>> {
    let mut notes = Vec::new();
    for row in rows.iter().copied().filter(|r| r.is_sdk()) {
        let collector = start_collector(false)?;
        let url = collector.url("");
        run_child(
            &format!("shape check of {}", row.name()),
            &[(ROW_ENV, row.name().to_owned()), (URL_ENV, url.clone()), (N_ENV, "1".to_owned())],
        )?;
        let requests = collector.requests();
        collector.shutdown();
        for &(label, path) in row.destinations() {
            let sdk = requests.iter().find(|r| r.path == path).and_then(trackway_collector::RecordedRequest::json);
            let baseline: Value = match path {
                CDP_TRACK => serde_json::to_value(CdpTrack {
                    identifier: "user-0",
                    event_name: "bench_event",
                    properties: bench_props(0),
                })?,
                CIO_BATCH => serde_json::from_slice(&batch_body("batch", 0..1, cio_event)?)?,
                _ => serde_json::from_slice(&batch_body("commands", 0..1, br_command)?)?,
            };
            let Some(sdk) = sdk else {
                notes.push(format!("{label}: the SDK sent nothing to {path} in the shape check"));
                continue;
            };
            let (mut a, mut b) = (BTreeSet::new(), BTreeSet::new());
            key_paths(&sdk, "", &mut a);
            key_paths(&baseline, "", &mut b);
            let only_sdk: Vec<&String> = a.difference(&b).collect();
            let only_base: Vec<&String> = b.difference(&a).collect();
            notes.push(if only_sdk.is_empty() && only_base.is_empty() {
                format!("{label}: baseline body has the SDK's key paths ({} keys)", a.len())
            } else {
                format!(
                    "{label}: SHAPES DIFFER: only the SDK sends {only_sdk:?}; only the baseline sends {only_base:?}"
                )
            });
        }
    }
    Ok(notes)
}

// ================================================================================================
// The table
// ================================================================================================

/// A number's median and range over the rounds, as text.
fn spread(values: &[f64], format: impl Fn(f64) -> String) -> String {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if values.len() < 2 {
        return format(median(values));
    }
    format!("{} ({}–{})", format(median(values)), format(lo), format(hi))
}

fn print_table(options: &Options, runs: &BTreeMap<&'static str, Vec<RowRun>>, shapes: &[String]) -> anyhow::Result<()> {
    let n = options.n as u64;
    println!();
    println!(
        "trackway backends bench: N = {}, {} rounds (median, range), collector in sink mode in the bench's process \
         (fresh per row and round), each row in its own process",
        options.n, options.rounds
    );
    println!(
        "{:<20} {:<11} {:>30} {:>6} {:>30} {:>9} {:>8}",
        "row", "destination", "delivered events/s", "lost", "peak RSS", "requests", "B/event"
    );
    let mut rates: BTreeMap<(&str, &str), f64> = BTreeMap::new();
    for &row in &options.rows {
        let Some(rounds) = runs.get(row.name()) else { continue };
        for &(label, path) in row.destinations() {
            let mut per_round = Vec::new();
            let mut lost = 0u64;
            let mut requests = 0u64;
            let mut bytes = 0u64;
            for run in rounds {
                let events = run.counted.events_by_path.get(path).copied().unwrap_or(0);
                // Only 2xx answers count as delivered: any other status is reported below.
                let non_2xx: u64 =
                    run.counted.statuses.iter().filter(|(s, _)| !s.starts_with('2')).map(|(_, c)| *c).sum();
                let delivered = if non_2xx == 0 { events } else { 0 };
                lost = lost.max(n.saturating_sub(delivered));
                let ns = if row.is_sdk() {
                    run.result
                        .get(&format!("done_ns_{label}"))
                        .ok()
                        .filter(|&ns| ns > 0)
                        .map_or_else(|| run.result.get("elapsed_ns"), Ok)?
                } else {
                    run.result.get("elapsed_ns")?
                };
                per_round.push(delivered as f64 / (ns as f64 / 1e9));
                requests = run.counted.requests;
                bytes = run.counted.bytes;
            }
            let hwm: Vec<f64> = rounds.iter().filter_map(|r| r.result.get("hwm").ok()).map(|b| b as f64).collect();
            rates.insert((row.name(), label), median(&per_round));
            let per_event =
                if row == Row::DualWrite { "(both)".to_owned() } else { format!("{:.0}", bytes as f64 / n as f64) };
            println!(
                "{:<20} {:<11} {:>30} {:>6} {:>30} {:>9} {:>8}",
                row.name(),
                label,
                spread(&per_round, |v| format!("{v:.0}")),
                lost,
                spread(&hwm, mib),
                requests,
                per_event,
            );
        }
    }
    println!(
        "(lost = N - the collector's events for the destination, worst round; requests = the row's, last round, \
         both destinations for dual-write; B/event = request body bytes / N)"
    );
    println!();
    println!("ratios (medians):");
    let ratio = |sdk: (&str, &str), base: (&str, &str)| {
        if let (Some(a), Some(b)) = (rates.get(&sdk), rates.get(&base)) {
            println!("  {} {} / {}: {:.2}x", sdk.0, sdk.1, base.0, a / b);
        }
    };
    ratio(("dual-write", "opencdp"), ("opencdp-baseline", "opencdp"));
    ratio(("dual-write", "customerio"), ("customerio-baseline", "customerio"));
    ratio(("bloomreach", "bloomreach"), ("bloomreach-baseline", "bloomreach"));
    println!();
    println!("notes:");
    for note in shapes {
        println!("  shape check: {note}");
    }
    for &row in options.rows.iter().filter(|r| r.is_sdk()) {
        let Some(rounds) = runs.get(row.name()) else { continue };
        for (i, run) in rounds.iter().enumerate() {
            let r = &run.result;
            let mut per_dest = Vec::new();
            for &(label, _) in row.destinations() {
                per_dest.push(format!(
                    "{label} delivered {} not delivered {} retried {} caught up at {:.3} s",
                    r.get(&format!("delivered_{label}"))?,
                    r.get(&format!("rejected_{label}"))?,
                    r.get(&format!("retried_{label}"))?,
                    r.get(&format!("done_ns_{label}"))? as f64 / 1e9
                ));
            }
            println!(
                "  {} round {}: loop {:.3} s, QueueFull waits {}, flush {}; {}; statuses {:?}",
                row.name(),
                i + 1,
                r.get("loop_ns")? as f64 / 1e9,
                r.get("queue_full_waits")?,
                r.text("flush"),
                per_dest.join("; "),
                run.counted.statuses
            );
        }
    }
    for &row in options.rows.iter().filter(|r| !r.is_sdk()) {
        let Some(rounds) = runs.get(row.name()) else { continue };
        let failed: u64 = rounds.iter().filter_map(|r| r.result.get("failed_requests").ok()).sum();
        println!("  {}: {failed} failed requests over all rounds", row.name());
    }
    println!(
        "  the SDK rows' events/s are per destination: its events at the collector / time until the client's stats \
         showed it caught up; baselines: events / their whole run"
    );
    Ok(())
}

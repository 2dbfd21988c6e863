//! What receipts and the outcome stream cost:
//! `cargo bench -p trackway --all-features --bench receipts [-- --n N] [--rounds R]`.
//!
//! Three phases, each in its own child process (this binary re-executed with
//! `TRACKWAY_RECEIPTS_BENCH_PHASE`, so peak RSS is per phase; the runner and the `RESULT` lines are
//! `benches/common`'s), against one collector in sink mode in the parent, through the JSON
//! destination (batches of 100) and the in-memory store:
//!
//! - `plain`: `track` with nobody listening (the baseline: the feature's only cost is one load);
//! - `subscriber`: `track` with one `OutcomeStream` drained by a reader thread;
//! - `unread`: the same stream, never read until the end (its ring overflows; the missed count
//!   makes up the rest): the worker's outcome work without a reader thread competing for the
//!   cores, which tells the two costs apart;
//! - `confirmed`: `track_confirmed`, started 100 at a time, then the 100 receipts awaited;
//! - `baseline`: the cheapest honest sender of the same events: each one built as a
//!   `trackway_wire::Event` (the JSON destination's own format, with the same context fields)
//!   and serialized into batches of 100 POSTed with hyper's HTTP/1 client on one keep-alive
//!   connection, one thread, each answer awaited. Its p50/p99 are per event serialized, its
//!   "worker" CPU is its whole thread's;
//! - `without` (with `--without BIN`): `plain` run by `BIN`, this bench built without the
//!   feature's hot-path code, for the "plain within 5 % of a build without it" A/B. Build it
//!   with `RUSTFLAGS="--cfg trackway_no_receipts" cargo bench -p trackway --all-features
//!   --bench receipts --no-run --target-dir target/no-receipts` and pass the binary it names
//!   as an absolute path (`cargo bench` runs a bench in its crate's directory). That build's
//!   worker never reports an outcome; each phase checks it was run by the right build.
//!
//! Each reports the caller's p50/p99 per call, delivered events per second (first call to the
//! flush that saw them all delivered), the worker thread's CPU per delivered event (its
//! `/proc/self/task/<tid>/schedstat`, found by the name `trackway-worker`: robust to load, unlike
//! wall time), the reader thread's CPU per event separately, and peak RSS (VmHWM). With
//! `--rounds R` the phases run R times, their order rotated each round (so none always runs
//! first or last), and the medians with min–max are printed. Default N is 20 000, 1 round: a
//! quick, noisy run.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use trackway::destination::JsonHttp;
use trackway::receipts::RecvError;
use trackway::store::MemoryStore;
use trackway::{Client, Timestamp, props};
use trackway_wire::{Context as WireContext, Event, EventKind};

const PHASE_ENV: &str = "TRACKWAY_RECEIPTS_BENCH_PHASE";
const URL_ENV: &str = "TRACKWAY_RECEIPTS_BENCH_URL";
const N_ENV: &str = "TRACKWAY_RECEIPTS_BENCH_N";
const PHASES: [&str; 6] = ["plain", "subscriber", "unread", "confirmed", "baseline", "without"];
const BATCH: usize = 100;
/// The reader thread's name, so its CPU is not mistaken for the caller's.
const READER: &str = "outcome-reader";

/// A table column: its title, the `RESULT` key, and how a value is shown.
type Column = (&'static str, &'static str, fn(f64) -> String);

/// `--name V` on the command line, else the environment variable `env`, else `default`.
fn arg(name: &str, env: &str, default: usize) -> anyhow::Result<usize> {
    std::env::args()
        .skip_while(|a| a != name)
        .nth(1)
        .or_else(|| std::env::var(env).ok())
        .map_or(Ok(default), |s| s.parse())
        .with_context(|| format!("{name} N"))
}

fn main() -> anyhow::Result<()> {
    let n = arg("--n", N_ENV, 20_000)?;
    if let Ok(phase) = std::env::var(PHASE_ENV) {
        let url = std::env::var(URL_ENV).context("url")?;
        return if phase == "baseline" { run_baseline(&url, n) } else { run_phase(&phase, &url, n) };
    }
    let rounds = arg("--rounds", "TRACKWAY_RECEIPTS_BENCH_ROUNDS", 1)?.max(1);
    let args: Vec<String> = std::env::args().collect();
    let without =
        args.iter().position(|a| a == "--without").and_then(|i| args.get(i + 1)).map(std::path::PathBuf::from);
    let phases = if without.is_some() { &PHASES[..] } else { &PHASES[..5] };
    let collector = trackway_collector::Collector::builder().sink(true).start().context("collector")?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "receipts bench: N = {n} per phase, {rounds} round(s), phases rotated per round; load average at start: {}",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!("(the machine may be shared: wall-time numbers are indicative; the CPU columns are per thread)");
    let mut results: Vec<Vec<common::PhaseResult>> = phases.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for k in 0..phases.len() {
            let p = (round + k) % phases.len();
            let phase = phases[p];
            let run_as = if phase == "without" { "plain" } else { phase };
            let env = [(PHASE_ENV, run_as.to_owned()), (URL_ENV, collector.url("/events")), (N_ENV, n.to_string())];
            let sunk = collector.sink_stats();
            let mut result = match (&without, phase) {
                (Some(exe), "without") => common::run_child_of(exe, phase, &env)?,
                _ => common::run_child(phase, &env)?,
            };
            // What reached the sink: every event, and its size (the baseline must send what the
            // SDK sends, or its rate says nothing about the SDK's).
            let sunk_now = collector.sink_stats();
            let events = sunk_now.events - sunk.events;
            // (The SDK's phases check their own deliveries, which a long run's store bound may
            // make fewer than N.)
            if phase == "baseline" && events != n as u64 {
                bail!("the baseline: the sink counted {events} events of {n}");
            }
            result.0.insert("bytes_per_event".into(), ((sunk_now.bytes - sunk.bytes) / events.max(1)).to_string());
            // Each build says what it is: an A/B against the wrong binary would be meaningless.
            if result.get("built_without")? != u64::from(phase == "without") {
                bail!("{phase}: built {} the feature's hot path", if phase == "without" { "with" } else { "without" });
            }
            results[p].push(result);
        }
    }
    let columns: [Column; 7] = [
        ("p50 ns", "p50_ns", |v| format!("{v:.0}")),
        ("p99 ns", "p99_ns", |v| format!("{v:.0}")),
        ("delivered/s", "rate", |v| format!("{v:.0}")),
        ("worker ns/ev", "worker_ns_per_event", |v| format!("{v:.0}")),
        ("reader ns/ev", "reader_ns_per_event", |v| format!("{v:.0}")),
        ("peak RSS", "rss_bytes", |v| common::mib(v)),
        ("B/event", "bytes_per_event", |v| format!("{v:.0}")),
    ];
    println!("median [min–max] over {rounds} round(s)");
    print!("{:<11}", "phase");
    for (title, _, _) in &columns {
        print!(" {title:>26}");
    }
    println!();
    for (p, phase) in phases.iter().enumerate() {
        print!("{phase:<11}");
        for (_, key, show) in &columns {
            let values = results[p].iter().map(|r| r.get(key).map(|v| v as f64)).collect::<anyhow::Result<Vec<_>>>()?;
            let min = values.iter().copied().fold(f64::INFINITY, f64::min);
            let max = values.iter().copied().fold(0.0, f64::max);
            let cell = format!("{} [{}–{}]", show(common::median(&values)), show(min), show(max));
            print!(" {cell:>26}");
        }
        println!();
    }
    // Against the plain phase of the same rounds: the targets (≤ 10 % throughput with one
    // subscriber; the caller's p99 within the baseline's min–max).
    let med = |p: usize, key: &str| -> anyhow::Result<f64> {
        let v = results[p].iter().map(|r| r.get(key).map(|v| v as f64)).collect::<anyhow::Result<Vec<_>>>()?;
        Ok(common::median(&v))
    };
    let baseline = phases.iter().position(|p| *p == "baseline").context("the baseline phase")?;
    for (p, phase) in phases.iter().enumerate().filter(|(p, _)| *p != baseline) {
        println!(
            "{phase:<11} delivered/s vs the hyper baseline: {:.2}x",
            med(p, "rate")? / med(baseline, "rate")?.max(1.0)
        );
    }
    for (p, phase) in phases.iter().enumerate().skip(1).filter(|(p, _)| *p != baseline) {
        let rate = med(p, "rate")? / med(0, "rate")?.max(1.0) - 1.0;
        let cpu = med(p, "worker_ns_per_event")? / med(0, "worker_ns_per_event")?.max(1.0) - 1.0;
        println!(
            "{phase:<11} vs plain: delivered/s {:+.1} %, worker CPU per event {:+.1} %",
            rate * 100.0,
            cpu * 100.0
        );
    }
    Ok(())
}

fn run_phase(phase: &str, url: &str, n: usize) -> anyhow::Result<()> {
    let client = Client::builder()
        .destination(JsonHttp::new(url).batch_size(BATCH))
        .store(MemoryStore::new())
        .queue_capacity(n.max(16_384))
        .build()?;
    let reader = (phase == "subscriber")
        .then(|| {
            let mut stream = client.outcomes(16_384);
            std::thread::Builder::new().name(READER.into()).spawn(move || {
                let mut seen = 0u64;
                loop {
                    match stream.recv_timeout(Duration::from_secs(5)) {
                        Ok(_) => seen += 1,
                        Err(RecvError::Missed(m)) => seen += m,
                        Err(RecvError::Closed | RecvError::Empty) => return (seen, common::own_cpu_ns()),
                        Err(_) => {}
                    }
                }
            })
        })
        .transpose()?;
    let mut unread = (phase == "unread").then(|| client.outcomes(16_384));
    let worker_before = common::cpu_of("trackway-worker");
    let mut latencies = Vec::with_capacity(n);
    let started = Instant::now();
    if phase == "confirmed" {
        let mut receipts = Vec::with_capacity(BATCH);
        for i in 0..n {
            let t = Instant::now();
            receipts.push(client.track_confirmed(&format!("user-{}", i % 1000), "bench_event", props! { "i" => i })?);
            latencies.push(common::nanos(t.elapsed()));
            if receipts.len() == BATCH || i + 1 == n {
                for receipt in receipts.drain(..) {
                    let confirmation = receipt.wait(Duration::from_secs(30))?;
                    if !confirmation.is_delivered() {
                        bail!("not delivered: {confirmation:?}");
                    }
                }
            }
        }
    } else {
        for i in 0..n {
            let t = Instant::now();
            client.track(&format!("user-{}", i % 1000), "bench_event", props! { "i" => i })?;
            latencies.push(common::nanos(t.elapsed()));
        }
    }
    client.flush(Duration::from_secs(120))?;
    let elapsed = started.elapsed();
    // Read while the worker lives: an ended thread has no schedstat.
    let worker_cpu = common::cpu_of("trackway-worker").saturating_sub(worker_before);
    let stats = client.stats();
    let delivered = stats.destinations[0].delivered;
    // Past the memory store's bound (a long run) the oldest go as `store_full`: an outcome each.
    let decided = delivered + stats.dropped.store_full;
    client.shutdown(Duration::from_secs(5))?;
    if let Some(stream) = unread.as_mut() {
        let mut missed = 0;
        let seen = stream.drain(&mut missed).len() as u64 + missed;
        if seen != decided {
            bail!("the unread stream held {seen} outcomes (with missed ones) for {decided} decided events");
        }
    }
    let mut reader_cpu = 0;
    if let Some(reader) = reader {
        let (seen, cpu) = reader.join().map_err(|_| anyhow::anyhow!("reader panicked"))?;
        if seen != decided {
            bail!("the subscriber saw {seen} outcomes (with missed ones) for {decided} decided events");
        }
        reader_cpu = cpu;
    }
    if delivered == 0 {
        bail!("nothing was delivered");
    }
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let rate = delivered as f64 / elapsed.as_secs_f64();
    common::report(&[
        ("p50_ns", at(0.5).to_string()),
        ("p99_ns", at(0.99).to_string()),
        ("rate", format!("{rate:.0}")),
        ("worker_ns_per_event", (worker_cpu / delivered).to_string()),
        ("reader_ns_per_event", (reader_cpu / delivered).to_string()),
        ("rss_bytes", common::proc_status_bytes("VmHWM").to_string()),
        ("built_without", u64::from(cfg!(trackway_no_receipts)).to_string()),
    ])
}

/// The `baseline` phase: the same events, built and serialized as the JSON destination's
/// format, POSTed in batches of 100 on one hyper keep-alive connection from one thread.
fn run_baseline(url: &str, n: usize) -> anyhow::Result<()> {
    let (base, path) = url.rsplit_once('/').context("the sink URL has no path")?;
    let path = format!("/{path}");
    let context = Arc::new(WireContext {
        library: "trackway".into(),
        library_version: env!("CARGO_PKG_VERSION").into(),
        os: Some(std::env::consts::OS.into()),
        // As the SDK's context: the OS's name and (on Linux) the kernel release.
        os_name: Some(if cfg!(target_os = "linux") { "Linux" } else { std::env::consts::OS }.into()),
        os_version: std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|v| v.trim().to_owned()),
        ..WireContext::default()
    });
    let users: Vec<String> = (0..1000).map(|u| format!("user-{u}")).collect();
    let authorization = http::HeaderValue::from_static("Bearer bench");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("runtime")?;
    let mut costs = Vec::with_capacity(n);
    let cpu_before = common::own_cpu_ns();
    let started = Instant::now();
    runtime.block_on(async {
        let mut conn = common::HyperConnection::open(base).await?;
        let mut body = Vec::new();
        for first in (0..n).step_by(BATCH) {
            body.clear();
            body.push(b'[');
            for i in first..(first + BATCH).min(n) {
                let t = Instant::now();
                let mut event = Event::new(EventKind::Track, Timestamp::now());
                event.name = Some("bench_event".into());
                event.identity.user_id = Some(users[i % 1000].as_str().into());
                event.properties = props! { "i" => i };
                event.context = context.clone();
                if i > first {
                    body.push(b',');
                }
                serde_json::to_writer(&mut body, &event).context("serializing")?;
                costs.push(common::nanos(t.elapsed()));
            }
            body.push(b']');
            if !conn.post(&path, &authorization, bytes::Bytes::copy_from_slice(&body)).await? {
                bail!("the sink did not take a batch");
            }
        }
        anyhow::Ok(())
    })?;
    let elapsed = started.elapsed();
    let cpu = common::own_cpu_ns().saturating_sub(cpu_before);
    costs.sort_unstable();
    let at = |q: f64| costs[((costs.len() as f64 * q) as usize).min(costs.len() - 1)];
    common::report(&[
        ("p50_ns", at(0.5).to_string()),
        ("p99_ns", at(0.99).to_string()),
        ("rate", format!("{:.0}", n as f64 / elapsed.as_secs_f64())),
        ("worker_ns_per_event", (cpu / n.max(1) as u64).to_string()),
        ("reader_ns_per_event", "0".into()),
        ("rss_bytes", common::proc_status_bytes("VmHWM").to_string()),
        ("built_without", "0".into()),
    ])
}

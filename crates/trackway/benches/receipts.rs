//! What receipts and the outcome stream cost: `cargo bench -p trackway --bench receipts [-- --n N]`.
//!
//! Three phases, each in its own child process (this binary re-executed with
//! `TRACKWAY_RECEIPTS_BENCH_PHASE`, so peak RSS is per phase), against one collector in sink mode
//! in the parent, through the JSON destination (batches of 100) and the in-memory store:
//!
//! - `plain`: `track` with nobody listening (the baseline: the feature's only cost is one load);
//! - `subscriber`: `track` with one `OutcomeStream` read by a thread;
//! - `confirmed`: `track_confirmed`, started 100 at a time, then the 100 receipts awaited.
//!
//! Each prints the caller's p50/p99 per call, delivered events per second (first call to the
//! flush that saw them all delivered) and peak RSS (VmHWM). Default N is 20 000: a quick, noisy
//! run; give `--n` or `TRACKWAY_RECEIPTS_BENCH_N` for more.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use trackway::destination::JsonHttp;
use trackway::receipts::RecvError;
use trackway::store::MemoryStore;
use trackway::{Client, props};

const PHASE_ENV: &str = "TRACKWAY_RECEIPTS_BENCH_PHASE";
const URL_ENV: &str = "TRACKWAY_RECEIPTS_BENCH_URL";
const N_ENV: &str = "TRACKWAY_RECEIPTS_BENCH_N";
const PHASES: [&str; 3] = ["plain", "subscriber", "confirmed"];
const BATCH: usize = 100;

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .skip_while(|a| a != "--n")
        .nth(1)
        .or_else(|| std::env::var(N_ENV).ok())
        .map_or(Ok(20_000), |s| s.parse())
        .context("--n N")?;
    if let Ok(phase) = std::env::var(PHASE_ENV) {
        let url = std::env::var(URL_ENV).context("url")?;
        return run_phase(&phase, &url, n);
    }
    let collector = trackway_collector::Collector::builder().sink(true).start().context("collector")?;
    println!("receipts bench: N = {n} per phase, one run each; the machine is shared: numbers are noisy");
    println!("{:<11} {:>10} {:>10} {:>14} {:>10}", "phase", "p50 ns", "p99 ns", "delivered/s", "peak RSS");
    for phase in PHASES {
        let out = Command::new(std::env::current_exe()?)
            .env(PHASE_ENV, phase)
            .env(URL_ENV, collector.url("/events"))
            .env(N_ENV, n.to_string())
            .output()
            .context("phase")?;
        if !out.status.success() {
            bail!("phase {phase} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
    Ok(())
}

fn run_phase(phase: &str, url: &str, n: usize) -> anyhow::Result<()> {
    let client = Client::builder()
        .destination(JsonHttp::new(url).batch_size(BATCH))
        .store(MemoryStore::new())
        .queue_capacity(n.max(16_384))
        .build()?;
    let reader = (phase == "subscriber").then(|| {
        let mut stream = client.outcomes(16_384);
        std::thread::spawn(move || {
            let mut seen = 0u64;
            loop {
                match stream.recv_timeout(Duration::from_secs(5)) {
                    Ok(_) => seen += 1,
                    Err(RecvError::Missed(m)) => seen += m,
                    Err(RecvError::Closed | RecvError::Empty) => return seen,
                    Err(_) => {}
                }
            }
        })
    });
    let mut latencies = Vec::with_capacity(n);
    let started = Instant::now();
    if phase == "confirmed" {
        let mut receipts = Vec::with_capacity(BATCH);
        for i in 0..n {
            let t = Instant::now();
            receipts.push(client.track_confirmed(&format!("user-{}", i % 1000), "bench_event", props! { "i" => i })?);
            latencies.push(t.elapsed().as_nanos() as u64);
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
            latencies.push(t.elapsed().as_nanos() as u64);
        }
    }
    client.flush(Duration::from_secs(120))?;
    let elapsed = started.elapsed();
    let delivered = client.stats().destinations[0].delivered;
    client.shutdown(Duration::from_secs(5))?;
    if let Some(reader) = reader {
        let seen = reader.join().map_err(|_| anyhow::anyhow!("reader panicked"))?;
        if seen != delivered {
            bail!("the subscriber saw {seen} outcomes (with missed ones) for {delivered} deliveries");
        }
    }
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let rate = delivered as f64 / elapsed.as_secs_f64();
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l[6..].trim().to_owned()))
        .unwrap_or_else(|| "?".into());
    println!("{phase:<11} {:>10} {:>10} {rate:>14.0} {rss:>10}", at(0.5), at(0.99));
    Ok(())
}

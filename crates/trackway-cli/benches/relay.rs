//! The relay's benchmark: `cargo bench -p trackway-cli --bench relay [-- --n 20000 --rounds 1]`.
//!
//! Needs `nats-server` (2.10 or later) on PATH. Each round, on this machine:
//! 1. **ingest**: a fresh single-node JetStream (its own temp directory, a free loopback port),
//!    one `trackway relay serve` process (the release binary cargo builds for the bench), N
//!    Segment `track` calls sent as `/v1/batch` bodies of 100 on `CONNECTIONS` keep-alive
//!    connections (one thread each, each waiting for its answer): events/s from the first request
//!    to the last 200. Every event is meant for two destinations, `s1` and `s2`, each a
//!    `trackway-collector` in sink mode.
//! 2. **1 worker**: one `trackway relay work` process for `s1` drains that backlog: delivered
//!    events/s from the worker's first line (connected) until the collector counted N events.
//! 3. **2 workers**: two `relay work` processes for `s2` (sharing its consumer) drain the same
//!    backlog for `s2`.
//!    Then **end to end**, twice: a fresh JetStream with one `serve` and 1 (then 2) `work`
//!    processes already running while the N events are ingested: delivered events/s from the
//!    first request until the collector counted N.
//! 4. **SDK direct**, the reference: a child process (this binary, re-executed) with a trackway
//!    `Client`, the same JSON destination and the in-memory store, N `track` calls then `flush`.
//! 5. **dedupe window**: two more fresh servers, each given N appends of the same 300-byte body
//!    to a stream with a 1 h duplicate window, one with a distinct `Nats-Msg-Id` per message, one
//!    with none; the server's resident memory after (VmRSS) less its memory before, difference
//!    divided by N, is what JetStream keeps per message id in the window.
//!
//! Peak RSS is each process's VmHWM (from `/proc/<pid>/status`, read just before it is stopped).
//! Lost = N less the events the collector counted (a duplicate would count, so delivered ≥ N
//! with 0 lost is the expected result). Worker settings are the relay's defaults.
// A bench's whole output is the table it prints.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use trackway_collector::{Collector, RunningCollector};

#[path = "../tests/support/spawn.rs"]
mod spawn;

use spawn::KillOnDrop;

const ROLE_ENV: &str = "TRACKWAY_RELAY_BENCH_ROLE";
const URL_ENV: &str = "TRACKWAY_RELAY_BENCH_URL";
const N_ENV: &str = "TRACKWAY_RELAY_BENCH_N";
const KEY: &str = "bench-write-key";
/// Keep-alive connections the ingest is sent on.
const CONNECTIONS: usize = 4;
/// Events per `/v1/batch`.
const BATCH: usize = 100;
/// Longest any phase may take before the bench gives up (a watchdog: nothing hangs forever).
const PHASE_LIMIT: Duration = Duration::from_secs(600);

/// A child process (killed and reaped when dropped), with its memory figures.
struct Proc(KillOnDrop);

impl Proc {
    /// VmHWM (peak resident set) in bytes.
    fn peak_rss(&self) -> u64 {
        proc_status(self.0.0.id(), "VmHWM")
    }
    /// VmRSS (resident set now) in bytes.
    fn rss(&self) -> u64 {
        proc_status(self.0.0.id(), "VmRSS")
    }
}

/// A `kB` field of `/proc/<pid>/status`, in bytes (0 where there is no /proc).
fn proc_status(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A fresh nats-server with JetStream storing under `dir`, and its client URL.
fn nats(dir: &Path) -> anyhow::Result<(Proc, String)> {
    let port = spawn::free_port()?;
    let proc =
        spawn::start_nats(port, &dir.join("jetstream"), &[], &dir.join("nats.log")).map_err(anyhow::Error::msg)?;
    Ok((Proc(proc), format!("nats://127.0.0.1:{port}")))
}

/// Writes a relay configuration with `destinations` (name, collector) and a key to all of them.
fn config(
    dir: &Path,
    file: &str,
    nats_url: &str,
    destinations: &[(&str, &RunningCollector)],
) -> anyhow::Result<String> {
    let mut text = String::new();
    for (name, c) in destinations {
        text.push_str(&format!("[[destination]]\nname = \"{name}\"\ntype = \"json\"\nurl = \"{}\"\n\n", c.url("/e")));
    }
    let names: Vec<String> = destinations.iter().map(|(n, _)| format!("\"{n}\"")).collect();
    text.push_str(&format!(
        "[relay.nats]\nurl = \"{nats_url}\"\nstream = \"BENCH\"\n\n[relay.ingest]\nlisten = \"127.0.0.1:0\"\n\n\
         [[relay.key]]\nname = \"bench\"\nkey = {{ env = \"RELAY_BENCH_KEY\" }}\ndestinations = [{}]\n",
        names.join(", ")
    ));
    let path = dir.join(file);
    std::fs::write(&path, text)?;
    Ok(path.to_string_lossy().into_owned())
}

/// Starts `trackway --config CONFIG relay ARGS`; returns it with its first line, once printed.
fn relay(config: &str, args: &[&str]) -> anyhow::Result<(Proc, String, Instant)> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_trackway"));
    command.args(["--config", config, "relay"]).args(args).env("RELAY_BENCH_KEY", KEY);
    let (proc, line) = spawn::start_with_first_line(&mut command).map_err(anyhow::Error::msg)?;
    Ok((Proc(proc), line, Instant::now()))
}

/// The body of batch `k`: events `k*BATCH ..`, each with its own message id.
fn batch_body(k: usize) -> String {
    let items: Vec<String> = (k * BATCH..(k + 1) * BATCH)
        .map(|i| {
            format!(
                r#"{{"type":"track","userId":"user-{u}","event":"bench_event","messageId":"bench-{i}","properties":{{"bench_seq":{i},"plan":"pro","path":"/checkout","amount":12.5,"items":3}}}}"#,
                u = i % 1000
            )
        })
        .collect();
    format!(r#"{{"batch":[{}]}}"#, items.join(","))
}

/// Sends `batches` batches to `url` on `CONNECTIONS` connections; returns the elapsed time.
fn ingest(url: &str, batches: usize) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let handles: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let url = format!("{url}/v1/batch");
            std::thread::spawn(move || -> anyhow::Result<()> {
                let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build()?;
                for k in (c..batches).step_by(CONNECTIONS) {
                    let body = batch_body(k);
                    // A 503 (JetStream busy) is retried as an SDK would; anything else is a failure.
                    let deadline = Instant::now() + PHASE_LIMIT;
                    loop {
                        let r = client
                            .post(&url)
                            .basic_auth(KEY, Some(""))
                            .header("content-type", "application/json")
                            .body(body.clone())
                            .send()?;
                        match r.status().as_u16() {
                            200 => break,
                            503 if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
                            s => bail!("batch {k}: {s} {}", r.text().unwrap_or_default()),
                        }
                    }
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("an ingest thread panicked"))??;
    }
    Ok(start.elapsed())
}

/// One row of the table.
struct Row {
    phase: String,
    events_per_sec: f64,
    rss: String,
    delivered: u64,
    lost: u64,
}

fn rate(n: u64, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64().max(1e-9)
}

fn mb(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1_048_576.0)
}

/// Waits until `c` counted `n` events (at most `PHASE_LIMIT`); returns when it did.
fn drained(c: &RunningCollector, n: u64) -> Option<Instant> {
    spawn::wait_until(PHASE_LIMIT, Duration::from_millis(10), || c.sink_stats().events >= n).then(Instant::now)
}

fn round(n: usize) -> anyhow::Result<(Vec<Row>, f64)> {
    let batches = n / BATCH;
    let n = (batches * BATCH) as u64;
    let dir = tempfile::tempdir()?;
    let (server, nats_url) = nats(dir.path())?;
    let s1 = Collector::builder().sink(true).start()?;
    let s2 = Collector::builder().sink(true).start()?;
    let both = config(dir.path(), "serve.toml", &nats_url, &[("s1", &s1), ("s2", &s2)])?;
    let only_s1 = config(dir.path(), "s1.toml", &nats_url, &[("s1", &s1)])?;
    let only_s2 = config(dir.path(), "s2.toml", &nats_url, &[("s2", &s2)])?;
    let mut rows = Vec::new();

    // 1. Ingest, no worker running.
    let (serve, line, _) = relay(&both, &["serve"])?;
    let url = line.rsplit(' ').next().context("the serve line names its address")?.to_owned();
    let server_before = server.rss();
    let took = ingest(&url, batches)?;
    let server_after = server.rss();
    rows.push(Row {
        phase: format!("ingest: 1 serve, {CONNECTIONS} conns, batches of {BATCH}"),
        events_per_sec: rate(n, took),
        rss: mb(serve.peak_rss()),
        delivered: n,
        lost: 0,
    });
    drop(serve);

    // 2. One worker drains s1's backlog.
    let (w, line, start) = relay(&only_s1, &["work"])?;
    if !line.contains("working for s1") {
        bail!("unexpected worker line: {line}");
    }
    let done = drained(&s1, n);
    let rss = w.peak_rss();
    drop(w);
    let got = s1.sink_stats().events;
    rows.push(Row {
        phase: "deliver: 1 work (backlog drain)".into(),
        events_per_sec: done.map_or(0.0, |d| rate(n, d - start)),
        rss: mb(rss),
        delivered: got,
        lost: n.saturating_sub(got),
    });

    // 3. Two workers share s2's consumer.
    let (w1, _, start) = relay(&only_s2, &["work"])?;
    let (w2, _, _) = relay(&only_s2, &["work"])?;
    let done = drained(&s2, n);
    let rss = format!("{} + {}", mb(w1.peak_rss()), mb(w2.peak_rss()));
    drop((w1, w2));
    let got = s2.sink_stats().events;
    rows.push(Row {
        phase: "deliver: 2 work (backlog drain)".into(),
        events_per_sec: done.map_or(0.0, |d| rate(n, d - start)),
        rss,
        delivered: got,
        lost: n.saturating_sub(got),
    });
    rows.push(Row {
        phase: "nats-server after ingest (peak)".into(),
        events_per_sec: f64::NAN,
        rss: format!("{} (+{} by ingest)", mb(server.peak_rss()), mb(server_after.saturating_sub(server_before))),
        delivered: 0,
        lost: 0,
    });
    drop(server);

    // 3b. End to end: the workers running while the events come in.
    rows.push(end_to_end(n, 1)?);
    rows.push(end_to_end(n, 2)?);

    // 4. The SDK delivering directly, in a child process (its own peak RSS).
    let direct = Collector::builder().sink(true).start()?;
    let mut child = Command::new(std::env::current_exe()?)
        .env(ROLE_ENV, "sdk")
        .env(URL_ENV, direct.url("/e"))
        .env(N_ENV, n.to_string())
        .stdout(Stdio::piped())
        .spawn()?;
    let out = child.stdout.take().context("stdout")?;
    let proc = KillOnDrop(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(PHASE_LIMIT).context("the SDK phase did not finish")?;
    drop(proc);
    let mut parts = line.split_whitespace().map(|v| v.parse::<u64>().unwrap_or(0));
    let (nanos, peak) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    let got = direct.sink_stats().events;
    rows.push(Row {
        phase: "SDK direct (Client, memory store)".into(),
        events_per_sec: rate(n, Duration::from_nanos(nanos)),
        rss: mb(peak),
        delivered: got,
        lost: n.saturating_sub(got),
    });

    // 5. The dedupe window's memory per message id.
    let with_ids = dedupe_rss(n, true)?;
    let without = dedupe_rss(n, false)?;
    let per_id = (with_ids as f64 - without as f64) / n as f64;
    Ok((rows, per_id))
}

/// A fresh JetStream, one `serve` and `workers` `work` processes already running, then N events
/// ingested as in phase 1: delivered events/s from the first request until the collector counted
/// N. Peak RSS: serve's, then each worker's.
fn end_to_end(n: u64, workers: usize) -> anyhow::Result<Row> {
    let dir = tempfile::tempdir()?;
    let (_server, nats_url) = nats(dir.path())?;
    let sink = Collector::builder().sink(true).start()?;
    let config = config(dir.path(), "e2e.toml", &nats_url, &[("s1", &sink)])?;
    let (serve, line, _) = relay(&config, &["serve"])?;
    let url = line.rsplit(' ').next().context("the serve line names its address")?.to_owned();
    let mut procs = Vec::new();
    for _ in 0..workers {
        procs.push(relay(&config, &["work"])?.0);
    }
    let start = Instant::now();
    ingest(&url, usize::try_from(n)? / BATCH)?;
    let done = drained(&sink, n);
    let mut rss = vec![mb(serve.peak_rss())];
    rss.extend(procs.iter().map(|p| mb(p.peak_rss())));
    let got = sink.sink_stats().events;
    Ok(Row {
        phase: format!("end to end: 1 serve + {workers} work running"),
        events_per_sec: done.map_or(0.0, |d| rate(n, d - start)),
        rss: rss.join(" + "),
        delivered: got,
        lost: n.saturating_sub(got),
    })
}

/// A fresh server's VmRSS growth over `n` appends to a stream with a 1 h duplicate window, with
/// a distinct `Nats-Msg-Id` each or none.
fn dedupe_rss(n: u64, ids: bool) -> anyhow::Result<u64> {
    let dir = tempfile::tempdir()?;
    let (server, url) = nats(dir.path())?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let before = server.rss();
    runtime.block_on(async {
        let client = async_nats::connect(&url).await?;
        let js = async_nats::jetstream::new(client);
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "DEDUPE".into(),
            subjects: vec!["dedupe.>".into()],
            duplicate_window: Duration::from_secs(3600),
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let body = bytes::Bytes::from(vec![b'x'; 300]);
        // In flights of 500, so the server is never more than that behind.
        for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
            let mut acks = Vec::with_capacity(chunk.len());
            for i in chunk {
                let mut headers = async_nats::HeaderMap::new();
                if ids {
                    headers.insert("Nats-Msg-Id", format!("bench:{i:016}").as_str());
                }
                acks.push(
                    js.publish_with_headers("dedupe.events", headers, body.clone())
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?,
                );
            }
            for a in acks {
                a.await.map_err(|e| anyhow::anyhow!("{e}"))?;
            }
        }
        anyhow::Ok(())
    })?;
    // Let the server settle (write-behind buffers) before reading.
    std::thread::sleep(Duration::from_secs(1));
    Ok(server.rss().saturating_sub(before))
}

/// The SDK phase (child): N tracks through a Client with the JSON destination and the
/// in-memory store, then flush; prints `elapsed_nanos peak_rss_bytes`.
fn sdk_phase() -> anyhow::Result<()> {
    use trackway::destination::JsonHttp;
    use trackway::store::MemoryStore;
    use trackway::{Client, props};
    let url = std::env::var(URL_ENV)?;
    let n: u64 = std::env::var(N_ENV)?.parse()?;
    let client = Client::builder().destination(JsonHttp::new(url)).store(MemoryStore::new()).build()?;
    let start = Instant::now();
    for i in 0..n {
        client.track(
            &format!("user-{}", i % 1000),
            "bench_event",
            props! { "bench_seq" => i, "plan" => "pro", "path" => "/checkout", "amount" => 12.5, "items" => 3 },
        )?;
    }
    client.flush(PHASE_LIMIT)?;
    let took = start.elapsed();
    client.shutdown(Duration::from_secs(10))?;
    println!("{} {}", took.as_nanos(), proc_status(std::process::id(), "VmHWM"));
    Ok(())
}

fn arg(args: &[String], name: &str) -> Option<usize> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok())
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() -> anyhow::Result<()> {
    if std::env::var(ROLE_ENV).as_deref() == Ok("sdk") {
        return sdk_phase();
    }
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help") {
        println!("cargo bench -p trackway-cli --bench relay -- [--n 20000] [--rounds 1]  (needs nats-server on PATH)");
        return Ok(());
    }
    let n = arg(&args, "--n").unwrap_or(20_000).max(BATCH);
    let rounds = arg(&args, "--rounds").unwrap_or(1).max(1);
    // Per phase, each round's events/s (the summary's medians); and each round's bytes per id.
    let mut rates: Vec<(String, Vec<f64>)> = Vec::new();
    let mut per_ids = Vec::new();
    for r in 1..=rounds {
        println!("\nrelay bench, round {r}/{rounds}: N = {n}, load average before: {}", load());
        let (rows, per_id) = round(n)?;
        per_ids.push(per_id);
        for row in rows.iter().filter(|r| !r.events_per_sec.is_nan()) {
            match rates.iter_mut().find(|(p, _)| *p == row.phase) {
                Some((_, v)) => v.push(row.events_per_sec),
                None => rates.push((row.phase.clone(), vec![row.events_per_sec])),
            }
        }
        println!("| phase | events/s | peak RSS (MB) | delivered | lost |");
        println!("|---|---:|---:|---:|---:|");
        for row in rows {
            let rate = if row.events_per_sec.is_nan() { "-".to_owned() } else { format!("{:.0}", row.events_per_sec) };
            let (delivered, lost) = if row.delivered == 0 && row.lost == 0 && row.events_per_sec.is_nan() {
                ("-".to_owned(), "-".to_owned())
            } else {
                (row.delivered.to_string(), row.lost.to_string())
            };
            println!("| {} | {rate} | {} | {delivered} | {lost} |", row.phase, row.rss);
        }
        println!(
            "dedupe window: {per_id:.0} bytes of nats-server memory per message id \
             ({} MB more RSS with {n} distinct ids than without; 1 h window)",
            mb((per_id * n as f64).max(0.0) as u64)
        );
        println!("load average after: {}", load());
    }
    if rounds > 1 {
        println!("\nmedians of {rounds} rounds (N = {n}):");
        println!("| phase | events/s (median) | min | max |");
        println!("|---|---:|---:|---:|");
        for (phase, v) in &mut rates {
            v.sort_by(f64::total_cmp);
            println!("| {phase} | {:.0} | {:.0} | {:.0} |", median(v), v[0], v[v.len() - 1]);
        }
        per_ids.sort_by(f64::total_cmp);
        println!("dedupe window: {:.0} bytes per message id (median)", median(&per_ids));
    }
    Ok(())
}

/// The median of sorted, non-empty `v`.
fn median(v: &[f64]) -> f64 {
    let m = v.len() / 2;
    if v.len().is_multiple_of(2) { f64::midpoint(v[m - 1], v[m]) } else { v[m] }
}

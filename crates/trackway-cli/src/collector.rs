//! `trackway collector`: the local collector, printing one line per request.

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use trackway_collector::{Collector, CollectorBuilder, Faults};

/// The HTTP API of a running collector, shown by `trackway collector --help`.
pub(crate) const COLLECTOR_API_HELP: &str = "\
Open the printed URL in a browser for the live page: requests as they arrive, counters, faults.

HTTP API (never recorded, never faulted):
  GET    /_trackway/api/stats     counters, events per path, requests per status
  GET    /_trackway/api/requests  the recorded requests kept in memory, credentials redacted; paged:
                                  ?cursor=SEQ&limit=N (default 1000), next page in x-trackway-next-cursor
  GET    /_trackway/api/events    events received; filters: ?user=ID&name=N&type=T&path=P&status=CODE&destination=D&limit=L
  GET    /_trackway/api/faults    the current faults, as JSON
  PUT    /_trackway/api/faults    replace the faults, e.g. '{\"fail_every\":2,\"retry_after\":\"1\"}' (400 on bad JSON)
  DELETE /_trackway/api/faults    clear the faults

Fault fields in JSON have the names of the flags with '_' for '-' (fail_every, fail_status,
fail_for_ms, retry_after, latency_ms, close_every, rate_limit), and echo_request for --fail-echo.";

/// `trackway collector` options.
#[derive(Debug, Args)]
#[command(after_help = COLLECTOR_API_HELP)]
pub(crate) struct CollectorArgs {
    /// Address to listen on, HOST:PORT (port 0: any free port; the real one is printed).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8787")]
    listen: String,
    /// Count requests and events but keep and print nothing (for benchmarks).
    #[arg(long)]
    sink: bool,
    /// Also keep every request and its decoded events in this SQLite file (credentials in
    /// headers redacted); started again on the same file, the collector serves them too.
    #[arg(long, value_name = "FILE", conflicts_with = "sink")]
    store: Option<PathBuf>,
    /// Which Umami release /api/send and /api/batch behave like, down to the fields it
    /// silently drops: 3.1 (default), 2.18, 2.17, 2.15 or 2.10 (no /api/batch before 2.17,
    /// `tag` from 2.11, `timestamp` from 2.17, the distinct `id` from 2.18).
    #[arg(long, value_name = "VERSION", default_value = "3.1")]
    umami_version: trackway_collector::UmamiMode,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    faults: FaultArgs,
}

/// What one client can make the collector hold.
#[derive(Debug, Args)]
#[command(next_help_heading = "Limits")]
pub(crate) struct LimitArgs {
    /// Answer 413 to a request body over this many bytes (default 8 MiB).
    #[arg(long, value_name = "BYTES", default_value_t = trackway_collector::DEFAULT_MAX_BODY_BYTES,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_body_bytes: usize,
    /// Keep at most this many bytes of request bodies in memory; the oldest requests are evicted
    /// (and counted) beyond it (default 128 MiB).
    #[arg(long, value_name = "BYTES", default_value_t = trackway_collector::DEFAULT_MAX_KEPT_BYTES)]
    max_kept_bytes: usize,
    /// Answer 408 to a request whose body has not fully arrived after this many milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    body_timeout_ms: u64,
}

/// Faults to inject from the start; they can be changed at run time over the HTTP API.
#[derive(Debug, Args)]
#[command(next_help_heading = "Fault injection")]
pub(crate) struct FaultArgs {
    /// Answer every Nth request with --fail-status.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    fail_every: Option<u64>,
    /// Status of injected failures.
    #[arg(long, value_name = "CODE", default_value_t = 503, value_parser = clap::value_parser!(u16).range(100..=999))]
    fail_status: u16,
    /// Answer every request with --fail-status for the first MS milliseconds.
    #[arg(long, value_name = "MS")]
    fail_for_ms: Option<u64>,
    /// Retry-After header of injected failures and rate-limit 429s (default for 429s: 1).
    #[arg(long, value_name = "VALUE")]
    retry_after: Option<String>,
    /// Wait MS milliseconds before answering every request.
    #[arg(long, value_name = "MS")]
    latency_ms: Option<u64>,
    /// Close the connection without answering every Nth request.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    close_every: Option<u64>,
    /// Answer 429 to requests beyond N within a 1-second window.
    #[arg(long, value_name = "N")]
    rate_limit: Option<u32>,
    /// Injected failures carry the whole request in their body, credentials included (a
    /// careless server's error page), for checking that a client keeps them out of its output.
    #[arg(long)]
    fail_echo: bool,
}

impl FaultArgs {
    fn into_faults(self) -> anyhow::Result<Faults> {
        let faults = Faults {
            fail_every: self.fail_every,
            fail_status: self.fail_status,
            fail_for_ms: self.fail_for_ms,
            retry_after: self.retry_after,
            latency_ms: self.latency_ms,
            close_every: self.close_every,
            rate_limit: self.rate_limit,
            echo_request: self.fail_echo,
        };
        faults.validate()?;
        Ok(faults)
    }
}

/// Runs `trackway collector` until interrupted.
pub(crate) fn run(args: CollectorArgs) -> anyhow::Result<()> {
    let faults = args.faults.into_faults()?;
    let addr = parse_listen(&args.listen)?;
    let mut builder = Collector::builder()
        .listen(addr)
        .sink(args.sink)
        .umami_mode(args.umami_version)
        .max_body_bytes(args.limits.max_body_bytes)
        .max_kept_bytes(args.limits.max_kept_bytes)
        .body_timeout(Duration::from_millis(args.limits.body_timeout_ms));
    if let Some(path) = &args.store {
        builder = builder.store(path);
    }
    run_collector(builder, addr, args.sink, args.store, faults)
}

/// `--listen`: a socket address, or a host name and port resolved to its first address.
fn parse_listen(listen: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(addr) = listen.parse() {
        return Ok(addr);
    }
    let invalid = || format!("invalid --listen address {listen:?}: expected HOST:PORT, e.g. 127.0.0.1:8787");
    listen.to_socket_addrs().with_context(invalid)?.next().with_context(invalid)
}

fn run_collector(
    builder: CollectorBuilder,
    addr: SocketAddr,
    sink: bool,
    store: Option<PathBuf>,
    faults: Faults,
) -> anyhow::Result<()> {
    let active = faults.is_active();
    let collector = builder.faults(faults).start().with_context(|| match &store {
        Some(path) => format!("cannot start on {addr} with the store {}", path.display()),
        None => format!("cannot listen on {addr}"),
    })?;
    // Ctrl-C stops the loop below, so the collector is dropped and its store file finished.
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&interrupted);
    ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed)).context("cannot handle Ctrl-C")?;
    let mut out = std::io::stdout().lock();
    // The first line is an interface: a process that spawned us reads the URL from it.
    writeln!(out, "trackway collector listening on {}", collector.url("/"))?;
    if active {
        writeln!(out, "injecting faults: {}", serde_json::to_string(&collector.faults())?)?;
    }
    // Requests of earlier runs read back from the store are counted, not printed again.
    let mut next = collector.sink_stats().requests;
    if let Some(path) = &store {
        writeln!(out, "keeping requests in {} ({next} from earlier runs)", path.display())?;
    }
    out.flush()?;
    while !interrupted.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        if sink {
            continue;
        }
        // Only what arrived since the last look (not a copy of everything kept).
        let requests = collector.requests_since(next);
        for r in &requests {
            if r.seq > next {
                writeln!(out, "({} requests evicted from memory before they were printed)", r.seq - next)?;
            }
            next = r.seq + 1;
            let events = match r.json() {
                Some(serde_json::Value::Array(a)) => a.len(),
                Some(_) => 1,
                None => 0,
            };
            writeln!(
                out,
                "{} {} -> {} ({} events, {} bytes, {})",
                r.method,
                r.path,
                r.status,
                events,
                r.body.len(),
                r.destination
            )?;
        }
        out.flush()?;
    }
    drop(out);
    collector.shutdown();
    Ok(())
}

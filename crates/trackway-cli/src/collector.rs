//! `trackway collector`: the local collector, printing one line per request.

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use trackway_collector::{Collector, Faults};

/// The HTTP API of a running collector, shown by `trackway collector --help`.
pub(crate) const COLLECTOR_API_HELP: &str = "\
Open the printed URL in a browser for the live page: requests as they arrive, counters, faults.

HTTP API (never recorded, never faulted):
  GET    /_trackway/api/stats     counters, events per path, requests per status
  GET    /_trackway/api/requests  the recorded requests
  GET    /_trackway/api/events    events received; filters: ?user=ID&name=N&type=T&path=P&status=CODE&destination=D&limit=L
  GET    /_trackway/api/faults    the current faults, as JSON
  PUT    /_trackway/api/faults    replace the faults, e.g. '{\"fail_every\":2,\"retry_after\":\"1\"}' (400 on bad JSON)
  DELETE /_trackway/api/faults    clear the faults

Fault fields in JSON have the names of the flags with '_' for '-' (fail_every, fail_status,
fail_for_ms, retry_after, latency_ms, close_every, rate_limit).";

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
    faults: FaultArgs,
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
        };
        faults.validate()?;
        Ok(faults)
    }
}

/// Runs `trackway collector` until interrupted.
pub(crate) fn run(args: CollectorArgs) -> anyhow::Result<()> {
    let faults = args.faults.into_faults()?;
    run_collector(&args.listen, args.sink, args.store, faults, args.umami_version)
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
    listen: &str,
    sink: bool,
    store: Option<PathBuf>,
    faults: Faults,
    umami: trackway_collector::UmamiMode,
) -> anyhow::Result<()> {
    let addr = parse_listen(listen)?;
    let active = faults.is_active();
    let mut builder = Collector::builder().listen(addr).sink(sink).faults(faults).umami_mode(umami);
    if let Some(path) = &store {
        builder = builder.store(path);
    }
    let collector = builder.start().with_context(|| match &store {
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
    let mut shown = collector.requests().len();
    if let Some(path) = &store {
        writeln!(out, "keeping requests in {} ({shown} from earlier runs)", path.display())?;
    }
    out.flush()?;
    while !interrupted.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        if sink {
            continue;
        }
        let requests = collector.requests();
        for r in requests.iter().skip(shown) {
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
        shown = requests.len();
        out.flush()?;
    }
    drop(out);
    collector.shutdown();
    Ok(())
}

//! The `trackway` command line.
//!
//! For now it runs the local collector (`trackway collector`); sending, importing and inspecting
//! the outbox come with the durable outbox.

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use trackway_collector::{Collector, Faults};

/// trackway: customer-event tracking, one API, many destinations.
#[derive(Debug, Parser)]
#[command(name = "trackway", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The HTTP API of a running collector, shown by `trackway collector --help`.
const COLLECTOR_API_HELP: &str = "\
HTTP API (never recorded, never faulted):
  GET    /_trackway/api/stats     counters, events per path, requests per status
  GET    /_trackway/api/requests  the recorded requests
  GET    /_trackway/api/events    events received; filters: ?user=ID&name=N&type=T&path=P&status=CODE&limit=L
  GET    /_trackway/api/faults    the current faults, as JSON
  PUT    /_trackway/api/faults    replace the faults, e.g. '{\"fail_every\":2,\"retry_after\":\"1\"}' (400 on bad JSON)
  DELETE /_trackway/api/faults    clear the faults

Fault fields in JSON have the names of the flags with '_' for '-' (fail_every, fail_status,
fail_for_ms, retry_after, latency_ms, close_every, rate_limit).";

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the local collector: it accepts events on any path, answers 200 (or an injected fault)
    /// and prints one line per request until interrupted (Ctrl-C).
    #[command(after_help = COLLECTOR_API_HELP)]
    Collector {
        /// Address to listen on, HOST:PORT (port 0: any free port; the real one is printed).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8787")]
        listen: String,
        /// Count requests and events but keep and print nothing (for benchmarks).
        #[arg(long)]
        sink: bool,
        #[command(flatten)]
        faults: FaultArgs,
    },
}

/// Faults to inject from the start; they can be changed at run time over the HTTP API.
#[derive(Debug, Args)]
#[command(next_help_heading = "Fault injection")]
struct FaultArgs {
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

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Collector { listen, sink, faults } => run_collector(&listen, sink, faults.into_faults()?),
    }
}

/// `--listen`: a socket address, or a host name and port resolved to its first address.
fn parse_listen(listen: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(addr) = listen.parse() {
        return Ok(addr);
    }
    let invalid = || format!("invalid --listen address {listen:?}: expected HOST:PORT, e.g. 127.0.0.1:8787");
    listen.to_socket_addrs().with_context(invalid)?.next().with_context(invalid)
}

fn run_collector(listen: &str, sink: bool, faults: Faults) -> anyhow::Result<()> {
    let addr = parse_listen(listen)?;
    let active = faults.is_active();
    let collector = Collector::builder()
        .listen(addr)
        .sink(sink)
        .faults(faults)
        .start()
        .with_context(|| format!("cannot listen on {addr}"))?;
    let mut out = std::io::stdout().lock();
    // The first line is an interface: a process that spawned us reads the URL from it.
    writeln!(out, "trackway collector listening on {}", collector.url("/"))?;
    if active {
        writeln!(out, "injecting faults: {}", serde_json::to_string(&collector.faults())?)?;
    }
    out.flush()?;
    let mut shown = 0;
    // The process ends on Ctrl-C (default SIGINT action): the collector keeps nothing on disk,
    // so there is nothing to clean up.
    loop {
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
            writeln!(out, "{} {} -> {} ({} events, {} bytes)", r.method, r.path, r.status, events, r.body.len())?;
        }
        shown = requests.len();
        out.flush()?;
    }
}

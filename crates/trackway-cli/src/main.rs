//! The `trackway` command line.
//!
//! For now it runs the local collector (`trackway collector`); sending, importing and inspecting
//! the outbox come with the durable outbox.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use trackway_collector::Collector;

/// trackway: customer-event tracking, one API, many destinations.
#[derive(Debug, Parser)]
#[command(name = "trackway", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the local collector: it accepts events on any path, answers 200 and prints one line per
    /// request until interrupted (Ctrl-C).
    Collector {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8787")]
        listen: SocketAddr,
        /// Count requests and events but keep and print nothing (for benchmarks).
        #[arg(long)]
        sink: bool,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Collector { listen, sink } => run_collector(listen, sink),
    }
}

fn run_collector(listen: SocketAddr, sink: bool) -> anyhow::Result<()> {
    let collector =
        Collector::builder().listen(listen).sink(sink).start().with_context(|| format!("cannot listen on {listen}"))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "trackway collector listening on {}", collector.url("/"))?;
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

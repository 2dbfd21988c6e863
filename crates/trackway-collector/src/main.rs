//! `trackway-collector`: runs a collector as its own process.
//!
//! Prints exactly one line, `listening on http://127.0.0.1:PORT`, on stdout once bound, then
//! serves until its standard input reaches end of file (exit 0) or it is killed. A benchmark
//! spawns it with a piped stdin, reads the first stdout line to learn the port, and closes stdin
//! to stop it. Spawned with stdin from `/dev/null` it would exit at once.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use trackway_collector::Collector;

/// A local server that stands in for trackway's destinations.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Sink mode: count requests, events and bytes, keep nothing, answer at once (Umami's
    /// success answers on its paths, 200 `{}` elsewhere).
    #[arg(long)]
    sink: bool,
    /// Also keep every request and its decoded events in this SQLite file (credentials
    /// redacted); a collector started on the same file serves the earlier requests too.
    #[arg(long, value_name = "FILE", conflicts_with = "sink")]
    store: Option<std::path::PathBuf>,
    /// Which Umami release /api/send and /api/batch behave like, down to the fields it
    /// silently drops: 3.1 (default), 2.18, 2.17, 2.15 or 2.10 (no /api/batch before 2.17,
    /// `tag` from 2.11, `timestamp` from 2.17, the distinct `id` from 2.18).
    #[arg(long, value_name = "VERSION", default_value = "3.1")]
    umami_version: trackway_collector::UmamiMode,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut builder = Collector::builder().listen(args.listen).sink(args.sink).umami_mode(args.umami_version);
    if let Some(path) = &args.store {
        builder = builder.store(path);
    }
    let collector = builder.start().with_context(|| format!("cannot listen on {}", args.listen))?;

    // The one stdout line is this binary's interface: the spawning process reads the port from
    // it. `writeln!` rather than `println!` so a closed pipe is an error, not a panic; flushed
    // because stdout is block-buffered when it is a pipe.
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "listening on {}", collector.url("")).context("writing to stdout")?;
    stdout.flush().context("flushing stdout")?;
    drop(stdout);

    // Serve (on the collector's own thread) until stdin closes.
    let mut stdin = io::stdin().lock();
    let mut buf = [0u8; 1024];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("reading stdin"),
        }
    }
    collector.shutdown();
    Ok(())
}

//! The `trackway` command line: the demo, the local collector, sending one event, importing a
//! file of events, and inspecting the durable outbox.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod collector;
mod config;
mod demo;
mod import;
mod jsonl;
mod outbox;
mod outcomes;
mod relay;
mod report;
mod send;

/// trackway: customer-event tracking, one API, many destinations.
#[derive(Debug, Parser)]
#[command(name = "trackway", version, about)]
struct Cli {
    /// Configuration file (TOML): the destinations and the store. Header secrets are named
    /// there as environment variables (`{ env = "VAR" }`), never written in the file.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the collector, send a realistic app session through the SDK to every destination
    /// (pointed at the collector), print what each received and the live page's URL.
    Demo(demo::DemoArgs),
    /// Run the local collector: it accepts events on any path, answers 200 (or an injected fault)
    /// and prints one line per request until interrupted (Ctrl-C).
    Collector(collector::CollectorArgs),
    /// Send one event to the configured destinations and report whether it was delivered.
    Send(send::SendArgs),
    /// Import events from a JSON Lines file through the durable store (resumable).
    Import(import::ImportArgs),
    /// Inspect the durable outbox: counts, dead letters, requeueing them.
    #[command(subcommand)]
    Outbox(outbox::OutboxCommand),
    /// The relay on NATS JetStream: ingest (trackway JSON and the Segment HTTP API), delivery
    /// workers and dead letters, configured by the `[relay]` tables of --config.
    #[command(subcommand)]
    Relay(relay::RelayCommand),
}

/// What a subcommand found: success, or a failure it has already reported.
pub(crate) enum Outcome {
    /// Everything went through.
    Ok,
    /// Something was not delivered or not accepted; the command printed why.
    Failed,
}

/// Sends the SDK's and the collector's `tracing` lines to stderr, filtered by `RUST_LOG` (e.g.
/// `RUST_LOG=trackway=debug`, `RUST_LOG=trace`); without it, or with a filter that does not
/// parse, nothing is logged, so the commands' own output stays all there is. An invalid filter
/// is said once, on stderr, rather than ignored silently.
fn init_logging() {
    let filter = match std::env::var("RUST_LOG") {
        Err(_) => return,
        Ok(text) if text.trim().is_empty() => return,
        Ok(text) => match tracing_subscriber::EnvFilter::try_new(&text) {
            Ok(filter) => filter,
            Err(e) => {
                #[allow(clippy::print_stderr, reason = "the only way to say the filter is wrong")]
                {
                    eprintln!("warning: RUST_LOG={text:?} is not a valid filter ({e}); logging stays off");
                }
                return;
            }
        },
    };
    // Err only if a subscriber is already set, which nothing here does.
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let config = cli.config.as_deref();
    let result = match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Collector(args) => collector::run(args).map(|()| Outcome::Ok),
        Command::Send(args) => send::run(config, args),
        Command::Import(args) => import::run(config, args),
        Command::Outbox(command) => outbox::run(config, command),
        Command::Relay(command) => relay::run(config, command),
    };
    match result {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::FAILURE,
        Err(e) => {
            #[allow(clippy::print_stderr, reason = "the command's error message")]
            {
                eprintln!("error: {e:#}");
            }
            ExitCode::from(2)
        }
    }
}

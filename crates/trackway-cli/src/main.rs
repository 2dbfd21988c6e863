//! The `trackway` command line: the demo, the local collector, sending one event, importing a
//! file of events, and inspecting the durable outbox.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod collector;
mod config;
mod demo;
mod import;
mod outbox;
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
}

/// What a subcommand found: success, or a failure it has already reported.
pub(crate) enum Outcome {
    /// Everything went through.
    Ok,
    /// Something was not delivered or not accepted; the command printed why.
    Failed,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = cli.config.as_deref();
    let result = match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Collector(args) => collector::run(args).map(|()| Outcome::Ok),
        Command::Send(args) => send::run(config, args),
        Command::Import(args) => import::run(config, args),
        Command::Outbox(command) => outbox::run(config, command),
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

//! `trackway relay serve|work|dead`: the relay on NATS JetStream (see the `trackway-relay` crate).

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use trackway_relay::ingest::Ingest;
use trackway_relay::jetstream::JetStream;
use trackway_relay::metrics::Metrics;
use trackway_relay::worker::Workers;

use crate::Outcome;
use crate::config::{self, Config};

/// `trackway relay` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum RelayCommand {
    /// The HTTP ingest: trackway JSON at POST /v1/events and the Segment HTTP Tracking API at
    /// POST /v1/track|identify|page|screen|alias|group|batch; /healthz, /readyz, /metrics.
    Serve(ServeArgs),
    /// A delivery worker for every configured destination (run as many as needed: they share
    /// each destination's consumer; a destination that keeps order per person is shared
    /// partition by partition, each partition with one worker at a time).
    Work,
    /// The dead letters.
    #[command(subcommand)]
    Dead(DeadCommand),
}

/// `trackway relay serve` options.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on (overrides `[relay.ingest] listen`; port 0 picks a free one, printed).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
}

/// `trackway relay dead` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum DeadCommand {
    /// One line per dead letter: position, destination, message id, reason.
    List {
        /// Only this destination's.
        #[arg(long)]
        destination: Option<String>,
    },
    /// Put dead letters back for delivery to their destination (and remove them here).
    Requeue {
        /// Only this destination's.
        #[arg(long)]
        destination: Option<String>,
    },
}

/// Runs a relay subcommand.
pub(crate) fn run(config: Option<&Path>, command: RelayCommand) -> anyhow::Result<Outcome> {
    let config = config::require(config, "trackway relay")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    match command {
        RelayCommand::Serve(args) => runtime.block_on(serve(&config, args)),
        RelayCommand::Work => {
            // Built outside the runtime: the destinations' HTTP clients are made here.
            let deliverers = config::deliverers(config.destinations()?, &config.relay().worker.retry_policy())?;
            runtime.block_on(work(&config, deliverers))
        }
        RelayCommand::Dead(command) => runtime.block_on(dead(&config, command)),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Creates the streams, retrying every second until JetStream answers (the ingest answers 503
/// meanwhile).
fn ensure_streams_in_background(js: Arc<JetStream>) {
    tokio::spawn(async move {
        loop {
            match js.ensure_streams().await {
                Ok(()) => return,
                Err(e) => tracing::warn!(error = %e, "JetStream not ready; retrying in 1 s"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

#[allow(clippy::print_stdout, reason = "the command's output: the address it listens on")]
async fn serve(config: &Config, args: ServeArgs) -> anyhow::Result<Outcome> {
    let relay = config.relay();
    let names = config.destination_names();
    let keys = relay.write_keys(&names)?;
    let js = Arc::new(JetStream::connect(&relay.nats, &relay.worker).await?);
    ensure_streams_in_background(js.clone());
    let listen = args.listen.unwrap_or_else(|| relay.ingest.listen.clone());
    let listener = tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("listening on {listen}"))?;
    let addr = listener.local_addr()?;
    println!("trackway relay listening on http://{addr}");
    let _ = std::io::stdout().flush();
    let ingest = Ingest::new(js, keys, relay.ingest.clone(), relay.nats.events_subject(), names, Arc::default())
        .partitions(relay.nats.partition_count());
    ingest.serve(listener, stop_signal()).await?;
    Ok(Outcome::Ok)
}

#[allow(clippy::print_stdout, reason = "the command's output: which destinations it works for")]
async fn work(config: &Config, deliverers: Vec<trackway::engine::Deliverer>) -> anyhow::Result<Outcome> {
    let relay = config.relay();
    let js = Arc::new(JetStream::connect(&relay.nats, &relay.worker).await?);
    // Consumers need the stream: wait for it, but give up on a stop signal.
    loop {
        match js.ensure_streams().await {
            Ok(()) => break,
            Err(e) => tracing::warn!(error = %e, "JetStream not ready; retrying in 1 s"),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = stop_signal() => return Ok(Outcome::Ok),
        }
    }
    let metrics = Arc::new(Metrics::default());
    let names: Vec<String> = deliverers.iter().map(|d| d.name().to_owned()).collect();
    let mut line = format!("trackway relay working for {}", names.join(", "));
    if let Some(listen) = &relay.worker.metrics_listen {
        let listener =
            tokio::net::TcpListener::bind(listen).await.with_context(|| format!("metrics listening on {listen}"))?;
        line.push_str(&format!("; metrics on http://{}/metrics", listener.local_addr()?));
        tokio::spawn(trackway_relay::metrics::serve(listener, metrics.clone(), stop_signal()));
    }
    println!("{line}");
    let _ = std::io::stdout().flush();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        stop_signal().await;
        let _ = stop_tx.send(true);
    });
    let dead_prefix = format!("{}.dead.", relay.nats.stream);
    Workers::new(js, deliverers, relay.worker.clone(), dead_prefix, metrics)
        .merge_aliases(config.merge_alias_destinations())
        .partitions(relay.nats.partition_count())
        .run(stop_rx)
        .await;
    Ok(Outcome::Ok)
}

#[allow(clippy::print_stdout, reason = "the command's output")]
async fn dead(config: &Config, command: DeadCommand) -> anyhow::Result<Outcome> {
    let relay = config.relay();
    let js = JetStream::connect(&relay.nats, &relay.worker).await?;
    match command {
        DeadCommand::List { destination } => {
            let letters = trackway_relay::dead::list(&js, destination.as_deref()).await?;
            for l in &letters {
                println!("{}\t{}\t{}\t{}", l.sequence, l.destination, l.msg_id, l.reason);
            }
            println!("{} dead letter(s)", letters.len());
        }
        DeadCommand::Requeue { destination } => {
            let n = trackway_relay::dead::requeue(&js, destination.as_deref()).await?;
            println!("{n} dead letter(s) requeued");
        }
    }
    Ok(Outcome::Ok)
}

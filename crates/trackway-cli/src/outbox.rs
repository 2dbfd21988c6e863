//! `trackway outbox stats|dead|requeue|move|drop`: look into the durable store, read-only while
//! another process uses it (and in a read-only directory), requeue its dead letters, and say
//! what becomes of the events of a destination that is no longer configured.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use serde_json::json;
use trackway::Client;
use trackway::store::{DeadLetter, SqliteStore, StoreError};

use crate::Outcome;
use crate::config::{self, Config};

/// `trackway outbox` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum OutboxCommand {
    /// Counts: stored events, pending per destination, dead letters, file size. Read-only: works
    /// while another process uses the store.
    Stats(StoreArgs),
    /// Lists the dead letters (oldest first) with the server's answer. Read-only.
    Dead {
        #[command(flatten)]
        store: StoreArgs,
        /// Most dead letters to list.
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: usize,
    },
    /// Queues the dead letters again for the destination that gave up on them, and tries to
    /// deliver them. Needs the store's lock and --config with the destinations (events of a
    /// stored destination missing from the configuration are kept, and reported).
    Requeue {
        #[command(flatten)]
        store: StoreArgs,
        /// Only the dead letters of this destination.
        #[arg(long, value_name = "NAME")]
        destination: Option<String>,
        /// Most dead letters to requeue.
        #[arg(long, value_name = "N", default_value_t = 10_000)]
        limit: usize,
        /// How long to try delivering them, in seconds (undelivered ones stay in the store).
        #[arg(long, value_name = "SECS", default_value_t = 10)]
        timeout: u64,
    },
    /// Moves the pending events of a stored destination (one renamed or removed from the
    /// configuration) to another destination, which delivers them on its next run. Needs the
    /// store's lock.
    Move {
        #[command(flatten)]
        store: StoreArgs,
        /// The stored destination whose events move (e.g. its old name).
        #[arg(long, value_name = "NAME")]
        from: String,
        /// The destination that takes them (e.g. its new name).
        #[arg(long, value_name = "NAME")]
        to: String,
    },
    /// Drops the pending events of a stored destination, and forgets it (events another
    /// destination still has to deliver stay for that one). Needs the store's lock.
    Drop {
        #[command(flatten)]
        store: StoreArgs,
        /// The stored destination whose events are dropped.
        #[arg(long, value_name = "NAME")]
        destination: String,
    },
}

/// Which store, and how to print.
#[derive(Debug, Args)]
pub(crate) struct StoreArgs {
    /// The store file (default: `[store] path` of --config).
    #[arg(long, value_name = "FILE")]
    store: Option<PathBuf>,
    /// Machine-readable output (JSON).
    #[arg(long)]
    json: bool,
}

impl StoreArgs {
    fn path(&self, config: Option<&Config>) -> anyhow::Result<PathBuf> {
        match (&self.store, config.and_then(Config::store_path)) {
            (Some(path), _) => Ok(path.clone()),
            (None, Some(path)) => Ok(path),
            (None, None) => bail!("which store? pass --store FILE (or --config with a [store] path)"),
        }
    }
}

/// Runs `trackway outbox ...`.
pub(crate) fn run(config_path: Option<&Path>, command: OutboxCommand) -> anyhow::Result<Outcome> {
    let config = config_path.map(Config::load).transpose()?;
    match command {
        OutboxCommand::Stats(args) => stats(&args.path(config.as_ref())?, args.json),
        OutboxCommand::Dead { store, limit } => dead(&store.path(config.as_ref())?, store.json, limit),
        OutboxCommand::Requeue { store, destination, limit, timeout } => {
            let path = store.path(config.as_ref())?;
            let config = config.context("trackway outbox requeue needs the destinations: pass --config FILE")?;
            requeue(&config, &path, store.json, destination.as_deref(), limit, Duration::from_secs(timeout))
        }
        OutboxCommand::Move { store, from, to } => {
            let path = store.path(config.as_ref())?;
            check_lock(&path, "move events")?;
            let moved = SqliteStore::move_pending(&path, &from, &to)
                .with_context(|| format!("cannot move the events of `{from}` in {}", path.display()))?;
            let value = json!({ "store": path.display().to_string(), "moved": moved, "from": from, "to": to });
            print_done(store.json, &value, &format!("moved {moved} pending event(s) from `{from}` to `{to}`"))
        }
        OutboxCommand::Drop { store, destination } => {
            let path = store.path(config.as_ref())?;
            check_lock(&path, "drop events")?;
            let dropped = SqliteStore::drop_pending(&path, &destination)
                .with_context(|| format!("cannot drop the events of `{destination}` in {}", path.display()))?;
            let value = json!({ "store": path.display().to_string(), "dropped": dropped, "destination": destination });
            print_done(store.json, &value, &format!("dropped {dropped} pending event(s) of `{destination}`"))
        }
    }
}

/// Prints the result of `move` / `drop`.
fn print_done(json: bool, value: &serde_json::Value, text: &str) -> anyhow::Result<Outcome> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{value}")?;
    } else {
        writeln!(out, "{text}")?;
    }
    out.flush()?;
    Ok(Outcome::Ok)
}

fn stats(path: &Path, json: bool) -> anyhow::Result<Outcome> {
    let found = SqliteStore::inspect(path).with_context(|| format!("cannot inspect {}", path.display()))?;
    let mut out = std::io::stdout().lock();
    if json {
        let pending: serde_json::Map<String, serde_json::Value> =
            found.pending.iter().map(|(name, n)| (name.clone(), json!(n))).collect();
        let value = json!({
            "store": path.display().to_string(),
            "events": found.events,
            "pending": pending,
            "dead_letters": found.dead_letters,
            "file_bytes": found.file_bytes,
        });
        writeln!(out, "{value}")?;
    } else {
        writeln!(out, "store:        {}", path.display())?;
        writeln!(out, "events:       {} stored (committed, not yet delivered everywhere)", found.events)?;
        for (name, n) in &found.pending {
            writeln!(out, "pending:      {n} for {name}")?;
        }
        writeln!(out, "dead letters: {}", found.dead_letters)?;
        writeln!(out, "file size:    {} bytes (with its WAL)", found.file_bytes)?;
    }
    out.flush()?;
    Ok(Outcome::Ok)
}

/// A dead letter as JSON.
pub(crate) fn letter_json(l: &DeadLetter) -> serde_json::Value {
    let event: serde_json::Value =
        serde_json::from_slice(&l.event).unwrap_or_else(|_| json!(String::from_utf8_lossy(&l.event)));
    json!({
        "key": l.key,
        "id": l.id.to_string(),
        "destination": l.destination,
        "reason": l.reason.as_str(),
        "detail": l.detail,
        "at": l.at.to_string(),
        "event": event,
    })
}

fn dead(path: &Path, json: bool, limit: usize) -> anyhow::Result<Outcome> {
    let letters = SqliteStore::read_dead_letters(path, limit)
        .with_context(|| format!("cannot read the dead letters of {}", path.display()))?;
    let mut out = std::io::stdout().lock();
    if json {
        let all: Vec<serde_json::Value> = letters.iter().map(letter_json).collect();
        writeln!(out, "{}", serde_json::Value::Array(all))?;
    } else if letters.is_empty() {
        writeln!(out, "no dead letters in {}", path.display())?;
    } else {
        for l in &letters {
            writeln!(out, "{} {} {} {}: {} ({})", l.at, l.destination, l.id, l.reason, l.detail, event_summary(l))?;
        }
        writeln!(out, "{} dead letter(s)", letters.len())?;
    }
    out.flush()?;
    Ok(Outcome::Ok)
}

/// `type name user` of a dead letter's event, for the human listing.
fn event_summary(l: &DeadLetter) -> String {
    let Ok(event) = serde_json::from_slice::<serde_json::Value>(&l.event) else { return "event unreadable".into() };
    let field = |v: &serde_json::Value| v.as_str().map(str::to_owned);
    let kind = field(&event["type"]).unwrap_or_default();
    let name = field(&event["name"]).or_else(|| field(&event["page"]["url"])).unwrap_or_default();
    let user =
        field(&event["identity"]["user_id"]).or_else(|| field(&event["identity"]["anonymous_id"])).unwrap_or_default();
    format!("{kind} {name:?} user {user:?}")
}

/// Takes the store's lock for a moment to learn, typed, whether another process holds it.
fn check_lock(path: &Path, what: &str) -> anyhow::Result<()> {
    if !path.exists() {
        bail!("no store at {}", path.display());
    }
    match SqliteStore::check_unlocked(path) {
        Ok(_) => Ok(()),
        Err(StoreError::Locked { pid: Some(pid), .. }) => {
            bail!("store {} is in use by pid {pid}: stop that process first, then {what}", path.display())
        }
        Err(StoreError::Locked { pid: None, .. }) => {
            bail!("store {} is in use by another process: stop it first, then {what}", path.display())
        }
        Err(e) => Err(e).with_context(|| format!("cannot open {}", path.display())),
    }
}

fn requeue(
    config: &Config,
    path: &Path,
    json: bool,
    destination: Option<&str>,
    limit: usize,
    timeout: Duration,
) -> anyhow::Result<Outcome> {
    let destinations = config.destinations()?;
    let names = config.destination_names();
    if let Some(d) = destination
        && !names.iter().any(|n| n == d)
    {
        bail!("--destination {d:?} is not in the configuration (configured: {})", names.join(", "));
    }
    check_lock(path, "requeue")?;
    let client = config::with_destinations(Client::builder().store(SqliteStore::new(path)), destinations)
        .batch_interval(Duration::from_millis(50))
        .build()
        .with_context(|| format!("cannot open {}", path.display()))?;
    let before = client.stats();
    let mut out = std::io::stdout().lock();
    let mut failed = if json {
        before.store.salvage.as_ref().is_some_and(|s| s.lost > 0)
    } else {
        crate::report::opened(&mut out, &before)?
    };
    let requeued = client.requeue_dead_letters(destination, limit).context("requeue failed")?;
    let flushed = client.flush(timeout);
    let after = client.stats();
    let _ = client.shutdown(Duration::from_secs(1));
    let mut delivered = 0;
    let mut dead_again = 0;
    let mut pending = 0;
    for d in &after.destinations {
        let b = before.destination(&d.name).cloned().unwrap_or_default();
        delivered += d.delivered - b.delivered;
        dead_again += (d.rejected + d.retries_exhausted + d.expired) - (b.rejected + b.retries_exhausted + b.expired);
        pending += d.pending;
    }
    if json {
        let d = &after.dropped;
        let lost = d.store_full + d.store_corrupt + d.disk_full + d.store_error + d.worker_stopped;
        failed |= lost > 0;
        let orphaned: serde_json::Map<String, serde_json::Value> =
            after.store.orphaned.iter().map(|(name, n)| (name.clone(), json!(n))).collect();
        let value = json!({
            "store": path.display().to_string(),
            "lost": lost,
            "orphaned": orphaned,
            "requeued": requeued,
            "delivered": delivered,
            "dead_lettered_again": dead_again,
            "pending": pending,
        });
        writeln!(out, "{value}")?;
    } else {
        writeln!(out, "requeued {requeued} dead letter(s) from {}", path.display())?;
        writeln!(out, "delivered: {delivered}")?;
        if dead_again > 0 {
            writeln!(out, "dead-lettered again: {dead_again} (see `trackway outbox dead`)")?;
        }
        if pending > 0 || flushed.is_err() {
            writeln!(out, "still pending: {pending} (kept in the store; delivered by the next process using it)")?;
        }
        failed |= crate::report::losses(&mut out, &after)?;
    }
    out.flush()?;
    Ok(if dead_again > 0 || failed { Outcome::Failed } else { Outcome::Ok })
}

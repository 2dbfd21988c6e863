//! `trackway send`: one event from the command line, delivered (or not) before the command ends.
//!
//! `send` keeps nothing: the event goes through an in-memory store, so an event not delivered
//! within `--timeout` (or rejected) is gone when the command exits, and the output says so. That
//! is the choice for a one-shot command: it never competes with a running `import` for the
//! durable store, and it never leaves an event behind that some later command would send
//! unexpectedly. `trackway import` is the way to queue events durably.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use trackway::receipts::{Confirmation, Outcome as Delivery, Resolution};
use trackway::store::MemoryStore;
use trackway::{Client, Identify, Page, Properties, Screen, Stats};

use crate::Outcome;
use crate::config;

/// `trackway send` options.
#[derive(Debug, Args)]
pub(crate) struct SendArgs {
    /// The user the event is about.
    #[arg(long, value_name = "ID")]
    user: String,
    /// The event name (track), the screen name (screen) or the page URL (page); not used by identify.
    #[arg(long, value_name = "NAME")]
    event: Option<String>,
    /// The kind of event.
    #[arg(long = "type", value_name = "TYPE", default_value = "track")]
    kind: Kind,
    /// A property, KEY=VALUE; VALUE is read as JSON when it is valid JSON (42, true, "x", an array),
    /// else as a string. Repeatable.
    #[arg(long = "prop", value_name = "KEY=VALUE")]
    props: Vec<String>,
    /// Properties as a JSON object (--prop values are added to it).
    #[arg(long, value_name = "JSON")]
    properties: Option<String>,
    /// How long to wait for delivery, in seconds. Each request gets at most half of it, so a
    /// server that does not answer is reported as a timeout. The event is not kept after that.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    timeout: f64,
}

/// Event kinds `send` can produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Kind {
    Track,
    Page,
    Screen,
    Identify,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Track => "track",
            Kind::Page => "page",
            Kind::Screen => "screen",
            Kind::Identify => "identify",
        }
    }
}

/// Builds the properties from `--properties` and `--prop`.
pub(crate) fn properties(json: Option<&str>, props: &[String]) -> anyhow::Result<Properties> {
    let mut out = match json {
        Some(text) => serde_json::from_str::<Properties>(text).context("--properties is not a JSON object")?,
        None => Properties::new(),
    };
    for prop in props {
        let Some((key, value)) = prop.split_once('=') else {
            bail!("--prop {prop:?}: expected KEY=VALUE");
        };
        if key.is_empty() {
            bail!("--prop {prop:?}: the key is empty");
        }
        let value: trackway::Value =
            serde_json::from_str(value).unwrap_or_else(|_| trackway::Value::from(value.to_owned()));
        out.insert(key, value);
    }
    out.validate()?;
    Ok(out)
}

/// Runs `trackway send`.
pub(crate) fn run(config: Option<&Path>, args: SendArgs) -> anyhow::Result<Outcome> {
    let config = config::require(config, "trackway send")?;
    let destinations = config.destinations()?;
    let timeout = Duration::try_from_secs_f64(args.timeout)
        .ok()
        .filter(|t| !t.is_zero())
        .context("--timeout must be a positive number of seconds")?;
    let properties = properties(args.properties.as_deref(), &args.props)?;
    let names: Vec<String> = destinations.iter().flat_map(|d| d.names()).map(str::to_owned).collect();
    // Half the budget per request: a server that accepts the connection and never answers
    // fails the first request with a timeout the report can name, instead of "no answer yet".
    let request_timeout = (timeout / 2).max(Duration::from_millis(100));
    let destinations = destinations.into_iter().map(|d| d.with_request_timeout(request_timeout)).collect();
    // An in-memory store: a one-shot command must not compete for the durable store's lock with
    // a running import; an event not delivered within --timeout is reported, not kept.
    let client = config::with_destinations(Client::builder().store(MemoryStore::new()), destinations)
        .batch_interval(Duration::from_millis(10))
        .build()
        .context("cannot set up the destinations")?;
    let event = match (args.kind, args.event) {
        (Kind::Identify, _) => String::new(),
        (_, Some(event)) => event,
        (kind, None) => bail!("--event is required for --type {}", kind.name()),
    };
    // A receipt: the event's own outcome at each destination, not the client's totals.
    let receipt = match args.kind {
        Kind::Track => client.track_confirmed(&args.user, &event, properties),
        Kind::Page => client.capture_confirmed(Page::new(event).user(&args.user).properties(properties)),
        Kind::Screen => client.capture_confirmed(Screen::new(event).user(&args.user).properties(properties)),
        Kind::Identify => client.capture_confirmed(Identify::new().user(&args.user).properties(properties)),
    };
    let receipt = match receipt {
        Ok(receipt) => receipt,
        Err(e) => bail!("event not sent: {e}"),
    };
    let confirmation = receipt.wait(timeout);
    let stats = client.stats();
    drop(receipt);
    let _ = client.shutdown(Duration::ZERO);
    let confirmation = confirmation.context("no outcome")?;
    report(&confirmation, &names, &stats, timeout)
}

fn report(confirmation: &Confirmation, names: &[String], stats: &Stats, timeout: Duration) -> anyhow::Result<Outcome> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "message id: {}", confirmation.id)?;
    let mut ok = true;
    for name in names {
        // A destination the event was not routed to (its type) has no line.
        let Some(line) = confirmation.destination(name) else { continue };
        match &line.resolution {
            Resolution::Done { outcome: Delivery::Delivered, .. } => {
                writeln!(out, "{name}: delivered")?;
                continue;
            }
            Resolution::Done { outcome, .. } => writeln!(out, "{name}: not delivered: {}", not_delivered(outcome))?,
            Resolution::Pending(pending) => {
                let failed = stats.destination(name).map_or(0, |d| d.failed_requests);
                let why = match &pending.last_error {
                    Some(e) => format!("the last: {e}"),
                    None => "the request was still waiting for an answer".to_owned(),
                };
                writeln!(out, "{name}: not delivered within {timeout:?}: {failed} failed request(s), {why}")?;
                writeln!(out, "  pending ({}): {}", pending.state, pending.reason)?;
            }
        }
        ok = false;
    }
    if !ok {
        writeln!(
            out,
            "the event was not kept: `trackway send` stores nothing, so it is not sent again \
             (`trackway import` queues events in the durable store)"
        )?;
    }
    out.flush()?;
    Ok(if ok { Outcome::Ok } else { Outcome::Failed })
}

/// An outcome other than delivered, as `send` and `import` print it: the dead letter's reason
/// and the server's answer.
pub(crate) fn not_delivered(outcome: &Delivery) -> String {
    match outcome {
        Delivery::Rejected { detail, .. } => format!("rejected ({detail})"),
        Delivery::RetriesExhausted { detail } => format!("retries_exhausted ({detail})"),
        Delivery::Expired { detail } => format!("expired ({detail})"),
        other => other.to_string(),
    }
}

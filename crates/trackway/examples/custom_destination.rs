//! Run with: `cargo run -p trackway --example custom_destination`
//!
//! A destination is pure: it encodes a batch into HTTP requests and classifies the answer per
//! event. The pipeline does the I/O, retries, backoff and dead letters. This one sends one
//! newline-delimited JSON request per batch and reads a per-line status array back.

// An example shows its results on stdout.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use trackway::destination::{
    Classified, Destination, DestinationState, Encoded, EventRecord, LimitError, Outcome, Request, Response,
    classify_status,
};
use trackway::store::MemoryStore;
use trackway::{Client, Event, EventKind, Timestamp, props};
use trackway_collector::{Collector, Reply};

/// Posts NDJSON; the server answers `[true, false, …]`, one entry per line (false: rejected).
#[derive(Debug)]
struct Ndjson {
    url: String,
}

impl Destination for Ndjson {
    fn name(&self) -> &str {
        "ndjson"
    }

    fn accepts(&self, kind: EventKind) -> bool {
        kind == EventKind::Track
    }

    fn validate(&self, event: &Event) -> Result<(), LimitError> {
        match event.name.as_deref() {
            Some(name) if name.len() > 40 => {
                Err(LimitError::new(format!("event name is {} bytes; the limit is 40", name.len())))
            }
            _ => Ok(()),
        }
    }

    fn encode(&self, events: &[EventRecord], _: &DestinationState, _: Timestamp) -> Encoded {
        let mut body = Vec::new();
        for e in events {
            body.extend_from_slice(e.json());
            body.push(b'\n');
        }
        let mut out = Encoded::default();
        out.requests.push(Request::post(&self.url, body, (0..events.len()).collect()));
        out
    }

    fn classify(&self, request: &Request, response: &Response) -> Classified {
        if !response.status.is_success() {
            let outcome = classify_status(response);
            return Classified::new(vec![outcome; request.items.len()]);
        }
        let accepted: Vec<bool> = serde_json::from_slice(&response.body).unwrap_or_default();
        Classified::new(
            (0..request.items.len())
                .map(|i| match accepted.get(i) {
                    Some(true) => Outcome::Delivered,
                    Some(false) => Outcome::Reject(format!("line {i} rejected by the server")),
                    None => Outcome::Retry,
                })
                .collect(),
        )
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let collector =
        Collector::builder().default_reply(Reply::ok().json(serde_json::json!([true, false, true]))).start()?;
    let client =
        Client::builder().destination(Ndjson { url: collector.url("/ingest") }).store(MemoryStore::new()).build()?;
    for i in 0..3 {
        client.track("user-1", "order_placed", props! { "n" => i })?;
    }
    if let Err(e) = client.track("user-1", &"x".repeat(41), props! {}) {
        println!("too long: {e}");
    }
    client.flush(Duration::from_secs(5))?;
    let stats = client.stats();
    let d = stats.destination("ndjson").ok_or("no stats")?;
    println!("delivered {}, rejected {}", d.delivered, d.rejected);
    for letter in client.dead_letters(10)? {
        println!("dead letter {}: {} ({})", letter.id, letter.reason, letter.detail);
    }
    client.shutdown(Duration::from_secs(1))?;
    Ok(())
}

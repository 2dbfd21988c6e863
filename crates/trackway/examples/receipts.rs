//! Run with: `cargo run -p trackway --example receipts`
//!
//! Delivery receipts and the outcome stream: the OpenCDP seed's `await client.track(...)` as a
//! confirmed call, with a second destination that is down, so one receipt shows a delivery and
//! a pending destination with the reason; then an outcome stream that sees every event's fate
//! per destination. A local collector stands in for the OpenCDP server.

// An example shows its results on stdout.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use trackway::destination::JsonHttp;
use trackway::destination::opencdp::OpenCdpConfig;
use trackway::receipts::{RecvError, Resolution};
use trackway::{Client, props, store::MemoryStore};
use trackway_collector::Collector;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let collector = Collector::start()?;
    let client = Client::builder()
        .destinations(OpenCdpConfig::new("your-cdp-key").endpoint(collector.url("/gateway/data-gateway")))
        // Nothing listens on port 9: this destination stays pending, retried in the background.
        .destination(JsonHttp::new("http://127.0.0.1:9/events").name("warehouse"))
        .store(MemoryStore::new())
        .build()?;

    // await client.track('user123', 'purchase_completed', { amount: 99.99 })
    let receipt = client.track_confirmed("user123", "purchase_completed", props! { "amount" => 99.99 })?;
    // `receipt.await` in async code; here the blocking form, with a timeout.
    let confirmation = receipt.wait(Duration::from_secs(3))?;
    println!("event {}:", confirmation.id);
    for line in &confirmation.destinations {
        match &line.resolution {
            Resolution::Done { outcome, at } => println!("  {:<10} {outcome:?} at {at}", line.destination),
            Resolution::Pending(why) => println!("  {:<10} pending: {}", line.destination, why.reason),
        }
    }

    // Every outcome from now on, per event and destination (bounded: a reader that falls behind
    // is told how many it missed; delivery never waits for it).
    let mut outcomes = client.outcomes(1024);
    for plan in ["free", "pro", "team"] {
        client.track("user123", "plan_viewed", props! { "plan" => plan })?;
    }
    println!("outcome stream:");
    let mut seen = 0;
    while seen < 3 {
        match outcomes.recv_timeout(Duration::from_secs(5)) {
            Ok(record) => {
                println!("  {} {:<10} {:?}", record.id, &*record.destination, record.outcome);
                seen += 1;
            }
            Err(RecvError::Missed(n)) => println!("  ({n} outcomes missed)"),
            Err(e) => return Err(e.into()),
        }
    }
    let opencdp = collector.requests().into_iter().filter(|r| r.path.contains("/gateway/data-gateway")).count();
    println!("the OpenCDP collector received {opencdp} request(s); 'warehouse' still holds its events for later");
    // The down destination keeps its events pending: shutdown says so when its budget ends (an
    // in-memory store then forgets them; a durable store keeps them for the next run).
    if let Err(e) = client.shutdown(Duration::from_millis(200)) {
        println!("shutdown: {e}");
    }
    Ok(())
}

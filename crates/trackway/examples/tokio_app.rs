//! Run with: `cargo run -p trackway --example tokio_app`
//!
//! Using trackway from async code: calls never block and need no runtime; use the `_async`
//! variants of flush and shutdown so the runtime's thread is never blocked.

// An example shows its results on stdout.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use trackway::{Client, destination::JsonHttp, props, store::MemoryStore};
use trackway_collector::Collector;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let collector = Collector::start()?;
    let client =
        Client::builder().destination(JsonHttp::new(collector.url("/events"))).store(MemoryStore::new()).build()?;

    // A request handler would do this per request; `Client` is a cheap clone.
    let handlers: Vec<_> = (0..10)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.track(&format!("user-{i}"), "page_viewed", props! { "path" => "/home" }) })
        })
        .collect();
    for h in handlers {
        h.await??;
    }

    let report = client.shutdown_async(Duration::from_secs(5)).await?;
    let json = report.destination("json").ok_or("no stats")?;
    println!("delivered {} events in {} request(s)", json.delivered, json.requests);
    Ok(())
}

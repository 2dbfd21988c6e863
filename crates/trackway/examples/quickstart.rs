//! Run with: `cargo run -p trackway --example quickstart`
//!
//! Starts a local collector, sends a few events through trackway (server mode and app mode),
//! flushes, and prints what the collector received.

// An example shows its results on stdout.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use trackway::{Client, Identify, Page, Screen, Track, destination::JsonHttp, props, store::MemoryStore};
use trackway_collector::Collector;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let collector = Collector::start()?;
    println!("collector listening on {}", collector.url("/"));

    let client = Client::builder()
        .destination(JsonHttp::new(collector.url("/v1/events")).batch_size(50))
        .app("quickstart", env!("CARGO_PKG_VERSION"))
        // App mode: a message that names no user is the app's current user's. Without it, such a
        // message is an error (a server never guesses whose event it is); calls that name their
        // user work either way.
        .app_mode()
        // In memory, so each run starts empty; without this line the outbox is a SQLite file
        // under the user's data directory (see examples/offline_outbox.rs).
        .store(MemoryStore::new())
        .build()?;

    // Server mode: every call names its user.
    client.identify("user123", props! { "plan" => "pro", "email" => "jane@example.com" })?;
    client.track(
        "user123",
        "purchase_completed",
        props! {
            "order_id" => "order_789",
            "amount" => 99.99,
            "currency" => "USD",
            "items" => vec![props! { "product_id" => "prod_123", "quantity" => 1 }],
        },
    )?;
    client.page("user123", Page::new("/pricing").title("Pricing").referrer("https://example.com/"))?;

    // App mode: no user named; the client's current (anonymous, then identified) user is stamped.
    client.capture(Screen::new("Settings"))?;
    client.identify_customer(Identify::new().id("registered", "jane@example.com"))?;
    client.capture(Track::new("settings_saved").property("dark_mode", true))?;

    // Validation happens in the call, before anything is queued.
    if let Err(e) = client.track("user123", "bad_amount", props! { "amount" => f64::NAN }) {
        println!("rejected at the call: {e}");
    }

    let report = client.flush(Duration::from_secs(10))?;
    for d in &report.destinations {
        println!("destination {}: {} delivered, {} pending, {} requests", d.name, d.delivered, d.pending, d.requests);
    }

    println!("\nthe collector received {} request(s):", collector.request_count());
    for request in collector.requests() {
        println!("{} {} -> {}", request.method, request.path, request.status);
        if let Some(serde_json::Value::Array(events)) = request.json() {
            for e in events {
                let who = e["identity"]["user_id"].as_str().or(e["identity"]["anonymous_id"].as_str()).unwrap_or("?");
                println!(
                    "  {:<9} {:<22} user={:<18} id={}",
                    e["type"].as_str().unwrap_or(""),
                    e["name"].as_str().or(e["page"]["url"].as_str()).unwrap_or(""),
                    who,
                    e["id"].as_str().unwrap_or("")
                );
            }
        }
    }
    if let Some(first) = collector.requests().first().and_then(|r| r.json()) {
        println!("\nfirst event as sent:\n{}", serde_json::to_string_pretty(&first[0])?);
    }
    client.shutdown(Duration::from_secs(5))?;
    Ok(())
}

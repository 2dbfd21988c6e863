//! Run with: `cargo run -p trackway --example umami`
//!
//! The umami-kotlin examples through trackway's Umami destination: a page view, a custom event
//! with data, and identify. A local collector stands in for the Umami server (it answers
//! `/api/batch` and `/api/send` as Umami v3.1 does) and the example prints what arrived.

// An example shows its results on stdout.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use trackway::{Client, Identify, Page, Track, destination::Umami, store::MemoryStore};
use trackway_collector::Collector;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let collector = Collector::start()?;
    println!("collector (as an Umami server) listening on {}", collector.url("/"));

    let client = Client::builder()
        .destination(
            Umami::new("b59e9c65-ae32-47f1-8400-119fcf4861c4")
                .base_url(collector.url(""))
                .hostname("myapp.example")
                .language("en-US")
                .screen("1920x1080"),
        )
        .app("umami-example", env!("CARGO_PKG_VERSION"))
        // Like umami-kotlin, an app's client: events that name no user are its current visitor's.
        .app_mode()
        .store(MemoryStore::new())
        .build()?;

    // umami.event(url = "/settings", title = "User Settings")
    client.capture(Page::new("/settings").title("User Settings"))?;
    // umami.event(name = "purchase-completed", data = mapOf("plan" to "premium", "price" to 49.99))
    // Numbers stay numbers (umami-kotlin sends them as strings).
    client.capture(Track::new("purchase-completed").property("plan", "premium").property("price", 49.99))?;
    // Sent now: the server's answer carries a cache token, which the next requests of this
    // (anonymous) visitor would carry; identify starts a new identity with a token of its own.
    client.flush(Duration::from_secs(10))?;
    // umami.identify(data = mapOf("account_type" to "pro_user")), with a distinct id: every later
    // event carries it.
    client.identify_customer(Identify::new().id("registered", "user-123").property("account_type", "pro_user"))?;
    client.capture(Track::new("settings-saved").tag("beta"))?;

    client.flush(Duration::from_secs(10))?;
    println!("\nthe collector received {} request(s):", collector.request_count());
    for request in collector.requests() {
        println!("{} {} -> {}", request.method, request.path, request.status);
        println!("  user-agent: {}", request.header("user-agent").unwrap_or(""));
        if let Some(cache) = request.header("x-umami-cache") {
            println!("  x-umami-cache: {}…", &cache[..cache.len().min(24)]);
        }
        println!("  {}", request.body_str());
    }
    client.shutdown(Duration::from_secs(5))?;
    Ok(())
}

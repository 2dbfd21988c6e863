//! Run with: `cargo run -p trackway --example offline_outbox`
//!
//! The durable outbox across a restart: a first client sends while the server is down and shuts
//! down with events undelivered; they stay in the SQLite file; a second client (as the next run
//! of an app would) opens the same file and delivers them once the server is up.

// An example shows its results on stdout.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use trackway::store::SqliteStore;
use trackway::{Client, destination::JsonHttp, props};
use trackway_collector::{Collector, Reply};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("trackway-offline-{}", std::process::id()));
    let path = dir.join("outbox.db");

    // Run 1: the server answers 503 to everything.
    let down = Collector::builder().default_reply(Reply::status(503)).start()?;
    {
        let client =
            Client::builder().destination(JsonHttp::new(down.url("/events"))).store(SqliteStore::new(&path)).build()?;
        for i in 0..5 {
            client.track("user-1", "offline_action", props! { "n" => i })?;
        }
        // Safe on disk from here on, even if the process were killed.
        client.persisted(Duration::from_secs(5))?;
        match client.shutdown(Duration::from_millis(500)) {
            Ok(_) => println!("run 1: delivered (unexpected: the server is down)"),
            Err(e) => println!("run 1: {e}"),
        }
    }
    let seen = SqliteStore::inspect(&path)?;
    println!("between runs, the file holds {} event(s): {:?}", seen.events, seen.pending);

    // Run 2: a new client on the same file, with the server up.
    let up = Collector::start()?;
    let client =
        Client::builder().destination(JsonHttp::new(up.url("/events"))).store(SqliteStore::new(&path)).build()?;
    client.flush(Duration::from_secs(10))?;
    let delivered: usize =
        up.requests().iter().filter_map(|r| r.json()).filter_map(|b| b.as_array().map(Vec::len)).sum();
    println!("run 2: delivered {delivered} event(s) left by run 1");
    client.shutdown(Duration::from_secs(2))?;
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

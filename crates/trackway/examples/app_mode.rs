//! Run with: `cargo run -p trackway --example app_mode`
//!
//! An app's life in trackway's app mode, against a local collector: the first run's
//! `installation` and session, screens, sign-in, a push token and a payment, going to the
//! background and coming back, sign-out (`anonymize`), and the user's consent being withdrawn.

// An example shows its results on stdout.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use trackway::{
    Anonymize, AppLifecycle, Client, Identify, Payment, PushToken, Screen, Track, destination::JsonHttp, props,
    store::MemoryStore,
};
use trackway_collector::Collector;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let collector = Collector::start()?;
    let client = Client::builder()
        .destination(JsonHttp::new(collector.url("/v1/events")))
        .app("notes", "1.4.0")
        // In memory, so each run is a first run; the default durable store keeps the app state
        // (identity, session, flags) across runs.
        .store(MemoryStore::new())
        // installation on the first run + automatic sessions with a 60 s timeout
        .app_lifecycle(AppLifecycle::default())
        .default_properties(props! { "build" => "release" })
        .build()?;
    println!("anonymous id: {:?}", client.current_identity().anonymous_id);

    client.capture(Screen::new("Notes"))?;
    client.identify_customer(Identify::new().id("registered", "jane@example.com").property("plan", "pro"))?;
    client.track_push_token(PushToken::fcm("token-from-firebase"))?;
    client.track_payment(Payment::new(4.99, "EUR").product_id("pro_monthly").payment_system("Google Play"))?;
    client.capture(Track::new("note_created").property("words", 120))?;

    // From the app's lifecycle hooks. Back within the timeout: the same session goes on.
    client.app_background()?;
    client.app_foreground()?;

    // Sign-out: the session ends, the push token moves to a new anonymous user.
    client.anonymize(Anonymize::new())?;
    println!("after sign-out: {:?}", client.current_identity().anonymous_id);

    // The user withdraws consent: nothing more is queued or sent, and the choice is kept.
    client.set_enabled(false)?;
    if let Err(e) = client.capture(Track::new("not_sent")) {
        println!("tracking while opted out: {e}");
    }

    client.set_enabled(true)?;
    client.shutdown(Duration::from_secs(5))?;

    for request in collector.requests() {
        if let Some(serde_json::Value::Array(events)) = request.json() {
            for e in events {
                let who = e["identity"]["user_id"].as_str().or(e["identity"]["anonymous_id"].as_str()).unwrap_or("?");
                let session: String = e["session_id"].as_str().map_or_else(
                    || "-".to_owned(),
                    |s| s.chars().rev().take(6).collect::<Vec<_>>().into_iter().rev().collect(),
                );
                println!(
                    "{:<9} {:<20} session …{:<6} user={}",
                    e["type"].as_str().unwrap_or(""),
                    e["name"].as_str().unwrap_or(""),
                    session,
                    who
                );
            }
        }
    }
    Ok(())
}

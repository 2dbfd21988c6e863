//! `trackway demo`: a user's first minute. Starts the collector, sends a realistic app session
//! through the SDK to every destination trackway has (pointed at the collector), prints what
//! each received and the live page's URL, then keeps the collector up until Ctrl-C.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use serde_json::Value;
use trackway::destination::bloomreach::{Authorization, Bloomreach, BloomreachProject};
use trackway::destination::customerio::CustomerIo;
use trackway::destination::{EventType, JsonHttp, OpenCdpConfig, Umami};
use trackway::store::SqliteStore;
use trackway::{AppLifecycle, Client, Identify, Page, Payment, PushToken, RetryPolicy, Screen, Track, props};
use trackway_collector::{Collector, RecordedRequest, Reply, RunningCollector};

/// `trackway demo` options.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Address of the collector, HOST:PORT (if it is taken, any free port is used instead).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8787")]
    listen: SocketAddr,
    /// Stop once the events are delivered and reported, instead of serving the live page until
    /// Ctrl-C.
    #[arg(long)]
    exit: bool,
}

/// One destination of the demo: its name and how the collector labels its requests.
struct DemoDestination {
    name: &'static str,
    /// The collector's `destination` label of its requests.
    label: &'static str,
    /// What its request paths contain (Bloomreach's projects share a label; the path names the
    /// project).
    path: &'static str,
}

/// Every destination trackway has, each pointed at the collector. The Bloomreach project
/// mapped for payments is named after its token and the collector's address, so it is found by
/// the start of its name.
const DESTINATIONS: &[DemoDestination] = &[
    DemoDestination { name: "json", label: "json", path: "" },
    DemoDestination { name: "umami", label: "umami", path: "" },
    DemoDestination { name: "bloomreach", label: "bloomreach", path: DEMO_BLOOMREACH_PROJECT },
    DemoDestination { name: "bloomreach:demo-payments", label: "bloomreach", path: DEMO_BLOOMREACH_PAYMENTS },
    DemoDestination { name: "opencdp", label: "opencdp", path: "" },
    DemoDestination { name: "customerio", label: "customerio", path: "" },
];

/// The base path of the demo's OpenCDP gateway (the SDK's default path, on the collector).
const DEMO_OPENCDP_BASE: &str = "/gateway/data-gateway";

/// The Bloomreach project the demo sends to, and the one its mapping sends payments to.
const DEMO_BLOOMREACH_PROJECT: &str = "demo-project";
const DEMO_BLOOMREACH_PAYMENTS: &str = "demo-payments";

/// The website id the demo's Umami destination sends (any UUID: the collector takes all).
const DEMO_WEBSITE_ID: &str = "5a0c9d3e-7c1b-4d8e-9f6a-2b3c4d5e6f70";

/// Runs `trackway demo`.
pub(crate) fn run(args: &DemoArgs) -> anyhow::Result<crate::Outcome> {
    let collector = start_collector(args.listen)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "trackway demo: collector listening on {}", collector.url("/"))?;
    // One failure on purpose: the first request is answered 503 with Retry-After, and the SDK
    // sends it again.
    collector.push_reply(Reply::status(503).retry_after("1"));

    let dir = std::env::temp_dir().join(format!("trackway-demo-{}", std::process::id()));
    let result = send_session(&collector, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    let client_stats = result?;

    writeln!(out)?;
    let requests = collector.requests();
    let mut all_delivered = true;
    for d in DESTINATIONS {
        let stats = client_stats
            .destination(d.name)
            .or_else(|| client_stats.destinations.iter().find(|s| s.name.starts_with(&format!("{}@", d.name))));
        let (delivered, retried) = stats.map_or((0, 0), |s| (s.delivered, s.retried));
        all_delivered &= stats.is_some_and(|s| s.pending == 0 && s.rejected == 0 && s.delivered > 0);
        write!(out, "== {}: {delivered} events delivered, {retried} retried", d.name)?;
        if d.label == "customerio" {
            // Customer.io drops an event whose id it has seen (a retry, a replay after a crash);
            // the collector counts those, and so does the live page.
            write!(out, ", {} duplicates dropped by id", collector.customerio_duplicates())?;
        }
        writeln!(out)?;
        for r in requests.iter().filter(|r| r.destination == d.label && r.path.contains(d.path)) {
            let events = summaries(r);
            if (200..300).contains(&r.status) {
                writeln!(out, "  {} {} -> {}", r.method, r.path, r.status)?;
                for e in events {
                    writeln!(out, "      {e}")?;
                }
            } else {
                // The failure injected on purpose (or a real one): its events are sent again.
                writeln!(out, "  {} {} -> {} ({} events, sent again)", r.method, r.path, r.status, events.len())?;
            }
        }
    }
    writeln!(out)?;
    writeln!(out, "live page: {}  (events, requests, answers, faults)", collector.url("/"))?;
    if args.exit {
        collector.shutdown();
    } else {
        writeln!(out, "the collector keeps running; press Ctrl-C to stop")?;
        out.flush()?;
        drop(out);
        wait_for_ctrl_c()?;
        collector.shutdown();
    }
    Ok(if all_delivered { crate::Outcome::Ok } else { crate::Outcome::Failed })
}

/// The collector on `listen`, or on any free port if that one is taken (a second demo, or a
/// collector already running).
fn start_collector(listen: SocketAddr) -> anyhow::Result<RunningCollector> {
    match Collector::builder().listen(listen).start() {
        Ok(c) => Ok(c),
        Err(_) => {
            let any = SocketAddr::new(listen.ip(), 0);
            Collector::builder().listen(any).start().with_context(|| format!("cannot listen on {listen} or {any}"))
        }
    }
}

/// Sends the app session through a client with every destination, and returns its stats once
/// everything is delivered.
fn send_session(collector: &RunningCollector, dir: &std::path::Path) -> anyhow::Result<trackway::Stats> {
    let mut builder = Client::builder()
        .app("trackway-demo", env!("CARGO_PKG_VERSION"))
        // A fresh durable outbox, so the demo shows a first run (installation) every time.
        .store(SqliteStore::new(dir.join("outbox.db")))
        .app_lifecycle(AppLifecycle::default().manual_sessions())
        .default_properties(props! { "app_build" => "demo", "platform" => std::env::consts::OS })
        .batch_interval(Duration::from_millis(100))
        .retry_policy(RetryPolicy::default().backoff(Duration::from_millis(100), Duration::from_secs(2)));
    for d in DESTINATIONS {
        builder = match d.name {
            "umami" => builder.destination(
                Umami::new(DEMO_WEBSITE_ID).name(d.name).base_url(collector.url("")).hostname("demo.trackway.dev"),
            ),
            "bloomreach" => builder.bloomreach(
                Bloomreach::new(DEMO_BLOOMREACH_PROJECT, Authorization::token("demo-public-key"))
                    .base_url(collector.url(""))
                    .application_id("dev.trackway.demo")
                    .map(
                        EventType::Payment,
                        BloomreachProject::new(DEMO_BLOOMREACH_PAYMENTS, Authorization::token("demo-payments-key")),
                    ),
            ),
            // Made by the mapping above.
            "bloomreach:demo-payments" => builder,
            // OpenCDP with the Customer.io dual-write: two destinations, each with its own
            // cursor, so the page shows both and either could be down without holding the other.
            "opencdp" => builder.destinations(
                OpenCdpConfig::new("demo-cdp-key")
                    .endpoint(collector.url(DEMO_OPENCDP_BASE))
                    .customer_io(CustomerIo::new("demo-site", "demo-cio-key").base_url(collector.url(""))),
            ),
            // Made by the dual-write above.
            "customerio" => builder,
            _ => builder.destination(JsonHttp::new(collector.url("/v1/events")).name(d.name)),
        };
    }
    let client = builder.build().context("cannot build the client")?;

    // `installation` was tracked by build() (a first run).
    client.session_start()?;
    client.capture(Screen::new("Home"))?;
    client.capture(Page::new("/products/trail-shoes").title("Trail shoes").referrer("https://search.example.com/"))?;
    client.capture(Screen::new("Product").property("sku", "sku-42"))?;
    client.identify_customer(
        Identify::new().id("registered", "jane@example.com").property("name", "Jane Doe").property("plan", "pro"),
    )?;
    client.capture(Track::new("purchase_completed").properties(props! {
        "order_id" => "order-1001",
        "total" => 59.98,
        "currency" => "EUR",
        "items" => vec![
            props! { "sku" => "sku-42", "name" => "Trail shoes", "price" => 49.99, "quantity" => 1 },
            props! { "sku" => "sku-7", "name" => "Socks", "price" => 9.99, "quantity" => 1 },
        ],
        "shipping" => props! { "method" => "express", "address" => props! { "city" => "Prague", "country" => "CZ" } },
    }))?;
    client.track_payment(
        Payment::new(59.98, "EUR")
            .payment_system("Google Play")
            .product_id("sku-42")
            .product_title("Trail shoes")
            .receipt("GPA.3372-0001"),
    )?;
    client.track_push_token(PushToken::fcm("demo-fcm-token-3f9a"))?;
    client.session_end()?;
    let report = client.shutdown(Duration::from_secs(15)).context("not everything was delivered in 15 s")?;
    let _ = report;
    Ok(client.stats())
}

/// One line per event in a request: kind, name, user.
fn summaries(request: &RecordedRequest) -> Vec<String> {
    if request.json().is_none() {
        return vec![format!("({} bytes, not JSON)", request.body.len())];
    }
    request.events().iter().map(summary).collect()
}

/// One line for an event as the collector decodes it: a trackway event (identity, session) or
/// an Umami item (`user`, `url`).
fn summary(e: &Value) -> String {
    let kind = e["type"].as_str().unwrap_or("?");
    let name = e["name"].as_str().or_else(|| e["page"]["url"].as_str()).or_else(|| e["url"].as_str()).unwrap_or("");
    let identity = &e["identity"];
    let user = identity["user_id"]
        .as_str()
        .or_else(|| identity["anonymous_id"].as_str())
        .or_else(|| e["user"].as_str())
        .unwrap_or("(anonymous)");
    let session = e["session_id"].as_str().map(|s| format!(" session={}", tail(s, 8))).unwrap_or_default();
    // Kind and name padded as one column: a long kind with no name (OpenCDP's
    // `register_device`) or a long page path then still lines `user=` up with the others.
    let head = format!("{kind:<9} {name}");
    format!("{head:<SUMMARY_HEAD$} user={user}{session}")
}

/// The width of a summary's kind-and-name column: the longest the demo prints
/// (`page      /products/trail-shoes`).
const SUMMARY_HEAD: usize = 31;

/// The last `n` characters of `s` (a session id is long; its end tells sessions apart).
fn tail(s: &str, n: usize) -> &str {
    let start = s.char_indices().rev().nth(n.saturating_sub(1)).map_or(0, |(i, _)| i);
    &s[start..]
}

fn wait_for_ctrl_c() -> anyhow::Result<()> {
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&interrupted);
    ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed)).context("cannot handle Ctrl-C")?;
    while !interrupted.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::summary;

    #[test]
    fn every_summary_puts_the_user_in_the_same_column() {
        let events = [
            json!({ "type": "track", "name": "purchase_completed", "identity": { "user_id": "jane" } }),
            json!({ "type": "register_device", "identity": { "user_id": "jane" } }),
            json!({ "type": "identify", "identity": { "user_id": "jane" } }),
            json!({ "type": "page", "page": { "url": "/products/trail-shoes" }, "identity": { "user_id": "jane" } }),
        ];
        let columns: Vec<Option<usize>> = events.iter().map(|e| summary(e).find("user=")).collect();
        assert!(columns.iter().all(|c| c.is_some() && *c == columns[0]), "{columns:?}");
    }
}

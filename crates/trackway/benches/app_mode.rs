//! What app mode costs the caller: `cargo bench -p trackway --bench app_mode [-- --n 100000]`.
//!
//! Times the same event three ways on one client (in-memory store, the generic JSON destination
//! posting to a sink collector in this process): a server-mode `track(user, …)`, an app-mode
//! `capture(Track)` (the client's identity and open session stamped on it, the session's
//! last-seen time moved), and the app-mode call with three default properties merged in. Each
//! variant runs in rounds interleaved with the others, so machine noise hits all of them alike;
//! the table gives p50 / p99 / mean per call and the ratio to server mode.
// A bench's whole output is the table it prints.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use trackway::destination::JsonHttp;
use trackway::store::MemoryStore;
use trackway::{AppLifecycle, Client, Properties, Track, props};

const ROUNDS: usize = 10;

fn event_properties(i: usize) -> Properties {
    props! { "seq" => i as i64, "plan" => "pro", "path" => "/pricing", "amount" => 19.99 }
}

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Server,
    App,
    AppWithDefaults,
}

fn main() -> anyhow::Result<()> {
    let n = std::env::args().skip_while(|a| a != "--n").nth(1).and_then(|v| v.parse().ok()).unwrap_or(100_000usize);
    let per_round = (n / ROUNDS).max(1);
    let collector = trackway_collector::Collector::builder().sink(true).start()?;
    let build = |defaults: bool| -> anyhow::Result<Client> {
        let mut b = Client::builder()
            .destination(JsonHttp::new(collector.url("/v1/events")))
            .store(MemoryStore::new())
            .app("bench", "1.0")
            .app_lifecycle(AppLifecycle::default());
        if defaults {
            b = b.default_properties(props! { "build" => "release", "channel" => "stable", "ab_group" => 3 });
        }
        Ok(b.build()?)
    };
    let plain = build(false)?;
    let with_defaults = build(true)?;
    let variants = [
        (Variant::Server, "server mode: track(user, name, props)"),
        (Variant::App, "app mode: capture(Track) in a session"),
        (Variant::AppWithDefaults, "app mode + 3 default properties"),
    ];
    let mut costs: Vec<Vec<u64>> = vec![Vec::with_capacity(n); variants.len()];
    for round in 0..ROUNDS {
        for (v, (variant, _)) in variants.iter().enumerate() {
            let client = if *variant == Variant::AppWithDefaults { &with_defaults } else { &plain };
            for i in round * per_round..(round + 1) * per_round {
                let started = Instant::now();
                let result = match variant {
                    Variant::Server => client.track("user-42", "bench_event", event_properties(i)),
                    _ => client.capture(Track::new("bench_event").properties(event_properties(i))),
                };
                costs[v].push(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
                result?;
            }
            // Keep the queue from filling: this measures the caller, not a backlog.
            client.flush(Duration::from_secs(30))?;
        }
    }
    println!("app_mode bench: {} calls per variant, {ROUNDS} interleaved rounds", per_round * ROUNDS);
    println!("{:<42} {:>8} {:>8} {:>8} {:>10}", "variant", "p50 ns", "p99 ns", "mean ns", "p50 ratio");
    let p50_server = percentile(&mut costs[0].clone(), 0.50);
    for ((_, name), c) in variants.iter().zip(costs.iter_mut()) {
        let mean = c.iter().sum::<u64>() / c.len().max(1) as u64;
        let (p50, p99) = (percentile(c, 0.50), percentile(c, 0.99));
        #[allow(clippy::cast_precision_loss)]
        let ratio = p50 as f64 / p50_server.max(1) as f64;
        println!("{name:<42} {p50:>8} {p99:>8} {mean:>8} {ratio:>9.2}x");
    }
    plain.shutdown(Duration::from_secs(10))?;
    with_defaults.shutdown(Duration::from_secs(10))?;
    collector.shutdown();
    Ok(())
}

fn percentile(values: &mut [u64], q: f64) -> u64 {
    values.sort_unstable();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    let i = ((values.len().saturating_sub(1)) as f64 * q).round() as usize;
    values.get(i).copied().unwrap_or(0)
}

//! OpenCDP's dual-write to Customer.io (spec §1.6): two destinations with their own cursors, so
//! an outage of one never blocks, delays or drops the other's writes, mapped without the SDK's
//! hazards (timestamps and ULID ids sent, the push token as the device id, `web` not sent).

mod support;

use std::time::{Duration, Instant};

use serde_json::Value as Json;
use support::{fast_builder, wait_until, watchdog};
use trackway::destination::customerio::{Api, CustomerIo};
use trackway::destination::opencdp::{Identifiers, OpenCdp, OpenCdpConfig, SendEmail};
use trackway::{Client, Device, DevicePlatform, HealthState, props};
use trackway_collector::{Collector, RecordedRequest};
use trackway_wire::customerio::is_ulid;

const LIMIT: Duration = Duration::from_secs(90);
const BASE: &str = "/gateway/data-gateway";

/// 20 tracks, an identify and two devices (android, web) for `user`.
fn write_everything(client: &Client, user: &str) {
    client.identify(user, props! { "email" => "jane@example.com", "created_at" => 1_700_000_000 }).expect("identify");
    for i in 0..20 {
        client.track(user, "purchase_completed", props! { "i" => i }).expect("track");
    }
    client.register_device(user, Device::new("dev-android", DevicePlatform::Android, "fcm-1")).expect("android");
    client.register_device(user, Device::new("dev-web", DevicePlatform::Web, "fcm-web")).expect("web");
}

fn bodies(requests: &[RecordedRequest], method: &str, path_end: &str) -> Vec<Json> {
    requests
        .iter()
        .filter(|r| r.method == method && r.path.ends_with(path_end) && r.status == 200)
        .filter_map(|r| serde_json::from_slice(&r.body).ok())
        .collect()
}

#[test]
fn customer_io_down_never_holds_opencdp_back_and_gets_everything_once_it_is_back() {
    watchdog(LIMIT, || {
        let opencdp = Collector::start().expect("opencdp");
        // Customer.io is down for the first part: its port refuses connections.
        let reserved = Collector::builder().customerio_credentials("site", "key").reserve().expect("reserve");
        let cio = CustomerIo::new("site", "key").base_url(reserved.url("")).api(Api::V1);
        let client = fast_builder()
            .destinations(OpenCdpConfig::new("cdp-key").endpoint(opencdp.url(BASE)).customer_io(cio))
            .build()
            .expect("build");
        let started = Instant::now();
        write_everything(&client, "jane");
        // Every OpenCDP write arrives while Customer.io refuses every connection.
        assert!(wait_until(Duration::from_secs(10), || opencdp.request_count() == 23), "{}", opencdp.request_count());
        assert!(started.elapsed() < Duration::from_secs(10), "OpenCDP was not held back: {:?}", started.elapsed());
        // A transactional message goes to OpenCDP only (never dual-written).
        let cdp = client.direct::<OpenCdp>().expect("direct");
        let email = SendEmail::new().to("jane@example.com").identifiers(Identifiers::id("jane")).template("welcome");
        cdp.send_email_blocking(email).expect("email");
        // The collector counts a request when it answers; the worker applies that answer a moment
        // later, so the stats are waited for (bounded), not read at once.
        let applied = wait_until(Duration::from_secs(10), || {
            let o = &client.stats().destinations[0];
            (o.delivered, o.pending) == (23, 0)
        });
        let stats = client.stats();
        let (o, c) = (&stats.destinations[0], &stats.destinations[1]);
        assert_eq!((o.name.as_str(), c.name.as_str()), ("opencdp", "customerio"), "reported separately");
        assert!(applied, "OpenCDP's 23 answers applied: {o:?}");
        assert_eq!(c.delivered, 0);
        assert!(c.pending > 0, "Customer.io's events wait for it: {c:?}");
        // Unhealthy once its first attempt was refused: on a loaded machine OpenCDP may be done
        // before Customer.io's worker has tried at all, so this waits for it (bounded).
        let unhealthy =
            wait_until(Duration::from_secs(10), || client.stats().destinations[1].health.state != HealthState::Healthy);
        assert!(
            unhealthy,
            "Customer.io refusing connections shows in its health: {:?}",
            client.stats().destinations[1]
        );

        // Customer.io comes back on the same address: it receives everything, once.
        let cio_server = reserved.start().expect("customer.io back");
        client.flush(Duration::from_secs(60)).expect("Customer.io catches up");
        let stats = client.stats();
        let c = &stats.destinations[1];
        assert_eq!((c.delivered, c.skipped, c.pending, c.rejected), (22, 1, 0, 0), "{c:?}");
        assert_eq!(stats.destinations[0].delivered, 23, "OpenCDP got nothing twice");
        let requests = cio_server.requests();
        let people = bodies(&requests, "PUT", "/api/v1/customers/jane");
        assert_eq!(people.len(), 1);
        assert_eq!(people[0]["created_at"], 1_700_000_000, "created_at as Unix seconds");
        let events = bodies(&requests, "POST", "/api/v1/customers/jane/events");
        assert_eq!(events.len(), 20);
        for e in &events {
            assert_eq!(e["name"], "purchase_completed");
            assert!(e["timestamp"].is_i64(), "the event's own time: {e}");
            assert!(e["id"].as_str().is_some_and(is_ulid), "an idempotency id: {e}");
        }
        let devices = bodies(&requests, "PUT", "/api/v1/customers/jane/devices");
        assert_eq!(devices.len(), 1, "the web device is not sent");
        assert_eq!(devices[0]["device"]["id"], "fcm-1", "the push token, not OpenCDP's device id");
        assert_eq!(devices[0]["device"]["platform"], "android");
        assert!(requests.iter().all(|r| !r.path.contains("/send/")), "no transactional message at Customer.io");
        assert_eq!(cio_server.customerio_duplicates(), 0);
    });
}

#[test]
fn opencdp_down_never_holds_customer_io_back() {
    watchdog(LIMIT, || {
        let reserved = Collector::builder().reserve().expect("reserve");
        let cio_server = Collector::builder().customerio_credentials("site", "key").start().expect("cio");
        let cio = CustomerIo::new("site", "key").base_url(cio_server.url(""));
        let client = fast_builder()
            .destinations(OpenCdpConfig::new("cdp-key").endpoint(reserved.url(BASE)).customer_io(cio))
            .build()
            .expect("build");
        write_everything(&client, "sam");
        assert!(
            wait_until(Duration::from_secs(10), || {
                let c = &client.stats().destinations[1];
                c.delivered + c.skipped == 23
            }),
            "{:?}",
            client.stats().destinations[1]
        );
        assert_eq!(client.stats().destinations[0].delivered, 0);
        let opencdp = reserved.start().expect("opencdp back");
        client.flush(Duration::from_secs(60)).expect("OpenCDP catches up");
        assert_eq!(opencdp.request_count(), 23);
        assert_eq!(client.stats().destinations[0].delivered, 23);
    });
}

//! Run with: `cargo run -p trackway --features customerio --example opencdp`
//!
//! The OpenCDP Node SDK's `track()` page through trackway's OpenCDP destination: a purchase
//! with nested items, feature usage, the validation errors, a device, the dual-write to
//! Customer.io, a transactional email and a ping. Local collectors stand in for the OpenCDP and
//! Customer.io servers and the example prints what arrived.

// An example shows its results on stdout.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use trackway::destination::customerio::CustomerIo;
use trackway::destination::opencdp::{Identifiers, OpenCdp, OpenCdpConfig, SendEmail};
use trackway::{Client, Device, DevicePlatform, Timestamp, Value, props, store::MemoryStore};
use trackway_collector::Collector;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let collector = Collector::start()?;
    let customer_io = Collector::start()?;
    println!("collectors: OpenCDP on {}, Customer.io on {}", collector.url("/"), customer_io.url("/"));

    // new CDPClient({ cdpApiKey, cdpEndpoint, maxConcurrentRequests: 10,
    //                 sendToCustomerIo: true, customerIo: { siteId, apiKey } })
    let client = Client::builder()
        .destinations(
            OpenCdpConfig::new("your-cdp-key")
                .endpoint(collector.url("/gateway/data-gateway"))
                .max_concurrent_requests(10)
                // Dual-write: a second destination with its own cursor (an outage of one never
                // holds the other back), reported separately in stats().
                .customer_io(CustomerIo::new("your-site-id", "your-api-key").base_url(customer_io.url(""))),
        )
        .app("opencdp-example", env!("CARGO_PKG_VERSION"))
        .store(MemoryStore::new())
        .build()?;

    // await client.identify('user123', { email, plan })
    client.identify("user123", props! { "email" => "jane@example.com", "plan" => "pro" })?;

    // await client.track('user123', 'purchase_completed', { …, items: [{…}] })
    let item = props! { "product_id" => "prod_123", "name" => "Premium Plan", "price" => 99.99, "quantity" => 1 };
    client.track(
        "user123",
        "purchase_completed",
        props! {
            "order_id" => "order_789",
            "amount" => 99.99,
            "currency" => "USD",
            "items" => Value::from(vec![item]),
            "payment_method" => "credit_card",
        },
    )?;

    // await client.track('user123', 'feature_used', { …, timestamp: new Date().toISOString() })
    client.track(
        "user123",
        "feature_used",
        props! {
            "feature_name" => "export_data",
            "export_format" => "csv",
            "file_size_bytes" => 1_024_000,
            "timestamp" => Timestamp::now(),
        },
    )?;

    // Properties are optional.
    client.track("user123", "page_viewed", props! {})?;

    // The validation the SDK throws, returned before anything is queued.
    if let Err(e) = client.track("", "purchase_completed", props! { "amount" => 99.99 }) {
        println!("track('', …): {e}");
    }
    if let Err(e) = client.track("user123", "", props! { "amount" => 99.99 }) {
        println!("track(…, '', …): {e}");
    }

    // await client.registerDevice('user123', { deviceId, platform, fcmToken, … })
    client.register_device(
        "user123",
        Device::new("device-abc", DevicePlatform::Android, "fcm-token").model("Pixel 8").os_version("14"),
    )?;

    // The SDK's `await client.track(..)` resolves once the event is sent; here the events are
    // queued durably and `flush` waits until everything queued so far is delivered.
    client.flush(Duration::from_secs(10))?;

    // Transactional messages are direct calls: sent at once, answered, never retried once sent.
    let cdp = client.direct::<OpenCdp>()?;
    cdp.ping_blocking()?;
    let sent = cdp.send_email_blocking(
        SendEmail::new()
            .to("jane@example.com")
            .identifiers(Identifiers::id("user123"))
            .template("welcome")
            .message_data(props! { "first_name" => "Jane" }),
    )?;
    println!("send_email: {} {}", sent.status, String::from_utf8_lossy(&sent.body));

    for r in collector.requests().iter().chain(&customer_io.requests()) {
        println!("{} {} {}", r.method, r.path, String::from_utf8_lossy(&r.body));
    }
    for d in client.stats().destinations {
        println!("{}: {} delivered, {} pending", d.name, d.delivered, d.pending);
    }
    client.shutdown(Duration::from_secs(5))?;
    Ok(())
}

//! Run with: `cargo run -p trackway --example bloomreach`
//!
//! The Bloomreach Flutter SDK's tracking examples (the seed) through trackway's Bloomreach
//! destination: a `screen_view`, a purchase with nested properties, `identifyCustomer` with
//! `registered`, a payment, a push token, default properties, and `anonymize` with a project
//! switch and a payments mapping. A local collector stands in for the Bloomreach API and the
//! example prints what each project received.

// An example shows its results on stdout.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use trackway::destination::EventType;
use trackway::destination::bloomreach::{
    Authorization, Bloomreach, BloomreachProject, BloomreachRuntime, KIND, ProjectChange,
};
use trackway::{AppLifecycle, Client, Identify, Payment, PushToken, Screen, Track, props, store::MemoryStore};
use trackway_collector::Collector;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let collector = Collector::start()?;
    println!("collector (as the Bloomreach API) listening on {}", collector.url("/"));

    // ExponeaConfiguration(projectToken:, authorizationToken:, baseUrl:, defaultProperties:)
    let main = Bloomreach::new("YOUR-PROJECT-TOKEN", Authorization::token("YOUR_API_KEY")).base_url(collector.url("/"));
    // Projects switched to at run time: their keys come back from the app at the next start.
    let runtime = BloomreachRuntime::new(&main).credentials(|token, _base_url| match token {
        "new-project-token" => Some(Authorization::token("new-authorization-token")),
        "special-project-for-payments" => Some(Authorization::token("payment-authorization-token")),
        _ => None,
    });
    let client = Client::builder()
        .app("bloomreach-example", env!("CARGO_PKG_VERSION"))
        .app_lifecycle(AppLifecycle::default())
        .default_properties(props! {
            "thisIsADefaultStringProperty" => "This is a default string value",
            "thisIsADefaultIntProperty" => 1,
        })
        .bloomreach(main)
        .runtime_destinations(KIND, runtime.clone())
        .store(MemoryStore::new())
        .build()?;

    // Event(name: 'screen_view', properties: {'screen_name': 'dashboard', 'other_property': 123.45})
    client.capture(Screen::new("dashboard").property("other_property", 123.45))?;
    // Event(name: 'purchase', properties: {... 'product_list': [...] ...})
    client.capture(
        Track::new("purchase")
            .property("purchase_status", "success")
            .property(
                "product_list",
                vec![
                    props! { "product_id" => "abc123", "quantity" => 2 },
                    props! { "product_id" => "abc456", "quantity" => 1 },
                ],
            )
            .property("total_price", 7.99),
    )?;
    // identifyCustomer(Customer(ids: {'registered': ...}, properties: {...}))
    client.identify_customer(
        Identify::new()
            .id("registered", "jane.doe@example.com")
            .property("first_name", "Jane")
            .property("last_name", "Doe")
            .property("age", 32),
    )?;
    // trackPaymentEvent(PurchasedItem(value: 12.34, currency: "EUR", ...))
    client.track_payment(
        Payment::new(12.34, "EUR")
            .payment_system("Virtual")
            .product_id("handbag")
            .product_title("Awesome leather handbag"),
    )?;
    // trackPushToken("value-of-push-token")
    client.track_push_token(PushToken::fcm("value-of-push-token"))?;
    // anonymize(ExponeaConfigurationChange(project: ..., mapping: {EventType.payment: [...]}))
    runtime.anonymize(
        &client,
        ProjectChange::new()
            .project(BloomreachProject::new("new-project-token", Authorization::token("new-authorization-token")))
            .route(
                EventType::Payment,
                [BloomreachProject::new(
                    "special-project-for-payments",
                    Authorization::token("payment-authorization-token"),
                )],
            ),
    )?;
    client.track_payment(Payment::new(4.99, "EUR").product_id("gloves"))?;
    client.shutdown(Duration::from_secs(5))?;

    for row in collector.bloomreach_stored() {
        let what = row.data["event_type"].as_str().unwrap_or("(customer update)");
        println!("{:<30} {:<20} {}", row.project, what, row.data["customer_ids"]);
    }
    Ok(())
}

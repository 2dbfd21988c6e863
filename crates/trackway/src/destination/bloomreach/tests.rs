//! Unit tests of the pure parts: authorization, encoding rules, the answer table.

use std::sync::Arc;

use trackway_wire::{Context, Event, EventKind, Identity, PageInfo, Properties, Timestamp, props};

use super::*;
use crate::destination::{Outcome, Response};

fn event(kind: EventKind, name: Option<&str>, properties: Properties) -> Event {
    let at = Timestamp::from_unix_millis(1_718_000_000_123);
    Event {
        name: name.map(Into::into),
        properties,
        identity: Identity { anonymous_id: Some("c00k1e".into()), ..Identity::default() },
        context: Arc::new(Context {
            library_version: "0.1.0".into(),
            os_name: Some("Linux".into()),
            app_version: Some("1.2".into()),
            device_id: Some("dev-1".into()),
            ..Context::default()
        }),
        ..Event::new(kind, at)
    }
}

fn dest() -> Bloomreach {
    Bloomreach::new("tok", Authorization::token("key")).sending(Sending::PerEvent)
}

fn data(d: &Bloomreach, e: &Event) -> serde_json::Value {
    let c = encode::command(d, e).expect("encodes");
    serde_json::to_value(&c.data).expect("serializes")
}

#[test]
fn basic_credentials_are_base64_and_never_debug_printed() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    let a = Authorization::basic("Aladdin", "open sesame");
    assert_eq!(a.header(), "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
    assert!(!format!("{a:?}").contains("sesame"));
    assert_eq!(Authorization::token("Token abc").header(), "Token abc");
    assert!(!format!("{:?}", dest()).contains("key\""));
}

#[test]
fn configuration_checks_name_what_to_fix() {
    assert!(dest().check_config().is_ok());
    let bad = Bloomreach::new("bad token", Authorization::token("k")).check_config().unwrap_err();
    assert!(bad.contains("project token"), "{bad}");
    let app = dest().application_id("My App").check_config().unwrap_err();
    assert!(app.contains("application id"), "{app}");
    assert!(Bloomreach::new("t", Authorization::token("")).check_config().is_err());
    assert!(Bloomreach::new("t", Authorization::basic("id", "")).check_config().is_err());
    assert!(dest().base_url("ftp://x").check_config().is_err());
    assert_eq!(
        dest().base_url("https://api.example.com/").url("batch"),
        "https://api.example.com/track/v2/projects/tok/batch"
    );
}

#[test]
fn screen_page_and_app_events_have_their_fields() {
    let d = dest();
    let screen = data(&d, &event(EventKind::Screen, Some("dashboard"), props! { "other_property" => 123.45 }));
    assert_eq!(screen["event_type"], "screen_view");
    assert_eq!(screen["properties"]["screen_name"], "dashboard");
    assert_eq!(screen["properties"]["application_id"], "default-application");
    assert_eq!(screen["properties"]["device_id"], "dev-1");
    assert!(screen["properties"].get("os_name").is_none(), "device properties only on app events");
    assert_eq!(screen["timestamp"], 1_718_000_000.123);
    assert_eq!(screen["customer_ids"], serde_json::json!({ "cookie": "c00k1e" }));

    let mut page = event(EventKind::Page, None, Properties::new());
    page.page = Some(PageInfo { url: "/p".into(), title: Some("T".into()), referrer: None });
    let page = data(&d, &page);
    assert_eq!(
        (page["event_type"].as_str(), page["properties"]["location"].as_str()),
        (Some("page_visit"), Some("/p"))
    );
    assert_eq!(page["properties"]["title"], "T");

    let start = data(&d, &event(EventKind::Track, Some("session_start"), Properties::new()));
    assert_eq!(start["properties"]["os_name"], "Linux");
    assert_eq!(start["properties"]["sdk"], "trackway");
    assert_eq!(start["properties"]["app_version"], "1.2");
    assert!(start["properties"].get("device_model").is_none(), "never invented");
}

#[test]
fn customer_updates_carry_no_event_type_nor_app_fields_and_may_drop_defaults() {
    let mut e = event(EventKind::Identify, None, props! { "first_name" => "Jane", "plan" => "free" });
    e.identity.ids.insert("registered".into(), "jane@example.com".into());
    e.identity.ids.insert("cookie".into(), "spoofed".into());
    e.default_keys = vec!["plan".into()];
    let d = dest();
    let c = encode::command(&d, &e).expect("encodes");
    assert_eq!(c.name, "customers");
    let body = serde_json::to_value(&c.data).expect("serializes");
    assert!(body.get("event_type").is_none());
    assert!(body["properties"].get("application_id").is_none());
    assert_eq!(body["properties"]["plan"], "free");
    assert_eq!(body["customer_ids"], serde_json::json!({ "cookie": "c00k1e", "registered": "jane@example.com" }));
    let strict = data(&dest().allow_default_customer_properties(false), &e);
    assert!(strict["properties"].get("plan").is_none());
    assert_eq!(strict["properties"]["first_name"], "Jane");
}

#[test]
fn server_mode_users_go_under_the_hard_id_name() {
    let mut e = event(EventKind::Track, Some("purchase"), Properties::new());
    e.identity = Identity::user("u1");
    e.context = Arc::new(Context::default());
    let body = data(&dest().hard_id("crm_id"), &e);
    assert_eq!(body["customer_ids"], serde_json::json!({ "crm_id": "u1" }));
    assert!(body["properties"].get("device_id").is_none());
}

fn request(url: &str, n: usize) -> Request {
    Request::post(url, "", (0..n).collect())
}

#[test]
fn answers_follow_the_table() {
    let single = request("http://x/track/v2/projects/t/customers/events", 1);
    let outcome = |r: Response| classify::classify(&single, &r).outcomes.remove(0);
    assert_eq!(outcome(Response::new(200, r#"{"success":true}"#)), Outcome::Delivered);
    let rejected = outcome(Response::new(200, r#"{"success":false,"errors":["bad"]}"#));
    assert_eq!(rejected, Outcome::Reject(r#"200 success: false: errors ["bad"]"#.into()));
    assert!(matches!(outcome(Response::new(200, "")), Outcome::Reject(_)));
    assert!(matches!(outcome(Response::new(200, "{}")), Outcome::Reject(_)));
    assert!(matches!(outcome(Response::new(400, r#"{"errors":{"x":1}}"#)), Outcome::Reject(m) if m.contains("x")));
    for s in [401, 403, 404] {
        assert!(matches!(outcome(Response::new(s, "")), Outcome::Misconfigured(_)), "{s}");
    }
    assert_eq!(outcome(Response::new(500, "")), Outcome::Retry);
    let mut r = Response::new(500, "");
    r.headers.insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("3"));
    assert_eq!(outcome(r), Outcome::Throttled(std::time::Duration::from_secs(3)));
    assert!(matches!(outcome(Response::new(429, "")), Outcome::Throttled(_)));
}

#[test]
fn batch_results_answer_commands_by_position() {
    let batch = request("http://x/track/v2/projects/t/batch", 3);
    let body = r#"{"success":true,"results":[{"success":true},{"success":false,"errors":["no"]}]}"#;
    let out = classify::classify(&batch, &Response::new(200, body)).outcomes;
    assert_eq!(out[0], Outcome::Delivered);
    assert!(matches!(&out[1], Outcome::Reject(m) if m.contains("command 1") && m.contains("no")));
    assert_eq!(out[2], Outcome::Retry, "no result: not answered");
    let whole = classify::classify(&batch, &Response::new(200, r#"{"success":false,"errors":["x"]}"#)).outcomes;
    assert!(whole.iter().all(|o| matches!(o, Outcome::Reject(_))));
}

#[test]
fn a_batch_splits_before_an_event_of_a_customer_updated_in_it() {
    let d = dest().sending(Sending::Batch);
    let mut update = event(EventKind::Identify, None, Properties::new());
    update.identity.ids.insert("registered".into(), "a".into());
    let other = {
        let mut e = event(EventKind::Track, Some("x"), Properties::new());
        e.identity = Identity { anonymous_id: Some("someone-else".into()), ..Identity::default() };
        e
    };
    let after = event(EventKind::Track, Some("y"), Properties::new());
    let records: Vec<EventRecord> = [update, other, after]
        .iter()
        .enumerate()
        .map(|(i, e)| EventRecord::from_event(i as u64, e).expect("record"))
        .collect();
    let out = encode::encode(&d, &records);
    let items: Vec<Vec<usize>> = out.requests.iter().map(|r| r.items.clone()).collect();
    assert_eq!(items, vec![vec![0, 1], vec![2]]);
    let body: serde_json::Value = serde_json::from_slice(&out.requests[0].body).expect("json");
    assert_eq!(body["commands"][0]["name"], "customers");
    assert_eq!(body["commands"][1]["command_id"], records[1].id().to_string());
}

#[test]
fn mapped_projects_are_distinct_destinations_taking_only_their_types() {
    let p = BloomreachProject::new("pay", Authorization::token("k2"));
    let set = dest()
        .map(EventType::Payment, p.clone())
        .map(EventType::Custom, p)
        .map(EventType::Payment, BloomreachProject::new("tok", Authorization::token("key")));
    let ds = set.destinations();
    assert_eq!(ds.len(), 2, "the main project mapped again is not a second destination");
    assert_eq!(Destination::name(&ds[1]), "bloomreach:pay");
    assert!(ds[1].accepts_event_type(EventType::Payment) && ds[1].accepts_event_type(EventType::Custom));
    assert!(!ds[1].accepts_event_type(EventType::Screen));
    assert!(ds[0].accepts_event_type(EventType::Screen));
    let far = BloomreachProject::new("pay", Authorization::token("k")).base_url("http://127.0.0.1:8080/");
    let mapped = dest().map(EventType::Payment, far).destinations();
    assert_eq!(Destination::name(&mapped[1]), "bloomreach:pay@127.0.0.1:8080");
}

//! Unit tests of the pure parts: mapping, encoding, limits and answers.

use std::time::Duration;

use serde_json::{Value as Json, json};
use trackway_wire::{Event, EventKind, Identity, PageInfo, Properties, Timestamp, props};

use super::*;
use crate::destination::{Outcome, Response};

fn event(kind: EventKind, name: Option<&str>, properties: Properties, identity: Identity) -> Event {
    let at = Timestamp::from_unix_millis(1_700_000_000_123);
    Event { name: name.map(Into::into), properties, identity, ..Event::new(kind, at) }
}

fn encode_one(dest: &CustomerIo, e: &Event) -> Encoded {
    let records = [EventRecord::from_event(1, e).expect("record")];
    dest.encode(&records, &DestinationState::default(), e.timestamp)
}

fn body(request: &Request) -> Json {
    serde_json::from_slice(&request.body).expect("json body")
}

fn v1() -> CustomerIo {
    CustomerIo::new("site", "key").api(Api::V1)
}

#[test]
fn v1_track_carries_the_timestamp_and_the_message_id_as_a_ulid() {
    let e = event(EventKind::Track, Some("purchase"), props! { "amount" => 99.9 }, Identity::user("user 1/2"));
    let out = encode_one(&v1(), &e);
    let r = &out.requests[0];
    assert_eq!(r.method, http::Method::POST);
    assert_eq!(r.url, "https://track.customer.io/api/v1/customers/user%201%2F2/events");
    let b = body(r);
    assert_eq!(b["name"], "purchase");
    assert_eq!(b["data"], json!({ "amount": 99.9 }));
    assert_eq!(b["timestamp"], 1_700_000_000);
    let ulid = b["id"].as_str().expect("id");
    assert_eq!(trackway_wire::customerio::uuid_from_ulid(ulid).as_ref(), Some(e.id.as_uuid()));
    assert!(b.get("type").is_none(), "plain events carry no type");
    assert_eq!(r.headers["authorization"], "Basic c2l0ZTprZXk=");
    assert!(r.headers["authorization"].is_sensitive());
    assert_eq!(r.headers["content-type"], "application/json");
}

#[test]
fn v1_identify_page_screen_and_anonymous_events() {
    let dest = v1();
    let created = props! { "email" => "a@b.com", "created_at" => Timestamp::from_unix_millis(1_600_000_000_000) };
    let identify = encode_one(&dest, &event(EventKind::Identify, None, created, Identity::user("u1")));
    let r = &identify.requests[0];
    assert_eq!((r.method.as_str(), r.url.as_str()), ("PUT", "https://track.customer.io/api/v1/customers/u1"));
    assert_eq!(body(r), json!({ "email": "a@b.com", "created_at": 1_600_000_000, "_timestamp": 1_700_000_000 }));

    let mut page = event(EventKind::Page, None, props! {}, Identity::user("u1"));
    page.page = Some(PageInfo { url: "/pricing".into(), title: Some("Pricing".into()), referrer: None });
    let b = body(&encode_one(&dest, &page).requests[0]);
    assert_eq!(
        (b["type"].as_str(), b["name"].as_str(), b["data"]["title"].as_str()),
        (Some("page"), Some("/pricing"), Some("Pricing"))
    );

    let screen = encode_one(&dest, &event(EventKind::Screen, Some("Home"), props! {}, Identity::user("u1")));
    assert_eq!(body(&screen.requests[0])["type"], "screen");

    let anonymous = Identity { anonymous_id: Some("cookie-abc".into()), ..Identity::default() };
    let out = encode_one(&dest, &event(EventKind::Track, Some("viewed"), props! {}, anonymous));
    assert_eq!(out.requests[0].url, "https://track.customer.io/api/v1/events");
    let b = body(&out.requests[0]);
    assert_eq!((b["anonymous_id"].as_str(), b["id"].as_str().map(str::len)), (Some("cookie-abc"), Some(26)));

    let nobody = encode_one(&dest, &event(EventKind::Track, Some("x"), props! {}, Identity::default()));
    assert_eq!(nobody.rejected.len(), 1);
}

#[test]
fn devices_use_the_push_token_and_web_is_skipped() {
    let dest = v1();
    let app = props! { "push_notification_token" => "fcm-1", "platform" => "android", "valid" => true };
    let out = encode_one(&dest, &event(EventKind::Track, Some("notification_state"), app, Identity::user("u1")));
    let r = &out.requests[0];
    assert_eq!((r.method.as_str(), r.url.as_str()), ("PUT", "https://track.customer.io/api/v1/customers/u1/devices"));
    assert_eq!(body(r), json!({ "device": { "id": "fcm-1", "platform": "android", "last_used": 1_700_000_000 } }));

    let gone = props! { "push_notification_token" => "fcm-1", "platform" => "android", "valid" => false };
    let out = encode_one(&dest, &event(EventKind::Track, Some("notification_state"), gone, Identity::user("u1")));
    assert_eq!(out.requests[0].method, http::Method::DELETE);
    assert!(out.requests[0].url.ends_with("/customers/u1/devices/fcm-1"));

    let cdp = props! { "deviceId" => "dev-1", "platform" => "ios", "fcmToken" => "f", "apnToken" => "apn-1",
    "osVersion" => "17", "last_active_at" => "2023-11-14T22:13:20Z" };
    let out = encode_one(
        &CustomerIo::new("s", "k"),
        &event(EventKind::Track, Some(OPENCDP_DEVICE_EVENT), cdp, Identity::user("u1")),
    );
    let b = body(&out.requests[0]);
    assert_eq!(b["device"]["id"], "apn-1", "the APNs token, never OpenCDP's device id");
    assert_eq!(b["device"]["attributes"], json!({ "device_os": "17" }));
    assert_eq!(b["device"]["last_used"], 1_700_000_000);

    let web = props! { "deviceId" => "d", "platform" => "web", "fcmToken" => "f" };
    let out = encode_one(&dest, &event(EventKind::Track, Some(OPENCDP_DEVICE_EVENT), web, Identity::user("u1")));
    assert!(out.requests.is_empty() && out.skipped.len() == 1, "{out:?}");
    let hms = props! { "push_notification_token" => "h", "platform" => "huawei", "valid" => true };
    let out = encode_one(&dest, &event(EventKind::Track, Some("notification_state"), hms, Identity::user("u1")));
    assert_eq!(out.skipped.len(), 1);
}

#[test]
fn commands_become_deletes_and_suppressions() {
    for (name, method, path, action) in [
        (crate::destination::ERASE_USER_EVENT, "DELETE", "/api/v1/customers/u1", "delete"),
        (SUPPRESS_EVENT, "POST", "/api/v1/customers/u1/suppress", "suppress"),
        (UNSUPPRESS_EVENT, "POST", "/api/v1/customers/u1/unsuppress", "unsuppress"),
    ] {
        let e = event(EventKind::Track, Some(name), props! {}, Identity::user("u1"));
        let r = &encode_one(&v1(), &e).requests[0];
        assert_eq!((r.method.as_str(), r.url.trim_start_matches(US_URL)), (method, path));
        assert!(r.body.is_empty() && r.headers.get("content-type").is_none());
        let batch = body(&encode_one(&CustomerIo::new("s", "k"), &e).requests[0]);
        assert_eq!(batch["batch"][0], json!({ "type": "person", "action": action, "identifiers": { "id": "u1" } }));
    }
}

#[test]
fn a_merge_command_is_merge_customers_in_v1_and_a_merge_item_in_v2() {
    let e =
        event(EventKind::Track, Some(super::MERGE_EVENT), props! { "secondary_id" => "anon-1" }, Identity::user("u1"));
    let r = &encode_one(&v1(), &e).requests[0];
    assert_eq!((r.method.as_str(), r.url.trim_start_matches(US_URL)), ("POST", "/api/v1/merge_customers"));
    assert_eq!(body(r), json!({ "primary": { "id": "u1" }, "secondary": { "id": "anon-1" } }));
    let batch = body(&encode_one(&CustomerIo::new("s", "k"), &e).requests[0]);
    assert_eq!(
        batch["batch"][0],
        json!({ "type": "person", "action": "merge", "primary": { "id": "u1" }, "secondary": { "id": "anon-1" } })
    );
    // Without the secondary: refused with the reason; into itself: nothing to send.
    let none = event(EventKind::Track, Some(super::MERGE_EVENT), props! {}, Identity::user("u1"));
    let out = encode_one(&v1(), &none);
    assert!(out.requests.is_empty() && out.rejected.len() == 1, "{out:?}");
    let itself =
        event(EventKind::Track, Some(super::MERGE_EVENT), props! { "secondary_id" => "u1" }, Identity::user("u1"));
    assert_eq!(encode_one(&v1(), &itself).skipped.len(), 1);
}

#[test]
fn v2_batches_follow_the_spec_shape_and_split_at_500_kb() {
    let dest = CustomerIo::new("s", "k").region(Region::Eu);
    let events = [
        event(EventKind::Identify, None, props! { "plan" => "pro" }, Identity::user("1")),
        event(EventKind::Track, Some("signup"), props! { "src" => "web" }, Identity::user("1")),
    ];
    let records: Vec<_> =
        events.iter().enumerate().map(|(i, e)| EventRecord::from_event(i as u64, e).expect("r")).collect();
    let out = dest.encode(&records, &DestinationState::default(), events[0].timestamp);
    assert_eq!(out.requests.len(), 1);
    assert_eq!(out.requests[0].url, "https://track-eu.customer.io/api/v2/batch");
    let b = body(&out.requests[0]);
    assert_eq!(
        b["batch"][0],
        json!({"type":"person","action":"identify","identifiers":{"id":"1"},"attributes":{"plan":"pro"},"timestamp":1_700_000_000})
    );
    let item = &b["batch"][1];
    assert_eq!((item["action"].as_str(), item["name"].as_str()), (Some("event"), Some("signup")));
    assert_eq!(item["attributes"], json!({ "src": "web" }));
    assert_eq!(item["id"].as_str().map(str::len), Some(26));

    // 40 events of 20 KB each: three batches under 500 KB; one of 40 KB goes alone through v1.
    let big = "x".repeat(20_000);
    let mut many: Vec<_> = (0..40)
        .map(|_| event(EventKind::Track, Some("e"), props! { "blob" => big.as_str() }, Identity::user("1")))
        .collect();
    many.push(event(EventKind::Track, Some("huge"), props! { "blob" => "y".repeat(40_000) }, Identity::user("1")));
    let records: Vec<_> =
        many.iter().enumerate().map(|(i, e)| EventRecord::from_event(i as u64, e).expect("r")).collect();
    let out = dest.encode(&records, &DestinationState::default(), many[0].timestamp);
    assert!(out.requests.iter().all(|r| r.body.len() <= trackway_wire::customerio::BATCH_MAX));
    let v1: Vec<_> = out.requests.iter().filter(|r| !r.url.ends_with("/api/v2/batch")).collect();
    assert_eq!(v1.len(), 1, "the 40 KB operation goes through v1");
    assert_eq!(out.requests.iter().map(|r| r.items.len()).sum::<usize>(), 41);
}

#[test]
fn every_limit_is_an_error_at_the_call() {
    let dest = CustomerIo::new("s", "k");
    let check = |e: Event| dest.validate(&e).map_err(|e| e.message);
    let long_id = Identity::user("i".repeat(151));
    assert!(
        check(event(EventKind::Track, Some("e"), props! {}, long_id)).unwrap_err().contains("person id is 151 bytes")
    );
    let name = "n".repeat(151);
    let attrs: Properties = [(name.as_str(), 1)].into_iter().collect();
    assert!(
        check(event(EventKind::Identify, None, attrs, Identity::user("u"))).unwrap_err().contains("attribute name")
    );
    let value = props! { "bio" => "v".repeat(1001) };
    assert!(
        check(event(EventKind::Identify, None, value, Identity::user("u")))
            .unwrap_err()
            .contains("'bio' is 1001 bytes")
    );
    let many: Properties = (0..301).map(|i| (format!("a{i}"), i)).collect();
    assert!(check(event(EventKind::Identify, None, many, Identity::user("u"))).unwrap_err().contains("301 attributes"));
    let long_name = "e".repeat(101);
    assert!(
        check(event(EventKind::Track, Some(&long_name), props! {}, Identity::user("u")))
            .unwrap_err()
            .contains("event name is 101 bytes")
    );
    let data = props! { "blob" => "d".repeat(100_000) };
    assert!(check(event(EventKind::Track, Some("e"), data, Identity::user("u"))).unwrap_err().contains("event data"));
    let reserved = check(event(EventKind::Track, Some("$customerio:suppress"), props! {}, Identity::user("u")));
    assert!(reserved.unwrap_err().contains("reserved"));
    // At the limits, fine.
    let ok = props! { "bio" => "v".repeat(1000) };
    assert!(check(event(EventKind::Identify, None, ok, Identity::user("i".repeat(150)))).is_ok());
}

fn request(url: &str, items: usize) -> Request {
    Request::post(url, "{}", (0..items).collect())
}

#[test]
fn a_207_fails_only_the_operations_it_names() {
    let r = request("https://track.customer.io/api/v2/batch", 3);
    let answer =
        Response::new(207, r#"{"errors":[{"batch_index":1,"reason":"invalid","field":"name","message":"too long"}]}"#);
    let c = classify::classify(&r, &answer);
    assert_eq!(c.outcomes[0], Outcome::Delivered);
    assert_eq!(c.outcomes[2], Outcome::Delivered);
    let Outcome::Reject(why) = &c.outcomes[1] else { panic!("{:?}", c.outcomes) };
    assert!(why.contains("operation 1") && why.contains("field: name") && why.contains("too long"), "{why}");
}

#[test]
fn answers_read_meta_errors_hold_on_401_and_wait_for_retry_after() {
    let r = request("https://track.customer.io/api/v1/customers/u1/events", 1);
    let bad = Response::new(400, r#"{"meta":{"errors":["value for attribute 'x' cannot be longer than 1000 bytes"]}}"#);
    let Outcome::Reject(why) = &classify::classify(&r, &bad).outcomes[0] else { panic!() };
    assert!(why.contains("1 error:\n  - value for attribute 'x'") && !why.contains("u1"), "{why}");
    let unauthorized = Response::new(401, r#"{"meta":{"error":"Unauthorized request"}}"#);
    assert!(
        matches!(&classify::classify(&r, &unauthorized).outcomes[0], Outcome::Misconfigured(m) if m.contains("Unauthorized request"))
    );
    for status in [408, 500, 502, 522, 524] {
        assert_eq!(classify::classify(&r, &Response::new(status, "")).outcomes[0], Outcome::Retry, "{status}");
    }
    let mut wait = Response::new(502, "");
    wait.headers.insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("3"));
    assert_eq!(classify::classify(&r, &wait).outcomes[0], Outcome::Throttled(Duration::from_secs(3)));
}

#[test]
fn configuration_is_checked_and_the_key_never_shown() {
    assert!(CustomerIo::new("", "k").check_config().is_err());
    assert!(CustomerIo::new("a:b", "k").check_config().is_err());
    assert!(CustomerIo::new("s", "k").base_url("ftp://x").check_config().is_err());
    let dest = CustomerIo::new("s", "sekrit").base_url("http://127.0.0.1:9/api/v1/");
    assert_eq!(dest.host_url(), "http://127.0.0.1:9");
    assert!(!format!("{dest:?}").contains("sekrit"));
    assert_eq!("EU".parse::<Region>(), Ok(Region::Eu));
    assert!("mars".parse::<Region>().is_err());
}

#[test]
fn v2_items_are_the_bytes_a_sorted_json_object_gives() {
    let attributes: serde_json::Map<String, Json> = [("plan".to_owned(), json!("pro"))].into_iter().collect();
    let person = |action: &str| json!({ "type": "person", "action": action, "identifiers": { "id": "u1" } });
    let cases = [
        (
            Operation::Identify { id: "u1".into(), attributes: attributes.clone(), timestamp: 7 },
            json!({ "type": "person", "action": "identify", "identifiers": { "id": "u1" }, "attributes": { "plan": "pro" }, "timestamp": 7 }),
        ),
        (
            Operation::Event {
                person: Person::Id("u1".into()),
                kind: "event",
                name: "signup".into(),
                data: attributes,
                timestamp: 8,
                id: "01ARZ3NDEKTSV4RRFFQ69G5FAV".into(),
            },
            json!({ "type": "person", "action": "event", "identifiers": { "id": "u1" }, "name": "signup",
                    "id": "01ARZ3NDEKTSV4RRFFQ69G5FAV", "timestamp": 8, "attributes": { "plan": "pro" } }),
        ),
        (Operation::Delete { id: "u1".into() }, person("delete")),
        (Operation::Suppress { id: "u1".into() }, person("suppress")),
        (Operation::Unsuppress { id: "u1".into() }, person("unsuppress")),
        (
            Operation::Merge { primary: "a".into(), secondary: "b".into() },
            json!({ "type": "person", "action": "merge", "primary": { "id": "a" }, "secondary": { "id": "b" } }),
        ),
    ];
    for (op, want) in cases {
        let item = op.v2_item().expect("a v2 item");
        let got = serde_json::to_vec(&item).expect("serialize");
        assert_eq!(String::from_utf8(got).expect("utf-8"), want.to_string(), "{op:?}");
        assert_eq!(op.v2(), Some(want));
    }
    let anonymous = Operation::Event {
        person: Person::Anonymous("a".into()),
        kind: "event",
        name: "n".into(),
        data: serde_json::Map::new(),
        timestamp: 0,
        id: String::new(),
    };
    assert!(anonymous.v2_item().is_none() && anonymous.v2().is_none(), "v1 only");
}

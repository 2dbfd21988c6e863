//! The Customer.io destination against the collector's Track API backend on loopback: golden
//! requests for every call (v1 and v2), limits at the call, a 207 with one bad operation, 401
//! held, redirects and credentials, Retry-After, erase_user's DELETE, ULID ids stable across a
//! retry and a restart, duplicates counted, skipped devices.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{fast_builder, wait_until, watchdog};
use trackway::destination::customerio::{Api, CustomerIo};
use trackway::store::SqliteStore;
use trackway::{
    Client, Device, DevicePlatform, Error, HealthState, HttpOptions, Identify, MessageId, Page, PushToken, Timestamp,
    Track, props,
};
use trackway_collector::{Collector, Faults, RecordedRequest, Reply, RunningCollector};
use trackway_wire::customerio::{is_ulid, ulid_from_uuid};

const LIMIT: Duration = Duration::from_secs(30);
const AUTH: &str = "Basic c2l0ZTprZXk="; // base64("site:key")

fn collector() -> RunningCollector {
    Collector::builder().customerio_credentials("site", "key").start().expect("collector")
}

fn cio(collector: &RunningCollector) -> CustomerIo {
    CustomerIo::new("site", "key").base_url(collector.url(""))
}

fn flush(client: &Client) {
    client.flush(Duration::from_secs(10)).expect("flush");
}

/// The bodies of the requests to `path`, as JSON.
fn bodies(requests: &[RecordedRequest], method: &str, path: &str) -> Vec<Value> {
    requests.iter().filter(|r| r.method == method && r.path == path).map(|r| r.json().unwrap_or(Value::Null)).collect()
}

fn is_int(v: &Value) -> bool {
    v.is_i64() || v.is_u64()
}

#[test]
fn v1_golden_requests_for_every_call() {
    watchdog(LIMIT, || {
        let collector = collector();
        let client = fast_builder().app_mode().destination(cio(&collector).api(Api::V1)).build().expect("build");
        let created = Timestamp::from_unix_millis(1_700_000_000_000);
        client
            .identify("user_123", props! { "email" => "a@b.com", "plan" => "pro", "created_at" => created })
            .expect("identify");
        client.track("user_123", "purchase", props! { "amount" => 99.9 }).expect("track");
        client.page("user_123", Page::new("https://example.com/pricing").title("Pricing")).expect("page");
        client.screen("user_123", "Home", props! {}).expect("screen");
        client.capture(Track::new("viewed").anonymous_id("cookie-abc")).expect("anonymous");
        client.identify_customer(Identify::new().id("registered", "jane")).expect("app identify");
        client.track_push_token(PushToken::fcm("fcm-token-1")).expect("push token");
        client.direct::<CustomerIo>().expect("handle").suppress("spammer").expect("suppress");
        client.direct::<CustomerIo>().expect("handle").unsuppress("spammer").expect("unsuppress");
        flush(&client);
        client.erase_user("gone@example.com").expect("erase");
        flush(&client);

        let requests = collector.requests();
        assert!(
            requests.iter().all(|r| r.status == 200),
            "{:?}",
            requests.iter().map(|r| (r.status, r.answer_body.clone())).collect::<Vec<_>>()
        );
        for r in &requests {
            assert_eq!(r.header("authorization"), Some(AUTH), "{} {}", r.method, r.path);
            assert_eq!(r.destination, "customerio");
        }
        let identify = &bodies(&requests, "PUT", "/api/v1/customers/user_123")[0];
        assert_eq!(identify["email"], "a@b.com");
        assert_eq!(identify["created_at"], 1_700_000_000, "a timestamp becomes Unix seconds");
        assert!(is_int(&identify["_timestamp"]));

        let events = bodies(&requests, "POST", "/api/v1/customers/user_123/events");
        assert_eq!(events.len(), 3, "track, page, screen");
        let track = &events[0];
        assert_eq!((track["name"].as_str(), track["data"]["amount"].as_f64()), (Some("purchase"), Some(99.9)));
        assert!(is_int(&track["timestamp"]) && track["id"].as_str().is_some_and(is_ulid), "{track}");
        assert!(track.get("type").is_none());
        assert_eq!(
            (events[1]["type"].as_str(), events[1]["name"].as_str()),
            (Some("page"), Some("https://example.com/pricing"))
        );
        assert_eq!(events[1]["data"]["title"], "Pricing");
        assert_eq!((events[2]["type"].as_str(), events[2]["name"].as_str()), (Some("screen"), Some("Home")));

        let anonymous = &bodies(&requests, "POST", "/api/v1/events")[0];
        assert_eq!(
            (anonymous["anonymous_id"].as_str(), anonymous["name"].as_str()),
            (Some("cookie-abc"), Some("viewed"))
        );
        assert!(anonymous["id"].as_str().is_some_and(is_ulid));

        // App mode: the identify carries the anonymous id (merge), the token is the device id.
        let app_identify = &bodies(&requests, "PUT", "/api/v1/customers/jane")[0];
        assert!(app_identify["anonymous_id"].is_string(), "{app_identify}");
        let device = &bodies(&requests, "PUT", "/api/v1/customers/jane/devices")[0];
        assert_eq!(
            (device["device"]["id"].as_str(), device["device"]["platform"].as_str()),
            (Some("fcm-token-1"), Some("android"))
        );
        assert!(is_int(&device["device"]["last_used"]));

        let paths: Vec<(&str, &str)> = requests.iter().map(|r| (r.method.as_str(), r.path.as_str())).collect();
        assert!(paths.contains(&("POST", "/api/v1/customers/spammer/suppress")), "{paths:?}");
        assert!(paths.contains(&("POST", "/api/v1/customers/spammer/unsuppress")), "{paths:?}");
        assert!(paths.contains(&("DELETE", "/api/v1/customers/gone%40example.com")), "{paths:?}");
        // Sessions and installation are not sent.
        assert_eq!(requests.len(), 10, "{paths:?}");
        let stats = client.stats();
        assert_eq!((stats.destinations[0].delivered, stats.destinations[0].pending), (10, 0));
    });
}

#[test]
fn v2_golden_batch_carries_every_operation_in_order() {
    watchdog(LIMIT, || {
        let collector = collector();
        let client = fast_builder().destination(cio(&collector)).build().expect("build");
        client.pause_worker();
        client.identify("1", props! { "plan" => "pro" }).expect("identify");
        let id = client.track("1", "signup", props! { "src" => "web" }).expect("track");
        client.page("1", Page::new("/pricing")).expect("page");
        client.screen("1", "Home", props! {}).expect("screen");
        client.direct::<CustomerIo>().expect("handle").suppress("2").expect("suppress");
        client.resume_worker();
        flush(&client);
        client.erase_user("3").expect("erase");
        flush(&client);
        let requests = collector.requests();
        let batches = bodies(&requests, "POST", "/api/v2/batch");
        let items: Vec<&Value> = batches.iter().flat_map(|b| b["batch"].as_array().expect("batch").iter()).collect();
        let actions: Vec<&str> = items.iter().map(|i| i["action"].as_str().unwrap_or("")).collect();
        assert_eq!(actions, ["identify", "event", "page", "screen", "suppress", "delete"]);
        for item in &items {
            assert_eq!(item["type"], "person");
            assert_eq!(item["identifiers"].as_object().map(|o| o.len()), Some(1), "{item}");
        }
        assert_eq!(items[0]["attributes"], json!({ "plan": "pro" }));
        assert!(is_int(&items[0]["timestamp"]));
        assert_eq!(items[1]["name"], "signup");
        assert_eq!(items[1]["attributes"], json!({ "src": "web" }), "v2 event data goes under attributes");
        assert_eq!(items[1]["id"].as_str(), Some(ulid_from_uuid(id.as_uuid()).as_str()));
        assert_eq!(items[2]["name"], "/pricing");
        assert_eq!(items[5]["identifiers"]["id"], "3");
        assert!(requests.iter().all(|r| r.header("content-type") == Some("application/json")));
    });
}

#[test]
fn every_limit_is_a_typed_error_at_the_call() {
    watchdog(LIMIT, || {
        let collector = collector();
        let client = fast_builder().destination(cio(&collector)).build().expect("build");
        let limit = |r: Result<MessageId, Error>| match r {
            Err(Error::DestinationLimit { destination, message }) => {
                assert_eq!(destination, "customerio");
                message
            }
            other => panic!("expected a limit error, got {other:?}"),
        };
        let long_id = "i".repeat(151);
        assert!(limit(client.track(&long_id, "e", props! {})).contains("person id is 151 bytes"));
        let name = "n".repeat(151);
        let attrs: trackway::Properties = [(name.as_str(), 1)].into_iter().collect();
        assert!(limit(client.identify("u", attrs)).contains("attribute name"));
        assert!(limit(client.identify("u", props! { "bio" => "v".repeat(1001) })).contains("1001 bytes"));
        let many: trackway::Properties = (0..301).map(|i| (format!("a{i}"), i)).collect();
        assert!(limit(client.identify("u", many)).contains("301 attributes"));
        assert!(limit(client.track("u", &"e".repeat(101), props! {})).contains("event name is 101 bytes"));
        assert!(limit(client.track("u", "e", props! { "blob" => "d".repeat(100_000) })).contains("event data"));
        assert!(limit(client.direct::<CustomerIo>().expect("handle").suppress(&long_id)).contains("151 bytes"));
        flush(&client);
        assert_eq!(collector.request_count(), 0, "nothing was sent");
    });
}

#[test]
fn a_207_dead_letters_only_the_bad_operation() {
    watchdog(LIMIT, || {
        let collector = collector();
        let client = fast_builder().destination(cio(&collector)).build().expect("build");
        client.pause_worker();
        client.track("1", "ok-before", props! {}).expect("track");
        // A created_at that is no timestamp goes as it is, and the server refuses it.
        client.identify("1", props! { "created_at" => "yesterday" }).expect("identify");
        client.track("1", "ok-after", props! {}).expect("track");
        client.resume_worker();
        flush(&client);
        let requests = collector.requests();
        assert_eq!(requests.len(), 1, "one batch");
        assert_eq!(requests[0].status, 207);
        let stats = client.stats();
        let d = &stats.destinations[0];
        assert_eq!((d.delivered, d.rejected, d.retried, d.pending), (2, 1, 0, 0));
        let letters = client.dead_letters(10).expect("dead letters");
        assert_eq!(letters.len(), 1);
        assert!(
            letters[0].detail.contains("batch_index") || letters[0].detail.contains("operation 1"),
            "{:?}",
            letters[0]
        );
        assert!(letters[0].detail.contains("created_at"), "{:?}", letters[0]);
    });
}

#[test]
fn a_401_holds_the_events_and_never_dead_letters_them() {
    watchdog(LIMIT, || {
        let collector = collector();
        let client = fast_builder()
            .destination(CustomerIo::new("site", "wrong-key").base_url(collector.url("")))
            .build()
            .expect("build");
        client.track("u1", "e1", props! {}).expect("track");
        client.track("u1", "e2", props! {}).expect("track");
        assert!(wait_until(Duration::from_secs(10), || client.stats().destinations[0].health.state
            == HealthState::Misconfigured));
        let stats = client.stats();
        let d = &stats.destinations[0];
        assert_eq!((d.pending, d.rejected, d.delivered), (2, 0, 0));
        assert!(
            d.health.last_error.as_ref().is_some_and(|e| e.message.contains("site id and API key")),
            "{:?}",
            d.health
        );
        assert!(!format!("{:?}", d.health).contains("wrong-key"), "the key is never shown");
        assert!(client.dead_letters(10).expect("dead letters").is_empty());
        assert_eq!(collector.requests()[0].status, 401);
    });
}

/// Host names on loopback (the port comes from each URL).
fn loopback_hosts(http: HttpOptions) -> HttpOptions {
    let lo = SocketAddr::from(([127, 0, 0, 1], 0));
    http.resolve("track.customer.io", lo).resolve("track-eu.customer.io", lo).resolve("elsewhere.test", lo)
}

/// One event through `track.customer.io` (on loopback), whose first answer is a 307 to `host`
/// on a second collector; what the second collector received.
fn redirected_to(host: &str) -> Vec<RecordedRequest> {
    let second = collector();
    let location = format!("http://{host}:{}/api/v2/batch", second.addr().port());
    let first = Collector::builder()
        .customerio_credentials("site", "key")
        .script([Reply::status(307).header("location", &location)])
        .start()
        .expect("collector");
    let base = format!("http://track.customer.io:{}", first.addr().port());
    let client = fast_builder()
        .destination_with(CustomerIo::new("site", "key").base_url(base), loopback_hosts(HttpOptions::default()))
        .build()
        .expect("build");
    client.track("u1", "moved", props! {}).expect("track");
    assert!(wait_until(Duration::from_secs(10), || second.request_count() > 0));
    drop(client);
    second.requests()
}

#[test]
fn a_redirect_to_the_eu_host_keeps_auth_and_to_a_foreign_host_drops_it() {
    watchdog(LIMIT, || {
        let eu = redirected_to("track-eu.customer.io");
        assert_eq!(eu[0].header("authorization"), Some(AUTH));
        assert_eq!(eu[0].status, 200);
        let foreign = redirected_to("elsewhere.test");
        assert_eq!(foreign[0].header("authorization"), None, "no credentials for another host");
        assert_eq!(foreign[0].status, 401);
    });
}

#[test]
fn retry_after_is_waited_for_and_the_retry_carries_the_same_ulid() {
    watchdog(LIMIT, || {
        let collector = Collector::builder()
            .customerio_credentials("site", "key")
            .script([Reply::status(429).retry_after("1")])
            .start()
            .expect("collector");
        let client = fast_builder().destination(cio(&collector)).build().expect("build");
        let id = client.track("u1", "e", props! {}).expect("track");
        flush(&client);
        let requests = collector.requests();
        assert_eq!(requests.iter().map(|r| r.status).collect::<Vec<_>>(), [429, 200]);
        let gap = requests[1].received_at.duration_since(requests[0].received_at);
        assert!(gap >= Duration::from_millis(950), "waited {gap:?}");
        let ulid = ulid_from_uuid(id.as_uuid());
        for r in &requests {
            assert_eq!(r.json().expect("json")["batch"][0]["id"].as_str(), Some(ulid.as_str()));
        }
    });
}

#[test]
fn erase_user_purges_locally_and_queues_a_delete() {
    watchdog(LIMIT, || {
        let collector = collector();
        collector.set_faults(Faults { fail_for_ms: Some(60_000), ..Faults::default() }).expect("faults");
        let client = fast_builder().destination(cio(&collector).api(Api::V1)).build().expect("build");
        client.track("u1", "a", props! {}).expect("track");
        client.track("u1", "b", props! {}).expect("track");
        client.track("u2", "c", props! {}).expect("track");
        assert!(wait_until(Duration::from_secs(10), || collector.request_count() > 0), "failing, so pending");
        let removed = client.erase_user("u1").expect("erase");
        // An event on the wire when the purge ran is not removed then, but counted.
        assert_eq!(removed + client.stats().purge_in_flight, 2, "the local count");
        collector.clear_faults();
        flush(&client);
        let delivered: Vec<(String, String)> = collector
            .requests()
            .iter()
            .filter(|r| r.status == 200)
            .map(|r| (r.method.clone(), r.path.clone()))
            .collect();
        assert!(delivered.contains(&("DELETE".into(), "/api/v1/customers/u1".into())), "{delivered:?}");
        assert!(delivered.contains(&("POST".into(), "/api/v1/customers/u2/events".into())), "{delivered:?}");
        // One on the wire during the purge counts as delivered if the server took it; otherwise
        // it is removed when its answer comes (purged), never retried.
        let u1_delivered = delivered.iter().filter(|(_, path)| path == "/api/v1/customers/u1/events").count() as u64;
        assert_eq!(client.stats().dropped.purged + u1_delivered, 2, "{delivered:?}");
    });
}

#[test]
fn the_ulid_is_the_message_id_across_a_restart_and_duplicates_are_counted() {
    watchdog(LIMIT, || {
        let dir = tempfile::tempdir().expect("dir");
        let reserved = Collector::builder().customerio_credentials("site", "key").reserve().expect("reserve");
        let base = reserved.url("");
        let build = || {
            fast_builder()
                .store(SqliteStore::new(dir.path().join("outbox.db")))
                .destination(CustomerIo::new("site", "key").base_url(&base))
                .build()
                .expect("build")
        };
        // The server is down: the event waits in the store.
        let client = build();
        let id = client.track("u1", "kept", props! {}).expect("track");
        client.persisted(Duration::from_secs(5)).expect("persisted");
        let _ = client.shutdown(Duration::from_millis(200));
        drop(client);

        let collector = reserved.start().expect("start");
        let client = build();
        flush(&client);
        let ulid = ulid_from_uuid(id.as_uuid());
        let sent = collector.requests()[0].json().expect("json");
        assert_eq!(sent["batch"][0]["id"].as_str(), Some(ulid.as_str()), "the same id after the restart");

        // The same message again (an import replays it): Customer.io ignores it, the collector counts it.
        let again = Track::new("kept").user("u1");
        client.import(again, id, Timestamp::from_unix_millis(1_700_000_000_000)).expect("import");
        flush(&client);
        assert_eq!(collector.customerio_duplicates(), 1);
        assert_eq!(collector.customerio_stored(), 1);
        assert_eq!(client.stats().destinations[0].delivered, 2, "a duplicate is answered 200");
    });
}

#[test]
fn web_devices_and_huawei_tokens_are_skipped_and_counted() {
    watchdog(LIMIT, || {
        let collector = collector();
        let client = fast_builder().app_mode().destination(cio(&collector)).build().expect("build");
        client.identify_customer(Identify::new().id("registered", "jane")).expect("identify");
        client.track_push_token(PushToken::hms("huawei-token")).expect("hms");
        let web = Device::new("d1", DevicePlatform::Web, "f1");
        client.register_device("jane", web).expect("web device");
        let ios = Device::new("d2", DevicePlatform::Ios, "f2").apn_token("apn-2");
        client.register_device("jane", ios).expect("ios device");
        flush(&client);
        let stats = client.stats();
        let d = &stats.destinations[0];
        assert_eq!((d.skipped, d.delivered, d.pending, d.rejected), (2, 2, 0, 0));
        let devices = bodies(&collector.requests(), "PUT", "/api/v1/customers/jane/devices");
        assert_eq!(devices.len(), 1);
        assert_eq!(devices[0]["device"]["id"], "apn-2", "the push token, not OpenCDP's device id");
    });
}

#[test]
fn requests_keep_the_order_they_were_queued_in_within_a_batch() {
    watchdog(LIMIT, || {
        let collector = collector();
        let client = fast_builder().destination(cio(&collector)).build().expect("build");
        client.pause_worker();
        let ids: Vec<MessageId> =
            (0..50).map(|i| client.track("u", &format!("e{i}"), props! {}).expect("track")).collect();
        client.resume_worker();
        let started = Instant::now();
        flush(&client);
        assert!(started.elapsed() < Duration::from_secs(10));
        let batches = bodies(&collector.requests(), "POST", "/api/v2/batch");
        let sent: Vec<String> = batches
            .iter()
            .flat_map(|b| b["batch"].as_array().cloned().unwrap_or_default())
            .map(|i| i["id"].as_str().unwrap_or("").to_owned())
            .collect();
        let expected: Vec<String> = ids.iter().map(|id| ulid_from_uuid(id.as_uuid())).collect();
        assert_eq!(sent, expected);
    });
}

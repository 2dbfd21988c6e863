//! The Bloomreach destination against the collector's Bloomreach server on 127.0.0.1: golden
//! requests per event type and for a batch, the `success` rule, per-command results, project
//! mapping (and a mapped project that is down), project switches across a restart, late
//! events, both authorizations, compressed answers and a bad token at `build()`.

mod support;

use std::io::Write as _;
use std::time::Duration;

use serde_json::Value;
use support::{fast_builder, watchdog};
use trackway::destination::EventType;
use trackway::destination::bloomreach::{
    Authorization, Bloomreach, BloomreachProject, BloomreachRuntime, KIND, ProjectChange, Sending,
};
use trackway::{
    AppLifecycle, BuildError, Client, FlushError, Identify, Page, Payment, PushPlatform, PushToken, Screen, Timestamp,
    Track, props,
};
use trackway_collector::{Collector, Faults, RecordedRequest, Reply, RunningCollector};

const LIMIT: Duration = Duration::from_secs(30);
const FLUSH: Duration = Duration::from_secs(10);

fn main_project(collector: &RunningCollector) -> Bloomreach {
    Bloomreach::new("main-token", Authorization::token("public-key")).base_url(collector.url("/"))
}

fn bloomreach_requests(collector: &RunningCollector) -> Vec<RecordedRequest> {
    collector.requests().into_iter().filter(|r| r.destination == "bloomreach").collect()
}

/// The body of the request whose `event_type` (or, for customer updates, path) matches.
fn body_of(requests: &[RecordedRequest], event_type: Option<&str>) -> (RecordedRequest, Value) {
    requests
        .iter()
        .find_map(|r| {
            let body = r.json()?;
            let matches = match event_type {
                Some(t) => body["event_type"] == t,
                None => r.path.ends_with("/customers"),
            };
            matches.then(|| (r.clone(), body))
        })
        .unwrap_or_else(|| panic!("no request for {event_type:?}"))
}

fn assert_event_shape(request: &RecordedRequest, body: &Value) {
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/track/v2/projects/main-token/customers/events");
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.header("authorization"), Some("Token public-key"));
    assert!(body["timestamp"].is_f64(), "float seconds: {body}");
    assert!(body["customer_ids"]["cookie"].is_string(), "{body}");
    assert_eq!(body["properties"]["application_id"], "default-application");
    assert!(body["properties"]["device_id"].is_string(), "{body}");
    let keys: Vec<&str> = body.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
    assert_eq!(keys, ["customer_ids", "event_type", "properties", "timestamp"]);
}

#[test]
fn golden_requests_for_every_event_type_and_a_customer_update() {
    watchdog(LIMIT, || {
        let collector = Collector::start().expect("collector");
        let client = fast_builder()
            .app("shop", "2.4.0")
            .device_model("Pixel 8")
            .device_type("mobile")
            .app_lifecycle(AppLifecycle::default().manual_sessions())
            .default_properties(props! { "tier" => "gold" })
            .bloomreach(main_project(&collector))
            .build()
            .expect("client");
        client.session_start().expect("session start");
        client.capture(Screen::new("dashboard").property("other_property", 123.45)).expect("screen");
        client
            .capture(Page::new("https://shop.example/cart").title("Cart").referrer("https://r.example/"))
            .expect("page");
        let product_list = vec![
            props! { "product_id" => "abc123", "quantity" => 2 },
            props! { "product_id" => "abc456", "quantity" => 1 },
        ];
        client
            .capture(
                Track::new("purchase")
                    .property("purchase_status", "success")
                    .property("product_list", product_list)
                    .property("total_price", 7.99),
            )
            .expect("purchase");
        client
            .track_payment(Payment::new(12.34, "EUR").payment_system("Virtual").product_id("handbag"))
            .expect("payment");
        client.track_push_token(PushToken::new(PushPlatform::Fcm, "push-token-1")).expect("push token");
        client
            .identify_customer(Identify::new().id("registered", "jane.doe@example.com").property("first_name", "Jane"))
            .expect("identify");
        client.session_end().expect("session end");
        client.flush(FLUSH).expect("flush");

        let requests = bloomreach_requests(&collector);
        assert!(requests.iter().all(|r| r.status == 200), "{requests:?}");
        for t in [
            "installation",
            "session_start",
            "screen_view",
            "page_visit",
            "purchase",
            "payment",
            "notification_state",
            "session_end",
        ] {
            let (r, body) = body_of(&requests, Some(t));
            assert_event_shape(&r, &body);
        }
        let (_, screen) = body_of(&requests, Some("screen_view"));
        assert_eq!(screen["properties"]["screen_name"], "dashboard");
        assert_eq!(screen["properties"]["tier"], "gold", "default properties on events");
        let (_, page) = body_of(&requests, Some("page_visit"));
        assert_eq!(
            (page["properties"]["location"].as_str(), page["properties"]["title"].as_str()),
            (Some("https://shop.example/cart"), Some("Cart"))
        );
        assert_eq!(page["properties"]["referrer"], "https://r.example/");
        let (_, purchase) = body_of(&requests, Some("purchase"));
        assert_eq!(purchase["properties"]["product_list"][1]["product_id"], "abc456");
        let (_, start) = body_of(&requests, Some("session_start"));
        for (k, v) in
            [("device_model", "Pixel 8"), ("device_type", "mobile"), ("app_version", "2.4.0"), ("sdk", "trackway")]
        {
            assert_eq!(start["properties"][k], v, "{start}");
        }
        assert!(start["properties"]["os_name"].is_string());
        let (_, end) = body_of(&requests, Some("session_end"));
        assert!(end["properties"]["duration"].is_number(), "{end}");
        assert_eq!(end["customer_ids"]["registered"], "jane.doe@example.com", "ids frozen at enqueue: after identify");
        let (_, payment) = body_of(&requests, Some("payment"));
        assert_eq!(
            (payment["properties"]["brutto"].as_f64(), payment["properties"]["item_id"].as_str()),
            (Some(12.34), Some("handbag"))
        );
        let (_, push) = body_of(&requests, Some("notification_state"));
        assert_eq!(push["properties"]["push_notification_token"], "push-token-1");
        assert!(push["properties"].get("tier").is_none(), "no default properties on push tokens");

        let (update_request, update) = body_of(&requests, None);
        assert_eq!(update_request.path, "/track/v2/projects/main-token/customers");
        assert!(update.get("event_type").is_none());
        assert!(update["timestamp"].is_f64());
        assert_eq!(update["customer_ids"]["registered"], "jane.doe@example.com");
        assert_eq!(update["properties"]["first_name"], "Jane");
        assert_eq!(update["properties"]["tier"], "gold");
        assert!(
            update["properties"].get("application_id").is_none() && update["properties"].get("device_id").is_none()
        );
        // One request per event in app mode.
        assert!(requests.iter().all(|r| !r.path.ends_with("/batch")));
        assert_eq!(collector.bloomreach_stored().len(), requests.len());
    });
}

#[test]
fn server_mode_batches_commands_with_basic_auth_and_command_ids() {
    watchdog(LIMIT, || {
        let collector = Collector::start().expect("collector");
        let project = Bloomreach::new("srv", Authorization::basic("key-id", "s3cret"))
            .base_url(collector.url("/"))
            .allow_default_customer_properties(false);
        let client =
            fast_builder().default_properties(props! { "env" => "prod" }).bloomreach(project).build().expect("client");
        let first = client.track("u1", "purchase", props! { "total" => 9.9 }).expect("track");
        client.identify("u1", props! { "plan" => "pro" }).expect("identify");
        client.capture(Track::new("visit").anonymous_id("visitor-7")).expect("anonymous");
        client.flush(FLUSH).expect("flush");

        let requests = bloomreach_requests(&collector);
        assert!(
            !requests.is_empty() && requests.iter().all(|r| r.path == "/track/v2/projects/srv/batch"),
            "{requests:?}"
        );
        assert_eq!(requests[0].header("authorization"), Some("Basic a2V5LWlkOnMzY3JldA=="));
        let commands: Vec<Value> = requests
            .iter()
            .flat_map(|r| r.json().and_then(|b| b["commands"].as_array().cloned()).unwrap_or_default())
            .collect();
        assert_eq!(commands.len(), 3);
        assert_eq!(commands[0]["name"], "customers/events");
        assert_eq!(commands[0]["command_id"], first.to_string());
        assert_eq!(commands[0]["data"]["customer_ids"], serde_json::json!({ "registered": "u1" }));
        assert!(commands[0]["data"]["timestamp"].is_f64());
        assert_eq!(commands[0]["data"]["properties"]["env"], "prod");
        assert_eq!(commands[1]["name"], "customers");
        assert!(commands[1]["data"]["properties"].get("env").is_none(), "defaults left out of customer updates");
        assert_eq!(commands[2]["data"]["customer_ids"], serde_json::json!({ "cookie": "visitor-7" }));
        assert!(format!("{client:?}").find("s3cret").is_none());
    });
}

#[test]
fn success_false_inside_a_200_is_dead_lettered_with_the_servers_errors() {
    watchdog(LIMIT, || {
        let collector = Collector::builder()
            .script([
                Reply::status(200).json(serde_json::json!({ "success": false, "errors": ["event_type too long"] }))
            ])
            .start()
            .expect("collector");
        let client = fast_builder().app_mode().bloomreach(main_project(&collector)).build().expect("client");
        client.capture(Track::new("rejected")).expect("track");
        client.capture(Track::new("accepted")).expect("track");
        client.flush(FLUSH).expect("flush");
        let dead = client.dead_letters(10).expect("dead letters");
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert!(dead[0].detail.contains("event_type too long"), "{}", dead[0].detail);
        let stats = client.stats();
        let s = stats.destination("bloomreach").expect("stats");
        assert_eq!((s.delivered, s.rejected), (1, 1));
    });
}

#[test]
fn a_failing_batch_command_is_dead_lettered_and_an_unanswered_one_retried_alone() {
    watchdog(LIMIT, || {
        let results = serde_json::json!({ "success": true, "results": [
            { "success": true }, { "success": false, "errors": ["bad command"] } ] });
        let collector = Collector::builder().script([Reply::status(200).json(results)]).start().expect("collector");
        let client =
            fast_builder().bloomreach(main_project(&collector).sending(Sending::Batch)).build().expect("client");
        client.pause_worker();
        for name in ["a", "b", "c"] {
            client.track("u1", name, props! {}).expect("track");
        }
        client.resume_worker();
        client.flush(FLUSH).expect("flush");
        let dead = client.dead_letters(10).expect("dead letters");
        assert_eq!(dead.len(), 1);
        assert!(dead[0].detail.contains("bad command"));
        let requests = bloomreach_requests(&collector);
        assert_eq!(requests.len(), 2, "the third command again, alone: {requests:?}");
        let second = requests[1].json().expect("json");
        assert_eq!(second["commands"].as_array().map(Vec::len), Some(1));
        assert_eq!(second["commands"][0]["data"]["event_type"], "c");
        let s = client.stats();
        assert_eq!(s.destination("bloomreach").map(|d| (d.delivered, d.rejected)), Some((2, 1)));
    });
}

fn stored_types(collector: &RunningCollector, project: &str) -> Vec<String> {
    collector
        .bloomreach_stored()
        .into_iter()
        .filter(|r| r.project == project)
        .map(|r| r.data["event_type"].as_str().unwrap_or("<customer>").to_owned())
        .collect()
}

#[test]
fn project_mapping_sends_a_payment_to_two_projects_and_a_screen_view_to_one() {
    watchdog(LIMIT, || {
        let collector = Collector::start().expect("collector");
        let payments = BloomreachProject::new("payments-token", Authorization::token("payments-key"));
        let client = fast_builder()
            .app_mode()
            .bloomreach(
                main_project(&collector).map(EventType::Payment, payments.clone()).map(EventType::Payment, payments),
            )
            .build()
            .expect("client");
        client.track_payment(Payment::new(1.0, "EUR")).expect("payment");
        client.capture(Screen::new("home")).expect("screen");
        let report = client.flush(FLUSH).expect("flush");
        assert_eq!(stored_types(&collector, "main-token"), ["payment", "screen_view"]);
        assert_eq!(stored_types(&collector, "payments-token"), ["payment"], "mapped twice, sent once");
        let mapped = report
            .destination("bloomreach:payments-token@127.0.0.1")
            .or_else(|| report.destinations.iter().find(|d| d.name.starts_with("bloomreach:payments-token")));
        assert_eq!(mapped.map(|d| d.delivered), Some(1));
        let auth = collector
            .requests()
            .into_iter()
            .find(|r| r.path.contains("payments-token"))
            .and_then(|r| r.header("authorization").map(str::to_owned));
        assert_eq!(auth.as_deref(), Some("Token payments-key"));
    });
}

#[test]
fn the_main_project_gets_everything_while_a_mapped_one_is_down_then_the_mapped_one_catches_up() {
    watchdog(LIMIT, || {
        let collector = Collector::start().expect("collector");
        let down = Collector::builder().reserve().expect("reserved port");
        let mapped = BloomreachProject::new("payments", Authorization::token("k")).base_url(down.url("/"));
        let client = fast_builder()
            .app_mode()
            .bloomreach(main_project(&collector).map(EventType::Payment, mapped))
            .build()
            .expect("client");
        for i in 0..5 {
            client.track_payment(Payment::new(f64::from(i), "EUR")).expect("payment");
        }
        let err = client.flush(Duration::from_millis(800)).expect_err("the mapped project is down");
        let FlushError::Timeout { pending, .. } = err else { panic!("{err}") };
        assert!(pending.iter().all(|(name, n)| name != "bloomreach" || *n == 0), "main is done: {pending:?}");
        assert!(pending.iter().any(|(name, n)| name.starts_with("bloomreach:payments") && *n == 5), "{pending:?}");
        assert_eq!(stored_types(&collector, "main-token").len(), 5);
        let up = down.start().expect("start the mapped project");
        client.flush(FLUSH).expect("flush once it is up");
        assert_eq!(stored_types(&up, "payments").len(), 5);
    });
}

#[test]
fn anonymize_with_a_project_switch_keeps_queued_events_on_the_old_project_after_a_restart_too() {
    watchdog(LIMIT, || {
        let collector = Collector::start().expect("collector");
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("outbox.db");
        let main = main_project(&collector);
        let runtime = || {
            BloomreachRuntime::new(&main).credentials(|token, _| match token {
                "new-project" => Some(Authorization::token("new-key")),
                "new-payments" => Some(Authorization::token("np-key")),
                _ => None,
            })
        };
        let build = |runtime: BloomreachRuntime| {
            fast_builder()
                .store(trackway::store::SqliteStore::new(&path))
                .app_mode()
                .bloomreach(main.clone())
                .runtime_destinations(KIND, runtime)
                .build()
                .expect("client")
        };
        let rt = runtime();
        let client = build(rt.clone());
        // Held back by an outage, so they are still queued when the project switches.
        collector.set_faults(Faults { fail_for_ms: Some(400), ..Faults::default() }).expect("faults");
        client.capture(Track::new("before_switch")).expect("track");
        client.track_payment(Payment::new(2.0, "EUR")).expect("payment");
        rt.anonymize(
            &client,
            ProjectChange::new()
                .project(BloomreachProject::new("new-project", Authorization::token("new-key")))
                .route(EventType::Payment, [BloomreachProject::new("new-payments", Authorization::token("np-key"))]),
        )
        .expect("switch");
        client.capture(Track::new("after_switch")).expect("track");
        client.track_payment(Payment::new(3.0, "EUR")).expect("payment");
        client.flush(FLUSH).expect("flush");
        assert_eq!(stored_types(&collector, "main-token"), ["before_switch", "payment"]);
        let new = stored_types(&collector, "new-project");
        assert_eq!(new, ["after_switch", "payment"]);
        assert_eq!(stored_types(&collector, "new-payments"), ["payment"]);
        client.shutdown(FLUSH).expect("shutdown");
        drop(client);

        // Restarted: the switch and the mapping come back from the store, the keys from the app.
        let client = build(runtime());
        client.capture(Track::new("after_restart")).expect("track");
        client.track_payment(Payment::new(4.0, "EUR")).expect("payment");
        client.flush(FLUSH).expect("flush");
        assert!(!stored_types(&collector, "main-token").contains(&"after_restart".to_owned()));
        assert!(stored_types(&collector, "new-project").contains(&"after_restart".to_owned()));
        assert_eq!(stored_types(&collector, "new-payments"), ["payment", "payment"]);
        let devices: std::collections::BTreeSet<String> = collector
            .bloomreach_stored()
            .iter()
            .filter_map(|r| r.data["properties"]["device_id"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(devices.len(), 1, "one device id per install, across anonymize and restarts: {devices:?}");
        let stored = std::fs::read(&path).expect("store file");
        assert!(!String::from_utf8_lossy(&stored).contains("np-key"), "authorization not written without the opt-in");
    });
}

#[test]
fn a_late_event_keeps_its_enqueue_time_and_a_given_time_is_sent_as_given() {
    watchdog(LIMIT, || {
        let collector = Collector::builder()
            .faults(Faults { fail_for_ms: Some(1500), ..Faults::default() })
            .start()
            .expect("collector");
        let client = fast_builder().app_mode().bloomreach(main_project(&collector)).build().expect("client");
        let before = Timestamp::now().unix_millis() as f64 / 1000.0;
        client.capture(Track::new("late")).expect("track");
        let after = Timestamp::now().unix_millis() as f64 / 1000.0;
        client.capture(Track::new("given").timestamp(Timestamp::from_unix_millis(1_718_000_000_123))).expect("track");
        client.flush(FLUSH).expect("flush");
        let rows = collector.bloomreach_stored();
        let ts = |t: &str| {
            rows.iter()
                .find(|r| r.data["event_type"] == t)
                .and_then(|r| r.data["timestamp"].as_f64())
                .expect("timestamp")
        };
        let late = ts("late");
        assert!(before <= late && late <= after, "{before} <= {late} <= {after}");
        let delivered_at = Timestamp::now().unix_millis() as f64 / 1000.0;
        assert!(delivered_at - late >= 1.0, "delivered over a second later");
        assert_eq!(ts("given"), 1_718_000_000.123);
    });
}

#[test]
fn gzip_answers_are_read() {
    watchdog(LIMIT, || {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(br#"{"success":false,"errors":["compressed"]}"#).expect("gzip");
        let body = gz.finish().expect("gzip");
        let collector = Collector::builder()
            .script([Reply::status(200)
                .header("content-type", "application/json")
                .header("content-encoding", "gzip")
                .body(body)])
            .start()
            .expect("collector");
        let client = fast_builder().app_mode().bloomreach(main_project(&collector)).build().expect("client");
        client.capture(Track::new("x")).expect("track");
        client.flush(FLUSH).expect("flush");
        let dead = client.dead_letters(1).expect("dead letters");
        assert!(dead.first().is_some_and(|d| d.detail.contains("compressed")), "{dead:?}");
    });
}

/// `body` compressed with `encoding` (`gzip` or `br`), as a server or a proxy in front of it may
/// answer.
fn compressed(encoding: &str, body: &[u8]) -> Vec<u8> {
    match encoding {
        "gzip" => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(body).expect("gzip");
            gz.finish().expect("gzip")
        }
        _ => {
            let mut out = Vec::new();
            {
                let mut br = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
                br.write_all(body).expect("brotli");
            }
            out
        }
    }
}

#[test]
fn compressed_batch_answers_are_decoded_and_classified_per_command() {
    watchdog(LIMIT, || {
        for encoding in ["br", "gzip"] {
            let results = serde_json::json!({ "success": true, "results": [
                { "success": true }, { "success": false, "errors": [format!("bad command ({encoding})")] } ] });
            let reply = Reply::status(200)
                .header("content-type", "application/json")
                .header("content-encoding", encoding)
                .body(compressed(encoding, results.to_string().as_bytes()));
            let collector = Collector::builder().script([reply]).start().expect("collector");
            let client =
                fast_builder().bloomreach(main_project(&collector).sending(Sending::Batch)).build().expect("client");
            client.pause_worker();
            for name in ["a", "b"] {
                client.track("u1", name, props! {}).expect("track");
            }
            client.resume_worker();
            client.flush(FLUSH).expect("flush");
            let requests = bloomreach_requests(&collector);
            assert_eq!(requests.len(), 1, "{encoding}: one batch, answered compressed: {requests:?}");
            assert_eq!(requests[0].json().expect("json")["commands"].as_array().map(Vec::len), Some(2));
            let accepted = requests[0].header("accept-encoding").unwrap_or_default();
            assert!(accepted.contains("gzip") && accepted.contains("br"), "the request offers both: {accepted:?}");
            // The answer was decoded: the second command's error is the dead letter's detail.
            let dead = client.dead_letters(10).expect("dead letters");
            assert_eq!(dead.len(), 1, "{encoding}: {dead:?}");
            assert!(dead[0].detail.contains(&format!("bad command ({encoding})")), "{encoding}: {dead:?}");
            let s = client.stats();
            assert_eq!(s.destination("bloomreach").map(|d| (d.delivered, d.rejected)), Some((1, 1)), "{encoding}");
        }
    });
}

#[test]
fn a_bad_project_token_or_key_is_an_error_at_build() {
    let build = |d: Bloomreach| Client::builder().store(trackway::store::MemoryStore::new()).bloomreach(d).build();
    let err = build(Bloomreach::new("not a token!", Authorization::token("k"))).expect_err("bad token");
    assert!(matches!(&err, BuildError::Destination { message, .. } if message.contains("project token")), "{err}");
    let err = build(Bloomreach::new("tok", Authorization::basic("id", ""))).expect_err("empty secret");
    assert!(err.to_string().contains("secret"), "{err}");
    let err = build(Bloomreach::new("tok", Authorization::token("k")).application_id("Bad App")).expect_err("app id");
    assert!(err.to_string().contains("application id"), "{err}");
}

#[test]
fn customer_update_limits_are_errors_at_the_call() {
    let collector = Collector::start().expect("collector");
    let client = fast_builder().app_mode().bloomreach(main_project(&collector)).build().expect("client");
    let err = client
        .identify_customer(Identify::new().id("registered", "a").property("bio", "x".repeat(20_000)))
        .expect_err("too big");
    assert!(err.to_string().contains("16000"), "{err}");
}

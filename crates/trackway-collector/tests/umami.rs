//! The collector's Umami backend on a real listener: `/api/send` and `/api/batch` as Umami v3.1
//! answers them, the v2 ≤ 2.15 legacy mode, and the precedence of faults, rules and the script.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{client, get_json, watchdog};
use trackway_collector::{Collector, Faults, Reply, Rule, UmamiMode};

const LIMIT: Duration = Duration::from_secs(20);
const SITE: &str = "b59e9c65-ae32-47f1-8400-119fcf4861c4";
const UA: &str = "Mozilla/5.0 (X11; Linux x86_64) myapp/1.2.3";

/// POSTs `body` with `ua`; the status, the content type and the body text.
fn post(url: &str, ua: &str, body: &Value) -> (u16, String, String) {
    let response = client()
        .post(url)
        .header("user-agent", ua)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .expect("request");
    let status = response.status().as_u16();
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    (status, content_type, response.text().expect("body"))
}

fn page_view() -> Value {
    json!({"type": "event", "payload": {"website": SITE, "hostname": "myapp.example", "language": "en-US",
        "screen": "1920x1080", "title": "Settings", "url": "/settings", "referrer": ""}})
}

#[test]
fn send_answers_a_token_and_refuses_what_zod_refuses() {
    watchdog(LIMIT, || {
        let collector = Collector::start().expect("collector");
        let (status, content_type, body) = post(&collector.url("/api/send"), UA, &page_view());
        assert_eq!((status, content_type.as_str()), (200, "application/json"));
        let body: Value = serde_json::from_str(&body).expect("json");
        assert!(body["cache"].as_str().is_some_and(|c| !c.is_empty()), "{body}");
        assert!(body["sessionId"].is_string() && body["visitId"].is_string(), "{body}");

        let null_name = json!({"type": "event", "payload": {"website": SITE, "name": null}});
        let (status, _, body) = post(&collector.url("/api/send"), UA, &null_name);
        assert_eq!(status, 400);
        let body: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(body["error"]["code"], "bad-request");
        assert!(body["error"]["properties"]["payload"]["properties"]["name"].is_object(), "{body}");

        let long = json!({"type": "event", "payload": {"website": SITE, "name": "😀".repeat(26)}});
        let (status, _, body) = post(&collector.url("/api/send"), UA, &long);
        assert_eq!(status, 400);
        assert!(body.contains("Too big: expected string to have <=50 characters"), "{body}");
        let ok = json!({"type": "event", "payload": {"website": SITE, "name": "😀".repeat(25)}});
        assert_eq!(post(&collector.url("/api/send"), UA, &ok).0, 200);

        let (status, _, body) = post(&collector.url("/api/send"), "curl/8.0.1", &page_view());
        assert_eq!((status, body.as_str()), (200, r#"{"beep":"boop"}"#));
    });
}

#[test]
fn batch_reports_failed_items_in_details_and_drops_bots_silently() {
    watchdog(LIMIT, || {
        let collector = Collector::start().expect("collector");
        let bad = json!({"type": "event", "payload": {"website": SITE, "tag": "t".repeat(51)}});
        let (status, _, body) = post(&collector.url("/api/batch"), UA, &json!([page_view(), bad, page_view()]));
        assert_eq!(status, 200);
        let body: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(
            (body["size"].clone(), body["processed"].clone(), body["errors"].clone()),
            (json!(3), json!(2), json!(1))
        );
        assert_eq!(body["details"][0]["index"], 1);
        assert_eq!(body["details"][0]["response"]["error"]["status"], 400);
        assert!(body["cache"].is_string());

        let (status, _, body) = post(&collector.url("/api/batch"), "reqwest/0.12", &json!([page_view()]));
        assert_eq!(status, 200);
        let body: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(
            (body["processed"].clone(), body["errors"].clone()),
            (json!(1), json!(0)),
            "bots count as processed"
        );
        assert!(body.get("cache").is_none());
    });
}

#[test]
fn legacy_mode_has_no_batch_and_answers_a_plain_text_token() {
    watchdog(LIMIT, || {
        let collector = Collector::builder().umami_mode(UmamiMode::V2_15).start().expect("collector");
        assert_eq!(post(&collector.url("/api/batch"), UA, &json!([page_view()])).0, 404);
        let (status, content_type, body) = post(&collector.url("/api/send"), UA, &page_view());
        assert_eq!((status, content_type.as_str()), (200, "text/plain"));
        assert!(!body.is_empty() && !body.starts_with('{'), "{body}");
    });
}

#[test]
fn faults_rules_and_the_script_come_before_the_backend() {
    watchdog(LIMIT, || {
        let collector = Collector::builder()
            .rule(Rule::path("/api/send", Reply::status(403)))
            .script([Reply::status(503)])
            .faults(Faults { fail_every: Some(3), ..Faults::default() })
            .start()
            .expect("collector");
        assert_eq!(post(&collector.url("/api/send"), UA, &page_view()).0, 403, "rule");
        assert_eq!(post(&collector.url("/api/batch"), UA, &json!([page_view()])).0, 503, "script");
        assert_eq!(post(&collector.url("/api/batch"), UA, &json!([page_view()])).0, 503, "fault (every 3rd)");
        assert_eq!(post(&collector.url("/api/batch"), UA, &json!([page_view()])).0, 200, "backend");
    });
}

#[test]
fn requests_carry_their_destination_label() {
    watchdog(LIMIT, || {
        let collector = Collector::start().expect("collector");
        post(&collector.url("/api/send"), UA, &page_view());
        post(&collector.url("/v1/events"), UA, &json!([{"type": "track", "name": "x"}]));
        let labels: Vec<String> = collector.requests().iter().map(|r| r.destination.clone()).collect();
        assert_eq!(labels, ["umami", "json"]);
        let requests = get_json(&collector.url("/_trackway/api/requests"));
        assert_eq!(requests[0]["destination"], "umami");
        assert_eq!(requests[1]["destination"], "json");
        let events = get_json(&collector.url("/_trackway/api/events?destination=umami"));
        assert_eq!(events.as_array().map(Vec::len), Some(1));
        assert_eq!(events[0]["event"]["type"], "pageview");
        assert_eq!(events[0]["event"]["url"], "/settings");
        assert_eq!(events[0]["event"]["title"], "Settings");
    });
}

#[test]
fn sink_mode_answers_as_umami_and_the_rest_as_before() {
    watchdog(LIMIT, || {
        let collector = Collector::builder().sink(true).start().expect("collector");
        let (status, content_type, body) = post(&collector.url("/api/send"), UA, &page_view());
        assert_eq!((status, content_type.as_str()), (200, "application/json"));
        let body: Value = serde_json::from_str(&body).expect("json");
        assert!(body["cache"].as_str().is_some_and(|c| !c.is_empty()), "{body}");
        assert!(body["sessionId"].is_string() && body["visitId"].is_string(), "{body}");

        // Every item processed, one answer per item (counted, not validated: a sink is cheap).
        let bad = json!({"type": "event", "payload": {"website": SITE, "tag": "t".repeat(51)}});
        let (status, _, body) = post(&collector.url("/api/batch"), UA, &json!([page_view(), bad, page_view()]));
        assert_eq!(status, 200);
        let body: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(
            (body["size"].clone(), body["processed"].clone(), body["errors"].clone(), body["details"].clone()),
            (json!(3), json!(3), json!(0), json!([]))
        );
        assert!(body["cache"].is_string(), "{body}");
        // What the server refuses before looking at items, the sink refuses too.
        assert_eq!(post(&collector.url("/api/batch"), UA, &json!({"not": "an array"})).0, 400);

        // Not Umami's: the default reply, as every path got in sink mode before.
        let (status, content_type, body) = post(&collector.url("/api/sendx"), UA, &page_view());
        assert_eq!((status, content_type.as_str(), body.as_str()), (200, "application/json", "{}"));
        let get = client().get(collector.url("/api/send")).send().expect("get");
        assert_eq!((get.status().as_u16(), get.text().expect("body").as_str()), (200, "{}"), "Umami takes POST only");

        assert!(collector.requests().is_empty(), "sink mode keeps no request");
        assert_eq!(collector.sink_stats().requests, 5);

        let legacy = Collector::builder().sink(true).umami_mode(UmamiMode::V2_15).start().expect("collector");
        assert_eq!(post(&legacy.url("/api/batch"), UA, &json!([page_view()])).0, 404);
        let (status, content_type, token) = post(&legacy.url("/api/send"), UA, &page_view());
        assert_eq!((status, content_type.as_str()), (200, "text/plain"));
        assert!(!token.is_empty() && !token.starts_with('{'), "{token}");
    });
}

//! Servers plugged into the collector through the `Backend` trait: the tests' own `Toy` (in
//! `support`) answers, labels and decodes its requests as the built-in backends do, comes before
//! them, and gives its own answer in sink mode.

mod support;

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use support::{Toy, client, get_json, watchdog};
use trackway_collector::{Backend, BackendRequest, Collector, DecodedEvent, Reply};

const LIMIT: Duration = Duration::from_secs(20);

/// Sends `body` with `method`; the status and the body parsed as JSON.
fn send(method: Method, url: &str, body: &str) -> (u16, Value) {
    let response = client().request(method, url).body(body.to_owned()).send().expect("request");
    let status = response.status().as_u16();
    let text = response.text().expect("body");
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}")))
}

const BATCH: &str = r#"{"commands":[{"name":"track","data":{"user":"u2","event":"buy"}},{"data":{}}]}"#;

#[test]
fn own_backend_answers_labels_and_decodes_its_requests() {
    watchdog(LIMIT, || {
        let collector = Collector::builder().backend(Toy).start().expect("collector");
        let customer = collector.url("/toy/customers/u1");
        assert_eq!(send(Method::PUT, &customer, r#"{"plan":"pro"}"#), (200, json!({"ok": true})));
        assert_eq!(send(Method::PUT, &customer, "[1]").0, 400, "the toy validates");
        // Claimed by method and path: a POST there is the JSON destination's.
        assert_eq!(send(Method::POST, &customer, "[]"), (200, json!({})));
        let (status, answer) = send(Method::POST, &collector.url("/toy/batch"), BATCH);
        assert_eq!((status, answer["results"].clone()), (200, json!([{"success": true}, {"success": false}])));

        let labels: Vec<String> = collector.requests().iter().map(|r| r.destination.clone()).collect();
        assert_eq!(labels, ["toy", "toy", "json", "toy"]);
        assert_eq!(
            collector.requests()[0].events(),
            [json!({"type": "identify", "user": "u1", "attributes": {"plan": "pro"}})]
        );

        let events = get_json(&collector.url("/_trackway/api/events?destination=toy&user=u2"));
        assert_eq!(events.as_array().map(Vec::len), Some(1), "{events}");
        assert_eq!(events[0]["event"], json!({"type": "track", "name": "buy", "user": "u2"}));
        assert_eq!(events[0]["destination"], json!("toy"));
    });
}

/// Takes Umami's `/api/send` for itself.
#[derive(Debug)]
struct Teapot;

impl Backend for Teapot {
    fn label(&self) -> &str {
        "teapot"
    }
    fn claims(&self, method: &str, path: &str) -> bool {
        method == "POST" && path == "/api/send"
    }
    fn answer(&self, _request: &BackendRequest<'_>) -> Option<Reply> {
        Some(Reply::status(418).json(json!({"short": "stout"})))
    }
    fn decode<'a>(&self, _request: &BackendRequest<'a>) -> Vec<DecodedEvent<'a>> {
        Vec::new()
    }
}

#[test]
fn own_backends_come_first_and_answer_in_sink_mode() {
    watchdog(LIMIT, || {
        let collector = Collector::builder().backend(Teapot).backend(Toy).sink(true).start().expect("collector");
        // The teapot's default sink answer is its answer; Umami keeps the paths it is not given.
        assert_eq!(send(Method::POST, &collector.url("/api/send"), "{}"), (418, json!({"short": "stout"})));
        let (status, umami) = send(Method::POST, &collector.url("/api/batch"), "[{}, {}]");
        assert_eq!((status, umami["processed"].clone()), (200, json!(2)));
        // The toy's cheap sink answer: every command succeeds, even the nameless one.
        let (status, answer) = send(Method::POST, &collector.url("/toy/batch"), BATCH);
        assert_eq!((status, answer["results"].clone()), (200, json!([{"success": true}, {"success": true}])));
        assert_eq!(send(Method::POST, &collector.url("/elsewhere"), "[]"), (200, json!({})));
        assert!(collector.requests().is_empty());
        assert_eq!(collector.request_count(), 4);
    });
}

#[test]
fn requests_read_back_from_the_store_are_claimed_again() {
    watchdog(LIMIT, || {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("collector.db");
        let first = Collector::builder().backend(Toy).store(&path).start().expect("collector");
        send(Method::PUT, &first.url("/toy/customers/u1"), r#"{"plan":"pro"}"#);
        first.shutdown();

        let again = Collector::builder().backend(Toy).store(&path).start().expect("collector");
        let requests = again.requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].destination, "toy");
        assert_eq!(requests[0].events()[0]["user"], json!("u1"));
        again.shutdown();
        // Without the toy, nothing claims it: it is the JSON destination's, shown as sent.
        let without = Collector::builder().store(&path).start().expect("collector");
        assert_eq!(without.requests()[0].destination, "json");
        assert_eq!(without.requests()[0].events(), [json!({"plan": "pro"})]);
    });
}

//! The live page's server side, without a browser: the page and its assets, the event stream
//! (replay, then live updates, credentials redacted, answers included) and the `destination`
//! and `answer` fields of the inspection API. (`trackway-cli/tests/browser.rs` loads the page in
//! headless Chromium.)

mod support;

use std::io::{BufRead, BufReader};
use std::time::Duration;

use serde_json::{Value, json};
use support::{Toy, client, watchdog};
use trackway_collector::{Collector, Reply};

/// Reads one server-sent event: (event name, parsed data). Comments (keep-alives) are skipped.
fn next_event(reader: &mut impl BufRead) -> (String, Value) {
    let (mut event, mut data) = (String::new(), String::new());
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).expect("read the stream") > 0, "the stream ended");
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            if !data.is_empty() {
                return (event, serde_json::from_str(&data).expect("data is JSON"));
            }
        } else if let Some(name) = line.strip_prefix("event: ") {
            event = name.to_owned();
        } else if let Some(text) = line.strip_prefix("data: ") {
            data.push_str(text);
        }
    }
}

#[test]
fn page_and_assets_are_served_and_post_to_root_is_still_recorded() {
    watchdog(Duration::from_secs(20), || {
        let collector = Collector::start().expect("start");
        let http = client();
        let page = http.get(collector.url("/")).send().expect("page");
        assert_eq!(page.status().as_u16(), 200);
        assert!(page.headers()["content-type"].to_str().expect("ascii").starts_with("text/html"));
        let html = page.text().expect("html");
        assert!(html.contains("/_trackway/live/app.js") && html.contains("/_trackway/live/style.css"));
        for (path, kind) in [("/_trackway/live/app.js", "text/javascript"), ("/_trackway/live/style.css", "text/css")] {
            let asset = http.get(collector.url(path)).send().expect("asset");
            assert_eq!(asset.status().as_u16(), 200, "{path}");
            assert!(asset.headers()["content-type"].to_str().expect("ascii").starts_with(kind), "{path}");
        }
        assert!(collector.requests().is_empty(), "the page is not a recorded request");
        let posted = http.post(collector.url("/")).body("[]").send().expect("post");
        assert_eq!(posted.status().as_u16(), 200);
        assert_eq!(collector.requests().len(), 1);
    });
}

#[test]
fn stream_replays_earlier_requests_then_follows_new_ones() {
    watchdog(Duration::from_secs(20), || {
        let collector = Collector::builder().script([Reply::status(503).retry_after("7")]).start().expect("start");
        let http = client();
        // Answered 503 by the script, then 200 by default.
        let first = r#"[{"type":"track","name":"before","identity":{"user_id":"u1"},"id":"m1"}]"#;
        http.post(collector.url("/events")).header("authorization", "Bearer s3cret").body(first).send().expect("post");
        let umami = r#"{"type":"event","payload":{"website":"6f1f5a55-3c5e-4f6b-9d0a-1d2c3b4a5e6f","hostname":"example.com","url":"/p","name":"umami_event","id":"u2"}}"#;
        let browser =
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36";
        http.post(collector.url("/api/send")).header("user-agent", browser).body(umami).send().expect("post");

        let stream = http.get(collector.url("/_trackway/live/stream")).send().expect("stream");
        assert!(stream.headers()["content-type"].to_str().expect("ascii").starts_with("text/event-stream"));
        let mut reader = BufReader::new(stream);
        let (event, hello) = next_event(&mut reader);
        assert_eq!(event, "hello");
        assert_eq!(hello["sink"], json!(false));
        assert_eq!(hello["faults"]["fail_status"], json!(503));

        let (event, replayed) = next_event(&mut reader);
        assert_eq!(event, "request");
        assert_eq!(replayed["seq"], json!(0));
        assert_eq!(replayed["destination"], json!("json"));
        assert_eq!(replayed["status"], json!(503));
        assert_eq!(replayed["answer"]["headers"], json!([["retry-after", "7"]]));
        assert_eq!(replayed["events"][0]["name"], json!("before"));
        assert_eq!(replayed["events"][0]["user"], json!("u1"));
        assert!(replayed["body"].as_str().expect("body").contains("\n  {\n    \"type\": \"track\""), "indented");
        let headers = replayed["headers"].as_array().expect("headers");
        assert!(headers.contains(&json!(["authorization", "<redacted>"])), "{headers:?}");
        assert!(!replayed.to_string().contains("s3cret"), "a credential reached the page");

        let (_, umami) = next_event(&mut reader);
        assert_eq!((umami["seq"].clone(), umami["destination"].clone()), (json!(1), json!("umami")));
        assert_eq!(umami["events"][0]["name"], json!("umami_event"));
        assert_eq!(umami["events"][0]["user"], json!("u2"));
        assert_eq!(umami["status"], json!(200), "{umami}");
        assert!(umami["answer"]["body"].as_str().expect("body").contains("\"cache\""), "{umami}");

        // Sent after the page connected: arrives on the same stream.
        http.post(collector.url("/events")).body("not json").send().expect("post");
        let (event, live) = next_event(&mut reader);
        assert_eq!(event, "request");
        assert_eq!(live["seq"], json!(2));
        assert_eq!(live["body"], json!("not json"));
        assert_eq!(live["body_json"], json!(false));
        assert_eq!(live["events"], json!([]));
    });
}

#[test]
fn inspection_api_has_destination_and_answer() {
    watchdog(Duration::from_secs(20), || {
        let collector = Collector::builder()
            .script([Reply::status(400).json(json!({"error": "bad"})).header("x-reason", "test")])
            .start()
            .expect("start");
        let http = client();
        http.post(collector.url("/api/batch")).body(r#"[{"type":"event","payload":{}}]"#).send().expect("post");
        http.post(collector.url("/v1/batch")).body("[]").send().expect("post");
        let requests: Value = serde_json::from_str(
            &http.get(collector.url("/_trackway/api/requests")).send().expect("requests").text().expect("text"),
        )
        .expect("json");
        assert_eq!(requests[0]["destination"], json!("umami"));
        assert_eq!(requests[0]["answer"]["status"], json!(400));
        assert_eq!(requests[0]["answer"]["body"], json!(r#"{"error":"bad"}"#));
        let headers = requests[0]["answer"]["headers"].as_array().expect("headers");
        assert!(headers.contains(&json!(["x-reason", "test"])), "{headers:?}");
        assert_eq!(requests[1]["destination"], json!("json"));
        assert_eq!(requests[1]["answer"]["body"], json!("{}"));

        let events: Value = serde_json::from_str(
            &http.get(collector.url("/_trackway/api/events")).send().expect("events").text().expect("text"),
        )
        .expect("json");
        assert_eq!(events[0]["destination"], json!("umami"));
    });
}

#[test]
fn stream_shows_a_plugged_in_backend_by_its_label_and_decoded_events() {
    watchdog(Duration::from_secs(20), || {
        let collector = Collector::builder().backend(Toy).start().expect("start");
        let http = client();
        http.put(collector.url("/toy/customers/u1")).body(r#"{"plan":"pro"}"#).send().expect("put");
        let stream = http.get(collector.url("/_trackway/live/stream")).send().expect("stream");
        let mut reader = BufReader::new(stream);
        assert_eq!(next_event(&mut reader).0, "hello");
        let (_, toy) = next_event(&mut reader);
        assert_eq!(
            (toy["destination"].clone(), toy["answer"]["body"].clone()),
            (json!("toy"), json!("{\n  \"ok\": true\n}"))
        );
        assert_eq!(
            (toy["events"][0]["type"].clone(), toy["events"][0]["user"].clone()),
            (json!("identify"), json!("u1"))
        );
        // Not one piece of the body: the page shows the decoded event.
        assert!(toy["events"][0]["json"].as_str().expect("json").contains("\"attributes\""), "{toy}");
    });
}

//! The collector's limits, checked by what it answers and counts (never by its RSS): bodies over
//! the size cap get 413, a body trickled too slowly gets 408, the bodies kept in memory stay
//! within their bound (the oldest evicted and counted), and the requests API pages and redacts.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{client, get_json, watchdog};
use trackway_collector::{Collector, RunningCollector};

const LIMIT: Duration = Duration::from_secs(30);

/// Writes `head` (and `body`) on a raw connection and reads the answer until the server closes
/// it or 10 s pass; the status line and the whole answer.
fn raw(collector: &RunningCollector, head: &str, body: &[u8]) -> (String, String) {
    let mut stream = TcpStream::connect(collector.addr()).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    stream.write_all(head.as_bytes()).expect("head");
    // The server may answer and close before the body is all written: that is the point.
    let _ = stream.write_all(body);
    read_answer(&mut stream)
}

/// Reads one answer: its head and as many body bytes as its `content-length` says (the server
/// may keep the connection open meanwhile, draining a refused body).
fn read_answer(stream: &mut TcpStream) -> (String, String) {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !complete(&answer) {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    (text.lines().next().unwrap_or_default().to_owned(), text)
}

fn complete(answer: &[u8]) -> bool {
    let text = String::from_utf8_lossy(answer);
    let Some(end) = text.find("\r\n\r\n") else { return false };
    let length = text[..end]
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    answer.len() >= end + 4 + length
}

#[test]
fn a_body_over_the_cap_is_answered_413_without_being_read() {
    watchdog(LIMIT, || {
        let collector = Collector::builder().max_body_bytes(1024).start().expect("start");
        // A declared 100 MB body, none of it sent: answered at once from the Content-Length.
        let (status, answer) =
            raw(&collector, "POST /events HTTP/1.1\r\nhost: x\r\ncontent-length: 100000000\r\n\r\n", b"");
        assert_eq!(status, "HTTP/1.1 413 Payload Too Large", "{answer}");
        assert!(answer.contains("over 1024 bytes"), "{answer}");
        assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");

        // Chunked, with no length to go by: refused once 1024 bytes have arrived.
        let chunk = format!("{:x}\r\n{}\r\n", 600, "a".repeat(600));
        let (status, _) = raw(
            &collector,
            "POST /events HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n",
            format!("{chunk}{chunk}{chunk}0\r\n\r\n").as_bytes(),
        );
        assert_eq!(status, "HTTP/1.1 413 Payload Too Large");

        // A real client sending 4 KiB reads the 413 (the rest of its body is drained, so it does
        // not see a reset), and a body at the cap goes through.
        let http = client();
        let big = http.post(collector.url("/events")).body(vec![b'x'; 4096]).send().expect("answered");
        assert_eq!(big.status().as_u16(), 413);
        let fits = http.post(collector.url("/events")).body(format!("[{}]", "1,".repeat(510) + "1")).send();
        assert_eq!(fits.expect("answered").status().as_u16(), 200);

        assert_eq!(collector.limit_stats().too_large, 3);
        let statuses: Vec<u16> = collector.requests().iter().map(|r| r.status).collect();
        assert_eq!(statuses, [413, 413, 413, 200], "refused requests are recorded, with no body");
        assert!(collector.requests()[..3].iter().all(|r| r.body.is_empty()));
        let stats = get_json(&collector.url("/_trackway/api/stats"));
        assert_eq!(stats["limits"]["too_large"], 3, "{stats}");
        assert_eq!(stats["statuses"]["413"], 3, "{stats}");
    });
}

#[test]
fn the_cap_applies_in_sink_mode_too() {
    watchdog(LIMIT, || {
        let collector = Collector::builder().sink(true).max_body_bytes(10).start().expect("start");
        let http = client();
        assert_eq!(http.post(collector.url("/events")).body("[1,2,3,4,5,6]").send().expect("post").status(), 413);
        assert_eq!(http.post(collector.url("/events")).body("[1]").send().expect("post").status(), 200);
        assert_eq!(collector.limit_stats().too_large, 1);
        assert_eq!(collector.sink_stats().requests, 2);
        assert_eq!(collector.sink_stats().events, 1, "the refused body was never read");
    });
}

#[test]
fn a_body_trickled_byte_by_byte_is_timed_out_with_408() {
    watchdog(LIMIT, || {
        let collector = Collector::builder().body_timeout(Duration::from_millis(300)).start().expect("start");
        let mut stream = TcpStream::connect(collector.addr()).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        stream.write_all(b"POST /events HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n").expect("head");
        let mut writer = stream.try_clone().expect("clone");
        let started = Instant::now();
        let trickle = thread::spawn(move || {
            // One byte every 50 ms: 50 s for the whole body, if nobody stopped it.
            for _ in 0..1000 {
                if writer.write_all(b"[").is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(50));
            }
        });
        let (status, answer) = read_answer(&mut stream);
        let took = started.elapsed();
        assert_eq!(status, "HTTP/1.1 408 Request Timeout", "{answer}");
        assert!(answer.contains("not complete within 300ms"), "{answer}");
        assert!(took < Duration::from_secs(5), "answered after {took:?}");
        drop(stream);
        trickle.join().expect("trickle thread");
        assert_eq!(collector.limit_stats().timed_out, 1);
        let requests = collector.requests();
        assert_eq!((requests.len(), requests[0].status), (1, 408));

        // A body that arrives in time is not affected.
        let ok = client().post(collector.url("/events")).body("[1]").send().expect("post");
        assert_eq!(ok.status().as_u16(), 200);
        assert_eq!(collector.limit_stats().timed_out, 1);
    });
}

#[test]
fn bodies_in_memory_stay_bounded_the_oldest_evicted_and_counted() {
    watchdog(LIMIT, || {
        // 1 000-byte bodies, answered `{}` (2 bytes): 10 fit in 10 200 bytes.
        let collector = Collector::builder().max_kept_bytes(10_200).start().expect("start");
        let http = client();
        let body = |i: usize| format!("[{}]", format!("{i:>3},").repeat(249) + "99");
        for i in 0..30 {
            assert_eq!(body(i).len(), 1000);
            assert_eq!(http.post(collector.url("/events")).body(body(i)).send().expect("post").status(), 200);
        }
        let limits = collector.limit_stats();
        assert_eq!((limits.kept_requests, limits.kept_bytes), (10, 10_020), "{limits:?}");
        assert_eq!((limits.evicted_requests, limits.evicted_bytes), (20, 20_040), "{limits:?}");
        let kept = collector.requests();
        assert_eq!(kept.iter().map(|r| r.seq).collect::<Vec<_>>(), (20..30).collect::<Vec<_>>());
        assert_eq!(kept[0].body_str(), body(20));
        // Counted in full everywhere else.
        assert_eq!(collector.request_count(), 30);
        assert_eq!(collector.sink_stats().events, 30 * 250);
        assert_eq!(collector.requests_since(25).len(), 5);
        assert_eq!(collector.requests_since(3).first().map(|r| r.seq), Some(20), "a reader behind skips ahead");

        let stats = get_json(&collector.url("/_trackway/api/stats"));
        assert_eq!(stats["limits"]["evicted_requests"], 20, "{stats}");
        assert_eq!(stats["limits"]["max_kept_bytes"], 10_200, "{stats}");
        assert_eq!(stats["requests"], 30);
    });
}

#[test]
fn the_requests_api_pages_with_a_cursor_and_redacts_credentials() {
    watchdog(LIMIT, || {
        let collector = Collector::builder().max_kept_bytes(5 * 5).start().expect("start");
        let http = client();
        for i in 0..8 {
            let sent = http
                .post(collector.url("/events"))
                .header("authorization", "Bearer api-s3cr3t")
                .header("x-api-key", "k-s3cr3t")
                .header("x-trace", "visible")
                .body(format!("[{i}]"))
                .send()
                .expect("post");
            assert_eq!(sent.status().as_u16(), 200);
        }
        // Each request holds 3 + 2 bytes: the last 5 are kept (seq 3 to 7).
        let page = |query: &str| {
            let response = http.get(collector.url(&format!("/_trackway/api/requests{query}"))).send().expect("get");
            assert_eq!(response.status().as_u16(), 200, "{query}");
            let header = |name: &str| response.headers().get(name).map(|v| v.to_str().expect("text").to_owned());
            let (next, evicted, link) =
                (header("x-trackway-next-cursor"), header("x-trackway-evicted"), header("link"));
            let items: Value = serde_json::from_str(&response.text().expect("text")).expect("JSON");
            let seqs: Vec<u64> =
                items.as_array().expect("array").iter().map(|r| r["seq"].as_u64().expect("seq")).collect();
            (seqs, next, evicted, link, items)
        };
        let (seqs, next, evicted, link, items) = page("?limit=2");
        assert_eq!(seqs, [3, 4], "the oldest kept first");
        assert_eq!((next.as_deref(), evicted.as_deref()), (Some("5"), Some("3")));
        assert_eq!(link.as_deref(), Some("</_trackway/api/requests?cursor=5&limit=2>; rel=\"next\""));
        let (seqs, next, ..) = page("?limit=2&cursor=5");
        assert_eq!((seqs, next.as_deref()), (vec![5, 6], Some("7")));
        let (seqs, next, ..) = page("?cursor=7&limit=2");
        assert_eq!((seqs, next), (vec![7], None));
        let (seqs, ..) = page("?cursor=99");
        assert!(seqs.is_empty());
        let (seqs, ..) = page("");
        assert_eq!(seqs, [3, 4, 5, 6, 7], "no query: the first page, up to 1000");

        let headers = items[0]["headers"].as_array().expect("headers");
        assert!(headers.contains(&serde_json::json!(["authorization", "<redacted>"])), "{headers:?}");
        assert!(headers.contains(&serde_json::json!(["x-api-key", "<redacted>"])), "{headers:?}");
        assert!(headers.contains(&serde_json::json!(["x-trace", "visible"])), "{headers:?}");
        assert!(!items.to_string().contains("s3cr3t"), "{items}");
        // In the process the collector keeps what was sent, for tests to check.
        assert_eq!(collector.requests()[0].header("x-api-key"), Some("k-s3cr3t"));

        for bad in ["?limit=0", "?limit=x", "?cursor=-1", "?after=2"] {
            let response = http.get(collector.url(&format!("/_trackway/api/requests{bad}"))).send().expect("get");
            assert_eq!(response.status().as_u16(), 400, "{bad}");
        }
    });
}

#[test]
fn zero_limits_are_refused_at_start() {
    let err = Collector::builder().max_body_bytes(0).start().expect_err("zero cap");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("max_body_bytes"), "{err}");
    let err = Collector::builder().body_timeout(Duration::ZERO).start().expect_err("zero timeout");
    assert!(err.to_string().contains("body_timeout"), "{err}");
}

//! Direct calls against the collector on loopback: typed answers, validation before I/O, never
//! retried once maybe sent, "nothing sent" retried and failed over, not stored, not in the event
//! lane's slots, and a current-thread runtime that keeps running while a call waits.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::{fast_builder, watchdog};
use trackway::destination::{Destination, DestinationState, Encoded, EventRecord, Request, Response};
use trackway::direct::{DirectCall, DirectError};
use trackway::{HttpOptions, Timestamp, props};
use trackway_collector::{Collector, Reply, Rule};

const LIMIT: Duration = Duration::from_secs(30);

/// A destination with events on `/v1/events` (one request at a time) and direct calls (on paths
/// of its own: the collector answers OpenCDP's real ones as OpenCDP, key required).
#[derive(Debug)]
struct Cdp {
    base: String,
}

impl Destination for Cdp {
    fn name(&self) -> &str {
        "cdp"
    }
    fn delivery(&self) -> trackway::destination::Delivery {
        trackway::destination::Delivery::Ordered
    }
    fn base_url(&self) -> Option<&str> {
        Some(&self.base)
    }
    fn encode(&self, events: &[EventRecord], _: &DestinationState, _: Timestamp) -> Encoded {
        let mut out = Encoded::default();
        let body: Vec<u8> = events.iter().flat_map(|e| e.json().to_vec()).collect();
        out.requests.push(Request::post(&format!("{}/v1/events", self.base), body, (0..events.len()).collect()));
        out
    }
}

/// `GET /direct/ping`.
struct Ping;

impl DirectCall<Cdp> for Ping {
    type Output = u16;
    fn request(&self, cdp: &Cdp) -> Result<Request, DirectError> {
        Ok(Request::get(&format!("{}/direct/ping", cdp.base)))
    }
    fn read(self, _: &Cdp, response: Response) -> Result<u16, DirectError> {
        DirectError::check_status(&response)?;
        Ok(response.status.as_u16())
    }
}

/// `POST /direct/email`, answered with a delivery id.
struct SendEmail {
    to: String,
}

impl DirectCall<Cdp> for SendEmail {
    type Output = String;
    fn request(&self, cdp: &Cdp) -> Result<Request, DirectError> {
        if self.to.trim().is_empty() {
            return Err(DirectError::Invalid("`to` cannot be empty".into()));
        }
        let body = serde_json::json!({ "to": self.to, "transactional_message_id": "welcome" }).to_string();
        Ok(Request::post(&format!("{}/direct/email", cdp.base), body, Vec::new()))
    }
    fn read(self, _: &Cdp, response: Response) -> Result<String, DirectError> {
        DirectError::check_status(&response)?;
        let answer: serde_json::Value =
            serde_json::from_slice(&response.body).map_err(|e| DirectError::Answer(e.to_string()))?;
        answer["delivery_id"].as_str().map(str::to_owned).ok_or_else(|| DirectError::Answer("no delivery_id".into()))
    }
}

fn email_collector() -> trackway_collector::RunningCollector {
    Collector::builder()
        .rule(Rule::path("/direct/email", Reply::status(200).json(serde_json::json!({ "delivery_id": "d-1" }))))
        .start()
        .expect("collector")
}

fn client_for(base: String, http: HttpOptions) -> trackway::Client {
    fast_builder().destination_with(Cdp { base }, http).build().expect("build")
}

#[test]
fn a_call_returns_the_servers_typed_answer_and_is_neither_queued_nor_stored() {
    watchdog(LIMIT, || {
        let collector = email_collector();
        let client = client_for(collector.url(""), HttpOptions::default());
        let cdp = client.direct::<Cdp>().expect("a Cdp destination");
        assert_eq!(cdp.call_blocking(Ping).expect("ping"), 200);
        assert_eq!(cdp.call_blocking(SendEmail { to: "a@example.com".into() }).expect("sent"), "d-1");
        let stats = client.stats();
        assert_eq!(stats.enqueued, 0, "not an event");
        assert_eq!(stats.destinations[0].direct.ok, 2);
        assert_eq!(stats.destinations[0].requests, 0, "the event lane sent nothing");
        let paths: Vec<String> = collector.requests().iter().map(|r| format!("{} {}", r.method, r.path)).collect();
        assert_eq!(paths, ["GET /direct/ping", "POST /direct/email"]);
        client.shutdown(Duration::from_secs(2)).expect("shutdown");
        assert_eq!(cdp.call_blocking(Ping), Err(DirectError::ShutDown));
    });
}

#[test]
fn a_call_the_destination_refuses_sends_nothing() {
    watchdog(LIMIT, || {
        let collector = email_collector();
        let client = client_for(collector.url(""), HttpOptions::default());
        let cdp = client.direct::<Cdp>().expect("handle");
        let err = cdp.call_blocking(SendEmail { to: " ".into() }).expect_err("invalid");
        assert_eq!(err, DirectError::Invalid("`to` cannot be empty".into()));
        assert_eq!(collector.request_count(), 0);
        assert_eq!(client.stats().destinations[0].direct.not_sent, 1);
    });
}

#[test]
fn a_call_that_may_have_been_sent_is_not_retried() {
    watchdog(LIMIT, || {
        // The connection is closed after the request was read: the email may have gone.
        let collector = Collector::builder().script([Reply::close_connection()]).start().expect("collector");
        let client = client_for(collector.url(""), HttpOptions::default());
        let cdp = client.direct::<Cdp>().expect("handle");
        let err = cdp.call_blocking(SendEmail { to: "a@example.com".into() }).expect_err("no answer");
        assert!(matches!(err, DirectError::MaybeSent(_)), "{err:?}");
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(collector.request_count(), 1, "sent once, never again");
        // Neither is a 5xx retried: the server saw the request.
        collector.push_reply(Reply::status(503).body("busy"));
        let err = cdp.call_blocking(SendEmail { to: "a@example.com".into() }).expect_err("503");
        assert_eq!(err, DirectError::Status { status: 503, body: "busy".into() });
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(collector.request_count(), 2);
        assert_eq!(client.stats().destinations[0].direct.failed, 2);
    });
}

/// A port with nothing listening on it.
fn refused_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

#[test]
fn a_call_that_sent_nothing_is_retried_twice_then_fails_as_not_sent() {
    watchdog(LIMIT, || {
        let client = client_for(format!("http://127.0.0.1:{}", refused_port()), HttpOptions::default());
        let cdp = client.direct::<Cdp>().expect("handle");
        let started = Instant::now();
        let err = cdp.call_blocking(Ping).expect_err("refused");
        assert!(
            matches!(&err, DirectError::NotSent(e) if e.message().starts_with("connection refused to 127.0.0.1:")),
            "{err:?}"
        );
        // Two pauses (100 ms, then 200 ms) before the two retries.
        assert!(started.elapsed() >= Duration::from_millis(300), "retried twice: {:?}", started.elapsed());
        assert_eq!(client.stats().destinations[0].direct.not_sent, 1);
    });
}

#[test]
fn a_call_fails_over_only_when_nothing_was_sent() {
    watchdog(LIMIT, || {
        let fallback = email_collector();
        let http = HttpOptions::default().fallback_base_urls([fallback.url("")]);
        let client = client_for(format!("http://127.0.0.1:{}", refused_port()), http.clone());
        let cdp = client.direct::<Cdp>().expect("handle");
        assert_eq!(cdp.call_blocking(SendEmail { to: "a@example.com".into() }).expect("via the fallback"), "d-1");
        assert_eq!(fallback.request_count(), 1);

        // A primary that answers 503 has seen the call: no failover (events would fail over).
        let primary = Collector::builder().default_reply(Reply::status(503)).start().expect("collector");
        let client = client_for(primary.url(""), http);
        let cdp = client.direct::<Cdp>().expect("handle");
        let err = cdp.call_blocking(SendEmail { to: "a@example.com".into() }).expect_err("503");
        assert!(matches!(err, DirectError::Status { status: 503, .. }), "{err:?}");
        assert_eq!(fallback.request_count(), 1, "not sent again elsewhere");
    });
}

#[test]
fn a_call_has_its_own_timeout() {
    watchdog(LIMIT, || {
        let collector =
            Collector::builder().default_reply(Reply::ok().delay(Duration::from_secs(5))).start().expect("collector");
        let client = client_for(collector.url(""), HttpOptions::default());
        let cdp = client.direct::<Cdp>().expect("handle").with_timeout(Duration::from_millis(200));
        let started = Instant::now();
        assert_eq!(cdp.call_blocking(Ping), Err(DirectError::TimedOut(Duration::from_millis(200))));
        assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
    });
}

#[test]
fn a_call_does_not_wait_for_the_event_lane() {
    watchdog(LIMIT, || {
        // Events take 3 s to be answered, one request at a time (an ordered destination).
        let collector = Collector::builder()
            .rule(Rule::path("/v1/events", Reply::ok().delay(Duration::from_secs(3))))
            .start()
            .expect("collector");
        let client = client_for(collector.url(""), HttpOptions::default());
        client.track("u1", "slow", props! {}).expect("track");
        assert!(support::wait_until(Duration::from_secs(5), || client.stats().destinations[0].requests == 1));
        let cdp = client.direct::<Cdp>().expect("handle");
        assert_eq!(cdp.call_blocking(Ping).expect("ping"), 200);
        assert_eq!(client.stats().destinations[0].delivered, 0, "answered while the event request is in flight");
    });
}

#[test]
fn an_async_call_never_blocks_a_current_thread_runtime() {
    watchdog(LIMIT, || {
        let collector = Collector::builder()
            .default_reply(Reply::ok().delay(Duration::from_millis(300)))
            .start()
            .expect("collector");
        let client = client_for(collector.url(""), HttpOptions::default());
        let cdp = client.direct::<Cdp>().expect("handle");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let ticks = Arc::new(AtomicU64::new(0));
        let answer = runtime.block_on(async {
            let counter = ticks.clone();
            let ticker = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            });
            let answer = cdp.call(Ping).await;
            ticker.abort();
            answer
        });
        assert_eq!(answer, Ok(200));
        let ticks = ticks.load(Ordering::Relaxed);
        assert!(ticks >= 10, "the runtime's timer ticked only {ticks} times while the call waited 300 ms");
    });
}

#[test]
fn a_handle_needs_a_destination_of_its_type() {
    let client = fast_builder()
        .destination(trackway::destination::JsonHttp::new("http://127.0.0.1:9/x"))
        .build()
        .expect("build");
    let err = client.direct::<Cdp>().expect_err("no Cdp");
    assert_eq!(err.to_string(), "the client has no destination of type `direct::Cdp`");
}

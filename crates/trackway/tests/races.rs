//! Two races in the worker, against the collector on 127.0.0.1: a purge (`erase_user`) while
//! the person's events are in an in-flight request (counts, deliveries, receipts), and a destination whose `encode` yields
//! several requests for one batch, which must still respect its `max_in_flight`.

mod support;

use std::time::Duration;

use support::{delivered_ids, fast_builder, json, wait_until, watchdog};
use trackway::destination::{BatchLimits, Delivery, Destination, DestinationState, Encoded, EventRecord, Request};
use trackway::receipts::{DropReason, Outcome, OutcomeStream, RecvError};
use trackway::{Timestamp, props};
use trackway_collector::{Collector, Reply};

const LIMIT: Duration = Duration::from_secs(120);

/// A client whose first request is answered `first` after 600 ms (the rest: 200 at once), with
/// three events of `alice` and one of `bob` in that first request, which is in flight on return.
fn in_flight(first: Reply) -> (trackway_collector::RunningCollector, trackway::Client) {
    let collector = Collector::builder().script([first.delay(Duration::from_millis(600))]).start().expect("collector");
    let client = fast_builder().destination(json("a", collector.url("/e"))).build().expect("client");
    client.pause_worker();
    for i in 0..3 {
        client.track("alice", "e", props! { "i" => i }).expect("track");
    }
    client.track("bob", "e", props! {}).expect("track");
    client.resume_worker();
    assert!(
        wait_until(Duration::from_secs(10), || client.stats().destination("a").is_some_and(|d| d.requests == 1)),
        "the request went out"
    );
    (collector, client)
}

#[test]
fn events_already_on_the_wire_when_a_user_is_erased_are_counted_and_their_delivery_recorded() {
    watchdog(LIMIT, || {
        let (collector, client) = in_flight(Reply::ok());
        let removed = client.erase_user("alice").expect("erase");
        assert_eq!(removed, 0, "nothing of alice's was waiting: all of it was on the wire");
        client.flush(Duration::from_secs(30)).expect("flush");
        let stats = client.stats();
        let a = stats.destination("a").expect("a");
        assert_eq!(stats.purge_in_flight, 3, "the purge says what it could not take back: {stats:?}");
        assert_eq!(stats.dropped.purged, 0, "{stats:?}");
        assert_eq!(a.delivered, 4, "the server took them: counted as delivered: {stats:?}");
        assert_eq!(a.pending, 0);
        assert_eq!(delivered_ids(&collector.requests()).len(), 4);
    });
}

#[test]
fn events_on_the_wire_when_a_user_is_erased_are_not_retried_after_a_failure() {
    watchdog(LIMIT, || {
        let (collector, client) = in_flight(Reply::status(503));
        assert_eq!(client.erase_user("alice").expect("erase"), 0);
        client.flush(Duration::from_secs(30)).expect("flush");
        let stats = client.stats();
        let a = stats.destination("a").expect("a");
        assert_eq!(stats.purge_in_flight, 3, "{stats:?}");
        assert_eq!(stats.dropped.purged, 3, "the failed ones are removed, not retried: {stats:?}");
        assert_eq!(a.delivered, 1, "bob's event is retried and delivered: {stats:?}");
        assert_eq!(a.pending, 0);
        let requests = collector.requests();
        let got = delivered_ids(&requests);
        assert_eq!(got.len(), 1, "only bob's event was sent again: {requests:?}");
        assert!(client.dead_letters(10).expect("dead letters").is_empty(), "nothing of alice's kept");
    });
}

/// As [`in_flight`], with alice's events tracked with receipts and an outcome stream open; then
/// alice is erased while they are on the wire. Returns the receipts and the stream.
fn erased_in_flight(
    first: Reply,
) -> (trackway_collector::RunningCollector, trackway::Client, Vec<trackway::receipts::Receipt>, OutcomeStream) {
    let collector = Collector::builder().script([first.delay(Duration::from_millis(600))]).start().expect("collector");
    let client = fast_builder().destination(json("a", collector.url("/e"))).build().expect("client");
    let stream = client.outcomes(64);
    client.pause_worker();
    let receipts: Vec<_> =
        (0..3).map(|i| client.track_confirmed("alice", "e", props! { "i" => i }).expect("track")).collect();
    client.track("bob", "e", props! {}).expect("track");
    client.resume_worker();
    assert!(
        wait_until(Duration::from_secs(10), || client.stats().destination("a").is_some_and(|d| d.requests == 1)),
        "the request went out"
    );
    assert_eq!(client.erase_user("alice").expect("erase"), 0, "all of alice's events were on the wire");
    (collector, client, receipts, stream)
}

/// Each receipt's outcome for `a`, and the stream's record for the same event, are `expected`.
fn resolved_as(receipts: &[trackway::receipts::Receipt], stream: &mut OutcomeStream, expected: &Outcome) {
    for receipt in receipts {
        let confirmation = receipt.wait(Duration::from_secs(20)).expect("receipt");
        assert_eq!(confirmation.destination("a").and_then(|d| d.outcome()), Some(expected), "{confirmation:?}");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let record = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            assert!(!left.is_zero(), "no stream record for {}", receipt.id());
            match stream.recv_timeout(left) {
                Ok(record) if record.id == receipt.id() => break record,
                Ok(_) | Err(RecvError::Missed(_) | RecvError::Empty) => {}
                Err(e) => panic!("stream: {e}"),
            }
        };
        assert_eq!(&record.outcome, expected, "{record:?}");
    }
}

#[test]
fn receipts_of_events_erased_on_the_wire_resolve_purged_after_a_failed_answer() {
    watchdog(LIMIT, || {
        let (_collector, client, receipts, mut stream) = erased_in_flight(Reply::status(503));
        resolved_as(&receipts, &mut stream, &Outcome::Dropped(DropReason::Purged));
        assert_eq!(client.stats().dropped.purged, 3);
    });
}

#[test]
fn receipts_of_events_erased_on_the_wire_resolve_delivered_after_a_2xx() {
    watchdog(LIMIT, || {
        let (_collector, client, receipts, mut stream) = erased_in_flight(Reply::ok());
        resolved_as(&receipts, &mut stream, &Outcome::Delivered);
        assert_eq!(client.stats().dropped.purged, 0);
    });
}

/// One POST per event (a JSON array of one), up to `max_in_flight` at once.
#[derive(Debug)]
struct OnePerEvent {
    url: String,
    max_in_flight: usize,
}

impl Destination for OnePerEvent {
    fn name(&self) -> &str {
        "one-per-event"
    }

    fn delivery(&self) -> Delivery {
        Delivery::Parallel { max_in_flight: self.max_in_flight }
    }

    fn batch_limits(&self) -> BatchLimits {
        BatchLimits::new(20, 1 << 20)
    }

    fn encode(&self, events: &[EventRecord], _: &DestinationState, _: Timestamp) -> Encoded {
        let mut out = Encoded::default();
        for (i, record) in events.iter().enumerate() {
            let mut body = bytes::BytesMut::from(&b"["[..]);
            record.write_json(&mut body);
            body.extend_from_slice(b"]");
            out.requests.push(Request::post(&self.url, body.freeze(), vec![i]));
        }
        out
    }
}

#[test]
fn a_batch_encoded_into_several_requests_keeps_within_max_in_flight() {
    watchdog(LIMIT, || {
        let collector = Collector::builder()
            .default_reply(Reply::ok().delay(Duration::from_millis(100)))
            .start()
            .expect("collector");
        let client = fast_builder()
            .destination(OnePerEvent { url: collector.url("/e"), max_in_flight: 2 })
            .build()
            .expect("client");
        client.pause_worker();
        for i in 0..20 {
            client.track("u", "e", props! { "i" => i }).expect("track");
        }
        client.resume_worker();
        client.flush(Duration::from_secs(60)).expect("flush");
        let stats = client.stats();
        assert_eq!(stats.destination("one-per-event").expect("dest").delivered, 20, "{stats:?}");
        assert_eq!(delivered_ids(&collector.requests()).len(), 20);
        let peak = collector.peak_concurrent_requests();
        assert!(peak <= 2, "{peak} requests were in flight at once; max_in_flight is 2");
        assert_eq!(peak, 2, "it did use its two");
    });
}

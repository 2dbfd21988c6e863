//! Two races in the worker, against the collector on 127.0.0.1: a purge (`erase_user`) while
//! the person's events are in an in-flight request, and a destination whose `encode` yields
//! several requests for one batch, which must still respect its `max_in_flight`.

mod support;

use std::time::Duration;

use support::{delivered_ids, fast_builder, json, wait_until, watchdog};
use trackway::destination::{BatchLimits, Delivery, Destination, DestinationState, Encoded, EventRecord, Request};
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

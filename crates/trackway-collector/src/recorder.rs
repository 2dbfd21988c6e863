//! What the collector remembers: the recorded requests, the counters, and the condition
//! variable that [`RunningCollector::wait_for_requests`](crate::RunningCollector::wait_for_requests)
//! blocks on.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;

use crate::backends::{Backend, BackendRequest, DecodedEvent};
use crate::sink::count_events;
use crate::util::lock;

/// One request as the collector received it, and what it answered.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// Its sequence number: 0 for the first request the collector counted (requests of earlier
    /// runs read back from `--store` included), one more for each next one, never reused. The
    /// cursor of [`RunningCollector::requests_since`](crate::RunningCollector::requests_since)
    /// and of `GET /_trackway/api/requests?cursor=`.
    pub seq: u64,
    /// The method, e.g. `POST`.
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    /// The query string (without `?`), if the request had one.
    pub query: Option<String>,
    /// The headers in the order received, names lower-case, values decoded lossily as UTF-8.
    pub headers: Vec<(String, String)>,
    /// The whole body (empty when it was refused unread: answered 413 because it was over
    /// [`CollectorBuilder::max_body_bytes`](crate::CollectorBuilder::max_body_bytes), or 408
    /// because it did not arrive within
    /// [`CollectorBuilder::body_timeout`](crate::CollectorBuilder::body_timeout)).
    pub body: Bytes,
    /// When the full request (head and body) had arrived.
    pub received_at: Instant,
    /// The status the collector answered, or 0 if it closed the connection instead.
    pub status: u16,
    /// The headers of the collector's answer (empty if it closed the connection).
    pub answer_headers: Vec<(String, String)>,
    /// The body of the collector's answer (empty if it closed the connection).
    pub answer_body: Bytes,
    /// The destination the request was for: the [`Backend::label`] of the backend that claimed
    /// it, e.g. `umami` for `POST /api/send` and `POST /api/batch`, `json` (trackway's own JSON
    /// destination) for what no backend claims.
    pub destination: String,
    /// The backend that claimed it, which decodes its events.
    pub(crate) backend: Arc<dyn Backend>,
}

impl RecordedRequest {
    /// The first value of the header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON, or `None` if it is not valid JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The events in the body as `/_trackway/api/events` shows them, decoded by the backend
    /// that claimed the request ([`Backend::decode`]): trackway's own events as sent, Umami
    /// items as `{type: pageview|event|identify, name, url, title, user, data, payload}`. Empty
    /// when the body is not JSON.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.decoded().into_iter().map(|decoded| decoded.event).collect()
    }

    /// The events in the body with their text as sent, for the live page and the store.
    pub(crate) fn decoded(&self) -> Vec<DecodedEvent<'_>> {
        let request = BackendRequest::new(&self.method, &self.path, &self.body)
            .with_query(self.query.as_deref())
            .with_headers(&self.headers);
        self.backend.decode(&request)
    }

    /// The body as text, with invalid UTF-8 replaced by U+FFFD.
    pub fn body_str(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }
}

/// Counters kept in both modes; in sink mode they are all the collector keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// Requests received (the inspection API under `/_trackway/` is not counted).
    pub requests: u64,
    /// Events in the bodies: an array's length, an object's `batch` (Customer.io) or `commands`
    /// (Bloomreach) array length, else 1.
    pub events: u64,
    /// Body bytes received.
    pub bytes: u64,
    /// Bodies that were not valid JSON (an empty body is not counted as an error).
    pub json_errors: u64,
}

/// Shared between the server thread (which writes) and the [`RunningCollector`] (which reads).
///
/// [`RunningCollector`]: crate::RunningCollector
#[derive(Debug)]
pub(crate) struct Recorder {
    /// The request count lives under the same lock as the requests, so a waiter woken for `n`
    /// requests always finds `n` of them in `requests()` (or counted as evicted).
    log: Mutex<Log>,
    /// Bytes of bodies (request and answer) kept in memory at most; the oldest requests are
    /// evicted beyond it.
    max_kept_bytes: usize,
    arrived: Condvar,
    /// The number of kept requests, for async watchers (the live page's stream): a watch
    /// rather than a broadcast of the requests, because a watcher that falls behind then
    /// reads what it missed from `log` instead of losing it.
    kept: watch::Sender<u64>,
    // These three are only read as a snapshot, so relaxed atomics are enough (and keep the sink
    // path down to one short lock per request).
    events: AtomicU64,
    bytes: AtomicU64,
    json_errors: AtomicU64,
}

#[derive(Debug, Default)]
struct Log {
    count: u64,
    /// The kept requests, oldest first, with consecutive sequence numbers.
    requests: VecDeque<RecordedRequest>,
    /// Body bytes (request and answer) of `requests`.
    kept_bytes: usize,
    /// What was evicted to stay within `max_kept_bytes`.
    evicted: Evicted,
    /// Events per request path (bounded by the number of distinct paths, kept in both modes).
    events_by_path: BTreeMap<String, u64>,
    /// Requests per answered status (0: connection closed without an answer).
    statuses: BTreeMap<u16, u64>,
}

/// The requests evicted from memory, counted per destination so the live page's counters
/// still include them.
#[derive(Clone, Debug, Default)]
pub(crate) struct Evicted {
    pub(crate) requests: u64,
    pub(crate) bytes: u64,
    pub(crate) by_destination: BTreeMap<String, DestinationCounter>,
}

/// What [`Recorder::requests_since`] found, read under one lock.
#[derive(Debug)]
pub(crate) struct Since {
    pub(crate) requests: Vec<RecordedRequest>,
    pub(crate) evicted: Evicted,
    /// The sequence number of the next request to be counted.
    pub(crate) next: u64,
}

/// Requests, events and requests per answered status of one destination (the live page's card).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct DestinationCounter {
    pub(crate) requests: u64,
    pub(crate) events: u64,
    /// Events the backend answered as duplicates (Customer.io's, by event id).
    pub(crate) duplicates: u64,
    pub(crate) statuses: BTreeMap<u16, u64>,
}

impl DestinationCounter {
    pub(crate) fn add(&mut self, status: u16, events: u64, duplicates: u64) {
        self.requests += 1;
        self.events += events;
        self.duplicates += duplicates;
        *self.statuses.entry(status).or_default() += 1;
    }
}

/// What the collector's memory bound did, for [`RunningCollector::limit_stats`](crate::RunningCollector::limit_stats).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LimitStats {
    /// Requests kept in memory now (what [`requests`](crate::RunningCollector::requests) returns).
    pub kept_requests: u64,
    /// Bytes of their bodies and answer bodies.
    pub kept_bytes: u64,
    /// Requests evicted, oldest first, to keep at most
    /// [`max_kept_bytes`](crate::CollectorBuilder::max_kept_bytes) (still counted everywhere
    /// else: [`SinkStats`], per path, per status).
    pub evicted_requests: u64,
    /// Bytes of bodies and answer bodies evicted.
    pub evicted_bytes: u64,
    /// Requests answered 413 because their body was over
    /// [`max_body_bytes`](crate::CollectorBuilder::max_body_bytes).
    pub too_large: u64,
    /// Requests answered 408 because their body did not arrive within
    /// [`body_timeout`](crate::CollectorBuilder::body_timeout).
    pub timed_out: u64,
}

/// Per-path event counts and per-status request counts, for `GET /_trackway/api/stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Breakdown {
    pub(crate) events_by_path: BTreeMap<String, u64>,
    pub(crate) statuses: BTreeMap<u16, u64>,
}

impl Default for Recorder {
    /// A recorder without a memory bound.
    fn default() -> Self {
        Recorder::new(usize::MAX)
    }
}

impl Recorder {
    /// A recorder keeping at most `max_kept_bytes` of bodies in memory.
    pub(crate) fn new(max_kept_bytes: usize) -> Self {
        Recorder {
            log: Mutex::default(),
            max_kept_bytes,
            arrived: Condvar::new(),
            kept: watch::Sender::new(0),
            events: AtomicU64::default(),
            bytes: AtomicU64::default(),
            json_errors: AtomicU64::default(),
        }
    }

    /// Counts one request to `path` with this body, answered `status` (0: closed), keeps
    /// `request` if given, and wakes the waiters.
    pub(crate) fn observe(&self, path: &str, status: u16, body: &[u8], request: Option<RecordedRequest>) {
        let events = count_events(body);
        match events {
            Some(n) => self.events.fetch_add(n, Ordering::Relaxed),
            None => self.json_errors.fetch_add(1, Ordering::Relaxed),
        };
        self.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
        {
            let mut log = lock(&self.log);
            log.count += 1;
            let events = events.unwrap_or(0);
            // Look up before inserting so the common case (a known path) allocates nothing.
            match log.events_by_path.get_mut(path) {
                Some(n) => *n += events,
                None => {
                    log.events_by_path.insert(path.to_owned(), events);
                }
            }
            *log.statuses.entry(status).or_insert(0) += 1;
            let seq = log.count - 1;
            if let Some(mut request) = request {
                request.seq = seq;
                log.kept_bytes += kept_size(&request);
                log.requests.push_back(request);
                self.evict(&mut log);
                // Under the lock, so watchers see the counts in the order the requests arrived.
                self.kept.send_replace(log.count);
            }
        }
        self.arrived.notify_all();
    }

    /// Drops the oldest requests until the kept bodies fit `max_kept_bytes` (the newest too, if
    /// it alone is over: the bound is never exceeded), counting what goes.
    fn evict(&self, log: &mut Log) {
        while log.kept_bytes > self.max_kept_bytes {
            let Some(oldest) = log.requests.pop_front() else { break };
            let size = kept_size(&oldest);
            log.kept_bytes -= size;
            log.evicted.requests += 1;
            log.evicted.bytes += size as u64;
            // The cheap count the stats use: decoding every evicted body would cost more.
            let events = count_events(&oldest.body).unwrap_or(0);
            log.evicted.by_destination.entry(crate::live::card_of(&oldest.destination, &oldest.path)).or_default().add(
                oldest.status,
                events,
                crate::live::duplicates(&oldest),
            );
        }
    }

    /// The kept requests with a sequence number of `from` or more, oldest first, with what was
    /// evicted so far and the sequence number the next request will get. A reader that finds
    /// the first one past `from` missed the ones between (evicted before it read them).
    pub(crate) fn requests_since(&self, from: u64) -> Since {
        let log = lock(&self.log);
        let start = log.requests.partition_point(|r| r.seq < from);
        Since {
            requests: log.requests.range(start..).cloned().collect(),
            evicted: log.evicted.clone(),
            next: log.count,
        }
    }

    /// At most `limit` kept requests from sequence number `from` on, stopping early once their
    /// bodies pass `max_bytes` (the first one is always included), and the sequence number
    /// of the next kept request if there is one after the page.
    pub(crate) fn page(&self, from: u64, limit: usize, max_bytes: usize) -> (Vec<RecordedRequest>, Option<u64>) {
        let log = lock(&self.log);
        let start = log.requests.partition_point(|r| r.seq < from);
        let mut page = Vec::new();
        let mut bytes = 0usize;
        let mut rest = log.requests.range(start..);
        for request in rest.by_ref() {
            if page.len() >= limit || (!page.is_empty() && bytes + kept_size(request) > max_bytes) {
                return (page, Some(request.seq));
            }
            bytes += kept_size(request);
            page.push(request.clone());
        }
        (page, None)
    }

    /// A receiver woken whenever a request is kept; its value is the number of requests counted.
    pub(crate) fn watch_kept(&self) -> watch::Receiver<u64> {
        self.kept.subscribe()
    }

    pub(crate) fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.log).requests.iter().cloned().collect()
    }

    /// The memory bound's counters; `too_large` and `timed_out` are the server's, passed in.
    pub(crate) fn limit_stats(&self, too_large: u64, timed_out: u64) -> LimitStats {
        let log = lock(&self.log);
        LimitStats {
            kept_requests: log.requests.len() as u64,
            kept_bytes: log.kept_bytes as u64,
            evicted_requests: log.evicted.requests,
            evicted_bytes: log.evicted.bytes,
            too_large,
            timed_out,
        }
    }

    pub(crate) fn breakdown(&self) -> Breakdown {
        let log = lock(&self.log);
        Breakdown { events_by_path: log.events_by_path.clone(), statuses: log.statuses.clone() }
    }

    pub(crate) fn count(&self) -> u64 {
        lock(&self.log).count
    }

    pub(crate) fn stats(&self) -> SinkStats {
        SinkStats {
            requests: self.count(),
            events: self.events.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            json_errors: self.json_errors.load(Ordering::Relaxed),
        }
    }

    /// Blocks until at least `n` requests were counted, or `timeout` passed; true in the former.
    pub(crate) fn wait_for(&self, n: u64, timeout: Duration) -> bool {
        let log = lock(&self.log);
        let (log, _) =
            self.arrived.wait_timeout_while(log, timeout, |log| log.count < n).unwrap_or_else(|e| e.into_inner());
        log.count >= n
    }
}

/// The bytes a kept request holds that count against the memory bound: its body and the body
/// of the answer (headers and the rest are small and bounded by the HTTP parser).
fn kept_size(request: &RecordedRequest) -> usize {
    request.body.len() + request.answer_body.len()
}

/// A recorded `POST` to `path` with this body, answered 200 `{}`, labelled and decoded by the
/// backend a default collector picks for it; for the unit tests of the modules reading requests.
#[cfg(test)]
pub(crate) fn test_request(path: &str, body: &'static [u8]) -> RecordedRequest {
    let backend = Arc::clone(crate::backends::Backends::default().find("POST", path));
    RecordedRequest {
        seq: 0,
        method: "POST".into(),
        path: path.into(),
        query: None,
        headers: Vec::new(),
        body: Bytes::from_static(body),
        received_at: Instant::now(),
        status: 200,
        answer_headers: vec![("content-type".into(), "application/json".into())],
        answer_body: Bytes::from_static(b"{}"),
        destination: backend.label().to_owned(),
        backend,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observe_counts_and_keeps() {
        let recorder = Recorder::default();
        recorder.observe("/a", 200, b"[1,2,3]", None);
        recorder.observe("/b", 0, b"nope", None);
        recorder.observe("/a", 503, b"[1]", None);
        assert_eq!(recorder.stats(), SinkStats { requests: 3, events: 4, bytes: 14, json_errors: 1 });
        let breakdown = recorder.breakdown();
        assert_eq!(breakdown.events_by_path, BTreeMap::from([("/a".to_owned(), 4), ("/b".to_owned(), 0)]));
        assert_eq!(breakdown.statuses, BTreeMap::from([(0, 1), (200, 1), (503, 1)]));
        assert!(recorder.requests().is_empty());
        assert!(recorder.wait_for(3, Duration::ZERO));
        assert!(!recorder.wait_for(4, Duration::from_millis(10)));
    }

    #[test]
    fn the_oldest_requests_are_evicted_beyond_the_bound_and_counted() {
        // Each request holds 10 body bytes and 2 answer bytes (`{}`).
        let recorder = Recorder::new(40);
        for i in 0..10u8 {
            let body: &'static [u8] = if i % 2 == 0 { b"[1,2,3,4,5]" } else { b"[1,2,3,4,]" };
            let request = RecordedRequest { status: 200 + u16::from(i), ..test_request("/events", body) };
            recorder.observe("/events", request.status, &request.body.clone(), Some(request));
        }
        let kept = recorder.requests();
        assert_eq!(kept.iter().map(|r| r.seq).collect::<Vec<_>>(), [7, 8, 9], "newest first kept, by seq");
        let stats = recorder.limit_stats(0, 0);
        assert_eq!((stats.kept_requests, stats.evicted_requests), (3, 7));
        assert!(stats.kept_bytes <= 40, "{stats:?}");
        assert_eq!(stats.kept_bytes + stats.evicted_bytes, 10 * 2 + 11 * 5 + 10 * 5);
        assert_eq!(recorder.stats().requests, 10, "evicted requests are still counted");
        let since = recorder.requests_since(2);
        assert_eq!(since.requests.first().map(|r| r.seq), Some(7), "a reader behind the eviction skips ahead");
        assert_eq!(since.next, 10);
        let counter = &since.evicted.by_destination["json"];
        assert_eq!((counter.requests, counter.events), (7, 5 * 4), "invalid JSON bodies count no event");
        assert_eq!(counter.statuses.len(), 7);

        let (page, next) = recorder.page(0, 2, usize::MAX);
        assert_eq!((page.iter().map(|r| r.seq).collect::<Vec<_>>(), next), (vec![7, 8], Some(9)));
        let (page, next) = recorder.page(9, 2, usize::MAX);
        assert_eq!((page.len(), next), (1, None));
        let (page, next) = recorder.page(0, 10, 1);
        assert_eq!((page.len(), next), (1, Some(8)), "the byte budget ends a page, after one request at least");
    }

    #[test]
    fn a_request_alone_over_the_bound_is_not_kept() {
        let recorder = Recorder::new(4);
        let request = test_request("/events", b"[1,2,3]");
        recorder.observe("/events", 200, b"[1,2,3]", Some(request));
        assert!(recorder.requests().is_empty());
        assert_eq!(recorder.limit_stats(0, 0).evicted_requests, 1);
        assert_eq!(recorder.stats().events, 3);
    }

    #[test]
    fn header_lookup_is_case_insensitive() {
        let request = RecordedRequest {
            headers: vec![("content-type".into(), "application/json".into())],
            ..test_request("/", b"{\"a\":1}")
        };
        assert_eq!(request.header("Content-Type"), Some("application/json"));
        assert_eq!(request.header("x"), None);
        assert_eq!(request.json(), Some(serde_json::json!({"a": 1})));
        assert_eq!(request.body_str(), "{\"a\":1}");
    }
}

//! What the collector remembers: the recorded requests, the counters, and the condition
//! variable that [`RunningCollector::wait_for_requests`](crate::RunningCollector::wait_for_requests)
//! blocks on.

use std::borrow::Cow;
use std::collections::BTreeMap;
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
    /// The method, e.g. `POST`.
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    /// The query string (without `?`), if the request had one.
    pub query: Option<String>,
    /// The headers in the order received, names lower-case, values decoded lossily as UTF-8.
    pub headers: Vec<(String, String)>,
    /// The whole body.
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
    /// Events in the bodies: an array's length, an object's `batch` array length, else 1.
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
    /// requests always finds `n` of them in `requests()`.
    log: Mutex<Log>,
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
    requests: Vec<RecordedRequest>,
    /// Events per request path (bounded by the number of distinct paths, kept in both modes).
    events_by_path: BTreeMap<String, u64>,
    /// Requests per answered status (0: connection closed without an answer).
    statuses: BTreeMap<u16, u64>,
}

/// Per-path event counts and per-status request counts, for `GET /_trackway/api/stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Breakdown {
    pub(crate) events_by_path: BTreeMap<String, u64>,
    pub(crate) statuses: BTreeMap<u16, u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            log: Mutex::default(),
            arrived: Condvar::new(),
            kept: watch::Sender::new(0),
            events: AtomicU64::default(),
            bytes: AtomicU64::default(),
            json_errors: AtomicU64::default(),
        }
    }
}

impl Recorder {
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
            if let Some(request) = request {
                log.requests.push(request);
                // Under the lock, so watchers see the counts in the order the requests arrived.
                self.kept.send_replace(log.requests.len() as u64);
            }
        }
        self.arrived.notify_all();
    }

    /// The kept requests from index `from` on (a request's index is its sequence number).
    pub(crate) fn requests_since(&self, from: usize) -> Vec<RecordedRequest> {
        lock(&self.log).requests.get(from..).map(<[_]>::to_vec).unwrap_or_default()
    }

    /// A receiver woken whenever a request is kept; its value is the number of kept requests.
    pub(crate) fn watch_kept(&self) -> watch::Receiver<u64> {
        self.kept.subscribe()
    }

    pub(crate) fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.log).requests.clone()
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

/// A recorded `POST` to `path` with this body, answered 200 `{}`, labelled and decoded by the
/// backend a default collector picks for it; for the unit tests of the modules reading requests.
#[cfg(test)]
pub(crate) fn test_request(path: &str, body: &'static [u8]) -> RecordedRequest {
    let backend = Arc::clone(crate::backends::Backends::default().find("POST", path));
    RecordedRequest {
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

//! The real servers the collector imitates: the [`Backend`] trait, one module per server, and
//! the registry that picks the backend of each request.
//!
//! A backend claims its server's requests (by method and path), answers them as that server
//! would (validation, status codes, bodies, tokens), gives a cheap success answer in sink mode,
//! decodes their bodies into events for the inspection API, the live page and the `--store`
//! file, and names the destination they were for. Faults, rules and the script still come
//! first: a backend only replaces the *default* answer. Requests no backend claims are
//! trackway's own JSON destination ([`json`], label `json`).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::reply::Reply;

pub(crate) mod bloomreach;
pub(crate) mod customerio;
pub(crate) mod json;
pub(crate) mod opencdp;
pub(crate) mod umami;

pub use bloomreach::{BloomreachConfig, BloomreachRow};
pub use umami::{UmamiMode, UmamiRow};

/// A server the collector imitates on its own paths, e.g. Umami's `POST /api/send`.
///
/// The collector asks its backends in order (those added with
/// [`CollectorBuilder::backend`](crate::CollectorBuilder::backend) first, then Umami) which one
/// [`claims`](Self::claims) a request, once per request; trackway's JSON destination takes the
/// rest. That backend then answers the request (unless a fault, a rule or the script answered
/// it first), and labels and decodes it for the inspection API, the live page and the store.
///
/// Implementations are shared by the server's connections, so answering takes `&self`; keep
/// any state (issued tokens, say) behind atomics or a mutex.
///
/// ```
/// use trackway_collector::{Backend, BackendRequest, Collector, DecodedEvent, Reply};
///
/// /// A server whose `POST /ingest` takes a JSON array and answers how many it took.
/// #[derive(Debug)]
/// struct Ingest;
///
/// impl Backend for Ingest {
///     fn label(&self) -> &str {
///         "ingest"
///     }
///     fn claims(&self, method: &str, path: &str) -> bool {
///         method == "POST" && path == "/ingest"
///     }
///     fn answer(&self, request: &BackendRequest<'_>) -> Option<Reply> {
///         Some(match serde_json::from_slice::<Vec<serde_json::Value>>(request.body()) {
///             Ok(items) => Reply::status(200).json(serde_json::json!({ "accepted": items.len() })),
///             Err(e) => Reply::status(400).json(serde_json::json!({ "error": e.to_string() })),
///         })
///     }
///     fn decode<'a>(&self, request: &BackendRequest<'a>) -> Vec<DecodedEvent<'a>> {
///         let items: Vec<&serde_json::value::RawValue> =
///             serde_json::from_slice(request.body()).unwrap_or_default();
///         items
///             .into_iter()
///             .filter_map(|raw| Some(DecodedEvent::new(serde_json::from_str(raw.get()).ok()?, Some(raw.get()))))
///             .collect()
///     }
/// }
///
/// let collector = Collector::builder().backend(Ingest).start()?;
/// let http = reqwest::blocking::Client::builder().no_proxy().build().expect("client");
/// let answer = http.post(collector.url("/ingest")).body(r#"[{"name":"a"}]"#).send().expect("send");
/// assert_eq!(answer.text().expect("body"), r#"{"accepted":1}"#);
/// assert_eq!(collector.requests()[0].destination, "ingest");
/// assert_eq!(collector.requests()[0].events()[0]["name"], "a");
/// # Ok::<(), std::io::Error>(())
/// ```
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// A short, stable name for the destination this server is: the `destination` of its
    /// requests and events in [`RecordedRequest`](crate::RecordedRequest), the inspection API
    /// and the live page (e.g. `umami`).
    fn label(&self) -> &str;

    /// Whether a `method` request to `path` (without the query string) is for this server.
    /// Asked for every request, in sink mode too: keep it to a few comparisons.
    fn claims(&self, method: &str, path: &str) -> bool;

    /// The server's answer to a request it claims, when no fault, rule or script entry answered
    /// it. `None` answers the collector's default reply
    /// ([`CollectorBuilder::default_reply`](crate::CollectorBuilder::default_reply)).
    fn answer(&self, request: &BackendRequest<'_>) -> Option<Reply>;

    /// The answer in sink mode (see [`CollectorBuilder::sink`](crate::CollectorBuilder::sink)),
    /// when no fault answered. It should be the server's *success* answer, in the form a client
    /// reads (a per-item answer needs as many items as the request had), found cheaply: sink
    /// mode is what benchmarks measure against, so count the items rather than validate them.
    /// Default: [`answer`](Self::answer); override it when that validates or keeps state.
    fn sink_answer(&self, request: &BackendRequest<'_>) -> Option<Reply> {
        self.answer(request)
    }

    /// The events in a request this backend claimed, in the order sent; empty when the body
    /// holds none (or is not what the server takes).
    ///
    /// The inspection API filters decoded events on their `type`, `name` and `user` fields (and
    /// on trackway's `identity`), and the live page summarizes them by the same fields plus
    /// `url` and `id`: a backend whose wire format names them otherwise puts them there (as
    /// Umami's does: `{type: pageview|event|identify, name, url, title, user, data, payload}`).
    fn decode<'a>(&self, request: &BackendRequest<'a>) -> Vec<DecodedEvent<'a>>;
}

/// One request as a [`Backend`] sees it: method, path, query, headers and the whole body.
#[derive(Clone, Copy, Debug)]
pub struct BackendRequest<'a> {
    method: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    headers: Headers<'a>,
    body: &'a [u8],
}

/// The headers as the server received them, or as a [`RecordedRequest`](crate::RecordedRequest)
/// keeps them: borrowed either way, so neither the server nor a decoder copies them.
#[derive(Clone, Copy, Debug)]
enum Headers<'a> {
    Map(&'a HeaderMap),
    Pairs(&'a [(String, String)]),
}

impl<'a> BackendRequest<'a> {
    /// A request with this method, path and body, no query and no headers; for testing a
    /// backend without a collector.
    pub fn new(method: &'a str, path: &'a str, body: &'a [u8]) -> Self {
        BackendRequest { method, path, query: None, headers: Headers::Pairs(&[]), body }
    }

    /// The same request with this query string (without `?`).
    pub fn with_query(mut self, query: Option<&'a str>) -> Self {
        self.query = query;
        self
    }

    /// The same request with these headers (`(name, value)` pairs, as
    /// [`RecordedRequest::headers`](crate::RecordedRequest::headers)).
    pub fn with_headers(mut self, headers: &'a [(String, String)]) -> Self {
        self.headers = Headers::Pairs(headers);
        self
    }

    /// A request as the server received it.
    pub(crate) fn from_http(
        method: &'a http::Method,
        path: &'a str,
        query: Option<&'a str>,
        headers: &'a HeaderMap,
        body: &'a [u8],
    ) -> Self {
        BackendRequest { method: method.as_str(), path, query, headers: Headers::Map(headers), body }
    }

    /// The method, e.g. `POST`.
    pub fn method(&self) -> &'a str {
        self.method
    }

    /// The path, without the query string.
    pub fn path(&self) -> &'a str {
        self.path
    }

    /// The query string (without `?`), if any.
    pub fn query(&self) -> Option<&'a str> {
        self.query
    }

    /// The first value of the header `name` (case-insensitive), if it is there and is text.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        match self.headers {
            Headers::Map(map) => map.get(name).and_then(|v| v.to_str().ok()),
            Headers::Pairs(pairs) => pairs.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()),
        }
    }

    /// All the headers as a map: borrowed from the server's request, built for a recorded one
    /// (skipping any pair that is not a valid header).
    pub fn headers(&self) -> Cow<'a, HeaderMap> {
        match self.headers {
            Headers::Map(map) => Cow::Borrowed(map),
            Headers::Pairs(pairs) => Cow::Owned(
                pairs
                    .iter()
                    .filter_map(|(n, v)| Some((HeaderName::try_from(n).ok()?, HeaderValue::try_from(v).ok()?)))
                    .collect(),
            ),
        }
    }

    /// The whole body.
    pub fn body(&self) -> &'a [u8] {
        self.body
    }
}

/// One event a [`Backend`] found in a request.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct DecodedEvent<'a> {
    /// The event as `/_trackway/api/events`, [`RecordedRequest::events`](crate::RecordedRequest::events)
    /// and the `--store` file show it.
    pub event: Value,
    /// The event's own JSON text in the body, keys in the order sent: what the live page shows
    /// when the event is opened. `None` when the event is not one piece of the body (the page
    /// then shows `event`).
    pub raw: Option<&'a str>,
}

impl<'a> DecodedEvent<'a> {
    /// An event shown as `event`, sent as `raw`.
    pub fn new(event: Value, raw: Option<&'a str>) -> Self {
        DecodedEvent { event, raw }
    }
}

/// The backends of one collector, in the order they are asked, and the JSON destination that
/// takes what none of them claims.
#[derive(Clone, Debug)]
pub(crate) struct Backends {
    claiming: Vec<Arc<dyn Backend>>,
    rest: Arc<dyn Backend>,
    /// The built-in Umami server (also in `claiming`), for what it stored.
    pub(crate) umami: Arc<umami::UmamiServer>,
    /// The built-in Customer.io Track API (also in `claiming`), for its counters.
    pub(crate) customerio: Arc<customerio::CustomerIoServer>,
    /// The built-in Bloomreach server (also in `claiming`), for what it stored.
    pub(crate) bloomreach: Arc<bloomreach::BloomreachServer>,
}

impl Backends {
    /// `added` first (a user's own servers, which may take over a built-in one's paths), then
    /// Umami in `umami_mode`, then Customer.io (any credentials), then the JSON destination.
    /// `umami_websites`: the only website ids the Umami server knows (`None`: every one).
    pub(crate) fn new(added: &[Arc<dyn Backend>], umami_mode: UmamiMode, umami_websites: Option<Vec<String>>) -> Self {
        let mut claiming = added.to_vec();
        let umami = Arc::new(umami::UmamiServer::new(umami_mode).with_websites(umami_websites));
        claiming.push(umami.clone());
        claiming.push(Arc::new(opencdp::OpenCdpServer::default()));
        let customerio = Arc::new(customerio::CustomerIoServer::default());
        claiming.push(customerio.clone());
        let bloomreach = Arc::new(bloomreach::BloomreachServer::default());
        claiming.push(bloomreach.clone());
        Backends { claiming, rest: Arc::new(json::Json), umami, customerio, bloomreach }
    }

    /// The same backends, with a Customer.io server that takes only this site id and API key
    /// (`None`: any non-empty pair).
    pub(crate) fn with_customerio_credentials(mut self, credentials: Option<(String, String)>) -> Self {
        let server = Arc::new(customerio::CustomerIoServer::new(credentials));
        let old: Arc<dyn Backend> = self.customerio.clone();
        for b in &mut self.claiming {
            if Arc::ptr_eq(b, &old) {
                *b = server.clone();
            }
        }
        self.customerio = server;
        self
    }

    /// The same backends with OpenCDP's gateway knowing these keys, templates and rate limit.
    pub(crate) fn with_opencdp(mut self, settings: opencdp::OpenCdpSettings) -> Self {
        let server: Arc<dyn Backend> = Arc::new(opencdp::OpenCdpServer::new(settings));
        // Replaces the built-in one in place; a user's own backend with the label stays.
        if let Some(slot) = self.claiming.iter_mut().rev().find(|b| b.label() == opencdp::LABEL) {
            *slot = server;
        }
        self
    }

    /// The same backends with the Bloomreach server configured by `config`.
    pub(crate) fn with_bloomreach(mut self, config: bloomreach::BloomreachConfig) -> Self {
        let server = Arc::new(bloomreach::BloomreachServer::new(config));
        let old: Arc<dyn Backend> = self.bloomreach.clone();
        for b in &mut self.claiming {
            if Arc::ptr_eq(b, &old) {
                *b = server.clone();
            }
        }
        self.bloomreach = server;
        self
    }

    /// The backend of a `method` request to `path`.
    pub(crate) fn find(&self, method: &str, path: &str) -> &Arc<dyn Backend> {
        self.claiming(method, path).unwrap_or(&self.rest)
    }

    /// The backend that claims a `method` request to `path`, if one does (the JSON destination,
    /// which takes the rest, claims nothing).
    pub(crate) fn claiming(&self, method: &str, path: &str) -> Option<&Arc<dyn Backend>> {
        self.claiming.iter().find(|b| b.claims(method, path))
    }
}

impl Default for Backends {
    fn default() -> Self {
        Backends::new(&[], UmamiMode::default(), None)
    }
}

/// The top-level JSON objects of a body, as their text: an array's objects, else the body if it
/// is an object (or, with `batch_field`, the objects of its `batch` array if it has one). Empty
/// when the body is not JSON.
pub(crate) fn json_objects(body: &[u8], batch_field: bool) -> Vec<&str> {
    #[derive(Deserialize)]
    struct Batch<'a> {
        #[serde(borrow)]
        batch: Vec<&'a RawValue>,
    }
    fn objects(items: Vec<&RawValue>) -> Vec<&str> {
        items.into_iter().map(RawValue::get).filter(|t| t.starts_with('{')).collect()
    }
    let Ok(text) = std::str::from_utf8(body) else { return Vec::new() };
    if let Ok(items) = serde_json::from_str::<Vec<&RawValue>>(text) {
        return objects(items);
    }
    if batch_field && let Ok(Batch { batch }) = serde_json::from_str::<Batch<'_>>(text) {
        return objects(batch);
    }
    match serde_json::from_str::<&RawValue>(text) {
        Ok(raw) => objects(vec![raw]),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_asks_by_method_and_path_and_leaves_the_rest_to_json() {
        let backends = Backends::default();
        let label = |method: &str, path: &str| backends.find(method, path).label().to_owned();
        assert_eq!(label("POST", "/api/send"), "umami");
        assert_eq!(label("POST", "/api/batch"), "umami");
        assert_eq!(label("GET", "/api/send"), "json");
        assert_eq!(label("POST", "/api/send/"), "json");
        assert_eq!(label("POST", "/v1/batch"), "json");
        assert_eq!(label("POST", "/gateway/data-gateway/v1/persons/track"), "opencdp");
        assert_eq!(label("GET", "/v1/health/ping"), "opencdp");
        assert_eq!(label("POST", "/api/v2/batch"), "customerio");
        assert_eq!(label("PUT", "/api/v1/customers/u1"), "customerio");
        assert_eq!(label("POST", "/api/v1/events"), "customerio");
        assert_eq!(label("POST", "/track/v2/projects/p/batch"), "bloomreach");
        assert_eq!(label("GET", "/track/v2/projects/p/system/time"), "bloomreach");
        assert_eq!(label("GET", "/track/v2/projects/p/batch"), "json");
    }

    #[test]
    fn recorded_headers_are_looked_up_like_received_ones() {
        let pairs = vec![("User-Agent".to_owned(), "ua/1".to_owned()), ("bad name".to_owned(), "x".to_owned())];
        let request = BackendRequest::new("POST", "/p", b"{}").with_query(Some("a=1")).with_headers(&pairs);
        assert_eq!((request.header("user-agent"), request.query()), (Some("ua/1"), Some("a=1")));
        let map = request.headers();
        assert_eq!(map.len(), 1, "the invalid pair is skipped");
        let received = BackendRequest::from_http(&http::Method::POST, "/p", None, &map, b"");
        assert_eq!((received.method(), received.header("USER-AGENT")), ("POST", Some("ua/1")));
    }
}

//! What the collector answers: [`Reply`] (one scripted answer) and [`Rule`] (an answer chosen by
//! what the request looks like).

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::Full;

/// One answer of the collector, built in a builder style.
///
/// The constructors and setters panic on an invalid status code or header: these are bugs in
/// the test that builds the reply, and failing at once is clearer than silently sending
/// something else.
#[must_use]
#[derive(Clone, Debug)]
pub struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    delay: Duration,
    close: bool,
}

impl Reply {
    /// 200 with the body `{}` and `content-type: application/json`: what a destination answers
    /// to an accepted batch, and the collector's default answer.
    pub fn ok() -> Self {
        Self::status(200).json(serde_json::json!({}))
    }

    /// An answer with this status code and an empty body.
    ///
    /// # Panics
    ///
    /// If `code` is not in `100..=999`.
    pub fn status(code: u16) -> Self {
        let status = match StatusCode::from_u16(code) {
            Ok(status) => status,
            Err(_) => panic!("Reply::status: {code} is not a valid HTTP status code"),
        };
        Self { status, headers: HeaderMap::new(), body: Bytes::new(), delay: Duration::ZERO, close: false }
    }

    /// Sets a response header, replacing any earlier value of the same name.
    ///
    /// # Panics
    ///
    /// If `name` or `value` is not valid in an HTTP header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        let name = match HeaderName::from_bytes(name.as_bytes()) {
            Ok(name) => name,
            Err(_) => panic!("Reply::header: {name:?} is not a valid header name"),
        };
        let value = match HeaderValue::from_str(value) {
            Ok(value) => value,
            Err(_) => panic!("Reply::header: {value:?} is not a valid value for {name}"),
        };
        self.headers.insert(name, value);
        self
    }

    /// Sets `Retry-After` (delay-seconds or an HTTP date, sent as given).
    pub fn retry_after(self, value: &str) -> Self {
        self.header(RETRY_AFTER.as_str(), value)
    }

    /// The body, for the backends' unit tests and the fuzzing entry points.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn body_bytes(&self) -> &[u8] {
        &self.body
    }

    /// Sets the body; the content type is left as it is.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets the body to `value` serialized, and `content-type: application/json`.
    pub fn json(mut self, value: serde_json::Value) -> Self {
        self.body = Bytes::from(value.to_string());
        self.headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        self
    }

    /// Sets the body to `text`, which is JSON already, and `content-type: application/json`.
    pub(crate) fn json_text(mut self, text: String) -> Self {
        self.body = Bytes::from(text);
        self.headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        self
    }

    /// Waits this long before answering (or before closing, for
    /// [`close_connection`](Self::close_connection)). The wait is an async sleep: other
    /// requests are served meanwhile.
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }

    /// Reads the whole request, then closes the TCP connection without writing any response, so
    /// the client sees a connection error rather than a status. Recorded with status 0.
    pub fn close_connection() -> Self {
        Self { close: true, ..Self::status(200) }
    }

    /// `n` copies of this reply, for [`CollectorBuilder::script`](crate::CollectorBuilder::script).
    pub fn times(self, n: usize) -> Vec<Reply> {
        vec![self; n]
    }

    /// An injected failure (see [`Faults`](crate::Faults)): `status`, an empty body, and
    /// `Retry-After` if given. Takes validated values, so it cannot panic.
    pub(crate) fn injected(status: StatusCode, retry_after: Option<HeaderValue>) -> Self {
        let mut headers = HeaderMap::new();
        if let Some(value) = retry_after {
            headers.insert(RETRY_AFTER, value);
        }
        Self { status, headers, body: Bytes::new(), delay: Duration::ZERO, close: false }
    }

    /// Adds `extra` to this reply's delay (the fault layer's latency).
    pub(crate) fn add_delay(mut self, extra: Duration) -> Self {
        self.delay = self.delay.saturating_add(extra);
        self
    }

    /// The status recorded for a request answered with this reply: 0 for a closed connection.
    pub(crate) fn recorded_status(&self) -> u16 {
        if self.close { 0 } else { self.status.as_u16() }
    }

    /// The headers recorded for a request answered with this reply (none for a closed
    /// connection), as [`RecordedRequest::answer_headers`](crate::RecordedRequest::answer_headers).
    pub(crate) fn recorded_headers(&self) -> Vec<(String, String)> {
        if self.close {
            return Vec::new();
        }
        self.headers
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
            .collect()
    }

    /// The body recorded for a request answered with this reply (empty for a closed connection).
    pub(crate) fn recorded_body(&self) -> Bytes {
        if self.close { Bytes::new() } else { self.body.clone() }
    }

    /// Waits the delay, then builds the response, or `Err` to make hyper drop the connection.
    pub(crate) async fn respond(&self) -> Result<Response<Full<Bytes>>, CloseConnection> {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if self.close {
            return Err(CloseConnection);
        }
        let mut response = Response::new(Full::new(self.body.clone()));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers.clone();
        Ok(response)
    }
}

/// The service error that makes hyper close a connection without answering: a scripted
/// [`Reply::close_connection`], or a request whose body could not be read.
#[derive(Debug)]
pub(crate) struct CloseConnection;

impl std::fmt::Display for CloseConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection closed on purpose by the collector")
    }
}

impl std::error::Error for CloseConnection {}

/// A reply chosen by what the request looks like. Rules are checked before the script, in the
/// order they were added, and the first match wins; a request matched by a rule does not consume
/// a script entry.
#[derive(Clone, Debug)]
pub struct Rule {
    matcher: Matcher,
    reply: Reply,
}

#[derive(Clone, Debug)]
enum Matcher {
    BodyContains(Bytes),
    Path(String),
}

impl Rule {
    /// Matches requests whose body contains `needle` (byte-wise; an empty needle matches all).
    pub fn body_contains(needle: &str, reply: Reply) -> Self {
        Self { matcher: Matcher::BodyContains(Bytes::copy_from_slice(needle.as_bytes())), reply }
    }

    /// Matches requests whose path (without the query string) is exactly `path`.
    pub fn path(path: &str, reply: Reply) -> Self {
        Self { matcher: Matcher::Path(path.to_owned()), reply }
    }

    /// The reply, if this rule matches the request.
    pub(crate) fn reply_for(&self, path: &str, body: &[u8]) -> Option<&Reply> {
        let matches = match &self.matcher {
            Matcher::BodyContains(needle) => contains(body, needle),
            Matcher::Path(p) => p == path,
        };
        matches.then_some(&self.reply)
    }
}

/// Naive substring search: bodies in tests are small, and this is not used in sink mode.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_matching() {
        let rule = Rule::body_contains("boom", Reply::status(500));
        assert!(rule.reply_for("/", b"a boom b").is_some());
        assert!(rule.reply_for("/", b"bo om").is_none());
        assert!(rule.reply_for("/", b"").is_none());
        let rule = Rule::path("/v1/batch", Reply::status(500));
        assert!(rule.reply_for("/v1/batch", b"").is_some());
        assert!(rule.reply_for("/v1/batch/", b"").is_none());
        assert!(Rule::body_contains("", Reply::ok()).reply_for("/", b"").is_some());
    }

    #[test]
    fn reply_builders() {
        let reply = Reply::status(429).retry_after("3").header("X-A", "1");
        assert_eq!(reply.recorded_status(), 429);
        assert_eq!(reply.headers.get("retry-after").map(|v| v.as_bytes()), Some(&b"3"[..]));
        assert_eq!(reply.headers.get("x-a").map(|v| v.as_bytes()), Some(&b"1"[..]));
        assert_eq!(Reply::close_connection().recorded_status(), 0);
        assert_eq!(Reply::ok().body, Bytes::from_static(b"{}"));
        assert_eq!(Reply::ok().times(3).len(), 3);
    }

    #[test]
    #[should_panic(expected = "not a valid HTTP status code")]
    fn invalid_status_panics() {
        let _ = Reply::status(1000);
    }
}

//! Transport errors (no HTTP answer at all), classified by whether the request may have reached
//! the server: what retries of non-idempotent calls and failover decide on.

use std::fmt;

/// Whether a request that got no answer may have reached the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransportErrorKind {
    /// Nothing was sent: the connection was never up (DNS failure, connection refused, TLS
    /// handshake failure, connect timeout, an invalid URL). Sending again cannot duplicate.
    NotSent,
    /// The connection was up when it failed (total timeout, reset, closed before or during the
    /// answer): the server may have received and processed the request.
    MaybeSent,
}

impl fmt::Display for TransportErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportErrorKind::NotSent => "not sent",
            TransportErrorKind::MaybeSent => "maybe sent",
        })
    }
}

/// A request that got no HTTP answer, for [`Destination::classify_error`].
///
/// The message never contains the request's URL (URLs may carry credentials, and these errors
/// end up in logs and stats).
///
/// [`Destination::classify_error`]: super::Destination::classify_error
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportError {
    kind: TransportErrorKind,
    message: String,
}

impl TransportError {
    /// An error of `kind` described by `message` (for tests of `classify_error`).
    pub fn new(kind: TransportErrorKind, message: impl Into<String>) -> Self {
        TransportError { kind, message: message.into() }
    }

    /// Whether the request may have reached the server.
    pub fn kind(&self) -> TransportErrorKind {
        self.kind
    }

    /// What went wrong, without the URL (e.g. `could not connect: Connection refused (os error 111)`).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Classifies an error of reqwest. `is_connect` covers DNS, refused connections, TLS and the
    /// connect timeout; a builder error (an invalid URL) never left the process either. Anything
    /// else happened on a connection that was up, so the server may have the request.
    pub(crate) fn from_reqwest(error: reqwest::Error) -> Self {
        let error = error.without_url();
        let kind = if error.is_connect() || error.is_builder() {
            TransportErrorKind::NotSent
        } else {
            TransportErrorKind::MaybeSent
        };
        TransportError { kind, message: describe(&error) }
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.kind)
    }
}

impl std::error::Error for TransportError {}

/// What failed, in a few words: reqwest's own text ("error sending request") and hyper's
/// ("client error (Connect)") say little; the innermost cause says what happened ("Connection
/// refused (os error 111)", "end of file before message length reached"). The stage is added
/// where the cause does not say it. The URL was taken out before.
fn describe(error: &reqwest::Error) -> String {
    let mut innermost = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        innermost = e.to_string();
        source = e.source();
    }
    let stage = if error.is_connect() {
        "could not connect"
    } else if error.is_timeout() {
        "timed out"
    } else if error.is_body() || error.is_decode() {
        "reading the answer"
    } else if error.is_builder() {
        "invalid request"
    } else {
        return innermost;
    };
    if innermost.contains(stage) { innermost } else { format!("{stage}: {innermost}") }
}

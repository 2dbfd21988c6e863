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

    /// Classifies an error of reqwest for a request to `url`. `is_connect` covers DNS, refused
    /// connections, TLS and the connect timeout; a builder error (an invalid URL) never left the
    /// process either. Anything else happened on a connection that was up, so the server may have
    /// the request. The message names only the URL's host and port ("connection refused to
    /// 127.0.0.1:9", "timed out waiting for api.example.com:443"): the path and query may carry
    /// credentials, and the message ends up in logs and stats.
    pub(crate) fn from_reqwest(error: reqwest::Error, url: &str) -> Self {
        let error = error.without_url();
        let kind = if error.is_connect() || error.is_builder() {
            TransportErrorKind::NotSent
        } else {
            TransportErrorKind::MaybeSent
        };
        TransportError { kind, message: describe(&error, &host_port(url)) }
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.kind)
    }
}

impl std::error::Error for TransportError {}

/// What failed, in a few words, naming `target` (host and port): reqwest's own text ("error
/// sending request") says little; the operating system's error or the innermost cause says what
/// happened. The URL was taken out before.
fn describe(error: &reqwest::Error, target: &str) -> String {
    let io_kind = io_cause(error).map(std::io::Error::kind);
    if error.is_timeout() || io_kind == Some(std::io::ErrorKind::TimedOut) {
        return format!("timed out waiting for {target}");
    }
    if error.is_connect() {
        return match io_kind {
            Some(std::io::ErrorKind::ConnectionRefused) => format!("connection refused to {target}"),
            _ => format!("cannot connect to {target}: {}", innermost(error)),
        };
    }
    if error.is_builder() {
        return format!("invalid request to {target}: {}", innermost(error));
    }
    let stage = if error.is_body() || error.is_decode() { "reading the answer from" } else { "request to" };
    format!("{stage} {target} failed: {}", innermost(error))
}

/// `host:port` of `url` (the scheme's default port when none is given), never its credentials
/// or path.
fn host_port(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port_or_known_default()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_owned(),
            _ => "the server".to_owned(),
        },
        Err(_) => "the server".to_owned(),
    }
}

/// The operating system's error under `error`, if any.
fn io_cause(error: &reqwest::Error) -> Option<&std::io::Error> {
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        source = e.source();
    }
    None
}

/// The deepest cause's message ("Connection reset by peer (os error 104)", "dns error: …"): the
/// outer layers only say "error sending request".
fn innermost(error: &reqwest::Error) -> String {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        message = e.to_string();
        source = e.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::host_port;

    #[test]
    fn only_host_and_port_are_named() {
        assert_eq!(host_port("https://user:pw@example.com/p?key=secret"), "example.com:443");
        assert_eq!(host_port("http://[::1]:8080/e"), "[::1]:8080");
        assert_eq!(host_port("memory://"), "the server");
    }
}

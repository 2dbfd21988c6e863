//! Why a request failed, in words a user can act on: the [`LastError`] a destination keeps in
//! its stats ("connection refused to 127.0.0.1:9", "503 Service Unavailable: maintenance").

use std::error::Error as _;
use std::fmt;

use trackway_wire::Timestamp;

use crate::destination::Response;
use crate::stats::{FailureKind, LastError};

/// Most characters of a response body's first line kept in a message.
const MAX_BODY_LINE: usize = 200;

/// A request that got no HTTP answer (the error side of the worker's `Answer`).
#[derive(Clone, Debug)]
pub(super) struct Failure {
    pub(super) kind: FailureKind,
    pub(super) message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Failure {
    /// A failure outside the HTTP exchange (the request task panicked, say).
    pub(super) fn other(message: String) -> Self {
        Failure { kind: FailureKind::Transport, message }
    }

    /// Describes a `reqwest` error for a request to `url`, naming only its host and port: the
    /// path and query may carry credentials, and the message ends up in logs and stats.
    pub(super) fn from_reqwest(error: reqwest::Error, url: &str) -> Self {
        let error = &error.without_url();
        let target = host_port(url);
        let io_kind = io_cause(error).map(std::io::Error::kind);
        if error.is_timeout() || io_kind == Some(std::io::ErrorKind::TimedOut) {
            return Failure { kind: FailureKind::Timeout, message: format!("timed out waiting for {target}") };
        }
        if error.is_connect() {
            let message = match io_kind {
                Some(std::io::ErrorKind::ConnectionRefused) => format!("connection refused to {target}"),
                _ => format!("cannot connect to {target}: {}", innermost(error)),
            };
            return Failure { kind: FailureKind::Connect, message };
        }
        let while_ = if error.is_body() || error.is_decode() { "reading the answer from" } else { "request to" };
        Failure { kind: FailureKind::Transport, message: format!("{while_} {target} failed: {}", innermost(error)) }
    }

    /// This failure as a destination's last error.
    pub(super) fn at(&self, at: Timestamp) -> LastError {
        LastError { kind: self.kind, status: None, message: self.message.clone(), at }
    }
}

/// A server's answer that failed the whole request, as a destination's last error.
pub(super) fn status_error(response: &Response, at: Timestamp) -> LastError {
    let status = response.status;
    let body = String::from_utf8_lossy(&response.body);
    let first = body.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or_default();
    let message = if first.is_empty() {
        status.to_string()
    } else if first.chars().count() > MAX_BODY_LINE {
        format!("{status}: {}…", first.chars().take(MAX_BODY_LINE).collect::<String>())
    } else {
        format!("{status}: {first}")
    };
    LastError { kind: FailureKind::Status, status: Some(status.as_u16()), message, at }
}

/// `host:port` of `url` (the scheme's default port when none is given).
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
    let mut source = error.source();
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
    let mut source = error.source();
    while let Some(e) = source {
        message = e.to_string();
        source = e.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_error_says_the_status_and_the_first_line_of_the_body() {
        let at = Timestamp::from_unix_millis(0);
        let e = status_error(&Response::new(503, "\n  upstream down \nsecond line"), at);
        assert_eq!((e.kind, e.status), (FailureKind::Status, Some(503)));
        assert_eq!(e.to_string(), "503 Service Unavailable: upstream down");
        assert_eq!(status_error(&Response::new(502, ""), at).to_string(), "502 Bad Gateway");
        let long = status_error(&Response::new(500, "x".repeat(1000)), at).message;
        assert_eq!(long.chars().count(), "500 Internal Server Error: ".len() + MAX_BODY_LINE + 1);
    }

    #[test]
    fn only_host_and_port_are_named() {
        assert_eq!(host_port("https://user:pw@example.com/p?key=secret"), "example.com:443");
        assert_eq!(host_port("http://[::1]:8080/e"), "[::1]:8080");
    }
}

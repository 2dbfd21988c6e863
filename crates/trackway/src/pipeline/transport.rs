//! How one request of a destination goes over HTTP: redirects followed without losing the body or
//! leaking secrets, a request-rate cap, and fallback base URLs when the primary fails.
//!
//! reqwest follows redirects itself, but turns a redirected POST into a bodiless GET on 301 and
//! 302 (as browsers do), which would lose the events, and it has no notion of which hosts may see
//! a destination's credentials. So its redirect handling is off and this module follows them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};

use super::redact::Redactor;
use crate::Clock;
use crate::destination::{Request, Response, TransportError, TransportErrorKind};
use crate::policy::{FALLBACK_PRIMARY_RETRY, MAX_REDIRECTS, MAX_RESPONSE_BODY};

/// A request that got no usable answer, classified (nothing sent, or maybe sent).
pub(crate) type SendError = TransportError;

/// The HTTP side of one destination: its client, its secrets, where they may go, and its bases.
#[derive(Debug, Clone)]
pub(crate) struct Transport {
    client: reqwest::Client,
    /// The headers configured in `HttpOptions::header`: secrets, added to each request (not as
    /// the client's default headers) so a redirect to a foreign host can leave them out.
    secrets: HeaderMap,
    /// Host suffixes a redirect may go to with the secrets (besides the request's own host).
    trusted_suffixes: Vec<String>,
    /// Host names a test resolves to loopback: plain http to them counts as loopback.
    loopback_hosts: Vec<String>,
    failover: Option<Arc<Failover>>,
    /// Replaces the secrets in the answers (a server that echoes the request).
    redactor: Redactor,
}

/// The primary base URL and its fallbacks, and which one is in use.
#[derive(Debug)]
struct Failover {
    /// Primary first.
    bases: Vec<String>,
    clock: Clock,
    /// The base in use and since when (clock elapsed); the primary is tried again after
    /// [`FALLBACK_PRIMARY_RETRY`].
    active: Mutex<(usize, Duration)>,
}

impl Transport {
    pub(crate) fn new(
        client: reqwest::Client,
        secrets: HeaderMap,
        trusted_suffixes: Vec<String>,
        loopback_hosts: Vec<String>,
    ) -> Self {
        let redactor = Redactor::new(&secrets);
        Transport { client, secrets, trusted_suffixes, loopback_hosts, failover: None, redactor }
    }

    /// Fails over from `primary` to `fallbacks`, in order (a request URL starting with `primary`
    /// has that prefix replaced).
    pub(crate) fn with_fallbacks(mut self, primary: String, fallbacks: Vec<String>, clock: Clock) -> Self {
        if !fallbacks.is_empty() {
            let mut bases = vec![primary];
            bases.extend(fallbacks);
            self.failover = Some(Arc::new(Failover { bases, clock, active: Mutex::new((0, Duration::ZERO)) }));
        }
        self
    }

    /// Sends `request`, on the base in use and then on each next one while the answer says the
    /// server is down (nothing sent, a transport error, a 5xx), never after a 4xx.
    pub(crate) async fn send(&self, request: Request) -> Result<Response, SendError> {
        let own = self.redactor.with_request(&request.headers);
        let answer = self
            .send_failing_over(request, |answer| match answer {
                Ok(response) => response.status.is_server_error(),
                Err(_) => true,
            })
            .await;
        self.redacted(answer, own.as_ref())
    }

    /// Sends a direct call's `request` once: on the base in use, and on the next ones only while
    /// nothing was sent (a call that may have reached a server is never sent again).
    pub(crate) async fn send_direct(&self, request: Request) -> Result<Response, SendError> {
        let own = self.redactor.with_request(&request.headers);
        let answer = self
            .send_failing_over(request, |answer| matches!(answer, Err(e) if e.kind() == TransportErrorKind::NotSent))
            .await;
        self.redacted(answer, own.as_ref())
    }

    /// The answer with the request's secrets replaced in its body (see [`super::redact`]), before
    /// the destination classifies it and anything stores, logs or prints it.
    fn redacted(&self, answer: Result<Response, SendError>, own: Option<&Redactor>) -> Result<Response, SendError> {
        let redactor = own.unwrap_or(&self.redactor);
        answer.map(|mut response| {
            response.body = redactor.apply(std::mem::take(&mut response.body));
            response
        })
    }

    /// Sends `request` on the base in use, then on each next one while `down` says the answer
    /// calls for another base; the base that answered is used from then on.
    async fn send_failing_over(
        &self,
        request: Request,
        down: impl Fn(&Result<Response, SendError>) -> bool,
    ) -> Result<Response, SendError> {
        let Some(failover) = &self.failover else { return self.send_following(request).await };
        let first = failover.current();
        let n = failover.bases.len();
        let mut last = None;
        for step in 0..n {
            let base = (first + step) % n;
            let Some(url) = failover.rebase(&request.url, base) else {
                // Not under the primary base: no failover for this URL.
                return self.send_following(request).await;
            };
            let mut attempt = request.clone();
            attempt.url = url;
            let answer = self.send_following(attempt).await;
            if !down(&answer) {
                failover.settle(base);
                return answer;
            }
            if step + 1 < n {
                tracing::debug!(base = step, "trackway: base URL failed; trying the next fallback");
            }
            last = Some(answer);
        }
        last.unwrap_or_else(|| Err(TransportError::new(TransportErrorKind::NotSent, "no base URL to send to")))
    }

    /// Sends `request` and follows up to [`MAX_REDIRECTS`] redirects (301, 302, 307, 308) with the
    /// same method and body. Secrets go along only while the scheme stays https (or plain http to
    /// loopback, in tests) and the host is the original one or ends with a trusted suffix.
    async fn send_following(&self, request: Request) -> Result<Response, SendError> {
        let Request { method, url, headers, body, .. } = request;
        let origin = reqwest::Url::parse(&url)
            .map_err(|e| TransportError::new(TransportErrorKind::NotSent, format!("invalid URL: {e}")))?;
        let mut target = origin.clone();
        let mut with_secrets = true;
        for _ in 0..=MAX_REDIRECTS {
            let mut request_headers = headers.clone();
            if with_secrets {
                for (name, value) in &self.secrets {
                    request_headers.insert(name, value.clone());
                }
            } else {
                strip_credentials(&mut request_headers);
            }
            let response = self
                .client
                .request(method.clone(), target.clone())
                .headers(request_headers)
                .body(body.clone())
                .send()
                .await
                // Classified; the message names host and port only (a URL may carry credentials).
                .map_err(|e| TransportError::from_reqwest(e, target.as_str()))?;
            let status = response.status();
            if !is_followed(status) {
                return read(response, target.as_str()).await;
            }
            // The server has seen the request: what goes wrong from here is "maybe sent".
            let maybe_sent = |what: &str| {
                TransportError::new(TransportErrorKind::MaybeSent, format!("the server answered {status} {what}"))
            };
            let Some(location) = response.headers().get(header::LOCATION) else {
                return Err(maybe_sent("without a Location header"));
            };
            let next = location
                .to_str()
                .ok()
                .and_then(|l| target.join(l).ok())
                .ok_or_else(|| maybe_sent("with an invalid Location header"))?;
            with_secrets = with_secrets && self.may_carry_secrets(&origin, &next);
            tracing::debug!(%status, keeps_credentials = with_secrets, "trackway: following a redirect");
            target = next;
        }
        Err(TransportError::new(TransportErrorKind::MaybeSent, format!("more than {MAX_REDIRECTS} redirects")))
    }

    fn may_carry_secrets(&self, origin: &reqwest::Url, next: &reqwest::Url) -> bool {
        let Some(host) = next.host_str() else { return false };
        let scheme_ok = match next.scheme() {
            "https" => true,
            // Plain http only where it started as plain http, to loopback: never a downgrade.
            "http" => origin.scheme() == "http" && self.is_loopback(next),
            _ => false,
        };
        let host = host.to_ascii_lowercase();
        let same_host = origin.host_str().is_some_and(|h| h.eq_ignore_ascii_case(&host));
        let trusted = self.trusted_suffixes.iter().any(|s| host.ends_with(&s.to_ascii_lowercase()));
        scheme_ok && (same_host || trusted)
    }

    fn is_loopback(&self, url: &reqwest::Url) -> bool {
        let Some(host) = url.host_str() else { return false };
        match host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>() {
            Ok(ip) => ip.is_loopback(),
            Err(_) => {
                host.eq_ignore_ascii_case("localhost")
                    || self.loopback_hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
            }
        }
    }
}

impl Failover {
    /// The base to start with: the one in use, or the primary again once it has been avoided for
    /// long enough.
    fn current(&self) -> usize {
        let mut active = crate::pipeline::lock(&self.active);
        if active.0 != 0 && self.clock.elapsed() >= active.1 + FALLBACK_PRIMARY_RETRY {
            *active = (0, self.clock.elapsed());
            tracing::info!("trackway: trying the primary base URL again");
        }
        active.0
    }

    fn settle(&self, base: usize) {
        let mut active = crate::pipeline::lock(&self.active);
        if active.0 != base {
            if base == 0 {
                tracing::info!("trackway: the primary base URL answers again");
            } else {
                tracing::warn!(fallback = base, "trackway: the primary base URL is failing; using a fallback");
            }
            *active = (base, self.clock.elapsed());
        }
    }

    /// `url` with the primary base replaced by base `i`.
    fn rebase(&self, url: &str, i: usize) -> Option<String> {
        let rest = url.strip_prefix(self.bases[0].as_str())?;
        Some(format!("{}{rest}", self.bases[i]))
    }
}

/// The redirects re-sent with the same method and body. 303 ("see other") is not: it says the
/// request was handled and points elsewhere for the result.
fn is_followed(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 307 | 308)
}

/// Removes what identifies the sender: `Authorization`, cookies, and any header marked sensitive.
fn strip_credentials(headers: &mut HeaderMap) {
    headers.remove(header::AUTHORIZATION);
    headers.remove(header::PROXY_AUTHORIZATION);
    headers.remove(header::COOKIE);
    let sensitive: Vec<_> = headers.iter().filter(|(_, v)| v.is_sensitive()).map(|(n, _)| n.clone()).collect();
    for name in sensitive {
        headers.remove(name);
    }
}

/// Reads the answer (up to [`MAX_RESPONSE_BODY`]) of a request to `url`.
async fn read(mut response: reqwest::Response, url: &str) -> Result<Response, SendError> {
    let status = response.status();
    let headers = response.headers().clone();
    let mut body = Vec::new();
    // The request reached the server: an error from here on is always "maybe sent".
    while let Some(chunk) = response.chunk().await.map_err(|e| TransportError::from_reqwest(e, url))? {
        let room = MAX_RESPONSE_BODY.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if room <= chunk.len() {
            break;
        }
    }
    let mut out = Response::new(status.as_u16(), Bytes::from(body));
    out.headers = headers;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transport(suffixes: &[&str]) -> Transport {
        Transport::new(
            reqwest::Client::new(),
            HeaderMap::new(),
            suffixes.iter().map(|s| (*s).to_owned()).collect(),
            vec!["api.example.test".into(), "eu.example.test".into()],
        )
    }

    fn url(s: &str) -> reqwest::Url {
        reqwest::Url::parse(s).expect("url")
    }

    #[test]
    fn secrets_follow_only_to_the_same_or_a_trusted_host_over_https() {
        let t = transport(&[".customer.io"]);
        let origin = url("https://track.customer.io/api/v2/batch");
        assert!(t.may_carry_secrets(&origin, &url("https://track.customer.io/other")));
        assert!(t.may_carry_secrets(&origin, &url("https://track-eu.customer.io/api/v2/batch")));
        assert!(!t.may_carry_secrets(&origin, &url("https://evil.example/api")));
        assert!(!t.may_carry_secrets(&origin, &url("http://track.customer.io/api")), "https to http is a downgrade");
        assert!(!t.may_carry_secrets(&origin, &url("https://customer.io.evil.example/")), "suffix, not substring");
    }

    #[test]
    fn plain_http_keeps_secrets_only_between_loopback_hosts() {
        let t = transport(&[".example.test"]);
        let origin = url("http://api.example.test:9/x");
        assert!(t.may_carry_secrets(&origin, &url("http://eu.example.test:9/x")));
        assert!(!t.may_carry_secrets(&origin, &url("http://other.example.test:9/x")), "not resolved to loopback");
        let t = transport(&[]);
        assert!(t.may_carry_secrets(&url("http://127.0.0.1:1/a"), &url("http://127.0.0.1:2/b")));
    }

    #[test]
    fn credentials_and_sensitive_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, http::HeaderValue::from_static("Basic x"));
        let mut secret = http::HeaderValue::from_static("k");
        secret.set_sensitive(true);
        h.insert("x-api-key", secret);
        h.insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        strip_credentials(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::CONTENT_TYPE));
    }
}

//! The default status-code classification and `Retry-After` parsing.

use std::time::{Duration, SystemTime};

use super::{Outcome, Response};

/// How long to pause after a 429 that carries no `Retry-After` (Sentry and Amplitude use 60 and 30).
const BARE_429_PAUSE: Duration = Duration::from_secs(30);

/// Classifies a whole response by its status code: what
/// [`Destination::classify`](super::Destination::classify) does by default, and the fallback of
/// destinations that read more of the answer (Umami's).
///
/// | status | outcome |
/// |---|---|
/// | 2xx | `Delivered` |
/// | 429, 503 with `Retry-After` | `Throttled(after)` |
/// | 429 without | `Throttled(30 s)` |
/// | 408, 5xx | `Retry` |
/// | 401, 403, 404 | `Misconfigured("<status>: <first line of the body>")` |
/// | other 4xx, 3xx, 1xx | `Reject("<status>: <body>")` |
///
/// 401, 403 and 404 say the destination's configuration is wrong (bad credentials, a URL that
/// names nothing), so its events are held ([`Outcome::Misconfigured`]) instead of dead-lettered;
/// other 4xx stay per-request rejections. A destination whose server answers 403 or 404 about
/// one event's content matches those statuses itself before falling back here.
pub fn classify_status(response: &Response) -> Outcome {
    let status = response.status;
    let retry_after = response
        .headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    match status.as_u16() {
        200..=299 => Outcome::Delivered,
        429 => Outcome::Throttled(retry_after.unwrap_or(BARE_429_PAUSE)),
        503 => retry_after.map_or(Outcome::Retry, Outcome::Throttled),
        408 | 500..=599 => Outcome::Retry,
        401 | 403 | 404 => Outcome::Misconfigured(status_and_first_line(response)),
        _ => Outcome::Reject(format!("{status}: {}", response.body_excerpt())),
    }
}

/// "401 Unauthorized: <first line of the body>" (just the status when the body is empty): a log
/// line names the answer without carrying a whole HTML error page.
pub(crate) fn status_and_first_line(response: &Response) -> String {
    let excerpt = response.body_excerpt();
    match excerpt.lines().map(str::trim).find(|l| !l.is_empty()) {
        Some(line) => format!("{}: {line}", response.status),
        None => response.status.to_string(),
    }
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP date (relative to `now`).
///
/// ```
/// use std::time::{Duration, SystemTime};
/// let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
/// assert_eq!(trackway::destination::parse_retry_after("2", now), Some(Duration::from_secs(2)));
/// assert_eq!(trackway::destination::parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now), Some(Duration::from_secs(10)));
/// assert_eq!(trackway::destination::parse_retry_after("soon", now), None);
/// ```
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_header(status: u16, retry_after: &str) -> Response {
        let mut r = Response::new(status, "");
        r.headers.insert(http::header::RETRY_AFTER, http::HeaderValue::from_str(retry_after).expect("header"));
        r
    }

    #[test]
    fn table() {
        assert_eq!(classify_status(&Response::new(200, "")), Outcome::Delivered);
        assert_eq!(classify_status(&Response::new(204, "")), Outcome::Delivered);
        assert_eq!(classify_status(&Response::new(503, "")), Outcome::Retry);
        assert_eq!(classify_status(&Response::new(502, "")), Outcome::Retry);
        assert_eq!(classify_status(&Response::new(408, "")), Outcome::Retry);
        assert_eq!(classify_status(&Response::new(429, "")), Outcome::Throttled(BARE_429_PAUSE));
        assert_eq!(classify_status(&with_header(429, "2")), Outcome::Throttled(Duration::from_secs(2)));
        assert_eq!(classify_status(&with_header(503, "7")), Outcome::Throttled(Duration::from_secs(7)));
        assert_eq!(
            classify_status(&Response::new(400, "bad name")),
            Outcome::Reject("400 Bad Request: bad name".into())
        );
    }

    #[test]
    fn configuration_errors_hold_the_events() {
        assert_eq!(
            classify_status(&Response::new(401, "\n  bad token\nmore")),
            Outcome::Misconfigured("401 Unauthorized: bad token".into())
        );
        assert_eq!(classify_status(&Response::new(403, "")), Outcome::Misconfigured("403 Forbidden".into()));
        assert!(matches!(classify_status(&Response::new(404, "<html>")), Outcome::Misconfigured(_)));
        assert_eq!(classify_status(&Response::new(422, "")), Outcome::Reject("422 Unprocessable Entity: ".into()));
        assert!(matches!(classify_status(&Response::new(302, "")), Outcome::Reject(_)));
    }

    #[test]
    fn past_http_date_means_no_wait() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now), Some(Duration::ZERO));
    }
}

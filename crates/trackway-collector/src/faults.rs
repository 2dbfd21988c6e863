//! Runtime fault injection: [`Faults`] (what to inject) and the counting and time-window state
//! that decides, request by request, whether a fault fires.
//!
//! Faults are checked before the rules, the script and the default reply, and never apply to the
//! collector's own API under `/_trackway/`. They can be set when building
//! ([`CollectorBuilder::faults`](crate::CollectorBuilder::faults)), while running
//! ([`RunningCollector::set_faults`](crate::RunningCollector::set_faults)), or over HTTP with
//! `PUT /_trackway/api/faults`.
//!
//! The time windows (`fail_for_ms`, `rate_limit`) are measured by a [`FaultClock`]: the system's
//! monotonic clock, or a manual one a test moves with [`ManualFaultClock::advance`], so a test of
//! a window never depends on how fast its requests happen to run.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::{HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

use crate::backends::BackendRequest;
use crate::reply::Reply;

/// Faults the collector injects into the requests it receives, all off by default.
///
/// Every field is optional in JSON (`{}` is "no faults"), and unknown fields are rejected, so a
/// typo in `PUT /_trackway/api/faults` is a 400 rather than a silently ignored fault.
///
/// Request counting (for [`fail_every`](Self::fail_every) and
/// [`close_every`](Self::close_every)), the [`fail_for_ms`](Self::fail_for_ms) window and the
/// [`rate_limit`](Self::rate_limit) window all restart whenever the faults are set or cleared.
/// When several faults fire on the same request, the first in this order wins: `close_every`,
/// `rate_limit`, `fail_for_ms`, `fail_every`.
///
/// ```
/// use trackway_collector::Faults;
///
/// let faults: Faults = serde_json::from_str(r#"{"fail_every": 2, "retry_after": "1"}"#)?;
/// assert_eq!(faults.fail_every, Some(2));
/// assert_eq!(faults.fail_status, 503);
/// assert!(faults.is_active());
/// assert!(!Faults::default().is_active());
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Every Nth request (the Nth, 2Nth, …, counted from when the faults were set) is answered
    /// [`fail_status`](Self::fail_status). Must not be 0.
    pub fail_every: Option<u64>,
    /// The status of injected failures ([`fail_every`](Self::fail_every),
    /// [`fail_for_ms`](Self::fail_for_ms)). Default 503. Must be in `100..=999`.
    pub fail_status: u16,
    /// Every request is answered [`fail_status`](Self::fail_status) until this many
    /// milliseconds after the faults were set (an outage that ends by itself).
    pub fail_for_ms: Option<u64>,
    /// Sent as `Retry-After` with injected failures and with rate-limit 429s (delay-seconds or
    /// an HTTP date, sent as given). Must be a valid header value.
    pub retry_after: Option<String>,
    /// Waits this long before answering (or closing) every request, faulted or not.
    pub latency_ms: Option<u64>,
    /// Every Nth request is read in full, then its connection is closed without a response.
    /// Must not be 0.
    pub close_every: Option<u64>,
    /// At most this many requests per 1-second window; the rest are answered 429 with
    /// `Retry-After` ([`retry_after`](Self::retry_after), else `1`). A window starts with the
    /// first request after the previous one ended.
    pub rate_limit: Option<u32>,
    /// Injected failures ([`fail_every`](Self::fail_every), [`fail_for_ms`](Self::fail_for_ms))
    /// carry the whole request in their body, credentials included, as one line of JSON
    /// (`{"error":"...","method":..,"path":..,"headers":[[name,value],..],"body":".."}`): what a
    /// careless or hostile server's error page does. For testing that a client keeps the
    /// secrets it sent out of what it logs, prints and stores. Injects nothing by itself.
    pub echo_request: bool,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            fail_every: None,
            fail_status: 503,
            fail_for_ms: None,
            retry_after: None,
            latency_ms: None,
            close_every: None,
            rate_limit: None,
            echo_request: false,
        }
    }
}

impl Faults {
    /// Whether any fault is set (`fail_status` alone injects nothing).
    pub fn is_active(&self) -> bool {
        self.fail_every.is_some()
            || self.fail_for_ms.is_some()
            || self.latency_ms.is_some()
            || self.close_every.is_some()
            || self.rate_limit.is_some()
    }

    /// Checks the values that cannot be sent as they are: a zero `fail_every` or `close_every`,
    /// a status outside `100..=999`, a `retry_after` that is not a valid header value.
    ///
    /// # Errors
    ///
    /// [`InvalidFaults`] naming the first bad field.
    pub fn validate(&self) -> Result<(), InvalidFaults> {
        if self.fail_every == Some(0) {
            return Err(InvalidFaults("fail_every must be at least 1".into()));
        }
        if self.close_every == Some(0) {
            return Err(InvalidFaults("close_every must be at least 1".into()));
        }
        if StatusCode::from_u16(self.fail_status).is_err() {
            return Err(InvalidFaults(format!("fail_status {} is not an HTTP status code", self.fail_status)));
        }
        if let Some(value) = &self.retry_after
            && HeaderValue::from_str(value).is_err()
        {
            return Err(InvalidFaults(format!("retry_after {value:?} is not a valid header value")));
        }
        Ok(())
    }
}

/// Why a [`Faults`] value was refused (see [`Faults::validate`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidFaults(String);

impl fmt::Display for InvalidFaults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid faults: {}", self.0)
    }
}

impl std::error::Error for InvalidFaults {}

/// What the fault layer decided for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Injected {
    /// Close the connection without answering.
    Close,
    /// Answer this status, with this `Retry-After` if any.
    Status(StatusCode, Option<HeaderValue>),
}

/// The decision for one request: a delay before answering, and maybe a fault instead of the
/// normal reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Decision {
    pub(crate) latency: Duration,
    pub(crate) injected: Option<Injected>,
    /// An injected failure echoes the request ([`Faults::echo_request`]).
    pub(crate) echo: bool,
}

impl Decision {
    /// The reply to send instead of the normal one, if a fault fired (without the latency,
    /// which the caller adds to whichever reply it sends); an echoing failure carries `request`.
    pub(crate) fn reply(&self, request: &BackendRequest<'_>) -> Option<Reply> {
        match &self.injected {
            None => None,
            Some(Injected::Close) => Some(Reply::close_connection()),
            Some(Injected::Status(status, retry_after)) => {
                let reply = Reply::injected(*status, retry_after.clone());
                // A rate-limit 429 is the collector's own answer, not the failing server's page.
                let echo = self.echo && *status != StatusCode::TOO_MANY_REQUESTS;
                Some(if echo { reply.json_text(echo_body(request)) } else { reply })
            }
        }
    }
}

/// The request as one line of JSON, headers first so that they are in any excerpt of it.
fn echo_body(request: &BackendRequest<'_>) -> String {
    let text = |v: &str| serde_json::Value::from(v).to_string();
    let map = request.headers();
    let headers: Vec<(&str, String)> =
        map.iter().map(|(n, v)| (n.as_str(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect();
    format!(
        "{{\"error\":\"echo of the request (Faults::echo_request)\",\"method\":{},\"path\":{},\"headers\":{},\"body\":{}}}",
        text(request.method()),
        text(request.path()),
        serde_json::to_string(&headers).unwrap_or_default(),
        text(&String::from_utf8_lossy(request.body())),
    )
}

const RATE_WINDOW: Duration = Duration::from_secs(1);

/// The clock the fault windows are measured by ([`CollectorBuilder::fault_clock`](crate::CollectorBuilder::fault_clock)).
/// [`FaultClock::system`] by default; [`FaultClock::manual`] in tests.
///
/// ```
/// use std::time::Duration;
/// use trackway_collector::{Collector, FaultClock, Faults};
///
/// let (clock, time) = FaultClock::manual();
/// let collector = Collector::builder()
///     .faults(Faults { fail_for_ms: Some(1000), ..Faults::default() })
///     .fault_clock(clock)
///     .start()?;
/// // ... requests now get 503s, however slowly they run ...
/// time.advance(Duration::from_secs(1));
/// // ... and from here on the outage is over.
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct FaultClock(Source);

#[derive(Clone, Debug)]
enum Source {
    System,
    Manual { origin: Instant, offset: Arc<Mutex<Duration>> },
}

/// Moves the [`FaultClock`] made with it by [`FaultClock::manual`].
#[derive(Clone, Debug)]
pub struct ManualFaultClock(Arc<Mutex<Duration>>);

impl FaultClock {
    /// The system's monotonic clock.
    pub fn system() -> Self {
        FaultClock(Source::System)
    }

    /// A clock that stands still until the returned handle [`advance`](ManualFaultClock::advance)s it.
    pub fn manual() -> (FaultClock, ManualFaultClock) {
        let offset = Arc::new(Mutex::new(Duration::ZERO));
        (FaultClock(Source::Manual { origin: Instant::now(), offset: offset.clone() }), ManualFaultClock(offset))
    }

    /// Now, by this clock.
    pub(crate) fn now(&self) -> Instant {
        match &self.0 {
            Source::System => Instant::now(),
            Source::Manual { origin, offset } => *origin + *offset.lock().unwrap_or_else(PoisonError::into_inner),
        }
    }
}

impl Default for FaultClock {
    fn default() -> Self {
        FaultClock::system()
    }
}

impl ManualFaultClock {
    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) += by;
    }
}

/// The faults and their counters; one per collector, behind a mutex.
#[derive(Debug)]
pub(crate) struct FaultState {
    clock: FaultClock,
    faults: Faults,
    /// Validated copies of `fail_status` and `retry_after`, so deciding never fails.
    status: StatusCode,
    retry_after: Option<HeaderValue>,
    set_at: Instant,
    /// Requests seen since the faults were set.
    seen: u64,
    /// Start of the current rate-limit window and the requests seen in it.
    window_start: Option<Instant>,
    window_count: u64,
}

impl FaultState {
    /// State for `faults`, set now by `clock`.
    pub(crate) fn new(faults: Faults, clock: FaultClock) -> Result<Self, InvalidFaults> {
        let mut state = FaultState::cleared(clock);
        state.replace(faults)?;
        Ok(state)
    }

    /// No faults, set now by `clock` (cannot fail, unlike [`new`](Self::new)).
    pub(crate) fn cleared(clock: FaultClock) -> Self {
        FaultState {
            set_at: clock.now(),
            clock,
            faults: Faults::default(),
            status: StatusCode::SERVICE_UNAVAILABLE,
            retry_after: None,
            seen: 0,
            window_start: None,
            window_count: 0,
        }
    }

    /// Replaces the faults and restarts their counters and windows; a refused value changes
    /// nothing.
    pub(crate) fn replace(&mut self, faults: Faults) -> Result<(), InvalidFaults> {
        faults.validate()?;
        let status = StatusCode::from_u16(faults.fail_status)
            .map_err(|_| InvalidFaults(format!("fail_status {} is not an HTTP status code", faults.fail_status)))?;
        let retry_after = match &faults.retry_after {
            Some(value) => Some(
                HeaderValue::from_str(value)
                    .map_err(|_| InvalidFaults(format!("retry_after {value:?} is not a valid header value")))?,
            ),
            None => None,
        };
        *self = FaultState {
            set_at: self.clock.now(),
            clock: self.clock.clone(),
            faults,
            status,
            retry_after,
            seen: 0,
            window_start: None,
            window_count: 0,
        };
        Ok(())
    }

    /// Stops injecting faults (restarting the counters, as [`replace`](Self::replace) does).
    pub(crate) fn clear(&mut self) {
        *self = FaultState::cleared(self.clock.clone());
    }

    pub(crate) fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Counts one request arriving now (by the fault clock) and decides its fate.
    pub(crate) fn decide(&mut self) -> Decision {
        let now = self.clock.now();
        self.decide_at(now)
    }

    fn decide_at(&mut self, now: Instant) -> Decision {
        let f = &self.faults;
        let latency = Duration::from_millis(f.latency_ms.unwrap_or(0));
        if !f.is_active() {
            return Decision { latency, injected: None, echo: false };
        }
        self.seen += 1;
        let nth = |every: Option<u64>| every.is_some_and(|n| n > 0 && self.seen.is_multiple_of(n));

        let rate_limited = match f.rate_limit {
            Some(limit) => {
                match self.window_start {
                    Some(start) if now.saturating_duration_since(start) < RATE_WINDOW => {}
                    _ => {
                        self.window_start = Some(now);
                        self.window_count = 0;
                    }
                }
                self.window_count += 1;
                self.window_count > u64::from(limit)
            }
            None => false,
        };
        let in_outage =
            f.fail_for_ms.is_some_and(|ms| now.saturating_duration_since(self.set_at) < Duration::from_millis(ms));

        let injected = if nth(f.close_every) {
            Some(Injected::Close)
        } else if rate_limited {
            let retry_after = self.retry_after.clone().unwrap_or_else(|| HeaderValue::from_static("1"));
            Some(Injected::Status(StatusCode::TOO_MANY_REQUESTS, Some(retry_after)))
        } else if in_outage || nth(f.fail_every) {
            Some(Injected::Status(self.status, self.retry_after.clone()))
        } else {
            None
        };
        Decision { latency, injected, echo: f.echo_request }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// State for `faults` on a manual clock that stands still, and the moment it was set: each
    /// test passes its request times to `decide_at` as offsets from it.
    fn state(faults: Faults) -> (FaultState, Instant) {
        let s = FaultState::new(faults, FaultClock::manual().0).expect("valid faults");
        let set_at = s.set_at;
        (s, set_at)
    }

    fn status(d: &Decision) -> Option<u16> {
        match &d.injected {
            Some(Injected::Status(s, _)) => Some(s.as_u16()),
            Some(Injected::Close) => Some(0),
            None => None,
        }
    }

    #[test]
    fn no_faults_inject_nothing() {
        let (mut s, now) = state(Faults::default());
        for _ in 0..10 {
            assert_eq!(s.decide_at(now), Decision { latency: Duration::ZERO, injected: None, echo: false });
        }
    }

    #[test]
    fn fail_every_counts_from_when_set() {
        let faults =
            Faults { fail_every: Some(3), fail_status: 500, retry_after: Some("2".into()), ..Faults::default() };
        let (mut s, now) = state(faults.clone());
        let got: Vec<_> = (0..7).map(|_| status(&s.decide_at(now))).collect();
        assert_eq!(got, [None, None, Some(500), None, None, Some(500), None]);
        let d = {
            let (mut s, now) = state(faults);
            s.decide_at(now);
            s.decide_at(now);
            s.decide_at(now)
        };
        assert_eq!(
            d.injected,
            Some(Injected::Status(StatusCode::INTERNAL_SERVER_ERROR, Some(HeaderValue::from_static("2"))))
        );
    }

    #[test]
    fn close_every_wins_over_fail_every() {
        let (mut s, now) = state(Faults { fail_every: Some(2), close_every: Some(4), ..Faults::default() });
        let got: Vec<_> = (0..8).map(|_| status(&s.decide_at(now))).collect();
        assert_eq!(got, [None, Some(503), None, Some(0), None, Some(503), None, Some(0)]);
    }

    #[test]
    fn fail_for_ms_is_a_window_from_when_set() {
        let (mut s, t0) = state(Faults { fail_for_ms: Some(100), ..Faults::default() });
        assert_eq!(status(&s.decide_at(t0)), Some(503));
        assert_eq!(status(&s.decide_at(t0 + Duration::from_millis(99))), Some(503));
        assert_eq!(status(&s.decide_at(t0 + Duration::from_millis(100))), None);
        assert_eq!(status(&s.decide_at(t0 + Duration::from_secs(5))), None);
    }

    #[test]
    fn rate_limit_per_one_second_window() {
        let (mut s, t0) = state(Faults { rate_limit: Some(2), ..Faults::default() });
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(status(&s.decide_at(at(0))), None);
        assert_eq!(status(&s.decide_at(at(10))), None);
        let third = s.decide_at(at(20));
        assert_eq!(
            third.injected,
            Some(Injected::Status(StatusCode::TOO_MANY_REQUESTS, Some(HeaderValue::from_static("1"))))
        );
        assert_eq!(status(&s.decide_at(at(999))), Some(429));
        // A new window starts with the first request at least 1 s after the last one started.
        assert_eq!(status(&s.decide_at(at(1000))), None);
        assert_eq!(status(&s.decide_at(at(1500))), None);
        assert_eq!(status(&s.decide_at(at(1600))), Some(429));
        assert_eq!(status(&s.decide_at(at(2100))), None);

        let (mut s, t0) = state(Faults { rate_limit: Some(0), retry_after: Some("9".into()), ..Faults::default() });
        assert_eq!(
            s.decide_at(t0).injected,
            Some(Injected::Status(StatusCode::TOO_MANY_REQUESTS, Some(HeaderValue::from_static("9"))))
        );
    }

    #[test]
    fn the_windows_follow_the_injected_clock_and_restart_when_replaced() {
        let (clock, time) = FaultClock::manual();
        let mut s = FaultState::new(Faults { fail_for_ms: Some(100), ..Faults::default() }, clock).expect("valid");
        assert_eq!(status(&s.decide()), Some(503));
        time.advance(Duration::from_millis(99));
        assert_eq!(status(&s.decide()), Some(503), "the clock, not real time, says when the outage ends");
        time.advance(Duration::from_millis(1));
        assert_eq!(status(&s.decide()), None);
        s.replace(Faults { rate_limit: Some(1), ..Faults::default() }).expect("valid");
        assert_eq!(status(&s.decide()), None);
        assert_eq!(status(&s.decide()), Some(429));
        assert!(s.replace(Faults { fail_every: Some(0), ..Faults::default() }).is_err());
        assert_eq!(status(&s.decide()), Some(429), "a refused value changes nothing");
        time.advance(Duration::from_secs(1));
        assert_eq!(status(&s.decide()), None, "a new window");
        s.clear();
        assert!(!s.faults().is_active());
    }

    #[test]
    fn latency_applies_to_every_request() {
        let (mut s, now) = state(Faults { latency_ms: Some(30), fail_every: Some(2), ..Faults::default() });
        for _ in 0..4 {
            assert_eq!(s.decide_at(now).latency, Duration::from_millis(30));
        }
    }

    #[test]
    fn an_echoing_failure_carries_the_request_headers_first() {
        let (mut s, now) =
            state(Faults { fail_every: Some(1), fail_status: 400, echo_request: true, ..Faults::default() });
        let headers = vec![("authorization".to_owned(), "Bearer s3".to_owned())];
        let request = BackendRequest::new("POST", "/events", b"[{\"a\":\"x\ny\"}]").with_headers(&headers);
        let reply = s.decide_at(now).reply(&request).expect("a failure");
        let body = String::from_utf8(reply.body_bytes().to_vec()).expect("utf-8");
        assert!(!body.contains('\n'), "one line: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(json["headers"], serde_json::json!([["authorization", "Bearer s3"]]));
        assert_eq!(json["body"], "[{\"a\":\"x\ny\"}]");
        assert!(body.find("Bearer s3") < body.find("\"body\""), "headers before the body: {body}");
        let (mut s, now) = state(Faults { fail_every: Some(1), ..Faults::default() });
        assert!(s.decide_at(now).reply(&request).expect("a failure").body_bytes().is_empty());
    }

    #[test]
    fn validation_and_json() {
        assert!(Faults { fail_every: Some(0), ..Faults::default() }.validate().is_err());
        assert!(Faults { close_every: Some(0), ..Faults::default() }.validate().is_err());
        assert!(Faults { fail_status: 1000, ..Faults::default() }.validate().is_err());
        assert!(Faults { retry_after: Some("a\nb".into()), ..Faults::default() }.validate().is_err());
        assert!(FaultState::new(Faults { fail_status: 42, ..Faults::default() }, FaultClock::system()).is_err());
        assert!(Faults::default().validate().is_ok());

        let parsed: Faults = serde_json::from_str("{}").expect("empty object");
        assert_eq!(parsed, Faults::default());
        assert!(serde_json::from_str::<Faults>(r#"{"fail_evry": 2}"#).is_err());
        let full = Faults {
            fail_every: Some(2),
            fail_status: 429,
            fail_for_ms: Some(5),
            retry_after: Some("1".into()),
            latency_ms: Some(3),
            close_every: Some(7),
            rate_limit: Some(10),
            echo_request: true,
        };
        let json = serde_json::to_string(&full).expect("serialize");
        assert_eq!(serde_json::from_str::<Faults>(&json).expect("round trip"), full);
    }
}

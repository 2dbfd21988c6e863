//! Destination health: one state machine per destination (healthy, failing, unreachable,
//! misconfigured, stopped) that the worker drives from the answers it gets, logs once per change
//! of state, and publishes in [`Stats`](crate::Stats).
//!
//! ```text
//! healthy ──(FAILING_AFTER whole requests fail in a row)──▶ failing ──(only "nothing was sent" for UNREACHABLE_AFTER)──▶ unreachable
//! unreachable ──(any other failure)──▶ failing
//! any state ──(the destination classifies an answer as misconfiguration)──▶ misconfigured
//! failing, unreachable, misconfigured ──(an answer that works)──▶ healthy
//! any state ──(STOP_AFTER_PANICS panics in a row on single events)──▶ stopped (until the next build)
//! ```
//!
//! One failed request among many that work (a 503 now and then) leaves it healthy: its events are
//! retried after their own backoff while the rest keep going at full concurrency. In every state
//! but healthy the lane sends one request at a time; misconfigured sends nothing
//! until its probe is due (a growing interval), and stopped sends nothing at all. Events are held
//! (pending), never dead-lettered for the destination's fault.

use std::any::Any;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use trackway_wire::Timestamp;

use crate::destination::{Response, TransportError, TransportErrorKind};
use crate::pipeline::backoff::backoff_ceiling;

/// A destination that failed with nothing but "nothing was sent" errors for this long shows as
/// [`HealthState::Unreachable`].
pub const UNREACHABLE_AFTER: Duration = Duration::from_secs(5 * 60);

/// A misconfigured destination's first probe goes this long after the answer that said so; each
/// further misconfigured answer doubles the wait, up to [`MISCONFIGURED_PROBE_MAX`].
pub const MISCONFIGURED_PROBE_FIRST: Duration = Duration::from_secs(5);

/// The longest wait between two probes of a misconfigured destination.
pub const MISCONFIGURED_PROBE_MAX: Duration = Duration::from_secs(5 * 60);

/// A healthy destination becomes [`HealthState::Failing`] after this many whole requests failed in
/// a row (with no request that worked in between). One failure alone says little: with several
/// requests in flight, an occasional 503 must not drop a busy destination to one request at a time.
pub const FAILING_AFTER: u32 = 3;

/// A destination whose code panicked on this many single events in a row is stopped.
pub const STOP_AFTER_PANICS: u32 = 3;

/// Where a destination stands, from [`DestinationStats::health`](crate::DestinationStats::health).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HealthState {
    /// Requests work (or none was sent yet).
    #[default]
    Healthy,
    /// Whole requests fail (5xx, 429, timeouts, refused connections), [`FAILING_AFTER`] in a row:
    /// retried with backoff, one request at a time.
    Failing,
    /// Only "nothing was sent" errors (DNS, refused, TLS, connect timeout) for
    /// [`UNREACHABLE_AFTER`]: the server cannot be reached at all. Still retried.
    Unreachable,
    /// The server says the configuration is wrong (bad credentials, unknown website or project,
    /// wrong endpoint): events are held and the destination is probed at a growing interval
    /// ([`MISCONFIGURED_PROBE_FIRST`] doubling to [`MISCONFIGURED_PROBE_MAX`]) until it answers.
    Misconfigured,
    /// The destination's code panicked ([`STOP_AFTER_PANICS`] single events in a row), the
    /// worker itself stopped, or a run-time destination could not be re-created at `build()`
    /// (no factory for its kind): nothing more is sent until the client is built again; its
    /// events stay pending in the store.
    Stopped,
}

impl fmt::Display for HealthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HealthState::Healthy => "healthy",
            HealthState::Failing => "failing",
            HealthState::Unreachable => "unreachable",
            HealthState::Misconfigured => "misconfigured",
            HealthState::Stopped => "stopped",
        })
    }
}

/// A destination's health: its state, since when, and the last error it saw.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// The current state.
    pub state: HealthState,
    /// When the destination entered it (the client's start for a destination that was always
    /// healthy).
    pub since: Timestamp,
    /// The last failure, kept after a recovery (`None` if there was none).
    pub last_error: Option<LastError>,
}

impl Default for Health {
    fn default() -> Self {
        Health { state: HealthState::Healthy, since: Timestamp::from_unix_millis(0), last_error: None }
    }
}

impl Health {
    /// Healthy since `since`.
    pub(crate) fn healthy_since(since: Timestamp) -> Self {
        Health { since, ..Health::default() }
    }

    /// Stopped since `since`: a run-time destination that could not be re-created.
    pub(crate) fn unavailable(reason: &str, since: Timestamp) -> Self {
        Health {
            state: HealthState::Stopped,
            since,
            last_error: Some(LastError::unavailable(reason.to_owned(), since)),
        }
    }
}

/// What kind of failure a [`LastError`] was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LastErrorKind {
    /// No answer, and the request never left (DNS, refused, TLS, connect timeout).
    NotSent,
    /// No answer, and the server may have the request (timeout, reset, connection closed).
    MaybeSent,
    /// The server answered with a status that failed the request.
    Status,
    /// The server's answer said the configuration is wrong.
    Misconfigured,
    /// The destination's code panicked (or the worker did).
    Panicked,
    /// A run-time destination the store holds events for could not be re-created at
    /// `build()` (no factory registered for its kind, or the factory failed).
    Unavailable,
}

/// The last failure of a destination, for people ([`Display`](fmt::Display)) and programs (the
/// fields).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LastError {
    /// What kind of failure.
    pub kind: LastErrorKind,
    /// The HTTP status, when the server answered.
    pub status: Option<u16>,
    /// What happened, e.g. `could not connect: Connection refused (os error 111) to 127.0.0.1:9`
    /// or `503 Service Unavailable: <first line of the body>`. Never carries a URL's credentials
    /// or path.
    pub message: String,
    /// When it happened.
    pub at: Timestamp,
}

impl fmt::Display for LastError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl LastError {
    /// A request that got no answer (its message names the host and port only).
    pub(crate) fn transport(error: &TransportError, at: Timestamp) -> Self {
        let kind = match error.kind() {
            TransportErrorKind::NotSent => LastErrorKind::NotSent,
            _ => LastErrorKind::MaybeSent,
        };
        LastError { kind, status: None, message: error.message().to_owned(), at }
    }

    /// A status that failed the request.
    pub(crate) fn answer(response: &Response, at: Timestamp) -> Self {
        LastError {
            kind: LastErrorKind::Status,
            status: Some(response.status.as_u16()),
            message: crate::destination::status_and_first_line(response),
            at,
        }
    }

    /// An answer the destination classified as a configuration error, with its reason.
    pub(crate) fn misconfigured(response: Option<&Response>, reason: String, at: Timestamp) -> Self {
        LastError {
            kind: LastErrorKind::Misconfigured,
            status: response.map(|r| r.status.as_u16()),
            message: reason,
            at,
        }
    }

    /// A run-time destination could not be re-created, because of `reason`.
    pub(crate) fn unavailable(reason: String, at: Timestamp) -> Self {
        LastError { kind: LastErrorKind::Unavailable, status: None, message: reason, at }
    }

    /// Destination code (`what`: encode, classify, …) panicked with `message`.
    pub(crate) fn panicked(what: &str, message: &str, at: Timestamp) -> Self {
        LastError { kind: LastErrorKind::Panicked, status: None, message: format!("{what} panicked: {message}"), at }
    }
}

/// Runs destination code, turning a panic into its message: a destination's bug must not take
/// the worker (and every other destination) down with it.
pub(crate) fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|payload| panic_message(&*payload))
}

/// The text of a panic payload (`panic!("...")` gives a `&str` or a `String`).
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// One destination's health as the worker tracks it. Every change of state is logged here, once.
#[derive(Debug)]
pub(crate) struct Tracker {
    name: String,
    health: Health,
    /// The published copy is stale.
    dirty: bool,
    /// Clock time (elapsed) of the first failure of the current run of "nothing was sent"
    /// failures; `None` after anything else.
    not_sent_since: Option<Duration>,
    /// Clock time (elapsed) when it became misconfigured: answers to requests sent before that
    /// say nothing new and do not lengthen the probe interval.
    misconfigured_at: Duration,
    /// Misconfigured answers to probes so far (sets the probe interval).
    probes: u32,
    /// Panics on single events since the last request classified without a panic.
    single_panics: u32,
    /// Whole requests failed since the last one that worked.
    failed_in_a_row: u32,
}

impl Tracker {
    pub(crate) fn new(name: &str, since: Timestamp) -> Self {
        Tracker {
            name: name.to_owned(),
            health: Health::healthy_since(since),
            dirty: false,
            not_sent_since: None,
            misconfigured_at: Duration::ZERO,
            probes: 0,
            single_panics: 0,
            failed_in_a_row: 0,
        }
    }

    pub(crate) fn state(&self) -> HealthState {
        self.health.state
    }

    /// The health to publish, if it changed since the last call.
    pub(crate) fn take_changed(&mut self) -> Option<Health> {
        std::mem::take(&mut self.dirty).then(|| self.health.clone())
    }

    fn enter(&mut self, state: HealthState, at: Timestamp) {
        self.health.state = state;
        self.health.since = at;
        self.dirty = true;
    }

    fn record(&mut self, error: LastError) {
        self.health.last_error = Some(error);
        self.dirty = true;
    }

    /// A request the server answered usefully (something delivered or rejected for its content).
    pub(crate) fn worked(&mut self, at: Timestamp) {
        self.not_sent_since = None;
        self.probes = 0;
        self.single_panics = 0;
        self.failed_in_a_row = 0;
        let name = &self.name;
        match self.health.state {
            HealthState::Healthy | HealthState::Stopped => return,
            HealthState::Misconfigured => {
                tracing::info!(
                    destination = name.as_str(),
                    "trackway: destination answers again; delivering its held events"
                );
            }
            HealthState::Failing | HealthState::Unreachable => {
                tracing::info!(destination = name.as_str(), "trackway: destination recovered");
            }
        }
        self.enter(HealthState::Healthy, at);
    }

    /// A whole request failed (no answer, or an answer that failed every event) at clock time
    /// `now`. The [`FAILING_AFTER`]th failure in a row, and the run of "nothing was sent" errors
    /// reaching [`UNREACHABLE_AFTER`], change the state; the error is recorded either way.
    pub(crate) fn failed(&mut self, error: LastError, now: Duration) {
        let at = error.at;
        self.failed_in_a_row = self.failed_in_a_row.saturating_add(1);
        let not_sent = error.kind == LastErrorKind::NotSent;
        if not_sent {
            self.not_sent_since.get_or_insert(now);
        } else {
            self.not_sent_since = None;
        }
        let name = &self.name;
        match self.health.state {
            // Still misconfigured until an answer works; stopped stays stopped.
            HealthState::Misconfigured | HealthState::Stopped => {}
            // A failure among requests that work: retried with its own backoff, still healthy.
            HealthState::Healthy if self.failed_in_a_row < FAILING_AFTER => {}
            HealthState::Healthy => {
                tracing::warn!(destination = name.as_str(), error = %error,
                    "trackway: destination failing; retrying with backoff, one request at a time (logged once until it recovers)");
                self.enter(HealthState::Failing, at);
            }
            HealthState::Failing => {
                if self.not_sent_since.is_some_and(|t| now.saturating_sub(t) >= UNREACHABLE_AFTER) {
                    tracing::warn!(destination = name.as_str(), error = %error,
                        "trackway: destination unreachable: nothing could be sent for {UNREACHABLE_AFTER:?}; its events are held and retried");
                    self.enter(HealthState::Unreachable, at);
                }
            }
            HealthState::Unreachable => {
                if !not_sent {
                    tracing::info!(destination = name.as_str(), error = %error,
                        "trackway: destination reachable again, still failing");
                    self.enter(HealthState::Failing, at);
                }
            }
        }
        self.record(error);
    }

    /// The destination classified an answer as misconfiguration, for a request sent at clock
    /// time `sent_at`; returns how long to hold everything before the next probe.
    pub(crate) fn misconfigured(&mut self, error: LastError, sent_at: Duration, now: Duration) -> Duration {
        self.not_sent_since = None;
        let name = &self.name;
        match self.health.state {
            HealthState::Stopped => {}
            HealthState::Misconfigured => {
                // Requests that were in flight when it was first seen say nothing new.
                if sent_at >= self.misconfigured_at {
                    self.probes += 1;
                }
            }
            _ => {
                tracing::error!(destination = name.as_str(), answer = %error,
                    "trackway: destination misconfigured (the server's answer says so): fix its configuration. Its events are held, \
                     not dead-lettered, and it is probed every {MISCONFIGURED_PROBE_FIRST:?} (doubling up to {MISCONFIGURED_PROBE_MAX:?}) until an answer works");
                self.enter(HealthState::Misconfigured, error.at);
                self.misconfigured_at = now;
                self.probes = 1;
            }
        }
        self.record(error);
        backoff_ceiling(MISCONFIGURED_PROBE_FIRST, MISCONFIGURED_PROBE_MAX, self.probes)
    }

    /// Destination code panicked, on a single event (`alone`) or a batch it will be split from.
    /// Returns true when this stops the destination.
    pub(crate) fn panicked(&mut self, error: LastError, alone: bool) -> bool {
        let name = &self.name;
        let stops = alone && self.health.state != HealthState::Stopped && {
            self.single_panics += 1;
            self.single_panics >= STOP_AFTER_PANICS
        };
        if stops {
            tracing::error!(destination = name.as_str(), error = %error,
                "trackway: destination stopped: its code panicked on {STOP_AFTER_PANICS} events in a row; \
                 its events are held in the store until the client is built again");
            self.enter(HealthState::Stopped, error.at);
        }
        self.record(error);
        stops
    }

    /// The destination could not be made (a run-time destination without its factory): stopped
    /// from the start, its events held, logged once.
    pub(crate) fn unavailable(&mut self, reason: String, at: Timestamp) {
        tracing::error!(destination = self.name.as_str(), reason = %reason,
            "trackway: run-time destination not re-created; its pending events are held and counted");
        self.enter(HealthState::Stopped, at);
        self.record(LastError::unavailable(reason, at));
    }

    /// A request was classified without a panic: the destination's code works.
    pub(crate) fn classified(&mut self) {
        self.single_panics = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn at(d: Duration) -> Timestamp {
        Timestamp::from_unix_millis(i64::try_from(d.as_millis()).expect("small"))
    }

    fn error(kind: LastErrorKind, d: Duration) -> LastError {
        LastError { kind, status: None, message: format!("{kind:?}"), at: at(d) }
    }

    #[test]
    fn refused_for_five_minutes_is_unreachable_and_a_503_is_merely_failing() {
        let mut t = Tracker::new("a", at(Duration::ZERO));
        for n in 1..=FAILING_AFTER {
            t.failed(error(LastErrorKind::NotSent, MIN), MIN);
            let expected = if n < FAILING_AFTER { HealthState::Healthy } else { HealthState::Failing };
            assert_eq!(t.state(), expected, "after {n} failures in a row");
        }
        assert_eq!(t.take_changed().map(|h| h.since), Some(at(MIN)));
        t.failed(error(LastErrorKind::NotSent, 5 * MIN), 5 * MIN);
        assert_eq!(t.state(), HealthState::Failing, "4 minutes of refusals");
        t.failed(error(LastErrorKind::NotSent, 6 * MIN), 6 * MIN);
        assert_eq!(t.state(), HealthState::Unreachable);
        t.failed(error(LastErrorKind::Status, 7 * MIN), 7 * MIN);
        assert_eq!(t.state(), HealthState::Failing, "the server answers: reachable");
        // A new run of refusals counts from its own start.
        t.failed(error(LastErrorKind::NotSent, 8 * MIN), 8 * MIN);
        t.failed(error(LastErrorKind::NotSent, 12 * MIN), 12 * MIN);
        assert_eq!(t.state(), HealthState::Failing);
        t.failed(error(LastErrorKind::NotSent, 13 * MIN), 13 * MIN);
        assert_eq!(t.state(), HealthState::Unreachable);
        t.worked(at(14 * MIN));
        let h = t.take_changed().expect("changed");
        assert_eq!((h.state, h.since), (HealthState::Healthy, at(14 * MIN)));
        assert_eq!(h.last_error.map(|e| e.kind), Some(LastErrorKind::NotSent), "the last error is kept");
    }

    #[test]
    fn failures_among_requests_that_work_leave_it_healthy_with_the_error_recorded() {
        let mut t = Tracker::new("a", at(Duration::ZERO));
        for m in 1..50 {
            for _ in 1..FAILING_AFTER {
                t.failed(error(LastErrorKind::Status, m * MIN), m * MIN);
            }
            t.worked(at(m * MIN));
        }
        assert_eq!(t.state(), HealthState::Healthy);
        assert_eq!(t.health.last_error.as_ref().map(|e| e.kind), Some(LastErrorKind::Status), "still reported");
        // Then they fail in a row.
        for _ in 0..FAILING_AFTER {
            t.failed(error(LastErrorKind::Status, 60 * MIN), 60 * MIN);
        }
        assert_eq!(t.state(), HealthState::Failing);
    }

    #[test]
    fn maybe_sent_errors_never_make_it_unreachable() {
        let mut t = Tracker::new("a", at(Duration::ZERO));
        for m in 1..20 {
            t.failed(error(LastErrorKind::MaybeSent, m * MIN), m * MIN);
        }
        assert_eq!(t.state(), HealthState::Failing);
    }

    #[test]
    fn misconfigured_probes_at_a_doubling_interval_and_in_flight_answers_do_not_count() {
        let mut t = Tracker::new("a", at(Duration::ZERO));
        let s = Duration::from_secs(1);
        assert_eq!(
            t.misconfigured(error(LastErrorKind::Misconfigured, s), Duration::ZERO, s),
            MISCONFIGURED_PROBE_FIRST
        );
        // Three more requests were in flight when the first answer came.
        for _ in 0..3 {
            assert_eq!(
                t.misconfigured(error(LastErrorKind::Misconfigured, s), Duration::ZERO, s),
                MISCONFIGURED_PROBE_FIRST
            );
        }
        assert_eq!(
            t.misconfigured(error(LastErrorKind::Misconfigured, 6 * s), 6 * s, 6 * s),
            2 * MISCONFIGURED_PROBE_FIRST
        );
        assert_eq!(
            t.misconfigured(error(LastErrorKind::Misconfigured, 20 * s), 20 * s, 20 * s),
            4 * MISCONFIGURED_PROBE_FIRST
        );
        for _ in 0..20 {
            t.misconfigured(error(LastErrorKind::Misconfigured, 20 * s), 20 * s, 20 * s);
        }
        assert_eq!(
            t.misconfigured(error(LastErrorKind::Misconfigured, 30 * s), 30 * s, 30 * s),
            MISCONFIGURED_PROBE_MAX
        );
        // A 503 meanwhile does not make it "failing": the configuration is still wrong.
        t.failed(error(LastErrorKind::Status, 40 * s), 40 * s);
        assert_eq!(t.state(), HealthState::Misconfigured);
        assert_eq!(t.health.since, at(s), "since the first misconfigured answer");
        t.worked(at(50 * s));
        assert_eq!(t.state(), HealthState::Healthy);
        assert_eq!(
            t.misconfigured(error(LastErrorKind::Misconfigured, 60 * s), 60 * s, 60 * s),
            MISCONFIGURED_PROBE_FIRST,
            "a new episode starts over"
        );
    }

    #[test]
    fn three_single_event_panics_in_a_row_stop_it_a_working_request_resets_the_count() {
        let mut t = Tracker::new("a", at(Duration::ZERO));
        let p = |d| error(LastErrorKind::Panicked, d);
        assert!(!t.panicked(p(MIN), true));
        assert!(!t.panicked(p(MIN), false), "a batch panicking is split, not counted");
        assert!(!t.panicked(p(MIN), true));
        t.classified();
        assert!(!t.panicked(p(MIN), true));
        assert!(!t.panicked(p(MIN), true));
        assert!(t.panicked(p(2 * MIN), true));
        assert_eq!(t.state(), HealthState::Stopped);
        t.worked(at(3 * MIN));
        t.failed(error(LastErrorKind::NotSent, 3 * MIN), 3 * MIN);
        assert_eq!(t.state(), HealthState::Stopped, "stopped until the client is built again");
        assert_eq!(t.health.since, at(2 * MIN));
    }

    #[test]
    fn panic_messages() {
        let message = catch(|| -> u8 { panic!("boom {}", 1) }).expect_err("panics");
        assert_eq!(message, "boom 1");
        assert_eq!(catch(|| -> u8 { std::panic::panic_any(7u8) }).expect_err("panics"), "a panic without a message");
    }
}

//! The session state machine: when a return to the app continues a session and when it ends the
//! old one and starts a new one. Pure functions over the stored state, so every rule is tested
//! without a client.

use serde::{Deserialize, Serialize};
use trackway_wire::Timestamp;

/// An open session, persisted under the `session` state key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionState {
    /// The session id carried by every event of the session.
    pub(crate) id: String,
    /// When it started (Unix ms).
    pub(crate) start: i64,
    /// The last moment the app was known to be in use (Unix ms): the latest foreground event,
    /// or when it went to the background. A session left open by a crash ends here.
    pub(crate) last_seen: i64,
    /// The app is in the background (since `last_seen`): its events no longer extend the session.
    #[serde(default)]
    pub(crate) background: bool,
}

impl SessionState {
    /// A session starting at `at`.
    pub(crate) fn start(at: Timestamp) -> Self {
        SessionState {
            id: trackway_wire::MessageId::new_v7(at).to_string(),
            start: at.unix_millis(),
            last_seen: at.unix_millis(),
            background: false,
        }
    }

    /// Whether the app has been away (or idle) for `timeout_ms` or longer at `now`.
    pub(crate) fn timed_out(&self, now: i64, timeout_ms: i64) -> bool {
        now.saturating_sub(self.last_seen) >= timeout_ms
    }

    /// When the session ends if it is closed at `now`: then, unless it timed out, in which case
    /// at its last-seen time, so its `duration` never counts time nobody used the app.
    pub(crate) fn end_at(&self, now: i64, timeout_ms: i64) -> i64 {
        if self.timed_out(now, timeout_ms) { self.last_seen } else { now }
    }

    /// The app was seen at `at`, in the foreground or going to the background.
    pub(crate) fn seen(&mut self, at: i64, background: bool) {
        self.background = background;
        self.last_seen = self.last_seen.max(at);
    }

    /// How long the session lasted if it ends at `end`, in seconds (never negative).
    pub(crate) fn duration_until(&self, end: i64) -> f64 {
        (end.saturating_sub(self.start)).max(0) as f64 / 1000.0
    }
}

/// What coming to the foreground does to the stored session.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum OnForeground {
    /// No session: start one now.
    Start,
    /// The session goes on (the app came back within the timeout, or is already in front).
    Continue,
    /// The app was away for the timeout or longer: end the old session at its last-seen time,
    /// then start a new one now.
    EndAndStart {
        /// The old session's end (its last-seen time, Unix ms).
        end_at: i64,
    },
}

/// Decides what coming to the foreground at `now` does.
///
/// `in_front_here` says the app is already in the foreground *in this process* (a repeated
/// foreground call): the session goes on however long the user idled. Otherwise the stored
/// session is judged by its last-seen time, whether the app went to the background or the
/// process was killed in the foreground: a return within `timeout_ms` continues it, a later one
/// ends it at the last-seen time. (Android never ends a session killed in the foreground; iOS
/// ends it at relaunch time, counting the time the app was dead as session time. Both are wrong.)
pub(crate) fn on_foreground(
    session: Option<&SessionState>,
    now: i64,
    timeout_ms: i64,
    in_front_here: bool,
) -> OnForeground {
    match session {
        None => OnForeground::Start,
        Some(_) if in_front_here => OnForeground::Continue,
        Some(s) if s.timed_out(now, timeout_ms) => OnForeground::EndAndStart { end_at: s.last_seen },
        Some(_) => OnForeground::Continue,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(start: i64, last_seen: i64, background: bool) -> SessionState {
        SessionState { id: "s".into(), start, last_seen, background }
    }

    #[test]
    fn no_session_starts_one() {
        assert_eq!(on_foreground(None, 1_000, 60_000, false), OnForeground::Start);
    }

    #[test]
    fn a_return_within_the_timeout_continues() {
        let s = session(0, 10_000, true);
        assert_eq!(on_foreground(Some(&s), 69_999, 60_000, false), OnForeground::Continue);
    }

    #[test]
    fn a_return_at_the_timeout_ends_at_last_seen() {
        let s = session(0, 10_000, true);
        assert_eq!(on_foreground(Some(&s), 70_000, 60_000, false), OnForeground::EndAndStart { end_at: 10_000 });
    }

    #[test]
    fn a_session_killed_in_the_foreground_ends_at_its_last_seen_time() {
        let s = session(0, 42_000, false);
        assert_eq!(on_foreground(Some(&s), 500_000, 60_000, false), OnForeground::EndAndStart { end_at: 42_000 });
    }

    #[test]
    fn a_repeated_foreground_call_never_ends_the_session() {
        let s = session(0, 0, false);
        assert_eq!(on_foreground(Some(&s), 10_000_000, 60_000, true), OnForeground::Continue);
    }

    #[test]
    fn a_session_closed_after_the_timeout_ends_at_last_seen_otherwise_now() {
        let s = session(0, 10_000, false);
        assert_eq!(s.end_at(69_999, 60_000), 69_999);
        assert_eq!(s.end_at(70_000, 60_000), 10_000);
    }

    #[test]
    fn duration_is_in_seconds_and_never_negative() {
        let s = session(1_000, 1_000, false);
        assert!((s.duration_until(2_500) - 1.5).abs() < 1e-9);
        assert!(s.duration_until(0).abs() < 1e-9);
    }
}

//! App mode: the state every destination shares for an app with one current user (identity,
//! session, push token, installation flag, consent, the destinations in use), persisted in the
//! store and committed together with the events it causes.
//!
//! The calls live in [`calls`] (`app_foreground`, `anonymize`, `track_push_token`, …); the rules
//! in [`session`] and [`push`] are pure functions.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::store::StateChange;

mod calls;
mod payment;
mod push;
mod session;
mod timer;

pub use calls::Anonymize;
pub use payment::Payment;
pub(crate) use push::PushState;
pub use push::{PushPlatform, PushToken, TokenFrequency};
pub(crate) use session::SessionState;
pub(crate) use timer::SessionTimer;

/// State keys (apart from the caller's checkpoints and the destinations' state).
pub(crate) const IDENTITY_KEY: &str = "identity";
const SESSION_KEY: &str = "session";
const PUSH_KEY: &str = "push";
const INSTALLED_KEY: &str = "installed";
pub(crate) const CONSENT_KEY: &str = "consent";
const ROUTES_KEY: &str = "app_destinations";
const MAPPING_KEY: &str = "app_mapping";
pub(crate) const DEFAULTS_KEY: &str = "default_properties";
const DEVICE_KEY: &str = "device_id";

/// What an app does automatically: the `installation` event on the first run and sessions that
/// follow the app's foreground and background ([`ClientBuilder::app_lifecycle`]).
///
/// Without it a client tracks neither, and sessions are manual ([`Client::session_start`],
/// [`Client::session_end`]): the right thing for a server.
///
/// [`ClientBuilder::app_lifecycle`]: crate::ClientBuilder::app_lifecycle
/// [`Client::session_start`]: crate::Client::session_start
/// [`Client::session_end`]: crate::Client::session_end
///
/// ```
/// use std::time::Duration;
/// use trackway::{AppLifecycle, TokenFrequency};
/// let lifecycle = AppLifecycle::default()
///     .session_timeout(Duration::from_secs(30))
///     .push_token_frequency(TokenFrequency::Daily);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct AppLifecycle {
    pub(crate) installation: bool,
    pub(crate) automatic_sessions: bool,
    pub(crate) session_timeout: Duration,
    pub(crate) token_frequency: TokenFrequency,
    pub(crate) require_push_permission: bool,
}

impl Default for AppLifecycle {
    /// `installation` on the first run, automatic sessions with a 60 s timeout, push tokens
    /// tracked on change, permission not required.
    fn default() -> Self {
        AppLifecycle {
            installation: true,
            automatic_sessions: true,
            session_timeout: crate::policy::SESSION_TIMEOUT,
            token_frequency: TokenFrequency::OnChange,
            require_push_permission: false,
        }
    }
}

impl AppLifecycle {
    /// The lifecycle of a server: no `installation`, manual sessions (what a client without
    /// [`ClientBuilder::app_lifecycle`](crate::ClientBuilder::app_lifecycle) does).
    pub fn server() -> Self {
        AppLifecycle { installation: false, automatic_sessions: false, ..AppLifecycle::default() }
    }

    /// Whether `installation` is tracked on the first run (and after `anonymize`).
    pub fn installation(mut self, on: bool) -> Self {
        self.installation = on;
        self
    }

    /// Manual sessions: [`Client::session_start`](crate::Client::session_start) and
    /// [`Client::session_end`](crate::Client::session_end) instead of foreground and background.
    pub fn manual_sessions(mut self) -> Self {
        self.automatic_sessions = false;
        self
    }

    /// How long the app may stay away and still continue its session (default 60 s).
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = timeout;
        self
    }

    /// How often an unchanged push token is tracked again.
    pub fn push_token_frequency(mut self, frequency: TokenFrequency) -> Self {
        self.token_frequency = frequency;
        self
    }

    /// Sends tokens without notification permission as not valid (default: false, as Android).
    pub fn require_push_permission(mut self, required: bool) -> Self {
        self.require_push_permission = required;
        self
    }

    /// The session timeout in milliseconds, as the session rules compare it.
    pub(crate) fn timeout_ms(&self) -> i64 {
        i64::try_from(self.session_timeout.as_millis()).unwrap_or(i64::MAX)
    }

    /// The lifecycle a client has when none is configured.
    pub(crate) fn none() -> Self {
        AppLifecycle::server()
    }
}

/// The app-mode current user, persisted under [`IDENTITY_KEY`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct AppIdentity {
    pub(crate) anonymous_id: Option<String>,
    pub(crate) user_id: Option<String>,
    pub(crate) primary: Option<String>,
    #[serde(default)]
    pub(crate) ids: BTreeMap<String, String>,
}

/// Everything app mode keeps, one field per state key.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct AppState {
    pub(crate) identity: AppIdentity,
    pub(crate) session: Option<SessionState>,
    pub(crate) push: Option<PushState>,
    pub(crate) installed: bool,
    /// The destinations app-mode events go to (by name), when `anonymize` chose a subset.
    pub(crate) destinations: Option<Vec<String>>,
    /// Extra destinations per event type for app-mode events (Bloomreach's project mapping), as
    /// `anonymize` set it; empty when none.
    pub(crate) mapping: BTreeMap<crate::destination::EventType, Vec<String>>,
    /// The install's device id (Bloomreach's `device_id`): made once, kept across `anonymize`.
    pub(crate) device_id: Option<String>,
    /// The identity was made in this run and is not in the store yet: it is written with the
    /// first app-mode event or state change (a server-mode client never writes one).
    pub(crate) unsaved: bool,
}

impl AppState {
    /// Reads the state a store recovered (a value that does not parse counts as absent).
    pub(crate) fn recover(state: &BTreeMap<String, Vec<u8>>) -> Self {
        AppState {
            identity: read(state, IDENTITY_KEY).unwrap_or_default(),
            session: read(state, SESSION_KEY),
            push: read(state, PUSH_KEY),
            installed: read(state, INSTALLED_KEY).unwrap_or(false),
            destinations: read(state, ROUTES_KEY),
            mapping: read(state, MAPPING_KEY).unwrap_or_default(),
            device_id: read(state, DEVICE_KEY),
            unsaved: false,
        }
    }

    /// The state changes that turn `self` into `next` (only the keys that differ, and the
    /// identity if it was never saved). Marks `next` saved.
    pub(crate) fn changes_to(&self, next: &mut AppState) -> Vec<StateChange> {
        let mut out = Vec::new();
        if self.device_id != next.device_id || (self.unsaved && next.device_id.is_some()) {
            out.push(write(DEVICE_KEY, next.device_id.as_ref()));
        }
        if self.identity != next.identity || self.unsaved {
            next.unsaved = false;
            out.push(write(IDENTITY_KEY, Some(&next.identity)));
        }
        if self.session != next.session {
            out.push(write(SESSION_KEY, next.session.as_ref()));
        }
        if self.push != next.push {
            out.push(write(PUSH_KEY, next.push.as_ref()));
        }
        if self.installed != next.installed {
            out.push(write(INSTALLED_KEY, Some(&next.installed)));
        }
        if self.destinations != next.destinations {
            out.push(write(ROUTES_KEY, next.destinations.as_ref()));
        }
        if self.mapping != next.mapping {
            out.push(write(MAPPING_KEY, (!next.mapping.is_empty()).then_some(&next.mapping)));
        }
        out
    }
}

/// What only this process knows about the app (never persisted).
#[derive(Debug, Default)]
pub(crate) struct Launch {
    /// The app is in the foreground in this process (a repeated foreground call changes nothing).
    pub(crate) in_front: bool,
    /// A push token was tracked in this process run (`TokenFrequency::EveryLaunch`).
    pub(crate) token_tracked: bool,
}

/// A new anonymous id: a random, lowercase UUID (Bloomreach's `cookie`).
pub(crate) fn new_anonymous_id() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string()
}

/// The destinations app-mode events of type `t` may go to: those `anonymize` chose (every
/// destination configured at `build()` unless it chose), plus those its mapping adds for `t`.
/// A destination added at run time gets app-mode events only when named.
pub(crate) fn routes_mask(
    app: &AppState,
    t: crate::destination::EventType,
    table: &crate::pipeline::DestinationTable,
) -> u64 {
    let main = match &app.destinations {
        None => table.configured_mask(),
        Some(chosen) => table.mask_of(chosen),
    };
    let mapped = app.mapping.get(&t).map_or(0, |names| table.mask_of(names));
    main | mapped
}

/// Whether `app`'s routing names the destination called `name`.
pub(crate) fn names_destination(app: &AppState, name: &str) -> bool {
    let named = |names: &Vec<String>| names.iter().any(|n| n == name);
    app.destinations.as_ref().is_some_and(named) || app.mapping.values().any(named)
}

/// Applies an app-mode identify: the hard ids given **replace** the stored ones (as the Android
/// SDK does; iOS merges, which keeps a previous user's ids on the next user when an app skips
/// `anonymize`). The primary user id is the id the message names, else the configured one,
/// else the only id given.
pub(crate) fn apply_identify(
    id: &mut AppIdentity,
    ids: &BTreeMap<String, String>,
    primary: Option<&str>,
    configured_primary: Option<&str>,
) {
    if ids.is_empty() {
        // An identify with user properties only keeps the ids.
        return;
    }
    id.ids = ids.clone();
    id.primary = primary
        .filter(|p| ids.contains_key(*p))
        .or(configured_primary.filter(|p| ids.contains_key(*p)))
        .map(str::to_owned)
        .or_else(|| (ids.len() == 1).then(|| ids.keys().next().cloned()).flatten());
    id.user_id = id.primary.as_ref().and_then(|p| id.ids.get(p).cloned());
}

impl AppIdentity {
    /// The identity snapshot an app-mode event carries (consumes a copy made for the event).
    pub(crate) fn into_event_identity(self, ip: Option<String>, user_agent: Option<String>) -> trackway_wire::Identity {
        trackway_wire::Identity {
            anonymous_id: self.anonymous_id,
            user_id: self.user_id.map(Into::into),
            primary: self.primary,
            ids: self.ids,
            ip,
            user_agent,
        }
    }
}

impl AppState {
    /// The open session with its last-seen time moved to `at`, when an app-mode event of that
    /// session at `at` moves it: the app is in use (not while it is in the background: a
    /// background task does not keep a session).
    pub(crate) fn seen_at(&self, session_id: Option<&str>, at: trackway_wire::Timestamp) -> Option<SessionState> {
        let s = self.session.as_ref()?;
        let moves = Some(s.id.as_str()) == session_id && !s.background && at.unix_millis() > s.last_seen;
        moves.then(|| SessionState { last_seen: at.unix_millis(), ..s.clone() })
    }

    /// The state change that stores `session` as the open session.
    pub(crate) fn session_change(session: &SessionState) -> StateChange {
        write(SESSION_KEY, Some(session))
    }
}

fn read<T: DeserializeOwned>(state: &BTreeMap<String, Vec<u8>>, key: &str) -> Option<T> {
    state.get(key).and_then(|v| serde_json::from_slice(v).ok())
}

/// A state change writing `value` under `key` (`None` deletes the key).
pub(crate) fn write<T: Serialize>(key: &str, value: Option<&T>) -> StateChange {
    StateChange { key: key.to_owned(), value: value.and_then(|v| serde_json::to_vec(v).ok()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_cover_only_what_differs_and_round_trip() {
        let before = AppState::default();
        let mut after = before.clone();
        after.identity.anonymous_id = Some("a".into());
        after.installed = true;
        let changes = before.changes_to(&mut after);
        let keys: Vec<&str> = changes.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, [IDENTITY_KEY, INSTALLED_KEY]);
        let stored: BTreeMap<String, Vec<u8>> = changes.into_iter().filter_map(|c| Some((c.key, c.value?))).collect();
        assert_eq!(AppState::recover(&stored), after);
    }

    #[test]
    fn removing_the_session_deletes_its_key() {
        let before = AppState {
            session: Some(SessionState::start(trackway_wire::Timestamp::from_unix_millis(0))),
            ..AppState::default()
        };
        let mut after = AppState { session: None, ..before.clone() };
        let changes = before.changes_to(&mut after);
        assert_eq!(changes, vec![StateChange { key: SESSION_KEY.into(), value: None }]);
    }
}

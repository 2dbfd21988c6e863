//! The app-mode calls on [`Client`]: lifecycle (foreground, background, manual sessions),
//! `anonymize`, push tokens, payments, default properties and consent.
//!
//! A transition that queues several events (anonymize, a session timing out) holds the launch
//! lock throughout, so two transitions never interleave; each event still commits its own
//! state change together with itself.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use trackway_wire::{MessageId, Properties, Timestamp};

use super::push::{self, PushState};
use super::session::{OnForeground, SessionState, on_foreground};
use super::{AppIdentity, AppState, CONSENT_KEY, DEFAULTS_KEY, Launch, Payment, PushToken, write};
use crate::client::{Await, Block, Options, Wait, blocking, check_len, lock, push, retry_until_room};
use crate::destination::{AppEvent, EventType};
use crate::error::{Error, FlushError};
use crate::policy::CONTROL_TIMEOUT;
use crate::queue::Control;
use crate::store::destinations::{StoredSpec, spec_change};
use crate::{Client, Track};

/// Options of [`Client::anonymize`].
///
/// ```
/// use trackway::Anonymize;
/// // After sign-out, send app events only to the destination called "bloomreach-guests".
/// let options = Anonymize::new().destinations(["bloomreach-guests"]);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[must_use]
pub struct Anonymize {
    destinations: Option<Vec<String>>,
    mapping: Option<BTreeMap<EventType, Vec<String>>>,
}

impl Anonymize {
    /// Anonymize and keep sending to the same destinations.
    pub fn new() -> Self {
        Anonymize::default()
    }

    /// Switch app-mode events to these destinations (by name; each configured or added at run
    /// time with [`Client::add_destination`], e.g. a Bloomreach project that was not configured
    /// at `build()`). Server-mode calls keep going everywhere. Events already queued keep the
    /// route they were given when queued. The
    /// choice is stored: a later run whose client lacks all of them gets `NoRoute` for app-mode
    /// events (never a silent switch back to the others) until `anonymize` chooses again.
    pub fn destinations<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.destinations = Some(names.into_iter().map(Into::into).collect());
        self
    }

    /// Switch app-mode events back to every destination configured at `build()`.
    pub fn all_destinations(mut self) -> Self {
        self.destinations = Some(Vec::new());
        self
    }

    /// Also send app-mode events of `event_type` to these destinations (by name, configured or
    /// added at run time): Bloomreach's project mapping, e.g. payments to a project of their
    /// own. Calls add up; the mapping given **replaces** the stored one (an `Anonymize` without
    /// any `route` keeps it, as Android does; [`clear_mapping`](Self::clear_mapping) removes
    /// it). For Bloomreach's `trackEvent` key, route every type of [`EventType::CUSTOM_EVENTS`].
    ///
    /// ```
    /// use trackway::{Anonymize, destination::EventType};
    /// let options = Anonymize::new().destinations(["bloomreach:new-project"]).route(EventType::Payment, ["bloomreach:payments"]);
    /// ```
    pub fn route<I, S>(mut self, event_type: EventType, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let entry = self.mapping.get_or_insert_with(BTreeMap::new).entry(event_type).or_default();
        entry.extend(names.into_iter().map(Into::into));
        self
    }

    /// Remove the stored mapping: app-mode events go only to the chosen destinations.
    pub fn clear_mapping(mut self) -> Self {
        self.mapping = Some(BTreeMap::new());
        self
    }
}

impl Client {
    /// Run once by `build()`: the first run's `installation`, and the session of an app that
    /// starts in the foreground. Failures are logged: the client itself works.
    pub(crate) fn launch(&self) {
        let shared = &self.inner.shared;
        if !shared.pipe.enabled.load(Ordering::Acquire) {
            return;
        }
        let mut launch = lock(&shared.launch);
        if shared.lifecycle.installation
            && !lock(&shared.app).installed
            && let Err(e) = self.track_installation()
        {
            tracing::warn!(error = %e, "trackway: could not track the installation event");
        }
        let started =
            if shared.lifecycle.automatic_sessions { self.foreground(&mut launch) } else { self.close_stale_session() };
        if let Err(e) = started {
            tracing::warn!(error = %e, "trackway: could not end or start the session");
        }
        if let Err(e) = self.retrack_push_token(&mut launch) {
            tracing::warn!(error = %e, "trackway: could not track the push token");
        }
    }

    /// Manual sessions at start: a session an earlier run left open, idle for the session
    /// timeout or longer, is ended at its last-seen time (a fresher one may still be continued).
    fn close_stale_session(&self) -> Result<(), Error> {
        if let Some(open) = self.session() {
            let now = self.inner.shared.pipe.clock.now();
            let end = self.end_time(&open, now);
            if end != now {
                self.end_session(&open, end)?;
            }
        }
        Ok(())
    }

    /// When a session closed at `now` ended (see [`SessionState::end_at`]).
    fn end_time(&self, session: &SessionState, now: Timestamp) -> Timestamp {
        Timestamp::from_unix_millis(session.end_at(now.unix_millis(), self.inner.shared.lifecycle.timeout_ms()))
    }

    // === sessions ===

    /// The app came to the foreground (automatic sessions; call it from your lifecycle hook:
    /// window focus, `onResume`, a game loop's resume). A return within the session timeout
    /// continues the session; a later one tracks `session_end` for the old session at its
    /// last-seen time (with `duration`) and `session_start` for a new one. A push token
    /// tracked earlier is tracked again if its frequency says so. `build()` calls it for you.
    ///
    /// With manual sessions it only re-checks the push token.
    ///
    /// # Errors
    /// `Disabled`, `ShutDown`, `QueueFull`.
    pub fn app_foreground(&self) -> Result<(), Error> {
        self.check_open()?;
        let mut launch = lock(&self.inner.shared.launch);
        if self.inner.shared.lifecycle.automatic_sessions {
            self.foreground(&mut launch)?;
        }
        self.retrack_push_token(&mut launch)
    }

    /// The app went to the background: the session's last-seen time is now, and the session
    /// ends if the app does not come back within the timeout: `session_end` is tracked, at this
    /// time, when the timeout passes (by a timer thread, while the process lives), or else when
    /// the app comes back or starts again. A no-op with manual sessions.
    ///
    /// # Errors
    /// `Disabled`, `ShutDown`, `QueueFull` (the state could not be queued within 5 s).
    pub fn app_background(&self) -> Result<(), Error> {
        self.check_open()?;
        if !self.inner.shared.lifecycle.automatic_sessions {
            return Ok(());
        }
        let shared = &self.inner.shared;
        let mut launch = lock(&shared.launch);
        launch.in_front = false;
        let now = shared.pipe.clock.now();
        let ms = now.unix_millis();
        self.update_app_state(&|app: &mut AppState| {
            if let Some(s) = app.session.as_mut() {
                s.seen(ms, true);
            }
        })?;
        if self.session().is_some() {
            let deadline = now.saturating_add(shared.lifecycle.session_timeout);
            shared.session_timer.arm(deadline, Arc::downgrade(&self.inner), shared);
        }
        Ok(())
    }

    /// Run by the session timer: ends the session if the app is still away and the timeout has
    /// passed (both re-checked here, under the lifecycle lock: the app may have come back).
    pub(crate) fn end_idle_session(&self) -> Result<(), Error> {
        let shared = &self.inner.shared;
        if !shared.pipe.enabled.load(Ordering::Acquire) || shared.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        let launch = lock(&shared.launch);
        let Some(session) = self.session() else { return Ok(()) };
        let now = shared.pipe.clock.now().unix_millis();
        if launch.in_front || !session.background || !session.timed_out(now, shared.lifecycle.timeout_ms()) {
            return Ok(());
        }
        self.end_session(&session, Timestamp::from_unix_millis(session.last_seen))?;
        Ok(())
    }

    /// Starts a session (manual sessions): tracks `session_start`, and first `session_end` for a
    /// session still open. Every app-mode event until [`session_end`](Self::session_end) carries
    /// the session id.
    ///
    /// # Errors
    /// `AutomaticSessions` when the client tracks sessions by itself; `NoUser` on a client not
    /// in app mode; `Disabled`, `ShutDown`, `QueueFull`.
    pub fn session_start(&self) -> Result<MessageId, Error> {
        self.session_start_at(self.inner.shared.pipe.clock.now())
    }

    /// [`session_start`](Self::session_start) at a time of the caller's (the seed's
    /// `trackSessionStart(timestamp:)`): the session starts, and its `session_start` is
    /// stamped, at `at`.
    ///
    /// # Errors
    /// As [`session_start`](Self::session_start).
    pub fn session_start_at(&self, at: Timestamp) -> Result<MessageId, Error> {
        self.check_open()?;
        if self.inner.shared.lifecycle.automatic_sessions {
            return Err(Error::AutomaticSessions);
        }
        let _launch = lock(&self.inner.shared.launch);
        if let Some(open) = self.session() {
            self.end_session(&open, self.end_time(&open, at))?;
        }
        self.start_session(at)
    }

    /// Ends the session (manual sessions): tracks `session_end` with its `duration` in seconds.
    ///
    /// # Errors
    /// `NoSession` when none is open; `AutomaticSessions`, `Disabled`, `ShutDown`, `QueueFull`.
    pub fn session_end(&self) -> Result<MessageId, Error> {
        self.session_end_at(self.inner.shared.pipe.clock.now())
    }

    /// [`session_end`](Self::session_end) at a time of the caller's (the seed's
    /// `trackSessionEnd(timestamp:)`); `duration` is counted up to `at` (never below zero).
    ///
    /// # Errors
    /// As [`session_end`](Self::session_end).
    pub fn session_end_at(&self, at: Timestamp) -> Result<MessageId, Error> {
        self.check_open()?;
        if self.inner.shared.lifecycle.automatic_sessions {
            return Err(Error::AutomaticSessions);
        }
        let _launch = lock(&self.inner.shared.launch);
        let open = self.session().ok_or(Error::NoSession)?;
        self.end_session(&open, at)
    }

    /// The id of the open session, if any (carried by every app-mode event).
    pub fn current_session(&self) -> Option<String> {
        self.session().map(|s| s.id)
    }

    fn session(&self) -> Option<SessionState> {
        lock(&self.inner.shared.app).session.clone()
    }

    fn foreground(&self, launch: &mut Launch) -> Result<(), Error> {
        let shared = &self.inner.shared;
        shared.session_timer.disarm();
        let now = shared.pipe.clock.now();
        let timeout = shared.lifecycle.timeout_ms();
        let session = self.session();
        match on_foreground(session.as_ref(), now.unix_millis(), timeout, launch.in_front) {
            OnForeground::Start => {
                self.start_session(now)?;
            }
            OnForeground::Continue => {
                let ms = now.unix_millis();
                self.update_app_state(&|app: &mut AppState| {
                    if let Some(s) = app.session.as_mut() {
                        s.seen(ms, false);
                    }
                })?;
            }
            OnForeground::EndAndStart { end_at } => {
                if let Some(old) = &session {
                    self.end_session(old, Timestamp::from_unix_millis(end_at))?;
                }
                self.start_session(now)?;
            }
        }
        launch.in_front = true;
        Ok(())
    }

    fn start_session(&self, at: Timestamp) -> Result<MessageId, Error> {
        let new = SessionState::start(at);
        let id = new.id.clone();
        let update = move |app: &mut AppState| app.session = Some(new.clone());
        let opts = Options {
            at: Some(at),
            session: Some(Some(id)),
            update: Some(&update),
            app_event: Some(AppEvent::SessionStart),
            ..Options::default()
        };
        self.enqueue(Track::new("session_start").into(), opts)
    }

    /// Tracks `session_end` for `session` at `at`, and closes it if it is still the open one.
    fn end_session(&self, session: &SessionState, at: Timestamp) -> Result<MessageId, Error> {
        let duration = session.duration_until(at.unix_millis());
        let ended = session.id.clone();
        let update = move |app: &mut AppState| {
            if app.session.as_ref().is_some_and(|s| s.id == ended) {
                app.session = None;
            }
        };
        let opts = Options {
            at: Some(at),
            session: Some(Some(session.id.clone())),
            update: Some(&update),
            app_event: Some(AppEvent::SessionEnd),
            ..Options::default()
        };
        self.enqueue(Track::new("session_end").property("duration", duration).into(), opts)
    }

    fn track_installation(&self) -> Result<MessageId, Error> {
        let update = |app: &mut AppState| app.installed = true;
        let opts = Options { update: Some(&update), app_event: Some(AppEvent::Installation), ..Options::default() };
        self.enqueue(Track::new("installation").into(), opts)
    }

    // === anonymize ===

    /// Forgets the current user (sign-out), as the Bloomreach SDK does, in this order:
    /// 1. tracks `session_end` for the open session (now);
    /// 2. invalidates the push token for the old user (`notification_state`, `valid: false`,
    ///    `Invalidated`);
    /// 3. creates a new anonymous id and clears the hard ids and the session (and switches
    ///    app-mode events to other destinations if asked);
    /// 4. tracks `installation` for the new anonymous user (when installation tracking is on);
    /// 5. with automatic sessions, tracks `session_start` for a new session;
    /// 6. registers the same push token for the new user.
    ///
    /// Events already queued still go out with the old identity.
    ///
    /// # Errors
    /// `UnknownDestination` (nothing is done), `Disabled`, `ShutDown`, `QueueFull` (the steps
    /// before it are done).
    pub fn anonymize(&self, options: Anonymize) -> Result<(), Error> {
        self.check_open()?;
        let shared = &self.inner.shared;
        let table = &shared.pipe.destinations;
        let named =
            options.destinations.iter().flatten().chain(options.mapping.iter().flat_map(|m| m.values().flatten()));
        if let Some(unknown) = named.into_iter().find(|n| table.index_of(n).is_none()) {
            return Err(Error::UnknownDestination(unknown.clone()));
        }
        let mut launch = lock(&shared.launch);
        let now = shared.pipe.clock.now();
        let old = lock(&shared.app).clone();
        if let Some(session) = &old.session {
            self.end_session(session, self.end_time(session, now))?;
        }
        let token = old.push.filter(|p| !p.cancelled);
        if let Some(p) = &token {
            let props = push::properties(p.platform, &p.token, false, "Invalidated");
            let update = |app: &mut AppState| {
                if let Some(p) = app.push.as_mut() {
                    p.cancelled = true;
                }
            };
            let opts = Options {
                update: Some(&update),
                no_defaults: true,
                app_event: Some(AppEvent::PushToken),
                ..Options::default()
            };
            self.enqueue(Track::new("notification_state").properties(props).into(), opts)?;
        }
        let anonymous_id = super::new_anonymous_id();
        let destinations = options.destinations.map(|d| (!d.is_empty()).then_some(d));
        let update = |app: &mut AppState| {
            app.identity = AppIdentity { anonymous_id: Some(anonymous_id.clone()), ..AppIdentity::default() };
            app.session = None;
            app.installed = false;
            if let Some(d) = &destinations {
                app.destinations.clone_from(d);
            }
            if let Some(m) = &options.mapping {
                app.mapping.clone_from(m);
            }
        };
        // The run-time destinations the new routing names (or no longer names) learn it in the
        // same commit.
        self.update_app_state_and(&update, &|next| shared.runtime.current_updates(next))?;
        launch.in_front = false;
        if shared.lifecycle.installation {
            self.track_installation()?;
        }
        if shared.lifecycle.automatic_sessions {
            self.start_session(now)?;
            launch.in_front = true;
        }
        if let Some(p) = token {
            let again = PushToken { platform: p.platform, token: p.token, granted: p.granted, force: true };
            self.push_token(&again, &mut launch)?;
        }
        Ok(())
    }

    // === push tokens ===

    /// Registers the push token for the current user: a `notification_state` event with
    /// `push_notification_token`, `platform` (`android` for FCM, `huawei` for HMS), `valid` and
    /// `description` (no default properties). Call it at each launch and whenever the push SDK
    /// hands you a new token: the [`TokenFrequency`](crate::TokenFrequency) decides whether an
    /// event goes out (a new token, a changed permission or app version always does). Returns
    /// `None` when nothing was due. `anonymize` moves the token to the new user.
    ///
    /// # Errors
    /// `EmptyPushToken`, `NoUser` on a client not in app mode, `Disabled`, `ShutDown`,
    /// `QueueFull`.
    pub fn track_push_token(&self, token: PushToken) -> Result<Option<MessageId>, Error> {
        self.check_open()?;
        if token.token.trim().is_empty() {
            return Err(Error::EmptyPushToken);
        }
        check_len("push token", &token.token)?;
        let mut launch = lock(&self.inner.shared.launch);
        self.push_token(&token, &mut launch)
    }

    /// Tracks the stored token again on a return to the foreground, if its frequency says so.
    fn retrack_push_token(&self, launch: &mut Launch) -> Result<(), Error> {
        let stored = lock(&self.inner.shared.app).push.clone();
        if let Some(p) = stored.filter(|p| !p.cancelled) {
            let token = PushToken { platform: p.platform, token: p.token, granted: p.granted, force: false };
            self.push_token(&token, launch)?;
        }
        Ok(())
    }

    fn push_token(&self, token: &PushToken, launch: &mut Launch) -> Result<Option<MessageId>, Error> {
        let shared = &self.inner.shared;
        let now = shared.pipe.clock.now();
        let app_version = shared.pipe.context.app_version.clone();
        let last = lock(&shared.app).push.clone();
        let due = push::is_due(
            token,
            last.as_ref(),
            shared.lifecycle.token_frequency,
            launch.token_tracked,
            app_version.as_deref(),
            now,
        );
        if !due {
            return Ok(None);
        }
        let valid = token.granted || !shared.lifecycle.require_push_permission;
        let props = push::properties(token.platform, &token.token, valid, push::description(token.granted));
        let state = PushState {
            platform: token.platform,
            token: token.token.clone(),
            granted: token.granted,
            tracked_at: now.unix_millis(),
            app_version,
            cancelled: false,
        };
        let update = move |app: &mut AppState| app.push = Some(state.clone());
        let opts = Options {
            update: Some(&update),
            no_defaults: true,
            app_event: Some(AppEvent::PushToken),
            ..Options::default()
        };
        let id = self.enqueue(Track::new("notification_state").properties(props).into(), opts)?;
        launch.token_tracked = true;
        Ok(Some(id))
    }

    // === payments ===

    /// Tracks a payment for the current user: a `payment` event (see [`Payment`] for its
    /// properties; default properties apply beneath them).
    ///
    /// ```
    /// # use trackway::{Client, Payment, destination::InMemoryDestination, store::MemoryStore};
    /// # let client = Client::builder().app_mode().destination(InMemoryDestination::new("memory")).store(MemoryStore::new()).build()?;
    /// client.track_payment(Payment::new(0.99, "EUR").product_id("sword").product_title("Silver sword"))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// `InvalidPayment` (a NaN or infinite value, an empty currency); `NoUser` on a client not
    /// in app mode; as [`track`](Self::track).
    pub fn track_payment(&self, payment: Payment) -> Result<MessageId, Error> {
        let at = payment.at();
        let properties = payment.into_properties()?;
        self.enqueue(
            Track::new("payment").properties(properties).into(),
            Options { at, app_event: Some(AppEvent::Payment), ..Options::default() },
        )
    }

    // === default properties ===

    /// Replaces the default properties: copied into every event queued from now on (not into
    /// push-token events), beneath the event's own properties, which win; fields trackway sets
    /// (`duration`, payment fields) win over both. Kept in the store: a later run without
    /// [`ClientBuilder::default_properties`](crate::ClientBuilder::default_properties) starts
    /// with them.
    ///
    /// # Errors
    /// `InvalidProperty` (NaN, infinity, empty key); `ShutDown`; `QueueFull` if the change
    /// could not be queued within 5 s (the new defaults are used anyway).
    pub fn set_default_properties(&self, properties: Properties) -> Result<(), Error> {
        properties.validate()?;
        let shared = &self.inner.shared;
        if shared.closed.load(Ordering::Acquire) {
            return Err(Error::ShutDown);
        }
        if shared.pipe.queue.worker_gone() {
            return Err(Error::WorkerStopped);
        }
        let change = write(DEFAULTS_KEY, Some(&properties));
        // Held across the push: concurrent calls reach the store in the order they apply here.
        let _serial = lock(&shared.launch);
        {
            let mut defaults = lock(&shared.defaults);
            shared.has_defaults.store(!properties.is_empty(), Ordering::Relaxed);
            *defaults = Arc::new(properties);
        }
        if blocking(push::<Block>(&shared.pipe.queue, Control::State(vec![change]), CONTROL_TIMEOUT)) {
            Ok(())
        } else {
            Err(Error::QueueFull)
        }
    }

    /// The default properties in use.
    pub fn default_properties(&self) -> Properties {
        Properties::clone(&lock(&self.inner.shared.defaults))
    }

    // === consent ===

    /// Turns tracking on or off (the user's consent), persisted across restarts. While off,
    /// every call returns `Error::Disabled` (counted as `disabled`), nothing is queued and
    /// nothing is sent: events queued before stay in the outbox, unsent, until tracking is on
    /// again or [`purge_queued`](Self::purge_queued) removes them. The app state does not move
    /// while off (no session starts); turning it back on does what a start does (the
    /// `installation` if it is still due, the session with automatic sessions).
    ///
    /// # Errors
    /// `ShutDown`; `QueueFull` if the change could not be queued within 5 s (it applies to this
    /// run anyway).
    pub fn set_enabled(&self, enabled: bool) -> Result<(), Error> {
        let shared = &self.inner.shared;
        if shared.closed.load(Ordering::Acquire) {
            return Err(Error::ShutDown);
        }
        if shared.pipe.queue.worker_gone() {
            return Err(Error::WorkerStopped);
        }
        let was_enabled = {
            // Held across the push: concurrent calls reach the store in the order they apply here.
            let _serial = lock(&shared.launch);
            let was = shared.pipe.enabled.swap(enabled, Ordering::AcqRel);
            let change = write(CONSENT_KEY, Some(&enabled));
            if !blocking(push::<Block>(&shared.pipe.queue, Control::State(vec![change]), CONTROL_TIMEOUT)) {
                return Err(Error::QueueFull);
            }
            was
        };
        if enabled && !was_enabled {
            // Back on: what a start would have done while it was off (installation, session).
            self.launch();
        }
        Ok(())
    }

    /// Whether tracking is on (see [`set_enabled`](Self::set_enabled)).
    pub fn is_enabled(&self) -> bool {
        self.inner.shared.pipe.enabled.load(Ordering::Acquire)
    }

    /// Removes every event still waiting in the outbox (for any destination) and returns how
    /// many there were; they are counted as `purged`. Typically after `set_enabled(false)`.
    /// Events already on the wire are handled as [`erase_user`](Self::erase_user) says.
    ///
    /// # Errors
    /// `AlreadyShutdown`; `Timeout` if the worker does not answer in 5 s.
    pub fn purge_queued(&self) -> Result<u64, FlushError> {
        blocking(self.purge::<Block>(None))
    }

    /// Async [`purge_queued`](Self::purge_queued).
    ///
    /// # Errors
    /// As [`purge_queued`](Self::purge_queued).
    pub async fn purge_queued_async(&self) -> Result<u64, FlushError> {
        self.purge::<Await>(None).await
    }

    /// Erases one person's events from the outbox: the queued events and the dead letters whose
    /// user id, anonymous id or any hard id equals `id`. Returns how many events were removed
    /// (counted as `purged`).
    ///
    /// An event already in a request on the wire cannot be taken back: it is not among those
    /// removed but counted in [`Stats::purge_in_flight`](crate::Stats::purge_in_flight). If the
    /// server takes it, it counts as delivered (what the server holds is the server's to erase,
    /// see below); any other answer removes it then (counted as `purged`): it is never sent
    /// again nor kept as a dead letter.
    ///
    /// Destinations that [erase people](crate::destination::Destination::erases_people) also
    /// get a delete of the person, queued after the purge (so it is not purged itself) and
    /// delivered like an event: retried, counted in `stats()`, dead-lettered with the server's
    /// reason if refused. Customer.io does (`DELETE /api/v1/customers/{id}`); OpenCDP,
    /// Bloomreach and Umami have no delete in their APIs, so nothing is sent to them and what
    /// they hold is theirs to erase. The delete is queued while tracking is off too. An id a
    /// destination's limits refuse (over Customer.io's 150 bytes) names no person there:
    /// nothing is queued for it.
    ///
    /// # Errors
    /// `AlreadyShutdown`; `Timeout` if the worker does not answer in 5 s; `DeleteNotQueued` if
    /// the deletes could not be queued (the local events are erased all the same).
    pub fn erase_user(&self, id: &str) -> Result<u64, FlushError> {
        let purged = blocking(self.purge::<Block>(Some(id.to_owned())))?;
        self.queue_deletes(id)?;
        Ok(purged)
    }

    /// Async [`erase_user`](Self::erase_user).
    ///
    /// # Errors
    /// As [`erase_user`](Self::erase_user).
    pub async fn erase_user_async(&self, id: &str) -> Result<u64, FlushError> {
        let purged = self.purge::<Await>(Some(id.to_owned())).await?;
        self.queue_deletes(id)?;
        Ok(purged)
    }

    /// Queues the delete of `id` for every destination that erases people (and takes the id).
    fn queue_deletes(&self, id: &str) -> Result<(), FlushError> {
        use crate::destination::ERASE_USER_EVENT;
        let pipe = &self.inner.shared.pipe;
        let probe = trackway_wire::Event {
            identity: trackway_wire::Identity::user(id),
            context: pipe.context.clone(),
            ..trackway_wire::Event::new(trackway_wire::EventKind::Identify, pipe.clock.now())
        };
        let mask = pipe.destinations.iter().fold(0u64, |mask, (i, d)| {
            let erases = crate::pipeline::health::catch(|| d.erases_people() && d.validate(&probe).is_ok());
            if erases.unwrap_or(false) { mask | 1 << i } else { mask }
        });
        if mask == 0 || id.trim().is_empty() {
            return Ok(());
        }
        match self.enqueue_command(mask, ERASE_USER_EVENT, id) {
            Ok(_) => Ok(()),
            Err(Error::ShutDown) => Err(FlushError::AlreadyShutdown),
            Err(Error::WorkerStopped) => Err(FlushError::WorkerStopped),
            Err(e) => Err(FlushError::DeleteNotQueued(e.to_string())),
        }
    }

    async fn purge<W: Wait>(&self, user: Option<String>) -> Result<u64, FlushError> {
        self.ask::<W, _>(|reply| Control::Purge { user, reply }).await
    }

    // === helpers ===

    pub(crate) fn check_open(&self) -> Result<(), Error> {
        let shared = &self.inner.shared;
        if shared.closed.load(Ordering::Acquire) {
            return Err(Error::ShutDown);
        }
        if shared.pipe.queue.worker_gone() {
            return Err(Error::WorkerStopped);
        }
        if !shared.pipe.enabled.load(Ordering::Acquire) {
            return Err(Error::Disabled);
        }
        Ok(())
    }

    /// Changes the app state without an event: the change is queued (committed after the
    /// events queued before it) and applied to the live state under the same lock.
    pub(crate) fn update_app_state(&self, update: &dyn Fn(&mut AppState)) -> Result<(), Error> {
        self.update_app_state_and(update, &|_| Vec::new())
    }

    /// [`update_app_state`](Self::update_app_state), with the spec changes of run-time
    /// destinations that `specs` works out from the new state committed in the same change.
    pub(crate) fn update_app_state_and(
        &self,
        update: &dyn Fn(&mut AppState),
        specs: &dyn Fn(&AppState) -> Vec<(String, StoredSpec)>,
    ) -> Result<(), Error> {
        let shared = &self.inner.shared;
        if shared.pipe.queue.worker_gone() {
            return Err(Error::WorkerStopped);
        }
        // The app lock is released between attempts while the reserved slots are full (a flood),
        // so app-mode calls on other threads go on.
        let applied = blocking(retry_until_room::<Block>(CONTROL_TIMEOUT, || {
            let mut app = lock(&shared.app);
            let mut next = app.clone();
            update(&mut next);
            let mut changes = app.changes_to(&mut next);
            let updates = specs(&next);
            changes.extend(updates.iter().map(|(name, spec)| spec_change(name, Some(spec))));
            let queued = changes.is_empty() || shared.pipe.queue.push_control(Control::State(changes)).is_ok();
            if queued {
                *app = next;
                shared.runtime.apply(updates);
            }
            queued
        }));
        if applied { Ok(()) } else { Err(Error::QueueFull) }
    }
}

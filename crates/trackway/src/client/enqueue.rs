//! `enqueue`, the one path every call takes to queue an event: validate, snapshot the identity,
//! stamp, run the `before_send` hook, serialize and push, and commit the app-state change the
//! event makes together with it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use trackway_wire::{Event, EventKind, Identity, MessageId, Timestamp};

use super::{CHECKPOINT_PREFIX, Client, Shared, lock};
use crate::app::AppState;
use crate::destination::EventType;
use crate::error::Error;
use crate::message::Message;
use crate::policy::{MAX_EVENT_BYTES, MAX_NAME_BYTES};
use crate::queue::{EventMeta, Priority};
use crate::stats::bump;
use crate::store::StateChange;

/// What an app-mode event leaves of the app state once it is queued.
enum NextApp {
    /// Only the open session's last-seen time moved (the common case).
    Seen(crate::app::SessionState),
    /// Anything else: the whole new state.
    Whole(Box<AppState>),
}

/// How an internal call differs from a plain one.
#[derive(Default)]
pub(crate) struct Options<'a> {
    /// The caller's own message id and timestamp (imports).
    pub(crate) import: Option<(MessageId, Timestamp)>,
    /// An event time other than now, not an import (a `session_end` at the last-seen time).
    pub(crate) at: Option<Timestamp>,
    /// A checkpoint committed with the event.
    pub(crate) checkpoint: Option<(&'a str, Vec<u8>)>,
    /// App mode: the session the event belongs to instead of the current one (`Some(None)`:
    /// none).
    pub(crate) session: Option<Option<String>>,
    /// App mode: a change of the app state committed with the event.
    pub(crate) update: Option<&'a dyn Fn(&mut AppState)>,
    /// Leave the default properties out (push-token events).
    pub(crate) no_defaults: bool,
    /// Which app event this is: it goes only to the destinations that take it, and when none
    /// does, its state change is still applied (without an event).
    pub(crate) app_event: Option<crate::destination::AppEvent>,
    /// A command to the destinations of this mask (a delete, a suppression): routed there only,
    /// queued while tracking is off too (it is not tracking), never given to `before_send` or
    /// to the destinations' `validate` (the caller checked it), in the reserved slots.
    pub(crate) command: Option<u64>,
    /// A confirmed call: the watch is registered here, before the push, and handed back.
    pub(crate) watch: Option<&'a std::cell::RefCell<Option<Arc<crate::receipts::Watch>>>>,
    /// A waiting call ([`Client::waiting`]) tries again when full: a full queue or store is
    /// counted (and logged) only when it gives up.
    pub(crate) waiting: bool,
}

impl Client {
    /// Counts an event refused by a full queue (and says so in the log, once).
    pub(crate) fn count_queue_full(&self) {
        let shared = &*self.inner.shared;
        bump(&shared.pipe.counters.queue_full, 1);
        if !shared.warned_queue_full.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                capacity = shared.pipe.queue.len(),
                "trackway: event queue full, dropping events (counted as queue_full; logged once)"
            );
        }
    }

    /// Queues the command event `name` about the person `id` for the destinations in `mask`
    /// only (see [`Options::command`]).
    pub(crate) fn enqueue_command(&self, mask: u64, name: &str, id: &str) -> Result<MessageId, Error> {
        let message = crate::Track::new(name).user(id).into();
        self.enqueue(message, Options { command: Some(mask), no_defaults: true, ..Options::default() })
    }

    pub(crate) fn enqueue(&self, mut m: Message, opts: Options<'_>) -> Result<MessageId, Error> {
        let shared = &*self.inner.shared;
        if shared.closed.load(Ordering::Acquire) {
            bump(&shared.pipe.counters.shutdown, 1);
            return Err(Error::ShutDown);
        }
        if shared.pipe.queue.worker_gone() {
            bump(&shared.pipe.counters.worker_stopped, 1);
            return Err(Error::WorkerStopped);
        }
        if opts.command.is_none() && !shared.pipe.enabled.load(Ordering::Acquire) {
            bump(&shared.pipe.counters.disabled, 1);
            return Err(Error::Disabled);
        }
        // Server mode when the message names its user; the app's current user only on a client
        // built for app mode. Never a guess: on a server, a message without a user filed under
        // one stored anonymous id would put everyone's events on one person.
        let server_mode = m.user.is_some() || m.anonymous_id.is_some();
        if !server_mode && !shared.app_mode {
            return Err(Error::NoUser);
        }
        validate_message(&m)?;
        if m.kind == EventKind::Track
            && m.name.as_deref() == Some(crate::device::DEVICE_EVENT)
            && opts.app_event != Some(crate::destination::AppEvent::PushToken)
        {
            return Err(Error::ReservedEventName(crate::device::DEVICE_EVENT));
        }
        if shared.pipe.room.is_full() {
            if !opts.waiting {
                bump(&shared.pipe.counters.store_refused, 1);
            }
            return Err(Error::StoreFull);
        }
        // Routed by event type, fixed into the event here: a later change of routing never moves it.
        let event_type = opts.app_event.map_or_else(|| EventType::of_kind(m.kind), EventType::from);
        let mut routes = opts.command.unwrap_or_else(|| shared.routing.mask(event_type));
        let is_identify = m.kind == EventKind::Identify;
        let (ids, primary) = (std::mem::take(&mut m.ids), m.primary.take());

        // App mode snapshots the identity under the lock and releases it at once: a before_send
        // hook (user code) runs next and may itself track. The state change is worked out again
        // on the live state when the event is pushed.
        let (identity, session_id) = if server_mode {
            let identity = Identity {
                user_id: m.user.take(),
                anonymous_id: m.anonymous_id.take().map(String::from),
                ip: m.ip.take(),
                user_agent: m.user_agent.take(),
                ..Identity::default()
            };
            (identity, None)
        } else {
            let app = lock(&shared.app);
            // App-mode events go only where `anonymize` pointed them.
            routes &= crate::app::routes_mask(&app, event_type, &shared.pipe.destinations);
            let mut who = app.identity.clone();
            if is_identify {
                crate::app::apply_identify(&mut who, &ids, primary.as_deref(), shared.primary_id.as_deref());
            }
            let session_id = match &opts.session {
                Some(explicit) => explicit.clone(),
                None => app.session.as_ref().map(|s| s.id.clone()),
            };
            drop(app);
            (who.into_event_identity(m.ip.take(), m.user_agent.take()), session_id)
        };
        if opts.app_event.is_some() && routes == 0 {
            // No destination takes it: the session, token or flag still changes.
            if let Some(update) = opts.update {
                self.update_app_state(update)?;
            }
            return Ok(MessageId::new_v7(shared.pipe.clock.now()));
        }
        if routes == 0 {
            return Err(Error::NoRoute { kind: m.kind.as_str() });
        }
        let queued_at = shared.pipe.clock.now();
        // The call's own time (`Track::timestamp`, a payment's, a manual session's), else now.
        let (id, timestamp) = match (opts.import, opts.at.or(m.timestamp)) {
            (Some(import), _) => import,
            (None, Some(at)) => (MessageId::new_v7(at), at),
            (None, None) => (MessageId::new_v7(queued_at), queued_at),
        };
        // A confirmed call watches before anything can deliver the event; an error below
        // unregisters it.
        let hub = &shared.pipe.receipts;
        let registration = opts.watch.map(|slot| {
            *slot.borrow_mut() = Some(hub.watch(id, routes));
            crate::receipts::Registration::new(hub, id)
        });
        let mut properties = m.properties;
        let mut default_keys = Vec::new();
        if !opts.no_defaults && shared.has_defaults.load(Ordering::Relaxed) {
            // defaults < event properties (< fields trackway sets, which the calls that own them
            // put among the event's properties).
            let defaults = Arc::clone(&lock(&shared.defaults));
            // Which keys come from the defaults: a destination may leave them out (Bloomreach's
            // customer updates without `allow_default_customer_properties`).
            default_keys =
                defaults.iter().filter(|(k, _)| properties.get(k).is_none()).map(|(k, _)| k.into()).collect();
            properties.fill_missing_from(&defaults);
        }
        let mut event = Event {
            id,
            kind: m.kind,
            name: m.name,
            timestamp,
            properties,
            identity,
            session_id,
            page: m.page,
            context: shared.pipe.context.clone(),
            imported: opts.import.is_some(),
            default_keys,
        };
        if let Some(hook) = &shared.before_send
            && opts.command.is_none()
            && !hook(&mut event)
        {
            bump(&shared.pipe.counters.filtered, 1);
            if hub.is_active() {
                let at = shared.pipe.clock.now();
                let mut names: Vec<Option<std::sync::Arc<str>>> = Vec::new();
                let mut batch = crate::receipts::Batch::default();
                for (i, d) in
                    crate::store::routes(routes).filter_map(|i| shared.pipe.destinations.iter().find(|(j, _)| *j == i))
                {
                    if names.len() <= i {
                        names.resize(i + 1, None);
                    }
                    names[i] = Some(d.name().into());
                    batch.push(i, id, crate::receipts::Outcome::Filtered, at);
                }
                // No worker deadline covers the caller's thread: its readers are signalled now.
                if hub.emit(&mut batch, &names) {
                    hub.signal();
                }
            }
            // Resolved by the outcomes just emitted.
            if let Some(registration) = registration {
                registration.keep();
            }
            // A lifecycle event the hook drops still moves the app state (a session still starts).
            if let Some(update) = opts.update {
                self.update_app_state(update)?;
            }
            if let Some((key, value)) = opts.checkpoint {
                self.checkpoint(key, value)?;
            }
            return Ok(id);
        }
        for (i, d) in shared.pipe.destinations.iter() {
            if routes & (1 << i) != 0 && opts.command.is_none() {
                crate::pipeline::health::catch(|| d.validate(&event))
                    .map_err(|message| Error::DestinationPanicked { destination: d.name().to_owned(), message })?
                    .map_err(|e| Error::DestinationLimit { destination: d.name().to_owned(), message: e.message })?;
            }
        }
        let mut state = Vec::new();
        // Held until the event is queued, as in `checkpoint`.
        let mut checkpoints = opts.checkpoint.as_ref().map(|(key, value)| {
            state.push(StateChange { key: format!("{CHECKPOINT_PREFIX}{key}"), value: Some(value.clone()) });
            lock(&shared.checkpoints)
        });
        // App mode: the change this event makes to the live state, committed with it. Most
        // events only move the session's last-seen time: that one field is copied and written,
        // not the whole state.
        let mut app = (!server_mode).then(|| lock(&shared.app));
        let activity = opts.session.is_none().then_some(event.session_id.as_deref()).flatten();
        let next = app.as_ref().and_then(|current| {
            let seen = activity.and_then(|id| current.seen_at(Some(id), timestamp));
            if !is_identify && opts.update.is_none() && !current.unsaved {
                let seen = seen?;
                state.push(AppState::session_change(&seen));
                return Some(NextApp::Seen(seen));
            }
            let mut next = AppState::clone(current);
            if is_identify {
                crate::app::apply_identify(&mut next.identity, &ids, primary.as_deref(), shared.primary_id.as_deref());
            }
            if let Some(seen) = seen {
                next.session = Some(seen);
            }
            if let Some(update) = opts.update {
                update(&mut next);
            }
            state.extend(current.changes_to(&mut next));
            Some(NextApp::Whole(Box::new(next)))
        });
        let priority = if (is_identify && !server_mode) || opts.update.is_some() || opts.command.is_some() {
            Priority::Reserved
        } else {
            Priority::Normal
        };
        let meta = EventMeta { id, kind: event.kind, timestamp, queued_at, routes, head_only: true, state };
        if encode_and_push(&event, shared, meta, priority)?.is_err() {
            if !opts.waiting {
                self.count_queue_full();
            }
            return Err(Error::QueueFull);
        }
        bump(&shared.pipe.counters.enqueued, 1);
        if let Some(registration) = registration {
            registration.keep();
        }
        match (app.as_mut(), next) {
            (Some(current), Some(NextApp::Whole(next))) => **current = *next,
            (Some(current), Some(NextApp::Seen(seen))) => current.session = Some(seen),
            _ => {}
        }
        drop(app);
        if let (Some(map), Some((key, value))) = (checkpoints.as_mut(), opts.checkpoint) {
            map.insert(key.to_owned(), value);
        }
        drop(checkpoints);
        Ok(id)
    }
}

thread_local! {
    /// Reused serialization buffer: serializing allocates nothing once it has grown.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(1024));
}

/// Serializes `event` (validating its properties) and copies the bytes into the queue: its head
/// when it carries the client's context (the worker adds the context once in the store), the
/// whole event when a `before_send` hook swapped the context.
///
/// The outer error is a validation error; the inner one says the queue was full.
fn encode_and_push(
    event: &Event,
    shared: &Shared,
    mut meta: EventMeta,
    priority: Priority,
) -> Result<Result<(), crate::queue::Full>, Error> {
    let own_context = Arc::ptr_eq(&event.context, &shared.pipe.context);
    let write = |buf: &mut Vec<u8>| -> Result<(), Error> {
        trackway_wire::encode_event_head(event, buf)?;
        if !own_context {
            let context = serde_json::to_vec(&*event.context).unwrap_or_default();
            trackway_wire::finish_event(buf, &context);
        }
        if buf.len() > MAX_EVENT_BYTES {
            return Err(Error::TooLong { what: "serialized event", len: buf.len(), max: MAX_EVENT_BYTES });
        }
        Ok(())
    };
    meta.head_only = own_context;
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut buf) => {
            buf.clear();
            let pushed = write(&mut buf).map(|()| shared.pipe.queue.push_event(meta, &buf, priority));
            // Do not let one huge event pin a huge buffer on this thread forever.
            if buf.capacity() > 64 * 1024 {
                *buf = Vec::with_capacity(1024);
            }
            pushed
        }
        // Re-entered from a before_send hook that tracks: use a fresh buffer.
        Err(_) => {
            let mut buf = Vec::with_capacity(512);
            write(&mut buf)?;
            Ok(shared.pipe.queue.push_event(meta, &buf, priority))
        }
    })
}

pub(crate) fn check_len(what: &'static str, s: &str) -> Result<(), Error> {
    if s.len() > MAX_NAME_BYTES {
        return Err(Error::TooLong { what, len: s.len(), max: MAX_NAME_BYTES });
    }
    Ok(())
}

/// Checks what every destination needs, before anything else is done.
fn validate_message(m: &Message) -> Result<(), Error> {
    if let Some(user) = &m.user {
        if user.trim().is_empty() {
            return Err(Error::EmptyIdentifier);
        }
        check_len("identifier", user)?;
    }
    if let Some(anonymous_id) = &m.anonymous_id {
        if anonymous_id.trim().is_empty() {
            return Err(Error::EmptyAnonymousId);
        }
        check_len("anonymous id", anonymous_id)?;
    }
    match m.kind {
        EventKind::Track => {
            let name = m.name.as_deref().unwrap_or("");
            if name.trim().is_empty() {
                return Err(Error::EmptyEventName);
            }
            check_len("event name", name)?;
        }
        EventKind::Screen => {
            let name = m.name.as_deref().unwrap_or("");
            if name.trim().is_empty() {
                return Err(Error::EmptyScreenName);
            }
            check_len("screen name", name)?;
        }
        EventKind::Page => {
            let url = m.page.as_ref().map_or("", |p| p.url.as_str());
            if url.trim().is_empty() {
                return Err(Error::EmptyUrl);
            }
        }
        EventKind::Identify => {
            if m.user.is_none() && m.ids.is_empty() {
                return Err(Error::NoIds);
            }
            for (name, value) in &m.ids {
                if name.is_empty() || value.trim().is_empty() {
                    return Err(Error::EmptyIdentifier);
                }
                check_len("id", value)?;
            }
        }
    }
    // Properties (finite numbers, non-empty keys) are checked while the event is serialized,
    // still before anything is queued: one pass over them instead of two.
    Ok(())
}

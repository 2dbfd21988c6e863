//! The event model: what the client stamps at enqueue and every destination reads.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Properties, Timestamp};

/// A stable message id: a UUIDv7 assigned at enqueue and never changed, so retries and replays
/// after a crash can be deduplicated by servers that accept an idempotency key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(Uuid);

impl MessageId {
    /// A new UUIDv7 whose time part is `at`.
    ///
    /// The 74 random bits come from `fastrand` (wyrand, per-thread state seeded from the OS once):
    /// an id must be unique, not unpredictable, and a cryptographic generator refills a block
    /// every dozen ids, putting a few hundred nanoseconds into one call in twelve on the caller's
    /// hot path. No system call is made.
    pub fn new_v7(at: Timestamp) -> Self {
        let millis = u64::try_from(at.unix_millis()).unwrap_or(0);
        let random = fastrand::u128(..).to_le_bytes();
        let mut bytes = [0u8; 10];
        bytes.copy_from_slice(&random[..10]);
        MessageId(uuid::Builder::from_unix_timestamp_millis(millis, &bytes).into_uuid())
    }

    /// Wraps an existing UUID (for imports that bring their own ids).
    pub const fn from_uuid(uuid: Uuid) -> Self {
        MessageId(uuid)
    }

    /// The UUID inside.
    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl std::str::FromStr for MessageId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(MessageId)
    }
}

/// What kind of call produced an event. Destinations route on it: each says which kinds it takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A custom event (`track`).
    Track,
    /// A web page view.
    Page,
    /// An app screen view.
    Screen,
    /// Identity and user properties (`identify`).
    Identify,
}

impl EventKind {
    /// Every kind, for destinations that take all of them.
    pub const ALL: &'static [EventKind] = &[EventKind::Track, EventKind::Page, EventKind::Screen, EventKind::Identify];

    /// The lower-case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Track => "track",
            EventKind::Page => "page",
            EventKind::Screen => "screen",
            EventKind::Identify => "identify",
        }
    }
}

/// Who an event is about, snapshotted when it is enqueued: later `identify` or `anonymize` calls
/// never change an event already queued.
///
/// Server mode fills `user_id` from the call's identifier; app mode fills `anonymous_id` and, once
/// identified, the hard ids and `user_id` (the value of the primary hard id).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    /// The anonymous id (app mode: a lowercase UUID created on first use; Bloomreach's `cookie`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous_id: Option<String>,
    /// The primary user id, once the user is identified (inline up to 24 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<CompactString>,
    /// Which hard id `user_id` is (e.g. `registered`); `None` means the destination's default name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// All hard ids by name, e.g. `{"registered": "jane@example.com", "crm_id": "42"}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ids: BTreeMap<String, String>,
    /// The end user's IP address (server mode forwards its visitors' values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// The end user's user agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
}

impl Identity {
    /// A server-mode identity: the call's identifier is the user id.
    pub fn user(user_id: impl Into<CompactString>) -> Self {
        Identity { user_id: Some(user_id.into()), ..Identity::default() }
    }

    /// The id a destination keyed by one user string should use: the primary user id, else the
    /// anonymous id.
    pub fn distinct_id(&self) -> Option<&str> {
        self.user_id.as_deref().or(self.anonymous_id.as_deref())
    }
}

/// A page view's location.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageInfo {
    /// The page URL or path.
    pub url: String,
    /// The page title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The referring URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referrer: Option<String>,
}

/// Facts about the sending program, the same for every event of a client.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    /// The library that produced the event (`trackway`).
    pub library: String,
    /// Its version.
    pub library_version: String,
    /// Operating system (`linux`, `macos`, `windows`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    /// Locale, e.g. `en-US`, when configured or found in the environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// Application name, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_name: Option<String>,
    /// Application version, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_version: Option<String>,
    /// The operating system's name as people write it (`Linux`, `macOS`, `Windows`, `Android`,
    /// `iOS`): Bloomreach's `os_name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_name: Option<String>,
    /// The operating system's version, where the platform tells it (the kernel release on Linux
    /// and Android) or the application configured it; absent otherwise, never invented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    /// The device model (e.g. `Pixel 8`), when the application configured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_model: Option<String>,
    /// The device type (e.g. `mobile`, `tablet`, `desktop`), when the application configured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_type: Option<String>,
    /// A random UUID made once per install and kept in the store (app mode only): Bloomreach's
    /// `device_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
}

/// One event, as stamped at enqueue.
///
/// This is also trackway's own wire format: the generic JSON destination POSTs an array of these,
/// serialized compactly (`{"id":…,"type":"track","name":…,"timestamp":…,…,"context":{…}}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Stable message id (UUIDv7).
    pub id: MessageId,
    /// Event kind.
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// Event name (track), screen name (screen), or page name (page, optional); inline up to 24
    /// bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<CompactString>,
    /// When the event happened (UTC, taken on the caller's thread).
    pub timestamp: Timestamp,
    /// Event properties (for identify: user properties).
    #[serde(default, skip_serializing_if = "Properties::is_empty")]
    pub properties: Properties,
    /// Who the event is about.
    pub identity: Identity,
    /// The session the event belongs to, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Page location (page views).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<PageInfo>,
    /// True for events brought in by `import` (their own id and timestamp); destinations that
    /// normally let the server stamp time send the timestamp for these.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub imported: bool,
    /// The keys of `properties` that came from the client's default properties (not from the
    /// call), so a destination can leave them out where its server does not want them
    /// (Bloomreach's customer updates without `allow_default_customer_properties`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub default_keys: Vec<CompactString>,
    /// The sending program. Shared between events of one client, hence the `Arc`. Serialized
    /// last, so stores can keep an event's *head* (everything before it) and the context once.
    pub context: Arc<Context>,
}

impl Event {
    /// An event of `kind` at `timestamp` (its id a UUIDv7 of that time) with everything else
    /// empty: no name, properties, identity, session, page or context. Set the rest with
    /// struct update syntax, so code that builds events by hand (tests, probes) names only what
    /// it needs and a new field is added here once:
    ///
    /// ```
    /// use trackway_wire::{Event, EventKind, Identity, Timestamp};
    /// let at = Timestamp::from_unix_millis(0);
    /// let event = Event { name: Some("signup".into()), identity: Identity::user("u1"), ..Event::new(EventKind::Track, at) };
    /// assert_eq!(event.timestamp, at);
    /// assert!(event.properties.is_empty() && event.page.is_none());
    /// ```
    pub fn new(kind: EventKind, timestamp: Timestamp) -> Event {
        Event {
            id: MessageId::new_v7(timestamp),
            kind,
            name: None,
            timestamp,
            properties: Properties::default(),
            identity: Identity::default(),
            session_id: None,
            page: None,
            imported: false,
            default_keys: Vec::new(),
            context: Arc::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::props;

    fn sample() -> Event {
        let at = Timestamp::from_unix_millis(1_700_000_000_000);
        Event {
            name: Some("purchase".into()),
            properties: props! { "amount" => 9.5 },
            identity: Identity::user("u1"),
            context: Arc::new(Context {
                library: "trackway".into(),
                library_version: "0.1.0".into(),
                ..Context::default()
            }),
            ..Event::new(EventKind::Track, at)
        }
    }

    #[test]
    fn compact_json_omits_absent_fields_and_round_trips() {
        let e = sample();
        let json = serde_json::to_string(&e).expect("json");
        assert!(!json.contains("null"), "{json}");
        assert!(!json.contains("imported"), "{json}");
        assert!(json.contains(r#""type":"track""#), "{json}");
        let back: Event = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, e);
    }

    #[test]
    fn message_id_is_v7_and_carries_the_timestamp() {
        let e = sample();
        assert_eq!(e.id.as_uuid().get_version_num(), 7);
        let (secs, _) = e.id.as_uuid().get_timestamp().expect("v7 has a timestamp").to_unix();
        assert_eq!(secs, 1_700_000_000);
    }

    #[test]
    fn distinct_id_prefers_the_primary_user_id() {
        let mut id = Identity { anonymous_id: Some("anon".into()), ..Identity::default() };
        assert_eq!(id.distinct_id(), Some("anon"));
        id.ids.insert("registered".into(), "jane".into());
        id.primary = Some("registered".into());
        id.user_id = Some("jane".into());
        assert_eq!(id.distinct_id(), Some("jane"));
    }
}

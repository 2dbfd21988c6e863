//! trackway events as Customer.io operations ([`Operation`]), and each operation as a Track API
//! v1 request or a v2 batch item. Pure: no I/O, no configuration beyond what is passed in.

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use serde_json::{Map, Value as Json, json};
use trackway_wire::customerio::ulid_from_uuid;
use trackway_wire::{Event, EventKind, MessageId, Properties, Timestamp, Value};

use super::{COMMAND_PREFIX, MERGE_EVENT, SUPPRESS_EVENT, UNSUPPRESS_EVENT};
use crate::destination::ERASE_USER_EVENT;

/// The name app mode gives a push-token event (`Client::track_push_token`).
const PUSH_TOKEN_EVENT: &str = "notification_state";

/// One Customer.io Track API operation, what one stored event becomes.
///
/// [`CustomerIo::operation`](super::CustomerIo::operation) maps an event; OpenCDP's dual-write
/// maps its calls the same way (identify → [`Identify`](Self::Identify), track →
/// [`Event`](Self::Event), registerDevice → [`AddDevice`](Self::AddDevice) through
/// [`Device::from_opencdp`]).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Operation {
    /// `PUT /api/v1/customers/{id}`: create or update a person.
    Identify {
        /// The person id.
        id: String,
        /// The attributes (`created_at` in Unix seconds; `_timestamp` orders updates).
        attributes: Map<String, Json>,
        /// When the update happened (Unix seconds), sent as `_timestamp` (v1) or `timestamp` (v2).
        timestamp: i64,
    },
    /// `POST /api/v1/customers/{id}/events`, or `POST /api/v1/events` for an anonymous person.
    Event {
        /// Whose event it is.
        person: Person,
        /// `event`, `page` or `screen`.
        kind: &'static str,
        /// The event name (a page view's URL, a screen's name).
        name: String,
        /// The event data.
        data: Map<String, Json>,
        /// When it happened (Unix seconds).
        timestamp: i64,
        /// The idempotency id: the message id as a ULID.
        id: String,
    },
    /// `PUT /api/v1/customers/{id}/devices`.
    AddDevice {
        /// The person id.
        id: String,
        /// The device.
        device: Device,
    },
    /// `DELETE /api/v1/customers/{id}/devices/{token}`: a push token that is no longer valid.
    DeleteDevice {
        /// The person id.
        id: String,
        /// The push token.
        token: String,
    },
    /// `DELETE /api/v1/customers/{id}` (from `Client::erase_user`).
    Delete {
        /// The person id.
        id: String,
    },
    /// `POST /api/v1/customers/{id}/suppress`: delete the person and block the id.
    Suppress {
        /// The person id.
        id: String,
    },
    /// `POST /api/v1/customers/{id}/unsuppress`.
    Unsuppress {
        /// The person id.
        id: String,
    },
    /// `POST /api/v1/merge_customers`: `secondary` is merged into `primary` and deleted.
    Merge {
        /// The person kept (the alias's userId).
        primary: String,
        /// The person merged into it (the alias's previousId).
        secondary: String,
    },
}

/// Who an event is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Person {
    /// An identified person (the path id).
    Id(String),
    /// An anonymous visitor (`anonymous_id`), merged into a person once identified.
    Anonymous(String),
}

/// A push device, as Customer.io takes it: `id` is the push token (APNs or FCM), never an
/// app's own device id.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Device {
    /// The push token.
    pub token: String,
    /// `ios` or `android`.
    pub platform: DevicePlatform,
    /// When the device was last used (Unix seconds).
    pub last_used: Option<i64>,
    /// Other device attributes (`device_os`, `app_version`, `device_model`, …).
    pub attributes: Map<String, Json>,
}

/// The push platforms Customer.io knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DevicePlatform {
    /// Apple (APNs, or FCM on iOS).
    Ios,
    /// Android (FCM).
    Android,
}

impl DevicePlatform {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            DevicePlatform::Ios => "ios",
            DevicePlatform::Android => "android",
        }
    }
}

/// What an event becomes: an operation, or nothing (with the reason, counted as `skipped`).
#[derive(Clone, Debug, PartialEq)]
pub enum Mapped {
    /// Send this.
    Send(Operation),
    /// Customer.io has nothing for it (a `web` device, a Huawei token): not sent, counted as
    /// skipped, warned once.
    Skip(String),
}

impl Device {
    /// The device of an OpenCDP `registerDevice` call (its wire keys, spec §1.2): on `ios` the
    /// `apnToken` when given, else the `fcmToken`; on `android` the `fcmToken`. `web` has no
    /// Customer.io platform: `Ok(None)`. `osVersion`, `model` and `appVersion` become
    /// `device_os`, `device_model` and `app_version`; `last_active_at` (RFC 3339 or Unix
    /// seconds) becomes `last_used`; `attributes` are merged in. `deviceId` and `name` stay
    /// OpenCDP's (a device id is not a push token: the hazard of OpenCDP's own dual-write, §1.6).
    ///
    /// ```
    /// use trackway::props;
    /// use trackway::destination::customerio::Device;
    /// let ios = props! { "deviceId" => "d1", "platform" => "ios", "fcmToken" => "fcm", "apnToken" => "apn" };
    /// assert_eq!(Device::from_opencdp(&ios).unwrap().unwrap().token, "apn");
    /// let web = props! { "deviceId" => "d2", "platform" => "web", "fcmToken" => "fcm" };
    /// assert!(Device::from_opencdp(&web).unwrap().is_none());
    /// ```
    ///
    /// # Errors
    /// A platform other than `ios`, `android` or `web`, or no token for the platform.
    pub fn from_opencdp(props: &Properties) -> Result<Option<Device>, String> {
        let text = |k: &str| props.get(k).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty());
        let platform = match text("platform") {
            Some("ios") => DevicePlatform::Ios,
            Some("android") => DevicePlatform::Android,
            Some("web") => return Ok(None),
            Some(other) => return Err(format!("device platform {other:?} is not one of android, ios, web")),
            None => return Err("device platform is missing (android, ios or web)".into()),
        };
        let token = match platform {
            DevicePlatform::Ios => text("apnToken").or_else(|| text("fcmToken")),
            DevicePlatform::Android => text("fcmToken"),
        };
        let Some(token) = token else {
            return Err(format!(
                "no push token for {} (fcmToken{})",
                platform.as_str(),
                match platform {
                    DevicePlatform::Ios => " or apnToken",
                    DevicePlatform::Android => "",
                }
            ));
        };
        let mut attributes = Map::new();
        for (from, to) in [("osVersion", "device_os"), ("model", "device_model"), ("appVersion", "app_version")] {
            if let Some(v) = text(from) {
                attributes.insert(to.to_owned(), Json::String(v.to_owned()));
            }
        }
        if let Some(Value::Object(extra)) = props.get("attributes") {
            for (k, v) in extra.iter() {
                attributes.insert(k.to_owned(), to_json(v));
            }
        }
        let last_used = props.get("last_active_at").and_then(unix_seconds);
        Ok(Some(Device { token: token.to_owned(), platform, last_used, attributes }))
    }

    /// The v1 body: `{"device":{"id":<token>,"platform":…,"last_used":…,"attributes":{…}}}`
    /// (`attributes` left out when empty, as customerio-node does).
    pub fn v1_body(&self) -> Json {
        let mut device = Map::new();
        device.insert("id".into(), Json::String(self.token.clone()));
        device.insert("platform".into(), Json::String(self.platform.as_str().into()));
        if let Some(t) = self.last_used {
            device.insert("last_used".into(), Json::from(t));
        }
        if !self.attributes.is_empty() {
            device.insert("attributes".into(), Json::Object(self.attributes.clone()));
        }
        json!({ "device": device })
    }
}

/// A property as JSON.
fn to_json(value: &Value) -> Json {
    serde_json::to_value(value).unwrap_or(Json::Null)
}

/// Properties as a JSON object.
pub(super) fn to_map(props: &Properties) -> Map<String, Json> {
    props.iter().map(|(k, v)| (k.to_owned(), to_json(v))).collect()
}

/// Unix seconds of a timestamp given as RFC 3339 text or as a number (seconds; a float is cut).
fn unix_seconds(value: &Value) -> Option<i64> {
    match value {
        Value::String(s) => s.parse::<Timestamp>().ok().map(Timestamp::unix_seconds),
        Value::Int(i) => Some(*i),
        Value::UInt(u) => i64::try_from(*u).ok(),
        Value::Float(f) if f.is_finite() => Some(f.trunc() as i64),
        _ => None,
    }
}

/// Maps one stored event (`id` its message id) to what Customer.io gets.
///
/// `opencdp_devices`: the event name OpenCDP's `registerDevice` events carry, if any.
pub(super) fn operation(event: &Event, id: MessageId, opencdp_devices: Option<&str>) -> Result<Mapped, String> {
    let user = event.identity.user_id.as_deref().map(str::to_owned);
    let timestamp = event.timestamp.unix_seconds();
    let name = event.name.as_deref().unwrap_or_default();
    let need_user = |what: &str| {
        user.clone().ok_or_else(|| format!("{what} needs an identified person (Customer.io has no anonymous {what})"))
    };
    if event.kind == EventKind::Track {
        match name {
            ERASE_USER_EVENT => return Ok(Mapped::Send(Operation::Delete { id: need_user("delete")? })),
            SUPPRESS_EVENT => return Ok(Mapped::Send(Operation::Suppress { id: need_user("suppress")? })),
            UNSUPPRESS_EVENT => return Ok(Mapped::Send(Operation::Unsuppress { id: need_user("unsuppress")? })),
            MERGE_EVENT => {
                let primary = need_user("merge")?;
                let secondary = match event.properties.get("secondary_id") {
                    Some(Value::String(s)) if !s.trim().is_empty() => s.to_string(),
                    _ => return Err("a merge needs the secondary person's id (`secondary_id`)".into()),
                };
                if secondary == primary {
                    // Customer.io would refuse it; there is nothing to merge.
                    return Ok(Mapped::Skip("a merge of a person into itself".into()));
                }
                return Ok(Mapped::Send(Operation::Merge { primary, secondary }));
            }
            n if n.starts_with(COMMAND_PREFIX) => return Err(format!("unknown Customer.io command {n:?}")),
            PUSH_TOKEN_EVENT if event.properties.get("push_notification_token").is_some() => {
                return push_token(event, need_user("a push device")?, timestamp);
            }
            n if Some(n) == opencdp_devices && event.properties.get("platform").is_some() => {
                let id = need_user("a push device")?;
                return Ok(match Device::from_opencdp(&event.properties)? {
                    Some(mut device) => {
                        device.last_used.get_or_insert(timestamp);
                        Mapped::Send(Operation::AddDevice { id, device })
                    }
                    None => Mapped::Skip("a web device (Customer.io's push platforms are ios and android)".into()),
                });
            }
            _ => {}
        }
    }
    let person = match (user, &event.identity.anonymous_id) {
        (Some(id), _) => Person::Id(id),
        (None, Some(anonymous)) => Person::Anonymous(anonymous.clone()),
        (None, None) => return Err("the event names no person (no user id, no anonymous id)".into()),
    };
    let ulid = ulid_from_uuid(id.as_uuid());
    let mut data = to_map(&event.properties);
    let op = match event.kind {
        EventKind::Identify => {
            let Person::Id(id) = person else {
                return Err("identify needs a person id".into());
            };
            if let Some(v) = data.get_mut("created_at")
                && let Some(secs) = event.properties.get("created_at").and_then(unix_seconds)
            {
                *v = Json::from(secs);
            }
            // App mode: the anonymous id merges the visitor's anonymous events into the person.
            if let Some(anonymous) = &event.identity.anonymous_id
                && !data.contains_key("anonymous_id")
            {
                data.insert("anonymous_id".into(), Json::String(anonymous.clone()));
            }
            Operation::Identify { id, attributes: data, timestamp }
        }
        EventKind::Track => {
            Operation::Event { person, kind: "event", name: name.to_owned(), data, timestamp, id: ulid }
        }
        EventKind::Page => {
            let page = event.page.clone().unwrap_or_default();
            if let Some(title) = page.title {
                data.entry("title").or_insert(Json::String(title));
            }
            if let Some(referrer) = page.referrer {
                data.entry("referrer").or_insert(Json::String(referrer));
            }
            Operation::Event { person, kind: "page", name: page.url, data, timestamp, id: ulid }
        }
        EventKind::Screen => {
            Operation::Event { person, kind: "screen", name: name.to_owned(), data, timestamp, id: ulid }
        }
    };
    Ok(Mapped::Send(op))
}

/// App mode's push token: a valid FCM token is an android device; an invalidated one is removed;
/// a Huawei token has no Customer.io platform.
fn push_token(event: &Event, id: String, timestamp: i64) -> Result<Mapped, String> {
    let props = &event.properties;
    let token = props.get("push_notification_token").and_then(Value::as_str).unwrap_or_default().to_owned();
    if token.trim().is_empty() {
        return Err("the push token is empty".into());
    }
    let platform = match props.get("platform").and_then(Value::as_str) {
        Some("android") => DevicePlatform::Android,
        Some("ios") => DevicePlatform::Ios,
        Some(other) => {
            return Ok(Mapped::Skip(format!(
                "a {other} push token (Customer.io's push platforms are ios and android)"
            )));
        }
        None => return Err("the push token has no platform".into()),
    };
    if props.get("valid").and_then(Value::as_bool) == Some(false) {
        return Ok(Mapped::Send(Operation::DeleteDevice { id, token }));
    }
    let device = Device { token, platform, last_used: Some(timestamp), attributes: Map::new() };
    Ok(Mapped::Send(Operation::AddDevice { id, device }))
}

/// A path segment as `encodeURIComponent` writes it (what customerio-node sends).
pub(super) fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Operation {
    /// The v1 request: method, path (from the host root, ids escaped) and body.
    pub fn v1(&self) -> (http::Method, String, Option<Json>) {
        let customer = |id: &str| format!("/api/v1/customers/{}", encode_segment(id));
        match self {
            Operation::Identify { id, attributes, timestamp } => {
                let mut body = attributes.clone();
                body.entry("_timestamp").or_insert(Json::from(*timestamp));
                (http::Method::PUT, customer(id), Some(Json::Object(body)))
            }
            Operation::Event { person, kind, name, data, timestamp, id } => {
                let mut body = Map::new();
                if *kind != "event" {
                    body.insert("type".into(), Json::String((*kind).into()));
                }
                body.insert("name".into(), Json::String(name.clone()));
                body.insert("data".into(), Json::Object(data.clone()));
                body.insert("timestamp".into(), Json::from(*timestamp));
                body.insert("id".into(), Json::String(id.clone()));
                match person {
                    Person::Id(person) => {
                        (http::Method::POST, format!("{}/events", customer(person)), Some(body.into()))
                    }
                    Person::Anonymous(anonymous) => {
                        body.insert("anonymous_id".into(), Json::String(anonymous.clone()));
                        (http::Method::POST, "/api/v1/events".into(), Some(body.into()))
                    }
                }
            }
            Operation::AddDevice { id, device } => {
                (http::Method::PUT, format!("{}/devices", customer(id)), Some(device.v1_body()))
            }
            Operation::DeleteDevice { id, token } => {
                (http::Method::DELETE, format!("{}/devices/{}", customer(id), encode_segment(token)), None)
            }
            Operation::Delete { id } => (http::Method::DELETE, customer(id), None),
            Operation::Suppress { id } => (http::Method::POST, format!("{}/suppress", customer(id)), None),
            Operation::Unsuppress { id } => (http::Method::POST, format!("{}/unsuppress", customer(id)), None),
            Operation::Merge { primary, secondary } => (
                http::Method::POST,
                "/api/v1/merge_customers".into(),
                Some(json!({ "primary": { "id": primary }, "secondary": { "id": secondary } })),
            ),
        }
    }

    /// The v2 batch item (spec §2.2), or `None` for what goes through v1 in every mode: anonymous
    /// events and devices, whose v2 bodies the spec does not document.
    pub fn v2(&self) -> Option<Json> {
        self.v2_item().map(|item| serde_json::to_value(item).unwrap_or(Json::Null))
    }

    /// The v2 batch item, serialized straight from the operation (see [`V2Item`]).
    pub(super) fn v2_item(&self) -> Option<V2Item<'_>> {
        match self {
            Operation::Event { person: Person::Anonymous(_), .. }
            | Operation::AddDevice { .. }
            | Operation::DeleteDevice { .. } => None,
            _ => Some(V2Item(self)),
        }
    }
}

/// An operation as a v2 batch item, serialized from the operation itself: no JSON tree of the
/// item and no copy of its attributes, which building one with `json!` made for every event.
/// Keys in the order a `serde_json::Map` (sorted) gave them, so the bytes are as before.
pub(super) struct V2Item<'a>(&'a Operation);

/// `{"id": …}`
struct Id<'a>(&'a str);

impl Serialize for Id<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(1))?;
        map.serialize_entry("id", self.0)?;
        map.end()
    }
}

/// An item that is an action on a person and nothing more: `action` and `identifiers`.
fn person_action<M: SerializeMap>(map: &mut M, action: &str, id: &str) -> Result<(), M::Error> {
    map.serialize_entry("action", action)?;
    map.serialize_entry("identifiers", &Id(id))
}

impl Serialize for V2Item<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        match self.0 {
            Operation::Identify { id, attributes, timestamp } => {
                map.serialize_entry("action", "identify")?;
                map.serialize_entry("attributes", attributes)?;
                map.serialize_entry("identifiers", &Id(id))?;
                map.serialize_entry("timestamp", timestamp)?;
            }
            Operation::Event { person: Person::Id(who), kind, name, data, timestamp, id } => {
                map.serialize_entry("action", kind)?;
                map.serialize_entry("attributes", data)?;
                map.serialize_entry("id", id)?;
                map.serialize_entry("identifiers", &Id(who))?;
                map.serialize_entry("name", name)?;
                map.serialize_entry("timestamp", timestamp)?;
            }
            Operation::Delete { id } => person_action(&mut map, "delete", id)?,
            Operation::Suppress { id } => person_action(&mut map, "suppress", id)?,
            Operation::Unsuppress { id } => person_action(&mut map, "unsuppress", id)?,
            Operation::Merge { primary, secondary } => {
                map.serialize_entry("action", "merge")?;
                map.serialize_entry("primary", &Id(primary))?;
                map.serialize_entry("secondary", &Id(secondary))?;
            }
            // `v2_item` gives no item for these: they go through v1.
            Operation::Event { person: Person::Anonymous(_), .. }
            | Operation::AddDevice { .. }
            | Operation::DeleteDevice { .. } => {}
        }
        map.serialize_entry("type", "person")?;
        map.end()
    }
}

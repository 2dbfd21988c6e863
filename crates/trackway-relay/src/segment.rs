//! The Segment HTTP Tracking API's messages (`docs/segment-http.md`): limits, parsing, the
//! clock-skew correction and the conversion to trackway events.
//!
//! `track`, `identify`, `page` and `screen` become trackway events of the same kind. `alias` and
//! `group` have no trackway equivalent: they are stored as sent and every destination
//! dead-letters them with the reason, so nothing accepted is dropped silently.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value as Json;
use serde_json::value::RawValue;
use trackway_wire::{CompactString, Context, Event, EventKind, Identity, MessageId, PageInfo, Properties, Timestamp};

/// Most bytes of one message (Segment: 32 KB).
pub const MAX_EVENT_BYTES: usize = 32 * 1024;
/// Most bytes of a `/v1/batch` request (Segment: 500 KB).
pub const MAX_BATCH_BYTES: usize = 500 * 1024;
/// Most messages in a `/v1/batch` request (Segment: 2 500).
pub const MAX_BATCH_EVENTS: usize = 2500;
/// Segment's message for a request or message over its size limit.
pub const PAYLOAD_LIMIT_MESSAGE: &str = "Exceed payload limit";

/// The namespace of the ids made for `messageId`s that are not UUIDs (a UUIDv5 of the text, so
/// a resent message gets the same trackway id).
const MESSAGE_ID_NAMESPACE: uuid::Uuid = uuid::uuid!("5c4f2b8e-2d0b-4a53-9c8e-9a6f4f0b7c11");

/// A Segment call type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// `track`
    Track,
    /// `identify`
    Identify,
    /// `page`
    Page,
    /// `screen`
    Screen,
    /// `alias`
    Alias,
    /// `group`
    Group,
}

impl Call {
    /// The call named by a path segment or a batch item's `type`.
    pub fn parse(name: &str) -> Option<Call> {
        Some(match name {
            "track" => Call::Track,
            "identify" => Call::Identify,
            "page" => Call::Page,
            "screen" => Call::Screen,
            "alias" => Call::Alias,
            "group" => Call::Group,
            _ => return None,
        })
    }

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Call::Track => "track",
            Call::Identify => "identify",
            Call::Page => "page",
            Call::Screen => "screen",
            Call::Alias => "alias",
            Call::Group => "group",
        }
    }
}

/// A message refused, with the status and message the ingest answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    /// HTTP status (400).
    pub status: u16,
    /// The answer's message.
    pub message: String,
}

fn bad(message: impl Into<String>) -> Refused {
    Refused { status: 400, message: message.into() }
}

/// One message ready to append.
#[derive(Debug, Clone)]
pub struct Converted {
    /// The id the log deduplicates on (the sender's `messageId`, or a made-up one).
    pub msg_id: String,
    /// The call.
    pub call: Call,
    /// A trackway event's JSON, or for `alias`/`group` the message as sent.
    pub payload: Vec<u8>,
}

/// The fields the relay reads from a Segment message (the rest is ignored).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Message {
    #[serde(rename = "type")]
    kind: Option<String>,
    user_id: Option<Json>,
    anonymous_id: Option<Json>,
    /// `alias`: the id the person had before `userId`.
    previous_id: Option<Json>,
    event: Option<String>,
    name: Option<String>,
    properties: Option<Json>,
    traits: Option<Json>,
    context: Option<Json>,
    timestamp: Option<String>,
    original_timestamp: Option<String>,
    sent_at: Option<String>,
    message_id: Option<String>,
    write_key: Option<String>,
}

/// A `/v1/batch` body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Batch {
    batch: Vec<Box<RawValue>>,
    sent_at: Option<String>,
    context: Option<Json>,
    write_key: Option<String>,
}

/// Parses the body of a single call (`/v1/track` …) received at `received`. Returns the
/// `writeKey` the body carries, if any, and the message.
///
/// # Errors
/// Invalid JSON, a body over 32 KB, a message Segment would refuse.
pub fn parse_single(call: Call, body: &[u8], received: Timestamp) -> Result<(Option<String>, Converted), Refused> {
    if body.len() > MAX_EVENT_BYTES {
        return Err(bad(PAYLOAD_LIMIT_MESSAGE));
    }
    let message: Message = serde_json::from_slice(body).map_err(|e| bad(format!("Invalid JSON: {e}")))?;
    let key = message.write_key.clone();
    Ok((key, convert(call, message, body, None, None, received)?))
}

/// Parses a `/v1/batch` body. Returns the `writeKey` it carries, if any, and the messages in order.
///
/// # Errors
/// Invalid JSON, over 500 KB or 2 500 messages, a message over 32 KB or refused (its index is
/// named).
pub fn parse_batch(body: &[u8], received: Timestamp) -> Result<(Option<String>, Vec<Converted>), Refused> {
    if body.len() > MAX_BATCH_BYTES {
        return Err(bad(PAYLOAD_LIMIT_MESSAGE));
    }
    let batch: Batch = serde_json::from_slice(body).map_err(|e| bad(format!("Invalid JSON: {e}")))?;
    if batch.batch.len() > MAX_BATCH_EVENTS {
        return Err(bad(format!(
            "{PAYLOAD_LIMIT_MESSAGE}: {} messages, at most {MAX_BATCH_EVENTS}",
            batch.batch.len()
        )));
    }
    let mut out = Vec::with_capacity(batch.batch.len());
    for (i, raw) in batch.batch.iter().enumerate() {
        let text = raw.get().as_bytes();
        if text.len() > MAX_EVENT_BYTES {
            return Err(bad(format!("{PAYLOAD_LIMIT_MESSAGE}: batch[{i}] is {} bytes", text.len())));
        }
        let message: Message = serde_json::from_slice(text).map_err(|e| bad(format!("batch[{i}]: {e}")))?;
        let Some(call) = message.kind.as_deref().and_then(Call::parse) else {
            return Err(bad(format!("batch[{i}]: unknown type {:?}", message.kind.as_deref().unwrap_or(""))));
        };
        let converted = convert(call, message, text, batch.sent_at.as_deref(), batch.context.as_ref(), received)
            .map_err(|e| bad(format!("batch[{i}]: {}", e.message)))?;
        out.push(converted);
    }
    Ok((batch.write_key, out))
}

/// A stored Segment `alias` (previousId → userId) as the trackway event a Customer.io
/// destination sends as a merge ([`MERGE_EVENT`](trackway::destination::customerio::MERGE_EVENT):
/// the person `userId` the primary, `previousId` the secondary merged into it), with the alias's
/// own message id (so the event id, and a redelivery's, is the same) and time.
///
/// # Errors
/// The alias lacks `userId` or `previousId` (Customer.io has nothing to merge), or is not valid.
pub fn alias_as_merge(raw: &[u8]) -> Result<Vec<u8>, String> {
    let m: Message = serde_json::from_slice(raw).map_err(|e| format!("stored alias is not valid: {e}"))?;
    let (Some(user), Some(previous)) = (id_text(&m.user_id), id_text(&m.previous_id)) else {
        return Err("Segment `alias` needs userId and previousId to become a Customer.io merge".into());
    };
    let track = serde_json::json!({
        "type": "track",
        "userId": user,
        "event": trackway::destination::customerio::MERGE_EVENT,
        "properties": { "secondary_id": previous },
        "messageId": m.message_id,
        "timestamp": m.timestamp.or(m.original_timestamp),
        "context": m.context,
    });
    // Stored as sent, so the sender's clock is not corrected here (the merge's time is not
    // used by Customer.io); an alias with a time that does not parse was refused at ingest.
    let body = serde_json::to_vec(&track).map_err(|e| e.to_string())?;
    let (_, converted) = parse_single(Call::Track, &body, Timestamp::now()).map_err(|r| r.message)?;
    Ok(converted.payload)
}

fn id_text(v: &Option<Json>) -> Option<String> {
    match v {
        Some(Json::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Json::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

fn parse_time(what: &str, text: &str) -> Result<Timestamp, Refused> {
    text.parse::<Timestamp>().map_err(|_| bad(format!("{what} {text:?} is not an ISO 8601 date")))
}

/// The event time corrected for the sender's clock skew, as Segment does:
/// `timestamp + (receivedAt − sentAt)` when both are given, else `timestamp`, else `receivedAt`.
pub fn corrected_time(timestamp: Option<Timestamp>, sent_at: Option<Timestamp>, received: Timestamp) -> Timestamp {
    match (timestamp, sent_at) {
        (Some(t), Some(sent)) => Timestamp::from_unix_millis(
            t.unix_millis().saturating_add(received.unix_millis().saturating_sub(sent.unix_millis())),
        ),
        (Some(t), None) => t,
        (None, _) => received,
    }
}

fn convert(
    call: Call,
    m: Message,
    raw: &[u8],
    batch_sent_at: Option<&str>,
    batch_context: Option<&Json>,
    received: Timestamp,
) -> Result<Converted, Refused> {
    let user_id = id_text(&m.user_id);
    let anonymous_id = id_text(&m.anonymous_id);
    if user_id.is_none() && anonymous_id.is_none() && call != Call::Alias {
        return Err(bad("userId or anonymousId is required"));
    }
    let msg_id = m.message_id.clone().filter(|s| !s.is_empty());
    let id = match &msg_id {
        Some(text) => text
            .parse::<MessageId>()
            .unwrap_or_else(|_| MessageId::from_uuid(uuid::Uuid::new_v5(&MESSAGE_ID_NAMESPACE, text.as_bytes()))),
        None => MessageId::new_v7(received),
    };
    let msg_id = msg_id.unwrap_or_else(|| id.to_string());
    if matches!(call, Call::Alias | Call::Group) {
        return Ok(Converted { msg_id, call, payload: raw.to_vec() });
    }
    let timestamp =
        m.timestamp.as_deref().or(m.original_timestamp.as_deref()).map(|t| parse_time("timestamp", t)).transpose()?;
    let sent_at = m.sent_at.as_deref().or(batch_sent_at).map(|t| parse_time("sentAt", t)).transpose()?;
    let context = m.context.as_ref().or(batch_context);
    let props_json = if call == Call::Identify { m.traits.as_ref() } else { m.properties.as_ref() };
    let properties: Properties = match props_json {
        None | Some(Json::Null) => Properties::default(),
        Some(v @ Json::Object(_)) => serde_json::from_value(v.clone()).map_err(|e| bad(format!("properties: {e}")))?,
        Some(_) => {
            return Err(bad(if call == Call::Identify {
                "traits must be an object"
            } else {
                "properties must be an object"
            }));
        }
    };
    let (kind, name, page) = match call {
        Call::Track => {
            let Some(event) = m.event.filter(|e| !e.is_empty()) else { return Err(bad("track event is missing name")) };
            (EventKind::Track, Some(event), None)
        }
        Call::Identify => (EventKind::Identify, None, None),
        Call::Screen => (EventKind::Screen, m.name, None),
        _ => {
            let prop = |k: &str| m.properties.as_ref().and_then(|p| p.get(k)).and_then(Json::as_str).map(str::to_owned);
            let ctx_page = |k: &str| {
                context.and_then(|c| c.get("page")).and_then(|p| p.get(k)).and_then(Json::as_str).map(str::to_owned)
            };
            let url = prop("url").or_else(|| ctx_page("url")).or_else(|| prop("path")).unwrap_or_default();
            let page = PageInfo {
                url,
                title: prop("title").or_else(|| ctx_page("title")),
                referrer: prop("referrer").or_else(|| ctx_page("referrer")),
            };
            (EventKind::Page, m.name, Some(page))
        }
    };
    let text = |path: &[&str]| {
        let mut v = context?;
        for p in path {
            v = v.get(*p)?;
        }
        v.as_str().map(str::to_owned)
    };
    let identity = Identity {
        anonymous_id,
        user_id: user_id.map(CompactString::from),
        ip: text(&["ip"]),
        user_agent: text(&["userAgent"]),
        ..Identity::default()
    };
    let event = Event {
        id,
        kind,
        name: name.map(CompactString::from),
        timestamp: corrected_time(timestamp, sent_at, received),
        properties,
        identity,
        session_id: None,
        page,
        // Delivered after a queue: destinations must send the event's own time, not let their
        // server stamp the delivery time.
        imported: true,
        default_keys: Vec::new(),
        context: Arc::new(Context {
            library: text(&["library", "name"]).unwrap_or_else(|| "segment-http".into()),
            library_version: text(&["library", "version"]).unwrap_or_default(),
            os: None,
            locale: text(&["locale"]),
            app_name: text(&["app", "name"]),
            app_version: text(&["app", "version"]),
            os_name: text(&["os", "name"]),
            os_version: text(&["os", "version"]),
            device_model: text(&["device", "model"]),
            device_type: text(&["device", "type"]),
            device_id: text(&["device", "id"]),
        }),
    };
    let payload = serde_json::to_vec(&event).map_err(|e| bad(format!("event: {e}")))?;
    Ok(Converted { msg_id, call, payload })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().expect("timestamp")
    }

    #[test]
    fn clock_skew_is_corrected_with_sent_at() {
        // The device clock is 1 h behind: sentAt 09:00 received at 10:00.
        let t = corrected_time(
            Some(at("2024-01-01T08:59:00.000Z")),
            Some(at("2024-01-01T09:00:00.000Z")),
            at("2024-01-01T10:00:00.000Z"),
        );
        assert_eq!(t, at("2024-01-01T09:59:00.000Z"));
        assert_eq!(corrected_time(None, None, at("2024-01-01T10:00:00.000Z")), at("2024-01-01T10:00:00.000Z"));
    }

    #[test]
    fn track_becomes_a_trackway_event() {
        let body = br#"{"userId":"u1","event":"Order Completed","properties":{"revenue":9.5},"messageId":"m-1",
            "timestamp":"2024-01-01T08:59:00.000Z","sentAt":"2024-01-01T09:00:00.000Z",
            "context":{"ip":"203.0.113.9","library":{"name":"analytics-python","version":"2.3.0"}}}"#;
        let (_, c) = parse_single(Call::Track, body, at("2024-01-01T09:00:01.000Z")).expect("accepted");
        assert_eq!(c.msg_id, "m-1");
        let e: Event = serde_json::from_slice(&c.payload).expect("event");
        assert_eq!(e.kind, EventKind::Track);
        assert_eq!(e.name.as_deref(), Some("Order Completed"));
        assert_eq!(e.identity.user_id.as_deref(), Some("u1"));
        assert_eq!(e.identity.ip.as_deref(), Some("203.0.113.9"));
        assert_eq!(e.timestamp, at("2024-01-01T08:59:01.000Z"));
        assert_eq!(e.context.library, "analytics-python");
        // The same messageId gives the same trackway id.
        let (_, again) = parse_single(Call::Track, body, at("2024-01-01T09:00:05.000Z")).expect("accepted");
        let e2: Event = serde_json::from_slice(&again.payload).expect("event");
        assert_eq!(e.id, e2.id);
    }

    #[test]
    fn refusals_carry_segments_messages() {
        let big = format!(r#"{{"userId":"u","event":"e","properties":{{"x":"{}"}}}}"#, "a".repeat(MAX_EVENT_BYTES));
        let err = parse_single(Call::Track, big.as_bytes(), Timestamp::now()).expect_err("too big");
        assert_eq!(err.message, PAYLOAD_LIMIT_MESSAGE);
        let err = parse_single(Call::Track, br#"{"event":"e"}"#, Timestamp::now()).expect_err("no id");
        assert!(err.message.contains("userId or anonymousId"), "{err}");
        let err = parse_single(Call::Track, br#"{"userId":"u"}"#, Timestamp::now()).expect_err("no name");
        assert!(err.message.contains("missing name"), "{err}");
        let items = vec![r#"{"type":"track","userId":"u","event":"e"}"#; MAX_BATCH_EVENTS + 1].join(",");
        let err = parse_batch(format!(r#"{{"batch":[{items}]}}"#).as_bytes(), Timestamp::now()).expect_err("too many");
        assert!(err.message.starts_with(PAYLOAD_LIMIT_MESSAGE), "{err}");
    }

    #[test]
    fn an_alias_becomes_a_customer_io_merge_event_with_its_own_id() {
        let raw = br#"{"type":"alias","previousId":"anon-1","userId":"u1","messageId":"a1","timestamp":"2024-01-01T00:00:00Z"}"#;
        let payload = alias_as_merge(raw).expect("a merge");
        let event: Event = serde_json::from_slice(&payload).expect("a trackway event");
        assert_eq!(event.name.as_deref(), Some(trackway::destination::customerio::MERGE_EVENT));
        assert_eq!(event.identity.user_id.as_deref(), Some("u1"));
        assert_eq!(event.properties.get("secondary_id").and_then(|v| v.as_str()), Some("anon-1"));
        assert_eq!(alias_as_merge(raw).expect("again"), payload, "the same event each time");
        let err = alias_as_merge(br#"{"type":"alias","userId":"u1","messageId":"a2"}"#).expect_err("no previousId");
        assert!(err.contains("previousId"), "{err}");
    }

    #[test]
    fn batch_items_take_the_batch_sent_at_and_alias_is_kept_as_sent() {
        let body = br#"{"sentAt":"2024-01-01T09:00:00.000Z","batch":[
            {"type":"identify","userId":"u1","traits":{"plan":"pro"},"timestamp":"2024-01-01T09:00:00.000Z"},
            {"type":"alias","previousId":"anon","userId":"u1","messageId":"a1"}]}"#;
        let (_, items) = parse_batch(body, at("2024-01-01T09:00:02.000Z")).expect("accepted");
        let e: Event = serde_json::from_slice(&items[0].payload).expect("event");
        assert_eq!(e.kind, EventKind::Identify);
        assert_eq!(e.timestamp, at("2024-01-01T09:00:02.000Z"));
        assert_eq!(items[1].call, Call::Alias);
        assert!(String::from_utf8_lossy(&items[1].payload).contains("previousId"));
    }
}

//! The generic JSON-over-HTTP destination: POSTs a JSON array of trackway events to one URL.

use bytes::{BufMut, BytesMut};
use trackway_wire::{EventKind, Timestamp};

use super::{BatchLimits, Delivery, Destination, DestinationState, Encoded, EventRecord, Request, parse_http_url};

/// POSTs batches of trackway's own events, as a JSON array, to a URL.
///
/// The body is the stored bytes joined with commas, so sending costs no re-serialization.
/// Secrets (an `Authorization` header, say) go in the destination's
/// [`HttpOptions`](crate::HttpOptions) headers, which are redacted everywhere.
///
/// ```
/// use trackway::destination::JsonHttp;
/// let events = JsonHttp::new("http://127.0.0.1:8080/events").name("warehouse").batch_size(500);
/// ```
#[derive(Clone, Debug)]
pub struct JsonHttp {
    name: String,
    url: String,
    limits: BatchLimits,
    delivery: Delivery,
    kinds: Option<Vec<EventKind>>,
    event_types: Option<Vec<super::EventType>>,
}

impl JsonHttp {
    /// A destination named `json` posting to `url`; batches of 100 events or 512 KiB, up to 4
    /// requests in flight, all event kinds.
    pub fn new(url: impl Into<String>) -> Self {
        JsonHttp {
            name: "json".to_owned(),
            url: url.into(),
            limits: BatchLimits::default(),
            delivery: Delivery::Parallel { max_in_flight: 4 },
            kinds: None,
            event_types: None,
        }
    }

    /// Renames the destination (names must be unique within a client).
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Most events per request.
    #[must_use]
    pub fn batch_size(mut self, events: usize) -> Self {
        self.limits.max_events = events.max(1);
        self
    }

    /// Most bytes of events per request.
    #[must_use]
    pub fn batch_bytes(mut self, bytes: usize) -> Self {
        self.limits.max_bytes = bytes.max(1);
        self
    }

    /// Most requests in flight at once.
    #[must_use]
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.delivery = Delivery::Parallel { max_in_flight: n.max(1) };
        self
    }

    /// Sends one request at a time, in order.
    #[must_use]
    pub fn ordered(mut self) -> Self {
        self.delivery = Delivery::Ordered;
        self
    }

    /// Takes only these event kinds (default: all).
    #[must_use]
    pub fn kinds(mut self, kinds: &[EventKind]) -> Self {
        self.kinds = Some(kinds.to_vec());
        self
    }

    /// Takes only these event types (default: all), e.g. a mapped project that takes only
    /// payments.
    #[must_use]
    pub fn event_types(mut self, types: &[super::EventType]) -> Self {
        self.event_types = Some(types.to_vec());
        self
    }
}

impl Destination for JsonHttp {
    fn name(&self) -> &str {
        &self.name
    }

    fn accepts(&self, kind: EventKind) -> bool {
        self.kinds.as_ref().is_none_or(|k| k.contains(&kind))
    }

    fn accepts_event_type(&self, event_type: super::EventType) -> bool {
        self.accepts(event_type.kind()) && self.event_types.as_ref().is_none_or(|t| t.contains(&event_type))
    }

    fn batch_limits(&self) -> BatchLimits {
        self.limits
    }

    fn delivery(&self) -> Delivery {
        self.delivery
    }

    fn base_url(&self) -> Option<&str> {
        Some(&self.url)
    }

    fn check_config(&self) -> Result<(), String> {
        parse_http_url("URL", &self.url).map(drop)
    }

    fn encode(&self, events: &[EventRecord], _: &DestinationState, _: Timestamp) -> Encoded {
        let len: usize = events.iter().map(|e| e.json_len() + 1).sum();
        let mut body = BytesMut::with_capacity(len + 2);
        body.put_u8(b'[');
        for (i, e) in events.iter().enumerate() {
            if i > 0 {
                body.put_u8(b',');
            }
            e.write_json(&mut body);
        }
        body.put_u8(b']');
        let request = Request::post(&self.url, body.freeze(), (0..events.len()).collect())
            .header(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        Encoded { requests: vec![request], ..Encoded::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trackway_wire::MessageId;

    #[test]
    fn body_is_the_stored_events_as_a_json_array() {
        let t = Timestamp::from_unix_millis(0);
        let records = [
            EventRecord::new(1, MessageId::new_v7(t), t, bytes::Bytes::from_static(br#"{"a":1}"#)),
            EventRecord::new(2, MessageId::new_v7(t), t, bytes::Bytes::from_static(br#"{"b":2}"#)),
        ];
        let out = JsonHttp::new("http://x/").encode(&records, &DestinationState::default(), t);
        assert_eq!(out.requests.len(), 1);
        assert_eq!(&out.requests[0].body[..], br#"[{"a":1},{"b":2}]"#);
        assert_eq!(out.requests[0].items, vec![0, 1]);
    }

    #[test]
    fn heads_are_joined_with_their_context() {
        let t = Timestamp::from_unix_millis(0);
        let ctx = bytes::Bytes::from_static(br#"{"library":"trackway"}"#);
        let records = [
            EventRecord::from_head(1, MessageId::new_v7(t), t, bytes::Bytes::from_static(br#"{"a":1"#), ctx.clone()),
            EventRecord::new(2, MessageId::new_v7(t), t, bytes::Bytes::from_static(br#"{"b":2}"#)),
        ];
        let out = JsonHttp::new("http://x/").encode(&records, &DestinationState::default(), t);
        assert_eq!(&out.requests[0].body[..], br#"[{"a":1,"context":{"library":"trackway"}},{"b":2}]"#);
        assert_eq!(&records[0].json()[..], br#"{"a":1,"context":{"library":"trackway"}}"#);
        assert_eq!(records[0].json_len(), records[0].json().len());
    }

    #[test]
    fn bad_urls_are_config_errors_without_credentials() {
        assert!(JsonHttp::new("ftp://x/").check_config().is_err());
        let err = JsonHttp::new("http://user:hunter2@[::1/").check_config().expect_err("bad");
        assert!(!err.contains("hunter2"), "{err}");
        assert_eq!(super::super::redact_url("http://user:hunter2@host/p"), "http://redacted@host/p");
    }
}

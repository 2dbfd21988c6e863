//! Stored events as OpenCDP requests: one request per event (the API has no batch call).

use serde::Serialize;
use serde::ser::SerializeMap;
use trackway_wire::{Event, EventKind, Properties, Value};

use super::OpenCdp;
use crate::destination::{Encoded, EventRecord, Request};
use crate::device::DEVICE_EVENT;

/// The name app mode gives a push-token event (`Client::track_push_token`).
pub(super) const PUSH_TOKEN_EVENT: &str = "notification_state";

/// `{"identifier": …, "properties": {…}}`
#[derive(Serialize)]
struct Identify<'a> {
    identifier: &'a str,
    properties: &'a Properties,
}

/// `{"identifier": …, "eventName": …, "properties": {…}}`
#[derive(Serialize)]
struct Track<'a> {
    identifier: &'a str,
    #[serde(rename = "eventName")]
    event_name: &'a str,
    properties: &'a Properties,
}

/// `{"identifier": …, <the device's fields>}`: the SDK spreads the device into the body.
struct RegisterDevice<'a> {
    identifier: &'a str,
    device: &'a Properties,
}

impl Serialize for RegisterDevice<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.device.len() + 1))?;
        map.serialize_entry("identifier", self.identifier)?;
        for (key, value) in self.device.iter().filter(|(k, _)| *k != "identifier") {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// One request per event; events OpenCDP cannot take are rejected with the reason.
pub(super) fn encode(cdp: &OpenCdp, events: &[EventRecord]) -> Encoded {
    let mut out = Encoded::default();
    for (i, record) in events.iter().enumerate() {
        match record.event().map_err(str::to_owned).and_then(request) {
            Ok((path, body)) => out.requests.push(json_request(cdp, &cdp.url(path), body, vec![i])),
            Err(reason) => out.rejected.push((i, reason)),
        }
    }
    out
}

/// A JSON POST carrying the events at `items`, with the key.
pub(super) fn json_request(cdp: &OpenCdp, url: &str, body: Vec<u8>, items: Vec<usize>) -> Request {
    let request = Request::post(url, body, items)
        .header(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    cdp.authorize(request)
}

/// The path and body of one event.
fn request(event: &Event) -> Result<(&'static str, Vec<u8>), String> {
    let identifier = event.identity.user_id.as_deref().filter(|u| !u.trim().is_empty());
    let json = |value: Result<Vec<u8>, serde_json::Error>| value.map_err(|e| format!("could not encode: {e}"));
    match event.kind {
        EventKind::Identify => {
            let identifier = identifier.ok_or("an identify without an identifier")?;
            let body = json(serde_json::to_vec(&Identify { identifier, properties: &event.properties }))?;
            Ok(("/v1/persons/identify", body))
        }
        EventKind::Track => {
            let name = event.name.as_deref().unwrap_or_default();
            match name {
                DEVICE_EVENT => {
                    let identifier = identifier.ok_or("a device registration without an identifier")?;
                    let body = json(serde_json::to_vec(&RegisterDevice { identifier, device: &event.properties }))?;
                    Ok(("/v1/persons/registerDevice", body))
                }
                PUSH_TOKEN_EVENT if event.properties.get("push_notification_token").is_some() => {
                    let device = app_push_token(&event.properties)?;
                    let identifier = identifier
                        .ok_or("an app-mode push token of a user not identified yet (OpenCDP needs an identifier)")?;
                    let body = json(serde_json::to_vec(&RegisterDevice { identifier, device: &device }))?;
                    Ok(("/v1/persons/registerDevice", body))
                }
                _ => {
                    let identifier = identifier.ok_or("an event without an identifier")?;
                    let body = json(serde_json::to_vec(&Track {
                        identifier,
                        event_name: name,
                        properties: &event.properties,
                    }))?;
                    Ok(("/v1/persons/track", body))
                }
            }
        }
        EventKind::Page | EventKind::Screen => Err(format!("OpenCDP has no {} views", event.kind.as_str())),
    }
}

/// App mode's push token as an OpenCDP device: a valid FCM token is an `android` device whose id
/// is the token (the app has no other id for it). OpenCDP has no call to unregister a device and
/// no Huawei platform.
fn app_push_token(props: &Properties) -> Result<Properties, String> {
    let token = props.get("push_notification_token").and_then(Value::as_str).unwrap_or_default();
    if props.get("valid").and_then(Value::as_bool) == Some(false) {
        return Err("an invalidated push token (OpenCDP has no call to unregister a device)".into());
    }
    match props.get("platform").and_then(Value::as_str) {
        Some("android") if !token.is_empty() => {
            Ok(Properties::with_capacity(3).with("deviceId", token).with("platform", "android").with("fcmToken", token))
        }
        Some("android") => Err("an empty push token".into()),
        other => Err(format!("a push token of platform {other:?} (OpenCDP takes FCM tokens on android, ios and web)")),
    }
}

#[cfg(test)]
mod tests {

    use serde_json::{Value as Json, json};
    use trackway_wire::{Identity, Timestamp, props};

    use super::*;
    use crate::destination::opencdp::OpenCdpConfig;

    fn cdp() -> OpenCdp {
        OpenCdpConfig::new("key-1").endpoint("https://cdp.example.com/gw/").opencdp().0
    }

    fn record(kind: EventKind, name: Option<&str>, user: Option<&str>, properties: Properties) -> EventRecord {
        let at = Timestamp::from_unix_millis(1_700_000_000_000);
        let event = Event {
            name: name.map(Into::into),
            properties,
            identity: user.map(Identity::user).unwrap_or_default(),
            ..Event::new(kind, at)
        };
        EventRecord::from_event(0, &event).expect("record")
    }

    fn encoded(r: EventRecord) -> Result<(String, Json), String> {
        let mut out = encode(&cdp(), std::slice::from_ref(&r));
        if let Some((_, reason)) = out.rejected.pop() {
            return Err(reason);
        }
        let request = out.requests.pop().expect("a request");
        assert_eq!(request.headers[http::header::AUTHORIZATION], "key-1");
        assert!(request.headers[http::header::AUTHORIZATION].is_sensitive());
        assert_eq!(request.headers[http::header::CONTENT_TYPE], "application/json");
        Ok((request.url, serde_json::from_slice(&request.body).expect("json")))
    }

    #[test]
    fn identify_track_and_devices_have_the_sdks_paths_and_keys() {
        let (url, body) =
            encoded(record(EventKind::Identify, None, Some("user_123"), props! { "plan" => "pro" })).expect("identify");
        assert_eq!(url, "https://cdp.example.com/gw/v1/persons/identify");
        assert_eq!(body, json!({"identifier": "user_123", "properties": {"plan": "pro"}}));

        let (url, body) =
            encoded(record(EventKind::Track, Some("purchase"), Some("user_123"), props! { "amount" => 99.9 }))
                .expect("track");
        assert_eq!(url, "https://cdp.example.com/gw/v1/persons/track");
        assert_eq!(body, json!({"identifier": "user_123", "eventName": "purchase", "properties": {"amount": 99.9}}));

        let (_, body) = encoded(record(EventKind::Track, Some("page_viewed"), Some("u"), props! {})).expect("track");
        assert_eq!(body["properties"], json!({}), "properties default to an empty object");

        let device = props! { "deviceId" => "device-abc", "platform" => "android", "fcmToken" => "tok" };
        let (url, body) = encoded(record(EventKind::Track, Some(DEVICE_EVENT), Some("user_123"), device)).expect("dev");
        assert_eq!(url, "https://cdp.example.com/gw/v1/persons/registerDevice");
        assert_eq!(
            body,
            json!({"identifier": "user_123", "deviceId": "device-abc", "platform": "android", "fcmToken": "tok"})
        );
    }

    #[test]
    fn app_mode_push_tokens_become_android_devices_or_are_rejected_with_the_reason() {
        let token = |platform: &str, valid: bool| {
            props! { "push_notification_token" => "tok", "platform" => platform, "valid" => valid, "description" => "x" }
        };
        let (url, body) =
            encoded(record(EventKind::Track, Some(PUSH_TOKEN_EVENT), Some("u"), token("android", true))).expect("fcm");
        assert!(url.ends_with("/v1/persons/registerDevice"));
        assert_eq!(body, json!({"identifier": "u", "deviceId": "tok", "platform": "android", "fcmToken": "tok"}));
        let err = encoded(record(EventKind::Track, Some(PUSH_TOKEN_EVENT), Some("u"), token("android", false)));
        assert!(err.unwrap_err().contains("unregister"));
        let err = encoded(record(EventKind::Track, Some(PUSH_TOKEN_EVENT), Some("u"), token("huawei", true)));
        assert!(err.unwrap_err().contains("huawei"));
        let err = encoded(record(EventKind::Track, Some(PUSH_TOKEN_EVENT), None, token("android", true)));
        assert!(err.unwrap_err().contains("not identified"));
    }

    #[test]
    fn views_and_anonymous_events_are_rejected() {
        assert!(encoded(record(EventKind::Screen, Some("Home"), Some("u"), props! {})).unwrap_err().contains("screen"));
        assert!(encoded(record(EventKind::Track, Some("x"), None, props! {})).unwrap_err().contains("identifier"));
    }
}

//! OpenCDP's data gateway: `POST {base}/v1/persons/{identify,track,registerDevice}`,
//! `POST {base}/v1/send/{email,push,sms}` and `GET {base}/v1/health/ping`, under any base path
//! (the SDK's default is `/gateway/data-gateway`).
//!
//! **OpenCDP documents none of its answers** (spec §5): every status and body here is
//! *assumed*, from the SDK docs' error guide (401 for a bad key, 404 for an unknown template,
//! 429 for the rate limit) and from the SDK, which reads no body of the person calls:
//!
//! | request | answer (assumed) |
//! |---|---|
//! | no `Authorization`, or a key not in [`CollectorBuilder::opencdp_api_keys`](crate::CollectorBuilder::opencdp_api_keys) | 401 `{"message":"Unauthorized"}` |
//! | over [`CollectorBuilder::opencdp_rate_limit`](crate::CollectorBuilder::opencdp_rate_limit) requests in the current second | 429 `{"message":"Too many requests"}`, `Retry-After: 1` |
//! | a POST body that is not a JSON object | 400 `{"message":"Invalid JSON body"}` |
//! | a send whose `transactional_message_id` is not in [`CollectorBuilder::opencdp_templates`](crate::CollectorBuilder::opencdp_templates) | 404 `{"message":"Template not found"}` |
//! | anything else | 200 `{}` |
//!
//! Decoded events (for the inspection API and the live page): `{type, user, name, …}` with
//! `type` one of `identify`, `track`, `register_device`, `email`, `push`, `sms`; `user` the
//! `identifier` (or the transactional message's identifier), `name` the event name or template.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use super::{Backend, BackendRequest, DecodedEvent};
use crate::reply::Reply;

/// The label of OpenCDP's requests and events.
pub(crate) const LABEL: &str = "opencdp";

/// The calls, by the path's end, with their method and decoded `type` (`None`: no event).
const CALLS: [(&str, &str, Option<&str>); 7] = [
    ("/v1/persons/identify", "POST", Some("identify")),
    ("/v1/persons/track", "POST", Some("track")),
    ("/v1/persons/registerDevice", "POST", Some("register_device")),
    ("/v1/send/email", "POST", Some("email")),
    ("/v1/send/push", "POST", Some("push")),
    ("/v1/send/sms", "POST", Some("sms")),
    ("/v1/health/ping", "GET", None),
];

/// What the simulated gateway knows, from the builder.
#[derive(Clone, Debug, Default)]
pub(crate) struct OpenCdpSettings {
    /// The API keys it takes (`None`: any non-empty key).
    pub(crate) api_keys: Option<Vec<String>>,
    /// The template ids it knows (`None`: every one).
    pub(crate) templates: Option<Vec<String>>,
    /// Most requests per second before 429 (`None`: no limit).
    pub(crate) rate_limit: Option<u32>,
}

/// The simulated gateway.
#[derive(Debug, Default)]
pub(crate) struct OpenCdpServer {
    settings: OpenCdpSettings,
    /// The current one-second window and the requests counted in it.
    window: Mutex<Option<(Instant, u32)>>,
}

impl OpenCdpServer {
    pub(crate) fn new(settings: OpenCdpSettings) -> Self {
        OpenCdpServer { settings, window: Mutex::new(None) }
    }

    /// The call `method path` is, if it is one.
    fn call(method: &str, path: &str) -> Option<&'static (&'static str, &'static str, Option<&'static str>)> {
        CALLS.iter().find(|(end, m, _)| *m == method && path.ends_with(end))
    }

    /// Whether this request is over the rate limit (counting it if not).
    fn over_rate(&self) -> bool {
        let Some(limit) = self.settings.rate_limit else { return false };
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match window.as_mut() {
            Some((start, count)) if now.duration_since(*start) < Duration::from_secs(1) => {
                if *count >= limit {
                    return true;
                }
                *count += 1;
            }
            _ => *window = Some((now, 1)),
        }
        false
    }
}

fn message(status: u16, text: &str) -> Reply {
    Reply::status(status).json(json!({ "message": text }))
}

/// A template id as text (ids may be sent as numbers).
fn template_of(body: &Map<String, Value>) -> Option<String> {
    match body.get("transactional_message_id")? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The one value of a transactional message's `identifiers`.
fn identifier_of(body: &Map<String, Value>) -> Option<Value> {
    body.get("identifiers")?.as_object()?.values().next().cloned()
}

impl Backend for OpenCdpServer {
    fn label(&self) -> &str {
        LABEL
    }

    fn claims(&self, method: &str, path: &str) -> bool {
        OpenCdpServer::call(method, path).is_some()
    }

    fn answer(&self, request: &BackendRequest<'_>) -> Option<Reply> {
        let key = request.header("authorization").unwrap_or_default();
        let known = match &self.settings.api_keys {
            Some(keys) => keys.iter().any(|k| k == key),
            None => !key.trim().is_empty(),
        };
        if !known {
            return Some(message(401, "Unauthorized"));
        }
        if self.over_rate() {
            return Some(message(429, "Too many requests").header("retry-after", "1"));
        }
        let (_, method, kind) = OpenCdpServer::call(request.method(), request.path())?;
        if *method == "GET" {
            return Some(Reply::ok());
        }
        let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(request.body()) else {
            return Some(message(400, "Invalid JSON body"));
        };
        let is_send = matches!(kind, Some("email" | "push" | "sms"));
        if is_send
            && let (Some(templates), Some(id)) = (&self.settings.templates, template_of(&body))
            && !templates.contains(&id)
        {
            return Some(message(404, "Template not found"));
        }
        Some(Reply::ok())
    }

    /// `200 {}` without looking at the request (sink mode counts, it does not check).
    fn sink_answer(&self, _request: &BackendRequest<'_>) -> Option<Reply> {
        Some(Reply::ok())
    }

    fn decode<'a>(&self, request: &BackendRequest<'a>) -> Vec<DecodedEvent<'a>> {
        let Some((_, _, Some(kind))) = OpenCdpServer::call(request.method(), request.path()) else {
            return Vec::new();
        };
        let Ok(text) = std::str::from_utf8(request.body()) else { return Vec::new() };
        let Ok(Value::Object(body)) = serde_json::from_str::<Value>(text) else { return Vec::new() };
        let mut event = Map::new();
        event.insert("type".into(), Value::String((*kind).to_owned()));
        match *kind {
            "identify" | "track" | "register_device" => {
                event.insert("user".into(), body.get("identifier").cloned().unwrap_or(Value::Null));
                if let Some(name) = body.get("eventName") {
                    event.insert("name".into(), name.clone());
                }
                let mut rest = body.clone();
                rest.remove("identifier");
                rest.remove("eventName");
                match rest.remove("properties") {
                    Some(properties) => event.insert("properties".into(), properties),
                    None => event.insert("device".into(), Value::Object(rest)),
                };
            }
            _ => {
                event.insert("user".into(), identifier_of(&body).unwrap_or(Value::Null));
                if let Some(template) = template_of(&body) {
                    event.insert("name".into(), Value::String(template));
                }
                event.insert("message".into(), Value::Object(body));
            }
        }
        vec![DecodedEvent::new(Value::Object(event), Some(text))]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(server: &OpenCdpServer, method: &str, path: &str, key: Option<&str>, body: &str) -> (u16, String) {
        let headers: Vec<(String, String)> =
            key.map(|k| ("Authorization".to_owned(), k.to_owned())).into_iter().collect();
        let request = BackendRequest::new(method, path, body.as_bytes()).with_headers(&headers);
        let reply = server.answer(&request).expect("claimed");
        (reply.recorded_status(), String::from_utf8_lossy(&reply.recorded_body()).into_owned())
    }

    #[test]
    fn claims_the_calls_under_any_base_path() {
        let s = OpenCdpServer::default();
        assert!(s.claims("POST", "/gateway/data-gateway/v1/persons/track"));
        assert!(s.claims("POST", "/v1/send/email"));
        assert!(s.claims("GET", "/x/v1/health/ping"));
        assert!(!s.claims("GET", "/v1/persons/track"));
        assert!(!s.claims("POST", "/v1/batch"));
    }

    #[test]
    fn answers_401_429_400_404_and_200_as_assumed() {
        let settings = OpenCdpSettings {
            api_keys: Some(vec!["good".into()]),
            templates: Some(vec!["welcome".into(), "7".into()]),
            rate_limit: None,
        };
        let s = OpenCdpServer::new(settings);
        let track = r#"{"identifier":"u","eventName":"e","properties":{}}"#;
        assert_eq!(answer(&s, "POST", "/v1/persons/track", None, track).0, 401);
        assert_eq!(answer(&s, "POST", "/v1/persons/track", Some("bad"), track).0, 401);
        assert_eq!(answer(&s, "POST", "/v1/persons/track", Some("good"), track), (200, "{}".into()));
        assert_eq!(answer(&s, "POST", "/v1/persons/track", Some("good"), "[1]").0, 400);
        let email = |t: &str| format!(r#"{{"to":"a@b.co","identifiers":{{"id":"u"}},"transactional_message_id":{t}}}"#);
        assert_eq!(answer(&s, "POST", "/v1/send/email", Some("good"), &email("\"nope\"")).0, 404);
        assert_eq!(answer(&s, "POST", "/v1/send/email", Some("good"), &email("\"welcome\"")).0, 200);
        assert_eq!(answer(&s, "POST", "/v1/send/push", Some("good"), &email("7")).0, 200);
        assert_eq!(answer(&s, "GET", "/v1/health/ping", Some("good"), "").0, 200);

        let limited = OpenCdpServer::new(OpenCdpSettings { rate_limit: Some(2), ..OpenCdpSettings::default() });
        let statuses: Vec<u16> =
            (0..3).map(|_| answer(&limited, "POST", "/v1/persons/track", Some("k"), track).0).collect();
        assert_eq!(statuses, [200, 200, 429]);
    }

    #[test]
    fn decodes_person_calls_and_messages() {
        let s = OpenCdpServer::default();
        let decode = |path: &str, body: &str| {
            s.decode(&BackendRequest::new("POST", path, body.as_bytes()))
                .into_iter()
                .map(|e| e.event)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            decode("/v1/persons/track", r#"{"identifier":"u","eventName":"buy","properties":{"a":1}}"#),
            [json!({"type": "track", "user": "u", "name": "buy", "properties": {"a": 1}})]
        );
        assert_eq!(
            decode(
                "/v1/persons/registerDevice",
                r#"{"identifier":"u","deviceId":"d","platform":"ios","fcmToken":"t"}"#
            ),
            [
                json!({"type": "register_device", "user": "u", "device": {"deviceId": "d", "platform": "ios", "fcmToken": "t"}})
            ]
        );
        let sms = decode("/v1/send/sms", r#"{"identifiers":{"id":"u"},"transactional_message_id":"5","to":"+1555"}"#);
        assert_eq!(
            (sms[0]["type"].clone(), sms[0]["user"].clone(), sms[0]["name"].clone()),
            (json!("sms"), json!("u"), json!("5"))
        );
        assert!(decode("/v1/persons/track", "not json").is_empty());
    }
}

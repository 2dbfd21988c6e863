//! trackway's own JSON destination (`JsonHttp`): every request no other backend claims.
//!
//! It has no server of its own to imitate: `JsonHttp` posts to any URL and takes any 2xx, so
//! the collector answers its default reply ([`Reply::ok`](crate::Reply::ok) unless set
//! otherwise), in sink mode too, without reading the body (the pipeline benchmark sends its
//! events here).

use super::{Backend, BackendRequest, DecodedEvent, json_objects};
use crate::reply::Reply;

/// The label of the JSON destination's requests and events.
pub(crate) const LABEL: &str = "json";

/// The JSON destination's backend.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Json;

impl Backend for Json {
    fn label(&self) -> &str {
        LABEL
    }

    /// Everything: the registry asks it last.
    fn claims(&self, _method: &str, _path: &str) -> bool {
        true
    }

    fn answer(&self, _request: &BackendRequest<'_>) -> Option<Reply> {
        None
    }

    fn sink_answer(&self, _request: &BackendRequest<'_>) -> Option<Reply> {
        None
    }

    /// An array's objects, an object's `batch` array's objects, or the object itself (trackway's
    /// own batches and Segment-style `{batch: [...]}` bodies alike), each shown as sent.
    fn decode<'a>(&self, request: &BackendRequest<'a>) -> Vec<DecodedEvent<'a>> {
        json_objects(request.body(), true)
            .into_iter()
            .filter_map(|raw| Some(DecodedEvent::new(serde_json::from_str(raw).ok()?, Some(raw))))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    /// The events of `body` as values.
    fn events_in(body: Value) -> Vec<Value> {
        let body = body.to_string();
        Json.decode(&BackendRequest::new("POST", "/v1/batch", body.as_bytes())).into_iter().map(|e| e.event).collect()
    }

    /// The events of `body` as the text sent.
    fn texts(body: &str) -> Vec<String> {
        Json.decode(&BackendRequest::new("POST", "/v1/batch", body.as_bytes()))
            .iter()
            .map(|e| e.raw.expect("raw").to_owned())
            .collect()
    }

    #[test]
    fn events_are_an_array_a_batch_or_the_object() {
        assert_eq!(events_in(json!([{"a": 1}, 2, {"b": 2}])), [json!({"a": 1}), json!({"b": 2})]);
        assert_eq!(events_in(json!({"batch": [{"a": 1}], "sentAt": "x"})), [json!({"a": 1})]);
        assert_eq!(events_in(json!({"name": "x"})), [json!({"name": "x"})]);
        assert_eq!(events_in(json!({"batch": 1})), [json!({"batch": 1})]);
        assert!(events_in(json!("text")).is_empty());
    }

    #[test]
    fn raw_events_keep_the_text_sent() {
        assert_eq!(texts(r#"[{"b":1,"a":2}, 3, {"c":3}]"#), [r#"{"b":1,"a":2}"#, r#"{"c":3}"#]);
        assert_eq!(texts(r#"{"batch":[{"x":1}],"sentAt":"t"}"#), [r#"{"x":1}"#]);
        assert_eq!(texts(r#"{"type":"event","payload":{"name":"n"}}"#), [r#"{"type":"event","payload":{"name":"n"}}"#]);
        assert_eq!(texts(r#"{"batch":1}"#), [r#"{"batch":1}"#]);
        assert!(texts("not json").is_empty());
        assert!(texts("\"text\"").is_empty());
    }

    #[test]
    fn answers_the_default_reply_in_both_modes() {
        let request = BackendRequest::new("POST", "/anything", b"not even json");
        assert!(Json.claims("DELETE", "/anything"));
        assert!(Json.answer(&request).is_none());
        assert!(Json.sink_answer(&request).is_none());
    }
}

//! Customer.io's Track API, v1 and `POST /api/v2/batch`, answered as the real server does
//! (spec `customerio-opencdp.md` §2): HTTP Basic auth (401 `{"meta":{"error":…}}` on bad
//! credentials), the limits of §2.3 and the required fields (400 `{"meta":{"errors":[…]}}`), a
//! `207 {"errors":[{"batch_index",…}]}` for a batch with bad operations, and `200 {}` otherwise.
//!
//! Events carrying an `id` (a ULID) are deduplicated as Customer.io does ("if an event repeats a
//! value we've already received, we ignore the duplicate"): the duplicate is answered 200 and not
//! stored, and counted ([`RunningCollector::customerio_duplicates`](crate::RunningCollector::customerio_duplicates),
//! `customerio.duplicates` in `GET /_trackway/api/stats`, and on the live page, from the
//! collector-only answer header `x-trackway-duplicates`).
//!
//! Assumed where the spec is silent: the exact wording of the error messages, a 400 for a batch
//! over 500 KB, and the answer to the v1 paths the spec lists without bodies (delete, suppress,
//! unsuppress, device delete, merge: `200 {}`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use serde_json::{Map, Value, json};
use trackway_wire::customerio::{
    ATTRIBUTE_NAME_MAX, ATTRIBUTE_VALUE_MAX, ATTRIBUTES_MAX, BATCH_MAX, EVENT_DATA_MAX, EVENT_NAME_MAX, ID_MAX,
    OPERATION_MAX, is_ulid,
};

use super::{Backend, BackendRequest, DecodedEvent};
use crate::reply::Reply;

/// The label of Customer.io's requests and events.
pub(crate) const LABEL: &str = "customerio";
/// The collector-only header naming how many events of a request were duplicates.
pub(crate) const DUPLICATES_HEADER: &str = "x-trackway-duplicates";

const CUSTOMERS: &str = "/api/v1/customers/";
const ANONYMOUS_EVENTS: &str = "/api/v1/events";
const BATCH: &str = "/api/v2/batch";
/// `POST /api/v1/merge_customers` (spec §2.2): `{"primary":{…},"secondary":{…}}`.
const MERGE: &str = "/api/v1/merge_customers";

/// The simulated Track API.
#[derive(Clone, Debug, Default)]
pub(crate) struct CustomerIoServer {
    /// The only site id and API key accepted; `None`: any non-empty pair.
    credentials: Option<(String, String)>,
    /// Event ids received so far.
    seen: Arc<Mutex<HashSet<String>>>,
    duplicates: Arc<AtomicU64>,
    /// Operations stored (duplicates not included).
    stored: Arc<AtomicU64>,
}

/// What one operation (a v1 call or a batch item) is, once its path or action is read.
enum Op<'a> {
    Identify {
        id: &'a str,
        attributes: Option<&'a Map<String, Value>>,
    },
    Event {
        id: Option<&'a str>,
        body: &'a Value,
    },
    Device {
        body: &'a Value,
    },
    /// Delete, suppress, unsuppress, a device delete: nothing to check but the id.
    Plain {
        id: &'a str,
    },
    /// A merge: `primary` and `secondary` each name one person by exactly one of `id`, `email`
    /// or `cio_id` (spec §2.2), and they differ.
    Merge {
        body: &'a Value,
    },
}

impl CustomerIoServer {
    pub(crate) fn new(credentials: Option<(String, String)>) -> Self {
        CustomerIoServer { credentials, ..CustomerIoServer::default() }
    }

    /// Duplicate events answered so far.
    pub(crate) fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    /// Operations stored so far (without duplicates).
    pub(crate) fn stored(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }

    fn authorized(&self, header: Option<&str>) -> bool {
        let Some(encoded) = header.and_then(|h| h.strip_prefix("Basic ")) else { return false };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else { return false };
        let Ok(pair) = String::from_utf8(decoded) else { return false };
        let Some((site, key)) = pair.split_once(':') else { return false };
        match &self.credentials {
            Some((s, k)) => s == site && k == key,
            None => !site.is_empty() && !key.is_empty(),
        }
    }

    fn answer(&self, request: &BackendRequest<'_>) -> Reply {
        if !self.authorized(request.header("authorization")) {
            return Reply::status(401).json(json!({ "meta": { "error": "Unauthorized request" } }));
        }
        let body: Value = if request.body().is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(request.body()) {
                Ok(v) => v,
                Err(e) => return bad_request(vec![format!("invalid JSON: {e}")]),
            }
        };
        let (path, method) = (request.path(), request.method());
        if path == BATCH {
            return self.batch(request.body().len(), &body);
        }
        let decoded;
        let op = if path == ANONYMOUS_EVENTS && method == "POST" {
            Op::Event { id: None, body: &body }
        } else if path == MERGE && method == "POST" {
            Op::Merge { body: &body }
        } else {
            let Some(rest) = path.strip_prefix(CUSTOMERS) else { return not_found() };
            let mut parts = rest.splitn(3, '/');
            decoded = percent_decode(parts.next().unwrap_or(""));
            let id = decoded.as_str();
            match (method, parts.next(), parts.next()) {
                ("PUT", None, None) => Op::Identify { id, attributes: body.as_object() },
                ("DELETE", None, None) => Op::Plain { id },
                ("POST", Some("events"), None) => Op::Event { id: Some(id), body: &body },
                ("PUT", Some("devices"), None) => Op::Device { body: &body },
                ("DELETE", Some("devices"), Some(_)) => Op::Plain { id },
                ("POST", Some("suppress" | "unsuppress"), None) => Op::Plain { id },
                _ => return not_found(),
            }
        };
        let mut errors = Vec::new();
        let duplicate = self.check(&op, &mut errors);
        if !errors.is_empty() {
            return bad_request(errors);
        }
        self.ok(u64::from(duplicate))
    }

    /// `200 {}`, naming the duplicates for the live page.
    fn ok(&self, duplicates: u64) -> Reply {
        let reply = Reply::status(200).json(json!({}));
        if duplicates > 0 { reply.header(DUPLICATES_HEADER, &duplicates.to_string()) } else { reply }
    }

    /// Checks an operation (errors go to `errors`); stores it if it passes. Returns whether it
    /// was a duplicate event.
    fn check(&self, op: &Op<'_>, errors: &mut Vec<String>) -> bool {
        match op {
            Op::Identify { id, attributes } => {
                check_id(id, errors);
                if let Some(attributes) = attributes {
                    check_attributes(attributes, errors);
                }
            }
            Op::Plain { id } => check_id(id, errors),
            Op::Merge { body } => check_merge(body, errors),
            Op::Event { id, body } => {
                if let Some(id) = id {
                    check_id(id, errors);
                } else if body.get("anonymous_id").and_then(Value::as_str).is_none_or(str::is_empty) {
                    errors.push("anonymous_id is required".into());
                }
                check_event(body, "data", errors);
            }
            Op::Device { body } => match body.get("device") {
                Some(device) => {
                    if device.get("id").and_then(Value::as_str).is_none_or(str::is_empty) {
                        errors.push("device id is required".into());
                    }
                    match device.get("platform").and_then(Value::as_str) {
                        Some("ios" | "android") => {}
                        _ => errors.push("device platform must be one of ios, android".into()),
                    }
                }
                None => errors.push("device is required".into()),
            },
        }
        if !errors.is_empty() {
            return false;
        }
        let event_id = match op {
            Op::Event { body, .. } => body.get("id").and_then(Value::as_str),
            _ => None,
        };
        self.store(event_id)
    }

    /// Stores one operation; `true` if its event id was seen before (then nothing is stored).
    fn store(&self, event_id: Option<&str>) -> bool {
        if let Some(id) = event_id {
            let fresh = self.seen.lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_ascii_uppercase());
            if !fresh {
                self.duplicates.fetch_add(1, Ordering::Relaxed);
                return true;
            }
        }
        self.stored.fetch_add(1, Ordering::Relaxed);
        false
    }

    fn batch(&self, len: usize, body: &Value) -> Reply {
        if len > BATCH_MAX {
            return bad_request(vec![format!("the batch is {len} bytes; the limit is {BATCH_MAX}")]);
        }
        let Some(items) = body.get("batch").and_then(Value::as_array) else {
            return bad_request(vec!["batch is required (an array of operations)".into()]);
        };
        let mut failed = Vec::new();
        let mut duplicates = 0;
        for (index, item) in items.iter().enumerate() {
            let mut errors = Vec::new();
            let duplicate = self.batch_item(item, &mut errors);
            duplicates += u64::from(duplicate);
            if let Some(first) = errors.into_iter().next() {
                let field = first.split(' ').next().unwrap_or("").to_owned();
                failed.push(json!({ "batch_index": index, "reason": "invalid", "field": field, "message": first }));
            }
        }
        if failed.is_empty() {
            return self.ok(duplicates);
        }
        let reply = Reply::status(207).json(json!({ "errors": failed }));
        if duplicates > 0 { reply.header(DUPLICATES_HEADER, &duplicates.to_string()) } else { reply }
    }

    fn batch_item(&self, item: &Value, errors: &mut Vec<String>) -> bool {
        let size = item.to_string().len();
        if size > OPERATION_MAX {
            errors.push(format!("operation is {size} bytes; the limit is {OPERATION_MAX}"));
            return false;
        }
        if item.get("type").and_then(Value::as_str) != Some("person") {
            errors.push("type must be person".into());
            return false;
        }
        if item.get("action").and_then(Value::as_str) == Some("merge") {
            // A merge names its two people as `primary` and `secondary`, not `identifiers`.
            return self.check(&Op::Merge { body: item }, errors);
        }
        let identifiers = item.get("identifiers").and_then(Value::as_object);
        let named: Vec<(&String, &Value)> = identifiers
            .into_iter()
            .flatten()
            .filter(|(k, _)| matches!(k.as_str(), "id" | "email" | "phone" | "cio_id"))
            .collect();
        let id = match named.as_slice() {
            [(_, Value::String(id))] => id.as_str(),
            _ => {
                errors.push("identifiers must hold exactly one of id, email, phone, cio_id".into());
                return false;
            }
        };
        let op = match item.get("action").and_then(Value::as_str) {
            Some("identify") => Op::Identify { id, attributes: item.get("attributes").and_then(Value::as_object) },
            Some("event" | "page" | "screen") => {
                check_id(id, errors);
                check_event(item, "attributes", errors);
                if !errors.is_empty() {
                    return false;
                }
                return self.store(item.get("id").and_then(Value::as_str));
            }
            Some("delete" | "suppress" | "unsuppress" | "add_device" | "delete_device") => Op::Plain { id },
            Some("add_relationships" | "delete_relationships") => Op::Plain { id },
            other => {
                errors.push(format!("action {other:?} is not a person action"));
                return false;
            }
        };
        self.check(&op, errors)
    }
}

fn bad_request(errors: Vec<String>) -> Reply {
    Reply::status(400).json(json!({ "meta": { "errors": errors } }))
}

fn not_found() -> Reply {
    Reply::status(404).json(json!({ "meta": { "error": "Not Found" } }))
}

/// A merge's `primary` and `secondary`: each exactly one of `id`, `email`, `cio_id`, a
/// non-empty string, and not the same person.
fn check_merge(body: &Value, errors: &mut Vec<String>) {
    let mut people = Vec::new();
    for side in ["primary", "secondary"] {
        let named: Vec<(&String, &Value)> = body
            .get(side)
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter(|(k, _)| matches!(k.as_str(), "id" | "email" | "cio_id"))
            .collect();
        match named.as_slice() {
            [(kind, Value::String(id))] if !id.trim().is_empty() => people.push((kind.as_str(), id.as_str())),
            _ => errors.push(format!("{side} must hold exactly one of id, email, cio_id")),
        }
    }
    if let [a, b] = people.as_slice()
        && a == b
    {
        errors.push("primary and secondary must be different people".into());
    }
}

fn check_id(id: &str, errors: &mut Vec<String>) {
    if id.trim().is_empty() {
        errors.push("identifier is required".into());
    } else if id.len() > ID_MAX {
        errors.push(format!("identifier cannot be longer than {ID_MAX} bytes"));
    }
}

fn value_bytes(value: &Value) -> usize {
    match value {
        Value::String(s) => s.len(),
        other => other.to_string().len(),
    }
}

fn check_attributes(attributes: &Map<String, Value>, errors: &mut Vec<String>) {
    if attributes.len() > ATTRIBUTES_MAX {
        errors.push(format!("too many attributes: {} (at most {ATTRIBUTES_MAX} per call)", attributes.len()));
    }
    for (name, value) in attributes {
        if name.len() > ATTRIBUTE_NAME_MAX {
            errors.push(format!("attribute name '{name}' cannot be longer than {ATTRIBUTE_NAME_MAX} bytes"));
        }
        if value_bytes(value) > ATTRIBUTE_VALUE_MAX {
            errors.push(format!("value for attribute '{name}' cannot be longer than {ATTRIBUTE_VALUE_MAX} bytes"));
        }
        if matches!(name.as_str(), "created_at" | "_timestamp") && !(value.is_i64() || value.is_u64()) {
            errors.push(format!("{name} must be a Unix timestamp in seconds (an integer)"));
        }
    }
}

/// An event's name, data (under `data_key`), timestamp, id and type.
fn check_event(body: &Value, data_key: &str, errors: &mut Vec<String>) {
    match body.get("name").and_then(Value::as_str) {
        None | Some("") => errors.push("name is required".into()),
        Some(name) if name.len() > EVENT_NAME_MAX => {
            errors.push(format!("name cannot be longer than {EVENT_NAME_MAX} bytes"));
        }
        Some(_) => {}
    }
    if let Some(data) = body.get(data_key) {
        let size = data.to_string().len();
        if size > EVENT_DATA_MAX {
            errors.push(format!("{data_key} cannot be larger than {EVENT_DATA_MAX} bytes ({size})"));
        }
    }
    if let Some(t) = body.get("timestamp")
        && !(t.is_i64() || t.is_u64())
    {
        errors.push("timestamp must be a Unix timestamp in seconds (an integer)".into());
    }
    if let Some(id) = body.get("id")
        && !id.as_str().is_some_and(is_ulid)
    {
        errors.push("id must be a ULID".into());
    }
    // v1's `type`; a v2 item's `type` is the entity's (`person`), its action says the rest.
    if data_key == "data"
        && let Some(kind) = body.get("type")
        && !matches!(kind.as_str(), Some("event" | "page" | "screen"))
    {
        errors.push("type must be one of event, page, screen".into());
    }
}

/// `%XX` escapes decoded (what `encodeURIComponent` wrote); invalid ones kept as they are.
fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = segment.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The events of a Customer.io request as the inspection API shows them: `type` (`identify`,
/// `event`, `page`, `screen`, `device`, `delete`, `suppress`, …), `name`, `user`, `id`, `data`.
fn decode(method: &str, path: &str, body: &Value) -> Vec<Value> {
    if path == BATCH {
        return body
            .get("batch")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|item| {
                let mut e = Map::new();
                e.insert("type".into(), item.get("action").cloned().unwrap_or(Value::Null));
                for (out, key) in [("name", "name"), ("id", "id"), ("data", "attributes"), ("timestamp", "timestamp")] {
                    if let Some(v) = item.get(key) {
                        e.insert(out.into(), v.clone());
                    }
                }
                if item.get("action").and_then(Value::as_str) == Some("merge") {
                    let sides =
                        ["primary", "secondary"].map(|k| (k.to_owned(), item.get(k).cloned().unwrap_or_default()));
                    e.insert("data".into(), Value::Object(sides.into_iter().collect()));
                }
                if let Some(id) = item.pointer("/identifiers/id").or_else(|| item.pointer("/primary/id")) {
                    e.insert("user".into(), id.clone());
                }
                Value::Object(e)
            })
            .collect();
    }
    let mut e = Map::new();
    let (user, rest) = match path.strip_prefix(CUSTOMERS) {
        Some(rest) => {
            let mut parts = rest.splitn(2, '/');
            (Some(percent_decode(parts.next().unwrap_or(""))), parts.next().unwrap_or(""))
        }
        None => (None, ""),
    };
    let kind = match (method, rest) {
        ("PUT", "") => "identify",
        ("DELETE", "") => "delete",
        ("PUT", "devices") => "device",
        ("DELETE", r) if r.starts_with("devices/") => "delete_device",
        ("POST", "suppress") => "suppress",
        ("POST", "unsuppress") => "unsuppress",
        _ if path == MERGE => "merge",
        _ => body.get("type").and_then(Value::as_str).unwrap_or("event"),
    };
    e.insert("type".into(), Value::String(kind.into()));
    let user = user
        .map(Value::String)
        .or_else(|| body.get("anonymous_id").cloned())
        .or_else(|| if kind == "merge" { body.pointer("/primary/id").cloned() } else { None });
    if let Some(user) = user {
        e.insert("user".into(), user);
    }
    match kind {
        "identify" | "merge" => {
            e.insert("data".into(), body.clone());
        }
        "device" => {
            e.insert("data".into(), body.get("device").cloned().unwrap_or(Value::Null));
        }
        _ => {
            for key in ["name", "id", "data", "timestamp"] {
                if let Some(v) = body.get(key) {
                    e.insert(key.into(), v.clone());
                }
            }
        }
    }
    vec![Value::Object(e)]
}

/// Whether a `method` request to `path` is for the Track API.
pub(crate) fn claims(method: &str, path: &str) -> bool {
    matches!(method, "PUT" | "POST" | "DELETE")
        && (path.starts_with(CUSTOMERS) || path == ANONYMOUS_EVENTS || path == BATCH || path == MERGE)
}

impl Backend for CustomerIoServer {
    fn label(&self) -> &str {
        LABEL
    }

    fn claims(&self, method: &str, path: &str) -> bool {
        claims(method, path)
    }

    fn answer(&self, request: &BackendRequest<'_>) -> Option<Reply> {
        Some(CustomerIoServer::answer(self, request))
    }

    /// `200 {}` without validating, deduplicating or storing.
    fn sink_answer(&self, _: &BackendRequest<'_>) -> Option<Reply> {
        Some(Reply::status(200).json(json!({})))
    }

    fn decode<'a>(&self, request: &BackendRequest<'a>) -> Vec<DecodedEvent<'a>> {
        let body: Value = serde_json::from_slice(request.body()).unwrap_or(Value::Null);
        decode(request.method(), request.path(), &body).into_iter().map(|e| DecodedEvent::new(e, None)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUTH: &str = "Basic c2l0ZTprZXk="; // site:key

    fn send(
        server: &CustomerIoServer,
        method: &str,
        path: &str,
        auth: &str,
        body: Value,
    ) -> (u16, Value, Option<String>) {
        let headers = vec![("authorization".to_owned(), auth.to_owned())];
        let text = if body.is_null() { String::new() } else { body.to_string() };
        let request = BackendRequest::new(method, path, text.as_bytes()).with_headers(&headers);
        let reply = server.answer(&request);
        let dup = reply.recorded_headers().into_iter().find(|(n, _)| n == DUPLICATES_HEADER).map(|(_, v)| v);
        (reply.recorded_status(), serde_json::from_slice(reply.body_bytes()).unwrap_or(Value::Null), dup)
    }

    #[test]
    fn credentials_are_checked() {
        let server = CustomerIoServer::new(Some(("site".into(), "key".into())));
        let (status, body, _) = send(&server, "PUT", "/api/v1/customers/u1", "Basic c2l0ZTpiYWQ=", json!({}));
        assert_eq!((status, body["meta"]["error"].as_str()), (401, Some("Unauthorized request")));
        assert_eq!(send(&server, "PUT", "/api/v1/customers/u1", AUTH, json!({})).0, 200);
        assert_eq!(send(&CustomerIoServer::default(), "PUT", "/api/v1/customers/u1", "", json!({})).0, 401);
    }

    #[test]
    fn limits_and_fields_are_400_with_meta_errors() {
        let server = CustomerIoServer::default();
        let long = "x".repeat(1001);
        let (status, body, _) = send(&server, "PUT", "/api/v1/customers/u1", AUTH, json!({ "bio": long }));
        assert_eq!(status, 400);
        assert_eq!(body["meta"]["errors"][0], "value for attribute 'bio' cannot be longer than 1000 bytes");
        let path = format!("/api/v1/customers/{}/events", "i".repeat(151));
        assert_eq!(send(&server, "POST", &path, AUTH, json!({ "name": "e" })).0, 400);
        let (status, body, _) = send(&server, "POST", "/api/v1/customers/u1/events", AUTH, json!({ "id": "nope" }));
        assert_eq!(status, 400);
        assert_eq!(body["meta"]["errors"].as_array().map(Vec::len), Some(2), "{body}");
        let device = json!({ "device": { "id": "t", "platform": "web" } });
        assert_eq!(send(&server, "PUT", "/api/v1/customers/u1/devices", AUTH, device).0, 400);
        assert_eq!(server.stored(), 0);
    }

    #[test]
    fn a_batch_with_one_bad_operation_is_a_207_naming_it_and_duplicates_are_counted() {
        let server = CustomerIoServer::default();
        let ulid = "01HB4HBDKTFWYZCK01DMRSWRFD";
        let batch = json!({ "batch": [
            { "type": "person", "action": "event", "identifiers": { "id": "1" }, "name": "a", "id": ulid },
            { "type": "person", "action": "event", "identifiers": { "id": "1" }, "name": "" },
            { "type": "person", "action": "identify", "identifiers": { "id": "1" }, "attributes": { "plan": "pro" } },
        ]});
        let (status, body, _) = send(&server, "POST", BATCH, AUTH, batch);
        assert_eq!(status, 207);
        assert_eq!(body["errors"].as_array().map(Vec::len), Some(1), "{body}");
        assert_eq!(body["errors"][0]["batch_index"], 1);
        assert_eq!(server.stored(), 2);
        let again = json!({ "name": "a", "id": ulid.to_lowercase() });
        let (status, _, dup) = send(&server, "POST", "/api/v1/customers/1/events", AUTH, again);
        assert_eq!((status, dup.as_deref(), server.duplicates()), (200, Some("1"), 1));
        assert_eq!(server.stored(), 2);
    }

    #[test]
    fn merges_name_two_different_people_in_v1_and_in_a_batch() {
        let server = CustomerIoServer::default();
        let merge = json!({ "primary": { "id": "u1" }, "secondary": { "id": "anon-1" } });
        assert_eq!(send(&server, "POST", MERGE, AUTH, merge.clone()).0, 200);
        let (status, body, _) = send(&server, "POST", MERGE, AUTH, json!({ "primary": { "id": "u1" } }));
        assert_eq!(
            (status, body["meta"]["errors"][0].as_str()),
            (400, Some("secondary must hold exactly one of id, email, cio_id"))
        );
        let same = json!({ "primary": { "id": "u1" }, "secondary": { "id": "u1" } });
        assert_eq!(send(&server, "POST", MERGE, AUTH, same).0, 400);
        let batch = json!({ "batch": [
            { "type": "person", "action": "merge", "primary": { "id": "u1" }, "secondary": { "email": "a@b.c" } },
            { "type": "person", "action": "merge", "identifiers": { "id": "u1" } },
        ]});
        let (status, body, _) = send(&server, "POST", BATCH, AUTH, batch.clone());
        assert_eq!((status, body["errors"][0]["batch_index"].as_u64()), (207, Some(1)), "{body}");
        assert_eq!(server.stored(), 2);
        let events = decode("POST", MERGE, &merge);
        assert_eq!((events[0]["type"].as_str(), events[0]["user"].as_str()), (Some("merge"), Some("u1")));
        let events = decode("POST", BATCH, &batch);
        assert_eq!(events[0]["data"]["secondary"]["email"], "a@b.c", "{events:?}");
    }

    #[test]
    fn requests_decode_to_events() {
        let events = decode("POST", "/api/v1/customers/a%40b.com/events", &json!({ "name": "buy", "id": "X" }));
        assert_eq!((events[0]["user"].as_str(), events[0]["type"].as_str()), (Some("a@b.com"), Some("event")));
        assert_eq!(decode("DELETE", "/api/v1/customers/u1", &Value::Null)[0]["type"], "delete");
        assert!(claims("PUT", "/api/v1/customers/u1") && claims("POST", BATCH) && !claims("GET", BATCH));
    }
}

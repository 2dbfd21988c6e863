//! Stored events → Bloomreach requests: one body per event (`customers/events` or `customers`),
//! sent alone or as batch commands.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};
use trackway_wire::bloomreach::COOKIE;
use trackway_wire::{Event, EventKind};

use super::{Bloomreach, Sending};
use crate::destination::{Encoded, EventRecord, Request};

/// The command of a customer update.
pub(super) const CUSTOMERS: &str = "customers";
/// The command of an event.
pub(super) const EVENTS: &str = "customers/events";
/// The batch path.
const BATCH: &str = "batch";

/// The app events that carry the device properties (spec §3.4, §4).
const WITH_DEVICE: [&str; 4] = ["installation", "session_start", "session_end", "payment"];

/// One event's command: its name (`customers` or `customers/events`) and `data`.
pub(super) struct Command {
    pub(super) name: &'static str,
    pub(super) data: Map<String, Value>,
}

pub(super) fn encode(dest: &Bloomreach, events: &[EventRecord]) -> Encoded {
    let mut out = Encoded::default();
    let mut batch: Vec<(usize, Value)> = Vec::new();
    // The customers updated in the batch being built ("name=value" of each of their ids).
    let mut updated: BTreeSet<String> = BTreeSet::new();
    for (i, record) in events.iter().enumerate() {
        let Some(event) = out.parse(i, record) else { continue };
        let command = match command(dest, event) {
            Ok(c) => c,
            Err(reason) => {
                out.rejected.push((i, reason));
                continue;
            }
        };
        match dest.effective_sending() {
            Sending::PerEvent => out.requests.push(request(dest, command.name, &Value::Object(command.data), vec![i])),
            Sending::Batch => {
                let keys = customer_keys(&command.data);
                // Commands of one batch run in any order: an event of a customer updated earlier
                // in this batch goes in the next one.
                if !batch.is_empty() && keys.iter().any(|k| updated.contains(k)) {
                    out.requests.push(batch_request(dest, std::mem::take(&mut batch)));
                    updated.clear();
                }
                if command.name == CUSTOMERS {
                    updated.extend(keys);
                }
                batch.push((
                    i,
                    json!({ "name": command.name, "command_id": record.id().to_string(), "data": command.data }),
                ));
            }
        }
    }
    if !batch.is_empty() {
        out.requests.push(batch_request(dest, batch));
    }
    out
}

fn batch_request(dest: &Bloomreach, commands: Vec<(usize, Value)>) -> Request {
    let (items, commands): (Vec<usize>, Vec<Value>) = commands.into_iter().unzip();
    request(dest, BATCH, &json!({ "commands": commands }), items)
}

fn request(dest: &Bloomreach, command: &str, body: &Value, items: Vec<usize>) -> Request {
    let body = serde_json::to_vec(body).unwrap_or_default();
    let mut r = Request::post(&dest.url(command), body, items)
        .header(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"))
        .header(http::header::ACCEPT, http::HeaderValue::from_static("application/json"));
    if let Ok(mut v) = http::HeaderValue::from_str(&dest.authorization.header()) {
        v.set_sensitive(true);
        r = r.header(http::header::AUTHORIZATION, v);
    }
    r
}

/// "name=value" of every customer id of a command, to tell whether two commands are about the
/// same customer.
fn customer_keys(data: &Map<String, Value>) -> Vec<String> {
    match data.get("customer_ids") {
        Some(Value::Object(ids)) => {
            ids.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect()
        }
        _ => Vec::new(),
    }
}

/// The command `event` is: its body as the single-event endpoints take it.
pub(super) fn command(dest: &Bloomreach, event: &Event) -> Result<Command, String> {
    let customer_ids = customer_ids(dest, event);
    if customer_ids.is_empty() {
        return Err("the event names no customer (no cookie, no hard id): Bloomreach needs at least one id".into());
    }
    let mut properties = match serde_json::to_value(&event.properties) {
        Ok(Value::Object(map)) => map,
        Ok(_) => Map::new(),
        Err(e) => return Err(format!("properties cannot be sent: {e}")),
    };
    let mut data = Map::new();
    let name = if event.kind == EventKind::Identify {
        if !dest.allow_default_customer_properties {
            for key in &event.default_keys {
                properties.remove(key.as_str());
            }
        }
        CUSTOMERS
    } else {
        let event_type = match event.kind {
            EventKind::Screen => {
                properties.insert("screen_name".into(), json!(event.name.as_deref().unwrap_or_default()));
                "screen_view".to_owned()
            }
            EventKind::Page => {
                if let Some(page) = &event.page {
                    properties.insert("location".into(), json!(page.url));
                    if let Some(t) = &page.title {
                        properties.insert("title".into(), json!(t));
                    }
                    if let Some(r) = &page.referrer {
                        properties.insert("referrer".into(), json!(r));
                    }
                }
                "page_visit".to_owned()
            }
            _ => event.name.as_deref().unwrap_or_default().to_owned(),
        };
        if WITH_DEVICE.contains(&event_type.as_str()) {
            for (key, value) in device_properties(event) {
                properties.entry(key).or_insert(value);
            }
        }
        // The SDK's fields win over the event's own (Android, spec §5).
        properties.insert("application_id".into(), json!(dest.application_id));
        if let Some(device) = dest.device_id.as_deref().or(event.context.device_id.as_deref()) {
            properties.insert("device_id".into(), json!(device));
        }
        data.insert("event_type".into(), Value::String(event_type));
        EVENTS
    };
    // Float seconds, always: a late delivery keeps the event's own time.
    data.insert("timestamp".into(), json!(event.timestamp.unix_millis() as f64 / 1000.0));
    data.insert("customer_ids".into(), Value::Object(customer_ids));
    data.insert("properties".into(), Value::Object(properties));
    Ok(Command { name, data })
}

/// `customer_ids`: the hard ids (app mode), or the call's user under the hard id name (server
/// mode), and the cookie, which a caller cannot set (as iOS: the cookie wins).
fn customer_ids(dest: &Bloomreach, event: &Event) -> Map<String, Value> {
    let identity = &event.identity;
    let mut ids: Map<String, Value> = identity.ids.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    if identity.ids.is_empty()
        && let Some(user) = &identity.user_id
    {
        ids.insert(dest.hard_id.clone(), json!(user.as_str()));
    }
    match &identity.anonymous_id {
        Some(cookie) => {
            ids.insert(COOKIE.into(), json!(cookie));
        }
        None => {
            ids.remove(COOKIE);
        }
    }
    ids
}

/// The device properties of session, installation and payment events (spec §3.4): only what is
/// known, never invented.
fn device_properties(event: &Event) -> Vec<(String, Value)> {
    let c = &event.context;
    let mut out = vec![("sdk".to_owned(), json!("trackway")), ("sdk_version".to_owned(), json!(c.library_version))];
    let optional = [
        ("os_name", &c.os_name),
        ("os_version", &c.os_version),
        ("device_model", &c.device_model),
        ("device_type", &c.device_type),
        ("app_version", &c.app_version),
    ];
    out.extend(optional.into_iter().filter_map(|(k, v)| Some((k.to_owned(), json!(v.as_deref()?)))));
    out
}

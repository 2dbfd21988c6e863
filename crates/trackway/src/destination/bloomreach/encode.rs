//! Stored events → Bloomreach requests: one body per event (`customers/events` or `customers`),
//! sent alone or as batch commands.

use std::collections::BTreeSet;

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use trackway_wire::bloomreach::COOKIE;
use trackway_wire::{Event, EventKind, Properties};

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

/// One event's command: its name (`customers` or `customers/events`) and `data`, borrowing the
/// event. Serialized straight to bytes: building a `serde_json::Value` tree first (a map insert
/// and an allocation per key) and then serializing it was two thirds of the worker's time in
/// the backends bench's Bloomreach row (perf, 2026-12-04).
pub(super) struct Command<'a> {
    pub(super) name: &'static str,
    pub(super) data: Data<'a>,
}

/// A command's `data`: the body the single-event endpoints take.
#[derive(Serialize)]
pub(super) struct Data<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    event_type: Option<&'a str>,
    /// Float seconds, always: a late delivery keeps the event's own time.
    timestamp: f64,
    customer_ids: Pairs<'a>,
    properties: Props<'a>,
}

/// A JSON object of string values, in order, keys unique.
struct Pairs<'a>(Vec<(&'a str, &'a str)>);

impl Serialize for Pairs<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// The event's properties as sent: its own, less `drop`, plus `fill` where it has no such
/// key, with `set` over both (the SDK's fields win, spec §5).
struct Props<'a> {
    own: &'a Properties,
    drop: &'a [trackway_wire::CompactString],
    fill: Vec<(&'static str, &'a str)>,
    set: Vec<(&'static str, &'a str)>,
}

impl Serialize for Props<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let set = |k: &str| self.set.iter().any(|(s, _)| *s == k);
        let mut map = s.serialize_map(None)?;
        for (k, v) in self.own.iter() {
            if !set(k) && !self.drop.iter().any(|d| d == k) {
                map.serialize_entry(k, v)?;
            }
        }
        for (k, v) in &self.fill {
            if !set(k) && self.own.get(k).is_none() {
                map.serialize_entry(k, v)?;
            }
        }
        for (k, v) in &self.set {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// A batch command: the command with its name and id.
#[derive(Serialize)]
struct BatchCommand<'a> {
    name: &'static str,
    /// The event's id, serialized as its string form without an allocation.
    command_id: trackway_wire::MessageId,
    data: &'a Data<'a>,
}

pub(super) fn encode(dest: &Bloomreach, events: &[EventRecord]) -> Encoded {
    let mut out = Encoded::default();
    let mut batch = BatchBody::default();
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
            Sending::PerEvent => match serde_json::to_vec(&command.data) {
                Ok(body) => out.requests.push(request(dest, command.name, body, vec![i])),
                Err(e) => out.rejected.push((i, format!("properties cannot be sent: {e}"))),
            },
            Sending::Batch => {
                let keys = customer_keys(&command.data);
                // Commands of one batch run in any order: an event of a customer updated earlier
                // in this batch goes in the next one.
                if !batch.is_empty() && keys.iter().any(|k| updated.contains(k)) {
                    out.requests.push(std::mem::take(&mut batch).request(dest));
                    updated.clear();
                }
                let item = BatchCommand { name: command.name, command_id: record.id(), data: &command.data };
                if let Err(e) = batch.push(i, &item) {
                    out.rejected.push((i, format!("properties cannot be sent: {e}")));
                    continue;
                }
                if command.name == CUSTOMERS {
                    updated.extend(keys);
                }
            }
        }
    }
    if !batch.is_empty() {
        out.requests.push(batch.request(dest));
    }
    out
}

/// A `{"commands":[…]}` body being built, with the events in it, each command serialized
/// straight into it.
#[derive(Default)]
struct BatchBody {
    body: Vec<u8>,
    items: Vec<usize>,
}

impl BatchBody {
    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Appends event `i`'s command. One that cannot be serialized leaves the body as it was:
    /// its event is rejected alone, not with its batch.
    fn push(&mut self, i: usize, command: &BatchCommand<'_>) -> Result<(), serde_json::Error> {
        let mark = self.body.len();
        self.body.extend_from_slice(if self.is_empty() { b"{\"commands\":[" } else { b"," });
        if let Err(e) = serde_json::to_writer(&mut self.body, command) {
            self.body.truncate(mark);
            return Err(e);
        }
        self.items.push(i);
        Ok(())
    }

    fn request(self, dest: &Bloomreach) -> Request {
        let mut body = self.body;
        body.extend_from_slice(b"]}");
        request(dest, BATCH, body, self.items)
    }
}

fn request(dest: &Bloomreach, command: &str, body: Vec<u8>, items: Vec<usize>) -> Request {
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
fn customer_keys(data: &Data<'_>) -> Vec<String> {
    data.customer_ids.0.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The command `event` is: its body as the single-event endpoints take it.
pub(super) fn command<'a>(dest: &'a Bloomreach, event: &'a Event) -> Result<Command<'a>, String> {
    let customer_ids = customer_ids(dest, event);
    if customer_ids.0.is_empty() {
        return Err("the event names no customer (no cookie, no hard id): Bloomreach needs at least one id".into());
    }
    let mut properties = Props { own: &event.properties, drop: &[], fill: Vec::new(), set: Vec::new() };
    let (name, event_type) = if event.kind == EventKind::Identify {
        if !dest.allow_default_customer_properties {
            properties.drop = &event.default_keys;
        }
        (CUSTOMERS, None)
    } else {
        let event_type = match event.kind {
            EventKind::Screen => {
                properties.set.push(("screen_name", event.name.as_deref().unwrap_or_default()));
                "screen_view"
            }
            EventKind::Page => {
                if let Some(page) = &event.page {
                    properties.set.push(("location", &page.url));
                    if let Some(t) = &page.title {
                        properties.set.push(("title", t));
                    }
                    if let Some(r) = &page.referrer {
                        properties.set.push(("referrer", r));
                    }
                }
                "page_visit"
            }
            _ => event.name.as_deref().unwrap_or_default(),
        };
        if WITH_DEVICE.contains(&event_type) {
            properties.fill = device_properties(event);
        }
        properties.set.push(("application_id", &dest.application_id));
        if let Some(device) = dest.device_id.as_deref().or(event.context.device_id.as_deref()) {
            properties.set.push(("device_id", device));
        }
        (EVENTS, Some(event_type))
    };
    let data = Data { event_type, timestamp: event.timestamp.unix_millis() as f64 / 1000.0, customer_ids, properties };
    Ok(Command { name, data })
}

/// `customer_ids`: the hard ids (app mode), or the call's user under the hard id name (server
/// mode), and the cookie, which a caller cannot set (as iOS: the cookie wins).
fn customer_ids<'a>(dest: &'a Bloomreach, event: &'a Event) -> Pairs<'a> {
    let identity = &event.identity;
    let mut ids: Vec<(&str, &str)> =
        identity.ids.iter().filter(|(k, _)| k.as_str() != COOKIE).map(|(k, v)| (k.as_str(), v.as_str())).collect();
    if identity.ids.is_empty()
        && let Some(user) = &identity.user_id
        && dest.hard_id != COOKIE
    {
        ids.push((&dest.hard_id, user.as_str()));
    }
    if let Some(cookie) = &identity.anonymous_id {
        ids.push((COOKIE, cookie));
    }
    Pairs(ids)
}

/// The device properties of session, installation and payment events (spec §3.4): only what is
/// known, never invented.
fn device_properties(event: &Event) -> Vec<(&'static str, &str)> {
    let c = &event.context;
    let mut out = vec![("sdk", "trackway"), ("sdk_version", c.library_version.as_str())];
    let optional = [
        ("os_name", &c.os_name),
        ("os_version", &c.os_version),
        ("device_model", &c.device_model),
        ("device_type", &c.device_type),
        ("app_version", &c.app_version),
    ];
    out.extend(optional.into_iter().filter_map(|(k, v)| Some((k, v.as_deref()?))));
    out
}

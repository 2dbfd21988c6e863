//! A hand-written encoder for [`Event`]: the same bytes as `serde_json::to_vec(&event)`, faster.
//!
//! It runs on the caller's thread for every event. Two things make serde_json's generic path slow
//! here: every key goes through the escaping routine, and the context, the same for every event
//! of a client, is serialized again each time. This encoder writes keys as literal bytes, takes
//! the context already serialized, and copies strings that need no escaping in one go; anything
//! unusual (escapes, floats) is delegated to serde_json, so the output stays byte-identical.

use crate::{Event, EventKind, Identity, PageInfo, Properties, PropertyError, Value};

/// Writes `event` as compact JSON into `out`, byte-identical to `serde_json::to_vec(event)`.
///
/// `context_json` must be `serde_json::to_vec(&*event.context)`; callers compute it once per
/// client.
///
/// It also validates the properties as it goes (this is the client's only pass over them): a NaN
/// or infinite number, or an empty key, stops it.
///
/// # Errors
/// The [`PropertyError`] of [`Properties::validate`], with the path; `out` then holds a partial
/// event and must be discarded.
///
/// ```
/// use std::sync::Arc;
/// use trackway_wire::{encode_event, Context, Event, EventKind, Identity, Timestamp};
/// let at = Timestamp::from_unix_millis(0);
/// let context = Arc::new(Context { library: "trackway".into(), ..Context::default() });
/// let event = Event {
///     name: Some("signup".into()),
///     identity: Identity::user("u1"),
///     context: context.clone(),
///     ..Event::new(EventKind::Track, at)
/// };
/// let context_json = serde_json::to_vec(&*context).unwrap();
/// let mut out = Vec::new();
/// encode_event(&event, &context_json, &mut out).unwrap();
/// assert_eq!(out, serde_json::to_vec(&event).unwrap());
/// ```
pub fn encode_event(event: &Event, context_json: &[u8], out: &mut Vec<u8>) -> Result<(), PropertyError> {
    encode_event_head(event, out)?;
    finish_event(out, context_json);
    Ok(())
}

/// Completes an event head (see [`encode_event_head`]) with its context: `,"context":…}`.
pub fn finish_event(out: &mut Vec<u8>, context_json: &[u8]) {
    out.extend_from_slice(CONTEXT_KEY);
    out.extend_from_slice(context_json);
    out.push(b'}');
}

/// What follows an event head before its context.
pub const CONTEXT_KEY: &[u8] = b",\"context\":";

/// Writes an event's *head*: its JSON up to, not including, the context (the last field), i.e.
/// `{"id":…,…` without the closing brace. `head + ,"context": + context + }` is the full event.
///
/// Stores keep heads and each distinct context once: the context is the same for every event of
/// a client, and repeating it would cost every stored event its size.
///
/// # Errors
/// As [`encode_event`].
pub fn encode_event_head(event: &Event, out: &mut Vec<u8>) -> Result<(), PropertyError> {
    out.extend_from_slice(b"{\"id\":\"");
    let mut id = [0u8; 36];
    out.extend_from_slice(event.id.as_uuid().hyphenated().encode_lower(&mut id).as_bytes());
    out.extend_from_slice(b"\",\"type\":\"");
    out.extend_from_slice(kind_name(event.kind));
    out.push(b'"');
    if let Some(name) = &event.name {
        out.extend_from_slice(b",\"name\":");
        write_str(out, name);
    }
    out.extend_from_slice(b",\"timestamp\":\"");
    let mut ts = [0u8; 32];
    let n = event.timestamp.format_into(&mut ts);
    out.extend_from_slice(&ts[..n]);
    out.push(b'"');
    if !event.properties.is_empty() {
        out.extend_from_slice(b",\"properties\":");
        if write_object(out, &event.properties).is_err() {
            // Rare: walk again to say where the bad value is.
            event.properties.validate()?;
            return Err(PropertyError { path: String::new(), reason: "cannot be sent".into() });
        }
    }
    out.extend_from_slice(b",\"identity\":");
    write_identity(out, &event.identity);
    if let Some(session) = &event.session_id {
        out.extend_from_slice(b",\"session_id\":");
        write_str(out, session);
    }
    if let Some(page) = &event.page {
        out.extend_from_slice(b",\"page\":");
        write_page(out, page);
    }
    if event.imported {
        out.extend_from_slice(b",\"imported\":true");
    }
    if !event.default_keys.is_empty() {
        out.extend_from_slice(b",\"default_keys\":[");
        for (i, key) in event.default_keys.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_str(out, key);
        }
        out.push(b']');
    }
    Ok(())
}

/// A value that cannot be sent; the caller finds out which with [`Properties::validate`].
struct Invalid;

fn kind_name(kind: EventKind) -> &'static [u8] {
    kind.as_str().as_bytes()
}

/// Writes `"key":value` pairs of optional strings, tracking whether a comma is needed.
struct Fields<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl Fields<'_> {
    fn key(&mut self, key: &[u8]) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key);
        self.out.extend_from_slice(b"\":");
    }

    fn opt_str(&mut self, key: &[u8], value: Option<&str>) {
        if let Some(v) = value {
            self.key(key);
            write_str(self.out, v);
        }
    }
}

fn write_identity(out: &mut Vec<u8>, id: &Identity) {
    out.push(b'{');
    let mut f = Fields { out, first: true };
    f.opt_str(b"anonymous_id", id.anonymous_id.as_deref());
    f.opt_str(b"user_id", id.user_id.as_deref());
    f.opt_str(b"primary", id.primary.as_deref());
    if !id.ids.is_empty() {
        f.key(b"ids");
        f.out.push(b'{');
        for (i, (k, v)) in id.ids.iter().enumerate() {
            if i > 0 {
                f.out.push(b',');
            }
            write_str(f.out, k);
            f.out.push(b':');
            write_str(f.out, v);
        }
        f.out.push(b'}');
    }
    f.opt_str(b"ip", id.ip.as_deref());
    f.opt_str(b"user_agent", id.user_agent.as_deref());
    out.push(b'}');
}

fn write_page(out: &mut Vec<u8>, page: &PageInfo) {
    out.extend_from_slice(b"{\"url\":");
    write_str(out, &page.url);
    let mut f = Fields { out, first: false };
    f.opt_str(b"title", page.title.as_deref());
    f.opt_str(b"referrer", page.referrer.as_deref());
    out.push(b'}');
}

fn write_object(out: &mut Vec<u8>, props: &Properties) -> Result<(), Invalid> {
    out.push(b'{');
    for (i, (k, v)) in props.iter().enumerate() {
        if k.is_empty() {
            return Err(Invalid);
        }
        if i > 0 {
            out.push(b',');
        }
        write_str(out, k);
        out.push(b':');
        write_value(out, v)?;
    }
    out.push(b'}');
    Ok(())
}

fn write_value(out: &mut Vec<u8>, value: &Value) -> Result<(), Invalid> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Int(i) => out.extend_from_slice(itoa::Buffer::new().format(*i).as_bytes()),
        Value::UInt(u) => out.extend_from_slice(itoa::Buffer::new().format(*u).as_bytes()),
        Value::Float(f) if !f.is_finite() => return Err(Invalid),
        // Float formatting is delegated so the digits match serde_json's exactly.
        Value::Float(f) => delegate(out, f),
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item)?;
            }
            out.push(b']');
        }
        Value::Object(p) => write_object(out, p)?,
    }
    Ok(())
}

/// A JSON string: copied as is when nothing needs escaping, which is nearly always.
fn write_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        delegate(out, s);
    }
}

fn delegate<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Writing a str or f64 into a Vec cannot fail.
    let _ = serde_json::to_writer(out, value);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::{Context, Timestamp, props};

    fn check(event: &Event) {
        let context_json = serde_json::to_vec(&*event.context).expect("context");
        let mut ours = Vec::new();
        encode_event(event, &context_json, &mut ours).expect("valid event");
        let theirs = serde_json::to_vec(event).expect("serde");
        assert_eq!(String::from_utf8_lossy(&ours), String::from_utf8_lossy(&theirs));
    }

    fn base(kind: EventKind) -> Event {
        let at = Timestamp::from_unix_millis(1_763_884_800_123);
        Event {
            context: Arc::new(Context {
                library: "trackway".into(),
                library_version: "0.1.0".into(),
                ..Context::default()
            }),
            ..Event::new(kind, at)
        }
    }

    #[test]
    fn minimal_events_of_every_kind_match_serde_json() {
        for &kind in EventKind::ALL {
            check(&base(kind));
        }
    }

    #[test]
    fn every_field_and_value_type_matches_serde_json() {
        let mut e = base(EventKind::Page);
        e.name = Some("Pricing \"quoted\" \\ \n\t\u{1}".into());
        e.properties = props! {
            "int" => -42, "uint" => u64::MAX, "float" => 9.99, "whole" => 3.0, "tiny" => 1e-300, "huge" => 1.5e300,
            "neg_zero" => -0.0, "t" => true, "f" => false, "null" => Value::Null,
            "emoji 😀" => "snow ☃ and 😀", "ctl" => "\u{0}\u{1f}\u{7f}", "slash" => "a/b",
            "arr" => vec![Value::from(1), Value::from("x"), Value::Array(vec![])],
            "obj" => props! { "nested" => props! { "deep" => 0.1 } },
            "empty_obj" => Properties::new(),
        };
        let mut ids = BTreeMap::new();
        ids.insert("registered".to_owned(), "jane@example.com".to_owned());
        ids.insert("crm \"id\"".to_owned(), "42".to_owned());
        e.identity = Identity {
            anonymous_id: Some("0b1c".into()),
            user_id: Some("jane@example.com".into()),
            primary: Some("registered".into()),
            ids,
            ip: Some("203.0.113.9".into()),
            user_agent: Some("Mozilla/5.0 (X11; Linux x86_64)".into()),
        };
        e.session_id = Some("s-1".into());
        e.page = Some(PageInfo { url: "/p?q=\"1\"".into(), title: Some("T".into()), referrer: None });
        e.imported = true;
        e.default_keys = vec!["int".into(), "k \"q\"".into()];
        e.context = Arc::new(Context {
            library: "trackway".into(),
            library_version: "0.1.0".into(),
            os: Some("linux".into()),
            locale: Some("en-US".into()),
            app_name: Some("shop \"pro\"".into()),
            app_version: Some("2.4.0".into()),
            os_name: Some("Linux".into()),
            os_version: Some("6.1.0".into()),
            device_model: Some("Pixel 8".into()),
            device_type: Some("mobile".into()),
            device_id: Some("0b1c".into()),
        });
        check(&e);
        e.page = Some(PageInfo { url: "/".into(), title: None, referrer: Some("https://r/".into()) });
        e.identity.user_agent = None;
        check(&e);
    }

    #[test]
    fn invalid_properties_are_reported_with_their_path() {
        let mut e = base(EventKind::Track);
        let mut out = Vec::new();
        e.properties = props! { "ok" => 1, "list" => vec![props! { "x" => f64::NAN }] };
        let err = encode_event(&e, b"{}", &mut out).expect_err("NaN");
        assert_eq!(err.path, "list[0].x");
        e.properties = props! { "" => 1 };
        assert!(encode_event(&e, b"{}", &mut out).is_err());
    }

    #[test]
    fn timestamps_far_from_now_match_serde_json() {
        for ms in [0, -1, 253_402_300_799_999, -62_135_596_800_000] {
            let mut e = base(EventKind::Track);
            e.timestamp = Timestamp::from_unix_millis(ms);
            check(&e);
        }
    }
}

//! Shared pieces of the fuzz targets: a serde value the fuzzer shapes freely, what
//! `Properties::from_serialize` must answer for it, and the stored-event round trip.

use std::sync::Arc;

use arbitrary::Arbitrary;
use bytes::Bytes;
use serde::ser::{
    Serialize, SerializeMap, SerializeSeq, SerializeStruct, SerializeStructVariant, SerializeTuple,
    SerializeTupleVariant, Serializer,
};
use trackway::destination::EventRecord;
use trackway::fuzzing::{ChunkEvent, decode_chunk, encode_chunk};
use trackway_wire::{Context, Event, EventKind, Identity, PageInfo, Properties, Timestamp};

/// Names serde needs as `&'static str` (struct fields, enum variants): a small set, with the
/// empty name (which `validate` refuses) and a repeated one among them.
const NAMES: &[&str] = &["", "a", "b", "items", "price", "a"];

fn name(i: u8) -> &'static str {
    NAMES[usize::from(i) % NAMES.len()]
}

/// Any value of serde's data model, as a user's `impl Serialize` may produce it.
#[derive(Arbitrary, Debug, Clone)]
pub enum Input {
    /// `serialize_unit`.
    Unit,
    /// `serialize_none`.
    None,
    /// `serialize_some`.
    Some(Box<Input>),
    /// `serialize_bool`.
    Bool(bool),
    /// `serialize_i64`.
    I64(i64),
    /// `serialize_i8`.
    I8(i8),
    /// `serialize_u64`.
    U64(u64),
    /// `serialize_u32`.
    U32(u32),
    /// `serialize_f64`, NaN and infinities included.
    F64(f64),
    /// `serialize_f32`.
    F32(f32),
    /// `serialize_char`.
    Char(char),
    /// `serialize_str`.
    Str(String),
    /// `serialize_bytes`.
    Bytes(Vec<u8>),
    /// `serialize_unit_struct`.
    UnitStruct,
    /// `serialize_unit_variant`.
    UnitVariant(u8),
    /// `serialize_newtype_struct`.
    Newtype(Box<Input>),
    /// `serialize_newtype_variant`.
    NewtypeVariant(u8, Box<Input>),
    /// `serialize_seq`.
    Seq(Vec<Input>),
    /// `serialize_tuple`.
    Tuple(Vec<Input>),
    /// `serialize_tuple_variant`.
    TupleVariant(u8, Vec<Input>),
    /// `serialize_map` with keys of any shape.
    Map(Vec<(Input, Input)>),
    /// `serialize_struct`.
    Struct(Vec<(u8, Input)>),
    /// `serialize_struct_variant`.
    StructVariant(u8, Vec<(u8, Input)>),
}

impl Serialize for Input {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Input::Unit => s.serialize_unit(),
            Input::None => s.serialize_none(),
            Input::Some(v) => s.serialize_some(v),
            Input::Bool(v) => s.serialize_bool(*v),
            Input::I64(v) => s.serialize_i64(*v),
            Input::I8(v) => s.serialize_i8(*v),
            Input::U64(v) => s.serialize_u64(*v),
            Input::U32(v) => s.serialize_u32(*v),
            Input::F64(v) => s.serialize_f64(*v),
            Input::F32(v) => s.serialize_f32(*v),
            Input::Char(v) => s.serialize_char(*v),
            Input::Str(v) => s.serialize_str(v),
            Input::Bytes(v) => s.serialize_bytes(v),
            Input::UnitStruct => s.serialize_unit_struct("Unit"),
            Input::UnitVariant(i) => s.serialize_unit_variant("E", 0, name(*i)),
            Input::Newtype(v) => s.serialize_newtype_struct("N", v),
            Input::NewtypeVariant(i, v) => s.serialize_newtype_variant("E", 0, name(*i), v),
            Input::Seq(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Input::Tuple(items) => {
                let mut t = s.serialize_tuple(items.len())?;
                for item in items {
                    t.serialize_element(item)?;
                }
                t.end()
            }
            Input::TupleVariant(i, items) => {
                let mut t = s.serialize_tuple_variant("E", 0, name(*i), items.len())?;
                for item in items {
                    t.serialize_field(item)?;
                }
                t.end()
            }
            Input::Map(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
            Input::Struct(fields) => {
                let mut st = s.serialize_struct("S", fields.len())?;
                for (k, v) in fields {
                    st.serialize_field(name(*k), v)?;
                }
                st.end()
            }
            Input::StructVariant(i, fields) => {
                let mut st = s.serialize_struct_variant("E", 0, name(*i), fields.len())?;
                for (k, v) in fields {
                    st.serialize_field(name(*k), v)?;
                }
                st.end()
            }
        }
    }
}

impl Input {
    /// The input with `Some` and newtype wrappers taken off, as serializers see through them.
    fn unwrapped(&self) -> &Input {
        match self {
            Input::Some(v) | Input::Newtype(v) => v.unwrapped(),
            other => other,
        }
    }

    /// Whether serializing this value meets a NaN or an infinity (in a key or a value).
    pub fn has_non_finite(&self) -> bool {
        match self {
            Input::F64(f) => !f.is_finite(),
            Input::F32(f) => !f.is_finite(),
            Input::Some(v) | Input::Newtype(v) | Input::NewtypeVariant(_, v) => v.has_non_finite(),
            Input::Seq(items) | Input::Tuple(items) | Input::TupleVariant(_, items) => {
                items.iter().any(Input::has_non_finite)
            }
            Input::Map(entries) => entries.iter().any(|(k, v)| k.has_non_finite() || v.has_non_finite()),
            Input::Struct(fields) | Input::StructVariant(_, fields) => fields.iter().any(|(_, v)| v.has_non_finite()),
            _ => false,
        }
    }

    /// Whether every map key is a string, an integer or a boolean, and no key anywhere is empty:
    /// the keys properties can have. A variant's name is a key too.
    pub fn keys_valid(&self) -> bool {
        match self {
            Input::Some(v) | Input::Newtype(v) => v.keys_valid(),
            Input::NewtypeVariant(i, v) => !name(*i).is_empty() && v.keys_valid(),
            Input::Seq(items) | Input::Tuple(items) => items.iter().all(Input::keys_valid),
            Input::TupleVariant(i, items) => !name(*i).is_empty() && items.iter().all(Input::keys_valid),
            // A key that is no scalar fails at once, even in a value a repeated key replaces later.
            Input::Map(_) if self.has_non_scalar_key() => false,
            Input::Map(entries) => last_values_valid(entries.iter().map(|(k, v)| (k.key().unwrap_or_default(), v))),
            Input::Struct(fields) => struct_valid(fields),
            Input::StructVariant(i, fields) => !name(*i).is_empty() && struct_valid(fields),
            _ => true,
        }
    }

    /// Whether a map anywhere in this value has a key that is not a scalar.
    pub fn has_non_scalar_key(&self) -> bool {
        match self {
            Input::Some(v) | Input::Newtype(v) | Input::NewtypeVariant(_, v) => v.has_non_scalar_key(),
            Input::Seq(items) | Input::Tuple(items) | Input::TupleVariant(_, items) => {
                items.iter().any(Input::has_non_scalar_key)
            }
            Input::Map(entries) => entries.iter().any(|(k, v)| k.key().is_none() || v.has_non_scalar_key()),
            Input::Struct(fields) | Input::StructVariant(_, fields) => {
                fields.iter().any(|(_, v)| v.has_non_scalar_key())
            }
            _ => false,
        }
    }

    /// The property name this value makes as a map key; `None` when it cannot be one.
    fn key(&self) -> Option<String> {
        Some(match self.unwrapped() {
            Input::Str(s) => s.clone(),
            Input::Char(c) => c.to_string(),
            Input::Bool(b) => b.to_string(),
            Input::I64(i) => i.to_string(),
            Input::I8(i) => i.to_string(),
            Input::U64(u) => u.to_string(),
            Input::U32(u) => u.to_string(),
            Input::UnitVariant(i) => name(*i).to_owned(),
            _ => return None,
        })
    }
}

fn struct_valid(fields: &[(u8, Input)]) -> bool {
    last_values_valid(fields.iter().map(|(k, v)| (name(*k).to_owned(), v)))
}

/// No key is empty, and the value each key keeps (a repeated key replaces the earlier value)
/// has valid keys.
fn last_values_valid<'a>(entries: impl Iterator<Item = (String, &'a Input)>) -> bool {
    let mut last = std::collections::HashMap::new();
    for (k, v) in entries {
        if k.is_empty() {
            return false;
        }
        last.insert(k, v);
    }
    last.values().all(|v| v.keys_valid())
}

impl Input {
    /// Whether the top level becomes an object (or nothing): what `from_serialize` takes.
    pub fn is_object_like(&self) -> bool {
        matches!(
            self.unwrapped(),
            Input::Unit
                | Input::None
                | Input::UnitStruct
                | Input::Map(_)
                | Input::Struct(_)
                | Input::NewtypeVariant(..)
                | Input::TupleVariant(..)
                | Input::StructVariant(..)
        )
    }
}

/// The fields of an event the fuzzer picks, besides its properties.
#[derive(Arbitrary, Debug)]
pub struct EventFields {
    /// Kind, by index.
    pub kind: u8,
    /// Name.
    pub name: Option<String>,
    /// Timestamp in milliseconds.
    pub timestamp: i64,
    /// Identity strings.
    pub user_id: Option<String>,
    /// Anonymous id.
    pub anonymous_id: Option<String>,
    /// Hard ids.
    pub ids: Vec<(String, String)>,
    /// IP.
    pub ip: Option<String>,
    /// User agent.
    pub user_agent: Option<String>,
    /// Session id.
    pub session_id: Option<String>,
    /// Page URL and title.
    pub page: Option<(String, Option<String>, Option<String>)>,
    /// Imported flag.
    pub imported: bool,
    /// App name in the context.
    pub app_name: Option<String>,
}

impl EventFields {
    /// The event with these fields and `properties`.
    pub fn event(&self, properties: Properties) -> Event {
        let timestamp = Timestamp::from_unix_millis(self.timestamp);
        let kind = EventKind::ALL[usize::from(self.kind) % EventKind::ALL.len()];
        Event {
            name: self.name.as_deref().map(Into::into),
            properties,
            identity: Identity {
                anonymous_id: self.anonymous_id.clone(),
                user_id: self.user_id.as_deref().map(Into::into),
                primary: None,
                ids: self.ids.iter().cloned().collect(),
                ip: self.ip.clone(),
                user_agent: self.user_agent.clone(),
            },
            session_id: self.session_id.clone(),
            page: self.page.as_ref().map(|(url, title, referrer)| PageInfo {
                url: url.clone(),
                title: title.clone(),
                referrer: referrer.clone(),
            }),
            imported: self.imported,
            context: Arc::new(Context {
                library: "trackway".into(),
                library_version: "0.1.0".into(),
                app_name: self.app_name.clone(),
                ..Context::default()
            }),
            ..Event::new(kind, timestamp)
        }
    }
}

/// Checks an event with valid properties the way the client and the store handle it: the
/// hand-written encoder writes serde_json's bytes, and the event comes back unchanged from a
/// stored chunk (head + context) through `EventRecord::event`, as a destination reads it.
///
/// # Panics
/// When any of that does not hold.
pub fn check_stored_round_trip(event: &Event) {
    let context_json = serde_json::to_vec(&*event.context).expect("a context serializes");
    let mut full = Vec::new();
    trackway_wire::encode_event(event, &context_json, &mut full).expect("valid properties encode");
    let reference = serde_json::to_vec(event).expect("an event serializes");
    assert_eq!(
        String::from_utf8_lossy(&full),
        String::from_utf8_lossy(&reference),
        "encode_event differs from serde_json"
    );

    let mut head = Vec::new();
    trackway_wire::encode_event_head(event, &mut head).expect("valid properties encode");
    let stored = ChunkEvent {
        seq: 7,
        id: event.id,
        kind: event.kind,
        timestamp: event.timestamp,
        queued_at: event.timestamp,
        context: Some(1),
        head: Bytes::from(head),
    };
    let data = encode_chunk(std::slice::from_ref(&stored));
    let back = decode_chunk(&data).expect("a chunk the store wrote decodes");
    assert_eq!(back, [stored.clone()]);
    let record = EventRecord::from_head(stored.seq, stored.id, stored.timestamp, stored.head, context_json.into());
    assert_eq!(record.json().as_ref(), reference.as_slice(), "head + context is the full event");
    let decoded = record.event().unwrap_or_else(|e| panic!("a stored event reads back: {e}\n{event:?}"));
    assert_eq!(decoded, event, "stored event changed on the way back");
}

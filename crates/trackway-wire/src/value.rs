//! Property values: JSON-like, but numbers are always finite.
//!
//! `serde_json::json!(f64::NAN)` is already `null`, so a check on a `serde_json::Value` comes too
//! late. trackway's own [`Value`] keeps the `f64` as given and [`Properties::validate`] (called by the
//! client before anything is queued) reports the path of the first NaN or infinity.

use std::fmt;

use compact_str::CompactString;
use serde::de::{MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One property value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// JSON `null`.
    Null,
    /// A boolean.
    Bool(bool),
    /// A signed integer.
    Int(i64),
    /// An unsigned integer too large for `i64`.
    UInt(u64),
    /// A float; must be finite to pass validation.
    Float(f64),
    /// A string (up to 24 bytes stored inline, without a heap allocation).
    String(CompactString),
    /// An array.
    Array(Vec<Value>),
    /// A nested object.
    Object(Properties),
}

/// An ordered map of property names to values (insertion order is kept; inserting an existing key
/// replaces its value in place).
///
/// Build one with [`props!`](crate::props), with [`Properties::with`], or from any
/// `impl Serialize` through [`Properties::from_serialize`].
///
/// ```
/// use trackway_wire::{props, Properties, Value};
/// let p = props! { "plan" => "pro", "amount" => 9.99, "seats" => 3 };
/// assert_eq!(p.get("seats"), Some(&Value::Int(3)));
/// assert!(props! { "bad" => f64::NAN }.validate().is_err());
/// ```
#[derive(Clone, Default, PartialEq)]
pub struct Properties {
    // Keys up to 24 bytes are stored inline: building properties from literals allocates nothing
    // per key on the caller's thread.
    entries: Vec<(CompactString, Value)>,
}

/// A property that cannot be sent: its path and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("property `{path}` {reason}")]
pub struct PropertyError {
    /// Dotted path of the offending value, e.g. `items[2].price`.
    pub path: String,
    /// What is wrong, e.g. "is NaN; only finite numbers can be sent".
    pub reason: String,
}

impl Properties {
    /// An empty map.
    pub const fn new() -> Self {
        Properties { entries: Vec::new() }
    }

    /// An empty map with room for `n` entries.
    pub fn with_capacity(n: usize) -> Self {
        Properties { entries: Vec::with_capacity(n) }
    }

    /// Inserts or replaces `key`, returning the previous value.
    pub fn insert(&mut self, key: impl AsRef<str>, value: impl Into<Value>) -> Option<Value> {
        let key = key.as_ref();
        let value = value.into();
        if let Some(slot) = self.entries.iter_mut().find(|(k, _)| k == key) {
            return Some(std::mem::replace(&mut slot.1, value));
        }
        self.entries.push((CompactString::new(key), value));
        None
    }

    /// Builder form of [`insert`](Self::insert).
    #[must_use]
    pub fn with(mut self, key: impl AsRef<str>, value: impl Into<Value>) -> Self {
        self.insert(key, value);
        self
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let i = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.remove(i).1)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Copies every entry of `other` into `self`; `other` wins on equal keys.
    pub fn merge_from(&mut self, other: &Properties) {
        for (k, v) in &other.entries {
            self.insert(k, v.clone());
        }
    }

    /// Adds the entries of `defaults` whose keys `self` does not have (`self` wins on equal
    /// keys); they go after `self`'s own entries. One allocation at most, for the room.
    pub fn fill_missing_from(&mut self, defaults: &Properties) {
        self.entries.reserve(defaults.entries.len());
        let own = self.entries.len();
        for (k, v) in &defaults.entries {
            if !self.entries[..own].iter().any(|(key, _)| key == k) {
                self.entries.push((k.clone(), v.clone()));
            }
        }
    }

    /// Checks that every number is finite, every key non-empty, and that values nest at most
    /// [`MAX_PROPERTY_DEPTH`] levels deep.
    ///
    /// # Errors
    /// The first offending value, with its path.
    pub fn validate(&self) -> Result<(), PropertyError> {
        let mut path = String::new();
        validate_object(self, &mut path, 1)
    }

    /// Converts any serializable value (a struct or a map) into properties, rejecting NaN and
    /// infinities with the path where they occur.
    ///
    /// # Errors
    /// A [`PropertyError`] if `value` has a non-finite float, is not a map or struct, or fails to
    /// serialize.
    ///
    /// ```
    /// #[derive(serde::Serialize)]
    /// struct Order { id: u32, total: f64 }
    /// let p = trackway_wire::Properties::from_serialize(&Order { id: 7, total: 9.5 }).unwrap();
    /// assert_eq!(p.len(), 2);
    /// assert!(trackway_wire::Properties::from_serialize(&Order { id: 7, total: f64::INFINITY }).is_err());
    /// ```
    pub fn from_serialize<T: Serialize + ?Sized>(value: &T) -> Result<Properties, PropertyError> {
        match crate::ser::to_value(value)? {
            Value::Object(p) => {
                p.validate()?;
                Ok(p)
            }
            Value::Null => Ok(Properties::new()),
            other => Err(PropertyError {
                path: String::new(),
                reason: format!("must be a map or struct, not {}", other.type_name()),
            }),
        }
    }
}

impl Value {
    /// The JSON type name, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) | Value::UInt(_) | Value::Float(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
        }
    }

    /// The string inside, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The number as an `f64`, if this is a number (large integers lose precision).
    #[allow(clippy::cast_precision_loss)]
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Int(i) => Some(i as f64),
            Value::UInt(u) => Some(u as f64),
            Value::Float(f) => Some(f),
            _ => None,
        }
    }

    /// The boolean inside, if this is a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
}

/// How deep properties may nest (objects and arrays, the properties themselves being level 1).
/// Deeper values would pass the call and then fail to parse back from the store (serde_json stops
/// at 128 levels, and the event around the properties adds its own), so the event could never be
/// delivered: they are refused at the call instead.
pub const MAX_PROPERTY_DEPTH: usize = 32;

fn validate_object(props: &Properties, path: &mut String, depth: usize) -> Result<(), PropertyError> {
    if depth > MAX_PROPERTY_DEPTH {
        return Err(PropertyError {
            path: path.clone(),
            reason: format!("nests deeper than {MAX_PROPERTY_DEPTH} levels; flatten it"),
        });
    }
    for (key, value) in &props.entries {
        let len = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key.as_str());
        if key.is_empty() {
            return Err(PropertyError { path: path.clone(), reason: "has an empty name".into() });
        }
        validate_value(value, path, depth)?;
        path.truncate(len);
    }
    Ok(())
}

/// `depth`: the level of the object or array holding `value`.
fn validate_value(value: &Value, path: &mut String, depth: usize) -> Result<(), PropertyError> {
    match value {
        Value::Float(f) if f.is_nan() => {
            Err(PropertyError { path: path.clone(), reason: "is NaN; only finite numbers can be sent".into() })
        }
        Value::Float(f) if f.is_infinite() => {
            Err(PropertyError { path: path.clone(), reason: "is infinite; only finite numbers can be sent".into() })
        }
        Value::Array(items) => {
            if depth + 1 > MAX_PROPERTY_DEPTH {
                return Err(PropertyError {
                    path: path.clone(),
                    reason: format!("nests deeper than {MAX_PROPERTY_DEPTH} levels; flatten it"),
                });
            }
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                validate_value(item, path, depth + 1)?;
                path.truncate(len);
            }
            Ok(())
        }
        Value::Object(inner) => validate_object(inner, path, depth + 1),
        _ => Ok(()),
    }
}

impl fmt::Debug for Properties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.entries.iter().map(|(k, v)| (k.as_str(), v))).finish()
    }
}

impl<K: AsRef<str>, V: Into<Value>> FromIterator<(K, V)> for Properties {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut p = Properties::new();
        for (k, v) in iter {
            p.insert(k, v);
        }
        p
    }
}

impl<'a> IntoIterator for &'a Properties {
    type Item = (&'a str, &'a Value);
    type IntoIter = Box<dyn Iterator<Item = (&'a str, &'a Value)> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

/// Builds [`Properties`] from `key => value` pairs.
///
/// ```
/// let p = trackway_wire::props! { "plan" => "pro", "nested" => trackway_wire::props! { "a" => 1 } };
/// assert_eq!(p.len(), 2);
/// ```
#[macro_export]
macro_rules! props {
    () => { $crate::Properties::new() };
    ($($key:expr => $value:expr),+ $(,)?) => {{
        let mut p = $crate::Properties::with_capacity([$(stringify!($key)),+].len());
        $( p.insert($key, $value); )+
        p
    }};
}

// === conversions ===

macro_rules! from_int {
    ($variant:ident as $target:ty: $($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Self { Value::$variant(<$target>::from(v)) }
        }
    )*};
}
from_int!(Int as i64: i8, i16, i32, i64, u8, u16, u32);

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        i64::try_from(v).map_or(Value::UInt(v), Value::Int)
    }
}
impl From<usize> for Value {
    fn from(v: usize) -> Self {
        Value::from(v as u64)
    }
}
impl From<isize> for Value {
    fn from(v: isize) -> Self {
        Value::Int(v as i64)
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}
impl From<f32> for Value {
    fn from(v: f32) -> Self {
        Value::Float(f64::from(v))
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::String(CompactString::from(v))
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::String(CompactString::new(v))
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::String(CompactString::new(v))
    }
}
impl From<CompactString> for Value {
    fn from(v: CompactString) -> Self {
        Value::String(v)
    }
}
impl From<Properties> for Value {
    fn from(v: Properties) -> Self {
        Value::Object(v)
    }
}
impl<T: Into<Value>> From<Vec<T>> for Value {
    fn from(v: Vec<T>) -> Self {
        Value::Array(v.into_iter().map(Into::into).collect())
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}
impl From<crate::Timestamp> for Value {
    /// Timestamps become RFC 3339 strings.
    fn from(v: crate::Timestamp) -> Self {
        Value::String(CompactString::from(v.to_string()))
    }
}

// === serde ===

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::UInt(u) => s.serialize_u64(*u),
            Value::Float(f) => s.serialize_f64(*f),
            Value::String(v) => s.serialize_str(v),
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Value::Object(p) => p.serialize(s),
        }
    }
}

impl Serialize for Properties {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.entries.len()))?;
        for (k, v) in &self.entries {
            map.serialize_entry(k.as_str(), v)?;
        }
        map.end()
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(CompactString::new(v)))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(CompactString::from(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Value, A::Error> {
        PropertiesVisitor.visit_map(map).map(Value::Object)
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct PropertiesVisitor;

impl<'de> Visitor<'de> for PropertiesVisitor {
    type Value = Properties;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Properties, A::Error> {
        let mut p = Properties::with_capacity(map.size_hint().unwrap_or(0).min(64));
        while let Some((k, v)) = map.next_entry::<CompactString, Value>()? {
            p.insert(k, v);
        }
        Ok(p)
    }
}

impl<'de> Deserialize<'de> for Properties {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(PropertiesVisitor)
    }
}

#[cfg(test)]
mod tests {
    /// Found by `fuzz/fuzz_targets/properties_value.rs`: properties nested past serde_json's
    /// recursion limit were accepted, then their stored JSON could not be parsed back.
    #[test]
    fn properties_nested_too_deep_are_refused_and_what_passes_parses_back() {
        let nest = |levels: usize| {
            let mut v = Value::Int(1);
            for _ in 0..levels {
                v = Value::Array(vec![v]);
            }
            let mut p = Properties::new();
            p.insert("deep", v);
            p
        };
        let err = nest(200).validate().expect_err("too deep");
        assert!(err.reason.contains("nests deeper than 32 levels"), "{err}");
        let ok = nest(MAX_PROPERTY_DEPTH - 1);
        ok.validate().expect("at the limit");
        let json = serde_json::to_vec(&ok).expect("serialize");
        let back: Properties = serde_json::from_slice(&json).expect("parses back");
        assert_eq!(back, ok);
        assert!(nest(MAX_PROPERTY_DEPTH).validate().is_err(), "one level more");
    }

    use super::*;

    #[test]
    fn fill_missing_from_keeps_own_values_and_adds_the_rest() {
        let mut own = props! { "plan" => "pro", "seq" => 1 };
        own.fill_missing_from(&props! { "plan" => "free", "build" => "release" });
        assert_eq!(own, props! { "plan" => "pro", "seq" => 1, "build" => "release" });
    }

    #[test]
    fn nan_and_infinity_are_reported_with_their_path() {
        let p = props! { "ok" => 1.5, "items" => vec![props! { "price" => f64::NAN }] };
        let err = p.validate().expect_err("NaN");
        assert_eq!(err.path, "items[0].price");
        assert!(err.to_string().contains("NaN"), "{err}");
        let err = props! { "x" => f64::NEG_INFINITY }.validate().expect_err("inf");
        assert!(err.reason.contains("infinite"));
    }

    #[test]
    fn insertion_order_is_kept_and_insert_replaces() {
        let mut p = props! { "b" => 1, "a" => 2 };
        p.insert("b", 3);
        let keys: Vec<_> = p.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["b", "a"]);
        assert_eq!(serde_json::to_string(&p).expect("json"), r#"{"b":3,"a":2}"#);
    }

    /// Found by `fuzz/fuzz_targets/properties_value.rs`: serde_json's default float parser read
    /// this (an `f32` widened) back one unit in the last place off, so a stored event changed.
    #[test]
    fn json_round_trip_keeps_every_float_bit() {
        for f in [8.828180325246348e-44, f64::from(f32::MIN_POSITIVE) / 3.0, 1e-300, 0.1 + 0.2] {
            let p = props! { "x" => f };
            let back: Properties = serde_json::from_str(&serde_json::to_string(&p).expect("json")).expect("parse");
            assert_eq!(back.get("x").and_then(Value::as_f64).map(f64::to_bits), Some(f.to_bits()), "{f:e}");
        }
    }

    #[test]
    fn json_round_trip_keeps_native_types() {
        let p = props! { "i" => -3, "u" => u64::MAX, "f" => 0.5, "s" => "x", "n" => Value::Null, "b" => true };
        let json = serde_json::to_string(&p).expect("json");
        let back: Properties = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, p);
    }
}

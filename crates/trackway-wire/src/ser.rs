//! A serde `Serializer` into [`Value`] that rejects NaN and infinities where they occur.
//!
//! `serde_json::to_value` would silently turn them into `null`; this one fails with the path.

use serde::ser::{self, Serialize};

use crate::value::{Properties, PropertyError, Value};

/// Serializes `value` into a [`Value`], failing on non-finite floats.
pub(crate) fn to_value<T: Serialize + ?Sized>(value: &T) -> Result<Value, PropertyError> {
    value.serialize(ValueSerializer { path: String::new() }).map_err(|e| e.0)
}

/// The serializer's error: a [`PropertyError`] in a newtype so serde's `Error` trait can be implemented.
#[derive(Debug)]
struct Error(PropertyError);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
impl std::error::Error for Error {}
impl ser::Error for Error {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Error(PropertyError { path: String::new(), reason: format!("cannot be serialized: {msg}") })
    }
}

/// Tracks the path so far, so errors can say where the bad value sits.
struct ValueSerializer {
    path: String,
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
}

impl ser::Serializer for ValueSerializer {
    type Ok = Value;
    type Error = Error;
    type SerializeSeq = SeqSerializer;
    type SerializeTuple = SeqSerializer;
    type SerializeTupleStruct = SeqSerializer;
    type SerializeTupleVariant = VariantSerializer<SeqSerializer>;
    type SerializeMap = MapSerializer;
    type SerializeStruct = MapSerializer;
    type SerializeStructVariant = VariantSerializer<MapSerializer>;

    fn serialize_bool(self, v: bool) -> Result<Value, Error> {
        Ok(Value::Bool(v))
    }
    fn serialize_i8(self, v: i8) -> Result<Value, Error> {
        Ok(Value::from(v))
    }
    fn serialize_i16(self, v: i16) -> Result<Value, Error> {
        Ok(Value::from(v))
    }
    fn serialize_i32(self, v: i32) -> Result<Value, Error> {
        Ok(Value::from(v))
    }
    fn serialize_i64(self, v: i64) -> Result<Value, Error> {
        Ok(Value::Int(v))
    }
    fn serialize_u8(self, v: u8) -> Result<Value, Error> {
        Ok(Value::from(v))
    }
    fn serialize_u16(self, v: u16) -> Result<Value, Error> {
        Ok(Value::from(v))
    }
    fn serialize_u32(self, v: u32) -> Result<Value, Error> {
        Ok(Value::from(v))
    }
    fn serialize_u64(self, v: u64) -> Result<Value, Error> {
        Ok(Value::from(v))
    }
    fn serialize_f32(self, v: f32) -> Result<Value, Error> {
        self.serialize_f64(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Result<Value, Error> {
        if v.is_finite() {
            return Ok(Value::Float(v));
        }
        let what = if v.is_nan() { "is NaN" } else { "is infinite" };
        Err(Error(PropertyError { path: self.path, reason: format!("{what}; only finite numbers can be sent") }))
    }
    fn serialize_char(self, v: char) -> Result<Value, Error> {
        Ok(Value::String(v.to_string().into()))
    }
    fn serialize_str(self, v: &str) -> Result<Value, Error> {
        Ok(Value::String(v.into()))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<Value, Error> {
        Ok(Value::Array(v.iter().map(|b| Value::from(*b)).collect()))
    }
    fn serialize_none(self) -> Result<Value, Error> {
        Ok(Value::Null)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Value, Error> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<Value, Error> {
        Ok(Value::Null)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<Value, Error> {
        Ok(Value::Null)
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Result<Value, Error> {
        Ok(Value::String(variant.into()))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, value: &T) -> Result<Value, Error> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<Value, Error> {
        let inner = value.serialize(ValueSerializer { path: child(&self.path, variant) })?;
        Ok(Value::Object(Properties::new().with(variant, inner)))
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<SeqSerializer, Error> {
        Ok(SeqSerializer { path: self.path, items: Vec::with_capacity(len.unwrap_or(0).min(256)) })
    }
    fn serialize_tuple(self, len: usize) -> Result<SeqSerializer, Error> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<SeqSerializer, Error> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, Error> {
        let inner = ValueSerializer { path: child(&self.path, variant) }.serialize_seq(Some(len))?;
        Ok(VariantSerializer { variant, inner })
    }
    fn serialize_map(self, len: Option<usize>) -> Result<MapSerializer, Error> {
        Ok(MapSerializer { path: self.path, map: Properties::with_capacity(len.unwrap_or(0).min(256)), key: None })
    }
    fn serialize_struct(self, _: &'static str, len: usize) -> Result<MapSerializer, Error> {
        self.serialize_map(Some(len))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, Error> {
        let inner = ValueSerializer { path: child(&self.path, variant) }.serialize_map(Some(len))?;
        Ok(VariantSerializer { variant, inner })
    }
}

struct SeqSerializer {
    path: String,
    items: Vec<Value>,
}

impl SeqSerializer {
    fn push<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let path = format!("{}[{}]", self.path, self.items.len());
        self.items.push(value.serialize(ValueSerializer { path })?);
        Ok(())
    }
}

impl ser::SerializeSeq for SeqSerializer {
    type Ok = Value;
    type Error = Error;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.push(value)
    }
    fn end(self) -> Result<Value, Error> {
        Ok(Value::Array(self.items))
    }
}
impl ser::SerializeTuple for SeqSerializer {
    type Ok = Value;
    type Error = Error;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.push(value)
    }
    fn end(self) -> Result<Value, Error> {
        Ok(Value::Array(self.items))
    }
}
impl ser::SerializeTupleStruct for SeqSerializer {
    type Ok = Value;
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.push(value)
    }
    fn end(self) -> Result<Value, Error> {
        Ok(Value::Array(self.items))
    }
}

struct MapSerializer {
    path: String,
    map: Properties,
    key: Option<String>,
}

impl MapSerializer {
    fn entry<T: Serialize + ?Sized>(&mut self, key: String, value: &T) -> Result<(), Error> {
        let v = value.serialize(ValueSerializer { path: child(&self.path, &key) })?;
        self.map.insert(key, v);
        Ok(())
    }
}

impl ser::SerializeMap for MapSerializer {
    type Ok = Value;
    type Error = Error;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
        let key = match key.serialize(ValueSerializer { path: self.path.clone() })? {
            Value::String(s) => s.into_string(),
            Value::Int(i) => i.to_string(),
            Value::UInt(u) => u.to_string(),
            Value::Bool(b) => b.to_string(),
            other => {
                return Err(Error(PropertyError {
                    path: self.path.clone(),
                    reason: format!("has a map key that is {}, not a string", other.type_name()),
                }));
            }
        };
        self.key = Some(key);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        let key = self.key.take().unwrap_or_default();
        self.entry(key, value)
    }
    fn end(self) -> Result<Value, Error> {
        Ok(Value::Object(self.map))
    }
}
impl ser::SerializeStruct for MapSerializer {
    type Ok = Value;
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), Error> {
        self.entry(key.to_owned(), value)
    }
    fn end(self) -> Result<Value, Error> {
        Ok(Value::Object(self.map))
    }
}

/// Wraps a sequence or map serializer so an enum variant becomes `{ "Variant": ... }`, as serde_json does.
struct VariantSerializer<S> {
    variant: &'static str,
    inner: S,
}

impl ser::SerializeTupleVariant for VariantSerializer<SeqSerializer> {
    type Ok = Value;
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
        self.inner.push(value)
    }
    fn end(self) -> Result<Value, Error> {
        Ok(Value::Object(Properties::new().with(self.variant, Value::Array(self.inner.items))))
    }
}
impl ser::SerializeStructVariant for VariantSerializer<MapSerializer> {
    type Ok = Value;
    type Error = Error;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), Error> {
        self.inner.entry(key.to_owned(), value)
    }
    fn end(self) -> Result<Value, Error> {
        Ok(Value::Object(Properties::new().with(self.variant, Value::Object(self.inner.map))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;
    use std::collections::BTreeMap;

    #[derive(Serialize)]
    struct Item {
        sku: &'static str,
        price: f64,
    }
    #[derive(Serialize)]
    struct Order {
        id: u64,
        items: Vec<Item>,
        note: Option<String>,
    }

    #[test]
    fn nested_nan_is_rejected_with_its_path() {
        let order =
            Order { id: 1, items: vec![Item { sku: "a", price: 1.0 }, Item { sku: "b", price: f64::NAN }], note: None };
        let err = to_value(&order).expect_err("NaN");
        assert_eq!(err.path, "items[1].price");
    }

    #[test]
    fn structs_maps_and_options_become_values() {
        let order = Order { id: 9, items: vec![Item { sku: "a", price: 2.5 }], note: Some("gift".into()) };
        let v = to_value(&order).expect("ok");
        let json = serde_json::to_string(&v).expect("json");
        assert_eq!(json, r#"{"id":9,"items":[{"sku":"a","price":2.5}],"note":"gift"}"#);
        let mut m = BTreeMap::new();
        m.insert(3, "three");
        assert_eq!(serde_json::to_string(&to_value(&m).expect("map")).expect("json"), r#"{"3":"three"}"#);
    }
}

//! Counting the events in a request body without keeping it.
//!
//! Sink mode is the target of large benchmarks, so the body is walked with serde visitors that
//! count array elements and skip everything else ([`IgnoredAny`]) instead of building a
//! `serde_json::Value`: the whole body is still validated, but nothing is allocated per event.

use std::fmt;

use serde::Deserializer as _;
use serde::de::{self, Deserialize, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// The number of events in a JSON body, or `None` if it is not valid JSON.
///
/// An array counts its length, an object with an array field `batch` (Customer.io's v2 batch)
/// or `commands` (Bloomreach's batch) counts that array, any other JSON value counts 1. An empty (or all-whitespace) body counts 0 and is not an error:
/// it is a `GET` or a health check, not a malformed batch.
pub(crate) fn count_events(body: &[u8]) -> Option<u64> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Some(0);
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let count = de.deserialize_any(EventCount).ok()?;
    // Trailing garbage after the value makes the body invalid.
    de.end().ok()?;
    Some(count)
}

/// Visits a whole body and yields its event count.
struct EventCount;

impl<'de> Visitor<'de> for EventCount {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<u64, A::Error> {
        count_seq(seq)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u64, A::Error> {
        let mut batch = None;
        while let Some(IsBatch(is_batch)) = map.next_key()? {
            if is_batch {
                batch = map.next_value::<BatchLen>()?.0;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(batch.unwrap_or(1))
    }

    fn visit_bool<E>(self, _: bool) -> Result<u64, E> {
        Ok(1)
    }
    fn visit_i64<E>(self, _: i64) -> Result<u64, E> {
        Ok(1)
    }
    fn visit_u64<E>(self, _: u64) -> Result<u64, E> {
        Ok(1)
    }
    fn visit_f64<E>(self, _: f64) -> Result<u64, E> {
        Ok(1)
    }
    fn visit_str<E>(self, _: &str) -> Result<u64, E> {
        Ok(1)
    }
    fn visit_unit<E>(self) -> Result<u64, E> {
        Ok(1)
    }
}

fn count_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<u64, A::Error> {
    let mut n = 0;
    while seq.next_element::<IgnoredAny>()?.is_some() {
        n += 1;
    }
    Ok(n)
}

/// A map key, reduced to whether it names a batch's array, `"batch"` or `"commands"` (so no key
/// is ever copied).
struct IsBatch(bool);

impl<'de> Deserialize<'de> for IsBatch {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = IsBatch;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E>(self, v: &str) -> Result<IsBatch, E> {
                Ok(IsBatch(v == "batch" || v == "commands"))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// The value of a `batch` or `commands` field: its length if it is an array, `None` (skipped) otherwise.
struct BatchLen(Option<u64>);

impl<'de> Deserialize<'de> for BatchLen {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct BatchVisitor;
        impl<'de> Visitor<'de> for BatchVisitor {
            type Value = BatchLen;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<BatchLen, A::Error> {
                count_seq(seq).map(|n| BatchLen(Some(n)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<BatchLen, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(BatchLen(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<BatchLen, E> {
                Ok(BatchLen(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<BatchLen, E> {
                Ok(BatchLen(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<BatchLen, E> {
                Ok(BatchLen(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<BatchLen, E> {
                Ok(BatchLen(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<BatchLen, E> {
                Ok(BatchLen(None))
            }
            fn visit_unit<E>(self) -> Result<BatchLen, E> {
                Ok(BatchLen(None))
            }
        }
        d.deserialize_any(BatchVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::count_events;

    #[test]
    fn counts_arrays_batches_and_single_values() {
        assert_eq!(count_events(br#"[{"a":1},{"b":[1,2]},3]"#), Some(3));
        assert_eq!(count_events(b"[]"), Some(0));
        assert_eq!(count_events(br#"{"sentAt":"x","batch":[{},{}],"context":{"batch":[1]}}"#), Some(2));
        assert_eq!(count_events(br#"{"bat\u0063h":[1,2,3,4]}"#), Some(4));
        // Bloomreach's batch.
        assert_eq!(count_events(br#"{"commands":[{"name":"customers/events"},{}]}"#), Some(2));
        assert_eq!(count_events(br#"{"type":"track","event":"x"}"#), Some(1));
        assert_eq!(count_events(br#"{"batch":{"not":"an array"}}"#), Some(1));
        assert_eq!(count_events(br#"{"batch":null}"#), Some(1));
        assert_eq!(count_events(b"42"), Some(1));
        assert_eq!(count_events(b"  \n"), Some(0));
    }

    #[test]
    fn rejects_invalid_json() {
        assert_eq!(count_events(b"[1,2"), None);
        assert_eq!(count_events(b"{} {}"), None);
        assert_eq!(count_events(b"not json"), None);
        assert_eq!(count_events(br#"{"batch":[1,}"#), None);
    }
}

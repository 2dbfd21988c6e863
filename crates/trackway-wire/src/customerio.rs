//! Customer.io Track API facts shared by the SDK's destination and the collector's backend: its
//! limits (spec `customerio-opencdp.md` §2.3, in bytes) and the ULID form of event ids (§2.5).

use uuid::Uuid;

/// Most bytes of a person id (the path id, or v2 `identifiers.id`).
pub const ID_MAX: usize = 150;
/// Most bytes of an attribute name.
pub const ATTRIBUTE_NAME_MAX: usize = 150;
/// Most bytes of an attribute value (a string's bytes, else its JSON text).
pub const ATTRIBUTE_VALUE_MAX: usize = 1000;
/// Most attributes in one identify call.
pub const ATTRIBUTES_MAX: usize = 300;
/// Most bytes of an event name.
pub const EVENT_NAME_MAX: usize = 100;
/// Most bytes of an event's `data` (its JSON text).
pub const EVENT_DATA_MAX: usize = 100_000;
/// Most bytes of one `POST /api/v2/batch` request.
pub const BATCH_MAX: usize = 500 * 1024;
/// Most bytes of one v2 operation (an item of a batch, or a `/api/v2/entity` body).
pub const OPERATION_MAX: usize = 32 * 1024;

/// Crockford's base32 alphabet (no I, L, O, U), as ULIDs use it.
const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// The 128 bits of `uuid` written as a ULID: 26 characters of Crockford base32, most significant
/// first. No hashing: a UUIDv7's first 48 bits are its Unix milliseconds, which is where a ULID
/// keeps its time, so the ULID sorts and dates like the message id it came from, and the same id
/// always gives the same ULID (what lets Customer.io drop a replayed event).
///
/// ```
/// use trackway_wire::customerio::ulid_from_uuid;
/// let uuid = uuid::Uuid::from_u128(0x0188_b44d_0ab8_7a2e_8f3c_9d1e_2b4a_6c5d);
/// let ulid = ulid_from_uuid(&uuid);
/// assert_eq!(ulid.len(), 26);
/// assert_eq!(trackway_wire::customerio::uuid_from_ulid(&ulid), Some(uuid));
/// ```
pub fn ulid_from_uuid(uuid: &Uuid) -> String {
    let value = uuid.as_u128();
    // 26 digits of 5 bits are 130 bits: the first digit carries the top 3 bits only.
    (0..26)
        .map(|i| {
            let shift = 5 * (25 - i);
            char::from(CROCKFORD[((value >> shift) & 0x1f) as usize])
        })
        .collect()
}

/// The 128 bits of a ULID, or `None` if `text` is not one (26 Crockford characters, case
/// insensitive, the first at most `7` so the value fits 128 bits).
pub fn uuid_from_ulid(text: &str) -> Option<Uuid> {
    if text.len() != 26 {
        return None;
    }
    let mut value: u128 = 0;
    for (i, b) in text.bytes().enumerate() {
        let digit = CROCKFORD.iter().position(|c| *c == b.to_ascii_uppercase())? as u128;
        if i == 0 && digit > 7 {
            return None;
        }
        value = (value << 5) | digit;
    }
    Some(Uuid::from_u128(value))
}

/// Whether `text` is a ULID (see [`uuid_from_ulid`]).
pub fn is_ulid(text: &str) -> bool {
    uuid_from_ulid(text).is_some()
}

/// The message Customer.io's clients build from an error body's `meta.errors` (a list) or
/// `meta.error` (one): `"1 error:\n  - <message>"`, `"2 errors:\n  - …\n  - …"`. `None` when the
/// body has neither.
///
/// ```
/// use trackway_wire::customerio::meta_message;
/// let body = br#"{"meta":{"errors":["value for attribute 'x' cannot be longer than 1000 bytes"]}}"#;
/// assert_eq!(meta_message(body).as_deref(), Some("1 error:\n  - value for attribute 'x' cannot be longer than 1000 bytes"));
/// ```
pub fn meta_message(body: &[u8]) -> Option<String> {
    let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    let meta = json.get("meta")?;
    let errors: Vec<String> = match (meta.get("errors"), meta.get("error")) {
        (Some(serde_json::Value::Array(list)), _) if !list.is_empty() => list.iter().map(text_of).collect(),
        (_, Some(one)) if !one.is_null() => vec![text_of(one)],
        _ => return None,
    };
    let noun = if errors.len() == 1 { "error" } else { "errors" };
    let mut out = format!("{} {noun}:", errors.len());
    for e in errors {
        out.push_str("\n  - ");
        out.push_str(&e);
    }
    Some(out)
}

fn text_of(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulids_keep_every_bit_and_the_time_prefix() {
        for value in [0u128, 1, u128::MAX, 0x0190_0000_0000_7000_8000_0000_0000_0001] {
            let uuid = Uuid::from_u128(value);
            let ulid = ulid_from_uuid(&uuid);
            assert_eq!(ulid.len(), 26);
            assert_eq!(uuid_from_ulid(&ulid), Some(uuid), "{ulid}");
            assert_eq!(uuid_from_ulid(&ulid.to_lowercase()), Some(uuid));
        }
        assert_eq!(ulid_from_uuid(&Uuid::from_u128(0)), "00000000000000000000000000");
        assert_eq!(ulid_from_uuid(&Uuid::from_u128(u128::MAX)), "7ZZZZZZZZZZZZZZZZZZZZZZZZZ");
        // The ULID spec's example time part: 1469918176385 ms is "01ARYZ6S41" (its `encodeTime` test).
        let uuid = Uuid::from_u128(1_469_918_176_385u128 << 80);
        assert!(ulid_from_uuid(&uuid).starts_with("01ARYZ6S41"), "{}", ulid_from_uuid(&uuid));
        // Later ids sort after earlier ones, as text.
        let (a, b) = (Uuid::from_u128(5u128 << 80), Uuid::from_u128(6u128 << 80));
        assert!(ulid_from_uuid(&a) < ulid_from_uuid(&b));
    }

    #[test]
    fn non_ulids_are_refused() {
        assert!(is_ulid("01HB4HBDKTFWYZCK01DMRSWRFD"), "the spec's example");
        assert!(!is_ulid("01HB4HBDKTFWYZCK01DMRSWRF"), "25 characters");
        assert!(!is_ulid("01HB4HBDKTFWYZCK01DMRSWRFU"), "U is not Crockford");
        assert!(!is_ulid("81HB4HBDKTFWYZCK01DMRSWRFD"), "over 128 bits");
    }

    #[test]
    fn meta_messages_count_the_errors() {
        assert_eq!(meta_message(br#"{"meta":{"error":"bad"}}"#).as_deref(), Some("1 error:\n  - bad"));
        assert_eq!(meta_message(br#"{"meta":{"errors":["a","b"]}}"#).as_deref(), Some("2 errors:\n  - a\n  - b"));
        assert_eq!(meta_message(br#"{"errors":[]}"#), None);
        assert_eq!(meta_message(b"<html>"), None);
    }
}

//! Which partition of the events stream a person's events go to: a stable hash (FNV-1a, 64 bits)
//! of the identity, modulo `[relay.nats] partitions`. Every ingest process computes the same
//! partition for the same person, so one partition consumer sees all of that person's events in
//! the order they were appended.
//!
//! The identity is the user id when there is one, else the anonymous id: a destination that
//! keeps order per person keys its profiles on the user id. Events from before an `identify`
//! (anonymous id only) and after it may land in two partitions: each keeps its own order.

use serde::Deserialize;

/// FNV-1a over `bytes`, 64 bits. Written out (eight lines) rather than taken from a crate so the
/// partition of an identity can never change with a dependency's version: it decides where
/// stored events are.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(PRIME);
    }
    hash
}

/// The fields read from a stored payload: a trackway event's `identity`, or a Segment message's
/// `userId` / `anonymousId` (the `alias` and `group` calls are stored as sent).
#[derive(Deserialize)]
struct Ids {
    #[serde(default)]
    identity: Option<TrackwayIdentity>,
    #[serde(default, rename = "userId")]
    user_id: Option<serde_json::Value>,
    #[serde(default, rename = "anonymousId")]
    anonymous_id: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct TrackwayIdentity {
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    anonymous_id: Option<String>,
}

fn text(v: Option<serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) if !s.is_empty() => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The identity a stored payload belongs to (`u:<user id>` or `a:<anonymous id>`), if any.
pub fn identity_of(payload: &[u8]) -> Option<String> {
    let ids: Ids = serde_json::from_slice(payload).ok()?;
    if let Some(identity) = ids.identity {
        if let Some(u) = identity.user_id.filter(|u| !u.is_empty()) {
            return Some(format!("u:{u}"));
        }
        if let Some(a) = identity.anonymous_id.filter(|a| !a.is_empty()) {
            return Some(format!("a:{a}"));
        }
    }
    if let Some(u) = text(ids.user_id) {
        return Some(format!("u:{u}"));
    }
    text(ids.anonymous_id).map(|a| format!("a:{a}"))
}

/// The partition (0 ≤ p < `partitions`) of a payload; one without an identity goes to 0.
pub fn partition_of(payload: &[u8], partitions: u32) -> u32 {
    let n = u64::from(partitions.max(1));
    identity_of(payload).map_or(0, |id| u32::try_from(fnv1a64(id.as_bytes()) % n).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_reference_values() {
        // From the FNV reference (draft-eastlake-fnv): "" and "a".
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn the_user_id_wins_over_the_anonymous_id() {
        let both = br#"{"identity":{"user_id":"u1","anonymous_id":"x"}}"#;
        assert_eq!(identity_of(both).as_deref(), Some("u:u1"));
        let anon = br#"{"identity":{"anonymous_id":"x"}}"#;
        assert_eq!(identity_of(anon).as_deref(), Some("a:x"));
        let segment = br#"{"type":"alias","userId":42,"previousId":"x"}"#;
        assert_eq!(identity_of(segment).as_deref(), Some("u:42"));
        assert_eq!(identity_of(b"{}"), None);
        assert_eq!(identity_of(b"not json"), None);
    }

    #[test]
    fn a_person_always_lands_in_the_same_partition() {
        let a = br#"{"identity":{"user_id":"jane"}}"#;
        let b = br#"{"type":"track","identity":{"user_id":"jane","anonymous_id":"other"}}"#;
        assert_eq!(partition_of(a, 16), partition_of(b, 16));
        assert!(partition_of(a, 16) < 16);
        assert_eq!(partition_of(b"{}", 16), 0);
        assert_eq!(partition_of(a, 0), 0, "0 partitions is taken as 1");
    }
}

//! `Properties::from_serialize` on any value a user's `impl Serialize` may produce.
//!
//! Checks: it succeeds exactly when the value is a map-like with only finite numbers and
//! non-empty scalar keys; what it accepts validates, survives a JSON round trip unchanged, and
//! goes through the hand-written encoder and the store (head + context, chunk, `EventRecord`)
//! back to the same event.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use trackway_fuzz::{EventFields, Input, check_stored_round_trip};
use trackway_wire::Properties;

#[derive(Arbitrary, Debug)]
struct Case {
    value: Input,
    fields: EventFields,
}

fuzz_target!(|case: Case| {
    let result = Properties::from_serialize(&case.value);
    let value = &case.value;
    let expected_ok =
        value.is_object_like() && !value.has_non_finite() && !value.has_non_scalar_key() && value.keys_valid();
    let properties = match result {
        Ok(p) => {
            assert!(expected_ok, "accepted {:?} as {p:?}", case.value);
            p
        }
        Err(e) => {
            // The depth limit (MAX_PROPERTY_DEPTH) is not modelled by the oracle: a refusal for
            // depth is right whenever it says so; the round trip below checks what passes.
            assert!(!expected_ok || e.reason.starts_with("nests deeper than"), "refused {:?}: {e}", case.value);
            assert!(!e.reason.is_empty());
            return;
        }
    };
    properties.validate().expect("what from_serialize returns validates");
    let json = serde_json::to_vec(&properties).expect("valid properties serialize");
    let back: Properties = serde_json::from_slice(&json).expect("their JSON parses");
    assert_eq!(back, properties, "JSON round trip changed the properties");
    check_stored_round_trip(&case.fields.event(properties));
});

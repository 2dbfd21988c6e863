//! Properties from JSON bytes (an import file, a configuration, a caller's `serde_json::Value`).
//!
//! Checks: deserializing `Properties` directly and converting the parsed `serde_json::Value`
//! with `from_serialize` agree (same entries; `Value` sorts keys, so compared as JSON values);
//! what parses validates unless it has an empty key (JSON has no NaN); and an accepted map
//! goes through the encoder and the store back to the same event.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trackway_fuzz::{EventFields, check_stored_round_trip};
use trackway_wire::Properties;

fuzz_target!(|input: (EventFields, &[u8])| {
    let (fields, bytes) = input;
    let direct = serde_json::from_slice::<Properties>(bytes);
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        assert!(direct.is_err(), "Properties parsed what serde_json::Value refuses");
        return;
    };
    let converted = Properties::from_serialize(&json);
    match (&direct, &converted, &json) {
        (Ok(direct), Ok(converted), _) => {
            let as_json = |p: &Properties| serde_json::to_value(p).expect("properties serialize");
            assert_eq!(as_json(direct), as_json(converted), "the two paths disagree");
            assert_eq!(as_json(direct), json, "Properties changed the object");
        }
        // An object with an empty key parses but does not validate.
        (Ok(direct), Err(e), _) => {
            assert!(direct.validate().is_err(), "from_serialize refused a valid object: {e}");
            return;
        }
        (Err(_), Ok(_), serde_json::Value::Null) => return,
        (Err(e), Ok(_), _) => panic!("from_serialize took what Properties refuses: {e}"),
        (Err(_), Err(_), json) => {
            assert!(!json.is_object(), "an object is always Properties");
            return;
        }
    }
    let properties = direct.expect("checked above");
    properties.validate().expect("validated by from_serialize");
    check_stored_round_trip(&fields.event(properties));
});

//! Destinations added at run time, as the store keeps them: one state key per destination
//! (`runtime_destination/{name}`) with its kind, its configuration bytes (no secrets: the
//! factory takes those from the app) and whether the app's routing still names it.
//!
//! `open` reads them before it maps destinations to mask bits, so their pending events are
//! never released as "no longer configured"; one that is not current and has nothing pending
//! is forgotten there (its bit, its spec and its `dest/{name}/…` state are removed).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::StateChange;

/// State keys of run-time destinations start with this.
pub(crate) const SPEC_PREFIX: &str = "runtime_destination/";

/// What the store keeps of a run-time destination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredSpec {
    /// The factory kind that makes it.
    pub(crate) kind: String,
    /// The bytes the factory makes it from.
    pub(crate) config: Vec<u8>,
    /// Whether the app's routing names it (or it was added and not yet routed away from).
    pub(crate) current: bool,
}

/// A run-time destination recovered by `open`, at index `configured + position`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RecoveredDestination {
    pub(crate) name: String,
    pub(crate) spec: StoredSpec,
}

/// The state change that stores (or, with `None`, removes) the spec of `name`.
pub(crate) fn spec_change(name: &str, spec: Option<&StoredSpec>) -> StateChange {
    StateChange { key: format!("{SPEC_PREFIX}{name}"), value: spec.and_then(|s| serde_json::to_vec(s).ok()) }
}

/// The run-time destinations `state` holds that are not configured (a configured destination
/// of the same name wins), in name order. A spec that does not parse is skipped (and logged):
/// without its kind nothing could re-create it.
pub(crate) fn stored(state: &BTreeMap<String, Vec<u8>>, configured: &[String]) -> Vec<RecoveredDestination> {
    state
        .range(SPEC_PREFIX.to_owned()..)
        .take_while(|(k, _)| k.starts_with(SPEC_PREFIX))
        .filter_map(|(k, v)| {
            let name = k[SPEC_PREFIX.len()..].to_owned();
            if configured.contains(&name) {
                return None;
            }
            match serde_json::from_slice(v) {
                Ok(spec) => Some(RecoveredDestination { name, spec }),
                Err(e) => {
                    tracing::warn!(destination = %name, error = %e, "trackway: unreadable run-time destination spec; ignored");
                    None
                }
            }
        })
        .collect()
}

/// The state changes that forget `name`: its spec and every `dest/{name}/…` key.
pub(crate) fn forget_changes(name: &str, state: &BTreeMap<String, Vec<u8>>) -> Vec<StateChange> {
    let prefix = format!("dest/{name}/");
    let mut out = vec![spec_change(name, None)];
    out.extend(
        state
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| StateChange { key: k.clone(), value: None }),
    );
    out
}

/// Splits the stored run-time destinations into those to keep (current, or with events
/// pending) and those to forget; `pending(name)` is how many events are pending for it.
pub(crate) fn keep_or_forget(
    stored: Vec<RecoveredDestination>,
    pending: impl Fn(&str) -> u64,
) -> (Vec<RecoveredDestination>, Vec<RecoveredDestination>) {
    stored.into_iter().partition(|d| d.spec.current || pending(&d.name) > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(current: bool) -> StoredSpec {
        StoredSpec { kind: "json".into(), config: b"{}".to_vec(), current }
    }

    #[test]
    fn stored_specs_skip_configured_names_and_forgetting_clears_only_that_destinations_keys() {
        let mut state = BTreeMap::new();
        for (name, s) in [("a", spec(true)), ("b", spec(false)), ("main", spec(true))] {
            let c = spec_change(name, Some(&s));
            state.insert(c.key, c.value.expect("value"));
        }
        state.insert("dest/b/token".into(), b"t".to_vec());
        state.insert("dest/b:x/token".into(), b"t".to_vec());
        state.insert("identity".into(), b"{}".to_vec());
        let got = stored(&state, &["main".to_owned()]);
        assert_eq!(got.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        let (keep, forget) = keep_or_forget(got, |n| u64::from(n == "zzz"));
        assert_eq!((keep.len(), forget[0].name.as_str()), (1, "b"));
        let keys: Vec<String> = forget_changes("b", &state).into_iter().map(|c| c.key).collect();
        assert_eq!(keys, ["runtime_destination/b", "dest/b/token"]);
    }
}

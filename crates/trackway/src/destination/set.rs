//! One configuration, several destinations: a [`DestinationSet`] expands into destinations of
//! its own (Bloomreach's main project plus the projects its mapping sends chosen event types
//! to), and a [`DestinationFactory`] makes destinations at run time and again at the next
//! `build()` from what the store kept of them.

use std::sync::Arc;

use super::Destination;
use crate::config::HttpOptions;

/// A configuration that stands for several destinations, each its own lane with its own cursor
/// (so one being down never delays another), given to
/// [`ClientBuilder::destinations`](crate::ClientBuilder::destinations).
///
/// Each destination's [`name`](Destination::name) must be derived from what it delivers to
/// (e.g. `bloomreach` and `bloomreach:payments-1a2b3c4d` from a project token), **never** from
/// its position in a list: the name is the key of its delivery state in the store, so a
/// position-based name would hand one project another's cursor after the list changes. Names
/// must be distinct and contain no `/` (checked at `build()`).
///
/// A destination that takes only some event types (a mapped project) says so with
/// [`Destination::accepts_event_type`].
pub trait DestinationSet {
    /// The destinations, each with its HTTP options.
    fn expand(self) -> Vec<(Arc<dyn Destination>, HttpOptions)>;
}

impl<D: Destination> DestinationSet for Vec<(D, HttpOptions)> {
    fn expand(self) -> Vec<(Arc<dyn Destination>, HttpOptions)> {
        self.into_iter().map(|(d, http)| (Arc::new(d) as Arc<dyn Destination>, http)).collect()
    }
}

impl DestinationSet for Vec<(Arc<dyn Destination>, HttpOptions)> {
    fn expand(self) -> Vec<(Arc<dyn Destination>, HttpOptions)> {
        self
    }
}

/// Makes destinations of one kind from their configuration bytes, registered with
/// [`ClientBuilder::runtime_destinations`](crate::ClientBuilder::runtime_destinations).
///
/// [`Client::add_destination`](crate::Client::add_destination) calls it to add a destination
/// at run time, and the next `build()` calls it again with the same bytes (kept in the store)
/// to re-create the destination before its pending events are sent. **The bytes are stored in
/// the outbox as they are: put no secrets in them.** Take credentials from the application
/// inside the factory (a keychain, the environment, the app's own config), keyed by what the
/// bytes name (e.g. a project token).
///
/// Any `Fn(&[u8]) -> Result<(Arc<dyn Destination>, HttpOptions), String>` is a factory.
pub trait DestinationFactory: Send + Sync + 'static {
    /// The destination `config` describes, with its HTTP options.
    ///
    /// # Errors
    /// What is wrong with `config` (or with the credentials the app has for it).
    fn create(&self, config: &[u8]) -> Result<(Arc<dyn Destination>, HttpOptions), String>;
}

impl<F> DestinationFactory for F
where
    F: Fn(&[u8]) -> Result<(Arc<dyn Destination>, HttpOptions), String> + Send + Sync + 'static,
{
    fn create(&self, config: &[u8]) -> Result<(Arc<dyn Destination>, HttpOptions), String> {
        self(config)
    }
}

/// Longest destination name accepted.
pub(crate) const MAX_DESTINATION_NAME: usize = 200;

/// Checks a destination name: the store keys a destination's state as `dest/{name}/…`, so a
/// name with `/` could read another destination's keys.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a destination name cannot be empty".into());
    }
    if name.contains('/') {
        return Err(format!(
            "destination name `{name}` contains `/`: names key their state in the store as `dest/{{name}}/…`, \
             so `/` could read another destination's state (use `:` or `-`)"
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("destination name {name:?} contains a control character"));
    }
    if name.len() > MAX_DESTINATION_NAME {
        return Err(format!("destination name is {} bytes; the limit is {MAX_DESTINATION_NAME}", name.len()));
    }
    Ok(())
}

/// A stand-in for a run-time destination the store holds events for but that could not be
/// re-created (no factory for its kind, or the factory failed): its lane is stopped, so its
/// events are held and counted, never sent elsewhere or dropped.
#[derive(Debug)]
pub(crate) struct Unavailable {
    pub(crate) name: String,
}

impl Destination for Unavailable {
    fn name(&self) -> &str {
        &self.name
    }
    fn encode(
        &self,
        _: &[super::EventRecord],
        _: &super::DestinationState,
        _: trackway_wire::Timestamp,
    ) -> super::Encoded {
        // Never called: its lane is stopped from the start, and a stopped lane sends nothing.
        super::Encoded::default()
    }
}

#[cfg(test)]
mod tests {
    use super::check_name;

    #[test]
    fn names_with_a_slash_or_nothing_are_refused() {
        assert!(check_name("bloomreach:payments-1a2b").is_ok());
        assert!(check_name("bloomreach/x").unwrap_err().contains("contains `/`"));
        assert!(check_name("").is_err());
        assert!(check_name("a\nb").is_err());
        assert!(check_name(&"x".repeat(201)).is_err());
    }
}

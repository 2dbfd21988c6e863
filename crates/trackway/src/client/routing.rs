//! Routing by event type, and destinations added at run time.
//!
//! - [`Routing`]: per [`EventType`], the mask of destinations that take it. A destination's
//!   bits are set once, when it gets its index (at `build()` or when added), and never cleared,
//!   so a caller reads a mask with one atomic load. App mode narrows it further to what
//!   `anonymize` chose ([`crate::app::routes_mask`]). The mask is fixed into each event when it
//!   is queued: no later change of routing moves a queued event.
//! - [`Client::add_destination`]: makes a destination with the factory registered for its kind,
//!   has the worker open its lane (and the store its cursor), and keeps its spec in the store so
//!   the next `build()` re-creates it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::control::{Await, Block, Wait, blocking, retry_until_room};
use super::{Client, lock};
use crate::app::AppState;
use crate::destination::{Destination, DestinationFactory, EventType, check_name};
use crate::error::{Error, FlushError};
use crate::pipeline::health::{Health, catch};
use crate::policy::{CONTROL_TIMEOUT, MAX_DESTINATIONS};
use crate::queue::Control;
use crate::store::destinations::{StoredSpec, spec_change};

/// Bit i of `mask(t)`: destination i takes events of type `t`.
#[derive(Debug, Default)]
pub(crate) struct Routing {
    masks: [AtomicU64; EventType::COUNT],
}

impl Routing {
    /// Sets the bits of the destination at `index` for every type it takes.
    pub(crate) fn add(&self, index: usize, destination: &dyn Destination) {
        for t in EventType::ALL {
            // A panic in destination code is "takes nothing", not a panic of the caller.
            if catch(|| destination.accepts_event_type(t)).unwrap_or(false) {
                self.masks[t.index()].fetch_or(1 << index, Ordering::AcqRel);
            }
        }
    }

    /// The destinations that take events of type `t`.
    pub(crate) fn mask(&self, t: EventType) -> u64 {
        self.masks[t.index()].load(Ordering::Acquire)
    }
}

/// The client's run-time destinations: the factories by kind, and the spec of each run-time
/// destination it has (re-created at `build()` or added since).
pub(crate) struct Runtime {
    pub(crate) factories: Vec<(String, Arc<dyn DestinationFactory>)>,
    /// By name. Locked briefly; changes are pushed to the store with the app-state change that
    /// causes them.
    pub(crate) specs: std::sync::Mutex<BTreeMap<String, StoredSpec>>,
    /// Set while an add is in progress: adds go one at a time, so indexes are handed out in order.
    adding: AtomicBool,
    /// The client's retry policy, for run-time destinations whose options set none.
    pub(crate) retry: crate::RetryPolicy,
}

impl Runtime {
    pub(crate) fn new(
        factories: Vec<(String, Arc<dyn DestinationFactory>)>,
        specs: BTreeMap<String, StoredSpec>,
        retry: crate::RetryPolicy,
    ) -> Self {
        Runtime { factories, specs: std::sync::Mutex::new(specs), adding: AtomicBool::new(false), retry }
    }

    pub(crate) fn factory(&self, kind: &str) -> Option<&Arc<dyn DestinationFactory>> {
        self.factories.iter().find(|(k, _)| k == kind).map(|(_, f)| f)
    }

    /// The run-time destinations whose `current` flag must change for `app`'s routing (the
    /// destinations `anonymize` chose and its mapping), with the new flag. Pushed to the store
    /// with the routing change itself ([`spec_change`]), so the store never keeps a routing
    /// that names a destination the next `build()` would forget; then [`apply`](Self::apply).
    pub(crate) fn current_updates(&self, app: &AppState) -> Vec<(String, StoredSpec)> {
        lock(&self.specs)
            .iter()
            .filter_map(|(name, spec)| {
                let current = crate::app::names_destination(app, name);
                (spec.current != current).then(|| (name.clone(), StoredSpec { current, ..spec.clone() }))
            })
            .collect()
    }

    /// Keeps the specs that were pushed to the store.
    pub(crate) fn apply(&self, updates: Vec<(String, StoredSpec)>) {
        lock(&self.specs).extend(updates);
    }
}

/// Clears `Runtime::adding` when an add ends, however it ends.
struct Adding<'a>(&'a AtomicBool);

impl Drop for Adding<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Client {
    /// Adds a destination at run time, made by the factory registered for `kind`
    /// ([`ClientBuilder::runtime_destinations`](crate::ClientBuilder::runtime_destinations))
    /// from `config` (bytes the factory defines, **stored as they are: no secrets**). Returns
    /// its name. It gets its own lane and cursor; the store keeps its spec so the next `build()`
    /// re-creates it from the same factory before any of its pending events is sent.
    ///
    /// It takes server-mode events of the types it accepts at once; app-mode events once
    /// [`anonymize`](Self::anonymize) routes them to it (by name, in
    /// [`Anonymize::destinations`](crate::Anonymize::destinations) or
    /// [`Anonymize::route`](crate::Anonymize::route)). Adding a name the client already has
    /// changes nothing and returns the name. A run-time destination that `anonymize` no longer
    /// routes to and that has nothing pending is forgotten at the next `build()`.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use trackway::{Anonymize, Client, HttpOptions, destination::{Destination, InMemoryDestination}, store::MemoryStore};
    ///
    /// let client = Client::builder()
    ///     .app_mode()
    ///     .destination(InMemoryDestination::new("project-a"))
    ///     .runtime_destinations("memory", |config: &[u8]| {
    ///         let name = std::str::from_utf8(config).map_err(|e| e.to_string())?;
    ///         Ok((Arc::new(InMemoryDestination::new(name)) as Arc<dyn Destination>, HttpOptions::default()))
    ///     })
    ///     .store(MemoryStore::new())
    ///     .build()?;
    /// let name = client.add_destination("memory", "project-b")?;
    /// client.anonymize(Anonymize::new().destinations([name]))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// `UnknownDestinationKind`, `DestinationConfig` (the factory refused, an invalid name, a
    /// failing `check_config` or HTTP options), `TooManyDestinations`, `ShutDown`,
    /// `WorkerStopped`, `QueueFull` (the worker did not take the request within 5 s).
    pub fn add_destination(&self, kind: &str, config: impl Into<Vec<u8>>) -> Result<String, Error> {
        blocking(self.add_destination_with::<Block>(kind, config.into()))
    }

    /// Async [`add_destination`](Self::add_destination): waits for the worker without blocking
    /// the runtime's thread.
    ///
    /// # Errors
    /// As [`add_destination`](Self::add_destination).
    pub async fn add_destination_async(&self, kind: &str, config: impl Into<Vec<u8>>) -> Result<String, Error> {
        self.add_destination_with::<Await>(kind, config.into()).await
    }

    async fn add_destination_with<W: Wait>(&self, kind: &str, config: Vec<u8>) -> Result<String, Error> {
        let shared = &*self.inner.shared;
        self.check_open()?;
        let factory = shared.runtime.factory(kind).ok_or_else(|| Error::UnknownDestinationKind(kind.to_owned()))?;
        let bad = |destination: &str, message: String| Error::DestinationConfig {
            destination: destination.to_owned(),
            message,
        };
        let (dest, http) = catch(|| factory.create(&config))
            .unwrap_or_else(|panic| Err(format!("the factory panicked: {panic}")))
            .map_err(|m| bad(kind, m))?;
        let name = dest.name().to_owned();
        check_name(&name).map_err(|m| bad(&name, m))?;
        catch(|| dest.check_config())
            .unwrap_or_else(|panic| Err(format!("check_config panicked: {panic}")))
            .map_err(|m| bad(&name, m))?;
        let setup =
            http.lane_setup(dest.as_ref(), &shared.runtime.retry, &shared.pipe.clock).map_err(|m| bad(&name, m))?;

        let runtime = &shared.runtime;
        if !retry_until_room::<W>(CONTROL_TIMEOUT, || !runtime.adding.swap(true, Ordering::AcqRel)).await {
            return Err(Error::QueueFull);
        }
        let _adding = Adding(&runtime.adding);
        let table = &shared.pipe.destinations;
        if table.index_of(&name).is_some() {
            // The same project again (e.g. switching back to it): its lane and cursor stay.
            return Ok(name);
        }
        let index = table.len();
        if index >= MAX_DESTINATIONS {
            return Err(Error::TooManyDestinations);
        }
        let spec = StoredSpec { kind: kind.to_owned(), config, current: true };
        let change = spec_change(&name, Some(&spec));
        let answer = self
            .ask::<W, Result<(), String>>(|reply| Control::AddDestination {
                index,
                destination: dest.clone(),
                setup: Box::new(setup),
                spec: change,
                reply,
            })
            .await
            .map_err(|e| match e {
                FlushError::AlreadyShutdown => Error::ShutDown,
                FlushError::WorkerStopped => Error::WorkerStopped,
                _ => Error::QueueFull,
            })?;
        answer.map_err(|m| bad(&name, m))?;
        // The worker has the lane: publish the destination, then route to it.
        let counters = &shared.pipe.counters;
        counters.add(name.clone());
        if let Some(c) = counters.destinations.get(index) {
            *lock(&c.health) = Health::healthy_since(shared.pipe.clock.now());
        }
        table.push(dest.clone());
        shared.routing.add(index, &*dest);
        lock(&runtime.specs).insert(name.clone(), spec);
        Ok(name)
    }
}

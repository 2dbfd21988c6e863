//! `ClientBuilder::build`: checks the settings and destinations, opens the store, recovers the
//! client state and starts the worker.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use std::collections::BTreeMap;

use trackway_wire::Context;

use super::routing::{Routing, Runtime};
use super::{CHECKPOINT_PREFIX, Client, Inner, Shared};
use crate::app::{AppLifecycle, AppState};
use crate::config::ClientBuilder;
use crate::destination::{Destination, DestinationFactory, Unavailable, check_name};
use crate::error::BuildError;
use crate::pipeline;
use crate::pipeline::DestinationTable;
use crate::policy::{MAX_DESTINATIONS, WAKE_THRESHOLD};
use crate::queue::Queue;
use crate::stats::{Counters, bump};

impl ClientBuilder {
    /// Builds the client: checks every setting and destination, opens the store and starts the
    /// worker thread.
    ///
    /// # Errors
    /// The first invalid setting, a destination with an invalid configuration, duplicate
    /// destination names, a store that cannot be opened.
    pub fn build(self) -> Result<Client, BuildError> {
        Client::from_builder(self)
    }
}

impl Client {
    pub(crate) fn from_builder(b: ClientBuilder) -> Result<Client, BuildError> {
        #[cfg(feature = "bloomreach")]
        let mut b = b;
        #[cfg(feature = "bloomreach")]
        for projects in std::mem::take(&mut b.bloomreach) {
            use crate::destination::DestinationSet as _;
            let app_mode = b.app_mode;
            b.destinations.extend(projects.resolve_sending(app_mode).expand());
        }
        if let Some(e) = b.error {
            return Err(e);
        }
        if b.destinations.is_empty() {
            return Err(BuildError::NoDestination);
        }
        if b.destinations.len() > MAX_DESTINATIONS {
            return Err(BuildError::InvalidSetting {
                setting: "destination",
                message: format!("at most {MAX_DESTINATIONS} destinations"),
            });
        }
        let mut names: Vec<String> = Vec::new();
        let mut http_clients = Vec::new();
        let mut direct = Vec::new();
        for (d, http) in &b.destinations {
            let name = d.name().to_owned();
            // The store keys a destination's state as `dest/{name}/…`: a `/` would read another's.
            check_name(&name).map_err(|message| BuildError::Destination { destination: name.clone(), message })?;
            if names.contains(&name) {
                return Err(BuildError::DuplicateDestination(name));
            }
            // A panic in destination code is a build error, not a panic of `build()`.
            crate::pipeline::health::catch(|| d.check_config())
                .unwrap_or_else(|panic| Err(format!("check_config panicked: {panic}")))
                .map_err(|message| BuildError::Destination { destination: name.clone(), message })?;
            let setup = http
                .lane_setup(d.as_ref(), &b.retry, &b.clock)
                .map_err(|message| BuildError::Http { destination: name.clone(), message })?;
            direct.push(crate::direct::DirectSetup {
                transport: setup.transport.clone(),
                timeout: http.timeout,
                slots: Arc::new(tokio::sync::Semaphore::new(d.direct_concurrency().max(1))),
            });
            http_clients.push(setup);
            names.push(name);
        }
        let mut store: Box<dyn crate::store::Store> = match b.store {
            Some(store) => store,
            None => {
                // The durable store is the default; its file lives under the application's name
                // so two applications (or parallel tests) never share one.
                let app_name = b.app_name.as_deref().ok_or_else(|| {
                    BuildError::Store(
                        "the default durable store needs the application name: call .app(name, version), \
                         or choose a store with .store(SqliteStore::new(path)) or .store(MemoryStore::new())"
                            .into(),
                    )
                })?;
                let path = crate::store::SqliteStore::default_path(app_name).map_err(BuildError::Store)?;
                Box::new(crate::store::SqliteStore::new(path))
            }
        };
        let recovered = store.open(&names).map_err(|e| BuildError::Store(e.to_string()))?;
        let configured = names.len();
        let mut destinations: Vec<Arc<dyn Destination>> = b.destinations.iter().map(|(d, _)| d.clone()).collect();
        // Run-time destinations of earlier runs take the next indexes, in the store's order,
        // before the worker starts: their pending events go nowhere else.
        let mut held = Vec::new();
        let mut specs = BTreeMap::new();
        for r in &recovered.runtime {
            match recreate(&b.factories, &r.name, &r.spec.kind, &r.spec.config, &b.retry, &b.clock) {
                Ok((d, http)) => {
                    destinations.push(d);
                    http_clients.push(http);
                }
                Err(reason) => {
                    held.push((destinations.len(), reason));
                    let unavailable = Unavailable { name: r.name.clone() };
                    // Never sends (the lane starts stopped); default options always build.
                    let setup = crate::HttpOptions::default()
                        .lane_setup(&unavailable, &b.retry, &b.clock)
                        .map_err(|message| BuildError::Http { destination: r.name.clone(), message })?;
                    destinations.push(Arc::new(unavailable));
                    http_clients.push(setup);
                }
            }
            names.push(r.name.clone());
            specs.insert(r.name.clone(), r.spec.clone());
        }
        let mut app = AppState::recover(&recovered.state);
        if app.identity.anonymous_id.is_none() {
            // Created now, so concurrent first calls cannot mint two; stored with the first
            // app-mode event (the OS generator: an anonymous id should not be guessable).
            app.identity.anonymous_id = Some(crate::app::new_anonymous_id());
            app.unsaved = true;
        }
        if b.app_mode && app.device_id.is_none() {
            // One per install, stored with the first app-mode change (as the anonymous id).
            app.device_id = Some(uuid::Uuid::new_v4().hyphenated().to_string());
            app.unsaved = true;
        }
        let enabled = recovered.state.get(crate::app::CONSENT_KEY).is_none_or(|v| v.as_slice() != b"false");
        // Defaults from the builder are the code's current word; without them, the ones set at
        // run time in an earlier run come back.
        let defaults = match b.default_properties {
            Some(d) => d,
            None => recovered
                .state
                .get(crate::app::DEFAULTS_KEY)
                .and_then(|v| serde_json::from_slice(v).ok())
                .unwrap_or_default(),
        };

        let routing = Routing::default();
        for (i, d) in destinations.iter().enumerate() {
            routing.add(i, &**d);
        }
        let context = Context {
            library: "trackway".into(),
            library_version: env!("CARGO_PKG_VERSION").into(),
            os: Some(std::env::consts::OS.into()),
            locale: b.locale.or_else(locale_from_env),
            app_name: b.app_name,
            app_version: b.app_version,
            os_name: Some(os_name().into()),
            os_version: b.device.os_version.or_else(os_version),
            device_model: b.device.model,
            device_type: b.device.kind,
            // App mode's install id; a server's events carry none (it is no device of theirs).
            device_id: if b.app_mode { app.device_id.clone() } else { None },
        };
        let counters = Counters::new(names.iter().cloned());
        if let Some(salvage) = &recovered.salvage {
            bump(&counters.store_reset, 1);
            bump(&counters.store_corrupt, salvage.lost);
        }
        let _ = counters.store.set(crate::stats::StoreReport {
            salvage: recovered.salvage.clone(),
            orphaned: recovered.orphaned.clone(),
        });
        for (i, (count, _)) in recovered.pending.iter().enumerate() {
            if let Some(d) = counters.destinations.get(i) {
                bump(&d.pending, *count);
            }
        }
        let pipe = Arc::new(pipeline::Shared::new(
            Queue::new(b.queue_capacity, b.reserved_capacity, b.queue_max_bytes, WAKE_THRESHOLD),
            counters,
            DestinationTable::new(destinations, configured),
            b.clock,
            context,
            enabled,
        ));
        // Before the worker starts: it sees the outcomes of what the store holds from earlier runs.
        if let Some(capacity) = b.outcomes {
            let stream = pipe.receipts.subscribe(capacity);
            *pipeline::lock(&pipe.receipts.initial) = Some(stream);
        }
        let shared = Arc::new(Shared {
            pipe: pipe.clone(),
            routing,
            runtime: Runtime::new(b.factories, specs, b.retry.clone()),
            before_send: b.before_send,
            app: Mutex::new(app),
            app_mode: b.app_mode,
            lifecycle: b.lifecycle.clone().unwrap_or_else(AppLifecycle::none),
            launch: Mutex::new(crate::app::Launch::default()),
            session_timer: crate::app::SessionTimer::default(),
            primary_id: b.primary_id,
            has_defaults: AtomicBool::new(!defaults.is_empty()),
            defaults: Mutex::new(Arc::new(defaults)),
            checkpoints: Mutex::new(
                recovered
                    .state
                    .iter()
                    .filter_map(|(k, v)| Some((k.strip_prefix(CHECKPOINT_PREFIX)?.to_owned(), v.clone())))
                    .collect(),
            ),
            closed: AtomicBool::new(false),
            warned_queue_full: AtomicBool::new(false),
        });
        let settings = pipeline::Settings {
            batch_interval: b.batch_interval,
            commit_delay: b.commit_delay,
            max_event_age: b.max_event_age,
            held,
        };
        let worker = pipeline::spawn(pipe, store, recovered, http_clients, settings)
            .map_err(|e| BuildError::Thread(e.to_string()))?;
        let client = Client {
            inner: Arc::new(Inner {
                shared,
                runtime: worker.runtime.clone(),
                worker: Mutex::new(Some(worker)),
                shutdown_timeout: b.shutdown_timeout,
                direct,
            }),
        };
        // The first run's `installation`, and the session of an app that starts in front.
        client.launch();
        Ok(client)
    }
}

/// Re-creates the run-time destination `name` of `kind` from its stored `config`, or says why it
/// cannot be (its events are then held).
fn recreate(
    factories: &[(String, Arc<dyn DestinationFactory>)],
    name: &str,
    kind: &str,
    config: &[u8],
    retry: &crate::RetryPolicy,
    clock: &crate::Clock,
) -> Result<(Arc<dyn Destination>, crate::pipeline::LaneSetup), String> {
    let factory = factories.iter().find(|(k, _)| k == kind).map(|(_, f)| f).ok_or_else(|| {
        format!(
            "no factory for run-time destinations of kind `{kind}`: register one with \
             ClientBuilder::runtime_destinations; its events are held"
        )
    })?;
    let (d, http) = crate::pipeline::health::catch(|| factory.create(config))
        .unwrap_or_else(|panic| Err(format!("the factory panicked: {panic}")))
        .map_err(|e| format!("the `{kind}` factory could not re-create it: {e}; its events are held"))?;
    if d.name() != name {
        return Err(format!(
            "the `{kind}` factory made `{}` from the configuration stored for `{name}`; its events are held",
            d.name()
        ));
    }
    crate::pipeline::health::catch(|| d.check_config())
        .unwrap_or_else(|panic| Err(format!("check_config panicked: {panic}")))
        .map_err(|e| format!("{e}; its events are held"))?;
    let setup = http.lane_setup(d.as_ref(), retry, clock).map_err(|e| format!("{e}; its events are held"))?;
    Ok((d, setup))
}

/// The operating system's name as people write it (Bloomreach's `os_name`).
fn os_name() -> &'static str {
    match std::env::consts::OS {
        "linux" => "Linux",
        "macos" => "macOS",
        "windows" => "Windows",
        "android" => "Android",
        "ios" => "iOS",
        "freebsd" => "FreeBSD",
        other => other,
    }
}

/// The operating system's version where the platform tells it without a system call of its own:
/// the kernel release on Linux and Android. Elsewhere none (the app can set it).
fn os_version() -> Option<String> {
    if cfg!(any(target_os = "linux", target_os = "android")) {
        let v = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
        let v = v.trim();
        (!v.is_empty()).then(|| v.to_owned())
    } else {
        None
    }
}

fn locale_from_env() -> Option<String> {
    ["LC_ALL", "LANG"].iter().find_map(|k| {
        let v = std::env::var(k).ok()?;
        let tag = v.split('.').next()?.replace('_', "-");
        (!tag.is_empty() && tag != "C" && tag != "POSIX").then_some(tag)
    })
}

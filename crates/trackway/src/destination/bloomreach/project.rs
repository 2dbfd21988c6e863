//! Project mapping (extra projects per event type) and project switches (`anonymize` to
//! another project), as the seed's `anonymize(ExponeaConfigurationChange(project:, mapping:))`.
//!
//! - [`BloomreachProjects`]: the projects configured at `build()`, the main one and the mapped
//!   ones, each its own destination (own lane, cursor and stats). A payment mapped to a second
//!   project is stored once and delivered to both, each retried on its own.
//! - [`BloomreachRuntime`]: the factory of projects added at run time, and
//!   [`BloomreachRuntime::anonymize`], which adds the new project and mapping and switches
//!   app-mode events to them. The projects of each event are fixed when it is queued, so queued
//!   events still go to the old project. The store keeps each new project's token and base URL
//!   (and the routing), so the next `build()` re-creates them; the authorization is written only
//!   with [`BloomreachRuntime::persist_authorization`], otherwise the app supplies it again
//!   through [`BloomreachRuntime::credentials`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::{Authorization, Bloomreach, KIND, Sending};
use crate::config::HttpOptions;
use crate::destination::{Destination, DestinationFactory, DestinationSet, EventType};
use crate::{Anonymize, Client, Error};

/// Another project: token, authorization and (optionally) its own base URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BloomreachProject {
    pub(crate) token: String,
    pub(crate) authorization: Authorization,
    pub(crate) base_url: Option<String>,
}

impl BloomreachProject {
    /// The project `token`; without [`base_url`](Self::base_url) it inherits the main project's.
    pub fn new(token: impl Into<String>, authorization: Authorization) -> Self {
        BloomreachProject { token: token.into(), authorization, base_url: None }
    }

    /// Its own base URL (one trailing `/` tolerated).
    #[must_use]
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        let url: String = url.into();
        self.base_url = Some(url.strip_suffix('/').map(str::to_owned).unwrap_or(url));
        self
    }

    /// The base URL it uses when the main project's is `main`.
    fn resolved_base(&self, main: &str) -> String {
        self.base_url.clone().unwrap_or_else(|| main.to_owned())
    }
}

/// The main project and the projects mapped to event types, for
/// [`ClientBuilder::destinations`](crate::ClientBuilder::destinations). Made by [`Bloomreach::map`].
///
/// The main destination is named as configured (`bloomreach`); each mapped project is
/// `bloomreach:<token>` (plus `@<host>` off the default base URL) and takes only the types
/// mapped to it. A project mapped twice, or mapped and main, is sent each event once.
#[derive(Clone, Debug)]
pub struct BloomreachProjects {
    main: Bloomreach,
    mapping: BTreeMap<EventType, Vec<BloomreachProject>>,
}

impl BloomreachProjects {
    /// The main project alone.
    pub fn new(main: Bloomreach) -> Self {
        BloomreachProjects { main, mapping: BTreeMap::new() }
    }

    /// Also sends events of `event_type` to `project`. For Bloomreach's `trackEvent` key, map
    /// every type of [`EventType::CUSTOM_EVENTS`].
    #[must_use]
    pub fn map(mut self, event_type: EventType, project: BloomreachProject) -> Self {
        self.mapping.entry(event_type).or_default().push(project);
        self
    }

    /// Sets the way of sending of every project (see [`Bloomreach::sending`]).
    #[must_use]
    pub fn sending(mut self, sending: Sending) -> Self {
        self.main = self.main.sending(sending);
        self
    }

    /// See [`Bloomreach::resolve_sending`].
    #[must_use]
    pub fn resolve_sending(mut self, app_mode: bool) -> Self {
        self.main = self.main.resolve_sending(app_mode);
        self
    }

    /// The destinations: the main one, then one per distinct mapped project.
    pub(crate) fn destinations(&self) -> Vec<Bloomreach> {
        let main_key = (self.main.base_url.clone(), self.main.token.clone());
        let mut mapped: BTreeMap<(String, String), (Bloomreach, BTreeSet<EventType>)> = BTreeMap::new();
        for (event_type, projects) in &self.mapping {
            for p in projects {
                let key = (p.resolved_base(&self.main.base_url), p.token.clone());
                if key == main_key {
                    // The main project takes every type already.
                    continue;
                }
                let entry = mapped.entry(key).or_insert_with(|| (self.main.for_project(p), BTreeSet::new()));
                entry.1.insert(*event_type);
            }
        }
        let mut out = vec![self.main.clone()];
        for (_, (mut d, types)) in mapped {
            d.name = Some(Bloomreach::project_name(&d.token, &d.base_url));
            d.only = Some(types);
            out.push(d);
        }
        out
    }
}

impl From<Bloomreach> for BloomreachProjects {
    fn from(main: Bloomreach) -> Self {
        BloomreachProjects::new(main)
    }
}

impl DestinationSet for BloomreachProjects {
    fn expand(self) -> Vec<(Arc<dyn Destination>, HttpOptions)> {
        self.destinations().into_iter().map(|d| (Arc::new(d) as Arc<dyn Destination>, HttpOptions::default())).collect()
    }
}

/// What the store keeps of a project added at run time (the configuration bytes of
/// [`DestinationFactory::create`]).
#[derive(Debug, Serialize, Deserialize)]
struct Spec {
    token: String,
    base_url: String,
    /// Only with [`BloomreachRuntime::persist_authorization`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    authorization: Option<Authorization>,
}

/// Gives the authorization of a project (token, base URL) at `build()`.
type Credentials = dyn Fn(&str, &str) -> Option<Authorization> + Send + Sync;

/// Projects added at run time: the [`DestinationFactory`] to register under [`KIND`], and the
/// project switch ([`anonymize`](Self::anonymize)). Clones share their state: register one and
/// keep another.
///
/// ```
/// use trackway::{Client, destination::{EventType, bloomreach::{Authorization, Bloomreach, BloomreachProject, BloomreachRuntime, ProjectChange, KIND}}, store::MemoryStore};
///
/// let main = Bloomreach::new("main-project", Authorization::token("main-key")).base_url("http://127.0.0.1:9");
/// // At the next build(), the authorization of a project switched to comes from here.
/// let runtime = BloomreachRuntime::new(&main).credentials(|token, _base_url| {
///     (token == "new-project").then(|| Authorization::token("new-key"))
/// });
/// let client = Client::builder()
///     .app_mode()
///     .destinations(main.map(EventType::Payment, BloomreachProject::new("payments", Authorization::token("p-key"))))
///     .runtime_destinations(KIND, runtime.clone())
///     .store(MemoryStore::new())
///     .build()?;
/// runtime.anonymize(
///     &client,
///     ProjectChange::new()
///         .project(BloomreachProject::new("new-project", Authorization::token("new-key")))
///         .route(EventType::Payment, [BloomreachProject::new("new-payments", Authorization::token("np-key"))]),
/// )?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct BloomreachRuntime {
    template: Bloomreach,
    persist: bool,
    credentials: Option<Arc<Credentials>>,
    /// Authorizations given to `anonymize` in this process, by (base URL, token).
    known: Arc<Mutex<BTreeMap<(String, String), Authorization>>>,
}

impl fmt::Debug for BloomreachRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BloomreachRuntime")
            .field("template", &self.template)
            .field("persist_authorization", &self.persist)
            .finish_non_exhaustive()
    }
}

impl BloomreachRuntime {
    /// Projects with `main`'s settings (base URL, application id, hard id, default properties
    /// rule, way of sending; per event when `main` did not choose: a switch is app mode's).
    pub fn new(main: &Bloomreach) -> Self {
        let template = main.clone().resolve_sending(true);
        BloomreachRuntime { template, persist: false, credentials: None, known: Arc::default() }
    }

    /// Where the authorization of a project comes from at the next `build()` (given its token
    /// and base URL), when the store does not keep it. Without it (and without
    /// [`persist_authorization`](Self::persist_authorization)), a project switched to in an
    /// earlier run is held at `build()`: its events wait until the app gives one.
    #[must_use]
    pub fn credentials(mut self, f: impl Fn(&str, &str) -> Option<Authorization> + Send + Sync + 'static) -> Self {
        self.credentials = Some(Arc::new(f));
        self
    }

    /// Writes each switched-to project's authorization into the store with its token and base
    /// URL (default: false: a key on disk is a key anyone with the file has).
    #[must_use]
    pub fn persist_authorization(mut self, on: bool) -> Self {
        self.persist = on;
        self
    }

    /// Adds `project` at run time (as a run-time destination of this kind) and returns its
    /// destination name.
    fn add(&self, client: &Client, project: &BloomreachProject, base: &str) -> Result<String, Error> {
        let base_url = project.resolved_base(base);
        let key = (base_url.clone(), project.token.clone());
        crate::client::lock(&self.known).insert(key, project.authorization.clone());
        let spec = Spec {
            token: project.token.clone(),
            base_url,
            authorization: self.persist.then(|| project.authorization.clone()),
        };
        let bytes = serde_json::to_vec(&spec)
            .map_err(|e| Error::DestinationConfig { destination: KIND.to_owned(), message: e.to_string() })?;
        client.add_destination(KIND, bytes)
    }

    /// Anonymizes (see [`Client::anonymize`]) and switches app-mode events to another project
    /// and mapping (Android's order: the old session ends and the push token is invalidated in
    /// the old project, then `installation`, the new session and the token go to the new one).
    /// A change without a project keeps the current project and replaces the mapping; without
    /// a mapping it keeps the current one (as Android; iOS clears it: call
    /// [`ProjectChange::clear_mapping`] for that). Events queued before still go where they
    /// were routed.
    ///
    /// # Errors
    /// What [`Client::add_destination`] and [`Client::anonymize`] return (a bad token is
    /// `DestinationConfig`, and nothing is switched).
    pub fn anonymize(&self, client: &Client, change: ProjectChange) -> Result<(), Error> {
        let base = change
            .project
            .as_ref()
            .map_or(self.template.base_url.clone(), |p| p.resolved_base(&self.template.base_url));
        let mut options = Anonymize::new();
        if let Some(project) = &change.project {
            options = options.destinations([self.add(client, project, &self.template.base_url)?]);
        }
        if change.clear_mapping {
            options = options.clear_mapping();
        }
        for (event_type, projects) in &change.mapping {
            let mut names = Vec::new();
            for p in projects {
                let name = self.add(client, p, &base)?;
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            options = options.route(*event_type, names);
        }
        client.anonymize(options)
    }

    fn authorization_for(&self, spec: &Spec) -> Option<Authorization> {
        if let Some(a) = &spec.authorization {
            return Some(a.clone());
        }
        let known = crate::client::lock(&self.known).get(&(spec.base_url.clone(), spec.token.clone())).cloned();
        known.or_else(|| self.credentials.as_ref().and_then(|f| f(&spec.token, &spec.base_url)))
    }
}

impl DestinationFactory for BloomreachRuntime {
    fn create(&self, config: &[u8]) -> Result<(Arc<dyn Destination>, HttpOptions), String> {
        let spec: Spec =
            serde_json::from_slice(config).map_err(|e| format!("stored Bloomreach project is not readable: {e}"))?;
        let authorization = self.authorization_for(&spec).ok_or_else(|| {
            format!(
                "no authorization for Bloomreach project {} at {}: give it through BloomreachRuntime::credentials",
                spec.token, spec.base_url
            )
        })?;
        let project = BloomreachProject { token: spec.token, authorization, base_url: Some(spec.base_url) };
        let mut d = self.template.for_project(&project);
        d.name = Some(Bloomreach::project_name(&d.token, &d.base_url));
        Ok((Arc::new(d), HttpOptions::default()))
    }
}

/// The seed's `ExponeaConfigurationChange`: a new project and/or a new mapping, for
/// [`BloomreachRuntime::anonymize`].
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct ProjectChange {
    project: Option<BloomreachProject>,
    mapping: BTreeMap<EventType, Vec<BloomreachProject>>,
    clear_mapping: bool,
}

impl ProjectChange {
    /// No change of project or mapping (a plain anonymize).
    pub fn new() -> Self {
        ProjectChange::default()
    }

    /// Switch app-mode events to `project`.
    pub fn project(mut self, project: BloomreachProject) -> Self {
        self.project = Some(project);
        self
    }

    /// Also send app-mode events of `event_type` to these projects (the new mapping replaces
    /// the stored one). A project without a base URL inherits the new main project's.
    pub fn route(mut self, event_type: EventType, projects: impl IntoIterator<Item = BloomreachProject>) -> Self {
        self.mapping.entry(event_type).or_default().extend(projects);
        self
    }

    /// Remove the stored mapping (what iOS does when a project is given without one).
    pub fn clear_mapping(mut self) -> Self {
        self.clear_mapping = true;
        self
    }
}

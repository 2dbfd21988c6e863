//! The configuration file (`--config FILE`, TOML): the destinations and the durable store.
//!
//! ```toml
//! [store]                      # optional
//! path = "trackway-outbox.db"  # relative paths are relative to the configuration file; a
//!                              # leading `~/` is the home directory (`~user/` is refused)
//! max_bytes = 134217728        # optional: the store's size bound (default 128 MiB)
//! queue_capacity = 16384       # optional: events `import` holds in memory before the store
//!                              # (default 16384; a full queue makes the import wait)
//!
//! [[destination]]
//! name = "warehouse"
//! type = "json"
//! url = "http://127.0.0.1:8080/events"
//! batch_size = 100             # optional
//! [destination.headers]        # values name environment variables holding the secrets
//! Authorization = { env = "WAREHOUSE_TOKEN" }  # or { file = "secrets/token" }: a file holding it
//!
//! [[destination]]
//! name = "umami"
//! type = "umami"
//! website_id = "b59e9c65-ae32-47f1-8400-119fcf4861c4"
//! base_url = "https://analytics.example.com"  # optional, default https://cloud.umami.is
//! hostname = "myapp.example"                  # optional, like language, screen ("WxH"), ip,
//! language = "en-US"                          # user_agent and late_after_secs
//!
//! [[destination]]
//! name = "customerio"
//! type = "customerio"
//! site_id = "your-site-id"
//! api_key = { env = "CUSTOMERIO_API_KEY" }
//! region = "eu"                               # optional: "us" (default) or "eu"
//! api = "v1"                                  # optional: "v2" (batches, default) or "v1"
//! base_url = "http://127.0.0.1:4040"          # optional: replaces the region's host
//! merge_aliases = true                        # optional (`relay work`, also in
//!                                             #   [destination.customer_io]): a Segment `alias`
//!                                             #   becomes a merge of previousId into userId;
//!                                             #   default off: a dead letter
//!
//! [[destination]]
//! name = "opencdp"
//! type = "opencdp"
//! api_key = { env = "CDP_API_KEY" }            # sent as Authorization
//! endpoint = "https://api.opencdp.io/gateway/data-gateway"  # optional, the SDK's default
//! fallback_endpoints = []                     # optional, default none (they receive the key)
//! max_concurrent_requests = 10                # optional, default 10, at most 30
//! [destination.customer_io]                   # optional: dual-write to Customer.io, a
//! name = "customerio"                         #   destination of its own (default name
//! site_id = "your-site-id"                    #   "customerio"), with its own cursor
//! api_key = { env = "CUSTOMERIO_API_KEY" }
//! region = "eu"                               # optional, like api and base_url above
//!
//! [[destination]]
//! name = "bloomreach"
//! type = "bloomreach"
//! project_token = "0aef3a96-3e2b-11ef-9a4b-6a1f1c6e1b0f"
//! base_url = "https://api-eu.exponea.com"     # optional, default https://api.exponea.com
//! key_id = "private-key-id"                   # Basic auth (servers), or instead
//! secret = { env = "BLOOMREACH_SECRET" }      #   public_key = { env = "BLOOMREACH_KEY" } (Token)
//! application_id = "com.example.shop"        # optional; sending = "batch" | "per_event"
//! ```
//!
//! Secrets come only from environment variables or files (`{ file = "PATH" }`, relative to the
//! configuration file, one trailing line break dropped); their values are never printed (errors name
//! the variable, `Debug` shows only header names).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::Deserialize;
use trackway::destination::bloomreach::{Authorization, Bloomreach, Sending};
use trackway::destination::customerio::{Api, CustomerIo, Region};
use trackway::destination::{Destination as _, JsonHttp, OpenCdpConfig, Umami};
use trackway::{ClientBuilder, HttpOptions};

/// The parsed configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// The durable store.
    #[serde(default)]
    store: Option<StoreConfig>,
    /// The destinations, in order.
    #[serde(default, rename = "destination")]
    destinations: Vec<DestinationConfig>,
    /// `trackway relay`'s settings (`[relay]`, see `trackway_relay::config`).
    #[serde(default)]
    relay: Option<trackway_relay::RelayConfig>,
    /// Where the file was read from (relative store paths are resolved against its directory).
    #[serde(skip)]
    file: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreConfig {
    path: PathBuf,
    /// The store's size bound in bytes (`SqliteStore::max_bytes`).
    #[serde(default)]
    max_bytes: Option<u64>,
    /// Events held in memory in front of the store (`ClientBuilder::queue_capacity`).
    #[serde(default)]
    queue_capacity: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DestinationConfig {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    url: Option<String>,
    batch_size: Option<usize>,
    #[serde(default)]
    headers: BTreeMap<String, SecretRef>,
    /// The fields of `type = "umami"` (refused on other types). Inline rather than a flattened
    /// struct: serde's `flatten` does not work with `deny_unknown_fields`.
    website_id: Option<String>,
    base_url: Option<String>,
    hostname: Option<String>,
    language: Option<String>,
    screen: Option<String>,
    ip: Option<String>,
    user_agent: Option<String>,
    late_after_secs: Option<u64>,
    /// The fields of `type = "customerio"` (besides `base_url`).
    site_id: Option<String>,
    api_key: Option<SecretRef>,
    region: Option<String>,
    api: Option<String>,
    /// `relay work`: a Segment `alias` becomes a Customer.io merge (default off: dead-lettered).
    merge_aliases: Option<bool>,
    /// The fields of `type = "opencdp"` (besides `api_key`).
    endpoint: Option<String>,
    fallback_endpoints: Option<Vec<String>>,
    max_concurrent_requests: Option<usize>,
    /// `[destination.customer_io]` of `type = "opencdp"`: the dual-write to Customer.io.
    customer_io: Option<DualWriteConfig>,
    /// The fields of `type = "bloomreach"` (with `base_url`).
    project_token: Option<String>,
    public_key: Option<SecretRef>,
    key_id: Option<String>,
    secret: Option<SecretRef>,
    application_id: Option<String>,
    sending: Option<String>,
}

/// `[destination.customer_io]`: OpenCDP's dual-write to Customer.io (`sendToCustomerIo`), the
/// fields of `type = "customerio"` less `batch_size`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DualWriteConfig {
    /// The Customer.io destination's name (default `customerio`): stats and the store key its
    /// cursor by it, so it must differ from every other destination's.
    name: Option<String>,
    site_id: String,
    api_key: SecretRef,
    region: Option<String>,
    api: Option<String>,
    base_url: Option<String>,
    /// `relay work`: a Segment `alias` becomes a Customer.io merge (default off).
    merge_aliases: Option<bool>,
}

impl DualWriteConfig {
    /// The destination's name.
    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("customerio")
    }

    /// The Customer.io destination, with `api_key` (read from the environment by the caller).
    fn customerio(&self, api_key: &str) -> anyhow::Result<CustomerIo> {
        let d = CustomerIo::new(self.site_id.clone(), api_key).name(self.name());
        customerio_options(d, self.region.as_deref(), self.api.as_deref(), self.base_url.as_deref())
    }
}

/// `d` with the region, API version and base URL of a configuration (its own or a dual-write's).
fn customerio_options(
    mut d: CustomerIo,
    region: Option<&str>,
    api: Option<&str>,
    base_url: Option<&str>,
) -> anyhow::Result<CustomerIo> {
    if let Some(region) = region {
        d = d.region(region.parse::<Region>().map_err(anyhow::Error::msg)?);
    }
    d = match api {
        None | Some("v2") => d,
        Some("v1") => d.api(Api::V1),
        Some(other) => bail!("api {other:?} is not \"v1\" or \"v2\""),
    };
    if let Some(url) = base_url {
        d = d.base_url(url);
    }
    Ok(d)
}

impl DestinationConfig {
    /// The names of the Customer.io fields that are set.
    fn customerio_fields(&self) -> Vec<&'static str> {
        let fields = [
            ("site_id", self.site_id.is_some()),
            ("api_key", self.api_key.is_some()),
            ("region", self.region.is_some()),
            ("api", self.api.is_some()),
        ];
        fields.iter().filter(|(_, set)| *set).map(|(name, _)| *name).collect()
    }

    /// The names of the OpenCDP fields that are set (`api_key` is Customer.io's too).
    fn opencdp_fields(&self) -> Vec<&'static str> {
        let fields = [
            ("endpoint", self.endpoint.is_some()),
            ("fallback_endpoints", self.fallback_endpoints.is_some()),
            ("max_concurrent_requests", self.max_concurrent_requests.is_some()),
        ];
        fields.iter().filter(|(_, set)| *set).map(|(name, _)| *name).collect()
    }

    /// The OpenCDP configuration, with `api_key` as the key.
    fn opencdp(&self, api_key: String) -> OpenCdpConfig {
        let mut c = OpenCdpConfig::new(api_key).name(&self.name);
        if let Some(v) = &self.endpoint {
            c = c.endpoint(v.clone());
        }
        if let Some(v) = &self.fallback_endpoints {
            c = c.fallback_endpoints(v.clone());
        }
        if let Some(n) = self.max_concurrent_requests {
            c = c.max_concurrent_requests(n);
        }
        c
    }

    /// The Customer.io destination, with `api_key` (read from the environment by the caller).
    fn customerio(&self, api_key: &str) -> anyhow::Result<CustomerIo> {
        let d = CustomerIo::new(self.site_id.clone().unwrap_or_default(), api_key).name(self.name.clone());
        let mut d = customerio_options(d, self.region.as_deref(), self.api.as_deref(), self.base_url.as_deref())?;
        if let Some(n) = self.batch_size {
            d = d.batch_size(n);
        }
        Ok(d)
    }

    /// The names of the Umami fields that are set.
    fn umami_fields(&self) -> Vec<&'static str> {
        let fields = [
            ("website_id", self.website_id.is_some()),
            ("base_url", self.base_url.is_some()),
            ("hostname", self.hostname.is_some()),
            ("language", self.language.is_some()),
            ("screen", self.screen.is_some()),
            ("ip", self.ip.is_some()),
            ("user_agent", self.user_agent.is_some()),
            ("late_after_secs", self.late_after_secs.is_some()),
        ];
        fields.iter().filter(|(_, set)| *set).map(|(name, _)| *name).collect()
    }

    /// The names of the Bloomreach-only fields that are set.
    fn bloomreach_fields(&self) -> Vec<&'static str> {
        let fields = [
            ("project_token", self.project_token.is_some()),
            ("public_key", self.public_key.is_some()),
            ("key_id", self.key_id.is_some()),
            ("secret", self.secret.is_some()),
            ("application_id", self.application_id.is_some()),
            ("sending", self.sending.is_some()),
        ];
        fields.iter().filter(|(_, set)| *set).map(|(name, _)| *name).collect()
    }

    /// The Bloomreach destination with `authorization` (read from the environment by the caller).
    fn bloomreach(&self, authorization: Authorization) -> anyhow::Result<Bloomreach> {
        let mut d = Bloomreach::new(self.project_token.clone().unwrap_or_default(), authorization).name(&self.name);
        if let Some(v) = &self.base_url {
            d = d.base_url(v.clone());
        }
        if let Some(v) = &self.application_id {
            d = d.application_id(v.clone());
        }
        d = match self.sending.as_deref() {
            None | Some("batch") => d.sending(Sending::Batch),
            Some("per_event") => d.sending(Sending::PerEvent),
            Some(other) => bail!("`sending` must be \"batch\" or \"per_event\", not {other:?}"),
        };
        Ok(d)
    }

    /// Checks the Bloomreach fields as far as the file tells (the secrets are read later).
    fn check_bloomreach(&self) -> anyhow::Result<()> {
        match (&self.public_key, &self.key_id, &self.secret) {
            (Some(_), None, None) | (None, Some(_), Some(_)) => {}
            _ => bail!(
                "type \"bloomreach\" takes either `public_key = {{ env = \"…\" }}` (Token) or `key_id` with \
                 `secret = {{ env = \"…\" }}` (Basic)"
            ),
        }
        let probe = self.bloomreach(Authorization::token("checked-later"))?;
        probe.check_config().map_err(anyhow::Error::msg)
    }

    fn umami(&self) -> Umami {
        let (name, batch_size) = (&self.name, self.batch_size);
        let mut d = Umami::new(self.website_id.clone().unwrap_or_default()).name(name);
        if let Some(v) = &self.base_url {
            d = d.base_url(v.clone());
        }
        if let Some(v) = &self.hostname {
            d = d.hostname(v.clone());
        }
        if let Some(v) = &self.language {
            d = d.language(v.clone());
        }
        if let Some(v) = &self.screen {
            d = d.screen(v.clone());
        }
        if let Some(v) = &self.ip {
            d = d.ip(v.clone());
        }
        if let Some(v) = &self.user_agent {
            d = d.user_agent(v.clone());
        }
        if let Some(secs) = self.late_after_secs {
            d = d.late_after(std::time::Duration::from_secs(secs));
        }
        if let Some(n) = batch_size {
            d = d.batch_size(n);
        }
        d
    }
}

/// Where a secret (a header value, an API key) is: the environment variable or the file that
/// holds it, never the value itself.
#[derive(Debug)]
enum SecretRef {
    /// `{ env = "NAME" }`.
    Env(String),
    /// `{ file = "PATH" }` (a mounted secret); a relative path is resolved against the
    /// configuration file's directory when the file is read.
    File(PathBuf),
}

impl SecretRef {
    /// The secret's value, from its environment variable or file (one trailing line break
    /// dropped, as `echo` and secret stores write one); errors name the variable or the file (as
    /// `what` of `destination`), never a value.
    fn read(&self, destination: &str, what: &str) -> anyhow::Result<String> {
        match self {
            SecretRef::Env(env) => match std::env::var(env) {
                Ok(v) => Ok(v),
                Err(std::env::VarError::NotPresent) => {
                    bail!("destination `{destination}`: {what}: environment variable {env} is not set")
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    bail!("destination `{destination}`: {what}: environment variable {env} is not valid UTF-8")
                }
            },
            SecretRef::File(path) => {
                // The io error says why (missing, permissions, not UTF-8), never what is inside.
                let text = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!("destination `{destination}`: {what}: cannot read file {}: {e}", path.display())
                })?;
                let value = text.strip_suffix('\n').map_or(text.as_str(), |t| t.strip_suffix('\r').unwrap_or(t));
                Ok(value.to_owned())
            }
        }
    }

    /// Whether it names no variable or no file.
    fn names_nothing(&self) -> bool {
        match self {
            SecretRef::Env(env) => env.trim().is_empty(),
            SecretRef::File(path) => path.as_os_str().is_empty(),
        }
    }

    /// A relative file made relative to `dir` (the configuration file's directory).
    fn resolve(&mut self, dir: &Path) {
        if let SecretRef::File(path) = self
            && path.is_relative()
        {
            *path = dir.join(&*path);
        }
    }
}

impl<'de> Deserialize<'de> for SecretRef {
    /// Anything but `{ env = "NAME" }` or `{ file = "PATH" }` is refused with a message that
    /// never quotes the value: serde's own "invalid type: string ..." would print a secret
    /// pasted into the file.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let refused = || {
            serde::de::Error::custom(
                "secret values must be { env = \"VARIABLE\" } or { file = \"PATH\" }: secrets are read from the \
                 environment or a file, never written in the configuration",
            )
        };
        match toml::Value::deserialize(d).map_err(|_| refused())? {
            toml::Value::Table(t) if t.len() == 1 => match (t.get("env"), t.get("file")) {
                (Some(toml::Value::String(env)), _) => Ok(SecretRef::Env(env.clone())),
                (_, Some(toml::Value::String(file))) => Ok(SecretRef::File(PathBuf::from(file))),
                _ => Err(refused()),
            },
            _ => Err(refused()),
        }
    }
}

/// The destination types this build knows.
const KNOWN_TYPES: &str = "json, umami, customerio, opencdp, bloomreach";

/// A destination ready to add to a client builder. Its `Debug` shows no header value.
pub(crate) struct Destination {
    name: String,
    destination: Kind,
    http: HttpOptions,
}

/// The configured destination itself (the builder takes each type by value).
enum Kind {
    Json(JsonHttp),
    // Boxed: an Umami destination carries its token LRU and is several times a JsonHttp.
    Umami(Box<Umami>),
    CustomerIo(Box<CustomerIo>),
    /// OpenCDP, and its dual-write to Customer.io with that destination's own HTTP options.
    OpenCdp {
        config: Box<OpenCdpConfig>,
        customer_io: Option<(Box<CustomerIo>, HttpOptions)>,
    },
    Bloomreach(Box<Bloomreach>),
}

impl Destination {
    /// The names of the client destinations this one stands for: its own, then its dual-write's.
    pub(crate) fn names(&self) -> Vec<&str> {
        let mut names = vec![self.name.as_str()];
        if let Kind::OpenCdp { customer_io: Some((cio, _)), .. } = &self.destination {
            names.push(trackway::destination::Destination::name(cio.as_ref()));
        }
        names
    }

    /// The same destination with each request limited to `timeout` (the configuration file has
    /// no timeout of its own), its dual-write's requests too.
    pub(crate) fn with_request_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.http = self.http.timeout(timeout);
        if let Kind::OpenCdp { customer_io: Some((_, http)), .. } = &mut self.destination {
            *http = std::mem::take(http).timeout(timeout);
        }
        self
    }
}

impl fmt::Debug for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // HttpOptions redacts its header values.
        f.debug_struct("Destination").field("name", &self.name).field("http", &self.http).finish_non_exhaustive()
    }
}

impl Config {
    /// Reads and checks `path`: TOML syntax (with the line), unknown fields, destination types,
    /// required fields. Environment variables are read later, by [`destinations`](Self::destinations).
    pub(crate) fn load(path: &Path) -> anyhow::Result<Config> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read configuration {}", path.display()))?;
        let mut config: Config = toml::from_str(&text).map_err(|e| syntax_error(path, &text, &e))?;
        config.file = path.to_path_buf();
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        for d in &mut config.destinations {
            let dual_write = d.customer_io.as_mut().map(|c| &mut c.api_key);
            let secrets = d.headers.values_mut().chain(d.api_key.as_mut()).chain(d.public_key.as_mut());
            for secret in secrets.chain(d.secret.as_mut()).chain(dual_write) {
                secret.resolve(&dir);
            }
        }
        if let Some(store) = &mut config.store {
            store.path = expand_home(&store.path, dirs::home_dir)
                .with_context(|| format!("{}: [store] path {}", path.display(), store.path.display()))?;
        }
        let mut names: Vec<&str> = Vec::new();
        for (i, d) in config.destinations.iter().enumerate() {
            let what = || format!("{}: destination #{} (`{}`)", path.display(), i + 1, d.name);
            if d.name.trim().is_empty() {
                bail!("{}: destination #{} has an empty name", path.display(), i + 1);
            }
            if names.contains(&d.name.as_str()) {
                bail!("{}: two destinations are named `{}`; names must be unique", path.display(), d.name);
            }
            names.push(&d.name);
            if let Some(cio) = &d.customer_io {
                if d.kind != "opencdp" {
                    bail!("{}: `customer_io` (the dual-write to Customer.io) is a table of type \"opencdp\"", what());
                }
                if names.contains(&cio.name()) {
                    bail!(
                        "{}: the dual-write's Customer.io destination is named `{}` like another destination; \
                         give it its own `name` in [destination.customer_io]",
                        what(),
                        cio.name()
                    );
                }
                names.push(cio.name());
            }
            if matches!(d.kind.as_str(), "json" | "umami" | "customerio" | "bloomreach")
                && let Some(field) = d.opencdp_fields().first()
            {
                bail!("{}: `{field}` is a field of type \"opencdp\", not {:?}", what(), d.kind);
            }
            if d.kind != "customerio" && d.merge_aliases.is_some() {
                bail!(
                    "{}: `merge_aliases` is a field of type \"customerio\" (and of [destination.customer_io])",
                    what()
                );
            }
            if d.kind != "bloomreach"
                && let Some(field) = d.bloomreach_fields().first()
            {
                bail!("{}: `{field}` is a field of type \"bloomreach\"", what());
            }
            match d.kind.as_str() {
                "opencdp" => {
                    if d.api_key.is_none() {
                        bail!(
                            "{}: missing `api_key = {{ env = \"VARIABLE\" }}` (required for type \"opencdp\")",
                            what()
                        );
                    }
                    if d.url.is_some() || d.base_url.is_some() {
                        bail!("{}: type \"opencdp\" takes `endpoint`, not `url` or `base_url`", what());
                    }
                    if let Some(field) = d.umami_fields().first() {
                        bail!("{}: `{field}` is a field of type \"umami\", not \"opencdp\"", what());
                    }
                    if let Some(field) = d.customerio_fields().into_iter().find(|f| *f != "api_key") {
                        bail!("{}: `{field}` is a field of type \"customerio\", not \"opencdp\"", what());
                    }
                    if d.batch_size.is_some() {
                        bail!("{}: type \"opencdp\" sends one event per request (its API has no batch)", what());
                    }
                    if let Some(cio) = &d.customer_io {
                        if cio.name().trim().is_empty() {
                            bail!("{}: [destination.customer_io] has an empty `name`", what());
                        }
                        if cio.site_id.trim().is_empty() {
                            bail!("{}: [destination.customer_io] has an empty `site_id`", what());
                        }
                        if cio.api_key.names_nothing() {
                            bail!("{}: [destination.customer_io] `api_key` names no variable or file", what());
                        }
                        // The key is read later, from the environment: a stand-in checks the rest.
                        let checked = cio.customerio("key").map_err(|e| e.to_string()).and_then(|c| c.check_config());
                        if let Err(why) = checked {
                            bail!("{}: [destination.customer_io]: {why}", what());
                        }
                    }
                }
                "json" => {
                    if d.url.as_deref().is_none_or(|u| u.trim().is_empty()) {
                        bail!("{}: missing `url` (required for type \"json\")", what());
                    }
                    if let Some(field) = d.umami_fields().first() {
                        bail!("{}: `{field}` is a field of type \"umami\", not \"json\"", what());
                    }
                    if let Some(field) = d.customerio_fields().first() {
                        bail!("{}: `{field}` is a field of type \"customerio\", not \"json\"", what());
                    }
                }
                "customerio" => {
                    if d.site_id.as_deref().is_none_or(|s| s.trim().is_empty()) {
                        bail!("{}: missing `site_id` (required for type \"customerio\")", what());
                    }
                    if d.api_key.is_none() {
                        bail!(
                            "{}: missing `api_key = {{ env = \"VARIABLE\" }}` (required for type \"customerio\")",
                            what()
                        );
                    }
                    if d.url.is_some() {
                        bail!("{}: type \"customerio\" takes `base_url` (or `region`), not `url`", what());
                    }
                    if let Some(field) = d.umami_fields().into_iter().find(|f| *f != "base_url") {
                        bail!("{}: `{field}` is a field of type \"umami\", not \"customerio\"", what());
                    }
                }
                "bloomreach" => {
                    if d.project_token.as_deref().is_none_or(|t| t.trim().is_empty()) {
                        bail!("{}: missing `project_token` (required for type \"bloomreach\")", what());
                    }
                    if d.url.is_some() {
                        bail!(
                            "{}: type \"bloomreach\" takes `base_url` (e.g. https://api.exponea.com), not `url`",
                            what()
                        );
                    }
                    d.check_bloomreach().with_context(what)?;
                }
                "umami" => {
                    if d.website_id.as_deref().is_none_or(|w| w.trim().is_empty()) {
                        bail!("{}: missing `website_id` (required for type \"umami\")", what());
                    }
                    if d.url.is_some() {
                        bail!("{}: type \"umami\" takes `base_url` (e.g. https://cloud.umami.is), not `url`", what());
                    }
                    if let Some(field) = d.customerio_fields().first() {
                        bail!("{}: `{field}` is a field of type \"customerio\", not \"umami\"", what());
                    }
                }
                other => bail!(
                    "{}: unknown destination type {other:?} (known types: {KNOWN_TYPES}; others come in later versions)",
                    what()
                ),
            }
            if d.batch_size == Some(0) {
                bail!("{}: `batch_size` must be at least 1", what());
            }
            // What `build()` would refuse (a URL with an empty port, say), said here with the file.
            let checked = match d.kind.as_str() {
                "json" => JsonHttp::new(d.url.clone().unwrap_or_default()).check_config(),
                // The key is read later, from the environment: a stand-in checks the rest.
                "customerio" => d.customerio("key").map_err(|e| e.to_string()).and_then(|c| c.check_config()),
                "opencdp" => d.opencdp("key".into()).check(),
                "bloomreach" => Ok(()),
                _ => d.umami().check_config(),
            };
            if let Err(why) = checked {
                bail!("{}: {why}", what());
            }
            for (header, secret) in &d.headers {
                if secret.names_nothing() {
                    bail!("{}: header `{header}` names no environment variable or file", what());
                }
            }
        }
        Ok(config)
    }

    /// The store path from `[store]`, resolved against the configuration file's directory.
    pub(crate) fn store_path(&self) -> Option<PathBuf> {
        let path = &self.store.as_ref()?.path;
        if path.is_absolute() {
            return Some(path.clone());
        }
        let dir = self.file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        Some(dir.join(path))
    }

    /// `[store] max_bytes`, when set.
    pub(crate) fn store_max_bytes(&self) -> Option<u64> {
        self.store.as_ref()?.max_bytes
    }

    /// `[store] queue_capacity`, when set.
    pub(crate) fn queue_capacity(&self) -> Option<usize> {
        self.store.as_ref()?.queue_capacity
    }

    /// The destination names, in order (an OpenCDP destination's dual-write to Customer.io
    /// right after it).
    pub(crate) fn destination_names(&self) -> Vec<String> {
        let dual_write = |d: &DestinationConfig| d.customer_io.as_ref().map(|c| c.name().to_owned());
        self.destinations.iter().flat_map(|d| std::iter::once(d.name.clone()).chain(dual_write(d))).collect()
    }

    /// The Customer.io destinations with `merge_aliases = true`: `relay work` sends them a
    /// Segment `alias` as a merge of previousId into userId.
    pub(crate) fn merge_alias_destinations(&self) -> Vec<String> {
        let mut out = Vec::new();
        for d in &self.destinations {
            if d.merge_aliases == Some(true) {
                out.push(d.name.clone());
            }
            if let Some(cio) = d.customer_io.as_ref().filter(|c| c.merge_aliases == Some(true)) {
                out.push(cio.name().to_owned());
            }
        }
        out
    }

    /// Builds the destinations, reading each header's secret from its environment variable.
    ///
    /// # Errors
    /// No destination; an environment variable that is not set or not valid UTF-8 (named, its
    /// value never shown).
    pub(crate) fn destinations(&self) -> anyhow::Result<Vec<Destination>> {
        if self.destinations.is_empty() {
            bail!("{}: no destination configured: add a [[destination]] table", self.file.display());
        }
        let mut out = Vec::with_capacity(self.destinations.len());
        for d in &self.destinations {
            let mut http = HttpOptions::default();
            for (header, secret) in &d.headers {
                let value = secret.read(&d.name, &format!("header `{header}`"))?;
                http = http.header(header.clone(), value);
            }
            let destination = if d.kind == "umami" {
                Kind::Umami(Box::new(d.umami()))
            } else if let (Some(key), "opencdp") = (&d.api_key, d.kind.as_str()) {
                let customer_io = match &d.customer_io {
                    Some(cio) => {
                        let key = cio.api_key.read(&d.name, "[destination.customer_io] `api_key`")?;
                        let dest = cio.customerio(&key).with_context(|| format!("destination `{}`", d.name))?;
                        // The dual-write's own options: the headers above are OpenCDP's.
                        Some((Box::new(dest), HttpOptions::default()))
                    }
                    None => None,
                };
                Kind::OpenCdp { config: Box::new(d.opencdp(key.read(&d.name, "`api_key`")?)), customer_io }
            } else if d.kind == "customerio" {
                let key = match &d.api_key {
                    Some(secret) => secret.read(&d.name, "`api_key`")?,
                    None => String::new(),
                };
                Kind::CustomerIo(Box::new(d.customerio(&key).with_context(|| format!("destination `{}`", d.name))?))
            } else if d.kind == "bloomreach" {
                let authorization = match (&d.public_key, &d.key_id, &d.secret) {
                    (Some(key), _, _) => Authorization::token(key.read(&d.name, "`public_key`")?),
                    (None, Some(id), Some(secret)) => Authorization::basic(id, secret.read(&d.name, "`secret`")?),
                    _ => bail!("destination `{}`: no authorization", d.name),
                };
                Kind::Bloomreach(Box::new(d.bloomreach(authorization)?))
            } else {
                let mut json = JsonHttp::new(d.url.clone().unwrap_or_default()).name(d.name.clone());
                if let Some(n) = d.batch_size {
                    json = json.batch_size(n);
                }
                Kind::Json(json)
            };
            out.push(Destination { name: d.name.clone(), destination, http });
        }
        Ok(out)
    }
}

impl Config {
    /// The `[relay]` table, or its defaults, with write-key files resolved against the
    /// configuration file's directory.
    pub(crate) fn relay(&self) -> trackway_relay::RelayConfig {
        let mut relay = self.relay.clone().unwrap_or_default();
        // A write key's `{ file = .. }` is relative to this file, as the destinations' secrets.
        let dir = self.file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        for key in &mut relay.keys {
            if let Some(file) = &key.key.file
                && file.is_relative()
            {
                key.key.file = Some(dir.join(file));
            }
        }
        relay
    }
}

/// The configured destinations as the relay's workers deliver through them.
///
/// An OpenCDP destination stands for two when it has a `[destination.customer_io]` dual-write:
/// OpenCDP, then the dual-write, each with its own consumer (as in the SDK, each its own lane).
///
/// # Errors
/// A destination whose configuration check fails.
pub(crate) fn deliverers(
    destinations: Vec<Destination>,
    retry: &trackway::RetryPolicy,
) -> anyhow::Result<Vec<trackway::engine::Deliverer>> {
    use trackway::destination::DestinationSet as _;
    use trackway::engine::Deliverer;
    let mut out = Vec::new();
    for mut d in destinations {
        d.http = d.http.retry_policy(retry.clone());
        let made: Result<Vec<Deliverer>, String> = match d.destination {
            Kind::Json(json) => Deliverer::new(json, &d.http).map(|x| vec![x]),
            Kind::Umami(umami) => Deliverer::new(*umami, &d.http).map(|x| vec![x]),
            Kind::CustomerIo(cio) => Deliverer::new(*cio, &d.http).map(|x| vec![x]),
            Kind::Bloomreach(b) => Deliverer::new(*b, &d.http).map(|x| vec![x]),
            Kind::OpenCdp { config, customer_io } => {
                // The same expansion as the SDK's (`with_destinations`): OpenCDP itself, then its
                // Customer.io dual-write as a destination of its own, so each gets its own
                // consumer and one being down never holds the other back.
                let config = config.http(d.http.clone());
                let config = match customer_io {
                    Some((cio, http)) => config.customer_io_with(*cio, http.retry_policy(retry.clone())),
                    None => config,
                };
                config.expand().into_iter().map(|(dest, http)| Deliverer::from_arc(dest, &http)).collect()
            }
        };
        out.extend(made.map_err(|e| anyhow::anyhow!("destination `{}`: {e}", d.name))?);
    }
    Ok(out)
}

/// Adds the configured destinations to `builder`.
pub(crate) fn with_destinations(mut builder: ClientBuilder, destinations: Vec<Destination>) -> ClientBuilder {
    for d in destinations {
        builder = match d.destination {
            Kind::Json(json) => builder.destination_with(json, d.http),
            Kind::Umami(umami) => builder.destination_with(*umami, d.http),
            Kind::CustomerIo(cio) => builder.destination_with(*cio, d.http),
            Kind::OpenCdp { config, customer_io } => {
                let config = config.http(d.http);
                builder.destinations(match customer_io {
                    Some((cio, http)) => config.customer_io_with(*cio, http),
                    None => config,
                })
            }
            Kind::Bloomreach(b) => builder.destination_with(*b, d.http),
        };
    }
    builder
}

/// `path` with a leading `~` or `~/` replaced by the home directory (from `home`), as a shell
/// would: written in a file, it would otherwise create a directory named `~`.
///
/// # Errors
/// `~user/...` (another user's home is not looked up), or no home directory known.
fn expand_home(path: &Path, home: impl FnOnce() -> Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let mut components = path.components();
    let Some(std::path::Component::Normal(first)) = components.next() else { return Ok(path.to_path_buf()) };
    let Some(first) = first.to_str() else { return Ok(path.to_path_buf()) };
    if first == "~" {
        let Some(home) = home().filter(|h| h.is_absolute()) else {
            bail!("starts with `~`, but the home directory is not known (HOME is not set): write the full path");
        };
        return Ok(home.join(components.as_path()));
    }
    if first.starts_with('~') {
        bail!("`{first}` (another user's home directory) is not expanded: write the full path");
    }
    Ok(path.to_path_buf())
}

/// Loads `--config`, or fails saying it is needed for `what`.
pub(crate) fn require(config: Option<&Path>, what: &str) -> anyhow::Result<Config> {
    match config {
        Some(path) => Config::load(path),
        None => bail!("{what} needs the destinations: pass --config FILE"),
    }
}

/// A TOML error as `FILE:LINE:COLUMN: message`. The offending source line is deliberately not
/// quoted: it could hold a secret someone pasted where an `{ env = "..." }` belongs.
fn syntax_error(path: &Path, text: &str, e: &toml::de::Error) -> anyhow::Error {
    let message = e.message().trim_end();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rfind('\n').map_or(before.len(), |nl| before.len() - nl - 1) + 1;
            anyhow::anyhow!("{}:{line}:{column}: invalid configuration: {message}", path.display())
        }
        None => anyhow::anyhow!("{}: invalid configuration: {message}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("trackway.toml");
        std::fs::write(&path, text)?;
        Config::load(&path)
    }

    const RELAY: &str = "[[destination]]\nname = \"a\"\ntype = \"json\"\nurl = \"http://127.0.0.1:1/\"\n\
        [relay.nats]\nurl = \"nats://127.0.0.1:4222\"\nduplicate_window_secs = 60\n\
        [relay.worker]\nack_wait_secs = 2\n";

    #[test]
    fn the_relay_tables_are_read_and_checked() {
        let config = parse(RELAY).expect("valid");
        let relay = config.relay();
        assert_eq!(relay.nats.duplicate_window(), std::time::Duration::from_secs(60));
        assert_eq!(relay.worker.ack_wait_secs, 2);
        assert_eq!(relay.worker.max_ack_pending, 1000, "defaults fill the rest");
        let err = relay.write_keys(&config.destination_names()).expect_err("no key");
        assert!(format!("{err:#}").contains("[[relay.key]]"), "{err:#}");

        let err = parse(&format!("{RELAY}ack_wiat = 3\n")).expect_err("unknown field");
        assert!(format!("{err:#}").contains("ack_wiat"), "{err:#}");

        let keyed = format!(
            "{RELAY}[[relay.key]]\nname = \"web\"\nkey = {{ env = \"TRACKWAY_TEST_UNSET_RELAY_KEY\" }}\ndestinations = [\"a\"]\n"
        );
        let config = parse(&keyed).expect("valid");
        let err = config.relay().write_keys(&config.destination_names()).expect_err("unset");
        assert!(format!("{err:#}").contains("TRACKWAY_TEST_UNSET_RELAY_KEY"), "{err:#}");
        let wrong = keyed.replace("destinations = [\"a\"]", "destinations = [\"nope\"]");
        let config = parse(&wrong).expect("valid");
        // The file's own mistakes are told before any variable is read.
        let err = config.relay().write_keys(&config.destination_names()).expect_err("refused");
        assert!(format!("{err:#}").contains("destination `nope` is not configured"), "{err:#}");
    }

    #[test]
    fn a_relay_key_file_is_relative_to_the_configuration() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::create_dir(dir.path().join("secrets")).expect("mkdir");
        std::fs::write(dir.path().join("secrets/web.key"), "from-the-file\n").expect("key");
        let path = dir.path().join("relay.toml");
        std::fs::write(
            &path,
            format!(
                "{RELAY}[[relay.key]]\nname = \"web\"\nkey = {{ file = \"secrets/web.key\" }}\ndestinations = [\"a\"]\n"
            ),
        )
        .expect("config");
        let config = Config::load(&path).expect("valid");
        let keys = config.relay().write_keys(&config.destination_names()).expect("read");
        assert_eq!(
            format!("{keys:?}"),
            r#"[WriteKey { name: "web", destinations: ["a"] }]"#,
            "the value is never shown"
        );
    }

    #[test]
    fn customerio_destinations_are_configured_and_checked() {
        let ok = "[[destination]]\nname = \"cio\"\ntype = \"customerio\"\nsite_id = \"site\"\n\
                  api_key = { env = \"TRACKWAY_TEST_CIO_KEY_UNSET\" }\nregion = \"EU\"\napi = \"v1\"\n";
        let config = parse(ok).expect("valid");
        let err = config.destinations().expect_err("the key's variable is not set");
        assert!(format!("{err:#}").contains("TRACKWAY_TEST_CIO_KEY_UNSET is not set"), "{err:#}");
        let no_key = parse("[[destination]]\nname = \"c\"\ntype = \"customerio\"\nsite_id = \"s\"\n");
        assert!(format!("{:#}", no_key.expect_err("no key")).contains("missing `api_key"));
        let literal =
            parse("[[destination]]\nname = \"c\"\ntype = \"customerio\"\nsite_id = \"s\"\napi_key = \"hunter2\"\n");
        assert!(!format!("{:#}", literal.expect_err("literal key")).contains("hunter2"));
        let region = parse(&ok.replace("\"EU\"", "\"mars\"")).expect_err("bad region");
        assert!(format!("{region:#}").contains("not \"us\" or \"eu\""), "{region:#}");
        let on_json = parse("[[destination]]\nname = \"j\"\ntype = \"json\"\nurl = \"http://x/\"\nsite_id = \"s\"\n");
        assert!(
            format!("{:#}", on_json.expect_err("field of another type"))
                .contains("`site_id` is a field of type \"customerio\"")
        );
    }

    #[test]
    fn merge_aliases_is_a_customer_io_option_off_by_default() {
        let cio = "[[destination]]\nname = \"cio\"\ntype = \"customerio\"\nsite_id = \"s\"\n\
                   api_key = { env = \"K\" }\n";
        assert!(parse(cio).expect("valid").merge_alias_destinations().is_empty(), "off by default");
        let on = parse(&format!("{cio}merge_aliases = true\n")).expect("valid");
        assert_eq!(on.merge_alias_destinations(), ["cio"]);
        let dual = "[[destination]]\nname = \"cdp\"\ntype = \"opencdp\"\napi_key = { env = \"K\" }\n\
                    [destination.customer_io]\nname = \"dual\"\nsite_id = \"s\"\napi_key = { env = \"K\" }\n\
                    merge_aliases = true\n";
        assert_eq!(parse(dual).expect("valid").merge_alias_destinations(), ["dual"]);
        let on_json = "[[destination]]\nname = \"j\"\ntype = \"json\"\nurl = \"http://x/\"\nmerge_aliases = true\n";
        let err = parse(on_json).expect_err("not a JSON option");
        assert!(format!("{err:#}").contains("`merge_aliases` is a field of type \"customerio\""), "{err:#}");
    }

    #[test]
    fn a_literal_secret_is_refused_without_being_echoed() {
        let err = parse("[[destination]]\nname = \"w\"\ntype = \"json\"\nurl = \"http://x/\"\n[destination.headers]\nAuthorization = \"Bearer hunter2\"\n")
            .expect_err("literal header value");
        let text = format!("{err:#}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains(":6:"), "line of the error: {text}");
    }

    #[test]
    fn umami_destinations_are_configured_and_checked() {
        let config = parse(
            "[[destination]]\nname = \"u\"\ntype = \"umami\"\nwebsite_id = \"b59e9c65-ae32-47f1-8400-119fcf4861c4\"\nhostname = \"myapp.example\"\nlate_after_secs = 30\n",
        )
        .expect("config");
        assert_eq!(config.destinations().expect("destinations")[0].names(), ["u"]);
        let err = parse("[[destination]]\nname = \"u\"\ntype = \"umami\"\n").expect_err("no website");
        assert!(format!("{err:#}").contains("website_id"), "{err:#}");
        let err = parse("[[destination]]\nname = \"j\"\ntype = \"json\"\nurl = \"http://x/\"\nwebsite_id = \"x\"\n")
            .expect_err("umami field on json");
        assert!(format!("{err:#}").contains("website_id"), "{err:#}");
    }

    #[test]
    fn a_url_with_an_empty_port_is_refused_when_the_file_is_read() {
        let err = parse("[[destination]]\nname = \"w\"\ntype = \"json\"\nurl = \"http://127.0.0.1:/events\"\n")
            .expect_err("empty port");
        let text = format!("{err:#}");
        assert!(text.contains("destination #1 (`w`): URL has an empty port after `127.0.0.1:`"), "{text}");
        let err = parse(
            "[[destination]]\nname = \"u\"\ntype = \"umami\"\nwebsite_id = \"b59e9c65-ae32-47f1-8400-119fcf4861c4\"\nbase_url = \"https://umami.local:\"\n",
        )
        .expect_err("empty port");
        assert!(format!("{err:#}").contains("base URL has an empty port after `umami.local:`"), "{err:#}");
    }

    #[test]
    fn a_home_relative_store_path_is_expanded_or_refused() {
        let home = || Some(PathBuf::from("/home/jane"));
        assert_eq!(expand_home(Path::new("~/outbox.db"), home).expect("expanded"), Path::new("/home/jane/outbox.db"));
        assert_eq!(expand_home(Path::new("~"), home).expect("expanded"), Path::new("/home/jane"));
        assert_eq!(expand_home(Path::new("a/~/b.db"), home).expect("kept"), Path::new("a/~/b.db"));
        assert_eq!(expand_home(Path::new("/x/~y"), home).expect("kept"), Path::new("/x/~y"));
        let err = expand_home(Path::new("~bob/outbox.db"), home).expect_err("other user");
        assert!(err.to_string().contains("`~bob`"), "{err}");
        let err = expand_home(Path::new("~/outbox.db"), || None).expect_err("no home");
        assert!(err.to_string().contains("home directory is not known"), "{err}");
        let config = parse("[store]\npath = \"~/tw/outbox.db\"\n").expect("config");
        let expected = dirs::home_dir().expect("a home directory").join("tw/outbox.db");
        assert_eq!(config.store_path(), Some(expected));
    }

    #[test]
    fn opencdp_destinations_take_their_key_from_the_environment() {
        let text = "[[destination]]\nname = \"cdp\"\ntype = \"opencdp\"\napi_key = { env = \"TRACKWAY_TEST_CDP_KEY_UNSET\" }\nendpoint = \"http://127.0.0.1:9/gw\"\nmax_concurrent_requests = 5\n";
        let config = parse(text).expect("config");
        let err = config.destinations().expect_err("the variable is not set");
        assert!(format!("{err:#}").contains("TRACKWAY_TEST_CDP_KEY_UNSET is not set"), "{err:#}");
        let err = parse("[[destination]]\nname = \"cdp\"\ntype = \"opencdp\"\n").expect_err("no key");
        assert!(format!("{err:#}").contains("api_key"), "{err:#}");
        let err = parse("[[destination]]\nname = \"cdp\"\ntype = \"opencdp\"\napi_key = \"literal\"\n")
            .expect_err("literal key");
        assert!(!format!("{err:#}").contains("literal"), "{err:#}");
        let err =
            parse("[[destination]]\nname = \"j\"\ntype = \"json\"\nurl = \"http://x/\"\nendpoint = \"http://y/\"\n")
                .expect_err("opencdp field on json");
        assert!(format!("{err:#}").contains("`endpoint` is a field of type \"opencdp\""), "{err:#}");
        let err = parse("[[destination]]\nname = \"c\"\ntype = \"opencdp\"\napi_key = { env = \"K\" }\nendpoint = \"http://h:/gw\"\n")
            .expect_err("empty port");
        assert!(format!("{err:#}").contains("endpoint has an empty port"), "{err:#}");
    }

    #[test]
    fn opencdp_destinations_carry_the_customer_io_dual_write() {
        let base = "[[destination]]\nname = \"cdp\"\ntype = \"opencdp\"\napi_key = { env = \"PATH\" }\n";
        let dual = format!(
            "{base}[destination.customer_io]\nsite_id = \"site\"\napi_key = {{ env = \"TRACKWAY_TEST_DUAL_KEY_UNSET\" }}\nregion = \"eu\"\napi = \"v1\"\n"
        );
        let config = parse(&dual).expect("valid");
        assert_eq!(config.destination_names(), ["cdp", "customerio"], "two destinations, the dual-write named");
        let err = config.destinations().expect_err("the dual-write key's variable is not set");
        let text = format!("{err:#}");
        assert!(
            text.contains("[destination.customer_io] `api_key`: environment variable TRACKWAY_TEST_DUAL_KEY_UNSET"),
            "{text}"
        );

        // Set: both destinations are built (PATH is always set; its value is never printed).
        let set =
            dual.replace("TRACKWAY_TEST_DUAL_KEY_UNSET", "PATH").replace("region = \"eu\"\n", "name = \"cio-eu\"\n");
        let built = parse(&set).expect("valid").destinations().expect("destinations");
        assert_eq!(built.len(), 1);
        assert_eq!(built[0].names(), ["cdp", "cio-eu"]);

        let literal = parse(&dual.replace("{ env = \"TRACKWAY_TEST_DUAL_KEY_UNSET\" }", "\"hunter2\""));
        assert!(!format!("{:#}", literal.expect_err("a literal key")).contains("hunter2"));
        let no_site = parse(&dual.replace("site_id = \"site\"\n", "")).expect_err("no site id");
        assert!(format!("{no_site:#}").contains("site_id"), "{no_site:#}");
        let region = parse(&dual.replace("\"eu\"", "\"mars\"")).expect_err("bad region");
        assert!(
            format!("{region:#}").contains("[destination.customer_io]: ") && format!("{region:#}").contains("mars"),
            "{region:#}"
        );
        let port = parse(&format!("{dual}base_url = \"http://h:/x\"\n")).expect_err("empty port");
        assert!(format!("{port:#}").contains("empty port"), "{port:#}");
        let unknown = parse(&format!("{dual}batch = 3\n")).expect_err("unknown field");
        assert!(format!("{unknown:#}").contains("batch"), "{unknown:#}");
        let clash = parse(&format!(
            "{dual}\n[[destination]]\nname = \"customerio\"\ntype = \"customerio\"\nsite_id = \"s\"\napi_key = {{ env = \"K\" }}\n"
        ))
        .expect_err("two destinations named customerio");
        assert!(format!("{clash:#}").contains("two destinations are named `customerio`"), "{clash:#}");
        let on_json = parse(
            "[[destination]]\nname = \"j\"\ntype = \"json\"\nurl = \"http://x/\"\n[destination.customer_io]\nsite_id = \"s\"\napi_key = { env = \"K\" }\n",
        )
        .expect_err("dual-write on json");
        assert!(format!("{on_json:#}").contains("is a table of type \"opencdp\""), "{on_json:#}");
    }

    #[test]
    fn secrets_are_read_from_files_relative_to_the_configuration() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("secrets")).expect("mkdir");
        std::fs::write(dir.path().join("secrets/cio"), "s3cr3t-from-file\n").expect("write secret");
        let path = dir.path().join("trackway.toml");
        let text = "[[destination]]\nname = \"cdp\"\ntype = \"opencdp\"\napi_key = { file = \"secrets/cio\" }\n\
                    [destination.customer_io]\nsite_id = \"s\"\napi_key = { file = \"secrets/missing\" }\n";
        std::fs::write(&path, text).expect("write config");
        let err = Config::load(&path).expect("valid").destinations().expect_err("a missing file");
        let message = format!("{err:#}");
        assert!(message.contains("cannot read file") && message.contains("secrets/missing"), "{message}");
        std::fs::write(&path, text.replace("secrets/missing", "secrets/cio")).expect("write config");
        let built = Config::load(&path).expect("valid").destinations().expect("both keys read");
        assert_eq!(built[0].names(), ["cdp", "customerio"]);
        // The value (a line break dropped) is what is sent; it is never in Debug output.
        let value = SecretRef::File(dir.path().join("secrets/cio")).read("d", "k").expect("read");
        assert_eq!(value, "s3cr3t-from-file");
        assert!(!format!("{:?}", built[0]).contains("s3cr3t"));
        let err = parse("[[destination]]\nname = \"w\"\ntype = \"json\"\nurl = \"http://x/\"\n[destination.headers]\nA = { file = 7 }\n")
            .expect_err("not a path");
        assert!(format!("{err:#}").contains("{ file = \"PATH\" }"), "{err:#}");
    }

    #[test]
    fn bloomreach_destinations_take_their_key_from_the_environment() {
        let text = "[[destination]]\nname = \"b\"\ntype = \"bloomreach\"\nproject_token = \"p-1\"\nkey_id = \"id\"\nsecret = { env = \"TRACKWAY_TEST_BR_SECRET_UNSET\" }\n";
        let config = parse(text).expect("config");
        let err = config.destinations().expect_err("the variable is not set");
        assert!(format!("{err:#}").contains("TRACKWAY_TEST_BR_SECRET_UNSET"), "{err:#}");
        let err = parse("[[destination]]\nname = \"b\"\ntype = \"bloomreach\"\nproject_token = \"bad token\"\npublic_key = { env = \"X\" }\n")
            .expect_err("bad token");
        assert!(format!("{err:#}").contains("project token"), "{err:#}");
        let err =
            parse("[[destination]]\nname = \"b\"\ntype = \"bloomreach\"\nproject_token = \"p\"\n").expect_err("no key");
        assert!(format!("{err:#}").contains("public_key"), "{err:#}");
    }

    #[test]
    fn store_path_is_relative_to_the_file() {
        let config = parse("[store]\npath = \"out.db\"\n").expect("config");
        let path = config.store_path().expect("store path");
        assert!(path.ends_with("out.db") && path.is_absolute(), "{}", path.display());
    }
}

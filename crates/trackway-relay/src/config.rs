//! The relay's part of `relay.toml`: the NATS connection and stream, ingest, workers and write
//! keys. Write keys are secrets: the file names the environment variable or the file holding
//! each one.
//!
//! ```toml
//! [relay.nats]
//! url = "nats://127.0.0.1:4222"
//! stream = "TRACKWAY"            # events on TRACKWAY.events, dead letters in TRACKWAY_DEAD
//! duplicate_window_secs = 3600   # Nats-Msg-Id dedupe window (server default: 120)
//! replicas = 1                   # 3 on a 3-node cluster
//! partitions = 16                # TRACKWAY.events.<0..16> by a hash of the person (see below)
//!
//! [relay.ingest]
//! listen = "127.0.0.1:8088"
//!
//! [relay.worker]
//! ack_wait_secs = 30             # an unacked message goes to another worker after this
//! max_ack_pending = 1000         # per destination, across all workers
//! batch = 100                    # events per pull
//! pullers = 2                    # concurrent pulls per destination per process
//! base_backoff_ms = 500          # retries: full jitter under min(max, base × 2^(n−1))
//! max_backoff_secs = 300
//! metrics_listen = "127.0.0.1:9091"  # optional: the worker's own /metrics
//!
//! [[relay.key]]
//! name = "web"                   # shown in logs and metrics (never the key itself)
//! key = { env = "RELAY_WEB_KEY" } # or { file = "/run/secrets/relay-web-key" }
//! destinations = ["warehouse"]   # the configured destinations this key may reach
//! sources = ["segment"]          # optional: the ingest APIs it may use (default both)
//! max_events_per_second = 500    # optional: more is answered 429 with Retry-After
//! ```

use std::time::Duration;

use serde::Deserialize;

/// The `[relay]` table.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// The NATS connection and the streams.
    #[serde(default)]
    pub nats: NatsConfig,
    /// The HTTP ingest (`relay serve`).
    #[serde(default)]
    pub ingest: IngestConfig,
    /// The delivery workers (`relay work`).
    #[serde(default)]
    pub worker: WorkerConfig,
    /// The write keys.
    #[serde(default, rename = "key")]
    pub keys: Vec<KeyConfig>,
}

/// `[relay.nats]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated.
    pub url: String,
    /// The events stream's name (letters, digits, `_`, `-`).
    pub stream: String,
    /// How long JetStream remembers a message id to drop a resent copy (default 1 h). It keeps
    /// one entry per id for this long: some 160–370 bytes of server memory each (measured by
    /// `cargo bench -p trackway-cli --bench relay`: RSS with N distinct ids less without), so
    /// 1 000 events/s for an hour cost some 0.6–1.1 GB on every server holding the stream;
    /// shorten it for high rates, never below the longest client retry.
    pub duplicate_window_secs: u64,
    /// Stream replicas (1 on one server, 3 on a 3-node cluster).
    pub replicas: usize,
    /// How long to wait for JetStream to acknowledge an append before answering 503.
    pub publish_timeout_secs: u64,
    /// Events go to `<stream>.events.<p>`, `p` a stable hash of the person (user id, else
    /// anonymous id) modulo this (default 16). A destination that keeps order per person has
    /// one consumer per partition, each pulled by one worker at a time: this bounds how many
    /// workers share an ordered destination. Every ingest and worker must use the same value.
    /// Changing it live moves people to other partitions: for a moment (until the events
    /// appended before the change are delivered) a person's events may arrive out of order.
    /// Lowering it leaves the events of the partitions dropped undelivered to ordered
    /// destinations: drain them first (stop the ingest, wait for zero lag).
    pub partitions: u32,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".into(),
            stream: "TRACKWAY".into(),
            duplicate_window_secs: 3600,
            replicas: 1,
            publish_timeout_secs: 5,
            partitions: 16,
        }
    }
}

impl NatsConfig {
    /// The subject events are appended to, before the partition (`<stream>.events`; a relay
    /// from before partitions appended there directly, and those events are still delivered).
    pub fn events_subject(&self) -> String {
        format!("{}.events", self.stream)
    }
    /// The subject of partition `p`.
    pub fn partition_subject(&self, p: u32) -> String {
        format!("{}.events.{p}", self.stream)
    }
    /// The number of partitions (at least 1).
    pub fn partition_count(&self) -> u32 {
        self.partitions.max(1)
    }
    /// The KV bucket of the destinations' shared state (health, cached tokens).
    pub fn state_bucket(&self) -> String {
        format!("{}_STATE", self.stream)
    }
    /// The dead letters' stream.
    pub fn dead_stream(&self) -> String {
        format!("{}_DEAD", self.stream)
    }
    /// The subject of `destination`'s dead letters.
    pub fn dead_subject(&self, destination: &str) -> String {
        format!("{}.dead.{}", self.stream, consumer_name(destination))
    }
    /// The duplicate window.
    pub fn duplicate_window(&self) -> Duration {
        Duration::from_secs(self.duplicate_window_secs.max(1))
    }
}

/// `[relay.ingest]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    pub listen: String,
    /// Largest request body (default Segment's batch limit, 500 KB).
    pub max_body_bytes: usize,
    /// `Retry-After` seconds answered with a 503.
    pub retry_after_secs: u64,
    /// A request whose body has not arrived within this is answered 408 (slow clients).
    pub body_timeout_secs: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            listen: "127.0.0.1:8088".into(),
            max_body_bytes: crate::segment::MAX_BATCH_BYTES,
            retry_after_secs: 5,
            body_timeout_secs: 30,
        }
    }
}

/// `[relay.worker]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// After this long without an ack, JetStream hands a message to another worker.
    pub ack_wait_secs: u64,
    /// Most unacked messages per destination across all workers (bounds the duplicates a killed
    /// worker can cause).
    pub max_ack_pending: i64,
    /// Most events per pull (and per `encode`, within the destination's own limits).
    pub batch: usize,
    /// Concurrent pulls per destination in one worker process.
    pub pullers: usize,
    /// Failures of one event, while others of its batch are delivered, before it is
    /// dead-lettered as `retries_exhausted`.
    pub max_attempts: u32,
    /// First backoff ceiling of a retried event (default 500 ms; full jitter below it).
    pub base_backoff_ms: u64,
    /// Largest backoff ceiling (default 5 min).
    pub max_backoff_secs: u64,
    /// Where a worker serves its own `/metrics` (delivered, retried, dead per destination), if
    /// anywhere (`127.0.0.1:0` picks a free port, printed).
    pub metrics_listen: Option<String>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            ack_wait_secs: 30,
            max_ack_pending: 1000,
            batch: 100,
            pullers: 2,
            max_attempts: 10,
            base_backoff_ms: 500,
            max_backoff_secs: 300,
            metrics_listen: None,
        }
    }
}

impl WorkerConfig {
    /// The retry policy these settings describe, for each destination's deliverer.
    pub fn retry_policy(&self) -> trackway::RetryPolicy {
        trackway::RetryPolicy::default()
            .backoff(
                Duration::from_millis(self.base_backoff_ms.max(1)),
                Duration::from_secs(self.max_backoff_secs.max(1)),
            )
            .max_attempts(self.max_attempts.max(1))
    }
}

/// One `[[relay.key]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// A name for logs and metrics.
    pub name: String,
    /// Where the key's value is.
    pub key: SecretRef,
    /// The destinations events sent with this key go to.
    pub destinations: Vec<String>,
    /// The ingest APIs this key may send through (`"trackway"`: `POST /v1/events`;
    /// `"segment"`: the Segment HTTP Tracking API). Default: both. A key shipped inside an app
    /// that only has a Segment SDK can be held to `["segment"]`.
    #[serde(default = "Source::all")]
    pub sources: Vec<Source>,
    /// Most events per second accepted with this key (burst: one second's worth); more are
    /// answered 429 with `Retry-After`. Default: no limit.
    #[serde(default)]
    pub max_events_per_second: Option<f64>,
}

/// An ingest API a write key may send through.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// trackway's own JSON events (`POST /v1/events`, what the `JsonHttp` destination sends).
    Trackway,
    /// The Segment HTTP Tracking API (`/v1/track|identify|page|screen|alias|group|batch`).
    Segment,
}

impl Source {
    /// Both APIs: a key's default.
    pub fn all() -> Vec<Source> {
        vec![Source::Trackway, Source::Segment]
    }

    /// The name used in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Trackway => "trackway",
            Source::Segment => "segment",
        }
    }
}

/// Where a secret is: an environment variable (`{ env = "VAR" }`) or a file
/// (`{ file = "/run/secrets/key" }`, its content without the trailing newline). Never in the
/// configuration file itself. A relative path is read from the working directory; the
/// `trackway` command resolves it against the configuration file's directory first.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// The variable's name.
    #[serde(default)]
    pub env: Option<String>,
    /// The file's path.
    #[serde(default)]
    pub file: Option<std::path::PathBuf>,
}

impl SecretRef {
    /// The secret's value, for the write key `key` (named in errors; the value never is).
    fn read(&self, key: &str) -> anyhow::Result<String> {
        let value = match (&self.env, &self.file) {
            (Some(var), None) => std::env::var(var)
                .map_err(|_| anyhow::anyhow!("write key `{key}`: environment variable {var} is not set"))?,
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("write key `{key}`: cannot read {}: {e}", path.display()))?
                .trim_end_matches(['\n', '\r'])
                .to_owned(),
            _ => anyhow::bail!("write key `{key}`: give the key as {{ env = \"VAR\" }} or {{ file = \"PATH\" }}"),
        };
        if value.is_empty() {
            let from = match (&self.env, &self.file) {
                (Some(var), _) => format!("environment variable {var}"),
                (_, Some(path)) => format!("file {}", path.display()),
                _ => String::new(),
            };
            anyhow::bail!("write key `{key}`: {from} is empty");
        }
        Ok(value)
    }
}

/// A write key with its value read.
#[derive(Clone)]
pub struct WriteKey {
    /// Its name.
    pub name: String,
    /// Its value (never printed).
    pub(crate) value: String,
    /// Where its events may go.
    pub destinations: Vec<String>,
    /// The ingest APIs it may send through.
    pub sources: Vec<Source>,
    /// Its rate limit in events per second, if any.
    pub max_events_per_second: Option<f64>,
}

impl std::fmt::Debug for WriteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteKey").field("name", &self.name).field("destinations", &self.destinations).finish()
    }
}

impl WriteKey {
    /// A key with its value given directly (for tests and embedding).
    pub fn new(name: impl Into<String>, value: impl Into<String>, destinations: Vec<String>) -> Self {
        WriteKey {
            name: name.into(),
            value: value.into(),
            destinations,
            sources: Source::all(),
            max_events_per_second: None,
        }
    }
}

impl RelayConfig {
    /// Reads each key's value from its environment variable or file and checks that its destinations
    /// are among `known`.
    ///
    /// # Errors
    /// A variable not set or a file not readable (named, the value never shown), an empty
    /// value, an unknown destination, an empty `sources`, no key.
    pub fn write_keys(&self, known: &[String]) -> anyhow::Result<Vec<WriteKey>> {
        if self.keys.is_empty() {
            anyhow::bail!("no write key configured: add a [[relay.key]] table");
        }
        self.keys
            .iter()
            .map(|k| {
                for d in &k.destinations {
                    if !known.contains(d) {
                        anyhow::bail!(
                            "write key `{}`: destination `{d}` is not configured ({})",
                            k.name,
                            known.join(", ")
                        );
                    }
                }
                let value = k.key.read(&k.name)?;
                if k.sources.is_empty() {
                    anyhow::bail!("write key `{}`: sources is empty (give \"trackway\", \"segment\" or both)", k.name);
                }
                if let Some(rate) = k.max_events_per_second
                    && !(rate.is_finite() && rate > 0.0)
                {
                    anyhow::bail!(
                        "write key `{}`: max_events_per_second must be a positive number, not {rate}",
                        k.name
                    );
                }
                Ok(WriteKey {
                    name: k.name.clone(),
                    value,
                    destinations: k.destinations.clone(),
                    sources: k.sources.clone(),
                    max_events_per_second: k.max_events_per_second,
                })
            })
            .collect()
    }
}

/// A destination's name as a JetStream consumer name and subject token (which take no `.`,
/// `*`, `>` or whitespace).
pub fn consumer_name(destination: &str) -> String {
    destination.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(toml_text: &str) -> RelayConfig {
        #[derive(Deserialize)]
        struct Top {
            relay: RelayConfig,
        }
        toml::from_str::<Top>(toml_text).expect("config").relay
    }

    #[test]
    fn a_write_key_comes_from_a_file_without_its_newline_and_sources_default_to_both() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("key");
        std::fs::write(&path, "file-key\n").expect("write");
        let text = format!(
            "[[relay.key]]\nname = \"app\"\nkey = {{ file = {:?} }}\ndestinations = [\"a\"]\n",
            path.display().to_string()
        );
        let keys = relay(&text).write_keys(&["a".to_owned()]).expect("keys");
        assert_eq!(keys[0].value, "file-key");
        assert_eq!(keys[0].sources, Source::all());
    }

    #[test]
    fn bad_key_settings_are_named_errors_that_never_show_the_value() {
        let missing = relay(
            "[[relay.key]]\nname = \"app\"\nkey = { file = \"/nonexistent/trackway-key\" }\ndestinations = [\"a\"]\n",
        );
        let e = missing.write_keys(&["a".to_owned()]).unwrap_err().to_string();
        assert!(e.contains("write key `app`: cannot read /nonexistent/trackway-key"), "{e}");

        let both =
            relay("[[relay.key]]\nname = \"app\"\nkey = { env = \"X\", file = \"y\" }\ndestinations = [\"a\"]\n");
        let e = both.write_keys(&["a".to_owned()]).unwrap_err().to_string();
        assert!(e.contains("{ env = \"VAR\" } or { file = \"PATH\" }"), "{e}");

        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("key");
        std::fs::write(&path, "secret-value").expect("write");
        let no_sources = relay(&format!(
            "[[relay.key]]\nname = \"app\"\nkey = {{ file = {:?} }}\ndestinations = [\"a\"]\nsources = []\n",
            path.display().to_string()
        ));
        let e = no_sources.write_keys(&["a".to_owned()]).unwrap_err().to_string();
        assert!(e.contains("sources is empty") && !e.contains("secret-value"), "{e}");

        let unknown = toml::from_str::<KeyConfig>(
            "name = \"app\"\nkey = { env = \"X\" }\ndestinations = [\"a\"]\nsources = [\"kafka\"]\n",
        );
        assert!(unknown.unwrap_err().to_string().contains("unknown variant `kafka`"));
        let bad = relay(&format!(
            "[[relay.key]]\nname = \"app\"\nkey = {{ file = {:?} }}\ndestinations = [\"a\"]\nsources = [\"segment\"]\n",
            path.display().to_string()
        ));
        assert_eq!(bad.write_keys(&["a".to_owned()]).expect("keys")[0].sources, vec![Source::Segment]);
    }
}

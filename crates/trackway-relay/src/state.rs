//! Destination state shared by every worker process through the engine's KV bucket
//! (`<stream>_STATE` on JetStream): health, so a misconfigured destination (bad credentials, an
//! unknown project: 401, 403, 404) gets one probe request at a time across all workers instead
//! of one per worker and per held message, and the destination's cached tokens (Umami's cache
//! token, a session a server hands back), so a worker starts from what another one learnt.
//!
//! Health is one value per destination, `health.<destination>`: whether it is failing, how many
//! probes failed, when the next probe is due, and who holds it. Workers read it before each
//! batch. Once the probe is due, the worker that wins a compare-and-set on the value's revision
//! (writing itself as the prober, the due time pushed past the probe's own time) sends one
//! event; the others keep waiting. A probe that fails writes the next due time, the wait
//! doubling from 5 s to 5 min (the SDK's own probe backoff,
//! [`Deliverer::probe_backoff`]); one that goes through marks it healthy and every worker
//! resumes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use trackway::engine::Deliverer;

use crate::config::consumer_name;
use crate::engine::Engine;

/// How long a worker holding the probe has to send it before another may take over (a worker
/// killed mid-probe must not leave the destination without one for long).
const PROBE_LEASE: Duration = Duration::from_secs(30);

/// The shared health value of a destination.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Health {
    /// Whether requests are held back until a probe goes through.
    pub failing: bool,
    /// The server's answer that made it fail.
    #[serde(default)]
    pub reason: String,
    /// Probes (the first failure included) that failed in a row.
    #[serde(default)]
    pub failures: u32,
    /// When the next probe may go out, in milliseconds since the Unix epoch.
    #[serde(default)]
    pub next_probe_ms: u64,
    /// The worker that took the current probe, if one did.
    #[serde(default)]
    pub prober: String,
}

/// What a worker may send now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Everything: the destination is healthy.
    Open,
    /// One event, as the probe (this worker won it).
    Probe,
    /// Nothing before this long (another worker probes, or the probe is not due).
    Closed(Duration),
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn health_key(destination: &str) -> String {
    format!("health.{}", consumer_name(destination))
}

fn tokens_key(destination: &str) -> String {
    format!("state.{}", consumer_name(destination))
}

/// The doubling probe wait after `failures` failed probes.
fn probe_wait(deliverer: &Deliverer, failures: u32) -> Duration {
    let (first, max) = deliverer.probe_backoff();
    let exp = failures.saturating_sub(1).min(30);
    first.saturating_mul(1 << exp).min(max)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Reads the destination's health and, when a probe is due, tries to take it.
///
/// An engine that cannot be read leaves the gate open: the destination's own answers still
/// pace the retries, only the sharing is lost.
pub async fn gate<E: Engine>(engine: &E, deliverer: &Deliverer, worker_id: &str) -> Gate {
    let key = health_key(deliverer.name());
    let Ok(Some(current)) = engine.state_get(&key).await else { return Gate::Open };
    let Ok(mut health) = serde_json::from_slice::<Health>(&current.value) else { return Gate::Open };
    if !health.failing {
        return Gate::Open;
    }
    let now = now_ms();
    if now < health.next_probe_ms {
        let wait = Duration::from_millis(health.next_probe_ms - now);
        // A probe in flight: its answer may come any moment, look again soon rather than at
        // the end of its lease.
        return Gate::Closed(if health.prober.is_empty() { wait } else { wait.min(Duration::from_secs(1)) });
    }
    health.prober = worker_id.to_owned();
    health.next_probe_ms = now + millis(PROBE_LEASE);
    let Ok(value) = serde_json::to_vec(&health) else { return Gate::Open };
    match engine.state_update(&key, value, Some(current.revision)).await {
        Ok(Some(_)) => Gate::Probe,
        // Another worker took it: look again soon.
        Ok(None) => Gate::Closed(Duration::from_millis(500)),
        Err(_) => Gate::Open,
    }
}

/// Records that the destination answered "misconfigured" (`reason`): the next probe is due
/// after the doubling wait.
pub async fn record_failure<E: Engine>(engine: &E, deliverer: &Deliverer, worker_id: &str, reason: &str) {
    let key = health_key(deliverer.name());
    // Compare-and-set, retried a few times: two workers failing at once both count once each,
    // and the wait comes from the latest count.
    for _ in 0..3 {
        let current = engine.state_get(&key).await.ok().flatten();
        let mut health: Health =
            current.as_ref().and_then(|c| serde_json::from_slice(&c.value).ok()).unwrap_or_default();
        if health.failing && health.prober != worker_id && now_ms() < health.next_probe_ms {
            // Another worker already recorded this failure (or holds the probe): its wait stands.
            return;
        }
        health.failures = if health.failing { health.failures.saturating_add(1) } else { 1 };
        health.failing = true;
        health.reason = reason.chars().take(500).collect();
        health.prober = String::new();
        health.next_probe_ms = now_ms() + millis(probe_wait(deliverer, health.failures));
        let Ok(value) = serde_json::to_vec(&health) else { return };
        match engine.state_update(&key, value, current.map(|c| c.revision)).await {
            Ok(Some(_)) => {
                tracing::warn!(
                    destination = deliverer.name(),
                    failures = health.failures,
                    reason = %health.reason,
                    "destination misconfigured: one probe at a time across workers"
                );
                return;
            }
            Ok(None) => {}
            Err(_) => return,
        }
    }
}

/// Records that the destination took a request: healthy again, every worker resumes.
pub async fn record_success<E: Engine>(engine: &E, deliverer: &Deliverer) {
    let key = health_key(deliverer.name());
    for _ in 0..3 {
        let Ok(current) = engine.state_get(&key).await else { return };
        let Some(current) = current else { return };
        let Ok(health) = serde_json::from_slice::<Health>(&current.value) else { return };
        if !health.failing {
            return;
        }
        let Ok(value) = serde_json::to_vec(&Health::default()) else { return };
        match engine.state_update(&key, value, Some(current.revision)).await {
            Ok(Some(_)) => {
                tracing::info!(destination = deliverer.name(), "destination healthy again");
                return;
            }
            Ok(None) => {}
            Err(_) => return,
        }
    }
}

/// The destination's cached tokens as this worker last read or wrote them.
#[derive(Debug, Default)]
pub struct Tokens {
    revision: Option<u64>,
    values: Vec<(String, Vec<u8>)>,
    /// When the shared value was last read: at most once per [`TOKENS_RELOAD`].
    loaded_at: Option<std::time::Instant>,
}

/// How often a worker looks for tokens another one wrote (a read of the bucket per batch would
/// cost a round trip each).
const TOKENS_RELOAD: Duration = Duration::from_secs(1);

#[derive(Serialize, Deserialize)]
struct TokensValue {
    /// Key → base64 of the value.
    values: std::collections::BTreeMap<String, String>,
}

impl Tokens {
    /// Loads what another worker wrote since this one last looked into `deliverer` (looking at
    /// most once a second).
    pub async fn load<E: Engine>(&mut self, engine: &E, deliverer: &Deliverer) {
        if self.loaded_at.is_some_and(|t| t.elapsed() < TOKENS_RELOAD) {
            return;
        }
        self.loaded_at = Some(std::time::Instant::now());
        let Ok(Some(current)) = engine.state_get(&tokens_key(deliverer.name())).await else { return };
        if self.revision == Some(current.revision) {
            return;
        }
        let Ok(value) = serde_json::from_slice::<TokensValue>(&current.value) else { return };
        let b64 = base64::engine::general_purpose::STANDARD;
        let values: Vec<(String, Vec<u8>)> =
            value.values.into_iter().filter_map(|(k, v)| Some((k, b64.decode(v).ok()?))).collect();
        deliverer.set_state(values.clone());
        self.values = values;
        self.revision = Some(current.revision);
    }

    /// Writes the deliverer's state if its answers changed it (compare-and-set: when another
    /// worker wrote first, its value stands and is loaded before the next batch).
    pub async fn store<E: Engine>(&mut self, engine: &E, deliverer: &Deliverer) {
        let now = deliverer.state();
        if now == self.values {
            return;
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let value = TokensValue { values: now.iter().map(|(k, v)| (k.clone(), b64.encode(v))).collect() };
        let Ok(bytes) = serde_json::to_vec(&value) else { return };
        if let Ok(Some(revision)) = engine.state_update(&tokens_key(deliverer.name()), bytes, self.revision).await {
            self.revision = Some(revision);
        }
        self.values = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_reads_back_and_tolerates_missing_fields() {
        let h = Health { failing: true, reason: "401".into(), failures: 2, next_probe_ms: 5, prober: "w".into() };
        let back: Health = serde_json::from_slice(&serde_json::to_vec(&h).expect("json")).expect("reads");
        assert_eq!(back, h);
        let bare: Health = serde_json::from_str(r#"{"failing":false}"#).expect("reads");
        assert_eq!(bare, Health::default());
    }
}

//! Counters in Prometheus' text format (`/metrics`). Labels are destination names, key names and
//! fixed reasons: never a secret.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// A counter's name and labels.
type Key = (&'static str, Vec<(&'static str, String)>);

/// The relay's counters (one set per process).
#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<Key, u64>>,
}

/// Every counter's name and help line.
const HELP: &[(&str, &str)] = &[
    ("trackway_relay_ingested_total", "Events appended to the log, by write key."),
    (
        "trackway_relay_duplicates_total",
        "Events the log already had (same message id within the window), by write key.",
    ),
    ("trackway_relay_rejected_total", "Requests refused, by reason."),
    ("trackway_relay_delivered_total", "Events delivered, by destination."),
    (
        "trackway_relay_skipped_total",
        "Events a destination had nothing to send for, or was not meant to get, by destination.",
    ),
    ("trackway_relay_retried_total", "Delivery attempts to be retried (naks), by destination."),
    ("trackway_relay_dead_total", "Events dead-lettered, by destination."),
];

impl Metrics {
    /// Adds `n` to counter `name` with `labels`.
    pub fn add(&self, name: &'static str, labels: &[(&'static str, &str)], n: u64) {
        let key = (name, labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect());
        *crate::lock(&self.counters).entry(key).or_default() += n;
    }

    /// One counter's value (0 if never added to).
    pub fn get(&self, name: &'static str, labels: &[(&'static str, &str)]) -> u64 {
        let key = (name, labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect());
        crate::lock(&self.counters).get(&key).copied().unwrap_or(0)
    }

    /// The counters in Prometheus' text format, followed by `extra` (gauges read at scrape time).
    pub fn render(&self, extra: &str) -> String {
        let counters = crate::lock(&self.counters);
        let mut out = String::new();
        for (name, help) in HELP {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for ((n, labels), value) in counters.iter() {
                if n != name {
                    continue;
                }
                let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
                let _ = writeln!(out, "{name}{{{}}} {value}", labels.join(","));
            }
        }
        out.push_str(extra);
        out
    }
}

/// Serves `/metrics` (and `/healthz`) for a worker process on `listener` until `shutdown`.
///
/// # Errors
/// The listener failing.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: std::sync::Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new().route("/healthz", get(|| async { "ok\n" })).route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move { ([(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics.render("")) }
        }),
    );
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

/// A label value escaped for the text format.
pub(crate) fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_labels() {
        let m = Metrics::default();
        m.add("trackway_relay_delivered_total", &[("destination", "a\"b")], 2);
        m.add("trackway_relay_delivered_total", &[("destination", "a\"b")], 3);
        let text = m.render("");
        assert!(text.contains("trackway_relay_delivered_total{destination=\"a\\\"b\"} 5"), "{text}");
        assert!(text.contains("# TYPE trackway_relay_dead_total counter"), "{text}");
    }
}

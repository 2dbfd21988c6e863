//! The real servers the collector imitates, one module per destination, claiming that server's
//! paths.
//!
//! A backend answers a request to one of its paths as the real server would (validation, status
//! codes, bodies, tokens), and decodes its bodies into events for the inspection API. Faults,
//! rules and the script still come first: a backend only replaces the *default* answer.
//! Requests to paths no backend claims are trackway's own JSON destination (label `json`).

use serde_json::Value;

use crate::reply::Reply;

pub(crate) mod umami;

pub use umami::{UmamiMode, UmamiRow};

/// The label of requests and events of trackway's generic JSON destination.
pub(crate) const JSON: &str = "json";

/// The backends of one collector and their settings.
#[derive(Clone, Debug, Default)]
pub(crate) struct Backends {
    pub(crate) umami: umami::UmamiServer,
}

impl Backends {
    pub(crate) fn new(umami_mode: UmamiMode) -> Self {
        Backends { umami: umami::UmamiServer::new(umami_mode) }
    }

    /// Only these Umami website ids exist (`None`: every one).
    pub(crate) fn umami_websites(mut self, websites: Option<Vec<String>>) -> Self {
        self.umami = self.umami.with_websites(websites);
        self
    }

    /// The answer of the backend claiming `method path`, if any.
    pub(crate) fn answer(
        &self,
        method: &http::Method,
        path: &str,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Option<Reply> {
        if method == http::Method::POST && umami::claims(path) {
            return Some(self.umami.answer(path, headers, body));
        }
        None
    }
}

/// The destination a request to `path` is for: `umami` for Umami's paths, else `json`.
pub(crate) fn label(path: &str) -> &'static str {
    if umami::claims(path) { umami::LABEL } else { JSON }
}

/// The events in a request body, as the inspection API and the `--store` file show them.
pub(crate) fn decode(path: &str, body: Value) -> Vec<Value> {
    if umami::claims(path) { umami::decode(body) } else { crate::inspect::events_in(body) }
}

//! Entry points for the fuzz targets in `fuzz/` (the non-default `fuzzing` feature).
//!
//! **Not a stable API**: hidden from the docs, it reaches internals and changes whenever they do.
//! It is kept to thin wrappers so a change inside the crate only has to touch this file, not the
//! fuzz targets.

use crate::UmamiMode;
use crate::backends::{BackendRequest, Backends};

/// The events of a request body to `path`, as the inspection API and the `--store` file show
/// them (what [`RecordedRequest::events`](crate::RecordedRequest::events) answers).
pub fn decode_events(path: &str, body: &[u8]) -> Vec<serde_json::Value> {
    let request = BackendRequest::new("POST", path, body);
    Backends::default().find("POST", path).decode(&request).into_iter().map(|d| d.event).collect()
}

/// The number of events sink mode counts in `body`; `None` when it is not JSON.
pub fn count_events(body: &[u8]) -> Option<u64> {
    crate::sink::count_events(body)
}

/// The status and body a backend answers to `POST path` (`None` when no backend claims `path`).
pub fn backend_answer(
    umami_mode: UmamiMode,
    path: &str,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Option<(u16, Vec<u8>)> {
    let backends = Backends::new(&[], umami_mode, None);
    let method = http::Method::POST;
    let backend = backends.claiming(method.as_str(), path)?;
    let reply = backend.answer(&BackendRequest::from_http(&method, path, None, headers, body))?;
    Some((reply.recorded_status(), reply.body_bytes().to_vec()))
}

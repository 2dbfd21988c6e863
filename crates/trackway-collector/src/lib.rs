//! A local HTTP server that stands in for trackway's destinations.
//!
//! The collector has three jobs:
//!
//! 1. **Test double** for the SDK's integration tests: it listens on `127.0.0.1:0`, records every
//!    request and answers from a script of [`Reply`]s, so a test can inject faults (5xx,
//!    `Retry-After`, slow answers, dropped connections) in a known order.
//! 2. **Sink** for benchmarks ([`CollectorBuilder::sink`]): it only counts requests, events and
//!    bytes, in constant memory, and answers at once (with the real server's success answer on
//!    its paths, e.g. Umami's token and per-item batch answer).
//! 3. **Developer tool**: `GET /` is a live web page of the requests received (before the page
//!    was opened and since), filterable by destination, user and event name, each expandable to
//!    the exact request and the collector's answer, with per-destination counters and the faults
//!    currently injected (which it can change). The page is compiled into the binary.
//!
//! On the real servers' own paths it answers as those servers do: `POST /api/send` and
//! `POST /api/batch` as Umami v3.1 (validation, status codes, bodies, bot check, cache token),
//! or as Umami 2.10, 2.15, 2.17 or 2.18 with [`CollectorBuilder::umami_mode`], down to the fields
//! each release silently drops; [`RunningCollector::umami_stored`] shows what it stored (with the
//! browser, OS and device Umami derives). OpenCDP's gateway (`/v1/persons/…`, `/v1/send/…`,
//! `/v1/health/ping` under any base path) answers 401 for a bad key, 404 for an unknown template,
//! 429 over a rate and `200 {}` otherwise: **all assumed**, since OpenCDP documents none of its
//! answers ([`CollectorBuilder::opencdp_api_keys`], [`CollectorBuilder::opencdp_templates`],
//! [`CollectorBuilder::opencdp_rate_limit`]). Each such server is a [`Backend`]: it claims its
//! requests by method and path, answers them (cheaply in sink mode), decodes their events and
//! labels them; add your own with [`CollectorBuilder::backend`]. What no backend claims is
//! trackway's own JSON destination. Every recorded request and decoded event carries the
//! `destination` it was for (`umami`, `opencdp`, `json`, or your backend's label), and
//! [`RunningCollector::peak_concurrent_requests`] says how many were in flight at once at most.
//!
//! The server runs on its own OS thread with its own tokio runtime, so a test that blocks (even
//! inside `#[tokio::test]`) can never stall it. Dropping the [`RunningCollector`] stops it.
//!
//! [`Faults`] inject failures by count, time window or rate (every Nth request fails or is
//! dropped, an outage for N ms, a rate limit, added latency) before the rules, the script and the
//! default reply; they can be changed while the collector runs, from the process
//! ([`RunningCollector::set_faults`]) or over HTTP.
//!
//! With [`CollectorBuilder::store`] (`--store FILE`) every recorded request and its decoded
//! events also go to a SQLite file, credentials redacted, so a run can be inspected afterwards;
//! a collector started on the same file serves the earlier requests too.
//!
//! **Limits**, in front of every backend and in sink mode too: a body over
//! [`CollectorBuilder::max_body_bytes`] (8 MiB) is answered 413 without being kept, one not
//! complete within [`CollectorBuilder::body_timeout`] (30 s) 408, and the recorded requests keep
//! at most [`CollectorBuilder::max_kept_bytes`] (128 MiB) of bodies in memory, the oldest
//! evicted; [`RunningCollector::limit_stats`] counts all three.
//!
//! Paths under `/_trackway/` are reserved for the collector's own API and are never recorded
//! nor faulted: `GET /_trackway/api/stats` answers the [`SinkStats`] as JSON (plus events per
//! path, requests per status and the limits), `GET /_trackway/api/requests?cursor=&limit=` the
//! recorded requests (paged, credentials redacted),
//! `GET /_trackway/api/events?user=&name=&type=&path=&status=&destination=&limit=` the events
//! decoded from their bodies, and `GET`/`PUT`/`DELETE /_trackway/api/faults` read, replace and clear the
//! faults.
//!
//! ```
//! use trackway_collector::{Collector, Reply};
//!
//! let collector = Collector::builder()
//!     .script([Reply::status(503).retry_after("1")])
//!     .start()?;
//! let client = reqwest::blocking::Client::builder().no_proxy().build().expect("client");
//! let first = client.post(collector.url("/v1/batch")).body("[]").send().expect("send");
//! assert_eq!(first.status().as_u16(), 503);
//! let second = client.post(collector.url("/v1/batch")).body("[]").send().expect("send");
//! assert_eq!(second.status().as_u16(), 200);
//! assert_eq!(collector.requests().len(), 2);
//! # Ok::<(), std::io::Error>(())
//! ```

mod archive;
mod backends;
mod builder;
mod faults;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod inspect;
mod limits;
mod live;
mod recorder;
mod reply;
mod server;
mod sink;
mod state;
mod util;

pub use backends::{Backend, BackendRequest, BloomreachConfig, BloomreachRow, DecodedEvent, UmamiMode, UmamiRow};
pub use builder::{CollectorBuilder, ReservedCollector};
pub use faults::{FaultClock, Faults, InvalidFaults, ManualFaultClock};
pub use limits::{DEFAULT_BODY_TIMEOUT, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_KEPT_BYTES};
pub use recorder::{LimitStats, RecordedRequest, SinkStats};
pub use reply::{Reply, Rule};
pub use server::RunningCollector;

/// Entry point: a namespace for [`Collector::builder`] and [`Collector::start`].
#[derive(Debug, Clone, Copy)]
pub struct Collector;

impl Collector {
    /// A builder for a collector with the defaults: listen on `127.0.0.1:0`, no script, no rules,
    /// answer [`Reply::ok`] to everything, record every request.
    pub fn builder() -> CollectorBuilder {
        CollectorBuilder::default()
    }

    /// Shorthand for `Collector::builder().start()`: a recording collector on `127.0.0.1:0`
    /// answering 200 `{}` to everything.
    pub fn start() -> std::io::Result<RunningCollector> {
        Self::builder().start()
    }
}

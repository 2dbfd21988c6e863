//! Configuring a collector ([`CollectorBuilder`]) and holding a port before serving on it
//! ([`ReservedCollector`]).

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;

use crate::backends::{Backend, UmamiMode};
use crate::faults::{FaultClock, Faults};
use crate::reply::{Reply, Rule};
use crate::server::{self, RunningCollector};
use crate::state::Config;
use crate::util::url_for;

/// Configures a collector; finish with [`start`](Self::start) or [`reserve`](Self::reserve).
#[must_use]
#[derive(Clone, Debug, Default)]
pub struct CollectorBuilder {
    config: Config,
}

impl CollectorBuilder {
    /// Sink mode, for benchmarks: count requests, events, bytes and JSON errors (see
    /// [`SinkStats`](crate::SinkStats)), keep no request, ignore the script and the rules, and
    /// answer at once: a backend's cheap success answer on its paths
    /// ([`Backend::sink_answer`]: Umami's token on `/api/send`, every item processed on
    /// `/api/batch`), the default reply elsewhere (without reading the body). Faults still apply.
    pub fn sink(mut self, on: bool) -> Self {
        self.config.sink = on;
        self
    }

    /// The answer to requests beyond the script, unmatched by any rule and claimed by no
    /// backend (or left to the default by theirs). Default: [`Reply::ok`] (200, `{}`,
    /// `application/json`).
    pub fn default_reply(mut self, reply: Reply) -> Self {
        self.config.default_reply = reply;
        self
    }

    /// Replies answered in order, one per request (appended to any earlier script). Requests
    /// matched by a rule do not consume a script entry.
    pub fn script(mut self, replies: impl IntoIterator<Item = Reply>) -> Self {
        self.config.script.extend(replies);
        self
    }

    /// Adds a rule; rules are checked before the script, in the order added, first match wins.
    pub fn rule(mut self, rule: Rule) -> Self {
        self.config.rules.push(rule);
        self
    }

    /// Faults to inject from the start (see [`Faults`]); they apply before the rules, the
    /// script and the default reply, in sink mode too. [`start`](Self::start) fails with
    /// `InvalidInput` if [`Faults::validate`] refuses them.
    pub fn faults(mut self, faults: Faults) -> Self {
        self.config.faults = faults;
        self
    }

    /// The clock the fault windows (`fail_for_ms`, `rate_limit`) are measured by. Default:
    /// [`FaultClock::system`]; a test passes [`FaultClock::manual`] and moves it by hand.
    pub fn fault_clock(mut self, clock: FaultClock) -> Self {
        self.config.fault_clock = clock;
        self
    }

    /// Also keeps every recorded request, and the events decoded from it, in a SQLite file, so a
    /// run can be inspected afterwards (with `sqlite3`, or by a collector started on the same
    /// file, which serves the earlier requests too). Credentials in headers are redacted in the
    /// file. [`start`](Self::start) fails with `InvalidInput` in sink mode (which keeps nothing)
    /// and if the file cannot be opened.
    pub fn store(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.store = Some(path.into());
        self
    }

    /// Which Umami release `POST /api/send` and `POST /api/batch` behave like. Default:
    /// [`UmamiMode::V3`] (v3.1). The 2.x modes answer and store as those releases did (no
    /// `/api/batch` before 2.17, the fields each drops); see [`UmamiMode`] for the table.
    pub fn umami_mode(mut self, mode: UmamiMode) -> Self {
        self.config.umami_mode = mode;
        self
    }

    /// Adds a server of your own for the collector to imitate (see [`Backend`]). Backends added
    /// here are asked, in the order added, before the built-in ones (Umami), so one may take
    /// over a built-in server's paths; trackway's JSON destination takes what none claims.
    pub fn backend(mut self, backend: impl Backend) -> Self {
        self.config.backends.push(Arc::new(backend));
        self
    }

    /// The Umami website ids the server knows; a hit for another gets the release's answer to
    /// an unknown website (403 on 2.10, 404 on 2.15, 400 "Website not found." from 2.17).
    /// Default: every website id is known.
    pub fn umami_websites<S: Into<String>>(mut self, ids: impl IntoIterator<Item = S>) -> Self {
        self.config.umami_websites = Some(ids.into_iter().map(Into::into).collect());
        self
    }

    /// The largest request body accepted, in bytes. Default:
    /// [`DEFAULT_MAX_BODY_BYTES`](crate::DEFAULT_MAX_BODY_BYTES) (8 MiB). A bigger one is answered
    /// `413 Payload Too Large` (at once when its `Content-Length` says so, else as soon as that
    /// many bytes arrived) without keeping any of it, and counted in
    /// [`LimitStats::too_large`](crate::LimitStats::too_large); the request is recorded with an
    /// empty body. Applies in sink mode and to the collector's own API too.
    /// [`start`](Self::start) fails with `InvalidInput` for 0.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.config.limits.max_body_bytes = bytes;
        self
    }

    /// How many bytes of request and answer bodies the recorded requests may hold in memory.
    /// Default: [`DEFAULT_MAX_KEPT_BYTES`](crate::DEFAULT_MAX_KEPT_BYTES) (128 MiB). Beyond it the
    /// oldest requests are evicted (from [`requests`](RunningCollector::requests), the API, the
    /// events and the live page's replay; not from a [`store`](Self::store) file) and counted in
    /// [`LimitStats`](crate::LimitStats); every counter still includes them.
    pub fn max_kept_bytes(mut self, bytes: usize) -> Self {
        self.config.limits.max_kept_bytes = bytes;
        self
    }

    /// How long a request body may take to arrive, from the end of its head. Default:
    /// [`DEFAULT_BODY_TIMEOUT`](crate::DEFAULT_BODY_TIMEOUT) (30 s). A body not complete by then
    /// (one byte a second, say) is answered `408 Request Timeout`, its connection closed, and
    /// counted in [`LimitStats::timed_out`](crate::LimitStats::timed_out).
    /// [`start`](Self::start) fails with `InvalidInput` for zero.
    pub fn body_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.config.limits.body_timeout = timeout;
        self
    }

    /// The API keys OpenCDP's gateway takes in `Authorization`; another key is answered 401
    /// (an assumed answer: OpenCDP documents none). Default: any non-empty key.
    pub fn opencdp_api_keys<S: Into<String>>(mut self, keys: impl IntoIterator<Item = S>) -> Self {
        self.config.opencdp.api_keys = Some(keys.into_iter().map(Into::into).collect());
        self
    }

    /// The transactional templates OpenCDP's gateway knows (`transactional_message_id`, numbers
    /// as text); a send naming another is answered 404 (assumed). Default: every template.
    pub fn opencdp_templates<S: Into<String>>(mut self, ids: impl IntoIterator<Item = S>) -> Self {
        self.config.opencdp.templates = Some(ids.into_iter().map(Into::into).collect());
        self
    }

    /// Most OpenCDP requests per second; beyond it the gateway answers 429 with `Retry-After: 1`
    /// (assumed). Default: no limit.
    pub fn opencdp_rate_limit(mut self, per_second: u32) -> Self {
        self.config.opencdp.rate_limit = Some(per_second);
        self
    }

    /// The only Customer.io site id and API key the Track API backend takes; other credentials
    /// get `401 {"meta":{"error":"Unauthorized request"}}`. Default: any non-empty pair (a
    /// request without Basic auth is still a 401).
    pub fn customerio_credentials(mut self, site_id: impl Into<String>, api_key: impl Into<String>) -> Self {
        self.config.customerio_credentials = Some((site_id.into(), api_key.into()));
        self
    }

    /// How the Bloomreach server (`/track/v2/projects/{token}/…`) behaves: the project tokens
    /// it knows and a rate past which it answers 429. Default: every token, no limit.
    pub fn bloomreach(mut self, config: crate::BloomreachConfig) -> Self {
        self.config.bloomreach = config;
        self
    }

    /// The address to listen on. Default: `127.0.0.1:0` (a free port chosen by the OS).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.config.listen = addr;
        self
    }

    /// Binds and starts serving on the collector's own thread; returns once the listener is
    /// bound, so connections are accepted from then on.
    pub fn start(self) -> io::Result<RunningCollector> {
        server::spawn(self.config)
    }

    /// Picks a free port now without listening on it, so connections are refused until
    /// [`ReservedCollector::start`]. Useful to test a client against a destination that is down
    /// and then comes up on the same address.
    ///
    /// The port is found by binding a listener and dropping it at once. Nothing holds it in
    /// between, so another process could take it before `start`; `start` then fails with
    /// `AddrInUse`. On a test machine this race is rare, but it is not impossible.
    pub fn reserve(self) -> io::Result<ReservedCollector> {
        let probe = TcpListener::bind(self.config.listen)?;
        let addr = probe.local_addr()?;
        // Never accepted a connection, so dropping it leaves no TIME_WAIT behind; `start` binds
        // with SO_REUSEADDR anyway.
        drop(probe);
        Ok(ReservedCollector { builder: self.listen(addr), addr })
    }
}

/// A collector with a port picked but not listened on yet: connections to it are refused.
#[derive(Debug)]
pub struct ReservedCollector {
    builder: CollectorBuilder,
    addr: SocketAddr,
}

impl ReservedCollector {
    /// The address the collector will listen on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR` + `path`, e.g. `url("/v1/batch")`.
    pub fn url(&self, path: &str) -> String {
        url_for(self.addr, path)
    }

    /// Binds the reserved port and starts serving. Fails with `AddrInUse` if something else
    /// took the port in the meantime (see [`CollectorBuilder::reserve`]).
    pub fn start(self) -> io::Result<RunningCollector> {
        self.builder.start()
    }
}

//! Configuring a collector ([`CollectorBuilder`]) and holding a port before serving on it
//! ([`ReservedCollector`]).

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;

use crate::backends::UmamiMode;
use crate::faults::{FaultClock, Faults};
use crate::reply::{Reply, Rule};
use crate::server::{self, RunningCollector};
use crate::url_for;

/// Configures a collector; finish with [`start`](Self::start) or [`reserve`](Self::reserve).
#[must_use]
#[derive(Clone, Debug)]
pub struct CollectorBuilder {
    pub(crate) sink: bool,
    pub(crate) default_reply: Reply,
    pub(crate) script: Vec<Reply>,
    pub(crate) rules: Vec<Rule>,
    pub(crate) listen: SocketAddr,
    pub(crate) faults: Faults,
    pub(crate) fault_clock: FaultClock,
    pub(crate) store: Option<PathBuf>,
    pub(crate) umami_mode: UmamiMode,
}

impl Default for CollectorBuilder {
    fn default() -> Self {
        Self {
            sink: false,
            default_reply: Reply::ok(),
            script: Vec::new(),
            rules: Vec::new(),
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            faults: Faults::default(),
            fault_clock: FaultClock::system(),
            store: None,
            umami_mode: UmamiMode::V3,
        }
    }
}

impl CollectorBuilder {
    /// Sink mode, for benchmarks: count requests, events, bytes and JSON errors (see
    /// [`SinkStats`](crate::SinkStats)), keep no request, ignore the script and the rules, and
    /// answer the default reply at once.
    pub fn sink(mut self, on: bool) -> Self {
        self.sink = on;
        self
    }

    /// The answer to requests beyond the script and unmatched by any rule. Default:
    /// [`Reply::ok`] (200, `{}`, `application/json`).
    pub fn default_reply(mut self, reply: Reply) -> Self {
        self.default_reply = reply;
        self
    }

    /// Replies answered in order, one per request (appended to any earlier script). Requests
    /// matched by a rule do not consume a script entry.
    pub fn script(mut self, replies: impl IntoIterator<Item = Reply>) -> Self {
        self.script.extend(replies);
        self
    }

    /// Adds a rule; rules are checked before the script, in the order added, first match wins.
    pub fn rule(mut self, rule: Rule) -> Self {
        self.rules.push(rule);
        self
    }

    /// Faults to inject from the start (see [`Faults`]); they apply before the rules, the
    /// script and the default reply, in sink mode too. [`start`](Self::start) fails with
    /// `InvalidInput` if [`Faults::validate`] refuses them.
    pub fn faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// The clock the fault windows (`fail_for_ms`, `rate_limit`) are measured by. Default:
    /// [`FaultClock::system`]; a test passes [`FaultClock::manual`] and moves it by hand.
    pub fn fault_clock(mut self, clock: FaultClock) -> Self {
        self.fault_clock = clock;
        self
    }

    /// Also keeps every recorded request, and the events decoded from it, in a SQLite file, so a
    /// run can be inspected afterwards (with `sqlite3`, or by a collector started on the same
    /// file, which serves the earlier requests too). Credentials in headers are redacted in the
    /// file. [`start`](Self::start) fails with `InvalidInput` in sink mode (which keeps nothing)
    /// and if the file cannot be opened.
    pub fn store(mut self, path: impl Into<PathBuf>) -> Self {
        self.store = Some(path.into());
        self
    }

    /// Which Umami release `POST /api/send` and `POST /api/batch` behave like. Default:
    /// [`UmamiMode::V3`] (v3.1); [`UmamiMode::V2Legacy`] answers 404 on `/api/batch` and a
    /// `text/plain` token on `/api/send`, as servers up to v2.15 did.
    pub fn umami_mode(mut self, mode: UmamiMode) -> Self {
        self.umami_mode = mode;
        self
    }

    /// The address to listen on. Default: `127.0.0.1:0` (a free port chosen by the OS).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Binds and starts serving on the collector's own thread; returns once the listener is
    /// bound, so connections are accepted from then on.
    pub fn start(self) -> io::Result<RunningCollector> {
        server::spawn(self)
    }

    /// Picks a free port now without listening on it, so connections are refused until
    /// [`ReservedCollector::start`]. Useful to test a client against a destination that is down
    /// and then comes up on the same address.
    ///
    /// The port is found by binding a listener and dropping it at once. Nothing holds it in
    /// between, so another process could take it before `start`; `start` then fails with
    /// `AddrInUse`. On a test machine this race is rare, but it is not impossible.
    pub fn reserve(self) -> io::Result<ReservedCollector> {
        let probe = TcpListener::bind(self.listen)?;
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

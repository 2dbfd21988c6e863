//! What a collector is made of: its settings as the builder collects them ([`Config`]), and the
//! state the server thread, the inspection API, the live page and the
//! [`RunningCollector`](crate::RunningCollector) handle share ([`Shared`]).
//!
//! Kept apart from the server so that the modules reading the state (inspection API, live page)
//! and the one serving it do not depend on each other.

use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::archive::{Archive, instant_before};
use crate::backends::opencdp::OpenCdpSettings;
use crate::backends::{Backend, BackendRequest, Backends, UmamiMode};
use crate::faults::{FaultClock, FaultState, Faults, InvalidFaults};
use crate::limits::{Limits, Refused};
use crate::recorder::Recorder;
use crate::reply::{Reply, Rule};
use crate::util::lock;

/// A collector's settings, as [`CollectorBuilder`](crate::CollectorBuilder) collects them.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) sink: bool,
    pub(crate) default_reply: Reply,
    pub(crate) script: Vec<Reply>,
    pub(crate) rules: Vec<Rule>,
    pub(crate) listen: SocketAddr,
    pub(crate) faults: Faults,
    pub(crate) store: Option<PathBuf>,
    pub(crate) umami_mode: UmamiMode,
    /// What the fault windows are measured by.
    pub(crate) fault_clock: FaultClock,
    /// The Umami website ids the server knows (`None`: every one).
    pub(crate) umami_websites: Option<Vec<String>>,
    /// The only Customer.io site id and API key accepted (`None`: any non-empty pair).
    pub(crate) customerio_credentials: Option<(String, String)>,
    /// The user's own backends, asked before the built-in ones, in the order added.
    pub(crate) backends: Vec<Arc<dyn Backend>>,
    /// Body size, body time and memory bounds.
    pub(crate) limits: Limits,
    /// What OpenCDP's gateway knows (keys, templates, rate limit).
    pub(crate) opencdp: OpenCdpSettings,
    /// How the Bloomreach server behaves.
    pub(crate) bloomreach: crate::BloomreachConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            sink: false,
            default_reply: Reply::ok(),
            script: Vec::new(),
            rules: Vec::new(),
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            faults: Faults::default(),
            store: None,
            umami_mode: UmamiMode::V3,
            fault_clock: FaultClock::system(),
            umami_websites: None,
            customerio_credentials: None,
            backends: Vec::new(),
            limits: Limits::default(),
            opencdp: OpenCdpSettings::default(),
            bloomreach: crate::BloomreachConfig::default(),
        }
    }
}

/// State shared between the server thread and the [`RunningCollector`](crate::RunningCollector)
/// handle.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) sink: bool,
    rules: Vec<Rule>,
    script: Mutex<VecDeque<Reply>>,
    default_reply: Mutex<Reply>,
    pub(crate) faults: Mutex<FaultState>,
    pub(crate) recorder: Recorder,
    /// The servers imitated on their own paths (Umami's `/api/send` and `/api/batch`, the
    /// user's), and the JSON destination on the rest.
    pub(crate) backends: Backends,
    /// The `--store` file, if any.
    pub(crate) archive: Option<Archive>,
    /// Body size, body time and memory bounds.
    pub(crate) limits: Limits,
    /// Requests refused by a limit.
    pub(crate) refused: Refused,
    /// Requests being answered now, and the most at once.
    pub(crate) in_flight: InFlight,
    /// The same moment as an `Instant` and as milliseconds since the Unix epoch, to turn a
    /// request's `received_at` into wall-clock time for the inspection API.
    started: Instant,
    started_unix_ms: u64,
}

impl Shared {
    /// The state of a collector configured by `config`: its faults checked, its store opened
    /// and the requests of earlier runs read back from it.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for invalid faults, a zero limit, a store in sink mode, or a store that
    /// cannot be opened.
    pub(crate) fn new(config: Config) -> io::Result<Self> {
        let invalid = |message: String| io::Error::new(io::ErrorKind::InvalidInput, message);
        let limits = config.limits;
        if limits.max_body_bytes == 0 {
            return Err(invalid("max_body_bytes must be at least 1".into()));
        }
        if limits.body_timeout.is_zero() {
            return Err(invalid("body_timeout must be longer than zero".into()));
        }
        let started = Instant::now();
        let faults = FaultState::new(config.faults, config.fault_clock.clone())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let started_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let backends = Backends::new(&config.backends, config.umami_mode, config.umami_websites.clone())
            .with_opencdp(config.opencdp.clone())
            .with_customerio_credentials(config.customerio_credentials.clone())
            .with_bloomreach(config.bloomreach.clone());
        let (archive, earlier) = match &config.store {
            Some(_) if config.sink => return Err(invalid("a collector in sink mode keeps nothing to store".into())),
            Some(path) => {
                let (archive, earlier) = Archive::open(path, &backends).map_err(invalid)?;
                (Some(archive), earlier)
            }
            None => (None, Vec::new()),
        };
        let recorder = Recorder::new(limits.max_kept_bytes);
        for (mut request, received_at_ms) in earlier {
            request.received_at =
                instant_before(started, Duration::from_millis(started_unix_ms.saturating_sub(received_at_ms)));
            let path = request.path.clone();
            let body = request.body.clone();
            recorder.observe(&path, request.status, &body, Some(request));
        }
        Ok(Shared {
            sink: config.sink,
            rules: config.rules,
            script: Mutex::new(config.script.into()),
            default_reply: Mutex::new(config.default_reply),
            faults: Mutex::new(faults),
            recorder,
            in_flight: InFlight::default(),
            backends,
            archive,
            limits,
            refused: Refused::default(),
            started,
            started_unix_ms,
        })
    }

    /// Replaces the faults and restarts their counters and windows.
    pub(crate) fn set_faults(&self, faults: Faults) -> Result<(), InvalidFaults> {
        lock(&self.faults).replace(faults)
    }

    /// The current faults.
    pub(crate) fn faults(&self) -> Faults {
        lock(&self.faults).faults().clone()
    }

    /// Stops injecting faults.
    pub(crate) fn clear_faults(&self) {
        lock(&self.faults).clear();
    }

    /// Appends a reply to the script.
    pub(crate) fn push_reply(&self, reply: Reply) {
        lock(&self.script).push_back(reply);
    }

    /// Replaces the answer to requests beyond the script, unmatched by rules and left to the
    /// default by their backend.
    pub(crate) fn set_default_reply(&self, reply: Reply) {
        *lock(&self.default_reply) = reply;
    }

    /// `at` as milliseconds since the Unix epoch (by the wall clock when the collector started).
    pub(crate) fn unix_ms(&self, at: Instant) -> u64 {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        match at.checked_duration_since(self.started) {
            Some(since_start) => self.started_unix_ms.saturating_add(ms(since_start)),
            // A request of an earlier run, read back from the store.
            None => self.started_unix_ms.saturating_sub(ms(self.started.saturating_duration_since(at))),
        }
    }

    /// Rules first (first match wins), then the next script entry, then the backend of the
    /// request (e.g. Umami's), then the default.
    pub(crate) fn choose(&self, backend: &dyn Backend, request: &BackendRequest<'_>) -> Reply {
        if let Some(reply) = self.rules.iter().find_map(|r| r.reply_for(request.path(), request.body())) {
            return reply.clone();
        }
        if let Some(reply) = lock(&self.script).pop_front() {
            return reply;
        }
        backend.answer(request).unwrap_or_else(|| self.default_reply())
    }

    /// The answer in sink mode when no fault answered: the backend's cheap success answer, or
    /// the default (the JSON destination's, without reading the body).
    pub(crate) fn sink_answer(&self, backend: &dyn Backend, request: &BackendRequest<'_>) -> Reply {
        backend.sink_answer(request).unwrap_or_else(|| self.default_reply())
    }

    fn default_reply(&self) -> Reply {
        lock(&self.default_reply).clone()
    }
}

/// Requests being answered at once: now, and the most so far.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    now: std::sync::atomic::AtomicUsize,
    peak: std::sync::atomic::AtomicUsize,
}

/// One request being answered; leaving it (dropped) ends it.
#[derive(Debug)]
pub(crate) struct Entered<'a>(&'a InFlight);

impl InFlight {
    /// A request starts being answered.
    pub(crate) fn enter(&self) -> Entered<'_> {
        use std::sync::atomic::Ordering;
        let now = self.now.fetch_add(1, Ordering::AcqRel) + 1;
        self.peak.fetch_max(now, Ordering::AcqRel);
        Entered(self)
    }

    /// The most requests answered at once so far.
    pub(crate) fn peak(&self) -> usize {
        self.peak.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

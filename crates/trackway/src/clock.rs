//! The one injectable clock: event timestamps, backoff, age expiry and sessions all read it, so
//! time-based rules are tested by advancing a manual clock instead of sleeping (`ManualClock`,
//! with the `testing` feature).

use std::fmt;
#[cfg(feature = "testing")]
use std::sync::Arc;
#[cfg(feature = "testing")]
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

#[cfg(feature = "testing")]
use tokio::sync::Notify;
use trackway_wire::Timestamp;

/// The clock a client reads: [`Clock::system`] by default; `Clock::manual` in tests (with the
/// `testing` feature).
#[derive(Clone)]
pub struct Clock(Source);

#[derive(Clone)]
enum Source {
    System {
        origin: Instant,
    },
    #[cfg(feature = "testing")]
    Manual(Arc<ManualInner>),
}

impl Clock {
    /// The system clock: wall time for timestamps, a monotonic clock for delays.
    pub fn system() -> Self {
        Clock(Source::System { origin: Instant::now() })
    }

    /// A clock that only moves when the returned [`ManualClock`] is advanced.
    #[cfg(feature = "testing")]
    #[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
    pub fn manual(start: Timestamp) -> (Clock, ManualClock) {
        let inner = Arc::new(ManualInner {
            millis: AtomicI64::new(start.unix_millis()),
            start: start.unix_millis(),
            changed: Notify::new(),
        });
        (Clock(Source::Manual(inner.clone())), ManualClock(inner))
    }

    /// Wall-clock time now (UTC).
    pub fn now(&self) -> Timestamp {
        match &self.0 {
            Source::System { .. } => Timestamp::now(),
            #[cfg(feature = "testing")]
            Source::Manual(m) => Timestamp::from_unix_millis(m.millis.load(Ordering::Acquire)),
        }
    }

    /// Time elapsed since the clock was created; never goes backwards (used for deadlines).
    pub(crate) fn elapsed(&self) -> Duration {
        match &self.0 {
            Source::System { origin } => origin.elapsed(),
            #[cfg(feature = "testing")]
            Source::Manual(m) => {
                Duration::from_millis(u64::try_from(m.millis.load(Ordering::Acquire) - m.start).unwrap_or(0))
            }
        }
    }

    /// How long to really sleep before `deadline` (an [`elapsed`](Self::elapsed) value) is reached,
    /// or `None` for a manual clock, which is woken by [`ManualClock::advance`] instead.
    pub(crate) fn real_wait(&self, deadline: Duration) -> Option<Duration> {
        match &self.0 {
            Source::System { origin } => Some(deadline.saturating_sub(origin.elapsed())),
            #[cfg(feature = "testing")]
            Source::Manual(_) => None,
        }
    }

    /// Resolves when a manual clock is advanced; never for the system clock.
    pub(crate) async fn changed(&self) {
        match &self.0 {
            Source::System { .. } => std::future::pending().await,
            #[cfg(feature = "testing")]
            Source::Manual(m) => m.changed.notified().await,
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Source::System { .. } => f.write_str("Clock::System"),
            #[cfg(feature = "testing")]
            Source::Manual(m) => {
                write!(f, "Clock::Manual({})", Timestamp::from_unix_millis(m.millis.load(Ordering::Acquire)))
            }
        }
    }
}

#[cfg(feature = "testing")]
struct ManualInner {
    millis: AtomicI64,
    start: i64,
    changed: Notify,
}

/// The handle that moves a manual [`Clock`]. Cloning it shares the same time.
///
/// ```
/// use std::time::Duration;
/// use trackway::{Clock, Timestamp};
/// let (clock, hand) = Clock::manual(Timestamp::from_unix_millis(0));
/// hand.advance(Duration::from_secs(61));
/// assert_eq!(clock.now().unix_millis(), 61_000);
/// ```
#[derive(Clone)]
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub struct ManualClock(Arc<ManualInner>);

#[cfg(feature = "testing")]
impl ManualClock {
    /// Moves the clock forward by `d` and wakes anything waiting on a deadline.
    pub fn advance(&self, d: Duration) {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        self.0.millis.fetch_add(ms, Ordering::AcqRel);
        self.0.changed.notify_waiters();
        // A waiter that is between "check deadline" and "await notified" would miss
        // notify_waiters; the stored permit of notify_one covers that window.
        self.0.changed.notify_one();
    }

    /// The current time of the clock.
    pub fn now(&self) -> Timestamp {
        Timestamp::from_unix_millis(self.0.millis.load(Ordering::Acquire))
    }
}

#[cfg(feature = "testing")]
impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ManualClock({})", self.now())
    }
}

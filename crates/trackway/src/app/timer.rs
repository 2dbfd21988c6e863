//! The background session timer: with automatic sessions, a session whose app stays in the
//! background for the timeout is ended then (at the time the app left), not only when the app
//! comes back or starts again. A long-lived desktop app minimized for hours would otherwise send
//! its `session_end` hours late.
//!
//! One thread, started on the first `app_background()`, parked while no deadline is set. It holds
//! the client weakly: once every handle is gone it exits.

use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use trackway_wire::Timestamp;

use crate::client::{Inner, Shared, lock};
use crate::policy::MANUAL_CLOCK_POLL;

/// The deadline and the thread that waits for it.
#[derive(Debug, Default)]
pub(crate) struct SessionTimer {
    state: Mutex<TimerState>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct TimerState {
    /// When the backgrounded session times out.
    deadline: Option<Timestamp>,
    running: bool,
    /// Times the thread has looked at the clock and acted on what it saw (the `testing` hook
    /// [`Client::session_timer_checks`](crate::Client::session_timer_checks) reads it).
    checks: u64,
}

impl SessionTimer {
    /// Arms the timer for `deadline`, starting the thread the first time.
    pub(crate) fn arm(&self, deadline: Timestamp, client: Weak<Inner>, shared: &Arc<Shared>) {
        let mut state = lock(&self.state);
        state.deadline = Some(deadline);
        if !state.running {
            let shared = Arc::clone(shared);
            let spawned =
                std::thread::Builder::new().name("trackway-session-timer".into()).spawn(move || run(&shared, &client));
            // Without the thread the session still ends on the next foreground or start.
            state.running = spawned.is_ok();
        }
        self.wake.notify_all();
    }

    /// Disarms the timer (the app came back, or the session ended another way).
    pub(crate) fn disarm(&self) {
        lock(&self.state).deadline = None;
        self.wake.notify_all();
    }

    /// Wakes the thread so it sees that the client is closed.
    pub(crate) fn wake(&self) {
        self.wake.notify_all();
    }
}

fn run(shared: &Arc<Shared>, client: &Weak<Inner>) {
    let timer = &shared.session_timer;
    let mut state = lock(&timer.state);
    loop {
        if shared.closed.load(std::sync::atomic::Ordering::Acquire) {
            state.running = false;
            return;
        }
        let Some(deadline) = state.deadline else {
            state = timer.wake.wait(state).unwrap_or_else(|e| e.into_inner());
            continue;
        };
        let now = shared.pipe.clock.now();
        if now >= deadline {
            state.deadline = None;
            drop(state);
            let Some(inner) = client.upgrade() else {
                lock(&timer.state).running = false;
                return;
            };
            let client = crate::Client { inner };
            if let Err(e) = client.end_idle_session() {
                tracing::warn!(error = %e, "trackway: could not end the session that timed out in the background");
            }
            // If this was the last handle, dropping it here shuts the client down (on this
            // thread, which is not the worker: no deadlock).
            drop(client);
            state = lock(&timer.state);
            state.checks += 1;
            continue;
        }
        state.checks += 1;
        let wait = match shared.pipe.clock.real_wait(Duration::ZERO) {
            Some(_) => deadline.saturating_duration_since(now),
            None => MANUAL_CLOCK_POLL,
        };
        state = timer.wake.wait_timeout(state, wait).map_or_else(|e| e.into_inner().0, |(s, _)| s);
    }
}

#[cfg(feature = "testing")]
impl crate::Client {
    /// Test hook: how many times the background session timer has read the clock and acted on
    /// it. Once it has grown by two after a manual clock was advanced, the timer has seen the
    /// new time (the first increment may be of a check that read the clock just before).
    pub fn session_timer_checks(&self) -> u64 {
        lock(&self.inner.shared.session_timer.state).checks
    }
}

//! What the collector's integration tests share: a watchdog and an HTTP client.
#![allow(dead_code, reason = "each test binary uses part of this module")]

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use reqwest::blocking::Client;

/// Runs `test` on its own thread and fails if it has not finished within `limit`, so a hang
/// fails fast instead of eating the CI time.
pub(crate) fn watchdog(limit: Duration, test: impl FnOnce() + Send + 'static) {
    let (done_tx, done_rx) = mpsc::channel();
    let handle = thread::spawn(move || {
        test();
        let _ = done_tx.send(());
    });
    match done_rx.recv_timeout(limit) {
        Ok(()) => handle.join().expect("test thread"),
        // The test panicked (its sender was dropped): re-raise its panic here.
        Err(mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("test finished without reporting"),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("test still running after {limit:?}"),
    }
}

/// A blocking HTTP client for the loopback collector: no proxy, a 10 s timeout.
pub(crate) fn client() -> Client {
    Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().expect("reqwest client")
}

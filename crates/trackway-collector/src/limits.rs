//! What one client can make the collector hold: the size of a request body (413 beyond it, as
//! the real servers answer), how long its body may take to arrive (408 after that, so a body
//! trickled one byte at a time cannot hold a connection open forever), and, in the recorder,
//! how many bytes of bodies stay in memory.
//!
//! These apply to every request, whichever backend claims it, in sink mode too, and to the
//! collector's own API: they live here, in front of the backends, not in each one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http::header::CONTENT_LENGTH;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tokio::time::Instant;

/// Default [`CollectorBuilder::max_body_bytes`](crate::CollectorBuilder::max_body_bytes): 8 MiB,
/// well above every destination's default batch (512 KiB) and the real servers' own limits (about
/// 1 MB), so a legitimate batch is never refused, while a runaway client cannot fill the memory.
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Default [`CollectorBuilder::max_kept_bytes`](crate::CollectorBuilder::max_kept_bytes): 128 MiB
/// of request and answer bodies kept in memory (about 400 000 events of a typical size).
pub const DEFAULT_MAX_KEPT_BYTES: usize = 128 * 1024 * 1024;

/// Default [`CollectorBuilder::body_timeout`](crate::CollectorBuilder::body_timeout): 30 s for a
/// whole body, the same as hyper's default for the request head.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The limits of one collector, as the builder sets them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) max_body_bytes: usize,
    pub(crate) max_kept_bytes: usize,
    pub(crate) body_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_kept_bytes: DEFAULT_MAX_KEPT_BYTES,
            body_timeout: DEFAULT_BODY_TIMEOUT,
        }
    }
}

/// How reading a request body ended.
#[derive(Debug)]
pub(crate) enum BodyRead {
    /// All of it, within the limits.
    Complete(Bytes),
    /// Over `max_body_bytes` (by its `Content-Length`, or once that many bytes had arrived).
    TooLarge,
    /// Not complete within `body_timeout`.
    TimedOut,
    /// The connection failed while reading.
    Failed(hyper::Error),
}

/// The requests refused by a limit, for [`LimitStats`](crate::LimitStats).
#[derive(Debug, Default)]
pub(crate) struct Refused {
    too_large: AtomicU64,
    timed_out: AtomicU64,
}

impl Refused {
    /// Counts one refusal (nothing for a complete or failed read).
    pub(crate) fn count(&self, read: &BodyRead) {
        let counter = match read {
            BodyRead::TooLarge => &self.too_large,
            BodyRead::TimedOut => &self.timed_out,
            BodyRead::Complete(_) | BodyRead::Failed(_) => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// (too large, timed out) so far.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (self.too_large.load(Ordering::Relaxed), self.timed_out.load(Ordering::Relaxed))
    }
}

/// Reads `body` within `limits`. A body refused as too large is drained (read and thrown away,
/// until the deadline) on a task of its own, so the client reads the 413 instead of a connection
/// reset; a body that timed out is not (it is the slow client the timeout is for).
pub(crate) async fn read_body(mut body: Incoming, headers: &HeaderMap, limits: Limits) -> BodyRead {
    let deadline = Instant::now() + limits.body_timeout;
    let declared = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes as u64) {
        tokio::spawn(drain(body, deadline));
        return BodyRead::TooLarge;
    }
    let mut collected = BytesMut::new();
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_elapsed) => return BodyRead::TimedOut,
            Ok(None) => return BodyRead::Complete(collected.freeze()),
            Ok(Some(Err(e))) => return BodyRead::Failed(e),
            Ok(Some(Ok(frame))) => frame,
        };
        // Trailers carry no body bytes.
        let Ok(data) = frame.into_data() else { continue };
        if collected.len() + data.len() > limits.max_body_bytes {
            tokio::spawn(drain(body, deadline));
            return BodyRead::TooLarge;
        }
        collected.extend_from_slice(&data);
    }
}

/// Reads and discards the rest of a refused body until it ends or `deadline` passes.
async fn drain(mut body: Incoming, deadline: Instant) {
    while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, body.frame()).await {}
}

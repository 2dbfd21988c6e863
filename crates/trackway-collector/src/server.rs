//! The server: its thread and runtime, the accept loop, the per-request service, and the
//! [`RunningCollector`] handle that controls it.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;

use crate::backends::BackendRequest;
use crate::faults::{Faults, InvalidFaults};
use crate::inspect;
use crate::limits::{self, BodyRead};
use crate::live;
use crate::recorder::{RecordedRequest, SinkStats};
use crate::reply::{CloseConnection, Reply};
use crate::state::{Config, Shared};
use crate::util::{lock, url_for};

/// A serving collector. Dropping it (or calling [`shutdown`](Self::shutdown)) stops the server,
/// closes every open connection, and joins the server thread.
pub struct RunningCollector {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RunningCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningCollector")
            .field("addr", &self.addr)
            .field("sink", &self.shared.sink)
            .field("request_count", &self.request_count())
            .finish_non_exhaustive()
    }
}

impl RunningCollector {
    /// What the Umami backend stored so far, one row per hit, as its release stores it: the
    /// fields a 2.x release drops are `None` (see [`UmamiMode`](crate::UmamiMode)).
    pub fn umami_stored(&self) -> Vec<crate::UmamiRow> {
        self.shared.backends.umami.stored()
    }

    /// Customer.io events answered as duplicates so far (their `id` was seen before: answered
    /// 200 and not stored, as Customer.io does).
    pub fn customerio_duplicates(&self) -> u64 {
        self.shared.backends.customerio.duplicates()
    }

    /// Customer.io operations stored so far (people, events, devices, deletes), duplicates not
    /// included.
    pub fn customerio_stored(&self) -> u64 {
        self.shared.backends.customerio.stored()
    }

    /// The commands the Bloomreach server accepted (events and customer updates, alone or in
    /// batches), in the order received, with their project token.
    pub fn bloomreach_stored(&self) -> Vec<crate::BloomreachRow> {
        self.shared.backends.bloomreach.stored()
    }

    /// The address the collector listens on (with the real port when `:0` was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR` + `path`, e.g. `url("/v1/batch")` → `http://127.0.0.1:PORT/v1/batch`.
    pub fn url(&self, path: &str) -> String {
        url_for(self.addr, path)
    }

    /// The requests kept in memory, in arrival order: every one received so far, unless the
    /// oldest were evicted to stay within
    /// [`max_kept_bytes`](crate::CollectorBuilder::max_kept_bytes) (see
    /// [`limit_stats`](Self::limit_stats)). Always empty in sink mode. Requests to the
    /// inspection API under `/_trackway/` are not included.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.recorder.requests()
    }

    /// The kept requests whose [`seq`](RecordedRequest::seq) is `seq` or more, in arrival order:
    /// what arrived since a reader last looked, without copying the earlier ones. A reader that
    /// fell behind the eviction gets the oldest kept request first (its `seq` tells how many it
    /// missed).
    pub fn requests_since(&self, seq: u64) -> Vec<RecordedRequest> {
        self.shared.recorder.requests_since(seq).requests
    }

    /// What the limits did so far: requests and bytes kept in memory and evicted, bodies refused
    /// as too large (413) or too slow (408).
    pub fn limit_stats(&self) -> crate::LimitStats {
        let (too_large, timed_out) = self.shared.refused.counts();
        self.shared.recorder.limit_stats(too_large, timed_out)
    }

    /// How many requests were received so far, in both modes.
    pub fn request_count(&self) -> usize {
        usize::try_from(self.shared.recorder.count()).unwrap_or(usize::MAX)
    }

    /// The most requests that were being answered at once so far (from the moment a request
    /// has fully arrived until its response is written, [`Reply::delay`] and fault latency
    /// included; not the inspection API's). A client's concurrency limit shows here.
    pub fn peak_concurrent_requests(&self) -> usize {
        self.shared.in_flight.peak()
    }

    /// Appends a reply to the script while the collector runs.
    pub fn push_reply(&self, reply: Reply) {
        self.shared.push_reply(reply);
    }

    /// Replaces the answer to requests beyond the script, unmatched by rules and left to the
    /// default by their backend (see [`CollectorBuilder::default_reply`](crate::CollectorBuilder::default_reply)).
    pub fn set_default_reply(&self, reply: Reply) {
        self.shared.set_default_reply(reply);
    }

    /// Replaces the faults injected from now on (see [`Faults`]); counting for `fail_every` and
    /// `close_every` and the `fail_for_ms` and `rate_limit` windows restart now.
    ///
    /// # Errors
    ///
    /// [`InvalidFaults`] if [`Faults::validate`] refuses them; the current faults are kept.
    pub fn set_faults(&self, faults: Faults) -> Result<(), InvalidFaults> {
        self.shared.set_faults(faults)
    }

    /// The faults currently injected ([`Faults::default`] if none).
    pub fn faults(&self) -> Faults {
        self.shared.faults()
    }

    /// Stops injecting faults; the same as `set_faults(Faults::default())`.
    pub fn clear_faults(&self) {
        self.shared.clear_faults();
    }

    /// Requests, events, bytes and JSON errors counted so far (in both modes).
    pub fn sink_stats(&self) -> SinkStats {
        self.shared.recorder.stats()
    }

    /// Blocks until [`request_count`](Self::request_count) `>= n` or `timeout` passed; returns
    /// whether the count was reached. A request is counted as soon as it has fully arrived and
    /// its reply is chosen, before any [`Reply::delay`] and before the response is written.
    pub fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        self.shared.recorder.wait_for(n as u64, timeout)
    }

    /// Stops the server and waits for its thread; the same as dropping the handle.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for RunningCollector {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            // Err only if the server thread has already gone, which is what we want anyway.
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            // Never panic in Drop: a panicked server thread is reported, not propagated.
            if thread.join().is_err() {
                tracing::error!("trackway-collector server thread panicked");
            }
        }
        if let Some(archive) = &self.shared.archive {
            archive.close();
        }
    }
}

/// Starts the server thread and waits until it has bound its listener (or failed to).
pub(crate) fn spawn(config: Config) -> io::Result<RunningCollector> {
    let listen = config.listen;
    let shared = Arc::new(Shared::new(config)?);
    let (ready_tx, ready_rx) = mpsc::sync_channel::<io::Result<SocketAddr>>(1);
    let (stop_tx, stop_rx) = oneshot::channel();
    let server_shared = Arc::clone(&shared);

    let thread = std::thread::Builder::new().name("trackway-collector".into()).spawn(move || {
        // The server's own runtime, on its own thread: a test that blocks its thread (even
        // inside `#[tokio::test]`) cannot stall the collector it is talking to.
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        runtime.block_on(async move {
            // The listener must be created inside the runtime: it registers with its reactor.
            let listener = match bind(listen) {
                Ok(listener) => listener,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            match listener.local_addr() {
                Ok(addr) => {
                    let _ = ready_tx.send(Ok(addr));
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            }
            accept_loop(listener, server_shared, stop_rx).await;
        });
        // Dropping the runtime here drops every connection task still running (including
        // ones sleeping in a `Reply::delay`), which closes their sockets: shutdown is prompt.
        drop(runtime);
    })?;

    match ready_rx.recv() {
        Ok(Ok(addr)) => Ok(RunningCollector { addr, shared, stop: Some(stop_tx), thread: Some(thread) }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err(io::Error::other("trackway-collector server thread exited before binding"))
        }
    }
}

/// Binds with SO_REUSEADDR so a port released moments ago (see
/// [`CollectorBuilder::reserve`](crate::CollectorBuilder::reserve)) can be bound again even with
/// connections of an earlier server still in TIME_WAIT.
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    loop {
        tokio::select! {
            // A send or a dropped sender both mean stop.
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    tokio::spawn(serve_connection(stream, Arc::clone(&shared)));
                }
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning on the error.
                    tracing::warn!(error = %e, "trackway-collector: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    // Small request/response exchanges: don't let Nagle hold back the answers.
    let _ = stream.set_nodelay(true);
    // The live page and its stream first (they answer streaming bodies), then everything else.
    let service = service_fn(move |request| live::route(Arc::clone(&shared), request, handle));
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(e) = served {
        // Includes the connections we close on purpose for `Reply::close_connection`.
        tracing::debug!(error = %e, "trackway-collector: connection ended with an error");
    }
}

/// Answers one request. An `Err` makes hyper drop the connection without writing a response.
async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, CloseConnection> {
    let (parts, body) = request.into_parts();
    let read = limits::read_body(body, &parts.headers, shared.limits).await;
    shared.refused.count(&read);
    let (body, refused) = match read {
        BodyRead::Complete(body) => (body, None),
        BodyRead::TooLarge => (Bytes::new(), Some(limits_reply(&shared, StatusCode::PAYLOAD_TOO_LARGE))),
        BodyRead::TimedOut => (Bytes::new(), Some(limits_reply(&shared, StatusCode::REQUEST_TIMEOUT))),
        BodyRead::Failed(e) => {
            tracing::debug!(error = %e, "trackway-collector: could not read a request body");
            return Err(CloseConnection);
        }
    };
    let received_at = Instant::now();
    let path = parts.uri.path();

    if inspect::is_inspection(path) {
        if let Some(reply) = refused {
            return reply.respond().await;
        }
        return Ok(inspect::answer(&shared, &parts.method, path, parts.uri.query(), &body));
    }

    // Counted until the response is written (the delay included): what a client sees in flight.
    let _in_flight = shared.in_flight.enter();
    // A refused body comes first (there is nothing to answer about), then the faults: a
    // faulted request consumes no script entry.
    let decision = lock(&shared.faults).decide();
    // Asked once: the same backend answers, labels and (later) decodes the request.
    let backend = shared.backends.find(parts.method.as_str(), path);
    let request = BackendRequest::from_http(&parts.method, path, parts.uri.query(), &parts.headers, &body);
    let injected = refused.or_else(|| decision.reply(&request));
    let reply = if shared.sink {
        // Benchmark path: count and forget; no script, no rules.
        let reply = injected.unwrap_or_else(|| shared.sink_answer(backend.as_ref(), &request));
        shared.recorder.observe(path, reply.recorded_status(), &body, None);
        reply
    } else {
        let reply = injected.unwrap_or_else(|| shared.choose(backend.as_ref(), &request));
        let recorded = RecordedRequest {
            // Numbered by the recorder.
            seq: 0,
            method: parts.method.as_str().to_owned(),
            path: path.to_owned(),
            query: parts.uri.query().map(str::to_owned),
            headers: parts
                .headers
                .iter()
                .map(|(name, value)| {
                    let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                    (name.as_str().to_owned(), value)
                })
                .collect(),
            body: body.clone(),
            received_at,
            status: reply.recorded_status(),
            answer_headers: reply.recorded_headers(),
            answer_body: reply.recorded_body(),
            destination: backend.label().to_owned(),
            backend: Arc::clone(backend),
        };
        // Recorded before the delay and before closing, so a test waiting for the request sees
        // it even if the client gives up.
        if let Some(archive) = &shared.archive {
            archive.keep(&recorded, shared.unix_ms(received_at));
        }
        shared.recorder.observe(path, recorded.status, &body, Some(recorded));
        reply
    };
    reply.add_delay(decision.latency).respond().await
}

/// The answer to a body refused by a limit: the status, a JSON body naming the limit, and
/// `Connection: close` (the rest of the body is never read, so the connection cannot be reused).
fn limits_reply(shared: &Shared, status: StatusCode) -> Reply {
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        format!("request body over {} bytes, the collector's limit (max_body_bytes)", shared.limits.max_body_bytes)
    } else {
        format!("request body not complete within {:?} (body_timeout)", shared.limits.body_timeout)
    };
    Reply::status(status.as_u16()).json(serde_json::json!({ "error": message })).header("connection", "close")
}

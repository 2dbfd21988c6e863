//! Direct calls: operations a destination offers besides events (OpenCDP's transactional email,
//! push and SMS, a `ping`), sent at once and answered to the caller.
//!
//! A direct call is **not an event**: it is never queued, stored or batched, and it is **never
//! retried once the request may have reached the server** (a retry could send a second email).
//! Only a failure that says nothing was sent (connection refused, DNS, TLS, connect timeout) is
//! tried again, at most [`MAX_NOT_SENT_RETRIES`] times, within the call's timeout. Calls go out
//! with the destination's own HTTP options (timeouts, headers, proxy, CA, redirects, fallback base
//! URLs on "nothing was sent" only), on the client's worker runtime, so they work the same from
//! sync code ([`Direct::call_blocking`]), from any async runtime and from a current-thread
//! runtime ([`Direct::call`] never blocks the caller's thread). They do not take the event lane's
//! in-flight slots; each destination bounds its own direct calls
//! ([`Destination::direct_concurrency`]).
//!
//! A destination offers calls by implementing [`DirectCall`] for request types of its own; a user
//! reaches them through the typed handle [`Client::direct`].
//!
//! ```
//! use trackway::Client;
//! use trackway::destination::{Destination, DestinationState, Encoded, EventRecord, Request, Response};
//! use trackway::direct::{DirectCall, DirectError};
//! use trackway::store::MemoryStore;
//!
//! #[derive(Debug)]
//! struct Cdp { base: String }
//!
//! impl Destination for Cdp {
//!     fn name(&self) -> &str { "cdp" }
//!     fn encode(&self, _: &[EventRecord], _: &DestinationState, _: trackway::Timestamp) -> Encoded {
//!         Encoded::default()
//!     }
//! }
//!
//! /// `GET /v1/status`: is the server there? (The OpenCDP destination's own calls are in
//! /// `destination::opencdp`.)
//! struct Ping;
//!
//! impl DirectCall<Cdp> for Ping {
//!     type Output = u16;
//!     fn request(&self, cdp: &Cdp) -> Result<Request, DirectError> {
//!         Ok(Request::get(&format!("{}/v1/status", cdp.base)))
//!     }
//!     fn read(self, _: &Cdp, response: Response) -> Result<u16, DirectError> {
//!         DirectError::check_status(&response)?;
//!         Ok(response.status.as_u16())
//!     }
//! }
//!
//! # let collector = trackway_collector::Collector::start().unwrap();
//! let client = Client::builder()
//!     .destination(Cdp { base: collector.url("") })
//!     .store(MemoryStore::new())
//!     .build()?;
//! let cdp = client.direct::<Cdp>()?;
//! assert_eq!(cdp.call_blocking(Ping)?, 200);
//! assert_eq!(client.stats().destinations[0].direct.ok, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`Client::direct`]: crate::Client::direct
//! [`Destination::direct_concurrency`]: crate::destination::Destination::direct_concurrency

use std::any::Any;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::Client;
use crate::destination::{Destination, Request, Response, TransportError, TransportErrorKind};
use crate::error::Error;
use crate::pipeline::Transport;
use crate::stats::{DestinationCounters, bump};

/// How many times a call that sent nothing is tried again (within its timeout).
pub const MAX_NOT_SENT_RETRIES: u32 = 2;

/// The pause before the first retry of a call that sent nothing; doubled for the second.
const NOT_SENT_PAUSE: Duration = Duration::from_millis(100);

/// An operation of destination `D` that is not an event: sent at once by [`Direct::call`] and
/// answered with `Output`.
pub trait DirectCall<D: Destination>: Send + 'static {
    /// The typed answer.
    type Output: Send + 'static;

    /// Builds the request. Validate here: an error returned here is the call's error and nothing
    /// is sent.
    ///
    /// # Errors
    /// [`DirectError::Invalid`] with a message the caller can act on.
    fn request(&self, destination: &D) -> Result<Request, DirectError>;

    /// Reads the server's answer (any status: use [`DirectError::check_status`] for the usual
    /// rule that only 2xx is a success).
    ///
    /// # Errors
    /// [`DirectError::Status`] for an error status, [`DirectError::Answer`] for an answer that
    /// does not read as expected.
    fn read(self, destination: &D, response: Response) -> Result<Self::Output, DirectError>;
}

/// Why a direct call did not succeed. Only [`NotSent`](Self::NotSent) and
/// [`Invalid`](Self::Invalid) guarantee that the server never saw it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DirectError {
    /// The call was refused before anything was sent.
    #[error("{0}")]
    Invalid(String),
    /// Nothing reached the server, after the retries allowed.
    #[error("not sent: {0}")]
    NotSent(TransportError),
    /// The connection failed after the request may have reached the server: it was not retried
    /// (the server may have acted on it).
    #[error("may have been sent (not retried): {0}")]
    MaybeSent(TransportError),
    /// The server answered with an error status.
    #[error("the server answered {status}: {body}")]
    Status {
        /// The status code.
        status: u16,
        /// The body's first KiB, as text.
        body: String,
    },
    /// The server's answer could not be read as the call expects.
    #[error("unexpected answer: {0}")]
    Answer(String),
    /// The call's timeout passed; the request may have been sent.
    #[error("no answer within {0:?} (the request may have been sent)")]
    TimedOut(Duration),
    /// The client is shut down.
    #[error("the client is shut down")]
    ShutDown,
    /// The delivery worker stopped unexpectedly (it panicked; see the log).
    #[error("the delivery worker stopped unexpectedly (it panicked; see the log)")]
    WorkerStopped,
}

impl DirectError {
    /// `Ok` for a 2xx answer, else [`DirectError::Status`] with the status and body.
    ///
    /// # Errors
    /// When the status is not 2xx.
    pub fn check_status(response: &Response) -> Result<(), DirectError> {
        if response.status.is_success() {
            Ok(())
        } else {
            Err(DirectError::Status { status: response.status.as_u16(), body: response.body_excerpt() })
        }
    }
}

/// One destination's side of direct calls, made at `build()`.
#[derive(Debug, Clone)]
pub(crate) struct DirectSetup {
    pub(crate) transport: Transport,
    /// A call's own timeout unless the handle sets another: the destination's request timeout.
    pub(crate) timeout: Duration,
    /// Bounds this destination's direct calls in flight (not its events).
    pub(crate) slots: Arc<Semaphore>,
}

/// The handle to destination `D`'s direct calls, from [`Client::direct`]. Cheap to clone.
pub struct Direct<D: Destination> {
    client: Client,
    index: usize,
    destination: Arc<dyn Destination>,
    timeout: Duration,
    _type: PhantomData<fn() -> D>,
}

impl<D: Destination> Clone for Direct<D> {
    fn clone(&self) -> Self {
        Direct {
            client: self.client.clone(),
            index: self.index,
            destination: self.destination.clone(),
            timeout: self.timeout,
            _type: PhantomData,
        }
    }
}

impl<D: Destination> std::fmt::Debug for Direct<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct").field("destination", &self.destination.name()).field("timeout", &self.timeout).finish()
    }
}

impl Client {
    /// The direct calls of the (first) destination of type `D` (see [`crate::direct`]).
    ///
    /// # Errors
    /// [`Error::NoDestinationOfType`] when the client has no destination of that type.
    pub fn direct<D: Destination>(&self) -> Result<Direct<D>, Error> {
        self.find_direct(None)
    }

    /// The direct calls of the destination of type `D` named `name` (when a client has several
    /// of one type).
    ///
    /// # Errors
    /// [`Error::NoDestinationOfType`] when no destination of that type has that name.
    pub fn direct_named<D: Destination>(&self, name: &str) -> Result<Direct<D>, Error> {
        self.find_direct(Some(name))
    }

    fn find_direct<D: Destination>(&self, name: Option<&str>) -> Result<Direct<D>, Error> {
        // Destinations configured at `build()` offer direct calls; run-time ones do not (yet).
        let found = self.inner.shared.pipe.destinations.iter().find(|(i, d)| {
            let any: &dyn Any = d.as_ref();
            *i < self.inner.direct.len() && any.is::<D>() && name.is_none_or(|n| d.name() == n)
        });
        let Some((index, destination)) = found else {
            return Err(Error::NoDestinationOfType { kind: std::any::type_name::<D>(), name: name.map(str::to_owned) });
        };
        Ok(Direct {
            client: self.clone(),
            index,
            destination: destination.clone(),
            timeout: self.inner.direct[index].timeout,
            _type: PhantomData,
        })
    }
}

impl<D: Destination> Direct<D> {
    /// The client this handle belongs to.
    #[cfg_attr(not(feature = "customerio"), allow(dead_code))]
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// The destination's index (its bit in a routing mask).
    #[cfg_attr(not(feature = "customerio"), allow(dead_code))]
    pub(crate) fn index(&self) -> usize {
        self.index
    }

    /// The destination, as configured.
    pub fn destination(&self) -> &D {
        let any: &dyn Any = self.destination.as_ref();
        match any.downcast_ref::<D>() {
            Some(d) => d,
            // `find_direct` checked the type.
            None => unreachable!("a direct handle always holds a destination of its type"),
        }
    }

    /// The same handle with another timeout for each call (default: the destination's request
    /// timeout, [`HttpOptions::timeout`](crate::HttpOptions::timeout)). Zero keeps the current one.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        if !timeout.is_zero() {
            self.timeout = timeout;
        }
        self
    }

    /// Sends `call` and awaits its answer, from any async runtime (the request runs on the
    /// client's own runtime; this future only waits, and never blocks the thread). Dropping the
    /// future does not stop a call already sent.
    ///
    /// # Errors
    /// A [`DirectError`]: refused before sending, not sent, maybe sent, an error status, an
    /// unreadable answer, the timeout, or a client that is shut down.
    pub async fn call<C: DirectCall<D>>(&self, call: C) -> Result<C::Output, DirectError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.start(call, move |out| {
            let _ = tx.send(out);
        })?;
        rx.await.unwrap_or(Err(DirectError::ShutDown))
    }

    /// Sends `call` and blocks until its answer: for sync code (inside an async runtime, use
    /// [`call`](Self::call)).
    ///
    /// # Errors
    /// As [`call`](Self::call).
    pub fn call_blocking<C: DirectCall<D>>(&self, call: C) -> Result<C::Output, DirectError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.start(call, move |out| {
            let _ = tx.send(out);
        })?;
        rx.recv().unwrap_or(Err(DirectError::ShutDown))
    }

    /// Builds the request on the caller's thread and runs the call on the worker's runtime;
    /// `answer` gets its outcome.
    fn start<C: DirectCall<D>>(
        &self,
        call: C,
        answer: impl FnOnce(Result<C::Output, DirectError>) + Send + 'static,
    ) -> Result<(), DirectError> {
        let inner = &self.client.inner;
        if inner.shared.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(DirectError::ShutDown);
        }
        if inner.shared.pipe.queue.worker_gone() {
            return Err(DirectError::WorkerStopped);
        }
        let counters = &inner.shared.pipe.counters.destinations[self.index];
        let request = call.request(self.destination()).inspect_err(|_| bump(&counters.direct_not_sent, 1))?;
        let setup = inner.direct[self.index].clone();
        let client = self.client.clone();
        let (index, timeout) = (self.index, self.timeout);
        let destination = self.destination.clone();
        inner.runtime.spawn(async move {
            let counters = &client.inner.shared.pipe.counters.destinations[index];
            let outcome = match tokio::time::timeout(timeout, send(&setup, request, timeout)).await {
                Ok(Ok(response)) => {
                    let any: &dyn Any = destination.as_ref();
                    match any.downcast_ref::<D>() {
                        Some(d) => crate::pipeline::health::catch(|| call.read(d, response))
                            .unwrap_or_else(|panic| Err(DirectError::Answer(format!("read panicked: {panic}")))),
                        None => Err(DirectError::Answer("the destination changed type".into())),
                    }
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Err(DirectError::TimedOut(timeout)),
            };
            count(counters, &outcome);
            answer(outcome);
        });
        Ok(())
    }
}

/// Sends `request`, trying again only while nothing was sent (at most [`MAX_NOT_SENT_RETRIES`]
/// times, pausing between tries, and never past `timeout`), within the destination's slots.
async fn send(setup: &DirectSetup, request: Request, timeout: Duration) -> Result<Response, DirectError> {
    let _slot = setup.slots.acquire().await.map_err(|_| DirectError::ShutDown)?;
    let started = tokio::time::Instant::now();
    let mut pause = NOT_SENT_PAUSE;
    let mut retries = 0;
    loop {
        match setup.transport.send_direct(request.clone()).await {
            Ok(response) => return Ok(response),
            Err(e) if e.kind() == TransportErrorKind::NotSent => {
                if retries >= MAX_NOT_SENT_RETRIES || started.elapsed() + pause >= timeout {
                    return Err(DirectError::NotSent(e));
                }
                retries += 1;
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            Err(e) => return Err(DirectError::MaybeSent(e)),
        }
    }
}

fn count<T>(counters: &DestinationCounters, outcome: &Result<T, DirectError>) {
    let counter = match outcome {
        Ok(_) => &counters.direct_ok,
        Err(DirectError::NotSent(_) | DirectError::Invalid(_) | DirectError::ShutDown | DirectError::WorkerStopped) => {
            &counters.direct_not_sent
        }
        Err(_) => &counters.direct_failed,
    };
    bump(counter, 1);
}

//! [`Waiting`]: calls that wait, up to a caller-given timeout, for room in the event queue and
//! the store instead of refusing the event at once (importers, batch jobs; never the default).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use trackway_wire::{MessageId, Timestamp};

use super::control::{Await, Block, Wait, blocking};
use super::{Client, Options};
use crate::error::Error;
use crate::message::Message;
use crate::stats::bump;

/// Queues events, waiting up to a timeout for room: made by [`Client::waiting`].
///
/// The plain calls ([`Client::capture`], [`Client::import`], …) never wait: a full queue or a
/// full store refuses the event at once (`QueueFull`, `StoreFull`), which is what a request
/// handler wants. A bulk producer would rather slow down to the pace of delivery: these calls
/// wait while the event queue is full (the worker is behind) or the store is at its size bound
/// ([`WhenFull::Refuse`](crate::store::WhenFull::Refuse): deliveries make room), then queue the
/// event. Nothing is counted as dropped while they wait; when the timeout passes they return
/// [`Error::NoRoom`] and the event is counted once (`queue_full` or `store_refused`).
///
/// The blocking forms block the calling thread; the `_async` forms await (a timer and the
/// worker's wake-up) and never block the runtime's thread, so they are fine on a
/// current-thread runtime. They need a tokio runtime with the time driver enabled.
///
/// If the queue fills again between the check for room and the push, the event is prepared
/// again: a `before_send` hook may then see it more than once (it is queued at most once).
///
/// ```
/// use std::time::Duration;
/// use trackway::{Client, Track, destination::JsonHttp, store::MemoryStore};
///
/// # let collector = trackway_collector::Collector::start().unwrap();
/// # let url = collector.url("/events");
/// let client = Client::builder().destination(JsonHttp::new(url)).store(MemoryStore::new()).build()?;
/// let patient = client.waiting(Duration::from_secs(30));
/// for n in 0..1000 {
///     // Waits while the queue or the store is full; `Error::NoRoom` after 30 s without room.
///     patient.capture(Track::new("imported").user("u1").property("n", n))?;
/// }
/// client.flush(Duration::from_secs(5))?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Waiting<'a> {
    client: &'a Client,
    timeout: Duration,
}

impl Client {
    /// Calls that wait up to `timeout` for room in the queue and the store instead of refusing
    /// the event (see [`Waiting`]). Not the default: the plain calls never wait.
    pub fn waiting(&self, timeout: Duration) -> Waiting<'_> {
        Waiting { client: self, timeout }
    }
}

impl Waiting<'_> {
    /// [`Client::capture`], waiting for room.
    ///
    /// # Errors
    /// [`Error::NoRoom`] when no room came within the timeout; otherwise as
    /// [`Client::capture`] (never `QueueFull` or `StoreFull`).
    pub fn capture(&self, message: impl Into<Message>) -> Result<MessageId, Error> {
        let message = message.into();
        blocking(self.enqueue::<Block>(&message, None, None))
    }

    /// Async [`capture`](Self::capture).
    ///
    /// # Errors
    /// As [`capture`](Self::capture).
    pub async fn capture_async(&self, message: impl Into<Message>) -> Result<MessageId, Error> {
        let message = message.into();
        self.enqueue::<Await>(&message, None, None).await
    }

    /// [`Client::import`], waiting for room.
    ///
    /// # Errors
    /// As [`capture`](Self::capture).
    pub fn import(&self, message: impl Into<Message>, id: MessageId, timestamp: Timestamp) -> Result<MessageId, Error> {
        let message = message.into();
        blocking(self.enqueue::<Block>(&message, Some((id, timestamp)), None))
    }

    /// Async [`import`](Self::import).
    ///
    /// # Errors
    /// As [`capture`](Self::capture).
    pub async fn import_async(
        &self,
        message: impl Into<Message>,
        id: MessageId,
        timestamp: Timestamp,
    ) -> Result<MessageId, Error> {
        let message = message.into();
        self.enqueue::<Await>(&message, Some((id, timestamp)), None).await
    }

    /// [`Client::import_with_checkpoint`], waiting for room.
    ///
    /// # Errors
    /// As [`capture`](Self::capture), and as [`Client::checkpoint`] for the key and value.
    pub fn import_with_checkpoint(
        &self,
        message: impl Into<Message>,
        id: MessageId,
        timestamp: Timestamp,
        key: &str,
        value: impl Into<Vec<u8>>,
    ) -> Result<MessageId, Error> {
        let (message, value) = (message.into(), value.into());
        super::control::check_checkpoint(key, &value)?;
        blocking(self.enqueue::<Block>(&message, Some((id, timestamp)), Some((key, &value))))
    }

    /// Async [`import_with_checkpoint`](Self::import_with_checkpoint).
    ///
    /// # Errors
    /// As [`import_with_checkpoint`](Self::import_with_checkpoint).
    pub async fn import_with_checkpoint_async(
        &self,
        message: impl Into<Message>,
        id: MessageId,
        timestamp: Timestamp,
        key: &str,
        value: impl Into<Vec<u8>>,
    ) -> Result<MessageId, Error> {
        let (message, value) = (message.into(), value.into());
        super::control::check_checkpoint(key, &value)?;
        self.enqueue::<Await>(&message, Some((id, timestamp)), Some((key, &value))).await
    }

    /// Tries to queue the event until it fits or the timeout passes: waits on the store's
    /// wake-up while it is at its bound, and polls (every `ROOM_POLL`) while the queue is full.
    /// No lock is held while waiting.
    async fn enqueue<W: Wait>(
        &self,
        message: &Message,
        import: Option<(MessageId, Timestamp)>,
        checkpoint: Option<(&str, &[u8])>,
    ) -> Result<MessageId, Error> {
        let shared = &*self.client.inner.shared;
        let started = Instant::now();
        let left = || self.timeout.saturating_sub(started.elapsed());
        let give_up = |store: bool| {
            // Counted once, as the plain call would have counted it.
            if store {
                bump(&shared.pipe.counters.store_refused, 1);
            } else {
                self.client.count_queue_full();
            }
            Err(Error::NoRoom { waited: started.elapsed(), store })
        };
        // A closed client or a stopped worker frees no room: the plain call says so at once.
        let open = || !shared.closed.load(Ordering::Acquire) && !shared.pipe.queue.worker_gone();
        loop {
            // The wait ends early when the client closes or the worker stops (`StoreRoom::end`).
            if open() && shared.pipe.room.is_full() && !W::store_room(&shared.pipe.room, left()).await && open() {
                return give_up(true);
            }
            if open() && shared.pipe.queue.looks_full() {
                if left().is_zero() {
                    return give_up(false);
                }
                W::pause().await;
                continue;
            }
            let opts = Options {
                import,
                checkpoint: checkpoint.map(|(key, value)| (key, value.to_vec())),
                waiting: true,
                ..Options::default()
            };
            match self.client.enqueue(message.clone(), opts) {
                // Filled up again since the check: go round (the store check waits for room).
                Err(Error::QueueFull | Error::StoreFull) if !left().is_zero() => W::pause().await,
                Err(Error::QueueFull) => return give_up(false),
                Err(Error::StoreFull) => return give_up(true),
                other => return other,
            }
        }
    }
}

//! Confirmed calls and outcome subscriptions: [`Client::track_confirmed`],
//! [`Client::capture_confirmed`], [`Client::outcomes`] (see [`crate::receipts`]).

use std::cell::RefCell;

use trackway_wire::Properties;

use super::{Client, Options};
use crate::error::Error;
use crate::message::{Message, Track};
use crate::receipts::{OutcomeStream, Receipt};

impl Client {
    /// [`track`](Self::track), returning a [`Receipt`] that resolves when every destination
    /// the event was routed to has an outcome (delivered, rejected with the server's answer,
    /// expired, dropped, filtered), or says why one is still pending. The event is queued and
    /// retried exactly as by `track`; the receipt only watches.
    ///
    /// This is the seed's `await client.track(...)`: with an OpenCDP destination,
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use trackway::{Client, props, destination::opencdp::OpenCdpConfig};
    /// let client = Client::builder()
    ///     .destinations(OpenCdpConfig::new(std::env::var("OPENCDP_API_KEY")?))
    ///     .app("shop", "2.4.0")
    ///     .build()?;
    /// // Resolves when OpenCDP has the event; a rejection says the server's status and body.
    /// let confirmation = client.track_confirmed("user123", "purchase_completed", props! { "amount" => 99.99 })?.await?;
    /// if !confirmation.is_delivered() {
    ///     for line in &confirmation.destinations {
    ///         eprintln!("{}: {:?}", line.destination, line.resolution);
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// **Cost.** The caller pays a watch registration (one small allocation and a lock) on top
    /// of `track`; while any receipt or stream is open the worker notes each event's id and
    /// reports its outcomes. The event's durability and retries are the same. Await receipts in
    /// batches (start many, then await them) rather than one at a time: each confirmed event
    /// otherwise waits for its own batch interval and round trip.
    ///
    /// # Errors
    /// As [`track`](Self::track): nothing is queued and no receipt is made.
    pub fn track_confirmed(&self, identifier: &str, event: &str, properties: Properties) -> Result<Receipt, Error> {
        self.confirmed(Track::new(event).user(identifier).properties(properties).into())
    }

    /// [`capture`](Self::capture) any message, returning a [`Receipt`] (see
    /// [`track_confirmed`](Self::track_confirmed)).
    ///
    /// # Errors
    /// As [`capture`](Self::capture).
    pub fn capture_confirmed(&self, message: impl Into<Message>) -> Result<Receipt, Error> {
        self.confirmed(message.into())
    }

    fn confirmed(&self, message: Message) -> Result<Receipt, Error> {
        let slot = RefCell::new(None);
        let id = self.enqueue(message, Options { watch: Some(&slot), ..Options::default() })?;
        let hub = &self.inner.shared.pipe.receipts;
        // An app event no destination takes is queued nowhere: a receipt with no destination.
        let watch = slot.into_inner().unwrap_or_else(|| hub.watch(id, 0));
        #[cfg(feature = "testing")]
        {
            let hook = crate::pipeline::lock(&hub.after_push).clone();
            if let Some(hook) = hook {
                hook(id);
            }
        }
        Ok(Receipt::new(id, watch, &self.inner.shared.pipe))
    }

    /// A new [`OutcomeStream`]: every outcome, per event and destination, from now on, keeping
    /// at most `capacity` unread (beyond it the oldest are dropped and counted as missed;
    /// delivery never waits for it). To see the outcomes of events an earlier process left in
    /// the store, subscribe on the builder ([`ClientBuilder::outcomes`](crate::ClientBuilder::outcomes)).
    pub fn outcomes(&self, capacity: usize) -> OutcomeStream {
        self.inner.shared.pipe.receipts.subscribe(capacity)
    }

    /// The stream subscribed on the builder with
    /// [`ClientBuilder::outcomes`](crate::ClientBuilder::outcomes) (`Some` once).
    pub fn take_outcomes(&self) -> Option<OutcomeStream> {
        crate::pipeline::lock(&self.inner.shared.pipe.receipts.initial).take()
    }

    /// Test hook: `hook(id)` runs inside every confirmed call after its event is pushed and
    /// before the call returns (to show that a delivery in between is not missed). `None`
    /// removes it.
    #[cfg(feature = "testing")]
    pub fn on_confirmed_push(&self, hook: Option<std::sync::Arc<dyn Fn(trackway_wire::MessageId) + Send + Sync>>) {
        *crate::pipeline::lock(&self.inner.shared.pipe.receipts.after_push) = hook;
    }
}

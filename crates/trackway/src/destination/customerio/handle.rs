//! `suppress` and `unsuppress` on the destination's handle ([`Direct<CustomerIo>`]): queued and
//! retried like events (not direct calls: they must survive a restart and an outage).

use trackway_wire::MessageId;
use trackway_wire::customerio::ID_MAX;

use super::{CustomerIo, SUPPRESS_EVENT, UNSUPPRESS_EVENT};
use crate::direct::Direct;
use crate::error::Error;

impl Direct<CustomerIo> {
    /// Queues `POST /api/v1/customers/{id}/suppress` (v2: `action: "suppress"`) for this
    /// destination only: Customer.io deletes the person and refuses the id from then on. Sent,
    /// retried, counted and dead-lettered like an event; returns its message id.
    ///
    /// ```
    /// use trackway::{Client, destination::customerio::CustomerIo, store::MemoryStore};
    /// # let collector = trackway_collector::Collector::start().unwrap();
    /// let client = Client::builder()
    ///     .destination(CustomerIo::new("site", "key").base_url(collector.url("")))
    ///     .store(MemoryStore::new())
    ///     .build()?;
    /// client.direct::<CustomerIo>()?.suppress("user123")?;
    /// # client.flush(std::time::Duration::from_secs(5))?;
    /// # assert_eq!(collector.requests()[0].path, "/api/v2/batch");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// `EmptyIdentifier`, `DestinationLimit` (an id over 150 bytes), `QueueFull`, `ShutDown`,
    /// `WorkerStopped`.
    pub fn suppress(&self, id: &str) -> Result<MessageId, Error> {
        self.command(SUPPRESS_EVENT, id)
    }

    /// Queues `POST /api/v1/customers/{id}/unsuppress`: the id may be used again. As
    /// [`suppress`](Self::suppress).
    ///
    /// # Errors
    /// As [`suppress`](Self::suppress).
    pub fn unsuppress(&self, id: &str) -> Result<MessageId, Error> {
        self.command(UNSUPPRESS_EVENT, id)
    }

    fn command(&self, name: &str, id: &str) -> Result<MessageId, Error> {
        if id.len() > ID_MAX {
            return Err(Error::DestinationLimit {
                destination: crate::destination::Destination::name(self.destination()).to_owned(),
                message: format!("person id is {} bytes; Customer.io's limit is {ID_MAX}", id.len()),
            });
        }
        self.client().enqueue_command(1 << self.index(), name, id)
    }
}

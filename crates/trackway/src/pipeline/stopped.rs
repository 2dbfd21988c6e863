//! After the worker panicked: its thread stays to refuse and count what callers still queue, so
//! no call is ever answered `Ok` by a channel nobody reads, and no flush waits for its timeout.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::health::{HealthState, LastError};
use super::{Shared, lock};
use crate::queue::{Control, Item, Taken};
use crate::stats::bump;

/// What waiting callers are told (flush, persisted, shutdown).
pub(crate) const WORKER_STOPPED: &str =
    "the delivery worker stopped unexpectedly (it panicked; see the log): nothing more is stored or sent";

/// How often the channel is emptied. Callers check the flag before queuing, so only a call that
/// raced with the panic waits for this.
const POLL: Duration = Duration::from_millis(20);

/// Runs on the worker's thread once `Worker::run` panicked with `message`, until the client is
/// dropped (it then holds no reference to `shared` any more).
pub(crate) fn run(shared: &Arc<Shared>, message: &str) {
    shared.queue.set_worker_gone();
    // Nothing frees store room any more: calls waiting for it return now.
    shared.room.end();
    tracing::error!(
        panic = %message,
        "trackway: the delivery worker panicked; every later call returns an error, queued events are dropped and counted as worker_stopped"
    );
    // Every open receipt resolves with the error; streams end once read.
    shared.receipts.end(crate::receipts::Ended::WorkerStopped(message.to_owned()));
    let at = shared.clock.now();
    for d in shared.counters.active() {
        let mut health = lock(&d.health);
        health.state = HealthState::Stopped;
        health.since = at;
        health.last_error = Some(LastError::panicked("the worker", message, at));
    }
    loop {
        // Read before emptying: whatever was queued before the client let go is taken in this pass.
        let closing = Arc::strong_count(shared) == 1;
        let mut taken = Taken::default();
        while let Some(item) = shared.queue.pop(|_| Bytes::new(), &mut taken) {
            match item {
                Item::Event(..) => bump(&shared.counters.worker_stopped, 1),
                Item::Control(control) => refuse(control),
            }
        }
        shared.queue.release(&mut taken);
        if closing {
            return;
        }
        std::thread::sleep(POLL);
    }
}

/// Answers a control with the error; the callers of the others see their reply channel closed
/// and check the flag.
fn refuse(control: Control) {
    match control {
        Control::Persisted(reply) | Control::Flush(reply) | Control::Shutdown { done: reply, .. } => {
            reply.fail(WORKER_STOPPED.to_owned());
        }
        _ => {}
    }
}

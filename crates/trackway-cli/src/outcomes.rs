//! `trackway import`'s outcome lines: what became of every line at every destination, read from
//! the outcome stream subscribed before the worker starts (so the deliveries of events an
//! earlier run left behind are seen too), with the dead letters for any outcome it missed.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::thread::JoinHandle;
use std::time::Duration;

use trackway::receipts::{Outcome, OutcomeStream, RecvError};
use trackway::store::DeadLetter;
use trackway::{MessageId, Stats};

/// Unread outcomes the stream keeps; a reader thread empties it as they come, so it is lost
/// only if that thread falls this far behind (then the dead letters fill in).
pub(crate) const CAPACITY: usize = 1 << 16;

/// What the reader thread gathered: delivered events compactly, other outcomes in full.
#[derive(Debug, Default)]
pub(crate) struct Gathered {
    delivered: HashSet<(MessageId, u8)>,
    other: HashMap<(MessageId, u8), Outcome>,
    /// Outcomes the stream dropped because the reader fell behind.
    pub(crate) missed: u64,
}

/// Reads `stream` on its own thread until the client's worker ends (the stream then closes).
pub(crate) fn gather(mut stream: OutcomeStream, names: Vec<String>) -> JoinHandle<Gathered> {
    std::thread::spawn(move || {
        let mut got = Gathered::default();
        loop {
            match stream.recv_timeout(Duration::from_secs(1)) {
                Ok(record) => {
                    let Some(i) = names.iter().position(|n| **n == *record.destination) else { continue };
                    let key = (record.id, i as u8);
                    match record.outcome {
                        Outcome::Delivered => {
                            got.delivered.insert(key);
                        }
                        other => {
                            got.other.insert(key, other);
                        }
                    }
                }
                Err(RecvError::Missed(n)) => got.missed += n,
                Err(RecvError::Closed) => return got,
                Err(_) => {}
            }
        }
    })
}

/// One line's fate at one destination.
enum Fate<'a> {
    Done(&'a Outcome),
    Delivered,
    /// A dead letter the stream missed.
    Letter(&'a DeadLetter),
    Pending,
    /// No outcome and nothing pending at the destination: not routed there (its type), or its
    /// outcome was missed.
    Unknown,
}

/// Prints, per destination, how this run's lines ended (text), or one JSON line per line and
/// destination (`json`, to `json_out`); whether any line was not delivered.
pub(crate) fn report(
    out: &mut dyn Write,
    json_out: Option<&mut dyn Write>,
    lines: &[(u64, MessageId)],
    got: &Gathered,
    stats: &Stats,
    letters: &[DeadLetter],
) -> std::io::Result<bool> {
    let mut json_out = json_out;
    let mut failed = false;
    if got.missed > 0 {
        writeln!(
            out,
            "the outcome stream missed {} outcome(s); those lines are reported from the dead letters and the store's pending counts",
            got.missed
        )?;
    }
    let letters: HashMap<(MessageId, &str), &DeadLetter> =
        letters.iter().map(|l| ((l.id, l.destination.as_str()), l)).collect();
    for (i, d) in stats.destinations.iter().enumerate() {
        let (mut delivered, mut not, mut pending, mut unknown) = (0u64, 0u64, 0u64, 0u64);
        let mut shown = 0;
        for &(line, id) in lines {
            let key = (id, i as u8);
            let fate = if got.delivered.contains(&key) {
                Fate::Delivered
            } else if let Some(outcome) = got.other.get(&key) {
                Fate::Done(outcome)
            } else if let Some(letter) = letters.get(&(id, d.name.as_str())) {
                Fate::Letter(letter)
            } else if d.pending > 0 {
                Fate::Pending
            } else {
                Fate::Unknown
            };
            let (word, text) = match &fate {
                Fate::Delivered => ("delivered", None),
                Fate::Done(outcome) => (kind(outcome), Some(crate::send::not_delivered(outcome))),
                Fate::Letter(l) => (l.reason.as_str(), Some(format!("{} ({})", l.reason, l.detail))),
                Fate::Pending => ("pending", None),
                Fate::Unknown => ("unknown", None),
            };
            match word {
                "delivered" => delivered += 1,
                "pending" => pending += 1,
                "unknown" => unknown += 1,
                // Nothing to send for it there: not a failure.
                "skipped" => {}
                _ => not += 1,
            }
            if let Some(json) = json_out.as_deref_mut() {
                let mut value = serde_json::json!({ "line": line, "id": id, "destination": d.name, "outcome": word });
                if let Some(text) = &text {
                    value["detail"] = text.clone().into();
                }
                if let Fate::Done(Outcome::Rejected { status: Some(status), .. }) = &fate {
                    value["status"] = (*status).into();
                }
                if matches!(fate, Fate::Pending)
                    && let Some(e) = &d.health.last_error
                {
                    value["reason"] = format!("{}: {e}", d.health.state).into();
                }
                writeln!(json, "{value}")?;
            } else if let Some(text) = text.filter(|_| shown < 100) {
                shown += 1;
                writeln!(out, "  line {line} ({id}) at {}: {text}", d.name)?;
            }
        }
        write!(out, "{}: this run's lines: delivered {delivered}, not delivered {not}, pending {pending}", d.name)?;
        if unknown > 0 {
            write!(out, ", no outcome {unknown} (not routed to it, or missed)")?;
        }
        writeln!(out)?;
        if pending > 0 {
            let why = d.health.last_error.as_ref().map_or_else(
                || "still being sent when the command ended".to_owned(),
                |e| format!("{}, the last error: {e}", d.health.state),
            );
            writeln!(out, "  pending lines stay in the store for the next run ({why})")?;
        }
        failed |= not > 0 || pending > 0;
    }
    Ok(failed)
}

/// The outcome's word in the JSON lines.
fn kind(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Delivered => "delivered",
        Outcome::Rejected { .. } => "rejected",
        Outcome::RetriesExhausted { .. } => "retries_exhausted",
        Outcome::Expired { .. } => "expired",
        Outcome::Dropped(_) => "dropped",
        Outcome::Skipped => "skipped",
        Outcome::Filtered => "filtered",
        _ => "other",
    }
}

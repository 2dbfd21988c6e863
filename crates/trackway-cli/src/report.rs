//! What `import` and `outbox requeue` say about the store besides deliveries: a salvaged
//! store, events waiting for destinations that are not configured (at start), and every event
//! the store lost (at the end). Losses make the exit code non-zero.

use std::io::Write;

use trackway::Stats;

/// Prints what the client found in its store when it opened it; whether that was a loss.
pub(crate) fn opened(out: &mut impl Write, stats: &Stats) -> std::io::Result<bool> {
    for (name, n) in &stats.store.orphaned {
        writeln!(
            out,
            "{n} events wait for destination `{name}`, which is not configured (kept: configure it again, \
             or `trackway outbox move --from {name} --to NAME`, or `trackway outbox drop --destination {name}`)"
        )?;
    }
    let Some(salvage) = &stats.store.salvage else { return Ok(false) };
    writeln!(out, "the store was damaged: {}", salvage.reason)?;
    writeln!(out, "  recovered: {} events (read back with a valid checksum, kept)", salvage.recovered)?;
    write!(out, "  lost:      {} events", salvage.lost)?;
    match salvage.lost_chunks {
        0 => writeln!(out)?,
        n => writeln!(out, " at most ({n} unreadable chunk(s), counted by their range of events)")?,
    }
    writeln!(out, "  the damaged file was kept as {}", salvage.moved_to.display())?;
    Ok(salvage.lost > 0)
}

/// Prints every event the store or the worker lost during the run, one line per reason;
/// whether there was any. Refused calls (`queue_full`, `store_refused`) are not losses here:
/// the command queues them again.
pub(crate) fn losses(out: &mut impl Write, stats: &Stats) -> std::io::Result<bool> {
    let d = &stats.dropped;
    let reasons = [
        ("store_full", d.store_full, "the oldest events, dropped at the store's size bound"),
        ("store_corrupt", d.store_corrupt, "events in damaged parts of the store"),
        ("disk_full", d.disk_full, "events that could not be written: the disk is full"),
        ("store_error", d.store_error, "events that could not be written to the store"),
        ("worker_stopped", d.worker_stopped, "events lost when the delivery worker stopped"),
    ];
    let mut lost = false;
    for (name, n, what) in reasons.into_iter().filter(|(_, n, _)| *n > 0) {
        writeln!(out, "{name}: {n} ({what})")?;
        lost = true;
    }
    Ok(lost)
}

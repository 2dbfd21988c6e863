//! `trackway import FILE.jsonl`: events from a JSON Lines file, each with its own message id and
//! timestamp, queued through the durable store and delivered; resumable after an interruption.
//!
//! Each event carries the position of its line ([`Client::import_with_checkpoint`]): the store
//! commits both or neither, so after a crash the recovered position says exactly which lines the
//! store holds, and a rerun on the same store skips them. Every `--checkpoint-every` lines (and at
//! the end) the position is also recorded on its own ([`Client::checkpoint`], covering malformed
//! lines) and the command waits until it is committed, which keeps the channel from filling up.
//!
//! The position is kept per *content*, not per path: the file's size and a hash of all its bytes
//! name it, so a new export written to a known path is imported (and said to be new), and a known
//! file moved elsewhere resumes where it stopped.
//!
//! An import never drops a line: its store refuses new events at its size bound
//! ([`WhenFull::Refuse`]) instead of dropping the oldest, and each event is queued through
//! [`Client::waiting`], which waits up to `--timeout` for room in the in-memory queue (the
//! store is behind) and in the store (deliveries make room). If none comes it stops, naming
//! the line it stopped at; the rerun resumes there. A full queue or store is never reported as
//! a malformed line.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Deserialize;
use trackway::store::{SqliteStore, WhenFull};
use trackway::{Client, Identify, Message, MessageId, Page, Properties, Screen, Timestamp, Track};

use crate::config;
use crate::{Outcome, report};

/// The store's size bound when `[store] max_bytes` is not set (the library's default).
const DEFAULT_MAX_BYTES: u64 = 128 * 1024 * 1024;

/// `trackway import` options.
///
/// Exit codes: 0 when every line was queued and delivered; 1 when something was not (malformed
/// lines, dead letters, events still pending, events the store lost, or the import stopped at a
/// full store: the output says which, and a rerun resumes after the last line stored); 2 when
/// the import could not start (configuration, file, store).
#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    /// The JSON Lines file: one event per line, e.g.
    /// {"id":"<uuid>","timestamp":"2026-11-23T08:00:00Z","type":"track","user":"u1","event":"purchase","properties":{"amount":9.5}}
    #[arg(value_name = "FILE.jsonl")]
    file: PathBuf,
    /// The store file (default: `[store] path` of --config).
    #[arg(long, value_name = "FILE")]
    store: Option<PathBuf>,
    /// Every N lines, record the position on its own and wait until it is committed (each event
    /// also carries its line's position, so a rerun resumes exactly after the last line stored).
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    checkpoint_every: u64,
    /// Ignore the recorded position and import the whole file again.
    #[arg(long)]
    from_start: bool,
    /// Queue at most this many lines per second (spares the destinations; default: no limit).
    #[arg(long, value_name = "LINES")]
    max_rate: Option<u32>,
    /// How long to wait for delivery at the end, and for room when the store is full, in
    /// seconds (undelivered events stay in the store).
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    timeout: u64,
    /// Print one JSON line per imported line and destination on stdout (`line`, `id`,
    /// `destination`, `outcome`: delivered, rejected, retries_exhausted, expired, dropped,
    /// skipped, pending or unknown; `status`, `detail`, `reason` when known); the summary goes
    /// to stderr.
    #[arg(long)]
    json: bool,
}

/// One line of the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    id: String,
    timestamp: String,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    anonymous_id: Option<String>,
    #[serde(default)]
    event: Option<String>,
    /// Page views: the URL (or `event`).
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    properties: Option<Properties>,
}

/// A line turned into what `Client::import` takes.
fn parse_line(text: &str) -> Result<(Message, MessageId, Timestamp), String> {
    let line: Line = serde_json::from_str(text).map_err(|e| crate::jsonl::explain(text, &e))?;
    let id: MessageId = line.id.parse().map_err(|e| format!("`id` {:?} is not a UUID: {e}", line.id))?;
    let timestamp: Timestamp = line.timestamp.parse().map_err(|e| format!("`timestamp`: {e}"))?;
    if line.user.is_none() && line.anonymous_id.is_none() {
        return Err("needs `user` or `anonymous_id`".into());
    }
    let properties = line.properties.unwrap_or_default();
    let user = line.user.as_deref();
    let anonymous_id = line.anonymous_id.as_deref();
    let kind = line.kind.as_deref().unwrap_or("track");
    let name = |what: &str| line.event.clone().ok_or_else(|| format!("a {what} needs `event`"));
    macro_rules! build {
        ($m:expr) => {{
            let mut m = $m.properties(properties);
            if let Some(u) = user {
                m = m.user(u);
            }
            if let Some(a) = anonymous_id {
                m = m.anonymous_id(a);
            }
            m.into()
        }};
    }
    let message: Message = match kind {
        "track" => build!(Track::new(name("track")?)),
        "screen" => build!(Screen::new(name("screen")?)),
        "page" => {
            let url = line.url.clone().or_else(|| line.event.clone()).ok_or("a page needs `url` (or `event`)")?;
            build!(Page::new(url))
        }
        "identify" if user.is_none() => return Err("an identify needs `user`".into()),
        "identify" => build!(Identify::new()),
        other => return Err(format!("unknown `type` {other:?} (track, page, screen or identify)")),
    };
    Ok((message, id, timestamp))
}

/// What the run did, for the summary.
#[derive(Debug, Default)]
struct Summary {
    read: u64,
    skipped: u64,
    blank: u64,
    enqueued: u64,
    malformed: Vec<(u64, String)>,
}

/// Runs `trackway import`.
pub(crate) fn run(config_path: Option<&Path>, args: ImportArgs) -> anyhow::Result<Outcome> {
    let config = config::require(config_path, "trackway import")?;
    let destinations = config.destinations()?;
    let store_path = match (&args.store, config.store_path()) {
        (Some(p), _) => p.clone(),
        (None, Some(p)) => p,
        (None, None) => {
            bail!("trackway import needs a durable store: pass --store FILE or set [store] path in --config")
        }
    };
    let file = File::open(&args.file).with_context(|| format!("cannot open {}", args.file.display()))?;
    let canonical = args.file.canonicalize().with_context(|| format!("cannot resolve {}", args.file.display()))?;
    let identity = FileIdentity::of(&args.file)?;
    let key = format!("import:{}", identity.key());
    let path_key = format!("import-path:{}", canonical.display());
    let total_bytes = identity.size;
    let max_bytes = config.store_max_bytes().unwrap_or(DEFAULT_MAX_BYTES);

    // Refuse instead of dropping at the size bound: an importer waits for room, or stops.
    let store = SqliteStore::new(&store_path).max_bytes(max_bytes).when_full(WhenFull::Refuse);
    let mut builder = Client::builder().store(store);
    if let Some(capacity) = config.queue_capacity() {
        builder = builder.queue_capacity(capacity);
    }
    let client = config::with_destinations(builder, destinations)
        .batch_interval(Duration::from_millis(100))
        // Every event is committed (with its line's position) before it is sent, so a kill
        // never leaves a delivered line unrecorded: a rerun queues no line twice.
        .commit_delay(Duration::ZERO)
        // Subscribed before the worker starts: the backlog's deliveries are seen too.
        .outcomes(crate::outcomes::CAPACITY)
        .build()
        .with_context(|| format!("cannot open the store {}", store_path.display()))?;
    // Events an earlier process left in the store are delivered by this one too.
    let backlog = client.stats();
    let names = backlog.destinations.iter().map(|d| d.name.clone()).collect();
    let gatherer = client.take_outcomes().map(|stream| crate::outcomes::gather(stream, names));
    let resume_after: u64 = if args.from_start {
        0
    } else {
        client.checkpoint_value(&key).and_then(|v| String::from_utf8(v).ok()?.parse().ok()).unwrap_or(0)
    };
    // With --json, stdout carries only the JSON lines; the summary goes to stderr.
    let mut out: Box<dyn Write> =
        if args.json { Box::new(std::io::stderr().lock()) } else { Box::new(std::io::stdout().lock()) };
    writeln!(out, "importing {} into {}", args.file.display(), store_path.display())?;
    let mut failed = report::opened(&mut out, &backlog)?;
    let seen = client.checkpoint_value(&path_key).and_then(|v| String::from_utf8(v).ok());
    if let Some(old) = seen.filter(|old| *old != identity.key()) {
        writeln!(
            out,
            "{} holds other content than when it was imported before ({}; now {} bytes): importing it as a new file",
            args.file.display(),
            FileIdentity::describe(&old),
            identity.size
        )?;
    }
    // An older trackway keyed the position by path alone: it does not say which content it was for.
    if client.checkpoint_value(&format!("import:{}", canonical.display())).is_some() && resume_after == 0 {
        writeln!(
            out,
            "a position an older trackway recorded for this path is ignored (it was not tied to the content)"
        )?;
    }
    client.checkpoint(&path_key, identity.key()).context("cannot record the file's identity")?;
    if resume_after > 0 {
        writeln!(out, "resuming after line {resume_after} (recorded by an earlier run for this content)")?;
    }
    out.flush()?;

    let progress = ProgressBar::with_draw_target(Some(total_bytes), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} line {msg} (eta {eta})",
    ) {
        progress.set_style(style);
    }

    let mut summary = Summary::default();
    let mut ids: HashSet<MessageId> = HashSet::new();
    // In file order, for the outcome lines.
    let mut lines: Vec<(u64, MessageId)> = Vec::new();
    let started = Instant::now();
    let run_started = Timestamp::now();
    let mut reader = BufReader::new(file);
    let mut buf = Vec::new();
    let mut bytes_read = 0u64;
    let mut line_no = 0u64;
    // The line there was no room for (and whether the store, else the queue, was full), when
    // the import stopped there.
    let mut stopped_at: Option<(u64, bool)> = None;
    let room_wait = Duration::from_secs(args.timeout);
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).with_context(|| format!("cannot read {}", args.file.display()))?;
        if n == 0 {
            break;
        }
        bytes_read += n as u64;
        line_no += 1;
        summary.read += 1;
        let text = std::str::from_utf8(&buf).map(str::trim);
        if line_no <= resume_after {
            summary.skipped += 1;
        } else if text.is_ok_and(str::is_empty) {
            summary.blank += 1;
        } else {
            match text.map_err(|e| format!("not UTF-8: {e}")).and_then(parse_line) {
                Err(reason) => summary.malformed.push((line_no, reason)),
                Ok((message, id, timestamp)) => {
                    match queue(&client, message, id, timestamp, &key, line_no, room_wait) {
                        Ok(()) => {
                            summary.enqueued += 1;
                            if ids.insert(id) {
                                lines.push((line_no, id));
                            }
                        }
                        Err(NotQueued::Invalid(reason)) => summary.malformed.push((line_no, reason)),
                        Err(NotQueued::NoRoom { store }) => {
                            // Everything before this line is handled: the rerun starts here.
                            commit_position(&client, &key, line_no - 1)?;
                            stopped_at = Some((line_no, store));
                            summary.read -= 1;
                            break;
                        }
                    }
                }
            }
            if let Some(rate) = args.max_rate.filter(|r| *r > 0) {
                let due = Duration::from_secs_f64((line_no - resume_after) as f64 / f64::from(rate));
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
        if line_no.is_multiple_of(args.checkpoint_every) && line_no > resume_after {
            commit_position(&client, &key, line_no)?;
        }
        if line_no.is_multiple_of(256) {
            progress.set_position(bytes_read);
            progress.set_message(line_no.to_string());
        }
    }
    if line_no > resume_after && stopped_at.is_none() {
        commit_position(&client, &key, line_no)?;
    }
    progress.finish_and_clear();

    // Stopped at a full store: nothing was delivered for `--timeout` already.
    let flush_for = if stopped_at.is_some() { Duration::ZERO } else { Duration::from_secs(args.timeout) };
    let flushed = client.flush(flush_for);
    let stats = client.stats();
    let letters: Vec<_> = client
        .dead_letters(10_000)
        .unwrap_or_default()
        .into_iter()
        .filter(|l| l.at >= run_started && ids.contains(&l.id))
        .collect();
    let _ = client.shutdown(Duration::from_secs(2));
    // The worker has ended: the stream closes once read, and the thread returns.
    let gathered = gatherer.and_then(|g| g.join().ok()).unwrap_or_default();

    writeln!(out, "lines read:   {}", summary.read)?;
    if summary.skipped > 0 {
        writeln!(out, "skipped:      {} (already imported by an earlier run)", summary.skipped)?;
    }
    if summary.blank > 0 {
        writeln!(out, "blank:        {}", summary.blank)?;
    }
    writeln!(out, "enqueued:     {}", summary.enqueued)?;
    writeln!(out, "malformed:    {}", summary.malformed.len())?;
    for (line, reason) in summary.malformed.iter().take(100) {
        writeln!(out, "  line {line}: {reason}")?;
    }
    if summary.malformed.len() > 100 {
        writeln!(out, "  ... and {} more", summary.malformed.len() - 100)?;
    }
    failed |= !summary.malformed.is_empty();
    for d in &stats.destinations {
        let dead = d.rejected + d.retries_exhausted + d.expired;
        write!(out, "{}: delivered {}, dead-lettered {dead}, pending {}", d.name, d.delivered, d.pending)?;
        match backlog.destination(&d.name).map_or(0, |b| b.pending) {
            0 => writeln!(out)?,
            n => writeln!(out, " (counting {n} events left in the store by an earlier run)")?,
        }
        if d.pending > 0 {
            // Why they are still pending: the destination's last failed request, if any.
            match &d.health.last_error {
                Some(e) => {
                    writeln!(out, "  last error ({} failed request(s), the last at {}): {e}", d.failed_requests, e.at)?
                }
                None => writeln!(out, "  no request failed: the rest was still being sent")?,
            }
        }
        failed |= dead > 0 || d.pending > 0;
    }
    for l in letters.iter().take(100) {
        writeln!(out, "  dead letter {} ({}): {}: {}", l.id, l.destination, l.reason, l.detail)?;
    }
    let mut stdout = args.json.then(|| std::io::stdout().lock());
    let json_out = stdout.as_mut().map(|s| s as &mut dyn Write);
    failed |= crate::outcomes::report(&mut out, json_out, &lines, &gathered, &stats, &letters)?;
    if let Some(stdout) = stdout.as_mut() {
        stdout.flush()?;
    }
    failed |= report::losses(&mut out, &stats)?;
    if let Some((line, store)) = stopped_at {
        let why = if store {
            format!(
                "the store is full (its size bound, [store] max_bytes, is {max_bytes} bytes) and no delivery made \
                 room within {}s (--timeout)",
                args.timeout
            )
        } else {
            format!("the event queue stayed full for {}s (--timeout): the store did not take events", args.timeout)
        };
        writeln!(
            out,
            "stopped at line {line}: {why}; lines up to {} are stored and are sent when the destinations take \
             them; run the same command again to go on from line {line}",
            line - 1
        )?;
        failed = true;
    } else if flushed.is_err() {
        writeln!(
            out,
            "not everything was delivered within {}s (--timeout); the rest stays in the store and is sent by the next run",
            args.timeout
        )?;
        failed = true;
    }
    out.flush()?;
    Ok(if failed { Outcome::Failed } else { Outcome::Ok })
}

/// Why a line was not queued.
enum NotQueued {
    /// The event was refused: the reason, reported with the line.
    Invalid(String),
    /// No room came within the wait: the store stayed at its bound (`store`), or the event
    /// queue stayed full (the worker did not take events).
    NoRoom { store: bool },
}

/// Queues the event of line `line`, carrying the position, waiting up to `room_wait` for room
/// in the event queue (the worker commits what is queued) and in the store (deliveries make
/// room): a full queue or store is never reported as a malformed line.
fn queue(
    client: &Client,
    message: Message,
    id: MessageId,
    timestamp: Timestamp,
    key: &str,
    line: u64,
    room_wait: Duration,
) -> Result<(), NotQueued> {
    match client.waiting(room_wait).import_with_checkpoint(message, id, timestamp, key, line.to_string()) {
        Ok(_) => Ok(()),
        Err(trackway::Error::NoRoom { store, .. }) => Err(NotQueued::NoRoom { store }),
        Err(e) => Err(NotQueued::Invalid(e.to_string())),
    }
}

/// What names a file's content: its size and the 64-bit FNV-1a hash of all its bytes (read
/// once before the import; a changed export of the same size differs in its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileIdentity {
    size: u64,
    hash: u64,
}

impl FileIdentity {
    fn of(path: &Path) -> anyhow::Result<FileIdentity> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let (mut size, mut hash) = (0u64, 0xcbf2_9ce4_8422_2325u64);
        loop {
            let buf = reader.fill_buf().with_context(|| format!("cannot read {}", path.display()))?;
            if buf.is_empty() {
                break;
            }
            for &b in buf {
                hash = (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
            }
            let n = buf.len();
            size += n as u64;
            reader.consume(n);
        }
        Ok(FileIdentity { size, hash })
    }

    /// The key the position is stored under.
    fn key(&self) -> String {
        format!("{}:{:016x}", self.size, self.hash)
    }

    /// A stored key, for people.
    fn describe(key: &str) -> String {
        match key.split_once(':') {
            Some((size, _)) => format!("{size} bytes then"),
            None => "an earlier content".to_owned(),
        }
    }
}

/// Records that every line up to `line` is handled, and waits until it is committed (which also
/// keeps the channel from filling up).
fn commit_position(client: &Client, key: &str, line: u64) -> anyhow::Result<()> {
    client.checkpoint(key, line.to_string()).context("cannot record the import position")?;
    client.persisted(Duration::from_secs(60)).context("cannot commit the imported events to the store")?;
    Ok(())
}

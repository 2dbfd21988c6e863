//! The collector's optional SQLite file (`--store FILE`): every recorded request and the events
//! decoded from it, written by a thread of its own, and read back when a collector starts on the
//! same file.
//!
//! Two tables, meant for `sqlite3` as much as for the collector:
//!
//! | table | one row per |
//! |---|---|
//! | `requests(id, received_at_ms, method, path, query, headers, status, body, answer_headers, answer_body)` | request and the collector's answer; headers are JSON arrays of `[name, value]` pairs |
//! | `events(request_id, idx, path, message_id, type, name, user_id, event)` | event decoded from a request body; `event` is its JSON |
//!
//! Credentials never reach the file: the values of `authorization`, `proxy-authorization`,
//! `cookie` and of any header whose name mentions a key, token or secret are replaced by
//! `<redacted>`. (In memory the collector keeps them, so tests can check what a destination
//! sent.)

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rusqlite::{Connection, params};

use crate::backends::Backends;
use crate::recorder::RecordedRequest;
use crate::util::lock;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    received_at_ms INTEGER NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    query TEXT,
    headers TEXT NOT NULL,
    status INTEGER NOT NULL,
    body BLOB NOT NULL,
    answer_headers TEXT,
    answer_body BLOB
);
CREATE TABLE IF NOT EXISTS events (
    request_id INTEGER NOT NULL REFERENCES requests(id),
    idx INTEGER NOT NULL,
    path TEXT NOT NULL,
    message_id TEXT,
    type TEXT,
    name TEXT,
    user_id TEXT,
    event TEXT NOT NULL,
    PRIMARY KEY (request_id, idx)
);
CREATE INDEX IF NOT EXISTS events_by_user ON events(user_id);
CREATE INDEX IF NOT EXISTS events_by_message_id ON events(message_id);
";

/// What replaces a credential in the file.
pub(crate) const REDACTED: &str = "<redacted>";

/// One request on its way to the file.
struct Row {
    request: RecordedRequest,
    received_at_ms: u64,
}

/// The writer thread and the channel to it. Closing drops the channel and waits for the thread,
/// so every request recorded before is in the file.
#[derive(Debug)]
pub(crate) struct Archive {
    path: PathBuf,
    tx: Mutex<Option<Sender<Row>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Archive {
    /// Opens (or creates) the file and returns the requests already in it, oldest first, with
    /// their wall-clock times, each labelled by the one of `backends` that claims it.
    pub(crate) fn open(path: &Path, backends: &Backends) -> Result<(Archive, Vec<(RecordedRequest, u64)>), String> {
        let what = |e: rusqlite::Error| format!("collector store {}: {e}", path.display());
        let conn = Connection::open(path).map_err(what)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(what)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(what)?;
        conn.execute_batch(SCHEMA).map_err(what)?;
        add_answer_columns(&conn).map_err(what)?;
        let earlier = load(&conn, backends).map_err(what)?;
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("trackway-collector-store".into())
            .spawn(move || write_loop(conn, rx))
            .map_err(|e| format!("collector store: cannot start its thread: {e}"))?;
        let archive = Archive { path: path.to_owned(), tx: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)) };
        Ok((archive, earlier))
    }

    /// Queues a request for the file (never blocks the server).
    pub(crate) fn keep(&self, request: &RecordedRequest, received_at_ms: u64) {
        if let Some(tx) = lock(&self.tx).as_ref() {
            let _ = tx.send(Row { request: request.clone(), received_at_ms });
        }
    }

    /// Writes what is queued and stops the writer.
    pub(crate) fn close(&self) {
        drop(lock(&self.tx).take());
        if let Some(thread) = lock(&self.thread).take()
            && thread.join().is_err()
        {
            tracing::error!(path = %self.path.display(), "trackway-collector: the store writer panicked");
        }
    }
}

/// One transaction per wake-up: everything queued by then.
fn write_loop(mut conn: Connection, rx: Receiver<Row>) {
    while let Ok(first) = rx.recv() {
        let mut rows = vec![first];
        rows.extend(rx.try_iter());
        if let Err(e) = write(&mut conn, &rows) {
            tracing::error!(error = %e, "trackway-collector: could not write {} requests to the store", rows.len());
        }
    }
    // The last writer to close checkpoints the WAL into the file, so a copy of the file alone is
    // complete.
    let _ = conn.pragma_update(None, "wal_checkpoint", "TRUNCATE");
}

fn write(conn: &mut Connection, rows: &[Row]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut insert_request = tx.prepare_cached(
            "INSERT INTO requests (received_at_ms, method, path, query, headers, status, body, answer_headers,
                                   answer_body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        let mut insert_event = tx.prepare_cached(
            "INSERT INTO events (request_id, idx, path, message_id, type, name, user_id, event)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        for Row { request, received_at_ms } in rows {
            let headers = redacted(&request.headers);
            insert_request.execute(params![
                *received_at_ms as i64,
                request.method,
                request.path,
                request.query,
                serde_json::to_string(&headers).unwrap_or_default(),
                request.status,
                request.body.as_ref(),
                serde_json::to_string(&request.answer_headers).unwrap_or_default(),
                request.answer_body.as_ref(),
            ])?;
            let request_id = tx.last_insert_rowid();
            for (idx, event) in request.events().iter().enumerate() {
                let text =
                    |pointers: &[&str]| pointers.iter().find_map(|p| event.pointer(p)?.as_str().map(str::to_owned));
                insert_event.execute(params![
                    request_id,
                    idx as i64,
                    request.path,
                    text(&["/id", "/messageId", "/message_id"]),
                    text(&["/type"]),
                    text(&["/name", "/event"]),
                    text(&["/identity/user_id", "/userId", "/identity/anonymous_id", "/anonymousId", "/user"]),
                    event.to_string(),
                ])?;
            }
        }
    }
    tx.commit()
}

/// The requests of earlier runs, oldest first.
fn load(conn: &Connection, backends: &Backends) -> rusqlite::Result<Vec<(RecordedRequest, u64)>> {
    let mut stmt = conn.prepare(
        "SELECT received_at_ms, method, path, query, headers, status, body, answer_headers, answer_body
         FROM requests ORDER BY id",
    )?;
    let rows = stmt.query_map([], |row| {
        let received_at_ms: i64 = row.get(0)?;
        let headers: String = row.get(4)?;
        let body: Vec<u8> = row.get(6)?;
        // NULL in files written before the answer was kept.
        let answer_headers: Option<String> = row.get(7)?;
        let answer_body: Option<Vec<u8>> = row.get(8)?;
        let method: String = row.get(1)?;
        let path: String = row.get(2)?;
        let backend = Arc::clone(backends.find(&method, &path));
        Ok((
            RecordedRequest {
                // Numbered when the recorder counts it.
                seq: 0,
                method,
                path,
                query: row.get(3)?,
                headers: serde_json::from_str(&headers).unwrap_or_default(),
                body: Bytes::from(body),
                // Replaced by the caller, who knows how long ago that was.
                received_at: Instant::now(),
                status: row.get(5)?,
                answer_headers: answer_headers.and_then(|h| serde_json::from_str(&h).ok()).unwrap_or_default(),
                answer_body: answer_body.map(Bytes::from).unwrap_or_default(),
                destination: backend.label().to_owned(),
                backend,
            },
            u64::try_from(received_at_ms).unwrap_or(0),
        ))
    })?;
    rows.collect()
}

/// Adds the answer columns to a file written before the collector kept its answers.
fn add_answer_columns(conn: &Connection) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare("SELECT name FROM pragma_table_info('requests')")?;
    let columns: Vec<String> = stmt.query_map([], |row| row.get(0))?.collect::<Result<_, _>>()?;
    for (column, kind) in [("answer_headers", "TEXT"), ("answer_body", "BLOB")] {
        if !columns.iter().any(|c| c == column) {
            conn.execute_batch(&format!("ALTER TABLE requests ADD COLUMN {column} {kind}"))?;
        }
    }
    Ok(())
}

/// `headers` with the values of credentials replaced by [`REDACTED`]: what the live page, the
/// API and the file show.
pub(crate) fn redacted(headers: &[(String, String)]) -> Vec<(&str, &str)> {
    headers.iter().map(|(n, v)| (n.as_str(), if is_credential(n) { REDACTED } else { v.as_str() })).collect()
}

/// Whether a header carries a credential, by its (lower-case) name.
pub(crate) fn is_credential(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    matches!(name.as_str(), "authorization" | "proxy-authorization" | "cookie")
        || ["key", "token", "secret"].iter().any(|w| name.contains(w))
}

/// The `Instant` `ago` before `now`, or `now` if the clock cannot go that far back (a request
/// from before the machine booted).
pub(crate) fn instant_before(now: Instant, ago: Duration) -> Instant {
    now.checked_sub(ago).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::test_request;

    fn request(path: &str, body: &'static [u8], headers: &[(&str, &str)]) -> RecordedRequest {
        RecordedRequest {
            headers: headers.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect(),
            ..test_request(path, body)
        }
    }

    #[test]
    fn requests_and_events_are_written_redacted_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("collector.db");
        let (archive, earlier) = Archive::open(&path, &Backends::default()).expect("open");
        assert!(earlier.is_empty());
        let body =
            br#"[{"id":"m1","type":"track","name":"Signed Up","identity":{"user_id":"u1"}},{"id":"m2","type":"page"}]"#;
        archive.keep(
            &request("/e", body, &[("authorization", "Bearer s3cret"), ("x-api-key", "k"), ("content-type", "json")]),
            1_700_000_000_000,
        );
        archive.keep(&request("/e", b"not json", &[]), 1_700_000_000_001);
        archive.close();

        let conn = Connection::open(&path).expect("reopen");
        let events: Vec<(String, Option<String>, Option<String>)> = conn
            .prepare("SELECT message_id, name, user_id FROM events ORDER BY request_id, idx")
            .expect("prepare")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(events, vec![("m1".into(), Some("Signed Up".into()), Some("u1".into())), ("m2".into(), None, None)]);
        let raw = std::fs::read(&path).expect("read file");
        assert!(!raw.windows(6).any(|w| w == b"s3cret"), "a credential reached the file");
        drop(conn);

        let (archive, earlier) = Archive::open(&path, &Backends::default()).expect("open again");
        assert_eq!(earlier.len(), 2);
        assert_eq!(earlier[0].1, 1_700_000_000_000);
        assert_eq!(earlier[0].0.header("authorization"), Some(REDACTED));
        assert_eq!(earlier[0].0.header("content-type"), Some("json"));
        assert_eq!(earlier[1].0.body_str(), "not json");
        assert_eq!(earlier[0].0.answer_body, Bytes::from_static(b"{}"));
        assert_eq!(earlier[0].0.answer_headers, [("content-type".to_owned(), "application/json".to_owned())]);
        archive.close();
    }

    #[test]
    fn credentials_are_redacted() {
        let headers =
            vec![("authorization".to_owned(), "Bearer s".to_owned()), ("accept".to_owned(), "*/*".to_owned())];
        assert_eq!(redacted(&headers), [("authorization", REDACTED), ("accept", "*/*")]);
    }

    #[test]
    fn credential_headers_are_recognized() {
        for name in ["Authorization", "cookie", "X-Api-Key", "x-write-token", "client-secret"] {
            assert!(is_credential(name), "{name}");
        }
        for name in ["content-type", "user-agent", "x-forwarded-for"] {
            assert!(!is_credential(name), "{name}");
        }
    }
}

//! Opening the store file: what the file is (a store, nothing, or something to leave alone),
//! the single-writer lock, the writability check, damage checks, the schema.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, MAIN_DB, OpenFlags};
use trackway_wire::Timestamp;

use super::{SCHEMA_VERSION, Synchronous};
use crate::store::StoreError;

pub(super) fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

pub(super) fn backend(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => StoreError::DiskFull(e.to_string()),
        _ => StoreError::Backend(e.to_string()),
    }
}

/// The `application_id` of a trackway store (header bytes 68..72): "TRKW". Written since
/// schema 2; a schema-1 store is recognised by its tables.
pub(super) const APPLICATION_ID: i32 = 0x5452_4B57;

/// The tables every trackway store has (schema 1 on).
const STORE_TABLES: [&str; 5] = ["chunks", "chunk_state", "destinations", "state", "meta"];

/// What is at a store's path, looked at without writing to it.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Found {
    /// No file, an empty one, or an empty database: a store is created there.
    Nothing,
    /// A trackway store (possibly damaged: that is for `open_checked` to say).
    Store,
}

/// Says what the file at `path` is, reading only its header and, for a SQLite file without
/// trackway's id, its list of tables.
///
/// # Errors
/// [`StoreError::NotAStore`] for anything that is not a trackway store of this schema or an
/// older one: text, another application's database, a store of a newer trackway.
pub(super) fn classify(path: &Path) -> Result<Found, StoreError> {
    let not_a_store = |why: String| StoreError::NotAStore { path: path.to_path_buf(), why };
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Found::Nothing),
        Err(e) => return Err(StoreError::Backend(format!("cannot read {}: {e}", path.display()))),
    };
    let mut header = Vec::with_capacity(100);
    Read::by_ref(&mut file)
        .take(100)
        .read_to_end(&mut header)
        .map_err(|e| StoreError::Backend(format!("cannot read {}: {e}", path.display())))?;
    if header.is_empty() {
        return Ok(Found::Nothing);
    }
    if !header.starts_with(b"SQLite format 3\0") {
        let what = if std::str::from_utf8(&header).is_ok() { "text" } else { "binary data" };
        return Err(not_a_store(format!("is not a trackway store: it is not a SQLite database (it holds {what})")));
    }
    let be = |at: usize| header.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes);
    let version = be(60).unwrap_or(0) as i64;
    if be(68) == Some(APPLICATION_ID as u32) {
        return newer_schema(version).map_or(Ok(Found::Store), |why| Err(not_a_store(why)));
    }
    let tables = open_read_only(path).and_then(|conn| {
        let mut stmt = conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").map_err(backend)?;
        let names = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(backend)?;
        names.collect::<Result<Vec<_>, _>>().map_err(backend)
    });
    match tables {
        Ok(tables) if tables.is_empty() => Ok(Found::Nothing),
        Ok(tables) if STORE_TABLES.iter().all(|t| tables.iter().any(|n| n == t)) => {
            newer_schema(version).map_or(Ok(Found::Store), |why| Err(not_a_store(why)))
        }
        Ok(mut tables) => {
            tables.sort();
            let more = if tables.len() > 5 { ", …" } else { "" };
            tables.truncate(5);
            Err(not_a_store(format!(
                "is not a trackway store: it is the SQLite database of another application (tables: {}{more})",
                tables.join(", ")
            )))
        }
        // Page 1 of a schema-1 store is as likely as another database here: never guess.
        Err(e) => Err(not_a_store(format!("cannot be read as a trackway store ({e})"))),
    }
}

fn newer_schema(version: i64) -> Option<String> {
    (version > SCHEMA_VERSION).then(|| {
        format!(
            "is a store of a newer trackway (schema {version}; this one reads up to {SCHEMA_VERSION}): use that version"
        )
    })
}

/// Opens the file for reading only. A WAL database in a directory this process cannot write
/// cannot get its shared-memory file; it is then read as immutable (nobody can be writing it:
/// a writer needs that directory too, and a clean close leaves the WAL empty).
pub(super) fn open_read_only(path: &Path) -> Result<Connection, StoreError> {
    if !path.exists() {
        return Err(StoreError::Backend(format!("no store at {}", path.display())));
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(backend)?;
    conn.busy_timeout(Duration::from_secs(2)).map_err(backend)?;
    match conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0)) {
        Ok(_) => Ok(conn),
        Err(e) if matches!(e.sqlite_error_code(), Some(ErrorCode::CannotOpen | ErrorCode::ReadOnly)) => {
            let uri = format!("file:{}?immutable=1", uri_path(path));
            let conn = Connection::open_with_flags(uri, flags | OpenFlags::SQLITE_OPEN_URI).map_err(backend)?;
            Ok(conn)
        }
        Err(e) => Err(backend(e)),
    }
}

/// `path` as the path of a `file:` URI: the characters a URI gives a meaning escaped.
fn uri_path(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        match c {
            '%' | '?' | '#' => out.push_str(&format!("%{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Whether a SQLite error means "this file cannot be written here" (as opposed to damage or a
/// busy file).
fn is_read_only(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(ErrorCode::ReadOnly | ErrorCode::CannotOpen | ErrorCode::PermissionDenied))
}

/// Refuses a connection SQLite opened read-only (it does so silently when the file is
/// write-protected).
///
/// # Errors
/// [`StoreError::ReadOnly`].
pub(super) fn refuse_read_only(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    if conn.is_readonly(MAIN_DB).map_err(backend)? {
        return Err(StoreError::ReadOnly {
            path: path.to_path_buf(),
            why: "the file is write-protected: SQLite could open it for reading only".into(),
        });
    }
    Ok(())
}

/// Proves that the store takes writes before anything is sent: one small committed write.
///
/// # Errors
/// [`StoreError::ReadOnly`] when the write is refused (a read-only directory, file or file
/// system); others as they come.
pub(super) fn prove_writable(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    refuse_read_only(conn, path)?;
    let now = Timestamp::now().unix_seconds();
    match conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('opened_at', ?1)", [now]) {
        Ok(_) => Ok(()),
        Err(e) if is_read_only(&e) => Err(StoreError::ReadOnly { path: path.to_path_buf(), why: e.to_string() }),
        Err(e) => Err(backend(e)),
    }
}

/// A failed write to the store as a store error: [`StoreError::ReadOnly`] when the file cannot
/// be written here.
pub(super) fn writing_error(path: &Path, e: rusqlite::Error) -> StoreError {
    if is_read_only(&e) {
        return StoreError::ReadOnly { path: path.to_path_buf(), why: e.to_string() };
    }
    backend(e)
}

/// An I/O error on a file beside the store (its directory, its lock), as a store error:
/// permissions and read-only file systems are [`StoreError::ReadOnly`].
pub(super) fn io_error(path: &Path, what: &str, e: &std::io::Error) -> StoreError {
    match e.kind() {
        ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => {
            StoreError::ReadOnly { path: path.to_path_buf(), why: format!("{what}: {e}") }
        }
        _ => StoreError::Backend(format!("{what}: {e}")),
    }
}

/// Takes the single-writer lock, recording our pid in the lock file.
pub(super) fn lock(path: &Path) -> Result<File, StoreError> {
    let lock_path = sidecar(path, ".lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|e| io_error(path, &format!("cannot open lock file {}", lock_path.display()), &e))?;
    match file.try_lock() {
        Ok(()) => {
            let pid = std::process::id().to_string();
            let written = file.set_len(0).and_then(|()| file.rewind()).and_then(|()| file.write_all(pid.as_bytes()));
            written.map_err(|e| StoreError::Backend(format!("cannot write lock file: {e}")))?;
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let pid = holder.trim().parse().ok();
            Err(StoreError::Locked { path: path.to_path_buf(), pid })
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(StoreError::Backend(format!("cannot lock {}: {e}", lock_path.display())))
        }
    }
}

/// Why a file cannot be used as a store, when the answer is "it is damaged", as opposed to
/// "it is busy" or "we cannot read it" (which are never grounds for moving it aside).
pub(super) fn is_damage(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt))
}

/// Opens and checks the file; `Ok(Err(reason))` means it is damaged and should be moved aside.
pub(super) fn open_checked(path: &Path, synchronous: Synchronous) -> Result<Result<Connection, String>, StoreError> {
    let conn = Connection::open(path).map_err(|e| match is_read_only(&e) {
        true => StoreError::ReadOnly { path: path.to_path_buf(), why: e.to_string() },
        false => backend(e),
    })?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(backend)?;
    refuse_read_only(&conn, path)?;
    let read_only = |e: rusqlite::Error| match is_read_only(&e) {
        true => StoreError::ReadOnly { path: path.to_path_buf(), why: e.to_string() },
        false => backend(e),
    };
    // `classify` refused a newer schema already, unless the header changed since: never moved aside.
    match conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0)) {
        Ok(version) => {
            if let Some(why) = newer_schema(version) {
                return Err(StoreError::NotAStore { path: path.to_path_buf(), why });
            }
        }
        Err(e) if is_damage(&e) => return Ok(Err(format!("is not a valid database: {e}"))),
        Err(e) => return Err(read_only(e)),
    }
    let check = || -> rusqlite::Result<Result<(), String>> {
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(rusqlite::Error::InvalidQuery);
        }
        let quick: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if quick != "ok" {
            // The first finding is enough to say why (the full list can run to pages).
            let first = quick.lines().find(|l| !l.starts_with("***")).unwrap_or(&quick);
            return Ok(Err(format!("failed its integrity check ({first})")));
        }
        let sync = match synchronous {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        };
        // A checkpoint every 4 096 pages (16 MiB of WAL) instead of 1 000: chunks written and
        // deleted within one window are copied into the database once, or not at all.
        conn.execute_batch(&format!(
            "PRAGMA synchronous = {sync}; PRAGMA foreign_keys = OFF; PRAGMA wal_autocheckpoint = 4096;"
        ))?;
        Ok(Ok(()))
    };
    match check() {
        Ok(Ok(())) => Ok(Ok(conn)),
        Ok(Err(reason)) => Ok(Err(reason)),
        Err(e) if is_damage(&e) => Ok(Err(format!("is not a valid database: {e}"))),
        Err(e) => Err(read_only(e)),
    }
}

/// Renames a damaged store (and its WAL and shared-memory files) out of the way, after what it
/// held was salvaged; only ever called on a file `classify` found to be a trackway store.
pub(super) fn move_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let stamp = Timestamp::now().unix_seconds();
    let target = sidecar(path, &format!(".bad-{stamp}"));
    std::fs::rename(path, &target).map_err(|e| StoreError::Backend(format!("cannot move damaged store aside: {e}")))?;
    for suffix in ["-wal", "-shm"] {
        let from = sidecar(path, suffix);
        if from.exists() {
            let _ = std::fs::rename(&from, sidecar(&target, suffix));
        }
    }
    Ok(target)
}

/// Creates or upgrades the schema. Every version migrates from the one before, each step in its
/// own transaction.
pub(super) fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    migrate_to(conn, SCHEMA_VERSION)
}

/// Schema 1 alone, as an older trackway wrote it (for the upgrade test).
#[cfg(test)]
pub(super) fn migrate_to_1_for_test(conn: &Connection) -> rusqlite::Result<()> {
    migrate_to(conn, 1)
}

fn migrate_to(conn: &Connection, target: i64) -> rusqlite::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version < 1 {
        conn.execute_batch(
            "BEGIN;
             CREATE TABLE chunks (first INTEGER PRIMARY KEY, data BLOB NOT NULL);
             CREATE TABLE chunk_state (first INTEGER PRIMARY KEY, state BLOB NOT NULL);
             CREATE TABLE destinations (bit INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
             CREATE TABLE contexts (id INTEGER PRIMARY KEY, json BLOB NOT NULL UNIQUE);
             CREATE TABLE dead_letters (
                 key INTEGER PRIMARY KEY, seq INTEGER NOT NULL, id BLOB NOT NULL, destination TEXT NOT NULL,
                 reason TEXT NOT NULL, detail TEXT NOT NULL, at INTEGER NOT NULL, event BLOB NOT NULL);
             CREATE TABLE state (key TEXT PRIMARY KEY, value BLOB NOT NULL);
             CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
             PRAGMA user_version = 1;
             COMMIT;",
        )?;
    }
    if version < 2 && target >= 2 {
        // Checksums per row (NULL on rows written by schema 1, which are read as before), and
        // the application id that tells a trackway store from any other SQLite file.
        conn.execute_batch(&format!(
            "BEGIN;
             ALTER TABLE chunks ADD COLUMN crc INTEGER;
             ALTER TABLE chunk_state ADD COLUMN crc INTEGER;
             PRAGMA application_id = {APPLICATION_ID};
             PRAGMA user_version = 2;
             COMMIT;"
        ))?;
    }
    Ok(())
}

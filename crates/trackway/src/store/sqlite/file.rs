//! Opening the store file: the single-writer lock, damage checks and recovery, the schema.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags};
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

pub(super) fn open_read_only(path: &Path) -> Result<Connection, StoreError> {
    if !path.exists() {
        return Err(StoreError::Backend(format!("no store at {}", path.display())));
    }
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(backend)?;
    conn.busy_timeout(Duration::from_secs(2)).map_err(backend)?;
    Ok(conn)
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
        .map_err(|e| StoreError::Backend(format!("cannot open lock file {}: {e}", lock_path.display())))?;
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
fn is_damage(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt))
}

/// Opens and checks the file; `Ok(Err(reason))` means it is damaged and should be moved aside.
pub(super) fn open_checked(path: &Path, synchronous: Synchronous) -> Result<Result<Connection, String>, StoreError> {
    let conn = Connection::open(path).map_err(backend)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(backend)?;
    let check = || -> rusqlite::Result<Result<(), String>> {
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Ok(Err(format!(
                "written by a newer trackway (schema {version}, this one reads up to {SCHEMA_VERSION})"
            )));
        }
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(rusqlite::Error::InvalidQuery);
        }
        let quick: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if quick != "ok" {
            return Ok(Err(format!("failed its integrity check: {quick}")));
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
        Err(e) => Err(backend(e)),
    }
}

/// Renames a damaged file (and its WAL and shared-memory files) out of the way.
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
    Ok(())
}

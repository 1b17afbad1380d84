//! The SQLite schema and connection settings.

use super::StoreError;
use rusqlite::Connection;
use std::path::Path;

const SCHEMA: &str = r#"
-- A rowid table: payloads are large rows, which WITHOUT ROWID tables store poorly.
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    source TEXT NOT NULL,
    event_type TEXT NOT NULL,
    idempotency_key TEXT,
    received_at INTEGER NOT NULL,
    headers TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS events_idempotency ON events(source, idempotency_key) WHERE idempotency_key IS NOT NULL;

CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    event_id TEXT NOT NULL,
    flow_id TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS runs_event ON runs(event_id);

CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    event_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    destination_id TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    round_attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    last_error TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_event ON deliveries(event_id);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(next_attempt_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS deliveries_dead ON deliveries(id) WHERE status = 'dead';

CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY,
    delivery_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    status_code INTEGER,
    response_headers TEXT,
    response_body BLOB,
    error TEXT,
    outcome TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS attempts_delivery ON attempts(delivery_id);

CREATE TABLE IF NOT EXISTS rejections (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    status INTEGER NOT NULL,
    error TEXT NOT NULL,
    reason TEXT NOT NULL,
    body BLOB NOT NULL
);
"#;

/// `synchronous` is FULL everywhere but on the writer, which commits with OFF and leaves the
/// fsync to the syncer thread (see `writer::syncer`): nothing is acknowledged before it.
fn configure(conn: &Connection, synchronous: &str) -> Result<(), StoreError> {
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", synchronous)?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    Ok(())
}

/// Size of the WAL past which the checkpointer restarts it. A restarted WAL is overwritten
/// from its start, and overwriting a file costs a cheaper fsync than growing it.
pub const WAL_RESTART_BYTES: u64 = 4 * 1024 * 1024;

pub fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    configure(&conn, "FULL")?;
    conn.execute_batch(SCHEMA)?;
    // Committed pages are made durable by the syncer's fdatasync before anyone is answered.
    conn.pragma_update(None, "synchronous", "OFF")?;
    // 16 MiB of page cache for the writer, so hot index pages are not read back from the OS.
    conn.pragma_update(None, "cache_size", -16_384)?;
    // Checkpoints run on their own thread (see `writer::checkpointer`), not inside commits.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    Ok(conn)
}

/// A connection for the checkpointer thread.
pub fn open_checkpointer(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    configure(&conn, "FULL")?;
    Ok(conn)
}

pub fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(conn)
}

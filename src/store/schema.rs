//! The SQLite schema and connection settings.

use super::StoreError;
use rusqlite::Connection;
use std::path::Path;

pub(super) const SCHEMA: &str = r#"
-- A rowid table: payloads are large rows, which WITHOUT ROWID tables store poorly.
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    source TEXT NOT NULL,
    event_type TEXT NOT NULL,
    idempotency_key TEXT,
    received_at INTEGER NOT NULL,
    headers TEXT NOT NULL,
    payload BLOB NOT NULL,
    -- When the pruner dropped the bodies of the event, its runs, deliveries and attempts
    -- (`settings.payload_retention`), after which `payload` is empty. Written only by the
    -- pruner, so ingest never touches it. A data directory of version 2 has it added by
    -- `migrate`. (No semicolons in these comments: scripts/wal-frames-per-commit.py cuts the
    -- statement at the first one.)
    payload_expired_at INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS events_idempotency ON events(source, idempotency_key) WHERE idempotency_key IS NOT NULL;

-- Bodies made by a run's steps (a transform's output, a per-destination body), each stored
-- once and referenced by id: by the run (its current payload), by the step record of the
-- transform that made it, and by every delivery that sends it. Owned by the event
-- (`event_seq`), with which they are pruned or expired. A rowid table, so that a large body
-- fills its pages instead of spilling from a small row. Ids are handed out before the write
-- that stores them (`Store::body_ids`) and never reused (AUTOINCREMENT keeps the highest).
CREATE TABLE IF NOT EXISTS bodies (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_seq INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS bodies_event ON bodies(event_seq);

-- A flow run. `pc` is the index of its current step in the flow's program; `payload_body` is
-- the body a transform made the run's payload (NULL while it is the event's); `context` holds
-- the outputs of named steps; `steps` is the JSON array of step records (a transform's record
-- names its output's body as `output_body`). Status: running (the run worker acts at `next_at`), waiting (on the
-- deliveries of the step at `pc`, then goes on at `resume_pc` or completes), completed,
-- filtered, failed.
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    event_id TEXT NOT NULL,
    flow_id TEXT NOT NULL,
    flow_version TEXT NOT NULL,
    status TEXT NOT NULL,
    pc INTEGER NOT NULL,
    resume_pc INTEGER,
    next_at INTEGER,
    step_attempts INTEGER NOT NULL DEFAULT 0,
    -- While waiting: the deliveries of the step at `pc` still pending, and those dead-lettered.
    pending INTEGER NOT NULL DEFAULT 0,
    dead INTEGER NOT NULL DEFAULT 0,
    context TEXT,
    steps TEXT NOT NULL,
    error TEXT,
    -- For a failed run: `step` (a step failed) or `deliveries` (the deliver step's deliveries
    -- were dead-lettered; they stand for the run among the dead letters).
    failed_on TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    payload_body INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS runs_event ON runs(event_id);
CREATE INDEX IF NOT EXISTS runs_due ON runs(next_at) WHERE status = 'running';
CREATE INDEX IF NOT EXISTS runs_failed ON runs(id) WHERE status = 'failed' AND failed_on = 'step';

-- `body_id` (in `bodies`) is NULL when the delivery sends the event's payload as received.
-- Rows are small (no body), so a WITHOUT ROWID table keeps many in a page, in id order.
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
    last_error TEXT,
    body_id INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_event ON deliveries(event_id);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(next_attempt_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS deliveries_dead ON deliveries(id) WHERE status = 'dead';
-- The dead letters counted by destination (the console's overview) from the index alone:
-- without it each of them was read from the table (50,000 took 110 ms). Ingest never writes
-- it: a delivery enters it only when it is dead-lettered.
CREATE INDEX IF NOT EXISTS deliveries_dead_destination ON deliveries(destination_id, status) WHERE status = 'dead';

-- Attempts of deliveries (`delivery_id` is the delivery's id) and of http steps (`delivery_id`
-- is `<run id>/<step index>`).
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY,
    delivery_id TEXT NOT NULL,
    -- The destination of a delivery attempt (NULL for an http step): what alert rules read.
    destination_id TEXT,
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
CREATE INDEX IF NOT EXISTS attempts_destination ON attempts(destination_id, started_at) WHERE destination_id IS NOT NULL;

-- Destinations paused by hand or automatically; a row per paused destination.
CREATE TABLE IF NOT EXISTS paused_destinations (
    destination_id TEXT PRIMARY KEY,
    paused_by TEXT NOT NULL,
    reason TEXT NOT NULL,
    since INTEGER NOT NULL
);

-- Sources, event types, destinations and flows made through the API, as their JSON specs
-- (`kind` as in the API's paths). The config file's objects are not stored.
CREATE TABLE IF NOT EXISTS config_objects (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (kind, id)
);

-- Every schema an event type has had, numbered from 1; a new version when the schema changes
-- (through the API, or in the file between two starts).
CREATE TABLE IF NOT EXISTS schema_versions (
    event_type TEXT NOT NULL,
    version INTEGER NOT NULL,
    schema TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (event_type, version)
);

-- API tokens made through the API: only the SHA-256 of each token is kept.
CREATE TABLE IF NOT EXISTS api_tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    scope TEXT NOT NULL,
    hash BLOB NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);

-- What a polling source keeps between polls (its cursor, the last ETag), as JSON, so that a
-- restart goes on from there.
CREATE TABLE IF NOT EXISTS source_states (
    source TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);

-- The state of each alert rule, so that a restart neither repeats nor forgets a notice.
CREATE TABLE IF NOT EXISTS alert_states (
    alert_id TEXT PRIMARY KEY,
    firing INTEGER NOT NULL,
    since INTEGER NOT NULL,
    message TEXT NOT NULL,
    subject TEXT NOT NULL,
    last_notice_at INTEGER,
    notified INTEGER NOT NULL DEFAULT 0
);

-- Each rule's changes (firing, resolved) and the notices each sent, newest kept (the writer
-- keeps the last 100 of each rule). Additive: an older file gets it at its next start.
CREATE TABLE IF NOT EXISTS alert_history (
    id INTEGER PRIMARY KEY,
    alert_id TEXT NOT NULL,
    at INTEGER NOT NULL,
    firing INTEGER NOT NULL,
    subject TEXT NOT NULL,
    message TEXT NOT NULL,
    notices TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alert_history_rule ON alert_history(alert_id, id);

-- One row the writer rewrites to find out whether the disk takes writes again after a write
-- failed (`writer::probe`).
CREATE TABLE IF NOT EXISTS store_probe (
    id INTEGER PRIMARY KEY,
    pad BLOB NOT NULL
);

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

/// `synchronous` is FULL on every connection: a commit returns once the WAL is synced, and
/// the writer answers nobody before (see `writer::run`).
fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // Room for every statement the writer uses: rusqlite keeps 16 by default, and past that
    // statements are prepared again on every use.
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    Ok(())
}

/// Size of the WAL past which the checkpointer restarts it. A restarted WAL is overwritten
/// from its start, and overwriting a file costs a cheaper fsync than growing it.
pub const WAL_RESTART_BYTES: u64 = 4 * 1024 * 1024;

/// The schema's version, kept in SQLite's `user_version`. A data directory of version 2
/// (before retention) or 3 (before bodies were stored once) is migrated when the writer opens
/// it ([`migrate`]); any other version is refused with a clear error.
const SCHEMA_VERSION: i64 = 4;

impl super::Store {
    /// The version of the SQLite schema this Ferry writes: a store that opened is at it
    /// (`ferry migrate --data` says so).
    pub const SCHEMA_VERSION: i64 = SCHEMA_VERSION;
}

/// The oldest version [`migrate`] brings up to [`SCHEMA_VERSION`].
const OLDEST_MIGRATED: i64 = 2;

/// Answers the version found (0 for a new database).
fn check_version(conn: &Connection) -> Result<i64, StoreError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let tables = table_count(conn)?;
    if tables > 0 && !(OLDEST_MIGRATED..=SCHEMA_VERSION).contains(&version) {
        return Err(StoreError::Corrupt(format!(
            "the data was written with schema version {version}; this Ferry reads versions {OLDEST_MIGRATED} to {SCHEMA_VERSION} and has no migration for it: start with a new data directory"
        )));
    }
    Ok(version)
}

fn table_count(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'",
        [],
        |r| r.get(0),
    )?)
}

/// Brings an older database to [`SCHEMA_VERSION`], one version at a time, each step in one
/// transaction (a failed step changes nothing, and the next start tries again from there).
/// Pending deliveries and runs keep their state: only where their bodies are kept changes.
fn migrate(conn: &Connection, mut version: i64) -> Result<(), StoreError> {
    if version == 0 {
        return Ok(());
    }
    while version < SCHEMA_VERSION {
        let step = match version {
            2 => to_version_3,
            3 => to_version_4,
            _ => return Ok(()),
        };
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let done = step(conn).and_then(|()| {
            conn.pragma_update(None, "user_version", version + 1)?;
            conn.execute_batch("COMMIT")?;
            Ok(())
        });
        if let Err(e) = done {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(StoreError::Write(format!(
                "cannot migrate the store from schema version {version} to {}: {e}",
                version + 1
            )));
        }
        tracing::info!(
            "the store was migrated from schema version {version} to {}",
            version + 1
        );
        version += 1;
    }
    Ok(())
}

/// Version 3: the column that marks an expired payload.
fn to_version_3(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch("ALTER TABLE events ADD COLUMN payload_expired_at INTEGER")?;
    Ok(())
}

/// Version 4: bodies stored once, in `bodies`. Each delivery's own body and each run's
/// transformed payload (which version 3 kept in the run's context) move there, one body per
/// row that had one (rows written before version 4 are not merged), and `deliveries.body` is
/// dropped. Step records keep the outputs they hold inline, which reads show as before.
fn to_version_4(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "ALTER TABLE runs ADD COLUMN payload_body INTEGER;
         ALTER TABLE deliveries ADD COLUMN body_id INTEGER;",
    )?;
    // Creates what the older file lacks: the `bodies` table and its index.
    conn.execute_batch(SCHEMA)?;
    // A page of rows at a time, in id order, so that a large store is not held in memory.
    let mut after = String::new();
    loop {
        let page: Vec<(String, i64)> = conn
            .prepare_cached(
                "SELECT d.id, COALESCE(e.seq, 0) FROM deliveries d LEFT JOIN events e ON e.id = d.event_id
                 WHERE d.body IS NOT NULL AND d.id > ?1 ORDER BY d.id LIMIT ?2",
            )?
            .query_map(rusqlite::params![after, MIGRATION_PAGE], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<Result<_, _>>()?;
        let Some((last, _)) = page.last() else {
            break;
        };
        after = last.clone();
        for (id, event_seq) in page {
            let body_id: i64 = conn
                .prepare_cached(
                    "INSERT INTO bodies (event_seq, data) SELECT ?2, body FROM deliveries WHERE id = ?1 RETURNING id",
                )?
                .query_row(rusqlite::params![id, event_seq], |r| r.get(0))?;
            conn.prepare_cached("UPDATE deliveries SET body_id = ?2 WHERE id = ?1")?
                .execute(rusqlite::params![id, body_id])?;
        }
    }
    conn.execute_batch("ALTER TABLE deliveries DROP COLUMN body")?;
    let mut after = String::new();
    loop {
        let page: Vec<(String, String, i64)> = conn
            .prepare_cached(
                "SELECT r.id, r.context, COALESCE(e.seq, 0) FROM runs r LEFT JOIN events e ON e.id = r.event_id
                 WHERE r.context IS NOT NULL AND r.id > ?1 ORDER BY r.id LIMIT ?2",
            )?
            .query_map(rusqlite::params![after, MIGRATION_PAGE], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<Result<_, _>>()?;
        let Some((last, _, _)) = page.last() else {
            break;
        };
        after = last.clone();
        for (run_id, context, event_seq) in page {
            move_context_payload(conn, &run_id, &context, event_seq)?;
        }
    }
    Ok(())
}

/// Rows a step of the version 4 migration reads at a time.
const MIGRATION_PAGE: i64 = 1000;

/// A run's context as version 3 stored it (`{"payload": ..., "steps": {...}}`, each part
/// there or not): its payload, when there is one (`null` included), becomes a body, and the
/// context keeps the step outputs.
fn move_context_payload(
    conn: &Connection,
    run_id: &str,
    context: &str,
    event_seq: i64,
) -> Result<(), StoreError> {
    use serde_json::value::RawValue;
    let parts: std::collections::BTreeMap<String, &RawValue> = serde_json::from_str(context)
        .map_err(|e| StoreError::Corrupt(format!("run {run_id}: its context: {e}")))?;
    let Some(payload) = parts.get("payload") else {
        return Ok(());
    };
    let body_id: i64 = conn
        .prepare_cached("INSERT INTO bodies (event_seq, data) VALUES (?1, ?2) RETURNING id")?
        .query_row(
            rusqlite::params![event_seq, payload.get().as_bytes()],
            |r| r.get(0),
        )?;
    let steps = parts
        .get("steps")
        .map(|steps| format!(r#"{{"steps":{}}}"#, steps.get()));
    conn.prepare_cached("UPDATE runs SET payload_body = ?2, context = ?3 WHERE id = ?1")?
        .execute(rusqlite::params![run_id, body_id, steps])?;
    Ok(())
}

/// The first id [`super::BodyIds`] hands out: past every id `bodies` has ever held.
pub fn next_body_id(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row(
        "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'bodies'), 0),
                    COALESCE((SELECT MAX(id) FROM bodies), 0)) + 1",
        [],
        |r| r.get(0),
    )?)
}

/// SQLite's `auto_vacuum` setting: 2 is INCREMENTAL.
const AUTO_VACUUM_INCREMENTAL: i64 = 2;

/// Whether the database frees pages back to the file system on `PRAGMA incremental_vacuum`.
pub fn auto_vacuum_incremental(conn: &Connection) -> Result<bool, StoreError> {
    let mode: i64 = conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
    Ok(mode == AUTO_VACUUM_INCREMENTAL)
}

/// A database made before Ferry set `auto_vacuum = INCREMENTAL` (which a database takes only
/// while it has no table) is rewritten whole by `VACUUM` in that mode: it needs free room of
/// about twice the database (a copy in the temporary directory, then every page through the
/// WAL) and takes as long as writing the file twice. It runs at start, before anything is
/// served, until it has succeeded once. When it fails (a full disk), nothing changed: the
/// store keeps working without giving pages back to the file system (pruned pages are still
/// reused), the failure is logged, and the next start tries again. Answers the connection to
/// go on with: a new one after a failure, since a failed write leaves the old one's WAL file
/// failed (`wal_vfs`).
fn convert_to_incremental(conn: Connection, path: &Path) -> Result<Connection, StoreError> {
    if auto_vacuum_incremental(&conn)? {
        return Ok(conn);
    }
    tracing::info!(path = %path.display(), "rewriting the store with auto_vacuum = INCREMENTAL (once; it takes as long as writing the file twice)");
    let started = std::time::Instant::now();
    match conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL; VACUUM") {
        Ok(()) => {
            tracing::info!(
                seconds = started.elapsed().as_secs_f64(),
                "the store now gives pruned pages back to the file system"
            );
            truncate_wal(&conn);
            Ok(conn)
        }
        Err(e) => {
            let detail = super::wal_vfs::take_failure().map_or(String::new(), |d| format!(": {d}"));
            tracing::warn!(error = %e, detail, "cannot rewrite the store with auto_vacuum = INCREMENTAL; it keeps working without giving pages back to the file system, and the next start tries again");
            drop(conn);
            let conn = connect_writer(path)?;
            truncate_wal(&conn);
            Ok(conn)
        }
    }
}

/// Copies the WAL into the database file and empties it. The rewrite sent every page through
/// the WAL, and Ferry's checkpointer starts a WAL over rather than shrinking it, so without this
/// a rewritten store kept a WAL as large as itself until the next clean stop; a failed rewrite
/// left the frames it wrote on a disk that was already short of room. Nothing else runs yet.
/// A failure here is logged: the store is as good as before, only larger on disk.
fn truncate_wal(conn: &Connection) {
    let result = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
        r.get::<_, i64>(0)
    });
    match result {
        Ok(0) => {}
        Ok(_) => tracing::warn!(
            "the WAL could not be emptied after the rewrite (busy); it is reused as it is"
        ),
        Err(e) => {
            let detail = super::wal_vfs::take_failure().map_or(String::new(), |d| format!(": {d}"));
            tracing::warn!(error = %e, detail, "the WAL could not be emptied after the rewrite; it is reused as it is");
        }
    }
}

/// The writer's connection, through the VFS that writes a commit's WAL frames in one call
/// and syncs them with one `fdatasync` (`wal_vfs`), with the schema in place.
pub fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    let mut conn = open_through(path, super::wal_vfs::NAME)?;
    if table_count(&conn)? == 0 {
        // A new file takes `auto_vacuum` only before its first table, and before WAL mode is
        // set (that writes the file's header).
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    }
    set_up_writer(&mut conn)?;
    // The first read recovers the WAL a previous process left, frames it wrote but died
    // before syncing included. Synced here once, every frame a checkpoint can see has been
    // synced, which is what lets the checkpointer skip SQLite's sync of the WAL (`wal_vfs`).
    let version = check_version(&conn)?;
    sync_leftover_wal(path)?;
    migrate(&conn, version)?;
    conn.execute_batch(SCHEMA)?;
    // Written only for a new file, so that a store on a full disk still opens.
    if version == 0 {
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    }
    convert_to_incremental(conn, path)
}

/// A writer's connection to a database whose schema is in place: the writer opens a new one
/// after a write failed (`writer::recover`).
pub fn connect_writer(path: &Path) -> Result<Connection, StoreError> {
    let mut conn = open_through(path, super::wal_vfs::NAME)?;
    set_up_writer(&mut conn)?;
    Ok(conn)
}

fn set_up_writer(conn: &mut Connection) -> Result<(), StoreError> {
    configure(conn)?;
    // 16 MiB of page cache for the writer, so hot index pages are not read back from the OS.
    conn.pragma_update(None, "cache_size", -16_384)?;
    // Checkpoints run on their own thread (see `checkpointer`), not inside commits.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.busy_handler(Some(retry_soon))?;
    Ok(())
}

/// A connection for the checkpointer thread, through the VFS that leaves out SQLite's
/// redundant sync of the WAL (`wal_vfs`).
pub fn open_checkpointer(path: &Path) -> Result<Connection, StoreError> {
    let mut conn = open_through(path, super::wal_vfs::CHECKPOINT_NAME)?;
    configure(&conn)?;
    conn.busy_handler(Some(retry_soon))?;
    Ok(conn)
}

/// `fdatasync`s the WAL beside the database at `path`, if there is one.
fn sync_leftover_wal(path: &Path) -> Result<(), StoreError> {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let wal = std::path::PathBuf::from(wal);
    match super::sync::sync_file(&mut None, &wal) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StoreError::Write(format!(
            "cannot sync the WAL left at {}: {e}",
            wal.display()
        ))),
        _ => Ok(()),
    }
}

/// Opens the database through one of the store's VFSes (`wal_vfs`).
fn open_through(path: &Path, vfs: &std::ffi::CStr) -> Result<Connection, StoreError> {
    super::wal_vfs::register().map_err(StoreError::Write)?;
    Ok(Connection::open_with_flags_and_vfs(
        path,
        rusqlite::OpenFlags::default(),
        vfs,
    )?)
}

/// The busy handler of the writer and the checkpointer, which wait on each other's locks:
/// SQLite's default handler sleeps 1, 2, 5, 10 ms and longer between tries, so a lock held
/// for a millisecond could stall every pending write for tens of them. This one tries again
/// every 50 µs, for 10 s or more in all.
fn retry_soon(tries: i32) -> bool {
    std::thread::sleep(std::time::Duration::from_micros(50));
    tries < 200_000
}

pub fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

const STATEMENT_CACHE: usize = 64;

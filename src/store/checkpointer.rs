//! The checkpointer thread: copies committed WAL pages into the database file off the writer's
//! path, and syncs the file.
//!
//! A checkpoint that fails (the file cannot grow on a full disk, an I/O error) leaves nothing
//! SQLite relies on: SQLite moves on only after the pages it copied were written (`wal_vfs`
//! writes them one at a time, so a failed write is told at once), and the WAL keeps them. It
//! is reported and tried again every second until one succeeds. A failed sync of the database
//! file is different: the kernel may have dropped the pages it could not write, and a later
//! sync would report success without them, while SQLite already reads them from the file. So
//! writes stop until Ferry restarts (the store says why): at the next start SQLite copies every
//! page of the WAL again.

use super::sync::sync_file;
use super::wal_vfs;
use super::writable::Writability;
use crate::telemetry::{Metrics, events};
use rusqlite::Connection;
use std::sync::Arc;
use std::time::Duration;

/// How often the checkpointer copies and syncs. Each sync of the database file shares the disk
/// with the writer's WAL syncs; at 60 ms instead of 250 ms each is a quarter the size, and the
/// ingest p99 under full load fell from 26 to 160 ms to 14 to 15 ms (docs/PERFORMANCE.md).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(60);

/// How long the checkpointer waits after a failed checkpoint.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// What the checkpointer needs besides its connection.
pub(super) struct Checkpointer {
    pub db_path: std::path::PathBuf,
    pub writability: Arc<Writability>,
    pub metrics: Arc<Metrics>,
}

/// Why a round of checkpoints stopped.
enum Failure {
    /// Nothing SQLite relies on changed: try again.
    Retry(String),
    /// A sync of the database file failed: stop writing until restart.
    Sync(String),
}

impl Checkpointer {
    /// Every [`CHECKPOINT_EVERY`] a PASSIVE checkpoint (it never blocks the writer) copies what
    /// is committed, and the database file is synced here when it copied anything: SQLite
    /// syncs it only after a checkpoint that copied the whole WAL, which under load only a
    /// RESTART does. Once the WAL holds more than [`super::schema::WAL_RESTART_BYTES`] of
    /// frames, a second PASSIVE copies what came meanwhile and a RESTART makes the next commit
    /// start the WAL over (a restarted WAL is overwritten, which syncs faster than a growing
    /// one). A RESTART holds off the writer while it copies and syncs what is left, so it must
    /// find little: left to SQLite, its sync took every page the passive checkpoints had copied
    /// since the last one, and stalled every write for 25 to 35 ms four times a second on a
    /// slow disk. Ends when the writer drops `stop`.
    pub(super) fn run(self, conn: Connection, stop: std::sync::mpsc::Receiver<()>) {
        let page_size: i64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap_or(4096);
        // A WAL frame is a page and its 24-byte header.
        let restart_frames = super::schema::WAL_RESTART_BYTES as i64 / (page_size + 24);
        let mut db = DbFile {
            path: self.db_path.clone(),
            file: None,
            synced_copied: 0,
        };
        let mut failures = 0u64;
        let mut wait = CHECKPOINT_EVERY;
        loop {
            match stop.recv_timeout(wait) {
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            match db.round(&conn, restart_frames) {
                Ok(()) => {
                    if failures > 0 {
                        events::store_checkpoints_resumed(failures);
                    }
                    failures = 0;
                    wait = CHECKPOINT_EVERY;
                }
                Err(Failure::Retry(reason)) => {
                    events::store_checkpoint_failed(&self.metrics, &reason, failures == 0);
                    failures += 1;
                    wait = RETRY_EVERY;
                }
                Err(Failure::Sync(reason)) => {
                    events::store_writes_stopped(&self.metrics, &reason);
                    self.writability.stop(reason);
                    // No checkpoint until restart; the writer's end still stops this thread.
                    let _ = stop.recv();
                    return;
                }
            }
        }
    }
}

/// The database file as the checkpointer syncs it.
struct DbFile {
    path: std::path::PathBuf,
    file: Option<std::fs::File>,
    /// The WAL frames copied into the file at its last sync: an idle WAL needs no sync.
    synced_copied: i64,
}

impl DbFile {
    /// Copies and syncs what is committed, and restarts the WAL when it has grown.
    fn round(&mut self, conn: &Connection, restart_frames: i64) -> Result<(), Failure> {
        let wal = self.copy_and_sync(conn)?;
        if wal.frames >= restart_frames {
            self.copy_and_sync(conn)?;
            checkpoint(conn, "RESTART")?;
            // The next commit starts the WAL over and its frames are counted from 0.
            self.synced_copied = 0;
        }
        Ok(())
    }

    /// A PASSIVE checkpoint, then a sync of the database file if it copied anything.
    fn copy_and_sync(&mut self, conn: &Connection) -> Result<WalProgress, Failure> {
        let wal = checkpoint(conn, "PASSIVE")?;
        if wal.copied != self.synced_copied {
            sync_file(&mut self.file, &self.path).map_err(|e| {
                Failure::Sync(format!(
                    "cannot sync {} after a checkpoint: {e}",
                    self.path.display()
                ))
            })?;
            self.synced_copied = wal.copied;
        }
        Ok(wal)
    }
}

/// What a checkpoint reports: the frames in the WAL and how many are in the database file.
struct WalProgress {
    frames: i64,
    copied: i64,
}

fn checkpoint(conn: &Connection, mode: &str) -> Result<WalProgress, Failure> {
    let progress = conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        Ok(WalProgress {
            frames: r.get(1)?,
            copied: r.get(2)?,
        })
    });
    progress.map_err(|e| {
        let detail = wal_vfs::take_failure().map_or(String::new(), |d| format!(": {d}"));
        let reason = format!("a {mode} checkpoint failed: {e}{detail}");
        match e.sqlite_error().map(|e| e.extended_code) {
            Some(rusqlite::ffi::SQLITE_IOERR_FSYNC) => Failure::Sync(reason),
            _ => Failure::Retry(reason),
        }
    })
}

//! Savepoints in the writer's open transaction: an op of several statements (ingest, a run's
//! save, a retention batch) is all or nothing within the batch it shares with other ops.

use super::StoreError;
use rusqlite::Connection;

/// Runs `write` inside a savepoint of the open transaction, so that an op of several
/// statements that fails leaves nothing of itself in the batch it shares with others.
pub(super) fn in_savepoint<T>(
    tx: &Connection,
    write: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    tx.prepare_cached("SAVEPOINT op")?.execute([])?;
    let result = write();
    // When SQLite rolled the transaction back itself (a full disk), there is no savepoint
    // left: the writer sees the error and fails the batch.
    if !tx.is_autocommit() {
        if result.is_err() {
            tx.prepare_cached("ROLLBACK TO op")?.execute([])?;
        }
        tx.prepare_cached("RELEASE op")?.execute([])?;
    }
    result
}

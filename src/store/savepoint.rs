//! An op of several statements is all or nothing within the writer's batch: a retention batch
//! or a reseal in a savepoint of its own (it fails alone); ingest and a run's save, on the hot
//! path, by taking the whole batch back when they fail halfway (a savepoint per op cost the
//! writer about 5% of fan-out's deliveries/s, for a failure that needs a bug or a colliding id).

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

/// Runs `write`, an op of the hot path that writes several rows. When it fails after a first
/// statement wrote, the open transaction is rolled back whole: the writer then answers every op
/// of the batch with the error (`writer::apply`), and none of them commits, the half-written op
/// least of all.
pub(super) fn all_or_batch<T>(
    tx: &Connection,
    write: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let result = write();
    if result.is_err() && !tx.is_autocommit() {
        let _ = tx.execute_batch("ROLLBACK");
    }
    result
}

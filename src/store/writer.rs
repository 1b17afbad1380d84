//! The store's threads. The writer takes every queued write, applies them in one transaction
//! and commits without syncing; the syncer makes committed batches durable with one
//! `fdatasync` of the WAL and only then answers the callers; the checkpointer copies the WAL
//! into the database file off both their paths.

use super::*;
use rusqlite::{Connection, OptionalExtension, params};

pub(super) enum Reply {
    Ingest(
        oneshot::Sender<Result<IngestOutcome, StoreError>>,
        Result<IngestOutcome, StoreError>,
    ),
    Attempt(
        oneshot::Sender<Result<(), StoreError>>,
        Result<(), StoreError>,
    ),
    Retry(
        oneshot::Sender<Result<Option<DeliveryJob>, StoreError>>,
        Result<Option<DeliveryJob>, StoreError>,
    ),
}

impl Reply {
    /// Answers the caller: the op's own result, or the failure of the commit or sync it was in.
    fn send(self, commit_failed: Option<&str>) {
        match self {
            Reply::Ingest(tx, r) => answer(tx, r, commit_failed),
            Reply::Attempt(tx, r) => answer(tx, r, commit_failed),
            Reply::Retry(tx, r) => answer(tx, r, commit_failed),
        }
    }
}

fn answer<T>(
    tx: oneshot::Sender<Result<T, StoreError>>,
    result: Result<T, StoreError>,
    failed: Option<&str>,
) {
    let _ = tx.send(match failed {
        Some(message) => Err(StoreError::Write(message.to_string())),
        None => result,
    });
}

/// Copies committed WAL pages into the database file off the writer's path. Every 250 ms a
/// PASSIVE checkpoint (never blocks the writer) copies what is committed; once the WAL has
/// passed [`schema::WAL_RESTART_BYTES`], a RESTART checkpoint (which has little left to copy)
/// makes the next commit start the WAL over. Ends when the writer drops `stop`.
pub(super) fn checkpointer(
    conn: Connection,
    wal_path: std::path::PathBuf,
    stop: std::sync::mpsc::Receiver<()>,
) {
    loop {
        match stop.recv_timeout(std::time::Duration::from_millis(250)) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let wal_size = std::fs::metadata(&wal_path).map(|m| m.len()).unwrap_or(0);
        let modes: &[&str] = if wal_size > super::schema::WAL_RESTART_BYTES {
            &["PASSIVE", "RESTART"]
        } else {
            &["PASSIVE"]
        };
        for mode in modes {
            if let Err(e) =
                conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(()))
            {
                tracing::warn!(error = %e, mode, "WAL checkpoint failed");
            }
        }
    }
}

pub(super) fn run(
    mut conn: Connection,
    mut rx: mpsc::Receiver<WriteOp>,
    options: StoreOptions,
    _checkpointer: std::sync::mpsc::Sender<()>,
    to_syncer: std::sync::mpsc::Sender<Vec<Reply>>,
) {
    let mut batch = Vec::with_capacity(options.max_batch);
    let mut rejections_in_batch = 0usize;
    let mut stats = BatchStats::default();
    while let Some(first) = recv_soon(&mut rx) {
        batch.push(first);
        while batch.len() < options.max_batch {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let applying = std::time::Instant::now();
        stats.ops += batch.len() as u64;
        let mut replies = Vec::with_capacity(batch.len());
        let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(e) => {
                tracing::error!(error = %e, "cannot begin a write transaction");
                let message = e.to_string();
                for op in batch.drain(..) {
                    fail_op(op, &message);
                }
                continue;
            }
        };
        for op in batch.drain(..) {
            match op {
                WriteOp::Ingest {
                    event,
                    runs,
                    deliveries,
                    reply,
                } => {
                    let r = ingest(&tx, &event, &runs, &deliveries);
                    replies.push(Reply::Ingest(reply, r));
                }
                WriteOp::Attempt { attempt, reply } => {
                    let r = record_attempt(&tx, &attempt);
                    replies.push(Reply::Attempt(reply, r));
                }
                WriteOp::Reject { rejection } => {
                    if let Err(e) = reject(&tx, &rejection) {
                        tracing::warn!(error = %e, "could not record a rejection");
                    }
                    rejections_in_batch += 1;
                }
                WriteOp::Retry {
                    delivery_id,
                    now,
                    reply,
                } => {
                    let r = retry(&tx, &delivery_id, now);
                    replies.push(Reply::Retry(reply, r));
                }
            }
        }
        if rejections_in_batch > 0 {
            rejections_in_batch = 0;
            if let Err(e) = tx.execute(
                "DELETE FROM rejections WHERE id <= (SELECT MAX(id) FROM rejections) - ?1",
                params![options.rejected_log_size as i64],
            ) {
                tracing::warn!(error = %e, "could not prune the rejected log");
            }
        }
        let committing = std::time::Instant::now();
        stats.apply += committing - applying;
        let committed = tx.commit();
        stats.commit += committing.elapsed();
        stats.batches += 1;
        stats.maybe_report();
        match committed {
            // Committed but not yet on disk: the syncer answers once it is.
            Ok(()) => {
                if let Err(unsent) = to_syncer.send(replies) {
                    unsent
                        .0
                        .into_iter()
                        .for_each(|r| r.send(Some("the syncer has stopped")));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "a write transaction failed to commit");
                let message = e.to_string();
                replies.into_iter().for_each(|r| r.send(Some(&message)));
            }
        }
    }
    // Every handle is gone: let the syncer answer the last batches, then close cleanly with a
    // synced checkpoint.
    drop(to_syncer);
    let _ = conn.pragma_update(None, "synchronous", "FULL");
    let _ = conn.pragma_update(None, "wal_checkpoint", "TRUNCATE");
}

/// Makes committed batches durable: one `fdatasync` of the WAL covers every batch committed
/// before it started, so while the disk syncs, the writer goes on committing the next ones.
/// Only then are the callers answered. Ends when the writer drops its sender.
pub(super) fn syncer(wal_path: std::path::PathBuf, batches: std::sync::mpsc::Receiver<Vec<Reply>>) {
    let mut wal: Option<std::fs::File> = None;
    let mut stats = (
        std::time::Instant::now(),
        0u64,
        0u64,
        std::time::Duration::ZERO,
    );
    while let Some(mut replies) = recv_soon_std(&batches) {
        let mut committed = 1;
        while let Ok(more) = batches.try_recv() {
            replies.extend(more);
            committed += 1;
        }
        let started = std::time::Instant::now();
        let synced = sync_wal(&mut wal, &wal_path);
        stats.1 += 1;
        stats.2 += committed;
        stats.3 += started.elapsed();
        match synced {
            Ok(()) => replies.into_iter().for_each(|r| r.send(None)),
            Err(e) => {
                tracing::error!(error = %e, path = %wal_path.display(), "cannot sync the WAL; the writes of these requests are not known to be on disk");
                let message = format!("syncing the WAL failed: {e}");
                replies.into_iter().for_each(|r| r.send(Some(&message)));
            }
        }
        if stats.0.elapsed() >= std::time::Duration::from_secs(5) {
            tracing::debug!(
                fsyncs = stats.1,
                commits_per_fsync = format!("{:.1}", stats.2 as f64 / stats.1 as f64),
                fsync_us = stats.3.as_micros() as u64 / stats.1,
                "store syncer"
            );
            stats = (std::time::Instant::now(), 0, 0, std::time::Duration::ZERO);
        }
    }
}

fn sync_wal(wal: &mut Option<std::fs::File>, path: &std::path::Path) -> std::io::Result<()> {
    if wal.is_none() {
        *wal = Some(std::fs::File::open(path)?);
    }
    match wal {
        Some(file) => file.sync_data(),
        None => Ok(()),
    }
}

/// Writer figures, logged at debug level every few seconds (`FERRY_LOG=ferry::store=debug`).
struct BatchStats {
    since: std::time::Instant,
    batches: u64,
    ops: u64,
    apply: std::time::Duration,
    commit: std::time::Duration,
}

impl Default for BatchStats {
    fn default() -> Self {
        BatchStats {
            since: std::time::Instant::now(),
            batches: 0,
            ops: 0,
            apply: Default::default(),
            commit: Default::default(),
        }
    }
}

impl BatchStats {
    fn maybe_report(&mut self) {
        if self.since.elapsed() < std::time::Duration::from_secs(5) || self.batches == 0 {
            return;
        }
        let per_batch = |d: std::time::Duration| d.as_micros() as u64 / self.batches;
        tracing::debug!(
            batches = self.batches,
            ops_per_batch = self.ops / self.batches,
            apply_us = per_batch(self.apply),
            commit_us = per_batch(self.commit),
            busy_pct = ((self.apply + self.commit).as_secs_f64()
                / self.since.elapsed().as_secs_f64()
                * 100.0) as u64,
            "store writer"
        );
        *self = BatchStats::default();
    }
}

/// Under load the next op usually comes within microseconds. Parking the thread and being
/// woken again costs far more than that on a virtual machine (a cross-CPU interrupt per wake),
/// so both store threads look again for a short while, yielding the CPU, before they park.
const POLL_BEFORE_PARKING: std::time::Duration = std::time::Duration::from_micros(100);

enum Polled<T> {
    Got(T),
    Empty,
    Closed,
}

/// Polls (yielding) for up to [`POLL_BEFORE_PARKING`], then parks in `park`.
fn poll_then_park<T>(
    mut poll: impl FnMut() -> Polled<T>,
    park: impl FnOnce() -> Option<T>,
) -> Option<T> {
    let started = std::time::Instant::now();
    while started.elapsed() < POLL_BEFORE_PARKING {
        match poll() {
            Polled::Got(item) => return Some(item),
            Polled::Closed => return None,
            Polled::Empty => std::thread::yield_now(),
        }
    }
    park()
}

fn recv_soon(rx: &mut mpsc::Receiver<WriteOp>) -> Option<WriteOp> {
    use mpsc::error::TryRecvError;
    let polled = poll_then_park(
        || match rx.try_recv() {
            Ok(op) => Polled::Got(op),
            Err(TryRecvError::Empty) => Polled::Empty,
            Err(TryRecvError::Disconnected) => Polled::Closed,
        },
        || None,
    );
    polled.or_else(|| rx.blocking_recv())
}

fn recv_soon_std<T>(rx: &std::sync::mpsc::Receiver<T>) -> Option<T> {
    use std::sync::mpsc::TryRecvError;
    poll_then_park(
        || match rx.try_recv() {
            Ok(item) => Polled::Got(item),
            Err(TryRecvError::Empty) => Polled::Empty,
            Err(TryRecvError::Disconnected) => Polled::Closed,
        },
        || rx.recv().ok(),
    )
}

fn fail_op(op: WriteOp, message: &str) {
    let message = format!("cannot begin a transaction: {message}");
    match op {
        WriteOp::Ingest { reply, .. } => answer(reply, Err(StoreError::Write(message)), None),
        WriteOp::Attempt { reply, .. } => answer(reply, Err(StoreError::Write(message)), None),
        WriteOp::Retry { reply, .. } => answer(reply, Err(StoreError::Write(message)), None),
        WriteOp::Reject { .. } => {}
    }
}

fn ingest(
    tx: &Connection,
    e: &NewEvent,
    runs: &[NewRun],
    deliveries: &[NewDelivery],
) -> Result<IngestOutcome, StoreError> {
    let inserted = tx
        .prepare_cached(
            "INSERT INTO events (id, source, event_type, idempotency_key, received_at, headers, payload)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
        )?
        .execute(params![e.id, e.source, e.event_type, e.idempotency_key, e.received_at, e.headers, &e.payload[..]])?;
    if inserted == 0 {
        let existing: Option<String> = tx
            .prepare_cached("SELECT id FROM events WHERE source = ?1 AND idempotency_key = ?2")?
            .query_row(params![e.source, e.idempotency_key], |r| r.get(0))
            .optional()?;
        return match existing {
            Some(event_id) => Ok(IngestOutcome::Duplicate { event_id }),
            None => Err(StoreError::Corrupt(format!(
                "event id {} already exists",
                e.id
            ))),
        };
    }
    let mut run_stmt =
        tx.prepare_cached("INSERT INTO runs (id, event_id, flow_id, status, error, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?;
    for r in runs {
        run_stmt.execute(params![
            r.id,
            e.id,
            r.flow_id,
            r.status,
            r.error,
            e.received_at
        ])?;
    }
    let mut delivery_stmt = tx.prepare_cached(
        "INSERT INTO deliveries (id, event_id, run_id, destination_id, status, next_attempt_at, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?5, ?5)",
    )?;
    for d in deliveries {
        delivery_stmt.execute(params![
            d.id,
            e.id,
            d.run_id,
            d.destination_id,
            e.received_at
        ])?;
    }
    Ok(IngestOutcome::Accepted)
}

fn record_attempt(tx: &Connection, a: &NewAttempt) -> Result<(), StoreError> {
    let (status, next_at) = match a.next {
        AttemptNext::Succeeded => ("succeeded", None),
        AttemptNext::RetryAt(at) => ("pending", Some(at)),
        AttemptNext::Dead => ("dead", None),
    };
    let now = a.started_at + a.duration_ms;
    let updated = tx
        .prepare_cached(
            "UPDATE deliveries SET attempts = attempts + 1, round_attempts = round_attempts + 1, status = ?2,
             next_attempt_at = ?3, updated_at = ?4, last_error = ?5 WHERE id = ?1",
        )?
        .execute(params![a.delivery_id, status, next_at, now, a.error])?;
    if updated == 0 {
        return Err(StoreError::Corrupt(format!(
            "no delivery {}",
            a.delivery_id
        )));
    }
    tx.prepare_cached(
        "INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, status_code, response_headers, response_body, error, outcome)
         VALUES (?1, (SELECT attempts FROM deliveries WHERE id = ?1), ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![a.delivery_id, a.started_at, a.duration_ms, a.status_code, a.response_headers, a.response_body, a.error, a.outcome])?;
    Ok(())
}

fn reject(tx: &Connection, r: &Rejection) -> Result<(), StoreError> {
    tx.prepare_cached("INSERT INTO rejections (source, received_at, status, error, reason, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?
        .execute(params![r.source, r.received_at, r.status, r.error, r.reason, r.body])?;
    Ok(())
}

fn retry(
    tx: &Connection,
    delivery_id: &str,
    now: Millis,
) -> Result<Option<DeliveryJob>, StoreError> {
    Ok(tx
        .prepare_cached(
            "UPDATE deliveries SET status = 'pending', round_attempts = 0, next_attempt_at = ?2, updated_at = ?2
             WHERE id = ?1 AND status = 'dead' RETURNING id, event_id, destination_id",
        )?
        .query_row(params![delivery_id, now], |r| {
            Ok(DeliveryJob { id: r.get(0)?, event_id: r.get(1)?, destination_id: r.get(2)?, round_attempts: 0, due_at: now, payload: None })
        })
        .optional()?)
}

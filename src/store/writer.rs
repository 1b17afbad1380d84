//! The writer thread: takes every queued write, applies them in one transaction, commits
//! (one fsync for the whole batch), and only then answers the callers.

use super::*;
use rusqlite::{Connection, OptionalExtension, params};

enum Reply {
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
    fn send(self, commit_failed: Option<&str>) {
        let fail = |m: &str| StoreError::Corrupt(format!("commit failed: {m}"));
        match self {
            Reply::Ingest(tx, r) => {
                let _ = tx.send(match commit_failed {
                    Some(m) => Err(fail(m)),
                    None => r,
                });
            }
            Reply::Attempt(tx, r) => {
                let _ = tx.send(match commit_failed {
                    Some(m) => Err(fail(m)),
                    None => r,
                });
            }
            Reply::Retry(tx, r) => {
                let _ = tx.send(match commit_failed {
                    Some(m) => Err(fail(m)),
                    None => r,
                });
            }
        }
    }
}

/// Copies committed WAL pages into the database file every half second, off the writer's
/// path (PASSIVE: never blocks it). If the WAL outgrows [`schema::WAL_LIMIT_BYTES`] anyway, a
/// RESTART checkpoint makes the writer wait once so the WAL starts over. Ends when the writer
/// drops `stop`.
pub(super) fn checkpointer(
    conn: Connection,
    wal_path: std::path::PathBuf,
    stop: std::sync::mpsc::Receiver<()>,
) {
    loop {
        match stop.recv_timeout(std::time::Duration::from_millis(500)) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let big = std::fs::metadata(&wal_path)
            .map(|m| m.len() > super::schema::WAL_LIMIT_BYTES)
            .unwrap_or(false);
        let mode = if big { "RESTART" } else { "PASSIVE" };
        if let Err(e) = conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(())) {
            tracing::warn!(error = %e, mode, "WAL checkpoint failed");
        }
    }
}

pub(super) fn run(
    mut conn: Connection,
    mut rx: mpsc::Receiver<WriteOp>,
    options: StoreOptions,
    _checkpointer: std::sync::mpsc::Sender<()>,
) {
    let mut batch = Vec::with_capacity(options.max_batch);
    let mut rejections_since_prune = 0usize;
    let mut last_batch = 0usize;
    let mut stats = BatchStats::default();
    while let Some(first) = rx.blocking_recv() {
        let idle_until = std::time::Instant::now();
        batch.push(first);
        collect_batch(&mut rx, &mut batch, options.max_batch, last_batch > 1);
        last_batch = batch.len();
        let applying = std::time::Instant::now();
        stats.ops += batch.len() as u64;
        stats.collect += applying - idle_until;
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
                    rejections_since_prune += 1;
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
        if rejections_since_prune >= 64 {
            rejections_since_prune = 0;
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
            Ok(()) => replies.into_iter().for_each(|r| r.send(None)),
            Err(e) => {
                tracing::error!(error = %e, "a write transaction failed to commit");
                let message = e.to_string();
                replies.into_iter().for_each(|r| r.send(Some(&message)));
            }
        }
    }
    // Every handle is gone: close cleanly so the WAL is checkpointed.
    let _ = conn.pragma_update(None, "wal_checkpoint", "TRUNCATE");
}

/// Writer figures, logged at debug level every few seconds (`FERRY_LOG=ferry::store=debug`).
struct BatchStats {
    since: std::time::Instant,
    batches: u64,
    ops: u64,
    collect: std::time::Duration,
    apply: std::time::Duration,
    commit: std::time::Duration,
}

impl Default for BatchStats {
    fn default() -> Self {
        BatchStats {
            since: std::time::Instant::now(),
            batches: 0,
            ops: 0,
            collect: Default::default(),
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
            collect_us = per_batch(self.collect),
            apply_us = per_batch(self.apply),
            commit_us = per_batch(self.commit),
            busy_pct = ((self.collect + self.apply + self.commit).as_secs_f64()
                / self.since.elapsed().as_secs_f64()
                * 100.0) as u64,
            "store writer"
        );
        *self = BatchStats::default();
    }
}

/// How long the writer may linger for a batch to fill, under load.
const LINGER: std::time::Duration = std::time::Duration::from_micros(400);
/// How often it looks for more while lingering.
const LINGER_POLL: std::time::Duration = std::time::Duration::from_micros(40);

/// Takes what is queued. Under load (`busy`: the last batch had company) it lingers while the
/// batch keeps growing, up to [`LINGER`]: a commit costs one fsync whatever its size, so a
/// batch cut short makes everyone who arrives a moment later wait a whole extra commit. When
/// idle it commits at once, so a lone request pays no linger.
fn collect_batch(
    rx: &mut mpsc::Receiver<WriteOp>,
    batch: &mut Vec<WriteOp>,
    max: usize,
    busy: bool,
) {
    let started = std::time::Instant::now();
    loop {
        let before = batch.len();
        while batch.len() < max {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let grew = batch.len() > before;
        if !busy || batch.len() >= max || (!grew && before > 1) || started.elapsed() >= LINGER {
            return;
        }
        std::thread::sleep(LINGER_POLL);
    }
}

fn fail_op(op: WriteOp, message: &str) {
    let err = || StoreError::Corrupt(format!("cannot write: {message}"));
    match op {
        WriteOp::Ingest { reply, .. } => {
            let _ = reply.send(Err(err()));
        }
        WriteOp::Attempt { reply, .. } => {
            let _ = reply.send(Err(err()));
        }
        WriteOp::Retry { reply, .. } => {
            let _ = reply.send(Err(err()));
        }
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

//! The writer thread: takes every queued write, applies them in one transaction, commits
//! (one fsync for the whole batch), and only then answers the callers.

use super::*;
use rusqlite::{Connection, OptionalExtension, params};

enum Reply {
    Ingest(oneshot::Sender<Result<IngestOutcome, StoreError>>, Result<IngestOutcome, StoreError>),
    Attempt(oneshot::Sender<Result<(), StoreError>>, Result<(), StoreError>),
    Retry(oneshot::Sender<Result<Option<DeliveryJob>, StoreError>>, Result<Option<DeliveryJob>, StoreError>),
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

pub(super) fn run(mut conn: Connection, mut rx: mpsc::Receiver<WriteOp>, options: StoreOptions) {
    let mut batch = Vec::with_capacity(options.max_batch);
    let mut rejections_since_prune = 0usize;
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < options.max_batch {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
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
                WriteOp::Ingest { event, runs, deliveries, reply } => {
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
                WriteOp::Retry { delivery_id, now, reply } => {
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
        match tx.commit() {
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

fn ingest(tx: &Connection, e: &NewEvent, runs: &[NewRun], deliveries: &[NewDelivery]) -> Result<IngestOutcome, StoreError> {
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
            None => Err(StoreError::Corrupt(format!("event id {} already exists", e.id))),
        };
    }
    let mut run_stmt =
        tx.prepare_cached("INSERT INTO runs (id, event_id, flow_id, status, error, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?;
    for r in runs {
        run_stmt.execute(params![r.id, e.id, r.flow_id, r.status, r.error, e.received_at])?;
    }
    let mut delivery_stmt = tx.prepare_cached(
        "INSERT INTO deliveries (id, event_id, run_id, destination_id, status, next_attempt_at, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?5, ?5)",
    )?;
    for d in deliveries {
        delivery_stmt.execute(params![d.id, e.id, d.run_id, d.destination_id, e.received_at])?;
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
        return Err(StoreError::Corrupt(format!("no delivery {}", a.delivery_id)));
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

fn retry(tx: &Connection, delivery_id: &str, now: Millis) -> Result<Option<DeliveryJob>, StoreError> {
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

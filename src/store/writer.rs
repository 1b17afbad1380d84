//! The writer thread. It takes every queued write, applies them in one transaction, commits
//! (the commit writes its WAL frames in one call and `fdatasync`s the WAL: see `wal_vfs`) and
//! only then answers the callers. A transaction that fails because the disk could not take it
//! (full, an I/O error) is rolled back and every caller of its batch is told; the store then
//! cannot write (`writable`) until a small write on a new connection commits, tried every
//! second, and writes asked for meanwhile are refused at once. The bytes its commits wrote to
//! the WAL go to `ferry_store_wal_written_bytes_total`.

use super::writable::Writability;
use super::*;
use crate::telemetry::{Metrics, events};
use rusqlite::{Connection, OptionalExtension, params};
use std::time::{Duration, Instant};

pub(super) enum Reply {
    Ingest(
        oneshot::Sender<Result<IngestOutcome, StoreError>>,
        Result<IngestOutcome, StoreError>,
    ),
    Attempt(
        oneshot::Sender<Result<Option<Settled>, StoreError>>,
        Result<Option<Settled>, StoreError>,
    ),
    SaveRun(
        oneshot::Sender<Result<bool, StoreError>>,
        Result<bool, StoreError>,
    ),
    ReplayRun(
        oneshot::Sender<Result<ReplayOutcome, StoreError>>,
        Result<ReplayOutcome, StoreError>,
    ),
    Done(
        oneshot::Sender<Result<(), StoreError>>,
        Result<(), StoreError>,
    ),
    Changed(
        oneshot::Sender<Result<bool, StoreError>>,
        Result<bool, StoreError>,
    ),
    Retry(
        oneshot::Sender<Result<Option<DeliveryJob>, StoreError>>,
        Result<Option<DeliveryJob>, StoreError>,
    ),
    Pruned(
        oneshot::Sender<Result<PruneReport, StoreError>>,
        Result<PruneReport, StoreError>,
    ),
    Count(
        oneshot::Sender<Result<usize, StoreError>>,
        Result<usize, StoreError>,
    ),
}

impl Reply {
    /// Answers the caller: the op's own result, or the failure of the commit or sync it was in.
    fn send(self, commit_failed: Option<&str>) {
        match self {
            Reply::Ingest(tx, r) => answer(tx, r, commit_failed),
            Reply::Attempt(tx, r) => answer(tx, r, commit_failed),
            Reply::Retry(tx, r) => answer(tx, r, commit_failed),
            Reply::SaveRun(tx, r) => answer(tx, r, commit_failed),
            Reply::ReplayRun(tx, r) => answer(tx, r, commit_failed),
            Reply::Done(tx, r) => answer(tx, r, commit_failed),
            Reply::Changed(tx, r) => answer(tx, r, commit_failed),
            Reply::Pruned(tx, r) => answer(tx, r, commit_failed),
            Reply::Count(tx, r) => answer(tx, r, commit_failed),
        }
    }

    /// The op's own error, if it failed.
    fn error(&self) -> Option<&StoreError> {
        match self {
            Reply::Ingest(_, r) => r.as_ref().err(),
            Reply::Attempt(_, r) => r.as_ref().err(),
            Reply::Retry(_, r) => r.as_ref().err(),
            Reply::SaveRun(_, r) | Reply::Changed(_, r) => r.as_ref().err(),
            Reply::ReplayRun(_, r) => r.as_ref().err(),
            Reply::Done(_, r) => r.as_ref().err(),
            Reply::Pruned(_, r) => r.as_ref().err(),
            Reply::Count(_, r) => r.as_ref().err(),
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

/// The transaction the writer holds open: the replies of the ops applied in it, waiting for
/// its commit.
struct OpenBatch {
    replies: Vec<Reply>,
    ops: usize,
    rejections: usize,
}

/// What the writer thread needs besides its connection and queue.
pub(super) struct WriterContext {
    pub path: PathBuf,
    pub writability: Arc<Writability>,
    pub metrics: Arc<Metrics>,
}

/// A transaction the disk could not take: what failed and where, and how many writes of it
/// were answered with the failure.
struct Failed {
    reason: String,
    writes: usize,
}

/// Applies every write: takes every op queued (up to `max_batch`), applies them in one
/// transaction, commits (which writes and syncs the WAL), and only then answers their callers
/// (group commit). While the disk syncs, the next ops queue up, so under load one commit and
/// one fsync cover every request that came during the previous sync. The thread parks when the queue is
/// empty: on two cores, polling for the next op costs more than the wake-up it saves.
///
/// When the disk cannot take a transaction, its connection is dropped (its WAL file stays
/// failed: `wal_vfs`) and [`recover`] runs until a write commits on a new one.
pub(super) fn run(
    conn: Connection,
    mut rx: mpsc::Receiver<WriteOp>,
    options: StoreOptions,
    ctx: WriterContext,
    _checkpointer: std::sync::mpsc::Sender<()>,
) {
    let mut stats = BatchStats::default();
    let mut conn = Some(conn);
    loop {
        // Set by a failure here, or by the checkpointer when writes must stop until restart.
        if ctx.writability.is_failing() {
            conn = None;
        }
        let Some(live) = conn.as_ref() else {
            match recover(&mut rx, &ctx) {
                Some(fresh) => {
                    conn = Some(fresh);
                    continue;
                }
                None => return,
            }
        };
        // A wait for the first op of a batch is counted only when the queue was empty: under
        // load, how often the writer idles while requests are elsewhere is what bounds ingest.
        let waiting = rx.is_empty().then(Instant::now);
        let Some(first) = rx.blocking_recv() else {
            break;
        };
        if let Some(since) = waiting {
            stats.idle_waits += 1;
            stats.idle += since.elapsed();
        }
        let applying = Instant::now();
        let mut open: Option<OpenBatch> = None;
        let mut next = Some(first);
        let mut failed = None;
        while let Some(op) = next.take() {
            failed = apply(live, op, &mut open, &ctx);
            if failed.is_none() && open.as_ref().is_none_or(|b| b.ops < options.max_batch) {
                next = rx.try_recv().ok();
            }
        }
        stats.apply += applying.elapsed();
        if failed.is_none()
            && let Some(batch) = open
        {
            failed = commit(live, batch, &options, &mut stats, &ctx);
        }
        if let Some(f) = failed {
            // Counted, logged and marked before its callers were answered (`disk_failed`).
            tracing::debug!(reason = %f.reason, writes = f.writes, "the writer drops its connection after a failed write");
            conn = None;
        }
    }
    // Every handle is gone: close cleanly with a synced checkpoint.
    if let Some(conn) = conn {
        let _ = conn.pragma_update(None, "wal_checkpoint", "TRUNCATE");
    }
}

/// How often the writer tries a write while the store cannot write.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// While the store cannot write: refuses every queued write at once, and every
/// [`PROBE_EVERY`] tries a small write on a new connection. Answers that connection once its
/// write commits (the store can write again), or `None` when every handle is gone. A stop
/// until restart is never probed.
fn recover(rx: &mut mpsc::Receiver<WriteOp>, ctx: &WriterContext) -> Option<Connection> {
    let mut next_probe = Instant::now() + PROBE_EVERY;
    loop {
        loop {
            match rx.try_recv() {
                Ok(op) => refuse(op, || {
                    StoreError::Unwritable(
                        ctx.writability
                            .get()
                            .map_or_else(|| "a write failed".to_string(), |u| u.reason),
                    )
                }),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return None,
            }
        }
        let now = Instant::now();
        if now < next_probe {
            std::thread::sleep((next_probe - now).min(Duration::from_millis(50)));
            continue;
        }
        next_probe = now + PROBE_EVERY;
        if ctx.writability.get().is_some_and(|u| u.until_restart) {
            continue;
        }
        match probe(&ctx.path) {
            Ok(conn) => {
                if let Some(down) = ctx.writability.restored() {
                    events::store_writable_again(down);
                    return Some(conn);
                }
            }
            Err(reason) => {
                events::store_probe_failed(&ctx.metrics, &reason);
                ctx.writability.failed(reason);
            }
        }
    }
}

/// A new writer connection, if a write of some 64 KiB commits through it.
fn probe(path: &Path) -> Result<Connection, String> {
    let conn = schema::connect_writer(path)
        .map_err(|e| format!("cannot open the store at {}: {e}", path.display()))?;
    conn.execute_batch(
        "BEGIN IMMEDIATE;
         INSERT OR REPLACE INTO store_probe (id, pad) VALUES (1, zeroblob(65536));
         COMMIT",
    )
    .map_err(|e| describe_failure(&e, path))?;
    Ok(conn)
}

/// What failed and where: SQLite's error, and what the VFS saw (the file, the offset, the
/// system's error) when the failure was one of its files'.
fn describe_failure(e: &rusqlite::Error, path: &Path) -> String {
    match super::wal_vfs::take_failure() {
        Some(detail) => format!("{e}: {detail}"),
        None => format!("{e} (the store at {})", path.display()),
    }
}

/// When `e` says the disk could not take a write (full, an I/O error, a read-only or missing
/// file), rather than that the op itself was wrong: what failed and where.
fn storage_failure(e: &StoreError, path: &Path) -> Option<String> {
    use rusqlite::ErrorCode::{CannotOpen, DiskFull, ReadOnly, SystemIoFailure};
    let StoreError::Sqlite(e) = e else {
        return None;
    };
    matches!(
        e.sqlite_error_code(),
        Some(DiskFull | SystemIoFailure | CannotOpen | ReadOnly)
    )
    .then(|| describe_failure(e, path))
}

/// Rolls back what is left of a failed transaction and answers every caller of its batch
/// with `reason`: nothing of it was acknowledged. When the disk failed (`disk`), that is
/// counted, logged and the store says it cannot write before any caller hears of the failure,
/// so that what a caller reads next (`/readyz`, `Store::unwritable`, the metrics) agrees with
/// the error it got.
fn fail_batch(
    conn: &Connection,
    batch: OpenBatch,
    reason: &str,
    disk: Option<&WriterContext>,
) -> usize {
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    if let Some(ctx) = disk {
        disk_failed(ctx, reason, batch.ops);
    }
    batch.replies.into_iter().for_each(|r| r.send(Some(reason)));
    batch.ops
}

/// A write of `writes` ops failed on the disk: counted and logged, and the store cannot write
/// from now (logged when it could until now).
fn disk_failed(ctx: &WriterContext, reason: &str, writes: usize) {
    events::store_write_failed(&ctx.metrics, reason, writes);
    if ctx.writability.failed(reason.to_string()) {
        events::store_unwritable(reason);
    }
}

/// Applies one op in the open transaction, beginning one if none is open. Answers the failure
/// when the disk could not take it (the transaction is then rolled back and its callers told).
fn apply(
    tx: &Connection,
    op: WriteOp,
    open: &mut Option<OpenBatch>,
    ctx: &WriterContext,
) -> Option<Failed> {
    let path = ctx.path.as_path();
    if open.is_none() {
        // Cached like every statement here: `execute_batch` would parse the SQL every time.
        if let Err(e) = tx
            .prepare_cached("BEGIN IMMEDIATE")
            .and_then(|mut s| s.execute([]))
        {
            let e = StoreError::from(e);
            let failed = storage_failure(&e, path);
            tracing::error!(error = %e, "cannot begin a write transaction");
            if let Some(reason) = &failed {
                disk_failed(ctx, reason, 1);
            }
            refuse(op, || {
                StoreError::Write(format!("cannot begin a transaction: {e}"))
            });
            return failed.map(|reason| Failed { reason, writes: 1 });
        }
        *open = Some(OpenBatch {
            replies: Vec::new(),
            ops: 0,
            rejections: 0,
        });
    }
    let batch = open.as_mut()?;
    batch.ops += 1;
    let replies = &mut batch.replies;
    let mut rejected = None;
    match op {
        WriteOp::Ingest {
            event,
            runs,
            deliveries,
            reply,
        } => {
            let r = ingest(tx, &event, &runs, &deliveries);
            replies.push(Reply::Ingest(reply, r));
        }
        WriteOp::Attempt { attempt, reply } => {
            let r = record_attempt(tx, &attempt);
            replies.push(Reply::Attempt(reply, r));
        }
        WriteOp::Reject { rejection } => {
            if let Err(e) = reject(tx, &rejection) {
                tracing::warn!(error = %e, "could not record a rejection");
                rejected = Some(e);
            }
            batch.rejections += 1;
        }
        WriteOp::Retry {
            delivery_id,
            now,
            reply,
        } => {
            let r = retry(tx, &delivery_id, now);
            replies.push(Reply::Retry(reply, r));
        }
        WriteOp::SaveRun {
            save,
            deliveries,
            attempt,
            reply,
        } => {
            let r = save_run(tx, &save, &deliveries, attempt.as_ref());
            replies.push(Reply::SaveRun(reply, r));
        }
        WriteOp::AddRuns {
            event_id,
            now,
            runs,
            deliveries,
            reply,
        } => {
            let r = add_runs(tx, &event_id, now, &runs, &deliveries);
            replies.push(Reply::SaveRun(reply, r));
        }
        WriteOp::ReplayRun { replay, reply } => {
            let r = replay_run(tx, &replay);
            replies.push(Reply::ReplayRun(reply, r));
        }
        WriteOp::SetPaused {
            destination_id,
            pause,
            reply,
        } => {
            let r = set_paused(tx, &destination_id, pause.as_ref());
            replies.push(Reply::Done(reply, r));
        }
        WriteOp::SaveAlert {
            state,
            change,
            reply,
        } => {
            let r = save_alert(tx, &state, change.as_ref());
            replies.push(Reply::Done(reply, r));
        }
        WriteOp::SaveSourceState {
            source,
            state,
            at,
            reply,
        } => {
            let r = tx
                .prepare_cached(
                    "INSERT INTO source_states (source, state, updated_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (source) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
                )
                .and_then(|mut s| s.execute(params![source, state, at]))
                .map(|_| ())
                .map_err(StoreError::from);
            replies.push(Reply::Done(reply, r));
        }
        WriteOp::CreateToken { token, reply } => {
            let r = tx
                .prepare_cached("INSERT INTO api_tokens (id, name, scope, hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5)")
                .and_then(|mut s| s.execute(params![token.id, token.name, token.scope, token.hash, token.created_at]))
                .map(|_| ())
                .map_err(StoreError::from);
            replies.push(Reply::Done(reply, r));
        }
        WriteOp::ConfigChange { change, reply } => {
            let r = super::objects::apply_config_change(tx, &change);
            replies.push(Reply::Done(reply, r));
        }
        WriteOp::Reseal { updates, reply } => {
            let r = super::objects::reseal(tx, &updates);
            replies.push(Reply::Done(reply, r));
        }
        WriteOp::PruneEvents {
            scope,
            cutoffs,
            reply,
        } => {
            let r = super::prune::prune_events(tx, &scope, &cutoffs);
            replies.push(Reply::Pruned(reply, r));
        }
        WriteOp::PruneRejections { before, max, reply } => {
            let r = super::prune::prune_rejections(tx, before, max);
            replies.push(Reply::Count(reply, r));
        }
        WriteOp::Vacuum { pages, reply } => {
            let r = super::prune::incremental_vacuum(tx, pages);
            replies.push(Reply::Done(reply, r));
        }
        WriteOp::RevokeToken { id, now, reply } => {
            let r = tx
                .prepare_cached(
                    "UPDATE api_tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                )
                .and_then(|mut s| s.execute(params![id, now]))
                .map(|n| n > 0)
                .map_err(StoreError::from);
            replies.push(Reply::Changed(reply, r));
        }
    }
    let storage = rejected
        .as_ref()
        .or_else(|| batch.replies.last().and_then(Reply::error))
        .and_then(|e| storage_failure(e, path));
    // An error of the disk takes every op applied in the transaction along (SQLite may have
    // rolled it back already): their callers are told, and the next op begins anew.
    if storage.is_none() && !tx.is_autocommit() {
        return None;
    }
    let from_disk = storage.is_some();
    let lost = open.take()?;
    let reason =
        storage.unwrap_or_else(|| "the write transaction was rolled back by an error".into());
    let writes = fail_batch(tx, lost, &reason, from_disk.then_some(ctx));
    if !from_disk {
        // Rolled back by SQLite for another reason than the disk: the store still writes.
        tracing::error!(ops = writes, reason, "a write transaction was rolled back");
    }
    from_disk.then_some(Failed { reason, writes })
}

/// Commits the open transaction and answers the batch's callers: with their results once the
/// commit returned (its WAL frames are then written and synced: `synchronous=FULL` through
/// `wal_vfs`), or with the failure of the commit, a failed sync included. Answers the failure
/// when the disk could not take the commit. The bytes written to the WAL are counted first.
fn commit(
    conn: &Connection,
    batch: OpenBatch,
    options: &StoreOptions,
    stats: &mut BatchStats,
    ctx: &WriterContext,
) -> Option<Failed> {
    let path = ctx.path.as_path();
    if batch.rejections > 0
        && let Err(e) = conn.execute(
            "DELETE FROM rejections WHERE id <= (SELECT MAX(id) FROM rejections) - ?1",
            params![options.rejected_log_size as i64],
        )
    {
        let e = StoreError::from(e);
        if let Some(reason) = storage_failure(&e, path) {
            let writes = fail_batch(conn, batch, &reason, Some(ctx));
            return Some(Failed { reason, writes });
        }
        tracing::warn!(error = %e, "could not prune the rejected log");
    }
    let committing = Instant::now();
    let committed = conn
        .prepare_cached("COMMIT")
        .and_then(|mut s| s.execute([]))
        .map(drop);
    stats.commit += committing.elapsed();
    // Counted before the callers are answered, so that a caller sees its commit's bytes.
    events::store_wal_written(&ctx.metrics, super::wal_vfs::take_wal_written());
    stats
        .sizes
        .push(u32::try_from(batch.ops).unwrap_or(u32::MAX));
    stats.maybe_report();
    let Err(e) = committed else {
        batch.replies.into_iter().for_each(|r| r.send(None));
        return None;
    };
    let e = StoreError::from(e);
    match storage_failure(&e, path) {
        Some(reason) => {
            let writes = fail_batch(conn, batch, &reason, Some(ctx));
            Some(Failed { reason, writes })
        }
        None => {
            tracing::error!(error = %e, "a write transaction failed to commit; nothing of it was acknowledged");
            fail_batch(conn, batch, &e.to_string(), None);
            None
        }
    }
}

/// Writer figures, logged at debug level every few seconds (`FERRY_LOG=ferry::store=debug`).
/// Besides the means, the spread of batch sizes and the writer's waits on an empty queue: a
/// wide spread (many batches of a few ops beside batches of nearly every connection) and
/// frequent waits are the signs of requests moving as a convoy (docs/PERFORMANCE.md).
struct BatchStats {
    since: std::time::Instant,
    apply: std::time::Duration,
    /// The commit, its WAL write and sync included.
    commit: std::time::Duration,
    /// Ops in each batch of the period.
    sizes: Vec<u32>,
    /// Batches whose first op the writer waited for on an empty queue, and those waits.
    idle_waits: u64,
    idle: std::time::Duration,
}

impl Default for BatchStats {
    fn default() -> Self {
        BatchStats {
            since: std::time::Instant::now(),
            apply: Default::default(),
            commit: Default::default(),
            sizes: Vec::new(),
            idle_waits: 0,
            idle: Default::default(),
        }
    }
}

impl BatchStats {
    fn maybe_report(&mut self) {
        let batches = self.sizes.len() as u64;
        if self.since.elapsed() < std::time::Duration::from_secs(5) || batches == 0 {
            return;
        }
        let ops: u64 = self.sizes.iter().map(|&n| u64::from(n)).sum();
        let per_batch = |d: std::time::Duration| d.as_micros() as u64 / batches;
        self.sizes.sort_unstable();
        let ops_at = |p| crate::telemetry::nearest_rank(&self.sizes, p).unwrap_or(0);
        tracing::debug!(
            batches,
            ops_per_batch = ops / batches,
            ops_p10 = ops_at(0.1),
            ops_p50 = ops_at(0.5),
            ops_p90 = ops_at(0.9),
            apply_us = per_batch(self.apply),
            commit_and_sync_us = per_batch(self.commit),
            busy_pct = ((self.apply + self.commit).as_secs_f64()
                / self.since.elapsed().as_secs_f64()
                * 100.0) as u64,
            waited_pct = self.idle_waits * 100 / batches,
            wait_us = self.idle.as_micros() as u64 / self.idle_waits.max(1),
            "store writer"
        );
        *self = BatchStats::default();
    }
}

/// Answers an op without applying it, with the error `error` makes.
fn refuse(op: WriteOp, error: impl Fn() -> StoreError) {
    let e = error();
    match op {
        WriteOp::Ingest { reply, .. } => answer(reply, Err(e), None),
        WriteOp::Attempt { reply, .. } => answer(reply, Err(e), None),
        WriteOp::Retry { reply, .. } => answer(reply, Err(e), None),
        WriteOp::SaveRun { reply, .. } | WriteOp::AddRuns { reply, .. } => {
            answer(reply, Err(e), None)
        }
        WriteOp::ReplayRun { reply, .. } => answer(reply, Err(e), None),
        WriteOp::RevokeToken { reply, .. } => answer(reply, Err(e), None),
        WriteOp::SetPaused { reply, .. }
        | WriteOp::SaveAlert { reply, .. }
        | WriteOp::SaveSourceState { reply, .. }
        | WriteOp::CreateToken { reply, .. }
        | WriteOp::ConfigChange { reply, .. }
        | WriteOp::Reseal { reply, .. }
        | WriteOp::Vacuum { reply, .. } => answer(reply, Err(e), None),
        WriteOp::PruneEvents { reply, .. } => answer(reply, Err(e), None),
        WriteOp::PruneRejections { reply, .. } => answer(reply, Err(e), None),
        WriteOp::Reject { .. } => {}
    }
}

/// Stores a new event with what its flows started. An event no flow takes (the common case
/// of a busy source) is one statement; one with runs is all or nothing (a run or delivery
/// refused, by a repeated id for instance, takes the event, and the batch, along).
fn ingest(
    tx: &Connection,
    e: &NewEvent,
    runs: &[NewRun],
    deliveries: &[NewDelivery],
) -> Result<IngestOutcome, StoreError> {
    if runs.is_empty() && deliveries.is_empty() {
        return insert_event(tx, e);
    }
    super::savepoint::all_or_batch(tx, || {
        let inserted = insert_event(tx, e)?;
        if let IngestOutcome::Accepted = inserted {
            insert_runs(tx, e, runs, deliveries)?;
        }
        Ok(inserted)
    })
}

fn insert_event(tx: &Connection, e: &NewEvent) -> Result<IngestOutcome, StoreError> {
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
    Ok(IngestOutcome::Accepted)
}

/// The runs of the event just inserted, their bodies and their deliveries.
fn insert_runs(
    tx: &Connection,
    e: &NewEvent,
    runs: &[NewRun],
    deliveries: &[NewDelivery],
) -> Result<(), StoreError> {
    // `insert_event` has just inserted it.
    let event_seq = tx.last_insert_rowid();
    insert_runs_of(tx, &e.id, event_seq, e.received_at, runs, deliveries)
}

/// More runs of a stored event (a replay of the whole event), made at `now`: `Ok(false)` when
/// the event is gone or its payload expired (nothing is written).
fn add_runs(
    tx: &Connection,
    event_id: &str,
    now: Millis,
    runs: &[NewRun],
    deliveries: &[NewDelivery],
) -> Result<bool, StoreError> {
    let seq: Option<i64> = tx
        .prepare_cached("SELECT seq FROM events WHERE id = ?1 AND payload_expired_at IS NULL")?
        .query_row(params![event_id], |r| r.get(0))
        .optional()?;
    let Some(seq) = seq else { return Ok(false) };
    super::savepoint::all_or_batch(tx, || {
        insert_runs_of(tx, event_id, seq, now, runs, deliveries)?;
        Ok(true)
    })
}

/// Runs of the event `event_id` (row `event_seq`), made at `at`, with their bodies and
/// deliveries.
fn insert_runs_of(
    tx: &Connection,
    event_id: &str,
    event_seq: i64,
    at: Millis,
    runs: &[NewRun],
    deliveries: &[NewDelivery],
) -> Result<(), StoreError> {
    let mut run_stmt = tx.prepare_cached(
        "INSERT INTO runs (id, event_id, flow_id, flow_version, status, pc, resume_pc, next_at, context, steps, error, failed_on, pending, created_at, updated_at, payload_body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, CASE WHEN ?5 = 'failed' THEN 'step' END, ?13, ?12, ?12, ?14)",
    )?;
    for r in runs {
        insert_bodies(tx, event_seq, &r.bodies)?;
        run_stmt.execute(params![
            r.id,
            event_id,
            r.flow_id,
            r.flow_version,
            r.status,
            r.pc as i64,
            r.resume_pc.map(|p| p as i64),
            r.next_at,
            r.context,
            r.steps,
            r.error,
            at,
            deliveries.iter().filter(|d| d.run_id == r.id).count() as i64,
            r.payload_body
        ])?;
    }
    insert_deliveries(tx, event_id, deliveries, at)
}

/// Stores the bodies a run's step made, owned by the event at `event_seq`.
fn insert_bodies(tx: &Connection, event_seq: i64, bodies: &[Body]) -> Result<(), StoreError> {
    if bodies.is_empty() {
        return Ok(());
    }
    let mut stmt =
        tx.prepare_cached("INSERT INTO bodies (id, event_seq, data) VALUES (?1, ?2, ?3)")?;
    for b in bodies {
        stmt.execute(params![b.id, event_seq, &b.data[..]])?;
    }
    Ok(())
}

fn insert_deliveries(
    tx: &Connection,
    event_id: &str,
    deliveries: &[NewDelivery],
    now: Millis,
) -> Result<(), StoreError> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO deliveries (id, event_id, run_id, destination_id, status, next_attempt_at, created_at, updated_at, body_id)
         VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?5, ?5, ?6)",
    )?;
    for d in deliveries {
        stmt.execute(params![
            d.id,
            event_id,
            d.run_id,
            d.destination_id,
            now,
            d.body.as_ref().map(|b| b.id)
        ])?;
    }
    Ok(())
}

fn record_attempt(tx: &Connection, a: &NewAttempt) -> Result<Option<Settled>, StoreError> {
    let (status, next_at) = match a.next {
        AttemptNext::Succeeded => ("succeeded", None),
        AttemptNext::RetryAt(at) => ("pending", Some(at)),
        AttemptNext::Dead => ("dead", None),
    };
    let now = a.finished_at;
    // No `RETURNING` here: it builds an ephemeral table on every run, which costs the writer
    // more than the rest of the statement. The job carries the run and event ids.
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
    let (run_id, event_id) = (&a.run_id, &a.event_id);
    tx.prepare_cached(
        "INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, status_code, response_headers, response_body, error, outcome, destination_id)
         VALUES (?1, (SELECT attempts FROM deliveries WHERE id = ?1), ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![a.delivery_id, a.started_at, a.duration_ms, a.status_code, a.response_headers, a.response_body, a.error, a.outcome, a.destination_id])?;
    match a.next {
        AttemptNext::RetryAt(_) => Ok(None),
        AttemptNext::Succeeded => settle_run(tx, run_id, event_id, false, now),
        AttemptNext::Dead => settle_run(tx, run_id, event_id, true, now),
    }
}

/// After one of a waiting run's deliveries finished: when none is pending any more, the run
/// fails (some were dead-lettered), completes, or is due to go on (its id is returned).
fn settle_run(
    tx: &Connection,
    run_id: &str,
    event_id: &str,
    dead: bool,
    now: Millis,
) -> Result<Option<Settled>, StoreError> {
    let counted = tx
        .prepare_cached(
            "UPDATE runs SET pending = pending - 1, dead = dead + ?2 WHERE id = ?1 AND status = 'waiting'",
        )?
        .execute(params![run_id, dead as i64])?;
    if counted == 0 {
        return Ok(None);
    }
    let (pending, dead_count, resume_pc, flow_id): (i64, i64, Option<i64>, String) = tx
        .prepare_cached("SELECT pending, dead, resume_pc, flow_id FROM runs WHERE id = ?1")?
        .query_row(params![run_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
    let settled = |status, error| Settled {
        run_id: run_id.to_string(),
        flow_id: flow_id.clone(),
        status,
        error,
    };
    if pending > 0 {
        return Ok(None);
    }
    let dead: Vec<String> = if dead_count > 0 {
        tx.prepare_cached("SELECT destination_id FROM deliveries WHERE event_id = ?1 AND run_id = ?2 AND status = 'dead' ORDER BY destination_id")?
            .query_map(params![event_id, run_id], |r| r.get(0))?
            .collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    if !dead.is_empty() {
        let error = dead_deliveries_error(&dead);
        tx.prepare_cached("UPDATE runs SET status = 'failed', failed_on = 'deliveries', error = ?2, updated_at = ?3 WHERE id = ?1")?
            .execute(params![run_id, error, now])?;
        return Ok(Some(settled("failed", Some(error))));
    }
    match resume_pc {
        None => {
            tx.prepare_cached(
                "UPDATE runs SET status = 'completed', updated_at = ?2 WHERE id = ?1",
            )?
            .execute(params![run_id, now])?;
            Ok(Some(settled("completed", None)))
        }
        Some(pc) => {
            tx.prepare_cached(
                "UPDATE runs SET status = 'running', pc = ?2, resume_pc = NULL, next_at = ?3, step_attempts = 0, updated_at = ?3 WHERE id = ?1",
            )?
            .execute(params![run_id, pc, now])?;
            Ok(Some(settled("running", None)))
        }
    }
}

/// Saves a run's step: all of it, or nothing (and then nothing of its batch).
fn save_run(
    tx: &Connection,
    s: &RunSave,
    deliveries: &[NewDelivery],
    attempt: Option<&NewStepAttempt>,
) -> Result<bool, StoreError> {
    super::savepoint::all_or_batch(tx, || save_run_rows(tx, s, deliveries, attempt))
}

fn save_run_rows(
    tx: &Connection,
    s: &RunSave,
    deliveries: &[NewDelivery],
    attempt: Option<&NewStepAttempt>,
) -> Result<bool, StoreError> {
    let updated = tx
        .prepare_cached(
            "UPDATE runs SET status = ?3, pc = ?4, resume_pc = ?5, next_at = ?6, step_attempts = ?7, error = ?8,
             context = ?9, steps = ?10, updated_at = ?11, failed_on = CASE WHEN ?3 = 'failed' THEN 'step' END,
             pending = ?12, dead = 0, payload_body = ?13
             WHERE id = ?1 AND status = ?2",
        )?
        .execute(params![
            s.id,
            s.expect_status,
            s.status,
            s.pc as i64,
            s.resume_pc.map(|p| p as i64),
            s.next_at,
            s.step_attempts,
            s.error,
            s.context,
            s.steps,
            s.now,
            deliveries.len() as i64,
            s.payload_body
        ])?;
    if updated == 0 {
        return Ok(false);
    }
    if !s.bodies.is_empty() {
        let event_seq: i64 = tx
            .prepare_cached("SELECT seq FROM events WHERE id = ?1")?
            .query_row(params![s.event_id], |r| r.get(0))?;
        insert_bodies(tx, event_seq, &s.bodies)?;
    }
    insert_deliveries(tx, &s.event_id, deliveries, s.now)?;
    if let Some(a) = attempt {
        tx.prepare_cached(
            "INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, status_code, response_headers, response_body, error, outcome)
             VALUES (?1, (SELECT COUNT(*) + 1 FROM attempts WHERE delivery_id = ?1), ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![a.job_id, a.started_at, a.duration_ms, a.status_code, a.response_headers, a.response_body, a.error, a.outcome])?;
    }
    Ok(true)
}

fn set_paused(
    tx: &Connection,
    destination_id: &str,
    pause: Option<&Pause>,
) -> Result<(), StoreError> {
    match pause {
        Some(p) => tx
            .prepare_cached(
                "INSERT INTO paused_destinations (destination_id, paused_by, reason, since) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (destination_id) DO UPDATE SET paused_by = ?2, reason = ?3, since = ?4",
            )?
            .execute(params![destination_id, p.by, p.reason, p.since])?,
        None => tx
            .prepare_cached("DELETE FROM paused_destinations WHERE destination_id = ?1")?
            .execute(params![destination_id])?,
    };
    Ok(())
}

fn save_alert(
    tx: &Connection,
    a: &AlertState,
    change: Option<&super::AlertChange>,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO alert_states (alert_id, firing, since, message, subject, last_notice_at, notified) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (alert_id) DO UPDATE SET firing = ?2, since = ?3, message = ?4, subject = ?5, last_notice_at = ?6, notified = ?7",
    )?
    .execute(params![a.alert_id, a.firing, a.since, a.message, a.subject, a.last_notice_at, a.notified])?;
    let Some(c) = change else { return Ok(()) };
    // A list of plain structs always serialises.
    let notices = serde_json::to_string(&c.notices).unwrap_or_else(|_| "[]".into());
    tx.prepare_cached(
        "INSERT INTO alert_history (alert_id, at, firing, subject, message, notices) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![c.alert_id, c.at, c.firing, c.subject, c.message, notices])?;
    tx.prepare_cached(
        "DELETE FROM alert_history WHERE alert_id = ?1 AND id <= (SELECT id FROM alert_history WHERE alert_id = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
    )?
    .execute(params![c.alert_id, super::ALERT_HISTORY_KEPT])?;
    Ok(())
}

fn replay_run(tx: &Connection, r: &RunReplay) -> Result<ReplayOutcome, StoreError> {
    let run: Option<(String, String, bool)> = tx
        .prepare_cached(
            "SELECT r.status, r.event_id, e.payload_expired_at IS NOT NULL FROM runs r JOIN events e ON e.id = r.event_id WHERE r.id = ?1",
        )?
        .query_row(params![r.run_id], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .optional()?;
    let Some((status, event_id, payload_expired)) = run else {
        return Ok(ReplayOutcome::NotFound);
    };
    if status != "failed" {
        return Ok(ReplayOutcome::NotFailed(status));
    }
    if payload_expired {
        return Ok(ReplayOutcome::PayloadExpired);
    }
    let mut jobs = Vec::new();
    if r.retry_dead_deliveries {
        jobs = tx
            .prepare_cached(
                "UPDATE deliveries SET status = 'pending', round_attempts = 0, next_attempt_at = ?3, updated_at = ?3
                 WHERE event_id = ?1 AND run_id = ?2 AND status = 'dead' RETURNING id, destination_id, created_at",
            )?
            .query_map(params![event_id, r.run_id, r.now], |row| {
                Ok(DeliveryJob {
                    id: row.get(0)?,
                    event_id: event_id.clone(),
                    run_id: r.run_id.clone(),
                    destination_id: row.get(1)?,
                    created_at: row.get(2)?,
                    round_attempts: 0,
                    due_at: r.now,
                    payload: None,
                    lease: None,
                })
            })?
            .collect::<Result<_, _>>()?;
    }
    let (status, next_at) = if jobs.is_empty() {
        ("running", Some(r.now))
    } else {
        ("waiting", None)
    };
    tx.prepare_cached(
        "UPDATE runs SET status = ?2, pc = ?3, resume_pc = ?4, next_at = ?5, step_attempts = 0, error = NULL,
         failed_on = NULL, flow_version = ?6, updated_at = ?7, pending = ?8, dead = 0 WHERE id = ?1",
    )?
    .execute(params![
        r.run_id,
        status,
        r.pc as i64,
        r.resume_pc.map(|p| p as i64),
        next_at,
        r.flow_version,
        r.now,
        jobs.len() as i64
    ])?;
    Ok(ReplayOutcome::Resumed {
        run_due: jobs.is_empty(),
        deliveries: jobs,
    })
}

fn reject(tx: &Connection, r: &Rejection) -> Result<(), StoreError> {
    tx.prepare_cached("INSERT INTO rejections (source, received_at, status, error, reason, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?
        .execute(params![r.source, r.received_at, r.status, r.error, r.reason, &r.body[..]])?;
    Ok(())
}

fn retry(
    tx: &Connection,
    delivery_id: &str,
    now: Millis,
) -> Result<Option<DeliveryJob>, StoreError> {
    let job = tx
        .prepare_cached(
            "UPDATE deliveries SET status = 'pending', round_attempts = 0, next_attempt_at = ?2, updated_at = ?2
             WHERE id = ?1 AND status = 'dead'
               AND NOT EXISTS (SELECT 1 FROM events e WHERE e.id = deliveries.event_id AND e.payload_expired_at IS NOT NULL)
             RETURNING id, event_id, destination_id, run_id, created_at",
        )?
        .query_row(params![delivery_id, now], |r| {
            Ok(DeliveryJob { id: r.get(0)?, event_id: r.get(1)?, run_id: r.get(3)?, destination_id: r.get(2)?, created_at: r.get(4)?, round_attempts: 0, due_at: now, payload: None, lease: None })
        })
        .optional()?;
    let Some(job) = job else {
        return Ok(None);
    };
    // A run that failed because of its dead deliveries waits on them again: when this one
    // (and any other retried) succeeds, it goes on.
    tx.prepare_cached(
        "UPDATE runs SET status = 'waiting', failed_on = NULL, error = NULL, updated_at = ?2,
         pending = pending + 1, dead = dead - 1
         WHERE id = ?1 AND (status = 'waiting' OR (status = 'failed' AND failed_on = 'deliveries'))",
    )?
    .execute(params![job.run_id, now])?;
    Ok(Some(job))
}

#[cfg(test)]
mod tests {
    /// The checkpoint sequence number in the WAL's header: SQLite adds one each time the WAL
    /// starts over.
    fn wal_restarts(dir: &std::path::Path) -> u32 {
        use std::io::Read;
        let mut header = [0u8; 16];
        std::fs::File::open(dir.join("ferry.db-wal"))
            .and_then(|mut f| f.read_exact(&mut header))
            .map(|()| u32::from_be_bytes([header[12], header[13], header[14], header[15]]))
            .unwrap_or(0)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_starts_over_under_writes_and_keeps_every_event() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            crate::store::Store::open(dir.path(), Default::default(), Default::default()).unwrap();
        let payload = bytes::Bytes::from(vec![b'x'; 1024]);
        let ingest_some = |n: usize| {
            let tasks: Vec<_> = (0..n)
                .map(|_| {
                    let (store, payload) = (store.clone(), payload.clone());
                    tokio::spawn(async move {
                        store.ingest(event(&payload), Vec::new(), Vec::new()).await
                    })
                })
                .collect();
            async move {
                for t in tasks {
                    assert!(matches!(
                        t.await.unwrap(),
                        Ok(crate::store::IngestOutcome::Accepted)
                    ));
                }
            }
        };
        ingest_some(1).await;
        let first = wal_restarts(dir.path());
        let mut sent = 1;
        // The WAL starts over either when the writer finds it wholly checkpointed (between
        // these rounds) or when the checkpointer RESTARTs it past 4 MiB: 64 events at a time
        // until it has, then more; every acknowledged event must still be there. 40,000 events
        // (some 80 MiB of WAL) without a new start fail the test.
        while wal_restarts(dir.path()) == first {
            assert!(sent < 40_000, "the WAL never started over");
            ingest_some(64).await;
            sent += 64;
        }
        ingest_some(64).await;
        sent += 64;
        let stored = store.read(crate::store::reads::count_events).await.unwrap();
        assert_eq!(stored, sent as i64);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_bytes_written_to_the_wal_are_counted_by_commit() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = std::sync::Arc::new(crate::telemetry::Metrics::new());
        let store =
            crate::store::Store::open(dir.path(), Default::default(), metrics.clone()).unwrap();
        let payload = bytes::Bytes::from(vec![b'x'; 8 * 1024]);
        let mut before = metrics.store_wal_written.get();
        for _ in 0..3 {
            store
                .ingest(event(&payload), Vec::new(), Vec::new())
                .await
                .unwrap();
            // Counted once the commit is answered: at least the payload's pages, each with
            // its frame header, and not more than a few pages besides.
            let now = metrics.store_wal_written.get();
            let written = now - before;
            assert!(
                (8 * 1024 + 2 * 24..=8 * (4096 + 24)).contains(&written),
                "{written} bytes"
            );
            assert_eq!(written % (4096 + 24), 0, "whole frames: {written}");
            before = now;
        }
    }

    fn event(payload: &bytes::Bytes) -> crate::store::NewEvent {
        crate::store::NewEvent {
            id: crate::ids::event_id(),
            source: "s".into(),
            event_type: "t".into(),
            idempotency_key: None,
            received_at: 0,
            headers: "{}".into(),
            payload: payload.clone(),
        }
    }

    /// An ingest refused halfway (two deliveries with one id) leaves nothing of itself: no
    /// event, no run, no body; an op that shared its batch is refused too, or committed whole
    /// when it was in another batch; and the store goes on writing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_ingest_leaves_no_event_run_or_body() {
        use crate::store::{Body, NewDelivery, NewRun};
        let dir = tempfile::tempdir().unwrap();
        let store =
            crate::store::Store::open(dir.path(), Default::default(), Default::default()).unwrap();
        let body = Body {
            id: store.body_ids().next(),
            data: bytes::Bytes::from_static(br#"{"t":1}"#),
        };
        let run = NewRun {
            id: "run_1".into(),
            flow_id: "f".into(),
            flow_version: "v".into(),
            status: "waiting",
            pc: 1,
            resume_pc: None,
            next_at: None,
            error: None,
            context: None,
            payload_body: Some(body.id),
            bodies: vec![body.clone()],
            steps: "[]".into(),
        };
        let delivery = |to: &str| NewDelivery {
            id: "dlv_same".into(),
            run_id: "run_1".into(),
            destination_id: to.into(),
            body: Some(body.clone()),
        };
        let payload = bytes::Bytes::from_static(b"{}");
        let refused = store.ingest(
            event(&payload),
            vec![run],
            vec![delivery("a"), delivery("b")],
        );
        let (refused, other) = tokio::join!(
            refused,
            store.ingest(event(&payload), Vec::new(), Vec::new())
        );
        assert!(refused.is_err());
        let after = store.ingest(event(&payload), Vec::new(), Vec::new()).await;
        assert!(after.is_ok(), "the store writes on");
        let kept = 1 + i64::from(other.is_ok());
        let counts: (i64, i64, i64, i64) = store
            .read(|c| {
                Ok(c.query_row(
                    "SELECT (SELECT COUNT(*) FROM events), (SELECT COUNT(*) FROM runs),
                            (SELECT COUNT(*) FROM deliveries), (SELECT COUNT(*) FROM bodies)",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )?)
            })
            .await
            .unwrap();
        assert_eq!(counts, (kept, 0, 0, 0), "only the other events");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_disk_refuses_writes_until_one_commits_again_and_keeps_every_acknowledged_one() {
        use crate::store::StoreError;
        let disk = crate::store::tmpfs::Tmpfs::mount("4m");
        // Freed later: room for the checkpointer to copy the whole WAL into the database file,
        // and for the writer's probe.
        let ballast = disk.path().join("ballast");
        std::fs::write(&ballast, vec![0u8; 2 << 20]).unwrap();
        let metrics = std::sync::Arc::new(crate::telemetry::Metrics::new());
        let store = crate::store::Store::open(
            &disk.path().join("data"),
            Default::default(),
            metrics.clone(),
        )
        .unwrap();
        let payload = bytes::Bytes::from(vec![b'x'; 8 * 1024]);
        // Rounds of 16 events at once until the disk refuses some.
        let mut acked = 0;
        let refused = loop {
            let tasks: Vec<_> = (0..16)
                .map(|_| {
                    let (store, event) = (store.clone(), event(&payload));
                    tokio::spawn(async move { store.ingest(event, Vec::new(), Vec::new()).await })
                })
                .collect();
            let mut refused = None;
            for t in tasks {
                match t.await.unwrap() {
                    Ok(_) => acked += 1,
                    Err(e) => refused = Some(e),
                }
            }
            if let Some(e) = refused {
                break e;
            }
            assert!(acked < 2_000, "a 4 MiB file system never filled up");
        };
        assert!(
            matches!(refused, StoreError::Write(_) | StoreError::Unwritable(_)),
            "{refused}"
        );
        let unwritable = store.unwritable().expect("the store says it cannot write");
        assert!(
            unwritable.reason.contains("ferry.db") && !unwritable.until_restart,
            "{}",
            unwritable.reason
        );
        assert!(matches!(
            store.ingest(event(&payload), Vec::new(), Vec::new()).await,
            Err(StoreError::Unwritable(_))
        ));
        assert!(metrics.store_failed_writes.get() >= 1);
        // With room again, a probe commits and writes are taken again.
        std::fs::remove_file(&ballast).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while let Some(u) = store.unwritable() {
            assert!(
                std::time::Instant::now() < deadline,
                "the store never wrote again: {}",
                u.reason
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        store
            .ingest(event(&payload), Vec::new(), Vec::new())
            .await
            .unwrap();
        let stored = store.read(crate::store::reads::count_events).await.unwrap();
        assert_eq!(
            stored,
            acked + 1,
            "every acknowledged event, and no refused one"
        );
        let integrity: String = store
            .read(|c| Ok(c.query_row("PRAGMA integrity_check", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(integrity, "ok");
    }
}

//! Every write of the store besides ingest (`ingest.rs`) and the leased attempt (`jobs.rs`),
//! on PostgreSQL: a run's save, more runs of a stored event, a failed run's replay, a dead
//! delivery's retry, pauses, alert states, API tokens, config objects and their resealing, the
//! rejected log, and retention's batches. Each method has the name, arguments and answer of
//! `Store`'s, runs in one transaction (rolled back whole when it fails), and does what the
//! SQLite writer does for the same op (`store::writer`, `store::objects`, `store::prune`): the
//! same checks and the same answers. What PostgreSQL refuses and SQLite takes (a NUL byte in
//! text) is its error, in [`PgError::Query`].
//!
//! Cluster mode keeps its hot tables in step, in the same transactions: a delivery an op makes
//! pending gets its `delivery_jobs` row, due at once and leased to nobody
//! ([`schedule_delivery_jobs`]); a run an op makes `running` gets its `run_jobs` row, due at
//! its `next_at` with no lease, and loses it when it leaves `running` ([`set_run_job`]). No op
//! here ends a pending delivery (only an attempt does, in `jobs.rs`), so none deletes a
//! delivery's job.
//!
//! SQLite's one writer applies these one after another; here nodes run them at once, so rows
//! are locked where the order matters. An op that adds pending work to a stored event (more
//! runs, a replay, a retry) holds the event's row `FOR SHARE`, and retention holds the events it
//! examines `FOR UPDATE`: one waits for the other's commit and then sees it, so pending work is
//! never pruned and nothing is added to an event being removed. A replay locks its run, so two
//! nodes replay it once. A new schema version takes an advisory lock on its event type, so
//! nodes number versions in turn. Every op locks an event before its runs and deliveries, as
//! retention does, so no two of them wait on each other in a cycle.

use super::{PgError, PgStore};
use crate::clock::Millis;
use crate::store::prune::{self, Activity, Verdict};
use crate::store::{
    ALERT_HISTORY_KEPT, AlertChange, AlertState, Body, ConfigChange, DeliveryJob, NewDelivery,
    NewRun, NewStepAttempt, NewToken, Pause, PruneCutoffs, PruneReport, PruneScope, Rejection,
    ReplayOutcome, Resealed, RunReplay, RunSave, StoreError,
};
use tokio_postgres::Transaction;

/// A driver's error as the store's.
fn q(e: tokio_postgres::Error) -> StoreError {
    PgError::from(e).into()
}

/// A count or position as a BIGINT.
fn big(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Commits `tx` when `result` is `Ok`, else rolls it back at once (not when the connection
/// goes back to the pool); answers `result`, or the commit's failure.
async fn finish<T>(
    tx: deadpool_postgres::Transaction<'_>,
    result: Result<T, StoreError>,
) -> Result<T, StoreError> {
    match result {
        Ok(value) => {
            tx.commit().await.map_err(q)?;
            Ok(value)
        }
        Err(e) => {
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

/// The most rejected-log entries waiting for the writer of one store. Past it a rejection is
/// dropped, as the SQLite store drops one when its write queue is full: a flood of refused
/// requests must not pile up writes (and the bodies they hold) behind a slow database.
pub(super) const MAX_REJECTIONS_WRITING: usize = 64;

/// The store's rejected-log writer: takes the entries in the order they came and writes those
/// waiting together in one transaction, trimming the log to `kept` entries. Ends when every
/// handle of the store is gone.
pub(super) async fn write_rejections(
    pool: deadpool_postgres::Pool,
    kept: usize,
    mut queue: tokio::sync::mpsc::Receiver<Rejection>,
) {
    let mut batch = Vec::with_capacity(MAX_REJECTIONS_WRITING);
    while queue.recv_many(&mut batch, MAX_REJECTIONS_WRITING).await > 0 {
        // A batch the database refuses is written again entry by entry, so that one bad entry
        // (a NUL byte) is the only one dropped.
        if batch.len() > 1 && write_rejections_together(&pool, &batch, kept).await.is_ok() {
            batch.clear();
            continue;
        }
        for r in &batch {
            if let Err(e) = write_rejections_together(&pool, std::slice::from_ref(r), kept).await {
                tracing::warn!(error = %e, "rejected log entry dropped");
            }
        }
        batch.clear();
    }
}

/// Writes `batch` to the rejected log in one transaction, trimming it to `kept` entries.
async fn write_rejections_together(
    pool: &deadpool_postgres::Pool,
    batch: &[Rejection],
    kept: usize,
) -> Result<(), StoreError> {
    let mut conn = pool
        .get()
        .await
        .map_err(|e| PgError::Query(format!("no connection: {e}")))?;
    let tx = conn.transaction().await.map_err(q)?;
    let mut result = Ok(());
    for r in batch {
        result = add_rejection(&tx, r, kept).await;
        if result.is_err() {
            break;
        }
    }
    finish(tx, result).await
}

impl PgStore {
    /// Saves a run's new state after a step, with the deliveries it created and the http
    /// attempt it made, in one transaction. `Ok(false)` when the run no longer had the
    /// expected status, or its job no longer carries the save's lease (nothing was written).
    /// The new deliveries' jobs are due at once and leased to nobody; the run's job follows
    /// its new status.
    pub async fn save_run(
        &self,
        save: RunSave,
        deliveries: Vec<NewDelivery>,
        attempt: Option<NewStepAttempt>,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(q)?;
        let result = save_run(&tx, &save, &deliveries, attempt.as_ref()).await;
        finish(tx, result).await
    }

    /// Pauses (`Some`) or resumes (`None`) a destination, durably.
    pub async fn set_paused(
        &self,
        destination_id: &str,
        pause: Option<Pause>,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(q)?;
        let result = set_paused(&tx, destination_id, pause.as_ref()).await;
        finish(tx, result).await
    }

    /// Stores an alert rule's state and, when it changed, the change in its history, of which
    /// the last [`ALERT_HISTORY_KEPT`] are kept.
    pub async fn save_alert(
        &self,
        state: AlertState,
        change: Option<AlertChange>,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(q)?;
        let result = save_alert(&tx, &state, change.as_ref()).await;
        finish(tx, result).await
    }

    pub async fn save_source_state(
        &self,
        source: String,
        state: String,
        at: Millis,
    ) -> Result<(), StoreError> {
        let conn = self.conn().await?;
        conn.execute(
            "INSERT INTO source_states (source, state, updated_at) VALUES ($1, $2, $3)
             ON CONFLICT (source) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
            &[&source, &state, &at],
        )
        .await
        .map_err(q)?;
        Ok(())
    }

    pub async fn create_token(&self, token: NewToken) -> Result<(), StoreError> {
        let conn = self.conn().await?;
        conn.execute(
            "INSERT INTO api_tokens (id, name, scope, hash, created_at) VALUES ($1, $2, $3, $4, $5)",
            &[
                &token.id,
                &token.name,
                &token.scope,
                &token.hash,
                &token.created_at,
            ],
        )
        .await
        .map_err(q)?;
        Ok(())
    }

    /// Commits a change of the API's config objects and event type schemas.
    pub async fn change_config(&self, change: ConfigChange) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(q)?;
        let result = change_config(&tx, &change).await;
        finish(tx, result).await
    }

    /// Replaces the specs of config objects with their secrets sealed again, all in one
    /// transaction, or none when one of them is no longer as read.
    pub async fn reseal(&self, updates: Vec<Resealed>) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(q)?;
        let result = reseal(&tx, &updates).await;
        finish(tx, result).await
    }

    /// Revokes a token; `Ok(false)` when there is no such live token.
    pub async fn revoke_token(&self, id: &str, now: Millis) -> Result<bool, StoreError> {
        let conn = self.conn().await?;
        let revoked = conn
            .execute(
                "UPDATE api_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                &[&id, &now],
            )
            .await
            .map_err(q)?;
        Ok(revoked > 0)
    }

    /// Adds the runs (and their deliveries) of a replay of the whole stored event
    /// `event_id`, in one transaction: `Ok(false)` when the event is gone or its payload
    /// expired. The deliveries' jobs are due at once and leased to nobody; a run that is
    /// `running` is due for the run worker at its `next_at`.
    pub async fn add_runs(
        &self,
        event_id: &str,
        now: Millis,
        runs: Vec<NewRun>,
        deliveries: Vec<NewDelivery>,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(q)?;
        let result = add_runs(&tx, event_id, now, &runs, &deliveries).await;
        finish(tx, result).await
    }

    /// Restarts a failed run as `replay` says: its dead deliveries put back (with their
    /// jobs), or the run due for the run worker at once.
    pub async fn replay_run(&self, replay: RunReplay) -> Result<ReplayOutcome, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(q)?;
        let result = replay_run(&tx, &replay).await;
        finish(tx, result).await
    }

    /// Adds to the rejected log. Best effort, and the caller does not wait: the entries go to
    /// the store's one rejected-log writer, in the order they came (the log's order is its
    /// ids'), and are dropped with a warning when [`MAX_REJECTIONS_WRITING`] wait already or
    /// the write fails. [`PgStore::add_rejection`] is the write itself.
    pub fn record_rejection(&self, rejection: Rejection) {
        if let Err(e) = self.rejections.try_send(rejection) {
            let why = match e {
                tokio::sync::mpsc::error::TrySendError::Full(_) => {
                    format!("{MAX_REJECTIONS_WRITING} wait to be written already")
                }
                tokio::sync::mpsc::error::TrySendError::Closed(_) => "the store closed".into(),
            };
            tracing::warn!("rejected log entry dropped: {why}");
        }
    }

    /// Adds `rejection` to the rejected log and trims the log to its last `kept` entries, in
    /// one transaction (SQLite trims in the commit of a batch with rejections). As on SQLite
    /// the trim counts by id, so ids a failed insert took (PostgreSQL does not give them back)
    /// leave the log that many entries short until the next ones.
    pub async fn add_rejection(
        &self,
        rejection: &Rejection,
        kept: usize,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(q)?;
        let result = add_rejection(&tx, rejection, kept).await;
        finish(tx, result).await
    }

    /// Puts a dead delivery back to pending with a fresh round of attempts, due `now`, with
    /// its job leased to nobody. `Ok(None)` when there is no such delivery, it is not dead, or
    /// its event's payload expired.
    pub async fn retry_delivery(
        &self,
        delivery_id: &str,
        now: Millis,
    ) -> Result<Option<DeliveryJob>, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(q)?;
        let result = retry(&tx, delivery_id, now).await;
        finish(tx, result).await
    }

    /// Applies one batch of retention to events (see [`PruneScope`]), in one transaction
    /// that holds the events it examines (`FOR UPDATE`) until it commits.
    pub async fn prune_events(
        &self,
        scope: PruneScope,
        cutoffs: PruneCutoffs,
    ) -> Result<PruneReport, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(q)?;
        let result = prune_events(&tx, &scope, &cutoffs).await;
        finish(tx, result).await
    }

    /// Removes up to `max` entries of the rejected log received before `before`; answers how
    /// many went.
    pub async fn prune_rejections(&self, before: Millis, max: usize) -> Result<usize, StoreError> {
        let conn = self.conn().await?;
        let removed = conn
            .execute(
                "DELETE FROM rejections WHERE id IN
                 (SELECT id FROM rejections WHERE received_at < $1 ORDER BY id LIMIT $2)",
                &[&before, &big(max)],
            )
            .await
            .map_err(q)?;
        Ok(usize::try_from(removed).unwrap_or(usize::MAX))
    }

    /// Does nothing: SQLite's incremental vacuum (free pages given back to the file system)
    /// has no counterpart to ask for here. PostgreSQL's autovacuum makes the space of removed
    /// rows reusable on its own, and only a `VACUUM FULL` (which locks the table) would shrink
    /// the files; `pages` is ignored, and nothing is given back.
    pub async fn incremental_vacuum(&self, pages: u32) -> Result<(), StoreError> {
        let _ = pages;
        Ok(())
    }
}

/// Puts the deliveries `jobs` (id, destination) in the hot table, due at `due` and leased to
/// nobody: what every op that makes a delivery pending outside ingest does. A job row left
/// over (there is none for a delivery that is not pending) is reset the same way.
async fn schedule_delivery_jobs(
    tx: &Transaction<'_>,
    jobs: &[(&str, &str)],
    due: Millis,
) -> Result<(), StoreError> {
    if jobs.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = jobs.iter().map(|j| j.0).collect();
    let destinations: Vec<&str> = jobs.iter().map(|j| j.1).collect();
    tx.execute(
        "INSERT INTO delivery_jobs (delivery_id, destination_id, due_at)
         SELECT id, destination_id, $3 FROM unnest($1::text[], $2::text[]) AS d(id, destination_id)
         ON CONFLICT (delivery_id) DO UPDATE SET destination_id = excluded.destination_id,
             due_at = excluded.due_at, lease_until = NULL, lease_token = NULL, leased_by = NULL",
        &[&ids, &destinations, &due],
    )
    .await
    .map_err(q)?;
    Ok(())
}

/// The run worker's job of a run: due at `due` with no lease (`Some`: the run is `running`),
/// or none (`None`: it is not).
pub(super) async fn set_run_job(
    tx: &Transaction<'_>,
    run_id: &str,
    due: Option<Millis>,
) -> Result<(), StoreError> {
    match due {
        Some(due) => tx
            .execute(
                "INSERT INTO run_jobs (run_id, due_at) VALUES ($1, $2)
                 ON CONFLICT (run_id) DO UPDATE SET due_at = excluded.due_at,
                     lease_until = NULL, lease_token = NULL, leased_by = NULL",
                &[&run_id, &due],
            )
            .await
            .map_err(q)?,
        None => tx
            .execute("DELETE FROM run_jobs WHERE run_id = $1", &[&run_id])
            .await
            .map_err(q)?,
    };
    Ok(())
}

/// When a run in `status` is due for the run worker: at its `next_at` while it is `running`
/// (at once, `now`, without one: the SQLite worker takes a missing `next_at` as due), never
/// otherwise.
fn run_job_due(status: &str, next_at: Option<Millis>, now: Millis) -> Option<Millis> {
    (status == "running").then_some(next_at.unwrap_or(now))
}

/// Locks the stored event `event_id` against retention until the commit (`FOR SHARE`: other
/// ops adding work to it go on at once) and answers its `seq` and whether its payload
/// expired; `None` when it is not stored (or retention removed it meanwhile).
async fn lock_event(
    tx: &Transaction<'_>,
    event_id: &str,
) -> Result<Option<(i64, bool)>, StoreError> {
    let row = tx
        .query_opt(
            "SELECT seq, payload_expired_at IS NOT NULL FROM events WHERE id = $1 FOR SHARE",
            &[&event_id],
        )
        .await
        .map_err(q)?;
    row.map(|r| Ok((r.try_get(0).map_err(q)?, r.try_get(1).map_err(q)?)))
        .transpose()
}

async fn save_run(
    tx: &Transaction<'_>,
    s: &RunSave,
    deliveries: &[NewDelivery],
    attempt: Option<&NewStepAttempt>,
) -> Result<bool, StoreError> {
    // A step performed under a lease is saved only while the run's job still carries its
    // token: a node that lost the run to another (its lease ran out) changes nothing.
    if let Some(token) = s.lease {
        let holds = tx
            .query_opt(
                "SELECT 1 FROM run_jobs WHERE run_id = $1 AND lease_token = $2 FOR UPDATE",
                &[&s.id, &token],
            )
            .await
            .map_err(q)?
            .is_some();
        if !holds {
            return Ok(false);
        }
    }
    let updated = tx
        .execute(
            "UPDATE runs SET status = $3::text, pc = $4, resume_pc = $5, next_at = $6, step_attempts = $7,
             error = $8, context = $9, steps = $10, updated_at = $11,
             failed_on = CASE WHEN $3::text = 'failed' THEN 'step' END,
             pending = $12, dead = 0, payload_body = $13
             WHERE id = $1 AND status = $2",
            &[
                &s.id,
                &s.expect_status,
                &s.status,
                &big(s.pc),
                &s.resume_pc.map(big),
                &s.next_at,
                &i64::from(s.step_attempts),
                &s.error,
                &s.context,
                &s.steps,
                &s.now,
                &big(deliveries.len()),
                &s.payload_body,
            ],
        )
        .await
        .map_err(q)?;
    if updated == 0 {
        return Ok(false);
    }
    if !s.bodies.is_empty() {
        let seq: i64 = tx
            .query_opt("SELECT seq FROM events WHERE id = $1", &[&s.event_id])
            .await
            .map_err(q)?
            .ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "run {} made bodies of event {}, which is not stored",
                    s.id, s.event_id
                ))
            })?
            .try_get(0)
            .map_err(q)?;
        insert_bodies(tx, seq, &s.bodies).await?;
    }
    insert_deliveries(tx, &s.event_id, deliveries, s.now).await?;
    if let Some(a) = attempt {
        tx.execute(
            "INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, status_code, response_headers,
                                   response_body, error, outcome)
             VALUES ($1, (SELECT COUNT(*) + 1 FROM attempts WHERE delivery_id = $1), $2, $3, $4, $5, $6, $7, $8)",
            &[
                &a.job_id,
                &a.started_at,
                &a.duration_ms,
                &a.status_code.map(i64::from),
                &a.response_headers,
                &a.response_body,
                &a.error,
                &a.outcome,
            ],
        )
        .await
        .map_err(q)?;
    }
    set_run_job(tx, &s.id, run_job_due(s.status, s.next_at, s.now)).await?;
    Ok(true)
}

/// Stores the bodies a run's step made, owned by the event at `event_seq`.
async fn insert_bodies(
    tx: &Transaction<'_>,
    event_seq: i64,
    bodies: &[Body],
) -> Result<(), StoreError> {
    if bodies.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = bodies.iter().map(|b| b.id).collect();
    let data: Vec<&[u8]> = bodies.iter().map(|b| &b.data[..]).collect();
    tx.execute(
        "INSERT INTO bodies (id, event_seq, data)
         SELECT id, $3, data FROM unnest($1::bigint[], $2::bytea[]) AS b(id, data)",
        &[&ids, &data, &event_seq],
    )
    .await
    .map_err(q)?;
    Ok(())
}

/// New pending deliveries of event `event_id`, made and due at `now`, with their jobs.
async fn insert_deliveries(
    tx: &Transaction<'_>,
    event_id: &str,
    deliveries: &[NewDelivery],
    now: Millis,
) -> Result<(), StoreError> {
    if deliveries.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = deliveries.iter().map(|d| d.id.as_str()).collect();
    let runs: Vec<&str> = deliveries.iter().map(|d| d.run_id.as_str()).collect();
    let destinations: Vec<&str> = deliveries
        .iter()
        .map(|d| d.destination_id.as_str())
        .collect();
    let bodies: Vec<Option<i64>> = deliveries
        .iter()
        .map(|d| d.body.as_ref().map(|b| b.id))
        .collect();
    tx.execute(
        "INSERT INTO deliveries (id, event_id, run_id, destination_id, status, next_attempt_at, created_at,
                                 updated_at, body_id)
         SELECT id, $5, run_id, destination_id, 'pending', $6, $6, $6, body_id
         FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) AS d(id, run_id, destination_id, body_id)",
        &[&ids, &runs, &destinations, &bodies, &event_id, &now],
    )
    .await
    .map_err(q)?;
    let jobs: Vec<(&str, &str)> = ids.iter().copied().zip(destinations).collect();
    schedule_delivery_jobs(tx, &jobs, now).await
}

async fn add_runs(
    tx: &Transaction<'_>,
    event_id: &str,
    now: Millis,
    runs: &[NewRun],
    deliveries: &[NewDelivery],
) -> Result<bool, StoreError> {
    let Some((seq, false)) = lock_event(tx, event_id).await? else {
        return Ok(false);
    };
    for r in runs {
        insert_bodies(tx, seq, &r.bodies).await?;
        let pending = big(deliveries.iter().filter(|d| d.run_id == r.id).count());
        tx.execute(
            "INSERT INTO runs (id, event_id, flow_id, flow_version, status, pc, resume_pc, next_at, context, steps,
                               error, failed_on, pending, created_at, updated_at, payload_body)
             VALUES ($1, $2, $3, $4, $5::text, $6, $7, $8, $9, $10, $11,
                     CASE WHEN $5::text = 'failed' THEN 'step' END, $13, $12, $12, $14)",
            &[
                &r.id,
                &event_id,
                &r.flow_id,
                &r.flow_version,
                &r.status,
                &big(r.pc),
                &r.resume_pc.map(big),
                &r.next_at,
                &r.context,
                &r.steps,
                &r.error,
                &now,
                &pending,
                &r.payload_body,
            ],
        )
        .await
        .map_err(q)?;
        if let Some(due) = run_job_due(r.status, r.next_at, now) {
            set_run_job(tx, &r.id, Some(due)).await?;
        }
    }
    insert_deliveries(tx, event_id, deliveries, now).await?;
    Ok(true)
}

async fn replay_run(tx: &Transaction<'_>, r: &RunReplay) -> Result<ReplayOutcome, StoreError> {
    // The event first, as retention locks it, then the run: a second replay of the run waits
    // here for the first's commit and finds it no longer failed.
    let event_id: Option<String> = tx
        .query_opt("SELECT event_id FROM runs WHERE id = $1", &[&r.run_id])
        .await
        .map_err(q)?
        .map(|row| row.try_get(0))
        .transpose()
        .map_err(q)?;
    let Some(event_id) = event_id else {
        return Ok(ReplayOutcome::NotFound);
    };
    let Some((_, payload_expired)) = lock_event(tx, &event_id).await? else {
        return Ok(ReplayOutcome::NotFound);
    };
    let status: Option<String> = tx
        .query_opt(
            "SELECT status FROM runs WHERE id = $1 FOR UPDATE",
            &[&r.run_id],
        )
        .await
        .map_err(q)?
        .map(|row| row.try_get(0))
        .transpose()
        .map_err(q)?;
    let Some(status) = status else {
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
        let rows = tx
            .query(
                "UPDATE deliveries SET status = 'pending', round_attempts = 0, next_attempt_at = $3, updated_at = $3
                 WHERE event_id = $1 AND run_id = $2 AND status = 'dead'
                 RETURNING id, destination_id, created_at",
                &[&event_id, &r.run_id, &r.now],
            )
            .await
            .map_err(q)?;
        for row in &rows {
            jobs.push(DeliveryJob {
                id: row.try_get(0).map_err(q)?,
                event_id: event_id.clone(),
                run_id: r.run_id.clone(),
                destination_id: row.try_get(1).map_err(q)?,
                created_at: row.try_get(2).map_err(q)?,
                round_attempts: 0,
                due_at: r.now,
                payload: None,
                lease: None,
            });
        }
    }
    let (status, next_at) = if jobs.is_empty() {
        ("running", Some(r.now))
    } else {
        ("waiting", None)
    };
    tx.execute(
        "UPDATE runs SET status = $2, pc = $3, resume_pc = $4, next_at = $5, step_attempts = 0, error = NULL,
         failed_on = NULL, flow_version = $6, updated_at = $7, pending = $8, dead = 0 WHERE id = $1",
        &[
            &r.run_id,
            &status,
            &big(r.pc),
            &r.resume_pc.map(big),
            &next_at,
            &r.flow_version,
            &r.now,
            &big(jobs.len()),
        ],
    )
    .await
    .map_err(q)?;
    let pairs: Vec<(&str, &str)> = jobs
        .iter()
        .map(|j| (j.id.as_str(), j.destination_id.as_str()))
        .collect();
    schedule_delivery_jobs(tx, &pairs, r.now).await?;
    set_run_job(tx, &r.run_id, run_job_due(status, next_at, r.now)).await?;
    Ok(ReplayOutcome::Resumed {
        run_due: jobs.is_empty(),
        deliveries: jobs,
    })
}

async fn retry(
    tx: &Transaction<'_>,
    delivery_id: &str,
    now: Millis,
) -> Result<Option<DeliveryJob>, StoreError> {
    let event_id: Option<String> = tx
        .query_opt(
            "SELECT event_id FROM deliveries WHERE id = $1",
            &[&delivery_id],
        )
        .await
        .map_err(q)?
        .map(|row| row.try_get(0))
        .transpose()
        .map_err(q)?;
    let Some(event_id) = event_id else {
        return Ok(None);
    };
    // Held against retention; the condition below is SQLite's, on the row as locked.
    lock_event(tx, &event_id).await?;
    let row = tx
        .query_opt(
            "UPDATE deliveries SET status = 'pending', round_attempts = 0, next_attempt_at = $2, updated_at = $2
             WHERE id = $1 AND status = 'dead'
               AND NOT EXISTS (SELECT 1 FROM events e WHERE e.id = deliveries.event_id AND e.payload_expired_at IS NOT NULL)
             RETURNING id, event_id, destination_id, run_id, created_at",
            &[&delivery_id, &now],
        )
        .await
        .map_err(q)?;
    let Some(row) = row else {
        return Ok(None);
    };
    let job = DeliveryJob {
        id: row.try_get(0).map_err(q)?,
        event_id: row.try_get(1).map_err(q)?,
        run_id: row.try_get(3).map_err(q)?,
        destination_id: row.try_get(2).map_err(q)?,
        created_at: row.try_get(4).map_err(q)?,
        round_attempts: 0,
        due_at: now,
        payload: None,
        lease: None,
    };
    schedule_delivery_jobs(tx, &[(&job.id, &job.destination_id)], now).await?;
    // A run that failed because of its dead deliveries waits on them again: when this one
    // (and any other retried) succeeds, it goes on. It was not running, nor is it now: it has
    // no run job.
    tx.execute(
        "UPDATE runs SET status = 'waiting', failed_on = NULL, error = NULL, updated_at = $2,
         pending = pending + 1, dead = dead - 1
         WHERE id = $1 AND (status = 'waiting' OR (status = 'failed' AND failed_on = 'deliveries'))",
        &[&job.run_id, &now],
    )
    .await
    .map_err(q)?;
    Ok(Some(job))
}

async fn set_paused(
    tx: &Transaction<'_>,
    destination_id: &str,
    pause: Option<&Pause>,
) -> Result<(), StoreError> {
    match pause {
        Some(p) => tx
            .execute(
                "INSERT INTO paused_destinations (destination_id, paused_by, reason, since) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (destination_id) DO UPDATE SET paused_by = excluded.paused_by,
                     reason = excluded.reason, since = excluded.since",
                &[&destination_id, &p.by, &p.reason, &p.since],
            )
            .await
            .map_err(q)?,
        None => tx
            .execute(
                "DELETE FROM paused_destinations WHERE destination_id = $1",
                &[&destination_id],
            )
            .await
            .map_err(q)?,
    };
    Ok(())
}

async fn save_alert(
    tx: &Transaction<'_>,
    a: &AlertState,
    change: Option<&AlertChange>,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO alert_states (alert_id, firing, since, message, subject, last_notice_at, notified)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (alert_id) DO UPDATE SET firing = excluded.firing, since = excluded.since,
             message = excluded.message, subject = excluded.subject,
             last_notice_at = excluded.last_notice_at, notified = excluded.notified",
        &[
            &a.alert_id,
            &i64::from(a.firing),
            &a.since,
            &a.message,
            &a.subject,
            &a.last_notice_at,
            &i64::from(a.notified),
        ],
    )
    .await
    .map_err(q)?;
    let Some(c) = change else { return Ok(()) };
    // A list of plain structs always serialises.
    let notices = serde_json::to_string(&c.notices).unwrap_or_else(|_| "[]".into());
    tx.execute(
        "INSERT INTO alert_history (alert_id, at, firing, subject, message, notices) VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            &c.alert_id,
            &c.at,
            &i64::from(c.firing),
            &c.subject,
            &c.message,
            &notices,
        ],
    )
    .await
    .map_err(q)?;
    tx.execute(
        "DELETE FROM alert_history WHERE alert_id = $1 AND id <=
         (SELECT id FROM alert_history WHERE alert_id = $1 ORDER BY id DESC LIMIT 1 OFFSET $2)",
        &[&c.alert_id, &ALERT_HISTORY_KEPT],
    )
    .await
    .map_err(q)?;
    Ok(())
}

async fn change_config(tx: &Transaction<'_>, change: &ConfigChange) -> Result<(), StoreError> {
    match &change.object {
        Some((kind, id, Some(spec))) => {
            tx.execute(
                "INSERT INTO config_objects (kind, id, spec, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)
                 ON CONFLICT (kind, id) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at",
                &[kind, id, spec, &change.now],
            )
            .await
            .map_err(q)?;
        }
        Some((kind, id, None)) => {
            tx.execute(
                "DELETE FROM config_objects WHERE kind = $1 AND id = $2",
                &[kind, id],
            )
            .await
            .map_err(q)?;
        }
        None => {}
    }
    // Each event type's versions are numbered by one node at a time: its lock is held until
    // the commit. Taken in name order, so two changes never wait on each other in a cycle.
    let mut names: Vec<&str> = change.schemas.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('ferry.schema_versions.' || $1::text))",
            &[&name],
        )
        .await
        .map_err(q)?;
    }
    for (name, schema) in &change.schemas {
        let latest: Option<String> = tx
            .query_opt(
                "SELECT schema FROM schema_versions WHERE event_type = $1 ORDER BY version DESC LIMIT 1",
                &[name],
            )
            .await
            .map_err(q)?
            .map(|r| r.try_get(0))
            .transpose()
            .map_err(q)?;
        if latest.as_deref() != Some(schema.as_str()) {
            tx.execute(
                "INSERT INTO schema_versions (event_type, version, schema, created_at)
                 VALUES ($1, COALESCE((SELECT MAX(version) FROM schema_versions WHERE event_type = $1), 0) + 1, $2, $3)",
                &[name, schema, &change.now],
            )
            .await
            .map_err(q)?;
        }
    }
    Ok(())
}

/// Every resealed spec, or none when one is no longer stored as read.
async fn reseal(tx: &Transaction<'_>, updates: &[Resealed]) -> Result<(), StoreError> {
    for u in updates {
        let changed = tx
            .execute(
                "UPDATE config_objects SET spec = $3 WHERE kind = $1 AND id = $2 AND spec = $4",
                &[&u.kind, &u.id, &u.new, &u.old],
            )
            .await
            .map_err(q)?;
        if changed != 1 {
            return Err(StoreError::Corrupt(format!(
                "{} `{}` changed while its secrets were sealed again; nothing was written",
                u.kind, u.id
            )));
        }
    }
    Ok(())
}

async fn add_rejection(tx: &Transaction<'_>, r: &Rejection, kept: usize) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO rejections (source, received_at, status, error, reason, body) VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            &r.source,
            &r.received_at,
            &i64::from(r.status),
            &r.error,
            &r.reason,
            &&r.body[..],
        ],
    )
    .await
    .map_err(q)?;
    tx.execute(
        "DELETE FROM rejections WHERE id <= (SELECT MAX(id) FROM rejections) - $1",
        &[&big(kept)],
    )
    .await
    .map_err(q)?;
    Ok(())
}

/// One event as a retention batch reads it.
struct Examined {
    seq: i64,
    id: String,
    received_at: Millis,
    bodies_gone: bool,
}

fn examined(r: &tokio_postgres::Row) -> Result<Examined, StoreError> {
    Ok(Examined {
        seq: r.try_get(0).map_err(q)?,
        id: r.try_get(1).map_err(q)?,
        received_at: r.try_get(2).map_err(q)?,
        bodies_gone: r.try_get::<_, Option<i64>>(3).map_err(q)?.is_some(),
    })
}

/// One batch of retention, as `store::prune` applies it on SQLite (the verdicts are its
/// [`prune::judge`]'s); the events examined are locked until the commit.
async fn prune_events(
    tx: &Transaction<'_>,
    scope: &PruneScope,
    cutoffs: &PruneCutoffs,
) -> Result<PruneReport, StoreError> {
    let mut report = PruneReport::default();
    let (events, bodies_only) = match scope {
        PruneScope::After {
            seq,
            received_before,
            max,
            bodies_only,
        } => {
            let rows = tx
                .query(
                    "SELECT seq, id, received_at, payload_expired_at FROM events WHERE seq > $1
                     ORDER BY seq LIMIT $2 FOR UPDATE",
                    &[seq, &big(*max)],
                )
                .await
                .map_err(q)?;
            let events = rows.iter().map(examined).collect::<Result<Vec<_>, _>>()?;
            let young = events
                .iter()
                .position(|e| prune::too_young(e.received_at, *received_before, cutoffs));
            report.reached_end = young.is_some() || events.len() < *max;
            let events = match young {
                Some(n) => events.into_iter().take(n).collect(),
                None => events,
            };
            (events, *bodies_only)
        }
        PruneScope::Again(seqs) => {
            let mut events = Vec::with_capacity(seqs.len());
            for seq in seqs {
                let row = tx
                    .query_opt(
                        "SELECT seq, id, received_at, payload_expired_at FROM events WHERE seq = $1 FOR UPDATE",
                        &[seq],
                    )
                    .await
                    .map_err(q)?;
                if let Some(row) = row {
                    events.push(examined(&row)?);
                }
            }
            report.reached_end = true;
            (events, true)
        }
    };
    for event in events {
        report.last_seq = Some(event.seq);
        if bodies_only && event.bodies_gone {
            continue;
        }
        let activity = activity(tx, &event).await?;
        match prune::judge(activity, event.bodies_gone, cutoffs) {
            Verdict::Remove => remove_event(tx, &event, &mut report).await?,
            Verdict::DropBodies => {
                drop_bodies(tx, &event, cutoffs.now).await?;
                report.payloads += 1;
            }
            Verdict::WaitForBodies => report.waiting.push(event.seq),
            Verdict::Keep => {}
        }
    }
    Ok(report)
}

/// Pending, dead or finished, and when last active: from the event's runs and deliveries.
async fn activity(tx: &Transaction<'_>, event: &Examined) -> Result<Activity, StoreError> {
    let row = tx
        .query_one(
            "SELECT coalesce(bool_or(pending), false), coalesce(bool_or(dead), false), max(updated_at) FROM (
                 SELECT status IN ('running', 'waiting') AS pending, status = 'failed' AS dead, updated_at
                 FROM runs WHERE event_id = $1
                 UNION ALL
                 SELECT status = 'pending', status = 'dead', updated_at FROM deliveries WHERE event_id = $1
             ) a",
            &[&event.id],
        )
        .await
        .map_err(q)?;
    let last: Option<Millis> = row.try_get(2).map_err(q)?;
    Ok(Activity {
        pending: row.try_get(0).map_err(q)?,
        dead: row.try_get(1).map_err(q)?,
        last: last.map_or(event.received_at, |l| l.max(event.received_at)),
    })
}

async fn run_ids(tx: &Transaction<'_>, event_id: &str) -> Result<Vec<String>, StoreError> {
    tx.query("SELECT id FROM runs WHERE event_id = $1", &[&event_id])
        .await
        .map_err(q)?
        .iter()
        .map(|r| r.try_get(0).map_err(q))
        .collect()
}

/// Removes an event with its runs, deliveries, attempts (those of its deliveries and its runs'
/// http steps) and bodies. Nothing of it is pending, so it has no job rows.
async fn remove_event(
    tx: &Transaction<'_>,
    event: &Examined,
    report: &mut PruneReport,
) -> Result<(), StoreError> {
    let id = &event.id;
    let mut attempts = tx
        .execute(
            "DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE event_id = $1)",
            &[id],
        )
        .await
        .map_err(q)?;
    for run in run_ids(tx, id).await? {
        let (from, to) = prune::step_attempts_range(&run);
        attempts += tx
            .execute(
                "DELETE FROM attempts WHERE delivery_id >= $1 AND delivery_id < $2",
                &[&from, &to],
            )
            .await
            .map_err(q)?;
    }
    report.attempts += attempts;
    tx.execute("DELETE FROM bodies WHERE event_seq = $1", &[&event.seq])
        .await
        .map_err(q)?;
    report.deliveries += tx
        .execute("DELETE FROM deliveries WHERE event_id = $1", &[id])
        .await
        .map_err(q)?;
    report.runs += tx
        .execute("DELETE FROM runs WHERE event_id = $1", &[id])
        .await
        .map_err(q)?;
    report.events += tx
        .execute("DELETE FROM events WHERE id = $1", &[id])
        .await
        .map_err(q)?;
    Ok(())
}

/// Drops every body of an event and keeps the record of what happened, as on SQLite
/// (`store::prune`'s `drop_bodies`).
async fn drop_bodies(
    tx: &Transaction<'_>,
    event: &Examined,
    now: Millis,
) -> Result<(), StoreError> {
    let id = &event.id;
    tx.execute("DELETE FROM bodies WHERE event_seq = $1", &[&event.seq])
        .await
        .map_err(q)?;
    tx.execute(
        "UPDATE events SET payload = ''::bytea, payload_expired_at = $2 WHERE id = $1",
        &[id, &now],
    )
    .await
    .map_err(q)?;
    tx.execute(
        "UPDATE deliveries SET body_id = NULL WHERE event_id = $1 AND body_id IS NOT NULL",
        &[id],
    )
    .await
    .map_err(q)?;
    tx.execute(
        "UPDATE attempts SET response_body = NULL
         WHERE delivery_id IN (SELECT id FROM deliveries WHERE event_id = $1) AND response_body IS NOT NULL",
        &[id],
    )
    .await
    .map_err(q)?;
    for run in run_ids(tx, id).await? {
        let steps: String = tx
            .query_one("SELECT steps FROM runs WHERE id = $1", &[&run])
            .await
            .map_err(q)?
            .try_get(0)
            .map_err(q)?;
        tx.execute(
            "UPDATE runs SET context = NULL, payload_body = NULL, steps = $2 WHERE id = $1",
            &[&run, &prune::steps_without_bodies(&steps)],
        )
        .await
        .map_err(q)?;
        let (from, to) = prune::step_attempts_range(&run);
        tx.execute(
            "UPDATE attempts SET response_body = NULL
             WHERE delivery_id >= $1 AND delivery_id < $2 AND response_body IS NOT NULL",
            &[&from, &to],
        )
        .await
        .map_err(q)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_running_run_is_due_for_the_run_worker_at_its_next_step() {
        assert_eq!(run_job_due("running", Some(7), 3), Some(7));
        assert_eq!(run_job_due("running", None, 3), Some(3));
        for status in ["waiting", "completed", "failed", "filtered"] {
            assert_eq!(run_job_due(status, Some(7), 3), None, "{status}");
        }
    }
}

//! Delivery jobs in cluster mode: the hot table `delivery_jobs` (one row per pending
//! delivery), claimed in batches with `FOR UPDATE SKIP LOCKED` under a lease. A lease ends at
//! a time on the database's clock and carries a fresh token; every later transition (renew,
//! the attempt's outcome, hold, release) names the token and changes nothing once the lease
//! was lost, so a worker that stalled past its lease cannot finish a job another node took
//! since, nor retry or dead-letter it.

use super::{PgError, PgStore};
use crate::clock::Millis;
use crate::store::{AttemptNext, DeliveryJob, NewAttempt, Settled, StoreError};

/// The database's clock in milliseconds since the epoch: every node reads the same one, so
/// leases hold whatever the nodes' clocks say.
pub(super) const DB_NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// The most jobs one claim takes.
pub const MAX_CLAIM: usize = 10_000;

/// The longest lease: a day (a longer one is a mistake, and would hold a dead node's jobs).
pub const MAX_LEASE_MS: i64 = 24 * 3600 * 1000;

/// A job this node holds: the job and its lease's token.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub job: DeliveryJob,
    pub token: i64,
}

/// Who holds a job: the node, under which lease.
#[derive(Debug, Clone)]
pub struct Lease {
    pub node: String,
    pub token: i64,
}

/// What became of an attempt's outcome.
#[derive(Debug)]
pub enum Fenced<T> {
    /// Recorded, with the delivery's new state.
    Recorded(T),
    /// The lease was lost (it expired, and perhaps another node holds the job now): nothing
    /// was written.
    LeaseLost,
}

pub(super) fn check_lease(lease_ms: i64) -> Result<(), StoreError> {
    if (1..=MAX_LEASE_MS).contains(&lease_ms) {
        Ok(())
    } else {
        Err(StoreError::Postgres(PgError::Query(format!(
            "a lease of {lease_ms} ms: it must be 1 ms to {MAX_LEASE_MS} ms"
        ))))
    }
}

impl PgStore {
    /// Claims up to `limit` delivery jobs due by `now` (Ferry's clock) whose destination is
    /// one of `destinations` and on which nobody holds a live lease, soonest first, each with
    /// a lease of `lease_ms` on the database's clock and a fresh token. Concurrent claims
    /// (other nodes) skip the rows this one locks, so no job is taken twice.
    pub async fn claim_deliveries(
        &self,
        node: &str,
        now: Millis,
        destinations: &[String],
        limit: usize,
        lease_ms: i64,
    ) -> Result<Vec<Claimed>, StoreError> {
        check_lease(lease_ms)?;
        let limit = limit.min(MAX_CLAIM) as i64;
        if limit == 0 || destinations.is_empty() {
            return Ok(Vec::new());
        }
        // MATERIALIZED: the locked rows are exactly those the LIMIT chose (inlined, the
        // planner may lock more than it returns).
        let sql = format!(
            "WITH due AS MATERIALIZED (
                 SELECT delivery_id FROM delivery_jobs
                 WHERE due_at <= $1 AND destination_id = ANY($2)
                   AND (lease_until IS NULL OR lease_until < {DB_NOW_MS})
                 ORDER BY due_at
                 LIMIT $3
                 FOR UPDATE SKIP LOCKED
             )
             UPDATE delivery_jobs j
             SET lease_until = {DB_NOW_MS} + $4, lease_token = nextval('ferry_lease_tokens'), leased_by = $5,
                 held = false
             FROM due, deliveries d
             WHERE j.delivery_id = due.delivery_id AND d.id = j.delivery_id
             RETURNING j.delivery_id, d.event_id, d.run_id, j.destination_id, d.created_at,
                       d.round_attempts, j.due_at, j.lease_token"
        );
        let conn = self.conn().await?;
        let rows = conn
            .query(&sql, &[&now, &destinations, &limit, &lease_ms, &node])
            .await
            .map_err(PgError::from)?;
        let mut claimed = rows
            .iter()
            .map(|r| {
                Ok(Claimed {
                    job: DeliveryJob {
                        id: r.try_get(0)?,
                        event_id: r.try_get(1)?,
                        run_id: r.try_get(2)?,
                        destination_id: r.try_get(3)?,
                        created_at: r.try_get(4)?,
                        round_attempts: u32::try_from(r.try_get::<_, i64>(5)?).unwrap_or(0),
                        due_at: r.try_get(6)?,
                        payload: None,
                        lease: Some(r.try_get(7)?),
                    },
                    token: r.try_get(7)?,
                })
            })
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()
            .map_err(PgError::from)?;
        claimed.sort_by_key(|c| c.job.due_at);
        Ok(claimed)
    }

    /// Extends the leases `tokens` (of delivery and run jobs) by `lease_ms` from now, those
    /// still held; answers the tokens renewed. A token missing from the answer was lost: its
    /// attempt must stop, and its outcome would be refused. The rows are locked in id order,
    /// as a batch of attempts locks its own: the two wait for each other, never deadlock.
    pub async fn renew_leases(
        &self,
        tokens: &[i64],
        lease_ms: i64,
    ) -> Result<Vec<i64>, StoreError> {
        check_lease(lease_ms)?;
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        // One statement for both kinds of job: tokens come from one sequence.
        let sql = format!(
            "WITH d AS (
                 UPDATE delivery_jobs SET lease_until = {DB_NOW_MS} + $2
                 WHERE delivery_id IN (
                     SELECT delivery_id FROM delivery_jobs
                     WHERE lease_token = ANY($1) AND lease_until >= {DB_NOW_MS}
                     ORDER BY delivery_id FOR UPDATE)
                 RETURNING lease_token
             ), r AS (
                 UPDATE run_jobs SET lease_until = {DB_NOW_MS} + $2
                 WHERE run_id IN (
                     SELECT run_id FROM run_jobs
                     WHERE lease_token = ANY($1) AND lease_until >= {DB_NOW_MS}
                     ORDER BY run_id FOR UPDATE)
                 RETURNING lease_token
             )
             SELECT lease_token FROM d UNION ALL SELECT lease_token FROM r"
        );
        let conn = self.conn().await?;
        let rows = conn
            .query(&sql, &[&tokens, &lease_ms])
            .await
            .map_err(PgError::from)?;
        rows.iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(|e| PgError::from(e).into())
    }

    /// Gives the leases `tokens` (of delivery and run jobs) back at once (a graceful stop;
    /// jobs claimed but not started): the jobs are due again for every node, at their times.
    /// Answers how many.
    pub async fn release_leases(&self, tokens: &[i64]) -> Result<u64, StoreError> {
        if tokens.is_empty() {
            return Ok(0);
        }
        let conn = self.conn().await?;
        Ok(conn
            .execute(
                "WITH d AS (
                     UPDATE delivery_jobs SET lease_until = NULL, lease_token = NULL, leased_by = NULL
                     WHERE delivery_id IN (
                         SELECT delivery_id FROM delivery_jobs WHERE lease_token = ANY($1)
                         ORDER BY delivery_id FOR UPDATE)
                     RETURNING 1
                 ), r AS (
                     UPDATE run_jobs SET lease_until = NULL, lease_token = NULL, leased_by = NULL
                     WHERE run_id IN (
                         SELECT run_id FROM run_jobs WHERE lease_token = ANY($1)
                         ORDER BY run_id FOR UPDATE)
                     RETURNING 1
                 )
                 SELECT 1 FROM d UNION ALL SELECT 1 FROM r",
                &[&tokens],
            )
            .await
            .map_err(PgError::from)?)
    }

    /// Gives back every lease held in the name of node `node` (a node starting again under
    /// the same name: what its earlier start held is due again at once, without waiting for
    /// the leases to run out). Node names must be unique among the nodes running. Answers how
    /// many.
    pub async fn release_leases_of(&self, node: &str) -> Result<u64, StoreError> {
        let conn = self.conn().await?;
        Ok(conn
            .execute(
                "WITH d AS (
                     UPDATE delivery_jobs SET lease_until = NULL, lease_token = NULL, leased_by = NULL
                     WHERE leased_by = $1 RETURNING 1
                 ), r AS (
                     UPDATE run_jobs SET lease_until = NULL, lease_token = NULL, leased_by = NULL
                     WHERE leased_by = $1 RETURNING 1
                 )
                 SELECT 1 FROM d UNION ALL SELECT 1 FROM r",
                &[&node],
            )
            .await
            .map_err(PgError::from)?)
    }

    /// Claims up to `limit` runs due by `now` (Ferry's clock) for the run worker, on which
    /// nobody holds a live lease, soonest first: (run id, due time, lease token) of each, with
    /// a lease of `lease_ms` on the database's clock.
    pub async fn claim_runs(
        &self,
        node: &str,
        now: Millis,
        limit: usize,
        lease_ms: i64,
    ) -> Result<Vec<(String, Millis, i64)>, StoreError> {
        check_lease(lease_ms)?;
        let limit = limit.min(MAX_CLAIM) as i64;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let sql = format!(
            "WITH due AS MATERIALIZED (
                 SELECT run_id FROM run_jobs
                 WHERE due_at <= $1 AND (lease_until IS NULL OR lease_until < {DB_NOW_MS})
                 ORDER BY due_at
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED
             )
             UPDATE run_jobs j
             SET lease_until = {DB_NOW_MS} + $3, lease_token = nextval('ferry_lease_tokens'), leased_by = $4
             FROM due WHERE j.run_id = due.run_id
             RETURNING j.run_id, j.due_at, j.lease_token"
        );
        let conn = self.conn().await?;
        let rows = conn
            .query(&sql, &[&now, &limit, &lease_ms, &node])
            .await
            .map_err(PgError::from)?;
        let mut claimed = rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect::<Result<Vec<(String, Millis, i64)>, tokio_postgres::Error>>()
            .map_err(PgError::from)?;
        claimed.sort_by_key(|c| c.1);
        Ok(claimed)
    }

    /// Puts a held job back to wait until `until` without spending an attempt (its
    /// destination's circuit is open, or it is paused), giving its lease up.
    pub async fn hold_delivery(
        &self,
        delivery_id: &str,
        token: i64,
        until: Millis,
    ) -> Result<Fenced<()>, StoreError> {
        let conn = self.conn().await?;
        let changed = conn
            .execute(
                "UPDATE delivery_jobs SET due_at = $3, held = true, lease_until = NULL, lease_token = NULL, leased_by = NULL
                 WHERE delivery_id = $1 AND lease_token = $2",
                &[&delivery_id, &token, &until],
            )
            .await
            .map_err(PgError::from)?;
        Ok(if changed == 0 {
            Fenced::LeaseLost
        } else {
            Fenced::Recorded(())
        })
    }

    /// Makes the held jobs of `destination_id` (put back by [`PgStore::hold_delivery`]) due
    /// at `now` (a resume, or its circuit closed on some node); jobs waiting for a retry keep
    /// their times. Answers how many.
    pub async fn release_held(&self, destination_id: &str, now: Millis) -> Result<u64, StoreError> {
        let conn = self.conn().await?;
        Ok(conn
            .execute(
                "UPDATE delivery_jobs SET due_at = LEAST(due_at, $2), held = false
                 WHERE destination_id = $1 AND held AND lease_token IS NULL",
                &[&destination_id, &now],
            )
            .await
            .map_err(PgError::from)?)
    }

    /// Records an attempt made under `lease`, with the delivery's new state, in one
    /// transaction that first checks (and locks) the job's row with the lease's token: when
    /// another claim has taken the job since (a new token), nothing is written and the answer
    /// is [`Fenced::LeaseLost`]. A success or a dead letter takes
    /// the job out of the hot table; a retry leaves it there, due at its time and leased to
    /// nobody. When the delivery was the last one its run waited for, the run is settled in
    /// the same transaction (as on SQLite).
    pub async fn record_leased_attempt(
        &self,
        a: &NewAttempt,
        lease: &Lease,
    ) -> Result<Fenced<Option<Settled>>, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(PgError::from)?;
        let recorded = record_fenced(&tx, a, lease).await?;
        tx.commit().await.map_err(PgError::from)?;
        Ok(recorded)
    }
}

impl PgStore {
    /// Records many attempts, each made under its lease, in one transaction (group commit: one
    /// WAL flush for the batch): each attempt's statements are sent without waiting for the
    /// others' answers (pipelined on the connection). An attempt whose job no longer carries
    /// its token changes nothing and answers [`Fenced::LeaseLost`]; the others are recorded.
    /// When the transaction fails, every attempt of the batch answers the error (nothing of it
    /// was written). The batch should be sorted by run, so that concurrent batches lock runs in
    /// one order.
    pub async fn record_leased_attempts(
        &self,
        batch: &[(NewAttempt, Lease)],
    ) -> Vec<Result<Fenced<Option<Settled>>, StoreError>> {
        let failed_all = |e: StoreError| {
            let reason = e.to_string();
            batch
                .iter()
                .map(|_| Err(StoreError::Postgres(PgError::Query(reason.clone()))))
                .collect()
        };
        let mut conn = match self.conn().await {
            Ok(c) => c,
            Err(e) => return failed_all(e),
        };
        let tx = match conn.transaction().await {
            Ok(tx) => tx,
            Err(e) => return failed_all(PgError::from(e).into()),
        };
        // The batch's job rows are locked first, in id order, as renewals and releases lock
        // theirs: two statements locking the same rows in different orders would deadlock,
        // and PostgreSQL would roll one back.
        let mut ids: Vec<&str> = batch.iter().map(|(a, _)| a.delivery_id.as_str()).collect();
        ids.sort_unstable();
        if let Err(e) = tx
            .query(
                "SELECT 1 FROM delivery_jobs WHERE delivery_id = ANY($1) ORDER BY delivery_id FOR UPDATE",
                &[&ids],
            )
            .await
        {
            return failed_all(PgError::from(e).into());
        }
        let answers = futures_util::future::join_all(batch.iter().map(|(a, lease)| {
            let tx = &tx;
            async move { record_fenced(tx, a, lease).await }
        }))
        .await;
        // The first error that is not "the transaction is aborted" (25P02) is the cause.
        let cause = answers
            .iter()
            .filter_map(|a| a.as_ref().err())
            .find(|e| !e.to_string().contains("25P02"))
            .or_else(|| answers.iter().find_map(|a| a.as_ref().err()));
        if let Some(e) = cause {
            let e = StoreError::Postgres(PgError::Query(e.to_string()));
            let _ = tx.rollback().await;
            return failed_all(e);
        }
        if let Err(e) = tx.commit().await {
            return failed_all(PgError::from(e).into());
        }
        answers
    }
}

/// Records the attempt `a` made under `lease`, in one statement: it locks the job's row and
/// goes on only while the job still carries the lease's token (otherwise nothing is written:
/// [`Fenced::LeaseLost`]); then the delivery's state, the attempt's row, and the job (gone
/// after a success or a dead letter, due at its time and leased to nobody after a retry).
/// The run, when the delivery finished, is counted down (and settled) after it.
///
/// The token alone fences: every claim draws a new one, so a token that still matches means
/// nobody took the job over, even if the lease ran out meanwhile (its outcome is then still
/// the truth, and recording it saves a second send).
async fn record_fenced(
    tx: &deadpool_postgres::Transaction<'_>,
    a: &NewAttempt,
    lease: &Lease,
) -> Result<Fenced<Option<Settled>>, StoreError> {
    let (status, next_at) = match a.next {
        AttemptNext::Succeeded => ("succeeded", None),
        AttemptNext::RetryAt(at) => ("pending", Some(at)),
        AttemptNext::Dead => ("dead", None),
    };
    let finished = next_at.is_none();
    let status_code = a.status_code.map(i64::from);
    // The sub-statements see one snapshot: each one names the held job, so none runs when the
    // token no longer matches; the job's row is locked first, and written once.
    // Prepared once per connection: parsing and planning it for every attempt cost more than
    // running it.
    let statement = tx
        .prepare_cached(
            "WITH held AS (
                 SELECT delivery_id FROM delivery_jobs WHERE delivery_id = $1 AND lease_token = $2 FOR UPDATE
             ), delivery AS (
                 UPDATE deliveries SET attempts = attempts + 1, round_attempts = round_attempts + 1,
                        status = $3, next_attempt_at = $4, updated_at = $5, last_error = $6
                 WHERE id = (SELECT delivery_id FROM held)
                 RETURNING attempts
             ), attempt AS (
                 INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, status_code,
                                       response_headers, response_body, error, outcome,
                                       destination_id, node, lease_token)
                 SELECT $1, attempts, $7, $8, $9, $10, $11, $6, $12, $13, $14, $2 FROM delivery
             ), finished AS (
                 DELETE FROM delivery_jobs WHERE $15 AND delivery_id = (SELECT delivery_id FROM held)
             ), retried AS (
                 UPDATE delivery_jobs SET due_at = $4, lease_until = NULL, lease_token = NULL, leased_by = NULL
                 WHERE NOT $15 AND delivery_id = (SELECT delivery_id FROM held)
             )
             SELECT (SELECT attempts FROM delivery), EXISTS (SELECT 1 FROM held)",
        )
        .await
        .map_err(PgError::from)?;
    let recorded = tx
        .query_opt(
            &statement,
            &[
                &a.delivery_id,
                &lease.token,
                &status,
                &next_at,
                &a.finished_at,
                &a.error,
                &a.started_at,
                &a.duration_ms,
                &status_code,
                &a.response_headers,
                &a.response_body,
                &a.outcome,
                &a.destination_id,
                &lease.node,
                &finished,
            ],
        )
        .await
        .map_err(PgError::from)?;
    let (attempts, held): (Option<i64>, bool) = match &recorded {
        Some(row) => (
            row.try_get(0).map_err(PgError::from)?,
            row.try_get(1).map_err(PgError::from)?,
        ),
        None => (None, false),
    };
    if !held {
        return Ok(Fenced::LeaseLost);
    }
    if attempts.is_none() {
        return Err(StoreError::Corrupt(format!(
            "no delivery {}",
            a.delivery_id
        )));
    }
    if !finished {
        return Ok(Fenced::Recorded(None));
    }
    let dead = matches!(a.next, AttemptNext::Dead);
    settle_run(tx, &a.run_id, &a.event_id, dead, a.finished_at)
        .await
        .map(Fenced::Recorded)
}

/// After one of a waiting run's deliveries finished: when none is pending any more, the run
/// fails (some were dead-lettered), completes, or is due to go on. The decrement locks the
/// run's row, so two nodes finishing its last two deliveries at once settle it once.
async fn settle_run(
    tx: &deadpool_postgres::Transaction<'_>,
    run_id: &str,
    event_id: &str,
    dead: bool,
    now: Millis,
) -> Result<Option<Settled>, StoreError> {
    let count_down = tx
        .prepare_cached(
            "UPDATE runs SET pending = pending - 1, dead = dead + $2 WHERE id = $1 AND status = 'waiting'
             RETURNING pending, dead, resume_pc, flow_id",
        )
        .await
        .map_err(PgError::from)?;
    let counted = tx
        .query_opt(&count_down, &[&run_id, &i64::from(dead)])
        .await
        .map_err(PgError::from)?;
    let Some(row) = counted else {
        return Ok(None);
    };
    let read = |row: &tokio_postgres::Row| -> Result<(i64, i64, Option<i64>, String), tokio_postgres::Error> {
        Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?))
    };
    let (pending, dead_count, resume_pc, flow_id) = read(&row).map_err(PgError::from)?;
    if pending > 0 {
        return Ok(None);
    }
    let settled = |status, error| Settled {
        run_id: run_id.to_string(),
        flow_id: flow_id.clone(),
        status,
        error,
    };
    if dead_count > 0 {
        let dead: Vec<String> = tx
            .query(
                "SELECT destination_id FROM deliveries WHERE event_id = $1 AND run_id = $2 AND status = 'dead'
                 ORDER BY destination_id",
                &[&event_id, &run_id],
            )
            .await
            .map_err(PgError::from)?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(PgError::from)?;
        if !dead.is_empty() {
            let error = crate::store::dead_deliveries_error(&dead);
            tx.execute(
                "UPDATE runs SET status = 'failed', failed_on = 'deliveries', error = $2, updated_at = $3 WHERE id = $1",
                &[&run_id, &error, &now],
            )
            .await
            .map_err(PgError::from)?;
            return Ok(Some(settled("failed", Some(error))));
        }
    }
    match resume_pc {
        None => {
            let completed = tx
                .prepare_cached(
                    "UPDATE runs SET status = 'completed', updated_at = $2 WHERE id = $1",
                )
                .await
                .map_err(PgError::from)?;
            tx.execute(&completed, &[&run_id, &now])
                .await
                .map_err(PgError::from)?;
            Ok(Some(settled("completed", None)))
        }
        Some(pc) => {
            tx.execute(
                "UPDATE runs SET status = 'running', pc = $2, resume_pc = NULL, next_at = $3, step_attempts = 0, updated_at = $3 WHERE id = $1",
                &[&run_id, &pc, &now],
            )
            .await
            .map_err(PgError::from)?;
            super::writes::set_run_job(tx, run_id, Some(now)).await?;
            Ok(Some(settled("running", None)))
        }
    }
}

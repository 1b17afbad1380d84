//! The PostgreSQL store's reads: one method of [`PgStore`] for each of `Store`'s named reads
//! (`store/queries.rs`), with the same name, arguments and answer, answering what the SQLite
//! reads (`reads.rs`, `runs.rs`, `objects.rs`, `health.rs`, `prune.rs`) answer for the same
//! rows: the same order, cursors, filters and errors. The SQL is theirs, ported: `$N`
//! parameters with their types written where a parameter is only tested for NULL,
//! `strpos` for `instr`, `octet_length` for `length` of a blob, `NULLS FIRST` where SQLite
//! sorts NULL first. A read of several things (an event with its runs, deliveries and
//! attempts; a page's backlog and dead letters) runs in one `REPEATABLE READ, READ ONLY`
//! transaction, so its parts agree; a single query runs on its own.
//!
//! Two things SQLite takes that PostgreSQL does not, answered as SQLite answers them:
//!
//! - A limit past `i64::MAX`: SQLite reads `limit as i64`, a negative limit, which is none;
//!   here it is `LIMIT NULL`, none too ([`row_limit`]).
//! - Text with a NUL character, which PostgreSQL's text cannot hold: no stored id, name or
//!   message has one, so a filter or id that holds one matches nothing (answered without a
//!   query), and a cursor that holds one is replaced by one that selects the same rows
//!   ([`below`], [`above`]).
//!
//! Like the rest of the store, it knows nothing of HTTP, flows or scheduling.

use super::rows::{self, ATTEMPT_COLUMNS, REJECTION_COLUMNS, get, to_usize};
use super::{PgError, PgStore};
use crate::clock::{Millis, rfc3339};
use crate::store::reads::{DELIVERY_COLUMNS, json_or_string, missing_body, payload_value};
use crate::store::runs::{SUMMARY_COLUMNS, StepReads, body_value, shown_steps};
use crate::store::{
    AlertChange, AlertState, AttemptView, Backlog, Body, DeadFilter, DeadLetter, DeliveryFilter,
    DeliveryJob, DeliveryView, EventFilter, EventSummary, EventView, FailedRunFilter, Pause,
    RecentAttempt, RejectionView, RunDetail, RunFilter, RunRow, RunSummary, RunView, SchemaVersion,
    Space, StoreError, StoredEvent, StoredObject, TokenView,
};
use bytes::Bytes;
use deadpool_postgres::{GenericClient, Object, Transaction};
use std::borrow::Cow;
use std::collections::HashMap;
use tokio_postgres::types::ToSql;
use tokio_postgres::{IsolationLevel, Row};

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

fn pg(e: tokio_postgres::Error) -> StoreError {
    PgError::from(e).into()
}

/// The rows of `sql` (prepared once per connection).
async fn query(
    c: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
) -> Result<Vec<Row>, StoreError> {
    let statement = c.prepare_cached(sql).await.map_err(pg)?;
    c.query(&statement, params).await.map_err(pg)
}

/// The row of `sql`, if there is one.
async fn query_opt(
    c: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
) -> Result<Option<Row>, StoreError> {
    let statement = c.prepare_cached(sql).await.map_err(pg)?;
    c.query_opt(&statement, params).await.map_err(pg)
}

/// The one row of `sql` (an aggregate's).
async fn query_one(
    c: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
) -> Result<Row, StoreError> {
    let statement = c.prepare_cached(sql).await.map_err(pg)?;
    c.query_one(&statement, params).await.map_err(pg)
}

/// Each row of `sql`, converted.
async fn query_map<T>(
    c: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
    convert: impl Fn(&Row) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    query(c, sql, params).await?.iter().map(convert).collect()
}

/// A read-only transaction on one snapshot, for a read of several things.
async fn snapshot(conn: &mut Object) -> Result<Transaction<'_>, StoreError> {
    conn.build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(pg)
}

/// A limit as a parameter: `None` (`LIMIT NULL`, no limit) past `i64::MAX`, where SQLite's
/// `limit as i64` is negative, which SQLite takes as no limit.
fn row_limit(n: usize) -> Option<i64> {
    i64::try_from(n).ok()
}

/// Whether PostgreSQL's text can hold `text`: it cannot hold NUL, so nothing stored has one.
fn storable(text: &str) -> bool {
    !text.contains('\0')
}

/// Whether every filter given can match something stored (see [`storable`]).
fn all_storable(filters: &[Option<&String>]) -> bool {
    filters.iter().flatten().all(|f| storable(f))
}

/// A bound `b` such that, for any text `x` without NUL, `x < b` exactly when `x < cursor`
/// (byte order, as both backends compare ids): `cursor` itself, or when it holds a NUL, the
/// part before it followed by U+0001. Past that part, a stored text has a byte of at least 1
/// where the cursor has 0, so it sorts after; up to it, both orders agree.
fn below(cursor: &str) -> Cow<'_, str> {
    match cursor.find('\0') {
        Some(at) => Cow::Owned(format!("{}\u{1}", &cursor[..at])),
        None => Cow::Borrowed(cursor),
    }
}

/// A bound `b` such that, for any text `x` without NUL, `x > b` exactly when `x > cursor`:
/// the part of `cursor` before its first NUL (see [`below`]).
fn above(cursor: &str) -> &str {
    cursor.find('\0').map_or(cursor, |at| &cursor[..at])
}

impl PgStore {
    /// Answers when a connection can run a query (`/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let conn = self.conn().await?;
        query_one(&conn, "SELECT 1", &[]).await?;
        Ok(())
    }

    // What the deliverer and the run worker load.

    /// The first `limit` pending deliveries in due order (a tie by id), for the deliverer to
    /// take over. SQLite sorts a NULL due time first: those are read first, by id, then the
    /// others in the index's order (one query with `NULLS FIRST` could not use the index).
    pub async fn pending_jobs(&self, limit: usize) -> Result<Vec<DeliveryJob>, StoreError> {
        const UNDATED: &str = "SELECT id, event_id, destination_id, round_attempts, next_attempt_at, run_id, created_at FROM deliveries
             WHERE status = 'pending' AND next_attempt_at IS NULL ORDER BY id LIMIT $1";
        const DATED: &str = "SELECT id, event_id, destination_id, round_attempts, next_attempt_at, run_id, created_at FROM deliveries
             WHERE status = 'pending' AND next_attempt_at IS NOT NULL ORDER BY next_attempt_at, id LIMIT $1";
        let mut conn = self.conn().await?;
        let tx = snapshot(&mut conn).await?;
        let mut jobs = query_map(&tx, UNDATED, &[&row_limit(limit)], rows::job).await?;
        let left = limit.saturating_sub(jobs.len());
        if left > 0 {
            jobs.extend(query_map(&tx, DATED, &[&row_limit(left)], rows::job).await?);
        }
        tx.commit().await.map_err(pg)?;
        Ok(jobs)
    }

    /// The size in bytes of what a delivery sends, read without reading the body itself.
    pub async fn delivery_payload_size(
        &self,
        delivery_id: &str,
    ) -> Result<Option<usize>, StoreError> {
        if !storable(delivery_id) {
            return Ok(None);
        }
        let conn = self.conn().await?;
        let found = query_opt(
            &conn,
            "SELECT (CASE WHEN d.body_id IS NULL THEN octet_length(e.payload)
                     ELSE (SELECT octet_length(b.data) FROM bodies b WHERE b.id = d.body_id) END)::bigint
             FROM deliveries d JOIN events e ON e.id = d.event_id WHERE d.id = $1",
            &[&delivery_id],
        )
        .await?;
        let Some(row) = found else { return Ok(None) };
        match get::<Option<i64>>(&row, 0)? {
            Some(n) => Ok(Some(to_usize(n.max(0), || {
                format!("delivery {delivery_id}: its size")
            })?)),
            None => Err(missing_body(delivery_id)),
        }
    }

    /// What a delivery sends: its body, or else its event's payload (a missing body is an
    /// error, never the event's payload in its place).
    pub async fn delivery_payload(&self, delivery_id: &str) -> Result<Option<Bytes>, StoreError> {
        if !storable(delivery_id) {
            return Ok(None);
        }
        let conn = self.conn().await?;
        let found = query_opt(
            &conn,
            "SELECT CASE WHEN d.body_id IS NULL THEN e.payload ELSE (SELECT b.data FROM bodies b WHERE b.id = d.body_id) END
             FROM deliveries d JOIN events e ON e.id = d.event_id WHERE d.id = $1",
            &[&delivery_id],
        )
        .await?;
        let Some(row) = found else { return Ok(None) };
        match get::<Option<Vec<u8>>>(&row, 0)? {
            Some(data) => Ok(Some(Bytes::from(data))),
            None => Err(missing_body(delivery_id)),
        }
    }

    /// The paused destinations with why and since when, by destination id.
    pub async fn paused_destinations(&self) -> Result<Vec<(String, Pause)>, StoreError> {
        let conn = self.conn().await?;
        query_map(
            &conn,
            "SELECT destination_id, paused_by, reason, since FROM paused_destinations ORDER BY destination_id",
            &[],
            rows::pause,
        )
        .await
    }

    /// Runs the run worker has to act on, soonest first (a tie by id): `(id, due at)`.
    pub async fn due_runs(&self) -> Result<Vec<(String, Millis)>, StoreError> {
        let conn = self.conn().await?;
        query_map(
            &conn,
            "SELECT id, COALESCE(next_at, 0) FROM runs WHERE status = 'running' ORDER BY next_at NULLS FIRST, id",
            &[],
            |r| Ok((get(r, 0)?, get(r, 1)?)),
        )
        .await
    }

    /// A run with its event, as the run worker needs it to go on.
    pub async fn run_row(&self, id: &str) -> Result<Option<RunRow>, StoreError> {
        if !storable(id) {
            return Ok(None);
        }
        let conn = self.conn().await?;
        let found = query_opt(
            &conn,
            "SELECT r.id, r.event_id, e.event_type, e.source, e.received_at, e.headers, e.payload, r.flow_id, r.flow_version,
                    r.status, r.pc, r.resume_pc, r.step_attempts, r.context, r.steps, r.error, r.next_at,
                    e.payload_expired_at IS NOT NULL, r.payload_body, b.data
             FROM runs r JOIN events e ON e.id = r.event_id LEFT JOIN bodies b ON b.id = r.payload_body
             WHERE r.id = $1",
            &[&id],
        )
        .await?;
        let Some(r) = found else { return Ok(None) };
        let payload_body = match (get::<Option<i64>>(&r, 18)?, get::<Option<Vec<u8>>>(&r, 19)?) {
            (Some(body_id), Some(data)) => Some(Body {
                id: body_id,
                data: Bytes::from(data),
            }),
            (Some(body_id), None) => {
                return Err(StoreError::Corrupt(format!(
                    "run {id}: its payload is body {body_id}, which is not in the store"
                )));
            }
            (None, _) => None,
        };
        let resume_pc = match get::<Option<i64>>(&r, 11)? {
            Some(pc) => Some(to_usize(pc, || format!("run {id}: its resume step"))?),
            None => None,
        };
        Ok(Some(RunRow {
            id: get(&r, 0)?,
            event_id: get(&r, 1)?,
            event_type: get(&r, 2)?,
            source: get(&r, 3)?,
            received_at: get(&r, 4)?,
            headers: get(&r, 5)?,
            payload: Bytes::from(get::<Vec<u8>>(&r, 6)?),
            flow_id: get(&r, 7)?,
            flow_version: get(&r, 8)?,
            status: get(&r, 9)?,
            pc: to_usize(get(&r, 10)?, || format!("run {id}: its step index"))?,
            resume_pc,
            step_attempts: rows::to_u32(get(&r, 12)?, || format!("run {id}: its step's attempts"))?,
            next_at: get(&r, 16)?,
            payload_body,
            context: get(&r, 13)?,
            steps: get(&r, 14)?,
            error: get(&r, 15)?,
            payload_expired: get(&r, 17)?,
        }))
    }

    // Events, runs and deliveries as the API and the console show them.

    /// An event with its runs and their deliveries (without their attempts).
    pub async fn event(&self, id: &str) -> Result<Option<EventView>, StoreError> {
        if !storable(id) {
            return Ok(None);
        }
        let mut conn = self.conn().await?;
        let tx = snapshot(&mut conn).await?;
        let event = event_in(&tx, id).await?;
        tx.commit().await.map_err(pg)?;
        Ok(event)
    }

    /// An event with each delivery's attempts and the steps of each run that has its detail,
    /// read together in one transaction (the console's event page).
    pub async fn event_with_attempts_and_steps(
        &self,
        id: &str,
    ) -> Result<Option<(EventView, Vec<RunDetail>)>, StoreError> {
        if !storable(id) {
            return Ok(None);
        }
        let mut conn = self.conn().await?;
        let tx = snapshot(&mut conn).await?;
        // The event's deliveries come with their attempts already: SQLite reads each again
        // (on its connection, outside a transaction); on one snapshot that is the same view.
        let Some(event) = event_in(&tx, id).await? else {
            return Ok(None);
        };
        let mut details = Vec::new();
        for run in &event.runs {
            if let Some(detail) = run_detail_in(&tx, &run.id).await? {
                details.push(detail);
            }
        }
        tx.commit().await.map_err(pg)?;
        Ok(Some((event, details)))
    }

    /// What a replay of a whole event needs of it (its payload `None` once it expired).
    pub async fn stored_event(&self, id: &str) -> Result<Option<StoredEvent>, StoreError> {
        if !storable(id) {
            return Ok(None);
        }
        let conn = self.conn().await?;
        let found = query_opt(
            &conn,
            "SELECT source, event_type, received_at, headers, CASE WHEN payload_expired_at IS NULL THEN payload END,
                    (SELECT COUNT(*) FROM runs WHERE runs.event_id = events.id) FROM events WHERE id = $1",
            &[&id],
        )
        .await?;
        let Some(r) = found else { return Ok(None) };
        Ok(Some(StoredEvent {
            source: get(&r, 0)?,
            event_type: get(&r, 1)?,
            received_at: get(&r, 2)?,
            headers: get(&r, 3)?,
            payload: get(&r, 4)?,
            runs: get(&r, 5)?,
        }))
    }

    /// Events, newest first; `before` is the id of the previous page's last event.
    pub async fn events(
        &self,
        filter: &EventFilter,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<EventSummary>, StoreError> {
        let conn = self.conn().await?;
        Ok(events_page(&conn, filter, before, limit, false)
            .await?
            .into_iter()
            .map(|(e, _)| e)
            .collect())
    }

    /// Like [`PgStore::events`], each with its payload (for filters on the payload).
    pub async fn events_with_payload(
        &self,
        filter: &EventFilter,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(EventSummary, Vec<u8>)>, StoreError> {
        let conn = self.conn().await?;
        events_page(&conn, filter, before, limit, true).await
    }

    /// A delivery with its attempts.
    pub async fn delivery(&self, id: &str) -> Result<Option<DeliveryView>, StoreError> {
        if !storable(id) {
            return Ok(None);
        }
        let mut conn = self.conn().await?;
        let tx = snapshot(&mut conn).await?;
        let found = query_opt(
            &tx,
            &format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = $1"),
            &[&id],
        )
        .await?;
        let Some(row) = found else { return Ok(None) };
        let mut delivery = rows::delivery(&row)?;
        let ids = [id];
        delivery.attempts = Some(attempts_of(&tx, &ids).await?.remove(id).unwrap_or_default());
        tx.commit().await.map_err(pg)?;
        Ok(Some(delivery))
    }

    /// Deliveries, newest first (id order), without their attempts; `before` is the previous
    /// page's last id.
    pub async fn deliveries(
        &self,
        filter: &DeliveryFilter,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeliveryView>, StoreError> {
        let equal = [
            filter.destination_id.as_ref(),
            filter.event_id.as_ref(),
            filter.status.as_ref(),
        ];
        if !all_storable(&equal) {
            return Ok(Vec::new());
        }
        let before = before.map(below);
        let conn = self.conn().await?;
        query_map(
            &conn,
            &format!(
                "SELECT {DELIVERY_COLUMNS} FROM deliveries
                 WHERE ($1::text IS NULL OR destination_id = $1) AND ($2::text IS NULL OR event_id = $2)
                   AND ($3::text IS NULL OR status = $3) AND ($4::text IS NULL OR id < $4)
                 ORDER BY id DESC LIMIT $5"
            ),
            &[
                &filter.destination_id,
                &filter.event_id,
                &filter.status,
                &before.as_deref(),
                &row_limit(limit),
            ],
            rows::delivery,
        )
        .await
    }

    /// A run as the API shows it, with its steps.
    pub async fn run_detail(&self, id: &str) -> Result<Option<RunDetail>, StoreError> {
        if !storable(id) {
            return Ok(None);
        }
        let mut conn = self.conn().await?;
        let tx = snapshot(&mut conn).await?;
        let detail = run_detail_in(&tx, id).await?;
        tx.commit().await.map_err(pg)?;
        Ok(detail)
    }

    /// A run without its steps.
    pub async fn run_summary(&self, id: &str) -> Result<Option<RunSummary>, StoreError> {
        if !storable(id) {
            return Ok(None);
        }
        let conn = self.conn().await?;
        run_summary_in(&conn, id).await
    }

    /// Runs, newest first (id order); `before` is the previous page's last id.
    pub async fn runs(
        &self,
        filter: &RunFilter,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RunSummary>, StoreError> {
        let equal = [
            filter.flow_id.as_ref(),
            filter.event_id.as_ref(),
            filter.status.as_ref(),
        ];
        if !all_storable(&equal) {
            return Ok(Vec::new());
        }
        let before = before.map(below);
        let conn = self.conn().await?;
        query_map(
            &conn,
            &format!(
                "SELECT {SUMMARY_COLUMNS} FROM runs
                 WHERE ($1::text IS NULL OR flow_id = $1) AND ($2::text IS NULL OR event_id = $2)
                   AND ($3::text IS NULL OR status = $3) AND ($4::text IS NULL OR id < $4)
                 ORDER BY id DESC LIMIT $5"
            ),
            &[
                &filter.flow_id,
                &filter.event_id,
                &filter.status,
                &before.as_deref(),
                &row_limit(limit),
            ],
            rows::summary,
        )
        .await
    }

    /// Failed runs matching `filter`, oldest first, after the run id `after`.
    pub async fn failed_runs(
        &self,
        filter: &FailedRunFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RunSummary>, StoreError> {
        if !all_storable(&[filter.flow_id.as_ref(), filter.error.as_ref()]) {
            return Ok(Vec::new());
        }
        let after = after.map(above);
        let conn = self.conn().await?;
        query_map(
            &conn,
            &format!(
                "SELECT {SUMMARY_COLUMNS} FROM runs WHERE status = 'failed'
                   AND ($1::text IS NULL OR flow_id = $1) AND ($2::bigint IS NULL OR created_at >= $2)
                   AND ($3::bigint IS NULL OR created_at < $3)
                   AND ($4::text IS NULL OR strpos(error, $4) > 0) AND ($5::text IS NULL OR id > $5)
                 ORDER BY id LIMIT $6"
            ),
            &[
                &filter.flow_id,
                &filter.since,
                &filter.until,
                &filter.error,
                &after,
                &row_limit(limit),
            ],
            rows::summary,
        )
        .await
    }

    /// Dead letters (dead deliveries and failed runs), newest first (ids are prefixed ULIDs,
    /// so the part after the prefix orders by time); `before` is the id of the previous
    /// page's last entry.
    pub async fn dead_letters(
        &self,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        // SQLite compares `substr(id, 5) < substr(?1, 5)`: the cursor's part, taken here as
        // SQLite's `substr` takes it, from the text before its first NUL.
        let key: Option<String> = before.map(|b| above(b).chars().skip(4).collect());
        let mut conn = self.conn().await?;
        let tx = snapshot(&mut conn).await?;
        let keys = query_map(
            &tx,
            "SELECT kind, id FROM (
                SELECT 'delivery' AS kind, id FROM deliveries WHERE status = 'dead'
                UNION ALL SELECT 'run', id FROM runs WHERE status = 'failed' AND failed_on = 'step') AS letters
             WHERE ($1::text IS NULL OR substr(id, 5) < $1) ORDER BY substr(id, 5) DESC LIMIT $2",
            &[&key, &row_limit(limit)],
            |r| Ok((get::<String>(r, 0)?, get::<String>(r, 1)?)),
        )
        .await?;
        let (runs, deliveries): (Vec<_>, Vec<_>) = keys.iter().partition(|(kind, _)| kind == "run");
        let run_ids: Vec<&str> = runs.iter().map(|(_, id)| id.as_str()).collect();
        let delivery_ids: Vec<&str> = deliveries.iter().map(|(_, id)| id.as_str()).collect();
        let mut runs: HashMap<String, RunSummary> = query_map(
            &tx,
            &format!("SELECT {SUMMARY_COLUMNS} FROM runs WHERE id = ANY($1)"),
            &[&run_ids],
            rows::summary,
        )
        .await?
        .into_iter()
        .map(|r| (r.id.clone(), r))
        .collect();
        let mut deliveries = deliveries_by_id(&tx, &delivery_ids).await?;
        tx.commit().await.map_err(pg)?;
        Ok(keys
            .into_iter()
            .filter_map(|(kind, id)| {
                if kind == "run" {
                    runs.remove(&id).map(DeadLetter::Run)
                } else {
                    deliveries.remove(&id).map(DeadLetter::Delivery)
                }
            })
            .collect())
    }

    /// Ids of the dead deliveries matching `filter`, oldest first, after the id `after`.
    pub async fn dead_deliveries(
        &self,
        filter: &DeadFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        if !all_storable(&[filter.destination_id.as_ref(), filter.error.as_ref()]) {
            return Ok(Vec::new());
        }
        let after = after.map(above);
        let conn = self.conn().await?;
        query_map(
            &conn,
            "SELECT id FROM deliveries WHERE status = 'dead'
               AND ($1::text IS NULL OR destination_id = $1) AND ($2::bigint IS NULL OR created_at >= $2)
               AND ($3::bigint IS NULL OR created_at < $3)
               AND ($4::text IS NULL OR strpos(COALESCE(last_error, ''), $4) > 0) AND ($5::text IS NULL OR id > $5)
             ORDER BY id LIMIT $6",
            &[
                &filter.destination_id,
                &filter.since,
                &filter.until,
                &filter.error,
                &after,
                &row_limit(limit),
            ],
            |r| get(r, 0),
        )
        .await
    }

    /// Dead deliveries matching `filter`, newest first, before the id `before`, without their
    /// attempts (the console's dead letters page).
    pub async fn dead_delivery_page(
        &self,
        filter: &DeadFilter,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeliveryView>, StoreError> {
        if !all_storable(&[filter.destination_id.as_ref(), filter.error.as_ref()]) {
            return Ok(Vec::new());
        }
        let before = before.map(below);
        let conn = self.conn().await?;
        query_map(
            &conn,
            &format!(
                "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE status = 'dead'
                   AND ($1::text IS NULL OR destination_id = $1) AND ($2::bigint IS NULL OR created_at >= $2)
                   AND ($3::bigint IS NULL OR created_at < $3)
                   AND ($4::text IS NULL OR strpos(COALESCE(last_error, ''), $4) > 0) AND ($5::text IS NULL OR id < $5)
                 ORDER BY id DESC LIMIT $6"
            ),
            &[
                &filter.destination_id,
                &filter.since,
                &filter.until,
                &filter.error,
                &before.as_deref(),
                &row_limit(limit),
            ],
            rows::delivery,
        )
        .await
    }

    /// The rejected log, newest first; `before` is the cursor (an entry id) of the previous
    /// page.
    pub async fn rejections(
        &self,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<RejectionView>, StoreError> {
        let conn = self.conn().await?;
        query_map(
            &conn,
            &format!(
                "SELECT {REJECTION_COLUMNS} FROM rejections WHERE ($1::bigint IS NULL OR id < $1) ORDER BY id DESC LIMIT $2"
            ),
            &[&before, &row_limit(limit)],
            rows::rejection,
        )
        .await
    }

    /// A source's last `limit` events and its last `limit` refusals in the rejected log, read
    /// together in one transaction (the console's source page).
    pub async fn events_and_rejections_of(
        &self,
        source: &str,
        limit: usize,
    ) -> Result<(Vec<EventSummary>, Vec<RejectionView>), StoreError> {
        if !storable(source) {
            return Ok((Vec::new(), Vec::new()));
        }
        let filter = EventFilter {
            source: Some(source.to_string()),
            ..Default::default()
        };
        let mut conn = self.conn().await?;
        let tx = snapshot(&mut conn).await?;
        let events = events_page(&tx, &filter, None, limit, false).await?;
        let rejections = query_map(
            &tx,
            &format!(
                "SELECT {REJECTION_COLUMNS} FROM rejections WHERE source = $1 ORDER BY id DESC LIMIT $2"
            ),
            &[&source, &row_limit(limit)],
            rows::rejection,
        )
        .await?;
        tx.commit().await.map_err(pg)?;
        Ok((events.into_iter().map(|(e, _)| e).collect(), rejections))
    }

    // The config objects made through the API, and tokens.

    /// Every object made through the API.
    pub async fn api_objects(&self) -> Result<Vec<StoredObject>, StoreError> {
        let conn = self.conn().await?;
        query_map(
            &conn,
            "SELECT kind, id, spec, created_at, updated_at FROM config_objects ORDER BY kind, id",
            &[],
            rows::stored_object,
        )
        .await
    }

    /// The schema versions of an event type, oldest first.
    pub async fn schema_versions(
        &self,
        event_type: &str,
    ) -> Result<Vec<SchemaVersion>, StoreError> {
        if !storable(event_type) {
            return Ok(Vec::new());
        }
        let conn = self.conn().await?;
        query_map(
            &conn,
            "SELECT version, created_at, schema FROM schema_versions WHERE event_type = $1 ORDER BY version",
            &[&event_type],
            rows::schema_version,
        )
        .await
    }

    /// How many deliveries to a destination are not finished (pending).
    pub async fn pending_deliveries_to(&self, destination_id: &str) -> Result<i64, StoreError> {
        if !storable(destination_id) {
            return Ok(0);
        }
        let conn = self.conn().await?;
        let row = query_one(
            &conn,
            "SELECT COUNT(*) FROM deliveries WHERE status = 'pending' AND destination_id = $1",
            &[&destination_id],
        )
        .await?;
        get(&row, 0)
    }

    /// How many runs of a flow are not finished (running or waiting for their deliveries).
    pub async fn unfinished_runs_of(&self, flow_id: &str) -> Result<i64, StoreError> {
        if !storable(flow_id) {
            return Ok(0);
        }
        let conn = self.conn().await?;
        let row = query_one(
            &conn,
            "SELECT COUNT(*) FROM runs WHERE status IN ('running', 'waiting') AND flow_id = $1",
            &[&flow_id],
        )
        .await?;
        get(&row, 0)
    }

    /// The live tokens, oldest first.
    pub async fn tokens(&self) -> Result<Vec<TokenView>, StoreError> {
        let conn = self.conn().await?;
        query_map(
            &conn,
            "SELECT id, name, scope, created_at FROM api_tokens WHERE revoked_at IS NULL ORDER BY id",
            &[],
            rows::token,
        )
        .await
    }

    /// The scope of the live token whose SHA-256 is `hash`.
    pub async fn token_scope(&self, hash: &[u8]) -> Result<Option<String>, StoreError> {
        let conn = self.conn().await?;
        let found = query_opt(
            &conn,
            "SELECT scope FROM api_tokens WHERE hash = $1 AND revoked_at IS NULL",
            &[&hash],
        )
        .await?;
        found.map(|r| get(&r, 0)).transpose()
    }

    // Health: what metrics, alert rules and the console's health views read.

    /// The pending deliveries of each destination, and the oldest due one, by destination id.
    pub async fn backlog(&self, now: Millis) -> Result<Vec<Backlog>, StoreError> {
        let conn = self.conn().await?;
        backlog_in(&conn, now).await
    }

    /// The backlog, the dead deliveries by destination and the number of failed runs, read
    /// together in one transaction (the gauges of `/metrics`).
    pub async fn backlog_dead_and_failed_runs(
        &self,
        now: Millis,
    ) -> Result<(Vec<Backlog>, Vec<(String, i64)>, i64), StoreError> {
        let mut conn = self.conn().await?;
        let tx = snapshot(&mut conn).await?;
        let backlog = backlog_in(&tx, now).await?;
        let dead = dead_by_destination_in(&tx).await?;
        let failed = query_one(
            &tx,
            "SELECT COUNT(*) FROM runs WHERE status = 'failed' AND failed_on = 'step'",
            &[],
        )
        .await?;
        tx.commit().await.map_err(pg)?;
        Ok((backlog, dead, get(&failed, 0)?))
    }

    /// The size of the rejected log, the backlog, the dead deliveries by destination and the
    /// alert states, read together in one transaction (the console's overview).
    pub async fn rejected_backlog_dead_and_alerts(
        &self,
        now: Millis,
    ) -> Result<(i64, Vec<Backlog>, Vec<(String, i64)>, Vec<AlertState>), StoreError> {
        let mut conn = self.conn().await?;
        let tx = snapshot(&mut conn).await?;
        let rejected = count_in(&tx, "SELECT COUNT(*) FROM rejections").await?;
        let backlog = backlog_in(&tx, now).await?;
        let dead = dead_by_destination_in(&tx).await?;
        let alerts = alert_states_in(&tx).await?;
        tx.commit().await.map_err(pg)?;
        Ok((rejected, backlog, dead, alerts))
    }

    /// The last `per_destination` attempts of each of `destination_ids` (in their order), the
    /// backlog and the dead deliveries by destination, read together in one transaction (the
    /// console's destinations).
    pub async fn recent_attempts_backlog_and_dead(
        &self,
        destination_ids: Vec<String>,
        per_destination: usize,
        now: Millis,
    ) -> Result<(Vec<Backlog>, Vec<(String, i64)>, Vec<Vec<RecentAttempt>>), StoreError> {
        let mut conn = self.conn().await?;
        let tx = snapshot(&mut conn).await?;
        let mut recent = Vec::with_capacity(destination_ids.len());
        for id in &destination_ids {
            recent.push(recent_attempts_in(&tx, id, per_destination).await?);
        }
        let backlog = backlog_in(&tx, now).await?;
        let dead = dead_by_destination_in(&tx).await?;
        tx.commit().await.map_err(pg)?;
        Ok((backlog, dead, recent))
    }

    /// A destination's last `n` attempts, newest first.
    pub async fn recent_attempts(
        &self,
        destination_id: &str,
        n: usize,
    ) -> Result<Vec<RecentAttempt>, StoreError> {
        let conn = self.conn().await?;
        recent_attempts_in(&conn, destination_id, n).await
    }

    /// The outcomes, errors and times of a destination's last `n` attempts, newest first.
    pub async fn last_attempts(
        &self,
        destination_id: &str,
        n: usize,
    ) -> Result<Vec<(String, Option<String>, Millis)>, StoreError> {
        if !storable(destination_id) {
            return Ok(Vec::new());
        }
        let conn = self.conn().await?;
        query_map(
            &conn,
            "SELECT outcome, error, started_at FROM attempts WHERE destination_id = $1 ORDER BY started_at DESC, id DESC LIMIT $2",
            &[&destination_id, &row_limit(n)],
            |r| Ok((get(r, 0)?, get(r, 1)?, get(r, 2)?)),
        )
        .await
    }

    /// `(attempts, failed attempts)` of a destination since `since`.
    pub async fn attempt_counts(
        &self,
        destination_id: &str,
        since: Millis,
    ) -> Result<(i64, i64), StoreError> {
        let conn = self.conn().await?;
        attempt_counts_in(&conn, destination_id, since).await
    }

    /// `(attempts, failed attempts)` since `since` of each of `destination_ids`, by id, read
    /// together in one transaction.
    pub async fn attempt_counts_of(
        &self,
        destination_ids: Vec<String>,
        since: Millis,
    ) -> Result<HashMap<String, (i64, i64)>, StoreError> {
        let mut conn = self.conn().await?;
        let tx = snapshot(&mut conn).await?;
        let mut counts = HashMap::with_capacity(destination_ids.len());
        for id in destination_ids {
            let n = attempt_counts_in(&tx, &id, since).await?;
            counts.insert(id, n);
        }
        tx.commit().await.map_err(pg)?;
        Ok(counts)
    }

    /// Ingest-to-delivery times (ms) of a destination's deliveries that succeeded since
    /// `since`, in the order of their attempts.
    pub async fn delivery_latencies(
        &self,
        destination_id: &str,
        since: Millis,
    ) -> Result<Vec<i64>, StoreError> {
        if !storable(destination_id) {
            return Ok(Vec::new());
        }
        let conn = self.conn().await?;
        query_map(
            &conn,
            "SELECT a.started_at + a.duration_ms - d.created_at FROM attempts a JOIN deliveries d ON d.id = a.delivery_id
             WHERE a.destination_id = $1 AND a.started_at >= $2 AND a.outcome = 'succeeded' ORDER BY a.started_at, a.id",
            &[&destination_id, &since],
            |r| get(r, 0),
        )
        .await
    }

    /// The dead deliveries, all of them or those of one destination.
    pub async fn dead_count(&self, destination_id: Option<&str>) -> Result<i64, StoreError> {
        if destination_id.is_some_and(|d| !storable(d)) {
            return Ok(0);
        }
        let conn = self.conn().await?;
        let row = query_one(
            &conn,
            "SELECT COUNT(*) FROM deliveries WHERE status = 'dead' AND ($1::text IS NULL OR destination_id = $1)",
            &[&destination_id],
        )
        .await?;
        get(&row, 0)
    }

    /// The latest event time of each source that has any, by source.
    pub async fn source_state(&self, source: &str) -> Result<Option<String>, StoreError> {
        let conn = self.conn().await?;
        let found = query_map(
            &conn,
            "SELECT state FROM source_states WHERE source = $1",
            &[&source],
            |r| get(r, 0),
        )
        .await?;
        Ok(found.into_iter().next())
    }

    pub async fn last_event_per_source(&self) -> Result<Vec<(String, Millis)>, StoreError> {
        let conn = self.conn().await?;
        query_map(
            &conn,
            "SELECT source, MAX(received_at) FROM events GROUP BY source ORDER BY source",
            &[],
            |r| Ok((get(r, 0)?, get(r, 1)?)),
        )
        .await
    }

    /// Every alert rule's stored state, by rule id.
    pub async fn alert_states(&self) -> Result<Vec<AlertState>, StoreError> {
        let conn = self.conn().await?;
        alert_states_in(&conn).await
    }

    /// The alert states, and the last `changes` changes of each of `alert_ids` (in their
    /// order, each newest first), read together in one transaction.
    pub async fn alert_states_and_history(
        &self,
        alert_ids: Vec<String>,
        changes: usize,
    ) -> Result<(Vec<AlertState>, Vec<Vec<AlertChange>>), StoreError> {
        let mut conn = self.conn().await?;
        let tx = snapshot(&mut conn).await?;
        let mut histories = Vec::with_capacity(alert_ids.len());
        for id in &alert_ids {
            if !storable(id) {
                histories.push(Vec::new());
                continue;
            }
            histories.push(
                query_map(
                    &tx,
                    "SELECT at, firing, subject, message, notices FROM alert_history WHERE alert_id = $1 ORDER BY id DESC LIMIT $2",
                    &[id, &row_limit(changes)],
                    |r| rows::alert_change(r, id),
                )
                .await?,
            );
        }
        let states = alert_states_in(&tx).await?;
        tx.commit().await.map_err(pg)?;
        Ok((states, histories))
    }

    // Retention.

    /// The space Ferry's tables take, in the words of SQLite's pages: `page_size` is the
    /// server's block size, `pages` the blocks of Ferry's tables with their indexes and TOAST
    /// (`pg_total_relation_size`, by name in the schema in use; a table a migration has not
    /// made yet counts nothing). PostgreSQL keeps the room of deleted rows for new ones and
    /// gives it back only through `VACUUM FULL`, which retention does not run: `free_pages`
    /// is 0 and `incremental` false, so retention never asks to give pages back.
    pub async fn space(&self) -> Result<Space, StoreError> {
        let conn = self.conn().await?;
        let row = query_one(
            &conn,
            "SELECT current_setting('block_size')::bigint,
                    (SELECT COALESCE(SUM(pg_total_relation_size(to_regclass(t))), 0) FROM unnest($1::text[]) AS t)::bigint",
            &[&FERRY_TABLES],
        )
        .await?;
        let page_size: i64 = get(&row, 0)?;
        let bytes: i64 = get(&row, 1)?;
        Ok(Space {
            page_size,
            pages: bytes.checked_div(page_size).unwrap_or(0),
            free_pages: 0,
            incremental: false,
        })
    }

    /// When the oldest event kept arrived, if there is one.
    pub async fn oldest_event(&self) -> Result<Option<Millis>, StoreError> {
        let conn = self.conn().await?;
        let found = query_opt(
            &conn,
            "SELECT received_at FROM events ORDER BY seq LIMIT 1",
            &[],
        )
        .await?;
        found.map(|r| get(&r, 0)).transpose()
    }

    // Counts for tests and diagnostics.

    /// The events stored.
    pub async fn count_events(&self) -> Result<i64, StoreError> {
        let conn = self.conn().await?;
        count_in(&conn, "SELECT COUNT(*) FROM events").await
    }

    /// The entries of the rejected log.
    pub async fn count_rejections(&self) -> Result<i64, StoreError> {
        let conn = self.conn().await?;
        count_in(&conn, "SELECT COUNT(*) FROM rejections").await
    }

    /// Raw attempt start times of a delivery, oldest first.
    pub async fn attempt_times(&self, delivery_id: &str) -> Result<Vec<Millis>, StoreError> {
        if !storable(delivery_id) {
            return Ok(Vec::new());
        }
        let conn = self.conn().await?;
        query_map(
            &conn,
            "SELECT started_at FROM attempts WHERE delivery_id = $1 ORDER BY id",
            &[&delivery_id],
            |r| get(r, 0),
        )
        .await
    }
}

/// Ferry's tables, which [`PgStore::space`] counts: those of the migrations, and the record
/// of them. A migration that adds a table adds it here.
const FERRY_TABLES: &[&str] = &[
    "events",
    "bodies",
    "runs",
    "deliveries",
    "attempts",
    "paused_destinations",
    "config_objects",
    "schema_versions",
    "api_tokens",
    "alert_states",
    "alert_history",
    "rejections",
    "delivery_jobs",
    "run_jobs",
    "ferry_nodes",
    "ferry_migrations",
];

async fn count_in(c: &impl GenericClient, sql: &str) -> Result<i64, StoreError> {
    get(&query_one(c, sql, &[]).await?, 0)
}

/// A page of events, newest first, each with its payload when `with_payload` (else an empty
/// one). The cursor is a range of `seq`, as in SQLite: an unknown cursor gives no event.
async fn events_page(
    c: &impl GenericClient,
    filter: &EventFilter,
    before: Option<&str>,
    limit: usize,
    with_payload: bool,
) -> Result<Vec<(EventSummary, Vec<u8>)>, StoreError> {
    let equal = [
        filter.source.as_ref(),
        filter.event_type.as_ref(),
        filter.status.as_ref(),
    ];
    // A cursor with a NUL names no event: SQLite finds none either, and gives no page.
    if !all_storable(&equal) || before.is_some_and(|b| !storable(b)) {
        return Ok(Vec::new());
    }
    query_map(
        c,
        "SELECT id, source, event_type, received_at, status, payload, expired FROM (
           SELECT e.seq, e.id, e.source, e.event_type, e.received_at, e.payload_expired_at IS NOT NULL AS expired,
             CASE WHEN $8 THEN e.payload ELSE ''::bytea END AS payload,
             CASE
               WHEN NOT EXISTS (SELECT 1 FROM runs r WHERE r.event_id = e.id) THEN 'unrouted'
               WHEN EXISTS (SELECT 1 FROM runs r WHERE r.event_id = e.id AND r.status IN ('running', 'waiting')) THEN 'pending'
               WHEN EXISTS (SELECT 1 FROM runs r WHERE r.event_id = e.id AND r.status = 'failed') THEN 'failed'
               ELSE 'succeeded' END AS status
           FROM events e
           WHERE ($1::text IS NULL OR e.source = $1) AND ($2::text IS NULL OR e.event_type = $2)
             AND ($3::bigint IS NULL OR e.received_at >= $3) AND ($4::bigint IS NULL OR e.received_at < $4)
             AND e.seq < CASE WHEN $5::text IS NULL THEN 9223372036854775807 ELSE (SELECT seq FROM events WHERE id = $5) END) AS page
         WHERE ($7::text IS NULL OR status = $7)
         ORDER BY seq DESC LIMIT $6",
        &[
            &filter.source,
            &filter.event_type,
            &filter.since,
            &filter.until,
            &before,
            &row_limit(limit),
            &filter.status,
            &with_payload,
        ],
        rows::event_summary,
    )
    .await
}

/// The attempts of each of the deliveries (or http steps) `ids`, oldest first.
async fn attempts_of(
    c: &impl GenericClient,
    ids: &[&str],
) -> Result<HashMap<String, Vec<AttemptView>>, StoreError> {
    let mut by_delivery: HashMap<String, Vec<AttemptView>> = HashMap::new();
    if ids.is_empty() {
        return Ok(by_delivery);
    }
    for row in query(
        c,
        &format!("SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE delivery_id = ANY($1) ORDER BY id"),
        &[&ids],
    )
    .await?
    {
        let delivery_id: String = get(&row, 8)?;
        by_delivery
            .entry(delivery_id)
            .or_default()
            .push(rows::attempt(&row)?);
    }
    Ok(by_delivery)
}

/// The deliveries `ids` that exist, without their attempts, by id.
async fn deliveries_by_id(
    c: &impl GenericClient,
    ids: &[&str],
) -> Result<HashMap<String, DeliveryView>, StoreError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    Ok(query_map(
        c,
        &format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = ANY($1)"),
        &[&ids],
        rows::delivery,
    )
    .await?
    .into_iter()
    .map(|d| (d.id.clone(), d))
    .collect())
}

/// An event with its runs (by id) and each run's deliveries (by id) with their attempts.
async fn event_in(c: &impl GenericClient, id: &str) -> Result<Option<EventView>, StoreError> {
    let Some(e) = query_opt(
        c,
        "SELECT id, source, event_type, idempotency_key, received_at, headers, payload, payload_expired_at IS NOT NULL FROM events WHERE id = $1",
        &[&id],
    )
    .await?
    else {
        return Ok(None);
    };
    let mut runs = query_map(
        c,
        "SELECT id, flow_id, status, error, created_at FROM runs WHERE event_id = $1 ORDER BY id",
        &[&id],
        |r| {
            Ok(RunView {
                id: get(r, 0)?,
                flow_id: get(r, 1)?,
                status: get(r, 2)?,
                error: get(r, 3)?,
                created_at: rfc3339(get(r, 4)?),
                deliveries: Vec::new(),
            })
        },
    )
    .await?;
    let deliveries = query_map(
        c,
        &format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE event_id = $1 ORDER BY id"),
        &[&id],
        rows::delivery,
    )
    .await?;
    let ids: Vec<&str> = deliveries.iter().map(|d| d.id.as_str()).collect();
    let mut attempts = attempts_of(c, &ids).await?;
    for mut d in deliveries {
        d.attempts = Some(attempts.remove(&d.id).unwrap_or_default());
        if let Some(run) = runs.iter_mut().find(|r| r.id == d.run_id) {
            run.deliveries.push(d);
        }
    }
    let payload: Vec<u8> = get(&e, 6)?;
    let payload_expired: bool = get(&e, 7)?;
    Ok(Some(EventView {
        id: get(&e, 0)?,
        source: get(&e, 1)?,
        event_type: get(&e, 2)?,
        idempotency_key: get(&e, 3)?,
        received_at: rfc3339(get(&e, 4)?),
        headers: json_or_string(get(&e, 5)?),
        payload: payload_value(&payload, payload_expired),
        payload_expired,
        runs,
    }))
}

async fn run_summary_in(
    c: &impl GenericClient,
    id: &str,
) -> Result<Option<RunSummary>, StoreError> {
    query_opt(
        c,
        &format!("SELECT {SUMMARY_COLUMNS} FROM runs WHERE id = $1"),
        &[&id],
    )
    .await?
    .map(|r| rows::summary(&r))
    .transpose()
}

/// A run as the API shows it. What its step records need (bodies, attempts, deliveries) is
/// found by showing them once with nothing ([`Wanted`]), read in three queries, and the
/// records shown again with what was read ([`Found`]): `shown_steps` decides both times, so
/// what is read is exactly what SQLite reads one by one.
async fn run_detail_in(c: &impl GenericClient, id: &str) -> Result<Option<RunDetail>, StoreError> {
    let Some(summary) = run_summary_in(c, id).await? else {
        return Ok(None);
    };
    let row = query_opt(
        c,
        "SELECT r.steps, CASE WHEN r.status = 'running' THEN r.next_at END, e.payload FROM runs r JOIN events e ON e.id = r.event_id WHERE r.id = $1",
        &[&id],
    )
    .await?
    .ok_or_else(|| {
        StoreError::Corrupt(format!(
            "run {id}: its event {} is not in the store",
            summary.event_id
        ))
    })?;
    let steps: String = get(&row, 0)?;
    let next_at: Option<i64> = get(&row, 1)?;
    let payload: Vec<u8> = get(&row, 2)?;
    let mut wanted = Wanted::default();
    shown_steps(id, &steps, &payload, &mut wanted)?;
    let mut found = wanted.read(c).await?;
    let shown = shown_steps(id, &steps, &payload, &mut found)?;
    Ok(Some(RunDetail {
        summary,
        next_at: next_at.map(rfc3339),
        steps: shown,
    }))
}

/// What showing a run's steps asks for, noted (and answered with nothing).
#[derive(Default)]
struct Wanted {
    bodies: Vec<i64>,
    jobs: Vec<String>,
    deliveries: Vec<String>,
}

impl StepReads for Wanted {
    fn body(&mut self, id: i64) -> Result<serde_json::Value, StoreError> {
        self.bodies.push(id);
        Ok(serde_json::Value::Null)
    }

    fn attempts(&mut self, job_id: &str) -> Result<Vec<AttemptView>, StoreError> {
        self.jobs.push(job_id.to_string());
        Ok(Vec::new())
    }

    fn delivery(&mut self, id: &str) -> Result<Option<DeliveryView>, StoreError> {
        self.deliveries.push(id.to_string());
        Ok(None)
    }
}

impl Wanted {
    /// Reads what was asked for. A step record is data from the store; an id in it with a
    /// NUL names nothing PostgreSQL can hold and is not asked for.
    async fn read(self, c: &impl GenericClient) -> Result<Found, StoreError> {
        let bodies = if self.bodies.is_empty() {
            HashMap::new()
        } else {
            query_map(
                c,
                "SELECT id, data FROM bodies WHERE id = ANY($1)",
                &[&self.bodies],
                |r| Ok((get::<i64>(r, 0)?, get::<Vec<u8>>(r, 1)?)),
            )
            .await?
            .into_iter()
            .collect()
        };
        let jobs: Vec<&str> = self
            .jobs
            .iter()
            .map(String::as_str)
            .filter(|j| storable(j))
            .collect();
        let deliveries: Vec<&str> = self
            .deliveries
            .iter()
            .map(String::as_str)
            .filter(|d| storable(d))
            .collect();
        Ok(Found {
            bodies,
            attempts: attempts_of(c, &jobs).await?,
            deliveries: deliveries_by_id(c, &deliveries).await?,
        })
    }
}

/// What [`Wanted`] noted, as read.
struct Found {
    bodies: HashMap<i64, Vec<u8>>,
    attempts: HashMap<String, Vec<AttemptView>>,
    deliveries: HashMap<String, DeliveryView>,
}

impl StepReads for Found {
    fn body(&mut self, id: i64) -> Result<serde_json::Value, StoreError> {
        Ok(body_value(self.bodies.get(&id).map(Vec::as_slice)))
    }

    fn attempts(&mut self, job_id: &str) -> Result<Vec<AttemptView>, StoreError> {
        Ok(self.attempts.get(job_id).cloned().unwrap_or_default())
    }

    fn delivery(&mut self, id: &str) -> Result<Option<DeliveryView>, StoreError> {
        Ok(self.deliveries.get(id).cloned())
    }
}

async fn backlog_in(c: &impl GenericClient, now: Millis) -> Result<Vec<Backlog>, StoreError> {
    query_map(
        c,
        "SELECT destination_id, COUNT(*), MIN(CASE WHEN next_attempt_at <= $1 THEN next_attempt_at END)
         FROM deliveries WHERE status = 'pending' GROUP BY destination_id ORDER BY destination_id",
        &[&now],
        rows::backlog,
    )
    .await
}

async fn dead_by_destination_in(c: &impl GenericClient) -> Result<Vec<(String, i64)>, StoreError> {
    query_map(
        c,
        "SELECT destination_id, COUNT(*) FROM deliveries WHERE status = 'dead' GROUP BY destination_id ORDER BY destination_id",
        &[],
        |r| Ok((get(r, 0)?, get(r, 1)?)),
    )
    .await
}

async fn alert_states_in(c: &impl GenericClient) -> Result<Vec<AlertState>, StoreError> {
    query_map(
        c,
        "SELECT alert_id, firing, since, message, subject, last_notice_at, notified FROM alert_states ORDER BY alert_id",
        &[],
        rows::alert_state,
    )
    .await
}

async fn recent_attempts_in(
    c: &impl GenericClient,
    destination_id: &str,
    n: usize,
) -> Result<Vec<RecentAttempt>, StoreError> {
    if !storable(destination_id) {
        return Ok(Vec::new());
    }
    query_map(
        c,
        "SELECT delivery_id, attempt, started_at, duration_ms, outcome, status_code, error FROM attempts
         WHERE destination_id = $1 ORDER BY started_at DESC, id DESC LIMIT $2",
        &[&destination_id, &row_limit(n)],
        rows::recent_attempt,
    )
    .await
}

/// `(attempts, failed attempts)`: SQLite's `SUM(outcome != 'succeeded')` counts 1 for each
/// attempt not succeeded (and nothing for a NULL outcome, which the schema refuses).
async fn attempt_counts_in(
    c: &impl GenericClient,
    destination_id: &str,
    since: Millis,
) -> Result<(i64, i64), StoreError> {
    if !storable(destination_id) {
        return Ok((0, 0));
    }
    let row = query_one(
        c,
        "SELECT COUNT(*), COALESCE(SUM(CASE WHEN outcome <> 'succeeded' THEN 1 ELSE 0 END), 0)::bigint
         FROM attempts WHERE destination_id = $1 AND started_at >= $2",
        &[&destination_id, &since],
    )
    .await?;
    Ok((get(&row, 0)?, get(&row, 1)?))
}

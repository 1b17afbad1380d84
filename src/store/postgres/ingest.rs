//! Ingest on PostgreSQL: group commit. Many events, with the runs their flows started, the
//! bodies those made, their deliveries and the deliveries' jobs, go in one transaction of a
//! few statements (one per table, the rows as arrays through `unnest`), so a commit (and its
//! WAL flush) is shared by the whole batch. The jobs are leased to the node that ingested
//! them, which holds their bodies already: it attempts them without a claim, and when it dies
//! their leases expire and another node claims them.
//!
//! A repeated idempotency key (in the store, or earlier in the same batch) answers the first
//! event's id and writes nothing of the repeat. When a batch fails as a whole (a row refused),
//! each of its events is tried again alone, so one bad event fails alone.

use super::jobs::DB_NOW_MS;
use super::{PgError, PgStore};
use crate::store::{IngestOutcome, NewDelivery, NewEvent, NewRun, StoreError};
use std::collections::HashMap;

/// One event to ingest, with what its flows started.
pub struct Ingest {
    pub event: NewEvent,
    pub runs: Vec<NewRun>,
    pub deliveries: Vec<NewDelivery>,
}

/// What became of one event of a batch.
#[derive(Debug)]
pub struct Ingested {
    pub outcome: IngestOutcome,
    /// The lease token of each new delivery's job (delivery id, token), held by the node
    /// that ingested it.
    pub leases: Vec<(String, i64)>,
}

impl PgStore {
    /// Commits `batch` in one transaction (or, when that fails, each event in its own): each
    /// event's answer in order. The new deliveries' jobs are leased to `node` for `lease_ms`.
    pub async fn ingest_batch(
        &self,
        batch: &[Ingest],
        node: &str,
        lease_ms: i64,
    ) -> Vec<Result<Ingested, StoreError>> {
        if let Err(e) = super::jobs::check_lease(lease_ms) {
            let reason = e.to_string();
            return batch
                .iter()
                .map(|_| Err(StoreError::Postgres(PgError::Query(reason.clone()))))
                .collect();
        }
        match self.ingest_together(batch, node, lease_ms).await {
            Ok(answers) => answers.into_iter().map(Ok).collect(),
            // Only a value the database refused is worth trying event by event: a lost
            // connection or a timeout would fail each of them again, one after the other.
            Err(StoreError::Postgres(PgError::Refused(_))) if batch.len() > 1 => {
                let mut answers = Vec::with_capacity(batch.len());
                for one in batch {
                    answers.push(
                        self.ingest_together(std::slice::from_ref(one), node, lease_ms)
                            .await
                            .and_then(|mut a| {
                                a.pop().ok_or_else(|| {
                                    StoreError::Corrupt("an ingest answered nothing".into())
                                })
                            }),
                    );
                }
                answers
            }
            Err(e) => {
                let reason = e.to_string();
                let mut answers = vec![Err(e)];
                answers.extend(
                    (1..batch.len())
                        .map(|_| Err(StoreError::Postgres(PgError::Query(reason.clone())))),
                );
                answers
            }
        }
    }

    async fn ingest_together(
        &self,
        batch: &[Ingest],
        node: &str,
        lease_ms: i64,
    ) -> Result<Vec<Ingested>, StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(PgError::from)?;
        let answers = write_batch(&tx, batch, node, lease_ms).await?;
        tx.commit().await.map_err(PgError::from)?;
        Ok(answers)
    }
}

async fn write_batch(
    tx: &deadpool_postgres::Transaction<'_>,
    batch: &[Ingest],
    node: &str,
    lease_ms: i64,
) -> Result<Vec<Ingested>, StoreError> {
    let q = |e: tokio_postgres::Error| StoreError::from(PgError::from(e));
    let events: Vec<&NewEvent> = batch.iter().map(|i| &i.event).collect();
    let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    let sources: Vec<&str> = events.iter().map(|e| e.source.as_str()).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    let keys: Vec<Option<&str>> = events
        .iter()
        .map(|e| e.idempotency_key.as_deref())
        .collect();
    let received: Vec<i64> = events.iter().map(|e| e.received_at).collect();
    let headers: Vec<&str> = events.iter().map(|e| e.headers.as_str()).collect();
    let payloads: Vec<&[u8]> = events.iter().map(|e| &e.payload[..]).collect();
    // Rows in key order, so two batches holding the same keys wait for each other in one
    // order and never deadlock; within a key in the batch's order (WITH ORDINALITY), so a
    // repeated key keeps the first.
    let inserted = tx
        .query(
            &tx.prepare_cached("INSERT INTO events (id, source, event_type, idempotency_key, received_at, headers, payload)
             SELECT id, source, event_type, idempotency_key, received_at, headers, payload
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::bytea[])
                  WITH ORDINALITY AS e(id, source, event_type, idempotency_key, received_at, headers, payload, n)
             ORDER BY source, idempotency_key, n
             ON CONFLICT DO NOTHING
             RETURNING id, seq").await.map_err(PgError::from)?,
            &[&ids, &sources, &types, &keys, &received, &headers, &payloads],
        )
        .await
        .map_err(q)?;
    let mut seqs: HashMap<String, i64> = HashMap::with_capacity(inserted.len());
    for row in &inserted {
        seqs.insert(row.try_get(0).map_err(q)?, row.try_get(1).map_err(q)?);
    }
    let mut outcomes: Vec<Option<IngestOutcome>> = Vec::with_capacity(batch.len());
    let mut repeats: Vec<(&str, &str)> = Vec::new();
    for e in &events {
        if seqs.contains_key(&e.id) {
            outcomes.push(Some(IngestOutcome::Accepted));
        } else {
            outcomes.push(None);
            if let Some(key) = &e.idempotency_key {
                repeats.push((e.source.as_str(), key.as_str()));
            }
        }
    }
    let firsts = first_events(tx, &repeats).await?;
    for (e, outcome) in events.iter().zip(outcomes.iter_mut()) {
        if outcome.is_some() {
            continue;
        }
        let first = e
            .idempotency_key
            .as_ref()
            .and_then(|k| firsts.get(&(e.source.clone(), k.clone())));
        *outcome = match first {
            Some(event_id) => Some(IngestOutcome::Duplicate {
                event_id: event_id.clone(),
            }),
            None => {
                return Err(StoreError::Corrupt(format!(
                    "event id {} already exists",
                    e.id
                )));
            }
        };
    }
    let accepted: Vec<(&Ingest, i64)> = batch
        .iter()
        .filter_map(|i| seqs.get(&i.event.id).map(|seq| (i, *seq)))
        .collect();
    insert_runs(tx, &accepted).await?;
    let leases = insert_deliveries(tx, &accepted, node, lease_ms).await?;
    let mut by_event: HashMap<String, Vec<(String, i64)>> = HashMap::new();
    for (event_id, delivery_id, token) in leases {
        by_event
            .entry(event_id)
            .or_default()
            .push((delivery_id, token));
    }
    Ok(batch
        .iter()
        .zip(outcomes)
        .map(|(i, outcome)| Ingested {
            outcome: outcome.unwrap_or(IngestOutcome::Accepted),
            leases: by_event.remove(&i.event.id).unwrap_or_default(),
        })
        .collect())
}

/// The first event of each (source, idempotency key).
async fn first_events(
    tx: &deadpool_postgres::Transaction<'_>,
    repeats: &[(&str, &str)],
) -> Result<HashMap<(String, String), String>, StoreError> {
    if repeats.is_empty() {
        return Ok(HashMap::new());
    }
    let q = |e: tokio_postgres::Error| StoreError::from(PgError::from(e));
    let sources: Vec<&str> = repeats.iter().map(|r| r.0).collect();
    let keys: Vec<&str> = repeats.iter().map(|r| r.1).collect();
    let rows = tx
        .query(
            &tx.prepare_cached(
                "SELECT e.source, e.idempotency_key, e.id FROM events e
             JOIN unnest($1::text[], $2::text[]) AS k(source, idempotency_key)
               ON e.source = k.source AND e.idempotency_key = k.idempotency_key",
            )
            .await
            .map_err(PgError::from)?,
            &[&sources, &keys],
        )
        .await
        .map_err(q)?;
    rows.iter()
        .map(|r| {
            Ok((
                (r.try_get(0).map_err(q)?, r.try_get(1).map_err(q)?),
                r.try_get(2).map_err(q)?,
            ))
        })
        .collect()
}

/// The accepted events' runs and the bodies those made, and the runs' jobs for the run
/// worker (those `running`: due at `next_at`).
async fn insert_runs(
    tx: &deadpool_postgres::Transaction<'_>,
    accepted: &[(&Ingest, i64)],
) -> Result<(), StoreError> {
    let q = |e: tokio_postgres::Error| StoreError::from(PgError::from(e));
    let (mut body_ids, mut body_seqs, mut body_data) = (Vec::new(), Vec::new(), Vec::new());
    let mut r = RunColumns::default();
    for (i, seq) in accepted {
        let at = i.event.received_at;
        for run in &i.runs {
            for b in &run.bodies {
                body_ids.push(b.id);
                body_seqs.push(*seq);
                body_data.push(&b.data[..]);
            }
            r.push(&i.event.id, at, run, &i.deliveries);
        }
    }
    if !body_ids.is_empty() {
        tx.execute(
            &tx.prepare_cached("INSERT INTO bodies (id, event_seq, data) SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bytea[])").await.map_err(PgError::from)?,
            &[&body_ids, &body_seqs, &body_data],
        )
        .await
        .map_err(q)?;
    }
    if r.ids.is_empty() {
        return Ok(());
    }
    tx.execute(
        &tx.prepare_cached("INSERT INTO runs (id, event_id, flow_id, flow_version, status, pc, resume_pc, next_at, context, steps,
                           error, failed_on, pending, created_at, updated_at, payload_body)
         SELECT id, event_id, flow_id, flow_version, status, pc, resume_pc, next_at, context, steps,
                error, CASE WHEN status = 'failed' THEN 'step' END, pending, at, at, payload_body
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::bigint[],
                     $8::bigint[], $9::text[], $10::text[], $11::text[], $12::bigint[], $13::bigint[], $14::bigint[])
              AS r(id, event_id, flow_id, flow_version, status, pc, resume_pc, next_at, context, steps, error,
                   pending, at, payload_body)").await.map_err(PgError::from)?,
        &[
            &r.ids, &r.events, &r.flows, &r.versions, &r.statuses, &r.pcs, &r.resume_pcs,
            &r.next_ats, &r.contexts, &r.steps, &r.errors, &r.pending, &r.ats, &r.payload_bodies,
        ],
    )
    .await
    .map_err(q)?;
    tx.execute(
        &tx.prepare_cached("INSERT INTO run_jobs (run_id, due_at)
         SELECT id, coalesce(next_at, at) FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[])
              AS r(id, status, next_at, at)
         WHERE status = 'running'").await.map_err(PgError::from)?,
        &[&r.ids, &r.statuses, &r.next_ats, &r.ats],
    )
    .await
    .map_err(q)?;
    Ok(())
}

/// The columns of the runs of a batch, one array each.
#[derive(Default)]
struct RunColumns<'a> {
    ids: Vec<&'a str>,
    events: Vec<&'a str>,
    flows: Vec<&'a str>,
    versions: Vec<&'a str>,
    statuses: Vec<&'a str>,
    pcs: Vec<i64>,
    resume_pcs: Vec<Option<i64>>,
    next_ats: Vec<Option<i64>>,
    contexts: Vec<Option<&'a str>>,
    steps: Vec<&'a str>,
    errors: Vec<Option<&'a str>>,
    pending: Vec<i64>,
    ats: Vec<i64>,
    payload_bodies: Vec<Option<i64>>,
}

impl<'a> RunColumns<'a> {
    fn push(&mut self, event_id: &'a str, at: i64, run: &'a NewRun, deliveries: &[NewDelivery]) {
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.ids.push(&run.id);
        self.events.push(event_id);
        self.flows.push(&run.flow_id);
        self.versions.push(&run.flow_version);
        self.statuses.push(run.status);
        self.pcs.push(count(run.pc));
        self.resume_pcs.push(run.resume_pc.map(count));
        self.next_ats.push(run.next_at);
        self.contexts.push(run.context.as_deref());
        self.steps.push(&run.steps);
        self.errors.push(run.error.as_deref());
        self.pending.push(count(
            deliveries.iter().filter(|d| d.run_id == run.id).count(),
        ));
        self.ats.push(at);
        self.payload_bodies.push(run.payload_body);
    }
}

/// The accepted events' deliveries and their jobs, leased to `node`: (event id, delivery
/// id, lease token) of each.
async fn insert_deliveries(
    tx: &deadpool_postgres::Transaction<'_>,
    accepted: &[(&Ingest, i64)],
    node: &str,
    lease_ms: i64,
) -> Result<Vec<(String, String, i64)>, StoreError> {
    let q = |e: tokio_postgres::Error| StoreError::from(PgError::from(e));
    let (mut ids, mut events, mut runs, mut destinations, mut ats, mut bodies) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for (i, _) in accepted {
        for d in &i.deliveries {
            ids.push(d.id.as_str());
            events.push(i.event.id.as_str());
            runs.push(d.run_id.as_str());
            destinations.push(d.destination_id.as_str());
            ats.push(i.event.received_at);
            bodies.push(d.body.as_ref().map(|b| b.id));
        }
    }
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    tx.execute(
        &tx.prepare_cached("INSERT INTO deliveries (id, event_id, run_id, destination_id, status, next_attempt_at, created_at, updated_at, body_id)
         SELECT id, event_id, run_id, destination_id, 'pending', at, at, at, body_id
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[])
              AS d(id, event_id, run_id, destination_id, at, body_id)").await.map_err(PgError::from)?,
        &[&ids, &events, &runs, &destinations, &ats, &bodies],
    )
    .await
    .map_err(q)?;
    let sql = format!(
        "INSERT INTO delivery_jobs (delivery_id, destination_id, due_at, lease_until, lease_token, leased_by)
         SELECT id, destination_id, at, {DB_NOW_MS} + $5, nextval('ferry_lease_tokens'), $6
         FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) AS d(id, event_id, destination_id, at)
         RETURNING delivery_id, lease_token"
    );
    let rows = tx
        .query(
            &sql,
            &[&ids, &events, &destinations, &ats, &lease_ms, &node],
        )
        .await
        .map_err(q)?;
    let event_of: HashMap<&str, &str> = ids.iter().copied().zip(events.iter().copied()).collect();
    rows.iter()
        .map(|r| {
            let delivery_id: String = r.try_get(0).map_err(q)?;
            let token: i64 = r.try_get(1).map_err(q)?;
            let event_id = event_of
                .get(delivery_id.as_str())
                .map(|e| e.to_string())
                .unwrap_or_default();
            Ok((event_id, delivery_id, token))
        })
        .collect()
}

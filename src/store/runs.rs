//! Reads about flow runs: a run as the run worker resumes it, a run as the API shows it (each
//! step with its input, output, attempts and deliveries), failed runs, and the dead letters
//! (dead deliveries and failed runs in one list).

use super::*;
use crate::clock::rfc3339;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

/// A run with its event, as the run worker needs it to go on.
#[derive(Debug)]
pub struct RunRow {
    pub id: String,
    pub event_id: String,
    pub event_type: String,
    pub source: String,
    pub received_at: Millis,
    pub headers: String,
    pub payload: Bytes,
    pub flow_id: String,
    pub flow_version: String,
    pub status: String,
    pub pc: usize,
    pub resume_pc: Option<usize>,
    pub step_attempts: u32,
    pub next_at: Option<Millis>,
    /// The body a transform made the run's payload (`None` while it is the event's).
    pub payload_body: Option<Body>,
    pub context: Option<String>,
    pub steps: String,
    pub error: Option<String>,
    /// The event's bodies expired (`settings.payload_retention`): `payload` is empty.
    pub payload_expired: bool,
}

pub(super) fn run_row(conn: &Connection, id: &str) -> Result<Option<RunRow>, StoreError> {
    let found = conn
        .prepare_cached(
            "SELECT r.id, r.event_id, e.event_type, e.source, e.received_at, e.headers, e.payload, r.flow_id, r.flow_version,
                    r.status, r.pc, r.resume_pc, r.step_attempts, r.context, r.steps, r.error, r.next_at,
                    e.payload_expired_at IS NOT NULL, r.payload_body, b.data
             FROM runs r JOIN events e ON e.id = r.event_id LEFT JOIN bodies b ON b.id = r.payload_body
             WHERE r.id = ?1",
        )?
        .query_row(params![id], |r| {
            let body: (Option<i64>, Option<Vec<u8>>) = (r.get(18)?, r.get(19)?);
            Ok((body, RunRow {
                payload_body: None,
                id: r.get(0)?,
                event_id: r.get(1)?,
                event_type: r.get(2)?,
                source: r.get(3)?,
                received_at: r.get(4)?,
                headers: r.get(5)?,
                payload: Bytes::from(r.get::<_, Vec<u8>>(6)?),
                flow_id: r.get(7)?,
                flow_version: r.get(8)?,
                status: r.get(9)?,
                pc: r.get::<_, i64>(10)? as usize,
                resume_pc: r.get::<_, Option<i64>>(11)?.map(|p| p as usize),
                step_attempts: r.get::<_, i64>(12)? as u32,
                next_at: r.get(16)?,
                context: r.get(13)?,
                steps: r.get(14)?,
                error: r.get(15)?,
                payload_expired: r.get(17)?,
            }))
        })
        .optional()?;
    let Some((body, mut row)) = found else {
        return Ok(None);
    };
    row.payload_body = match body {
        (Some(id), Some(data)) => Some(Body {
            id,
            data: Bytes::from(data),
        }),
        (Some(body_id), None) => {
            return Err(StoreError::Corrupt(format!(
                "run {id}: its payload is body {body_id}, which is not in the store"
            )));
        }
        (None, _) => None,
    };
    Ok(Some(row))
}

/// Runs the run worker has to act on, soonest first (a tie by id, as the index keeps them):
/// `(id, due at)`.
pub(super) fn due_runs(conn: &Connection) -> Result<Vec<(String, Millis)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, COALESCE(next_at, 0) FROM runs WHERE status = 'running' ORDER BY next_at, id",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunSummary {
    pub id: String,
    pub event_id: String,
    pub flow_id: String,
    pub flow_version: String,
    pub status: String,
    /// The index of the step the run is at (for a failed run, the step that failed).
    pub step_index: usize,
    pub error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// Its event's bodies were dropped after `settings.payload_retention`: the steps show no
    /// input or output, and the run cannot be replayed.
    pub payload_expired: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunDetail {
    #[serde(flatten)]
    pub summary: RunSummary,
    pub next_at: Option<String>,
    /// Each step that ran, in order, with its input, output, status, duration, attempts and
    /// error.
    pub steps: Vec<serde_json::Value>,
}

/// A run's columns; the last says whether its event's payload expired. The same SQL on both
/// backends.
pub(in crate::store) const SUMMARY_COLUMNS: &str =
    "id, event_id, flow_id, flow_version, status, pc, error, created_at, updated_at,
    (SELECT e.payload_expired_at IS NOT NULL FROM events e WHERE e.id = runs.event_id)";

fn summary_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunSummary> {
    Ok(RunSummary {
        id: r.get(0)?,
        event_id: r.get(1)?,
        flow_id: r.get(2)?,
        flow_version: r.get(3)?,
        status: r.get(4)?,
        step_index: r.get::<_, i64>(5)? as usize,
        error: r.get(6)?,
        created_at: rfc3339(r.get(7)?),
        updated_at: rfc3339(r.get(8)?),
        payload_expired: r.get::<_, Option<bool>>(9)?.unwrap_or(false),
    })
}

pub(super) fn run_summary(conn: &Connection, id: &str) -> Result<Option<RunSummary>, StoreError> {
    Ok(conn
        .prepare_cached(&format!("SELECT {SUMMARY_COLUMNS} FROM runs WHERE id = ?1"))?
        .query_row(params![id], summary_row)
        .optional()?)
}

/// A run as the API shows it. A step's input is the payload it saw: the event's, or the
/// output of the last transform before it.
pub(super) fn run_detail(conn: &Connection, id: &str) -> Result<Option<RunDetail>, StoreError> {
    let Some(summary) = run_summary(conn, id)? else {
        return Ok(None);
    };
    let (steps, next_at, payload): (String, Option<i64>, Vec<u8>) = conn
        .prepare_cached(
            "SELECT r.steps, CASE WHEN r.status = 'running' THEN r.next_at END, e.payload FROM runs r JOIN events e ON e.id = r.event_id WHERE r.id = ?1",
        )?
        .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    let shown = shown_steps(id, &steps, &payload, &mut OnConnection(conn))?;
    Ok(Some(RunDetail {
        summary,
        next_at: next_at.map(rfc3339),
        steps: shown,
    }))
}

/// What showing a run's step records reads besides the records: the bodies its transforms
/// made, its `http` steps' attempts and its `deliver` steps' deliveries. Each backend answers
/// them its own way; [`shown_steps`] decides what is shown, the same for both.
pub(in crate::store) trait StepReads {
    /// A stored body as JSON; `null` when it is gone (its payload expired).
    fn body(&mut self, id: i64) -> Result<serde_json::Value, StoreError>;
    /// The attempts of an http step (`<run id>/<step index>`), oldest first.
    fn attempts(&mut self, job_id: &str) -> Result<Vec<AttemptView>, StoreError>;
    /// A delivery without its attempts, if there is one.
    fn delivery(&mut self, id: &str) -> Result<Option<DeliveryView>, StoreError>;
}

/// The step reads of [`StepReads`] on a SQLite connection.
struct OnConnection<'a>(&'a Connection);

impl StepReads for OnConnection<'_> {
    fn body(&mut self, id: i64) -> Result<serde_json::Value, StoreError> {
        let data: Option<Vec<u8>> = self
            .0
            .prepare_cached("SELECT data FROM bodies WHERE id = ?1")?
            .query_row(params![id], |r| r.get(0))
            .optional()?;
        Ok(body_value(data.as_deref()))
    }

    fn attempts(&mut self, job_id: &str) -> Result<Vec<AttemptView>, StoreError> {
        attempts_of(self.0, job_id)
    }

    fn delivery(&mut self, id: &str) -> Result<Option<DeliveryView>, StoreError> {
        Ok(delivery(self.0, id)?.map(|mut view| {
            view.attempts = None;
            view
        }))
    }
}

/// A stored body's data as JSON; `null` when it is gone (its payload expired) or does not
/// parse.
pub(in crate::store) fn body_value(data: Option<&[u8]>) -> serde_json::Value {
    data.and_then(|d| serde_json::from_slice(d).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// A run's step records (`steps`, the stored JSON array) as the API shows them: each with
/// its input (the event's `payload`, or the output of the last transform before it), a
/// transform's output read from its body, an `http` step's attempts and a `deliver` step's
/// deliveries; times as RFC 3339. Asks `reads` for what it needs, in the records' order.
pub(in crate::store) fn shown_steps(
    id: &str,
    steps: &str,
    payload: &[u8],
    reads: &mut impl StepReads,
) -> Result<Vec<serde_json::Value>, StoreError> {
    let records: Vec<serde_json::Value> = serde_json::from_str(steps)
        .map_err(|e| StoreError::Corrupt(format!("run {id}: step records: {e}")))?;
    // An expired payload is empty, which reads as `null` like any other that does not parse.
    let mut input: serde_json::Value =
        serde_json::from_slice(payload).unwrap_or(serde_json::Value::Null);
    let mut shown = Vec::with_capacity(records.len());
    for mut record in records {
        let Some(obj) = record.as_object_mut() else {
            continue;
        };
        obj.insert("input".into(), input.clone());
        if let Some(body_id) = obj.remove("output_body").and_then(|v| v.as_i64()) {
            obj.insert("output".into(), reads.body(body_id)?);
        }
        if let Some(ms) = obj.get("started_at").and_then(|v| v.as_i64()) {
            obj.insert("started_at".into(), rfc3339(ms).into());
        }
        let kind = obj
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or("")
            .to_string();
        let status = obj
            .get("status")
            .and_then(|k| k.as_str())
            .unwrap_or("")
            .to_string();
        if kind == "transform" && status == "succeeded" {
            input = obj
                .get("output")
                .cloned()
                .unwrap_or(serde_json::Value::Null);
        }
        if kind == "http" {
            let index = obj.get("index").and_then(|v| v.as_u64()).unwrap_or(0);
            let attempts = reads.attempts(&format!("{id}/{index}"))?;
            obj.insert(
                "attempts".into(),
                serde_json::to_value(attempts).unwrap_or_default(),
            );
        }
        if kind == "deliver"
            && let Some(ids) = obj.remove("deliveries")
        {
            let mut views = Vec::new();
            for d in ids
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str())
            {
                if let Some(view) = reads.delivery(d)? {
                    views.push(serde_json::to_value(view).unwrap_or_default());
                }
            }
            obj.insert("deliveries".into(), serde_json::Value::Array(views));
        }
        shown.push(record);
    }
    Ok(shown)
}

/// Which failed runs a bulk replay takes.
#[derive(Debug, Default, Clone)]
pub struct FailedRunFilter {
    pub flow_id: Option<String>,
    pub since: Option<Millis>,
    pub until: Option<Millis>,
    /// A substring of the error.
    pub error: Option<String>,
}

/// Failed runs matching `filter`, oldest first, after the run id `after`.
pub(super) fn failed_runs(
    conn: &Connection,
    filter: &FailedRunFilter,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<RunSummary>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {SUMMARY_COLUMNS} FROM runs WHERE status = 'failed'
           AND (?1 IS NULL OR flow_id = ?1) AND (?2 IS NULL OR created_at >= ?2) AND (?3 IS NULL OR created_at < ?3)
           AND (?4 IS NULL OR instr(error, ?4) > 0) AND (?5 IS NULL OR id > ?5)
         ORDER BY id LIMIT ?6"
    ))?;
    let rows = stmt.query_map(
        params![
            filter.flow_id,
            filter.since,
            filter.until,
            filter.error,
            after,
            limit as i64
        ],
        summary_row,
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// One dead letter: a delivery that exhausted its attempts or failed for good, or a run that
/// failed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DeadLetter {
    Delivery(DeliveryView),
    Run(RunSummary),
}

impl DeadLetter {
    pub fn id(&self) -> &str {
        match self {
            DeadLetter::Delivery(d) => &d.id,
            DeadLetter::Run(r) => &r.id,
        }
    }
}

/// Dead letters, newest first (ids are prefixed ULIDs, so the part after the prefix orders by
/// time); `before` is the id of the previous page's last entry.
pub(super) fn dead_letters(
    conn: &Connection,
    before: Option<&str>,
    limit: usize,
) -> Result<Vec<DeadLetter>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT kind, id FROM (
            SELECT 'delivery' AS kind, id FROM deliveries WHERE status = 'dead'
            UNION ALL SELECT 'run', id FROM runs WHERE status = 'failed' AND failed_on = 'step')
         WHERE (?1 IS NULL OR substr(id, 5) < substr(?1, 5)) ORDER BY substr(id, 5) DESC LIMIT ?2",
    )?;
    let keys: Vec<(String, String)> = stmt
        .query_map(params![before, limit as i64], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(keys.len());
    for (kind, id) in keys {
        if kind == "run" {
            if let Some(r) = run_summary(conn, &id)? {
                out.push(DeadLetter::Run(r));
            }
        } else if let Some(mut d) = delivery(conn, &id)? {
            d.attempts = None;
            out.push(DeadLetter::Delivery(d));
        }
    }
    Ok(out)
}

/// Which runs a list shows.
#[derive(Debug, Default, Clone)]
pub struct RunFilter {
    pub flow_id: Option<String>,
    pub event_id: Option<String>,
    /// `running`, `waiting`, `completed`, `filtered` or `failed`.
    pub status: Option<String>,
}

/// Runs, newest first (id order); `before` is the previous page's last id.
pub(super) fn runs(
    conn: &Connection,
    filter: &RunFilter,
    before: Option<&str>,
    limit: usize,
) -> Result<Vec<RunSummary>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {SUMMARY_COLUMNS} FROM runs
         WHERE (?1 IS NULL OR flow_id = ?1) AND (?2 IS NULL OR event_id = ?2)
           AND (?3 IS NULL OR status = ?3) AND (?4 IS NULL OR id < ?4)
         ORDER BY id DESC LIMIT ?5"
    ))?;
    let rows = stmt.query_map(
        params![
            filter.flow_id,
            filter.event_id,
            filter.status,
            before,
            limit as i64
        ],
        summary_row,
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

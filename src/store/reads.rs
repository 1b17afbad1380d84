//! Read queries: what the API shows and what the scheduler loads at start. Each takes a
//! connection, so they run inside `Store::read`, called by the named reads of `queries.rs`.

use super::*;
use crate::clock::rfc3339;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventView {
    pub id: String,
    pub source: String,
    pub event_type: String,
    pub idempotency_key: Option<String>,
    pub received_at: String,
    pub headers: serde_json::Value,
    /// The event's payload; `null` once it expired (`payload_expired`).
    pub payload: serde_json::Value,
    /// The bodies of this event, its runs, deliveries and attempts were dropped after
    /// `settings.payload_retention`; the record of what happened stays.
    pub payload_expired: bool,
    pub runs: Vec<RunView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunView {
    pub id: String,
    pub flow_id: String,
    pub status: String,
    pub error: Option<String>,
    pub created_at: String,
    pub deliveries: Vec<DeliveryView>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeliveryView {
    pub id: String,
    pub event_id: String,
    pub run_id: String,
    pub destination_id: String,
    pub status: DeliveryStatus,
    pub attempt_count: i64,
    pub next_attempt_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub last_error: Option<String>,
    /// Its body (and its event's payload) expired: it cannot be sent again.
    pub payload_expired: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<Vec<AttemptView>>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AttemptView {
    pub attempt: i64,
    pub started_at: String,
    pub duration_ms: i64,
    pub outcome: String,
    pub status_code: Option<i64>,
    pub response_headers: Option<serde_json::Value>,
    /// The first 64 KiB of the response body, as text (lossy UTF-8); `null` once the
    /// payload expired.
    pub response_body: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RejectionView {
    pub id: String,
    pub source: String,
    pub received_at: String,
    pub status: i64,
    pub error: String,
    pub reason: String,
    /// The first 64 KiB of the refused body, as text (lossy UTF-8).
    pub body: String,
}

/// Stored JSON text as a value, or the text itself when it does not parse.
pub(in crate::store) fn json_or_string(text: String) -> serde_json::Value {
    serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
}

/// A delivery's columns; the last says whether its event's payload expired. The same SQL
/// on both backends.
pub(in crate::store) const DELIVERY_COLUMNS: &str = "id, event_id, run_id, destination_id, status, attempts, next_attempt_at, created_at, updated_at, last_error,
    (SELECT e.payload_expired_at IS NOT NULL FROM events e WHERE e.id = deliveries.event_id)";

fn delivery_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(DeliveryView, String)> {
    let status: String = r.get(4)?;
    let next: Option<i64> = r.get(6)?;
    Ok((
        DeliveryView {
            id: r.get(0)?,
            event_id: r.get(1)?,
            run_id: r.get(2)?,
            destination_id: r.get(3)?,
            status: DeliveryStatus::Pending,
            attempt_count: r.get(5)?,
            next_attempt_at: next.map(rfc3339),
            created_at: rfc3339(r.get(7)?),
            updated_at: rfc3339(r.get(8)?),
            last_error: r.get(9)?,
            payload_expired: r.get::<_, Option<bool>>(10)?.unwrap_or(false),
            attempts: None,
        },
        status,
    ))
}

/// A delivery read with its stored status: the status parsed (an unknown one is corrupt
/// data), and no next attempt unless it is pending.
pub(in crate::store) fn finish_delivery(
    (mut d, status): (DeliveryView, String),
) -> Result<DeliveryView, StoreError> {
    d.status = DeliveryStatus::parse(&status)?;
    if d.status != DeliveryStatus::Pending {
        d.next_attempt_at = None;
    }
    Ok(d)
}

pub(super) fn attempts_of(
    conn: &Connection,
    delivery_id: &str,
) -> Result<Vec<AttemptView>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT attempt, started_at, duration_ms, outcome, status_code, response_headers, response_body, error
         FROM attempts WHERE delivery_id = ?1 ORDER BY id",
    )?;
    let rows = stmt.query_map(params![delivery_id], |r| {
        let headers: Option<String> = r.get(5)?;
        let body: Option<Vec<u8>> = r.get(6)?;
        Ok(AttemptView {
            attempt: r.get(0)?,
            started_at: rfc3339(r.get(1)?),
            duration_ms: r.get(2)?,
            outcome: r.get(3)?,
            status_code: r.get(4)?,
            response_headers: headers.map(json_or_string),
            response_body: body.map(|b| String::from_utf8_lossy(&b).into_owned()),
            error: r.get(7)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Raw attempt start times, oldest first (for tests and diagnostics).
pub(super) fn attempt_times(
    conn: &Connection,
    delivery_id: &str,
) -> Result<Vec<Millis>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT started_at FROM attempts WHERE delivery_id = ?1 ORDER BY id")?;
    let rows = stmt.query_map(params![delivery_id], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(super) fn delivery(conn: &Connection, id: &str) -> Result<Option<DeliveryView>, StoreError> {
    let row = conn
        .prepare_cached(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = ?1"
        ))?
        .query_row(params![id], delivery_row)
        .optional()?;
    let Some(row) = row else { return Ok(None) };
    let mut d = finish_delivery(row)?;
    d.attempts = Some(attempts_of(conn, id)?);
    Ok(Some(d))
}

/// What a replay of a whole event needs of it: source, type, arrival, kept headers (JSON
/// text) and the raw payload; `None` when there is no such event. The payload is `None` once
/// it expired.
#[derive(Debug)]
pub struct StoredEvent {
    pub source: String,
    pub event_type: String,
    pub received_at: Millis,
    pub headers: String,
    pub payload: Option<Vec<u8>>,
    /// Its runs so far.
    pub runs: i64,
}

pub(super) fn stored_event(conn: &Connection, id: &str) -> Result<Option<StoredEvent>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT source, event_type, received_at, headers, CASE WHEN payload_expired_at IS NULL THEN payload END,
                    (SELECT COUNT(*) FROM runs WHERE runs.event_id = events.id) FROM events WHERE id = ?1",
        )?
        .query_row(params![id], |r| {
            Ok(StoredEvent {
                source: r.get(0)?,
                event_type: r.get(1)?,
                received_at: r.get(2)?,
                headers: r.get(3)?,
                payload: r.get(4)?,
                runs: r.get(5)?,
            })
        })
        .optional()?)
}

/// Dead deliveries matching `filter`, newest first, before the id `before` (the previous
/// page's last), without their attempts: the console's dead letters page.
pub(super) fn dead_delivery_page(
    conn: &Connection,
    filter: &super::DeadFilter,
    before: Option<&str>,
    limit: usize,
) -> Result<Vec<DeliveryView>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE status = 'dead'
           AND (?1 IS NULL OR destination_id = ?1) AND (?2 IS NULL OR created_at >= ?2) AND (?3 IS NULL OR created_at < ?3)
           AND (?4 IS NULL OR instr(COALESCE(last_error, ''), ?4) > 0) AND (?5 IS NULL OR id < ?5)
         ORDER BY id DESC LIMIT ?6"
    ))?;
    let rows = stmt.query_map(
        params![
            filter.destination_id,
            filter.since,
            filter.until,
            filter.error,
            before,
            limit as i64
        ],
        delivery_row,
    )?;
    rows.map(|row| finish_delivery(row?)).collect()
}

pub(super) fn event(conn: &Connection, id: &str) -> Result<Option<EventView>, StoreError> {
    let row = conn
        .prepare_cached("SELECT id, source, event_type, idempotency_key, received_at, headers, payload, payload_expired_at IS NOT NULL FROM events WHERE id = ?1")?
        .query_row(params![id], |r| {
            Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get::<_, i64>(4)?, r.get::<_, String>(5)?, r.get::<_, Vec<u8>>(6)?, r.get::<_, bool>(7)?))
        })
        .optional()?;
    let Some((
        id,
        source,
        event_type,
        idempotency_key,
        received_at,
        headers,
        payload,
        payload_expired,
    )) = row
    else {
        return Ok(None);
    };
    let mut runs = Vec::new();
    {
        let mut stmt = conn.prepare_cached("SELECT id, flow_id, status, error, created_at FROM runs WHERE event_id = ?1 ORDER BY id")?;
        let rows = stmt.query_map(params![id], |r| {
            Ok(RunView {
                id: r.get(0)?,
                flow_id: r.get(1)?,
                status: r.get(2)?,
                error: r.get(3)?,
                created_at: rfc3339(r.get(4)?),
                deliveries: Vec::new(),
            })
        })?;
        for run in rows {
            runs.push(run?);
        }
    }
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE event_id = ?1 ORDER BY id"
    ))?;
    let rows: Vec<_> = stmt
        .query_map(params![id], delivery_row)?
        .collect::<Result<_, _>>()?;
    for row in rows {
        let mut d = finish_delivery(row)?;
        d.attempts = Some(attempts_of(conn, &d.id)?);
        if let Some(run) = runs.iter_mut().find(|r| r.id == d.run_id) {
            run.deliveries.push(d);
        }
    }
    Ok(Some(EventView {
        id,
        source,
        event_type,
        idempotency_key,
        received_at: rfc3339(received_at),
        headers: json_or_string(headers),
        payload: payload_value(&payload, payload_expired),
        payload_expired,
        runs,
    }))
}

/// An event's payload as its view shows it: the JSON, or the text (lossy UTF-8) when it is
/// not JSON; `null` once it expired.
pub(in crate::store) fn payload_value(payload: &[u8], expired: bool) -> serde_json::Value {
    if expired {
        return serde_json::Value::Null;
    }
    serde_json::from_slice(payload).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(payload).into_owned())
    })
}

/// An event as lists show it (no payload).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventSummary {
    pub id: String,
    pub source: String,
    pub event_type: String,
    pub received_at: String,
    /// From its runs: `pending` (a run is running or waiting), `failed` (none pending, one
    /// failed), `succeeded` (every run completed or was filtered), `unrouted` (no flow ran).
    pub status: String,
    /// Its bodies were dropped after `settings.payload_retention`.
    pub payload_expired: bool,
}

/// Which events a list shows.
#[derive(Debug, Default, Clone)]
pub struct EventFilter {
    pub source: Option<String>,
    pub event_type: Option<String>,
    pub since: Option<Millis>,
    pub until: Option<Millis>,
    /// One of the statuses of [`EventSummary::status`].
    pub status: Option<String>,
}

/// Events, newest first; `before` is the id of the previous page's last event.
pub(super) fn events(
    conn: &Connection,
    filter: &EventFilter,
    before: Option<&str>,
    limit: usize,
) -> Result<Vec<EventSummary>, StoreError> {
    Ok(events_page(conn, filter, before, limit, false)?
        .into_iter()
        .map(|(e, _)| e)
        .collect())
}

/// Like [`events`], each with its payload (for filters on the payload).
pub(super) fn events_with_payload(
    conn: &Connection,
    filter: &EventFilter,
    before: Option<&str>,
    limit: usize,
) -> Result<Vec<(EventSummary, Vec<u8>)>, StoreError> {
    events_page(conn, filter, before, limit, true)
}

/// The cursor is a range of `seq` (the rowid), so a page deep in the list reads from its
/// cursor on, not every newer event first: `?5 IS NULL OR e.seq < ...` hid the range from
/// SQLite's planner, and a page 500,000 events deep scanned those 500,000 rows. An unknown
/// cursor still gives no event.
fn events_page(
    conn: &Connection,
    filter: &EventFilter,
    before: Option<&str>,
    limit: usize,
    with_payload: bool,
) -> Result<Vec<(EventSummary, Vec<u8>)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, source, event_type, received_at, status, payload, expired FROM (
           SELECT e.seq, e.id, e.source, e.event_type, e.received_at, e.payload_expired_at IS NOT NULL AS expired,
             CASE WHEN ?8 THEN e.payload ELSE x'' END AS payload,
             CASE
               WHEN NOT EXISTS (SELECT 1 FROM runs r WHERE r.event_id = e.id) THEN 'unrouted'
               WHEN EXISTS (SELECT 1 FROM runs r WHERE r.event_id = e.id AND r.status IN ('running', 'waiting')) THEN 'pending'
               WHEN EXISTS (SELECT 1 FROM runs r WHERE r.event_id = e.id AND r.status = 'failed') THEN 'failed'
               ELSE 'succeeded' END AS status
           FROM events e
           WHERE (?1 IS NULL OR e.source = ?1) AND (?2 IS NULL OR e.event_type = ?2)
             AND (?3 IS NULL OR e.received_at >= ?3) AND (?4 IS NULL OR e.received_at < ?4)
             AND e.seq < CASE WHEN ?5 IS NULL THEN 9223372036854775807 ELSE (SELECT seq FROM events WHERE id = ?5) END)
         WHERE (?7 IS NULL OR status = ?7)
         ORDER BY seq DESC LIMIT ?6",
    )?;
    let rows = stmt.query_map(
        params![
            filter.source,
            filter.event_type,
            filter.since,
            filter.until,
            before,
            limit as i64,
            filter.status,
            with_payload
        ],
        |r| {
            Ok((
                EventSummary {
                    id: r.get(0)?,
                    source: r.get(1)?,
                    event_type: r.get(2)?,
                    received_at: rfc3339(r.get(3)?),
                    status: r.get(4)?,
                    payload_expired: r.get(6)?,
                },
                r.get(5)?,
            ))
        },
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The rejected log, newest first; `before` is the cursor (an entry id) of the previous page.
pub(super) fn rejections(
    conn: &Connection,
    before: Option<i64>,
    limit: usize,
) -> Result<Vec<RejectionView>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, source, received_at, status, error, reason, body FROM rejections WHERE (?1 IS NULL OR id < ?1) ORDER BY id DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![before, limit as i64], rejection_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The rejected log's newest `limit` refusals of one source (the log is capped at
/// `settings.rejected_log_size`, so reading it through costs a bounded time).
pub(super) fn rejections_of(
    conn: &Connection,
    source: &str,
    limit: usize,
) -> Result<Vec<RejectionView>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, source, received_at, status, error, reason, body FROM rejections WHERE source = ?1 ORDER BY id DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![source, limit as i64], rejection_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn rejection_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RejectionView> {
    let body: Vec<u8> = r.get(6)?;
    Ok(RejectionView {
        id: r.get::<_, i64>(0)?.to_string(),
        source: r.get(1)?,
        received_at: rfc3339(r.get(2)?),
        status: r.get(3)?,
        error: r.get(4)?,
        reason: r.get(5)?,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

pub(super) fn count_events(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))?)
}

pub(super) fn count_rejections(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("SELECT COUNT(*) FROM rejections", [], |r| r.get(0))?)
}

/// The first `limit` pending deliveries in due order (a tie by id, as the index keeps them),
/// for the deliverer to take over.
pub(super) fn pending_jobs(
    conn: &Connection,
    limit: usize,
) -> Result<Vec<DeliveryJob>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, event_id, destination_id, round_attempts, next_attempt_at, run_id, created_at FROM deliveries
         WHERE status = 'pending' ORDER BY next_attempt_at, id LIMIT ?1",
    )?;
    let rows = stmt.query_map(params![limit as i64], |r| {
        Ok(DeliveryJob {
            id: r.get(0)?,
            event_id: r.get(1)?,
            run_id: r.get(5)?,
            destination_id: r.get(2)?,
            created_at: r.get(6)?,
            round_attempts: r.get::<_, i64>(3)? as u32,
            due_at: r.get::<_, Option<i64>>(4)?.unwrap_or(0),
            payload: None,
            lease: None,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// What a delivery sends: its body, or else its event's payload. A body it names that is not
/// there is an error, never the event's payload in its place.
pub(super) fn delivery_payload(
    conn: &Connection,
    delivery_id: &str,
) -> Result<Option<Bytes>, StoreError> {
    let found = conn
        .prepare_cached(
            "SELECT CASE WHEN d.body_id IS NULL THEN e.payload ELSE (SELECT b.data FROM bodies b WHERE b.id = d.body_id) END
             FROM deliveries d JOIN events e ON e.id = d.event_id WHERE d.id = ?1",
        )?
        .query_row(params![delivery_id], |r| r.get::<_, Option<Vec<u8>>>(0))
        .optional()?;
    match found {
        None => Ok(None),
        Some(Some(data)) => Ok(Some(Bytes::from(data))),
        Some(None) => Err(missing_body(delivery_id)),
    }
}

/// A delivery names a body that is not there: never the event's payload in its place.
pub(in crate::store) fn missing_body(delivery_id: &str) -> StoreError {
    StoreError::Corrupt(format!(
        "delivery {delivery_id} names a body that is not in the store"
    ))
}

/// The size in bytes of what a delivery sends, read without reading the body itself.
pub(super) fn delivery_payload_size(
    conn: &Connection,
    delivery_id: &str,
) -> Result<Option<usize>, StoreError> {
    // `length` straight on a column reads the size from the record, not the blob.
    let found = conn
        .prepare_cached(
            "SELECT CASE WHEN d.body_id IS NULL THEN length(e.payload) ELSE (SELECT length(b.data) FROM bodies b WHERE b.id = d.body_id) END
             FROM deliveries d JOIN events e ON e.id = d.event_id WHERE d.id = ?1",
        )?
        .query_row(params![delivery_id], |r| r.get::<_, Option<i64>>(0))
        .optional()?;
    match found {
        None => Ok(None),
        Some(Some(n)) => Ok(Some(n.max(0) as usize)),
        Some(None) => Err(missing_body(delivery_id)),
    }
}

pub(super) fn ping(conn: &Connection) -> Result<(), StoreError> {
    conn.query_row("SELECT 1", [], |_| Ok(()))?;
    Ok(())
}

/// Which deliveries a list shows.
#[derive(Debug, Default, Clone)]
pub struct DeliveryFilter {
    pub destination_id: Option<String>,
    pub event_id: Option<String>,
    /// `pending`, `succeeded` or `dead`.
    pub status: Option<String>,
}

/// Deliveries, newest first (id order), without their attempts; `before` is the previous
/// page's last id.
pub(super) fn deliveries(
    conn: &Connection,
    filter: &DeliveryFilter,
    before: Option<&str>,
    limit: usize,
) -> Result<Vec<DeliveryView>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM deliveries
         WHERE (?1 IS NULL OR destination_id = ?1) AND (?2 IS NULL OR event_id = ?2)
           AND (?3 IS NULL OR status = ?3) AND (?4 IS NULL OR id < ?4)
         ORDER BY id DESC LIMIT ?5"
    ))?;
    let rows = stmt.query_map(
        params![
            filter.destination_id,
            filter.event_id,
            filter.status,
            before,
            limit as i64
        ],
        delivery_row,
    )?;
    rows.map(|r| finish_delivery(r?)).collect()
}

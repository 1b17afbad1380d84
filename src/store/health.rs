//! Reads for metrics and alert rules: the backlog, dead letters, recent attempts of a
//! destination, the last event of each source, paused destinations and alert states.

use super::*;
use rusqlite::{Connection, params};

/// Why a destination is paused.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Pause {
    /// `api` (by hand) or `auto`.
    pub by: String,
    pub reason: String,
    pub since: Millis,
}

/// The paused destinations, by id.
pub(super) fn paused_destinations(conn: &Connection) -> Result<Vec<(String, Pause)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT destination_id, paused_by, reason, since FROM paused_destinations ORDER BY destination_id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get(0)?,
            Pause {
                by: r.get(1)?,
                reason: r.get(2)?,
                since: r.get(3)?,
            },
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Every alert rule's state, by rule id.
pub(super) fn alert_states(conn: &Connection) -> Result<Vec<AlertState>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT alert_id, firing, since, message, subject, last_notice_at, notified FROM alert_states ORDER BY alert_id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(AlertState {
            alert_id: r.get(0)?,
            firing: r.get(1)?,
            since: r.get(2)?,
            message: r.get(3)?,
            subject: r.get(4)?,
            last_notice_at: r.get(5)?,
            notified: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A rule's last `limit` changes, newest first: (when, the change).
pub(super) fn alert_history(
    conn: &Connection,
    alert_id: &str,
    limit: usize,
) -> Result<Vec<super::AlertChange>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT at, firing, subject, message, notices FROM alert_history WHERE alert_id = ?1 ORDER BY id DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![alert_id, limit as i64], |r| {
        let notices: String = r.get(4)?;
        Ok(super::AlertChange {
            alert_id: alert_id.to_string(),
            at: r.get(0)?,
            firing: r.get(1)?,
            subject: r.get(2)?,
            message: r.get(3)?,
            // Written by the writer from the same type; a row it cannot read shows no notice.
            notices: serde_json::from_str(&notices).unwrap_or_default(),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Pending deliveries by destination (by destination id), with the earliest due time among
/// those already due.
#[derive(Debug)]
pub struct Backlog {
    pub destination_id: String,
    pub pending: i64,
    pub oldest_due: Option<Millis>,
}

pub(super) fn backlog(conn: &Connection, now: Millis) -> Result<Vec<Backlog>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT destination_id, COUNT(*), MIN(CASE WHEN next_attempt_at <= ?1 THEN next_attempt_at END)
         FROM deliveries WHERE status = 'pending' GROUP BY destination_id ORDER BY destination_id",
    )?;
    let rows = stmt.query_map(params![now], |r| {
        Ok(Backlog {
            destination_id: r.get(0)?,
            pending: r.get(1)?,
            oldest_due: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Dead deliveries by destination, by destination id.
pub(super) fn dead_by_destination(conn: &Connection) -> Result<Vec<(String, i64)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT destination_id, COUNT(*) FROM deliveries WHERE status = 'dead' GROUP BY destination_id ORDER BY destination_id",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(super) fn failed_run_count(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row(
        "SELECT COUNT(*) FROM runs WHERE status = 'failed' AND failed_on = 'step'",
        [],
        |r| r.get(0),
    )?)
}

/// The outcomes (`succeeded`, `retry`, `failed`) and errors of a destination's last `n`
/// attempts, newest first.
pub(super) fn last_attempts(
    conn: &Connection,
    destination_id: &str,
    n: usize,
) -> Result<Vec<(String, Option<String>, Millis)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT outcome, error, started_at FROM attempts WHERE destination_id = ?1 ORDER BY started_at DESC, id DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![destination_id, n as i64], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// One of a destination's recent attempts, as its console page lists them.
#[derive(Debug, Clone)]
pub struct RecentAttempt {
    pub delivery_id: String,
    pub attempt: i64,
    pub started_at: Millis,
    pub duration_ms: i64,
    pub outcome: String,
    pub status_code: Option<i64>,
    pub error: Option<String>,
}

/// A destination's last `n` attempts, newest first (through its index: `n` rows read,
/// whatever the table holds).
pub(super) fn recent_attempts(
    conn: &Connection,
    destination_id: &str,
    n: usize,
) -> Result<Vec<RecentAttempt>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT delivery_id, attempt, started_at, duration_ms, outcome, status_code, error FROM attempts
         WHERE destination_id = ?1 ORDER BY started_at DESC, id DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![destination_id, n as i64], |r| {
        Ok(RecentAttempt {
            delivery_id: r.get(0)?,
            attempt: r.get(1)?,
            started_at: r.get(2)?,
            duration_ms: r.get(3)?,
            outcome: r.get(4)?,
            status_code: r.get(5)?,
            error: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// `(attempts, failed attempts)` of a destination since `since`.
pub(super) fn attempt_counts(
    conn: &Connection,
    destination_id: &str,
    since: Millis,
) -> Result<(i64, i64), StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT COUNT(*), COALESCE(SUM(outcome != 'succeeded'), 0) FROM attempts WHERE destination_id = ?1 AND started_at >= ?2",
        )?
        .query_row(params![destination_id, since], |r| Ok((r.get(0)?, r.get(1)?)))?)
}

/// Ingest-to-delivery times (ms) of a destination's deliveries that succeeded since `since`,
/// in the order of their attempts.
pub(super) fn delivery_latencies(
    conn: &Connection,
    destination_id: &str,
    since: Millis,
) -> Result<Vec<i64>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT a.started_at + a.duration_ms - d.created_at FROM attempts a JOIN deliveries d ON d.id = a.delivery_id
         WHERE a.destination_id = ?1 AND a.started_at >= ?2 AND a.outcome = 'succeeded' ORDER BY a.started_at, a.id",
    )?;
    let rows = stmt.query_map(params![destination_id, since], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(super) fn dead_count(
    conn: &Connection,
    destination_id: Option<&str>,
) -> Result<i64, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT COUNT(*) FROM deliveries WHERE status = 'dead' AND (?1 IS NULL OR destination_id = ?1)",
        )?
        .query_row(params![destination_id], |r| r.get(0))?)
}

/// The latest event time of each source that has any, by source.
pub(super) fn last_event_per_source(
    conn: &Connection,
) -> Result<Vec<(String, Millis)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT source, MAX(received_at) FROM events GROUP BY source ORDER BY source",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A token made through the API, as listed (never its value or hash).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    pub scope: String,
    pub created_at: String,
}

/// The live tokens, oldest first.
pub(super) fn tokens(conn: &Connection) -> Result<Vec<TokenView>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, name, scope, created_at FROM api_tokens WHERE revoked_at IS NULL ORDER BY id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(TokenView {
            id: r.get(0)?,
            name: r.get(1)?,
            scope: r.get(2)?,
            created_at: crate::clock::rfc3339(r.get(3)?),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The scope of the live token whose SHA-256 is `hash`.
pub(super) fn token_scope(conn: &Connection, hash: &[u8]) -> Result<Option<String>, StoreError> {
    use rusqlite::OptionalExtension;
    Ok(conn
        .prepare_cached("SELECT scope FROM api_tokens WHERE hash = ?1 AND revoked_at IS NULL")?
        .query_row(params![hash], |r| r.get(0))
        .optional()?)
}

/// Which dead deliveries a bulk replay takes.
#[derive(Debug, Default, Clone)]
pub struct DeadFilter {
    pub destination_id: Option<String>,
    /// Deliveries created at or after, before.
    pub since: Option<Millis>,
    pub until: Option<Millis>,
    /// A part of the last error.
    pub error: Option<String>,
}

/// Ids of the dead deliveries matching `filter`, oldest first, after the id `after`.
pub(super) fn dead_deliveries(
    conn: &Connection,
    filter: &DeadFilter,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id FROM deliveries WHERE status = 'dead'
           AND (?1 IS NULL OR destination_id = ?1) AND (?2 IS NULL OR created_at >= ?2) AND (?3 IS NULL OR created_at < ?3)
           AND (?4 IS NULL OR instr(COALESCE(last_error, ''), ?4) > 0) AND (?5 IS NULL OR id > ?5)
         ORDER BY id LIMIT ?6",
    )?;
    let rows = stmt.query_map(
        params![
            filter.destination_id,
            filter.since,
            filter.until,
            filter.error,
            after,
            limit as i64
        ],
        |r| r.get(0),
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

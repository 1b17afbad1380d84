//! PostgreSQL rows as the store's views, the same values the SQLite reads build. Each
//! converter reads the columns its queries select, by position, in the order they select them
//! (the column lists shared with SQLite, `DELIVERY_COLUMNS` and `SUMMARY_COLUMNS`, included).
//! Every column is read with `try_get`, so a column of another type than expected is an
//! error, never a panic; a number that Rust holds as `usize` or `u32` (a step index, a count
//! of attempts) is checked, and one out of range is corrupt data where SQLite's reads wrap it.

use super::PgError;
use crate::clock::rfc3339;
use crate::store::reads::{finish_delivery, json_or_string};
use crate::store::{
    AlertChange, AlertState, AttemptView, Backlog, DeliveryJob, DeliveryStatus, DeliveryView,
    EventSummary, Pause, RecentAttempt, RejectionView, RunSummary, SchemaVersion, StoreError,
    StoredObject, TokenView,
};
use tokio_postgres::Row;
use tokio_postgres::types::FromSql;

/// Column `i` of `row`, as `T`.
pub(super) fn get<'a, T: FromSql<'a>>(row: &'a Row, i: usize) -> Result<T, StoreError> {
    row.try_get(i).map_err(|e| PgError::from(e).into())
}

/// A stored integer that Rust holds as a `usize` (a step index, a size).
pub(super) fn to_usize(n: i64, what: impl FnOnce() -> String) -> Result<usize, StoreError> {
    usize::try_from(n).map_err(|_| StoreError::Corrupt(format!("{} is {n}", what())))
}

/// A stored integer that Rust holds as a `u32` (a count of attempts).
pub(super) fn to_u32(n: i64, what: impl FnOnce() -> String) -> Result<u32, StoreError> {
    u32::try_from(n).map_err(|_| StoreError::Corrupt(format!("{} is {n}", what())))
}

/// A delivery, from `DELIVERY_COLUMNS`, without its attempts.
pub(super) fn delivery(r: &Row) -> Result<DeliveryView, StoreError> {
    let next: Option<i64> = get(r, 6)?;
    let view = DeliveryView {
        id: get(r, 0)?,
        event_id: get(r, 1)?,
        run_id: get(r, 2)?,
        destination_id: get(r, 3)?,
        status: DeliveryStatus::Pending,
        attempt_count: get(r, 5)?,
        next_attempt_at: next.map(rfc3339),
        created_at: rfc3339(get(r, 7)?),
        updated_at: rfc3339(get(r, 8)?),
        last_error: get(r, 9)?,
        payload_expired: get::<Option<bool>>(r, 10)?.unwrap_or(false),
        attempts: None,
    };
    finish_delivery((view, get(r, 4)?))
}

/// The columns [`attempt`] reads, then the attempt's `delivery_id` (which [`attempt`] does
/// not read: the caller groups by it).
pub(super) const ATTEMPT_COLUMNS: &str = "attempt, started_at, duration_ms, outcome, status_code, response_headers, response_body, error, delivery_id";

/// An attempt, from [`ATTEMPT_COLUMNS`].
pub(super) fn attempt(r: &Row) -> Result<AttemptView, StoreError> {
    let headers: Option<String> = get(r, 5)?;
    let body: Option<Vec<u8>> = get(r, 6)?;
    Ok(AttemptView {
        attempt: get(r, 0)?,
        started_at: rfc3339(get(r, 1)?),
        duration_ms: get(r, 2)?,
        outcome: get(r, 3)?,
        status_code: get(r, 4)?,
        response_headers: headers.map(json_or_string),
        response_body: body.map(|b| String::from_utf8_lossy(&b).into_owned()),
        error: get(r, 7)?,
    })
}

/// A run without its steps, from `SUMMARY_COLUMNS`.
pub(super) fn summary(r: &Row) -> Result<RunSummary, StoreError> {
    let id: String = get(r, 0)?;
    let step_index = to_usize(get(r, 5)?, || format!("run {id}: its step index"))?;
    Ok(RunSummary {
        event_id: get(r, 1)?,
        flow_id: get(r, 2)?,
        flow_version: get(r, 3)?,
        status: get(r, 4)?,
        step_index,
        error: get(r, 6)?,
        created_at: rfc3339(get(r, 7)?),
        updated_at: rfc3339(get(r, 8)?),
        payload_expired: get::<Option<bool>>(r, 9)?.unwrap_or(false),
        id,
    })
}

/// An event as lists show it, with its payload (empty unless asked for): `id, source,
/// event_type, received_at, status, payload, expired`.
pub(super) fn event_summary(r: &Row) -> Result<(EventSummary, Vec<u8>), StoreError> {
    Ok((
        EventSummary {
            id: get(r, 0)?,
            source: get(r, 1)?,
            event_type: get(r, 2)?,
            received_at: rfc3339(get(r, 3)?),
            status: get(r, 4)?,
            payload_expired: get(r, 6)?,
        },
        get(r, 5)?,
    ))
}

/// The columns [`rejection`] reads.
pub(super) const REJECTION_COLUMNS: &str = "id, source, received_at, status, error, reason, body";

/// An entry of the rejected log, from [`REJECTION_COLUMNS`].
pub(super) fn rejection(r: &Row) -> Result<RejectionView, StoreError> {
    let body: Vec<u8> = get(r, 6)?;
    Ok(RejectionView {
        id: get::<i64>(r, 0)?.to_string(),
        source: get(r, 1)?,
        received_at: rfc3339(get(r, 2)?),
        status: get(r, 3)?,
        error: get(r, 4)?,
        reason: get(r, 5)?,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// A pending delivery as the deliverer takes it over: `id, event_id, destination_id,
/// round_attempts, next_attempt_at, run_id, created_at`.
pub(super) fn job(r: &Row) -> Result<DeliveryJob, StoreError> {
    let id: String = get(r, 0)?;
    let round_attempts = to_u32(get(r, 3)?, || {
        format!("delivery {id}: its round's attempts")
    })?;
    Ok(DeliveryJob {
        event_id: get(r, 1)?,
        run_id: get(r, 5)?,
        destination_id: get(r, 2)?,
        created_at: get(r, 6)?,
        round_attempts,
        due_at: get::<Option<i64>>(r, 4)?.unwrap_or(0),
        payload: None,
        lease: None,
        id,
    })
}

/// `destination_id, paused_by, reason, since`.
pub(super) fn pause(r: &Row) -> Result<(String, Pause), StoreError> {
    Ok((
        get(r, 0)?,
        Pause {
            by: get(r, 1)?,
            reason: get(r, 2)?,
            since: get(r, 3)?,
        },
    ))
}

/// `alert_id, firing, since, message, subject, last_notice_at, notified`; the flags are
/// integers, true when not 0 (as SQLite reads them).
pub(super) fn alert_state(r: &Row) -> Result<AlertState, StoreError> {
    Ok(AlertState {
        alert_id: get(r, 0)?,
        firing: get::<i64>(r, 1)? != 0,
        since: get(r, 2)?,
        message: get(r, 3)?,
        subject: get(r, 4)?,
        last_notice_at: get(r, 5)?,
        notified: get::<i64>(r, 6)? != 0,
    })
}

/// `at, firing, subject, message, notices` of one of `alert_id`'s changes.
pub(super) fn alert_change(r: &Row, alert_id: &str) -> Result<AlertChange, StoreError> {
    let notices: String = get(r, 4)?;
    Ok(AlertChange {
        alert_id: alert_id.to_string(),
        at: get(r, 0)?,
        firing: get::<i64>(r, 1)? != 0,
        subject: get(r, 2)?,
        message: get(r, 3)?,
        // Written by the writer from the same type; a row it cannot read shows no notice.
        notices: serde_json::from_str(&notices).unwrap_or_default(),
    })
}

/// `destination_id, COUNT(*), oldest due`.
pub(super) fn backlog(r: &Row) -> Result<Backlog, StoreError> {
    Ok(Backlog {
        destination_id: get(r, 0)?,
        pending: get(r, 1)?,
        oldest_due: get(r, 2)?,
    })
}

/// `delivery_id, attempt, started_at, duration_ms, outcome, status_code, error`.
pub(super) fn recent_attempt(r: &Row) -> Result<RecentAttempt, StoreError> {
    Ok(RecentAttempt {
        delivery_id: get(r, 0)?,
        attempt: get(r, 1)?,
        started_at: get(r, 2)?,
        duration_ms: get(r, 3)?,
        outcome: get(r, 4)?,
        status_code: get(r, 5)?,
        error: get(r, 6)?,
    })
}

/// `id, name, scope, created_at`.
pub(super) fn token(r: &Row) -> Result<TokenView, StoreError> {
    Ok(TokenView {
        id: get(r, 0)?,
        name: get(r, 1)?,
        scope: get(r, 2)?,
        created_at: rfc3339(get(r, 3)?),
    })
}

/// `kind, id, spec, created_at, updated_at`.
pub(super) fn stored_object(r: &Row) -> Result<StoredObject, StoreError> {
    Ok(StoredObject {
        kind: get(r, 0)?,
        id: get(r, 1)?,
        spec: get(r, 2)?,
        created_at: get(r, 3)?,
        updated_at: get(r, 4)?,
    })
}

/// `version, created_at, schema`; a schema that does not parse shows as `null`.
pub(super) fn schema_version(r: &Row) -> Result<SchemaVersion, StoreError> {
    let text: String = get(r, 2)?;
    Ok(SchemaVersion {
        version: get(r, 0)?,
        created_at: get(r, 1)?,
        schema: serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    })
}

//! Config objects made through the API (sources, event types, destinations, flows), kept as
//! their JSON specs, and the schema versions of every event type.

use super::StoreError;
use crate::clock::Millis;
use rusqlite::{Connection, params};

/// An object made through the API, as stored.
#[derive(Debug, Clone)]
pub struct StoredObject {
    /// The kind as in the API's paths: `sources`, `event-types`, `destinations`, `flows`.
    pub kind: String,
    pub id: String,
    /// The spec, JSON.
    pub spec: String,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// One change of config, committed at once: an object written or deleted, and the schemas of
/// event types that may be new versions.
#[derive(Debug, Default)]
pub struct ConfigChange {
    /// `(kind, id, Some(spec))` writes, `(kind, id, None)` deletes.
    pub object: Option<(String, String, Option<String>)>,
    /// `(event type, schema JSON)`: stored as a new version when it differs from the latest.
    pub schemas: Vec<(String, String)>,
    pub now: Millis,
}

/// A version of an event type's schema.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SchemaVersion {
    pub version: i64,
    #[serde(skip)]
    pub created_at: Millis,
    pub schema: serde_json::Value,
}

pub(super) fn apply_config_change(
    tx: &Connection,
    change: &ConfigChange,
) -> Result<(), StoreError> {
    match &change.object {
        Some((kind, id, Some(spec))) => {
            tx.prepare_cached(
                "INSERT INTO config_objects (kind, id, spec, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)
                 ON CONFLICT (kind, id) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at",
            )?
            .execute(params![kind, id, spec, change.now])?;
        }
        Some((kind, id, None)) => {
            tx.prepare_cached("DELETE FROM config_objects WHERE kind = ?1 AND id = ?2")?
                .execute(params![kind, id])?;
        }
        None => {}
    }
    for (name, schema) in &change.schemas {
        let latest: Option<String> = tx
            .prepare_cached(
                "SELECT schema FROM schema_versions WHERE event_type = ?1 ORDER BY version DESC LIMIT 1",
            )?
            .query_row(params![name], |r| r.get(0))
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })?;
        if latest.as_deref() != Some(schema.as_str()) {
            tx.prepare_cached(
                "INSERT INTO schema_versions (event_type, version, schema, created_at)
                 VALUES (?1, COALESCE((SELECT MAX(version) FROM schema_versions WHERE event_type = ?1), 0) + 1, ?2, ?3)",
            )?
            .execute(params![name, schema, change.now])?;
        }
    }
    Ok(())
}

/// A config object's spec with its secrets sealed again (`ferry secrets rotate`).
#[derive(Debug)]
pub struct Resealed {
    /// As in the API's paths.
    pub kind: String,
    pub id: String,
    /// The spec as it was read: the update applies only while it is still stored.
    pub old: String,
    pub new: String,
}

/// Writes every resealed spec, inside a savepoint of the writer's transaction: all of them,
/// or none when one is no longer stored as read.
pub(super) fn reseal(tx: &Connection, updates: &[Resealed]) -> Result<(), StoreError> {
    super::savepoint::in_savepoint(tx, || {
        updates.iter().try_for_each(|u| {
            let changed = tx
                .prepare_cached(
                    "UPDATE config_objects SET spec = ?3 WHERE kind = ?1 AND id = ?2 AND spec = ?4",
                )?
                .execute(params![u.kind, u.id, u.new, u.old])?;
            if changed == 1 {
                Ok(())
            } else {
                Err(StoreError::Corrupt(format!(
                    "{} `{}` changed while its secrets were sealed again; nothing was written",
                    u.kind, u.id
                )))
            }
        })
    })
}

/// Every object made through the API.
pub(super) fn api_objects(conn: &Connection) -> Result<Vec<StoredObject>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT kind, id, spec, created_at, updated_at FROM config_objects ORDER BY kind, id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(StoredObject {
            kind: r.get(0)?,
            id: r.get(1)?,
            spec: r.get(2)?,
            created_at: r.get(3)?,
            updated_at: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The schema versions of an event type, oldest first.
pub(super) fn schema_versions(
    conn: &Connection,
    event_type: &str,
) -> Result<Vec<SchemaVersion>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT version, created_at, schema FROM schema_versions WHERE event_type = ?1 ORDER BY version",
    )?;
    let rows = stmt.query_map(params![event_type], |r| {
        let text: String = r.get(2)?;
        Ok(SchemaVersion {
            version: r.get(0)?,
            created_at: r.get(1)?,
            schema: serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Deliveries to a destination that are not finished (pending).
pub(super) fn pending_deliveries_to(
    conn: &Connection,
    destination_id: &str,
) -> Result<i64, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT COUNT(*) FROM deliveries WHERE status = 'pending' AND destination_id = ?1",
        )?
        .query_row(params![destination_id], |r| r.get(0))?)
}

/// Runs of a flow that are not finished (running or waiting for their deliveries).
pub(super) fn unfinished_runs_of(conn: &Connection, flow_id: &str) -> Result<i64, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT COUNT(*) FROM runs WHERE status IN ('running', 'waiting') AND flow_id = ?1",
        )?
        .query_row(params![flow_id], |r| r.get(0))?)
}

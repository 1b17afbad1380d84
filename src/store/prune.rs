//! Retention in SQL: what the writer does when the pruner (`crate::retention`) asks it to
//! remove finished events with their runs, deliveries and attempts, to drop their bodies, to
//! trim the rejected log, or to give free pages back to the file system. Each request is one
//! small batch, applied in the writer's transaction like any other write, so pruning never
//! holds the write lock for long and takes its turn with ingest.
//!
//! An event is examined in arrival order (`seq`, the events table's rowid, which a later
//! layout keeps as its time order). Its state comes from its runs and deliveries (through their
//! `event_id` indexes): **pending** (a run running or waiting, a delivery pending) is never
//! touched; **dead** (a run failed, a delivery dead) is kept for the dead-letter limit;
//! anything else is **finished** and kept for the retention. Ages count from the event's last
//! activity: the latest `updated_at` of its runs and deliveries, or its arrival.

use super::*;
use rusqlite::{Connection, OptionalExtension, params};

/// The times before which things go, computed by the pruner from its clock and settings.
#[derive(Debug, Clone, Copy)]
pub struct PruneCutoffs {
    pub now: Millis,
    /// Finished events whose last activity is before this are removed.
    pub finished: Millis,
    /// Events with dead letters whose last activity is before this are removed.
    pub dead: Millis,
    /// Events (finished or dead) whose last activity is before this lose their bodies; `None`
    /// keeps bodies as long as their records.
    pub payloads: Option<Millis>,
}

/// How far past now an event's arrival time may be and still count as now: beyond it, the
/// clock was ahead when the event came (see [`too_young`]).
const FUTURE_SLACK: Millis = 60_000;

/// Which events one batch examines.
#[derive(Debug, Clone)]
pub enum PruneScope {
    /// Up to `max` events after `seq` in arrival order, stopping at the first received at or
    /// after `received_before`. With `bodies_only`, events whose bodies are gone already are
    /// passed over without a look at their runs (the scan for payload expiry).
    After {
        seq: i64,
        received_before: Millis,
        max: usize,
        bodies_only: bool,
    },
    /// These events (by `seq`), examined again: earlier batches found them waiting.
    Again(Vec<i64>),
}

/// What one batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PruneReport {
    /// The last event examined (`seq`), if any.
    pub last_seq: Option<i64>,
    /// The scan reached an event too young, or the end of the table.
    pub reached_end: bool,
    pub events: u64,
    pub runs: u64,
    pub deliveries: u64,
    pub attempts: u64,
    /// Events whose bodies were dropped.
    pub payloads: u64,
    /// Events that must be examined again for their bodies: pending, or active too recently.
    pub waiting: Vec<i64>,
}

/// What becomes of one event.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    Remove,
    DropBodies,
    /// Its bodies may go later (pending, or active too recently).
    WaitForBodies,
    Keep,
}

/// One event as a batch reads it.
struct Examined {
    seq: i64,
    id: String,
    received_at: Millis,
    bodies_gone: bool,
}

/// Applies one batch in the writer's open transaction, inside a savepoint: a failure leaves
/// nothing of the batch behind.
pub(super) fn prune_events(
    tx: &Connection,
    scope: &PruneScope,
    cutoffs: &PruneCutoffs,
) -> Result<PruneReport, StoreError> {
    super::savepoint::in_savepoint(tx, || prune_in_savepoint(tx, scope, cutoffs))
}

fn prune_in_savepoint(
    tx: &Connection,
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
            let events = events_after(tx, *seq, *max)?;
            let young = events
                .iter()
                .position(|e| too_young(e.received_at, *received_before, cutoffs));
            report.reached_end = young.is_some() || events.len() < *max;
            let events = match young {
                Some(n) => events.into_iter().take(n).collect(),
                None => events,
            };
            (events, *bodies_only)
        }
        PruneScope::Again(seqs) => {
            let mut events = Vec::with_capacity(seqs.len());
            for &seq in seqs {
                events.extend(event_at(tx, seq)?);
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
        match verdict(tx, &event, cutoffs)? {
            Verdict::Remove => remove_event(tx, &event.id, &mut report)?,
            Verdict::DropBodies => {
                drop_bodies(tx, &event.id, cutoffs.now)?;
                report.payloads += 1;
            }
            Verdict::WaitForBodies => report.waiting.push(event.seq),
            Verdict::Keep => {}
        }
    }
    Ok(report)
}

/// Whether a scan for events received before `received_before` ends at an event received at
/// `received_at`. Arrival order is time order, so the scan ends at the first event received
/// after the cutoff; except an event stamped in the future (received while the clock ran
/// ahead, then corrected), which is passed over: it must not hold back every event behind it
/// until the clock catches up.
pub(super) fn too_young(
    received_at: Millis,
    received_before: Millis,
    cutoffs: &PruneCutoffs,
) -> bool {
    received_at >= received_before && received_at <= cutoffs.now.saturating_add(FUTURE_SLACK)
}

fn examined(r: &rusqlite::Row<'_>) -> rusqlite::Result<Examined> {
    Ok(Examined {
        seq: r.get(0)?,
        id: r.get(1)?,
        received_at: r.get(2)?,
        bodies_gone: r.get::<_, Option<i64>>(3)?.is_some(),
    })
}

fn events_after(tx: &Connection, seq: i64, max: usize) -> Result<Vec<Examined>, StoreError> {
    let mut stmt = tx.prepare_cached(
        "SELECT seq, id, received_at, payload_expired_at FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![seq, max as i64], examined)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn event_at(tx: &Connection, seq: i64) -> Result<Option<Examined>, StoreError> {
    Ok(tx
        .prepare_cached(
            "SELECT seq, id, received_at, payload_expired_at FROM events WHERE seq = ?1",
        )?
        .query_row(params![seq], examined)
        .optional()?)
}

/// Pending, dead or finished, and when last active: from the event's runs and deliveries.
fn verdict(
    tx: &Connection,
    event: &Examined,
    cutoffs: &PruneCutoffs,
) -> Result<Verdict, StoreError> {
    let (mut pending, mut dead, mut last) = (false, false, event.received_at);
    let mut runs = tx.prepare_cached("SELECT status, updated_at FROM runs WHERE event_id = ?1")?;
    let mut rows = runs.query(params![event.id])?;
    while let Some(r) = rows.next()? {
        let status: String = r.get(0)?;
        pending |= status == "running" || status == "waiting";
        dead |= status == "failed";
        last = last.max(r.get(1)?);
    }
    drop(rows);
    let mut deliveries =
        tx.prepare_cached("SELECT status, updated_at FROM deliveries WHERE event_id = ?1")?;
    let mut rows = deliveries.query(params![event.id])?;
    while let Some(r) = rows.next()? {
        let status: String = r.get(0)?;
        pending |= status == "pending";
        dead |= status == "dead";
        last = last.max(r.get(1)?);
    }
    Ok(judge(
        Activity {
            pending,
            dead,
            last,
        },
        event.bodies_gone,
        cutoffs,
    ))
}

/// An event's state as retention sees it, from its runs and deliveries.
pub(super) struct Activity {
    /// A run running or waiting, or a delivery pending.
    pub pending: bool,
    /// A run failed, or a delivery dead.
    pub dead: bool,
    /// The latest `updated_at` of its runs and deliveries, or its arrival.
    pub last: Millis,
}

/// What becomes of an event in `activity`, whose bodies are gone already or not.
pub(super) fn judge(activity: Activity, bodies_gone: bool, cutoffs: &PruneCutoffs) -> Verdict {
    if activity.pending {
        return Verdict::WaitForBodies;
    }
    let remove_before = if activity.dead {
        cutoffs.dead
    } else {
        cutoffs.finished
    };
    if activity.last < remove_before {
        return Verdict::Remove;
    }
    match cutoffs.payloads {
        Some(_) if bodies_gone => Verdict::Keep,
        Some(before) if activity.last < before => Verdict::DropBodies,
        Some(_) => Verdict::WaitForBodies,
        None => Verdict::Keep,
    }
}

/// The range of `attempts.delivery_id` that holds the http step attempts of a run
/// (`<run id>/<step index>`): `/` sorts just before `0`.
pub(super) fn step_attempts_range(run_id: &str) -> (String, String) {
    (format!("{run_id}/"), format!("{run_id}0"))
}

fn run_ids(tx: &Connection, event_id: &str) -> Result<Vec<String>, StoreError> {
    let mut stmt = tx.prepare_cached("SELECT id FROM runs WHERE event_id = ?1")?;
    let rows = stmt.query_map(params![event_id], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn remove_event(
    tx: &Connection,
    event_id: &str,
    report: &mut PruneReport,
) -> Result<(), StoreError> {
    let mut attempts = tx
        .prepare_cached(
            "DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE event_id = ?1)",
        )?
        .execute(params![event_id])?;
    let runs = run_ids(tx, event_id)?;
    for run in &runs {
        let (from, to) = step_attempts_range(run);
        attempts += tx
            .prepare_cached("DELETE FROM attempts WHERE delivery_id >= ?1 AND delivery_id < ?2")?
            .execute(params![from, to])?;
    }
    report.attempts += attempts as u64;
    delete_bodies(tx, event_id)?;
    report.deliveries += tx
        .prepare_cached("DELETE FROM deliveries WHERE event_id = ?1")?
        .execute(params![event_id])? as u64;
    report.runs += tx
        .prepare_cached("DELETE FROM runs WHERE event_id = ?1")?
        .execute(params![event_id])? as u64;
    report.events += tx
        .prepare_cached("DELETE FROM events WHERE id = ?1")?
        .execute(params![event_id])? as u64;
    Ok(())
}

/// Deletes the bodies an event's runs made (their transform outputs, payloads and deliveries'
/// bodies), before the event's row goes.
fn delete_bodies(tx: &Connection, event_id: &str) -> Result<(), StoreError> {
    tx.prepare_cached(
        "DELETE FROM bodies WHERE event_seq = (SELECT seq FROM events WHERE id = ?1)",
    )?
    .execute(params![event_id])?;
    Ok(())
}

/// Drops every body of an event and keeps the record of what happened: the event's payload,
/// the bodies its runs made (and every reference to them), each run's context and its step
/// records' outputs (and the requests they show), and the response bodies of attempts (their
/// status, headers, error and times stay).
fn drop_bodies(tx: &Connection, event_id: &str, now: Millis) -> Result<(), StoreError> {
    delete_bodies(tx, event_id)?;
    tx.prepare_cached("UPDATE events SET payload = x'', payload_expired_at = ?2 WHERE id = ?1")?
        .execute(params![event_id, now])?;
    tx.prepare_cached(
        "UPDATE deliveries SET body_id = NULL WHERE event_id = ?1 AND body_id IS NOT NULL",
    )?
    .execute(params![event_id])?;
    tx.prepare_cached(
        "UPDATE attempts SET response_body = NULL
         WHERE delivery_id IN (SELECT id FROM deliveries WHERE event_id = ?1) AND response_body IS NOT NULL",
    )?
    .execute(params![event_id])?;
    for run in run_ids(tx, event_id)? {
        let steps: String = tx
            .prepare_cached("SELECT steps FROM runs WHERE id = ?1")?
            .query_row(params![run], |r| r.get(0))?;
        tx.prepare_cached(
            "UPDATE runs SET context = NULL, payload_body = NULL, steps = ?2 WHERE id = ?1",
        )?
        .execute(params![run, steps_without_bodies(&steps)])?;
        let (from, to) = step_attempts_range(&run);
        tx.prepare_cached(
            "UPDATE attempts SET response_body = NULL WHERE delivery_id >= ?1 AND delivery_id < ?2 AND response_body IS NOT NULL",
        )?
        .execute(params![from, to])?;
    }
    Ok(())
}

/// Step records without what they carried of the data: `output` (or the body that holds it)
/// and `request`. Records that
/// do not parse (they always do) become an empty list rather than keep data past its time.
pub(super) fn steps_without_bodies(steps: &str) -> String {
    let Ok(mut records) = serde_json::from_str::<Vec<serde_json::Value>>(steps) else {
        return "[]".into();
    };
    for record in &mut records {
        if let Some(obj) = record.as_object_mut() {
            obj.remove("output");
            obj.remove("output_body");
            obj.remove("request");
        }
    }
    serde_json::to_string(&records).unwrap_or_else(|_| "[]".into())
}

/// Removes up to `max` entries of the rejected log received before `before`, oldest first.
pub(super) fn prune_rejections(
    tx: &Connection,
    before: Millis,
    max: usize,
) -> Result<usize, StoreError> {
    Ok(tx
        .prepare_cached(
            "DELETE FROM rejections WHERE id IN
             (SELECT id FROM rejections WHERE received_at < ?1 ORDER BY id LIMIT ?2)",
        )?
        .execute(params![before, max as i64])?)
}

/// Gives up to `pages` free pages back to the file system (the file shrinks when the
/// checkpointer copies the commit into it). Does nothing in a database whose `auto_vacuum`
/// is not INCREMENTAL.
pub(super) fn incremental_vacuum(tx: &Connection, pages: u32) -> Result<(), StoreError> {
    // A pragma's argument cannot be a parameter. Each step of the statement frees one page,
    // so it is stepped to its end (`execute_batch` would step it once).
    let mut stmt = tx.prepare_cached(&format!("PRAGMA incremental_vacuum({pages})"))?;
    let mut rows = stmt.raw_query();
    while rows.next()?.is_some() {}
    Ok(())
}

/// The database's pages: how large it is and how much of it is free.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Space {
    pub page_size: i64,
    pub pages: i64,
    pub free_pages: i64,
    /// `auto_vacuum = INCREMENTAL`: free pages can be given back.
    pub incremental: bool,
}

pub(super) fn space(conn: &Connection) -> Result<Space, StoreError> {
    let get = |pragma: &str| -> Result<i64, StoreError> {
        Ok(conn.query_row(&format!("PRAGMA {pragma}"), [], |r| r.get(0))?)
    };
    Ok(Space {
        page_size: get("page_size")?,
        pages: get("page_count")?,
        free_pages: get("freelist_count")?,
        incremental: super::schema::auto_vacuum_incremental(conn)?,
    })
}

/// When the oldest event kept arrived, if there is one.
pub(super) fn oldest_event(conn: &Connection) -> Result<Option<Millis>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT received_at FROM events ORDER BY seq LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?)
}

impl Store {
    /// Applies one batch of retention to events (see [`PruneScope`]).
    pub async fn prune_events(
        &self,
        scope: PruneScope,
        cutoffs: PruneCutoffs,
    ) -> Result<PruneReport, StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.prune_events(scope, cutoffs).await;
        }
        self.ask(|reply| WriteOp::PruneEvents {
            scope,
            cutoffs,
            reply,
        })
        .await
    }

    /// Removes up to `max` entries of the rejected log received before `before`; answers how
    /// many went.
    pub async fn prune_rejections(&self, before: Millis, max: usize) -> Result<usize, StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.prune_rejections(before, max).await;
        }
        self.ask(|reply| WriteOp::PruneRejections { before, max, reply })
            .await
    }

    /// Gives up to `pages` free pages back to the file system.
    pub async fn incremental_vacuum(&self, pages: u32) -> Result<(), StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.incremental_vacuum(pages).await;
        }
        self.ask(|reply| WriteOp::Vacuum { pages, reply }).await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn step_records_lose_their_outputs_and_requests_and_keep_the_rest() {
        let steps = r#"[{"index":0,"kind":"transform","status":"succeeded","output":{"a":1},"started_at":5,"duration_ms":1.0},
                        {"index":1,"kind":"http","status":"succeeded","request":{"body":"x"},"output":{"status":200},"started_at":6,"duration_ms":2.0}]"#;
        let kept: serde_json::Value =
            serde_json::from_str(&super::steps_without_bodies(steps)).unwrap();
        assert_eq!(
            kept,
            serde_json::json!([
                {"index":0,"kind":"transform","status":"succeeded","started_at":5,"duration_ms":1.0},
                {"index":1,"kind":"http","status":"succeeded","started_at":6,"duration_ms":2.0}
            ])
        );
        assert_eq!(super::steps_without_bodies("not json"), "[]");
    }

    #[test]
    fn an_event_stamped_in_the_future_does_not_hold_back_the_events_behind_it() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(crate::store::schema::SCHEMA).unwrap();
        let now = 10_000_000;
        // Finished events (no runs, no deliveries) an hour old, but the second was received
        // while the clock was a day ahead.
        for (seq, at) in [
            (1, now - 3_600_000),
            (2, now + 86_400_000),
            (3, now - 3_600_000),
            (4, now - 3_600_000),
        ] {
            conn.execute(
                "INSERT INTO events (seq, id, source, event_type, received_at, headers, payload) VALUES (?1, ?2, 's', 't', ?3, '{}', x'7b7d')",
                rusqlite::params![seq, format!("evt_{seq}"), at],
            )
            .unwrap();
        }
        let cutoffs = super::PruneCutoffs {
            now,
            finished: now - 60_000,
            dead: now - 60_000,
            payloads: None,
        };
        let scope = super::PruneScope::After {
            seq: 0,
            received_before: cutoffs.finished,
            max: 128,
            bodies_only: false,
        };
        conn.execute_batch("BEGIN").unwrap();
        let report = super::prune_events(&conn, &scope, &cutoffs).unwrap();
        conn.execute_batch("COMMIT").unwrap();
        let left: Vec<i64> = conn
            .prepare("SELECT seq FROM events ORDER BY seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(left, [2], "{report:?}");
        assert_eq!(report.events, 3);
    }

    #[test]
    fn a_runs_step_attempts_sort_inside_its_range_and_no_other_runs_do() {
        let (from, to) = super::step_attempts_range("run_01ABC");
        for inside in ["run_01ABC/0", "run_01ABC/12"] {
            assert!(from.as_str() <= inside && inside < to.as_str(), "{inside}");
        }
        for outside in ["run_01ABCD/0", "run_01AB/0", "run_01ABC", "del_01ABC"] {
            assert!(
                !(from.as_str() <= outside && outside < to.as_str()),
                "{outside}"
            );
        }
    }
}

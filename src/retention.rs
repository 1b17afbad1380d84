//! Retention: the pruner task. Every [`PRUNE_EVERY`] on the injected clock it removes what
//! `settings.retention` and `dead_letter_retention` let go (finished events with their runs,
//! deliveries and attempts, events with dead letters, the rejected log), drops the bodies that
//! `settings.payload_retention` lets go, then gives free pages back to the file system
//! (`PRAGMA incremental_vacuum`) beyond a reserve that new rows reuse.
//!
//! Everything goes through the store's writer in small batches ([`EVENTS_PER_BATCH`] events,
//! [`REJECTIONS_PER_BATCH`] log entries, [`VACUUM_STEP`] pages), each one op of a group commit,
//! so the write lock is never held long and ingest's path is not touched. A batch that fails
//! (a full disk) changes nothing; the pass stops, says so (`telemetry::events`), and the next
//! pass starts again. This module decides when and how much; only `store` knows the SQL
//! (`store::prune`), and what each kind of event keeps is decided there.

use crate::clock::{Millis, SharedClock};
use crate::config::RetentionLimits;
use crate::store::{PruneCutoffs, PruneReport, PruneScope, Store, StoreError};
use crate::telemetry::{Metrics, events, events::Pruned};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// How often a pass runs.
pub const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Events examined by one batch (each removed one takes its runs, deliveries and attempts).
const EVENTS_PER_BATCH: usize = 128;
/// Entries of the rejected log removed by one batch.
const REJECTIONS_PER_BATCH: usize = 500;
/// Pages given back by one batch.
const VACUUM_STEP: u32 = 256;
/// Free pages always left for new rows: a quarter of the pages in use, and at least this.
const MIN_FREE_PAGES_KEPT: i64 = 256;
/// Events remembered between passes because their bodies may go later (pending, or active
/// too recently). Past this, the scan for bodies goes on without remembering more, and the next
/// pass starts again at the first one it could not remember.
const MAX_WAITING: usize = 10_000;

/// Everything the pruner needs.
pub struct RetentionParts {
    pub store: Store,
    pub clock: SharedClock,
    pub metrics: Arc<Metrics>,
    pub limits: RetentionLimits,
    /// Closed when the app is dropped: the pruner stops with it.
    pub alive: tokio::sync::watch::Receiver<()>,
}

type Asked = tokio::sync::oneshot::Sender<Result<Pruned, String>>;

/// A handle to the pruner: asks for a pass now (tests, and anything that must not wait for
/// the next one).
#[derive(Clone, Default)]
pub struct PrunerHandle {
    now: Option<tokio::sync::mpsc::Sender<Asked>>,
}

impl PrunerHandle {
    /// Runs a whole pass now and answers what it did, or the store error that stopped it.
    pub async fn prune_now(&self) -> Result<Pruned, String> {
        let Some(tx) = &self.now else {
            return Err("the pruner is not running".into());
        };
        let (done, wait) = tokio::sync::oneshot::channel();
        tx.send(done)
            .await
            .map_err(|_| "the pruner has stopped".to_string())?;
        wait.await
            .map_err(|_| "the pruner has stopped".to_string())?
    }
}

/// Starts the pruner; its first pass comes one [`PRUNE_EVERY`] after start.
pub fn start(parts: RetentionParts) -> PrunerHandle {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let pruner = Pruner {
        parts,
        bodies_cursor: 0,
        waiting: BTreeSet::new(),
        max_waiting: MAX_WAITING,
    };
    tokio::spawn(pruner.run(rx));
    PrunerHandle { now: Some(tx) }
}

struct Pruner {
    parts: RetentionParts,
    /// The scan for bodies has examined every event up to this `seq` (memory only: after a
    /// restart the first pass looks at every event once more).
    bodies_cursor: i64,
    /// Events whose bodies may go later, by `seq`.
    waiting: BTreeSet<i64>,
    /// [`MAX_WAITING`] (smaller in tests).
    max_waiting: usize,
}

impl Pruner {
    async fn run(mut self, mut asked: tokio::sync::mpsc::Receiver<Asked>) {
        let every = PRUNE_EVERY.as_millis() as Millis;
        let mut next = self.parts.clock.now_ms().saturating_add(every);
        let mut alive = self.parts.alive.clone();
        let mut lead = crate::store::postgres::Singleton::new("retention");
        loop {
            let done = tokio::select! {
                _ = self.parts.clock.sleep_until(next) => None,
                Some(done) = asked.recv() => Some(done),
                _ = alive.changed() => return,
            };
            if done.is_none() {
                next = self.parts.clock.now_ms().saturating_add(every);
                // Cluster mode: one node prunes at a time (a pass asked for runs anyway).
                if lead.turn(&self.parts.store).await == crate::store::postgres::Turn::Others {
                    continue;
                }
            }
            let outcome = self.pass().await.map_err(|e| {
                events::retention_failed(&self.parts.metrics, &e.to_string());
                e.to_string()
            });
            if let Some(done) = done {
                let _ = done.send(outcome);
            }
        }
    }

    /// One pass: the rejected log, events (removed, then bodies), free pages, the metrics.
    async fn pass(&mut self) -> Result<Pruned, StoreError> {
        let now = self.parts.clock.now_ms();
        let cutoffs = cutoffs(&self.parts.limits, now);
        let mut done = Pruned::default();
        self.prune_rejections(cutoffs.finished, &mut done).await?;
        let removal_end = self.remove_old_events(&cutoffs, &mut done).await?;
        if let Some(before) = cutoffs.payloads {
            self.drop_old_bodies(&cutoffs, before, removal_end, &mut done)
                .await?;
        }
        let free_pages = self.give_back_space(&mut done).await?;
        let oldest = self.parts.store.oldest_event().await?;
        events::retention_pass(
            &self.parts.metrics,
            &done,
            oldest.map(|t| now - t),
            free_pages,
        );
        Ok(done)
    }

    async fn prune_rejections(&self, before: Millis, done: &mut Pruned) -> Result<(), StoreError> {
        loop {
            let n = self
                .parts
                .store
                .prune_rejections(before, REJECTIONS_PER_BATCH)
                .await?;
            done.rejections += n as u64;
            if n < REJECTIONS_PER_BATCH {
                return Ok(());
            }
        }
    }

    /// Every event received before the retention's cutoff, from the oldest: those due go
    /// (what is left at the front of the table is only what must stay: pending work, dead
    /// letters, events active since). Answers the last `seq` examined.
    async fn remove_old_events(
        &self,
        cutoffs: &PruneCutoffs,
        done: &mut Pruned,
    ) -> Result<i64, StoreError> {
        let mut after = 0;
        loop {
            let scope = PruneScope::After {
                seq: after,
                received_before: cutoffs.finished,
                max: EVENTS_PER_BATCH,
                bodies_only: false,
            };
            let report = self.parts.store.prune_events(scope, *cutoffs).await?;
            add(done, &report);
            after = report.last_seq.unwrap_or(after);
            if report.reached_end {
                return Ok(after);
            }
        }
    }

    /// The events remembered as waiting, then every event received before the bodies' cutoff
    /// that no pass has examined yet.
    async fn drop_old_bodies(
        &mut self,
        cutoffs: &PruneCutoffs,
        before: Millis,
        examined: i64,
        done: &mut Pruned,
    ) -> Result<(), StoreError> {
        let waiting: Vec<i64> = std::mem::take(&mut self.waiting).into_iter().collect();
        for (n, chunk) in waiting.chunks(EVENTS_PER_BATCH).enumerate() {
            let report = self
                .parts
                .store
                .prune_events(PruneScope::Again(chunk.to_vec()), *cutoffs)
                .await;
            let report = match report {
                Ok(r) => r,
                Err(e) => {
                    // Not examined: still waiting.
                    self.waiting.extend(&waiting[n * EVENTS_PER_BATCH..]);
                    return Err(e);
                }
            };
            add(done, &report);
            self.waiting.extend(report.waiting);
        }
        let mut after = self.bodies_cursor.max(examined);
        // The first waiting event the full set could not remember: the next pass starts there.
        // The scan goes on past it, so that bodies due behind a backlog of pending work (a
        // paused destination) still go.
        let mut resume_at: Option<i64> = None;
        loop {
            let scope = PruneScope::After {
                seq: after,
                received_before: before,
                max: EVENTS_PER_BATCH,
                bodies_only: true,
            };
            let report = self.parts.store.prune_events(scope, *cutoffs).await?;
            add(done, &report);
            for seq in &report.waiting {
                if self.waiting.len() >= self.max_waiting {
                    resume_at.get_or_insert(seq - 1);
                } else {
                    self.waiting.insert(*seq);
                }
            }
            after = report.last_seq.unwrap_or(after);
            self.bodies_cursor = resume_at.unwrap_or(after);
            if report.reached_end {
                return Ok(());
            }
        }
    }

    /// Gives free pages beyond the reserve back to the file system, a step at a time; answers
    /// the free pages left.
    async fn give_back_space(&self, done: &mut Pruned) -> Result<i64, StoreError> {
        let space = self.parts.store.space().await?;
        if !space.incremental {
            return Ok(space.free_pages);
        }
        let mut free = space.free_pages;
        let kept = free_pages_kept(space.pages - space.free_pages);
        while free > kept {
            let step = (free - kept).min(i64::from(VACUUM_STEP));
            self.parts.store.incremental_vacuum(step as u32).await?;
            free -= step;
        }
        let left = self.parts.store.space().await?;
        // Counted from the file, not from what was asked: new rows may have taken some.
        done.vacuumed_pages += (space.pages - left.pages).max(0) as u64;
        Ok(left.free_pages)
    }
}

/// The free pages left for new rows when `used` pages hold data.
fn free_pages_kept(used: i64) -> i64 {
    (used / 4).max(MIN_FREE_PAGES_KEPT)
}

/// The times before which things go, at `now`.
fn cutoffs(limits: &RetentionLimits, now: Millis) -> PruneCutoffs {
    let before = |d: Duration| now.saturating_sub(d.as_millis() as Millis);
    PruneCutoffs {
        now,
        finished: before(limits.finished),
        dead: before(limits.dead_letters),
        payloads: limits.payloads.map(before),
    }
}

fn add(done: &mut Pruned, report: &PruneReport) {
    done.events += report.events;
    done.runs += report.runs;
    done.deliveries += report.deliveries;
    done.attempts += report.attempts;
    done.payloads += report.payloads;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutoffs_count_back_from_now_and_never_overflow() {
        let limits = RetentionLimits {
            finished: Duration::from_secs(60),
            dead_letters: Duration::from_secs(120),
            payloads: Some(Duration::from_secs(30)),
        };
        let c = cutoffs(&limits, 1_000_000);
        assert_eq!(
            (c.finished, c.dead, c.payloads),
            (940_000, 880_000, Some(970_000))
        );
        let longest = RetentionLimits {
            finished: crate::config::MAX_DURATION,
            dead_letters: crate::config::MAX_DURATION,
            payloads: None,
        };
        assert!(cutoffs(&longest, 0).finished < 0);
    }

    /// Bodies due behind more waiting events than the pruner remembers still go in the same
    /// pass (the scan went no further than the first one it could not remember).
    #[tokio::test]
    async fn bodies_due_behind_a_backlog_larger_than_the_waiting_set_still_go() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let store = Store::open(dir.path(), Default::default(), metrics.clone()).unwrap();
        let now: Millis = 100_000_000;
        let event = |n: i64| crate::store::NewEvent {
            id: crate::ids::event_id(),
            source: "s".into(),
            event_type: "t".into(),
            idempotency_key: None,
            received_at: now - 3_600_000 + n,
            headers: "{}".into(),
            payload: bytes::Bytes::from_static(b"{}"),
        };
        // Twenty events with a pending delivery (a paused destination), then five finished.
        for n in 0..20 {
            let run = crate::ids::run_id();
            let runs = vec![crate::store::NewRun {
                id: run.clone(),
                flow_id: "f".into(),
                flow_version: "v".into(),
                status: "waiting",
                pc: 0,
                resume_pc: None,
                next_at: None,
                error: None,
                context: None,
                payload_body: None,
                bodies: Vec::new(),
                steps: "[]".into(),
            }];
            let deliveries = vec![crate::store::NewDelivery {
                id: crate::ids::delivery_id(),
                run_id: run,
                destination_id: "paused".into(),
                body: None,
            }];
            store.ingest(event(n), runs, deliveries).await.unwrap();
        }
        for n in 20..25 {
            store
                .ingest(event(n), Vec::new(), Vec::new())
                .await
                .unwrap();
        }
        let (_alive, alive) = tokio::sync::watch::channel(());
        let mut pruner = Pruner {
            parts: RetentionParts {
                store: store.clone(),
                clock: crate::clock::ManualClock::new(now),
                metrics,
                limits: RetentionLimits {
                    finished: Duration::from_secs(86_400),
                    dead_letters: Duration::from_secs(86_400),
                    payloads: Some(Duration::from_secs(60)),
                },
                alive,
            },
            bodies_cursor: 0,
            waiting: BTreeSet::new(),
            max_waiting: 8,
        };
        let limits = pruner.parts.limits.clone();
        let c = cutoffs(&limits, now);
        let mut done = Pruned::default();
        pruner
            .drop_old_bodies(&c, c.payloads.unwrap(), 0, &mut done)
            .await
            .unwrap();
        assert_eq!(
            done.payloads, 5,
            "the five finished events behind the backlog"
        );
        assert_eq!(pruner.waiting.len(), 8);
        // The next pass starts at the first waiting event it could not remember.
        assert!(pruner.bodies_cursor < 20, "{}", pruner.bodies_cursor);
    }

    #[test]
    fn a_reserve_of_free_pages_is_kept_for_new_rows() {
        assert_eq!(free_pages_kept(0), MIN_FREE_PAGES_KEPT);
        assert_eq!(free_pages_kept(100_000), 25_000);
    }
}

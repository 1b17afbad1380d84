//! The store's reads as the rest of Ferry asks for them: one named method of [`Store`] per
//! read, with plain typed arguments and typed answers. Each runs its query (or, for a method
//! that reads several things, all of them on one connection, so they agree) on a read
//! connection through `Store::read`. This is the seam between Ferry and its SQL: nothing
//! outside `store/` hands the store a connection closure, so a second backend answers the
//! same methods.

use super::health::{self, Backlog, DeadFilter, Pause, RecentAttempt, TokenView};
use super::objects::{self, SchemaVersion, StoredObject};
use super::prune::{self, Space};
use super::reads::{
    self, DeliveryFilter, DeliveryView, EventFilter, EventSummary, EventView, RejectionView,
    StoredEvent,
};
use super::runs::{self, DeadLetter, FailedRunFilter, RunDetail, RunFilter, RunRow, RunSummary};
use super::{AlertChange, AlertState, DeliveryJob, Store, StoreError};
use crate::clock::Millis;
use bytes::Bytes;
use std::collections::HashMap;

impl Store {
    /// Answers when a read connection can run a query (`/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.ping().await;
        }
        self.read(reads::ping).await
    }

    // What the deliverer and the run worker load.

    /// The first `limit` pending deliveries in due order (a tie by id), for the deliverer to take
    /// over.
    pub async fn pending_jobs(&self, limit: usize) -> Result<Vec<DeliveryJob>, StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.pending_jobs(limit).await;
        }
        self.read(move |c| reads::pending_jobs(c, limit)).await
    }

    /// The size in bytes of what a delivery sends, read without reading the body itself.
    pub async fn delivery_payload_size(
        &self,
        delivery_id: &str,
    ) -> Result<Option<usize>, StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.delivery_payload_size(delivery_id).await;
        }
        let id = delivery_id.to_string();
        self.read(move |c| reads::delivery_payload_size(c, &id))
            .await
    }

    /// What a delivery sends: its body, or else its event's payload (a missing body is an error).
    pub async fn delivery_payload(&self, delivery_id: &str) -> Result<Option<Bytes>, StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.delivery_payload(delivery_id).await;
        }
        let id = delivery_id.to_string();
        self.read(move |c| reads::delivery_payload(c, &id)).await
    }

    /// The paused destinations with why and since when, by destination id.
    pub async fn paused_destinations(&self) -> Result<Vec<(String, Pause)>, StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.paused_destinations().await;
        }
        self.read(health::paused_destinations).await
    }

    /// Runs the run worker has to act on, soonest first (a tie by id): `(id, due at)`.
    pub async fn due_runs(&self) -> Result<Vec<(String, Millis)>, StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.due_runs().await;
        }
        self.read(runs::due_runs).await
    }

    /// A run with its event, as the run worker needs it to go on.
    pub async fn run_row(&self, id: &str) -> Result<Option<RunRow>, StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.run_row(id).await;
        }
        let id = id.to_string();
        self.read(move |c| runs::run_row(c, &id)).await
    }

    // Events, runs and deliveries as the API and the console show them.

    /// An event with its runs and their deliveries (without their attempts).
    pub async fn event(&self, id: &str) -> Result<Option<EventView>, StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.event(id).await;
        }
        let id = id.to_string();
        self.read(move |c| reads::event(c, &id)).await
    }

    /// An event with each delivery's attempts and the steps of each run that has its detail,
    /// read together on one connection (the console's event page).
    pub async fn event_with_attempts_and_steps(
        &self,
        id: &str,
    ) -> Result<Option<(EventView, Vec<RunDetail>)>, StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.event_with_attempts_and_steps(id).await;
        }
        let id = id.to_string();
        self.read(move |c| {
            let Some(mut event) = reads::event(c, &id)? else {
                return Ok(None);
            };
            let mut details = Vec::new();
            for run in &mut event.runs {
                for delivery in &mut run.deliveries {
                    if let Some(full) = reads::delivery(c, &delivery.id)? {
                        *delivery = full;
                    }
                }
                if let Some(detail) = runs::run_detail(c, &run.id)? {
                    details.push(detail);
                }
            }
            Ok(Some((event, details)))
        })
        .await
    }

    /// What a replay of a whole event needs of it (its payload `None` once it expired).
    pub async fn stored_event(&self, id: &str) -> Result<Option<StoredEvent>, StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.stored_event(id).await;
        }
        let id = id.to_string();
        self.read(move |c| reads::stored_event(c, &id)).await
    }

    /// Events, newest first; `before` is the id of the previous page's last event.
    pub async fn events(
        &self,
        filter: &EventFilter,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<EventSummary>, StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.events(filter, before, limit).await;
        }
        let (filter, before) = (filter.clone(), before.map(str::to_string));
        self.read(move |c| reads::events(c, &filter, before.as_deref(), limit))
            .await
    }

    /// Like [`Store::events`], each with its payload (for filters on the payload).
    pub async fn events_with_payload(
        &self,
        filter: &EventFilter,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(EventSummary, Vec<u8>)>, StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.events_with_payload(filter, before, limit).await;
        }
        let (filter, before) = (filter.clone(), before.map(str::to_string));
        self.read(move |c| reads::events_with_payload(c, &filter, before.as_deref(), limit))
            .await
    }

    /// A delivery with its attempts.
    pub async fn delivery(&self, id: &str) -> Result<Option<DeliveryView>, StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.delivery(id).await;
        }
        let id = id.to_string();
        self.read(move |c| reads::delivery(c, &id)).await
    }

    /// Deliveries, newest first, without their attempts; `before` is the previous page's last id.
    pub async fn deliveries(
        &self,
        filter: &DeliveryFilter,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeliveryView>, StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.deliveries(filter, before, limit).await;
        }
        let (filter, before) = (filter.clone(), before.map(str::to_string));
        self.read(move |c| reads::deliveries(c, &filter, before.as_deref(), limit))
            .await
    }

    /// A run as the API shows it, with its steps.
    pub async fn run_detail(&self, id: &str) -> Result<Option<RunDetail>, StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.run_detail(id).await;
        }
        let id = id.to_string();
        self.read(move |c| runs::run_detail(c, &id)).await
    }

    /// A run without its steps.
    pub async fn run_summary(&self, id: &str) -> Result<Option<RunSummary>, StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.run_summary(id).await;
        }
        let id = id.to_string();
        self.read(move |c| runs::run_summary(c, &id)).await
    }

    /// Runs, newest first (id order); `before` is the previous page's last id.
    pub async fn runs(
        &self,
        filter: &RunFilter,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RunSummary>, StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.runs(filter, before, limit).await;
        }
        let (filter, before) = (filter.clone(), before.map(str::to_string));
        self.read(move |c| runs::runs(c, &filter, before.as_deref(), limit))
            .await
    }

    /// Failed runs matching `filter`, oldest first, after the run id `after`.
    pub async fn failed_runs(
        &self,
        filter: &FailedRunFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RunSummary>, StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.failed_runs(filter, after, limit).await;
        }
        let (filter, after) = (filter.clone(), after.map(str::to_string));
        self.read(move |c| runs::failed_runs(c, &filter, after.as_deref(), limit))
            .await
    }

    /// Dead letters (dead deliveries and failed runs), newest first; `before` is the id of
    /// the previous page's last entry.
    pub async fn dead_letters(
        &self,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.dead_letters(before, limit).await;
        }
        let before = before.map(str::to_string);
        self.read(move |c| runs::dead_letters(c, before.as_deref(), limit))
            .await
    }

    /// Ids of the dead deliveries matching `filter`, oldest first, after the id `after`.
    pub async fn dead_deliveries(
        &self,
        filter: &DeadFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.dead_deliveries(filter, after, limit).await;
        }
        let (filter, after) = (filter.clone(), after.map(str::to_string));
        self.read(move |c| health::dead_deliveries(c, &filter, after.as_deref(), limit))
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
        if let Some(c) = self.clustered() {
            return c.pg.dead_delivery_page(filter, before, limit).await;
        }
        let (filter, before) = (filter.clone(), before.map(str::to_string));
        self.read(move |c| reads::dead_delivery_page(c, &filter, before.as_deref(), limit))
            .await
    }

    /// The rejected log, newest first; `before` is the cursor (an entry id) of the previous page.
    pub async fn rejections(
        &self,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<RejectionView>, StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.rejections(before, limit).await;
        }
        self.read(move |c| reads::rejections(c, before, limit))
            .await
    }

    /// A source's last `limit` events and its last `limit` refusals in the rejected log, read
    /// together on one connection (the console's source page).
    pub async fn events_and_rejections_of(
        &self,
        source: &str,
        limit: usize,
    ) -> Result<(Vec<EventSummary>, Vec<RejectionView>), StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.events_and_rejections_of(source, limit).await;
        }
        let source = source.to_string();
        self.read(move |c| {
            let filter = EventFilter {
                source: Some(source.clone()),
                ..Default::default()
            };
            Ok((
                reads::events(c, &filter, None, limit)?,
                reads::rejections_of(c, &source, limit)?,
            ))
        })
        .await
    }

    // The config objects made through the API, and tokens.

    /// Every object made through the API.
    pub async fn api_objects(&self) -> Result<Vec<StoredObject>, StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.api_objects().await;
        }
        self.read(objects::api_objects).await
    }

    /// The schema versions of an event type, oldest first.
    pub async fn schema_versions(
        &self,
        event_type: &str,
    ) -> Result<Vec<SchemaVersion>, StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.schema_versions(event_type).await;
        }
        let event_type = event_type.to_string();
        self.read(move |c| objects::schema_versions(c, &event_type))
            .await
    }

    /// How many deliveries to a destination are not finished (pending).
    pub async fn pending_deliveries_to(&self, destination_id: &str) -> Result<i64, StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.pending_deliveries_to(destination_id).await;
        }
        let id = destination_id.to_string();
        self.read(move |c| objects::pending_deliveries_to(c, &id))
            .await
    }

    /// How many runs of a flow are not finished (running or waiting for their deliveries).
    pub async fn unfinished_runs_of(&self, flow_id: &str) -> Result<i64, StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.unfinished_runs_of(flow_id).await;
        }
        let id = flow_id.to_string();
        self.read(move |c| objects::unfinished_runs_of(c, &id))
            .await
    }

    /// The live tokens, oldest first.
    pub async fn tokens(&self) -> Result<Vec<TokenView>, StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.tokens().await;
        }
        self.read(health::tokens).await
    }

    /// The scope of the live token whose SHA-256 is `hash`.
    pub async fn token_scope(&self, hash: &[u8]) -> Result<Option<String>, StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.token_scope(hash).await;
        }
        let hash = hash.to_vec();
        self.read(move |c| health::token_scope(c, &hash)).await
    }

    // Health: what metrics, alert rules and the console's health views read.

    /// The pending deliveries of each destination, and the oldest due one, by destination id.
    pub async fn backlog(&self, now: Millis) -> Result<Vec<Backlog>, StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.backlog(now).await;
        }
        self.read(move |c| health::backlog(c, now)).await
    }

    /// The backlog, the dead deliveries by destination and the number of failed runs, read
    /// together on one connection (the gauges of `/metrics`).
    pub async fn backlog_dead_and_failed_runs(
        &self,
        now: Millis,
    ) -> Result<(Vec<Backlog>, Vec<(String, i64)>, i64), StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.backlog_dead_and_failed_runs(now).await;
        }
        self.read(move |c| {
            Ok((
                health::backlog(c, now)?,
                health::dead_by_destination(c)?,
                health::failed_run_count(c)?,
            ))
        })
        .await
    }

    /// The size of the rejected log, the backlog, the dead deliveries by destination and the
    /// alert states, read together on one connection (the console's overview).
    pub async fn rejected_backlog_dead_and_alerts(
        &self,
        now: Millis,
    ) -> Result<(i64, Vec<Backlog>, Vec<(String, i64)>, Vec<AlertState>), StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.rejected_backlog_dead_and_alerts(now).await;
        }
        self.read(move |c| {
            Ok((
                reads::count_rejections(c)?,
                health::backlog(c, now)?,
                health::dead_by_destination(c)?,
                health::alert_states(c)?,
            ))
        })
        .await
    }

    /// The last `per_destination` attempts of each of `destination_ids` (in their order), the
    /// backlog and the dead deliveries by destination, read together on one connection (the
    /// console's destinations).
    pub async fn recent_attempts_backlog_and_dead(
        &self,
        destination_ids: Vec<String>,
        per_destination: usize,
        now: Millis,
    ) -> Result<(Vec<Backlog>, Vec<(String, i64)>, Vec<Vec<RecentAttempt>>), StoreError> {
        if let Some(c) = self.clustered() {
            return c
                .pg
                .recent_attempts_backlog_and_dead(destination_ids, per_destination, now)
                .await;
        }
        self.read(move |c| {
            let recent = destination_ids
                .iter()
                .map(|id| health::recent_attempts(c, id, per_destination))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((
                health::backlog(c, now)?,
                health::dead_by_destination(c)?,
                recent,
            ))
        })
        .await
    }

    /// A destination's last `n` attempts, newest first.
    pub async fn recent_attempts(
        &self,
        destination_id: &str,
        n: usize,
    ) -> Result<Vec<RecentAttempt>, StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.recent_attempts(destination_id, n).await;
        }
        let id = destination_id.to_string();
        self.read(move |c| health::recent_attempts(c, &id, n)).await
    }

    /// The outcomes, errors and times of a destination's last `n` attempts, newest first.
    pub async fn last_attempts(
        &self,
        destination_id: &str,
        n: usize,
    ) -> Result<Vec<(String, Option<String>, Millis)>, StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.last_attempts(destination_id, n).await;
        }
        let id = destination_id.to_string();
        self.read(move |c| health::last_attempts(c, &id, n)).await
    }

    /// `(attempts, failed attempts)` of a destination since `since`.
    pub async fn attempt_counts(
        &self,
        destination_id: &str,
        since: Millis,
    ) -> Result<(i64, i64), StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.attempt_counts(destination_id, since).await;
        }
        let id = destination_id.to_string();
        self.read(move |c| health::attempt_counts(c, &id, since))
            .await
    }

    /// `(attempts, failed attempts)` since `since` of each of `destination_ids`, by id, read
    /// together on one connection.
    pub async fn attempt_counts_of(
        &self,
        destination_ids: Vec<String>,
        since: Millis,
    ) -> Result<HashMap<String, (i64, i64)>, StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.attempt_counts_of(destination_ids, since).await;
        }
        self.read(move |c| {
            destination_ids
                .iter()
                .map(|id| Ok((id.clone(), health::attempt_counts(c, id, since)?)))
                .collect::<Result<HashMap<_, _>, StoreError>>()
        })
        .await
    }

    /// Ingest-to-delivery times (ms) of a destination's deliveries that succeeded since `since`,
    /// in the order of their attempts.
    pub async fn delivery_latencies(
        &self,
        destination_id: &str,
        since: Millis,
    ) -> Result<Vec<i64>, StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.delivery_latencies(destination_id, since).await;
        }
        let id = destination_id.to_string();
        self.read(move |c| health::delivery_latencies(c, &id, since))
            .await
    }

    /// The dead deliveries, all of them or those of one destination.
    pub async fn dead_count(&self, destination_id: Option<&str>) -> Result<i64, StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.dead_count(destination_id).await;
        }
        let id = destination_id.map(str::to_string);
        self.read(move |c| health::dead_count(c, id.as_deref()))
            .await
    }

    /// The latest event time of each source that has any, by source.
    pub async fn last_event_per_source(&self) -> Result<Vec<(String, Millis)>, StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.last_event_per_source().await;
        }
        self.read(health::last_event_per_source).await
    }

    /// Every alert rule's stored state, by rule id.
    /// What a polling source kept at its last poll (JSON), if it kept anything.
    pub async fn source_state(&self, source: &str) -> Result<Option<String>, StoreError> {
        let source = source.to_string();
        if let Some(c) = self.clustered() {
            return c.pg.source_state(&source).await;
        }
        self.read(move |c| {
            use rusqlite::OptionalExtension;
            Ok(
                c.prepare_cached("SELECT state FROM source_states WHERE source = ?1")?
                    .query_row([&source], |r| r.get(0))
                    .optional()?,
            )
        })
        .await
    }

    pub async fn alert_states(&self) -> Result<Vec<AlertState>, StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.alert_states().await;
        }
        self.read(health::alert_states).await
    }

    /// The alert states, and the last `changes` changes of each of `alert_ids` (in their
    /// order), read together on one connection.
    pub async fn alert_states_and_history(
        &self,
        alert_ids: Vec<String>,
        changes: usize,
    ) -> Result<(Vec<AlertState>, Vec<Vec<AlertChange>>), StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.alert_states_and_history(alert_ids, changes).await;
        }
        self.read(move |c| {
            let histories = alert_ids
                .iter()
                .map(|id| health::alert_history(c, id, changes))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((health::alert_states(c)?, histories))
        })
        .await
    }

    // Retention.

    /// The database's pages: how large it is and how much of it is free.
    pub async fn space(&self) -> Result<Space, StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.space().await;
        }
        self.read(prune::space).await
    }

    /// When the oldest event kept arrived, if there is one.
    pub async fn oldest_event(&self) -> Result<Option<Millis>, StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.oldest_event().await;
        }
        self.read(prune::oldest_event).await
    }

    // Counts for tests and diagnostics.

    /// The events stored.
    pub async fn count_events(&self) -> Result<i64, StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.count_events().await;
        }
        self.read(reads::count_events).await
    }

    /// The entries of the rejected log.
    pub async fn count_rejections(&self) -> Result<i64, StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.count_rejections().await;
        }
        self.read(reads::count_rejections).await
    }

    /// Raw attempt start times of a delivery, oldest first.
    pub async fn attempt_times(&self, delivery_id: &str) -> Result<Vec<Millis>, StoreError> {
        if let Some(c) = self.clustered() {
            return c.pg.attempt_times(delivery_id).await;
        }
        let id = delivery_id.to_string();
        self.read(move |c| reads::attempt_times(c, &id)).await
    }
}

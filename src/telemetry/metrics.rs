//! The Prometheus metrics: one registry per running Ferry (passed explicitly, never global),
//! rendered in the text format at `GET /metrics`. Counters and histograms move as things
//! happen (through `telemetry::events`); gauges that describe the store (queue depth, oldest
//! due job, dead letters, whether it can write) or the deliverer (circuit state, pauses) are
//! set when the metrics are scraped, and the alerts' at each evaluation.
//!
//! Label values are bounded: sources, destinations, flows and event types come from the
//! config (an unknown source is `unknown`, an undeclared event type `other`), reasons and
//! outcomes from fixed sets.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::collections::HashMap;

pub type Labels = Vec<(&'static str, String)>;

/// Buckets for request and delivery times, in seconds: 1 ms to about 2 minutes.
fn time_buckets() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        120.0,
    ])
}

pub struct Metrics {
    registry: Registry,
    /// Handles to the two counters every ingested event moves, by source (and event type).
    ingest_counters: std::sync::RwLock<IngestCounters>,
    pub events_received: Family<Labels, Counter>,
    pub events_accepted: Family<Labels, Counter>,
    pub events_rejected: Family<Labels, Counter>,
    pub delivery_attempts: Family<Labels, Counter>,
    pub deliveries: Family<Labels, Counter>,
    pub attempt_duration: Family<Labels, Histogram, fn() -> Histogram>,
    pub delivery_latency: Family<Labels, Histogram, fn() -> Histogram>,
    pub runs: Family<Labels, Counter>,
    pub http_step_attempts: Family<Labels, Counter>,
    pub alert_notices: Family<Labels, Counter>,
    pub queue_depth: Family<Labels, Gauge>,
    pub oldest_due_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub dead_letters: Family<Labels, Gauge>,
    pub failed_runs: Gauge,
    pub circuit_state: Family<Labels, Gauge>,
    pub destination_paused: Family<Labels, Gauge>,
    pub poll_failures: Family<Labels, Counter>,
    pub source_failing: Family<Labels, Gauge>,
    pub alert_firing: Family<Labels, Gauge>,
    pub store_writable: Gauge,
    pub store_failed_writes: Counter,
    pub store_failed_checkpoints: Counter,
    pub store_wal_written: Counter,
    pub pruned: Family<Labels, Counter>,
    pub prune_failures: Counter,
    pub oldest_event_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub store_free_pages: Gauge,
    pub vacuumed_pages: Counter,
    /// The last hour minute by minute (events, deliveries, failed attempts).
    pub minutes: super::minutes::PerMinute,
}

/// Handles to counters of `events_received` (by source) and `events_accepted` (by source, then
/// event type), kept so that counting an event on the request path neither builds its labels
/// nor hashes them in the family; a handle moves the same counter the family renders.
#[derive(Default)]
struct IngestCounters {
    received: HashMap<String, Counter>,
    accepted: HashMap<String, HashMap<String, Counter>>,
}

impl Metrics {
    /// Counts a request to `POST /in/{source}`.
    pub fn count_received(&self, source: &str) {
        if let Ok(cache) = self.ingest_counters.read()
            && let Some(counter) = cache.received.get(source)
        {
            counter.inc();
            return;
        }
        let counter = self
            .events_received
            .get_or_create(&vec![("source", source.to_string())])
            .clone();
        counter.inc();
        if let Ok(mut cache) = self.ingest_counters.write() {
            cache.received.insert(source.to_string(), counter);
        }
    }

    /// Counts an accepted event of `source` whose type label is `event_type`.
    pub fn count_accepted(&self, source: &str, event_type: &str) {
        if let Ok(cache) = self.ingest_counters.read()
            && let Some(counter) = cache.accepted.get(source).and_then(|t| t.get(event_type))
        {
            counter.inc();
            return;
        }
        let counter = self
            .events_accepted
            .get_or_create(&vec![
                ("source", source.to_string()),
                ("event_type", event_type.to_string()),
            ])
            .clone();
        counter.inc();
        if let Ok(mut cache) = self.ingest_counters.write() {
            cache
                .accepted
                .entry(source.to_string())
                .or_default()
                .insert(event_type.to_string(), counter);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ferry");
        let m = Metrics {
            events_received: Family::default(),
            events_accepted: Family::default(),
            events_rejected: Family::default(),
            delivery_attempts: Family::default(),
            deliveries: Family::default(),
            attempt_duration: Family::new_with_constructor(time_buckets),
            delivery_latency: Family::new_with_constructor(time_buckets),
            runs: Family::default(),
            http_step_attempts: Family::default(),
            alert_notices: Family::default(),
            queue_depth: Family::default(),
            oldest_due_age: Gauge::default(),
            dead_letters: Family::default(),
            failed_runs: Gauge::default(),
            circuit_state: Family::default(),
            destination_paused: Family::default(),
            poll_failures: Family::default(),
            source_failing: Family::default(),
            alert_firing: Family::default(),
            store_writable: Gauge::default(),
            store_failed_writes: Counter::default(),
            store_failed_checkpoints: Counter::default(),
            store_wal_written: Counter::default(),
            pruned: Family::default(),
            prune_failures: Counter::default(),
            oldest_event_age: Gauge::default(),
            store_free_pages: Gauge::default(),
            vacuumed_pages: Counter::default(),
            registry: Registry::default(),
            ingest_counters: Default::default(),
            minutes: Default::default(),
        };
        registry.register(
            "events_received",
            "Requests to POST /in/{source}, by source",
            m.events_received.clone(),
        );
        registry.register(
            "events_accepted",
            "Events committed (202), by source and event type",
            m.events_accepted.clone(),
        );
        registry.register(
            "events_rejected",
            "Requests refused at ingest, by source and reason (the error code)",
            m.events_rejected.clone(),
        );
        registry.register(
            "delivery_attempts",
            "Delivery attempts, by destination and outcome (succeeded, retry, failed)",
            m.delivery_attempts.clone(),
        );
        registry.register(
            "deliveries",
            "Deliveries finished, by destination and outcome (succeeded, dead)",
            m.deliveries.clone(),
        );
        registry.register_with_unit(
            "delivery_attempt_duration",
            "Time of one delivery attempt, request to response read, by destination",
            Unit::Seconds,
            m.attempt_duration.clone(),
        );
        registry.register_with_unit(
            "delivery_latency",
            "From the event's arrival to its successful delivery, by destination",
            Unit::Seconds,
            m.delivery_latency.clone(),
        );
        registry.register(
            "runs",
            "Flow runs that ended, by flow and status (completed, filtered, failed)",
            m.runs.clone(),
        );
        registry.register(
            "http_step_attempts",
            "Attempts of http steps, by flow and outcome (succeeded, retry, failed)",
            m.http_step_attempts.clone(),
        );
        registry.register(
            "alert_notices",
            "Alert notices sent, by alert, state (firing, resolved) and result (sent, failed)",
            m.alert_notices.clone(),
        );
        registry.register(
            "queue_depth",
            "Pending deliveries (due or waiting for a retry), by destination",
            m.queue_depth.clone(),
        );
        registry.register_with_unit(
            "oldest_due_job_age",
            "How long the oldest due delivery has waited past its due time",
            Unit::Seconds,
            m.oldest_due_age.clone(),
        );
        registry.register(
            "dead_letters",
            "Dead deliveries, by destination",
            m.dead_letters.clone(),
        );
        registry.register(
            "failed_runs",
            "Runs that failed at a step (dead letters of kind run)",
            m.failed_runs.clone(),
        );
        registry.register(
            "circuit_state",
            "Circuit breaker state by destination: 0 closed, 1 open, 2 half-open (probing)",
            m.circuit_state.clone(),
        );
        registry.register(
            "destination_paused",
            "1 when the destination is paused (by hand or automatically), by destination",
            m.destination_paused.clone(),
        );
        registry.register(
            "source_poll_failures",
            "Polls of a polling source that failed (an upstream error, a 429, a network error), by source",
            m.poll_failures.clone(),
        );
        registry.register(
            "source_failing",
            "Consecutive failed polls of a polling source (0 after a poll that worked), by source",
            m.source_failing.clone(),
        );
        registry.register(
            "alert_firing",
            "1 when the alert rule is firing, by alert and severity",
            m.alert_firing.clone(),
        );
        registry.register(
            "store_writable",
            "1 while the store takes writes; 0 after a write failed (a full disk, an I/O error) until one commits again",
            m.store_writable.clone(),
        );
        registry.register(
            "store_failed_writes",
            "Store transactions the disk could not take, the writer's probes while it cannot write included",
            m.store_failed_writes.clone(),
        );
        registry.register(
            "store_failed_checkpoints",
            "Checkpoints (copies of the WAL into the database file) that failed",
            m.store_failed_checkpoints.clone(),
        );
        registry.register_with_unit(
            "store_wal_written",
            "Bytes the store's writer wrote to the WAL (its commits' frames, headers included)",
            Unit::Bytes,
            m.store_wal_written.clone(),
        );
        registry.register(
            "pruned",
            "Rows removed by retention, by what (events, runs, deliveries, attempts, rejections), and events whose bodies were dropped (payloads)",
            m.pruned.clone(),
        );
        registry.register(
            "prune_failures",
            "Retention passes that stopped on a store error (tried again at the next pass)",
            m.prune_failures.clone(),
        );
        registry.register_with_unit(
            "oldest_event_age",
            "Age of the oldest event the store keeps, after the last retention pass",
            Unit::Seconds,
            m.oldest_event_age.clone(),
        );
        registry.register(
            "store_free_pages",
            "Free pages in the database file after the last retention pass (reused by new rows)",
            m.store_free_pages.clone(),
        );
        registry.register(
            "vacuumed_pages",
            "Free pages given back to the file system by incremental vacuum",
            m.vacuumed_pages.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

//! The notable occurrences of Ferry's life, one function each: each writes the log line and
//! moves the metrics of its occurrence, so the two never disagree. Callers give ids and
//! facts; label values are bounded by the caller (config ids, fixed codes).

use super::metrics::{Labels, Metrics};
use super::minutes::{self, Count};
use crate::clock::Millis;

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

/// A request reached `POST /in/{source}`; `source` is a configured id or `unknown`.
pub fn event_received(m: &Metrics, source: &str) {
    m.count_received(source);
}

/// An event was committed. `event_type` is a declared type or `other`.
pub fn event_accepted(
    m: &Metrics,
    event_id: &str,
    source: &str,
    event_type: &str,
    event_type_label: &str,
    deliveries: usize,
) {
    tracing::debug!(event_id, source, event_type, deliveries, "event accepted");
    m.count_accepted(source, event_type_label);
    m.minutes.add(Count::Event, 1, minutes::now_ms());
}

/// A request was refused; `code` is the error code of the answer (`invalid_signature`, ...).
pub fn input_rejected(
    m: &Metrics,
    source: &str,
    source_label: &str,
    status: u16,
    code: &str,
    message: &str,
) {
    tracing::info!(
        source,
        status,
        error = code,
        reason = message,
        "input rejected"
    );
    m.events_rejected
        .get_or_create(&labels(&[("source", source_label), ("reason", code)]))
        .inc();
}

/// What one delivery attempt did.
pub struct DeliveryAttempt<'a> {
    pub delivery_id: &'a str,
    pub event_id: &'a str,
    pub destination_id: &'a str,
    pub attempt: u32,
    pub status: Option<u16>,
    pub error: Option<&'a str>,
    pub duration: std::time::Duration,
    /// `succeeded`, `retry` or `failed` (permanent).
    pub outcome: &'static str,
    /// When it will be tried again; `None` when the delivery is finished.
    pub retry_in_ms: Option<Millis>,
    /// For a successful attempt: from the event's arrival to now.
    pub latency: Option<std::time::Duration>,
}

pub fn delivery_attempted(m: &Metrics, a: &DeliveryAttempt<'_>) {
    let counted = if a.outcome == "succeeded" {
        Count::Delivered
    } else {
        Count::Failed
    };
    m.minutes.add(counted, 1, minutes::now_ms());
    let dest = labels(&[("destination", a.destination_id)]);
    m.attempt_duration
        .get_or_create(&dest)
        .observe(a.duration.as_secs_f64());
    m.delivery_attempts
        .get_or_create(&labels(&[
            ("destination", a.destination_id),
            ("outcome", a.outcome),
        ]))
        .inc();
    let (delivery_id, event_id, destination_id, attempt, status, duration_ms) = (
        a.delivery_id,
        a.event_id,
        a.destination_id,
        a.attempt,
        a.status,
        a.duration.as_millis() as u64,
    );
    let error = a.error.unwrap_or("");
    match (a.outcome, a.retry_in_ms) {
        ("succeeded", _) => {
            tracing::debug!(
                delivery_id,
                event_id,
                destination_id,
                attempt,
                status,
                duration_ms,
                "delivered"
            );
            m.deliveries
                .get_or_create(&labels(&[
                    ("destination", a.destination_id),
                    ("outcome", "succeeded"),
                ]))
                .inc();
            if let Some(latency) = a.latency {
                m.delivery_latency
                    .get_or_create(&dest)
                    .observe(latency.as_secs_f64());
            }
        }
        (_, Some(retry_in_ms)) => tracing::warn!(
            delivery_id,
            event_id,
            destination_id,
            attempt,
            status,
            error,
            retry_in_ms,
            "attempt failed; will retry"
        ),
        (outcome, None) => {
            let reason = if outcome == "failed" {
                "permanent failure"
            } else {
                "attempts exhausted"
            };
            tracing::warn!(
                delivery_id,
                event_id,
                destination_id,
                attempt,
                status,
                error,
                reason,
                "delivery dead-lettered"
            );
            m.deliveries
                .get_or_create(&labels(&[
                    ("destination", a.destination_id),
                    ("outcome", "dead"),
                ]))
                .inc();
        }
    }
}

/// A run reached an end (`completed`, `filtered` or `failed`).
pub fn run_ended(
    m: &Metrics,
    run_id: &str,
    event_id: &str,
    flow_id: &str,
    status: &str,
    error: Option<&str>,
) {
    match status {
        "failed" => tracing::warn!(
            run_id,
            event_id,
            flow_id,
            error = error.unwrap_or(""),
            "run failed"
        ),
        _ => tracing::debug!(run_id, event_id, flow_id, status, "run ended"),
    }
    m.runs
        .get_or_create(&labels(&[("flow", flow_id), ("status", status)]))
        .inc();
}

/// One attempt of an http step.
pub struct StepAttempt<'a> {
    pub run_id: &'a str,
    pub event_id: &'a str,
    pub flow_id: &'a str,
    pub step: &'a str,
    pub attempt: u32,
    pub status: Option<u16>,
    pub duration: std::time::Duration,
    /// `succeeded`, `retry` or `failed`.
    pub outcome: &'static str,
    pub error: Option<&'a str>,
}

pub fn http_step_attempted(m: &Metrics, a: &StepAttempt<'_>) {
    let (run_id, event_id, flow_id, step, attempt, status) =
        (a.run_id, a.event_id, a.flow_id, a.step, a.attempt, a.status);
    let duration_ms = a.duration.as_millis() as u64;
    match a.outcome {
        "succeeded" => tracing::debug!(
            run_id,
            event_id,
            flow_id,
            step,
            attempt,
            status,
            duration_ms,
            "http step succeeded"
        ),
        _ => tracing::warn!(
            run_id,
            event_id,
            flow_id,
            step,
            attempt,
            status,
            error = a.error.unwrap_or(""),
            "http step attempt failed"
        ),
    }
    m.http_step_attempts
        .get_or_create(&labels(&[("flow", a.flow_id), ("outcome", a.outcome)]))
        .inc();
}

/// A destination's circuit changed state (`closed`, `open`, `half_open`).
pub fn circuit_changed(destination_id: &str, from: &str, to: &str, failures: u32) {
    match to {
        "open" => tracing::warn!(
            destination_id,
            from,
            to,
            failures,
            "circuit opened: sending stops for a cool-off"
        ),
        _ => tracing::info!(destination_id, from, to, "circuit changed"),
    }
}

/// A destination was paused or resumed; `by` is `api` or `auto`.
pub fn destination_pause_changed(destination_id: &str, paused: bool, by: &str, reason: &str) {
    if paused {
        tracing::warn!(
            destination_id,
            by,
            reason,
            "destination paused: its deliveries wait"
        );
    } else {
        tracing::info!(destination_id, by, "destination resumed");
    }
}

/// An alert notice was sent (or could not be) on one channel.
pub fn alert_notice(
    m: &Metrics,
    alert_id: &str,
    state: &str,
    channel_id: &str,
    error: Option<&str>,
) {
    match error {
        None => tracing::info!(alert_id, state, channel_id, "alert notice sent"),
        Some(error) => tracing::warn!(
            alert_id,
            state,
            channel_id,
            error,
            "alert notice could not be sent"
        ),
    }
    m.alert_notices
        .get_or_create(&labels(&[
            ("alert", alert_id),
            ("state", state),
            ("result", if error.is_none() { "sent" } else { "failed" }),
        ]))
        .inc();
}

/// A store transaction failed because the disk could not take it (full, an I/O error): it was
/// rolled back and its `writes` callers were answered with the failure (nothing of it was
/// acknowledged).
pub fn store_write_failed(m: &Metrics, reason: &str, writes: usize) {
    tracing::error!(
        reason,
        writes,
        "a store write failed; it was rolled back and nothing of it was acknowledged"
    );
    m.store_failed_writes.inc();
}

/// The store cannot write from now on: the first failure of an outage.
pub fn store_unwritable(reason: &str) {
    tracing::error!(
        reason,
        "the store cannot write: ingest answers 503 and /readyz is not ready until a write commits again; Ferry tries one every second"
    );
}

/// The writer's write, tried while the store cannot write, failed again.
pub fn store_probe_failed(m: &Metrics, reason: &str) {
    tracing::debug!(reason, "the store still cannot write");
    m.store_failed_writes.inc();
}

/// A write committed after the store could not write for `down`.
pub fn store_writable_again(down: std::time::Duration) {
    tracing::warn!(
        down_ms = down.as_millis() as u64,
        "the store writes again; ingest takes events"
    );
}

/// A checkpoint failed (it is tried again every second); `first` of a series is a warning,
/// the repeats are counted and logged at debug level.
pub fn store_checkpoint_failed(m: &Metrics, reason: &str, first: bool) {
    if first {
        tracing::warn!(
            reason,
            "a checkpoint failed; the WAL keeps every commit and Ferry tries again every second"
        );
    } else {
        tracing::debug!(reason, "a checkpoint failed again");
    }
    m.store_failed_checkpoints.inc();
}

/// A commit of the store's writer wrote `bytes` to the WAL. No log line: there is one commit
/// per batch of writes, and the writer logs its batches' figures at debug level.
pub fn store_wal_written(m: &Metrics, bytes: u64) {
    m.store_wal_written.inc_by(bytes);
}

/// Checkpoints work again after `failures` in a row.
pub fn store_checkpoints_resumed(failures: u64) {
    tracing::info!(failures, "checkpoints work again");
}

/// A sync of the database file failed: writes stop until Ferry restarts.
pub fn store_writes_stopped(m: &Metrics, reason: &str) {
    tracing::error!(
        reason,
        "a sync of the database file failed: the store takes no write until Ferry restarts (at start, SQLite copies the WAL into the file again; nothing committed is lost)"
    );
    m.store_failed_checkpoints.inc();
}

/// What one retention pass removed and dropped (`crate::retention`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pruned {
    pub events: u64,
    pub runs: u64,
    pub deliveries: u64,
    pub attempts: u64,
    /// Events whose bodies were dropped.
    pub payloads: u64,
    pub rejections: u64,
    /// Free pages given back to the file system.
    pub vacuumed_pages: u64,
}

/// A retention pass ended: its counts, the age of the oldest event kept, and the free pages
/// left in the database file.
pub fn retention_pass(m: &Metrics, p: &Pruned, oldest_age_ms: Option<Millis>, free_pages: i64) {
    let counts = [
        ("events", p.events),
        ("runs", p.runs),
        ("deliveries", p.deliveries),
        ("attempts", p.attempts),
        ("payloads", p.payloads),
        ("rejections", p.rejections),
    ];
    for (what, n) in counts {
        // Every label exists from the first pass, so a rate of zero reads as zero.
        m.pruned.get_or_create(&labels(&[("what", what)])).inc_by(n);
    }
    m.vacuumed_pages.inc_by(p.vacuumed_pages);
    m.oldest_event_age
        .set(oldest_age_ms.map_or(0.0, |ms| ms.max(0) as f64 / 1000.0));
    m.store_free_pages.set(free_pages);
    let level = p.events + p.payloads + p.rejections + p.vacuumed_pages;
    if level > 0 {
        tracing::info!(
            events = p.events,
            runs = p.runs,
            deliveries = p.deliveries,
            attempts = p.attempts,
            payloads = p.payloads,
            rejections = p.rejections,
            vacuumed_pages = p.vacuumed_pages,
            free_pages,
            "retention pass"
        );
    } else {
        tracing::debug!(free_pages, "retention pass: nothing to prune");
    }
}

/// A retention pass stopped on a store error; what it did before stays done, and the next
/// pass tries again.
pub fn retention_failed(m: &Metrics, error: &str) {
    tracing::warn!(
        error,
        "a retention pass stopped on a store error; the next pass tries again"
    );
    m.prune_failures.inc();
}

/// A graceful stop ended: every attempt and run step in flight finished within the grace, or
/// `left` of them were cut off (they are attempted again after the restart).
pub fn stopped(left: usize, grace: std::time::Duration) {
    if left == 0 {
        tracing::info!("graceful stop: every attempt and step in flight finished and was recorded");
    } else {
        tracing::warn!(
            left,
            grace = %humantime::format_duration(grace),
            "stopped with {left} attempts or steps still in flight after the grace; they are attempted again after the restart"
        );
    }
}

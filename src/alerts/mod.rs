//! Alerts: evaluates each rule of the config every `settings.alert_interval` (on the injected
//! clock) against the store (its rows, and whether it can write), the deliverer's circuits and
//! the sources' activity; when a rule
//! starts or stops firing, sends a notice to its channels (`channels.rs`) and stores its state,
//! so that a restart neither repeats a notice nor forgets that a rule was firing.
//!
//! A rule sends at most one notice per `cooldown`: a rule that starts firing within the
//! cooldown of its last notice fires silently, and its resolution is silent too.

pub mod channels;

use crate::clock::{Millis, SharedClock, rfc3339};
use crate::config::{AlertRule, Condition, Config};
use crate::deliver::Deliverer;
use crate::store::{AlertState, Store, StoreError};
use crate::telemetry::Metrics;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// When each source last accepted an event; kept by ingest, read by `source_silent` rules.
/// Sources made through the API are added with [`SourceActivity::track`].
pub struct SourceActivity {
    last: arc_swap::ArcSwap<HashMap<String, Arc<AtomicI64>>>,
    /// Before any event, a source counts as silent since this time (the process start).
    started_at: Millis,
}

impl SourceActivity {
    pub fn new(
        config: &Config,
        known: Vec<(String, Millis)>,
        started_at: Millis,
    ) -> SourceActivity {
        let known: HashMap<String, Millis> = known.into_iter().collect();
        SourceActivity {
            last: arc_swap::ArcSwap::from_pointee(
                config
                    .sources
                    .keys()
                    .map(|id| {
                        let at = known.get(id).copied().unwrap_or(0);
                        (id.clone(), Arc::new(AtomicI64::new(at)))
                    })
                    .collect(),
            ),
            started_at,
        }
    }

    /// Starts tracking the sources of `config` that are new (silent since now).
    pub fn track(&self, config: &Config, now: Millis) {
        let current = self.last.load_full();
        if config.sources.keys().all(|id| current.contains_key(id)) {
            return;
        }
        let mut next = (*current).clone();
        for id in config.sources.keys() {
            next.entry(id.clone())
                .or_insert_with(|| Arc::new(AtomicI64::new(now)));
        }
        self.last.store(Arc::new(next));
    }

    pub fn seen(&self, source: &str, at: Millis) {
        if let Some(last) = self.last.load().get(source) {
            last.fetch_max(at, Ordering::Relaxed);
        }
    }

    /// Whether the source has had an event (since the process started, or in the store).
    pub fn has_seen(&self, source: &str) -> bool {
        self.last
            .load()
            .get(source)
            .is_some_and(|l| l.load(Ordering::Relaxed) > 0)
    }

    /// The last event's time, or the process start when there has been none.
    pub fn last(&self, source: &str) -> Millis {
        match self
            .last
            .load()
            .get(source)
            .map(|l| l.load(Ordering::Relaxed))
        {
            Some(t) if t > 0 => t,
            _ => self.started_at,
        }
    }
}

/// What a rule's condition looks like now.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub firing: bool,
    /// `destination crm`, `source shop`, `dead letters`, `backlog`, `store`.
    pub subject: String,
    /// What is wrong (or, when not firing, how things stand).
    pub message: String,
}

/// Everything the evaluator reads.
pub struct AlertParts {
    /// Read at every evaluation: rules made through the API count from the next one.
    pub config: crate::config::LiveConfig,
    pub store: Store,
    pub clock: SharedClock,
    pub deliverer: Deliverer,
    pub activity: Arc<SourceActivity>,
    pub metrics: Arc<Metrics>,
    pub client: crate::egress::EgressClient,
    /// Closed when the app is dropped: the evaluator stops with it.
    pub alive: tokio::sync::watch::Receiver<()>,
}

/// A handle to the evaluator: asks for an evaluation now (tests, and anything that must not
/// wait for the next interval).
#[derive(Clone, Default)]
pub struct AlertsHandle {
    now: Option<tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<()>>>,
}

impl AlertsHandle {
    /// Evaluates every rule now and returns once their notices are sent and states stored.
    pub async fn evaluate_now(&self) {
        let Some(tx) = &self.now else { return };
        let (done, wait) = tokio::sync::oneshot::channel();
        if tx.send(done).await.is_ok() {
            let _ = wait.await;
        }
    }
}

/// Starts the evaluator (rules may come later through the API).
pub async fn start(parts: AlertParts) -> Result<AlertsHandle, StoreError> {
    let states: HashMap<String, AlertState> = parts
        .store
        .alert_states()
        .await?
        .into_iter()
        .map(|s| (s.alert_id.clone(), s))
        .collect();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(evaluate_forever(Arc::new(parts), states, rx));
    Ok(AlertsHandle { now: Some(tx) })
}

/// The singleton's name for alert evaluation in cluster mode.
const ALERTS_SINGLETON: &str = "alerts";

use crate::store::postgres::Turn;

async fn evaluate_forever(
    parts: Arc<AlertParts>,
    mut states: HashMap<String, AlertState>,
    mut asked: tokio::sync::mpsc::Receiver<tokio::sync::oneshot::Sender<()>>,
) {
    let interval = parts.config.get().settings.alert_interval.as_millis() as i64;
    let mut next = parts.clock.now_ms() + interval;
    let mut alive = parts.alive.clone();
    // Cluster mode: rules are evaluated on one node at a time, the one that holds the lead.
    let mut lead = crate::store::postgres::Singleton::new(ALERTS_SINGLETON);
    loop {
        let done = tokio::select! {
            _ = parts.clock.sleep_until(next) => None,
            Some(done) = asked.recv() => Some(done),
            _ = alive.changed() => return,
        };
        let now = parts.clock.now_ms();
        if done.is_none() {
            next = now + interval;
        }
        let turn = lead.turn(&parts.store).await;
        if turn == Turn::Others {
            if let Some(done) = done {
                let _ = done.send(());
            }
            continue;
        }
        if turn == Turn::Taken {
            // Another node evaluated until now: its states are the truth.
            match parts.store.alert_states().await {
                Ok(stored) => {
                    states = stored
                        .into_iter()
                        .map(|s| (s.alert_id.clone(), s))
                        .collect();
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the alert states"),
            }
        }
        if parts.store.clustered().is_some() {
            // Events arrive at every node: when each source last had one is read from the
            // store, not from this node's own count.
            match parts.store.last_event_per_source().await {
                Ok(seen) => {
                    for (source, at) in seen {
                        parts.activity.seen(&source, at);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read when the sources last had events")
                }
            }
        }
        evaluate(&parts, &mut states, now).await;
        if let Some(done) = done {
            let _ = done.send(());
        }
    }
}

async fn evaluate(parts: &AlertParts, states: &mut HashMap<String, AlertState>, now: Millis) {
    let config = parts.config.get();
    {
        for rule in &config.alerts {
            let observed = match observe(parts, rule, now).await {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(alert_id = %rule.id, error = %e, "cannot evaluate the alert rule");
                    continue;
                }
            };
            let previous = states.get(&rule.id).cloned();
            if let Some(state) = step(rule, previous.as_ref(), &observed, now) {
                let announce = state.notified && state.last_notice_at == Some(now);
                let notices = if announce {
                    channels::notify(parts, rule, &state, now).await
                } else {
                    Vec::new()
                };
                // Firing and resolving go in the rule's history, with what was sent.
                let flipped = state.firing != previous.as_ref().is_some_and(|p| p.firing);
                let change = flipped.then(|| crate::store::AlertChange {
                    alert_id: rule.id.clone(),
                    at: now,
                    firing: state.firing,
                    subject: state.subject.clone(),
                    message: state.message.clone(),
                    notices,
                });
                if let Err(e) = parts.store.save_alert(state.clone(), change).await {
                    tracing::error!(alert_id = %rule.id, error = %e, "cannot store the alert state");
                }
                states.insert(rule.id.clone(), state);
            }
        }
        for rule in &config.alerts {
            let firing = states.get(&rule.id).is_some_and(|s| s.firing);
            parts
                .metrics
                .alert_firing
                .get_or_create(&vec![
                    ("alert", rule.id.clone()),
                    ("severity", rule.severity.as_str().to_string()),
                ])
                .set(firing as i64);
        }
    }
}

/// The next state of a rule, when it changes: `firing` flips. A notice is due (`notified`
/// and `last_notice_at == now`) when the rule starts firing outside its cooldown, or stops
/// firing after a notified start.
pub fn step(
    rule: &AlertRule,
    previous: Option<&AlertState>,
    observed: &Observation,
    now: Millis,
) -> Option<AlertState> {
    let was_firing = previous.is_some_and(|p| p.firing);
    if was_firing == observed.firing {
        return None;
    }
    let last_notice_at = previous.and_then(|p| p.last_notice_at);
    let (notified, notice_at) = if observed.firing {
        let quiet = last_notice_at.is_some_and(|t| now - t < rule.cooldown.as_millis() as i64);
        if quiet {
            (false, last_notice_at)
        } else {
            (true, Some(now))
        }
    } else {
        // Resolved: announced when the firing was.
        match previous.is_some_and(|p| p.notified) {
            true => (true, Some(now)),
            false => (false, last_notice_at),
        }
    };
    Some(AlertState {
        alert_id: rule.id.clone(),
        firing: observed.firing,
        since: now,
        message: if observed.firing {
            observed.message.clone()
        } else {
            previous.map(|p| p.message.clone()).unwrap_or_default()
        },
        subject: observed.subject.clone(),
        last_notice_at: notice_at,
        notified,
    })
}

fn human(ms: i64) -> String {
    humantime::format_duration(Duration::from_millis((ms.max(0) / 1000 * 1000) as u64)).to_string()
}

/// What `rule`'s condition sees now: whether it holds, and what to say.
async fn observe(
    parts: &AlertParts,
    rule: &AlertRule,
    now: Millis,
) -> Result<Observation, StoreError> {
    match rule.condition.clone() {
        Condition::DestinationFailing {
            destination,
            consecutive,
        } => destination_failing(parts, destination, consecutive).await,
        Condition::FailureRatio {
            destination,
            above,
            window,
            min_attempts,
        } => failure_ratio(parts, now, destination, above, window, min_attempts).await,
        Condition::DeadLetters { above, destination } => {
            dead_letters(parts, above, destination).await
        }
        Condition::SourceSilent { source, for_ } => source_silent(parts, now, source, for_).await,
        Condition::SourceFailing { source, polls } => source_failing(parts, source, polls).await,
        Condition::BacklogAge { above } => backlog_age(parts, now, above).await,
        Condition::DeliveryLatency {
            destination,
            p99_above,
            window,
        } => delivery_latency(parts, now, destination, p99_above, window).await,
        Condition::DestinationPaused { destination } => {
            destination_paused(parts, destination).await
        }
        Condition::StoreUnwritable {} => store_unwritable(parts).await,
    }
}

/// Whether the last `consecutive` attempts to `destination` all failed.
async fn destination_failing(
    parts: &AlertParts,
    destination: String,
    consecutive: u32,
) -> Result<Observation, StoreError> {
    let store = &parts.store;
    let last = store
        .last_attempts(&destination, consecutive as usize)
        .await?;
    let failing =
        last.len() == consecutive as usize && last.iter().all(|(o, _, _)| o != "succeeded");
    let last_error = last
        .first()
        .and_then(|(_, e, _)| e.clone())
        .unwrap_or_default();
    Ok(Observation {
        firing: failing,
        subject: format!("destination {destination}"),
        message: format!(
            "the last {consecutive} attempts to `{destination}` failed (last error: {last_error})"
        ),
    })
}

/// The share of failed attempts to `destination` in the last `window`.
async fn failure_ratio(
    parts: &AlertParts,
    now: Millis,
    destination: String,
    above: f64,
    window: Duration,
    min_attempts: u32,
) -> Result<Observation, StoreError> {
    let store = &parts.store;
    let since = now - window.as_millis() as i64;
    let (total, failed) = store.attempt_counts(&destination, since).await?;
    let ratio = if total > 0 {
        failed as f64 / total as f64
    } else {
        0.0
    };
    Ok(Observation {
        firing: total >= min_attempts as i64 && ratio > above,
        subject: format!("destination {destination}"),
        message: format!(
            "{:.0}% of {total} attempts to `{destination}` failed in the last {} (limit {:.0}%)",
            ratio * 100.0,
            humantime::format_duration(window),
            above * 100.0
        ),
    })
}

/// The dead letters, all of them or those of one destination.
async fn dead_letters(
    parts: &AlertParts,
    above: u64,
    destination: Option<String>,
) -> Result<Observation, StoreError> {
    let store = &parts.store;
    let count = store.dead_count(destination.as_deref()).await?;
    let subject = match &destination {
        Some(d) => format!("destination {d}"),
        None => "dead letters".to_string(),
    };
    Ok(Observation {
        firing: count > above as i64,
        message: format!(
            "{count} dead letter{}{} (limit {above})",
            if count == 1 { "" } else { "s" },
            destination
                .map(|d| format!(" for `{d}`"))
                .unwrap_or_default()
        ),
        subject,
    })
}

/// How long `source` has been silent.
async fn source_silent(
    parts: &AlertParts,
    now: Millis,
    source: String,
    for_: Duration,
) -> Result<Observation, StoreError> {
    let last = parts.activity.last(&source);
    let silent = now - last;
    Ok(Observation {
        firing: silent > for_.as_millis() as i64,
        subject: format!("source {source}"),
        message: format!(
            "no event from `{source}` for {} (since {}; limit {})",
            human(silent),
            rfc3339(last),
            humantime::format_duration(for_)
        ),
    })
}

/// How many polls of a polling source failed in a row, from what it keeps in the store (in
/// cluster mode the node that polls may not be the one that evaluates).
async fn source_failing(
    parts: &AlertParts,
    source: String,
    polls: u32,
) -> Result<Observation, StoreError> {
    let state: crate::config::poll::PollState = parts
        .store
        .source_state(&source)
        .await?
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    let failing = state.failures >= polls;
    Ok(Observation {
        firing: failing,
        subject: format!("source {source}"),
        message: if state.failures == 0 {
            format!("`{source}` polls without failing")
        } else {
            format!(
                "{} poll{} of `{source}` failed in a row (limit {polls}); the last: {}",
                state.failures,
                if state.failures == 1 { "" } else { "s" },
                state.last_error.as_deref().unwrap_or("no reason kept")
            )
        },
    })
}

/// How long the oldest due delivery has waited.
async fn backlog_age(
    parts: &AlertParts,
    now: Millis,
    above: Duration,
) -> Result<Observation, StoreError> {
    let store = &parts.store;
    let backlog = store.backlog(now).await?;
    let oldest = backlog
        .iter()
        .filter_map(|b| b.oldest_due.map(|t| (t, b.destination_id.clone())))
        .min();
    let (age, to) = match oldest {
        Some((t, d)) => (now - t, d),
        None => (0, String::new()),
    };
    Ok(Observation {
        firing: age > above.as_millis() as i64,
        subject: "backlog".to_string(),
        message: format!(
            "the oldest due delivery{} has waited {} (limit {})",
            if to.is_empty() {
                String::new()
            } else {
                format!(" (to `{to}`)")
            },
            human(age),
            humantime::format_duration(above)
        ),
    })
}

/// The p99 of the latencies of deliveries to `destination` in the last `window`.
async fn delivery_latency(
    parts: &AlertParts,
    now: Millis,
    destination: String,
    p99_above: Duration,
    window: Duration,
) -> Result<Observation, StoreError> {
    let store = &parts.store;
    let since = now - window.as_millis() as i64;
    let mut times = store.delivery_latencies(&destination, since).await?;
    times.sort_unstable();
    let p99 = if times.is_empty() {
        0
    } else {
        times[((times.len() as f64 * 0.99).ceil() as usize).clamp(1, times.len()) - 1]
    };
    Ok(Observation {
        firing: p99 > p99_above.as_millis() as i64,
        subject: format!("destination {destination}"),
        message: format!(
            "p99 delivery latency to `{destination}` is {} ms over the last {} ({} deliveries; limit {})",
            p99,
            humantime::format_duration(window),
            times.len(),
            humantime::format_duration(p99_above)
        ),
    })
}

/// The paused destinations, all of them or one.
async fn destination_paused(
    parts: &AlertParts,
    destination: Option<String>,
) -> Result<Observation, StoreError> {
    let paused: Vec<(String, crate::deliver::circuit::Pause)> = parts
        .deliverer
        .health()
        .into_iter()
        .filter(|(id, _)| destination.as_ref().is_none_or(|d| d == id))
        .filter_map(|(id, h)| h.paused.map(|p| (id, p)))
        .collect();
    let subject = match (&destination, paused.first()) {
        (Some(d), _) | (None, Some((d, _))) => format!("destination {d}"),
        (None, None) => "destinations".to_string(),
    };
    Ok(Observation {
        firing: !paused.is_empty(),
        subject,
        message: paused
            .iter()
            .map(|(id, p)| format!("`{id}` is paused ({}): {}", p.by, p.reason))
            .collect::<Vec<_>>()
            .join("; "),
    })
}

/// Whether the store can write.
async fn store_unwritable(parts: &AlertParts) -> Result<Observation, StoreError> {
    let store = &parts.store;
    let unwritable = store.unwritable();
    Ok(Observation {
        firing: unwritable.is_some(),
        subject: "store".to_string(),
        message: unwritable.map_or_else(
            || "the store writes".to_string(),
            |u| format!("{}; ingest answers 503", u.describe()),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_once_keeps_quiet_in_its_cooldown_and_resolves() {
        let rule = AlertRule {
            id: "r".into(),
            condition: Condition::BacklogAge {
                above: Duration::from_secs(60),
            },
            notify: vec![],
            severity: crate::config::Severity::Warning,
            cooldown: Duration::from_secs(600),
        };
        let firing = Observation {
            firing: true,
            subject: "backlog".into(),
            message: "late".into(),
        };
        let fine = Observation {
            firing: false,
            ..firing.clone()
        };
        let s1 = step(&rule, None, &firing, 1_000).unwrap();
        assert!(s1.firing && s1.notified && s1.last_notice_at == Some(1_000));
        assert_eq!(
            step(&rule, Some(&s1), &firing, 2_000),
            None,
            "no repeat while firing"
        );
        let s2 = step(&rule, Some(&s1), &fine, 3_000).unwrap();
        assert!(
            !s2.firing && s2.notified && s2.last_notice_at == Some(3_000),
            "resolved notice"
        );
        // Firing again inside the cooldown: silent, and so is its resolution.
        let s3 = step(&rule, Some(&s2), &firing, 4_000).unwrap();
        assert!(s3.firing && !s3.notified && s3.last_notice_at == Some(3_000));
        let s4 = step(&rule, Some(&s3), &fine, 5_000).unwrap();
        assert!(!s4.notified);
        // After the cooldown it is announced again.
        let s5 = step(&rule, Some(&s4), &firing, 3_000 + 600_000).unwrap();
        assert!(s5.notified && s5.last_notice_at == Some(603_000));
        assert_eq!(
            step(&rule, None, &fine, 1),
            None,
            "never fired, nothing to resolve"
        );
    }
}

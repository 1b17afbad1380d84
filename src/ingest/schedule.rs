//! Schedule sources: each tick of a `kind: schedule` source's cron pattern, in its time zone,
//! becomes an event that takes a webhook's path from its body on (`ingest::emit`). The tick's
//! time is the event's idempotency key (`tick:<RFC 3339 UTC>`), so a tick is never taken
//! twice, whatever restarts or nodes do. At start a tick missed while Ferry was down runs once
//! (`missed: run_once`: the latest one) or not at all (`skip`); a tick is missed when the
//! source's last event is older than it. In cluster mode the ticks run on one node at a time
//! (the holder of the `schedules` lead).

use crate::clock::Millis;
use crate::config::schedule::{Missed, Schedule, TickPayload};
use crate::state::{AppState, WeakAppState};
use crate::store::postgres::{Singleton, Turn};
use std::collections::HashMap;
use std::time::Duration;

/// The lead whose holder runs the ticks (cluster mode).
const SCHEDULES_SINGLETON: &str = "schedules";

/// How often the loop looks again at the config and the lead without a tick due.
const LOOK_AGAIN: Duration = Duration::from_secs(1);

/// Starts the ticks of every schedule source, today's and those the API adds. `seen` is when
/// each source last had an event, read from the store at start.
pub fn start(app: AppState, seen: Vec<(String, Millis)>) {
    let alive = app.alive.subscribe();
    let clock = app.clock.clone();
    // The next ticks are counted from now, before the loop's first turn: a tick due while the
    // loop starts is not lost.
    let now = clock.now_ms();
    let following = follow_all(&app.config.get(), now);
    tokio::spawn(run(
        app.downgrade(),
        clock,
        seen.into_iter().collect(),
        (following, now),
        alive,
    ));
}

/// A schedule as the loop follows it: its next tick, the source it was computed for, and
/// until its first turn, when the schedule was taken up (to look for a missed tick before it).
struct Following {
    source: std::sync::Arc<crate::config::Source>,
    next: Option<Millis>,
    taken_up_at: Option<Millis>,
}

/// Every schedule of `config`, taken up at `now`.
fn follow_all(config: &crate::config::Config, now: Millis) -> HashMap<String, Following> {
    config
        .sources
        .values()
        .filter_map(|source| {
            let schedule = source.schedule.as_deref()?;
            Some((
                source.id.clone(),
                Following {
                    source: source.clone(),
                    next: schedule.ticks.next_after(now),
                    taken_up_at: Some(now),
                },
            ))
        })
        .collect()
}

/// The loop holds the state only while it works, so that the state ends when the server does.
async fn run(
    weak: WeakAppState,
    clock: crate::clock::SharedClock,
    mut last_event: HashMap<String, Millis>,
    (mut following, mut looked_at): (HashMap<String, Following>, Millis),
    mut alive: tokio::sync::watch::Receiver<()>,
) {
    let mut lead = Singleton::new(SCHEDULES_SINGLETON);
    loop {
        let Some(app) = weak.upgrade() else {
            return;
        };
        let turn = lead.turn(&app.store).await;
        if turn == Turn::Taken {
            // Another node ran the ticks until now: when each source last had an event is in
            // the store.
            match app.store.last_event_per_source().await {
                Ok(seen) => last_event = seen.into_iter().collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read when the sources last had events")
                }
            }
            // Followed from the last look, as at start: a tick due since is not lost (one the
            // other node already took is a duplicate of its idempotency key).
            following = follow_all(&app.config.get(), looked_at);
        }
        if turn != Turn::Others {
            looked_at = tick_due(&app, &mut following, &last_event, looked_at).await;
        } else {
            following.clear();
        }
        drop(app);
        let due = following.values().filter_map(|f| f.next).min();

        tokio::select! {
            _ = clock.sleep_until(due.unwrap_or(Millis::MAX)) => {}
            _ = tokio::time::sleep(LOOK_AGAIN) => {}
            _ = alive.changed() => return,
        }
    }
}

/// Follows the config's schedule sources, and runs the ticks that are due. A schedule new
/// since the last look (`looked_at`), added or changed through the API, is followed from then:
/// a tick between the change and now is not lost. Answers the time of this look.
async fn tick_due(
    app: &AppState,
    following: &mut HashMap<String, Following>,
    last_event: &HashMap<String, Millis>,
    looked_at: Millis,
) -> Millis {
    let config = app.config.get();
    following.retain(|id, _| config.sources.get(id).is_some_and(|s| s.schedule.is_some()));
    let now = app.clock.now_ms();
    for source in config.sources.values() {
        let Some(schedule) = source.schedule.as_deref() else {
            continue;
        };
        let same = following.get(&source.id).is_some_and(|f| {
            f.source
                .schedule
                .as_deref()
                .is_some_and(|s| s.ticks.same_ticks(&schedule.ticks))
        });
        if !same {
            // New since start (through the API), or its pattern or time zone changed.
            following.insert(
                source.id.clone(),
                Following {
                    source: source.clone(),
                    next: schedule.ticks.next_after(looked_at.min(now)),
                    taken_up_at: None,
                },
            );
        }
        let Some(f) = following.get_mut(&source.id) else {
            continue;
        };
        // The payload or event type may have changed: the latest source is the one fired.
        f.source = source.clone();
        if let Some(taken_up) = f.taken_up_at.take()
            && schedule.missed == Missed::RunOnce
            && let Some(latest) = schedule.ticks.latest_at_or_before(taken_up)
            && last_event.get(&source.id).is_some_and(|at| *at < latest)
        {
            // A tick missed while Ferry was down (or no node held the lead).
            spawn_fire(app, source.clone(), latest);
        }
        if let Some(at) = f.next.filter(|at| *at <= now) {
            // Ticks passed while the process was held up are one: the latest.
            let latest = schedule
                .ticks
                .latest_at_or_before(now)
                .unwrap_or(at)
                .max(at);
            spawn_fire(app, source.clone(), latest);
            f.next = schedule.ticks.next_after(now.max(latest));
        }
    }
    now
}

/// Runs a tick in a task of its own: a slow template holds up no other schedule.
fn spawn_fire(app: &AppState, source: std::sync::Arc<crate::config::Source>, at: Millis) {
    let app = app.clone();
    tokio::spawn(async move {
        if let Some(schedule) = source.schedule.as_deref() {
            fire(&app, &source.id, schedule, at).await;
        }
    });
}

/// Emits the event of the tick at `at`.
async fn fire(app: &AppState, source_id: &str, schedule: &Schedule, at: Millis) {
    let scheduled_at = crate::clock::rfc3339(at);
    let payload = match &schedule.payload {
        TickPayload::Fixed(bytes) => bytes.clone(),
        TickPayload::Template(expr) => {
            let tick = serde_json::json!({
                "source": source_id,
                "scheduled_at": scheduled_at,
                "local_time": schedule.ticks.local_time(at),
                "timezone": schedule.ticks.timezone_name,
            });
            let input = serde_json::to_vec(&tick).unwrap_or_default();
            let made = match app.sandbox.read(expr, &input).await {
                Ok(Ok(Some(text))) => serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .filter(serde_json::Value::is_object)
                    .map(|_| text)
                    .ok_or_else(|| "the template's output is not a JSON object".to_string()),
                Ok(Ok(None)) => Err("the template gave no output".to_string()),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(e.to_string()),
            };
            match made {
                Ok(text) => bytes::Bytes::from(text),
                Err(why) => {
                    let message =
                        format!("the tick at {scheduled_at} made no event: `emit.template`: {why}");
                    tracing::warn!(source = %source_id, "{message}");
                    super::record_failure(app, source_id, "template_failed", message).await;
                    return;
                }
            }
        }
    };
    let given = super::Given {
        event_type: schedule.event_type.clone(),
        idempotency_key: Some(format!("tick:{scheduled_at}")),
    };
    match super::emit(app, source_id, payload, Some(given)).await {
        Ok((event_id, duplicate)) => {
            tracing::info!(source = %source_id, %scheduled_at, %event_id, duplicate, "schedule ticked")
        }
        Err(why) => {
            tracing::warn!(source = %source_id, %scheduled_at, "the tick's event was not taken: {why}")
        }
    }
}

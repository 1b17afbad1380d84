//! Schedule sources on an injected clock: ticks in a time zone become events (a fixed payload,
//! or one a jq template makes), a restart runs a missed tick once or skips it as configured,
//! and no tick is ever taken twice.

use crate::helpers::*;
use ferry::clock::ManualClock;
use serde_json::{Value, json};

const CONFIG: &str = r#"
sources:
  - id: every5
    kind: schedule
    cron: "*/5 * * * *"
    timezone: Europe/Paris
    missed: run_once
    emit: { event_type: tick.five, payload: { hello: world } }
  - id: skipper
    kind: schedule
    cron: "*/5 * * * *"
    missed: skip
    emit: { event_type: tick.skip, template: '{at: .scheduled_at, local: .local_time, tz: .timezone, from: .source}' }
  - id: broken
    kind: schedule
    cron: "0 12 * * *"
    emit: { event_type: tick.broken, template: 'error("no report today")' }
"#;

#[tokio::test]
async fn ticks_become_events_and_a_restart_runs_a_missed_tick_once_or_skips_it() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(at("2026-12-06T10:02:30Z"));
    let app = spawn_app_at(CONFIG, dir.path(), clock.clone(), None).await;

    set_clock(&clock, "2026-12-06T10:05:00Z");
    let ticks = wait_count(&app, "every5", 1).await;
    assert_eq!(ticks[0]["event_type"], "tick.five");
    assert_eq!(ticks[0]["payload"], json!({"hello": "world"}));
    assert_eq!(ticks[0]["idempotency_key"], "tick:2026-12-06T10:05:00.000Z");
    // The template is run on the tick: Paris is UTC+1 in December.
    let made = wait_count(&app, "skipper", 1).await;
    assert_eq!(
        made[0]["payload"],
        json!({"at": "2026-12-06T10:05:00.000Z", "local": "2026-12-06T10:05:00+00:00", "tz": "UTC", "from": "skipper"})
    );

    set_clock(&clock, "2026-12-06T10:09:59Z");
    set_clock(&clock, "2026-12-06T10:10:00Z");
    let ticks = wait_count(&app, "every5", 2).await;
    assert_eq!(ticks[1]["idempotency_key"], "tick:2026-12-06T10:10:00.000Z");
    wait_count(&app, "skipper", 2).await;
    let refused = app.post_json("/in/every5", "{}", &[]).await;
    assert_eq!(refused.status(), 405);
    let answer: Value = refused.json().await.unwrap();
    assert_eq!(answer["error"], "not_a_webhook", "{answer}");
    stop(app).await;

    // Down from 10:10 to 10:27: the 10:15, 10:20 and 10:25 ticks were missed. `run_once` runs
    // the latest of them once; `skip` runs none.
    set_clock(&clock, "2026-12-06T10:27:00Z");
    let app = spawn_app_at(CONFIG, dir.path(), clock.clone(), None).await;
    let ticks = wait_count(&app, "every5", 3).await;
    assert_eq!(ticks[2]["idempotency_key"], "tick:2026-12-06T10:25:00.000Z");
    set_clock(&clock, "2026-12-06T10:30:00Z");
    wait_count(&app, "every5", 4).await;
    let skipped = wait_count(&app, "skipper", 3).await;
    assert_eq!(
        skipped[2]["payload"]["at"], "2026-12-06T10:30:00.000Z",
        "the skipper went from 10:10 straight to 10:30"
    );
    stop(app).await;

    // A restart at the time of the last tick runs nothing again.
    let app = spawn_app_at(CONFIG, dir.path(), clock.clone(), None).await;
    set_clock(&clock, "2026-12-06T10:35:00Z");
    let ticks = wait_count(&app, "every5", 5).await;
    let keys: Vec<&str> = ticks
        .iter()
        .map(|t| t["idempotency_key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "tick:2026-12-06T10:05:00.000Z",
            "tick:2026-12-06T10:10:00.000Z",
            "tick:2026-12-06T10:25:00.000Z",
            "tick:2026-12-06T10:30:00.000Z",
            "tick:2026-12-06T10:35:00.000Z"
        ]
    );
    wait_count(&app, "skipper", 4).await;

    // A template that fails makes no event, and says why in the rejected log.
    set_clock(&clock, "2026-12-06T12:00:00Z");
    wait_until("the failed tick is in the rejected log", || async {
        let (_, log) = app.api_get("/api/v1/rejections?limit=10").await;
        log["data"].as_array().unwrap().iter().any(|r| {
            r["source"] == "broken"
                && r["error"] == "template_failed"
                && r["reason"].as_str().unwrap().contains("no report today")
        })
    })
    .await;
    assert!(events_of(&app, "broken").await.is_empty());
    // The others went on.
    wait_count(&app, "every5", 6).await;
}

#[tokio::test]
async fn schedules_added_through_the_api_tick_and_bad_ones_are_refused() {
    let clock = ManualClock::new(at("2026-03-29T00:30:00Z"));
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_at(
        "sources: [ { id: hook, kind: webhook, verify: { scheme: none } } ]",
        dir.path(),
        clock.clone(),
        None,
    )
    .await;
    // 01:30 in Paris, every day. It is 01:30 there now; the clocks go forward an hour tonight,
    // so the next 01:30 is 23:30 UTC.
    let spec = json!({"id": "daily", "kind": "schedule", "cron": "30 1 * * *", "timezone": "Europe/Paris", "emit": {"event_type": "daily", "payload": {"n": 1}}});
    let (status, answer) = app
        .api_send(reqwest::Method::POST, "/api/v1/sources", Some(spec))
        .await;
    assert_eq!(status, 201, "{answer}");
    set_clock(&clock, "2026-03-29T23:30:00Z");
    let ticks = wait_count(&app, "daily", 1).await;
    assert_eq!(ticks[0]["idempotency_key"], "tick:2026-03-29T23:30:00.000Z");

    for (spec, says) in [
        (json!({"id": "b1", "kind": "schedule", "cron": "61 * * * *", "emit": {"event_type": "t"}}), "is not a cron pattern"),
        (json!({"id": "b2", "kind": "schedule", "cron": "0 0 30 2 *", "emit": {"event_type": "t"}}), "never fires"),
        (json!({"id": "b3", "kind": "schedule", "cron": "* * * * *", "timezone": "Mars/Olympus", "emit": {"event_type": "t"}}), "not a time zone"),
        (json!({"id": "b4", "kind": "schedule", "cron": "* ".repeat(200), "emit": {"event_type": "t"}}), "at most 256"),
        (json!({"id": "b5", "kind": "schedule", "cron": "* * * * *"}), "`emit` is required"),
        (json!({"id": "b6", "kind": "schedule", "cron": "* * * * *", "verify": {"scheme": "none"}, "emit": {"event_type": "t"}}), "does not apply to a schedule"),
        (json!({"id": "b7", "kind": "schedule", "cron": "* * * * *", "missed": "twice", "emit": {"event_type": "t"}}), "not one of skip, run_once"),
        (json!({"id": "b8", "kind": "schedule", "cron": "* * * * *", "emit": {"event_type": "t", "payload": {}, "template": "{}"}}), "not both"),
        (json!({"id": "b9", "kind": "schedule", "cron": "* * * * *", "emit": {"event_type": "t", "template": "{"}}), "emit.template"),
        (json!({"id": "b10", "kind": "webhook", "cron": "* * * * *", "verify": {"scheme": "none"}}), "only to a schedule source"),
        (json!({"id": "b11", "kind": "schedule", "cron": "\u{0}\u{ff}", "emit": {"event_type": "t"}}), "cron"),
    ] {
        let (status, answer) = app
            .api_send(reqwest::Method::POST, "/api/v1/sources", Some(spec.clone()))
            .await;
        assert_eq!(status, 422, "{spec}: {answer}");
        assert!(answer.to_string().contains(says), "{spec}: {answer}");
    }
    // The same app goes on.
    app.accept("/in/hook", r#"{"type":"t"}"#, &[]).await;
}

//! What a hostile review of the sources found (verification presets, body formats,
//! CloudEvents, schedules), each test held to what `docs/sources.md` or `docs/security.md`
//! promises: held-up ticks, daylight-saving nights, CloudEvents' identity and `ce-data`, a batch
//! short of memory, malformed endpoint checks, and secrets in `verify.url` and in errors.

use crate::helpers::*;
use ferry::clock::{Clock, ManualClock};
use serde_json::json;
use std::time::Duration;

/// sources.md, "Held up": "ticks that pass while the process is held up (a stopped VM, a long
/// pause) are run as one, the latest" (the review found the earliest run, with `kill -STOP` on
/// a `* * * * * *` schedule).
#[tokio::test]
async fn ticks_passed_while_held_up_run_as_the_latest() {
    let clock = ManualClock::new(at("2026-12-06T10:02:30Z"));
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_at(
        r#"
sources:
  - { id: every5, kind: schedule, cron: "*/5 * * * *", emit: { event_type: tick, payload: {} } }
"#,
        dir.path(),
        clock.clone(),
        None,
    )
    .await;
    // Held up from before 10:05 until 10:17: 10:05, 10:10 and 10:15 passed.
    set_clock(&clock, "2026-12-06T10:17:00Z");
    let ticks = wait_count(&app, "every5", 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ticks_after = events_of(&app, "every5").await;
    assert_eq!(ticks_after.len(), 1, "the passed ticks are run as one");
    assert_eq!(
        ticks[0]["idempotency_key"], "tick:2026-12-06T10:15:00.000Z",
        "the one run is the latest passed tick"
    );
}

/// A schedule at 02:30 in Paris, which the clock changes skip once a year and repeat once.
const NIGHT: &str = r#"
sources:
  - { id: night, kind: schedule, cron: "30 2 * * *", timezone: Europe/Paris, emit: { event_type: tick, payload: {} } }
"#;

/// sources.md, Schedules: on the night the clocks go forward, a time that does not exist fires
/// at the moment of the change (03:00 CEST, as Vixie cron does); on the night they go back, a
/// time that happens twice fires once.
#[tokio::test]
async fn daylight_saving_nights_fire_as_documented() {
    let clock = ManualClock::new(at("2026-03-28T12:00:00Z"));
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_at(NIGHT, dir.path(), clock.clone(), None).await;
    // 2026-03-29: Paris goes from 02:00 CET to 03:00 CEST; 02:30 does not exist.
    set_clock(&clock, "2026-03-29T01:00:00Z");
    let ticks = wait_count(&app, "night", 1).await;
    assert_eq!(ticks[0]["idempotency_key"], "tick:2026-03-29T01:00:00.000Z");
    drop(app);

    // 2026-10-25: Paris goes back from 03:00 CEST to 02:00 CET; 02:30 happens at 00:30 UTC and
    // at 01:30 UTC, and fires once.
    let clock = ManualClock::new(at("2026-10-24T12:00:00Z"));
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_at(NIGHT, dir.path(), clock.clone(), None).await;
    set_clock(&clock, "2026-10-25T00:30:00Z");
    wait_count(&app, "night", 1).await;
    set_clock(&clock, "2026-10-25T01:30:00Z");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    set_clock(&clock, "2026-10-25T02:00:00Z");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ticks = events_of(&app, "night").await;
    let keys: Vec<&str> = ticks
        .iter()
        .map(|t| t["idempotency_key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["tick:2026-10-25T00:30:00.000Z"]);
}

const CE: &str = r#"
sources:
  - { id: ce, kind: webhook, format: cloudevents, verify: { scheme: none } }
"#;

/// sources.md, CloudEvents: the idempotency key is `source` and `id` joined by a space, "so the
/// same event sent again ... is a duplicate". Two different events whose attributes hold a
/// space make the same key, and the second is answered as a duplicate of the first: it is lost.
#[tokio::test]
async fn different_cloudevents_are_not_duplicates_of_each_other() {
    let app = spawn_app(CE).await;
    let structured = [("content-type", "application/cloudevents+json")];
    let first = json!({"specversion": "1.0", "source": "a b", "id": "c", "type": "t"});
    let second = json!({"specversion": "1.0", "source": "a", "id": "b c", "type": "t"});
    let (status, answer) =
        post_raw(&app, "/in/ce", &structured, first.to_string().as_bytes()).await;
    assert_eq!(status, 202, "{answer}");
    let (status, answer) =
        post_raw(&app, "/in/ce", &structured, second.to_string().as_bytes()).await;
    assert_eq!(
        status, 202,
        "a different event (source `a`, id `b c`) is not a duplicate: {answer}"
    );
    assert_eq!(events_of(&app, "ce").await.len(), 2);
}

/// Binary mode: the data is the body. A `ce-data` header is not an attribute (CloudEvents'
/// JSON format reserves `data`); Ferry takes it as the event's `data` when the body is empty,
/// overwrites it silently when the body is JSON, and with another body answers "has both
/// `data` and `data_base64`". It should be refused as `400 invalid_cloudevent` like the other
/// names that collide (`ce-datacontenttype`).
#[tokio::test]
async fn a_ce_data_header_does_not_become_the_data() {
    let app = spawn_app(CE).await;
    let headers = [
        ("ce-specversion", "1.0"),
        ("ce-id", "1"),
        ("ce-source", "/s"),
        ("ce-type", "t"),
        ("ce-data", "injected"),
    ];
    let (status, answer) = post_raw(&app, "/in/ce", &headers, b"").await;
    let stored = events_of(&app, "ce").await;
    assert!(
        stored.iter().all(|e| e["payload"]["data"] != "injected"),
        "the `ce-data` header became the event's data: {stored:?}"
    );
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"], "invalid_cloudevent", "{answer}");
}

/// sources.md: "If one is refused there ..., the events before it stay taken and the answer
/// says which event it was". When the ingest budget refuses event 1 (each event takes its own
/// share while the whole body's share is still held), the `503` names no event, though event 0
/// was taken; and with `memory.ingest_bytes` = `max_body_size` (allowed) the same batch is
/// refused this way at every retry.
#[tokio::test]
async fn a_batch_refused_for_memory_says_which_event() {
    let app = spawn_app(
        r#"
settings:
  max_body_size: 100000
  memory: { ingest_bytes: 100000 }
sources:
  - { id: ceb, kind: webhook, format: cloudevents, cloudevents: { batch: true }, verify: { scheme: none } }
"#,
    )
    .await;
    let batch = json!([
        {"specversion": "1.0", "id": "a", "source": "/m", "type": "t"},
        {"specversion": "1.0", "id": "b", "source": "/m", "type": "t", "data": "x".repeat(60000)}
    ]);
    let (status, answer) = post_raw(
        &app,
        "/in/ceb",
        &[("content-type", "application/cloudevents-batch+json")],
        batch.to_string().as_bytes(),
    )
    .await;
    let taken = events_of(&app, "ceb").await.len();
    if status != 202 {
        assert!(
            answer["message"]
                .as_str()
                .unwrap_or_default()
                .contains("event 1 of the batch"),
            "{taken} event(s) were taken, and the {status} does not say which event was refused: {answer}"
        );
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn slack_sign(secret: &str, ts: &str, body: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("v0:{ts}:{body}").as_bytes());
    format!("v0={}", hex(&mac.finalize().into_bytes()))
}

/// sources.md, Endpoint checks: Slack's `url_verification` and Zoom's `endpoint.url_validation`
/// are "neither ... stored as an event". One whose `challenge` (or `plainToken`) is missing or
/// not a string falls through to ingest and is stored as an ordinary event (Zoom's, having no
/// idempotency key, once per request).
#[tokio::test]
async fn a_malformed_endpoint_check_is_not_stored_as_an_event() {
    let app = spawn_app(
        r#"
sources:
  - { id: slack, kind: webhook, verify: { scheme: slack, secret: "slack-signing-secret" } }
"#,
    )
    .await;
    let ts = (app.clock.now_ms() / 1000).to_string();
    for body in [
        r#"{"type":"url_verification","challenge":{"a":1}}"#,
        r#"{"type":"url_verification"}"#,
    ] {
        let sig = slack_sign("slack-signing-secret", &ts, body);
        let (status, answer) = post_raw(
            &app,
            "/in/slack",
            &[
                ("content-type", "application/json"),
                ("x-slack-request-timestamp", &ts),
                ("x-slack-signature", &sig),
            ],
            body.as_bytes(),
        )
        .await;
        assert_ne!(status, 202, "{body}: {answer}");
    }
    assert!(events_of(&app, "slack").await.is_empty());
}

/// security.md: "The secret parts of a URL are the password in its user info", and "a URL in
/// an error is shown masked". A source's `verify.url` is shown in full by the API, and quoted
/// in full by the error about its query string.
#[tokio::test]
async fn a_password_in_verify_url_is_masked() {
    let app = spawn_app("sources: [ { id: hook, kind: webhook, verify: { scheme: none } } ]").await;
    let spec = json!({"id": "sq", "kind": "webhook", "verify": {"scheme": "square", "secret": "square-signature-key", "url": "https://user:hunter2@hooks.example.com/in/sq"}});
    let (status, answer) = app
        .api_send(reqwest::Method::POST, "/api/v1/sources", Some(spec))
        .await;
    assert_eq!(status, 201, "{answer}");
    let (_, read) = app.api_get("/api/v1/sources/sq").await;
    assert!(!read.to_string().contains("hunter2"), "{read}");
    let spec = json!({"id": "sq2", "kind": "webhook", "verify": {"scheme": "square", "secret": "square-signature-key", "url": "https://user:hunter2@hooks.example.com/in/sq2?a=1"}});
    let (status, answer) = app
        .api_send(reqwest::Method::POST, "/api/v1/sources", Some(spec))
        .await;
    assert_eq!(status, 422, "{answer}");
    assert!(!answer.to_string().contains("hunter2"), "{answer}");
}

/// A `secret_encoding: base64` secret that is not base64 is refused with the base64 crate's
/// message, which names one character of the secret and where it is (`Invalid symbol 64,
/// offset 7.` for `S3cr3tP@...`); the `whsec` encoding's message deliberately does not.
#[tokio::test]
async fn a_secret_that_is_not_base64_is_not_quoted() {
    let app = spawn_app("sources: [ { id: hook, kind: webhook, verify: { scheme: none } } ]").await;
    let spec = json!({"id": "b64", "kind": "webhook", "verify": {"scheme": "hmac", "header": "x-sig", "secret": "S3cr3tP@ssw0rd!!", "secret_encoding": "base64"}});
    let (status, answer) = app
        .api_send(reqwest::Method::POST, "/api/v1/sources", Some(spec))
        .await;
    assert_eq!(status, 422, "{answer}");
    let text = answer.to_string();
    assert!(
        !text.contains("symbol") && !text.contains("offset"),
        "the message tells a character of the secret and its place: {text}"
    );
}

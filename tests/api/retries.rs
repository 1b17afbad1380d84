//! Retries on an injected clock: the schedule, Retry-After, permanent failures, exhaustion,
//! and a manual retry of a dead letter.

use crate::helpers::*;
use std::time::Duration;

async fn app_for(receiver: &Receiver, retry: &str) -> TestApp {
    spawn_app(&format!(
        r#"
settings: {{ allow_private_destinations: true }}
sources: [ {{ id: s, kind: webhook, verify: {{ scheme: none }} }} ]
destinations: [ {{ id: d, kind: http, url: "{}", retry: {retry}, signing: {{ secret: "{SECRET}" }} }} ]
flows: [ {{ id: f, on: {{ source: s }}, steps: [ {{ deliver: d }} ] }} ]
"#,
        receiver.url
    ))
    .await
}

async fn send(app: &TestApp) -> String {
    let r = app.post_json("/in/s", r#"{"type":"t"}"#, &[]).await;
    assert_eq!(r.status(), 202);
    let event_id = r.json::<serde_json::Value>().await.unwrap()["event_id"]
        .as_str()
        .unwrap()
        .to_string();
    app.only_delivery(&event_id).await["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Gives the server a moment to (wrongly) act, so that an absence can be asserted.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(150)).await;
}

#[tokio::test]
async fn fails_twice_then_succeeds_with_growing_gaps() {
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(500), Reply::status(502)]);
    let app = app_for(
        &receiver,
        "{ max_attempts: 5, initial: 10s, multiplier: 3, jitter: none }",
    )
    .await;
    let delivery = send(&app).await;

    app.wait_attempts(&delivery, 1).await;
    app.clock.advance(Duration::from_secs(9));
    settle().await;
    assert_eq!(receiver.count(), 1, "not before the backoff");
    app.clock.advance(Duration::from_secs(1));
    app.wait_attempts(&delivery, 2).await;
    app.clock.advance(Duration::from_secs(29));
    settle().await;
    assert_eq!(receiver.count(), 2, "the second gap is longer");
    app.clock.advance(Duration::from_secs(1));
    app.wait_attempts(&delivery, 3).await;
    settle().await;
    app.clock.advance(Duration::from_secs(3600));
    settle().await;

    assert_eq!(receiver.count(), 3, "exactly three attempts");
    let times = app.attempt_times(&delivery).await;
    assert_eq!(times.len(), 3);
    assert_eq!((times[1] - times[0], times[2] - times[1]), (10_000, 30_000));
    let ids: Vec<_> = receiver
        .requests()
        .iter()
        .map(|r| r.headers["webhook-id"].clone())
        .collect();
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "webhook-id is stable across retries"
    );
    let (_, events) = app.api_get("/api/v1/events").await;
    let d = app
        .only_delivery(events["data"][0]["id"].as_str().unwrap())
        .await;
    assert_eq!(d["status"], "succeeded");
    let outcomes: Vec<_> = d["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(outcomes, ["retry", "retry", "succeeded"]);
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let receiver = Receiver::start().await;
    receiver.script([Reply {
        status: 503,
        headers: vec![("retry-after", "120".into())],
        delay: Duration::ZERO,
    }]);
    let app = app_for(&receiver, "{ max_attempts: 5, initial: 1s, jitter: none }").await;
    let delivery = send(&app).await;
    app.wait_attempts(&delivery, 1).await;
    let first = app.attempt_times(&delivery).await[0];
    let (_, d) = app.api_get(&format!("/api/v1/deliveries/{delivery}")).await;
    assert_eq!(
        d["next_attempt_at"],
        ferry::clock::rfc3339(first + 120_000),
        "{d}"
    );
    app.clock.advance(Duration::from_secs(119));
    settle().await;
    assert_eq!(
        receiver.count(),
        1,
        "the 1s backoff gave way to Retry-After"
    );
    app.clock.advance(Duration::from_secs(1));
    app.wait_attempts(&delivery, 2).await;
    assert_eq!(receiver.count(), 2);
}

#[tokio::test]
async fn a_400_dead_letters_at_once_and_a_manual_retry_delivers() {
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(400)]);
    let app = app_for(&receiver, "{ max_attempts: 5, initial: 1s }").await;
    let delivery = send(&app).await;
    app.wait_attempts(&delivery, 1).await;
    let (_, d) = app.api_get(&format!("/api/v1/deliveries/{delivery}")).await;
    assert_eq!(d["status"], "dead", "{d}");
    assert_eq!(d["attempts"][0]["status_code"], 400);
    assert_eq!(d["attempts"][0]["outcome"], "failed");
    let (status, dlq) = app.api_get("/api/v1/dead-letters").await;
    assert_eq!(status, 200);
    assert_eq!(dlq["data"][0]["id"], delivery.as_str());
    assert_eq!(dlq["next"], serde_json::Value::Null);

    let (status, body) = app
        .api_post(&format!("/api/v1/deliveries/{delivery}/retry"))
        .await;
    assert_eq!(status, 202, "{body}");
    receiver.wait_for(2).await;
    app.wait_attempts(&delivery, 2).await;
    let (_, d) = app.api_get(&format!("/api/v1/deliveries/{delivery}")).await;
    assert_eq!(d["status"], "succeeded", "{d}");
    let (_, dlq) = app.api_get("/api/v1/dead-letters").await;
    assert_eq!(dlq["data"].as_array().unwrap().len(), 0);

    let (status, body) = app
        .api_post(&format!("/api/v1/deliveries/{delivery}/retry"))
        .await;
    assert_eq!(
        (status.as_u16(), body["error"].as_str()),
        (409, Some("not_dead"))
    );
    let (status, _) = app.api_post("/api/v1/deliveries/dlv_nope/retry").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn exhausted_retries_dead_letter() {
    let receiver = Receiver::start_with(Reply::status(500)).await;
    let app = app_for(
        &receiver,
        "{ max_attempts: 3, initial: 1s, multiplier: 2, jitter: none }",
    )
    .await;
    let delivery = send(&app).await;
    app.wait_attempts(&delivery, 1).await;
    app.clock.advance(Duration::from_secs(1));
    app.wait_attempts(&delivery, 2).await;
    app.clock.advance(Duration::from_secs(2));
    app.wait_attempts(&delivery, 3).await;
    app.clock.advance(Duration::from_secs(3600));
    settle().await;
    assert_eq!(receiver.count(), 3);
    let (_, d) = app.api_get(&format!("/api/v1/deliveries/{delivery}")).await;
    assert_eq!(d["status"], "dead");
    assert_eq!(d["last_error"], "HTTP 500");
    let (_, dlq) = app.api_get("/api/v1/dead-letters").await;
    assert_eq!(dlq["data"][0]["id"], delivery.as_str());
}

#[tokio::test]
async fn connection_errors_are_retried() {
    // Port 1 (tcpmux): a privileged port nothing on these machines listens on. (A port
    // freed by another test could be taken by a receiver at any moment.)
    let port = 1;
    let app = spawn_app(&format!(
        r#"
settings: {{ allow_private_destinations: true }}
sources: [ {{ id: s, kind: webhook, verify: {{ scheme: none }} }} ]
destinations: [ {{ id: d, kind: http, url: "http://127.0.0.1:{port}/", retry: {{ max_attempts: 2, initial: 1s, jitter: none }} }} ]
flows: [ {{ id: f, on: {{ source: s }}, steps: [ {{ deliver: d }} ] }} ]
"#
    ))
    .await;
    let delivery = send(&app).await;
    app.wait_attempts(&delivery, 1).await;
    let (_, d) = app.api_get(&format!("/api/v1/deliveries/{delivery}")).await;
    assert_eq!(d["status"], "pending");
    assert!(
        d["attempts"][0]["error"]
            .as_str()
            .unwrap()
            .contains("could not connect"),
        "{d}"
    );
    assert_eq!(d["attempts"][0]["status_code"], serde_json::Value::Null);
}

#[tokio::test]
async fn a_scheduled_retry_keeps_its_time_across_a_restart() {
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(500)]);
    let yaml = format!(
        r#"
settings: {{ allow_private_destinations: true }}
sources: [ {{ id: s, kind: webhook, verify: {{ scheme: none }} }} ]
destinations: [ {{ id: d, kind: http, url: "{}", retry: {{ max_attempts: 3, initial: 60s, jitter: none }} }} ]
flows: [ {{ id: f, on: {{ source: s }}, steps: [ {{ deliver: d }} ] }} ]
"#,
        receiver.url
    );
    let dir = tempfile::tempdir().unwrap();
    let clock = ferry::clock::ManualClock::new(ferry::clock::system_now_ms());
    let first = spawn_app_at(&yaml, dir.path(), clock.clone(), None).await;
    let delivery = send(&first).await;
    first.wait_attempts(&delivery, 1).await;
    drop(first);

    // A new process on the same data, with a clock of its own that has moved on by 30s.
    let clock = ferry::clock::ManualClock::new(clock.now_ms() + 30_000);
    let second = spawn_app_at(&yaml, dir.path(), clock, None).await;
    settle().await;
    assert_eq!(
        receiver.count(),
        1,
        "the retry is not due yet after the restart"
    );
    second.clock.advance(Duration::from_secs(29));
    settle().await;
    assert_eq!(receiver.count(), 1);
    second.clock.advance(Duration::from_secs(1));
    second.wait_attempts(&delivery, 2).await;
    let times = second.attempt_times(&delivery).await;
    assert_eq!(
        times[1] - times[0],
        60_000,
        "the retry ran at its stored time"
    );
}

#[tokio::test]
async fn dead_letters_page_without_loss_or_repetition() {
    let receiver = Receiver::start_with(Reply::status(410)).await;
    let app = app_for(&receiver, "{ max_attempts: 3 }").await;
    let mut dead = Vec::new();
    for _ in 0..5 {
        let delivery = send(&app).await;
        app.wait_attempts(&delivery, 1).await;
        dead.push(delivery);
    }
    let mut seen = Vec::new();
    let mut path = "/api/v1/dead-letters?limit=2".to_string();
    loop {
        let (status, page) = app.api_get(&path).await;
        assert_eq!(status, 200, "{page}");
        let items = page["data"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|d| d["id"].as_str().unwrap().to_string()));
        match page["next"].as_str() {
            Some(cursor) => path = format!("/api/v1/dead-letters?limit=2&after={cursor}"),
            None => break,
        }
    }
    // Newest first is id order: ids sort by creation time to the millisecond, and two made
    // in the same millisecond by their random part.
    dead.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, dead, "every dead letter once, newest first");
    let (status, e) = app.api_get("/api/v1/dead-letters?limit=0").await;
    assert_eq!(
        (status.as_u16(), e["error"].as_str()),
        (400, Some("invalid_limit"))
    );
}

#[tokio::test]
async fn replay_by_filter_takes_exactly_the_matching_dead_letters() {
    let (a, b) = (
        Receiver::start_with(Reply::status(500)).await,
        Receiver::start_with(Reply::status(400)).await,
    );
    let app = spawn_app(&format!(
        r#"
settings: {{ allow_private_destinations: true }}
sources: [ {{ id: shop, kind: webhook, verify: {{ scheme: none }} }} ]
destinations:
  - {{ id: a, kind: http, url: "{}", retry: {{ max_attempts: 1 }} }}
  - {{ id: b, kind: http, url: "{}", retry: {{ max_attempts: 1 }} }}
flows: [ {{ id: f, on: {{ source: shop }}, steps: [ {{ deliver: [a, b] }} ] }} ]
"#,
        a.url, b.url
    ))
    .await;
    for n in 0..3 {
        app.accept("/in/shop", &format!(r#"{{"type":"t","n":{n}}}"#), &[])
            .await;
    }
    a.wait_for(3).await;
    b.wait_for(3).await;
    wait_until("six dead letters", || async {
        let (_, d) = app.api_get("/api/v1/dead-letters").await;
        d["data"].as_array().unwrap().len() == 6
    })
    .await;
    let (status, dry) = app
        .api_post_json(
            "/api/v1/dead-letters/replay",
            serde_json::json!({"destination_id": "a", "error": "HTTP 500", "dry_run": true}),
        )
        .await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(dry["matched"], 3);
    assert_eq!(a.count(), 3, "a dry run replays nothing");
    a.set_fallback(Reply::status(200));
    let (status, done) = app
        .api_post_json(
            "/api/v1/dead-letters/replay",
            serde_json::json!({"destination_id": "a"}),
        )
        .await;
    assert_eq!(status, 202, "{done}");
    assert_eq!(done["matched"], 3);
    a.wait_for(6).await;
    wait_until("only b's stay dead", || async {
        let (_, d) = app.api_get("/api/v1/dead-letters").await;
        let left = d["data"].as_array().unwrap().clone();
        left.len() == 3 && left.iter().all(|x| x["destination_id"] == "b")
    })
    .await;
    assert_eq!(b.count(), 3, "b's dead letters were not replayed");
    let a_health = || async {
        let (_, dests) = app.api_get("/api/v1/destinations").await;
        dests["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == "a")
            .unwrap()
            .clone()
    };
    // The receiver counts a request before Ferry records its attempt: wait for the records.
    wait_until("a's replayed attempts recorded", || async {
        a_health().await["last_hour"]["attempts"].as_u64() >= Some(6)
    })
    .await;
    let a_health = a_health().await;
    assert_eq!(a_health["last_hour"]["attempts"], 6, "{a_health}");
    assert_eq!(a_health["last_hour"]["success_ratio"], 0.5, "{a_health}");
}

#[tokio::test]
async fn the_events_list_pages_without_loss_or_repetition() {
    let app = spawn_app("sources: [ { id: shop, kind: webhook, verify: { scheme: none } }, { id: other, kind: webhook, verify: { scheme: none } } ]").await;
    let mut sent = Vec::new();
    for n in 0..53 {
        sent.push(
            app.accept("/in/shop", &format!(r#"{{"type":"t","n":{n}}}"#), &[])
                .await,
        );
    }
    app.accept("/in/other", r#"{"type":"t"}"#, &[]).await;
    let (mut seen, mut after, mut pages) = (Vec::new(), None::<String>, 0);
    loop {
        let path = match &after {
            None => "/api/v1/events?limit=10&source=shop".to_string(),
            Some(a) => format!("/api/v1/events?limit=10&source=shop&after={a}"),
        };
        let (status, page) = app.api_get(&path).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        for e in page["data"].as_array().unwrap() {
            seen.push(e["id"].as_str().unwrap().to_string());
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 6);
    assert_eq!(seen.len(), 53, "no repetition");
    sent.reverse();
    assert_eq!(
        seen, sent,
        "every event once, newest first (the order they were stored in)"
    );
    let (status, bad) = app.api_get("/api/v1/events?limit=0").await;
    assert_eq!(status, 400, "{bad}");
    let (status, bad) = app.api_get("/api/v1/events?limit=ten").await;
    assert_eq!(
        (status.as_u16(), bad["error"].as_str()),
        (400, Some("invalid_query"))
    );
}

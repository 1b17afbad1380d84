//! A repeated idempotency key is acknowledged with the first event's id and runs nothing.

use crate::helpers::*;

#[tokio::test]
async fn the_same_key_twice_runs_once() {
    let receiver = Receiver::start().await;
    let app = spawn_app(&format!(
        r#"
settings: {{ allow_private_destinations: true }}
sources:
  - {{ id: s, kind: webhook, verify: {{ scheme: none }}, idempotency_key: {{ from: header, name: Idempotency-Key }} }}
  - {{ id: b, kind: webhook, verify: {{ scheme: none }}, idempotency_key: {{ from: body, path: ".id" }} }}
destinations: [ {{ id: d, kind: http, url: "{}" }} ]
flows:
  - {{ id: f, on: {{ source: s }}, steps: [ {{ deliver: d }} ] }}
  - {{ id: g, on: {{ source: b }}, steps: [ {{ deliver: d }} ] }}
"#,
        receiver.url
    ))
    .await;
    let key = vec![("idempotency-key", "order-77".to_string())];
    let first = app.post_json("/in/s", r#"{"type":"t"}"#, &key).await;
    assert_eq!(first.status(), 202);
    let first: serde_json::Value = first.json().await.unwrap();
    let again = app
        .post_json("/in/s", r#"{"type":"t","changed":true}"#, &key)
        .await;
    assert_eq!(again.status(), 200);
    let again: serde_json::Value = again.json().await.unwrap();
    assert_eq!(again["event_id"], first["event_id"]);
    assert_eq!(again["duplicate"], true);

    // The key is per source, and may come from the body.
    let other = app
        .post_json("/in/b", r#"{"type":"t","id":"order-77"}"#, &[])
        .await;
    assert_eq!(other.status(), 202);
    let other_again = app
        .post_json("/in/b", r#"{"type":"t","id":"order-77"}"#, &[])
        .await;
    assert_eq!(other_again.status(), 200);

    // A key longer than 1024 bytes is refused, and says why; one of 1024 is taken.
    let long = app
        .post_json(
            "/in/b",
            &format!(r#"{{"type":"t","id":"{}"}}"#, "k".repeat(1025)),
            &[],
        )
        .await;
    assert_eq!(long.status(), 422);
    let long: serde_json::Value = long.json().await.unwrap();
    assert_eq!(long["error"], "invalid_idempotency_key");
    assert!(
        long["message"].as_str().unwrap().contains("at most 1024"),
        "{long}"
    );
    let longest = app
        .post_json(
            "/in/b",
            &format!(r#"{{"type":"t","id":"{}"}}"#, "k".repeat(1024)),
            &[],
        )
        .await;
    assert_eq!(longest.status(), 202);

    receiver.wait_for(3).await;
    assert_eq!(app.event_count().await, 3);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(
        receiver.count(),
        3,
        "one delivery per distinct key, none for the repeats"
    );
}

//! One event fans out to three receivers, each checking the signature with the
//! `standardwebhooks` crate rather than Ferry's own code.

use crate::helpers::*;

#[tokio::test]
async fn one_event_reaches_three_receivers_signed() {
    let (fulfillment, crm, accounting) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    let app = spawn_app(&format!(
        r#"
settings: {{ allow_private_destinations: true }}
sources:
  - {{ id: shop, kind: webhook, verify: {{ scheme: standard-webhooks, secret: "{SECRET}" }}, event_type: {{ from: body, path: ".event" }} }}
destinations:
  - {{ id: fulfillment, kind: http, url: "{}", signing: {{ secret: "{SECRET}" }} }}
  - {{ id: crm, kind: http, url: "{}", signing: {{ secret: "{SECRET}" }} }}
  - {{ id: accounting, kind: http, url: "{}", signing: {{ secret: "{SECRET}" }} }}
flows:
  - id: orders
    on: {{ source: shop }}
    steps:
      - filter: '.data.total > 0'
      - deliver: [fulfillment, crm, accounting]
"#,
        fulfillment.url, crm.url, accounting.url
    ))
    .await;
    let body = r#"{"event":"order.created","data":{"order_id":"o-1","total":42}}"#;
    let now = app.clock.now_secs();
    let event_id = app
        .accept("/in/shop", body, &signed_headers(body, "msg_1", now))
        .await;

    let verifier = standardwebhooks::Webhook::new(SECRET).unwrap();
    let mut webhook_ids = Vec::new();
    for receiver in [&fulfillment, &crm, &accounting] {
        receiver.wait_for(1).await;
        let got = &receiver.requests()[0];
        assert_eq!(
            got.body,
            body.as_bytes(),
            "the payload is delivered as it came"
        );
        assert_eq!(got.headers["content-type"], "application/json");
        verifier
            .verify(&got.body, &got.headers)
            .expect("a Standard Webhooks library accepts the signature");
        webhook_ids.push(got.headers["webhook-id"].to_str().unwrap().to_string());
    }
    webhook_ids.dedup();
    assert_eq!(webhook_ids.len(), 3, "each delivery has its own webhook-id");

    let (status, event) = app.api_get(&format!("/api/v1/events/{event_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(event["event_type"], "order.created");
    assert!(
        event["headers"].get("webhook-signature").is_none(),
        "signatures are not stored"
    );
    assert_eq!(event["headers"]["content-type"], "application/json");
    assert_eq!(event["headers"]["webhook-id"], "msg_1");
    // A receiver counts a request before Ferry commits its attempt: wait for the run to settle.
    wait_until("the run is completed", || async {
        let (_, e) = app.api_get(&format!("/api/v1/events/{event_id}")).await;
        e["runs"][0]["status"] == "completed"
    })
    .await;
    let run = &event["runs"][0];
    let deliveries = run["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 3);
    wait_until("all three recorded as succeeded", || async {
        let (_, e) = app.api_get(&format!("/api/v1/events/{event_id}")).await;
        e["runs"][0]["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["status"] == "succeeded")
    })
    .await;
    let (_, event) = app.api_get(&format!("/api/v1/events/{event_id}")).await;
    for d in event["runs"][0]["deliveries"].as_array().unwrap() {
        let attempts = d["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0]["status_code"], 200);
        assert_eq!(attempts[0]["response_body"], "{\"received\":true}");
        assert!(attempts[0]["response_headers"]["content-length"].is_string());
    }

    // A filtered event is stored and its run says so, but nothing is sent.
    let body = r#"{"event":"order.created","data":{"order_id":"o-2","total":0}}"#;
    let event_id = app
        .accept("/in/shop", body, &signed_headers(body, "msg_2", now))
        .await;
    let (_, event) = app.api_get(&format!("/api/v1/events/{event_id}")).await;
    assert_eq!(event["runs"][0]["status"], "filtered");
    assert_eq!(event["runs"][0]["deliveries"].as_array().unwrap().len(), 0);
    assert_eq!(fulfillment.count() + crm.count() + accounting.count(), 3);
}

#[tokio::test]
async fn a_slow_destination_does_not_hold_up_another() {
    let slow = Receiver::start_with(Reply {
        status: 200,
        headers: vec![],
        delay: std::time::Duration::from_secs(30),
    })
    .await;
    let fast = Receiver::start().await;
    let app = spawn_app(&format!(
        r#"
settings: {{ allow_private_destinations: true }}
sources: [ {{ id: s, kind: webhook, verify: {{ scheme: none }} }} ]
destinations:
  - {{ id: slow, kind: http, url: "{}", concurrency: 2, timeout: 60s }}
  - {{ id: fast, kind: http, url: "{}" }}
flows: [ {{ id: f, on: {{ source: s }}, steps: [ {{ deliver: [slow, fast] }} ] }} ]
"#,
        slow.url, fast.url
    ))
    .await;
    for i in 0..10 {
        let r = app
            .post_json("/in/s", &format!(r#"{{"type":"t","n":{i}}}"#), &[])
            .await;
        assert_eq!(r.status(), 202);
    }
    fast.wait_for(10).await;
    assert_eq!(
        slow.count(),
        2,
        "the slow destination has only its concurrency limit in flight"
    );
}

#[tokio::test]
async fn deliveries_reuse_a_kept_alive_connection() {
    let receiver = Receiver::start().await;
    let app = spawn_app(&format!(
        r#"
settings: {{ allow_private_destinations: true }}
sources: [ {{ id: s, kind: webhook, verify: {{ scheme: none }} }} ]
destinations: [ {{ id: d, kind: http, url: "{}" }} ]
flows: [ {{ id: f, on: {{ source: s }}, steps: [ {{ deliver: d }} ] }} ]
"#,
        receiver.url
    ))
    .await;
    for i in 0..5 {
        app.accept("/in/s", &format!(r#"{{"type":"t","n":{i}}}"#), &[])
            .await;
        receiver.wait_for(i + 1).await;
    }
    let peers: std::collections::HashSet<_> = receiver.requests().iter().map(|r| r.peer).collect();
    assert_eq!(
        peers.len(),
        1,
        "five deliveries one after another share one connection: {peers:?}"
    );
}

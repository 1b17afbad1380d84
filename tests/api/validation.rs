//! Refused input: each refusal has its status and a precise error, nothing is stored or
//! delivered, and the rejected log shows it.

use crate::helpers::*;

async fn app_and_receiver() -> (TestApp, Receiver) {
    let receiver = Receiver::start().await;
    let app = spawn_app(&format!(
        r#"
settings: {{ allow_private_destinations: true, max_body_size: 2048 }}
sources:
  - {{ id: shop, kind: webhook, verify: {{ scheme: standard-webhooks, secret: "{SECRET}" }} }}
  - id: gh
    kind: webhook
    verify: {{ scheme: hmac, header: X-Hub-Signature-256, secret: topsecret, encoding: hex, prefix: "sha256=" }}
    event_type: {{ from: header, name: X-GitHub-Event }}
event_types:
  - name: user.created
    schema:
      type: object
      required: [type, data]
      properties:
        data:
          type: object
          required: [email]
          properties:
            email: {{ type: string }}
            age: {{ type: integer, minimum: 0 }}
destinations: [ {{ id: d, kind: http, url: "{}" }} ]
flows:
  - {{ id: f, on: {{ source: shop }}, steps: [ {{ deliver: d }} ] }}
  - {{ id: g, on: {{ source: gh }}, steps: [ {{ deliver: d }} ] }}
"#,
        receiver.url
    ))
    .await;
    (app, receiver)
}

/// Sends a request that must be refused with `status` and error `code`; returns the error body.
async fn expect_refusal(
    app: &TestApp,
    path: &str,
    body: &str,
    headers: &[(&str, String)],
    status: u16,
    code: &str,
) -> serde_json::Value {
    let (got, e) = error_of(app.post_json(path, body, headers).await).await;
    assert_eq!((got, e["error"].as_str()), (status, Some(code)), "{e}");
    e
}

async fn error_of(r: reqwest::Response) -> (u16, serde_json::Value) {
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn every_refusal_has_its_status_and_stores_nothing() {
    let (app, receiver) = app_and_receiver().await;
    let now = app.clock.now_secs();

    let body = "{not json";
    expect_refusal(
        &app,
        "/in/shop",
        body,
        &signed_headers(body, "m1", now),
        400,
        "invalid_json",
    )
    .await;

    let body = r#"{"type":"user.created","data":{"email":"a@b.c"}}"#;
    let mut wrong = signed_headers(body, "m2", now);
    wrong[2].1 = "v1,bm90IHRoZSByaWdodCBzaWduYXR1cmUgYXQgYWxsIQ==".into();
    expect_refusal(&app, "/in/shop", body, &wrong, 401, "invalid_signature").await;

    let stale = signed_headers(body, "m3", now - 600);
    let e = expect_refusal(&app, "/in/shop", body, &stale, 401, "invalid_signature").await;
    assert!(e["message"].as_str().unwrap().contains("timestamp"), "{e}");

    expect_refusal(&app, "/in/nowhere", body, &[], 404, "unknown_source").await;

    let big = format!(r#"{{"type":"user.created","pad":"{}"}}"#, "x".repeat(4096));
    expect_refusal(
        &app,
        "/in/shop",
        &big,
        &signed_headers(&big, "m4", now),
        413,
        "payload_too_large",
    )
    .await;

    let bad = r#"{"type":"user.created","data":{"age":-3}}"#;
    let e = expect_refusal(
        &app,
        "/in/shop",
        bad,
        &signed_headers(bad, "m5", now),
        422,
        "schema_violation",
    )
    .await;
    let mut pointers: Vec<(String, String)> = e["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["pointer"].as_str().unwrap().to_string(),
                d["message"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    pointers.sort();
    assert_eq!(pointers.len(), 2, "{e}");
    assert_eq!(pointers[0].0, "/data");
    assert!(pointers[0].1.contains("email"), "{pointers:?}");
    assert_eq!(pointers[1].0, "/data/age");

    let no_type = r#"{"data":{}}"#;
    expect_refusal(
        &app,
        "/in/shop",
        no_type,
        &signed_headers(no_type, "m6", now),
        422,
        "missing_event_type",
    )
    .await;

    // Generic HMAC (GitHub style): wrong, then right.
    let gh_body = r#"{"action":"opened"}"#;
    let sig = |b: &str| hub_signature(b"topsecret", b);
    let gh = |s: String| {
        vec![
            ("x-github-event", "pull_request".to_string()),
            ("x-hub-signature-256", s),
        ]
    };
    let (status, _) = error_of(
        app.post_json("/in/gh", gh_body, &gh(sig("other body")))
            .await,
    )
    .await;
    assert_eq!(status, 401);

    assert_eq!(app.event_count().await, 0, "no refused input is stored");
    // The rejected log is written behind the answer: wait for it.
    wait_until("8 entries in the rejected log", || async {
        app.state.store.count_rejections().await.unwrap() == 8
    })
    .await;
    let (status, log) = app.api_get("/api/v1/rejections").await;
    assert_eq!(status, 200);
    let entries = log["data"].as_array().unwrap();
    assert_eq!(entries.len(), 8, "{log}");
    assert_eq!(entries[0]["source"], "gh", "newest first");
    let statuses: Vec<i64> = entries
        .iter()
        .map(|e| e["status"].as_i64().unwrap())
        .collect();
    assert_eq!(statuses, [401, 422, 422, 413, 404, 401, 401, 400]);
    assert!(
        entries[2]["reason"].as_str().unwrap().contains("/data/age"),
        "{log}"
    );
    assert_eq!(entries[7]["body"], "{not json");

    let accepted = app.post_json("/in/gh", gh_body, &gh(sig(gh_body))).await;
    assert_eq!(accepted.status(), 202);
    receiver.wait_for(1).await;
    assert_eq!(receiver.count(), 1, "only the accepted event is delivered");
}

#[tokio::test]
async fn the_api_needs_the_token() {
    let (app, _receiver) = app_and_receiver().await;
    let r = app
        .http
        .get(app.url("/api/v1/dead-letters"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = app
        .http
        .get(app.url("/api/v1/dead-letters"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");
    let (status, _) = app.api_get("/api/v1/events/evt_nope").await;
    assert_eq!(status, 404);
    let r = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn deeply_nested_json_is_refused_and_the_server_lives_on() {
    let (app, receiver) = app_and_receiver().await;
    let gh = |body: &str| {
        let sig = hub_signature(b"topsecret", body);
        vec![
            ("x-github-event", "push".to_string()),
            ("x-hub-signature-256", sig),
        ]
    };
    let deep = format!("{}{}", "[".repeat(1000), "]".repeat(1000));
    let (status, e) = error_of(app.post_json("/in/gh", &deep, &gh(&deep)).await).await;
    assert_eq!(
        (status, e["error"].as_str()),
        (400, Some("invalid_json")),
        "{e}"
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("nested deeper than 127 levels"),
        "{e}"
    );
    let fine = r#"{"ok":true}"#;
    assert_eq!(app.post_json("/in/gh", fine, &gh(fine)).await.status(), 202);
    receiver.wait_for(1).await;
}

#[tokio::test]
async fn the_rejected_log_keeps_only_its_size() {
    let app = spawn_app(
        r#"
settings: { rejected_log_size: 5 }
sources: [ { id: s, kind: webhook, verify: { scheme: none } } ]
"#,
    )
    .await;
    for i in 0..20 {
        let r = app.post_json("/in/s", &format!("not json {i}"), &[]).await;
        assert_eq!(r.status(), 400);
    }
    wait_until("the newest rejection is logged", || async {
        let (_, log) = app.api_get("/api/v1/rejections?limit=1").await;
        log["data"][0]["body"] == "not json 19"
    })
    .await;
    let (_, log) = app.api_get("/api/v1/rejections").await;
    let bodies: Vec<&str> = log["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["body"].as_str().unwrap())
        .collect();
    assert_eq!(
        bodies,
        [
            "not json 19",
            "not json 18",
            "not json 17",
            "not json 16",
            "not json 15"
        ]
    );
}

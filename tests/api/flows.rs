//! Multi-step flows end to end: filter, transform, an `http` lookup against a real local API,
//! branch, delivery to different receivers; OAuth2 client credentials; replay of failed runs;
//! `ferry flow test`; jq errors at load and at run time.

use crate::helpers::*;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A small third-party API on a random port: a user lookup, an OAuth2 token endpoint, a
/// protected resource, and an endpoint that fails until it is fixed.
#[derive(Clone, Default)]
struct Api {
    base: String,
    lookups: Arc<AtomicUsize>,
    token_fetches: Arc<AtomicUsize>,
    protected_calls: Arc<AtomicUsize>,
    /// The token the protected resource accepts now.
    valid_token: Arc<Mutex<String>>,
    broken: Arc<AtomicBool>,
    idempotency_keys: Arc<Mutex<Vec<String>>>,
}

async fn lookup(
    State(api): State<Api>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> axum::Json<serde_json::Value> {
    api.lookups.fetch_add(1, Ordering::SeqCst);
    if let Some(key) = headers.get("idempotency-key") {
        api.idempotency_keys
            .lock()
            .unwrap()
            .push(key.to_str().unwrap().to_string());
    }
    let email = q.get("email").cloned().unwrap_or_default();
    axum::Json(match email.as_str() {
        "ann@shop.example" => json!({"found": true, "id": "crm-17"}),
        _ => json!({"found": false}),
    })
}

async fn token(State(api): State<Api>, headers: HeaderMap, body: String) -> impl IntoResponse {
    use base64::Engine;
    let n = api.token_fetches.fetch_add(1, Ordering::SeqCst) + 1;
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok());
    if basic.as_deref() != Some(b"ferry:client-secret".as_slice())
        || !body.contains("grant_type=client_credentials")
    {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "invalid_client"})),
        );
    }
    let value = format!("tok-{n}");
    *api.valid_token.lock().unwrap() = value.clone();
    (
        StatusCode::OK,
        axum::Json(json!({"access_token": value, "token_type": "Bearer", "expires_in": 3600})),
    )
}

async fn protected(State(api): State<Api>, headers: HeaderMap) -> impl IntoResponse {
    api.protected_calls.fetch_add(1, Ordering::SeqCst);
    let expected = format!("Bearer {}", api.valid_token.lock().unwrap());
    if headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(expected.as_str()) {
        (StatusCode::OK, axum::Json(json!({"ok": true})))
    } else {
        (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "invalid_token"})),
        )
    }
}

async fn orders(State(api): State<Api>) -> impl IntoResponse {
    if api.broken.load(Ordering::SeqCst) {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"error": "down"})),
        )
    } else {
        (StatusCode::CREATED, axum::Json(json!({"order": "ord-1"})))
    }
}

impl Api {
    async fn start() -> Api {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = Api {
            base: format!("http://{}", listener.local_addr().unwrap()),
            ..Api::default()
        };
        let app = axum::Router::new()
            .route("/users", axum::routing::get(lookup))
            .route("/token", axum::routing::post(token))
            .route("/protected", axum::routing::get(protected))
            .route("/orders", axum::routing::post(orders))
            .with_state(api.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        api
    }
}

fn body_of(r: &Recorded) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap()
}

#[tokio::test]
async fn a_user_is_filtered_reshaped_looked_up_branched_and_delivered() {
    let api = Api::start().await;
    let (update, create, analytics) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    let app = spawn_app(&format!(
        r#"
settings: {{ allow_private_destinations: true }}
sources: [ {{ id: shop, kind: webhook, verify: {{ scheme: none }} }} ]
event_types: [ {{ name: user.created }} ]
destinations:
  - {{ id: crm-update, kind: http, url: "{}" }}
  - {{ id: crm-create, kind: http, url: "{}" }}
  - {{ id: analytics, kind: http, url: "{}" }}
flows:
  - id: users-to-crm
    on: {{ source: shop, event_types: [user.created] }}
    steps:
      - filter: '.data.plan != "free"'
      - transform: '{{email: .data.email, name: "\(.data.first_name) \(.data.last_name)", plan: .data.plan}}'
      - name: lookup
        http:
          url: "{}/users?email={{{{ .email }}}}"
          headers: {{ x-source: "{{{{ $event.source }}}}" }}
      - branch:
          - when: '$steps.lookup.body.found'
            steps:
              - deliver: {{ to: crm-update, body: '{{id: $steps.lookup.body.id, name, plan}}' }}
          - else:
              - deliver: crm-create
      - deliver: {{ to: analytics, body: '{{event: $event.type, plan, known: $steps.lookup.body.found}}' }}
"#,
        update.url, create.url, analytics.url, api.base
    ))
    .await;
    let user = |email: &str, plan: &str| {
        json!({"type": "user.created", "data": {"email": email, "first_name": "Ann", "last_name": "Lee", "plan": plan}})
            .to_string()
    };
    let free = app
        .accept("/in/shop", &user("zed@shop.example", "free"), &[])
        .await;
    let known = app
        .accept("/in/shop", &user("ann@shop.example", "pro"), &[])
        .await;
    let new = app
        .accept("/in/shop", &user("new@shop.example", "team"), &[])
        .await;

    let free_run = app.run_of(&free, "users-to-crm").await;
    app.wait_run(&free_run, "filtered").await;
    let known_run = app.run_of(&known, "users-to-crm").await;
    let run = app.wait_run(&known_run, "completed").await;
    app.wait_run(&app.run_of(&new, "users-to-crm").await, "completed")
        .await;

    assert_eq!(update.count(), 1);
    assert_eq!(
        body_of(&update.requests()[0]),
        json!({"id": "crm-17", "name": "Ann Lee", "plan": "pro"})
    );
    assert_eq!(create.count(), 1);
    assert_eq!(
        body_of(&create.requests()[0]),
        json!({"email": "new@shop.example", "name": "Ann Lee", "plan": "team"})
    );
    let mut seen: Vec<_> = analytics.requests().iter().map(body_of).collect();
    seen.sort_by_key(|v| v["plan"].as_str().unwrap().to_string());
    assert_eq!(
        seen,
        [
            json!({"event": "user.created", "plan": "pro", "known": true}),
            json!({"event": "user.created", "plan": "team", "known": false}),
        ]
    );
    assert_eq!(
        api.lookups.load(Ordering::SeqCst),
        2,
        "the free user is never looked up"
    );
    // Each lookup carried an idempotency key derived from its run and step.
    let keys = api.idempotency_keys.lock().unwrap().clone();
    assert!(keys.contains(&format!("{known_run}-2")), "{keys:?}");

    // The run shows each step with input, output and status.
    let steps = run["steps"].as_array().unwrap();
    let kinds: Vec<_> = steps
        .iter()
        .map(|s| (s["kind"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("filter", "passed"),
            ("transform", "succeeded"),
            ("http", "succeeded"),
            ("branch", "succeeded"),
            ("deliver", "sent"),
            ("deliver", "sent"),
        ]
    );
    assert_eq!(steps[1]["input"]["data"]["plan"], "pro");
    assert_eq!(
        steps[2]["input"]["email"], "ann@shop.example",
        "the lookup saw the transformed payload"
    );
    assert_eq!(
        steps[2]["output"]["body"],
        json!({"found": true, "id": "crm-17"})
    );
    assert_eq!(steps[2]["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(steps[3]["output"], json!({"case": 0}));
    assert_eq!(steps[4]["deliveries"][0]["destination_id"], "crm-update");
    assert_eq!(steps[4]["deliveries"][0]["status"], "succeeded");
}

#[tokio::test]
async fn oauth2_client_credentials_fetch_once_and_refresh_once_on_401() {
    let api = Api::start().await;
    let app = spawn_app(&format!(
        r#"
settings: {{ allow_private_destinations: true }}
sources: [ {{ id: shop, kind: webhook, verify: {{ scheme: none }} }} ]
flows:
  - id: call
    on: {{ source: shop }}
    steps:
      - name: call
        http:
          url: "{0}/protected"
          auth: {{ oauth2_client_credentials: {{ token_url: "{0}/token", client_id: ferry, client_secret: client-secret, scope: "orders:read" }} }}
          retry: {{ max_attempts: 1 }}
"#,
        api.base
    ))
    .await;
    let mut runs = Vec::new();
    for n in 0..5 {
        let event = app
            .accept("/in/shop", &json!({"type": "x", "n": n}).to_string(), &[])
            .await;
        runs.push(app.run_of(&event, "call").await);
    }
    for run in &runs {
        app.wait_run(run, "completed").await;
    }
    assert_eq!(api.protected_calls.load(Ordering::SeqCst), 5);
    assert_eq!(
        api.token_fetches.load(Ordering::SeqCst),
        1,
        "one token serves every call"
    );

    // The server revokes the token: the next call gets a 401, refreshes once, and succeeds.
    *api.valid_token.lock().unwrap() = "revoked-elsewhere".into();
    api.token_fetches.store(0, Ordering::SeqCst);
    let event = app
        .accept("/in/shop", &json!({"type": "x"}).to_string(), &[])
        .await;
    let run = app.run_of(&event, "call").await;
    app.wait_run(&run, "completed").await;
    assert_eq!(api.token_fetches.load(Ordering::SeqCst), 1, "one refresh");
    assert_eq!(
        api.protected_calls.load(Ordering::SeqCst),
        7,
        "the refused call and its resend"
    );
}

#[tokio::test]
async fn failed_runs_are_dead_letters_and_replay_after_the_fix() {
    let api = Api::start().await;
    api.broken.store(true, Ordering::SeqCst);
    let receiver = Receiver::start_with(Reply::status(503)).await;
    let app = spawn_app(&format!(
        r#"
settings: {{ allow_private_destinations: true }}
sources: [ {{ id: shop, kind: webhook, verify: {{ scheme: none }} }} ]
destinations:
  - {{ id: fulfillment, kind: http, url: "{}", retry: {{ max_attempts: 1 }} }}
flows:
  - id: orders
    on: {{ source: shop, event_types: [] }}
    steps:
      - name: create
        http: {{ method: POST, url: "{}/orders", body: '{{sku: .sku}}', retry: {{ max_attempts: 2, initial: 1s }} }}
      - deliver: {{ to: fulfillment, body: '{{order: $steps.create.body.order}}' }}
  - id: ship
    on: {{ source: shop, event_types: [] }}
    steps:
      - transform: '{{sku}}'
      - deliver: fulfillment
"#,
        receiver.url, api.base
    ))
    .await;
    let event = app
        .accept("/in/shop", r#"{"type":"order.created","sku":"A-1"}"#, &[])
        .await;
    let orders_run = app.run_of(&event, "orders").await;
    let ship_run = app.run_of(&event, "ship").await;

    // The http step fails, waits its backoff on the injected clock, fails again: the run fails.
    wait_until("the first attempt of the http step", || async {
        let (_, run) = app.api_get(&format!("/api/v1/runs/{orders_run}")).await;
        run["steps"][0]["status"] == "retrying"
    })
    .await;
    app.clock.advance(std::time::Duration::from_secs(2));
    let failed = app.wait_run(&orders_run, "failed").await;
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.starts_with("step /steps/0 (http `create`): HTTP 500 (after 2 attempts)"),
        "{error}"
    );
    assert_eq!(failed["steps"][0]["attempts"].as_array().unwrap().len(), 2);
    // The deliver step of the other flow dead-letters its delivery: that run fails too.
    let failed_ship = app.wait_run(&ship_run, "failed").await;
    assert!(
        failed_ship["error"]
            .as_str()
            .unwrap()
            .contains("the delivery to `fulfillment` was dead-lettered"),
        "{failed_ship:#}"
    );
    let (_, dlq) = app.api_get("/api/v1/dead-letters").await;
    let kinds: Vec<_> = dlq["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap().to_string(),
                d["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        kinds.contains(&("run".to_string(), orders_run.clone())),
        "{dlq:#}"
    );
    assert_eq!(
        kinds.len(),
        2,
        "the failed http run and the dead delivery: {dlq:#}"
    );

    // Bulk replay by filter: a dry run counts only the matching flow's failed runs.
    let (status, dry) = app
        .api_post_json(
            "/api/v1/runs/replay",
            json!({"flow_id": "orders", "dry_run": true}),
        )
        .await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(dry["matched"], 1);
    assert_eq!(dry["run_ids"], json!([orders_run]));

    // Fix both, replay: the http step runs again and the rest of the run follows.
    api.broken.store(false, Ordering::SeqCst);
    receiver.set_fallback(Reply::status(200));
    let (status, replay) = app
        .api_post_json(
            "/api/v1/runs/replay",
            json!({"flow_id": "orders", "error": "HTTP 500"}),
        )
        .await;
    assert_eq!(status, 202, "{replay}");
    assert_eq!(replay["replayed"], 1);
    app.wait_run(&orders_run, "completed").await;
    let (status, one) = app
        .api_post_json(&format!("/api/v1/runs/{ship_run}/replay"), json!({}))
        .await;
    assert_eq!(status, 202, "{one}");
    assert_eq!(one["from_step"], "/steps/1");
    app.wait_run(&ship_run, "completed").await;
    let bodies: Vec<_> = receiver.requests().iter().map(body_of).collect();
    assert!(bodies.contains(&json!({"order": "ord-1"})), "{bodies:?}");
    assert_eq!(
        bodies
            .iter()
            .filter(|b| **b == json!({"sku": "A-1"}))
            .count(),
        2,
        "first try and the replay"
    );
    let (status, again) = app
        .api_post(&format!("/api/v1/runs/{ship_run}/replay"))
        .await;
    assert_eq!(status, 409, "{again}");
    assert_eq!(again["error"], "not_failed");
    let (status, _) = app.api_post("/api/v1/runs/run_nope/replay").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn jq_errors_at_run_time_fail_the_step_with_the_message() {
    let receiver = Receiver::start().await;
    let yaml = format!(
        r#"
settings: {{ allow_private_destinations: true }}
sources: [ {{ id: shop, kind: webhook, verify: {{ scheme: none }} }} ]
destinations: [ {{ id: a, kind: http, url: "{}" }} ]
flows:
  - id: totals
    on: {{ source: shop }}
    steps:
      - transform: '{{total: (.amount + 1)}}'
      - deliver: a
"#,
        receiver.url
    );
    let app = spawn_app(&yaml).await;
    let ok = app
        .accept("/in/shop", r#"{"type":"t","amount":1}"#, &[])
        .await;
    let bad = app
        .accept("/in/shop", r#"{"type":"t","amount":"ten"}"#, &[])
        .await;
    app.wait_run(&app.run_of(&ok, "totals").await, "completed")
        .await;
    let run = app
        .wait_run(&app.run_of(&bad, "totals").await, "failed")
        .await;
    let error = run["error"].as_str().unwrap();
    assert!(
        error.starts_with(
            "step /steps/0 (transform): jq expression `{total: (.amount + 1)}` failed: cannot"
        ),
        "{error}"
    );
    assert_eq!(run["steps"][0]["status"], "failed");
    assert_eq!(receiver.count(), 1, "only the good event is delivered");
    // And the server goes on serving.
    let (status, _) = app.api_get("/api/v1/dead-letters").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn an_expression_over_its_time_limit_fails_the_run_not_the_server() {
    let yaml = r#"
sources: [ { id: shop, kind: webhook, verify: { scheme: none } } ]
flows:
  - id: slow
    on: { source: shop }
    steps: [ { filter: 'last(range(3e7)) > 0' } ]
"#;
    let app = spawn_app_with(yaml, |o| {
        o.expression_time_limit = std::time::Duration::from_millis(200)
    })
    .await;
    let event = app.accept("/in/shop", r#"{"type":"t"}"#, &[]).await;
    let run = app
        .wait_run(&app.run_of(&event, "slow").await, "failed")
        .await;
    assert!(
        run["error"]
            .as_str()
            .unwrap()
            .contains("ran longer than 200ms"),
        "{run:#}"
    );
    let (status, _) = app.api_get("/api/v1/dead-letters").await;
    assert_eq!(status, 200);
}

const EVERY_STEP: &str = r#"
settings: { allow_private_destinations: true }
sources: [ { id: shop, kind: webhook, verify: { scheme: none } } ]
event_types: [ { name: user.created } ]
destinations:
  - { id: crm, kind: http, url: "http://127.0.0.1:9/crm", signing: { secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" } }
  - { id: mail, kind: http, url: "http://127.0.0.1:9/mail" }
flows:
  - id: onboard
    on: { source: shop, event_types: [user.created] }
    steps:
      - filter: '.data.plan != "free"'
      - transform: '{email: .data.email, plan: .data.plan}'
      - name: lookup
        http:
          url: "http://127.0.0.1:9/users?email={{ .email }}"
          auth: { bearer: "very-secret-token" }
      - branch:
          - when: '.plan == "pro"'
            steps:
              - deliver: { to: crm, body: '{contact: .email}' }
          - else:
              - deliver: mail
      - delay: 10m
      - deliver: mail
"#;

#[tokio::test]
async fn flow_test_shows_every_step_without_side_effects() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.yaml");
    std::fs::write(&config, EVERY_STEP).unwrap();
    let event = dir.path().join("event.json");
    std::fs::write(
        &event,
        r#"{"type":"user.created","data":{"email":"ann@x.io","plan":"pro"}}"#,
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["flow", "test", "--flow", "onboard", "--config"])
        .arg(&config)
        .arg("--event")
        .arg(&event)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for line in [
        "  1. filter at /steps/0: passed",
        "  2. transform at /steps/1: succeeded",
        r#"     output: {"email":"ann@x.io","plan":"pro"}"#,
        "  3. http `lookup` at /steps/2: not sent",
        "     GET http://127.0.0.1:9/users?email=ann%40x.io",
        "       authorization: (bearer token)",
        "  4. branch at /steps/3: succeeded",
        r#"     output: {"case":0}"#,
        "  5. deliver at /steps/3/branch/0/steps/0: not sent",
        "     to crm: POST http://127.0.0.1:9/crm",
        "       webhook-signature: (set when sent)",
        r#"       body: {"contact":"ann@x.io"}"#,
        "  6. delay at /steps/4: not waited",
        "  7. deliver at /steps/5: not sent",
        "     to mail: POST http://127.0.0.1:9/mail",
        "outcome: completed",
    ] {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
    assert!(!text.contains("very-secret-token"), "{text}");

    // --json, and an unknown flow is a clear error.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["flow", "test", "--json", "--flow", "onboard", "--config"])
        .arg(&config)
        .arg("--event")
        .arg(&event)
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["outcome"], "completed");
    assert_eq!(report["steps"].as_array().unwrap().len(), 7);
    assert_eq!(
        report["steps"][2]["input"],
        json!({"email": "ann@x.io", "plan": "pro"})
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["flow", "test", "--flow", "nope", "--config"])
        .arg(&config)
        .arg("--event")
        .arg(&event)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no flow `nope`"));

    // The same through the API; nothing is sent and nothing is stored.
    let app = spawn_app(EVERY_STEP).await;
    let (status, api_report) = app
        .api_post_json(
            "/api/v1/flows/onboard/test",
            json!({"event": {"type": "user.created", "data": {"email": "bo@x.io", "plan": "free"}}}),
        )
        .await;
    assert_eq!(status, 200, "{api_report}");
    assert_eq!(api_report["outcome"], "filtered");
    assert_eq!(app.event_count().await, 0);
    let (status, _) = app
        .api_post_json("/api/v1/flows/nope/test", json!({"event": {}}))
        .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_run_resumes_at_the_right_step_without_repeating_the_call() {
    let api = Api::start().await;
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
settings: {{ allow_private_destinations: true }}
sources: [ {{ id: shop, kind: webhook, verify: {{ scheme: none }} }} ]
destinations: [ {{ id: crm, kind: http, url: "{}" }} ]
flows:
  - id: enrich
    on: {{ source: shop }}
    steps:
      - name: lookup
        http: {{ url: "{}/users?email={{{{ .email }}}}" }}
      - delay: 2s
      - deliver: {{ to: crm, body: '{{email, crm_id: $steps.lookup.body.id}}' }}
"#,
            receiver.url, api.base
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let (mut child, base) = serve_config(&config, &data, std::process::Stdio::inherit()).await;
    let http = client();
    let answer: serde_json::Value = http
        .post(format!("{base}/in/shop"))
        .body(r#"{"type":"user.created","email":"ann@shop.example"}"#)
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let event_id = answer["event_id"].as_str().unwrap().to_string();
    // Wait until the lookup's result is committed and the run waits on its delay.
    let get = |path: String| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            http.get(format!("{base}{path}"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    let event = get(format!("/api/v1/events/{event_id}")).await;
    let run_id = event["runs"][0]["id"].as_str().unwrap().to_string();
    wait_until("the lookup is committed", || async {
        let run = get(format!("/api/v1/runs/{run_id}")).await;
        run["steps"][0]["status"] == "succeeded" && run["next_at"].is_string()
    })
    .await;
    assert_eq!(api.lookups.load(Ordering::SeqCst), 1);
    assert_eq!(receiver.count(), 0, "the delay has not passed");
    child.start_kill().unwrap();
    child.wait().await.unwrap();

    let (_child, base) = serve_config(&config, &data, std::process::Stdio::inherit()).await;
    receiver.wait_for(1).await;
    assert_eq!(
        body_of(&receiver.requests()[0]),
        json!({"email": "ann@shop.example", "crm_id": "crm-17"})
    );
    assert_eq!(
        api.lookups.load(Ordering::SeqCst),
        1,
        "the completed call is not repeated"
    );
    let run: serde_json::Value = http
        .get(format!("{base}/api/v1/runs/{run_id}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let statuses: Vec<_> = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(statuses, ["succeeded", "waited", "sent"], "{run:#}");
}

#[tokio::test]
async fn basic_and_api_key_auth_reach_the_api() {
    let api = Receiver::start().await;
    let app = spawn_app(&format!(
        r#"
settings: {{ allow_private_destinations: true }}
sources: [ {{ id: shop, kind: webhook, verify: {{ scheme: none }} }} ]
flows:
  - id: calls
    on: {{ source: shop }}
    steps:
      - http: {{ method: POST, url: "{0}", auth: {{ basic: {{ username: ferry, password: pa55 }} }}, body: '{{id}}' }}
      - http: {{ method: POST, url: "{0}", auth: {{ api_key: {{ header: x-api-key, value: k-123 }} }}, headers: {{ idempotency-key: "mine-{{{{ .id }}}}" }} }}
"#,
        api.url
    ))
    .await;
    let event = app
        .accept("/in/shop", r#"{"type":"t","id":"e1"}"#, &[])
        .await;
    app.wait_run(&app.run_of(&event, "calls").await, "completed")
        .await;
    let requests = api.requests();
    assert_eq!(requests.len(), 2);
    // "ferry:pa55" in base64.
    assert_eq!(
        requests[0].headers["authorization"],
        "Basic ZmVycnk6cGE1NQ=="
    );
    assert_eq!(requests[0].headers["content-type"], "application/json");
    assert_eq!(body_of(&requests[0]), json!({"id": "e1"}));
    assert_eq!(requests[1].headers["x-api-key"], "k-123");
    assert_eq!(
        requests[1].headers["idempotency-key"], "mine-e1",
        "a key the step sets wins"
    );
}

#[tokio::test]
async fn replay_uses_the_original_definition_unless_told_to_use_the_current_one() {
    let api = Api::start().await;
    api.broken.store(true, Ordering::SeqCst);
    let receiver = Receiver::start().await;
    let flow = |url_path: &str| {
        format!(
            r#"
settings: {{ allow_private_destinations: true }}
sources: [ {{ id: shop, kind: webhook, verify: {{ scheme: none }} }} ]
destinations: [ {{ id: crm, kind: http, url: "{}" }} ]
flows:
  - id: orders
    on: {{ source: shop }}
    steps:
      - name: create
        http: {{ method: POST, url: "{}{}", retry: {{ max_attempts: 1 }} }}
      - deliver: crm
"#,
            receiver.url, api.base, url_path
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let clock = ferry::clock::ManualClock::new(ferry::clock::system_now_ms());
    let app = spawn_app_at(&flow("/orders"), dir.path(), clock.clone(), None).await;
    let event = app.accept("/in/shop", r#"{"type":"t"}"#, &[]).await;
    let run = app.run_of(&event, "orders").await;
    app.wait_run(&run, "failed").await;
    drop(app);

    // The API is fixed and the flow's definition changed in the config.
    api.broken.store(false, Ordering::SeqCst);
    let app = spawn_app_at(&flow("/orders?v=2"), dir.path(), clock, None).await;
    let (status, refused) = app.api_post(&format!("/api/v1/runs/{run}/replay")).await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"], "flow_changed");
    let (status, replay) = app
        .api_post_json(
            &format!("/api/v1/runs/{run}/replay"),
            json!({"use_current_flow": true}),
        )
        .await;
    assert_eq!(status, 202, "{replay}");
    assert_eq!(replay["from_step"], "/steps/0");
    app.wait_run(&run, "completed").await;
    receiver.wait_for(1).await;
}

#[tokio::test]
async fn retrying_the_dead_delivery_of_a_failed_run_lets_the_run_go_on() {
    let (a, b) = (
        Receiver::start_with(Reply::status(500)).await,
        Receiver::start().await,
    );
    let app = spawn_app(&format!(
        r#"
settings: {{ allow_private_destinations: true }}
sources: [ {{ id: shop, kind: webhook, verify: {{ scheme: none }} }} ]
destinations:
  - {{ id: a, kind: http, url: "{}", retry: {{ max_attempts: 1 }} }}
  - {{ id: b, kind: http, url: "{}" }}
flows:
  - id: two
    on: {{ source: shop }}
    steps: [ {{ deliver: a }}, {{ deliver: b }} ]
"#,
        a.url, b.url
    ))
    .await;
    let event = app.accept("/in/shop", r#"{"type":"t"}"#, &[]).await;
    let run = app.run_of(&event, "two").await;
    let failed = app.wait_run(&run, "failed").await;
    assert_eq!(failed["step_index"], 0);
    assert_eq!(b.count(), 0, "the run stopped at the failed step");
    let delivery = failed["steps"][0]["deliveries"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Dead letters hold the delivery (with its run), not the run a second time.
    let (_, dlq) = app.api_get("/api/v1/dead-letters").await;
    assert_eq!(dlq["data"].as_array().unwrap().len(), 1, "{dlq:#}");
    assert_eq!(dlq["data"][0]["kind"], "delivery");
    assert_eq!(dlq["data"][0]["run_id"], run.as_str());

    a.set_fallback(Reply::status(200));
    let (status, body) = app
        .api_post(&format!("/api/v1/deliveries/{delivery}/retry"))
        .await;
    assert_eq!(status, 202, "{body}");
    app.wait_run(&run, "completed").await;
    assert_eq!(b.count(), 1);
}

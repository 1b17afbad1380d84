//! Operations: `/metrics`, alert rules with their channels (a signed webhook, Slack, email to a
//! real SMTP server started here), the circuit breaker and pausing, on an injected clock.

use crate::helpers::*;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A small SMTP server: accepts every message and keeps its DATA.
struct SmtpServer {
    port: u16,
    mails: Arc<Mutex<Vec<String>>>,
}

impl SmtpServer {
    async fn start() -> SmtpServer {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mails: Arc<Mutex<Vec<String>>> = Arc::default();
        let kept = mails.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let kept = kept.clone();
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut lines = tokio::io::BufReader::new(read).lines();
                    write.write_all(b"220 test.local ESMTP\r\n").await.unwrap();
                    let mut data: Option<String> = None;
                    while let Ok(Some(line)) = lines.next_line().await {
                        if let Some(body) = data.as_mut() {
                            if line == "." {
                                kept.lock().unwrap().push(data.take().unwrap());
                                write.write_all(b"250 queued\r\n").await.unwrap();
                            } else {
                                body.push_str(&line);
                                body.push('\n');
                            }
                            continue;
                        }
                        let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
                        let reply: &[u8] = match verb.as_str() {
                            "EHLO" | "HELO" => b"250-test.local\r\n250 AUTH PLAIN LOGIN\r\n",
                            "AUTH" => b"235 accepted\r\n",
                            "DATA" => {
                                data = Some(String::new());
                                b"354 go ahead\r\n"
                            }
                            "QUIT" => {
                                let _ = write.write_all(b"221 bye\r\n").await;
                                return;
                            }
                            _ => b"250 ok\r\n",
                        };
                        write.write_all(reply).await.unwrap();
                    }
                });
            }
        });
        SmtpServer { port, mails }
    }

    fn count(&self) -> usize {
        self.mails.lock().unwrap().len()
    }
}

/// Moves the clock by one alert interval (1 s in these tests), lets what became due run, and
/// evaluates the alert rules (returning once their notices are sent).
async fn tick(app: &TestApp) {
    app.clock.advance(Duration::from_millis(1_100));
    tokio::time::sleep(Duration::from_millis(50)).await;
    app.state.alerts.evaluate_now().await;
}

#[tokio::test]
async fn destination_failing_fires_once_on_every_channel_and_resolves() {
    let crm = Receiver::start_with(Reply::status(503)).await;
    let (ops, slack) = (Receiver::start().await, Receiver::start().await);
    let smtp = SmtpServer::start().await;
    let app = spawn_app(&format!(
        r#"
settings: {{ allow_private_destinations: true, alert_interval: 1s, public_url: "https://ferry.example" }}
sources: [ {{ id: shop, kind: webhook, verify: {{ scheme: none }} }} ]
destinations:
  - {{ id: crm, kind: http, url: "{}", retry: {{ max_attempts: 10, initial: 1s, max: 1s, jitter: none }}, circuit_breaker: {{ failures: 100 }} }}
flows: [ {{ id: f, on: {{ source: shop }}, steps: [ {{ deliver: crm }} ] }} ]
channels:
  - {{ id: ops, kind: webhook, url: "{}", signing: {{ secret: "{SECRET}" }} }}
  - {{ id: team, kind: slack, url: "{}" }}
  - id: oncall
    kind: email
    smtp: {{ host: 127.0.0.1, port: {}, tls: none, username: ferry, password: smtp-secret-pw }}
    from: ferry@example.com
    to: [oncall@example.com]
alerts:
  - id: crm-down
    when: {{ destination_failing: {{ destination: crm, consecutive: 2 }} }}
    notify: [ops, team, oncall]
    severity: critical
    cooldown: 10m
"#,
        crm.url, ops.url, slack.url, smtp.port
    ))
    .await;
    app.accept("/in/shop", r#"{"type":"t"}"#, &[]).await;
    crm.wait_for(1).await;
    tick(&app).await; // the retry, and an evaluation: 2 failures now
    crm.wait_for(2).await;
    tick(&app).await;
    wait_evaluated(&app, "ops notice 1", || async { ops.count() >= 1 }).await;
    wait_evaluated(&app, "slack notice 1", || async { slack.count() >= 1 }).await;
    wait_evaluated(&app, "the email", || async { smtp.count() == 1 }).await;

    let notice = &notices(&ops)[0];
    assert_eq!(notice["type"], "alert.firing");
    assert_eq!(notice["alert"], "crm-down");
    assert_eq!(notice["severity"], "critical");
    assert_eq!(
        notice["subject"],
        json!({"kind": "destination", "id": "crm"})
    );
    assert!(
        notice["message"]
            .as_str()
            .unwrap()
            .contains("the last 2 attempts to `crm` failed (last error: HTTP 503)"),
        "{notice}"
    );
    assert_eq!(notice["url"], "https://ferry.example/destinations/crm");
    assert!(notice["since"].is_string());
    standardwebhooks::Webhook::new(SECRET)
        .unwrap()
        .verify(&ops.requests()[0].body, &ops.requests()[0].headers)
        .expect("the webhook notice is signed");
    let text = notices(&slack)[0]["text"].as_str().unwrap().to_string();
    assert!(
        text.starts_with("*[critical] crm-down FIRING: destination crm*"),
        "{text}"
    );
    assert!(
        text.contains("<https://ferry.example/destinations/crm|Open in Ferry>"),
        "{text}"
    );
    let mail = smtp.mails.lock().unwrap()[0].clone();
    assert!(
        mail.contains("Subject: [critical] crm-down FIRING: destination crm"),
        "{mail}"
    );
    assert!(mail.contains("To: oncall@example.com"), "{mail}");
    assert!(
        mail.contains("https://ferry.example/destinations/crm"),
        "{mail}"
    );

    // Still failing: no second notice.
    tick(&app).await;
    tick(&app).await;
    assert_eq!(ops.count(), 1);
    let (_, alerts) = app.api_get("/api/v1/alerts").await;
    assert_eq!(alerts["data"][0]["state"], "firing", "{alerts}");

    // The destination recovers: one resolved notice on each channel.
    crm.set_fallback(Reply::status(200));
    tick(&app).await;
    tick(&app).await;
    wait_evaluated(&app, "ops notice 2", || async { ops.count() >= 2 }).await;
    wait_evaluated(&app, "slack notice 2", || async { slack.count() >= 2 }).await;
    wait_evaluated(&app, "the resolved email", || async { smtp.count() == 2 }).await;
    assert_eq!(notices(&ops)[1]["type"], "alert.resolved");
    assert_eq!(notices(&ops)[1]["state"], "resolved");
    let (_, alerts) = app.api_get("/api/v1/alerts").await;
    assert_eq!(alerts["data"][0]["state"], "ok");
    // The rule's history: it fired, then resolved, each with the notices it sent.
    let history = &alerts["data"][0]["history"];
    assert_eq!(history[0]["state"], "resolved", "{history}");
    assert_eq!(history[1]["state"], "firing", "{history}");
    let channels: Vec<&str> = history[1]["notices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["error"].is_null())
        .map(|n| n["channel"].as_str().unwrap())
        .collect();
    assert_eq!(channels, ["ops", "team", "oncall"], "{history}");

    // Failing again within the 10 minute cooldown: firing, but silent.
    crm.set_fallback(Reply::status(503));
    app.accept("/in/shop", r#"{"type":"t"}"#, &[]).await;
    crm.wait_for(4).await;
    tick(&app).await;
    crm.wait_for(5).await;
    wait_evaluated(&app, "the rule fires again", || async {
        tick(&app).await;
        let (_, alerts) = app.api_get("/api/v1/alerts").await;
        alerts["data"][0]["state"] == "firing"
    })
    .await;
    assert_eq!(ops.count(), 2, "no notice within the cooldown");
}

#[tokio::test]
async fn the_other_rule_kinds_fire_and_resolve() {
    let dead_end = Receiver::start_with(Reply::status(400)).await;
    let slow = Receiver::start_with(Reply::status(503)).await;
    let ops = Receiver::start().await;
    let app = spawn_app(&format!(
        r#"
settings: {{ allow_private_destinations: true, alert_interval: 1s }}
sources: [ {{ id: shop, kind: webhook, verify: {{ scheme: none }} }}, {{ id: quiet, kind: webhook, verify: {{ scheme: none }} }} ]
destinations:
  - {{ id: dead-end, kind: http, url: "{}", retry: {{ max_attempts: 1 }} }}
  - {{ id: slow, kind: http, url: "{}", retry: {{ max_attempts: 10, initial: 5s, max: 5s, jitter: none }}, circuit_breaker: {{ failures: 100 }} }}
flows:
  - {{ id: to-dead-end, on: {{ source: shop, event_types: [] }}, steps: [ {{ filter: '.to == "dead-end"' }}, {{ deliver: dead-end }} ] }}
  - {{ id: to-slow, on: {{ source: shop, event_types: [] }}, steps: [ {{ filter: '.to == "slow"' }}, {{ deliver: slow }} ] }}
channels: [ {{ id: ops, kind: webhook, url: "{}" }} ]
alerts:
  - {{ id: dlq, when: {{ dead_letters: {{ above: 0 }} }}, notify: [ops] }}
  - {{ id: silent, when: {{ source_silent: {{ source: quiet, for: 30s }} }}, notify: [ops] }}
  - {{ id: ratio, when: {{ failure_ratio: {{ destination: slow, above: 0.5, window: 1m, min_attempts: 1 }} }}, notify: [ops] }}
  - {{ id: latency, when: {{ delivery_latency: {{ destination: slow, p99_above: 3s, window: 1m }} }}, notify: [ops] }}
  - {{ id: backlog, when: {{ backlog_age: {{ above: 3s }} }}, notify: [ops] }}
"#,
        dead_end.url, slow.url, ops.url
    ))
    .await;
    let fired = |alert: &str, state: &str| {
        let (alert, state) = (alert.to_string(), state.to_string());
        notices(&ops)
            .iter()
            .filter(|n| n["alert"] == alert.as_str() && n["state"] == state.as_str())
            .count()
    };

    // A dead letter, and a delivery to `slow` that fails (then waits 5 s for its retry).
    app.accept("/in/shop", r#"{"type":"t","to":"dead-end"}"#, &[])
        .await;
    app.accept("/in/shop", r#"{"type":"t","to":"slow"}"#, &[])
        .await;
    dead_end.wait_for(1).await;
    slow.wait_for(1).await;
    tick(&app).await;
    wait_evaluated(&app, "dead letters and failure ratio fire", || async {
        fired("dlq", "firing") == 1 && fired("ratio", "firing") == 1
    })
    .await;
    // `slow` recovers: its retry succeeds about 5 s after the event came, so the latency rule
    // fires, and the failure ratio (1 of 2 attempts failed, not above 0.5) resolves.
    slow.set_fallback(Reply::status(200));
    for _ in 0..6 {
        app.clock.advance(Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_evaluated(&app, "the retry", || async { slow.count() >= 2 }).await;
    tick(&app).await;
    wait_evaluated(&app, "latency fires, ratio resolves", || async {
        fired("latency", "firing") == 1 && fired("ratio", "resolved") == 1
    })
    .await;

    // The quiet source passes 30 s of silence; due deliveries never wait, so no backlog.
    for _ in 0..30 {
        app.clock.advance(Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tick(&app).await;
    wait_evaluated(&app, "the silent source fires", || async {
        fired("silent", "firing") == 1
    })
    .await;
    assert_eq!(fired("backlog", "firing"), 0, "due deliveries go at once");

    // The dead letter is retried and delivered; the quiet source speaks.
    dead_end.set_fallback(Reply::status(200));
    let (_, dlq) = app.api_get("/api/v1/dead-letters").await;
    let id = dlq["data"][0]["id"].as_str().unwrap().to_string();
    app.api_post(&format!("/api/v1/deliveries/{id}/retry"))
        .await;
    dead_end.wait_for(2).await;
    app.accept("/in/quiet", r#"{"type":"t"}"#, &[]).await;
    tick(&app).await;
    wait_evaluated(&app, "dead letters and silence resolve", || async {
        fired("dlq", "resolved") == 1 && fired("silent", "resolved") == 1
    })
    .await;

    // A minute later the slow delivery is out of the latency window.
    for _ in 0..61 {
        app.clock.advance(Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tick(&app).await;
    wait_evaluated(&app, "latency resolves", || async {
        fired("latency", "resolved") == 1
    })
    .await;

    // Backlog: a paused destination's delivery waits past 3 s.
    let (status, _) = app.api_post("/api/v1/destinations/slow/pause").await;
    assert_eq!(status, 200);
    app.accept("/in/shop", r#"{"type":"t","to":"slow"}"#, &[])
        .await;
    // The delivery exists only once the flow's filter has run in an expression worker, which
    // may take longer than a few ticks on a loaded machine: tick until the rule fires.
    wait_until("backlog fires", || async {
        tick(&app).await;
        fired("backlog", "firing") == 1
    })
    .await;
    let (status, _) = app.api_post("/api/v1/destinations/slow/resume").await;
    assert_eq!(status, 200);
    wait_evaluated(&app, "the held delivery goes", || async {
        slow.count() >= 3
    })
    .await;
    tick(&app).await;
    wait_evaluated(&app, "backlog resolves", || async {
        fired("backlog", "resolved") == 1
    })
    .await;
    // Each rule fired exactly once.
    for alert in ["dlq", "silent", "ratio", "latency", "backlog"] {
        assert_eq!(fired(alert, "firing"), 1, "{alert}");
    }
}

#[tokio::test]
async fn the_circuit_opens_holds_deliveries_probes_and_closes() {
    let crm = Receiver::start_with(Reply::status(503)).await;
    let app = spawn_app(&format!(
        r#"
settings: {{ allow_private_destinations: true }}
sources: [ {{ id: shop, kind: webhook, verify: {{ scheme: none }} }} ]
destinations:
  - id: crm
    kind: http
    url: "{}"
    concurrency: 1
    retry: {{ max_attempts: 5, initial: 1s, max: 1s, jitter: none }}
    circuit_breaker: {{ failures: 2, cool_off: 30s, pause_after: never }}
flows: [ {{ id: f, on: {{ source: shop }}, steps: [ {{ deliver: crm }} ] }} ]
"#,
        crm.url
    ))
    .await;
    let mut events = Vec::new();
    for n in 0..2 {
        events.push(
            app.accept("/in/shop", &json!({"type": "t", "n": n}).to_string(), &[])
                .await,
        );
    }
    crm.wait_for(2).await;
    wait_evaluated(&app, "the circuit opens", || async {
        let (_, d) = app.api_get("/api/v1/destinations").await;
        d["data"][0]["circuit"]["state"] == "open"
    })
    .await;
    // More events, and time for the retries: nothing is sent while the circuit is open.
    for n in 2..5 {
        events.push(
            app.accept("/in/shop", &json!({"type": "t", "n": n}).to_string(), &[])
                .await,
        );
    }
    for _ in 0..5 {
        app.clock.advance(Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(crm.count(), 2, "the open circuit holds every delivery");
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"ferry_circuit_state{destination="crm"} 1"#),
        "{metrics}"
    );

    // The cool-off ends; the receiver is back: one probe closes the circuit, and every held
    // delivery goes, none having spent an attempt while held.
    crm.set_fallback(Reply::status(200));
    app.clock.advance(Duration::from_secs(25));
    crm.wait_for(3).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    app.clock.advance(Duration::from_secs(31));
    wait_evaluated(&app, "every event delivered", || async { crm.count() >= 7 }).await;
    // The receiver counts a request before Ferry records its attempt: wait for the records.
    wait_until("every delivery recorded", || async {
        for event in &events {
            if app.only_delivery(event).await["status"] != "succeeded" {
                return false;
            }
        }
        true
    })
    .await;
    let (_, d) = app.api_get("/api/v1/destinations").await;
    assert_eq!(d["data"][0]["circuit"]["state"], "closed", "{d}");
    for (n, event) in events.iter().enumerate() {
        let delivery = app.only_delivery(event).await;
        assert_eq!(delivery["status"], "succeeded", "event {n}: {delivery}");
        let expected = if n < 2 { 2 } else { 1 };
        assert_eq!(delivery["attempt_count"], expected, "event {n}: {delivery}");
    }
}

#[tokio::test]
async fn a_paused_destination_keeps_everything_across_a_restart_and_auto_pause_alerts() {
    let crm = Receiver::start().await;
    let ops = Receiver::start().await;
    let yaml = format!(
        r#"
settings: {{ allow_private_destinations: true, alert_interval: 1s }}
sources: [ {{ id: shop, kind: webhook, verify: {{ scheme: none }} }} ]
destinations:
  - {{ id: crm, kind: http, url: "{}", retry: {{ max_attempts: 20, initial: 1s, max: 1s, jitter: none }}, circuit_breaker: {{ failures: 100, pause_after: 3s }} }}
flows: [ {{ id: f, on: {{ source: shop }}, steps: [ {{ deliver: crm }} ] }} ]
channels: [ {{ id: ops, kind: webhook, url: "{}" }} ]
alerts: [ {{ id: paused, when: {{ destination_paused: {{}} }}, notify: [ops], cooldown: 1s }} ]
"#,
        crm.url, ops.url
    );
    let dir = tempfile::tempdir().unwrap();
    let clock = ferry::clock::ManualClock::new(ferry::clock::system_now_ms());
    let app = spawn_app_at(&yaml, dir.path(), clock.clone(), None).await;
    let (status, body) = app.api_post("/api/v1/destinations/crm/pause").await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = app.api_post("/api/v1/destinations/nope/pause").await;
    assert_eq!(status, 404);
    for n in 0..3 {
        app.accept("/in/shop", &json!({"type": "t", "n": n}).to_string(), &[])
            .await;
    }
    tick(&app).await;
    assert_eq!(crm.count(), 0, "a paused destination is sent nothing");
    wait_evaluated(&app, "ops notice 1", || async { ops.count() >= 1 }).await;
    assert_eq!(notices(&ops)[0]["alert"], "paused");
    drop(app);

    // After a restart it is still paused, and nothing was dropped.
    let app = spawn_app_at(&yaml, dir.path(), clock.clone(), None).await;
    let (_, d) = app.api_get("/api/v1/destinations").await;
    assert_eq!(d["data"][0]["paused"]["by"], "api", "{d}");
    tick(&app).await;
    tick(&app).await;
    assert_eq!(crm.count(), 0);
    assert_eq!(
        ops.count(),
        1,
        "the stored alert state: no second notice after the restart"
    );
    let (_, alerts) = app.api_get("/api/v1/alerts").await;
    assert_eq!(alerts["data"][0]["state"], "firing", "{alerts}");
    let (status, _) = app.api_post("/api/v1/destinations/crm/resume").await;
    assert_eq!(status, 200);
    crm.wait_for(3).await;

    // A long failure pauses it automatically, with an alert.
    crm.set_fallback(Reply::status(500));
    app.accept("/in/shop", r#"{"type":"t"}"#, &[]).await;
    crm.wait_for(4).await;
    for _ in 0..5 {
        tick(&app).await;
    }
    wait_evaluated(&app, "the automatic pause", || async {
        let (_, d) = app.api_get("/api/v1/destinations").await;
        d["data"][0]["paused"]["by"] == "auto"
    })
    .await;
    wait_evaluated(&app, "its alert", || async {
        notices(&ops)
            .iter()
            .filter(|n| n["state"] == "firing")
            .count()
            == 2
    })
    .await;
    let last = notices(&ops).last().cloned().unwrap();
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("`crm` is paused (auto): failing without a success"),
        "{last}"
    );
}

#[tokio::test]
async fn metrics_parse_and_move_with_the_traffic() {
    let crm = Receiver::start().await;
    let app = spawn_app(&format!(
        r#"
settings: {{ allow_private_destinations: true }}
sources: [ {{ id: shop, kind: webhook, verify: {{ scheme: none }} }} ]
event_types: [ {{ name: order.created, schema: {{ type: object, required: [id] }} }} ]
destinations: [ {{ id: crm, kind: http, url: "{}" }} ]
flows: [ {{ id: f, on: {{ source: shop }}, steps: [ {{ deliver: crm }} ] }} ]
"#,
        crm.url
    ))
    .await;
    let scrape = || async {
        let r = app.http.get(app.url("/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let parsed = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
        (text, parsed)
    };
    let value = |s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]| -> f64 {
        s.samples
            .iter()
            .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
            .map(|x| match x.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    app.accept("/in/shop", r#"{"type":"order.created","id":1}"#, &[])
        .await;
    app.accept("/in/shop", r#"{"type":"order.created","id":2}"#, &[])
        .await;
    let refused = app
        .post_json("/in/shop", r#"{"type":"order.created"}"#, &[])
        .await;
    assert_eq!(refused.status(), 422);
    app.post_json("/in/elsewhere", "{}", &[]).await;
    crm.wait_for(2).await;
    wait_evaluated(&app, "both runs counted", || async {
        value(
            &scrape().await.1,
            "ferry_runs_total",
            &[("flow", "f"), ("status", "completed")],
        ) == 2.0
    })
    .await;
    let (text, s) = scrape().await;
    assert_eq!(
        value(&s, "ferry_events_received_total", &[("source", "shop")]),
        3.0,
        "{text}"
    );
    assert_eq!(
        value(&s, "ferry_events_received_total", &[("source", "unknown")]),
        1.0,
        "{text}"
    );
    assert_eq!(
        value(
            &s,
            "ferry_events_accepted_total",
            &[("source", "shop"), ("event_type", "order.created")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &s,
            "ferry_events_rejected_total",
            &[("source", "shop"), ("reason", "schema_violation")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "ferry_events_rejected_total",
            &[("source", "unknown"), ("reason", "unknown_source")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "ferry_delivery_attempts_total",
            &[("destination", "crm"), ("outcome", "succeeded")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &s,
            "ferry_runs_total",
            &[("flow", "f"), ("status", "completed")]
        ),
        2.0
    );
    assert_eq!(
        value(&s, "ferry_queue_depth", &[("destination", "crm")]),
        0.0
    );
    assert_eq!(
        value(&s, "ferry_circuit_state", &[("destination", "crm")]),
        0.0
    );
    assert!(
        text.contains("# TYPE ferry_delivery_attempt_duration_seconds histogram"),
        "{text}"
    );
    assert!(
        text.contains("ferry_delivery_latency_seconds_count{destination=\"crm\"} 2"),
        "{text}"
    );
}

#[tokio::test]
async fn an_alert_rule_made_through_the_api_watches_a_source_made_through_the_api() {
    let ops = Receiver::start().await;
    let app = spawn_app(&format!(
        r#"
settings: {{ allow_private_destinations: true, alert_interval: 1s }}
channels: [ {{ id: ops, kind: webhook, url: "{}" }} ]
"#,
        ops.url
    ))
    .await;
    let (status, e) = app
        .api_post_json(
            "/api/v1/sources",
            json!({"id": "orders", "kind": "webhook", "verify": {"scheme": "none"}}),
        )
        .await;
    assert_eq!(status, 201, "{e}");
    let rule = json!({"id": "no-orders", "when": {"source_silent": {"source": "orders", "for": "2s"}}, "notify": ["ops"], "severity": "warning"});
    let (status, e) = app.api_post_json("/api/v1/alerts", rule).await;
    assert_eq!(status, 201, "{e}");
    let (status, e) = app
        .api_post_json("/api/v1/alerts", json!({"id": "bad", "when": {"source_silent": {"source": "ghost", "for": "2s"}}, "notify": ["nowhere"]}))
        .await;
    assert_eq!(
        (status.as_u16(), e["error"].as_str()),
        (422, Some("invalid_object")),
        "{e}"
    );
    assert_eq!(
        e["details"].as_array().unwrap().len(),
        2,
        "both references: {e}"
    );

    // Silent for longer than 2s since the source was made: one firing notice.
    tick(&app).await;
    assert_eq!(ops.count(), 0, "not silent long enough yet");
    tick(&app).await;
    tick(&app).await;
    ops.wait_for(1).await;
    assert_eq!(notices(&ops)[0]["state"], "firing", "{:?}", notices(&ops));
    let (_, shown) = app.api_get("/api/v1/alerts/no-orders").await;
    assert_eq!(
        (shown["state"].as_str(), shown["provisioned"].as_bool()),
        (Some("firing"), Some(false)),
        "{shown}"
    );

    // An event on the source resolves it.
    app.accept("/in/orders", r#"{"type":"order.created"}"#, &[])
        .await;
    tick(&app).await;
    ops.wait_for(2).await;
    assert_eq!(notices(&ops)[1]["state"], "resolved");
    let (_, all) = app.api_get("/api/v1/alerts").await;
    assert_eq!(all["data"][0]["state"], "ok", "{all}");

    // A source an alert rule watches cannot be deleted.
    let (status, e) = app
        .api_send(reqwest::Method::DELETE, "/api/v1/sources/orders", None)
        .await;
    assert_eq!(
        (status.as_u16(), e["error"].as_str()),
        (422, Some("invalid_object")),
        "{e}"
    );
}

//! Strict input (docs/security.md, Input rules): a key repeated in a JSON object, bytes that
//! are not UTF-8, timestamps at the ends of the integers, headers that are not text and ids
//! outside the one id rule are refused with their status and reason, and the server goes on.

use crate::helpers::*;
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::{Value, json};

async fn app_and_receiver() -> (TestApp, Receiver) {
    let receiver = Receiver::start().await;
    let app = spawn_app(&format!(
        r#"
settings: {{ allow_private_destinations: true }}
sources:
  - {{ id: plain, kind: webhook, verify: {{ scheme: none }}, idempotency_key: {{ from: header, name: idempotency-key }} }}
  - {{ id: typed, kind: webhook, verify: {{ scheme: none }}, event_type: {{ from: header, name: x-event-type }} }}
  - {{ id: signed, kind: webhook, verify: {{ scheme: standard-webhooks, secret: "{SECRET}" }} }}
destinations: [ {{ id: d, kind: http, url: "{}" }} ]
flows:
  - {{ id: f, on: {{ source: plain }}, steps: [ {{ deliver: d }} ] }}
"#,
        receiver.url
    ))
    .await;
    (app, receiver)
}

/// Posts raw bytes with raw header values; returns the status and the error body.
async fn post_raw(
    app: &TestApp,
    path: &str,
    body: Vec<u8>,
    headers: &[(&str, &[u8])],
) -> (u16, Value) {
    let mut request = app
        .http
        .post(app.url(path))
        .header("content-type", "application/json")
        .body(body);
    for (name, value) in headers {
        request = request.header(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_bytes(value).unwrap(),
        );
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn message(e: &Value) -> &str {
    e["message"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn repeated_keys_bad_bytes_and_extreme_timestamps_are_refused_and_the_server_goes_on() {
    let (app, receiver) = app_and_receiver().await;

    // A repeated key: its name and the object it is in, as a JSON Pointer.
    let refused = |body: String| {
        let app = &app;
        async move {
            let (status, e) = post_raw(app, "/in/plain", body.into_bytes(), &[]).await;
            assert_eq!(
                (status, e["error"].as_str()),
                (400, Some("invalid_json")),
                "{e}"
            );
            message(&e).to_string()
        }
    };
    let m = refused(r#"{"type":"strict","data":{},"type":"other"}"#.into()).await;
    assert!(
        m.contains("the key `type` appears twice in the top-level object"),
        "{m}"
    );
    // The same key written with an escape is the same key.
    let m = refused(r#"{"type":"a","\u0074ype":"b"}"#.into()).await;
    assert!(m.contains("`type` appears twice"), "{m}");
    let m = refused(r#"{"type":"t","data":{"items":[{"sku":1},{"sku":2,"sku":3}]}}"#.into()).await;
    assert!(m.contains("in the object at `/data/items/1`"), "{m}");
    // Deep: 120 levels, the repeat at the bottom.
    let deep = format!(
        r#"{{"type":"t","a":{}{{"x":1,"x":2}}{}}}"#,
        r#"{"a":"#.repeat(119),
        "}".repeat(119)
    );
    let m = refused(deep).await;
    // The pointer keeps its innermost part.
    assert!(m.contains("the object at `…/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a/a`"), "{m}");
    // Huge: 20,000 keys, then the first one again; and a 100 KB key twice (quoted cut short).
    let mut many: Vec<String> = (0..20_000).map(|i| format!(r#""k{i}":{i}"#)).collect();
    many.push(r#""k0":0"#.into());
    let m = refused(format!(r#"{{"type":"t",{}}}"#, many.join(","))).await;
    assert!(m.contains("`k0` appears twice"), "{m}");
    let long = "k".repeat(100_000);
    let m = refused(format!(r#"{{"type":"t","{long}":1,"{long}":2}}"#)).await;
    assert!(
        m.contains("appears twice") && m.len() < 1000,
        "{} bytes",
        m.len()
    );

    // Not UTF-8, in a value and in a key; a lone surrogate; a number past f64.
    for body in [
        &b"{\"type\":\"t\",\"a\":\"\xff\xfe\"}"[..],
        b"{\"type\":\"t\",\"\xc3\x28\":1}",
        br#"{"type":"t","a":"\udc00"}"#,
        br#"{"type":"t","a":1e999}"#,
    ] {
        let (status, e) = post_raw(&app, "/in/plain", body.to_vec(), &[]).await;
        assert_eq!(
            (status, e["error"].as_str()),
            (400, Some("invalid_json")),
            "{e}"
        );
    }

    // Timestamps at the ends of the integers, and past them: 401 with the reason.
    let body = r#"{"type":"t"}"#;
    let now = app.clock.now_secs();
    for timestamp in [now.wrapping_sub(i64::MAX), i64::MIN, i64::MAX, -1, 0] {
        let headers = signed_headers(body, "msg_1", timestamp);
        let (status, e) = error_of(app.post_json("/in/signed", body, &headers).await).await;
        assert_eq!(
            (status, e["error"].as_str()),
            (401, Some("invalid_signature")),
            "{timestamp}: {e}"
        );
        assert!(message(&e).contains("timestamp"), "{e}");
    }
    for text in [
        "99999999999999999999",
        "-99999999999999999999",
        "1e3",
        "",
        " 1",
    ] {
        let mut headers = signed_headers(body, "msg_2", now);
        headers[1].1 = text.to_string();
        let (status, e) = error_of(app.post_json("/in/signed", body, &headers).await).await;
        assert_eq!(
            (status, e["error"].as_str()),
            (401, Some("invalid_signature")),
            "{text:?}: {e}"
        );
        assert!(message(&e).contains("timestamp"), "{e}");
    }

    // Headers that are not text: refused with the reason, not ignored.
    let (status, e) = post_raw(
        &app,
        "/in/plain",
        br#"{"type":"t"}"#.to_vec(),
        &[("idempotency-key", b"cl\xe9")],
    )
    .await;
    assert_eq!(
        (status, e["error"].as_str()),
        (400, Some("invalid_idempotency_key")),
        "{e}"
    );
    assert!(
        message(&e).contains("`idempotency-key`") && message(&e).contains("visible ASCII"),
        "{e}"
    );
    let (status, e) = post_raw(
        &app,
        "/in/typed",
        b"{}".to_vec(),
        &[("x-event-type", b"order.\xff")],
    )
    .await;
    assert_eq!(
        (status, e["error"].as_str()),
        (400, Some("invalid_event_type")),
        "{e}"
    );
    // A header given twice: which one counts is what a receiver could read otherwise.
    for (path, name, code) in [
        ("/in/plain", "idempotency-key", "invalid_idempotency_key"),
        ("/in/typed", "x-event-type", "invalid_event_type"),
    ] {
        let (status, e) = post_raw(
            &app,
            path,
            br#"{"type":"t"}"#.to_vec(),
            &[(name, b"a"), (name, b"b")],
        )
        .await;
        assert_eq!((status, e["error"].as_str()), (400, Some(code)), "{e}");
        assert!(message(&e).contains("more than once"), "{e}");
    }
    assert_eq!(app.event_count().await, 0, "nothing refused is stored");
    // An empty key is no key: two such events are two events, not a duplicate.
    for n in 0..2 {
        let body = format!(r#"{{"type":"t","empty_key":{n}}}"#);
        let (status, e) = post_raw(
            &app,
            "/in/plain",
            body.into_bytes(),
            &[("idempotency-key", b"")],
        )
        .await;
        assert_eq!(status, 202, "{e}");
        assert!(e.get("duplicate").is_none(), "{e}");
    }
    receiver.wait_for(2).await;

    // API bodies are strict too.
    for (path, body) in [
        (
            "/api/v1/tokens",
            r#"{"name":"a","scope":"read","scope":"admin"}"#,
        ),
        (
            "/api/v1/sources",
            r#"{"id":"s2","kind":"webhook","id":"s3","verify":{"scheme":"none"}}"#,
        ),
        ("/api/v1/runs/replay", r#"{"flow":"f","flow":"g"}"#),
    ] {
        let r = app
            .http
            .post(app.url(path))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let e: Value = r.json().await.unwrap();
        assert_eq!(
            (status, e["error"].as_str()),
            (422, Some("invalid_body")),
            "{path}: {e}"
        );
        assert!(message(&e).contains("appears twice"), "{path}: {e}");
    }

    // The same server takes the next event, keyed with plain ASCII, and delivers it.
    let (status, _) = post_raw(
        &app,
        "/in/plain",
        br#"{"type":"t","n":1}"#.to_vec(),
        &[("idempotency-key", b"order-1")],
    )
    .await;
    assert_eq!(status, 202);
    receiver.wait_for(3).await;
    assert_eq!(app.event_count().await, 3);
}

async fn error_of(r: reqwest::Response) -> (u16, Value) {
    (r.status().as_u16(), r.json().await.unwrap())
}

const BAD_IDS: [&str; 10] = [
    "a/b",
    "..",
    ".",
    ".hidden",
    "-x",
    "_x",
    "x\ny",
    "caf\u{e9}",
    "a b",
    "",
];

#[tokio::test]
async fn every_object_id_keeps_one_rule() {
    let app = spawn_app("settings: { allow_private_destinations: true }\nsources: [ { id: s, kind: webhook, verify: { scheme: none } } ]\ndestinations: [ { id: d, kind: http, url: \"http://127.0.0.1:9/\" } ]").await;
    let too_long = "a".repeat(65);
    let bad: Vec<&str> = BAD_IDS.iter().copied().chain([too_long.as_str()]).collect();
    for id in &bad {
        for (kind, spec) in [
            (
                "sources",
                json!({"id": id, "kind": "webhook", "verify": {"scheme": "none"}}),
            ),
            (
                "destinations",
                json!({"id": id, "kind": "http", "url": "http://127.0.0.1:9/"}),
            ),
            (
                "flows",
                json!({"id": id, "on": {"source": "s"}, "steps": [{"deliver": "d"}]}),
            ),
            ("event-types", json!({"name": id})),
        ] {
            let (status, e) = app.api_post_json(&format!("/api/v1/{kind}"), spec).await;
            assert_eq!(status, 422, "{kind} {id:?}: {e}");
            assert!(
                e.to_string().contains("beginning with a letter or a digit"),
                "{kind} {id:?}: {e}"
            );
        }
        let (status, e) = app
            .api_post_json("/api/v1/tokens", json!({"name": id, "scope": "read"}))
            .await;
        assert_eq!(status, 422, "token {id:?}: {e}");
        assert!(
            message(&e).contains("beginning with a letter or a digit"),
            "{e}"
        );
    }
    // What keeps the rule is taken, everywhere.
    for (kind, spec) in [
        (
            "sources",
            json!({"id": "9.lives_a-b", "kind": "webhook", "verify": {"scheme": "none"}}),
        ),
        (
            "destinations",
            json!({"id": "9.lives_a-b", "kind": "http", "url": "http://127.0.0.1:9/"}),
        ),
        (
            "flows",
            json!({"id": "9.lives_a-b", "on": {"source": "s"}, "steps": [{"deliver": "d"}]}),
        ),
        (
            "event-types",
            json!({"name": "customer.subscription.pending_update_applied"}),
        ),
    ] {
        let (status, e) = app.api_post_json(&format!("/api/v1/{kind}"), spec).await;
        assert_eq!(status, 201, "{kind}: {e}");
    }
    let (status, e) = app
        .api_post_json(
            "/api/v1/tokens",
            json!({"name": "deploy-bot.2", "scope": "read"}),
        )
        .await;
    assert_eq!(status, 201, "{e}");

    // The config file: every kind of object, channels and alert rules included.
    for id in &bad {
        let quoted = serde_json::to_string(id).unwrap();
        for yaml in [
            format!("sources: [ {{ id: {quoted}, kind: webhook, verify: {{ scheme: none }} }} ]"),
            format!("event_types: [ {{ name: {quoted} }} ]"),
            format!(
                "settings: {{ allow_private_destinations: true }}\ndestinations: [ {{ id: {quoted}, kind: http, url: \"http://127.0.0.1:9/\" }} ]"
            ),
            format!(
                "sources: [ {{ id: s, kind: webhook, verify: {{ scheme: none }} }} ]\nflows: [ {{ id: {quoted}, on: {{ source: s }}, steps: [ {{ filter: 'true' }} ] }} ]"
            ),
            format!(
                "settings: {{ allow_private_destinations: true }}\nchannels: [ {{ id: {quoted}, kind: webhook, url: \"http://127.0.0.1:9/\" }} ]"
            ),
            format!(
                "settings: {{ allow_private_destinations: true }}\nchannels: [ {{ id: ops, kind: webhook, url: \"http://127.0.0.1:9/\" }} ]\nalerts: [ {{ id: {quoted}, when: {{ dead_letters: {{ above: 0 }} }}, notify: [ops] }} ]"
            ),
        ] {
            let e =
                ferry::config::load_str(&yaml, "ferry.yaml", std::path::Path::new("."), &|_| None)
                    .err()
                    .unwrap_or_else(|| panic!("accepted: {yaml}"));
            assert!(
                e.to_string().contains("beginning with a letter or a digit"),
                "{yaml}\n{e}"
            );
        }
    }
    // The server answers as before.
    let (status, _) = app.api_get("/api/v1/sources").await;
    assert_eq!(status, 200);
}

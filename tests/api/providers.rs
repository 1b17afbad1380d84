//! Webhook sources' verification schemes against requests signed the providers' documented
//! ways: every preset (`standard-webhooks`, `github`, `stripe`, `shopify`, `slack`, `paddle`,
//! `zoom`, `square`, `twilio`), a declarative `hmac` scheme with SHA-512 and base64, `basic`
//! and `bearer`. Each signature is computed here with the `hmac`, `sha1`, `sha2` and `base64`
//! crates (never with Ferry's code), several against the providers' published test vectors.
//! A request signed right is taken with the provider's event type and idempotency key; a
//! tampered body, a wrong secret, a stale timestamp or a missing header is refused with `401`
//! and its reason in the rejected log, and nothing is stored. Slack's and Zoom's endpoint
//! checks are answered only when signed. Hostile headers and bodies on this path each get a
//! clear answer, and the same app answers the next request normally. Last, the providers'
//! official Python SDKs sign or check requests against a running app
//! (`tests/providers/sdk_check.py`, with the SDKs `.ci/run` installs).
//!
//! SQLite only (these are about ingest, not the store): `main.rs` names this module, not
//! `suite.rs`.

use crate::helpers::*;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use reqwest::header::HeaderValue;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Signing, the providers' way, with the crates directly.

fn mac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

fn mac_sha512(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<sha2::Sha512>::new_from_slice(key).unwrap();
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

fn mac_sha1(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(key).unwrap();
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// Standard Webhooks: `v1,` + base64 HMAC-SHA256 of `{id}.{timestamp}.{body}` under the
/// base64-decoded part of a `whsec_` secret.
fn standard_webhooks_sig(secret: &str, id: &str, ts: i64, body: &str) -> String {
    let key = B64.decode(secret.trim_start_matches("whsec_")).unwrap();
    let signed = format!("{id}.{ts}.{body}");
    format!("v1,{}", b64(&mac_sha256(&key, signed.as_bytes())))
}

/// Stripe: `t=<ts>,v1=<hex HMAC-SHA256 of "{t}.{body}">`, the whole `whsec_...` string the key.
fn stripe_v1(secret: &str, ts: i64, body: &str) -> String {
    hex(&mac_sha256(
        secret.as_bytes(),
        format!("{ts}.{body}").as_bytes(),
    ))
}

/// Slack and Zoom: `v0=` + hex HMAC-SHA256 of `v0:{ts}:{body}`.
fn v0_sig(secret: &str, ts: &str, body: &[u8]) -> String {
    let mut signed = format!("v0:{ts}:").into_bytes();
    signed.extend_from_slice(body);
    format!("v0={}", hex(&mac_sha256(secret.as_bytes(), &signed)))
}

/// Paddle: `ts=<ts>;h1=<hex HMAC-SHA256 of "{ts}:{body}">`.
fn paddle_header(secret: &str, ts: i64, body: &str) -> String {
    let h1 = hex(&mac_sha256(
        secret.as_bytes(),
        format!("{ts}:{body}").as_bytes(),
    ));
    format!("ts={ts};h1={h1}")
}

/// Square: base64 HMAC-SHA256 of the notification URL followed by the body.
fn square_sig(key: &str, url: &str, body: &str) -> String {
    b64(&mac_sha256(
        key.as_bytes(),
        format!("{url}{body}").as_bytes(),
    ))
}

/// Twilio: base64 HMAC-SHA1 of the full URL followed by each POST parameter's name and value,
/// sorted by name (a repeated name's values sorted too, each once).
fn twilio_sig(token: &str, url: &str, params: &[(&str, &str)]) -> String {
    let mut sorted = params.to_vec();
    sorted.sort();
    sorted.dedup();
    let mut signed = url.to_string();
    for (name, value) in sorted {
        signed.push_str(name);
        signed.push_str(value);
    }
    b64(&mac_sha1(token.as_bytes(), signed.as_bytes()))
}

/// An `application/x-www-form-urlencoded` body, as Twilio sends one.
fn form_body(params: &[(&str, &str)]) -> String {
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    for (name, value) in params {
        form.append_pair(name, value);
    }
    form.finish()
}

fn owned(headers: &[(&'static str, String)]) -> Vec<(&'static str, HeaderValue)> {
    headers
        .iter()
        .map(|(k, v)| (*k, HeaderValue::from_str(v).unwrap()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// One app, with what it has stored and refused so far.

const JSON: &str = "application/json";
const FORM: &str = "application/x-www-form-urlencoded";

/// An answer from `POST /in/...`.
struct Answer {
    /// The source the request went to.
    source: String,
    status: u16,
    /// The JSON answer, or `null` when it is not JSON.
    body: Value,
    text: String,
}

struct Probe {
    app: TestApp,
    /// Events stored so far (new ones: a duplicate stores nothing).
    events: i64,
    /// Entries of the rejected log so far.
    rejections: i64,
}

impl Probe {
    async fn start(yaml: &str) -> Probe {
        Probe {
            app: spawn_app(yaml).await,
            events: 0,
            rejections: 0,
        }
    }

    fn now(&self) -> i64 {
        self.app.clock.now_secs()
    }

    /// `POST path` (`/in/<source>` and perhaps a query) with a body and headers.
    async fn send(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<Vec<u8>>,
        headers: Vec<(&str, HeaderValue)>,
    ) -> Answer {
        let mut request = self
            .app
            .http
            .post(self.app.url(path))
            .header("content-type", content_type)
            .body(body.into());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let source = path
            .trim_start_matches("/in/")
            .split('?')
            .next()
            .unwrap()
            .to_string();
        Answer {
            source,
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        }
    }

    async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: &str,
        headers: &[(&'static str, String)],
    ) -> Answer {
        self.send(path, content_type, body, owned(headers)).await
    }

    async fn event(&self, id: &str) -> Value {
        let (status, event) = self.app.api_get(&format!("/api/v1/events/{id}")).await;
        assert_eq!(status, 200, "{event}");
        event
    }

    /// A `202` with a new event's id; the event is stored with this source, event type and
    /// idempotency key, and none of the request's credentials or signatures among its headers.
    async fn accepted(&mut self, a: Answer, event_type: &str, key: Option<&str>) -> Value {
        assert_eq!(a.status, 202, "{} refused: {}", a.source, a.text);
        let id = a.body["event_id"].as_str().unwrap().to_string();
        assert!(id.starts_with("evt_"), "{}", a.text);
        self.events += 1;
        assert_eq!(self.app.event_count().await, self.events);
        let event = self.event(&id).await;
        assert_eq!(event["id"], id.as_str());
        assert_eq!(event["source"], a.source.as_str(), "{event:#}");
        assert_eq!(event["event_type"], event_type, "{event:#}");
        assert_eq!(event["idempotency_key"].as_str(), key, "{event:#}");
        let headers = event["headers"].as_object().unwrap();
        for secret in [
            "authorization",
            "webhook-signature",
            "x-hub-signature-256",
            "stripe-signature",
            "x-shopify-hmac-sha256",
            "x-slack-signature",
            "paddle-signature",
            "x-zm-signature",
            "x-square-hmacsha256-signature",
            "x-twilio-signature",
            "x-acme-signature",
        ] {
            assert!(!headers.contains_key(secret), "{secret} kept: {event:#}");
        }
        event
    }

    /// The answer to a repeated idempotency key: `200`, the first event's id, nothing stored.
    async fn duplicate(&self, a: Answer, first: &Value) {
        assert_eq!(a.status, 200, "{}", a.text);
        assert_eq!(
            a.body,
            json!({"event_id": first["id"], "duplicate": true}),
            "{}",
            a.text
        );
        assert_eq!(self.app.event_count().await, self.events);
    }

    /// A refusal: `status` with `{"error": code, "message": ..reason..}`, nothing stored, and
    /// the newest entry of the rejected log saying the same.
    async fn refused(&mut self, a: Answer, status: u16, code: &str, reason: &str) {
        assert_eq!(a.status, status, "{}: {}", a.source, a.text);
        let keys: Vec<&String> = a.body.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["details", "error", "message"], "{}", a.text);
        assert_eq!(a.body["error"], code, "{}", a.text);
        assert_eq!(a.body["details"], json!([]), "{}", a.text);
        let message = a.body["message"].as_str().unwrap();
        assert!(message.contains(reason), "`{message}` lacks `{reason}`");
        assert_eq!(self.app.event_count().await, self.events, "{}", a.text);
        self.rejections += 1;
        let want = self.rejections;
        let store = &self.app.state.store;
        wait_until(&format!("{want} entries in the rejected log"), || async {
            store.count_rejections().await.unwrap() == want
        })
        .await;
        let (_, log) = self.app.api_get("/api/v1/rejections?limit=1").await;
        let entry = &log["data"][0];
        assert_eq!(entry["source"], a.source.as_str(), "{log}");
        assert_eq!(entry["status"], status, "{log}");
        assert_eq!(entry["error"], code, "{log}");
        assert_eq!(entry["reason"], message, "{log}");
    }

    async fn unsigned(&mut self, a: Answer, reason: &str) {
        self.refused(a, 401, "invalid_signature", reason).await;
    }
}

/// What a signature that does not match is refused with.
fn mismatch(header: &str) -> String {
    format!("no signature in `{header}` matches the request")
}

// ---------------------------------------------------------------------------------------------
// 1. Each scheme: the provider's signature taken, with its event type and key; then refusals.

/// The Standard Webhooks spec's published example (secret, id, timestamp, body, signature).
const SW_VECTOR_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SW_VECTOR_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const SW_VECTOR_TS: i64 = 1614265330;
const SW_VECTOR_BODY: &str = r#"{"test": 2432232314}"#;
const SW_VECTOR_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

#[tokio::test]
async fn standard_webhooks_preset() {
    let mut p = Probe::start(&format!(
        r#"
sources:
  - {{ id: sw, kind: webhook, verify: {{ scheme: standard-webhooks, secret: "{SW_VECTOR_SECRET}" }} }}
  - id: old
    kind: webhook
    verify: {{ scheme: standard-webhooks, secret: "{SW_VECTOR_SECRET}", tolerance: 10y }}
    event_type: {{ from: body, path: .test }}
"#
    ))
    .await;
    // The published example, signed years ago: taken by a source that tolerates its age.
    assert_eq!(
        standard_webhooks_sig(SW_VECTOR_SECRET, SW_VECTOR_ID, SW_VECTOR_TS, SW_VECTOR_BODY),
        SW_VECTOR_SIG
    );
    let vector = |sig: &str| {
        vec![
            ("webhook-id", SW_VECTOR_ID.to_string()),
            ("webhook-timestamp", SW_VECTOR_TS.to_string()),
            ("webhook-signature", sig.to_string()),
        ]
    };
    let a = p
        .post("/in/old", JSON, SW_VECTOR_BODY, &vector(SW_VECTOR_SIG))
        .await;
    p.accepted(a, "2432232314", Some(SW_VECTOR_ID)).await;
    // The default source's tolerance is 5 minutes.
    let a = p
        .post("/in/sw", JSON, SW_VECTOR_BODY, &vector(SW_VECTOR_SIG))
        .await;
    p.unsigned(a, "timestamp").await;

    let now = p.now();
    let body = r#"{"type":"invoice.paid","data":{"amount":1200}}"#;
    let headers = |id: &str, ts: i64, sig: String| {
        vec![
            ("webhook-id", id.to_string()),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", sig),
        ]
    };
    // During a key rotation the header lists several signatures: any one may match.
    let other = standard_webhooks_sig("whsec_b3RoZXIga2V5IGJ5dGVz", "msg_1", now, body);
    let right = standard_webhooks_sig(SW_VECTOR_SECRET, "msg_1", now, body);
    let signed = headers("msg_1", now, format!("{other} {right}"));
    let a = p.post("/in/sw", JSON, body, &signed).await;
    let first = p.accepted(a, "invoice.paid", Some("msg_1")).await;
    assert_eq!(
        first["payload"],
        serde_json::from_str::<Value>(body).unwrap()
    );
    assert_eq!(first["headers"]["webhook-id"], "msg_1");
    let a = p.post("/in/sw", JSON, body, &signed).await;
    p.duplicate(a, &first).await;

    let tampered = body.replace("1200", "1");
    let a = p.post("/in/sw", JSON, &tampered, &signed).await;
    p.unsigned(a, &mismatch("webhook-signature")).await;
    // The id is signed too.
    let a = p
        .post("/in/sw", JSON, body, &headers("msg_2", now, right.clone()))
        .await;
    p.unsigned(a, &mismatch("webhook-signature")).await;
    let wrong = standard_webhooks_sig("whsec_b3RoZXIga2V5IGJ5dGVz", "msg_2", now, body);
    let a = p
        .post("/in/sw", JSON, body, &headers("msg_2", now, wrong))
        .await;
    p.unsigned(a, &mismatch("webhook-signature")).await;
    for ts in [now - 301, now + 301] {
        let sig = standard_webhooks_sig(SW_VECTOR_SECRET, "msg_2", ts, body);
        let a = p
            .post("/in/sw", JSON, body, &headers("msg_2", ts, sig))
            .await;
        p.unsigned(a, "timestamp").await;
    }
    let a = p.post("/in/sw", JSON, body, &signed[..2]).await;
    p.unsigned(a, "missing header `webhook-signature`").await;
    // Within the tolerance, either way.
    for (id, ts) in [("msg_3", now - 299), ("msg_4", now + 299)] {
        let sig = standard_webhooks_sig(SW_VECTOR_SECRET, id, ts, body);
        let a = p.post("/in/sw", JSON, body, &headers(id, ts, sig)).await;
        p.accepted(a, "invoice.paid", Some(id)).await;
    }
}

/// GitHub's documented example: this secret and body give this `X-Hub-Signature-256`.
const GITHUB_SECRET: &str = "It's a Secret to Everybody";
const GITHUB_VECTOR: &str =
    "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

#[tokio::test]
async fn github_preset() {
    let mut p = Probe::start(&format!(
        r#"
sources:
  - {{ id: gh, kind: webhook, verify: {{ scheme: github, secret: "{GITHUB_SECRET}" }} }}
"#
    ))
    .await;
    let sign = |body: &str| {
        format!(
            "sha256={}",
            hex(&mac_sha256(GITHUB_SECRET.as_bytes(), body.as_bytes()))
        )
    };
    assert_eq!(sign("Hello, World!"), GITHUB_VECTOR);
    // The vector's body is not JSON: the signature passes, and the body is refused after it.
    let a = p
        .post(
            "/in/gh",
            "text/plain",
            "Hello, World!",
            &[
                ("x-github-event", "ping".into()),
                ("x-hub-signature-256", GITHUB_VECTOR.into()),
            ],
        )
        .await;
    p.refused(a, 400, "invalid_json", "not strict JSON").await;

    let body = r#"{"ref":"refs/heads/main","after":"6113728f27ae82c7b1a177c8d03f9e96e0adf246"}"#;
    let headers = |sig: String| {
        vec![
            ("x-github-event", "push".to_string()),
            (
                "x-github-delivery",
                "72d3162e-cc78-11e3-81ab-4c9367dc0958".to_string(),
            ),
            ("x-hub-signature-256", sig),
        ]
    };
    let a = p.post("/in/gh", JSON, body, &headers(sign(body))).await;
    let first = p
        .accepted(a, "push", Some("72d3162e-cc78-11e3-81ab-4c9367dc0958"))
        .await;
    assert_eq!(first["headers"]["x-github-event"], "push");
    let a = p.post("/in/gh", JSON, body, &headers(sign(body))).await;
    p.duplicate(a, &first).await;

    let tampered = body.replace("main", "evil");
    let a = p
        .post("/in/gh", JSON, &tampered, &headers(sign(body)))
        .await;
    p.unsigned(a, &mismatch("x-hub-signature-256")).await;
    let wrong = format!(
        "sha256={}",
        hex(&mac_sha256(b"another secret", body.as_bytes()))
    );
    let a = p.post("/in/gh", JSON, body, &headers(wrong)).await;
    p.unsigned(a, &mismatch("x-hub-signature-256")).await;
    // GitHub's older SHA-1 header alone does not do.
    let sha1 = format!(
        "sha1={}",
        hex(&mac_sha1(GITHUB_SECRET.as_bytes(), body.as_bytes()))
    );
    let a = p
        .post(
            "/in/gh",
            JSON,
            body,
            &[("x-github-event", "push".into()), ("x-hub-signature", sha1)],
        )
        .await;
    p.unsigned(a, "missing header `x-hub-signature-256`").await;
    // The hex without its `sha256=` prefix is not a signature of this scheme.
    let bare = sign(body).trim_start_matches("sha256=").to_string();
    let a = p.post("/in/gh", JSON, body, &headers(bare)).await;
    p.unsigned(a, "after `sha256=`").await;

    // Header names in any case, as GitHub writes them, on the wire.
    let other = r#"{"zen":"Keep it logically awesome."}"#;
    let status = raw_post(
        &p.app,
        "/in/gh",
        &[
            ("Content-Type", JSON.into()),
            ("X-GitHub-Event", "ping".into()),
            ("X-GitHub-Delivery", "d-ping".into()),
            ("X-Hub-Signature-256", sign(other)),
        ],
        other,
    )
    .await;
    assert_eq!(status, 202);
    p.events += 1;
    assert_eq!(p.app.event_count().await, p.events);
}

/// `POST` over a plain TCP connection, header names written as given; the answer's status.
async fn raw_post(app: &TestApp, path: &str, headers: &[(&str, String)], body: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
        app.addr,
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer}"))
}

#[tokio::test]
async fn stripe_preset() {
    const SECRET: &str = "whsec_test123";
    let mut p = Probe::start(
        r#"
sources:
  - { id: st, kind: webhook, verify: { scheme: stripe, secret: "whsec_test123" } }
"#,
    )
    .await;
    let now = p.now();
    let body = r#"{"id":"evt_1NG8Du2eZvKYlo2CUI79vXWy","object":"event","type":"payment_intent.succeeded","data":{"object":{"amount":2000}}}"#;
    let header = |value: String| vec![("stripe-signature", value)];
    // With a `v0` item and a second `v1` (an old secret's) the header still matches.
    let right = stripe_v1(SECRET, now, body);
    let old = stripe_v1("whsec_old", now, body);
    let signed = header(format!(
        "t={now},v1={old},v1={right},v0=6ffbb59b2300aae63f2720"
    ));
    let a = p.post("/in/st", JSON, body, &signed).await;
    let first = p
        .accepted(
            a,
            "payment_intent.succeeded",
            Some("evt_1NG8Du2eZvKYlo2CUI79vXWy"),
        )
        .await;
    let a = p.post("/in/st", JSON, body, &signed).await;
    p.duplicate(a, &first).await;

    let tampered = body.replace("2000", "1");
    let a = p.post("/in/st", JSON, &tampered, &signed).await;
    p.unsigned(a, &mismatch("stripe-signature")).await;
    // The key is the whole `whsec_` string, not the part after the prefix.
    let wrong = hex(&mac_sha256(b"test123", format!("{now}.{body}").as_bytes()));
    let a = p
        .post("/in/st", JSON, body, &header(format!("t={now},v1={wrong}")))
        .await;
    p.unsigned(a, &mismatch("stripe-signature")).await;
    let wrong = stripe_v1("whsec_test124", now, body);
    let a = p
        .post("/in/st", JSON, body, &header(format!("t={now},v1={wrong}")))
        .await;
    p.unsigned(a, &mismatch("stripe-signature")).await;
    // The timestamp is signed: another one with the same signature does not match.
    let a = p
        .post(
            "/in/st",
            JSON,
            body,
            &header(format!("t={},v1={right}", now + 1)),
        )
        .await;
    p.unsigned(a, &mismatch("stripe-signature")).await;
    let stale = now - 301;
    let sig = stripe_v1(SECRET, stale, body);
    let a = p
        .post("/in/st", JSON, body, &header(format!("t={stale},v1={sig}")))
        .await;
    p.unsigned(a, "timestamp").await;
    let a = p
        .post("/in/st", JSON, body, &header(format!("v1={right}")))
        .await;
    p.unsigned(a, "no `t` timestamp item").await;
    let a = p
        .post("/in/st", JSON, body, &header(format!("t={now}")))
        .await;
    p.unsigned(a, "no `v1=` item").await;
    let a = p.post("/in/st", JSON, body, &[]).await;
    p.unsigned(a, "missing header `stripe-signature`").await;
}

#[tokio::test]
async fn shopify_preset() {
    const SECRET: &str = "shpss_5f0e1d2c3b4a";
    let mut p = Probe::start(
        r#"
sources:
  - { id: sh, kind: webhook, verify: { scheme: shopify, secret: "shpss_5f0e1d2c3b4a" } }
"#,
    )
    .await;
    let body = r#"{"id":820982911946154508,"email":"jon@example.com","total_price":"199.65"}"#;
    let headers = |sig: String| {
        vec![
            ("x-shopify-topic", "orders/create".to_string()),
            ("x-shopify-shop-domain", "example.myshopify.com".to_string()),
            (
                "x-shopify-webhook-id",
                "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043".to_string(),
            ),
            ("x-shopify-hmac-sha256", sig),
        ]
    };
    let sig = b64(&mac_sha256(SECRET.as_bytes(), body.as_bytes()));
    let a = p.post("/in/sh", JSON, body, &headers(sig.clone())).await;
    let first = p
        .accepted(
            a,
            "orders/create",
            Some("b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"),
        )
        .await;
    assert_eq!(
        first["headers"]["x-shopify-shop-domain"],
        "example.myshopify.com"
    );
    let a = p.post("/in/sh", JSON, body, &headers(sig.clone())).await;
    p.duplicate(a, &first).await;

    let tampered = body.replace("199.65", "0.01");
    let a = p
        .post("/in/sh", JSON, &tampered, &headers(sig.clone()))
        .await;
    p.unsigned(a, &mismatch("x-shopify-hmac-sha256")).await;
    let wrong = b64(&mac_sha256(b"shpss_other", body.as_bytes()));
    let a = p.post("/in/sh", JSON, body, &headers(wrong)).await;
    p.unsigned(a, &mismatch("x-shopify-hmac-sha256")).await;
    // The same MAC in hex is not Shopify's encoding (64 hex digits read as base64 are 48
    // other bytes), and a value that is no base64 is said to be none.
    let in_hex = hex(&mac_sha256(SECRET.as_bytes(), body.as_bytes()));
    let a = p.post("/in/sh", JSON, body, &headers(in_hex)).await;
    p.unsigned(a, &mismatch("x-shopify-hmac-sha256")).await;
    let a = p
        .post("/in/sh", JSON, body, &headers("not base64!".into()))
        .await;
    p.unsigned(a, "holds no base64 signature").await;
    let a = p.post("/in/sh", JSON, body, &headers(sig)[..3]).await;
    p.unsigned(a, "missing header `x-shopify-hmac-sha256`")
        .await;
}

/// Slack's documented example ("Verifying requests from Slack"): a slash command's form body.
const SLACK_VECTOR_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const SLACK_VECTOR_TS: &str = "1531420618";
const SLACK_VECTOR_BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
const SLACK_VECTOR_SIG: &str =
    "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

#[tokio::test]
async fn slack_preset() {
    const SECRET: &str = "slack-signing-secret";
    let mut p = Probe::start(&format!(
        r#"
sources:
  - {{ id: sl, kind: webhook, verify: {{ scheme: slack, secret: "{SECRET}" }} }}
  - id: cmd
    kind: webhook
    verify: {{ scheme: slack, secret: "{SLACK_VECTOR_SECRET}", tolerance: 10y }}
    format: form
    event_type: {{ from: body, path: .command }}
"#
    ))
    .await;
    assert_eq!(
        v0_sig(
            SLACK_VECTOR_SECRET,
            SLACK_VECTOR_TS,
            SLACK_VECTOR_BODY.as_bytes()
        ),
        SLACK_VECTOR_SIG
    );
    let a = p
        .post(
            "/in/cmd",
            FORM,
            SLACK_VECTOR_BODY,
            &[
                ("x-slack-request-timestamp", SLACK_VECTOR_TS.into()),
                ("x-slack-signature", SLACK_VECTOR_SIG.into()),
            ],
        )
        .await;
    let event = p.accepted(a, "/webhook-collect", None).await;
    assert_eq!(event["payload"]["user_name"], "roadrunner");
    assert_eq!(event["payload"]["text"], "");

    let now = p.now().to_string();
    let headers = |ts: &str, sig: String| {
        vec![
            ("x-slack-request-timestamp", ts.to_string()),
            ("x-slack-signature", sig),
        ]
    };
    let body = r#"{"token":"x","team_id":"T061EG9R6","api_app_id":"A0PNCHHK2","event":{"type":"app_mention","user":"U061F7AUR","text":"<@U0LAN0Z89> hi","channel":"C0LAN2Q65"},"type":"event_callback","event_id":"Ev0PV52K25","event_time":1515449483}"#;
    let signed = headers(&now, v0_sig(SECRET, &now, body.as_bytes()));
    let a = p.post("/in/sl", JSON, body, &signed).await;
    let first = p.accepted(a, "app_mention", Some("Ev0PV52K25")).await;
    let a = p.post("/in/sl", JSON, body, &signed).await;
    p.duplicate(a, &first).await;
    // Without an inner event, the type is the outer one; without `event_id`, no key.
    let limited = r#"{"token":"x","team_id":"T061EG9R6","minute_rate_limited":1518467820,"api_app_id":"A0PNCHHK2","type":"app_rate_limited"}"#;
    let a = p
        .post(
            "/in/sl",
            JSON,
            limited,
            &headers(&now, v0_sig(SECRET, &now, limited.as_bytes())),
        )
        .await;
    p.accepted(a, "app_rate_limited", None).await;

    let tampered = body.replace("hi", "bye");
    let a = p.post("/in/sl", JSON, &tampered, &signed).await;
    p.unsigned(a, &mismatch("x-slack-signature")).await;
    let a = p
        .post(
            "/in/sl",
            JSON,
            body,
            &headers(&now, v0_sig("other-secret", &now, body.as_bytes())),
        )
        .await;
    p.unsigned(a, &mismatch("x-slack-signature")).await;
    let stale = (p.now() - 301).to_string();
    let a = p
        .post(
            "/in/sl",
            JSON,
            body,
            &headers(&stale, v0_sig(SECRET, &stale, body.as_bytes())),
        )
        .await;
    p.unsigned(a, "timestamp").await;
    let a = p.post("/in/sl", JSON, body, &signed[1..]).await;
    p.unsigned(a, "missing header `x-slack-request-timestamp`")
        .await;
    let a = p.post("/in/sl", JSON, body, &signed[..1]).await;
    p.unsigned(a, "missing header `x-slack-signature`").await;
}

#[tokio::test]
async fn paddle_preset() {
    const SECRET: &str = "pdl_ntfset_01gkpjp8bkm3tm53kdgkx6sms7_6h3qd3uFSi9YCD3OLYAShQI90XTI5vEI";
    let mut p = Probe::start(&format!(
        r#"
sources:
  - {{ id: pd, kind: webhook, verify: {{ scheme: paddle, secret: "{SECRET}" }} }}
"#
    ))
    .await;
    let now = p.now();
    let body = |id: &str| {
        format!(
            r#"{{"event_id":"{id}","event_type":"transaction.completed","occurred_at":"2024-04-12T10:18:49.621022Z","notification_id":"ntf_01hv8x2acma2gz9hkw7n4hmqn8","data":{{"id":"txn_01hv8wptq8987qeep44cyrewp9"}}}}"#
        )
    };
    let header = |value: String| vec![("paddle-signature", value)];
    let b1 = body("evt_01hv8x29kz0t586xy6zn1a62rd");
    let signed = header(paddle_header(SECRET, now, &b1));
    let a = p.post("/in/pd", JSON, &b1, &signed).await;
    let first = p
        .accepted(
            a,
            "transaction.completed",
            Some("evt_01hv8x29kz0t586xy6zn1a62rd"),
        )
        .await;
    let a = p.post("/in/pd", JSON, &b1, &signed).await;
    p.duplicate(a, &first).await;

    let tampered = b1.replace("completed", "refunded");
    let a = p.post("/in/pd", JSON, &tampered, &signed).await;
    p.unsigned(a, &mismatch("paddle-signature")).await;
    let a = p
        .post(
            "/in/pd",
            JSON,
            &b1,
            &header(paddle_header("pdl_ntfset_other", now, &b1)),
        )
        .await;
    p.unsigned(a, &mismatch("paddle-signature")).await;
    // Paddle's tolerance is 5 seconds: 6 is too old, 4 is fine.
    let b2 = body("evt_2");
    let a = p
        .post(
            "/in/pd",
            JSON,
            &b2,
            &header(paddle_header(SECRET, now - 6, &b2)),
        )
        .await;
    p.unsigned(a, "timestamp").await;
    let a = p
        .post(
            "/in/pd",
            JSON,
            &b2,
            &header(paddle_header(SECRET, now - 4, &b2)),
        )
        .await;
    p.accepted(a, "transaction.completed", Some("evt_2")).await;
    // A request signed now and replayed 6 s later is stale.
    let b3 = body("evt_3");
    let fresh = header(paddle_header(SECRET, now, &b3));
    p.app.clock.advance(std::time::Duration::from_secs(6));
    let a = p.post("/in/pd", JSON, &b3, &fresh).await;
    p.unsigned(a, "timestamp").await;
    let h1 = paddle_header(SECRET, now, &b3);
    let h1 = h1.split(';').nth(1).unwrap().to_string();
    let a = p.post("/in/pd", JSON, &b3, &header(h1)).await;
    p.unsigned(a, "no `ts` timestamp item").await;
}

#[tokio::test]
async fn zoom_preset() {
    const SECRET: &str = "zoom-webhook-secret-token";
    let mut p = Probe::start(&format!(
        r#"
sources:
  - {{ id: zm, kind: webhook, verify: {{ scheme: zoom, secret: "{SECRET}" }} }}
"#
    ))
    .await;
    let now = p.now().to_string();
    let headers = |ts: &str, sig: String| {
        vec![
            ("x-zm-request-timestamp", ts.to_string()),
            ("x-zm-signature", sig),
        ]
    };
    let body = r#"{"event":"meeting.started","event_ts":1626230691572,"payload":{"account_id":"AAAAAABBBB","object":{"id":"1234567890","topic":"My Meeting"}}}"#;
    let signed = headers(&now, v0_sig(SECRET, &now, body.as_bytes()));
    let a = p.post("/in/zm", JSON, body, &signed).await;
    let first = p.accepted(a, "meeting.started", None).await;
    // Zoom has no idempotency key: the same request again is another event.
    let a = p.post("/in/zm", JSON, body, &signed).await;
    let second = p.accepted(a, "meeting.started", None).await;
    assert_ne!(first["id"], second["id"]);

    let tampered = body.replace("My Meeting", "Their Meeting");
    let a = p.post("/in/zm", JSON, &tampered, &signed).await;
    p.unsigned(a, &mismatch("x-zm-signature")).await;
    let a = p
        .post(
            "/in/zm",
            JSON,
            body,
            &headers(&now, v0_sig("other", &now, body.as_bytes())),
        )
        .await;
    p.unsigned(a, &mismatch("x-zm-signature")).await;
    let stale = (p.now() - 301).to_string();
    let a = p
        .post(
            "/in/zm",
            JSON,
            body,
            &headers(&stale, v0_sig(SECRET, &stale, body.as_bytes())),
        )
        .await;
    p.unsigned(a, "timestamp").await;
    let a = p.post("/in/zm", JSON, body, &signed[..1]).await;
    p.unsigned(a, "missing header `x-zm-signature`").await;
}

#[tokio::test]
async fn square_preset() {
    const KEY: &str = "sq0wsk-signature-key";
    let mut p = Probe::start(&format!(
        r#"
settings: {{ public_url: "https://hooks.example.com/" }}
sources:
  - {{ id: sq, kind: webhook, verify: {{ scheme: square, secret: "{KEY}", url: "https://hooks.example.com/square" }} }}
  - {{ id: sqp, kind: webhook, verify: {{ scheme: square, secret: "{KEY}" }} }}
"#
    ))
    .await;
    const URL: &str = "https://hooks.example.com/square";
    let body = |id: &str| {
        format!(
            r#"{{"merchant_id":"6SSW7HV8K2ST5","type":"payment.updated","event_id":"{id}","created_at":"2024-02-07T21:17:57.447Z","data":{{"type":"payment","id":"KkAkhdMsgzn59SM8A89WgKwekxLZY"}}}}"#
        )
    };
    let header = |sig: String| vec![("x-square-hmacsha256-signature", sig)];
    let b1 = body("13b867cf-db3d-4b1c-90b6-2f32a9d78124");
    let signed = header(square_sig(KEY, URL, &b1));
    let a = p.post("/in/sq", JSON, &b1, &signed).await;
    let first = p
        .accepted(
            a,
            "payment.updated",
            Some("13b867cf-db3d-4b1c-90b6-2f32a9d78124"),
        )
        .await;
    let a = p.post("/in/sq", JSON, &b1, &signed).await;
    p.duplicate(a, &first).await;
    // A query string is part of the notification URL Square signs.
    let b2 = body("e-2");
    let a = p
        .post(
            "/in/sq?tenant=acme&x=1",
            JSON,
            &b2,
            &header(square_sig(KEY, &format!("{URL}?tenant=acme&x=1"), &b2)),
        )
        .await;
    p.accepted(a, "payment.updated", Some("e-2")).await;
    let a = p
        .post(
            "/in/sq?tenant=acme",
            JSON,
            &b2,
            &header(square_sig(KEY, URL, &b2)),
        )
        .await;
    p.unsigned(a, &mismatch("x-square-hmacsha256-signature"))
        .await;
    // Without `verify.url`: the public URL and the source's path.
    let b3 = body("e-3");
    let a = p
        .post(
            "/in/sqp",
            JSON,
            &b3,
            &header(square_sig(KEY, "https://hooks.example.com/in/sqp", &b3)),
        )
        .await;
    p.accepted(a, "payment.updated", Some("e-3")).await;
    // Another URL (the one the request came to) is not what was configured.
    let a = p
        .post(
            "/in/sqp",
            JSON,
            &b3,
            &header(square_sig(KEY, &p.app.url("/in/sqp"), &b3)),
        )
        .await;
    p.unsigned(a, &mismatch("x-square-hmacsha256-signature"))
        .await;

    let tampered = b1.replace("payment.updated", "payment.created");
    let a = p.post("/in/sq", JSON, &tampered, &signed).await;
    p.unsigned(a, &mismatch("x-square-hmacsha256-signature"))
        .await;
    let a = p
        .post(
            "/in/sq",
            JSON,
            &b1,
            &header(square_sig("other-key", URL, &b1)),
        )
        .await;
    p.unsigned(a, &mismatch("x-square-hmacsha256-signature"))
        .await;
    let a = p.post("/in/sq", JSON, &b1, &[]).await;
    p.unsigned(a, "missing header `x-square-hmacsha256-signature`")
        .await;
}

/// Twilio's documented example: this auth token, URL (with its query) and parameters give this
/// `X-Twilio-Signature`.
const TWILIO_VECTOR_TOKEN: &str = "12345";
const TWILIO_VECTOR_URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";
const TWILIO_VECTOR_PARAMS: &[(&str, &str)] = &[
    ("CallSid", "CA1234567890ABCDE"),
    ("Caller", "+14158675309"),
    ("Digits", "1234"),
    ("From", "+14158675309"),
    ("To", "+18005551212"),
];
const TWILIO_VECTOR_SIG: &str = "RSOYDt4T1cUTdK1PDd93/VVr8B8=";

#[tokio::test]
async fn twilio_preset() {
    const AUTH_TOKEN: &str = "twilio-auth-token";
    const URL: &str = "https://hooks.example.com/in/tw";
    let mut p = Probe::start(&format!(
        r#"
sources:
  - {{ id: tw, kind: webhook, verify: {{ scheme: twilio, secret: "{AUTH_TOKEN}", url: "{URL}" }} }}
  - {{ id: twv, kind: webhook, verify: {{ scheme: twilio, secret: "{TWILIO_VECTOR_TOKEN}", url: "https://mycompany.com/myapp.php" }} }}
  - id: twj
    kind: webhook
    verify: {{ scheme: twilio, secret: "{AUTH_TOKEN}", url: "https://hooks.example.com/in/twj" }}
    format: json
    event_type: {{ from: body, path: .type }}
"#
    ))
    .await;
    assert_eq!(
        twilio_sig(TWILIO_VECTOR_TOKEN, TWILIO_VECTOR_URL, TWILIO_VECTOR_PARAMS),
        TWILIO_VECTOR_SIG
    );
    let a = p
        .post(
            "/in/twv?foo=1&bar=2",
            FORM,
            &form_body(TWILIO_VECTOR_PARAMS),
            &[("x-twilio-signature", TWILIO_VECTOR_SIG.into())],
        )
        .await;
    let event = p.accepted(a, "request", None).await;
    assert_eq!(
        event["payload"],
        json!({"CallSid": "CA1234567890ABCDE", "Caller": "+14158675309", "Digits": "1234",
               "From": "+14158675309", "To": "+18005551212"})
    );

    // A message status callback, with a repeated parameter (both values are signed, sorted).
    let params = [
        ("MessageSid", "SM1f0e8ae6ade43cb3c0ce4525424e404f"),
        ("MessageStatus", "delivered"),
        ("To", "+15558675310"),
        ("From", "+15017122661"),
        ("Body", "Hello & welcome, 100% sure?"),
        ("MediaUrl", "https://b.example/2.png"),
        ("MediaUrl", "https://a.example/1.png"),
    ];
    let body = form_body(&params);
    let headers = |sig: String, key: &str| {
        vec![
            ("x-twilio-signature", sig),
            ("i-twilio-idempotency-token", key.to_string()),
        ]
    };
    let signed = headers(twilio_sig(AUTH_TOKEN, URL, &params), "idem-1");
    let a = p.post("/in/tw", FORM, &body, &signed).await;
    let first = p.accepted(a, "message.delivered", Some("idem-1")).await;
    assert_eq!(first["payload"]["Body"], "Hello & welcome, 100% sure?");
    assert_eq!(
        first["payload"]["MediaUrl"],
        json!(["https://b.example/2.png", "https://a.example/1.png"])
    );
    let a = p.post("/in/tw", FORM, &body, &signed).await;
    p.duplicate(a, &first).await;
    let call = [("CallSid", "CA42"), ("CallStatus", "completed")];
    let a = p
        .post(
            "/in/tw",
            FORM,
            &form_body(&call),
            &headers(twilio_sig(AUTH_TOKEN, URL, &call), "idem-2"),
        )
        .await;
    p.accepted(a, "call.completed", Some("idem-2")).await;

    let mut changed = params;
    changed[1].1 = "failed";
    let a = p.post("/in/tw", FORM, &form_body(&changed), &signed).await;
    p.unsigned(a, &mismatch("x-twilio-signature")).await;
    // A parameter added to the body breaks the signature too.
    let a = p
        .post("/in/tw", FORM, &format!("{body}&Extra=1"), &signed)
        .await;
    p.unsigned(a, &mismatch("x-twilio-signature")).await;
    let a = p
        .post(
            "/in/tw",
            FORM,
            &body,
            &headers(twilio_sig("other-token", URL, &params), "idem-3"),
        )
        .await;
    p.unsigned(a, &mismatch("x-twilio-signature")).await;
    // HMAC-SHA256 under the same token is not the preset's algorithm.
    let mut sorted = params.to_vec();
    sorted.sort();
    let joined: String = sorted.iter().map(|(k, v)| format!("{k}{v}")).collect();
    let sha256 = b64(&mac_sha256(
        AUTH_TOKEN.as_bytes(),
        format!("{URL}{joined}").as_bytes(),
    ));
    let a = p
        .post("/in/tw", FORM, &body, &headers(sha256, "idem-3"))
        .await;
    p.unsigned(a, &mismatch("x-twilio-signature")).await;
    let a = p.post("/in/tw", FORM, &body, &signed[1..]).await;
    p.unsigned(a, "missing header `x-twilio-signature`").await;

    // A JSON body is covered by `bodySHA256` in the signed URL.
    use sha2::Digest;
    let json_body =
        r#"{"type":"com.twilio.messaging.message.delivered","data":{"messageSid":"SM1"}}"#;
    let digest = hex(&sha2::Sha256::digest(json_body.as_bytes()));
    let a = p
        .post(
            "/in/twj",
            JSON,
            json_body,
            &headers(
                twilio_sig(AUTH_TOKEN, "https://hooks.example.com/in/twj", &[]),
                "idem-4",
            ),
        )
        .await;
    p.unsigned(a, "no `bodySHA256` parameter").await;
    let signed_url = format!("https://hooks.example.com/in/twj?bodySHA256={digest}");
    let a = p
        .post(
            &format!("/in/twj?bodySHA256={digest}"),
            JSON,
            json_body,
            &headers(twilio_sig(AUTH_TOKEN, &signed_url, &[]), "idem-4"),
        )
        .await;
    p.accepted(a, "com.twilio.messaging.message.delivered", Some("idem-4"))
        .await;
    let other = hex(&sha2::Sha256::digest(b"{}"));
    let other_url = format!("https://hooks.example.com/in/twj?bodySHA256={other}");
    let a = p
        .post(
            &format!("/in/twj?bodySHA256={other}"),
            JSON,
            json_body,
            &headers(twilio_sig(AUTH_TOKEN, &other_url, &[]), "idem-5"),
        )
        .await;
    p.unsigned(a, "not the SHA-256 of the body").await;
    // The default `format: form` source verifies it, then takes only forms.
    let tw_url = format!("{URL}?bodySHA256={digest}");
    let a = p
        .post(
            &format!("/in/tw?bodySHA256={digest}"),
            JSON,
            json_body,
            &headers(twilio_sig(AUTH_TOKEN, &tw_url, &[]), "idem-6"),
        )
        .await;
    p.refused(
        a,
        415,
        "unsupported_media_type",
        "application/x-www-form-urlencoded",
    )
    .await;
}

#[tokio::test]
async fn declarative_hmac_with_sha512_and_base64() {
    // `Y3VzdG9tLWtleS1ieXRlcw==` is base64 for `custom-key-bytes`.
    let mut p = Probe::start(
        r#"
sources:
  - id: acme
    kind: webhook
    verify:
      scheme: hmac
      secret: "Y3VzdG9tLWtleS1ieXRlcw=="
      secret_encoding: base64
      header: X-Acme-Signature
      algorithm: sha512
      encoding: base64
      prefix: "sha512:"
      list: { separator: ";", assign: "=", key: sig }
      timestamp: { item: t, unit: milliseconds }
      tolerance: 30s
      signed: "{id}|{timestamp}|{body}"
      id_header: X-Acme-Delivery
    event_type: { from: header, name: X-Acme-Event }
    idempotency_key: { from: header, name: X-Acme-Delivery }
"#,
    )
    .await;
    let key = b"custom-key-bytes";
    let sign = |key: &[u8], id: &str, t: i64, body: &str| {
        let mac = mac_sha512(key, format!("{id}|{t}|{body}").as_bytes());
        assert_eq!(mac.len(), 64);
        format!("t={t}; sig=sha512:{}", b64(&mac))
    };
    let headers = |id: &str, sig: String| {
        vec![
            ("x-acme-event", "widget.created".to_string()),
            ("x-acme-delivery", id.to_string()),
            ("x-acme-signature", sig),
        ]
    };
    let now_ms = p.app.clock.now_ms();
    let body = r#"{"widget":{"id":7,"name":"sprocket"}}"#;
    let signed = headers("d-1", sign(key, "d-1", now_ms, body));
    let a = p.post("/in/acme", JSON, body, &signed).await;
    let first = p.accepted(a, "widget.created", Some("d-1")).await;
    assert_eq!(first["headers"]["x-acme-delivery"], "d-1");
    let a = p.post("/in/acme", JSON, body, &signed).await;
    p.duplicate(a, &first).await;

    let tampered = body.replace("sprocket", "gear");
    let a = p.post("/in/acme", JSON, &tampered, &signed).await;
    p.unsigned(a, &mismatch("x-acme-signature")).await;
    let a = p
        .post(
            "/in/acme",
            JSON,
            body,
            &headers("d-2", sign(key, "d-1", now_ms, body)),
        )
        .await;
    p.unsigned(a, &mismatch("x-acme-signature")).await;
    let a = p
        .post(
            "/in/acme",
            JSON,
            body,
            &headers(
                "d-2",
                sign(b"Y3VzdG9tLWtleS1ieXRlcw==", "d-2", now_ms, body),
            ),
        )
        .await;
    p.unsigned(a, &mismatch("x-acme-signature")).await;
    // SHA-256 under the right key is not this scheme's algorithm.
    let sha256 = b64(&mac_sha256(key, format!("d-2|{now_ms}|{body}").as_bytes()));
    let a = p
        .post(
            "/in/acme",
            JSON,
            body,
            &headers("d-2", format!("t={now_ms};sig=sha512:{sha256}")),
        )
        .await;
    p.unsigned(a, &mismatch("x-acme-signature")).await;
    // Milliseconds: 31 s away is stale, 29 s is not; a time in seconds is 50 years away.
    let stale = now_ms - 31_000;
    let a = p
        .post(
            "/in/acme",
            JSON,
            body,
            &headers("d-2", sign(key, "d-2", stale, body)),
        )
        .await;
    p.unsigned(a, "timestamp").await;
    let secs = now_ms / 1000;
    let a = p
        .post(
            "/in/acme",
            JSON,
            body,
            &headers("d-2", sign(key, "d-2", secs, body)),
        )
        .await;
    p.unsigned(a, "timestamp").await;
    let a = p
        .post(
            "/in/acme",
            JSON,
            body,
            &headers("d-2", sign(key, "d-2", now_ms - 29_000, body)),
        )
        .await;
    p.accepted(a, "widget.created", Some("d-2")).await;
    let a = p.post("/in/acme", JSON, body, &signed[..2]).await;
    p.unsigned(a, "missing header `x-acme-signature`").await;
}

#[tokio::test]
async fn basic_and_bearer() {
    let mut p = Probe::start(
        r#"
sources:
  - { id: ba, kind: webhook, verify: { scheme: basic, username: ferry, secret: "p@ss: word" } }
  - { id: be, kind: webhook, verify: { scheme: bearer, secret: "tok-3f9a" } }
"#,
    )
    .await;
    let body = r#"{"type":"thing.happened"}"#;
    let basic = |user_pass: &str| {
        vec![(
            "authorization",
            format!("Basic {}", b64(user_pass.as_bytes())),
        )]
    };
    let a = p
        .post("/in/ba", JSON, body, &basic("ferry:p@ss: word"))
        .await;
    p.accepted(a, "thing.happened", None).await;
    // The scheme's name in any case.
    let lower = vec![(
        "authorization",
        format!("basic {}", b64(b"ferry:p@ss: word")),
    )];
    let a = p.post("/in/ba", JSON, body, &lower).await;
    p.accepted(a, "thing.happened", None).await;
    let a = p
        .post("/in/ba", JSON, body, &basic("ferry:p@ss:word"))
        .await;
    p.unsigned(a, "credentials are wrong").await;
    let a = p
        .post("/in/ba", JSON, body, &basic("root:p@ss: word"))
        .await;
    p.unsigned(a, "credentials are wrong").await;
    let a = p
        .post(
            "/in/ba",
            JSON,
            body,
            &[("authorization", "Basic ???".into())],
        )
        .await;
    p.unsigned(a, "not base64").await;
    let a = p
        .post(
            "/in/ba",
            JSON,
            body,
            &[("authorization", "Bearer p@ss: word".into())],
        )
        .await;
    p.unsigned(a, "not `Basic` credentials").await;
    let a = p.post("/in/ba", JSON, body, &[]).await;
    p.unsigned(a, "missing header `authorization`").await;

    let bearer = |token: &str| vec![("authorization", format!("Bearer {token}"))];
    let a = p.post("/in/be", JSON, body, &bearer("tok-3f9a")).await;
    p.accepted(a, "thing.happened", None).await;
    let a = p.post("/in/be", JSON, body, &bearer("tok-3f9b")).await;
    p.unsigned(a, "bearer token is wrong").await;
    let a = p.post("/in/be", JSON, body, &bearer("tok-3f9")).await;
    p.unsigned(a, "bearer token is wrong").await;
    let a = p.post("/in/be", JSON, body, &basic("tok-3f9a")).await;
    p.unsigned(a, "not `Bearer` credentials").await;
    let a = p.post("/in/be", JSON, body, &[]).await;
    p.unsigned(a, "missing header `authorization`").await;
}

// ---------------------------------------------------------------------------------------------
// 2. Slack's and Zoom's endpoint checks: answered when signed, refused otherwise.

#[tokio::test]
async fn slack_and_zoom_endpoint_checks_are_answered_only_when_signed() {
    const SLACK: &str = "slack-secret";
    const ZOOM: &str = "zoom-secret";
    let mut p = Probe::start(&format!(
        r#"
sources:
  - {{ id: sl, kind: webhook, verify: {{ scheme: slack, secret: "{SLACK}" }} }}
  - {{ id: zm, kind: webhook, verify: {{ scheme: zoom, secret: "{ZOOM}" }} }}
"#
    ))
    .await;
    let now = p.now().to_string();
    let slack = r#"{"token":"x","challenge":"abc","type":"url_verification"}"#;
    let slack_headers = |secret: &str, ts: &str| {
        vec![
            ("x-slack-request-timestamp", ts.to_string()),
            ("x-slack-signature", v0_sig(secret, ts, slack.as_bytes())),
        ]
    };
    let a = p
        .post("/in/sl", JSON, slack, &slack_headers(SLACK, &now))
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body, json!({"challenge": "abc"}));
    let a = p.post("/in/sl", JSON, slack, &[]).await;
    p.unsigned(a, "missing header `x-slack-signature`").await;
    let a = p
        .post(
            "/in/sl",
            JSON,
            slack,
            &slack_headers("not-the-secret", &now),
        )
        .await;
    p.unsigned(a, &mismatch("x-slack-signature")).await;
    let stale = (p.now() - 600).to_string();
    let a = p
        .post("/in/sl", JSON, slack, &slack_headers(SLACK, &stale))
        .await;
    p.unsigned(a, "timestamp").await;

    let plain = "qgg8vlvZRS6UYooatFL8Aw";
    let zoom = format!(
        r#"{{"event":"endpoint.url_validation","payload":{{"plainToken":"{plain}"}},"event_ts":1654503849680}}"#
    );
    let zoom_headers = |secret: &str, ts: &str| {
        vec![
            ("x-zm-request-timestamp", ts.to_string()),
            ("x-zm-signature", v0_sig(secret, ts, zoom.as_bytes())),
        ]
    };
    let encrypted = hex(&mac_sha256(ZOOM.as_bytes(), plain.as_bytes()));
    let a = p
        .post("/in/zm", JSON, &zoom, &zoom_headers(ZOOM, &now))
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(
        a.body,
        json!({"plainToken": plain, "encryptedToken": encrypted})
    );
    // Unsigned or signed wrong, nobody gets the HMAC of a token of their choosing.
    let chosen = "attacker-chosen-token";
    let chosen_body = zoom.replace(plain, chosen);
    let chosen_mac = hex(&mac_sha256(ZOOM.as_bytes(), chosen.as_bytes()));
    let a = p.post("/in/zm", JSON, &chosen_body, &[]).await;
    assert!(!a.text.contains(&chosen_mac));
    p.unsigned(a, "missing header `x-zm-signature`").await;
    let a = p
        .post(
            "/in/zm",
            JSON,
            &chosen_body,
            &[
                ("x-zm-request-timestamp", now.clone()),
                (
                    "x-zm-signature",
                    v0_sig("guess", &now, chosen_body.as_bytes()),
                ),
            ],
        )
        .await;
    assert!(!a.text.contains(&chosen_mac));
    p.unsigned(a, &mismatch("x-zm-signature")).await;
    // A signature of the original check does not cover a body with another token.
    let a = p
        .post("/in/zm", JSON, &chosen_body, &zoom_headers(ZOOM, &now))
        .await;
    assert!(!a.text.contains(&chosen_mac));
    p.unsigned(a, &mismatch("x-zm-signature")).await;
    assert_eq!(p.app.event_count().await, 0, "a handshake stores nothing");
}

// ---------------------------------------------------------------------------------------------
// 3. Hostile input on the verification path, each followed by a normal request.

#[tokio::test]
async fn hostile_signatures_timestamps_and_forms_get_clear_answers() {
    const ST: &str = "whsec_hostile";
    const SL: &str = "slack-hostile";
    const GH: &str = "gh-hostile";
    const TW: &str = "tw-hostile";
    const TW_URL: &str = "https://hooks.example.com/in/tw";
    let mut p = Probe::start(&format!(
        r#"
sources:
  - {{ id: st, kind: webhook, verify: {{ scheme: stripe, secret: "{ST}" }} }}
  - {{ id: sw, kind: webhook, verify: {{ scheme: standard-webhooks, secret: "{SECRET}" }} }}
  - {{ id: sl, kind: webhook, verify: {{ scheme: slack, secret: "{SL}" }} }}
  - {{ id: gh, kind: webhook, verify: {{ scheme: github, secret: "{GH}" }} }}
  - {{ id: tw, kind: webhook, verify: {{ scheme: twilio, secret: "{TW}", url: "{TW_URL}" }} }}
"#
    ))
    .await;
    let mut n = 0;
    // A normal Stripe event, which the same app must take after each hostile request.
    macro_rules! normal {
        () => {{
            n += 1;
            let now = p.now();
            let body = format!(r#"{{"id":"evt_normal_{n}","type":"charge.succeeded"}}"#);
            let sig = format!("t={now},v1={}", stripe_v1(ST, now, &body));
            let a = p
                .post("/in/st", JSON, &body, &[("stripe-signature", sig)])
                .await;
            p.accepted(a, "charge.succeeded", Some(&format!("evt_normal_{n}")))
                .await;
        }};
    }
    let now = p.now();
    let body = r#"{"id":"evt_h","type":"charge.succeeded"}"#;

    // A 100 KB signature header: over the 64 KiB request head, `431` before any handler.
    let huge = format!("sha256={}", "a".repeat(100_000));
    let a = p
        .post(
            "/in/gh",
            JSON,
            body,
            &[
                ("x-github-event", "push".into()),
                ("x-hub-signature-256", huge),
            ],
        )
        .await;
    assert_eq!(a.status, 431, "{}", a.text);
    normal!();
    // Just under the head limit, it reaches the check and does not match.
    let big = format!("sha256={}", "ab".repeat(30_000));
    let a = p
        .post(
            "/in/gh",
            JSON,
            body,
            &[
                ("x-github-event", "push".into()),
                ("x-hub-signature-256", big),
            ],
        )
        .await;
    p.unsigned(a, &mismatch("x-hub-signature-256")).await;
    normal!();

    // Timestamps at and past the ends of a 64-bit integer, in each place a preset reads one.
    for ts in [
        "99999999999999999999",
        "-9223372036854775808",
        "9223372036854775807",
    ] {
        let sig = hex(&mac_sha256(
            ST.as_bytes(),
            format!("{ts}.{body}").as_bytes(),
        ));
        let a = p
            .post(
                "/in/st",
                JSON,
                body,
                &[("stripe-signature", format!("t={ts},v1={sig}"))],
            )
            .await;
        p.unsigned(a, "timestamp").await;
        normal!();
        let a = p
            .post(
                "/in/sl",
                JSON,
                body,
                &[
                    ("x-slack-request-timestamp", ts.to_string()),
                    ("x-slack-signature", v0_sig(SL, ts, body.as_bytes())),
                ],
            )
            .await;
        p.unsigned(a, "timestamp").await;
        normal!();
        let sw = format!(
            "v1,{}",
            b64(&mac_sha256(
                &B64.decode(SECRET.trim_start_matches("whsec_")).unwrap(),
                format!("msg_h.{ts}.{body}").as_bytes()
            ))
        );
        let a = p
            .post(
                "/in/sw",
                JSON,
                body,
                &[
                    ("webhook-id", "msg_h".into()),
                    ("webhook-timestamp", ts.into()),
                    ("webhook-signature", sw),
                ],
            )
            .await;
        p.unsigned(a, "timestamp").await;
        normal!();
    }
    for not_a_time in ["1e9", "", "0x10", "17e8", "1700000000.5"] {
        let a = p
            .post(
                "/in/sl",
                JSON,
                body,
                &[
                    ("x-slack-request-timestamp", not_a_time.to_string()),
                    ("x-slack-signature", v0_sig(SL, not_a_time, body.as_bytes())),
                ],
            )
            .await;
        p.unsigned(a, "not a unix time").await;
        normal!();
    }

    // A signature list of 10,000 items: the right one last is found, none right is refused.
    let right = stripe_v1(ST, now, body);
    let many = "v1=00,".repeat(10_000);
    let a = p
        .post(
            "/in/st",
            JSON,
            body,
            &[("stripe-signature", format!("t={now},{many}v1={right}"))],
        )
        .await;
    p.accepted(a, "charge.succeeded", Some("evt_h")).await;
    let a = p
        .post(
            "/in/st",
            JSON,
            r#"{"id":"evt_h2","type":"charge.succeeded"}"#,
            &[("stripe-signature", format!("t={now},{many}v1={right}"))],
        )
        .await;
    p.unsigned(a, &mismatch("stripe-signature")).await;
    normal!();
    let sw_body = r#"{"type":"list.test"}"#;
    let sw_right = standard_webhooks_sig(SECRET, "msg_list", now, sw_body);
    // (`v1,A` is no base64: 10,000 items parsed, none decoded; Stripe's above decode.)
    let sw_many = "v1,A ".repeat(10_000);
    let a = p
        .post(
            "/in/sw",
            JSON,
            sw_body,
            &[
                ("webhook-id", "msg_list".into()),
                ("webhook-timestamp", now.to_string()),
                ("webhook-signature", format!("{sw_many}{sw_right}")),
            ],
        )
        .await;
    p.accepted(a, "list.test", Some("msg_list")).await;
    normal!();
    // 10,000 items of which none is under the signature's key.
    let a = p
        .post(
            "/in/st",
            JSON,
            body,
            &[(
                "stripe-signature",
                format!("t={now},{}", "x=1,".repeat(10_000)),
            )],
        )
        .await;
    p.unsigned(a, "no `v1=` item").await;
    normal!();

    // Bytes that are not text in the headers the check reads.
    let gh_body = r#"{"zen":"x"}"#;
    let gh_sig = format!(
        "sha256={}",
        hex(&mac_sha256(GH.as_bytes(), gh_body.as_bytes()))
    );
    let ff = || HeaderValue::from_bytes(b"\xff").unwrap();
    let a = p
        .send(
            "/in/gh",
            JSON,
            gh_body,
            vec![
                ("x-github-event", HeaderValue::from_static("push")),
                ("x-hub-signature-256", ff()),
            ],
        )
        .await;
    p.unsigned(a, "not visible ASCII").await;
    normal!();
    let a = p
        .send(
            "/in/sl",
            JSON,
            body,
            vec![
                ("x-slack-request-timestamp", ff()),
                (
                    "x-slack-signature",
                    HeaderValue::from_str(&v0_sig(SL, "x", body.as_bytes())).unwrap(),
                ),
            ],
        )
        .await;
    p.unsigned(a, "not visible ASCII").await;
    normal!();
    // Signed right, with the event type or the key not text: `400`.
    let a = p
        .send(
            "/in/gh",
            JSON,
            gh_body,
            vec![
                (
                    "x-github-event",
                    HeaderValue::from_bytes(b"pu\xffsh").unwrap(),
                ),
                (
                    "x-hub-signature-256",
                    HeaderValue::from_str(&gh_sig).unwrap(),
                ),
            ],
        )
        .await;
    p.refused(a, 400, "invalid_event_type", "not visible ASCII")
        .await;
    normal!();
    let a = p
        .send(
            "/in/gh",
            JSON,
            gh_body,
            vec![
                ("x-github-event", HeaderValue::from_static("push")),
                ("x-github-delivery", ff()),
                (
                    "x-hub-signature-256",
                    HeaderValue::from_str(&gh_sig).unwrap(),
                ),
            ],
        )
        .await;
    p.refused(a, 400, "invalid_idempotency_key", "not visible ASCII")
        .await;
    normal!();
    // Latin-1 bytes after the prefix.
    let mut obs = b"sha256=".to_vec();
    obs.extend_from_slice(b"\xe9\xe9");
    let a = p
        .send(
            "/in/gh",
            JSON,
            gh_body,
            vec![
                ("x-github-event", HeaderValue::from_static("push")),
                (
                    "x-hub-signature-256",
                    HeaderValue::from_bytes(&obs).unwrap(),
                ),
            ],
        )
        .await;
    p.unsigned(a, "not visible ASCII").await;
    normal!();

    // A Twilio form with `%FF`, which is no UTF-8 once decoded. Twilio signs the decoded
    // parameters; a framework decodes the byte as U+FFFD, as the signature here does. Signed
    // so, the check passes and the form is refused as a form: `400`, never a `500`.
    for (raw, params) in [
        (
            "MessageSid=SM1&MessageStatus=sent&Body=%FF",
            vec![
                ("MessageSid", "SM1"),
                ("MessageStatus", "sent"),
                ("Body", "\u{fffd}"),
            ],
        ),
        (
            "MessageSid=SM1&%FF=x&MessageStatus=sent",
            vec![
                ("MessageSid", "SM1"),
                ("\u{fffd}", "x"),
                ("MessageStatus", "sent"),
            ],
        ),
    ] {
        let a = p
            .post(
                "/in/tw",
                FORM,
                raw,
                &[("x-twilio-signature", twilio_sig(TW, TW_URL, &params))],
            )
            .await;
        p.refused(a, 400, "invalid_form", "not UTF-8").await;
        normal!();
        let a = p
            .post(
                "/in/tw",
                FORM,
                raw,
                &[("x-twilio-signature", "AAAA".into())],
            )
            .await;
        p.unsigned(a, &mismatch("x-twilio-signature")).await;
        normal!();
    }
    // And a body that is not a form at all, with no `bodySHA256`.
    let a = p
        .send(
            "/in/tw",
            FORM,
            b"\xff\xfe\x00=\x01".to_vec(),
            vec![("x-twilio-signature", HeaderValue::from_static("AAAA"))],
        )
        .await;
    p.unsigned(a, &mismatch("x-twilio-signature")).await;
    normal!();
}

// ---------------------------------------------------------------------------------------------
// 4. The providers' official Python SDKs against a running app.

#[tokio::test]
async fn the_providers_python_sdks_sign_what_ferry_takes() {
    const SW: &str = "whsec_c2RrLWNoZWNrLXN0YW5kYXJkLXdlYmhvb2tz";
    const SL: &str = "sdk-slack-secret";
    const TW: &str = "sdk-twilio-token";
    const ST: &str = "whsec_sdkcheck";
    const SQ: &str = "sdk-square-key";
    const PD: &str = "pdl_ntfset_01hsdk_check";
    let p = Probe::start(&format!(
        r#"
settings: {{ public_url: "https://hooks.example.com" }}
sources:
  - {{ id: sw, kind: webhook, verify: {{ scheme: standard-webhooks, secret: "{SW}" }} }}
  - {{ id: sl, kind: webhook, verify: {{ scheme: slack, secret: "{SL}" }} }}
  - {{ id: tw, kind: webhook, verify: {{ scheme: twilio, secret: "{TW}" }} }}
  - {{ id: st, kind: webhook, verify: {{ scheme: stripe, secret: "{ST}" }} }}
  - {{ id: sq, kind: webhook, verify: {{ scheme: square, secret: "{SQ}", url: "https://hooks.example.com/square" }} }}
  - {{ id: pd, kind: webhook, verify: {{ scheme: paddle, secret: "{PD}" }} }}
"#
    ))
    .await;
    let root = env!("CARGO_MANIFEST_DIR");
    let out = tokio::process::Command::new("python3")
        .arg(format!("{root}/tests/providers/sdk_check.py"))
        .arg(p.app.url(""))
        .env("FERRY_NOW", p.now().to_string())
        .env("SW_SECRET", SW)
        .env("SLACK_SECRET", SL)
        .env("TWILIO_TOKEN", TW)
        .env("TWILIO_URL", "https://hooks.example.com/in/tw")
        .env("STRIPE_SECRET", ST)
        .env("SQUARE_KEY", SQ)
        .env("SQUARE_URL", "https://hooks.example.com/square")
        .env("PADDLE_SECRET", PD)
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the SDK check failed (it needs the providers' SDKs that .ci/run installs with pip):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Each event the script had taken is stored with the provider's type and key.
    let mut seen = Vec::new();
    for line in stdout.lines() {
        let Some(rest) = line.strip_prefix("event ") else {
            continue;
        };
        let parts: Vec<&str> = rest.split(' ').collect();
        let [source, id, event_type, key] = parts[..] else {
            panic!("bad line `{line}`");
        };
        let event = p.event(id).await;
        assert_eq!(event["source"], source, "{event:#}");
        assert_eq!(event["event_type"], event_type, "{event:#}");
        let key = (key != "-").then_some(key);
        assert_eq!(event["idempotency_key"].as_str(), key, "{event:#}");
        seen.push(source.to_string());
    }
    seen.sort();
    assert_eq!(seen, ["pd", "sl", "sq", "st", "sw", "tw", "tw"], "{stdout}");
    assert_eq!(p.app.event_count().await, 7, "{stdout}");
}

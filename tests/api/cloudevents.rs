//! CloudEvents 1.0 over HTTP into a source with `format: cloudevents`: structured, binary and
//! batch modes as the official Python SDK encodes them (`tests/cloudevents/sdk_check.py`), the
//! stored event (its type, idempotency key and structured JSON), the abuse-protection `OPTIONS`
//! check, and hostile input, after which the same app still takes events.

use crate::helpers::*;
use serde_json::{Value, json};

const CONFIG: &str = r#"
sources:
  - { id: ce, kind: webhook, format: cloudevents, verify: { scheme: none } }
  - { id: ce-batch, kind: webhook, format: cloudevents, cloudevents: { batch: true }, verify: { scheme: none } }
  - { id: plain, kind: webhook, verify: { scheme: none } }
"#;

async fn event(app: &TestApp, id: &Value) -> Value {
    let (status, event) = app
        .api_get(&format!("/api/v1/events/{}", id.as_str().unwrap()))
        .await;
    assert_eq!(status, 200, "{event}");
    event
}

#[tokio::test]
async fn the_python_sdks_structured_binary_and_batch_events_are_taken() {
    let app = spawn_app(CONFIG).await;
    let out = tokio::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/cloudevents/sdk_check.py"
        ))
        .arg(app.url(""))
        .output()
        .await
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "the CloudEvents SDK check failed (it needs `pip install cloudevents==2.2.0`, as .ci/run installs it):\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Value = serde_json::from_slice(&out.stdout).unwrap();

    // Structured mode: the body is the event, stored as sent.
    assert_eq!(results["structured"][0], 202, "{results}");
    let stored = event(&app, &results["structured"][1]["event_id"]).await;
    assert_eq!(stored["event_type"], "order.created");
    assert_eq!(
        stored["idempotency_key"],
        r#"["/shop/eu","sdk-structured-1"]"#
    );
    assert_eq!(
        stored["payload"]["data"],
        json!({"order": 42, "total": "9.90"})
    );
    assert_eq!(stored["payload"]["subject"], "order 42 ü");
    assert_eq!(stored["payload"]["shopregion"], "eu");

    // Binary mode: the `ce-` headers percent-decoded into attributes, the body the data.
    assert_eq!(results["binary"][0], 202, "{results}");
    let stored = event(&app, &results["binary"][1]["event_id"]).await;
    assert_eq!(stored["event_type"], "order.paid");
    assert_eq!(stored["idempotency_key"], r#"["/shop/eu","sdk binary 1"]"#);
    let payload = &stored["payload"];
    assert_eq!(payload["id"], "sdk binary 1");
    assert_eq!(payload["subject"], "order 42 ü");
    assert_eq!(payload["specversion"], "1.0");
    assert_eq!(payload["datacontenttype"], "application/json");
    assert_eq!(payload["data"], json!({"order": 42}));
    assert!(
        payload["time"].as_str().unwrap().ends_with('Z'),
        "{payload}"
    );

    // Data that is not JSON is kept as `data_base64`.
    assert_eq!(results["binary_text"][0], 202, "{results}");
    let stored = event(&app, &results["binary_text"][1]["event_id"]).await;
    assert_eq!(stored["payload"]["data_base64"], "aGVsbG8sIGZlcnJ5");
    assert_eq!(stored["payload"]["datacontenttype"], "text/plain");

    // A batch: refused where it is not enabled; each event taken where it is, once.
    assert_eq!(results["batch_refused"][0], 415, "{results}");
    assert!(
        results["batch_refused"][1]["message"]
            .as_str()
            .unwrap()
            .contains("batch: true"),
        "{results}"
    );
    assert_eq!(results["batch"][0], 202, "{results}");
    let taken = results["batch"][1]["events"].as_array().unwrap();
    assert_eq!(taken.len(), 3);
    for (n, t) in taken.iter().enumerate() {
        assert_eq!(t["duplicate"], false);
        let stored = event(&app, &t["event_id"]).await;
        assert_eq!(stored["event_type"], "tick");
        assert_eq!(stored["source"], "ce-batch");
        assert_eq!(stored["payload"]["data"]["n"], n);
    }
    let again = results["batch_again"][1]["events"].as_array().unwrap();
    assert!(
        again
            .iter()
            .zip(taken)
            .all(|(a, t)| a["duplicate"] == true && a["event_id"] == t["event_id"]),
        "a batch sent again is all duplicates: {results}"
    );
    assert_eq!(app.event_count().await, 6);
}

#[tokio::test]
async fn a_structured_and_a_binary_event_with_the_same_source_and_id_are_one_event() {
    let app = spawn_app(CONFIG).await;
    let structured =
        br#"{"specversion":"1.0","id":"A-1","source":"urn:shop","type":"t.one","data":{"x":1}}"#;
    let (status, first) = post_raw(
        &app,
        "/in/ce",
        &[(
            "content-type",
            "application/cloudevents+json; charset=utf-8",
        )],
        structured,
    )
    .await;
    assert_eq!(status, 202, "{first}");
    let binary = [
        ("ce-specversion", "1.0"),
        ("ce-id", "A-1"),
        ("ce-source", "urn:shop"),
        ("ce-type", "t.one"),
        ("content-type", "application/json"),
    ];
    let (status, again) = post_raw(&app, "/in/ce", &binary, br#"{"x":1}"#).await;
    assert_eq!(
        (status, &again["duplicate"]),
        (200, &json!(true)),
        "{again}"
    );
    assert_eq!(again["event_id"], first["event_id"]);
    // Another source with the same id is another event.
    let mut other = binary;
    other[2] = ("ce-source", "urn:elsewhere");
    let (status, _) = post_raw(&app, "/in/ce", &other, br#"{"x":1}"#).await;
    assert_eq!(status, 202);
}

/// What is sent (a name, the headers, the body), and the status and words of its refusal.
type Case<'a> = (&'a str, Vec<(&'a str, String)>, Vec<u8>, u16, &'a str);

#[tokio::test]
async fn what_is_not_a_cloudevent_is_refused_with_its_reason_and_the_app_goes_on() {
    let app = spawn_app(CONFIG).await;
    let ce = |extra: &str| {
        format!(r#"{{"specversion":"1.0","id":"1","source":"s","type":"t"{extra}}}"#).into_bytes()
    };
    let structured = [("content-type", "application/cloudevents+json")];
    let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    let huge_id = "i".repeat(5_000);
    let cases: Vec<Case> = vec![
        (
            "plain JSON",
            vec![("content-type", "application/json".into())],
            b"{}".to_vec(),
            415,
            "ce-specversion",
        ),
        (
            "no id",
            vec![("content-type", structured[0].1.into())],
            br#"{"specversion":"1.0","source":"s","type":"t"}"#.to_vec(),
            400,
            "`id`",
        ),
        (
            "an empty type",
            vec![("content-type", structured[0].1.into())],
            br#"{"specversion":"1.0","id":"1","source":"s","type":""}"#.to_vec(),
            400,
            "`type`",
        ),
        (
            "version 0.3",
            vec![("content-type", structured[0].1.into())],
            br#"{"specversion":"0.3","id":"1","source":"s","type":"t"}"#.to_vec(),
            400,
            "0.3",
        ),
        (
            "data twice",
            vec![("content-type", structured[0].1.into())],
            ce(r#","data":1,"data_base64":"AA==""#),
            400,
            "both",
        ),
        (
            "an array",
            vec![("content-type", structured[0].1.into())],
            b"[1]".to_vec(),
            400,
            "not a JSON object",
        ),
        (
            "deep nesting",
            vec![("content-type", structured[0].1.into())],
            ce(&format!(r#","data":{deep}"#)),
            400,
            "strict JSON",
        ),
        (
            "invalid UTF-8",
            vec![("content-type", structured[0].1.into())],
            [&ce("")[..10], b"\xff\xfe", &ce("")[10..]].concat(),
            400,
            "strict JSON",
        ),
        (
            "a huge id",
            vec![("content-type", structured[0].1.into())],
            format!(r#"{{"specversion":"1.0","id":"{huge_id}","source":"s","type":"t"}}"#)
                .into_bytes(),
            422,
            "idempotency key",
        ),
        (
            "a huge number",
            vec![("content-type", structured[0].1.into())],
            ce(r#","data":1e999999"#),
            400,
            "strict JSON",
        ),
        (
            "binary, a %FF attribute",
            vec![
                ("ce-specversion", "1.0".into()),
                ("ce-id", "%FF".into()),
                ("ce-source", "s".into()),
                ("ce-type", "t".into()),
            ],
            b"{}".to_vec(),
            400,
            "UTF-8",
        ),
        (
            "binary, no type",
            vec![
                ("ce-specversion", "1.0".into()),
                ("ce-id", "1".into()),
                ("ce-source", "s".into()),
            ],
            b"{}".to_vec(),
            400,
            "`type`",
        ),
        (
            "binary, a bad attribute name",
            vec![
                ("ce-specversion", "1.0".into()),
                ("ce-id", "1".into()),
                ("ce-source", "s".into()),
                ("ce-type", "t".into()),
                ("ce-bad_name", "x".into()),
            ],
            b"{}".to_vec(),
            400,
            "lower-case",
        ),
        (
            "binary, JSON data that is not JSON",
            vec![
                ("ce-specversion", "1.0".into()),
                ("ce-id", "1".into()),
                ("ce-source", "s".into()),
                ("ce-type", "t".into()),
                ("content-type", "application/json".into()),
            ],
            b"{nope".to_vec(),
            400,
            "strict JSON",
        ),
        (
            "a batch that is not an array",
            vec![("content-type", "application/cloudevents-batch+json".into())],
            b"{}".to_vec(),
            400,
            "JSON array",
        ),
    ];
    for (what, headers, body, status, says) in &cases {
        let path = if what.starts_with("a batch") {
            "/in/ce-batch"
        } else {
            "/in/ce"
        };
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let (got, answer) = post_raw(&app, path, &headers, body).await;
        assert_eq!(got, *status, "{what}: {answer}");
        assert!(
            answer["message"].as_str().unwrap().contains(says),
            "{what}: {answer}"
        );
    }
    // A batch with a bad event in the middle: the events before it are taken, and the answer
    // says which one was refused.
    let batch = br#"[{"specversion":"1.0","id":"b1","source":"s","type":"t"},{"specversion":"1.0","id":"b2","source":"s"}]"#;
    let (got, answer) = post_raw(
        &app,
        "/in/ce-batch",
        &[("content-type", "application/cloudevents-batch+json")],
        batch,
    )
    .await;
    assert_eq!(got, 400, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("event 1 of the batch"),
        "{answer}"
    );
    assert_eq!(
        app.event_count().await,
        0,
        "a batch is checked whole before any of it is taken"
    );
    let deep_batch = format!("[{}]", deep);
    let (got, _) = post_raw(
        &app,
        "/in/ce-batch",
        &[("content-type", "application/cloudevents-batch+json")],
        deep_batch.as_bytes(),
    )
    .await;
    assert_eq!(got, 400);

    wait_until("the refusals are in the rejected log", || async {
        app.state.store.count_rejections().await.unwrap() >= cases.len() as i64 + 2
    })
    .await;
    let (_, log) = app.api_get("/api/v1/rejections?limit=1").await;
    assert_eq!(log["data"][0]["source"], "ce-batch", "{log}");

    // The same app takes a good event afterwards.
    let (status, answer) =
        post_raw(&app, "/in/ce", &structured, &ce(r#","data":{"ok":true}"#)).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(app.event_count().await, 1);
}

#[tokio::test]
async fn the_abuse_protection_check_is_answered_on_a_cloudevents_source() {
    let app = spawn_app(CONFIG).await;
    let options = |path: &str| app.http.request(reqwest::Method::OPTIONS, app.url(path));
    let answer = options("/in/ce")
        .header("WebHook-Request-Origin", "eventemitter.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(
        answer.headers()["webhook-allowed-origin"],
        "eventemitter.example.com"
    );
    assert_eq!(answer.headers()["allow"], "POST");
    assert!(answer.headers().get("webhook-allowed-rate").is_none());

    let answer = options("/in/ce")
        .header("WebHook-Request-Origin", "eventemitter.example.com")
        .header("WebHook-Request-Rate", "120")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["webhook-allowed-rate"], "*");

    let answer = options("/in/ce").send().await.unwrap();
    assert_eq!(answer.status(), 400);
    let answer = options("/in/plain")
        .header("WebHook-Request-Origin", "x")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 405);
    assert_eq!(answer.headers()["allow"], "POST");
    let answer = options("/in/nope")
        .header("WebHook-Request-Origin", "x")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 404);
}

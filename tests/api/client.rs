//! The CLI client against a real server: tables for people, `--json` for scripts, clear errors
//! when the server cannot be reached.

use crate::helpers::*;

fn ferry(app: &TestApp, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .args(["--url", &app.url(""), "--token", TOKEN])
        .env_remove("FERRY_API_TOKEN")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_commands_show_events_dead_letters_runs_and_tokens() {
    let crm = Receiver::start_with(Reply::status(410)).await;
    let app = spawn_app(&format!(
        r#"
settings: {{ allow_private_destinations: true }}
sources: [ {{ id: shop, kind: webhook, verify: {{ scheme: none }} }} ]
destinations: [ {{ id: crm, kind: http, url: "{}" }} ]
flows: [ {{ id: to-crm, on: {{ source: shop }}, steps: [ {{ deliver: crm }} ] }} ]
"#,
        crm.url
    ))
    .await;
    let event = app
        .accept("/in/shop", r#"{"type":"order.created","n":1}"#, &[])
        .await;
    let delivery = app.only_delivery(&event).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let run = app.run_of(&event, "to-crm").await;
    app.wait_attempts(&delivery, 1).await;
    wait_until("the run fails", || async {
        let (_, r) = app.api_get(&format!("/api/v1/runs/{run}")).await;
        r["status"] == "failed"
    })
    .await;

    let (ok, out, err) = ferry(&app, &["events", "list"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("ID"), "{out}");
    assert!(
        out.contains(&event) && out.contains("order.created"),
        "{out}"
    );
    let (ok, out, _) = ferry(&app, &["events", "list", "--json", "--source", "nope"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["data"], serde_json::json!([]));

    let (ok, out, _) = ferry(&app, &["events", "show", &event]);
    assert!(ok);
    assert!(
        out.contains("to-crm") && out.contains("dead") && out.contains("HTTP 410"),
        "{out}"
    );

    let (ok, out, _) = ferry(&app, &["dlq", "list"]);
    assert!(ok);
    assert!(
        out.contains("delivery") && out.contains(&delivery) && out.contains("crm"),
        "{out}"
    );

    let (ok, out, _) = ferry(&app, &["deliveries", "show", &delivery]);
    assert!(ok);
    assert!(out.contains("410") && out.contains("failed"), "{out}");

    let (ok, out, _) = ferry(&app, &["runs", "show", &run]);
    assert!(ok);
    assert!(out.contains("deliver") && out.contains("failed"), "{out}");
    let (ok, out, _) = ferry(&app, &["runs", "list", "--status", "failed"]);
    assert!(ok && out.starts_with("ID") && out.contains(&run), "{out}");
    let (ok, out, _) = ferry(&app, &["deliveries", "list", "--status", "dead", "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["data"][0]["id"], delivery.as_str());
    let (ok, out, _) = ferry(
        &app,
        &["replay", "deliveries", "--destination", "crm", "--dry-run"],
    );
    assert!(ok && out.contains("1 dead deliveries match"), "{out}");

    crm.set_fallback(Reply::status(200));
    let (ok, out, err) = ferry(&app, &["replay", "delivery", &delivery]);
    assert!(ok, "{err}");
    assert!(out.contains("pending again"), "{out}");
    crm.wait_for(2).await;
    let (ok, out, _) = ferry(&app, &["replay", "runs", "--dry-run"]);
    assert!(ok);
    assert!(out.contains("0 failed runs match"), "{out}");

    let (ok, out, err) = ferry(
        &app,
        &["tokens", "create", "--name", "ci", "--scope", "read"],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("fry_") && out.contains("shown this once"),
        "{out}"
    );
    let (_, out, _) = ferry(&app, &["tokens", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = v["data"][0]["id"].as_str().unwrap().to_string();
    let (ok, out, _) = ferry(&app, &["tokens", "revoke", &id]);
    assert!(ok && out.contains("revoked"), "{out}");

    // Errors say what is wrong.
    let (ok, _, err) = ferry(&app, &["runs", "show", "run_nope"]);
    assert!(!ok);
    assert!(err.contains("404 not_found"), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["dlq", "list", "--url", "http://127.0.0.1:9", "--token", "x"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot reach Ferry at http://127.0.0.1:9"),
        "{err}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["dlq", "list"])
        .env_remove("FERRY_API_TOKEN")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("no API token"));
}

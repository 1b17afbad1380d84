//! The `ferry` binary as a person runs it: `validate`, `serve` refusing a bad config, the
//! generated API token, and JSON logs that never show a secret or a signature.

use crate::helpers::*;
use std::process::Command;
use std::time::Duration;

fn ferry() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
}

const BAD: &str = r#"
sources:
  - id: shop
    kind: webhook
    verify: { scheme: none }
destinations:
  - id: crm
    kind: http
    url: http://127.0.0.1:9/hooks
flows:
  - id: f
    on: { source: shop }
    steps:
      - deliver: [crm, ghost]
"#;

#[test]
fn validate_reports_every_error_with_its_place_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, BAD).unwrap();
    let out = ferry()
        .args(["validate", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the config has 2 errors"), "{stderr}");
    assert!(
        stderr.contains("bad.yaml:7 (destination crm): `url`: address 127.0.0.1 is loopback"),
        "{stderr}"
    );
    assert!(
        stderr
            .contains("bad.yaml:11 (flow f), step 1: `deliver`: no destination has the id `ghost`"),
        "{stderr}"
    );

    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        BAD.replace(", ghost", "").replace(
            "sources:",
            "settings: { allow_private_destinations: true }\nsources:",
        ),
    )
    .unwrap();
    let out = ferry()
        .args(["validate", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("ok (1 sources, 0 event types, 1 destinations, 1 flows)")
    );
}

#[test]
fn serve_refuses_an_invalid_config_with_the_same_report() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, BAD).unwrap();
    let out = ferry()
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no destination has the id `ghost`"),
        "{stderr}"
    );
    assert!(stderr.contains("refusing to start"), "{stderr}");
}

#[tokio::test]
async fn serve_generates_a_token_and_logs_no_secret() {
    if skip_on_postgres(
        "makes the API token file of a SQLite data directory (cluster mode needs the token given)",
    ) {
        return;
    }
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.yaml");
    let hmac_secret = "gh-hmac-secret-value-1234";
    let (bearer, password) = ("step-bearer-secret-77", "basic-pass-secret-88");
    let slack = Receiver::start().await;
    // A Slack webhook URL is a credential; so is the SMTP password.
    let slack_url = format!("{}?token=slack-path-secret-99", slack.url);
    let smtp_password = "smtp-password-secret-55";
    std::fs::write(
        &config,
        format!(
            r#"
settings: {{ allow_private_destinations: true, alert_interval: 1s }}
channels:
  - {{ id: team, kind: slack, url: "{slack_url}" }}
  - {{ id: mail, kind: email, smtp: {{ host: 127.0.0.1, port: 9, tls: none, username: u, password: "{smtp_password}" }}, from: f@example.com, to: [t@example.com] }}
alerts:
  - {{ id: quiet-github, when: {{ source_silent: {{ source: gh, for: 1s }} }}, notify: [team, mail] }}
sources:
  - {{ id: shop, kind: webhook, verify: {{ scheme: standard-webhooks, secret: "${{SHOP_SECRET}}" }} }}
  - {{ id: gh, kind: webhook, verify: {{ scheme: hmac, header: X-Hub-Signature-256, secret: "{hmac_secret}" }}, event_type: {{ from: header, name: X-GitHub-Event }} }}
destinations: [ {{ id: d, kind: http, url: "{}", signing: {{ secret: "${{SHOP_SECRET}}" }}, retry: {{ max_attempts: 1 }} }} ]
flows:
  - {{ id: f, on: {{ source: shop }}, steps: [ {{ deliver: d }} ] }}
  - id: calls
    on: {{ source: shop }}
    steps:
      - {{ name: one, http: {{ method: POST, url: "{0}", auth: {{ bearer: "{bearer}" }}, body: '{{n: 1}}' }} }}
      - {{ http: {{ method: POST, url: "{0}", auth: {{ basic: {{ username: u, password: "{password}" }} }}, body: '{{n: 2}}' }} }}
"#,
            receiver.url
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let args = [
        "--log-format".as_ref(),
        "json".as_ref(),
        "serve".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
    ];
    let (mut child, base) = spawn_serve(
        &args,
        &[("SHOP_SECRET", SECRET), ("FERRY_LOG", "trace")],
        std::process::Stdio::piped(),
    )
    .await;
    let http = client();

    let token_file = ferry::app::token_path(&data);
    let token = std::fs::read_to_string(&token_file).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let r = http
        .get(format!("{base}/api/v1/dead-letters"))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let body = r#"{"type":"order.created","total":5}"#;
    let now = ferry::clock::system_now_ms() / 1000;
    let signed = signed_headers(body, "msg_log_1", now);
    let mut request = http
        .post(format!("{base}/in/shop"))
        .header("content-type", "application/json")
        .body(body);
    for (k, v) in &signed {
        request = request.header(*k, v);
    }
    assert_eq!(request.send().await.unwrap().status(), 202);
    let forged = http
        .post(format!("{base}/in/gh"))
        .header("x-github-event", "push")
        .header("x-hub-signature-256", "sha256=00ff")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    receiver.wait_for(3).await;
    let outgoing_signature = receiver
        .requests()
        .iter()
        .find_map(|r| r.headers.get("webhook-signature"))
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    // The silent-source alert fires after a second or two and goes to Slack (and fails to
    // reach the SMTP port).
    slack.wait_for(1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.start_kill().unwrap();
    let out = child.wait_with_output().await.unwrap();
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(logs.lines().count() > 3, "{logs}");
    for line in logs.lines() {
        let parsed: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(parsed["level"].is_string(), "{line}");
    }
    let secret_b64 = SECRET.trim_start_matches("whsec_");
    for needle in [
        secret_b64,
        hmac_secret,
        bearer,
        password,
        "slack-path-secret-99",
        smtp_password,
        "dTpiYXNpYy1wYXNzLXNlY3JldC04OA",
        token.trim(),
        signed[2].1.trim_start_matches("v1,"),
        outgoing_signature.trim_start_matches("v1,"),
    ] {
        assert!(
            !logs.contains(needle),
            "a log line shows `{needle}`:\n{logs}"
        );
    }
    assert!(
        logs.contains("input rejected"),
        "refusals are logged: {logs}"
    );
    assert!(
        logs.contains(&format!("{}", token_file.display())),
        "the token's file is named: {logs}"
    );
}

#[tokio::test]
async fn a_second_process_on_the_same_data_is_refused() {
    if skip_on_postgres("the SQLite data directory's lock") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = ["serve".as_ref(), "--data".as_ref(), data.as_os_str()];
    let (_first, _) = spawn_serve(
        &args,
        &[("FERRY_API_TOKEN", TOKEN)],
        std::process::Stdio::null(),
    )
    .await;
    let out = ferry()
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .env("FERRY_API_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is in use by another Ferry process"),
        "{stderr}"
    );
}

//! Secrets at rest and in the API: `ferry serve` child processes on real SQLite files, with
//! distinctive secrets of every kind written in the config file (some from `${ENV}`) and
//! through the API, then looked for in every byte of the data directory, every API answer and
//! every log line; the modes of the data directory; key rotation; a lost, wrong or hostile key,
//! and a damaged sealed value, refused at start with a clear error.

use crate::helpers::*;
use base64::Engine;
use reqwest::Method;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A `whsec_` secret whose text is distinctive.
fn whsec(seed: &str) -> String {
    format!(
        "whsec_{}",
        B64.encode(format!("{seed}-padding-to-be-long").as_bytes())
    )
}

/// An OAuth2 token endpoint that checks the client's credentials and hands out `token`.
async fn token_server(client_id: &'static str, token: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/token",
        axum::routing::post(move |headers: axum::http::HeaderMap| async move {
            let given = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Basic "))
                .and_then(|v| B64.decode(v).ok())
                .map(|v| String::from_utf8_lossy(&v).into_owned())
                .unwrap_or_default();
            if given.starts_with(&format!("{client_id}:zz-oauth-")) {
                axum::Json(json!({"access_token": token, "expires_in": 3600})).into_response()
            } else {
                axum::http::StatusCode::UNAUTHORIZED.into_response()
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/token")
}
use axum::response::IntoResponse;

/// `ferry serve` on `data` with `config` and `envs`, its stderr (the logs) into `log`.
async fn serve(
    config: &Path,
    data: &Path,
    log: &Path,
    envs: &[(&str, &str)],
) -> (tokio::process::Child, String) {
    let stderr = std::fs::File::create(log).unwrap();
    let mut all = vec![("FERRY_API_TOKEN", TOKEN), ("FERRY_LOG", "debug")];
    all.extend_from_slice(envs);
    spawn_serve(
        &[
            "serve".as_ref(),
            "--config".as_ref(),
            config.as_os_str(),
            "--data".as_ref(),
            data.as_os_str(),
        ],
        &all,
        stderr.into(),
    )
    .await
}

/// `ferry serve` that must refuse to start: its exit status and stderr.
async fn refused_start(
    config: &Path,
    data: &Path,
    envs: &[(&str, &std::ffi::OsStr)],
) -> (std::process::ExitStatus, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(config)
        .arg("--data")
        .arg(data)
        .env("FERRY_API_TOKEN", TOKEN)
        .env_remove("FERRY_SECRET_KEY")
        .kill_on_drop(true);
    for (k, v) in envs {
        command.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("ferry serve ends by itself")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !stderr.contains("panicked"),
        "a refused start must not panic: {stderr}"
    );
    (out.status, stderr)
}

/// `ferry secrets rotate --data DATA` with `envs`: its status and output.
async fn rotate(data: &Path, envs: &[(&str, &str)]) -> (bool, String) {
    rotate_at(&["--data".as_ref(), data.as_os_str()], envs).await
}

/// `ferry secrets rotate STORE` (`--data DIR` or `--database-url URL`) with `envs`, and no
/// key from this process's environment: whether it succeeded, and what it said.
pub(crate) async fn rotate_at(
    store: &[&std::ffi::OsStr],
    envs: &[(&str, &str)],
) -> (bool, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"));
    command
        .args(["secrets", "rotate"])
        .args(store)
        .env_remove("FERRY_SECRET_KEY")
        .env_remove("FERRY_NEW_SECRET_KEY")
        .kill_on_drop(true);
    for (k, v) in envs {
        command.env(k, v);
    }
    let out = command.output().await.unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("panicked"), "{text}");
    (out.status.success(), text)
}

/// Every file under `dir`, as bytes (with its path), the key files aside.
fn data_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            out.extend(data_files(&path));
        } else if !name.starts_with("secret.key") {
            out.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    out
}

fn assert_absent(what: &str, haystack: &[u8], secrets: &[String]) {
    for secret in secrets {
        assert!(
            !haystack
                .windows(secret.len())
                .any(|w| w == secret.as_bytes()),
            "{secret} is in {what}"
        );
    }
}

/// The `sha256=` HMAC signature of `body` under `secret`, and the body posted to `/in/{source}`.
async fn post_signed(
    http: &reqwest::Client,
    base: &str,
    source: &str,
    secret: &str,
    body: &str,
) -> reqwest::StatusCode {
    http.post(format!("{base}/in/{source}"))
        .header("content-type", "application/json")
        .header(
            "x-hub-signature-256",
            hub_signature(secret.as_bytes(), body),
        )
        .header("x-api-key", "zz-inbound-key-2b7f")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn secrets_of_every_kind_are_sealed_at_rest_and_never_shown() {
    if skip_on_postgres(
        "reads every byte of the SQLite files, the key file and the data directory's modes",
    ) {
        return;
    }
    let crm = Receiver::start().await;
    let steps = Receiver::start().await;
    let token_url = token_server("ferry", "zz-access-token-8f1a").await;
    let dir = tempfile::tempdir().unwrap();
    let (data, config, log) = (
        dir.path().join("data"),
        dir.path().join("ferry.yaml"),
        dir.path().join("ferry.log"),
    );
    let file_signing = whsec("zz-sign-file-4d2c");
    let channel_signing = whsec("zz-sign-channel-6e1b");
    std::fs::write(
        &config,
        format!(
            r#"
settings: {{ allow_private_destinations: true }}
sources:
  - id: shop
    kind: webhook
    verify: {{ scheme: hmac, header: x-hub-signature-256, prefix: "sha256=", secret: "${{ZZ_HMAC_FILE}}" }}
destinations:
  - id: crm
    kind: http
    url: "{crm}?api_key=zz-query-file-7a1d&page=1"
    headers: {{ x-api-key: "${{ZZ_DEST_KEY_FILE}}", x-custom: zz-marked-file-5b2e, x-visible: visible-value }}
    secret_headers: [X-Custom]
    signing: {{ secret: "{file_signing}" }}
flows:
  - id: file-flow
    on: {{ source: shop }}
    steps:
      - name: first
        http:
          url: "{steps}?token=zz-query-step-file-3c9a&page=2"
          body: '.'
          headers: {{ x-auth-token: zz-token-header-file-77e1, x-trace: visible-trace }}
          auth: {{ basic: {{ username: ferry, password: "${{ZZ_BASIC_FILE}}" }} }}
      - http: {{ url: "{steps}", body: '.', auth: {{ api_key: {{ header: x-api-key, value: zz-apikey-file-0c4f }} }} }}
      - http: {{ url: "{steps}", body: '.', auth: {{ oauth2_client_credentials: {{ token_url: "{token_url}", client_id: ferry, client_secret: zz-oauth-file-9d2b }} }} }}
      - http: {{ url: "{steps}", body: '.', auth: {{ bearer: zz-bearer-file-5e8a }} }}
      - deliver: crm
channels:
  - {{ id: ops, kind: webhook, url: "{crm}", signing: {{ secret: "{channel_signing}" }} }}
  - {{ id: team, kind: slack, url: "https://hooks.slack.example/services/zz-slack-path-1f3e" }}
  - id: oncall
    kind: email
    smtp: {{ host: smtp.example, port: 587, username: ferry, password: zz-smtp-password-6a0c, tls: starttls }}
    from: ferry@example.com
    to: [oncall@example.com]
"#,
            crm = crm.url,
            steps = steps.url,
        ),
    )
    .unwrap();
    let envs = [
        ("ZZ_HMAC_FILE", "zz-secret-hmac-41c7"),
        ("ZZ_DEST_KEY_FILE", "zz-dest-key-env-90ab"),
        ("ZZ_BASIC_FILE", "zz-basic-env-3f5d"),
    ];
    let (mut child, base) = serve(&config, &data, &log, &envs).await;
    let http = client();
    let call = |method: Method, path: &str, body: Option<Value>| {
        let (http, url) = (http.clone(), format!("{base}{path}"));
        async move {
            let mut request = http.request(method, url).bearer_auth(TOKEN);
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request.send().await.unwrap();
            let status = response.status();
            (status, response.text().await.unwrap())
        }
    };

    // The same kinds of secret through the API.
    let api_signing = whsec("zz-sign-api-8c3e");
    let objects = [
        (
            "sources",
            json!({"id": "api-src", "kind": "webhook", "verify": {"scheme": "hmac", "header": "x-hub-signature-256", "prefix": "sha256=", "secret": "zz-secret-hmac-api-52d1"}}),
        ),
        (
            "destinations",
            json!({"id": "api-dest", "kind": "http", "url": format!("{}?key=zz-query-api-1e9f&page=3", crm.url),
            "headers": {"authorization": "Bearer zz-bearer-header-api-6d0a", "x-marked": "zz-marked-api-4a8b", "x-visible": "visible-api"},
            "secret_headers": ["x-marked"], "signing": {"secret": api_signing}}),
        ),
        (
            "flows",
            json!({"id": "api-flow", "on": {"source": "api-src"}, "steps": [
            {"branch": [{"when": ".n > 0", "steps": [
                {"http": {"url": format!("{}?sig=zz-query-step-api-2c6d", steps.url), "body": ".", "headers": {"x-auth-token": "zz-token-header-api-5f3a"},
                          "auth": {"basic": {"username": "ferry", "password": "zz-basic-api-7b1c"}}}}]},
                {"else": [{"http": {"url": steps.url.clone(), "body": ".", "auth": {"bearer": "zz-bearer-api-0d4e"}}}]}]},
            {"http": {"url": steps.url.clone(), "body": ".", "auth": {"api_key": {"header": "x-api-key", "value": "zz-apikey-api-9e2f"}}}},
            {"http": {"url": steps.url.clone(), "body": ".", "auth": {"oauth2_client_credentials": {"token_url": token_url, "client_id": "ferry", "client_secret": "zz-oauth-api-3a7c"}}}},
            {"deliver": "api-dest"}]}),
        ),
    ];
    let mut answers = String::new();
    for (kind, spec) in &objects {
        let (status, text) =
            call(Method::POST, &format!("/api/v1/{kind}"), Some(spec.clone())).await;
        assert_eq!(status, 201, "{text}");
        answers.push_str(&text);
    }

    // Events delivered with their auth headers and signatures, every http step run.
    for (source, secret) in [
        ("shop", "zz-secret-hmac-41c7"),
        ("api-src", "zz-secret-hmac-api-52d1"),
    ] {
        let body = format!(r#"{{"type":"order.created","n":1,"source":"{source}"}}"#);
        assert_eq!(post_signed(&http, &base, source, secret, &body).await, 202);
    }
    crm.wait_for(2).await;
    steps.wait_for(7).await;
    let got = crm.requests();
    for (wanted_key, whsec) in [
        ("x-api-key", &file_signing),
        ("authorization", &api_signing),
    ] {
        let request = got
            .iter()
            .find(|r| r.headers.contains_key(wanted_key))
            .unwrap_or_else(|| panic!("a delivery with {wanted_key}"));
        standardwebhooks::Webhook::new(whsec)
            .unwrap()
            .verify(&request.body, &request.headers)
            .expect("a delivery signed with the stored secret");
    }
    assert!(got.iter().any(|r| {
        r.headers
            .get("x-api-key")
            .is_some_and(|v| v == "zz-dest-key-env-90ab")
    }));
    assert!(got.iter().any(|r| {
        r.headers
            .get("authorization")
            .is_some_and(|v| v == "Bearer zz-bearer-header-api-6d0a")
    }));
    let sent = steps.requests();
    let basic = format!("Basic {}", B64.encode("ferry:zz-basic-env-3f5d"));
    for wanted in [
        "Bearer zz-bearer-file-5e8a",
        "Bearer zz-access-token-8f1a",
        basic.as_str(),
    ] {
        assert!(
            sent.iter()
                .any(|r| r.headers.get("authorization").is_some_and(|v| v == wanted)),
            "{wanted} was not sent"
        );
    }
    assert!(sent.iter().any(|r| {
        r.headers
            .get("x-api-key")
            .is_some_and(|v| v == "zz-apikey-api-9e2f")
    }));

    // A refused event (a wrong signature) for the rejected log.
    assert_eq!(
        post_signed(&http, &base, "shop", "not-the-secret", r#"{"type":"x"}"#).await,
        401
    );

    // Writing back an object as read keeps its secrets; a change with masks keeps them too.
    let (_, shown) = call(Method::GET, "/api/v1/destinations/api-dest", None).await;
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["spec"]["signing"]["secret"], "********");
    assert_eq!(shown["spec"]["headers"]["x-visible"], "visible-api");
    let (status, text) = call(
        Method::PUT,
        "/api/v1/destinations/api-dest",
        Some(shown["spec"].clone()),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["changed"],
        false,
        "{text}"
    );
    let mut changed = shown["spec"].clone();
    changed["timeout"] = json!("20s");
    let (status, text) = call(Method::PUT, "/api/v1/destinations/api-dest", Some(changed)).await;
    assert_eq!(status, 200, "{text}");
    answers.push_str(&text);
    let body = r#"{"type":"order.created","n":2}"#;
    assert_eq!(
        post_signed(&http, &base, "api-src", "zz-secret-hmac-api-52d1", body).await,
        202
    );
    crm.wait_for(3).await;
    let last = crm.requests().pop().unwrap();
    assert_eq!(
        last.headers["authorization"],
        "Bearer zz-bearer-header-api-6d0a"
    );
    assert!(last.headers["x-marked"] == "zz-marked-api-4a8b");
    standardwebhooks::Webhook::new(&api_signing)
        .unwrap()
        .verify(&last.body, &last.headers)
        .unwrap();

    // Errors do not echo secrets either.
    for (method, path, body, status) in [
        (
            Method::PUT,
            "/api/v1/destinations/api-dest",
            json!({"kind": "http", "url": crm.url.clone(), "signing": "zz-wrong-place-7c2e"}),
            422,
        ),
        (
            Method::POST,
            "/api/v1/destinations",
            json!({"id": "masked", "kind": "http", "url": crm.url.clone(), "signing": {"secret": "********"}}),
            422,
        ),
        (
            Method::POST,
            "/api/v1/destinations",
            json!({"id": "bad-url", "kind": "http", "url": "http://[::1?token=zz-bad-url-8d1f"}),
            422,
        ),
        (
            Method::POST,
            "/api/v1/flows",
            json!({"id": "bad-step", "on": {"source": "shop"}, "steps": [{"http": {"url": "ftp://x.example/?key=zz-bad-step-url-2e4a", "auth": {"bearer": "zz-bearer-refused-6b3c"}}}]}),
            422,
        ),
    ] {
        let (got, text) = call(method, path, Some(body)).await;
        assert_eq!(got.as_u16(), status, "{text}");
        answers.push_str(&text);
    }

    // The flow tests, and every read route.
    for flow in ["file-flow", "api-flow"] {
        let (status, text) = call(
            Method::POST,
            &format!("/api/v1/flows/{flow}/test"),
            Some(json!({"event": {"type": "order.created", "n": 1}})),
        )
        .await;
        assert_eq!(status, 200, "{text}");
        assert!(
            text.contains("visible-trace") || flow == "api-flow",
            "{text}"
        );
        assert!(text.contains("********"), "{text}");
        answers.push_str(&text);
    }
    let mut paths: Vec<String> = [
        "/api/v1/events",
        "/api/v1/deliveries",
        "/api/v1/runs",
        "/api/v1/dead-letters",
        "/api/v1/rejections",
        "/api/v1/tokens",
        "/api/v1/openapi.json",
    ]
    .map(String::from)
    .to_vec();
    for kind in ["sources", "event-types", "destinations", "flows", "alerts"] {
        paths.push(format!("/api/v1/{kind}"));
        let (_, list) = call(Method::GET, &format!("/api/v1/{kind}"), None).await;
        for item in serde_json::from_str::<Value>(&list).unwrap()["data"]
            .as_array()
            .unwrap()
        {
            paths.push(format!("/api/v1/{kind}/{}", item["id"].as_str().unwrap()));
        }
    }
    for (list, kind) in [
        ("events", "events"),
        ("deliveries", "deliveries"),
        ("runs", "runs"),
    ] {
        let (_, page) = call(Method::GET, &format!("/api/v1/{list}"), None).await;
        for item in serde_json::from_str::<Value>(&page).unwrap()["data"]
            .as_array()
            .unwrap()
        {
            paths.push(format!("/api/v1/{kind}/{}", item["id"].as_str().unwrap()));
        }
    }
    for path in &paths {
        let (status, text) = call(Method::GET, path, None).await;
        assert_eq!(status, 200, "{path}: {text}");
        answers.push_str(&text);
    }
    assert!(
        answers.contains("visible-value") && answers.contains("page=1"),
        "non-secrets stay readable"
    );

    child.kill().await.unwrap();
    let secrets: Vec<String> = [
        "zz-secret-hmac-41c7",
        "zz-dest-key-env-90ab",
        "zz-basic-env-3f5d",
        "zz-query-file-7a1d",
        "zz-marked-file-5b2e",
        "zz-query-step-file-3c9a",
        "zz-token-header-file-77e1",
        "zz-apikey-file-0c4f",
        "zz-oauth-file-9d2b",
        "zz-bearer-file-5e8a",
        "zz-slack-path-1f3e",
        "zz-smtp-password-6a0c",
        "zz-secret-hmac-api-52d1",
        "zz-query-api-1e9f",
        "zz-bearer-header-api-6d0a",
        "zz-marked-api-4a8b",
        "zz-query-step-api-2c6d",
        "zz-token-header-api-5f3a",
        "zz-basic-api-7b1c",
        "zz-bearer-api-0d4e",
        "zz-apikey-api-9e2f",
        "zz-oauth-api-3a7c",
        "zz-access-token-8f1a",
        "zz-inbound-key-2b7f",
        "zz-wrong-place-7c2e",
        "zz-bad-url-8d1f",
        "zz-bad-step-url-2e4a",
        "zz-bearer-refused-6b3c",
    ]
    .map(String::from)
    .into_iter()
    .chain([file_signing, channel_signing, api_signing])
    .collect();

    assert_absent("the API's answers", answers.as_bytes(), &secrets);
    let logs = std::fs::read(&log).unwrap();
    assert!(logs.len() > 1000, "the debug logs were captured");
    assert_absent("the logs", &logs, &secrets);
    let files = data_files(&data);
    assert!(
        files
            .iter()
            .any(|(p, b)| p.ends_with("ferry.db") && !b.is_empty())
    );
    for (path, bytes) in &files {
        assert_absent(&path.display().to_string(), bytes, &secrets);
    }
    // The stored specs say they are sealed.
    let db = files
        .iter()
        .flat_map(|(_, b)| b.iter().copied())
        .collect::<Vec<u8>>();
    assert!(db.windows(10).any(|w| w == b"sealed:v1:"));
    // What is not secret is stored as written: the search above reads real text.
    assert!(db.windows(11).any(|w| w == b"visible-api"));

    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "the data directory");
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
    assert!(data.join("secret.key").exists() && data.join("ferry.db-wal").exists());
}

/// A config file with a receiver as `crm`, and a destination, source and flow made through the
/// API on a first start: the API's destination signs and sends an authorization header.
async fn store_with_secrets(
    dir: &Path,
    crm: &Receiver,
    envs: &[(&str, &str)],
) -> (PathBuf, PathBuf) {
    let (data, config) = (dir.join("data"), dir.join("ferry.yaml"));
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(&config, "settings: { allow_private_destinations: true }\n").unwrap();
    let (mut child, base) = serve(&config, &data, &dir.join("first.log"), envs).await;
    let http = client();
    for (kind, spec) in [
        (
            "sources",
            json!({"id": "src", "kind": "webhook", "verify": {"scheme": "none"}}),
        ),
        (
            "destinations",
            json!({"id": "dest", "kind": "http", "url": crm.url, "headers": {"authorization": "Bearer zz-rotated-bearer"}, "signing": {"secret": whsec("zz-rotated-signing")}}),
        ),
        (
            "flows",
            json!({"id": "flow", "on": {"source": "src"}, "steps": [{"deliver": "dest"}]}),
        ),
    ] {
        let made = admin_call(
            &http,
            Method::POST,
            format!("{base}/api/v1/{kind}"),
            Some(&spec),
        )
        .await;
        assert_eq!(made["changed"], true, "{made}");
    }
    child.kill().await.unwrap();
    (data, config)
}

/// Starts Ferry on `data`, sends one event and checks that the receiver got it signed with the
/// stored secret and with the stored authorization header.
async fn delivers_with_its_secrets(
    config: &Path,
    data: &Path,
    crm: &Receiver,
    envs: &[(&str, &str)],
) {
    let before = crm.count();
    let log = data.parent().unwrap().join("again.log");
    let (mut child, base) = serve(config, data, &log, envs).await;
    let sent = client()
        .post(format!("{base}/in/src"))
        .header("content-type", "application/json")
        .body(r#"{"type":"t"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 202);
    crm.wait_for(before + 1).await;
    let got = crm.requests().pop().unwrap();
    assert_eq!(got.headers["authorization"], "Bearer zz-rotated-bearer");
    standardwebhooks::Webhook::new(&whsec("zz-rotated-signing"))
        .unwrap()
        .verify(&got.body, &got.headers)
        .expect("signed with the stored secret");
    child.kill().await.unwrap();
}

fn key_file(data: &Path) -> String {
    std::fs::read_to_string(data.join("secret.key")).unwrap()
}

#[tokio::test]
async fn rotation_keeps_deliveries_signed_and_the_old_key_no_longer_opens() {
    if skip_on_postgres("`ferry secrets rotate` takes a data directory only") {
        return;
    }
    let crm = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (data, config) = store_with_secrets(dir.path(), &crm, &[]).await;
    let first = key_file(&data);

    // With the key file: a new random key replaces it.
    let (ok, said) = rotate(&data, &[]).await;
    assert!(ok, "{said}");
    assert!(said.contains("sealed 2 secret(s) of 1 object(s)"), "{said}");
    let second = key_file(&data);
    assert_ne!(first, second);
    assert!(!data.join("secret.key.next").exists());
    delivers_with_its_secrets(&config, &data, &crm, &[]).await;
    let old = std::ffi::OsString::from(first.trim());
    let (status, stderr) = refused_start(&config, &data, &[("FERRY_SECRET_KEY", &old)]).await;
    assert!(!status.success());
    assert!(
        stderr.contains("the secret key does not open the stored secrets: destination `dest`"),
        "{stderr}"
    );

    // With FERRY_SECRET_KEY: the new key must be given, and is used from then on.
    let (ok, said) = rotate(&data, &[("FERRY_SECRET_KEY", second.trim())]).await;
    assert!(!ok && said.contains("FERRY_NEW_SECRET_KEY"), "{said}");
    let third = B64.encode([7u8; 32]);
    let (ok, said) = rotate(
        &data,
        &[
            ("FERRY_SECRET_KEY", second.trim()),
            ("FERRY_NEW_SECRET_KEY", &third),
        ],
    )
    .await;
    assert!(ok, "{said}");
    assert!(
        said.contains("set FERRY_SECRET_KEY to the new key"),
        "{said}"
    );
    assert_eq!(key_file(&data), second, "the key file is left alone");
    delivers_with_its_secrets(&config, &data, &crm, &[("FERRY_SECRET_KEY", &third)]).await;
    let (status, stderr) = refused_start(&config, &data, &[]).await;
    assert!(
        !status.success() && stderr.contains("does not open"),
        "{stderr}"
    );

    // Back to the key file (its key given as the new one), then crashes between the steps.
    let (ok, said) = rotate(
        &data,
        &[
            ("FERRY_SECRET_KEY", &third),
            ("FERRY_NEW_SECRET_KEY", second.trim()),
        ],
    )
    .await;
    assert!(ok, "{said}");
    // A crash after the next key was written, before the commit: the key file stays in use.
    std::fs::write(
        data.join("secret.key.next"),
        format!("{}\n", B64.encode([9u8; 32])),
    )
    .unwrap();
    delivers_with_its_secrets(&config, &data, &crm, &[]).await;
    assert!(!data.join("secret.key.next").exists());
    assert_eq!(key_file(&data), second);
    // A crash after the commit, before the rename: the next key takes the key file's place.
    let (ok, said) = rotate(&data, &[]).await;
    assert!(ok, "{said}");
    let fourth = key_file(&data);
    std::fs::write(data.join("secret.key.next"), &fourth).unwrap();
    std::fs::write(data.join("secret.key"), &second).unwrap();
    delivers_with_its_secrets(&config, &data, &crm, &[]).await;
    assert_eq!(key_file(&data), fourth);
    assert!(!data.join("secret.key.next").exists());
}

#[tokio::test]
async fn a_missing_wrong_or_hostile_key_and_a_damaged_sealed_value_are_clear_start_errors() {
    if skip_on_postgres(
        "the data directory's key file and a damaged value written into the SQLite file",
    ) {
        return;
    }
    let crm = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();

    // No secrets stored: any well-formed key starts.
    let empty = dir.path().join("empty");
    let config = dir.path().join("ferry.yaml");
    std::fs::write(&config, "settings: { allow_private_destinations: true }\n").unwrap();
    let any = B64.encode([3u8; 32]);
    let (mut child, _) = serve(
        &config,
        &empty,
        &dir.path().join("empty.log"),
        &[("FERRY_SECRET_KEY", &any)],
    )
    .await;
    child.kill().await.unwrap();
    assert!(
        !empty.join("secret.key").exists(),
        "no key file with FERRY_SECRET_KEY"
    );

    let (data, config) = store_with_secrets(&dir.path().join("store"), &crm, &[]).await;
    let hostile: Vec<(std::ffi::OsString, &str)> = {
        use std::os::unix::ffi::OsStringExt;
        vec![
            (
                B64.encode([1u8; 16]).into(),
                "FERRY_SECRET_KEY holds 16 bytes",
            ),
            (
                "not base64 at all!".into(),
                "FERRY_SECRET_KEY is not base64",
            ),
            (
                "A".repeat(100_000).into(),
                "FERRY_SECRET_KEY is 100000 characters long",
            ),
            (
                std::ffi::OsString::from_vec(vec![0xff, 0xfe, b'A']),
                "FERRY_SECRET_KEY is not UTF-8",
            ),
            ("".into(), "FERRY_SECRET_KEY is empty"),
            (
                B64.encode([2u8; 32]).into(),
                "the secret key does not open the stored secrets",
            ),
        ]
    };
    for (value, says) in &hostile {
        let (status, stderr) = refused_start(&config, &data, &[("FERRY_SECRET_KEY", value)]).await;
        assert!(!status.success(), "{says}");
        assert!(stderr.contains(says), "{says}: {stderr}");
    }

    // A damaged key file, then a lost one.
    let key = key_file(&data);
    std::fs::write(data.join("secret.key"), "garbage\n").unwrap();
    let (status, stderr) = refused_start(&config, &data, &[]).await;
    assert!(
        !status.success() && stderr.contains("secret.key` is not base64"),
        "{stderr}"
    );
    std::fs::remove_file(data.join("secret.key")).unwrap();
    let (status, stderr) = refused_start(&config, &data, &[]).await;
    assert!(
        !status.success() && stderr.contains("there is no key"),
        "{stderr}"
    );
    assert!(
        !data.join("secret.key").exists(),
        "no new key is made over sealed secrets"
    );
    std::fs::write(data.join("secret.key"), &key).unwrap();

    // A sealed value damaged in the database, then one moved to another place.
    let db = rusqlite::Connection::open(data.join("ferry.db")).unwrap();
    let spec: String = db
        .query_row(
            "SELECT spec FROM config_objects WHERE id = 'dest'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let mut value: Value = serde_json::from_str(&spec).unwrap();
    let sealed = value["signing"]["secret"].as_str().unwrap().to_string();
    let cut = sealed.len() - 8;
    let flipped = format!(
        "{}{}{}",
        &sealed[..cut],
        if &sealed[cut..cut + 1] == "A" {
            "B"
        } else {
            "A"
        },
        &sealed[cut + 1..]
    );
    for (damaged, says) in [
        (flipped, "field `/signing/secret`: it does not open"),
        (
            value["headers"]["authorization"]
                .as_str()
                .unwrap()
                .to_string(),
            "field `/signing/secret`: it does not open",
        ),
        ("sealed:v1:zz".to_string(), "the sealed value is damaged"),
        (
            "sealed:v7:abc".to_string(),
            "a format this Ferry does not read",
        ),
        ("whsec_plain".to_string(), "not sealed"),
    ] {
        value["signing"]["secret"] = Value::String(damaged);
        db.execute(
            "UPDATE config_objects SET spec = ?1 WHERE id = 'dest'",
            [value.to_string()],
        )
        .unwrap();
        let (status, stderr) = refused_start(&config, &data, &[]).await;
        assert!(!status.success(), "{says}");
        assert!(stderr.contains(says), "{says}: {stderr}");
    }
    value["signing"]["secret"] = Value::String(sealed);
    db.execute(
        "UPDATE config_objects SET spec = ?1 WHERE id = 'dest'",
        [value.to_string()],
    )
    .unwrap();
    drop(db);
    delivers_with_its_secrets(&config, &data, &crm, &[]).await;
}

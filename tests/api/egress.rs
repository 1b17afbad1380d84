//! The egress guard end to end. `ferry serve` runs as a child process in its own mount
//! namespace (`unshare --mount`) where a temporary hosts file is bound over `/etc/hosts`, so
//! that names resolve through the system resolver to loopback, carrier-grade NAT, IPv4-mapped
//! and other special addresses; the machine's own `/etc/hosts` is never touched (the tests run
//! as root; without `unshare` and `mount`, the test fails and says so). Destinations, `http`
//! steps, OAuth2 token requests and alert channels pointed at those names never reach the real
//! receivers listening there, and the attempt log, the run and the logs say why; what the
//! allow-list names goes through. User info and special literals are refused at config check,
//! in the file and through the API, and hostile allow-lists are refused with the process still
//! answering.

use crate::helpers::*;
use reqwest::Method;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A TCP listener that counts the connections it accepts and closes them (an SMTP server or
/// an HTTP proxy that must never be reached).
struct Counter {
    port: u16,
    count: Arc<AtomicUsize>,
}

impl Counter {
    async fn start() -> Counter {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                seen.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        Counter { port, count }
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

/// `ferry serve` with `hosts` as its `/etc/hosts`, its logs (JSON, `warn` and up) in a file.
struct Namespaced {
    _child: tokio::process::Child,
    base: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Namespaced {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }

    async fn api(&self, method: Method, path: &str, body: Option<&Value>) -> Value {
        admin_call(&client(), method, format!("{}{path}", self.base), body).await
    }
}

const NAMESPACE_SCRIPT: &str = r#"mount --bind "$1" /etc/hosts && exec "$2" serve --config "$3" "$4" "$5" --listen 127.0.0.1:0"#;

async fn serve_with_hosts(hosts: &str, yaml: &str, envs: &[(&str, String)]) -> Namespaced {
    let probe = std::process::Command::new("unshare")
        .args(["--mount", "true"])
        .output();
    assert!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "this test gives `ferry serve` its own /etc/hosts with `unshare --mount` and a bind mount, which needs root: {probe:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let (hosts_file, config, log) = (
        dir.path().join("hosts"),
        dir.path().join("ferry.yaml"),
        dir.path().join("ferry.log"),
    );
    std::fs::write(&hosts_file, hosts).unwrap();
    std::fs::write(&config, yaml).unwrap();
    // `--data DIR`, or on PostgreSQL `--database-url URL` (with the key in `store_envs`).
    let (store, store_envs) = store_args(&dir.path().join("data")).await;
    let mut command = tokio::process::Command::new("unshare");
    command
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(NAMESPACE_SCRIPT)
        .arg("sh")
        .arg(&hosts_file)
        .arg(env!("CARGO_BIN_EXE_ferry"))
        .arg(&config)
        .args(store)
        .envs(store_envs)
        .env("FERRY_API_TOKEN", TOKEN)
        .env("FERRY_LOG", "warn")
        .env("FERRY_LOG_FORMAT", "json")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy");
    for (k, v) in envs {
        command.env(k, v);
    }
    let stderr = std::fs::File::create(&log).unwrap();
    let (child, base) = spawn_announced(command, stderr.into()).await;
    Namespaced {
        _child: child,
        base,
        log,
        _dir: dir,
    }
}

/// The deliveries of an event's run of `flow`, by destination id, once none is pending.
async fn settled_deliveries(app: &Namespaced, event_id: &str, flow: &str) -> Vec<Value> {
    let mut last = Value::Null;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        let event = app
            .api(Method::GET, &format!("/api/v1/events/{event_id}"), None)
            .await;
        let deliveries = event["runs"]
            .as_array()
            .and_then(|runs| runs.iter().find(|r| r["flow_id"] == flow))
            .and_then(|r| r["deliveries"].as_array().cloned())
            .unwrap_or_default();
        if !deliveries.is_empty() && deliveries.iter().all(|d| d["status"] != "pending") {
            return deliveries;
        }
        last = event;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the deliveries of {flow} never settled: {last:#}");
}

/// The run of `flow` for `event_id` once it has `status`.
async fn run_with_status(app: &Namespaced, event_id: &str, flow: &str, status: &str) -> Value {
    let mut last = Value::Null;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        let event = app
            .api(Method::GET, &format!("/api/v1/events/{event_id}"), None)
            .await;
        if let Some(id) = event["runs"]
            .as_array()
            .and_then(|runs| runs.iter().find(|r| r["flow_id"] == flow))
            .and_then(|r| r["id"].as_str())
        {
            let run = app
                .api(Method::GET, &format!("/api/v1/runs/{id}"), None)
                .await;
            if run["status"] == status {
                return run;
            }
            last = run;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the run of {flow} never became {status}: {last:#}");
}

const HOSTS: &str = "\
127.0.0.1 localhost
127.0.0.1 loop4.test
::1 loop6.test
100.64.0.1 cgnat.test
169.254.169.254 meta.test
::ffff:127.0.0.1 mapped.test
8.8.8.8 both.test
127.0.0.1 both.test
127.0.0.1 allowed.test
127.0.0.2 net.test
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_resolve_to_special_addresses_are_refused_after_dns_on_every_path() {
    let blocked = Receiver::start().await; // loop4.test, mapped.test, both.test
    let blocked6 = Receiver::start_at("::1", Reply::status(200)).await; // loop6.test
    let allowed = Receiver::start().await; // allowed.test: named in the allow-list
    let net = Receiver::start_at("127.0.0.2", Reply::status(200)).await; // in 127.0.0.2/32
    let alerts_ok = Receiver::start().await;
    let (smtp, proxy) = (Counter::start().await, Counter::start().await);
    let (p, p6) = (blocked.addr.port(), blocked6.addr.port());
    let once = "retry: { max_attempts: 1 }";
    let yaml = format!(
        r#"
settings:
  alert_interval: 200ms
  egress: {{ allow: [allowed.test, "127.0.0.2/32"] }}
sources: [ {{ id: s, kind: webhook, verify: {{ scheme: none }} }} ]
destinations:
  - {{ id: loop4, kind: http, url: "http://loop4.test:{p}/hook", retry: {{ max_attempts: 2, initial: 50ms, max: 50ms, jitter: none }} }}
  - {{ id: loop6, kind: http, url: "http://loop6.test:{p6}/hook", {once} }}
  - {{ id: cgnat, kind: http, url: "http://cgnat.test:{p}/hook", {once} }}
  - {{ id: meta, kind: http, url: "http://meta.test:{p}/hook", {once} }}
  - {{ id: mapped, kind: http, url: "http://mapped.test:{p}/hook", {once} }}
  - {{ id: both, kind: http, url: "http://both.test:{p}/hook", {once} }}
  - {{ id: allowed, kind: http, url: "http://allowed.test:{pa}/hook", {once} }}
  - {{ id: net, kind: http, url: "http://net.test:{pn}/hook", {once} }}
flows:
  - id: fan
    on: {{ source: s }}
    steps: [ {{ deliver: [loop4, loop6, cgnat, meta, mapped, both, allowed, net] }} ]
  - id: step
    on: {{ source: s }}
    steps: [ {{ http: {{ method: POST, url: "http://loop4.test:{p}/hook", {once} }} }} ]
  - id: oauth
    on: {{ source: s }}
    steps:
      - http:
          url: "http://allowed.test:{pa}/hook"
          auth: {{ oauth2_client_credentials: {{ token_url: "http://mapped.test:{p}/hook", client_id: c, client_secret: x }} }}
          {once}
channels:
  - {{ id: hook, kind: webhook, url: "http://loop4.test:{p}/hook" }}
  - {{ id: team, kind: slack, url: "http://loop6.test:{p6}/hook" }}
  - {{ id: mail, kind: email, smtp: {{ host: loop4.test, port: {ps}, tls: none }}, from: ferry@example.com, to: [oncall@example.com] }}
  - {{ id: ok, kind: webhook, url: "http://allowed.test:{po}/hook" }}
alerts:
  - {{ id: dead, when: {{ dead_letters: {{ above: 0 }} }}, notify: [hook, team, mail, ok] }}
"#,
        pa = allowed.addr.port(),
        pn = net.addr.port(),
        po = alerts_ok.addr.port(),
        ps = smtp.port,
    );
    // Proxies from the environment would send requests around the resolver: they are not used.
    let proxy_url = format!("http://127.0.0.1:{}", proxy.port);
    let envs: Vec<(&str, String)> = ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"]
        .into_iter()
        .map(|k| (k, proxy_url.clone()))
        .collect();
    let app = serve_with_hosts(HOSTS, &yaml, &envs).await;

    let answer = client()
        .post(format!("{}/in/s", app.base))
        .header("content-type", "application/json")
        .body(r#"{"type":"t"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    let event: Value = answer.json().await.unwrap();
    let event_id = event["event_id"].as_str().unwrap();

    // Destinations: each refused one is a failed attempt with the reason, retried like a
    // connection error, then dead; the allowed ones are delivered.
    let deliveries = settled_deliveries(&app, event_id, "fan").await;
    let of = |id: &str| {
        deliveries
            .iter()
            .find(|d| d["destination_id"] == id)
            .unwrap_or_else(|| panic!("no delivery to {id}: {deliveries:#?}"))
            .clone()
    };
    let reason = "refused by the egress guard: host";
    for (id, attempts, why) in [
        (
            "loop4",
            2,
            "host `loop4.test` resolves to 127.0.0.1, which is loopback (127.0.0.0/8)",
        ),
        (
            "loop6",
            1,
            "host `loop6.test` resolves to ::1, which is loopback (::1/128)",
        ),
        (
            "cgnat",
            1,
            "host `cgnat.test` resolves to 100.64.0.1, which is shared address space (carrier-grade NAT) (100.64.0.0/10)",
        ),
        (
            "meta",
            1,
            "resolves to 169.254.169.254, which is link-local",
        ),
        (
            "mapped",
            1,
            "host `mapped.test` resolves to ::ffff:127.0.0.1, which is an IPv4-mapped IPv6 address (::ffff:0.0.0.0/96) carrying 127.0.0.1, which is loopback (127.0.0.0/8)",
        ),
        (
            "both",
            1,
            "host `both.test` resolves to 127.0.0.1, which is loopback",
        ),
    ] {
        let d = of(id);
        assert_eq!(d["status"], "dead", "{d:#}");
        let tries = d["attempts"].as_array().unwrap();
        assert_eq!(tries.len(), attempts, "{d:#}");
        for attempt in tries {
            let error = attempt["error"].as_str().unwrap_or_default();
            assert!(
                error.starts_with(reason) && error.contains(why),
                "{id}: {error}"
            );
            assert!(error.contains("settings.egress.allow"), "{error}");
            assert!(attempt["status_code"].is_null(), "{attempt:#}");
        }
    }
    for id in ["allowed", "net"] {
        assert_eq!(of(id)["status"], "succeeded", "{:#}", of(id));
    }

    // An http step: the step fails with the reason.
    let run = run_with_status(&app, event_id, "step", "failed").await;
    let step = &run["steps"][0];
    assert_eq!(step["status"], "failed", "{run:#}");
    let text = run.to_string();
    assert!(
        text.contains("refused by the egress guard: host `loop4.test` resolves to 127.0.0.1"),
        "{run:#}"
    );
    // An OAuth2 token request: the token fetch fails, and the call it was for is not made.
    let run = run_with_status(&app, event_id, "oauth", "failed").await;
    assert!(
        run.to_string().contains(&format!(
            "token request to http://mapped.test:{p}/hook: refused by the egress guard: host `mapped.test` resolves to ::ffff:127.0.0.1"
        )),
        "{run:#}"
    );

    // Alerts: the dead letters fire the rule; the channel the allow-list names gets the
    // notice, the others fail with the reason in the log and the metrics.
    alerts_ok.wait_for(1).await;
    wait_until("three channels failed", || async {
        let metrics = client()
            .get(format!("{}/metrics", app.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metrics.lines().any(|l| {
            l.starts_with("ferry_alert_notices_total")
                && l.contains("result=\"failed\"")
                && l.contains("alert=\"dead\"")
                && l.ends_with(" 3")
        })
    })
    .await;
    let log = app.log();
    let failures: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["message"] == "alert notice could not be sent")
        .collect();
    let failure = |channel: &str| {
        failures
            .iter()
            .find(|l| l["channel_id"] == channel)
            .and_then(|l| l["error"].as_str())
            .unwrap_or_else(|| panic!("no failure logged for channel {channel}:\n{log}"))
            .to_string()
    };
    assert!(
        failure("hook")
            .contains("refused by the egress guard: host `loop4.test` resolves to 127.0.0.1"),
        "{}",
        failure("hook")
    );
    assert!(
        failure("team").contains("refused by the egress guard: host `loop6.test` resolves to ::1"),
        "{}",
        failure("team")
    );
    assert!(
        failure("mail").contains(&format!(
            "SMTP loop4.test:{}: refused by the egress guard: host `loop4.test` resolves to 127.0.0.1",
            smtp.port
        )),
        "{}",
        failure("mail")
    );

    // Nothing refused reached a receiver; nothing went through the proxy.
    assert_eq!(blocked.count(), 0, "{:?}", blocked.requests());
    assert_eq!(blocked6.count(), 0, "{:?}", blocked6.requests());
    assert_eq!(smtp.count(), 0, "the SMTP server was never connected to");
    assert_eq!(proxy.count(), 0, "no request went through the proxy");
    assert_eq!(
        allowed.count(),
        1,
        "the delivery only, not the OAuth2 step's call"
    );
    assert_eq!(net.count(), 1);
    // The machine's own hosts file is as it was.
    let real = std::fs::read_to_string("/etc/hosts").unwrap();
    assert!(!real.contains("loop4.test"), "{real}");
}

/// A config with no special allowance and one source.
const PLAIN: &str = "sources: [ { id: s, kind: webhook, verify: { scheme: none } } ]\n";

#[tokio::test]
async fn user_info_and_special_literals_are_refused_at_config_in_the_file_and_the_api() {
    let app = spawn_app(PLAIN).await;
    for (url, want) in [
        (
            "http://127.0.0.1@evil.test/",
            "`url`: the URL has user info",
        ),
        (
            "https://user:hunter2@hooks.example/",
            "`url`: the URL has user info",
        ),
        (
            "http://127.0.0.1:9/",
            "`url`: address 127.0.0.1 is loopback (127.0.0.0/8)",
        ),
        (
            "http://[::ffff:100.64.0.1]/",
            "carrying 100.64.0.1, which is shared address space",
        ),
        ("http://198.19.255.255/", "benchmarking (198.18.0.0/15)"),
        (
            "http://localhost./",
            "`url`: host `localhost` is this machine",
        ),
    ] {
        let (status, e) = app
            .api_post_json(
                "/api/v1/destinations",
                json!({"id": "d", "kind": "http", "url": url}),
            )
            .await;
        assert_eq!(
            (status.as_u16(), e["error"].as_str()),
            (422, Some("invalid_object")),
            "{url}: {e}"
        );
        let details = e["details"].to_string();
        assert!(details.contains(want), "{url}: {e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
    let flow = json!({"id": "f", "on": {"source": "s"}, "steps": [
        {"http": {"url": "http://127.0.0.1@evil.test/x"}}
    ]});
    let (status, e) = app.api_post_json("/api/v1/flows", flow).await;
    assert_eq!(status, 422, "{e}");
    assert_eq!(e["details"][0]["place"], "api (flow f), step 1", "{e}");
    let message = e["details"][0]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("`http.url`: the URL has user info")
            && message.contains("before its host `evil.test`"),
        "{e}"
    );
    // Nothing was made; a public name is accepted (it is checked when it is resolved).
    let (_, list) = app.api_get("/api/v1/destinations").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0, "{list}");
    let (status, e) = app
        .api_post_json(
            "/api/v1/destinations",
            json!({"id": "d", "kind": "http", "url": "https://hooks.example/x"}),
        )
        .await;
    assert_eq!(status, 201, "{e}");

    // The file: the same refusal, with its line.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ferry.yaml");
    std::fs::write(
        &file,
        format!("{PLAIN}destinations:\n  - id: d\n    kind: http\n    url: \"http://127.0.0.1@evil.test/\"\n"),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["validate", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ferry.yaml:3 (destination d): `url`: the URL has user info (`name@` or `name:password@`) before its host `evil.test`"),
        "{stderr}"
    );
}

/// `ferry validate` on `text`: whether it passed, and what it printed.
fn validate(dir: &Path, text: &[u8]) -> (bool, String) {
    let file = dir.join("hostile.yaml");
    std::fs::write(&file, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["validate", "--config"])
        .arg(&file)
        .env(
            "NOT_UTF8",
            <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"\xff\xfe"),
        )
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn hostile_allow_lists_are_refused_and_ferry_still_answers() {
    let dir = tempfile::tempdir().unwrap();
    let settings = |allow: &str| format!("settings: {{ egress: {{ allow: {allow} }} }}\n{PLAIN}");
    let huge: Vec<String> = (0..200_000).map(|i| format!("\"h{i}.example\"")).collect();
    let long = format!("[\"{}\"]", "a".repeat(1 << 20));
    for (text, want) in [
        (
            settings(&format!("[{}]", huge.join(","))).into_bytes(),
            "`egress.allow` lists 200000 entries; at most 1024 are accepted",
        ),
        (
            settings("[\"10.0.0.0/999\"]").into_bytes(),
            "the prefix length `/999` is not a whole number from 0 to 32",
        ),
        (
            settings("[\"::/18446744073709551617\"]").into_bytes(),
            "is not a whole number from 0 to 128",
        ),
        (
            settings("[\"10.0.0.0/-1\"]").into_bytes(),
            "the prefix length `/-1`",
        ),
        (
            settings("[\"1.2.3.4.5/8\"]").into_bytes(),
            "`1.2.3.4.5` is not an IP address",
        ),
        (
            settings("[\"10.0.0.1/8\"]").into_bytes(),
            "the network is `10.0.0.0/8`",
        ),
        (
            settings("[\"\\u0000\"]").into_bytes(),
            "is not a network, an IP address or a host name",
        ),
        (
            settings("[\"http://127.0.0.1/\"]").into_bytes(),
            "(it is a URL)",
        ),
        (
            settings(&long).into_bytes(),
            "an entry of 1048576 characters",
        ),
        (
            settings("[[[[[[[[[\"10.0.0.0/8\"]]]]]]]]]").into_bytes(),
            "invalid type: sequence, expected a string",
        ),
        (
            settings("10.0.0.0/8").into_bytes(),
            "invalid type: a string",
        ),
        (
            settings("[\"${NOT_UTF8}\"]").into_bytes(),
            "environment variable `NOT_UTF8`",
        ),
        (
            [
                settings("[\"10.0.0.0/8\", \"").into_bytes(),
                vec![0xff, 0xfe, b'"', b']', b'\n'],
            ]
            .concat(),
            "cannot read the file",
        ),
    ] {
        let (passed, output) = validate(dir.path(), &text);
        assert!(
            !passed,
            "accepted: {}",
            String::from_utf8_lossy(&text[..text.len().min(200)])
        );
        assert!(
            output.contains(want),
            "want `{want}` in:\n{}",
            &output[..output.len().min(2000)]
        );
        assert!(
            output.len() < 64 * 1024,
            "a short report, not an echo: {} bytes",
            output.len()
        );
    }

    // `serve` refuses a hostile list and starts with the largest list accepted, and answers.
    let config = dir.path().join("serve.yaml");
    std::fs::write(&config, settings("[\"10.0.0.0/999\"]")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("`egress.allow[0]`"));
    let most: Vec<String> = (0..1024)
        .map(|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256))
        .collect();
    std::fs::write(&config, settings(&format!("[{}]", most.join(",")))).unwrap();
    let (_child, base) = serve_config(
        &config,
        &dir.path().join("data"),
        std::process::Stdio::null(),
    )
    .await;
    let http = client();
    let answer = http
        .post(format!("{base}/in/s"))
        .header("content-type", "application/json")
        .body(r#"{"type":"t"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    // An address the list names is accepted at config; one it does not name is refused.
    let url = format!("{base}/api/v1/destinations");
    let made = admin_call(
        &http,
        Method::POST,
        url.clone(),
        Some(&json!({"id": "in", "kind": "http", "url": "http://10.3.255.9/x"})),
    )
    .await;
    assert_eq!(made["spec"]["url"], "http://10.3.255.9/x", "{made}");
    let refused = admin_call(
        &http,
        Method::POST,
        url,
        Some(&json!({"id": "out", "kind": "http", "url": "http://10.4.0.1/x"})),
    )
    .await;
    assert_eq!(refused["error"], "invalid_object", "{refused}");
}

//! Hostile expressions against a real `ferry serve` child process: with a `read` token through
//! the events filter, and with an admin token in flows and source paths. Each one gets a clear
//! error; afterwards the same process (same PID) answers at once and flows with expressions
//! still run. The server's own memory stays small while workers blow up.

use crate::helpers::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// The server's resident memory, from `/proc`.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The server's RSS must stay under this while workers run hostile programs (it idles at
/// about 40 MiB in a debug build; a worker that grows is another process).
const SERVER_RSS_BOUND_KIB: u64 = 200 * 1024;

struct Server {
    child: tokio::process::Child,
    base: String,
    pid: u32,
    http: reqwest::Client,
}

impl Server {
    async fn start(yaml: &str) -> (Server, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("ferry.yaml");
        std::fs::write(&config, yaml).unwrap();
        let data = dir.path().join("data");
        let (child, base) = serve_config(&config, &data, std::process::Stdio::null()).await;
        let pid = child.id().unwrap();
        let server = Server {
            child,
            base,
            pid,
            http: client(),
        };
        (server, dir)
    }

    async fn token(&self, scope: &str) -> String {
        let body = json!({"name": scope, "scope": scope});
        let url = format!("{}/api/v1/tokens", self.base);
        let made = admin_call(&self.http, reqwest::Method::POST, url, Some(&body)).await;
        made["token"].as_str().unwrap().to_string()
    }

    /// Same PID, still running, and `/healthz` answers within a second.
    async fn assert_alive(&mut self, after: &str) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "the server exited after {after}"
        );
        assert_eq!(self.child.id(), Some(self.pid));
        let started = Instant::now();
        let health = tokio::time::timeout(
            Duration::from_secs(5),
            self.http.get(format!("{}/healthz", self.base)).send(),
        )
        .await
        .unwrap_or_else(|_| panic!("/healthz did not answer after {after}"))
        .unwrap();
        assert_eq!(health.status(), 200, "after {after}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "/healthz took {:?} after {after}",
            started.elapsed()
        );
    }

    /// Posts an event to `/in/{source}` and expects `202`; the event's id.
    async fn ingest(&self, source: &str, body: &str) -> String {
        let r = self
            .http
            .post(format!("{}/in/{source}", self.base))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{source}");
        let answer: Value = r.json().await.unwrap();
        answer["event_id"].as_str().unwrap().to_string()
    }

    async fn events_filter(&self, token: &str, jq: &str) -> (u16, Value) {
        let query: String = url::form_urlencoded::byte_serialize(jq.as_bytes()).collect();
        let r = self
            .http
            .get(format!("{}/api/v1/events?jq={query}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

const HOSTILE_CONFIG: &str = r#"
settings:
  allow_private_destinations: true
  expressions: { workers: 2, time_limit: 500ms, memory_limit_mb: 128 }
sources: [ { id: shop, kind: webhook, verify: { scheme: none } } ]
destinations: [ { id: out, kind: http, url: "RECEIVER" } ]
flows:
  - id: shaped
    on: { source: shop }
    steps:
      - filter: '.plan != "free"'
      - transform: '{who: .email, plan}'
      - deliver: out
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_tokens_hostile_filters_get_errors_and_the_server_goes_on() {
    let receiver = Receiver::start().await;
    let (mut server, _dir) =
        Server::start(&HOSTILE_CONFIG.replace("RECEIVER", &receiver.url)).await;
    let read = server.token("read").await;
    for n in 0..3 {
        let body = json!({"type": "t", "plan": "pro", "email": format!("u{n}@x.io")});
        server.ingest("shop", &body.to_string()).await;
    }
    let deep = format!("{}1{}", "(".repeat(7000), ")".repeat(7000));
    let deep_array = format!("{}1{}", "[".repeat(7000), "]".repeat(7000));
    let too_long = format!(".a == \"{}\"", "x".repeat(20_000));
    // (program, the statuses that are a clear answer for it, words the message must hold)
    let cases: Vec<(&str, &[u16], &str)> = vec![
        (&deep, &[200, 422], ""),
        (&deep_array, &[200, 422], ""),
        (&too_long, &[400], "the limit is 16384"),
        (r#""x" * 100000000000000"#, &[422], "memory limit"),
        (r#"[range(1e8)] | length"#, &[422], ""),
        (r#""\(def f: f; f)""#, &[400], "`def` is not allowed"),
        (
            r#""\(env | tostring | .[0:1])""#,
            &[400],
            "`env` is not allowed",
        ),
        (
            r#""a\("b\($ENV.FERRY_API_TOKEN)")""#,
            &[400],
            "`$ENV` is not allowed",
        ),
        (r#"[.[] | input]"#, &[400], "`input` is not allowed"),
        (r#"last(range(1e18))"#, &[422], "longer than their limit"),
        (r#"[limit(1e9; range(1e18))] | length"#, &[422], ""),
        (
            r#"reduce range(200000) as $i (0; [.]) | tojson | length"#,
            &[200, 422],
            "",
        ),
        (r#"("[" * 1000000) | fromjson"#, &[200, 422], ""),
        (
            r#""[" * 100000 + "]" * 100000 | fromjson | length"#,
            &[200, 422],
            "",
        ),
        (r#"9223372036854775807 + 1 > 0"#, &[200], ""),
        (r#"pow(2; 100000) > 0"#, &[200], ""),
        (r#"(-9223372036854775808) * -1 | . > 0"#, &[200], ""),
        (r#"[range(0; 1e300; 1e299)] | length > 0"#, &[200], ""),
        (r#".a["\u0000\ud800"] == 1"#, &[200, 400], ""),
    ];
    for (program, statuses, words) in &cases {
        let shown: String = program.chars().take(60).collect();
        let before = rss_kib(server.pid);
        let (status, body) = server.events_filter(&read, program).await;
        assert!(statuses.contains(&status), "`{shown}`: {status} {body}");
        if status != 200 {
            let message = body["message"].as_str().unwrap_or_default();
            assert!(message.contains(words), "`{shown}`: {body}");
            assert!(
                ["invalid_query", "expression_failed"].contains(&body["error"].as_str().unwrap()),
                "`{shown}`: {body}"
            );
        }
        let after = rss_kib(server.pid);
        assert!(
            after < SERVER_RSS_BOUND_KIB,
            "`{shown}`: the server grew from {before} to {after} KiB"
        );
        server.assert_alive(&shown).await;
    }
    // Invalid UTF-8 and a huge limit in the query are refused, not a crash.
    for query in [
        "jq=%FF%FE",
        "limit=99999999999999999999999",
        "jq=.a&limit=-1",
    ] {
        let r = server
            .http
            .get(format!("{}/api/v1/events?{query}", server.base))
            .bearer_auth(&read)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{query}");
        server.assert_alive(query).await;
    }
    // A good filter still finds the events, and the flow with expressions still runs.
    let (status, found) = server.events_filter(&read, r#".plan == "pro""#).await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["data"].as_array().unwrap().len(), 3, "{found}");
    server
        .ingest("shop", r#"{"type":"t","plan":"pro","email":"last@x.io"}"#)
        .await;
    receiver.wait_for(4).await;
    let bodies: Vec<Value> = receiver
        .requests()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert!(
        bodies.contains(&json!({"who": "last@x.io", "plan": "pro"})),
        "{bodies:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_flows_and_source_paths_fail_their_runs_not_the_server() {
    let receiver = Receiver::start().await;
    let (mut server, _dir) =
        Server::start(&HOSTILE_CONFIG.replace("RECEIVER", &receiver.url)).await;
    let admin = |path: &str, body: Value| {
        server
            .http
            .post(format!("{}{path}", server.base))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
    };
    // Refused words hidden in interpolation are refused when the flow is made.
    let r = admin(
        "/api/v1/flows",
        json!({"id": "sneaky", "on": {"source": "shop"}, "steps": [{"transform": "\"\\(def f: f; f)\""}, {"deliver": "out"}]}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.unwrap();
    assert!(body.to_string().contains("`def` is not allowed"), "{body}");
    // Flows that compile but blow up at run time: memory, time, stack.
    for (id, transform) in [
        ("bloat", r#""x" * 100000000000000"#),
        ("spin", "last(range(1e18))"),
        ("deep", r#"reduce range(1000000) as $i (0; [.]) | tojson"#),
    ] {
        let r = admin(
            "/api/v1/sources",
            json!({"id": id, "kind": "webhook", "verify": {"scheme": "none"}}),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        let r = admin(
            "/api/v1/flows",
            json!({"id": id, "on": {"source": id}, "steps": [{"transform": transform}, {"deliver": "out"}]}),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }
    // A source whose event type is read by a spinning expression.
    let r = admin(
        "/api/v1/sources",
        json!({"id": "stuck", "kind": "webhook", "verify": {"scheme": "none"}, "event_type": {"from": "body", "path": "last(range(1e18)) | tostring"}}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let started = Instant::now();
    let r = server
        .http
        .post(format!("{}/in/stuck", server.base))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("longer than their limit"),
        "{body}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    server.assert_alive("a spinning source path").await;

    for id in ["bloat", "spin", "deep"] {
        let event_id = server
            .ingest(id, &json!({"type": "t", "plan": "pro"}).to_string())
            .await;
        let url = format!("{}/api/v1/runs?event_id={event_id}", server.base);
        let runs = admin_call(&server.http, reqwest::Method::GET, url, None).await;
        let run = runs["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["flow_id"] == id)
            .unwrap_or_else(|| panic!("{runs}"));
        assert_eq!(run["status"], "failed", "{run}");
        assert!(
            run["error"].as_str().unwrap().contains("expression"),
            "{run}"
        );
        assert!(rss_kib(server.pid) < SERVER_RSS_BOUND_KIB);
        server.assert_alive(id).await;
    }
    // The ordinary flow still runs, at once.
    server
        .ingest("shop", r#"{"type":"t","plan":"pro","email":"ok@x.io"}"#)
        .await;
    receiver.wait_for(1).await;
    let first: Value = serde_json::from_slice(&receiver.requests()[0].body).unwrap();
    assert_eq!(first, json!({"who": "ok@x.io", "plan": "pro"}));
}

#[tokio::test]
async fn validate_reports_hostile_expressions_without_crashing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.yaml");
    let deep = format!("{}1{}", "(".repeat(7000), ")".repeat(7000));
    std::fs::write(
        &config,
        format!(
            r#"
sources:
  - {{ id: a, kind: webhook, verify: {{ scheme: none }}, event_type: {{ from: body, path: '"\(def f: f; f)"' }} }}
  - {{ id: b, kind: webhook, verify: {{ scheme: none }}, event_type: {{ from: body, path: '{deep}' }} }}
flows:
  - id: f
    on: {{ source: nope }}
    steps: [ {{ filter: '"\(env.HOME)"' }} ]
"#
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["validate", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("(source a): `event_type`: jq expression"),
        "{stderr}"
    );
    assert!(stderr.contains("`def` is not allowed"), "{stderr}");
    assert!(stderr.contains("`env` is not allowed"), "{stderr}");
    // The structural error and the expression errors come in one report.
    assert!(stderr.contains("no source has the id `nope`"), "{stderr}");
    assert!(!stderr.contains("(source b)"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_at_once_and_killed_workers_are_replaced() {
    use ferry::config::expr::Expr;
    use ferry::engine::sandbox::{Limits, Sandbox, SandboxError};
    let limit = Duration::from_millis(300);
    let sandbox = Sandbox::new(
        expression_worker(),
        Limits {
            workers: 1,
            time: limit,
            memory_bytes: 128 * 1024 * 1024,
            queue: 1,
        },
    );
    let spin = Expr::new("last(range(1e18)) > 0").unwrap();
    let payload = [bytes::Bytes::from_static(b"{}")];
    // One runs on the only worker, one waits in the queue, the third is refused at once.
    let (first, second, third) = tokio::join!(
        sandbox.truthy_each(&spin, &payload),
        sandbox.truthy_each(&spin, &payload),
        sandbox.truthy_each(&spin, &payload),
    );
    assert_eq!(first, Err(SandboxError::TimedOut(limit)));
    assert_eq!(second, Err(SandboxError::TimedOut(limit)));
    assert!(matches!(third, Err(SandboxError::Busy(1))), "{third:?}");
    assert_eq!(sandbox.replaced(), 2);
    // The replacement answers ordinary work.
    let plain = Expr::new(".a == 1").unwrap();
    let answers = sandbox
        .truthy_each(&plain, &[bytes::Bytes::from_static(br#"{"a":1}"#)])
        .await
        .unwrap();
    assert_eq!(answers, vec![Ok(true)]);
    assert_eq!(sandbox.replaced(), 2);
    // A caller that gives up while waiting in the queue leaves no place taken behind it.
    let spinning = {
        let (sandbox, spin) = (sandbox.clone(), spin.clone());
        tokio::spawn(async move { sandbox.truthy_each(&spin, &payload).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let given_up = {
        let (sandbox, spin) = (sandbox.clone(), spin.clone());
        tokio::spawn(async move {
            let payload = [bytes::Bytes::from_static(b"{}")];
            sandbox.truthy_each(&spin, &payload).await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    given_up.abort();
    let _ = spinning.await;
    let answers = sandbox
        .truthy_each(&plain, &[bytes::Bytes::from_static(br#"{"a":1}"#)])
        .await;
    assert_eq!(answers, Ok(vec![Ok(true)]), "the queue is free again");
}

#[tokio::test]
async fn a_null_body_or_payload_stays_null_and_invalid_utf8_is_refused() {
    let receiver = Receiver::start().await;
    let yaml = format!(
        r#"
settings: {{ allow_private_destinations: true }}
sources: [ {{ id: shop, kind: webhook, verify: {{ scheme: none }} }} ]
destinations: [ {{ id: out, kind: http, url: "{}" }} ]
flows:
  - id: nulls
    on: {{ source: shop }}
    steps:
      - deliver: {{ to: out, body: '.missing' }}
      - transform: 'null'
      - deliver: out
"#,
        receiver.url
    );
    let app = spawn_app(&yaml).await;
    app.accept("/in/shop", r#"{"type":"t","secret":"not for out"}"#, &[])
        .await;
    receiver.wait_for(2).await;
    let bodies: Vec<Vec<u8>> = receiver
        .requests()
        .into_iter()
        .map(|r| r.body.to_vec())
        .collect();
    // Both the `body` expression's null and the transformed null payload are sent as `null`,
    // never as the event.
    assert_eq!(bodies, vec![b"null".to_vec(), b"null".to_vec()]);
    let r = app
        .http
        .post(app.url("/in/shop"))
        .body(b"{\"type\":\"t\",\"note\":\"\xff\"}".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("UTF-8"),
        "{body}"
    );
}

/// The processes whose parent is `pid` (the expression workers of a server).
fn children(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // `pid (comm) state ppid ...`: comm may hold spaces, so read after the last `)`.
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if parent == Some(pid) {
            found.push(child);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_expression_reaches_the_environment_whatever_its_spelling() {
    let receiver = Receiver::start().await;
    let (mut server, _dir) =
        Server::start(&HOSTILE_CONFIG.replace("RECEIVER", &receiver.url)).await;
    let read = server.token("read").await;
    server
        .ingest(
            "shop",
            &json!({"type": "t", "plan": "pro", "email": "a@x.io"}).to_string(),
        )
        .await;
    // The admin token is in the server's environment (FERRY_API_TOKEN); each spelling is tried
    // as it is and as a guess of the token's first character, right and wrong: the answers
    // must not differ, so nothing is learnt one character at a time.
    let spellings = [
        "env",
        "$ENV",
        "env.FERRY_API_TOKEN",
        "$ENV.FERRY_API_TOKEN",
        r#""\(env)""#,
        r#""\($ENV.FERRY_API_TOKEN)""#,
        r#""a\("b\("c\(env.FERRY_API_TOKEN)")")""#,
        r#"@base64 "\(env)""#,
        "{k: env}",
        "{(env.FERRY_API_TOKEN): 1}",
        ".[env.FERRY_API_TOKEN]",
        "if true then env else 1 end",
        "try env catch 1",
        "env?",
        "[env][0]",
        "reduce env as $e (0; 1)",
        "env as $e | $e",
        "label $out | env",
        "$ENV | keys",
        ".a // env",
        r#"."\(env)""#,
        "..|env",
        "ltrimstr($ENV.HOME)",
        "input_filename",
        "[inputs]",
    ];
    let first = &TOKEN[..1];
    for spelling in spellings {
        let mut answers = Vec::new();
        for guess in [first, "#"] {
            let probe = format!(
                r#"({spelling}) | tostring | startswith("{guess}") | if . then 1 else 0 end"#
            );
            for program in [spelling.to_string(), probe] {
                let (status, body) = server.events_filter(&read, &program).await;
                assert_eq!(status, 400, "`{program}`: {body}");
                assert_eq!(body["error"], "invalid_query", "`{program}`: {body}");
                assert!(
                    body["message"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("is not allowed"),
                    "`{program}`: {body}"
                );
                let text = body.to_string();
                assert!(!text.contains(TOKEN), "`{program}`: {body}");
                // The program is quoted in the message: the guess in it is not an answer.
                answers.push(text.replace(&format!(r#"startswith(\"{guess}\")"#), "GUESS"));
            }
        }
        assert_eq!(
            answers[1], answers[3],
            "`{spelling}`: a right and a wrong guess differ"
        );
    }
    // `?match=` takes a field path and a value, not a program: these are field names.
    for m in ["env=1", "$ENV.FERRY_API_TOKEN=x", "a=\\(env)"] {
        let query: String = url::form_urlencoded::byte_serialize(m.as_bytes()).collect();
        let r = server
            .http
            .get(format!("{}/api/v1/events?match={query}", server.base))
            .bearer_auth(&read)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{m}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["data"], json!([]), "{m}");
    }
    // An admin cannot put them in a flow, a source path or a template either.
    let refused = [
        (
            "flows",
            json!({"id": "leak", "on": {"source": "shop"}, "steps": [{"transform": r#""\(env)""#}]}),
        ),
        (
            "flows",
            json!({"id": "leak", "on": {"source": "shop"}, "steps": [{"filter": r#"$ENV.FERRY_API_TOKEN | startswith("t")"#}]}),
        ),
        (
            "sources",
            json!({"id": "leak", "kind": "webhook", "verify": {"scheme": "none"}, "event_type": {"from": "body", "path": "env.FERRY_API_TOKEN"}}),
        ),
        (
            "flows",
            json!({"id": "leak", "on": {"source": "shop"}, "steps": [{"http": {"url": "http://127.0.0.1:9/{{ $ENV.FERRY_API_TOKEN }}"}}]}),
        ),
    ];
    for (kind, spec) in refused {
        let url = format!("{}/api/v1/{kind}", server.base);
        let r = server
            .http
            .post(url)
            .bearer_auth(TOKEN)
            .json(&spec)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 422, "{spec}: {body}");
        assert!(
            body.to_string().contains("is not allowed"),
            "{spec}: {body}"
        );
    }
    // Defence in depth: the workers that run expressions have no environment to give.
    let workers = children(server.pid);
    assert!(!workers.is_empty(), "the filters above started workers");
    for worker in workers {
        let environ = std::fs::read(format!("/proc/{worker}/environ")).unwrap_or_default();
        let names: Vec<String> = environ
            .split(|&b| b == 0)
            .filter(|v| !v.is_empty())
            .map(|v| {
                String::from_utf8_lossy(v.split(|&b| b == b'=').next().unwrap_or(v)).into_owned()
            })
            .collect();
        assert!(
            names
                .iter()
                .all(|n| n == "TZ" || n == "MIMALLOC_ARENA_RESERVE"),
            "worker {worker} has {names:?}"
        );
        assert!(!String::from_utf8_lossy(&environ).contains(TOKEN));
    }
    server.assert_alive("the environment probes").await;
}

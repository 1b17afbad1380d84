//! Test harness: `spawn_app` starts Ferry on 127.0.0.1:0 with a fresh data directory;
//! `Receiver` is a real HTTP server that records every request and answers from a script.

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use ferry::app::{AppState, ServeOptions};
pub use ferry::clock::Clock;
use ferry::clock::ManualClock;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const TOKEN: &str = "test-token";

pub struct TestApp {
    pub addr: SocketAddr,
    pub state: AppState,
    pub clock: Arc<ManualClock>,
    pub http: reqwest::Client,
    data: std::path::PathBuf,
    _dir: Option<tempfile::TempDir>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

/// Starts Ferry with `yaml` as its config, on a manual clock that starts at the real time.
pub async fn spawn_app(yaml: &str) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    spawn_app_at(
        yaml,
        &path,
        ManualClock::new(ferry::clock::system_now_ms()),
        Some(dir),
    )
    .await
}

/// Starts Ferry on an existing data directory and clock (to restart on the same data).
pub async fn spawn_app_at(
    yaml: &str,
    data: &std::path::Path,
    clock: Arc<ManualClock>,
    dir: Option<tempfile::TempDir>,
) -> TestApp {
    start(yaml, data, clock, dir, |_| {}).await
}

/// Expression workers are Ferry's binary: this test binary is not.
pub fn expression_worker() -> ferry::engine::sandbox::WorkerCommand {
    ferry::engine::sandbox::WorkerCommand {
        program: env!("CARGO_BIN_EXE_ferry").into(),
        args: vec!["expr-worker".into()],
    }
}

async fn start(
    yaml: &str,
    data: &std::path::Path,
    clock: Arc<ManualClock>,
    dir: Option<tempfile::TempDir>,
    tune: impl FnOnce(&mut ServeOptions),
) -> TestApp {
    let config = ferry::config::load_str(yaml, "test.yaml", std::path::Path::new("."), &|_| None)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut options = ServeOptions::new(config, data.to_path_buf());
    options.expression_worker = Some(expression_worker());
    options.api_token = Some(TOKEN.into());
    options.clock = clock.clone();
    options.deliverer.jitter_seed = Some(1);
    tune(&mut options);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = ferry::app::prepare(options).await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(ferry::app::serve(listener, state.clone(), async {
        let _ = rx.await;
    }));
    TestApp {
        data: data.to_path_buf(),
        addr,
        state,
        clock,
        http: client(),
        _dir: dir,
        _shutdown: tx,
    }
}

impl TestApp {
    /// The data directory this app runs on.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data
    }

    /// A read-only connection of its own to the app's SQLite file, for a test that looks at
    /// what the SQLite backend stored (the app reads only through `Store`'s methods).
    pub fn sqlite(&self) -> rusqlite::Connection {
        let conn = rusqlite::Connection::open_with_flags(
            self.data.join("ferry.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        conn
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn post_json(
        &self,
        path: &str,
        body: &str,
        headers: &[(&str, String)],
    ) -> reqwest::Response {
        let mut req = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_string());
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        req.send().await.unwrap()
    }

    /// Posts an event that must be accepted (`202`); returns its id.
    pub async fn accept(&self, path: &str, body: &str, headers: &[(&str, String)]) -> String {
        let response = self.post_json(path, body, headers).await;
        assert_eq!(response.status(), 202);
        assert_eq!(response.headers()["content-type"], "application/json");
        let answer: serde_json::Value = response.json().await.unwrap();
        let id = answer["event_id"].as_str().unwrap().to_string();
        assert!(id.starts_with("evt_") && id.len() == 30, "event id {id}");
        id
    }

    pub async fn api_get(&self, path: &str) -> (StatusCode, serde_json::Value) {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap())
    }

    pub async fn api_post(&self, path: &str) -> (StatusCode, serde_json::Value) {
        let r = self
            .http
            .post(self.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap())
    }

    pub async fn api_post_json(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> (StatusCode, serde_json::Value) {
        let r = self
            .http
            .post(self.url(path))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap())
    }

    /// Any API call; an empty answer reads as `null`.
    pub async fn api_send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (StatusCode, serde_json::Value) {
        let mut r = self.http.request(method, self.url(path)).bearer_auth(TOKEN);
        if let Some(body) = body {
            r = r.json(&body);
        }
        let r = r.send().await.unwrap();
        let status = r.status();
        let bytes = r.bytes().await.unwrap();
        let value = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        (status, value)
    }

    /// Waits until run `id` has `status`, and returns the run.
    pub async fn wait_run(&self, id: &str, status: &str) -> serde_json::Value {
        let mut last = serde_json::Value::Null;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            let (_, run) = self.api_get(&format!("/api/v1/runs/{id}")).await;
            if run["status"] == status {
                return run;
            }
            last = run;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("run {id} never became {status}; last seen: {last:#}");
    }

    /// The id of the run of `flow_id` that an event started.
    pub async fn run_of(&self, event_id: &str, flow_id: &str) -> String {
        let (_, event) = self.api_get(&format!("/api/v1/events/{event_id}")).await;
        event["runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["flow_id"] == flow_id)
            .unwrap_or_else(|| panic!("no run of {flow_id} in {event:#}"))["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub async fn event_count(&self) -> i64 {
        self.state.store.count_events().await.unwrap()
    }

    /// The one delivery of an event (panics when there is not exactly one).
    pub async fn only_delivery(&self, event_id: &str) -> serde_json::Value {
        let (status, event) = self.api_get(&format!("/api/v1/events/{event_id}")).await;
        assert_eq!(status, 200, "{event}");
        let deliveries: Vec<_> = event["runs"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["deliveries"].as_array().unwrap().clone())
            .collect();
        assert_eq!(deliveries.len(), 1, "{event}");
        deliveries[0].clone()
    }

    pub async fn attempt_times(&self, delivery_id: &str) -> Vec<i64> {
        self.state.store.attempt_times(delivery_id).await.unwrap()
    }

    /// Waits (real time, bounded) until `delivery_id` has `n` recorded attempts.
    pub async fn wait_attempts(&self, delivery_id: &str, n: usize) {
        wait_until(
            &format!("{n} attempts recorded for {delivery_id}"),
            || async { self.attempt_times(delivery_id).await.len() >= n },
        )
        .await;
    }
}

/// `ferry serve --config CONFIG --data DATA` as a child process, with the test token and
/// error-level logs.
pub async fn serve_config(
    config: &std::path::Path,
    data: &std::path::Path,
    stderr: std::process::Stdio,
) -> (tokio::process::Child, String) {
    let args = [
        "serve".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
    ];
    spawn_serve(
        &args,
        &[("FERRY_API_TOKEN", TOKEN), ("FERRY_LOG", "error")],
        stderr,
    )
    .await
}

/// Starts `ferry serve ARGS --listen 127.0.0.1:0` and returns the child with the address it
/// announced on stdout (the child picks its own port, so no two tests can race for one).
pub async fn spawn_serve(
    args: &[&std::ffi::OsStr],
    envs: &[(&str, &str)],
    stderr: std::process::Stdio,
) -> (tokio::process::Child, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"));
    command
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("FERRY_API_TOKEN");
    for (k, v) in envs {
        command.env(k, v);
    }
    spawn_announced(command, stderr).await
}

/// Starts `command`, a `ferry serve` (perhaps behind a wrapper such as `unshare`) that
/// listens on port 0, and returns the child with the address it announced on stdout once it
/// is ready.
pub async fn spawn_announced(
    mut command: tokio::process::Command,
    stderr: std::process::Stdio,
) -> (tokio::process::Child, String) {
    use tokio::io::AsyncBufReadExt;
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .expect("start ferry serve");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("ferry announces its address")
        .unwrap()
        .unwrap();
    let base = line
        .strip_prefix("ferry listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .to_string();
    let http = client();
    wait_until("ferry serve is ready", || async {
        http.get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    (child, base)
}

/// A management API call with the admin token to a server at `url`; the JSON answer.
pub async fn admin_call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<&serde_json::Value>,
) -> serde_json::Value {
    let mut request = http.request(method, url).bearer_auth(TOKEN);
    if let Some(body) = body {
        request = request.json(body);
    }
    request.send().await.unwrap().json().await.unwrap()
}

/// A plain HTTP client for tests (reqwest is built without a default TLS provider).
pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// Polls `check` every 10 ms for up to 20 s; panics with `what` if it never holds.
pub async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[derive(Clone, Debug)]
pub struct Recorded {
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The client's address: the same for requests over one kept-alive connection.
    pub peer: SocketAddr,
}

#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Reply {
            status,
            headers: vec![],
            delay: Duration::ZERO,
        }
    }

    /// A `200` after `delay`.
    pub fn delayed(delay: Duration) -> Self {
        Reply {
            delay,
            ..Reply::status(200)
        }
    }
}

/// A real HTTP receiver on a random port. Answers from its script, then with `fallback`.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    pub url: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
    script: Arc<Mutex<VecDeque<Reply>>>,
    fallback: Arc<Mutex<Reply>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        Self::start_with(Reply::status(200)).await
    }

    pub async fn start_with(fallback: Reply) -> Receiver {
        Self::start_at("127.0.0.1", fallback).await
    }

    /// A receiver on a random port of `ip` (`::1`, `127.0.0.2`).
    pub async fn start_at(ip: &str, fallback: Reply) -> Receiver {
        let ip: std::net::IpAddr = ip.parse().unwrap();
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let r = Receiver {
            addr,
            url: format!("http://{addr}/hook"),
            requests: Arc::default(),
            script: Arc::default(),
            fallback: Arc::new(Mutex::new(fallback)),
        };
        let state = r.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(
                move |axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
                      headers: HeaderMap,
                      body: Bytes| {
                    let state = state.clone();
                    async move {
                        state.requests.lock().unwrap().push(Recorded {
                            headers,
                            body,
                            peer,
                        });
                        let reply = state
                            .script
                            .lock()
                            .unwrap()
                            .pop_front()
                            .unwrap_or_else(|| state.fallback.lock().unwrap().clone());
                        if !reply.delay.is_zero() {
                            tokio::time::sleep(reply.delay).await;
                        }
                        let mut response = axum::http::Response::builder().status(reply.status);
                        for (k, v) in reply.headers {
                            response = response.header(k, v);
                        }
                        response
                            .body(axum::body::Body::from("{\"received\":true}"))
                            .unwrap()
                    }
                },
            ),
        );
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap()
        });
        r
    }

    /// Changes the answer given once the script is used up (to fix a destination).
    pub fn set_fallback(&self, reply: Reply) {
        *self.fallback.lock().unwrap() = reply;
    }

    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.script.lock().unwrap().extend(replies);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    pub async fn wait_for(&self, n: usize) {
        wait_until(&format!("{n} requests at {}", self.url), || async {
            self.count() >= n
        })
        .await;
    }
}

/// The `sha256=<hex>` HMAC signature GitHub-style senders put in `X-Hub-Signature-256`.
pub fn hub_signature(secret: &[u8], body: &str) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(body.as_bytes());
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// Signs `body` the Standard Webhooks way with the `standardwebhooks` crate (not Ferry's signer).
pub fn signed_headers(body: &str, id: &str, timestamp: i64) -> Vec<(&'static str, String)> {
    let wh = standardwebhooks::Webhook::new(SECRET).unwrap();
    let sig = wh.sign(id, timestamp, body.as_bytes()).unwrap();
    vec![
        ("webhook-id", id.to_string()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", sig),
    ]
}

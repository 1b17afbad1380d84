//! Test harness: `spawn_app` starts Ferry on 127.0.0.1:0 with a fresh data directory;
//! `Receiver` is a real HTTP server that records every request and answers from a script.
//!
//! The store backend comes from `FERRY_TEST_BACKEND`: `sqlite` (the default) or `postgres`,
//! where every `TestApp` runs in cluster mode on a schema of its own in the database of
//! `FERRY_TEST_DATABASE_URL` (see `postgres.rs`). The schema belongs to the data directory:
//! a restart on the same directory finds the same data, and the schema is dropped once the
//! directory is gone. A test that is about SQLite itself says so with `skip_on_postgres`.

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
    _shutdown: tokio::sync::oneshot::Sender<()>,
    _dir: Option<tempfile::TempDir>,
    /// After `_dir`: dropping it drops the schema when the directory went with it.
    schema: Option<DataSchema>,
}

/// The store backend of the tests' `TestApp`s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// PostgreSQL in the `api_on_postgres` binary; elsewhere `FERRY_TEST_BACKEND`: `postgres` or
/// `sqlite` (the default); anything else is a mistake.
pub fn backend() -> Backend {
    if crate::ON_POSTGRES {
        return Backend::Postgres;
    }
    match std::env::var("FERRY_TEST_BACKEND").as_deref() {
        Err(_) | Ok("") | Ok("sqlite") => Backend::Sqlite,
        Ok("postgres") => Backend::Postgres,
        Ok(other) => panic!("FERRY_TEST_BACKEND={other}: expected sqlite or postgres"),
    }
}

/// True (after printing why) when the tests run on PostgreSQL and the calling test is about
/// SQLite itself: `if skip_on_postgres("reason") { return; }`.
///
/// Skipped on PostgreSQL (`grep -rn skip_on_postgres tests/`): retention's file that levels
/// off and its migration of a version-2 SQLite file; disk_full (a tmpfs under the SQLite
/// files); cli's generated token file and data-directory lock; secrets' three tests (the
/// SQLite files and key file at rest, `ferry secrets rotate --data`, a damaged key file).
pub fn skip_on_postgres(reason: &str) -> bool {
    let skip = backend() == Backend::Postgres;
    if skip {
        eprintln!("skipped on PostgreSQL: {reason}");
    }
    skip
}

/// The key every test app seals its secrets with (cluster mode needs one given).
pub fn test_secret_key() -> ferry::secrets::SecretKey {
    ferry::secrets::SecretKey::from_bytes(TEST_KEY)
}

const TEST_KEY: [u8; 32] = [7; 32];

/// The PostgreSQL schema of one data directory: `ferry_d_<hash of the path>`, made when
/// first needed and commented with the path, so that a restart on the directory finds it
/// and a later run can tell it is stale. Dropped (best effort) with the last app of the
/// directory when the directory is gone; `sweep_stale_schemas` drops what was left behind.
pub struct DataSchema {
    name: String,
    /// The test database's URL, with `search_path` set to this schema.
    url: String,
    data: std::path::PathBuf,
}

impl DataSchema {
    async fn for_dir(data: &std::path::Path) -> DataSchema {
        sweep_stale_schemas();
        use sha2::Digest;
        let digest = sha2::Sha256::digest(data.as_os_str().as_encoded_bytes());
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let name = format!("ferry_d_{hex}");
        let client = crate::postgres::connect(&crate::postgres::base_url()).await;
        let path = data.display().to_string().replace('\'', "''");
        client
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {name}; COMMENT ON SCHEMA {name} IS '{path}'"
            ))
            .await
            .unwrap();
        // The application name marks the app's connections, which the drop ends first.
        let url = crate::postgres::with_param(
            &crate::postgres::base_url(),
            &format!("options=-csearch_path%3D{name}&application_name={name}"),
        );
        DataSchema {
            name,
            url,
            data: data.to_path_buf(),
        }
    }

    /// The URL, the schema left in place (for a child process that may outlive the caller).
    fn into_url(self) -> String {
        let this = std::mem::ManuallyDrop::new(self);
        this.url.clone()
    }
}

impl Drop for DataSchema {
    fn drop(&mut self) {
        if !self.data.exists() {
            crate::postgres::drop_schema(&self.name);
        }
    }
}

/// Drops, once per test process, the `ferry_d_` schemas whose data directory is gone (left
/// by a test that kept its directory past its last app, or by a run that was killed).
fn sweep_stale_schemas() {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(|| {
        let stale = crate::postgres::on_own_runtime(async {
            let client = crate::postgres::connect(&crate::postgres::base_url()).await;
            let rows = client
                .query(
                    "SELECT nspname::text, coalesce(obj_description(oid, 'pg_namespace'), '')
                       FROM pg_namespace WHERE nspname LIKE 'ferry\\_d\\_%'",
                    &[],
                )
                .await
                .unwrap();
            rows.iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
                .filter(|(_, path)| !std::path::Path::new(path).exists())
                .map(|(name, _)| name)
                .collect::<Vec<_>>()
        });
        for name in stale.into_iter().flatten() {
            crate::postgres::drop_schema(&name);
        }
    });
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

/// The options every test app starts with: `config` on `data`, the test token, Ferry's
/// expression workers and, on PostgreSQL, the data directory's schema (keep the returned
/// guard as long as the app runs), the test key and the node's name.
pub async fn serve_options(
    config: ferry::config::Config,
    data: &std::path::Path,
) -> (ServeOptions, Option<DataSchema>) {
    let mut options = ServeOptions::new(config, data.to_path_buf());
    options.expression_worker = Some(expression_worker());
    options.api_token = Some(TOKEN.into());
    let schema = match backend() {
        Backend::Sqlite => None,
        Backend::Postgres => {
            let schema = DataSchema::for_dir(data).await;
            options.database_url = Some(schema.url.clone());
            options.secret_key = Some(test_secret_key());
            // One node per data directory: a restart is the same node starting again.
            options.node_id = Some("test-node".into());
            Some(schema)
        }
    };
    (options, schema)
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
    let (mut options, schema) = serve_options(config, data).await;
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
        _shutdown: tx,
        _dir: dir,
        schema,
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

    /// Rows of `sql` (plain SQL both backends read alike) as the app's store holds them, each
    /// value as text (`None` for NULL), read on a connection of its own: for a test about
    /// what is stored, on either backend.
    pub async fn store_query(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let Some(schema) = &self.schema else {
            let conn = self.sqlite();
            let mut statement = conn.prepare(sql).unwrap();
            let columns = statement.column_count();
            return statement
                .query_map([], |row| {
                    (0..columns)
                        .map(|i| {
                            use rusqlite::types::ValueRef;
                            Ok(match row.get_ref(i)? {
                                ValueRef::Null => None,
                                ValueRef::Integer(n) => Some(n.to_string()),
                                ValueRef::Real(x) => Some(x.to_string()),
                                ValueRef::Text(t) | ValueRef::Blob(t) => {
                                    Some(String::from_utf8_lossy(t).into_owned())
                                }
                            })
                        })
                        .collect()
                })
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
        };
        let client = crate::postgres::connect(&schema.url).await;
        client
            .simple_query(sql)
            .await
            .unwrap()
            .into_iter()
            .filter_map(|message| match message {
                tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_string))
                        .collect(),
                ),
                _ => None,
            })
            .collect()
    }

    /// How many rows `table` of the app's store holds.
    pub async fn count_rows(&self, table: &str) -> i64 {
        let rows = self
            .store_query(&format!("SELECT COUNT(*) FROM {table}"))
            .await;
        rows[0][0].as_deref().unwrap().parse().unwrap()
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

/// `ferry serve --config CONFIG` on the store of `data` (see `store_args`) as a child
/// process, with the test token and error-level logs.
pub async fn serve_config(
    config: &std::path::Path,
    data: &std::path::Path,
    stderr: std::process::Stdio,
) -> (tokio::process::Child, String) {
    let (store, mut envs) = store_args(data).await;
    envs.extend([
        ("FERRY_API_TOKEN", TOKEN.into()),
        ("FERRY_LOG", "error".into()),
    ]);
    let mut args: Vec<&std::ffi::OsStr> =
        vec!["serve".as_ref(), "--config".as_ref(), config.as_ref()];
    args.extend(store.iter().map(|a| a.as_os_str()));
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    spawn_serve(&args, &envs, stderr).await
}

/// What `ferry serve` needs to run on the store of data directory `data`: `--data DATA` on
/// SQLite; on PostgreSQL `--database-url` (the schema of DATA, which a restart on DATA finds
/// again) and the test key in the environment.
pub async fn store_args(
    data: &std::path::Path,
) -> (Vec<std::ffi::OsString>, Vec<(&'static str, String)>) {
    match backend() {
        Backend::Sqlite => (vec!["--data".into(), data.into()], vec![]),
        Backend::Postgres => {
            // No guard: the child may outlive this call; the schema goes with a later sweep.
            let url = DataSchema::for_dir(data).await.into_url();
            use base64::Engine;
            let key = base64::engine::general_purpose::STANDARD.encode(TEST_KEY);
            (
                vec!["--database-url".into(), url.into()],
                // A process started again on the same data is the same node: it takes back
                // at once what its killed predecessor held.
                vec![
                    (ferry::secrets::KEY_ENV, key),
                    ("FERRY_NODE_ID", "test-node".to_string()),
                ],
            )
        }
    }
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

/// The events of a source, oldest first, each with its stored detail (at most 100).
pub async fn events_of(app: &TestApp, source: &str) -> Vec<serde_json::Value> {
    let (status, list) = app
        .api_get(&format!("/api/v1/events?source={source}&limit=100"))
        .await;
    assert_eq!(status, 200, "{list}");
    let mut out = Vec::new();
    for e in list["data"].as_array().unwrap().iter().rev() {
        let (_, event) = app
            .api_get(&format!("/api/v1/events/{}", e["id"].as_str().unwrap()))
            .await;
        out.push(event);
    }
    out
}

/// Waits until `source` has `n` events, and answers them: exactly `n`.
pub async fn wait_count(app: &TestApp, source: &str, n: usize) -> Vec<serde_json::Value> {
    wait_until(&format!("{n} events of {source}"), || async {
        events_of(app, source).await.len() >= n
    })
    .await;
    let events = events_of(app, source).await;
    assert_eq!(events.len(), n, "exactly {n} events of {source}");
    events
}

/// An RFC 3339 time in milliseconds.
pub fn at(text: &str) -> i64 {
    ferry::clock::parse_rfc3339(text).unwrap()
}

/// Moves a test clock forward to `text`.
pub fn set_clock(clock: &ManualClock, text: &str) {
    use ferry::clock::Clock;
    let by = at(text) - clock.now_ms();
    assert!(by >= 0, "the clock goes forward only");
    clock.advance(Duration::from_millis(by as u64));
}

/// Posts `body` with `headers` (no content type unless given) and answers the status and the
/// JSON answer (`null` when it is not JSON). Used by modules of the `api` binary only.
#[allow(dead_code)]
pub async fn post_raw(
    app: &TestApp,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, serde_json::Value) {
    let mut request = app.http.post(app.url(path)).body(body.to_vec());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let answer = request.send().await.unwrap();
    let status = answer.status().as_u16();
    let bytes = answer.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

/// Stops an app and waits until nothing of it is left: its schedules and polls run no more
/// (a process that stopped cannot), and its data directory may be opened again.
pub async fn stop(app: TestApp) {
    let weak = app.state.downgrade();
    drop(app);
    wait_until("the stopped app's state is gone", || async {
        weak.upgrade().is_none()
    })
    .await;
}

/// The JSON bodies a receiver got (an alert channel's notices).
pub fn notices(r: &Receiver) -> Vec<serde_json::Value> {
    r.requests()
        .iter()
        .map(|x| serde_json::from_slice(&x.body).unwrap())
        .collect()
}

/// Like `wait_until`, evaluating the alert rules before each look.
pub async fn wait_evaluated<F, Fut>(app: &TestApp, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_until(what, || {
        let fut = check();
        async move {
            app.state.alerts.evaluate_now().await;
            fut.await
        }
    })
    .await;
}

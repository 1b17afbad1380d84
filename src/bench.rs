//! `ferry bench`: measures Ferry on this machine against a bare HTTP handler in the same run,
//! and its ingest also against a synced bare handler (append and `fdatasync` only: the disk's
//! ceiling for anything that answers after a sync).
//! Ferry and the bare handlers each run as a child process (so their peak RSS is their own);
//! the load generator and the receivers run in this process, on loopback only. Every figure
//! is reported with its ratio to the bare handler's, since these machines are shared and noisy.
//! Each Ferry phase has a data directory of its own, and reports what it left on disk and what
//! its commits wrote to the WAL per event acknowledged ([`Storage`]).

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Seconds of measured load per phase (after one second of warm-up).
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Concurrent connections of the load generator.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Events per second in the fixed-rate latency phase.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Size of each event body in bytes.
    #[arg(long, default_value_t = 1024)]
    pub body_size: usize,
    /// Where the Ferry under test keeps its data (a fresh folder per phase is made inside).
    #[arg(long, default_value = "ferry-bench-data")]
    pub data: PathBuf,
    /// Keep the data folder after the run (each phase's `ferry.db` is in `PHASE/data/`), to
    /// look at where the bytes went; by default it is removed.
    #[arg(long)]
    pub keep_data: bool,
    /// Rounds of the ingest-only phase. Each round drives the bare handler, then Ferry, back to
    /// back, and takes their ratio; the median of the rounds' ratios is reported, so a host
    /// that speeds up or slows down between phases moves both sides of a ratio alike.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Which Ferry phases to run (the bare handler always runs: it is the baseline).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ingest,fanout,flow,latency"
    )]
    pub phases: Vec<Phase>,
    /// Another Ferry binary (an earlier build) to drive in the `flow` phase too, right after
    /// this one, so that the two are compared in the same run.
    #[arg(long)]
    pub compare_with: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    /// Ingest only: no flow matches.
    Ingest,
    /// A flow that only delivers, to 3 destinations.
    Fanout,
    /// A flow with a filter, a transform and a fan-out to 3: its expressions run in the
    /// expression workers.
    Flow,
    /// The fan-out flow at a fixed rate, for latency.
    Latency,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("bench I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("the target at {0} did not become ready")]
    NotReady(SocketAddr),
    #[error("phase `{0}` had no successful request")]
    NoSuccess(&'static str),
}

/// The bare handler the figures are compared with: reads the body, answers 202.
///
/// With `synced_in`, the synced bare handler: every body is also appended to a file in that
/// folder and answered only once the file is synced. One thread writes every body queued with
/// one call and `fdatasync`s once per batch (group commit), as Ferry's store writer does, and
/// overwrites the file from its start once it holds [`crate::store::WAL_RESTART_BYTES`], as
/// Ferry's WAL is restarted. Nothing else: no parsing, no index, no database. Its throughput
/// is what a design that acknowledges only what is on disk can reach on this machine's disk,
/// so `ferry bench` reports Ferry's ingest against it as well as against the bare handler.
///
/// The synced handler's file is created here, so a folder it cannot use is an error before
/// the caller announces the handler's address.
pub fn bare_handler(synced_in: Option<&Path>) -> std::io::Result<axum::Router> {
    let appender = synced_in.map(start_appender).transpose()?;
    Ok(axum::Router::new()
        .route(
            "/in/{source}",
            axum::routing::post(move |body: Bytes| {
                let appender = appender.clone();
                async move {
                    if let Some(appender) = appender
                        && let Err(error) = append(&appender, body).await
                    {
                        return (
                            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                            axum::Json(serde_json::json!({ "error": error })),
                        );
                    }
                    (
                        axum::http::StatusCode::ACCEPTED,
                        axum::Json(serde_json::json!({"event_id": "evt_bare"})),
                    )
                }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" })))
}

/// Starts the synced bare handler's appender on a fresh file `appended` in `dir`.
fn start_appender(dir: &Path) -> std::io::Result<tokio::sync::mpsc::Sender<Append>> {
    let path = dir.join("appended");
    let file = std::fs::create_dir_all(dir)
        .and_then(|()| {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&path)
        })
        .map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot create {}: {e}", path.display()))
        })?;
    let (appends, queued) = tokio::sync::mpsc::channel::<Append>(4096);
    std::thread::Builder::new()
        .name("bench-appender".into())
        .spawn(move || append_and_sync(file, queued))?;
    Ok(appends)
}

/// Hands `body` to the appender and waits until it is written and synced.
async fn append(appender: &tokio::sync::mpsc::Sender<Append>, body: Bytes) -> Result<(), String> {
    let (done, synced) = tokio::sync::oneshot::channel();
    let stopped = || "the appender has stopped".to_string();
    appender
        .send(Append { body, done })
        .await
        .map_err(|_| stopped())?;
    synced.await.unwrap_or_else(|_| Err(stopped()))
}

/// A body for the synced bare handler's appender, and where to say it is on disk.
struct Append {
    body: Bytes,
    done: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// The synced bare handler's one writer: takes every body queued, writes them with one call,
/// `fdatasync`s, then answers each. Ends when the handler is gone.
fn append_and_sync(file: std::fs::File, mut queued: tokio::sync::mpsc::Receiver<Append>) {
    use std::os::unix::fs::FileExt;
    let mut at: u64 = 0;
    let mut batch = Vec::new();
    let mut waiting = Vec::new();
    while let Some(first) = queued.blocking_recv() {
        let mut next = Some(first);
        while let Some(append) = next.take() {
            batch.extend_from_slice(&append.body);
            waiting.push(append.done);
            next = queued.try_recv().ok();
        }
        if at + batch.len() as u64 > crate::store::WAL_RESTART_BYTES {
            at = 0;
        }
        let outcome = file
            .write_all_at(&batch, at)
            .and_then(|()| file.sync_data())
            .map_err(|e| format!("cannot append to the synced bare handler's file: {e}"));
        at += batch.len() as u64;
        batch.clear();
        for done in waiting.drain(..) {
            let _ = done.send(outcome.clone());
        }
    }
}

struct Target {
    child: tokio::process::Child,
    addr: SocketAddr,
    /// A Ferry's data directory (`None` for the bare handlers).
    data: Option<PathBuf>,
}

impl Target {
    fn peak_rss_mb(&self) -> Option<f64> {
        let pid = self.child.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    }

    /// CPU time (user + system) the target has used so far.
    fn cpu_time(&self) -> Option<Duration> {
        let pid = self.child.id()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which is in parentheses and may hold spaces).
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some(Duration::from_millis(ticks * 10)) // USER_HZ is 100 on Linux
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Starts `ferry ARGS --listen 127.0.0.1:0` and reads the address it announces on stdout.
async fn start_target(args: &[String]) -> Result<Target, BenchError> {
    start_target_from(&std::env::current_exe()?, args).await
}

async fn start_target_from(program: &Path, args: &[String]) -> Result<Target, BenchError> {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .env(
            "FERRY_LOG",
            std::env::var("FERRY_BENCH_TARGET_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env("FERRY_API_TOKEN", "bench")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("no stdout"))?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .map_err(|_| std::io::Error::other("the target did not announce its address in 30s"))??
        .ok_or_else(|| {
            std::io::Error::other(format!(
                "`ferry {}` exited before announcing its address (its error is above)",
                args.join(" ")
            ))
        })?;
    let addr: SocketAddr = line
        .rsplit("http://")
        .next()
        .and_then(|a| a.trim().parse().ok())
        .ok_or_else(|| {
            std::io::Error::other(format!("unexpected first line from the target: {line:?}"))
        })?;
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(Target {
                child,
                addr,
                data: None,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(BenchError::NotReady(addr))
}

/// Starts the synced bare handler (`ferry bench-bare --synced-in DIR`) on a file in `dir`.
async fn start_synced_bare(dir: &Path) -> Result<Target, BenchError> {
    start_target(&[
        "bench-bare".into(),
        "--synced-in".into(),
        dir.display().to_string(),
    ])
    .await
}

async fn start_ferry(dir: &Path, yaml: &str) -> Result<Target, BenchError> {
    start_ferry_from(&std::env::current_exe()?, dir, yaml).await
}

async fn start_ferry_from(program: &Path, dir: &Path, yaml: &str) -> Result<Target, BenchError> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let config = dir.join("ferry.yaml");
    std::fs::write(&config, yaml)?;
    let data = dir.join("data");
    let target = start_target_from(
        program,
        &[
            "serve".into(),
            "--config".into(),
            config.display().to_string(),
            "--data".into(),
            data.display().to_string(),
        ],
    )
    .await?;
    Ok(Target {
        data: Some(data),
        ..target
    })
}

/// What a closed-loop phase with deliveries measured.
struct DeliveryRun {
    events_per_s: f64,
    deliveries_per_s: f64,
    failed: u64,
    rss: Option<f64>,
    storage: Storage,
}

/// Drives `ferry` as fast as it answers and counts what the receivers get in the measured
/// window; once every event's run has ended, measures what it stored; stops `ferry` after.
async fn deliveries_closed_loop(
    ferry: Target,
    stats: &Arc<Deliveries>,
    connections: usize,
    warmup: Duration,
    measure: Duration,
    size: usize,
    epoch: Instant,
) -> DeliveryRun {
    stats.count.store(0, Ordering::Relaxed);
    let recorder = {
        let stats = stats.clone();
        tokio::spawn(async move {
            tokio::time::sleep(warmup).await;
            stats.count.store(0, Ordering::Relaxed);
            stats.recording.store(true, Ordering::Relaxed);
            tokio::time::sleep(measure).await;
            stats.recording.store(false, Ordering::Relaxed);
            stats.count.load(Ordering::Relaxed)
        })
    };
    stats.recording.store(true, Ordering::Relaxed);
    let load = drive(ferry.addr, connections, warmup, measure, None, size, epoch).await;
    let delivered = recorder.await.unwrap_or(0);
    let rss = ferry.peak_rss_mb();
    let storage = Storage::measure(&ferry, load.acked, load.acked).await;
    ferry.stop().await;
    stats
        .latencies_us
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
    DeliveryRun {
        events_per_s: load.ok as f64 / measure.as_secs_f64(),
        deliveries_per_s: delivered as f64 / measure.as_secs_f64(),
        failed: load.failed,
        rss,
        storage,
    }
}

/// What a phase's Ferry stored: the database and its WAL after the phase, and what its commits
/// wrote to the WAL, for the events it acknowledged (warm-up included: its events are stored
/// too). The WAL counts in the bytes on disk: it is disk the store holds, and what was
/// committed since the last checkpoint is only there. It does not grow with the events (the
/// checkpointer starts it over past [`crate::store::WAL_RESTART_BYTES`]), so over a short
/// phase it weighs more per event than over a long one; `db_bytes` is the database alone.
struct Storage {
    acked: u64,
    db_bytes: u64,
    wal_file_bytes: u64,
    /// From `ferry_store_wal_written_bytes_total`; `None` when `/metrics` did not say.
    wal_written: Option<u64>,
    /// Whether every run had ended and no delivery was pending when it was measured.
    settled: bool,
}

/// How long a phase's Ferry is given, after its load, to end the runs of the events it took.
const SETTLE_FOR: Duration = Duration::from_secs(120);

impl Storage {
    /// Waits until `ferry` has ended `runs` runs and has no pending delivery (or [`SETTLE_FOR`]
    /// has passed), so that every event's attempts and run states are stored, then reads the
    /// WAL counter and the sizes of the files in its data directory.
    async fn measure(ferry: &Target, acked: u64, runs: u64) -> Storage {
        let addr = ferry.addr;
        let deadline = Instant::now() + SETTLE_FOR;
        let mut settled = false;
        let mut metrics = fetch_metrics(addr).await;
        while let Some(text) = &metrics {
            let ended = metric_sum(text, "ferry_runs_total").unwrap_or(0.0);
            let pending = metric_sum(text, "ferry_queue_depth").unwrap_or(0.0);
            settled = ended >= runs as f64 && pending == 0.0;
            if settled || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            metrics = fetch_metrics(addr).await;
        }
        if !settled {
            eprintln!(
                "  storage: measured before every run had ended (after {}s, or /metrics did not answer)",
                SETTLE_FOR.as_secs()
            );
        }
        let size = |name: &str| {
            ferry
                .data
                .as_ref()
                .and_then(|data| std::fs::metadata(data.join(name)).ok())
                .map_or(0, |m| m.len())
        };
        let storage = Storage {
            acked,
            db_bytes: size("ferry.db"),
            wal_file_bytes: size("ferry.db-wal"),
            wal_written: metrics
                .as_deref()
                .and_then(|t| metric_sum(t, "ferry_store_wal_written_bytes_total"))
                .map(|b| b as u64),
            settled,
        };
        eprintln!(
            "  storage: {} events acknowledged; ferry.db {:.1} MB ({:.0} B per event), ferry.db-wal {:.1} MB; WAL written {}",
            storage.acked,
            storage.db_bytes as f64 / 1e6,
            storage.db_bytes as f64 / storage.acked as f64,
            storage.wal_file_bytes as f64 / 1e6,
            storage
                .wal_written
                .map_or("unknown".to_string(), |b| format!(
                    "{:.1} MB",
                    b as f64 / 1e6
                )),
        );
        storage
    }

    /// Bytes of `ferry.db` and `ferry.db-wal` per event acknowledged.
    fn on_disk_per_event(&self) -> f64 {
        (self.db_bytes + self.wal_file_bytes) as f64 / self.acked as f64
    }

    /// Bytes written to the WAL per event acknowledged.
    fn wal_written_per_event(&self) -> f64 {
        self.wal_written
            .map_or(f64::NAN, |b| b as f64 / self.acked as f64)
    }

    /// The two rows of `shape`.
    fn rows(&self, shape: &'static str) -> [Row; 2] {
        let unsettled = if self.settled {
            ""
        } else {
            ", runs not all ended"
        };
        [
            row(
                shape,
                format!("bytes on disk per event (ferry.db + WAL){unsettled}"),
                self.on_disk_per_event(),
                "B",
                None,
            ),
            row(
                shape,
                format!("WAL bytes written per event{unsettled}"),
                self.wal_written_per_event(),
                "B",
                None,
            ),
        ]
    }
}

/// `GET /metrics` of the Ferry at `addr`; `None` when it does not answer with a page.
async fn fetch_metrics(addr: SocketAddr) -> Option<String> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(conn);
    let request = hyper::Request::get("/metrics")
        .header("host", "bench")
        .body(Full::new(Bytes::new()))
        .ok()?;
    let response = sender.send_request(request).await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let body = response.into_body().collect().await.ok()?.to_bytes();
    String::from_utf8(body.to_vec()).ok()
}

/// The sum of every series of the metric `name` in a Prometheus text page; `None` when it has
/// none.
fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut sum = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let metric = series.split('{').next().unwrap_or(series);
        if metric == name
            && let Ok(v) = value.parse::<f64>()
        {
            *sum.get_or_insert(0.0) += v;
        }
    }
    sum
}

/// Counts what the receivers got, and ingest-to-delivery latency from the `sent_us` stamp.
#[derive(Default)]
struct Deliveries {
    count: AtomicU64,
    recording: AtomicBool,
    latencies_us: Mutex<Vec<u32>>,
}

async fn start_receiver(epoch: Instant, stats: Arc<Deliveries>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/",
        axum::routing::post(move |body: Bytes| {
            let stats = stats.clone();
            async move {
                if stats.recording.load(Ordering::Relaxed) {
                    stats.count.fetch_add(1, Ordering::Relaxed);
                    if let Some(sent) = sent_us(&body) {
                        let now = epoch.elapsed().as_micros() as u64;
                        stats
                            .latencies_us
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(now.saturating_sub(sent) as u32);
                    }
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

fn sent_us(body: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("\"sent_us\":")? + "\"sent_us\":".len();
    let digits: String = text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn body(seq: u64, sent_us: u64, size: usize) -> Bytes {
    let head = format!(r#"{{"type":"bench.event","seq":{seq},"sent_us":{sent_us},"pad":""#);
    let pad = size.saturating_sub(head.len() + 2);
    let mut s = String::with_capacity(size);
    s.push_str(&head);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    Bytes::from(s)
}

#[derive(Default)]
struct Load {
    /// Successful requests in the measured window.
    ok: u64,
    /// Successful requests, the warm-up's included.
    acked: u64,
    failed: u64,
    latencies_us: Vec<u32>,
}

/// Drives `connections` keep-alive connections against `addr`. With `rate`, each connection
/// sends on a fixed schedule (open loop); without, as fast as answers come (closed loop).
async fn drive(
    addr: SocketAddr,
    connections: usize,
    warmup: Duration,
    measure: Duration,
    rate: Option<u64>,
    size: usize,
    epoch: Instant,
) -> Load {
    let start = Instant::now();
    let (measure_from, until) = (start + warmup, start + warmup + measure);
    let seq = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..connections {
        let seq = seq.clone();
        tasks.push(tokio::spawn(async move {
            let mut load = Load::default();
            let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
                return load;
            };
            let _ = stream.set_nodelay(true);
            let Ok((mut sender, conn)) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await
            else {
                return load;
            };
            tokio::spawn(conn);
            let period = rate.map(|r| Duration::from_secs_f64(connections as f64 / r as f64));
            let mut next_send = start
                + period
                    .map(|p| p.mul_f64(i as f64 / connections as f64))
                    .unwrap_or_default();
            loop {
                if let Some(p) = period {
                    tokio::time::sleep_until(next_send.into()).await;
                    next_send += p;
                }
                let sent = Instant::now();
                if sent >= until {
                    break;
                }
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let request = hyper::Request::post("/in/bench")
                    .header("host", "bench")
                    .header("content-type", "application/json")
                    .body(Full::new(body(n, epoch.elapsed().as_micros() as u64, size)));
                let Ok(request) = request else { break };
                if sender.ready().await.is_err() {
                    break;
                }
                let good = match sender.send_request(request).await {
                    Ok(response) => {
                        let good = response.status().is_success();
                        let _ = response.into_body().collect().await;
                        good
                    }
                    Err(_) => false,
                };
                load.acked += u64::from(good);
                if sent >= measure_from {
                    if good {
                        load.ok += 1;
                        load.latencies_us.push(sent.elapsed().as_micros() as u32);
                    } else {
                        load.failed += 1;
                    }
                }
            }
            load
        }));
    }
    let mut total = Load::default();
    for t in tasks {
        if let Ok(l) = t.await {
            total.ok += l.ok;
            total.acked += l.acked;
            total.failed += l.failed;
            total.latencies_us.extend(l.latencies_us);
        }
    }
    total.latencies_us.sort_unstable();
    total
}

/// CPU microseconds per successful request over a whole drive (warm-up included, so the
/// requests of the warm-up are estimated at the measured rate).
fn cpu_per_request(
    before: Option<Duration>,
    after: Option<Duration>,
    ok: u64,
    warmup: Duration,
    measure: Duration,
) -> f64 {
    match (before, after) {
        (Some(b), Some(a)) if ok > 0 => {
            let requests = ok as f64 * (warmup + measure).as_secs_f64() / measure.as_secs_f64();
            (a - b).as_secs_f64() * 1e6 / requests
        }
        _ => f64::NAN,
    }
}

fn row(
    shape: &'static str,
    figure: impl Into<String>,
    value: f64,
    unit: &'static str,
    ratio: Option<f64>,
) -> Row {
    Row {
        shape,
        figure: figure.into(),
        value,
        unit,
        ratio,
    }
}

/// Adds a p50 and a p99 row for `shape`, each with its ratio to the same percentile of the
/// baseline. `label` holds `{}` where the percentile's name goes.
fn push_percentiles(
    rows: &mut Vec<Row>,
    shape: &'static str,
    label: &str,
    sorted_us: &[u32],
    baseline_us: &[u32],
) {
    for (name, p) in [("p50", 0.5), ("p99", 0.99)] {
        let value = percentile_ms(sorted_us, p);
        rows.push(row(
            shape,
            label.replace("{}", name),
            value,
            "ms",
            Some(value / percentile_ms(baseline_us, p)),
        ));
    }
}

/// One round of the ingest-only phase: the bare handler and Ferry, driven back to back.
struct Round {
    bare_rps: f64,
    rps: f64,
    /// The synced bare handler's requests/s, driven right after Ferry.
    synced_rps: f64,
    bare_cpu_us: f64,
    cpu_us: f64,
}

/// The median of some figures (the mean of the middle two for an even count); NaN for none.
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    crate::telemetry::nearest_rank(sorted_us, p).map_or(f64::NAN, |us| us as f64 / 1000.0)
}

/// What the bench's flow does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// No flow matches the events.
    IngestOnly,
    /// Deliver to every receiver.
    FanOut,
    /// Filter, transform, then deliver to every receiver.
    Expressions,
}

fn config(receivers: &[SocketAddr], shape: Shape) -> String {
    let mut yaml = String::from(
        "settings: { allow_private_destinations: true }\nsources:\n  - { id: bench, kind: webhook, verify: { scheme: none } }\n  - { id: elsewhere, kind: webhook, verify: { scheme: none } }\n",
    );
    yaml.push_str("destinations:\n");
    for (i, r) in receivers.iter().enumerate() {
        yaml.push_str(&format!(
            "  - {{ id: d{i}, kind: http, url: \"http://{r}/\", concurrency: 64 }}\n"
        ));
    }
    let names: Vec<String> = (0..receivers.len()).map(|i| format!("d{i}")).collect();
    let source = if shape == Shape::IngestOnly {
        "elsewhere"
    } else {
        "bench"
    };
    // The transform keeps `sent_us`, which the receivers read for latency.
    let pure = if shape == Shape::Expressions {
        r#"{ filter: '.seq >= 0 and .type == "bench.event"' }, { transform: '{seq, sent_us, kind: .type, pad}' }, "#
    } else {
        ""
    };
    yaml.push_str(&format!(
        "flows:\n  - {{ id: fan-out, on: {{ source: {source} }}, steps: [ {pure}{{ deliver: [{}] }} ] }}\n",
        names.join(", ")
    ));
    yaml
}

pub fn run(args: BenchArgs) -> Result<(), BenchError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_async(args))
}

struct Row {
    shape: &'static str,
    figure: String,
    value: f64,
    unit: &'static str,
    ratio: Option<f64>,
}

async fn run_async(args: BenchArgs) -> Result<(), BenchError> {
    let epoch = Instant::now();
    let warmup = Duration::from_secs(1);
    let measure = Duration::from_secs(args.duration);
    let (c, size) = (args.connections, args.body_size);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!(
        "ferry bench: {cores} cores, {size}-byte events, {c} connections, {}s per phase after 1s warm-up",
        args.duration
    );
    let stats = Arc::new(Deliveries::default());
    let mut receivers = Vec::new();
    for _ in 0..3 {
        receivers.push(start_receiver(epoch, stats.clone()).await?);
    }
    let mut rows = Vec::new();
    let mut failures: Vec<(&str, u64)> = Vec::new();

    eprintln!("phase 1/7: bare handler, closed loop");
    let bare = start_target(&["bench-bare".into()]).await?;
    let cpu_before = bare.cpu_time();
    let bare_max = drive(bare.addr, c, warmup, measure, None, size, epoch).await;
    let bare_cpu_us = cpu_per_request(cpu_before, bare.cpu_time(), bare_max.ok, warmup, measure);
    eprintln!("phase 2/7: bare handler, {} requests/s", args.rate);
    let bare_fixed = drive(bare.addr, c, warmup, measure, Some(args.rate), size, epoch).await;
    if bare_max.ok == 0 {
        return Err(BenchError::NoSuccess("bare"));
    }
    let bare_rps = bare_max.ok as f64 / measure.as_secs_f64();
    rows.push(row("bare handler", "requests/s", bare_rps, "", Some(1.0)));
    rows.push(row(
        "bare handler",
        "CPU per request",
        bare_cpu_us,
        "us",
        Some(1.0),
    ));
    push_percentiles(
        &mut rows,
        "bare handler",
        "latency {} at max load",
        &bare_max.latencies_us,
        &bare_max.latencies_us,
    );

    let mut ingest_rss = None;
    if args.phases.contains(&Phase::Ingest) {
        let dir = args.data.join("ingest");
        let ferry = start_ferry(&dir, &config(&receivers, Shape::IngestOnly)).await?;
        let mut acked = 0;
        let synced = start_synced_bare(&args.data.join("synced-bare")).await?;
        let mut rounds: Vec<Round> = Vec::new();
        let mut latencies = Vec::new();
        let (mut failed, mut synced_failed) = (0, 0);
        for round in 0..args.rounds.max(1) {
            // The first round's baseline is the bare phase just run.
            let (bare_rps_now, bare_cpu_now) = if round == 0 {
                (bare_rps, bare_cpu_us)
            } else {
                eprintln!("phase 3/7: round {}: bare handler, closed loop", round + 1);
                let before = bare.cpu_time();
                let load = drive(bare.addr, c, warmup, measure, None, size, epoch).await;
                let cpu = cpu_per_request(before, bare.cpu_time(), load.ok, warmup, measure);
                (load.ok as f64 / measure.as_secs_f64(), cpu)
            };
            eprintln!(
                "phase 3/7: round {}: ferry, ingest only (no flow matches)",
                round + 1
            );
            let before = ferry.cpu_time();
            let ingest = drive(ferry.addr, c, warmup, measure, None, size, epoch).await;
            let cpu = cpu_per_request(before, ferry.cpu_time(), ingest.ok, warmup, measure);
            let rps = ingest.ok as f64 / measure.as_secs_f64();
            eprintln!(
                "phase 3/7: round {}: synced bare handler (append and fdatasync only)",
                round + 1
            );
            let synced_load = drive(synced.addr, c, warmup, measure, None, size, epoch).await;
            synced_failed += synced_load.failed;
            let synced_rps = synced_load.ok as f64 / measure.as_secs_f64();
            eprintln!(
                "  round {}: bare {bare_rps_now:.0} requests/s, ingest {rps:.0} events/s, ratio {:.2}; synced bare {synced_rps:.0} requests/s, {:.2} of bare, ingest {:.2} of it; CPU {bare_cpu_now:.1} / {cpu:.1} us",
                round + 1,
                rps / bare_rps_now,
                synced_rps / bare_rps_now,
                rps / synced_rps,
            );
            rounds.push(Round {
                bare_rps: bare_rps_now,
                rps,
                synced_rps,
                bare_cpu_us: bare_cpu_now,
                cpu_us: cpu,
            });
            latencies.extend(ingest.latencies_us);
            failed += ingest.failed;
            acked += ingest.acked;
        }
        ingest_rss = ferry.peak_rss_mb();
        let storage = Storage::measure(&ferry, acked, 0).await;
        ferry.stop().await;
        synced.stop().await;
        latencies.sort_unstable();
        let n = rounds.len();
        let over_rounds = |figure: fn(&Round) -> f64| median(rounds.iter().map(figure));
        let medians = [
            (
                "ingest only",
                "events/s",
                "",
                over_rounds(|r| r.rps),
                Some(over_rounds(|r| r.rps / r.bare_rps)),
            ),
            (
                "synced bare handler",
                "requests/s",
                "",
                over_rounds(|r| r.synced_rps),
                Some(over_rounds(|r| r.synced_rps / r.bare_rps)),
            ),
            (
                "ingest only",
                "events/s per synced bare request/s",
                "x",
                over_rounds(|r| r.rps / r.synced_rps),
                None,
            ),
            (
                "ingest only",
                "CPU per event",
                "us",
                over_rounds(|r| r.cpu_us),
                Some(over_rounds(|r| r.cpu_us / r.bare_cpu_us)),
            ),
        ];
        for (shape, figure, unit, value, ratio) in medians {
            rows.push(row(
                shape,
                format!("{figure} (median of {n} rounds)"),
                value,
                unit,
                ratio,
            ));
        }
        rows.extend(storage.rows("ingest only"));
        push_percentiles(
            &mut rows,
            "ingest only",
            "latency {} at max load",
            &latencies,
            &bare_max.latencies_us,
        );
        failures.push(("ingest", failed));
        failures.push(("synced bare", synced_failed));
    }
    let mut rss = vec![("bare handler", bare.peak_rss_mb())];
    bare.stop().await;
    if args.phases.contains(&Phase::Ingest) {
        rss.push(("ingest only", ingest_rss));
    }

    if args.phases.contains(&Phase::Fanout) {
        eprintln!("phase 4/7: ferry, fan-out to 3, closed loop");
        let dir = args.data.join("fanout");
        let ferry = start_ferry(&dir, &config(&receivers, Shape::FanOut)).await?;
        let run = deliveries_closed_loop(ferry, &stats, c, warmup, measure, size, epoch).await;
        rows.push(row(
            "fan-out to 3",
            "events/s ingested",
            run.events_per_s,
            "",
            Some(run.events_per_s / bare_rps),
        ));
        rows.push(row(
            "fan-out to 3",
            "deliveries/s",
            run.deliveries_per_s,
            "",
            Some(run.deliveries_per_s / bare_rps),
        ));
        rows.extend(run.storage.rows("fan-out to 3"));
        rss.push(("fan-out to 3", run.rss));
        failures.push(("fan-out", run.failed));
    }

    if args.phases.contains(&Phase::Flow) {
        let shape = "filter, transform, fan-out to 3";
        eprintln!("phase 5/7: ferry, {shape}, closed loop");
        let yaml = config(&receivers, Shape::Expressions);
        let dir = args.data.join("flow");
        let ferry = start_ferry(&dir, &yaml).await?;
        let ours = deliveries_closed_loop(ferry, &stats, c, warmup, measure, size, epoch).await;
        rows.push(row(
            shape,
            "deliveries/s",
            ours.deliveries_per_s,
            "",
            Some(ours.deliveries_per_s / bare_rps),
        ));
        rows.extend(ours.storage.rows(shape));
        rss.push((shape, ours.rss));
        failures.push(("flow", ours.failed));
        if let Some(other) = &args.compare_with {
            eprintln!("phase 5/7: {}, {shape}, closed loop", other.display());
            let dir = args.data.join("flow-other");
            let ferry = start_ferry_from(other, &dir, &yaml).await?;
            let theirs =
                deliveries_closed_loop(ferry, &stats, c, warmup, measure, size, epoch).await;
            rows.push(row(
                "the same, --compare-with build",
                "deliveries/s",
                theirs.deliveries_per_s,
                "",
                Some(theirs.deliveries_per_s / bare_rps),
            ));
            rows.extend(theirs.storage.rows("the same, --compare-with build"));
            rows.push(row(
                "this build / --compare-with build",
                "deliveries/s",
                ours.deliveries_per_s / theirs.deliveries_per_s,
                "x",
                None,
            ));
            rss.push(("the same, --compare-with build", theirs.rss));
            failures.push(("flow, --compare-with build", theirs.failed));
        }
    }

    if args.phases.contains(&Phase::Latency) {
        eprintln!("phase 6/7: ferry, fan-out to 3 at {} events/s", args.rate);
        let ferry = start_ferry(
            &args.data.join("latency"),
            &config(&receivers, Shape::FanOut),
        )
        .await?;
        stats.recording.store(false, Ordering::Relaxed);
        let recorder = {
            let stats = stats.clone();
            tokio::spawn(async move {
                tokio::time::sleep(warmup).await;
                stats
                    .latencies_us
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clear();
                stats.recording.store(true, Ordering::Relaxed);
                tokio::time::sleep(measure).await;
                stats.recording.store(false, Ordering::Relaxed);
            })
        };
        let fixed = drive(ferry.addr, c, warmup, measure, Some(args.rate), size, epoch).await;
        let _ = recorder.await;
        // Let the last deliveries of the window arrive before reading latencies.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let latency_rss = ferry.peak_rss_mb();
        ferry.stop().await;
        let mut e2e =
            std::mem::take(&mut *stats.latencies_us.lock().unwrap_or_else(|e| e.into_inner()));
        e2e.sort_unstable();
        push_percentiles(
            &mut rows,
            "fixed rate",
            "ingest {} at fixed rate",
            &fixed.latencies_us,
            &bare_fixed.latencies_us,
        );
        push_percentiles(
            &mut rows,
            "fixed rate",
            "ingest-to-delivery {}",
            &e2e,
            &bare_fixed.latencies_us,
        );
        rss.push(("fixed rate", latency_rss));
        failures.push(("fixed rate", fixed.failed));
        eprintln!(
            "fixed rate: {} events sent, {} deliveries timed in the window",
            fixed.ok,
            e2e.len()
        );
        // The disk's own tail at the same rate: a sync that stalls for tens of milliseconds
        // (the host's doing) holds every acknowledgement of any durable store as long.
        eprintln!(
            "phase 7/7: synced bare handler (append and fdatasync only), {} requests/s",
            args.rate
        );
        let synced = start_synced_bare(&args.data.join("synced-bare-fixed")).await?;
        let synced_fixed = drive(
            synced.addr,
            c,
            warmup,
            measure,
            Some(args.rate),
            size,
            epoch,
        )
        .await;
        synced.stop().await;
        push_percentiles(
            &mut rows,
            "synced bare handler",
            "latency {} at fixed rate",
            &synced_fixed.latencies_us,
            &bare_fixed.latencies_us,
        );
        failures.push(("synced bare at fixed rate", synced_fixed.failed));
    }
    for (shape, rss) in rss {
        rows.push(row(shape, "peak RSS", rss.unwrap_or(f64::NAN), "MB", None));
    }

    println!();
    println!("| shape | figure | value | ratio to bare |");
    println!("|---|---|---:|---:|");
    for r in &rows {
        let value = if r.unit == "us" {
            format!("{:.1} µs", r.value)
        } else if r.unit == "ms" {
            format!("{:.2} ms", r.value)
        } else if r.unit == "x" {
            format!("{:.2}", r.value)
        } else if r.unit == "MB" {
            format!("{:.1} MB", r.value)
        } else if r.unit == "B" && r.value.is_nan() {
            "unknown".to_string()
        } else if r.unit == "B" {
            format!("{:.0} B", r.value)
        } else {
            format!("{:.0}", r.value)
        };
        let ratio = r
            .ratio
            .map(|x| format!("{x:.2}"))
            .unwrap_or_else(|| "".into());
        println!("| {} | {} | {} | {} |", r.shape, r.figure, value, ratio);
    }
    println!();
    failures.insert(0, ("bare", bare_max.failed + bare_fixed.failed));
    let failures: Vec<String> = failures
        .iter()
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    println!("failed requests: {}", failures.join(", "));
    if args.keep_data {
        println!("data kept in {}", args.data.display());
    } else {
        let _ = std::fs::remove_dir_all(&args.data);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_have_the_asked_size_and_carry_their_stamp() {
        let b = body(7, 123456, 1024);
        assert_eq!(b.len(), 1024);
        assert_eq!(sent_us(&b), Some(123456));
        assert!(serde_json::from_slice::<serde_json::Value>(&b).is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_synced_bare_handler_answers_only_what_its_file_holds() {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let folder = dir.path().join("synced");
        let handler = bare_handler(Some(&folder)).unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, handler).await });
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::new();
        let sends: Vec<_> = (0..20)
            .map(|n| {
                let (client, file) = (client.clone(), folder.join("appended"));
                tokio::spawn(async move {
                    let body = format!("{{\"n\":\"body-{n:02}\"}}");
                    let answer = client
                        .post(format!("http://{addr}/in/bench"))
                        .body(body.clone())
                        .send()
                        .await
                        .unwrap();
                    // Answered means written: the file holds the body by then.
                    let held = std::fs::read_to_string(file).unwrap();
                    (answer.status().as_u16(), held.contains(&body))
                })
            })
            .collect();
        let mut answers = Vec::new();
        for send in sends {
            answers.push(send.await.unwrap());
        }
        assert!(answers.iter().all(|&a| a == (202, true)), "{answers:?}");
        let held = std::fs::read_to_string(folder.join("appended")).unwrap();
        for n in 0..20 {
            assert_eq!(held.matches(&format!("body-{n:02}")).count(), 1, "{held}");
        }
        server.abort();
    }

    #[test]
    fn a_synced_folder_that_cannot_be_made_is_refused_with_its_file_named() {
        let dir = tempfile::tempdir().unwrap();
        let not_a_folder = dir.path().join("plain-file");
        std::fs::write(&not_a_folder, "x").unwrap();
        let error = bare_handler(Some(&not_a_folder.join("synced"))).unwrap_err();
        let message = error.to_string();
        assert!(message.starts_with("cannot create "), "{message}");
        assert!(message.contains("synced/appended"), "{message}");
    }

    #[test]
    fn a_metric_is_summed_over_its_series_and_only_its_own() {
        let page = "# HELP ferry_queue_depth Pending deliveries\n\
            # TYPE ferry_queue_depth gauge\n\
            ferry_queue_depth{destination=\"d0\"} 2\n\
            ferry_queue_depth{destination=\"d1\"} 3\n\
            ferry_queue_depth_other 100\n\
            ferry_store_wal_written_bytes_total 123456\n";
        assert_eq!(metric_sum(page, "ferry_queue_depth"), Some(5.0));
        assert_eq!(
            metric_sum(page, "ferry_store_wal_written_bytes_total"),
            Some(123456.0)
        );
        assert_eq!(metric_sum(page, "ferry_runs_total"), None);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0, 3.0, 2.0].into_iter()), 2.5);
        assert_eq!(median([f64::NAN, 5.0].into_iter()), 5.0);
        assert!(median(std::iter::empty()).is_nan());
    }

    #[test]
    fn percentiles_pick_the_right_rank() {
        let v: Vec<u32> = (1..=100).map(|x| x * 1000).collect();
        assert_eq!(percentile_ms(&v, 0.5), 51.0);
        assert_eq!(percentile_ms(&v, 0.99), 99.0);
    }
}

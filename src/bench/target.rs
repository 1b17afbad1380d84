//! The processes a phase drives: Ferry (`ferry serve`, this binary or `--compare-with`'s,
//! with a config and a data directory of its own) and the bare handlers (`ferry bench-bare`),
//! each a child process on a port of its own, with what `/proc` says of its memory and CPU.

use super::BenchError;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The API token of every Ferry the bench starts.
pub(super) const API_TOKEN: &str = "bench";

/// A child process that takes events at `addr` (in cluster mode, with the other nodes of
/// the phase, at `addrs`); killed when stopped or dropped.
pub(super) struct Target {
    child: tokio::process::Child,
    pub(super) addr: SocketAddr,
    /// Every node's address, `addr` first: the load is spread over them.
    pub(super) addrs: Vec<SocketAddr>,
    /// The other nodes of a cluster.
    more: Vec<tokio::process::Child>,
    /// A Ferry's data directory (`None` for the bare handlers and on PostgreSQL).
    pub(super) data: Option<PathBuf>,
    /// On PostgreSQL: the phase's schema and where the server's counters stood at its start.
    pub(super) database: Option<PhaseDatabase>,
}

/// Where a phase's Ferry keeps its data: SQLite in the phase's folder, or a fresh schema of
/// the PostgreSQL database at `url`, served by `nodes` processes (cluster mode).
#[derive(Debug, Clone)]
pub(super) enum Backend {
    Sqlite,
    Postgres { url: String, nodes: usize },
}

/// A phase's schema on PostgreSQL, with the server's WAL position and commit count when the
/// phase's Ferry started (both are the whole server's: the bench assumes it has it alone).
pub(super) struct PhaseDatabase {
    pub(super) client: tokio_postgres::Client,
    pub(super) schema: String,
    pub(super) wal_lsn_at_start: String,
    pub(super) commits_at_start: i64,
}

impl PhaseDatabase {
    /// Makes the schema `schema` afresh on the server at `url` and notes the counters.
    async fn create(url: &str, schema: &str) -> Result<PhaseDatabase, BenchError> {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .map_err(|e| std::io::Error::other(format!("cannot connect to {url}: {e}")))?;
        tokio::spawn(connection);
        let pg = |e: tokio_postgres::Error| std::io::Error::other(e.to_string());
        client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
            ))
            .await
            .map_err(pg)?;
        let (wal_lsn_at_start, commits_at_start) = Self::counters(&client).await?;
        Ok(PhaseDatabase {
            client,
            schema: schema.to_string(),
            wal_lsn_at_start,
            commits_at_start,
        })
    }

    /// The server's WAL position and its committed transactions in this database.
    pub(super) async fn counters(
        client: &tokio_postgres::Client,
    ) -> Result<(String, i64), std::io::Error> {
        let row = client
            .query_one(
                "SELECT pg_current_wal_lsn()::text, xact_commit FROM pg_stat_database WHERE datname = current_database()",
                &[],
            )
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok((row.get(0), row.get(1)))
    }
}

impl Target {
    /// The most resident memory the target has held so far (`VmHWM`), in MB.
    pub(super) fn peak_rss_mb(&self) -> Option<f64> {
        self.status_mb("VmHWM:")
    }

    /// The target's resident size now.
    pub(super) fn rss_mb(&self) -> Option<f64> {
        self.status_mb("VmRSS:")
    }

    /// A size in `/proc/PID/status`, in MB.
    fn status_mb(&self, field: &str) -> Option<f64> {
        let pid = self.child.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with(field))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    }

    /// CPU time (user + system) the target has used so far.
    pub(super) fn cpu_time(&self) -> Option<Duration> {
        let pid = self.child.id()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which is in parentheses and may hold spaces).
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some(Duration::from_millis(ticks * 10)) // USER_HZ is 100 on Linux
    }

    /// Kills the target (every node of a cluster), and drops a phase's schema.
    pub(super) async fn stop(mut self) {
        let _ = self.child.kill().await;
        for child in &mut self.more {
            let _ = child.kill().await;
        }
        if let Some(db) = &self.database {
            let _ = db
                .client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", db.schema))
                .await;
        }
    }
}

/// Starts `ferry ARGS --listen 127.0.0.1:0` and reads the address it announces on stdout.
pub(super) async fn start_target(args: &[String]) -> Result<Target, BenchError> {
    start_target_from(&std::env::current_exe()?, args).await
}

/// [`start_target`] with another binary.
async fn start_target_from(program: &Path, args: &[String]) -> Result<Target, BenchError> {
    start_target_logging(program, args, "warn", &[]).await
}

/// [`start_target_from`] with `log` as the target's `FERRY_LOG` unless
/// `FERRY_BENCH_TARGET_LOG` says otherwise.
async fn start_target_logging(
    program: &Path,
    args: &[String],
    log: &str,
    envs: &[(&str, &str)],
) -> Result<Target, BenchError> {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .args(["--listen", "127.0.0.1:0"])
        .env(
            "FERRY_LOG",
            std::env::var("FERRY_BENCH_TARGET_LOG").unwrap_or_else(|_| log.into()),
        )
        .env("FERRY_API_TOKEN", API_TOKEN)
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
                addrs: vec![addr],
                more: Vec::new(),
                data: None,
                database: None,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(BenchError::NotReady(addr))
}

/// Starts the synced bare handler (`ferry bench-bare --synced-in DIR`) on a file in `dir`.
pub(super) async fn start_synced_bare(dir: &Path) -> Result<Target, BenchError> {
    start_target(&[
        "bench-bare".into(),
        "--synced-in".into(),
        dir.display().to_string(),
    ])
    .await
}

/// Starts this binary's `ferry serve` on `yaml`, in a fresh `dir` (its data in `dir/data`, or
/// in a fresh schema on PostgreSQL).
pub(super) async fn start_ferry(
    backend: &Backend,
    dir: &Path,
    yaml: &str,
) -> Result<Target, BenchError> {
    start_ferry_from(backend, &std::env::current_exe()?, dir, yaml).await
}

/// Starts `program`'s `ferry serve` on `yaml`, in a fresh `dir` (its data in `dir/data`, or
/// in a fresh schema on PostgreSQL).
pub(super) async fn start_ferry_from(
    backend: &Backend,
    program: &Path,
    dir: &Path,
    yaml: &str,
) -> Result<Target, BenchError> {
    start_ferry_in(backend, program, dir, yaml, "warn").await
}

/// [`start_ferry`] that logs at `log` (a `FERRY_LOG` filter) rather than `warn`.
pub(super) async fn start_ferry_logging(
    dir: &Path,
    yaml: &str,
    log: &str,
) -> Result<Target, BenchError> {
    start_ferry_in(&Backend::Sqlite, &std::env::current_exe()?, dir, yaml, log).await
}

/// The key of the stored secrets every node of a bench cluster shares.
const CLUSTER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

async fn start_ferry_in(
    backend: &Backend,
    program: &Path,
    dir: &Path,
    yaml: &str,
    log: &str,
) -> Result<Target, BenchError> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let config = dir.join("ferry.yaml");
    std::fs::write(&config, yaml)?;
    if let Backend::Postgres { url, nodes } = backend {
        let phase: String = dir
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let schema = format!("ferry_bench_{phase}");
        let database = PhaseDatabase::create(url, &schema).await?;
        let joiner = if url.contains('?') { '&' } else { '?' };
        let node_url = format!("{url}{joiner}options=-csearch_path%3D{schema}");
        let mut started: Vec<Target> = Vec::new();
        for i in 0..(*nodes).max(1) {
            let node = start_target_logging(
                program,
                &[
                    "serve".into(),
                    "--config".into(),
                    config.display().to_string(),
                    "--database-url".into(),
                    node_url.clone(),
                    "--node-id".into(),
                    format!("bench-{phase}-{i}"),
                ],
                log,
                &[("FERRY_SECRET_KEY", CLUSTER_KEY)],
            )
            .await?;
            started.push(node);
        }
        let mut nodes = started.into_iter();
        let Some(first) = nodes.next() else {
            return Err(BenchError::NoSuccess("cluster start"));
        };
        let mut target = Target {
            database: Some(database),
            ..first
        };
        for node in nodes {
            target.addrs.push(node.addr);
            target.more.push(node.child);
        }
        return Ok(target);
    }
    let data = dir.join("data");
    let target = start_target_logging(
        program,
        &[
            "serve".into(),
            "--config".into(),
            config.display().to_string(),
            "--data".into(),
            data.display().to_string(),
        ],
        log,
        &[],
    )
    .await?;
    Ok(Target {
        data: Some(data),
        ..target
    })
}

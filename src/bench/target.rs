//! The processes a phase drives: Ferry (`ferry serve`, this binary or `--compare-with`'s,
//! with a config and a data directory of its own) and the bare handlers (`ferry bench-bare`),
//! each a child process on a port of its own, with what `/proc` says of its memory and CPU.

use super::BenchError;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The API token of every Ferry the bench starts.
pub(super) const API_TOKEN: &str = "bench";

/// A child process that takes events at `addr`; killed when stopped or dropped.
pub(super) struct Target {
    child: tokio::process::Child,
    pub(super) addr: SocketAddr,
    /// A Ferry's data directory (`None` for the bare handlers).
    pub(super) data: Option<PathBuf>,
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

    /// Kills the target.
    pub(super) async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Starts `ferry ARGS --listen 127.0.0.1:0` and reads the address it announces on stdout.
pub(super) async fn start_target(args: &[String]) -> Result<Target, BenchError> {
    start_target_from(&std::env::current_exe()?, args).await
}

/// [`start_target`] with another binary.
async fn start_target_from(program: &Path, args: &[String]) -> Result<Target, BenchError> {
    start_target_logging(program, args, "warn").await
}

/// [`start_target_from`] with `log` as the target's `FERRY_LOG` unless
/// `FERRY_BENCH_TARGET_LOG` says otherwise.
async fn start_target_logging(
    program: &Path,
    args: &[String],
    log: &str,
) -> Result<Target, BenchError> {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(program)
        .args(args)
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
                data: None,
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

/// Starts this binary's `ferry serve` on `yaml`, in a fresh `dir` (its data in `dir/data`).
pub(super) async fn start_ferry(dir: &Path, yaml: &str) -> Result<Target, BenchError> {
    start_ferry_from(&std::env::current_exe()?, dir, yaml).await
}

/// Starts `program`'s `ferry serve` on `yaml`, in a fresh `dir` (its data in `dir/data`).
pub(super) async fn start_ferry_from(
    program: &Path,
    dir: &Path,
    yaml: &str,
) -> Result<Target, BenchError> {
    start_ferry_in(program, dir, yaml, "warn").await
}

/// [`start_ferry`] that logs at `log` (a `FERRY_LOG` filter) rather than `warn`.
pub(super) async fn start_ferry_logging(
    dir: &Path,
    yaml: &str,
    log: &str,
) -> Result<Target, BenchError> {
    start_ferry_in(&std::env::current_exe()?, dir, yaml, log).await
}

async fn start_ferry_in(
    program: &Path,
    dir: &Path,
    yaml: &str,
    log: &str,
) -> Result<Target, BenchError> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let config = dir.join("ferry.yaml");
    std::fs::write(&config, yaml)?;
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
    )
    .await?;
    Ok(Target {
        data: Some(data),
        ..target
    })
}

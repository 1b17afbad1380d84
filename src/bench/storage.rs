//! What a phase's Ferry left on disk and wrote to its WAL per event acknowledged, read once
//! every run has ended: the files' sizes in its data directory, and its `/metrics` page.

use super::report::{Row, row};
use super::target::{PhaseDatabase, Target};
use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// What a phase's Ferry stored: the database and its WAL after the phase, and what its commits
/// wrote to the WAL, for the events it acknowledged (warm-up included: its events are stored
/// too). The WAL counts in the bytes on disk: it is disk the store holds, and what was
/// committed since the last checkpoint is only there. It does not grow with the events (the
/// checkpointer starts it over past [`crate::store::WAL_RESTART_BYTES`]), so over a short
/// phase it weighs more per event than over a long one; `db_bytes` is the database alone.
pub(super) struct Storage {
    acked: u64,
    db_bytes: u64,
    wal_file_bytes: u64,
    /// From `ferry_store_wal_written_bytes_total`; `None` when `/metrics` did not say.
    wal_written: Option<u64>,
    /// Whether every run had ended and no delivery was pending when it was measured.
    settled: bool,
    /// On PostgreSQL: the server's commits during the phase (`None` on SQLite).
    commits: Option<i64>,
}

/// How long a phase's Ferry is given, after its load, to end the runs of the events it took.
const SETTLE_FOR: Duration = Duration::from_secs(120);

impl Storage {
    /// Waits until `ferry` has ended `runs` runs and has no pending delivery (or [`SETTLE_FOR`]
    /// has passed), so that every event's attempts and run states are stored, then reads the
    /// WAL counter and the sizes of the files in its data directory.
    pub(super) async fn measure(ferry: &Target, acked: u64, runs: u64) -> Storage {
        let deadline = Instant::now() + SETTLE_FOR;
        let mut settled = false;
        let mut metrics = fetch_all_metrics(&ferry.addrs).await;
        while let Some(pages) = &metrics {
            // Each node counts the runs it ended; the queue is the store's, the same on each.
            let ended: f64 = pages
                .iter()
                .map(|t| metric_sum(t, "ferry_runs_total").unwrap_or(0.0))
                .sum();
            let pending = pages
                .iter()
                .map(|t| metric_sum(t, "ferry_queue_depth").unwrap_or(0.0))
                .fold(0.0, f64::max);
            settled = ended >= runs as f64 && pending == 0.0;
            if settled || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            metrics = fetch_all_metrics(&ferry.addrs).await;
        }
        let metrics = metrics.and_then(|pages| pages.into_iter().next());
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
        if let Some(db) = &ferry.database {
            return Self::measure_postgres(db, acked, settled).await;
        }
        let storage = Storage {
            acked,
            db_bytes: size("ferry.db"),
            wal_file_bytes: size("ferry.db-wal"),
            wal_written: metrics
                .as_deref()
                .and_then(|t| metric_sum(t, "ferry_store_wal_written_bytes_total"))
                .map(|b| b as u64),
            settled,
            commits: None,
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

    /// On PostgreSQL: the schema's tables and indexes, what the server wrote to its WAL and
    /// how many transactions it committed since the phase's Ferry started (the whole
    /// server's counters: nothing else should run on it during a bench).
    async fn measure_postgres(db: &PhaseDatabase, acked: u64, settled: bool) -> Storage {
        let size = db
            .client
            .query_one(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relkind = 'r'",
                &[&db.schema],
            )
            .await
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(0);
        let wal = db
            .client
            .query_one(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)::bigint",
                &[&db.wal_lsn_at_start],
            )
            .await
            .map(|r| r.get::<_, i64>(0))
            .ok();
        let commits = PhaseDatabase::counters(&db.client)
            .await
            .ok()
            .map(|(_, c)| c - db.commits_at_start);
        let storage = Storage {
            acked,
            db_bytes: u64::try_from(size).unwrap_or(0),
            wal_file_bytes: 0,
            wal_written: wal.and_then(|w| u64::try_from(w).ok()),
            settled,
            commits,
        };
        eprintln!(
            "  storage: {} events acknowledged; schema {:.1} MB ({:.0} B per event); WAL written {}; {} commits",
            storage.acked,
            storage.db_bytes as f64 / 1e6,
            storage.db_bytes as f64 / storage.acked as f64,
            storage
                .wal_written
                .map_or("unknown".to_string(), |b| format!(
                    "{:.1} MB",
                    b as f64 / 1e6
                )),
            storage
                .commits
                .map_or("unknown".to_string(), |c| c.to_string()),
        );
        storage
    }

    /// Bytes of `ferry.db` and `ferry.db-wal`.
    pub(super) fn on_disk_bytes(&self) -> u64 {
        self.db_bytes + self.wal_file_bytes
    }

    /// Bytes of `ferry.db` and `ferry.db-wal` per event acknowledged.
    fn on_disk_per_event(&self) -> f64 {
        self.on_disk_bytes() as f64 / self.acked as f64
    }

    /// Bytes written to the WAL per event acknowledged.
    fn wal_written_per_event(&self) -> f64 {
        self.wal_written
            .map_or(f64::NAN, |b| b as f64 / self.acked as f64)
    }

    /// The rows of `shape`.
    pub(super) fn rows(&self, shape: &'static str) -> Vec<Row> {
        let unsettled = if self.settled {
            ""
        } else {
            ", runs not all ended"
        };
        let on_disk = match self.commits {
            Some(_) => "bytes in the database per event (tables and indexes)",
            None => "bytes on disk per event (ferry.db + WAL)",
        };
        let mut rows = vec![
            row(
                shape,
                format!("{on_disk}{unsettled}"),
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
        ];
        if let Some(commits) = self.commits.filter(|c| *c > 0) {
            rows.push(row(
                shape,
                format!("events per commit (the server's commits){unsettled}"),
                self.acked as f64 / commits as f64,
                "",
                None,
            ));
        }
        rows
    }
}

/// `GET /metrics` of every node; `None` when one does not answer with a page.
async fn fetch_all_metrics(addrs: &[SocketAddr]) -> Option<Vec<String>> {
    let mut pages = Vec::with_capacity(addrs.len());
    for addr in addrs {
        pages.push(fetch_metrics(*addr).await?);
    }
    Some(pages)
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

#[cfg(test)]
mod tests {
    use super::*;

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
}

//! Telemetry: logging setup (here), the Prometheus metrics (`metrics.rs`), the last hour minute by
//! minute for the console's charts (`minutes.rs`), the live tail of accepted events (`tail.rs`),
//! and the notable
//! occurrences (`events.rs`), each of which writes its log line and moves its metrics in one
//! place, so logs and metrics never disagree. Log lines carry ids (event, run, delivery,
//! destination), never secrets, signatures or tokens.

pub mod events;
pub mod metrics;
pub mod minutes;
pub mod tail;

pub use metrics::Metrics;

use tracing_subscriber::EnvFilter;

/// The value at fraction `p` (0 to 1) of `sorted` (ascending), by nearest rank; `None` for no
/// values. The percentiles of the bench and of the store writer's figures.
pub fn nearest_rank(sorted: &[u32], p: f64) -> Option<u32> {
    let last = sorted.len().checked_sub(1)?;
    sorted
        .get(((last as f64) * p.clamp(0.0, 1.0)).round() as usize)
        .copied()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Sets up logging: `tracing` lines as JSON or for people, filtered by `FERRY_LOG` or
/// `RUST_LOG` (default `info`).
pub fn init(format: LogFormat) {
    let filter = std::env::var("FERRY_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::nearest_rank;

    #[test]
    fn nearest_rank_takes_the_value_at_the_rounded_rank() {
        let mut sizes = vec![64, 1, 3, 20, 2, 1, 40, 18, 60, 1, 22];
        sizes.sort_unstable();
        let at = |p| nearest_rank(&sizes, p);
        assert_eq!(
            [at(0.0), at(0.1), at(0.5), at(0.9), at(1.0)],
            [Some(1), Some(1), Some(18), Some(60), Some(64)]
        );
        assert_eq!(
            [nearest_rank(&[7], 0.1), nearest_rank(&[7], 0.9)],
            [Some(7), Some(7)]
        );
        assert_eq!(nearest_rank(&[], 0.5), None);
    }
}

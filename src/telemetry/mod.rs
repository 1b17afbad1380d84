//! Telemetry: logging setup (here), the Prometheus metrics (`metrics.rs`), and the notable
//! occurrences (`events.rs`), each of which writes its log line and moves its metrics in one
//! place, so logs and metrics never disagree. Log lines carry ids (event, run, delivery,
//! destination), never secrets, signatures or tokens.

pub mod events;
pub mod metrics;

pub use metrics::Metrics;

use tracing_subscriber::EnvFilter;

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

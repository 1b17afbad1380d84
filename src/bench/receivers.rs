//! The destinations of the phases with deliveries: receivers in this process, on loopback,
//! that answer every delivery at once and count it, with the time since its event was sent;
//! and a failing one, which answers every delivery 503 (the `console` phase's dead letters).

use super::load::sent_us;
use axum::body::Bytes;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Starts `count` receivers that count into one [`Deliveries`]; their addresses.
pub(super) async fn start_receivers(
    count: usize,
    epoch: Instant,
) -> std::io::Result<(Vec<SocketAddr>, Arc<Deliveries>)> {
    let stats = Arc::new(Deliveries::default());
    let mut receivers = Vec::new();
    for _ in 0..count {
        receivers.push(start_receiver(epoch, stats.clone()).await?);
    }
    Ok((receivers, stats))
}

/// Counts what the receivers got, and ingest-to-delivery latency from the `sent_us` stamp.
#[derive(Default)]
pub(super) struct Deliveries {
    /// Deliveries received while recording.
    pub(super) count: AtomicU64,
    /// Whether what arrives is counted and timed (the measured window).
    pub(super) recording: AtomicBool,
    /// Ingest-to-delivery time of each delivery received while recording.
    pub(super) latencies_us: Mutex<Vec<u32>>,
}

/// A receiver on a free loopback port: answers 200 to every delivery and counts it into
/// `stats` while `stats.recording` is set.
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

/// A receiver on a free loopback port that answers every delivery `503 Service Unavailable`
/// (a retryable failure), so that each delivery to it is dead once its attempts are spent.
pub(super) async fn start_failing_receiver() -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/",
        axum::routing::post(|| async { axum::http::StatusCode::SERVICE_UNAVAILABLE }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

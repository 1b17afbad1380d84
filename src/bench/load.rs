//! The load generator: keep-alive HTTP/1 connections from this process that post event
//! bodies to `/in/bench`, as fast as answers come (closed loop) or on a fixed schedule (open
//! loop), and count what was acknowledged, what failed and how long each answer took. Each
//! body carries when it was sent (`sent_us`), which the receivers read for the time from
//! ingest to delivery.

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How every phase loads its target: the same connections, windows and bodies.
#[derive(Clone, Copy)]
pub(super) struct Drive {
    pub(super) connections: usize,
    /// Load before the measured window: acknowledged, not measured.
    pub(super) warmup: Duration,
    pub(super) measure: Duration,
    /// Bytes of each event body.
    pub(super) size: usize,
    /// What the bodies' `sent_us` stamps count from.
    pub(super) epoch: Instant,
}

#[derive(Default)]
pub(super) struct Load {
    /// Successful requests in the measured window.
    pub(super) ok: u64,
    /// Successful requests, the warm-up's included.
    pub(super) acked: u64,
    pub(super) failed: u64,
    pub(super) latencies_us: Vec<u32>,
}

impl Drive {
    /// Drives `connections` keep-alive connections against `addrs` (connection `i` to
    /// `addrs[i % len]`: the nodes of a cluster share the load). With `rate`, each
    /// connection sends on a fixed schedule (open loop); without, as fast as answers come
    /// (closed loop).
    pub(super) async fn run(&self, addrs: &[SocketAddr], rate: Option<u64>) -> Load {
        let Drive {
            connections,
            warmup,
            measure,
            size,
            epoch,
        } = *self;
        let start = Instant::now();
        let (measure_from, until) = (start + warmup, start + warmup + measure);
        let seq = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for i in 0..connections {
            let seq = seq.clone();
            let Some(&addr) = addrs.get(i % addrs.len().max(1)) else {
                break;
            };
            tasks.push(tokio::spawn(async move {
                let mut load = Load::default();
                let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
                    return load;
                };
                let _ = stream.set_nodelay(true);
                let Ok((mut sender, conn)) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                        .await
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

    /// `count` over the measured window, per second.
    pub(super) fn per_second(&self, count: u64) -> f64 {
        count as f64 / self.measure.as_secs_f64()
    }

    /// CPU microseconds per successful request over a whole drive (warm-up included, so the
    /// requests of the warm-up are estimated at the measured rate).
    pub(super) fn cpu_per_request(
        &self,
        before: Option<Duration>,
        after: Option<Duration>,
        ok: u64,
    ) -> f64 {
        let (warmup, measure) = (self.warmup, self.measure);
        match (before, after) {
            (Some(b), Some(a)) if ok > 0 => {
                let requests = ok as f64 * (warmup + measure).as_secs_f64() / measure.as_secs_f64();
                (a - b).as_secs_f64() * 1e6 / requests
            }
            _ => f64::NAN,
        }
    }
}

/// The `sent_us` stamp of a body the load generator sent.
pub(super) fn sent_us(body: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("\"sent_us\":")? + "\"sent_us\":".len();
    let digits: String = text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// An event body of `size` bytes: JSON with the sequence number, the stamp, and padding.
fn body(seq: u64, sent_us: u64, size: usize) -> Bytes {
    let head = format!(r#"{{"type":"bench.event","seq":{seq},"sent_us":{sent_us},"pad":""#);
    let pad = size.saturating_sub(head.len() + 2);
    let mut s = String::with_capacity(size);
    s.push_str(&head);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    Bytes::from(s)
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
}

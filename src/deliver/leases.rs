//! The leases this node holds on jobs in cluster mode (delivery jobs and run jobs alike): each
//! one's token, until when it surely holds by this node's own clock, and whether its job is in
//! flight. A renewer extends them all every third of a lease; a lease it could not renew is
//! forgotten, and a job whose lease is not surely held is never started (another node may
//! have it). At a graceful stop the leases of jobs not in flight are given back at once, so
//! no job waits for a lease to run out.
//!
//! The database's clock decides when a lease ends; this node counts a lease as held only up to
//! four fifths of its length after it asked for it, which leaves room for the two clocks to
//! run at slightly different rates and for the answer's time on the wire.

use crate::store::postgres::Clustered;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The leases of this node.
pub struct Leases {
    // A std mutex: held to look up or change the map, never across an await.
    held: Mutex<HashMap<i64, Held>>,
    lease: Duration,
    closed: AtomicBool,
}

#[derive(Clone, Copy)]
struct Held {
    /// Up to when the lease surely holds.
    until: Instant,
    in_flight: bool,
}

impl Leases {
    pub fn new(lease_ms: i64) -> Arc<Leases> {
        Arc::new(Leases {
            held: Mutex::new(HashMap::new()),
            lease: Duration::from_millis(u64::try_from(lease_ms).unwrap_or(0)),
            closed: AtomicBool::new(false),
        })
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn surely_until(&self, asked: Instant) -> Instant {
        asked + self.lease.mul_f64(0.8)
    }

    /// Counts the lease `token`, taken by a claim (or an ingest) asked for at `asked`.
    pub fn hold(&self, token: i64, asked: Instant) {
        let until = self.surely_until(asked);
        self.map().insert(
            token,
            Held {
                until,
                in_flight: false,
            },
        );
    }

    /// Marks the job of `token` in flight, when its lease surely holds: `false` when it does
    /// not (the job must not start; the lease is forgotten).
    pub fn start(&self, token: i64) -> bool {
        let mut map = self.map();
        match map.get_mut(&token) {
            Some(h) if h.until > Instant::now() => {
                h.in_flight = true;
                true
            }
            Some(_) => {
                map.remove(&token);
                false
            }
            None => false,
        }
    }

    /// The job of `token` is no longer in flight but still held (it waits to be tried again).
    pub fn idle(&self, token: i64) {
        if let Some(h) = self.map().get_mut(&token) {
            h.in_flight = false;
        }
    }

    /// The lease `token` is over (its outcome was recorded, or it was lost or given back).
    pub fn forget(&self, token: i64) {
        self.map().remove(&token);
    }

    /// Extends every lease every third of a lease until [`Leases::close`].
    pub async fn renew(self: Arc<Self>, cluster: Arc<Clustered>) {
        let every = (self.lease / 3).max(Duration::from_millis(10));
        while !self.closed.load(Ordering::SeqCst) {
            tokio::time::sleep(every).await;
            let tokens: Vec<i64> = self.map().keys().copied().collect();
            if tokens.is_empty() {
                continue;
            }
            let asked = Instant::now();
            match cluster.pg.renew_leases(&tokens, cluster.lease_ms).await {
                Ok(renewed) => {
                    let renewed: std::collections::HashSet<i64> = renewed.into_iter().collect();
                    let until = self.surely_until(asked);
                    let mut map = self.map();
                    let mut lost = 0;
                    for token in tokens {
                        if renewed.contains(&token) {
                            if let Some(h) = map.get_mut(&token) {
                                h.until = until;
                            }
                        } else if map.remove(&token).is_some() {
                            lost += 1;
                        }
                    }
                    if lost > 0 {
                        tracing::warn!(
                            lost,
                            "leases ran out before they were renewed; other nodes may hold those jobs now, and this node will not start them"
                        );
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not renew the leases; jobs whose lease runs out are not started");
                }
            }
        }
    }

    /// Gives back at once the leases of the jobs not in flight (a graceful stop), and stops
    /// renewing. Answers how many went back.
    pub async fn release_idle(&self, cluster: &Clustered) -> u64 {
        self.closed.store(true, Ordering::SeqCst);
        let idle: Vec<i64> = {
            let mut map = self.map();
            let idle: Vec<i64> = map
                .iter()
                .filter(|(_, h)| !h.in_flight)
                .map(|(t, _)| *t)
                .collect();
            for t in &idle {
                map.remove(t);
            }
            idle
        };
        match cluster.pg.release_leases(&idle).await {
            Ok(n) => {
                // Sent now, not coalesced: the process is about to end.
                if n > 0
                    && let Err(e) = cluster
                        .pg
                        .notify(crate::store::postgres::JOBS_CHANNEL)
                        .await
                {
                    tracing::warn!(error = %e, "could not tell the other nodes; they find the jobs by polling");
                }
                n
            }
            Err(e) => {
                tracing::warn!(error = %e, count = idle.len(), "could not give the leases back; the jobs wait for them to run out");
                0
            }
        }
    }
}

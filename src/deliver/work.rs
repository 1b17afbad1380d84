//! The work this process has in flight (delivery attempts, run steps) and the graceful stop:
//! once it is ordered, no new work starts, and the stop waits a bounded time for the work in
//! flight to finish and record its outcome, so a restart sends nothing twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// Shared by the deliverer's queues and the run worker; clones count the same work.
#[derive(Clone)]
pub struct Work {
    inner: Arc<Inner>,
}

struct Inner {
    stopping: watch::Sender<bool>,
    in_flight: AtomicUsize,
    idle: Notify,
}

/// One piece of work in flight; it is counted until this drops.
pub struct InFlight {
    inner: Arc<Inner>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.inner.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.inner.idle.notify_waiters();
        }
    }
}

impl Default for Work {
    fn default() -> Self {
        Work {
            inner: Arc::new(Inner {
                stopping: watch::Sender::new(false),
                in_flight: AtomicUsize::new(0),
                idle: Notify::new(),
            }),
        }
    }
}

impl Work {
    /// Counts a piece of work as in flight, or `None` once the stop was ordered (the work is
    /// then not started, and stays pending in the store).
    pub fn start(&self) -> Option<InFlight> {
        // Counted before the check: a stop that finds nothing counted finds every start after
        // it refused.
        self.inner.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight {
            inner: self.inner.clone(),
        };
        if self.is_stopping() {
            return None;
        }
        Some(guard)
    }

    /// Whether the stop was ordered.
    pub fn is_stopping(&self) -> bool {
        *self.inner.stopping.borrow()
    }

    /// Resolves once the stop is ordered.
    pub async fn stopped(&self) {
        let mut rx = self.inner.stopping.subscribe();
        let _ = rx.wait_for(|stopping| *stopping).await;
    }

    /// Orders the stop, then waits up to `grace` for the work in flight to end. Answers how
    /// many pieces were still in flight when it gave up (0 when all ended).
    pub async fn stop(&self, grace: Duration) -> usize {
        self.inner.stopping.send_replace(true);
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let idle = self.inner.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            let left = self.inner.in_flight.load(Ordering::SeqCst);
            if left == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.inner.in_flight.load(Ordering::SeqCst);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stop_waits_for_work_in_flight_and_refuses_new_work() {
        let work = Work::default();
        let guard = work.start().expect("not stopping yet");
        let stopper = {
            let work = work.clone();
            tokio::spawn(async move { work.stop(Duration::from_secs(5)).await })
        };
        work.stopped().await;
        assert!(work.start().is_none(), "no work starts once stopping");
        assert!(!stopper.is_finished());
        drop(guard);
        assert_eq!(stopper.await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_stop_gives_up_after_its_grace() {
        let work = Work::default();
        let _guard = work.start().expect("not stopping yet");
        assert_eq!(work.stop(Duration::from_millis(20)).await, 1);
    }
}

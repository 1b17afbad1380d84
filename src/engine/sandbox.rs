//! Where flow steps' expressions run: a few threads with large stacks, apart from the async
//! workers, and a time limit on each piece of work. jaq cannot be interrupted, so work that
//! overruns is abandoned: its caller gets an error at once, and a fresh thread takes the
//! abandoned one's place so the pool keeps its size.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

/// Time one call may take (all the pure steps run between two I/O steps of a run).
pub const DEFAULT_TIME_LIMIT: Duration = Duration::from_secs(1);
const STACK_SIZE: usize = 256 * 1024 * 1024;
const THREADS: usize = 2;
/// Longest wait for a free thread before the work is refused.
const QUEUE_LIMIT: Duration = Duration::from_secs(30);
/// Most threads ever started, abandoned ones included.
const MAX_THREADS: usize = 16;

type Work = Box<dyn FnOnce() + Send>;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SandboxError {
    #[error("the flow's expressions ran longer than {0:?} and were stopped")]
    TimedOut(Duration),
    #[error("the expression sandbox is not running")]
    Stopped,
    #[error("no expression thread was free for {0:?}")]
    Busy(Duration),
}

/// A cheap handle to the pool.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    queue: mpsc::Sender<Work>,
    // A std mutex: each thread holds it only while taking the next piece of work.
    work: Arc<Mutex<mpsc::Receiver<Work>>>,
    started: AtomicUsize,
    limit: Duration,
}

impl Sandbox {
    pub fn new(limit: Duration) -> Sandbox {
        let (queue, work) = mpsc::channel();
        let inner = Arc::new(Inner {
            queue,
            work: Arc::new(Mutex::new(work)),
            started: AtomicUsize::new(0),
            limit,
        });
        for _ in 0..THREADS {
            inner.spawn_thread();
        }
        Sandbox { inner }
    }

    pub fn limit(&self) -> Duration {
        self.inner.limit
    }

    /// Runs `f` on a sandbox thread and waits for it: at most the time limit once it has
    /// started (time spent waiting for a free thread does not count, up to [`QUEUE_LIMIT`]).
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, SandboxError> {
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.inner
            .queue
            .send(Box::new(move || {
                let _ = started_tx.send(());
                let _ = tx.send(f());
            }))
            .map_err(|_| SandboxError::Stopped)?;
        match tokio::time::timeout(QUEUE_LIMIT, started_rx).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(SandboxError::Stopped),
            Err(_) => return Err(SandboxError::Busy(QUEUE_LIMIT)),
        }
        match tokio::time::timeout(self.inner.limit, rx).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) => Err(SandboxError::Stopped),
            Err(_) => {
                tracing::error!(
                    limit_ms = self.inner.limit.as_millis() as u64,
                    "a flow's expressions overran their time limit; their thread is abandoned"
                );
                self.inner.spawn_thread();
                Err(SandboxError::TimedOut(self.inner.limit))
            }
        }
    }
}

impl Inner {
    fn spawn_thread(&self) {
        let n = self.started.fetch_add(1, Ordering::Relaxed);
        if n >= MAX_THREADS {
            tracing::error!(
                "the expression sandbox has abandoned too many threads; not starting another"
            );
            return;
        }
        let work = self.work.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("ferry-expr-{n}"))
            .stack_size(STACK_SIZE)
            .spawn(move || {
                loop {
                    let next = work.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    match next {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start an expression sandbox thread");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn overrunning_work_is_abandoned_and_the_pool_goes_on() {
        let sandbox = Sandbox::new(Duration::from_millis(100));
        assert_eq!(sandbox.run(|| 2 + 2).await, Ok(4));
        let stuck = sandbox
            .run(|| std::thread::sleep(Duration::from_secs(2)))
            .await;
        assert_eq!(
            stuck,
            Err(SandboxError::TimedOut(Duration::from_millis(100)))
        );
        // Both original threads may be busy; the replacement serves this.
        assert_eq!(sandbox.run(|| "still here").await, Ok("still here"));
    }
}

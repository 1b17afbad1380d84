//! Whether the store can write, as its writer and checkpointer threads last found it. Set only
//! by those threads; read by every `Store` handle (a write asked for while the store cannot
//! write is refused at once), by readiness, the metrics and the `store_unwritable` alert rule.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Why the store cannot write, and since when.
#[derive(Debug, Clone)]
pub struct Unwritable {
    /// What failed and where (the file, the system's error).
    pub reason: String,
    pub since: Instant,
    /// Writes stopped until Ferry restarts (a sync of the database file failed); otherwise
    /// the writer tries a write every second and writes again once one commits.
    pub until_restart: bool,
}

impl Unwritable {
    /// One sentence for people: what failed, for how long, and what happens next.
    pub fn describe(&self) -> String {
        let secs = self.since.elapsed().as_secs();
        let next = if self.until_restart {
            "writes stay stopped until Ferry restarts"
        } else {
            "Ferry tries a write every second and takes writes again once one commits"
        };
        format!(
            "the store has not been able to write for {secs} s: {}; {next}",
            self.reason
        )
    }
}

/// The shared state: a flag read on every write, and the details behind it.
#[derive(Default)]
pub struct Writability {
    /// Read on every write asked for, without taking the lock.
    failing: AtomicBool,
    // A std mutex: held only to read or replace the details, never across an await.
    state: Mutex<Option<Unwritable>>,
}

impl Writability {
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    pub fn get(&self) -> Option<Unwritable> {
        if !self.is_failing() {
            return None;
        }
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Unwritable>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A write failed: the store cannot write from now (or since an earlier failure, whose
    /// reason this one replaces). Answers whether the store could write until now.
    pub(super) fn failed(&self, reason: String) -> bool {
        let mut state = self.lock();
        let first = state.is_none();
        let (since, until_restart) = state
            .as_ref()
            .map_or((Instant::now(), false), |s| (s.since, s.until_restart));
        *state = Some(Unwritable {
            // A stop until restart keeps its reason: it is what the operator must act on.
            reason: match state.as_ref() {
                Some(s) if s.until_restart => s.reason.clone(),
                _ => reason,
            },
            since,
            until_restart,
        });
        self.failing.store(true, Ordering::Relaxed);
        first
    }

    /// Writes stop until Ferry restarts.
    pub(super) fn stop(&self, reason: String) {
        let mut state = self.lock();
        let since = state.as_ref().map_or(Instant::now(), |s| s.since);
        *state = Some(Unwritable {
            reason,
            since,
            until_restart: true,
        });
        self.failing.store(true, Ordering::Relaxed);
    }

    /// A write committed again: answers how long the store could not write, or `None` when
    /// writes are stopped until restart (they stay stopped).
    pub(super) fn restored(&self) -> Option<Duration> {
        let mut state = self.lock();
        if state.as_ref().is_some_and(|s| s.until_restart) {
            return None;
        }
        self.failing.store(false, Ordering::Relaxed);
        Some(state.take().map_or(Duration::ZERO, |s| s.since.elapsed()))
    }
}

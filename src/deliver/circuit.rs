//! Per-destination circuit breaker and pause. After `failures` retryable failures in a row the
//! circuit opens: nothing is sent for `cool_off`, then one request probes; success closes the
//! circuit, failure opens it again. A destination can also be paused (by hand, or
//! automatically once it has been failing for `pause_after`). While a circuit is open or a
//! destination paused, its deliveries are held: they wait without spending their attempts and
//! are never dropped.
//!
//! The breaker only decides; the dispatcher holds the jobs and the store keeps the pause.

use crate::clock::Millis;
pub use crate::config::BreakerConfig;
pub use crate::store::Pause;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Circuit {
    Closed,
    Open {
        until: Millis,
    },
    /// One probe is in flight.
    HalfOpen,
}

impl Circuit {
    pub fn as_str(self) -> &'static str {
        match self {
            Circuit::Closed => "closed",
            Circuit::Open { .. } => "open",
            Circuit::HalfOpen => "half_open",
        }
    }

    /// The value of the `ferry_circuit_state` gauge.
    pub fn gauge(self) -> i64 {
        match self {
            Circuit::Closed => 0,
            Circuit::Open { .. } => 1,
            Circuit::HalfOpen => 2,
        }
    }
}

#[derive(Debug, Clone)]
struct State {
    circuit: Circuit,
    failures: u32,
    /// The first failure since the last success.
    failing_since: Option<Millis>,
    last_error: Option<String>,
    paused: Option<Pause>,
}

/// What the breaker says about sending now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Send,
    /// Hold the job until then (or until released).
    Hold(Millis),
}

/// What recording an outcome changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// `(from, to)` when the circuit changed state.
    pub circuit: Option<(&'static str, &'static str)>,
    /// Held jobs may go now (the circuit closed).
    pub release: bool,
    /// The destination has failed for `pause_after`: pause it.
    pub pause: Option<String>,
}

/// How long a job for a paused destination waits before it is looked at again (a resume
/// releases it at once).
const PAUSED_HOLD: Duration = Duration::from_secs(3600);

#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    // A std mutex: held for a few comparisons, never across an await.
    state: Mutex<State>,
}

/// A snapshot for the API and the alerts.
#[derive(Debug, Clone)]
pub struct Health {
    pub circuit: Circuit,
    pub consecutive_failures: u32,
    pub failing_since: Option<Millis>,
    pub last_error: Option<String>,
    pub paused: Option<Pause>,
}

impl Breaker {
    pub fn new(config: BreakerConfig, paused: Option<Pause>) -> Breaker {
        Breaker {
            config,
            state: Mutex::new(State {
                circuit: Circuit::Closed,
                failures: 0,
                failing_since: None,
                last_error: None,
                paused,
            }),
        }
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn health(&self) -> Health {
        let s = self.lock();
        Health {
            circuit: s.circuit,
            consecutive_failures: s.failures,
            failing_since: s.failing_since,
            last_error: s.last_error.clone(),
            paused: s.paused.clone(),
        }
    }

    /// May a job be sent now? An open circuit whose cool-off is over lets one probe through.
    pub fn admit(&self, now: Millis) -> (Admit, Option<(&'static str, &'static str)>) {
        let mut s = self.lock();
        if s.paused.is_some() {
            return (Admit::Hold(now + PAUSED_HOLD.as_millis() as i64), None);
        }
        match s.circuit {
            Circuit::Closed => (Admit::Send, None),
            Circuit::Open { until } if until > now => (Admit::Hold(until), None),
            Circuit::Open { .. } => {
                s.circuit = Circuit::HalfOpen;
                (Admit::Send, Some(("open", "half_open")))
            }
            Circuit::HalfOpen => (
                Admit::Hold(now + self.config.cool_off.as_millis() as i64),
                None,
            ),
        }
    }

    /// Records an attempt's outcome: `retryable_failure` for 408/425/429/5xx/3xx, timeouts
    /// and connection errors (a permanent 4xx shows the receiver is up).
    pub fn record(&self, now: Millis, retryable_failure: bool, error: Option<&str>) -> Change {
        let mut s = self.lock();
        let mut change = Change::default();
        let from = s.circuit.as_str();
        if !retryable_failure {
            s.failures = 0;
            s.failing_since = None;
            if s.circuit != Circuit::Closed {
                s.circuit = Circuit::Closed;
                change.circuit = Some((from, "closed"));
                change.release = true;
            }
            return change;
        }
        s.failures += 1;
        s.last_error = error.map(str::to_string);
        let since = *s.failing_since.get_or_insert(now);
        let open = match s.circuit {
            Circuit::HalfOpen => true,
            Circuit::Closed => s.failures >= self.config.failures,
            Circuit::Open { .. } => false,
        };
        if open {
            s.circuit = Circuit::Open {
                until: now + self.config.cool_off.as_millis() as i64,
            };
            change.circuit = Some((from, "open"));
        }
        if let Some(after) = self.config.pause_after
            && s.paused.is_none()
            && now - since >= after.as_millis() as i64
        {
            let reason = format!(
                "failing without a success for {} ({} failures in a row; last: {})",
                humantime::format_duration(Duration::from_millis((now - since) as u64)),
                s.failures,
                error.unwrap_or("unknown")
            );
            s.paused = Some(Pause {
                by: "auto".into(),
                reason: reason.clone(),
                since: now,
            });
            change.pause = Some(reason);
        }
        change
    }

    /// Pauses or resumes. Answers whether anything changed.
    pub fn set_paused(&self, pause: Option<Pause>) -> bool {
        let mut s = self.lock();
        let changed = s.paused.is_some() != pause.is_some();
        if pause.is_none() && changed {
            // A resumed destination starts afresh: a long failure must be seen again before
            // it is paused again.
            s.failing_since = None;
        }
        s.paused = pause;
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(
            BreakerConfig {
                failures: 3,
                cool_off: Duration::from_secs(10),
                pause_after: Some(Duration::from_secs(100)),
            },
            None,
        )
    }

    #[test]
    fn opens_after_failures_probes_once_and_closes_on_success() {
        let b = breaker();
        assert_eq!(b.admit(0).0, Admit::Send);
        assert_eq!(b.record(0, true, Some("HTTP 503")).circuit, None);
        b.record(1, true, None);
        assert_eq!(b.record(2, true, None).circuit, Some(("closed", "open")));
        assert_eq!(b.admit(5_000).0, Admit::Hold(10_002));
        // The cool-off is over: one probe, the others wait.
        assert_eq!(b.admit(12_000), (Admit::Send, Some(("open", "half_open"))));
        assert!(matches!(b.admit(12_001).0, Admit::Hold(_)));
        // The probe fails: open again for a cool-off.
        assert_eq!(
            b.record(12_100, true, None).circuit,
            Some(("half_open", "open"))
        );
        assert_eq!(b.admit(12_200).0, Admit::Hold(22_100));
        assert_eq!(b.admit(22_100).0, Admit::Send);
        let closed = b.record(22_200, false, None);
        assert_eq!(closed.circuit, Some(("half_open", "closed")));
        assert!(closed.release);
        assert_eq!(b.admit(22_300).0, Admit::Send);
        assert_eq!(b.health().consecutive_failures, 0);
    }

    #[test]
    fn a_long_failure_pauses_and_a_resume_starts_afresh() {
        let b = breaker();
        b.record(0, true, Some("HTTP 500"));
        assert_eq!(b.record(99_999, true, None).pause, None);
        let change = b.record(100_000, true, Some("timed out"));
        assert!(change.pause.unwrap().contains("timed out"));
        assert!(matches!(b.admit(100_001).0, Admit::Hold(_)));
        assert!(b.set_paused(None));
        assert_eq!(
            b.record(100_002, true, None).pause,
            None,
            "the clock starts again"
        );
    }
}

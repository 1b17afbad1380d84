//! Retry policy and the schedule it produces: pure functions of the attempt number, the
//! receiver's `Retry-After` and an injected random source, so the schedule is tested without
//! sleeping.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Jitter {
    /// The delay is drawn uniformly from `[0, backoff]` ("full jitter").
    Full,
    /// The delay is the backoff itself.
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included. 1 means no retry.
    pub max_attempts: u32,
    pub initial: Duration,
    pub max: Duration,
    pub multiplier: f64,
    pub jitter: Jitter,
}

impl Default for RetryPolicy {
    /// About a day of retries: 1s, 2s, 4s ... capped at 1h, 12 attempts in all.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 12,
            initial: Duration::from_secs(1),
            max: Duration::from_secs(3600),
            multiplier: 2.0,
            jitter: Jitter::Full,
        }
    }
}

/// The longest `Retry-After` Ferry honours; a larger one is capped to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

impl RetryPolicy {
    /// The exponential backoff before attempt `failed_attempts + 1`, before jitter:
    /// `initial * multiplier^(failed_attempts - 1)`, capped at `max`.
    pub fn backoff(&self, failed_attempts: u32) -> Duration {
        let exp = failed_attempts.saturating_sub(1).min(64) as i32;
        let secs = self.initial.as_secs_f64() * self.multiplier.powi(exp);
        if !secs.is_finite() || secs >= self.max.as_secs_f64() {
            self.max
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// When to try again after `failed_attempts` failures, or `None` when attempts are exhausted.
    /// `unit_random` is a number in `[0, 1)` from the caller's random source. A receiver's
    /// `Retry-After` is honoured when it asks for longer than the backoff (capped at a day).
    pub fn next_delay(
        &self,
        failed_attempts: u32,
        retry_after: Option<Duration>,
        unit_random: f64,
    ) -> Option<Duration> {
        if failed_attempts >= self.max_attempts {
            return None;
        }
        let backoff = self.backoff(failed_attempts);
        let delay = match self.jitter {
            Jitter::None => backoff,
            Jitter::Full => backoff.mul_f64(unit_random.clamp(0.0, 1.0)),
        };
        Some(match retry_after {
            Some(asked) => delay.max(asked.min(MAX_RETRY_AFTER)),
            None => delay,
        })
    }
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP date (relative to `now`).
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate_parse(value)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn httpdate_parse(value: &str) -> Option<std::time::SystemTime> {
    // IMF-fixdate, e.g. "Sun, 06 Nov 1994 08:49:37 GMT": humantime reads RFC 3339, so rewrite.
    let parts: Vec<&str> = value.split_whitespace().collect();
    if parts.len() != 6 || parts[5] != "GMT" {
        return None;
    }
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == parts[2])?
        + 1;
    let rfc3339 = format!("{}-{:02}-{:0>2}T{}Z", parts[3], month, parts[1], parts[4]);
    humantime::parse_rfc3339(&rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial: Duration::from_secs(1),
            max: Duration::from_secs(10),
            multiplier: 2.0,
            jitter: Jitter::None,
        }
    }

    #[test]
    fn backoff_grows_then_caps() {
        let p = policy();
        let delays: Vec<_> = (1..=4)
            .map(|n| p.next_delay(n, None, 0.5).unwrap().as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8]);
        assert_eq!(
            p.next_delay(5, None, 0.5),
            None,
            "five attempts made: exhausted"
        );
        let big = RetryPolicy {
            max_attempts: 100,
            ..p
        };
        assert_eq!(big.next_delay(60, None, 0.5).unwrap().as_secs(), 10);
    }

    #[test]
    fn full_jitter_stays_within_backoff() {
        let p = RetryPolicy {
            jitter: Jitter::Full,
            ..policy()
        };
        let mut rng = fastrand::Rng::with_seed(7);
        for n in 1..5 {
            for _ in 0..200 {
                let d = p.next_delay(n, None, rng.f64()).unwrap();
                assert!(d <= p.backoff(n), "attempt {n}: {d:?}");
            }
        }
    }

    #[test]
    fn retry_after_wins_when_longer() {
        let p = policy();
        assert_eq!(
            p.next_delay(1, Some(Duration::from_secs(30)), 0.5),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            p.next_delay(3, Some(Duration::from_secs(1)), 0.5),
            Some(Duration::from_secs(4))
        );
        assert_eq!(
            p.next_delay(1, Some(Duration::from_secs(10 * 86400)), 0.5),
            Some(MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn parses_retry_after_forms() {
        let now = humantime::parse_rfc3339("1994-11-06T08:49:00Z").unwrap();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(37))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}

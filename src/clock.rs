//! Time as a dependency. Everything that schedules (retries, timestamps, tolerances) asks a
//! [`Clock`] instead of the operating system, so tests can move time by hand instead of sleeping.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch: the one time unit stored and compared everywhere.
pub type Millis = i64;

/// A source of the current time and a way to wait until a moment.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> Millis;
    fn now_secs(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }
    /// Resolves once `now_ms() >= deadline`.
    fn sleep_until(
        &self,
        deadline: Millis,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

pub type SharedClock = Arc<dyn Clock>;

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> Millis {
        system_now_ms()
    }

    fn sleep_until(
        &self,
        deadline: Millis,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let wait = deadline - self.now_ms();
            if wait > 0 {
                tokio::time::sleep(Duration::from_millis(wait as u64)).await;
            }
        })
    }
}

pub fn system_now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A clock that only moves when told to. Sleepers wake when [`ManualClock::advance`] passes
/// their deadline.
pub struct ManualClock {
    now: Mutex<Millis>,
    moved: tokio::sync::watch::Sender<Millis>,
}

impl ManualClock {
    pub fn new(start: Millis) -> Arc<Self> {
        let (moved, _) = tokio::sync::watch::channel(start);
        Arc::new(Self {
            now: Mutex::new(start),
            moved,
        })
    }

    pub fn advance(&self, by: Duration) {
        let now = {
            let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
            *now += by.as_millis() as i64;
            *now
        };
        self.moved.send_replace(now);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> Millis {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sleep_until(
        &self,
        deadline: Millis,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let mut moved = self.moved.subscribe();
        Box::pin(async move {
            while *moved.borrow_and_update() < deadline {
                if moved.changed().await.is_err() {
                    return;
                }
            }
        })
    }
}

/// RFC 3339 in UTC with millisecond precision, as every API response shows time.
pub fn rfc3339(ms: Millis) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Reads an RFC 3339 time (`2026-11-24T10:00:00Z`, `...T10:00:00.5+02:00`, `t` and `z` in
/// either case) as milliseconds since the epoch.
pub fn parse_rfc3339(text: &str) -> Option<Millis> {
    let text = text.trim();
    let (local, offset_minutes) = if let Some(base) = text.strip_suffix(['Z', 'z']) {
        (base.to_string(), 0i64)
    } else {
        let split = text.len().checked_sub(6)?;
        if !text.is_char_boundary(split) {
            return None;
        }
        let (base, offset) = text.split_at(split);
        let sign = match offset.as_bytes().first()? {
            b'+' => 1,
            b'-' => -1,
            _ => return None,
        };
        let hours: i64 = offset.get(1..3)?.parse().ok()?;
        let minutes: i64 = offset.get(4..6)?.parse().ok()?;
        if offset.as_bytes().get(3) != Some(&b':') || hours > 23 || minutes > 59 {
            return None;
        }
        (base.to_string(), sign * (hours * 60 + minutes))
    };
    let local = local.replacen(['t', ' '], "T", 1);
    let t = match humantime::parse_rfc3339_weak(&local) {
        Ok(t) => t,
        // A well-formed time before 1970 reads as the epoch: nothing Ferry stores is older.
        Err(_)
            if local
                .get(..4)
                .and_then(|y| y.parse::<u32>().ok())
                .is_some_and(|y| y < 1970) =>
        {
            humantime::parse_rfc3339_weak(&format!("1970{}", local.get(4..)?)).ok()?;
            return Some(0);
        }
        Err(_) => return None,
    };
    let ms = t.duration_since(UNIX_EPOCH).ok()?.as_millis() as i64;
    Some(ms - offset_minutes * 60_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_clock_wakes_sleepers_only_when_advanced_past_deadline() {
        let clock = ManualClock::new(1_000);
        let c = clock.clone();
        let sleeper = tokio::spawn(async move { c.sleep_until(3_000).await });
        clock.advance(Duration::from_millis(1_000));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        clock.advance(Duration::from_millis(1_000));
        tokio::time::timeout(Duration::from_secs(5), sleeper)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(clock.now_ms(), 3_000);
    }

    #[test]
    fn rfc3339_times_with_offsets_are_read() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:01Z"), Some(1_000));
        assert_eq!(parse_rfc3339("1970-01-01t01:00:01.5+01:00"), Some(1_500));
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00-00:30"), Some(1_800_000));
        assert_eq!(parse_rfc3339("soon"), None);
        assert_eq!(
            parse_rfc3339("\u{800}\u{10000}"),
            None,
            "no panic inside a character"
        );
        assert_eq!(parse_rfc3339("0130-02-17T08:42:51.155419Z"), Some(0));
        assert_eq!(parse_rfc3339("0130-02-31T08:42:51Z"), None);
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00+25:00"), None);
    }

    #[test]
    fn rfc3339_is_utc_with_millis() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
    }
}

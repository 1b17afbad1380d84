//! The last hour, minute by minute: events accepted, deliveries made and attempts failed, as
//! this process counted them. The console's overview draws its charts from here. Each count is
//! moved where its Prometheus counter moves (`events.rs`), so the charts and `/metrics` agree;
//! like those counters, they start from zero when the process starts.

use std::sync::Mutex;

/// Minutes kept: one hour.
pub const MINUTES: usize = 60;

/// What one minute counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Minute {
    /// Minutes since the Unix epoch.
    pub minute: i64,
    pub events: u64,
    pub delivered: u64,
    pub failed: u64,
}

/// Which count moves.
#[derive(Debug, Clone, Copy)]
pub enum Count {
    Event,
    Delivered,
    /// A delivery attempt that did not succeed (retried or dead).
    Failed,
}

/// A ring of [`MINUTES`] minutes. A slot whose minute has passed is reset when a newer minute
/// lands on it; readers skip slots older than the hour asked for.
#[derive(Debug)]
pub struct PerMinute {
    slots: Mutex<[Minute; MINUTES]>,
}

impl Default for PerMinute {
    fn default() -> PerMinute {
        PerMinute {
            slots: Mutex::new([Minute::default(); MINUTES]),
        }
    }
}

fn minute_of(now_ms: i64) -> i64 {
    now_ms.div_euclid(60_000)
}

impl PerMinute {
    /// Adds `n` to `count` in the minute of `now_ms`.
    pub fn add(&self, count: Count, n: u64, now_ms: i64) {
        let minute = minute_of(now_ms);
        let Ok(mut slots) = self.slots.lock() else {
            return;
        };
        let slot = &mut slots[minute.rem_euclid(MINUTES as i64) as usize];
        if slot.minute != minute {
            *slot = Minute {
                minute,
                ..Minute::default()
            };
        }
        let field = match count {
            Count::Event => &mut slot.events,
            Count::Delivered => &mut slot.delivered,
            Count::Failed => &mut slot.failed,
        };
        *field = field.saturating_add(n);
    }

    /// The [`MINUTES`] minutes up to and including the one of `now_ms`, oldest first; a minute
    /// nothing was counted in is zeros.
    pub fn last_hour(&self, now_ms: i64) -> Vec<Minute> {
        let now = minute_of(now_ms);
        let slots = match self.slots.lock() {
            Ok(slots) => *slots,
            Err(poisoned) => *poisoned.into_inner(),
        };
        (now - MINUTES as i64 + 1..=now)
            .map(|minute| {
                let slot = slots[minute.rem_euclid(MINUTES as i64) as usize];
                if slot.minute == minute {
                    slot
                } else {
                    Minute {
                        minute,
                        ..Minute::default()
                    }
                }
            })
            .collect()
    }
}

/// Milliseconds since the Unix epoch by the system clock (what the counts are filed under).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_land_in_their_minute_and_an_hour_old_slot_starts_over() {
        let m = PerMinute::default();
        let t0 = 1_000 * 60_000;
        m.add(Count::Event, 3, t0);
        m.add(Count::Event, 2, t0 + 59_999);
        m.add(Count::Delivered, 1, t0 + 60_000);
        m.add(Count::Failed, 4, t0 + 60_000);
        let hour = m.last_hour(t0 + 60_000);
        assert_eq!(hour.len(), MINUTES);
        assert_eq!(hour[MINUTES - 2].events, 5);
        assert_eq!(
            (hour[MINUTES - 1].delivered, hour[MINUTES - 1].failed),
            (1, 4)
        );
        // An hour later the same slots hold new minutes: the old counts are gone.
        let later = t0 + 60 * 60_000;
        m.add(Count::Event, 1, later);
        let hour = m.last_hour(later);
        assert_eq!(hour[MINUTES - 1].events, 1);
        assert_eq!(hour.iter().map(|s| s.events).sum::<u64>(), 1);
        assert_eq!(hour.iter().map(|s| s.failed).sum::<u64>(), 4);
        assert_eq!(
            m.last_hour(later + 2 * 3_600_000)
                .iter()
                .map(|s| s.events)
                .sum::<u64>(),
            0
        );
    }
}

//! A schedule source (`kind: schedule`): a cron pattern in a time zone, what a tick missed
//! while Ferry was down does, and the event each tick emits (a fixed payload, or one a jq
//! template makes from the tick).

use super::Checker;
use super::expr::Expr;
use super::raw::RawSource;
use crate::clock::Millis;

#[derive(Debug)]
pub struct Schedule {
    pub ticks: Ticks,
    pub missed: Missed,
    pub event_type: String,
    pub payload: TickPayload,
}

/// A cron pattern in a time zone: when a schedule fires, or a polling source polls.
pub struct Ticks {
    /// The pattern as written.
    pub pattern: String,
    pub cron: croner::Cron,
    /// The time zone's name as written (`UTC` by default).
    pub timezone_name: String,
    pub timezone: jiff::tz::TimeZone,
}

impl std::fmt::Debug for Ticks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ticks({} in {})", self.pattern, self.timezone_name)
    }
}

/// What a tick missed while Ferry was down does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    /// Nothing: the next tick is the next one due.
    Skip,
    /// The latest missed tick runs once at start.
    RunOnce,
}

#[derive(Debug)]
pub enum TickPayload {
    /// The same JSON at every tick.
    Fixed(bytes::Bytes),
    /// A jq program run on the tick (`{source, scheduled_at, timezone, local_time}`); its
    /// output, an object, is the payload.
    Template(Expr),
}

impl Ticks {
    /// The first tick strictly after `at`; `None` when the pattern never fires again (before
    /// the year 5000, croner's limit) or the time is out of range.
    pub fn next_after(&self, at: Millis) -> Option<Millis> {
        let zoned = jiff::Timestamp::from_millisecond(at)
            .ok()?
            .to_zoned(self.timezone.clone());
        let next = self.cron.find_next_occurrence(&zoned, false).ok()?;
        Some(next.timestamp().as_millisecond())
    }

    /// The latest tick at or before `at`.
    pub fn latest_at_or_before(&self, at: Millis) -> Option<Millis> {
        let zoned = jiff::Timestamp::from_millisecond(at)
            .ok()?
            .to_zoned(self.timezone.clone());
        let previous = self.cron.find_previous_occurrence(&zoned, true).ok()?;
        Some(previous.timestamp().as_millisecond())
    }

    /// Whether two patterns tick at the same times.
    pub fn same_ticks(&self, other: &Ticks) -> bool {
        self.pattern == other.pattern && self.timezone_name == other.timezone_name
    }

    /// A tick's local time in the schedule's time zone (RFC 3339 with the offset).
    pub fn local_time(&self, at: Millis) -> String {
        jiff::Timestamp::from_millisecond(at)
            .map(|t| {
                t.to_zoned(self.timezone.clone())
                    .strftime("%Y-%m-%dT%H:%M:%S%:z")
                    .to_string()
            })
            .unwrap_or_default()
    }
}

/// The longest cron pattern taken.
const MAX_PATTERN: usize = 256;

impl Checker<'_> {
    pub(super) fn schedule(&mut self, place: &str, raw: &mut RawSource) -> Option<Schedule> {
        let given_elsewhere = [
            ("verify", raw.verify.is_some()),
            ("event_type", raw.event_type.is_some()),
            ("idempotency_key", raw.idempotency_key.is_some()),
            ("format", raw.format.is_some()),
            ("cloudevents", raw.cloudevents.is_some()),
        ];
        for (field, given) in given_elsewhere {
            if given {
                self.error(
                    place.to_string(),
                    format!(
                        "`{field}` does not apply to a schedule source (`emit` says what it sends)"
                    ),
                );
            }
        }
        let Some(pattern) = raw.cron.take() else {
            self.error(
                place.to_string(),
                "`cron` is required for a schedule source",
            );
            return None;
        };
        let ticks = self.ticks(place, pattern, raw.timezone.take())?;
        let missed = match raw.missed.as_deref() {
            None | Some("skip") => Missed::Skip,
            Some("run_once") => Missed::RunOnce,
            Some(other) => {
                self.error(
                    place.to_string(),
                    format!("`missed`: `{other}` is not one of skip, run_once"),
                );
                Missed::Skip
            }
        };
        let Some(emit) = raw.emit.take() else {
            self.error(
                place.to_string(),
                "`emit` is required for a schedule source: `{ event_type, payload }` or `{ event_type, template }`",
            );
            return None;
        };
        if !super::valid_id(&emit.event_type) {
            self.error(
                place.to_string(),
                format!("`emit.event_type` {}", super::ID_RULE),
            );
        }
        let payload = match (emit.payload, emit.template) {
            (Some(_), Some(_)) => {
                self.error(
                    place.to_string(),
                    "give `emit.payload` or `emit.template`, not both",
                );
                return None;
            }
            (None, Some(code)) => {
                TickPayload::Template(self.expr(place, "emit.template", &code)?)
            }
            (payload, None) => {
                let value = payload.unwrap_or_else(|| serde_json::json!({}));
                if !value.is_object() {
                    self.error(
                        place.to_string(),
                        "`emit.payload` must be an object, as a template's output must",
                    );
                }
                // A value from YAML always serialises.
                TickPayload::Fixed(serde_json::to_vec(&value).unwrap_or_default().into())
            }
        };
        Some(Schedule {
            ticks,
            missed,
            event_type: emit.event_type,
            payload,
        })
    }

    /// A cron pattern (`cron`) in a time zone (`timezone`, UTC by default) that fires again.
    pub(super) fn ticks(
        &mut self,
        place: &str,
        pattern: String,
        timezone: Option<String>,
    ) -> Option<Ticks> {
        if pattern.len() > MAX_PATTERN {
            self.error(
                place.to_string(),
                format!(
                    "`cron` is {} bytes long; at most {MAX_PATTERN} are taken",
                    pattern.len()
                ),
            );
            return None;
        }
        let cron = match croner::parser::CronParser::new().parse(&pattern) {
            Ok(c) => c,
            Err(e) => {
                self.error(
                    place.to_string(),
                    format!("`cron`: `{pattern}` is not a cron pattern: {e}"),
                );
                return None;
            }
        };
        let timezone_name = timezone.unwrap_or_else(|| "UTC".into());
        let timezone = match jiff::tz::TimeZone::get(&timezone_name) {
            Ok(tz) => tz,
            Err(e) => {
                self.error(
                    place.to_string(),
                    format!("`timezone`: `{timezone_name}` is not a time zone of the IANA database ({e})"),
                );
                return None;
            }
        };
        let ticks = Ticks {
            pattern,
            cron,
            timezone_name,
            timezone,
        };
        if ticks.next_after(crate::clock::system_now_ms()).is_none() {
            self.error(
                place.to_string(),
                format!("`cron`: `{}` never fires", ticks.pattern),
            );
            return None;
        }
        Some(ticks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(pattern: &str, tz: &str) -> Ticks {
        Ticks {
            pattern: pattern.into(),
            cron: croner::parser::CronParser::new().parse(pattern).unwrap(),
            timezone_name: tz.into(),
            timezone: jiff::tz::TimeZone::get(tz).unwrap(),
        }
    }

    fn at(text: &str) -> Millis {
        crate::clock::parse_rfc3339(text).unwrap()
    }

    #[test]
    fn ticks_are_found_in_the_time_zone() {
        let every5 = schedule("*/5 * * * *", "Europe/Paris");
        assert_eq!(
            every5.next_after(at("2026-12-06T10:02:30Z")),
            Some(at("2026-12-06T10:05:00Z"))
        );
        assert_eq!(
            every5.next_after(at("2026-12-06T10:05:00Z")),
            Some(at("2026-12-06T10:10:00Z"))
        );
        assert_eq!(
            every5.latest_at_or_before(at("2026-12-06T10:27:00Z")),
            Some(at("2026-12-06T10:25:00Z"))
        );
        assert_eq!(
            every5.latest_at_or_before(at("2026-12-06T10:25:00Z")),
            Some(at("2026-12-06T10:25:00Z"))
        );
        let daily = schedule("30 1 * * *", "Europe/Paris");
        // The night the clocks go forward in Paris.
        assert_eq!(
            daily.next_after(at("2026-03-29T00:30:00Z")),
            Some(at("2026-03-29T23:30:00Z"))
        );
        assert_eq!(
            daily.local_time(at("2026-03-29T23:30:00Z")),
            "2026-03-30T01:30:00+02:00"
        );
        assert_eq!(daily.next_after(i64::MAX), None);
        assert_eq!(daily.next_after(i64::MIN), None);
    }
}

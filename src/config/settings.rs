//! `settings:`, the limits and policies of the process: body size, memory budgets, connections,
//! retention, the expression workers and egress, each checked against its bounds and given its
//! default when it is not written.

use super::Checker;
use super::raw::{RawConnections, RawEgress, RawExpressions, RawMemory, RawSettings};
use crate::egress::{AllowEntry, EgressPolicy, MAX_ALLOW_ENTRIES};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Settings {
    /// What outbound requests may reach (`allow_private_destinations`, `egress.allow`).
    pub egress: Arc<EgressPolicy>,
    /// Largest accepted ingest body, in bytes.
    pub max_body_size: usize,
    /// How many refused inputs the rejected log keeps (oldest dropped first).
    pub rejected_log_size: usize,
    pub public_url: Option<url::Url>,
    /// How often alert rules are evaluated.
    pub alert_interval: Duration,
    /// How long a graceful stop (`SIGTERM`, Ctrl-C) lets the delivery attempts and `http`
    /// steps in flight finish and be recorded, once it has stopped starting new ones.
    pub shutdown_grace: Duration,
    /// Cluster mode: how long a node's lease on a job lasts unless renewed (a live node
    /// renews it every third of it); a dead node's jobs go to the others after it.
    pub lease: Duration,
    /// The expression workers: how many, and the limits they run under.
    pub expressions: ExpressionLimits,
    pub memory: MemoryLimits,
    pub connections: ConnectionLimits,
    /// How long finished work, dead letters and bodies are kept.
    pub retention: RetentionLimits,
}

/// How long the store keeps things (`settings.retention`, `payload_retention`,
/// `dead_letter_retention`). Pending work is kept whatever its age.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionLimits {
    /// Finished events with their runs, deliveries and attempts, and the rejected log.
    pub finished: Duration,
    /// Events with a dead letter (a dead delivery or a failed run): at least `finished`.
    pub dead_letters: Duration,
    /// Bodies (payloads, contexts, step outputs, delivery bodies, response bodies): at most
    /// `finished`; `None` keeps them as long as their records.
    pub payloads: Option<Duration>,
}

/// How long a cluster node's lease on a job lasts unless renewed.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
pub const DEFAULT_DEAD_LETTER_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// The shortest retention of any kind: the pruner looks every minute.
pub const MIN_RETENTION: Duration = Duration::from_secs(60);

/// How many bytes of payloads memory may hold (`settings.memory`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLimits {
    /// Bodies of requests to `/in/{source}` being read, checked and committed; past this,
    /// ingest answers `503`.
    pub ingest_bytes: usize,
    /// Bodies held for deliveries; past this they stay in the store until their attempt.
    pub delivery_bytes: usize,
}

/// What one client connection may take (`settings.connections`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections served at once; past this, new ones wait to be accepted.
    pub max: usize,
    /// From a connection's first byte of a request (or its opening) to the end of the head.
    pub header_read_timeout: Duration,
    /// From the end of a request's head to the end of its body.
    pub body_read_timeout: Duration,
    /// How long a kept-alive connection may stay without a request.
    pub idle_timeout: Duration,
}

/// Kubernetes gives a pod 30 s between `SIGTERM` and `SIGKILL`: the default leaves room for
/// the store's last commit inside that.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(25);
pub const DEFAULT_MAX_BODY_SIZE: usize = 1024 * 1024;
pub const DEFAULT_INGEST_BYTES: usize = 64 * 1024 * 1024;
pub const DEFAULT_DELIVERY_BYTES: usize = 64 * 1024 * 1024;
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// The largest `connections.max` accepted.
pub const MAX_CONNECTIONS_LIMIT: usize = 1_000_000;
pub const DEFAULT_REJECTED_LOG_SIZE: usize = 10_000;

impl Checker<'_> {
    pub(super) fn settings(&mut self, raw: RawSettings) -> Settings {
        let place = self.places.section("settings");
        let retention = self.retention(&place, &raw);
        let public_url = raw.public_url.and_then(|u| match url::Url::parse(&u) {
            Ok(u) => Some(u),
            Err(e) => {
                self.error(
                    place.clone(),
                    format!("`public_url`: `{u}` is not a URL ({e})"),
                );
                None
            }
        });
        let max_body_size = raw
            .max_body_size
            .map(|n| n as usize)
            .unwrap_or(DEFAULT_MAX_BODY_SIZE);
        let memory = self.memory(&place, raw.memory, max_body_size);
        let connections = self.connections(&place, raw.connections);
        let egress = self.egress(&place, raw.allow_private_destinations, raw.egress);
        Settings {
            egress: Arc::new(egress),
            max_body_size,
            rejected_log_size: raw
                .rejected_log_size
                .map(|n| n as usize)
                .unwrap_or(DEFAULT_REJECTED_LOG_SIZE),
            public_url,
            // Each interval wakes the evaluator: `0s` would spin a core.
            alert_interval: self.duration_at_least(
                &place,
                "alert_interval",
                &raw.alert_interval,
                Duration::from_secs(15),
                Duration::from_millis(100),
            ),
            shutdown_grace: self.duration_at_most(
                &place,
                "shutdown_grace",
                &raw.shutdown_grace,
                DEFAULT_SHUTDOWN_GRACE,
                Duration::from_secs(3600),
            ),
            lease: {
                let lease = self.duration_at_most(
                    &place,
                    "lease",
                    &raw.lease,
                    DEFAULT_LEASE,
                    Duration::from_secs(3600),
                );
                if lease < Duration::from_secs(1) {
                    self.error(place.clone(), "`lease` must be at least 1s".to_string());
                }
                lease
            },
            expressions: self.expression_limits(&place, raw.expressions.unwrap_or_default()),
            memory,
            connections,
            retention,
        }
    }

    /// `settings.retention`, `payload_retention` and `dead_letter_retention`: each at least
    /// [`MIN_RETENTION`]; bodies kept no longer than their records, dead letters no shorter
    /// than finished work.
    fn retention(&mut self, place: &str, raw: &RawSettings) -> RetentionLimits {
        let mut limit = |field: &str, given: &Option<String>, default: Duration| {
            let d = self.duration(place, field, given, default);
            if given.is_some() && d < MIN_RETENTION {
                self.error(
                    place.to_string(),
                    format!(
                        "`{field}`: `{}` is shorter than the least retention, 1m",
                        given.as_deref().unwrap_or_default()
                    ),
                );
                return default;
            }
            d
        };
        let finished = limit("retention", &raw.retention, DEFAULT_RETENTION);
        let dead_letters = limit(
            "dead_letter_retention",
            &raw.dead_letter_retention,
            DEFAULT_DEAD_LETTER_RETENTION.max(finished),
        );
        let payloads = raw
            .payload_retention
            .as_ref()
            .map(|_| limit("payload_retention", &raw.payload_retention, finished));
        let show = |d: Duration| humantime::format_duration(d).to_string();
        if let Some(p) = payloads
            && p > finished
        {
            self.error(
                place.to_string(),
                format!(
                    "`payload_retention` ({}) is longer than `retention` ({}): bodies cannot outlive the records they belong to",
                    show(p),
                    show(finished)
                ),
            );
        }
        if dead_letters < finished {
            self.error(
                place.to_string(),
                format!(
                    "`dead_letter_retention` ({}) is shorter than `retention` ({}): dead letters are kept at least as long as finished work",
                    show(dead_letters),
                    show(finished)
                ),
            );
        }
        RetentionLimits {
            finished,
            dead_letters: dead_letters.max(finished),
            payloads: payloads.map(|p| p.min(finished)),
        }
    }

    fn expression_limits(&mut self, place: &str, raw: RawExpressions) -> ExpressionLimits {
        let default = ExpressionLimits::default();
        let workers = raw.workers.unwrap_or(default.workers as u64);
        if !(1..=64).contains(&workers) {
            self.error(
                place.to_string(),
                format!("`expressions.workers`: {workers} is not between 1 and 64"),
            );
        }
        let time = self.duration(
            place,
            "expressions.time_limit",
            &raw.time_limit,
            default.time,
        );
        if time.is_zero() || time > Duration::from_secs(300) {
            self.error(
                place.to_string(),
                format!("`expressions.time_limit`: {time:?} is not between 1ms and 5m"),
            );
        }
        let memory_mb = raw
            .memory_limit_mb
            .unwrap_or(default.memory_bytes / (1024 * 1024));
        if !(64..=65_536).contains(&memory_mb) {
            self.error(
                place.to_string(),
                format!("`expressions.memory_limit_mb`: {memory_mb} is not between 64 and 65536"),
            );
        }
        let queue = raw.queue.unwrap_or(default.queue as u64);
        if !(1..=1_000_000).contains(&queue) {
            self.error(
                place.to_string(),
                format!("`expressions.queue`: {queue} is not between 1 and 1000000"),
            );
        }
        ExpressionLimits {
            workers: workers.clamp(1, 64) as usize,
            time,
            memory_bytes: memory_mb.clamp(64, 65_536) * 1024 * 1024,
            queue: queue.clamp(1, 1_000_000) as usize,
        }
    }

    /// `settings.memory`: each budget must hold at least one body of `max_body_size`.
    fn memory(&mut self, place: &str, raw: RawMemory, max_body_size: usize) -> MemoryLimits {
        let mut budget = |field: &str, given: Option<u64>, default: usize| match given {
            None => default.max(max_body_size),
            Some(n) if (n as usize) < max_body_size => {
                self.error(
                    place.to_string(),
                    format!("`memory.{field}`: {n} is smaller than `max_body_size` ({max_body_size}); it must hold at least one body"),
                );
                default.max(max_body_size)
            }
            Some(n) => n as usize,
        };
        MemoryLimits {
            ingest_bytes: budget("ingest_bytes", raw.ingest_bytes, DEFAULT_INGEST_BYTES),
            delivery_bytes: budget("delivery_bytes", raw.delivery_bytes, DEFAULT_DELIVERY_BYTES),
        }
    }

    /// `settings.connections`: a cap of at least one and timeouts longer than zero.
    fn connections(&mut self, place: &str, raw: RawConnections) -> ConnectionLimits {
        let max = match raw.max {
            None => DEFAULT_MAX_CONNECTIONS,
            Some(n) if n == 0 || n > MAX_CONNECTIONS_LIMIT as u64 => {
                self.error(
                    place.to_string(),
                    format!("`connections.max`: {n} is not between 1 and {MAX_CONNECTIONS_LIMIT}"),
                );
                DEFAULT_MAX_CONNECTIONS
            }
            Some(n) => n as usize,
        };
        let mut timeout = |field: &str, given: &Option<String>, default: u64| {
            let default = Duration::from_secs(default);
            let d = self.duration(place, &format!("connections.{field}"), given, default);
            if d.is_zero() {
                self.error(
                    place.to_string(),
                    format!("`connections.{field}` must be longer than 0"),
                );
                return default;
            }
            d
        };
        ConnectionLimits {
            max,
            header_read_timeout: timeout("header_read_timeout", &raw.header_read_timeout, 10),
            body_read_timeout: timeout("body_read_timeout", &raw.body_read_timeout, 30),
            idle_timeout: timeout("idle_timeout", &raw.idle_timeout, 60),
        }
    }

    /// `settings.egress.allow`: at most `MAX_ALLOW_ENTRIES` networks, addresses and host names;
    /// the first ten bad entries are reported one by one.
    fn egress(&mut self, place: &str, allow_private: bool, raw: RawEgress) -> EgressPolicy {
        if raw.allow.len() > MAX_ALLOW_ENTRIES {
            self.error(
                place.to_string(),
                format!(
                    "`egress.allow` lists {} entries; at most {MAX_ALLOW_ENTRIES} are accepted (name networks rather than single addresses)",
                    raw.allow.len()
                ),
            );
            return EgressPolicy::new(allow_private, []);
        }
        let mut entries = Vec::new();
        let mut bad = 0;
        for (index, text) in raw.allow.iter().enumerate() {
            match AllowEntry::parse(text) {
                Ok(entry) => entries.push(entry),
                Err(e) => {
                    bad += 1;
                    if bad <= 10 {
                        self.error(place.to_string(), format!("`egress.allow[{index}]`: {e}"));
                    }
                }
            }
        }
        if bad > 10 {
            self.error(
                place.to_string(),
                format!("`egress.allow`: {} more entries are not valid", bad - 10),
            );
        }
        EgressPolicy::new(allow_private, entries)
    }
}

/// How many workers, and the limits each request and worker runs under
/// (`settings.expressions` in the config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpressionLimits {
    pub workers: usize,
    /// Wall-clock time of one request (all the pure steps of a run between two I/O steps,
    /// or one batch of payloads for a filter).
    pub time: Duration,
    /// Address space of one worker, in bytes.
    pub memory_bytes: u64,
    /// Requests that may wait for a free worker; past that, requests are refused at once.
    pub queue: usize,
}

impl Default for ExpressionLimits {
    fn default() -> Self {
        ExpressionLimits {
            workers: 2,
            time: Duration::from_secs(1),
            memory_bytes: 512 * 1024 * 1024,
            queue: 1024,
        }
    }
}

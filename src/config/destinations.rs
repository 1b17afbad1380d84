//! Destinations: where deliveries go (an http URL the egress guard allows, headers, a signing
//! secret) and how they are sent (timeout, retry policy, concurrency, circuit breaker).

use super::raw::{RawBreaker, RawDestination, RawRetry};
use super::{Checker, Secret, Settings, lower_case};
use crate::config::retry::RetryPolicy;
use std::time::Duration;

#[derive(Debug)]
pub struct Destination {
    pub id: String,
    pub url: url::Url,
    pub method: reqwest::Method,
    pub headers: Vec<(reqwest::header::HeaderName, reqwest::header::HeaderValue)>,
    pub signing: Option<Secret>,
    pub timeout: Duration,
    pub retry: RetryPolicy,
    pub concurrency: usize,
    pub breaker: BreakerConfig,
    /// Header and query parameter names (lower case) whose values are secrets besides the
    /// names `secrets::fields` knows.
    pub secret_headers: Vec<String>,
    pub secret_query_params: Vec<String>,
}

impl Destination {
    /// Whether the value of the destination's header `name` is a secret.
    pub fn secret_header(&self, name: &str) -> bool {
        crate::config::redact::fields::is_secret_header_or_listed(name, &self.secret_headers)
    }

    /// The URL as reads and errors show it: its secret parts masked.
    pub fn shown_url(&self) -> String {
        crate::config::redact::url::shown(self.url.as_str(), &self.secret_query_params)
    }
}

impl Checker<'_> {
    pub(super) fn destination(
        &mut self,
        place: &str,
        raw: RawDestination,
        settings: &Settings,
    ) -> Option<Destination> {
        self.check_id(place, &raw.id);
        match raw.kind.as_str() {
            "http" => {}
            "postgres" | "redis" | "nats" | "amqp" | "mqtt" | "slack" | "email" => {
                self.error(
                    place.to_string(),
                    format!(
                        "destination kind `{}` is not available yet; only `http` is",
                        raw.kind
                    ),
                );
                return None;
            }
            other => {
                self.error(
                    place.to_string(),
                    format!("unknown destination kind `{other}`; expected `http`"),
                );
                return None;
            }
        }
        let url = self.destination_url(place, raw.url, &raw.secret_query_params, settings)?;
        let method = self.method(place, "method", raw.method.as_deref(), "POST");
        let mut headers = Vec::new();
        for (name, value) in raw.headers {
            match (
                reqwest::header::HeaderName::from_bytes(name.as_bytes()),
                reqwest::header::HeaderValue::from_str(&value),
            ) {
                (Ok(n), Ok(v)) => headers.push((n, v)),
                _ => self.error(
                    place.to_string(),
                    format!("`headers`: `{name}` is not a valid header name and value"),
                ),
            }
        }
        let signing =
            raw.signing
                .and_then(|s| match crate::config::secret::decode_secret(&s.secret) {
                    Ok(key) => Some(Secret::new(key)),
                    Err(e) => {
                        self.error(place.to_string(), format!("`signing.secret`: {e}"));
                        None
                    }
                });
        let timeout = self.duration_at_least(
            place,
            "timeout",
            &raw.timeout,
            Duration::from_secs(30),
            Duration::from_millis(1),
        );
        let retry = self.retry(place, raw.retry.unwrap_or_default());
        let breaker = self.breaker(place, raw.circuit_breaker.unwrap_or_default());
        let concurrency = raw.concurrency.unwrap_or(32);
        if concurrency == 0 {
            self.error(place.to_string(), "`concurrency` must be at least 1");
        }
        Some(Destination {
            id: raw.id,
            url,
            method,
            headers,
            signing,
            timeout,
            retry,
            concurrency: concurrency.max(1) as usize,
            breaker,
            secret_headers: lower_case(raw.secret_headers),
            secret_query_params: lower_case(raw.secret_query_params),
        })
    }

    /// A destination's `url`: given, http(s), and allowed by the egress guard before DNS. An
    /// error shows it with its secret query parameters masked.
    fn destination_url(
        &mut self,
        place: &str,
        url: Option<String>,
        secret_query_params: &[String],
        settings: &Settings,
    ) -> Option<url::Url> {
        let Some(url_text) = url else {
            self.error(
                place.to_string(),
                "`url` is required for an http destination",
            );
            return None;
        };
        let url = match url::Url::parse(&url_text) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => u,
            Ok(u) => {
                self.error(
                    place.to_string(),
                    format!("`url`: scheme `{}` is not http or https", u.scheme()),
                );
                return None;
            }
            Err(e) => {
                let shown = crate::config::redact::url::shown(&url_text, secret_query_params);
                self.error(
                    place.to_string(),
                    format!("`url`: `{shown}` is not a URL ({e})"),
                );
                return None;
            }
        };
        self.egress_url(place, "url", &url, settings);
        Some(url)
    }

    fn breaker(&mut self, place: &str, raw: RawBreaker) -> BreakerConfig {
        let d = BreakerConfig::default();
        let failures = raw.failures.unwrap_or(d.failures);
        if failures == 0 {
            self.error(
                place.to_string(),
                "`circuit_breaker.failures` must be at least 1",
            );
        }
        let cool_off = self.duration(place, "circuit_breaker.cool_off", &raw.cool_off, d.cool_off);
        let pause_after = match raw.pause_after.as_deref() {
            Some("never") => None,
            None => d.pause_after,
            Some(_) => Some(self.duration(
                place,
                "circuit_breaker.pause_after",
                &raw.pause_after,
                Duration::ZERO,
            )),
        };
        BreakerConfig {
            failures: failures.max(1),
            cool_off,
            pause_after,
        }
    }

    pub(super) fn retry(&mut self, place: &str, raw: RawRetry) -> RetryPolicy {
        let d = RetryPolicy::default();
        let policy = RetryPolicy {
            max_attempts: raw.max_attempts.unwrap_or(d.max_attempts),
            initial: self.duration(place, "retry.initial", &raw.initial, d.initial),
            max: self.duration(place, "retry.max", &raw.max, d.max),
            multiplier: raw.multiplier.unwrap_or(d.multiplier),
            jitter: raw.jitter.unwrap_or(d.jitter),
        };
        if policy.max_attempts == 0 {
            self.error(place.to_string(), "`retry.max_attempts` must be at least 1");
        }
        if !(policy.multiplier >= 1.0 && policy.multiplier <= 100.0) {
            self.error(
                place.to_string(),
                "`retry.multiplier` must be between 1 and 100",
            );
        }
        if policy.initial > policy.max {
            self.error(
                place.to_string(),
                "`retry.initial` is longer than `retry.max`",
            );
        }
        policy
    }
}

/// A destination's circuit breaker, as configured (`deliver::circuit` runs it).
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Retryable failures in a row that open the circuit.
    pub failures: u32,
    pub cool_off: Duration,
    /// Pause the destination once it has been failing this long without a success.
    pub pause_after: Option<Duration>,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: 10,
            cool_off: Duration::from_secs(30),
            pause_after: Some(Duration::from_secs(24 * 3600)),
        }
    }
}

//! One attempt at one delivery: build the request (signature headers included), send it,
//! read a bounded part of the answer, and classify the outcome as DESIGN.md says.

use crate::config::Destination;
use crate::egress::{EgressClient, Refused};
use bytes::Bytes;
use std::time::Duration;

/// How much of a response body is kept in the attempts log.
pub const MAX_RECORDED_BODY: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    /// Worth trying again (408, 425, 429, 5xx, 3xx, timeouts, connection errors, a refusal by
    /// the egress guard).
    Retryable,
    /// Another 4xx: the receiver refused this request for good.
    Permanent,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Retryable => "retry",
            Outcome::Permanent => "failed",
        }
    }
}

pub fn classify(status: u16) -> Outcome {
    match status {
        200..=299 => Outcome::Succeeded,
        408 | 425 | 429 => Outcome::Retryable,
        400..=499 => Outcome::Permanent,
        _ => Outcome::Retryable,
    }
}

#[derive(Debug)]
pub struct AttemptResult {
    pub outcome: Outcome,
    pub status_code: Option<u16>,
    pub response_headers: Option<String>,
    pub response_body: Option<Vec<u8>>,
    pub retry_after: Option<Duration>,
    pub error: Option<String>,
    pub duration: Duration,
}

impl AttemptResult {
    /// An attempt that got no response. Retried, like a connection error: a refusal by the
    /// egress guard too, since DNS answers change and a config can be fixed while the
    /// delivery waits; after its retries, the delivery is a dead letter with the reason.
    fn failed(error: String, started: std::time::Instant) -> AttemptResult {
        AttemptResult {
            outcome: Outcome::Retryable,
            status_code: None,
            response_headers: None,
            response_body: None,
            retry_after: None,
            error: Some(error),
            duration: started.elapsed(),
        }
    }

    fn refused(refused: &Refused, started: std::time::Instant) -> AttemptResult {
        AttemptResult::failed(refused_text(refused), started)
    }
}

/// How a request the egress guard refused is told in attempt logs and step records.
pub(crate) fn refused_text(refused: &Refused) -> String {
    format!("refused by the egress guard: {refused}")
}

/// Sends one attempt. `delivery_id` is the `webhook-id` (the same on every retry);
/// `timestamp` the unix seconds of this attempt.
pub async fn send(
    client: &EgressClient,
    dest: &Destination,
    delivery_id: &str,
    timestamp: i64,
    body: Bytes,
) -> AttemptResult {
    let started = std::time::Instant::now();
    let request = match client.request(dest.method.clone(), &dest.url) {
        Ok(r) => r,
        Err(refused) => return AttemptResult::refused(&refused, started),
    };
    let mut request = request
        .timeout(dest.timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(
            reqwest::header::USER_AGENT,
            concat!("Ferry/", env!("CARGO_PKG_VERSION")),
        );
    for (name, value) in &dest.headers {
        request = request.header(name, value);
    }
    if let Some(key) = &dest.signing {
        request = request
            .header("webhook-id", delivery_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                super::signing::sign(key.expose(), delivery_id, timestamp, &body),
            );
    }
    let response = match request.body(body).send().await {
        Ok(r) => r,
        Err(e) => return AttemptResult::failed(describe_error(&e), started),
    };
    let status = response.status().as_u16();
    let headers = headers_json(response.headers());
    let retry_after = retry_after(response.headers());
    let (body, body_error, _) = read_bounded(response, MAX_RECORDED_BODY).await;
    let outcome = classify(status);
    let error = match (outcome, body_error) {
        (Outcome::Succeeded, _) => None,
        (_, Some(e)) => Some(format!("HTTP {status}; reading the body failed: {e}")),
        (_, None) => Some(format!("HTTP {status}")),
    };
    AttemptResult {
        outcome,
        status_code: Some(status),
        response_headers: Some(serde_json::Value::Object(headers).to_string()),
        response_body: Some(body),
        retry_after,
        error,
        duration: started.elapsed(),
    }
}

/// Reads at most `limit` bytes of the body; the flag says whether some were left unread.
pub(crate) async fn read_bounded(
    mut response: reqwest::Response,
    limit: usize,
) -> (Vec<u8>, Option<String>, bool) {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = limit - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if chunk.len() > room {
                    return (body, None, true);
                }
            }
            Ok(None) => return (body, None, false),
            Err(e) => return (body, Some(describe_error(&e)), false),
        }
    }
}

/// The delay a `Retry-After` header asks for, if any.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| crate::config::retry::parse_retry_after(v, std::time::SystemTime::now()))
}

/// Headers as a JSON object of strings.
pub(crate) fn headers_json(
    headers: &reqwest::header::HeaderMap,
) -> serde_json::Map<String, serde_json::Value> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            )
        })
        .collect()
}

pub(crate) fn describe_error(e: &reqwest::Error) -> String {
    if let Some(refused) = crate::egress::refusal_in(e) {
        return refused_text(refused);
    }
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_decode() {
        "response body error"
    } else {
        "request failed"
    };
    let mut text = kind.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_the_design() {
        for (status, outcome) in [
            (200, Outcome::Succeeded),
            (204, Outcome::Succeeded),
            (301, Outcome::Retryable),
            (400, Outcome::Permanent),
            (401, Outcome::Permanent),
            (404, Outcome::Permanent),
            (408, Outcome::Retryable),
            (410, Outcome::Permanent),
            (425, Outcome::Retryable),
            (429, Outcome::Retryable),
            (500, Outcome::Retryable),
            (503, Outcome::Retryable),
        ] {
            assert_eq!(classify(status), outcome, "{status}");
        }
    }
}

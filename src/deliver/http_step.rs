//! Performing a flow's `http` step: authentication (bearer, basic, API key, OAuth2 client
//! credentials with a shared token cache), the `Idempotency-Key` header, one attempt, and the
//! response as later steps see it (`{status, headers, body}`).

use super::attempt::{
    Outcome, classify, describe_error, headers_json, read_bounded, refused_text, retry_after,
};
use crate::clock::Millis;
use crate::config::program::{Auth, HttpStep, OAuth2};
use crate::egress::EgressClient;
use crate::engine::HttpRequest;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A token is refreshed this long before the expiry its server gave.
const TOKEN_MARGIN_MS: Millis = 30_000;
/// The lifetime assumed when a token response has no `expires_in`.
const DEFAULT_TOKEN_LIFETIME_S: i64 = 3600;

#[derive(Clone)]
struct CachedToken {
    value: String,
    expires_at: Millis,
}

/// OAuth2 tokens shared by every run, one per (token URL, client id, scope). Concurrent
/// callers needing a new token wait for one fetch.
#[derive(Default)]
pub struct TokenCache {
    // A std mutex around the map (held only to find an entry); each entry's async mutex is
    // held across the token request so only one caller fetches.
    entries: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<CachedToken>>>>>,
}

impl TokenCache {
    /// A valid token; `stale` is a token the API just refused, which must not be given again.
    async fn token(
        &self,
        client: &EgressClient,
        oauth: &OAuth2,
        now: Millis,
        stale: Option<&str>,
    ) -> Result<String, String> {
        let key = format!(
            "{}\n{}\n{}",
            oauth.token_url,
            oauth.client_id,
            oauth.scope.as_deref().unwrap_or("")
        );
        let entry = self
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default()
            .clone();
        let mut slot = entry.lock().await;
        if let Some(t) = slot.as_ref()
            && t.expires_at - TOKEN_MARGIN_MS > now
            && stale != Some(t.value.as_str())
        {
            return Ok(t.value.clone());
        }
        let fresh = fetch_token(client, oauth, now).await?;
        *slot = Some(fresh.clone());
        Ok(fresh.value)
    }
}

async fn fetch_token(
    client: &EgressClient,
    oauth: &OAuth2,
    now: Millis,
) -> Result<CachedToken, String> {
    let form = {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "client_credentials");
        if let Some(scope) = &oauth.scope {
            form.append_pair("scope", scope);
        }
        form.finish()
    };
    let secret = String::from_utf8_lossy(oauth.client_secret.expose()).into_owned();
    let response = client
        .request(reqwest::Method::POST, &oauth.token_url)
        .map_err(|refused| {
            format!(
                "token request to {}: {}",
                oauth.token_url,
                refused_text(&refused)
            )
        })?
        .timeout(Duration::from_secs(30))
        .basic_auth(&oauth.client_id, Some(secret))
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(reqwest::header::ACCEPT, "application/json")
        .body(form)
        .send()
        .await
        .map_err(|e| {
            format!(
                "token request to {}: {}",
                crate::config::redact::url::shown(oauth.token_url.as_str(), &[]),
                describe_error(&e)
            )
        })?;
    let status = response.status().as_u16();
    let (body, _, _) = read_bounded(response, 64 * 1024).await;
    if !(200..300).contains(&status) {
        return Err(format!(
            "token request to {} answered HTTP {status}",
            crate::config::redact::url::shown(oauth.token_url.as_str(), &[])
        ));
    }
    #[derive(serde::Deserialize)]
    struct TokenResponse {
        access_token: String,
        expires_in: Option<i64>,
    }
    let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
        let e = crate::config::redact::without_quoted_values(&e.to_string());
        format!(
            "token response from {} is not an OAuth2 token ({e})",
            crate::config::redact::url::shown(oauth.token_url.as_str(), &[])
        )
    })?;
    Ok(CachedToken {
        value: parsed.access_token,
        expires_at: now + parsed.expires_in.unwrap_or(DEFAULT_TOKEN_LIFETIME_S).max(0) * 1000,
    })
}

/// What one attempt of an http step got.
pub struct StepResponse {
    pub outcome: Outcome,
    pub status_code: Option<u16>,
    pub headers: Option<serde_json::Map<String, serde_json::Value>>,
    pub body: Vec<u8>,
    pub retry_after: Option<Duration>,
    pub error: Option<String>,
    pub duration: Duration,
}

impl StepResponse {
    fn failed(error: String, outcome: Outcome, started: std::time::Instant) -> StepResponse {
        StepResponse {
            outcome,
            status_code: None,
            headers: None,
            body: Vec::new(),
            retry_after: None,
            error: Some(error),
            duration: started.elapsed(),
        }
    }

    /// The step's output for later steps: `{status, headers, body}`, the body parsed as JSON
    /// when it is JSON and kept as a string otherwise.
    pub fn output(&self) -> serde_json::Value {
        let body = serde_json::from_slice::<serde_json::Value>(&self.body).unwrap_or_else(|_| {
            if self.body.is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::Value::String(String::from_utf8_lossy(&self.body).into_owned())
            }
        });
        serde_json::json!({
            "status": self.status_code,
            "headers": self.headers.clone().unwrap_or_default(),
            "body": body,
        })
    }
}

/// Sends one attempt of `step`. With OAuth2, a 401 answer refreshes the token once and sends
/// again within the same attempt.
pub async fn perform(
    client: &EgressClient,
    tokens: &TokenCache,
    step: &HttpStep,
    request: &HttpRequest,
    now: Millis,
) -> StepResponse {
    let started = std::time::Instant::now();
    let mut stale: Option<String> = None;
    loop {
        let builder = match client.request(request.method.clone(), &request.url) {
            Ok(b) => b,
            Err(refused) => {
                return StepResponse::failed(refused_text(&refused), Outcome::Retryable, started);
            }
        };
        let mut builder = builder.timeout(step.timeout).header(
            reqwest::header::USER_AGENT,
            concat!("Ferry/", env!("CARGO_PKG_VERSION")),
        );
        let mut has_key = false;
        let mut has_type = false;
        for (name, value) in &request.headers {
            has_key |= name.as_str() == "idempotency-key";
            has_type |= name == reqwest::header::CONTENT_TYPE;
            builder = builder.header(name, value);
        }
        if !has_key {
            builder = builder.header("idempotency-key", &request.idempotency_key);
        }
        if let Some(body) = &request.body {
            if !has_type {
                builder = builder.header(reqwest::header::CONTENT_TYPE, "application/json");
            }
            builder = builder.body(body.clone());
        }
        let mut oauth_token = None;
        builder = match &step.auth {
            None => builder,
            Some(Auth::Bearer(token)) => {
                builder.bearer_auth(String::from_utf8_lossy(token.expose()))
            }
            Some(Auth::Basic { username, password }) => {
                builder.basic_auth(username, Some(String::from_utf8_lossy(password.expose())))
            }
            Some(Auth::ApiKey { header, value }) => {
                match reqwest::header::HeaderValue::from_bytes(value.expose()) {
                    Ok(v) => builder.header(header, v),
                    Err(_) => {
                        return StepResponse::failed(
                            format!(
                                "the API key for header `{header}` is not a valid header value"
                            ),
                            Outcome::Permanent,
                            started,
                        );
                    }
                }
            }
            Some(Auth::OAuth2(oauth)) => {
                match tokens.token(client, oauth, now, stale.as_deref()).await {
                    Ok(token) => {
                        let b = builder.bearer_auth(&token);
                        oauth_token = Some(token);
                        b
                    }
                    Err(e) => return StepResponse::failed(e, Outcome::Retryable, started),
                }
            }
        };
        let response = match builder.send().await {
            Ok(r) => r,
            Err(e) => {
                return StepResponse::failed(describe_error(&e), Outcome::Retryable, started);
            }
        };
        let status = response.status().as_u16();
        if status == 401
            && stale.is_none()
            && let Some(token) = oauth_token
        {
            stale = Some(token);
            continue;
        }
        let headers = headers_json(response.headers());
        let retry_after = retry_after(response.headers());
        let (body, body_error, truncated) =
            read_bounded(response, crate::engine::MAX_OUTPUT_SIZE).await;
        let mut outcome = classify(status);
        let error = if truncated {
            outcome = Outcome::Permanent;
            Some(format!(
                "HTTP {status}; the response body is over {} bytes, the most a step may keep",
                crate::engine::MAX_OUTPUT_SIZE
            ))
        } else {
            match (outcome, body_error) {
                (_, Some(e)) => {
                    outcome = Outcome::Retryable;
                    Some(format!("HTTP {status}; reading the body failed: {e}"))
                }
                (Outcome::Succeeded, None) => None,
                (_, None) => Some(format!("HTTP {status}")),
            }
        };
        return StepResponse {
            outcome,
            status_code: Some(status),
            headers: Some(headers),
            body,
            retry_after,
            error,
            duration: started.elapsed(),
        };
    }
}

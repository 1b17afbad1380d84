//! Providers' checks that Ferry owns an endpoint (Slack's `url_verification`, Zoom's
//! `endpoint.url_validation`), answered the provider's way instead of taking an event. They
//! are answered only after the request's signature is verified: Zoom's answer is an HMAC under
//! the source's secret, which an unverified sender must not be able to ask for.

use crate::api::error::ApiError;
use crate::config::verify::{Handshake, SignatureScheme};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// The answer to a handshake, or `None` when the body is an ordinary event. A body that says
/// it is the provider's check but lacks its token is refused (`Err`), not taken as an event.
/// A body that is not JSON is left for the ingest path to refuse.
pub(super) fn answer(scheme: &SignatureScheme, body: &[u8]) -> Option<Result<Response, ApiError>> {
    let handshake = scheme.handshake?;
    // Every event of the source passes here: only a body that names the check is parsed.
    let marker: &[u8] = match handshake {
        Handshake::SlackUrlVerification => b"url_verification",
        Handshake::ZoomUrlValidation => b"endpoint.url_validation",
    };
    memchr::memmem::find(body, marker)?;
    crate::json::check_depth(body).ok()?;
    let value: Value = serde_json::from_slice(body).ok()?;
    let malformed = |what: &str| {
        Some(Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_handshake",
            format!("{what}; nothing was stored"),
        )))
    };
    let answer = match handshake {
        Handshake::SlackUrlVerification => {
            if value.get("type").and_then(Value::as_str) != Some("url_verification") {
                return None;
            }
            let Some(challenge) = value.get("challenge").and_then(Value::as_str) else {
                return malformed("a Slack `url_verification` without a string `challenge`");
            };
            json!({"challenge": challenge})
        }
        Handshake::ZoomUrlValidation => {
            if value.get("event").and_then(Value::as_str) != Some("endpoint.url_validation") {
                return None;
            }
            let plain = value
                .get("payload")
                .and_then(|p| p.get("plainToken"))
                .and_then(Value::as_str);
            let Some(plain) = plain else {
                return malformed(
                    "a Zoom `endpoint.url_validation` without a string `payload.plainToken`",
                );
            };
            json!({
                "plainToken": plain,
                "encryptedToken": super::verify::zoom_token(&scheme.key, plain),
            })
        }
    };
    tracing::info!(scheme = %scheme.name, "answered the provider's endpoint check");
    Some(Ok((StatusCode::OK, axum::Json(answer)).into_response()))
}

/// CloudEvents' abuse protection (the HTTP 1.1 Web Hooks for Event Delivery spec): an
/// `OPTIONS` with `WebHook-Request-Origin` asks whether this endpoint takes events from that
/// origin. A source with `format: cloudevents` says yes to any origin, at once (a
/// `WebHook-Request-Callback` is not called: the answer is given in the response), and
/// `WebHook-Allowed-Rate: *` when a rate is asked (a source has no rate limit of its own).
pub async fn abuse_check(
    axum::extract::State(app): axum::extract::State<crate::state::AppState>,
    axum::extract::Path(source_id): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    use axum::http::{HeaderValue, header};
    let config = app.config.get();
    let Some(source) = config.sources.get(&source_id) else {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_source",
            format!("no source has the id `{source_id}`"),
        )
        .into_response();
    };
    if !source.is_webhook() {
        let mut answer = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "not_a_webhook",
            format!("source `{source_id}` is a schedule or a polling source: it takes no requests"),
        )
        .into_response();
        answer
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(""));
        return answer;
    }
    let allow = [(header::ALLOW, HeaderValue::from_static("POST"))];
    if source.format != crate::config::BodyFormat::CloudEvents {
        let mut answer = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("source `{source_id}` takes POST; the OPTIONS check is answered on a source with `format: cloudevents`"),
        )
        .into_response();
        answer.headers_mut().extend(allow);
        return answer;
    }
    let Some(origin) = headers.get("webhook-request-origin").cloned() else {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing_origin",
            "the CloudEvents abuse-protection check needs a `WebHook-Request-Origin` header",
        )
        .into_response();
    };
    let mut answer = (StatusCode::OK, allow).into_response();
    let out = answer.headers_mut();
    out.insert("webhook-allowed-origin", origin);
    if headers.contains_key("webhook-request-rate") {
        out.insert("webhook-allowed-rate", HeaderValue::from_static("*"));
    }
    answer
}

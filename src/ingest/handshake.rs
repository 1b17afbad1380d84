//! Providers' checks that Ferry owns an endpoint (Slack's `url_verification`, Zoom's
//! `endpoint.url_validation`), answered the provider's way instead of taking an event. They
//! are answered only after the request's signature is verified: Zoom's answer is an HMAC under
//! the source's secret, which an unverified sender must not be able to ask for.

use crate::config::verify::{Handshake, SignatureScheme};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// The answer to a handshake, or `None` when the body is an ordinary event. A body that is
/// not JSON is left for the ingest path to refuse.
pub(super) fn answer(scheme: &SignatureScheme, body: &[u8]) -> Option<Response> {
    let handshake = scheme.handshake?;
    crate::json::check_depth(body).ok()?;
    let value: Value = serde_json::from_slice(body).ok()?;
    let answer = match handshake {
        Handshake::SlackUrlVerification => {
            if value.get("type")?.as_str()? != "url_verification" {
                return None;
            }
            json!({"challenge": value.get("challenge")?.as_str()?})
        }
        Handshake::ZoomUrlValidation => {
            if value.get("event")?.as_str()? != "endpoint.url_validation" {
                return None;
            }
            let plain = value.get("payload")?.get("plainToken")?.as_str()?;
            json!({
                "plainToken": plain,
                "encryptedToken": super::verify::zoom_token(&scheme.key, plain),
            })
        }
    };
    tracing::info!(scheme = %scheme.name, "answered the provider's endpoint check");
    Some((StatusCode::OK, axum::Json(answer)).into_response())
}

//! The one error type every HTTP handler returns, and the one place that turns it into the
//! JSON error body of DESIGN.md: `{"error": code, "message": text, "details": [...]}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Vec<serde_json::Value>,
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: Vec::new(),
            retry_after_secs: None,
        }
    }
    pub fn with_details(mut self, details: Vec<serde_json::Value>) -> Self {
        self.details = details;
        self
    }
    pub fn not_found(what: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no {what} has the id `{id}`"),
        )
    }
    /// `409 payload_expired`: `what` (`delivery `del_...``, `run `run_...``) cannot be sent
    /// or run again because `settings.payload_retention` dropped its bodies.
    pub fn payload_expired(what: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "payload_expired",
            format!(
                "the payload of {what} has expired (settings.payload_retention): there is nothing left to send, so it cannot be replayed; the record of what happened is kept"
            ),
        )
    }
    pub fn overloaded() -> Self {
        ApiError {
            retry_after_secs: Some(1),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "Ferry is overloaded; try again shortly",
            )
        }
    }

    /// The store cannot write (a full disk, an I/O error): the write was not made and is worth
    /// sending again later. What failed is in the log and at `/readyz`, not told to callers.
    pub fn store_unwritable() -> Self {
        ApiError {
            retry_after_secs: Some(STORE_RETRY_AFTER_SECS),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unwritable",
                "Ferry cannot write to its store right now; nothing was written. Try again later",
            )
        }
    }
}

/// The `Retry-After` of a `store_unwritable` answer: the writer tries a write every second,
/// and a disk takes longer than that to get room back.
pub const STORE_RETRY_AFTER_SECS: u64 = 5;

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::Overloaded => ApiError::overloaded(),
            // The store's writer logged what failed, once for the whole batch.
            crate::store::StoreError::Unwritable(_) | crate::store::StoreError::Write(_) => {
                ApiError::store_unwritable()
            }
            other => {
                tracing::error!(error = %other, "store error while answering a request");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the store failed; see the server log",
                )
            }
        }
    }
}

impl From<crate::engine::sandbox::SandboxError> for ApiError {
    /// Busy workers are overload (`503`, try again); an expression that overran its limits or
    /// took its worker down is the request's own failure (`422`).
    fn from(e: crate::engine::sandbox::SandboxError) -> Self {
        match e {
            crate::engine::sandbox::SandboxError::Busy(_)
            | crate::engine::sandbox::SandboxError::Unavailable(_) => ApiError {
                retry_after_secs: Some(1),
                ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", e.to_string())
            },
            other => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "expression_failed",
                other.to_string(),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.code, "message": self.message, "details": self.details});
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        response
    }
}

//! The management API under `/api/v1` (bearer token) and the health routes. Handlers read
//! through the store and hand retries to the deliverer; they hold no state of their own.

pub mod error;

use crate::app::AppState;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use error::ApiError;
use serde::Deserialize;
use serde_json::json;

pub fn routes(state: AppState) -> Router<AppState> {
    let v1 = Router::new()
        .route("/events/{id}", get(get_event))
        .route("/deliveries/{id}", get(get_delivery))
        .route("/deliveries/{id}/retry", post(retry_delivery))
        .route("/dead-letters", get(list_dead_letters))
        .route("/rejections", get(list_rejections))
        .route_layer(axum::middleware::from_fn_with_state(state, require_token));
    Router::new()
        .nest("/api/v1", v1)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// Constant-time token check: compares SHA-256 digests so neither content nor length leaks.
async fn require_token(State(app): State<AppState>, request: Request, next: Next) -> Response {
    use sha2::Digest;
    use subtle::ConstantTimeEq;
    let given = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    let Some(given) = given else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send `Authorization: Bearer <token>`",
        )
        .into_response();
    };
    let ok: bool = sha2::Sha256::digest(given.trim().as_bytes())
        .ct_eq(&sha2::Sha256::digest(app.api_token.as_bytes()))
        .into();
    if !ok {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the API token is not valid",
        )
        .into_response();
    }
    next.run(request).await
}

#[derive(Debug, Deserialize)]
pub struct Page {
    limit: Option<usize>,
    after: Option<String>,
}

impl Page {
    const DEFAULT: usize = 50;
    const MAX: usize = 500;
    fn limit(&self) -> Result<usize, ApiError> {
        match self.limit {
            None => Ok(Self::DEFAULT),
            Some(n) if (1..=Self::MAX).contains(&n) => Ok(n),
            Some(n) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_limit",
                format!("`limit` is {n}; use 1 to {}", Self::MAX),
            )),
        }
    }
}

fn page<T: serde::Serialize>(
    items: Vec<T>,
    limit: usize,
    cursor: impl Fn(&T) -> String,
) -> Json<serde_json::Value> {
    let next = if items.len() == limit {
        items.last().map(&cursor)
    } else {
        None
    };
    Json(json!({"data": items, "next": next}))
}

async fn get_event(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let key = id.clone();
    match app
        .store
        .read(move |c| crate::store::event(c, &key))
        .await?
    {
        Some(e) => Ok(Json(e).into_response()),
        None => Err(ApiError::not_found("event", &id)),
    }
}

async fn get_delivery(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let key = id.clone();
    match app
        .store
        .read(move |c| crate::store::delivery(c, &key))
        .await?
    {
        Some(d) => Ok(Json(d).into_response()),
        None => Err(ApiError::not_found("delivery", &id)),
    }
}

async fn retry_delivery(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match app.store.retry_delivery(&id, app.clock.now_ms()).await? {
        Some(job) => {
            tracing::info!(delivery_id = %job.id, event_id = %job.event_id, destination_id = %job.destination_id, "manual retry requested");
            app.deliverer.schedule(job);
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({"delivery_id": id, "status": "pending"})),
            )
                .into_response())
        }
        None => {
            let key = id.clone();
            match app
                .store
                .read(move |c| crate::store::delivery(c, &key))
                .await?
            {
                None => Err(ApiError::not_found("delivery", &id)),
                Some(d) => Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "not_dead",
                    format!(
                        "delivery `{id}` is {}; only a dead letter can be retried",
                        d.status.as_str()
                    ),
                )),
            }
        }
    }
}

async fn list_dead_letters(
    State(app): State<AppState>,
    Query(q): Query<Page>,
) -> Result<Response, ApiError> {
    let limit = q.limit()?;
    let after = q.after.clone();
    let items = app
        .store
        .read(move |c| crate::store::dead_letters(c, after.as_deref(), limit))
        .await?;
    Ok(page(items, limit, |d| d.id.clone()).into_response())
}

async fn list_rejections(
    State(app): State<AppState>,
    Query(q): Query<Page>,
) -> Result<Response, ApiError> {
    let limit = q.limit()?;
    let after = match &q.after {
        None => None,
        Some(a) => Some(a.parse::<i64>().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_cursor",
                format!("`after` is not a cursor from this list: `{a}`"),
            )
        })?),
    };
    let items = app
        .store
        .read(move |c| crate::store::rejections(c, after, limit))
        .await?;
    Ok(page(items, limit, |r| r.id.clone()).into_response())
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(app): State<AppState>) -> Response {
    match app.store.read(crate::store::ping).await {
        Ok(()) => Json(json!({"status": "ready"})).into_response(),
        Err(e) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("the store is not reachable: {e}"),
        )
        .into_response(),
    }
}

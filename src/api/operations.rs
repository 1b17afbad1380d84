//! Operating routes: `GET /metrics` (Prometheus text format), the alert rules with their state,
//! and pausing and resuming a destination (the destinations themselves, with their health, are
//! listed by `config_objects`).

use super::error::ApiError;
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// `GET /metrics`: counters and histograms as they stand, and the gauges read now.
#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
pub async fn metrics(State(app): State<AppState>) -> Result<Response, ApiError> {
    let now = app.clock.now_ms();
    let (backlog, dead, failed_runs) = app.store.backlog_dead_and_failed_runs(now).await?;
    let m = &app.metrics;
    let label = |id: &str| vec![("destination", id.to_string())];
    let config = app.config.get();
    for id in config.destinations.keys() {
        let pending = backlog
            .iter()
            .find(|b| &b.destination_id == id)
            .map_or(0, |b| b.pending);
        m.queue_depth.get_or_create(&label(id)).set(pending);
        let dead = dead.iter().find(|(d, _)| d == id).map_or(0, |(_, n)| *n);
        m.dead_letters.get_or_create(&label(id)).set(dead);
    }
    let oldest = backlog.iter().filter_map(|b| b.oldest_due).min();
    m.oldest_due_age
        .set(oldest.map_or(0.0, |t| (now - t).max(0) as f64 / 1000.0));
    m.failed_runs.set(failed_runs);
    m.store_writable
        .set(i64::from(app.store.unwritable().is_none()));
    for (id, health) in app.deliverer.health() {
        m.circuit_state
            .get_or_create(&label(&id))
            .set(health.circuit.gauge());
        m.destination_paused
            .get_or_create(&label(&id))
            .set(health.paused.is_some() as i64);
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        m.render(),
    )
        .into_response())
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PauseBody {
    reason: Option<String>,
}

pub fn pause_error(e: crate::deliver::PauseError) -> ApiError {
    match e {
        crate::deliver::PauseError::UnknownDestination(id) => {
            ApiError::not_found("destination", &id)
        }
        crate::deliver::PauseError::Store(e) => e.into(),
    }
}

/// `POST /api/v1/destinations/{id}/pause`: deliveries to it wait until it is resumed.
#[utoipa::path(post, path = "/api/v1/destinations/{id}/pause", tag = "destinations", security(("bearer" = [])), params(("id" = String, Path)),
    request_body(content = Option<crate::api::schemas::PauseDoc>, description = "optional"),
    responses((status = 200, description = "OK", body = crate::api::schemas::PauseAnswer), (status = 422, description = "the body is not valid", body = crate::api::schemas::ErrorBody), (status = 404, description = "not found", body = crate::api::schemas::ErrorBody), (status = 401, description = "missing or wrong token", body = crate::api::schemas::ErrorBody), (status = 403, description = "a read token on a write route", body = crate::api::schemas::ErrorBody)))]
pub async fn pause(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let body: PauseBody = super::runs::optional_json(&body)?;
    let reason = body
        .reason
        .unwrap_or_else(|| "paused through the API".into());
    let changed = app
        .deliverer
        .pause(&id, &reason)
        .await
        .map_err(pause_error)?;
    Ok((
        StatusCode::OK,
        Json(json!({"id": id, "paused": true, "changed": changed})),
    )
        .into_response())
}

/// `POST /api/v1/destinations/{id}/resume`: its held deliveries go at once.
#[utoipa::path(post, path = "/api/v1/destinations/{id}/resume", tag = "destinations", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 200, description = "OK", body = crate::api::schemas::PauseAnswer), (status = 404, description = "not found", body = crate::api::schemas::ErrorBody), (status = 401, description = "missing or wrong token", body = crate::api::schemas::ErrorBody), (status = 403, description = "a read token on a write route", body = crate::api::schemas::ErrorBody)))]
pub async fn resume(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let changed = app.deliverer.resume(&id).await.map_err(pause_error)?;
    Ok((
        StatusCode::OK,
        Json(json!({"id": id, "paused": false, "changed": changed})),
    )
        .into_response())
}

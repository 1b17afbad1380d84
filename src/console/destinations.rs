//! The destinations pages: each destination's health from its last attempts (success ratio,
//! attempt time p50 and p99, last error), its circuit or pause, its backlog and dead letters;
//! a destination's page adds its recent attempts and, for an admin, pause and resume (the
//! API's `POST /api/v1/destinations/{id}/pause` and `/resume`).

use super::overview::{DestinationLine, destination_lines};
use super::{Viewer, page, refuse_action};
use crate::api::error::ApiError;
use crate::state::AppState;
use crate::store::RecentAttempt;
use askama::Template;
use axum::extract::{Form, Path, State};
use axum::response::{IntoResponse, Redirect, Response};

/// Attempts a destination's health is taken from: its last ones, read through an index, so
/// the page costs the same on any store.
const HEALTH_ATTEMPTS: usize = 1000;
/// Attempts its page lists.
const LISTED_ATTEMPTS: usize = 25;

/// A destination's health, from its last [`HEALTH_ATTEMPTS`] attempts.
pub struct Health {
    pub attempts: usize,
    /// Succeeded over attempted, as a percentage.
    pub success: Option<String>,
    pub p50_ms: Option<i64>,
    pub p99_ms: Option<i64>,
}

fn health(attempts: &[RecentAttempt]) -> Health {
    let succeeded = attempts.iter().filter(|a| a.outcome == "succeeded").count();
    let mut times: Vec<u32> = attempts
        .iter()
        .map(|a| a.duration_ms.clamp(0, i64::from(u32::MAX)) as u32)
        .collect();
    times.sort_unstable();
    let at = |p| crate::telemetry::nearest_rank(&times, p).map(i64::from);
    Health {
        attempts: attempts.len(),
        success: (!attempts.is_empty())
            .then(|| format!("{:.1}%", succeeded as f64 * 100.0 / attempts.len() as f64)),
        p50_ms: at(0.5),
        p99_ms: at(0.99),
    }
}

pub struct DestinationRow {
    pub line: DestinationLine,
    pub url: String,
    pub health: Health,
}

#[derive(Template)]
#[template(path = "console/destinations.html")]
struct DestinationsPage {
    viewer: Option<Viewer>,
    page: &'static str,
    rows: Vec<DestinationRow>,
}

/// Every line of the destinations, with its health.
async fn rows(app: &AppState, only: Option<&str>) -> Result<Vec<DestinationRow>, ApiError> {
    let now = app.clock.now_ms();
    let config = app.config.get();
    let ids: Vec<String> = config
        .destinations
        .keys()
        .filter(|id| only.is_none_or(|o| o == id.as_str()))
        .cloned()
        .collect();
    let (backlog, dead, recent) = app
        .store
        .recent_attempts_backlog_and_dead(ids, HEALTH_ATTEMPTS, now)
        .await?;
    let lines = destination_lines(app, &backlog, &dead)
        .into_iter()
        .filter(|l| only.is_none_or(|o| o == l.id));
    Ok(lines
        .zip(recent)
        .map(|(line, attempts)| DestinationRow {
            url: config
                .destinations
                .get(&line.id)
                .map(|d| d.shown_url())
                .unwrap_or_default(),
            health: health(&attempts),
            line,
        })
        .collect())
}

/// `GET /destinations`.
pub async fn list(viewer: Viewer, State(app): State<AppState>) -> Response {
    match rows(&app, None).await {
        Ok(rows) => page(
            DestinationsPage {
                viewer: Some(viewer),
                page: "destinations",
                rows,
            }
            .render(),
        ),
        Err(e) => e.into_response(),
    }
}

/// One attempt as the destination's page lists it.
pub struct AttemptLine {
    pub delivery_id: String,
    pub attempt: i64,
    pub started_at: String,
    pub duration_ms: i64,
    pub outcome: String,
    pub outcome_class: &'static str,
    pub status_code: Option<i64>,
    pub error: Option<String>,
}

#[derive(Template)]
#[template(path = "console/destination.html")]
struct DestinationPage {
    viewer: Option<Viewer>,
    page: &'static str,
    can_act: bool,
    csrf: String,
    row: DestinationRow,
    consecutive_failures: u32,
    failing_since: Option<String>,
    paused: Option<crate::store::Pause>,
    paused_since: Option<String>,
    attempts: Vec<AttemptLine>,
}

/// `GET /destinations/{id}`.
pub async fn show(viewer: Viewer, State(app): State<AppState>, Path(id): Path<String>) -> Response {
    let mut found = match rows(&app, Some(&id)).await {
        Ok(rows) => rows,
        Err(e) => return e.into_response(),
    };
    let Some(row) = found.pop() else {
        return ApiError::not_found("destination", &id).into_response();
    };
    let recent = match app.store.recent_attempts(&id, LISTED_ATTEMPTS).await {
        Ok(recent) => recent,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let health = app
        .deliverer
        .health()
        .into_iter()
        .find(|(d, _)| *d == id)
        .map(|(_, h)| h);
    let attempts = recent
        .into_iter()
        .map(|a| AttemptLine {
            outcome_class: match a.outcome.as_str() {
                "succeeded" => "succeeded",
                "retry" => "pending",
                _ => "failed",
            },
            delivery_id: a.delivery_id,
            attempt: a.attempt,
            started_at: crate::clock::rfc3339(a.started_at),
            duration_ms: a.duration_ms,
            outcome: a.outcome,
            status_code: a.status_code,
            error: a.error,
        })
        .collect();
    let paused = health.as_ref().and_then(|h| h.paused.clone());
    page(
        DestinationPage {
            can_act: viewer.can_act(),
            csrf: viewer.csrf.clone(),
            viewer: Some(viewer),
            page: "destinations",
            consecutive_failures: health.as_ref().map_or(0, |h| h.consecutive_failures),
            failing_since: health
                .as_ref()
                .and_then(|h| h.failing_since)
                .map(crate::clock::rfc3339),
            paused_since: paused.as_ref().map(|p| crate::clock::rfc3339(p.since)),
            paused,
            row,
            attempts,
        }
        .render(),
    )
}

#[derive(serde::Deserialize)]
pub struct PauseForm {
    csrf: String,
    #[serde(default)]
    reason: String,
}

/// `POST /destinations/{id}/pause`: deliveries to it wait until it is resumed.
pub async fn pause(
    viewer: Viewer,
    State(app): State<AppState>,
    Path(id): Path<String>,
    Form(form): Form<PauseForm>,
) -> Response {
    if let Some(refused) = refuse_action(&viewer, &form.csrf) {
        return refused;
    }
    let reason = form.reason.trim();
    let reason = if reason.is_empty() {
        "paused from the console"
    } else {
        reason
    };
    match app.deliverer.pause(&id, reason).await {
        Ok(_) => {
            Redirect::to(&format!("/destinations/{}", crate::ids::in_path(&id))).into_response()
        }
        Err(e) => crate::api::pause_error(e).into_response(),
    }
}

/// `POST /destinations/{id}/resume`: its held deliveries go at once.
pub async fn resume(
    viewer: Viewer,
    State(app): State<AppState>,
    Path(id): Path<String>,
    Form(form): Form<super::pages::CsrfForm>,
) -> Response {
    if let Some(refused) = refuse_action(&viewer, &form.csrf) {
        return refused;
    }
    match app.deliverer.resume(&id).await {
        Ok(_) => {
            Redirect::to(&format!("/destinations/{}", crate::ids::in_path(&id))).into_response()
        }
        Err(e) => crate::api::pause_error(e).into_response(),
    }
}

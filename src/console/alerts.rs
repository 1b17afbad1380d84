//! The alerts page: each rule with its condition, severity, channels and cooldown, its state
//! (firing or not, since when, what is wrong) and when its last notice went, as
//! `GET /api/v1/alerts` shows them.

use super::{Viewer, page};
use crate::api::error::ApiError;
use crate::state::AppState;
use askama::Template;
use axum::extract::State;
use axum::response::{IntoResponse, Response};

pub struct RuleLine {
    pub id: String,
    pub condition: String,
    pub severity: &'static str,
    pub notify: String,
    pub cooldown: String,
    pub firing: bool,
    /// When it last started or stopped firing.
    pub since: Option<String>,
    pub subject: Option<String>,
    pub message: Option<String>,
    pub last_notice: Option<String>,
}

#[derive(Template)]
#[template(path = "console/alerts.html")]
struct AlertsPage {
    viewer: Option<Viewer>,
    page: &'static str,
    rules: Vec<RuleLine>,
}

/// `GET /alerts`.
pub async fn list(viewer: Viewer, State(app): State<AppState>) -> Response {
    let states = match app.store.read(crate::store::alert_states).await {
        Ok(states) => states,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let config = app.config.get();
    let rules = config
        .alerts
        .iter()
        .map(|rule| {
            let state = states.iter().find(|s| s.alert_id == rule.id);
            RuleLine {
                id: rule.id.clone(),
                condition: serde_json::to_string(&rule.condition).unwrap_or_default(),
                severity: rule.severity.as_str(),
                notify: rule.notify.join(", "),
                cooldown: humantime::format_duration(rule.cooldown).to_string(),
                firing: state.is_some_and(|s| s.firing),
                since: state.map(|s| crate::clock::rfc3339(s.since)),
                subject: state.map(|s| s.subject.clone()),
                message: state.map(|s| s.message.clone()),
                last_notice: state
                    .and_then(|s| s.last_notice_at)
                    .map(crate::clock::rfc3339),
            }
        })
        .collect();
    page(
        AlertsPage {
            viewer: Some(viewer),
            page: "alerts",
            rules,
        }
        .render(),
    )
}

//! The alerts page: each rule with its condition, severity, channels and cooldown, its state
//! (firing or not, since when, what is wrong), when its last notice went, and its last changes
//! (fired, resolved) with the notices each sent, as `GET /api/v1/alerts` shows them.

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
    pub history: Vec<ChangeLine>,
}

/// One change of a rule: when, firing or resolved, and each notice sent.
pub struct ChangeLine {
    pub at: String,
    pub firing: bool,
    pub subject: String,
    pub message: String,
    /// `ops`, or `ops (failed: why)`.
    pub notices: Vec<String>,
}

/// Changes shown per rule.
const CHANGES_SHOWN: usize = 20;

#[derive(Template)]
#[template(path = "console/alerts.html")]
struct AlertsPage {
    viewer: Option<Viewer>,
    page: &'static str,
    rules: Vec<RuleLine>,
}

/// `GET /alerts`.
pub async fn list(viewer: Viewer, State(app): State<AppState>) -> Response {
    let config = app.config.get();
    let ids: Vec<String> = config.alerts.iter().map(|r| r.id.clone()).collect();
    let read = app.store.alert_states_and_history(ids, CHANGES_SHOWN).await;
    let (states, histories) = match read {
        Ok(read) => read,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let rules = config
        .alerts
        .iter()
        .zip(histories)
        .map(|(rule, history)| {
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
                history: history
                    .into_iter()
                    .map(|c| ChangeLine {
                        at: crate::clock::rfc3339(c.at),
                        firing: c.firing,
                        subject: c.subject,
                        message: c.message,
                        notices: c
                            .notices
                            .into_iter()
                            .map(|n| match n.error {
                                None => n.channel,
                                Some(why) => format!("{} (failed: {why})", n.channel),
                            })
                            .collect(),
                    })
                    .collect(),
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

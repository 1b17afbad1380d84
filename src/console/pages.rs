//! The console's pages: sign-in and sign-out, the events list and an event with its runs,
//! deliveries and attempts. Each reads what the matching API route reads.

use super::session::{self, Sessions};
use super::{Viewer, csrf_refused, page, refuse_action};
use crate::state::AppState;
use askama::Template;
use axum::extract::{Extension, Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Redirect, Response};
use std::sync::Arc;

/// Events on one page of the list.
const EVENTS_PER_PAGE: usize = 50;

/// The statuses the events list filters by (empty: any).
const EVENT_STATUSES: [&str; 5] = ["", "pending", "failed", "succeeded", "unrouted"];

#[derive(Template)]
#[template(path = "console/sign_in.html")]
struct SignInPage {
    viewer: Option<Viewer>,
    page: &'static str,
    error: Option<String>,
}

pub async fn sign_in_form() -> Response {
    page(
        SignInPage {
            viewer: None,
            page: "sign-in",
            error: None,
        }
        .render(),
    )
}

#[derive(serde::Deserialize)]
pub struct SignIn {
    token: String,
}

/// `POST /sign-in`: a valid token opens a session and goes to the overview.
pub async fn sign_in(
    State(app): State<AppState>,
    Extension(sessions): Extension<Arc<Sessions>>,
    headers: HeaderMap,
    uri: Uri,
    Form(form): Form<SignIn>,
) -> Response {
    let now = app.clock.now_ms();
    // A browser that signs in again leaves no session behind (nor one planted for it).
    if let Some((old, _)) = sessions.find(&headers, now) {
        sessions.close(&old);
    }
    let digest = crate::api::token_digest(form.token.trim());
    let scope = match crate::api::scope_of(&app, &digest).await {
        Ok(scope) => scope,
        Err(e) => return e.into_response(),
    };
    let Some(scope) = scope else {
        tracing::warn!("console sign-in refused: the token is not valid");
        let form = SignInPage {
            viewer: None,
            page: "sign-in",
            error: Some(
                "That token is not valid. Tokens are shown once, when they are made.".into(),
            ),
        };
        return (StatusCode::UNAUTHORIZED, page(form.render())).into_response();
    };
    let (id, _) = match sessions.open(digest, scope, now) {
        Ok(opened) => opened,
        Err(e) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot open a session: {e}"),
            )
                .into_response();
        }
    };
    let cookie = session::set_cookie(Some(&id), session::over_https(&headers, &uri));
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

#[derive(serde::Deserialize)]
pub struct CsrfForm {
    pub csrf: String,
}

/// `POST /sign-out`: closes the session (its CSRF token is required).
pub async fn sign_out(
    viewer: Viewer,
    Extension(sessions): Extension<Arc<Sessions>>,
    headers: HeaderMap,
    uri: Uri,
    Form(form): Form<CsrfForm>,
) -> Response {
    if !session::csrf_is(&viewer.csrf, &form.csrf) {
        return csrf_refused();
    }
    sessions.close(&viewer.session_id);
    let cookie = session::set_cookie(None, session::over_https(&headers, &uri));
    ([(header::SET_COOKIE, cookie)], Redirect::to("/sign-in")).into_response()
}

#[derive(serde::Deserialize, Default)]
pub struct EventsQuery {
    #[serde(default)]
    source: String,
    #[serde(default, rename = "type")]
    event_type: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    /// `path=value` on the payload.
    #[serde(default, rename = "match")]
    field_match: String,
    /// A jq expression on the payload.
    #[serde(default)]
    jq: String,
    #[serde(default)]
    after: String,
}

impl EventsQuery {
    /// The query string of this filter at the page after `after`.
    fn at(&self, after: &str) -> String {
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("source", &self.source)
            .append_pair("type", &self.event_type)
            .append_pair("status", &self.status)
            .append_pair("since", &self.since)
            .append_pair("until", &self.until)
            .append_pair("match", &self.field_match)
            .append_pair("jq", &self.jq)
            .append_pair("after", after)
            .finish();
        format!("/events?{query}")
    }
}

#[derive(Template)]
#[template(path = "console/events.html")]
struct EventsPage {
    viewer: Option<Viewer>,
    page: &'static str,
    q: EventsQuery,
    statuses: [&'static str; 5],
    error: Option<String>,
    events: Vec<crate::store::EventSummary>,
    next: Option<String>,
}

/// `GET /events?source=&type=&status=&since=&until=&match=&jq=&after=`: newest first, a page
/// at a time, as `GET /api/v1/events` finds them.
pub async fn events(
    viewer: Viewer,
    State(app): State<AppState>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let (q, mut error) = match query {
        Ok(Query(q)) => (q, None),
        Err(e) => (
            EventsQuery::default(),
            Some(format!("the filters are not valid: {e}")),
        ),
    };
    let given = |s: &str| Some(s.trim().to_string()).filter(|s| !s.is_empty());
    let status = match q.status.as_str() {
        "" => None,
        s if EVENT_STATUSES.contains(&s) => Some(s.to_string()),
        other => {
            error = Some(format!(
                "status `{other}` is not one of pending, failed, succeeded, unrouted"
            ));
            None
        }
    };
    let mut time = |field: &str, text: &str| {
        super::time_filter(field, text).unwrap_or_else(|e| {
            error = Some(e);
            None
        })
    };
    let filter = crate::store::EventFilter {
        source: given(&q.source),
        event_type: given(&q.event_type),
        since: time("since", &q.since),
        until: time("until", &q.until),
        status,
    };
    let (events, next) = if error.is_some() {
        (Vec::new(), None)
    } else {
        let (jq, field_match) = (given(&q.jq), given(&q.field_match));
        match crate::api::find_events(
            &app,
            filter,
            given(&q.after),
            EVENTS_PER_PAGE,
            jq.as_deref(),
            field_match.as_deref(),
        )
        .await
        {
            Ok(found) => found,
            // A filter that does not compile is the person's to fix, on the page.
            Err(e) if e.status.is_client_error() => {
                error = Some(e.message);
                (Vec::new(), None)
            }
            Err(e) => return e.into_response(),
        }
    };
    let next = next.map(|after| q.at(&after));
    page(
        EventsPage {
            viewer: Some(viewer),
            page: "events",
            q,
            statuses: EVENT_STATUSES,
            error,
            events,
            next,
        }
        .render(),
    )
}

/// A run's steps as the event page shows them.
pub struct RunSteps {
    pub run_id: String,
    pub steps: Vec<super::flows::ReportStep>,
}

#[derive(Template)]
#[template(path = "console/event.html")]
struct EventPage {
    viewer: Option<Viewer>,
    page: &'static str,
    /// Whether the viewer may act (the action buttons are drawn only then).
    can_act: bool,
    csrf: String,
    event: crate::store::EventView,
    payload: String,
    headers: String,
    steps: Vec<RunSteps>,
}

impl EventPage {
    fn steps_of(&self, run_id: &str) -> &[super::flows::ReportStep] {
        self.steps
            .iter()
            .find(|r| r.run_id == run_id)
            .map_or(&[], |r| r.steps.as_slice())
    }
}

/// `GET /events/{id}`: the event, its payload and headers, each run step by step and each
/// delivery with every attempt.
pub async fn event(
    viewer: Viewer,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Response {
    let read = app.store.event_with_attempts_and_steps(&id).await;
    let (event, details) = match read {
        Ok(Some(found)) => found,
        Ok(None) => {
            return crate::api::error::ApiError::not_found("event", &id).into_response();
        }
        Err(e) => return crate::api::error::ApiError::from(e).into_response(),
    };
    let steps = details
        .iter()
        .map(|detail| RunSteps {
            run_id: detail.summary.id.clone(),
            steps: detail.steps.iter().map(super::flows::report_step).collect(),
        })
        .collect();
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
    page(
        EventPage {
            can_act: viewer.can_act(),
            csrf: viewer.csrf.clone(),
            viewer: Some(viewer),
            page: "events",
            payload: pretty(&event.payload),
            headers: pretty(&event.headers),
            event,
            steps,
        }
        .render(),
    )
}

#[derive(serde::Deserialize)]
pub struct ReplayRunForm {
    csrf: String,
    #[serde(default)]
    use_current_flow: Option<String>,
}

/// `POST /runs/{id}/replay` (an admin): the failed run again from the step that failed, as
/// `POST /api/v1/runs/{id}/replay` does; back to its event.
pub async fn replay_run(
    viewer: Viewer,
    State(app): State<AppState>,
    Path(id): Path<String>,
    Form(form): Form<ReplayRunForm>,
) -> Response {
    if let Some(refused) = refuse_action(&viewer, &form.csrf) {
        return refused;
    }
    let current = form.use_current_flow.is_some_and(|v| !v.is_empty());
    if let Err(e) = crate::api::replay_failed_run(&app, &id, current).await {
        return e.into_response();
    }
    match app.store.run_summary(&id).await {
        Ok(Some(run)) => {
            Redirect::to(&format!("/events/{}", crate::ids::in_path(&run.event_id))).into_response()
        }
        Ok(None) => crate::api::error::ApiError::not_found("run", &id).into_response(),
        Err(e) => crate::api::error::ApiError::from(e).into_response(),
    }
}

/// `POST /deliveries/{id}/retry` (an `admin` session, its CSRF token): sends a dead letter
/// again, as `POST /api/v1/deliveries/{id}/retry` does, and goes back to its event.
pub async fn retry_delivery(
    viewer: Viewer,
    State(app): State<AppState>,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Some(refused) = refuse_action(&viewer, &form.csrf) {
        return refused;
    }
    if let Err(e) = crate::api::retry_dead_letter(&app, &id).await {
        return e.into_response();
    }
    to_event_of(&app, &id).await
}

/// `GET /deliveries/{id}`: the delivery on its event's page.
pub async fn delivery(
    _viewer: Viewer,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Response {
    to_event_of(&app, &id).await
}

/// To the page of delivery `id`'s event, at the delivery.
async fn to_event_of(app: &AppState, id: &str) -> Response {
    match app.store.delivery(id).await {
        Ok(Some(d)) => Redirect::to(&format!(
            "/events/{}#{}",
            crate::ids::in_path(&d.event_id),
            crate::ids::in_path(&d.id)
        ))
        .into_response(),
        Ok(None) => crate::api::error::ApiError::not_found("delivery", id).into_response(),
        Err(e) => crate::api::error::ApiError::from(e).into_response(),
    }
}

/// `POST /events/{id}/replay` (an admin): the event through the flows that take it now, as
/// `POST /api/v1/events/{id}/replay` does; back to the event, whose new runs show.
pub async fn replay_event(
    viewer: Viewer,
    State(app): State<AppState>,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Some(refused) = refuse_action(&viewer, &form.csrf) {
        return refused;
    }
    match crate::api::replay_event(&app, &id).await {
        Ok(_) => Redirect::to(&format!("/events/{}", crate::ids::in_path(&id))).into_response(),
        Err(e) => e.into_response(),
    }
}

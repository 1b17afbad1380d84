//! The console's pages: sign-in and sign-out, the overview, the events list and an event with
//! its runs, deliveries and attempts. Each reads what the matching API route reads.

use super::session::{self, Sessions};
use super::{Viewer, page};
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
    csrf: String,
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

fn csrf_refused() -> Response {
    (
        StatusCode::FORBIDDEN,
        "the form's CSRF token is missing or wrong: reload the page and try again",
    )
        .into_response()
}

/// One destination's line on the overview.
struct DestinationLine {
    id: String,
    circuit: &'static str,
    circuit_class: &'static str,
    pending: i64,
    oldest_due: Option<String>,
    dead: i64,
}

#[derive(Template)]
#[template(path = "console/overview.html")]
struct OverviewPage {
    viewer: Option<Viewer>,
    page: &'static str,
    events: i64,
    pending: i64,
    dead: i64,
    rejected: i64,
    destinations: Vec<DestinationLine>,
}

/// `GET /`: what is stored, what waits, what failed, each destination's state.
pub async fn overview(viewer: Viewer, State(app): State<AppState>) -> Response {
    let now = app.clock.now_ms();
    let read = app
        .store
        .read(move |c| {
            Ok((
                crate::store::count_events(c)?,
                crate::store::count_rejections(c)?,
                crate::store::backlog(c, now)?,
                crate::store::dead_by_destination(c)?,
            ))
        })
        .await;
    let (events, rejected, backlog, dead) = match read {
        Ok(read) => read,
        Err(e) => return crate::api::error::ApiError::from(e).into_response(),
    };
    // Totals over every destination, those no longer configured included.
    let pending = backlog.iter().map(|b| b.pending).sum();
    let dead_total = dead.iter().map(|(_, n)| n).sum();
    let health = app.deliverer.health();
    let destinations = app
        .config
        .get()
        .destinations
        .keys()
        .map(|id| {
            let circuit = health
                .iter()
                .find(|(d, _)| d == id)
                .map(|(_, h)| {
                    if h.paused.is_some() {
                        "paused"
                    } else {
                        h.circuit.as_str()
                    }
                })
                .unwrap_or("closed");
            let waiting = backlog.iter().find(|b| b.destination_id == *id);
            DestinationLine {
                id: id.clone(),
                circuit,
                circuit_class: match circuit {
                    "closed" => "succeeded",
                    "half_open" | "paused" => "pending",
                    _ => "failed",
                },
                pending: waiting.map_or(0, |b| b.pending),
                oldest_due: waiting
                    .and_then(|b| b.oldest_due)
                    .map(crate::clock::rfc3339),
                dead: dead.iter().find(|(d, _)| d == id).map_or(0, |(_, n)| *n),
            }
        })
        .collect::<Vec<_>>();
    page(
        OverviewPage {
            viewer: Some(viewer),
            page: "overview",
            events,
            pending,
            dead: dead_total,
            rejected,
            destinations,
        }
        .render(),
    )
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
    after: String,
}

#[derive(Template)]
#[template(path = "console/events.html")]
struct EventsPage {
    viewer: Option<Viewer>,
    page: &'static str,
    source: String,
    event_type: String,
    status: String,
    statuses: [&'static str; 5],
    error: Option<String>,
    events: Vec<crate::store::EventSummary>,
    next: Option<String>,
}

/// `GET /events?source=&type=&status=&after=`: newest first, a page at a time.
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
    let filter = crate::store::EventFilter {
        source: Some(q.source.clone()).filter(|s| !s.is_empty()),
        event_type: Some(q.event_type.clone()).filter(|s| !s.is_empty()),
        since: None,
        until: None,
        status,
    };
    let after = Some(q.after.clone()).filter(|a| !a.is_empty());
    let read = app
        .store
        .read(move |c| crate::store::events(c, &filter, after.as_deref(), EVENTS_PER_PAGE))
        .await;
    let events = match read {
        Ok(events) => events,
        Err(e) => return crate::api::error::ApiError::from(e).into_response(),
    };
    let next = (events.len() == EVENTS_PER_PAGE)
        .then(|| events.last())
        .flatten()
        .map(|last| {
            let query = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("source", &q.source)
                .append_pair("type", &q.event_type)
                .append_pair("status", &q.status)
                .append_pair("after", &last.id)
                .finish();
            format!("/events?{query}")
        });
    page(
        EventsPage {
            viewer: Some(viewer),
            page: "events",
            source: q.source,
            event_type: q.event_type,
            status: q.status,
            statuses: EVENT_STATUSES,
            error,
            events,
            next,
        }
        .render(),
    )
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
}

/// `GET /events/{id}`: the event, its payload and headers, each run and each delivery with
/// every attempt.
pub async fn event(
    viewer: Viewer,
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Response {
    let key = id.clone();
    let read = app
        .store
        .read(move |c| {
            let Some(mut event) = crate::store::event(c, &key)? else {
                return Ok(None);
            };
            for run in &mut event.runs {
                for delivery in &mut run.deliveries {
                    if let Some(full) = crate::store::delivery(c, &delivery.id)? {
                        *delivery = full;
                    }
                }
            }
            Ok(Some(event))
        })
        .await;
    let event = match read {
        Ok(Some(event)) => event,
        Ok(None) => {
            return crate::api::error::ApiError::not_found("event", &id).into_response();
        }
        Err(e) => return crate::api::error::ApiError::from(e).into_response(),
    };
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
        }
        .render(),
    )
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
    let key = id.clone();
    match app
        .store
        .read(move |c| crate::store::delivery(c, &key))
        .await
    {
        Ok(Some(d)) => Redirect::to(&format!("/events/{}", d.event_id)).into_response(),
        Ok(None) => crate::api::error::ApiError::not_found("delivery", &id).into_response(),
        Err(e) => crate::api::error::ApiError::from(e).into_response(),
    }
}

/// Why a state-changing form is refused: a wrong CSRF token, or a `read` session.
fn refuse_action(viewer: &Viewer, csrf: &str) -> Option<Response> {
    if !session::csrf_is(&viewer.csrf, csrf) {
        return Some(csrf_refused());
    }
    if !viewer.can_act() {
        return Some(
            (
                StatusCode::FORBIDDEN,
                "this session's token has the `read` scope: it sees everything and changes nothing",
            )
                .into_response(),
        );
    }
    None
}

//! The console: server-rendered pages at `/` for people, drawn from the same store reads as the
//! REST API (no second source of truth). Signing in with an API token opens a session
//! (`session.rs`). Every console answer carries a strict Content-Security-Policy (nothing
//! inline, nothing from elsewhere) and refuses to be framed; every form that changes something
//! carries the session's CSRF token, and a cross-origin `POST` is refused. Templates are in
//! `templates/console/` (askama: checked at compile time, escaped), the style sheet and the
//! one script (`console.js`, which only adds to pages that work without it) are embedded.
//! The overview and the live tail are in `overview.rs`, the other pages in `pages.rs`.

mod alerts;
mod builder;
mod dead_letters;
mod destinations;
mod diagram;
mod flows;
mod overview;
mod pages;
pub mod session;
mod sources;

use crate::api::Scope;
use crate::state::AppState;
use axum::Router;
use axum::extract::{FromRequestParts, Request};
use axum::http::{HeaderValue, StatusCode, header, request::Parts};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use session::Sessions;
use std::sync::Arc;

/// The console's routes, with the sessions they share.
pub fn routes(sessions: Arc<Sessions>) -> Router<AppState> {
    Router::new()
        .route("/", get(overview::overview))
        .route("/events", get(pages::events))
        .route("/events/tail", get(overview::tail))
        .route("/events/{id}/replay", post(pages::replay_event))
        .route("/events/{id}", get(pages::event))
        .route("/deliveries/{id}/retry", post(pages::retry_delivery))
        .route("/deliveries/{id}", get(pages::delivery))
        .route("/runs/{id}/replay", post(pages::replay_run))
        .route("/destinations", get(destinations::list))
        .route("/destinations/{id}", get(destinations::show))
        .route("/destinations/{id}/pause", post(destinations::pause))
        .route("/destinations/{id}/resume", post(destinations::resume))
        .route("/sources", get(sources::list))
        .route("/sources/{id}", get(sources::show))
        .route("/alerts", get(alerts::list))
        .route("/flows", get(flows::list))
        .route("/flows/new", get(flows::new))
        .route("/flows/builder", post(flows::post))
        .route("/flows/{id}", get(flows::show))
        .route("/flows/{id}/edit", get(flows::edit))
        .route("/console/check-jq", post(flows::check_jq))
        .route("/dead-letters", get(dead_letters::list))
        .route("/dead-letters/confirm", get(dead_letters::confirm))
        .route("/dead-letters/replay", post(dead_letters::replay_matching))
        .route(
            "/dead-letters/replay-selected",
            post(dead_letters::replay_selected),
        )
        .route("/sign-in", get(pages::sign_in_form).post(pages::sign_in))
        .route("/sign-out", post(pages::sign_out))
        .route("/console/style.css", get(style))
        .route("/console/app.js", get(script))
        .layer(axum::middleware::from_fn(same_origin_posts))
        .layer(axum::middleware::map_response(security_headers))
        .layer(axum::Extension(sessions))
}

/// The policy of every console answer: the console's own style sheet and script and nothing
/// else (nothing inline), requests only to itself, forms only to itself, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "same-origin"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// Refuses a `POST` that does not come from this server's own pages: its `Origin` (or, from a
/// browser that sends none, its `Referer`) must name this server's host: `X-Forwarded-Host`
/// behind a proxy that sets it, else `Host`. Forms of other sites cannot sign in or act,
/// whatever the cookie's `SameSite` does in an old browser.
async fn same_origin_posts(request: Request, next: Next) -> Response {
    if request.method() == axum::http::Method::POST {
        let headers = request.headers();
        let text = |name| {
            headers
                .get(name)
                .and_then(|h: &HeaderValue| h.to_str().ok())
        };
        let host = text(header::HeaderName::from_static("x-forwarded-host"))
            .or_else(|| text(header::HOST));
        let from = text(header::ORIGIN)
            .or_else(|| text(header::REFERER))
            .and_then(|o| o.split_once("://"))
            .map(|(_, rest)| rest.split('/').next().unwrap_or(rest));
        if host.is_none() || from != host {
            return (
                StatusCode::FORBIDDEN,
                "a form of another site cannot act here: the request's Origin (or Referer) is not this server",
            )
                .into_response();
        }
    }
    next.run(request).await
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", include_str!("console.css"))
}

/// The console's one script: the live tail, jq checked as it is typed, selecting rows. Every
/// page works without it; it only adds.
async fn script() -> Response {
    asset("text/javascript; charset=utf-8", include_str!("console.js"))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// The person signed in, as the pages show them.
pub struct Viewer {
    pub scope: Scope,
    pub scope_name: &'static str,
    pub csrf: String,
    pub session_id: String,
}

impl Viewer {
    /// Whether this viewer may change things (an `admin` token).
    pub fn can_act(&self) -> bool {
        self.scope == Scope::Admin
    }
}

/// A request without a live session goes to the sign-in page; one whose token was revoked has
/// its session closed.
impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, Response> {
        let Some(sessions) = parts.extensions.get::<Arc<Sessions>>().cloned() else {
            return Err((
                StatusCode::INTERNAL_SERVER_ERROR,
                "the console's sessions are not set up",
            )
                .into_response());
        };
        let now = app.clock.now_ms();
        let Some((id, session)) = sessions.find(&parts.headers, now) else {
            return Err(Redirect::to("/sign-in").into_response());
        };
        let scope = crate::api::scope_of(app, &session.token_digest)
            .await
            .map_err(IntoResponse::into_response)?;
        let Some(scope) = scope else {
            sessions.close(&id);
            return Err(Redirect::to("/sign-in").into_response());
        };
        Ok(Viewer {
            scope,
            scope_name: match scope {
                Scope::Admin => "admin",
                Scope::Read => "read",
            },
            csrf: session.csrf,
            session_id: id,
        })
    }
}

/// A rendered template as a page, or `500` saying it could not be drawn.
fn page(rendered: Result<String, askama::Error>) -> Response {
    match rendered {
        Ok(html) => Html(html).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the page could not be drawn: {e}"),
        )
            .into_response(),
    }
}

fn csrf_refused() -> Response {
    (
        StatusCode::FORBIDDEN,
        "the form's CSRF token is missing or wrong: reload the page and try again",
    )
        .into_response()
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

/// A time typed in a filter: RFC 3339, or what a `datetime-local` field sends
/// (`2026-12-06T10:30`, taken as UTC); empty is no bound.
fn time_filter(field: &str, text: &str) -> Result<Option<i64>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let with_zone = if text.len() == 16 && !text.ends_with(['Z', 'z']) {
        format!("{text}:00Z")
    } else if text.len() == 19 && !text.ends_with(['Z', 'z']) {
        format!("{text}Z")
    } else {
        text.to_string()
    };
    crate::clock::parse_rfc3339(&with_zone)
        .map(Some)
        .ok_or_else(|| {
            format!("`{field}` is not a time: write it as 2026-12-06T10:30:00Z (RFC 3339; UTC when no offset is given)")
        })
}

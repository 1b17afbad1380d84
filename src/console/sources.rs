//! The sources pages: each source's ingest URL to paste into the sending app (built from
//! `settings.public_url`), how its requests are verified, where its event type and
//! idempotency key come from, its last event; a source's page adds its recent events and its
//! refusals from the rejected log with each one's reason (`GET /api/v1/events?source=`,
//! `GET /api/v1/rejections`).

use super::{Viewer, page};
use crate::api::error::ApiError;
use crate::config::verify::Algorithm;
use crate::config::{Config, FieldRef, SignatureEncoding, Source, Verify};
use crate::state::AppState;
use askama::Template;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

/// Recent events and refusals a source's page lists.
const LISTED: usize = 20;

pub struct SourceLine {
    pub id: String,
    pub ingest_url: String,
    pub verification: String,
    pub event_type: String,
    pub idempotency_key: String,
    /// The last event's time, if it has had one since this process started or in the store.
    pub last_event: Option<String>,
}

/// Where the sending app posts: `settings.public_url`, or else the address this request came
/// to (so the URL is right on a laptop before any setting).
fn base_url(config: &Config, headers: &HeaderMap) -> String {
    if let Some(url) = &config.settings.public_url {
        return url.as_str().trim_end_matches('/').to_string();
    }
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1:8080");
    format!("http://{host}")
}

fn verification(verify: &Verify) -> String {
    match verify {
        Verify::None => "none: any request is taken".into(),
        Verify::Basic { .. } => {
            "basic auth: `Authorization: Basic` with the configured credentials".into()
        }
        Verify::Bearer { .. } => {
            "a bearer token: `Authorization: Bearer` with the configured token".into()
        }
        Verify::Signature(s) => {
            let algorithm = match s.algorithm {
                Algorithm::Sha1 => "SHA1",
                Algorithm::Sha256 => "SHA256",
                Algorithm::Sha512 => "SHA512",
            };
            let encoding = match s.encoding {
                SignatureEncoding::Hex => "hex",
                SignatureEncoding::Base64 => "base64",
            };
            let mut text = format!(
                "{}: HMAC-{algorithm} ({encoding}) in `{}`",
                s.name, s.header
            );
            if !s.prefix.is_empty() {
                text.push_str(&format!(" after `{}`", s.prefix));
            }
            if let Some(t) = &s.timestamp {
                text.push_str(&format!(
                    "; timestamps within {}",
                    humantime::format_duration(t.tolerance)
                ));
            }
            text
        }
    }
}

fn field(field: &FieldRef) -> String {
    match field {
        FieldRef::Body(expr) => format!("the body: `{}`", expr.code()),
        FieldRef::Header(name) => format!("the header `{name}`"),
    }
}

fn line(app: &AppState, base: &str, source: &Source) -> SourceLine {
    let last = app.activity.last(&source.id);
    SourceLine {
        id: source.id.clone(),
        ingest_url: format!("{base}/in/{}", crate::ids::in_path(&source.id)),
        verification: verification(&source.verify),
        event_type: field(&source.event_type),
        idempotency_key: source
            .idempotency_key
            .as_ref()
            .map(field)
            .unwrap_or_else(|| "none: every request is a new event".into()),
        // `last` is the process start when the source has had no event.
        last_event: app
            .activity
            .has_seen(&source.id)
            .then(|| crate::clock::rfc3339(last)),
    }
}

#[derive(Template)]
#[template(path = "console/sources.html")]
struct SourcesPage {
    viewer: Option<Viewer>,
    page: &'static str,
    sources: Vec<SourceLine>,
    public_url_set: bool,
}

/// `GET /sources`.
pub async fn list(viewer: Viewer, State(app): State<AppState>, headers: HeaderMap) -> Response {
    let config = app.config.get();
    let base = base_url(&config, &headers);
    let sources = config
        .sources
        .values()
        .map(|s| line(&app, &base, s))
        .collect();
    page(
        SourcesPage {
            viewer: Some(viewer),
            page: "sources",
            sources,
            public_url_set: config.settings.public_url.is_some(),
        }
        .render(),
    )
}

#[derive(Template)]
#[template(path = "console/source.html")]
struct SourcePage {
    viewer: Option<Viewer>,
    page: &'static str,
    source: SourceLine,
    public_url_set: bool,
    events: Vec<crate::store::EventSummary>,
    rejections: Vec<crate::store::RejectionView>,
}

/// `GET /sources/{id}`.
pub async fn show(
    viewer: Viewer,
    State(app): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let config = app.config.get();
    let Some(source) = config.sources.get(&id) else {
        return ApiError::not_found("source", &id).into_response();
    };
    let base = base_url(&config, &headers);
    let read = app.store.events_and_rejections_of(&id, LISTED).await;
    let (events, rejections) = match read {
        Ok(read) => read,
        Err(e) => return ApiError::from(e).into_response(),
    };
    page(
        SourcePage {
            viewer: Some(viewer),
            page: "sources",
            source: line(&app, &base, source),
            public_url_set: config.settings.public_url.is_some(),
            events,
            rejections,
        }
        .render(),
    )
}

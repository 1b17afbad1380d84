//! The sources pages: each webhook source's ingest URL to paste into the sending app (built
//! from `settings.public_url`), a schedule's or a polling source's timing and a polling
//! source's health (its failures in a row and the last reason), how requests are verified, where its event type and
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
    /// `webhook`, `schedule` or `poll`.
    pub kind: &'static str,
    /// A webhook's address; a schedule's or a poll's timing.
    pub ingest_url: String,
    /// A polling source's health: how its last polls went.
    pub health: Option<Health>,
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

/// How a polling source's last polls went, from what it keeps in the store.
pub struct Health {
    pub failing: bool,
    pub text: String,
}

async fn health(app: &AppState, source: &Source) -> Option<Health> {
    source.poll.as_ref()?;
    let state: crate::config::poll::PollState = match app.store.source_state(&source.id).await {
        Ok(Some(text)) => serde_json::from_str(&text).unwrap_or_default(),
        Ok(None) => {
            return Some(Health {
                failing: false,
                text: "not polled yet".into(),
            });
        }
        Err(e) => {
            return Some(Health {
                failing: true,
                text: format!("its state cannot be read: {e}"),
            });
        }
    };
    let worked = state
        .worked_at
        .map(crate::clock::rfc3339)
        .unwrap_or_else(|| "never".into());
    Some(if state.failures > 0 {
        Health {
            failing: true,
            text: format!(
                "failing: {} poll{} in a row; the last: {}; last worked: {worked}",
                state.failures,
                if state.failures == 1 { "" } else { "s" },
                state.last_error.as_deref().unwrap_or("no reason kept")
            ),
        }
    } else {
        Health {
            failing: false,
            text: format!("polling; last worked: {worked}"),
        }
    })
}

/// When a schedule ticks or a source polls, in words.
fn timing(source: &Source) -> Option<String> {
    let ticks =
        |t: &crate::config::schedule::Ticks| format!("cron `{}` in {}", t.pattern, t.timezone_name);
    if let Some(s) = &source.schedule {
        return Some(format!(
            "ticks on {}, emits `{}`",
            ticks(&s.ticks),
            s.event_type
        ));
    }
    let poll = source.poll.as_ref()?;
    let when = match &poll.when {
        crate::config::poll::PollWhen::Every(every) => {
            format!("every {}", humantime::format_duration(*every))
        }
        crate::config::poll::PollWhen::Cron(t) => format!("on {}", ticks(t)),
    };
    Some(format!(
        "polls {} {when}",
        crate::config::redact::url::shown(poll.url.as_str(), &poll.request.secret_query_params)
    ))
}

async fn line(app: &AppState, base: &str, source: &Source) -> SourceLine {
    let last = app.activity.last(&source.id);
    let kind = if source.schedule.is_some() {
        "schedule"
    } else if source.poll.is_some() {
        "poll"
    } else {
        "webhook"
    };
    SourceLine {
        id: source.id.clone(),
        kind,
        ingest_url: timing(source)
            .unwrap_or_else(|| format!("{base}/in/{}", crate::ids::in_path(&source.id))),
        health: health(app, source).await,
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
    let mut sources = Vec::with_capacity(config.sources.len());
    for s in config.sources.values() {
        sources.push(line(&app, &base, s).await);
    }
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
            source: line(&app, &base, source).await,
            public_url_set: config.settings.public_url.is_some(),
            events,
            rejections,
        }
        .render(),
    )
}

//! The dead letters page: dead deliveries filtered by destination, error and time, newest
//! first; replay the ones selected, or every one the filter matches after a confirmation that
//! says how many. The replays are the API's (`POST /api/v1/deliveries/{id}/retry`,
//! `POST /api/v1/dead-letters/replay`).

use super::{Viewer, page, refuse_action, time_filter};
use crate::api::error::ApiError;
use crate::state::AppState;
use crate::store::{DeadFilter, DeliveryView};
use askama::Template;
use axum::extract::{Form, Query, State};
use axum::response::{IntoResponse, Redirect, Response};

/// Dead letters on one page.
const PER_PAGE: usize = 50;

/// The filter, as the page's form and links carry it.
#[derive(serde::Deserialize, Default, Clone)]
pub struct DeadQuery {
    #[serde(default)]
    destination: String,
    #[serde(default)]
    error: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    #[serde(default)]
    before: String,
    /// After a replay: how many were sent again, and how many could not be.
    #[serde(default)]
    replayed: Option<u64>,
    #[serde(default)]
    skipped: Option<u64>,
}

impl DeadQuery {
    /// The store's filter, or what is wrong with the form.
    fn filter(&self) -> Result<DeadFilter, String> {
        let given = |s: &str| Some(s.trim().to_string()).filter(|s| !s.is_empty());
        Ok(DeadFilter {
            destination_id: given(&self.destination),
            error: given(&self.error),
            since: time_filter("since", &self.since)?,
            until: time_filter("until", &self.until)?,
        })
    }

    /// The filter as a query string (without the page).
    fn query(&self) -> String {
        url::form_urlencoded::Serializer::new(String::new())
            .append_pair("destination", &self.destination)
            .append_pair("error", &self.error)
            .append_pair("since", &self.since)
            .append_pair("until", &self.until)
            .finish()
    }
}

#[derive(Template)]
#[template(path = "console/dead_letters.html")]
struct DeadLettersPage {
    viewer: Option<Viewer>,
    page: &'static str,
    can_act: bool,
    csrf: String,
    q: DeadQuery,
    destinations: Vec<String>,
    error: Option<String>,
    letters: Vec<DeliveryView>,
    next: Option<String>,
    filter_query: String,
}

/// `GET /dead-letters`: the filter, the page of dead deliveries, the replay buttons.
pub async fn list(
    viewer: Viewer,
    State(app): State<AppState>,
    query: Result<Query<DeadQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let (q, mut error) = match query {
        Ok(Query(q)) => (q, None),
        Err(e) => (
            DeadQuery::default(),
            Some(format!("the filters are not valid: {e}")),
        ),
    };
    let filter = match q.filter() {
        Ok(filter) => filter,
        Err(e) => {
            error = Some(e);
            DeadFilter::default()
        }
    };
    let before = Some(q.before.clone()).filter(|b| !b.is_empty());
    let read = app
        .store
        .dead_delivery_page(&filter, before.as_deref(), PER_PAGE)
        .await;
    let letters = match read {
        Ok(letters) => letters,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let filter_query = q.query();
    let next = (letters.len() == PER_PAGE)
        .then(|| letters.last())
        .flatten()
        .map(|last| {
            let mut at = url::form_urlencoded::Serializer::new(String::new());
            at.append_pair("before", &last.id);
            format!("/dead-letters?{filter_query}&{}", at.finish())
        });
    page(
        DeadLettersPage {
            can_act: viewer.can_act(),
            csrf: viewer.csrf.clone(),
            viewer: Some(viewer),
            page: "dead-letters",
            destinations: app.config.get().destinations.keys().cloned().collect(),
            q,
            error,
            letters,
            next,
            filter_query,
        }
        .render(),
    )
}

#[derive(Template)]
#[template(path = "console/dead_letters_confirm.html")]
struct ConfirmPage {
    viewer: Option<Viewer>,
    page: &'static str,
    can_act: bool,
    csrf: String,
    q: DeadQuery,
    matched: usize,
    /// The bound the replay keeps: deliveries made before the count was taken (the filter's
    /// own `until` when it is earlier).
    until: String,
}

/// `GET /dead-letters/confirm`: how many dead letters the filter matches, and the button that
/// replays them (an admin's).
pub async fn confirm(
    viewer: Viewer,
    State(app): State<AppState>,
    query: Result<Query<DeadQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "invalid_query",
            "the filters are not valid",
        )
        .into_response();
    };
    let mut filter = match q.filter() {
        Ok(filter) => filter,
        Err(e) => {
            return ApiError::new(axum::http::StatusCode::BAD_REQUEST, "invalid_query", e)
                .into_response();
        }
    };
    // What is counted is what is replayed: no delivery made after the count joins in.
    // (`until` is exclusive: what was made in the millisecond of the count is in.)
    let counted_at = app.clock.now_ms() + 1;
    let until = filter.until.map_or(counted_at, |u| u.min(counted_at));
    filter.until = Some(until);
    let matched = match crate::api::replay_dead_matching(&app, filter, true).await {
        Ok((matched, _)) => matched.len(),
        Err(e) => return e.into_response(),
    };
    page(
        ConfirmPage {
            can_act: viewer.can_act(),
            csrf: viewer.csrf.clone(),
            viewer: Some(viewer),
            page: "dead-letters",
            q,
            matched,
            until: crate::clock::rfc3339(until),
        }
        .render(),
    )
}

#[derive(serde::Deserialize)]
pub struct ReplayMatching {
    csrf: String,
    /// How many the confirmation page counted.
    expected: usize,
    #[serde(flatten)]
    q: DeadQuery,
}

/// `POST /dead-letters/replay`: every dead letter the filter matches, as
/// `POST /api/v1/dead-letters/replay` does; back to the list with the count.
pub async fn replay_matching(
    viewer: Viewer,
    State(app): State<AppState>,
    Form(form): Form<ReplayMatching>,
) -> Response {
    if let Some(refused) = refuse_action(&viewer, &form.csrf) {
        return refused;
    }
    let filter = match form.q.filter() {
        Ok(filter) => filter,
        Err(e) => {
            return ApiError::new(
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                e,
            )
            .into_response();
        }
    };
    // A delivery made before the count but dead since would make more than was confirmed.
    let counted = match crate::api::replay_dead_matching(&app, filter.clone(), true).await {
        Ok((matched, _)) => matched.len(),
        Err(e) => return e.into_response(),
    };
    if counted > form.expected {
        return ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "count_changed",
            format!(
                "{counted} dead letters match now, {} were confirmed: nothing was replayed; count them again",
                form.expected
            ),
        )
        .into_response();
    }
    match crate::api::replay_dead_matching(&app, filter, false).await {
        Ok((matched, replayed)) => after_replay(
            &form.q,
            replayed.len(),
            matched.len().saturating_sub(replayed.len()),
        ),
        Err(e) => e.into_response(),
    }
}

/// `POST /dead-letters/replay-selected`: the form's `csrf` and each selected `id`; each is
/// retried as `POST /api/v1/deliveries/{id}/retry` does.
pub async fn replay_selected(
    viewer: Viewer,
    State(app): State<AppState>,
    Form(fields): Form<Vec<(String, String)>>,
) -> Response {
    let csrf = fields
        .iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    if let Some(refused) = refuse_action(&viewer, csrf) {
        return refused;
    }
    let ids: Vec<&str> = fields
        .iter()
        .filter(|(k, _)| k == "id")
        .map(|(_, v)| v.as_str())
        .collect();
    if ids.len() > PER_PAGE {
        return ApiError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "too_many",
            format!(
                "{} dead letters were selected; at most {PER_PAGE} (a page) at a time: replay by filter for more",
                ids.len()
            ),
        )
        .into_response();
    }
    let (mut replayed, mut skipped) = (0, 0);
    for id in ids {
        match crate::api::retry_dead_letter(&app, id).await {
            Ok(()) => replayed += 1,
            Err(e) => {
                tracing::info!(delivery_id = id, error = %e.message, "console replay skipped a delivery");
                skipped += 1;
            }
        }
    }
    after_replay(&DeadQuery::default(), replayed, skipped)
}

fn after_replay(q: &DeadQuery, replayed: usize, skipped: usize) -> Response {
    Redirect::to(&format!(
        "/dead-letters?{}&replayed={replayed}&skipped={skipped}",
        q.query()
    ))
    .into_response()
}

//! The management API under `/api/v1` (bearer token) and the health routes. Handlers read
//! through the store and hand retries to the deliverer; they hold no state of their own.

pub mod config_objects;
pub mod error;
pub mod openapi;
mod operations;
mod runs;
pub mod schemas;
mod tokens;

pub use operations::pause_error;
pub use runs::{
    FlowTest, parse_time, replay as replay_failed_run, replay_dead_matching, replay_event, run_test,
};
use runs::{get_run, replay_dead_letters, replay_run, replay_runs, test_flow};

use crate::state::AppState;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use error::ApiError;
use serde::Deserialize;
use serde_json::json;

pub fn routes(state: AppState) -> Router<AppState> {
    let mut v1 = Router::new();
    for kind in crate::config::ObjectKind::ALL {
        for (path, route) in config_objects::routes(kind) {
            v1 = v1.route(&path, route);
        }
    }
    let v1 = v1
        .route("/events", get(list_events))
        .route("/events/{id}", get(get_event))
        .route("/events/{id}/replay", post(runs::replay_event_route))
        .route("/deliveries", get(list_deliveries))
        .route("/deliveries/{id}", get(get_delivery))
        .route("/deliveries/{id}/retry", post(retry_delivery))
        .route("/dead-letters", get(list_dead_letters))
        .route("/dead-letters/replay", post(replay_dead_letters))
        .route("/rejections", get(list_rejections))
        .route("/runs", get(runs::list_runs))
        .route("/runs/replay", post(replay_runs))
        .route("/runs/{id}", get(get_run))
        .route("/runs/{id}/replay", post(replay_run))
        .route("/flows/{id}/test", post(test_flow))
        .route("/expressions/check", post(check_expression_route))
        .route("/tokens", get(tokens::list).post(tokens::create))
        .route("/tokens/{id}", axum::routing::delete(tokens::revoke))
        .route("/destinations/{id}/pause", post(operations::pause))
        .route("/destinations/{id}/resume", post(operations::resume))
        .route_layer(axum::middleware::from_fn_with_state(state, require_token));
    Router::new()
        .nest("/api/v1", v1.fallback(unknown_route))
        .route("/healthz", get(healthz))
        .route("/metrics", get(operations::metrics))
        .route("/readyz", get(readyz))
        .route("/api/v1/openapi.json", get(openapi_json))
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Admin,
    Read,
}

/// The SHA-256 of a token, as tokens are compared and kept.
pub fn token_digest(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// The scope of the token with this digest, if it is one: the bootstrap token (compared in
/// constant time) is `admin`; other tokens are looked up among those made through the API, so
/// a revoked token has none from then on.
pub async fn scope_of(app: &AppState, digest: &[u8; 32]) -> Result<Option<Scope>, ApiError> {
    use subtle::ConstantTimeEq;
    let bootstrap: bool = digest.ct_eq(&token_digest(&app.api_token)).into();
    if bootstrap {
        return Ok(Some(Scope::Admin));
    }
    Ok(match app.store.token_scope(digest).await? {
        Some(s) if s == "admin" => Some(Scope::Admin),
        Some(_) => Some(Scope::Read),
        None => None,
    })
}

/// Checks the bearer token: the bootstrap token (compared in constant time, as SHA-256
/// digests so neither content nor length leaks) is `admin`; other tokens are looked up by
/// their SHA-256 among the tokens made through the API. A `read` token may only read (`GET`).
async fn require_token(State(app): State<AppState>, mut request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_string());
    let Some(given) = given else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send `Authorization: Bearer <token>`",
        )
        .into_response();
    };
    let scope = match scope_of(&app, &token_digest(&given)).await {
        Ok(scope) => scope,
        Err(e) => return e.into_response(),
    };
    let Some(scope) = scope else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the API token is not valid",
        )
        .into_response();
    };
    let reading = matches!(
        *request.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    if scope == Scope::Read && !reading {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this token has the `read` scope; {} {} needs an `admin` token",
                request.method(),
                request.uri().path()
            ),
        )
        .into_response();
    }
    request.extensions_mut().insert(scope);
    next.run(request).await
}

/// One item read by id: `200` with it, or `404` naming `what`.
pub(super) fn one<T: serde::Serialize>(
    what: &str,
    id: &str,
    found: Option<T>,
) -> Result<Response, ApiError> {
    match found {
        Some(item) => Ok(Json(item).into_response()),
        None => Err(ApiError::not_found(what, id)),
    }
}

/// `?limit=&after=` of a list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// Items on the page (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// The `next` of the previous page.
    after: Option<String>,
}

const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 500;

fn check_limit(limit: Option<u32>) -> Result<usize, ApiError> {
    match limit.map(|n| n as usize) {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_limit",
            format!("`limit` is {n}; use 1 to {MAX_LIMIT}"),
        )),
    }
}

/// A query string that does not parse answers the JSON error body like everything else.
fn query<T>(q: Result<Query<T>, axum::extract::rejection::QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))
}

pub(super) fn page<T: serde::Serialize>(
    items: Vec<T>,
    limit: usize,
    cursor: impl Fn(&T) -> String,
) -> Json<serde_json::Value> {
    let next = if items.len() == limit {
        items.last().map(&cursor)
    } else {
        None
    };
    Json(json!({"data": items, "next": next}))
}

#[utoipa::path(get, path = "/api/v1/events/{id}", tag = "events", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 200, description = "OK", body = crate::store::EventView), (status = 404, description = "not found", body = crate::api::schemas::ErrorBody), (status = 401, description = "missing or wrong token", body = crate::api::schemas::ErrorBody)))]
async fn get_event(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    one("event", &id, app.store.event(&id).await?)
}

#[utoipa::path(get, path = "/api/v1/deliveries/{id}", tag = "deliveries", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 200, description = "OK", body = crate::store::DeliveryView), (status = 404, description = "not found", body = crate::api::schemas::ErrorBody), (status = 401, description = "missing or wrong token", body = crate::api::schemas::ErrorBody)))]
async fn get_delivery(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    one("delivery", &id, app.store.delivery(&id).await?)
}

/// The filters of the deliveries list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    after: Option<String>,
    destination: Option<String>,
    event_id: Option<String>,
    #[param(pattern = "^(pending|succeeded|dead)?$")]
    status: Option<String>,
}

/// `GET /api/v1/deliveries?destination=&event_id=&status=`: newest first, without attempts.
#[utoipa::path(get, path = "/api/v1/deliveries", tag = "deliveries", security(("bearer" = [])),
    params(DeliveryQuery),
    responses((status = 200, description = "OK", body = crate::api::schemas::ListPage<crate::store::DeliveryView>), (status = 400, description = "a query parameter is not valid", body = crate::api::schemas::ErrorBody), (status = 401, description = "missing or wrong token", body = crate::api::schemas::ErrorBody)))]
async fn list_deliveries(
    State(app): State<AppState>,
    q: Result<Query<DeliveryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let limit = check_limit(q.limit)?;
    let filter = crate::store::DeliveryFilter {
        destination_id: given(&q.destination).map(str::to_string),
        event_id: given(&q.event_id).map(str::to_string),
        status: one_of(
            "status",
            given(&q.status),
            &["pending", "succeeded", "dead"],
        )?,
    };
    let after = given(&q.after).map(str::to_string);
    let items = app
        .store
        .deliveries(&filter, after.as_deref(), limit)
        .await?;
    Ok(page(items, limit, |d| d.id.clone()).into_response())
}

/// A query value that must be one of `allowed` when given.
pub(super) fn one_of(
    field: &str,
    value: Option<&str>,
    allowed: &[&str],
) -> Result<Option<String>, ApiError> {
    match value {
        None => Ok(None),
        Some(v) if allowed.contains(&v) => Ok(Some(v.to_string())),
        Some(v) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("`{field}`: `{v}` is not one of {}", allowed.join(", ")),
        )),
    }
}

#[utoipa::path(post, path = "/api/v1/deliveries/{id}/retry", tag = "deliveries", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 202, description = "accepted", body = crate::api::schemas::RetryAnswer), (status = 409, description = "not a dead letter (`not_dead`), or its payload expired (`payload_expired`)", body = crate::api::schemas::ErrorBody), (status = 404, description = "not found", body = crate::api::schemas::ErrorBody), (status = 401, description = "missing or wrong token", body = crate::api::schemas::ErrorBody), (status = 403, description = "a read token on a write route", body = crate::api::schemas::ErrorBody)))]
async fn retry_delivery(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    retry_dead_letter(&app, &id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"delivery_id": id, "status": "pending"})),
    )
        .into_response())
}

/// Sends the dead letter `id` again (the API's retry and the console's): `404` when there is
/// no such delivery, `409` when it is not dead, `410` when its body expired.
pub async fn retry_dead_letter(app: &AppState, id: &str) -> Result<(), ApiError> {
    let id = id.to_string();
    match app.store.retry_delivery(&id, app.clock.now_ms()).await? {
        Some(job) => {
            tracing::info!(delivery_id = %job.id, event_id = %job.event_id, destination_id = %job.destination_id, "manual retry requested");
            app.deliverer.schedule(job);
            Ok(())
        }
        None => match app.store.delivery(&id).await? {
            None => Err(ApiError::not_found("delivery", &id)),
            Some(d) if d.status == crate::store::DeliveryStatus::Dead && d.payload_expired => {
                Err(ApiError::payload_expired(&format!("delivery `{id}`")))
            }
            Some(d) => Err(ApiError::new(
                StatusCode::CONFLICT,
                "not_dead",
                format!(
                    "delivery `{id}` is {}; only a dead letter can be retried",
                    d.status.as_str()
                ),
            )),
        },
    }
}

#[utoipa::path(get, path = "/api/v1/dead-letters", tag = "dead letters", security(("bearer" = [])),
    params(Page),
    responses((status = 200, description = "OK", body = crate::api::schemas::ListPage<crate::store::DeadLetter>), (status = 400, description = "a query parameter is not valid", body = crate::api::schemas::ErrorBody), (status = 401, description = "missing or wrong token", body = crate::api::schemas::ErrorBody)))]
async fn list_dead_letters(
    State(app): State<AppState>,
    q: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let limit = check_limit(q.limit)?;
    let after = q.after.clone().filter(|a| !a.is_empty());
    let items = app.store.dead_letters(after.as_deref(), limit).await?;
    Ok(page(items, limit, |d| d.id().to_string()).into_response())
}

/// The filters of the events list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    after: Option<String>,
    source: Option<String>,
    #[serde(rename = "type")]
    #[param(rename = "type")]
    event_type: Option<String>,
    /// Received at or after (RFC 3339).
    #[param(format = DateTime)]
    since: Option<String>,
    /// Received before (RFC 3339).
    #[param(format = DateTime)]
    until: Option<String>,
    /// `pending`, `failed`, `succeeded` or `unrouted` (see the event summary).
    #[param(pattern = "^(pending|failed|succeeded|unrouted)?$")]
    status: Option<String>,
    /// A jq expression on the payload; events for which it is true (not `false` or `null`).
    jq: Option<String>,
    /// `path=value` on the payload, e.g. `data.plan=pro` or `data.items.0.qty=2`: the value is
    /// JSON when it parses as JSON, a string otherwise.
    #[serde(rename = "match")]
    #[param(rename = "match")]
    field_match: Option<String>,
}

/// Events a payload filter looks at for one page at most; past that the page ends early,
/// with a `next` to go on from.
const PAYLOAD_SCAN: usize = 5_000;

/// `?limit=&after=` of the rejected log, whose cursors are numbers.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RejectionQuery {
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// The `next` of the previous page.
    #[param(minimum = 0)]
    after: Option<i64>,
}

/// `GET /api/v1/events?source=&type=&since=&until=&status=&jq=&match=`: newest first.
#[utoipa::path(get, path = "/api/v1/events", tag = "events", security(("bearer" = [])),
    params(EventQuery),
    responses((status = 200, description = "OK", body = crate::api::schemas::ListPage<crate::store::EventSummary>), (status = 400, description = "a query parameter is not valid", body = crate::api::schemas::ErrorBody), (status = 401, description = "missing or wrong token", body = crate::api::schemas::ErrorBody), (status = 422, description = "the payload filter overran its limits or took its expression worker down", body = crate::api::schemas::ErrorBody), (status = 503, description = "the expression workers are busy; try again after `Retry-After`", body = crate::api::schemas::ErrorBody)))]
async fn list_events(
    State(app): State<AppState>,
    q: Result<Query<EventQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let limit = check_limit(q.limit)?;
    let time = |field: &str, t: &Option<String>| -> Result<Option<i64>, ApiError> {
        t.as_deref()
            .map(|text| {
                crate::clock::parse_rfc3339(text).ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_query",
                        format!("`{field}`: `{text}` is not an RFC 3339 time"),
                    )
                })
            })
            .transpose()
    };
    let status = one_of(
        "status",
        given(&q.status),
        &["pending", "failed", "succeeded", "unrouted"],
    )?;
    let filter = crate::store::EventFilter {
        source: q.source.clone(),
        event_type: q.event_type.clone(),
        since: time("since", &q.since)?,
        until: time("until", &q.until)?,
        status,
    };
    let after = q.after.clone().filter(|a| !a.is_empty());
    let (found, next) = find_events(
        &app,
        filter,
        after,
        limit,
        given(&q.jq),
        given(&q.field_match),
    )
    .await?;
    Ok(Json(json!({"data": found, "next": next})).into_response())
}

/// A page of the events `filter` matches, newest first after `after`, and the cursor of the
/// next page. With a payload filter (`jq`, or `match` as `path=value`), payloads are tested in
/// the expression workers, newest first, until the page is full or [`PAYLOAD_SCAN`] events
/// were read (the cursor then says where to go on). The API's list and the console's.
pub async fn find_events(
    app: &AppState,
    filter: crate::store::EventFilter,
    after: Option<String>,
    limit: usize,
    jq: Option<&str>,
    field_match: Option<&str>,
) -> Result<(Vec<crate::store::EventSummary>, Option<String>), ApiError> {
    let filter_given = payload_filter(jq, field_match)?;
    if let Some(expr) = &filter_given
        && let Err(why) = app.sandbox.check(expr).await?
    {
        let which = if jq.is_some() { "jq" } else { "match" };
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("`{which}`: {why}"),
        ));
    }
    let Some(test) = filter_given else {
        let items = app.store.events(&filter, after.as_deref(), limit).await?;
        let next = (items.len() == limit)
            .then(|| items.last().map(|e| e.id.clone()))
            .flatten();
        return Ok((items, next));
    };
    // Scan newest first in batches, testing payloads in the sandbox, until the page is full
    // or the scan budget is spent.
    let (mut found, mut scanned, mut cursor) = (Vec::new(), 0, after);
    let mut next = None;
    loop {
        let batch = app
            .store
            .events_with_payload(&filter, cursor.as_deref(), 200)
            .await?;
        let exhausted = batch.len() < 200;
        scanned += batch.len();
        let (events, payloads): (Vec<_>, Vec<bytes::Bytes>) = batch
            .into_iter()
            .map(|(e, p)| (e, bytes::Bytes::from(p)))
            .unzip();
        let hits = app.sandbox.truthy_each(&test, &payloads).await?;
        let tested = events.into_iter().zip(hits);
        for (event, hit) in tested {
            cursor = Some(event.id.clone());
            if hit.unwrap_or(false) {
                found.push(event);
                if found.len() == limit {
                    next = cursor.clone();
                    break;
                }
            }
        }
        if found.len() == limit || exhausted {
            break;
        }
        if scanned >= PAYLOAD_SCAN {
            next = cursor.clone();
            break;
        }
    }
    Ok((found, next))
}

/// A query value that is there and not empty.
pub(super) fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|s| !s.is_empty())
}

/// The payload filter of `?jq=` or `?match=path=value`, compiled; 400 when it does not compile.
fn payload_filter(
    jq: Option<&str>,
    field_match: Option<&str>,
) -> Result<Option<crate::config::expr::Expr>, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", m);
    let code = match (jq, field_match) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => return Err(bad("give `jq` or `match`, not both".into())),
        (Some(code), None) => code.to_string(),
        (None, Some(m)) => {
            let Some((path, value)) = m.split_once('=') else {
                return Err(bad(format!("`match`: `{m}` is not `path=value`")));
            };
            if path.is_empty() {
                return Err(bad("`match`: the path is empty".into()));
            }
            let mut selector = String::from(".");
            for part in path.split('.') {
                match part.parse::<u32>() {
                    Ok(n) => selector.push_str(&format!("[{n}]")),
                    Err(_) => selector.push_str(&format!("[{}]", json!(part))),
                }
            }
            let value: serde_json::Value = serde_json::from_str(value)
                .unwrap_or_else(|_| serde_json::Value::String(value.to_string()));
            format!("{selector}? == {value}")
        }
    };
    crate::config::expr::Expr::new(&code)
        .map(Some)
        .map_err(|e| {
            bad(format!(
                "`{}`: {e}",
                if jq.is_some() { "jq" } else { "match" }
            ))
        })
}

#[utoipa::path(get, path = "/api/v1/rejections", tag = "rejections", security(("bearer" = [])),
    params(RejectionQuery),
    responses((status = 200, description = "OK", body = crate::api::schemas::ListPage<crate::store::RejectionView>), (status = 400, description = "a query parameter is not valid", body = crate::api::schemas::ErrorBody), (status = 401, description = "missing or wrong token", body = crate::api::schemas::ErrorBody)))]
async fn list_rejections(
    State(app): State<AppState>,
    q: Result<Query<RejectionQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let limit = check_limit(q.limit)?;
    let after = q.after;
    if after.is_some_and(|a| a < 0) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "`after` is a cursor from this list (a number from 0)",
        ));
    }
    let items = app.store.rejections(after, limit).await?;
    Ok(page(items, limit, |r| r.id.clone()).into_response())
}

/// Any other path under `/api/v1`: the JSON error body, like every other answer.
async fn unknown_route(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no route is `{}`; the routes are in /api/v1/openapi.json",
            uri.path()
        ),
    )
}

/// The OpenAPI document (no token needed).
async fn openapi_json() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        openapi::document(),
    )
        .into_response()
}

#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "OK", body = crate::api::schemas::Status)))]
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200, description = "OK", body = crate::api::schemas::Status), (status = 503, description = "not ready: the store is not reachable (`not_ready`) or cannot write (`store_unwritable`, with what failed and since when)", body = crate::api::schemas::ErrorBody)))]
async fn readyz(State(app): State<AppState>) -> Response {
    if let Some(unwritable) = app.store.unwritable() {
        return ApiError {
            message: unwritable.describe(),
            ..ApiError::store_unwritable()
        }
        .into_response();
    }
    match app.store.ping().await {
        Ok(()) => Json(json!({"status": "ready"})).into_response(),
        Err(e) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("the store is not reachable: {e}"),
        )
        .into_response(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpressionCheck {
    expression: String,
}

/// `POST /api/v1/expressions/check`: whether a jq expression compiles, and if not, why and
/// where (what a flow's save would say of it).
#[utoipa::path(post, path = "/api/v1/expressions/check", tag = "flows", security(("bearer" = [])),
    request_body(content = crate::api::schemas::ExpressionCheckDoc),
    responses((status = 200, description = "checked: `valid`, else `error` and `position`", body = crate::api::schemas::ExpressionCheckAnswer), (status = 422, description = "the body is not valid", body = crate::api::schemas::ErrorBody), (status = 401, description = "missing or wrong token", body = crate::api::schemas::ErrorBody), (status = 403, description = "a read token on a write route", body = crate::api::schemas::ErrorBody), (status = 503, description = "the expression workers are busy; try again after `Retry-After`", body = crate::api::schemas::ErrorBody)))]
async fn check_expression_route(
    State(app): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let q: ExpressionCheck = crate::json::parse(&body).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            format!("the body must be {{\"expression\": \"<jq>\"}}: {e}"),
        )
    })?;
    Ok(Json(check_expression(&app, &q.expression).await?).into_response())
}

/// Compiles `code` in an expression worker: `{"valid": true}`, or `{"valid": false, "error",
/// "position"}` where `position` is the 1-based byte offset of the first error in `code`
/// (`null` when the error has no place). The API's check and the console's.
pub async fn check_expression(app: &AppState, code: &str) -> Result<serde_json::Value, ApiError> {
    let expr = match crate::config::expr::Expr::new(code) {
        Ok(expr) => expr,
        Err(why) => return Ok(json!({"valid": false, "error": why, "position": null})),
    };
    Ok(match app.sandbox.check(&expr).await? {
        Ok(()) => json!({"valid": true}),
        Err(why) => {
            let position = error_position(&why, code);
            json!({"valid": false, "error": why, "position": position})
        }
    })
}

/// Where a compile error says it is: the first error's `at character N`, or `at the end`
/// (one past the last byte). The message may quote the expression itself, so only the place
/// each error ends with is read.
fn error_position(why: &str, code: &str) -> Option<usize> {
    let first = why.split("; ").next().unwrap_or(why);
    if first.ends_with(" at the end") {
        return Some(code.len() + 1);
    }
    let at = first.rfind(" at character ")?;
    first[at + " at character ".len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::error_position;

    #[test]
    fn a_compile_error_is_placed_by_what_it_ends_with_not_by_the_quoted_code() {
        let code = "\"character 99\" | {a: 1";
        assert_eq!(
            error_position("expected `}` at the end", code),
            Some(code.len() + 1)
        );
        assert_eq!(
            error_position(
                "undefined filter `f` at character 3; expected x at character 9",
                "a"
            ),
            Some(3)
        );
        assert_eq!(
            error_position("jq expression of 20000 bytes: the limit is 16384", ""),
            None
        );
    }
}

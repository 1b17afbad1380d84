//! Ingest: `POST /in/{source}`. Checks a request in a fixed order (source known, size,
//! signature on the raw bytes, JSON, event type, schema), asks the engine what it starts,
//! commits it all in one store transaction, and only then answers `202`. Every refusal is
//! answered with a precise error and written to the rejected log.
//!
//! **Invariant:** nothing is acknowledged before it is committed.

pub mod verify;

use crate::api::error::ApiError;
use crate::app::AppState;
use crate::config::FieldRef;
use crate::engine::sandbox::SandboxError;
use crate::store::{DeliveryJob, IngestOutcome, NewEvent, Rejection};
use crate::telemetry::events;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use http_body_util::BodyExt;
use serde_json::json;

/// How much of a refused body the rejected log keeps.
const REJECTED_BODY_LIMIT: usize = 64 * 1024;

/// Headers that are never stored with an event: credentials and signatures.
pub(crate) const UNSTORED_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "webhook-signature",
    "x-hub-signature",
    "x-hub-signature-256",
];

fn invalid_json(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_json",
        format!("the body is not strict JSON: {e}"),
    )
}

/// The request headers kept with an event, by name (of a repeated name, the last value): all
/// but credentials, signatures, the header a generic HMAC source is signed in, and every
/// header `secrets::is_secret_header` names. Borrowed
/// from the request and sorted by name, so nothing is copied before it is serialised.
pub(crate) struct KeptHeaders<'a>(pub(crate) Vec<(&'a str, std::borrow::Cow<'a, str>)>);

impl<'a> KeptHeaders<'a> {
    pub(crate) fn of(headers: &'a HeaderMap, verify: &crate::config::Verify) -> KeptHeaders<'a> {
        let signed_in = match verify {
            crate::config::Verify::Hmac { header, .. } => Some(header.as_str()),
            _ => None,
        };
        let mut kept = Vec::with_capacity(headers.len());
        for (name, value) in headers {
            let name = name.as_str();
            if UNSTORED_HEADERS.contains(&name)
                || signed_in == Some(name)
                || crate::secrets::is_secret_header(name)
            {
                continue;
            }
            let value = match std::str::from_utf8(value.as_bytes()) {
                Ok(text) => std::borrow::Cow::Borrowed(text),
                Err(_) => String::from_utf8_lossy(value.as_bytes()),
            };
            kept.push((name, value));
        }
        // A stable sort keeps a repeated name's values in order; the last one stays.
        kept.sort_by(|a, b| a.0.cmp(b.0));
        kept.dedup_by(|later, earlier| {
            let same = later.0 == earlier.0;
            if same {
                std::mem::swap(later, earlier);
            }
            same
        });
        KeptHeaders(kept)
    }
}

impl serde::Serialize for KeptHeaders<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

/// Why a source's event type or idempotency key could not be read from a request.
enum FieldError {
    /// The header is given more than once, or holds a byte that is not visible ASCII: the
    /// request is malformed (`400`).
    Malformed(String),
    /// The expression failed, overran, or gave too much (`422`).
    Failed(String),
}

/// A value read from a body by a plain path, refused past the length an expression worker
/// would answer (`protocol::MAX_READ`), so that both ways agree.
fn bounded(found: Option<String>, code: &str) -> Result<Option<String>, FieldError> {
    use crate::engine::sandbox::protocol::MAX_READ;
    match found {
        Some(s) if s.len() > MAX_READ => Err(FieldError::Failed(format!(
            "jq expression `{code}` gave {} bytes; the limit is {MAX_READ}",
            s.len()
        ))),
        other => Ok(other),
    }
}

/// Reads a value where the source says it is: a header, or a jq path in the body. A plain
/// field path is read from the raw JSON here; any other expression runs in a worker.
///
/// `Err` only when the expression workers are busy (the request is shed with `503`); a header
/// that is not text, or an expression that failed or overran, is `Ok(Err(why))`.
async fn read_field(
    sandbox: &crate::engine::sandbox::Sandbox,
    field: &FieldRef,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Result<Option<String>, FieldError>, SandboxError> {
    match field {
        FieldRef::Header(name) => {
            let mut values = headers.get_all(name.as_str()).iter();
            let first = values.next();
            if values.next().is_some() {
                // Which one counts is what a receiver and Ferry could disagree on.
                return Ok(Err(FieldError::Malformed(format!(
                    "header `{name}` is given more than once"
                ))));
            }
            Ok(match first.map(|v| v.to_str()) {
                None => Ok(None),
                Some(Ok(text)) => Ok(Some(text.to_string())),
                Some(Err(_)) => Err(FieldError::Malformed(format!(
                    "header `{name}` holds a byte that is not visible ASCII (only 0x20 to 0x7E and tab are read)"
                ))),
            })
        }
        FieldRef::Body(e) => {
            if let Some(path) = e.field_path()
                && let Some(found) = crate::json::read_plain_path(body, path)
            {
                return Ok(bounded(found, e.code()));
            }
            match sandbox.read(e, body).await {
                Ok(read) => Ok(read.map_err(FieldError::Failed)),
                Err(busy) if busy.is_overload() => Err(busy),
                Err(other) => Ok(Err(FieldError::Failed(other.to_string()))),
            }
        }
    }
}

/// How much of a refused body is read and thrown away, at most, so that a client still
/// sending it reads the answer rather than a reset connection; and for how long at most.
const DRAIN_LIMIT: u64 = 1024 * 1024;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(3);

/// Why a body was not read whole.
enum BodyRefusal {
    /// Over the limit after `read` bytes; `rest` is the part not read.
    TooLarge {
        rest: Body,
        read: u64,
    },
    TimedOut(String),
    Unreadable(String),
}

/// Reads the whole body, refusing it as soon as it passes `limit` bytes. A body that arrives
/// in one piece is kept as it is, without a copy.
async fn read_body(
    mut body: Body,
    limit: usize,
    declared: Option<u64>,
) -> Result<Bytes, BodyRefusal> {
    let mut single: Option<Bytes> = None;
    let mut joined = BytesMut::new();
    let mut read = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            if crate::server::BodyTimedOut::caused(&e) {
                BodyRefusal::TimedOut(e.to_string())
            } else {
                BodyRefusal::Unreadable(e.to_string())
            }
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        read += data.len();
        if read > limit {
            return Err(BodyRefusal::TooLarge {
                rest: body,
                read: read as u64,
            });
        }
        match single.take() {
            None if joined.is_empty() => single = Some(data),
            first => {
                if let Some(first) = first {
                    let expected = declared.map_or(0, |n| n as usize).min(limit);
                    joined.reserve(expected.max(first.len() + data.len()));
                    joined.extend_from_slice(&first);
                }
                joined.extend_from_slice(&data);
            }
        }
    }
    Ok(single.unwrap_or_else(|| joined.freeze()))
}

/// Reads and throws away what is left of a refused body, up to [`DRAIN_LIMIT`] for at most
/// [`DRAIN_TIME`], so that the client reads the answer. Nothing is read from a client that
/// waits for `100 Continue` (it has sent no body), nor when more than the limit is left (the
/// connection closes on it whatever is read).
async fn drain(mut body: Body, headers: &HeaderMap, left: Option<u64>) {
    let expects_continue = headers
        .get(axum::http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue || left.is_some_and(|n| n > DRAIN_LIMIT) {
        return;
    }
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut read = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            read += frame.data_ref().map_or(0, |d| d.len() as u64);
            if read > DRAIN_LIMIT {
                break;
            }
        }
    })
    .await;
}

/// The `503` of a request that does not fit in `settings.memory.ingest_bytes`.
fn short_of_memory(budget: usize) -> ApiError {
    ApiError {
        message: format!(
            "Ferry is overloaded: the request bodies it holds would pass `settings.memory.ingest_bytes` ({budget} bytes); try again shortly"
        ),
        ..ApiError::overloaded()
    }
}

/// What a plan adds to the event's write: bodies made by transforms (each once), run
/// contexts and step records.
fn plan_bytes(plan: &crate::engine::Plan) -> usize {
    plan.runs
        .iter()
        .map(|r| {
            let bodies: usize = r.bodies.iter().map(|b| b.data.len()).sum();
            bodies + r.context.as_ref().map_or(0, |c| c.len()) + r.steps.len()
        })
        .sum()
}

/// The start of a refused body for the rejected log, counted in the ingest budget until the
/// writer has stored it; left out when the budget is full.
fn kept_body(budget: &std::sync::Arc<crate::memory::Budget>, body: &[u8]) -> Bytes {
    let kept = &body[..body.len().min(REJECTED_BODY_LIMIT)];
    if kept.is_empty() {
        return Bytes::new();
    }
    match budget.try_take(kept.len()) {
        Some(share) => share.attach(Bytes::copy_from_slice(kept)),
        None => Bytes::new(),
    }
}

/// Where the JSON `bytes` break `validator`'s schema, as the refusal's details list them
/// (a JSON pointer and a message each). Schema validation needs serde_json values: the body is
/// parsed here, only when a schema applies.
pub(crate) fn schema_violations(
    validator: &jsonschema::Validator,
    bytes: &[u8],
) -> Result<Vec<serde_json::Value>, serde_json::Error> {
    let json: serde_json::Value = serde_json::from_slice(bytes)?;
    Ok(validator
        .iter_errors(&json)
        .map(|e| json!({"pointer": e.instance_path().to_string(), "message": e.to_string()}))
        .collect())
}

pub async fn receive(
    State(app): State<AppState>,
    Path(source_id): Path<String>,
    request: Request,
) -> Response {
    // The request taken whole: its headers are moved out, not copied as a `HeaderMap`
    // extractor would.
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    let received_at = app.clock.now_ms();
    // One config for the whole request, even if the API changes it meanwhile.
    let config = app.config.get();
    let limit = config.settings.max_body_size;
    // Metric labels stay bounded: a source not in the config is `unknown`.
    let source_label = if config.sources.contains_key(&source_id) {
        source_id.as_str()
    } else {
        "unknown"
    };
    events::event_received(&app.metrics, source_label);
    let count_refusal = |error: &ApiError| {
        events::input_rejected(
            &app.metrics,
            &source_id,
            source_label,
            error.status.as_u16(),
            error.code,
            &error.message,
        )
    };
    let reject = |error: ApiError, body: &[u8]| -> Response {
        count_refusal(&error);
        app.store.record_rejection(Rejection {
            source: source_id.clone(),
            received_at,
            status: error.status.as_u16(),
            error: error.code.to_string(),
            reason: if error.details.is_empty() {
                error.message.clone()
            } else {
                format!(
                    "{} {}",
                    error.message,
                    serde_json::Value::Array(error.details.clone())
                )
            },
            body: kept_body(&app.ingest_budget, body),
        });
        error.into_response()
    };
    let Some(source) = config.sources.get(&source_id).cloned() else {
        return reject(
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_source",
                format!("no source has the id `{source_id}`"),
            ),
            b"",
        );
    };
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {limit} bytes (`settings.max_body_size`)"),
        )
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        let refused = reject(too_large(), b"");
        drain(body, &headers, declared).await;
        return refused;
    }
    // The body's bytes are counted from before it is read until the writer is done with it.
    let Some(mut share) = app
        .ingest_budget
        .try_take(declared.map_or(limit, |n| n as usize))
    else {
        // Shedding load is not a refusal of the input: it is not written to the rejected log.
        let error = short_of_memory(app.ingest_budget.limit());
        count_refusal(&error);
        drain(body, &headers, declared).await;
        return error.into_response();
    };
    let bytes = match read_body(body, limit, declared).await {
        Ok(b) => b,
        Err(BodyRefusal::TooLarge { rest, read }) => {
            drop(share);
            let refused = reject(too_large(), b"");
            drain(rest, &headers, declared.map(|n| n.saturating_sub(read))).await;
            return refused;
        }
        Err(BodyRefusal::TimedOut(e)) => {
            return reject(
                ApiError::new(StatusCode::REQUEST_TIMEOUT, "body_timeout", e),
                b"",
            );
        }
        Err(BodyRefusal::Unreadable(e)) => {
            return reject(
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "unreadable_body",
                    format!("the body could not be read: {e}"),
                ),
                b"",
            );
        }
    };
    share.shrink_to(bytes.len());
    if let Err(refused) = verify::check(&source.verify, &headers, &bytes, received_at) {
        return reject(
            ApiError::new(StatusCode::UNAUTHORIZED, "invalid_signature", refused.0),
            &bytes,
        );
    }
    // A count of brackets refuses nesting past the limit of every parser that reads the body
    // later; then one pass checks the JSON as serde_json parses it, building nothing, and reads
    // the event type when it is a plain field path. The full value is built only if an
    // expression needs it.
    if let Err(e) = crate::json::check_depth(&bytes) {
        return reject(invalid_json(e), &bytes);
    }
    let type_path = match &source.event_type {
        FieldRef::Body(e) => e.field_path(),
        FieldRef::Header(_) => None,
    };
    let type_in_body = match crate::json::check_json(&bytes, type_path) {
        Ok(found) => found,
        Err(e) => return reject(invalid_json(e), &bytes),
    };
    // Shedding load is not a refusal of the input: it is not written to the rejected log.
    let shed = |busy: SandboxError| -> Response {
        let error = ApiError::from(busy);
        count_refusal(&error);
        error.into_response()
    };
    let event_type = match type_in_body {
        Some(found) => bounded(
            found,
            match &source.event_type {
                FieldRef::Body(e) => e.code(),
                FieldRef::Header(name) => name,
            },
        ),
        None => match read_field(&app.sandbox, &source.event_type, &headers, &bytes).await {
            Ok(read) => read,
            Err(busy) => return shed(busy),
        },
    };
    let event_type = match event_type {
        Ok(t) => t,
        Err(FieldError::Malformed(err)) => {
            return reject(
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_event_type", err),
                &bytes,
            );
        }
        Err(FieldError::Failed(err)) => {
            return reject(
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "missing_event_type", err),
                &bytes,
            );
        }
    };
    let Some(event_type) = event_type.filter(|t| !t.is_empty()) else {
        let place = match &source.event_type {
            FieldRef::Header(name) => format!("header `{name}`"),
            FieldRef::Body(e) => format!("`{}` in the body", e.code()),
        };
        return reject(
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "missing_event_type",
                format!("no event type at {place}"),
            ),
            &bytes,
        );
    };
    if let Some(validator) = config
        .event_types
        .get(&event_type)
        .and_then(|t| t.validator.as_ref())
    {
        let violations = match schema_violations(validator, &bytes) {
            Ok(v) => v,
            Err(e) => return reject(invalid_json(e), &bytes),
        };
        if !violations.is_empty() {
            let n = violations.len();
            return reject(
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "schema_violation",
                    format!(
                        "the `{event_type}` event breaks its schema in {n} place{}",
                        if n == 1 { "" } else { "s" }
                    ),
                )
                .with_details(violations),
                &bytes,
            );
        }
    }
    let idempotency_key = match &source.idempotency_key {
        None => None,
        Some(field) => match read_field(&app.sandbox, field, &headers, &bytes).await {
            Err(busy) => return shed(busy),
            // An empty key is no key: it must not make every later keyless event a duplicate.
            Ok(Ok(k)) => k.filter(|k| !k.is_empty()),
            Ok(Err(err)) => {
                let (status, why) = match err {
                    FieldError::Malformed(why) => (StatusCode::BAD_REQUEST, why),
                    FieldError::Failed(why) => (StatusCode::UNPROCESSABLE_ENTITY, why),
                };
                return reject(
                    ApiError::new(status, "invalid_idempotency_key", why),
                    &bytes,
                );
            }
        },
    };
    let kept_headers = KeptHeaders::of(&headers, &source.verify);
    let event_id = crate::ids::event_id();
    let flows = crate::engine::matching_flows(&config, &source.id, &event_type);
    let plan = if flows.is_empty() {
        crate::engine::Plan::default()
    } else {
        let info = std::sync::Arc::new(crate::engine::EventInfo {
            id: event_id.clone(),
            event_type: event_type.clone(),
            source: source.id.clone(),
            received_at,
            headers: serde_json::to_value(&kept_headers).unwrap_or_default(),
        });
        if flows.iter().all(|f| f.program.is_trivial()) {
            crate::engine::plan(app.store.body_ids(), &flows, &info, &bytes, received_at)
        } else {
            // Flows with expressions run in the expression workers, under their limits. Busy
            // workers shed the event (nothing is stored); an expression that overran or took
            // its worker down fails these runs, with the reason, and the event is kept.
            let ids = app.store.body_ids();
            match app
                .sandbox
                .plan(ids, &flows, &info, &bytes, received_at)
                .await
            {
                Ok(plan) => plan,
                Err(busy) if busy.is_overload() => return shed(busy),
                Err(e) => crate::engine::plan_failed(&flows, &e.to_string()),
            }
        }
    };
    // What the plan adds to the write (bodies made by transforms, run contexts) is counted
    // with the event's body.
    if !share.try_grow(plan_bytes(&plan)) {
        let error = short_of_memory(app.ingest_budget.limit());
        count_refusal(&error);
        return error.into_response();
    }
    let jobs: Vec<DeliveryJob> = plan
        .deliveries
        .iter()
        .map(|d| DeliveryJob {
            id: d.id.clone(),
            event_id: event_id.clone(),
            run_id: d.run_id.clone(),
            destination_id: d.destination_id.clone(),
            created_at: received_at,
            round_attempts: 0,
            due_at: received_at,
            payload: Some(
                d.body
                    .as_ref()
                    .map_or_else(|| bytes.clone(), |b| b.data.clone()),
            ),
        })
        .collect();
    let ended_runs: Vec<(String, String, &'static str, Option<String>)> = plan
        .runs
        .iter()
        .filter(|r| matches!(r.status, "completed" | "filtered" | "failed"))
        .map(|r| (r.id.clone(), r.flow_id.clone(), r.status, r.error.clone()))
        .collect();
    let due_runs: Vec<(String, i64)> = plan
        .runs
        .iter()
        .filter_map(|r| r.next_at.map(|at| (r.id.clone(), at)))
        .collect();
    let event = NewEvent {
        id: event_id.clone(),
        source: source.id.clone(),
        event_type: event_type.clone(),
        idempotency_key,
        received_at,
        // A map of strings always serialises.
        headers: serde_json::to_string(&kept_headers).unwrap_or_default(),
        payload: share.attach(bytes.clone()),
    };
    match app.store.ingest(event, plan.runs, plan.deliveries).await {
        Ok(IngestOutcome::Accepted) => {
            let type_label = if config.event_types.contains_key(&event_type) {
                event_type.as_str()
            } else {
                "other"
            };
            events::event_accepted(
                &app.metrics,
                &event_id,
                &source.id,
                &event_type,
                type_label,
                jobs.len(),
            );
            app.activity.seen(&source.id, received_at);
            for (run_id, flow_id, status, error) in &ended_runs {
                events::run_ended(
                    &app.metrics,
                    run_id,
                    &event_id,
                    flow_id,
                    status,
                    error.as_deref(),
                );
            }
            app.deliverer.submit(jobs);
            for (run_id, at) in due_runs {
                app.runs.wake(run_id, at);
            }
            // Event ids are `evt_` and a ULID: nothing in them needs escaping.
            (
                StatusCode::ACCEPTED,
                [(
                    axum::http::header::CONTENT_TYPE,
                    axum::http::HeaderValue::from_static("application/json"),
                )],
                format!(r#"{{"event_id":"{event_id}"}}"#),
            )
                .into_response()
        }
        Ok(IngestOutcome::Duplicate { event_id }) => {
            tracing::debug!(event_id = %event_id, source = %source.id, "duplicate idempotency key; nothing started");
            (
                StatusCode::OK,
                axum::Json(json!({"event_id": event_id, "duplicate": true})),
            )
                .into_response()
        }
        Err(e) => {
            let error = ApiError::from(e);
            events::input_rejected(
                &app.metrics,
                &source.id,
                &source.id,
                error.status.as_u16(),
                error.code,
                &error.message,
            );
            error.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_headers_are_sorted_keep_the_last_value_and_leave_out_secrets() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("x-b", "1"),
            ("x-a", "first"),
            ("authorization", "Bearer secret"),
            ("x-sig", "signed"),
            ("x-api-key", "key"),
            ("x-a", "second"),
            ("x-a", "last"),
        ] {
            headers.append(
                axum::http::HeaderName::from_static(name),
                axum::http::HeaderValue::from_static(value),
            );
        }
        let verify = crate::config::Verify::Hmac {
            header: "x-sig".into(),
            key: crate::config::Secret::new("k".into()),
            encoding: crate::config::SignatureEncoding::Hex,
            prefix: String::new(),
        };
        let json = serde_json::to_string(&KeptHeaders::of(&headers, &verify)).unwrap();
        assert_eq!(json, r#"{"x-a":"last","x-b":"1"}"#);
    }
}

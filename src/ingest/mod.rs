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
use crate::engine::expr;
use crate::engine::sandbox::SandboxError;
use crate::store::{DeliveryJob, IngestOutcome, NewEvent, Rejection};
use crate::telemetry::events;
use axum::body::Bytes;
use axum::extract::Request;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// How much of a refused body the rejected log keeps.
const REJECTED_BODY_LIMIT: usize = 64 * 1024;

/// Headers that are never stored with an event: credentials and signatures.
const UNSTORED_HEADERS: &[&str] = &[
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
        format!("the body is not JSON: {e}"),
    )
}

/// The request headers kept with an event, by name (of a repeated name, the last value): all
/// but credentials, signatures and the header a generic HMAC source is signed in. Borrowed
/// from the request and sorted by name, so nothing is copied before it is serialised.
struct KeptHeaders<'a>(Vec<(&'a str, std::borrow::Cow<'a, str>)>);

impl<'a> KeptHeaders<'a> {
    fn of(headers: &'a HeaderMap, verify: &crate::config::Verify) -> KeptHeaders<'a> {
        let signed_in = match verify {
            crate::config::Verify::Hmac { header, .. } => Some(header.as_str()),
            _ => None,
        };
        let mut kept = Vec::with_capacity(headers.len());
        for (name, value) in headers {
            let name = name.as_str();
            if UNSTORED_HEADERS.contains(&name) || signed_in == Some(name) {
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

/// Reads a value where the source says it is: a header, or a jq path in the body. A plain
/// field path is read from the raw JSON here; any other expression runs in a worker.
///
/// `Err` only when the expression workers are busy (the request is shed with `503`); an
/// expression that failed or overran is `Ok(Err(why))`.
async fn read_field(
    sandbox: &crate::engine::sandbox::Sandbox,
    field: &FieldRef,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Result<Option<String>, String>, SandboxError> {
    match field {
        FieldRef::Header(name) => Ok(Ok(headers
            .get(name.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::to_string))),
        FieldRef::Body(e) => {
            if let Some(path) = e.field_path()
                && let Some(found) = expr::read_plain_path(body, path)
            {
                return Ok(Ok(found));
            }
            match sandbox.read(e, body).await {
                Ok(read) => Ok(read),
                Err(busy @ SandboxError::Busy(_)) => Err(busy),
                Err(other) => Ok(Err(other.to_string())),
            }
        }
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
    let reject = |error: ApiError, body: &[u8]| -> Response {
        events::input_rejected(
            &app.metrics,
            &source_id,
            source_label,
            error.status.as_u16(),
            error.code,
            &error.message,
        );
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
            body: body[..body.len().min(REJECTED_BODY_LIMIT)].to_vec(),
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
            format!("the body is larger than {limit} bytes"),
        )
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return reject(too_large(), b"");
    }
    let bytes: Bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(e) => {
            let is_length = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit");
            return if is_length {
                reject(too_large(), b"")
            } else {
                reject(
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "unreadable_body",
                        format!("the body could not be read: {e}"),
                    ),
                    b"",
                )
            };
        }
    };
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
    if let Err(e) = expr::check_depth(&bytes) {
        return reject(invalid_json(e), &bytes);
    }
    let type_path = match &source.event_type {
        FieldRef::Body(e) => e.field_path(),
        FieldRef::Header(_) => None,
    };
    let type_in_body = match expr::check_json(&bytes, type_path) {
        Ok(found) => found,
        Err(e) => return reject(invalid_json(e), &bytes),
    };
    // Shedding load is not a refusal of the input: it is not written to the rejected log.
    let shed = |busy: SandboxError| -> Response {
        let error = ApiError::from(busy);
        events::input_rejected(
            &app.metrics,
            &source_id,
            source_label,
            error.status.as_u16(),
            error.code,
            &error.message,
        );
        error.into_response()
    };
    let event_type = match type_in_body {
        Some(found) => Ok(found),
        None => match read_field(&app.sandbox, &source.event_type, &headers, &bytes).await {
            Ok(read) => read,
            Err(busy) => return shed(busy),
        },
    };
    let event_type = match event_type {
        Ok(t) => t,
        Err(err) => {
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
            Ok(Ok(k)) => k,
            Ok(Err(err)) => {
                return reject(
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "invalid_idempotency_key",
                        err,
                    ),
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
            crate::engine::plan(&flows, &info, &bytes, received_at)
        } else {
            // Flows with expressions run in the expression workers, under their limits. Busy
            // workers shed the event (nothing is stored); an expression that overran or took
            // its worker down fails these runs, with the reason, and the event is kept.
            match app.sandbox.plan(&flows, &info, &bytes, received_at).await {
                Ok(plan) => plan,
                Err(busy @ SandboxError::Busy(_)) => return shed(busy),
                Err(e) => crate::engine::plan_failed(&flows, &e.to_string()),
            }
        }
    };
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
            payload: Some(d.body.clone().unwrap_or_else(|| bytes.clone())),
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
        payload: bytes.clone(),
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
            for job in jobs {
                app.deliverer.submit(job);
            }
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

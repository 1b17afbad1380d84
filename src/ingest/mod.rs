//! Ingest: `POST /in/{source}`. A request goes through a fixed path of steps, each a function
//! below that answers its value or a [`Refusal`]: the source, the body read under the limit
//! (`body.rs`), the signature on the raw bytes (`verify.rs`), the JSON and its event type, the
//! schema, the idempotency key (`fields.rs`), the plan of what it starts, and the commit of it
//! all in one store transaction; only then `202`, and the live tail (`telemetry::tail`) hears
//! of it. One place ([`Intake::refuse`]) turns a
//! refusal into its answer, its metric and, for a refused input, its entry in the rejected log.
//!
//! **Invariant:** nothing is acknowledged before it is committed.

mod body;
mod fields;
mod formats;
mod handshake;
pub mod poll;
pub mod schedule;
pub mod verify;

pub(crate) use fields::{KeptHeaders, UNSTORED_HEADERS};
pub use handshake::abuse_check;

use crate::api::error::ApiError;
use crate::clock::Millis;
use crate::config::{BodyFormat, Config, FieldRef, Source, Verify};
use crate::engine::Plan;
use crate::engine::sandbox::SandboxError;
use crate::memory::Share;
use crate::state::AppState;
use crate::store::{DeliveryJob, IngestOutcome, NewEvent, Rejection};
use crate::telemetry::events;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use body::BodyRefusal;
use fields::FieldError;
use serde_json::json;
use std::sync::Arc;

/// The longest idempotency key taken, in bytes (Stripe's are at most 255 characters).
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 1024;

/// How much of a refused body the rejected log keeps.
const REJECTED_BODY_LIMIT: usize = 64 * 1024;

/// Why a request was not taken (the error boxed: the hot path returns `Result`s of it).
enum Refusal {
    /// The input is at fault: answered with `error`, counted, and written to the rejected log
    /// with the start of `body`.
    Refused {
        error: Box<ApiError>,
        body: Bytes,
        drain: Option<Unread>,
    },
    /// Ferry cannot take it now (load shed, the store failed): answered and counted, but not
    /// the input's fault, so not in the rejected log.
    NotTaken {
        error: Box<ApiError>,
        drain: Option<Unread>,
    },
}

/// The part of a body not read when the request was refused before its end, read and thrown
/// away after the refusal is recorded (`body::drain`).
struct Unread {
    body: Body,
    /// How many bytes are left of it, when the request said.
    left: Option<u64>,
}

impl Refusal {
    fn refused(error: ApiError, body: &Bytes) -> Refusal {
        Refusal::Refused {
            error: Box::new(error),
            body: body.clone(),
            drain: None,
        }
    }

    fn not_taken(error: ApiError) -> Refusal {
        Refusal::NotTaken {
            error: Box::new(error),
            drain: None,
        }
    }

    /// The refusal of a batch's event `n`, after `taken` events were taken.
    fn in_batch(self, n: usize, taken: usize) -> Refusal {
        let say = |mut error: Box<ApiError>| {
            error.message = format!(
                "event {n} of the batch: {} ({taken} before it were taken)",
                error.message
            );
            error
        };
        match self {
            Refusal::Refused { error, body, drain } => Refusal::Refused {
                error: say(error),
                body,
                drain,
            },
            Refusal::NotTaken { error, drain } => Refusal::NotTaken {
                error: say(error),
                drain,
            },
        }
    }

    /// Load shed because the expression workers are busy.
    fn shed(busy: SandboxError) -> Refusal {
        Refusal::not_taken(ApiError::from(busy))
    }
}

fn invalid_json(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_json",
        format!("the body is not strict JSON: {e}"),
    )
}

/// One request on its way in: what every step reads.
struct Intake<'a> {
    app: &'a AppState,
    /// One config for the whole request, even if the API changes it meanwhile.
    config: &'a Config,
    source_id: &'a str,
    /// The source as metric labels name it: a source not in the config is `unknown`, so the
    /// labels stay bounded.
    source_label: &'a str,
    headers: &'a HeaderMap,
    /// The request's query string, without `?`.
    query: Option<&'a str>,
    received_at: Millis,
}

/// An event taken: new, or a duplicate of the one that had its idempotency key.
struct Taken {
    event_id: String,
    duplicate: bool,
}

pub async fn receive(
    State(app): State<AppState>,
    Path(source_id): Path<String>,
    request: Request,
) -> Response {
    // The request taken whole: its headers are moved out, not copied as a `HeaderMap`
    // extractor would.
    let (parts, body) = request.into_parts();
    let config = app.config.get();
    let source_label = if config.sources.contains_key(&source_id) {
        source_id.as_str()
    } else {
        "unknown"
    };
    let intake = Intake {
        app: &app,
        config: &config,
        source_id: &source_id,
        source_label,
        headers: &parts.headers,
        query: parts.uri.query(),
        received_at: app.clock.now_ms(),
    };
    events::event_received(&app.metrics, source_label);
    // The body's share of the ingest budget, held until the request is answered (a refused
    // body's bytes still count while its rejected-log copy is taken).
    let mut held = None;
    match intake.take(body, &mut held).await {
        Ok(answer) => answer,
        Err(refusal) => intake.refuse(refusal).await,
    }
}

impl<'a> Intake<'a> {
    /// The intake of an event Ferry makes itself (a tick, a polled item): no request, so no
    /// headers or query, received now.
    fn made_inside(
        app: &'a AppState,
        config: &'a Config,
        source_id: &'a str,
        headers: &'a HeaderMap,
    ) -> Intake<'a> {
        Intake {
            app,
            config,
            source_id,
            source_label: source_id,
            headers,
            query: None,
            received_at: app.clock.now_ms(),
        }
    }

    /// The path of an event, step by step.
    async fn take(&self, body: Body, held: &mut Option<Share>) -> Result<Response, Refusal> {
        let source = self.source()?;
        let (bytes, share) = self.read_body(body).await?;
        *held = Some(share);
        self.verify(&source, &bytes)?;
        if let Verify::Signature(scheme) = &source.verify
            && let Some(answer) = handshake::answer(scheme, &bytes)
        {
            return answer.map_err(|e| Refusal::refused(e, &bytes));
        }
        let refused = |error| Refusal::refused(error, &bytes);
        let payloads = match source.format {
            BodyFormat::Json => formats::Payloads::One(bytes.clone()),
            BodyFormat::Form => {
                formats::Payloads::One(formats::form(self.headers, &bytes).map_err(refused)?)
            }
            BodyFormat::CloudEvents => {
                formats::cloudevents(self.headers, &bytes, source.cloudevents_batch)
                    .map_err(refused)?
            }
        };
        // A payload made from the body (a form's object, a binary CloudEvent) is held beside
        // it: counted too.
        if let formats::Payloads::One(payload) = &payloads
            && payload.as_ptr() != bytes.as_ptr()
            && !held.as_mut().is_some_and(|s| s.try_grow(payload.len()))
        {
            return Err(Refusal::not_taken(short_of_memory(
                self.app.ingest_budget.limit(),
            )));
        }
        match payloads {
            formats::Payloads::One(payload) => {
                let taken = self.take_event(&source, payload, held, None).await?;
                Ok(if taken.duplicate {
                    (
                        StatusCode::OK,
                        axum::Json(json!({"event_id": taken.event_id, "duplicate": true})),
                    )
                        .into_response()
                } else {
                    // Event ids are `evt_` and a ULID: nothing in them needs escaping.
                    (
                        StatusCode::ACCEPTED,
                        [(
                            axum::http::header::CONTENT_TYPE,
                            axum::http::HeaderValue::from_static("application/json"),
                        )],
                        format!(r#"{{"event_id":"{}"}}"#, taken.event_id),
                    )
                        .into_response()
                })
            }
            formats::Payloads::Batch(payloads) => self.take_batch(&source, payloads).await,
        }
    }

    /// A CloudEvents batch: each event taken in turn. A batch is not one transaction: when an event is refused, those before it stay
    /// taken, and the answer says which it was; sending the batch again is safe, since each
    /// event's `source` and `id` are its idempotency key.
    async fn take_batch(&self, source: &Source, payloads: Vec<Bytes>) -> Result<Response, Refusal> {
        let mut ids = Vec::with_capacity(payloads.len());
        for (n, payload) in payloads.into_iter().enumerate() {
            // The event is a slice of the body, whose share the request holds: its own share
            // starts empty and counts what its plan adds.
            let Some(share) = self.app.ingest_budget.try_take(0) else {
                return Err(
                    Refusal::not_taken(short_of_memory(self.app.ingest_budget.limit()))
                        .in_batch(n, ids.len()),
                );
            };
            let mut held = Some(share);
            let taken = self
                .take_event(source, payload, &mut held, None)
                .await
                .map_err(|r| r.in_batch(n, ids.len()))?;
            ids.push(json!({"event_id": taken.event_id, "duplicate": taken.duplicate}));
        }
        Ok((StatusCode::ACCEPTED, axum::Json(json!({"events": ids}))).into_response())
    }

    /// One event's payload on its way to the store: its type, schema, idempotency key, plan,
    /// and commit.
    async fn take_event(
        &self,
        source: &Source,
        bytes: Bytes,
        held: &mut Option<Share>,
        given: Option<&Given>,
    ) -> Result<Taken, Refusal> {
        let event_type = match given {
            None => self.parse_and_find_type(source, &bytes).await?,
            Some(given) => {
                crate::json::check_depth(&bytes)
                    .map_err(|e| Refusal::refused(invalid_json(e), &bytes))?;
                crate::json::check_json(&bytes, None)
                    .map_err(|e| Refusal::refused(invalid_json(e), &bytes))?;
                given.event_type.clone()
            }
        };
        self.validate(&event_type, &bytes)?;
        let idempotency_key = match given {
            None => self.idempotency_key(source, &bytes).await?,
            Some(given) => given.idempotency_key.clone(),
        };
        let kept_headers = KeptHeaders::of(self.headers, &source.verify);
        let event = NewEvent {
            id: crate::ids::event_id(),
            source: source.id.clone(),
            event_type,
            idempotency_key,
            received_at: self.received_at,
            // A map of strings always serialises.
            headers: serde_json::to_string(&kept_headers).unwrap_or_default(),
            payload: bytes,
        };
        let plan = self.plan(&event, &kept_headers).await?;
        self.commit(event, plan, held).await
    }

    fn source(&self) -> Result<Arc<Source>, Refusal> {
        let source = self.config.sources.get(self.source_id).cloned();
        if source.as_ref().is_some_and(|s| !s.is_webhook()) {
            return Err(Refusal::refused(
                ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "not_a_webhook",
                    format!(
                        "source `{}` is a schedule or a polling source: it makes its own events and takes no requests",
                        self.source_id
                    ),
                ),
                &Bytes::new(),
            ));
        }
        source.ok_or_else(|| {
            Refusal::refused(
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "unknown_source",
                    format!("no source has the id `{}`", self.source_id),
                ),
                &Bytes::new(),
            )
        })
    }

    /// Reads the body under `settings.max_body_size`, with a share of the ingest byte budget
    /// taken before it is read (its declared length, or the limit) and counted until the
    /// writer is done with it.
    async fn read_body(&self, body: Body) -> Result<(Bytes, Share), Refusal> {
        let limit = self.config.settings.max_body_size;
        let too_large = |unread: Unread| Refusal::Refused {
            error: Box::new(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body is larger than {limit} bytes (`settings.max_body_size`)"),
            )),
            body: Bytes::new(),
            drain: Some(unread),
        };
        let declared = self
            .headers
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large(Unread {
                body,
                left: declared,
            }));
        }
        let Some(mut share) = self
            .app
            .ingest_budget
            .try_take(declared.map_or(limit, |n| n as usize))
        else {
            return Err(Refusal::NotTaken {
                error: Box::new(short_of_memory(self.app.ingest_budget.limit())),
                drain: Some(Unread {
                    body,
                    left: declared,
                }),
            });
        };
        let refused = |error| Refusal::refused(error, &Bytes::new());
        match body::read_body(body, limit, declared).await {
            Ok(bytes) => {
                share.shrink_to(bytes.len());
                Ok((bytes, share))
            }
            Err(BodyRefusal::TooLarge { rest, read }) => Err(too_large(Unread {
                body: rest,
                left: declared.map(|n| n.saturating_sub(read)),
            })),
            Err(BodyRefusal::TimedOut(e)) => Err(refused(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                e,
            ))),
            Err(BodyRefusal::Unreadable(e)) => Err(refused(ApiError::new(
                StatusCode::BAD_REQUEST,
                "unreadable_body",
                format!("the body could not be read: {e}"),
            ))),
        }
    }

    fn verify(&self, source: &Source, bytes: &Bytes) -> Result<(), Refusal> {
        let request = verify::Request {
            headers: self.headers,
            query: self.query,
            body: bytes,
            now_ms: self.received_at,
        };
        verify::check(&source.verify, &request).map_err(|refused| {
            Refusal::refused(
                ApiError::new(StatusCode::UNAUTHORIZED, "invalid_signature", refused.0),
                bytes,
            )
        })
    }

    /// A count of brackets refuses nesting past the limit of every parser that reads the body
    /// later; then one pass checks the JSON as serde_json parses it, building nothing, and
    /// reads the event type when it is a plain field path. The full value is built only if an
    /// expression needs it.
    async fn parse_and_find_type(&self, source: &Source, bytes: &Bytes) -> Result<String, Refusal> {
        let refused = |error| Refusal::refused(error, bytes);
        crate::json::check_depth(bytes).map_err(|e| refused(invalid_json(e)))?;
        let type_path = match &source.event_type {
            FieldRef::Body(e) => e.field_path(),
            FieldRef::Header(_) => None,
        };
        let type_in_body =
            crate::json::check_json(bytes, type_path).map_err(|e| refused(invalid_json(e)))?;
        let event_type = match type_in_body {
            Some(found) => fields::bounded(
                found,
                match &source.event_type {
                    FieldRef::Body(e) => e.code(),
                    FieldRef::Header(name) => name,
                },
            ),
            None => fields::read_field(&self.app.sandbox, &source.event_type, self.headers, bytes)
                .await
                .map_err(Refusal::shed)?,
        };
        let event_type = event_type.map_err(|e| match e {
            FieldError::Malformed(err) => refused(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_event_type",
                err,
            )),
            FieldError::Failed(err) => refused(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "missing_event_type",
                err,
            )),
        })?;
        event_type.filter(|t| !t.is_empty()).ok_or_else(|| {
            let place = match &source.event_type {
                FieldRef::Header(name) => format!("header `{name}`"),
                FieldRef::Body(e) => format!("`{}` in the body", e.code()),
            };
            refused(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "missing_event_type",
                format!("no event type at {place}"),
            ))
        })
    }

    /// The event type's schema, when it has one.
    fn validate(&self, event_type: &str, bytes: &Bytes) -> Result<(), Refusal> {
        let Some(validator) = self
            .config
            .event_types
            .get(event_type)
            .and_then(|t| t.validator.as_ref())
        else {
            return Ok(());
        };
        let violations = schema_violations(validator, bytes)
            .map_err(|e| Refusal::refused(invalid_json(e), bytes))?;
        if violations.is_empty() {
            return Ok(());
        }
        let n = violations.len();
        Err(Refusal::refused(
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "schema_violation",
                format!(
                    "the `{event_type}` event breaks its schema in {n} place{}",
                    if n == 1 { "" } else { "s" }
                ),
            )
            .with_details(violations),
            bytes,
        ))
    }

    /// The event's idempotency key: `None` without one; refused when it cannot be read or
    /// is longer than [`MAX_IDEMPOTENCY_KEY_BYTES`].
    async fn idempotency_key(
        &self,
        source: &Source,
        bytes: &Bytes,
    ) -> Result<Option<String>, Refusal> {
        let Some(field) = &source.idempotency_key else {
            return Ok(None);
        };
        match fields::read_field(&self.app.sandbox, field, self.headers, bytes).await {
            Err(busy) => Err(Refusal::shed(busy)),
            // A key longer than any provider's is a mistake, and would not fit PostgreSQL's
            // unique index on keys (about 2.7 KB per entry).
            Ok(Ok(Some(key))) if key.len() > MAX_IDEMPOTENCY_KEY_BYTES => Err(Refusal::refused(
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_idempotency_key",
                    format!(
                        "the idempotency key is {} bytes long; at most {MAX_IDEMPOTENCY_KEY_BYTES} are taken",
                        key.len()
                    ),
                ),
                bytes,
            )),
            // An empty key is no key: it must not make every later keyless event a duplicate.
            Ok(Ok(key)) => Ok(key.filter(|k| !k.is_empty())),
            Ok(Err(err)) => {
                let (status, why) = match err {
                    FieldError::Malformed(why) => (StatusCode::BAD_REQUEST, why),
                    FieldError::Failed(why) => (StatusCode::UNPROCESSABLE_ENTITY, why),
                };
                Err(Refusal::refused(
                    ApiError::new(status, "invalid_idempotency_key", why),
                    bytes,
                ))
            }
        }
    }

    /// The runs the event starts: flows without expressions here and now, the others in an
    /// expression worker, under its limits. Busy workers shed the event (nothing is stored);
    /// an expression that overran or took its worker down fails these runs, with the reason,
    /// and the event is kept.
    async fn plan(
        &self,
        event: &NewEvent,
        kept_headers: &KeptHeaders<'_>,
    ) -> Result<Plan, Refusal> {
        let flows = crate::engine::matching_flows(self.config, &event.source, &event.event_type);
        if flows.is_empty() {
            return Ok(Plan::default());
        }
        let info = Arc::new(crate::engine::EventInfo {
            id: event.id.clone(),
            event_type: event.event_type.clone(),
            source: event.source.clone(),
            received_at: event.received_at,
            headers: serde_json::to_value(kept_headers).unwrap_or_default(),
        });
        let (ids, raw, now) = (self.app.store.body_ids(), &event.payload, event.received_at);
        if flows.iter().all(|f| f.program.is_trivial()) {
            return Ok(crate::engine::plan(ids, &flows, &info, raw, now));
        }
        match self.app.sandbox.plan(ids, &flows, &info, raw, now).await {
            Ok(plan) => Ok(plan),
            Err(busy) if busy.is_overload() => Err(Refusal::shed(busy)),
            Err(e) => Ok(crate::engine::plan_failed(&flows, &e.to_string())),
        }
    }

    /// Commits the event with its plan, and only then answers and hands the new deliveries
    /// and due runs to their workers.
    async fn commit(
        &self,
        mut event: NewEvent,
        plan: Plan,
        held: &mut Option<Share>,
    ) -> Result<Taken, Refusal> {
        // What the plan adds to the write (bodies made by transforms, run contexts) is counted
        // with the event's body.
        let grown = held.as_mut().is_some_and(|s| s.try_grow(plan_bytes(&plan)));
        if !grown {
            return Err(Refusal::not_taken(short_of_memory(
                self.app.ingest_budget.limit(),
            )));
        }
        let mut jobs: Vec<DeliveryJob> = plan
            .deliveries
            .iter()
            .map(|d| d.job(&event.id, event.received_at, &event.payload))
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
        let (event_id, event_type, source) = (
            event.id.clone(),
            event.event_type.clone(),
            event.source.clone(),
        );
        // The body's share rides with it into the writer's queue.
        if let Some(share) = held.take() {
            event.payload = share.attach(event.payload);
        }
        // Cluster mode: the new jobs' leases are counted from before the write began.
        let asked = std::time::Instant::now();
        let ingested = self
            .app
            .store
            .ingest_leased(event, plan.runs, plan.deliveries)
            .await
            .map_err(|e| Refusal::not_taken(ApiError::from(e)))?;
        // Cluster mode: the new jobs are this node's, under the leases the commit took.
        if !ingested.leases.is_empty() {
            let leases: std::collections::HashMap<String, i64> =
                ingested.leases.into_iter().collect();
            for job in &mut jobs {
                job.lease = leases.get(&job.id).copied();
            }
        }
        let event_id = match ingested.outcome {
            IngestOutcome::Accepted => event_id,
            IngestOutcome::Duplicate { event_id } => {
                tracing::debug!(event_id = %event_id, source = %source, "duplicate idempotency key; nothing started");
                return Ok(Taken {
                    event_id,
                    duplicate: true,
                });
            }
        };
        let app = self.app;
        let type_label = if self.config.event_types.contains_key(&event_type) {
            event_type.as_str()
        } else {
            "other"
        };
        events::event_accepted(
            &app.metrics,
            &event_id,
            &source,
            &event_type,
            type_label,
            jobs.len(),
        );
        app.activity.seen(&source, self.received_at);
        app.tail.announce(|| crate::telemetry::tail::Accepted {
            id: event_id.clone(),
            source: source.clone(),
            event_type: event_type.clone(),
            received_at: crate::clock::rfc3339(self.received_at),
            deliveries: jobs.len(),
        });
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
        app.deliverer.submit_leased(jobs, asked);
        for (run_id, at) in due_runs {
            app.runs.wake(run_id, at);
        }
        Ok(Taken {
            event_id,
            duplicate: false,
        })
    }

    /// The one place a refusal is answered: counted, written to the rejected log when the
    /// input was at fault, then what is left of an unread body thrown away (so that the client
    /// reads the answer).
    async fn refuse(&self, refusal: Refusal) -> Response {
        let (error, drain) = match refusal {
            Refusal::Refused { error, body, drain } => {
                self.count(&error);
                self.app.store.record_rejection(Rejection {
                    source: self.source_id.to_string(),
                    received_at: self.received_at,
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
                    body: kept_body(&self.app.ingest_budget, &body),
                });
                (error, drain)
            }
            Refusal::NotTaken { error, drain } => {
                self.count(&error);
                (error, drain)
            }
        };
        let answer = error.into_response();
        if let Some(unread) = drain {
            body::drain(unread.body, self.headers, unread.left).await;
        }
        answer
    }

    fn count(&self, error: &ApiError) {
        events::input_rejected(
            &self.app.metrics,
            self.source_id,
            self.source_label,
            error.status.as_u16(),
            error.code,
            &error.message,
        )
    }
}

/// What an event made inside Ferry (a schedule's tick) is, where a webhook's is read from
/// its request (a polled item's are read from the item, as a webhook's from its body).
pub(crate) struct Given {
    pub event_type: String,
    pub idempotency_key: Option<String>,
}

/// An event made inside Ferry, taken down a webhook's path from its body on: the schema, the
/// flows, the commit, the metrics and the live tail; a refusal is in the rejected log. Answers
/// the event's id and whether it was a duplicate of its idempotency key, or why it was not
/// taken.
pub(crate) async fn emit(
    app: &AppState,
    source_id: &str,
    payload: Bytes,
    given: Option<Given>,
) -> Result<(String, bool), String> {
    let config = app.config.get();
    let Some(source) = config.sources.get(source_id).cloned() else {
        return Err(format!("no source has the id `{source_id}`"));
    };
    let headers = HeaderMap::new();
    let intake = Intake::made_inside(app, &config, source_id, &headers);
    events::event_received(&app.metrics, source_id);
    let Some(share) = app.ingest_budget.try_take(payload.len()) else {
        let refusal = Refusal::not_taken(short_of_memory(app.ingest_budget.limit()));
        let _ = intake.refuse(refusal).await;
        return Err("Ferry is short of memory for the event".into());
    };
    let mut held = Some(share);
    match intake
        .take_event(&source, payload, &mut held, given.as_ref())
        .await
    {
        Ok(taken) => Ok((taken.event_id, taken.duplicate)),
        Err(refusal) => {
            let why = match &refusal {
                Refusal::Refused { error, .. } | Refusal::NotTaken { error, .. } => {
                    error.message.clone()
                }
            };
            let _ = intake.refuse(refusal).await;
            Err(why)
        }
    }
}

/// Writes a refusal of an event Ferry made itself (a template that failed, a polled item
/// without an id) to the rejected log, as a request's: `422` with `code` and `message`.
pub(crate) async fn record_failure(
    app: &AppState,
    source_id: &str,
    code: &'static str,
    message: String,
) {
    let config = app.config.get();
    let headers = HeaderMap::new();
    let intake = Intake::made_inside(app, &config, source_id, &headers);
    let error = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message);
    let _ = intake.refuse(Refusal::refused(error, &Bytes::new())).await;
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
fn plan_bytes(plan: &Plan) -> usize {
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
fn kept_body(budget: &Arc<crate::memory::Budget>, body: &[u8]) -> Bytes {
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

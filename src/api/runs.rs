//! Flow runs through the API: a run with its steps, replay of one failed run or of every
//! failed run matching a filter, and a side-effect-free test of a flow on an event.

use super::error::ApiError;
use crate::config::program::Op;
use crate::state::AppState;
use crate::store::{FailedRunFilter, ReplayOutcome, RunReplay};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

#[utoipa::path(get, path = "/api/v1/runs/{id}", tag = "runs", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 200, description = "OK", body = crate::store::RunDetail), (status = 404, description = "not found", body = crate::api::schemas::ErrorBody), (status = 401, description = "missing or wrong token", body = crate::api::schemas::ErrorBody)))]
pub async fn get_run(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    super::one("run", &id, app.store.run_detail(&id).await?)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayOptions {
    /// Run the failed step and the rest with the flow's current definition even when it
    /// changed since the run started.
    use_current_flow: Option<bool>,
}

/// Reads an optional JSON body: empty means the defaults.
pub(super) fn optional_json<T: Default + serde::de::DeserializeOwned>(
    body: &[u8],
) -> Result<T, ApiError> {
    if body.is_empty() || body == b"null" {
        return Ok(T::default());
    }
    crate::json::parse(body).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            format!("the request body is not valid: {e}"),
        )
    })
}

#[utoipa::path(post, path = "/api/v1/runs/{id}/replay", tag = "runs", security(("bearer" = [])), params(("id" = String, Path)),
    request_body(content = Option<crate::api::schemas::ReplayOptionsDoc>, description = "optional"),
    responses((status = 202, description = "accepted", body = crate::api::schemas::ReplayAnswer), (status = 409, description = "not failed, its payload expired (`payload_expired`), or the flow or step changed or is gone", body = crate::api::schemas::ErrorBody), (status = 422, description = "the body is not valid", body = crate::api::schemas::ErrorBody), (status = 404, description = "not found", body = crate::api::schemas::ErrorBody), (status = 401, description = "missing or wrong token", body = crate::api::schemas::ErrorBody), (status = 403, description = "a read token on a write route", body = crate::api::schemas::ErrorBody)))]
pub async fn replay_run(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let options: ReplayOptions = optional_json(&body)?;
    let replayed = replay(&app, &id, options.use_current_flow.unwrap_or(false)).await?;
    Ok((StatusCode::ACCEPTED, Json(replayed)).into_response())
}

/// Restarts one failed run from the step that failed. A deliver step that failed puts its dead
/// deliveries back (the ones that succeeded are not sent again); any other step runs again.
pub async fn replay(
    app: &AppState,
    run_id: &str,
    use_current_flow: bool,
) -> Result<serde_json::Value, ApiError> {
    let Some(row) = app.store.run_row(run_id).await? else {
        return Err(ApiError::not_found("run", run_id));
    };
    if row.status != "failed" {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_failed",
            format!(
                "run `{run_id}` is {}; only a failed run can be replayed",
                row.status
            ),
        ));
    }
    if row.payload_expired {
        return Err(ApiError::payload_expired(&format!("run `{run_id}`")));
    }
    let Some(flow) = app.config.get().flow(&row.flow_id).cloned() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "flow_missing",
            format!(
                "flow `{}` of run `{run_id}` is no longer in the config",
                row.flow_id
            ),
        ));
    };
    let pc = if flow.version == row.flow_version {
        row.pc
    } else if use_current_flow {
        let records: Vec<crate::engine::StepRecord> =
            serde_json::from_str(&row.steps).unwrap_or_default();
        let failed = records.iter().rev().find(|r| r.index == row.pc);
        let found = match failed {
            Some(r) => flow.program.find(r.name.as_deref(), &r.path),
            None if row.pc == 0 => Some(0),
            None => None,
        };
        found.ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "step_missing",
                format!(
                    "the step run `{run_id}` failed at is not in flow `{}`'s current definition (matched by name, then by position)",
                    flow.id
                ),
            )
        })?
    } else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "flow_changed",
            format!(
                "flow `{}` changed since run `{run_id}` started (version {} to {}); send {{\"use_current_flow\": true}} to replay with the current definition",
                flow.id, row.flow_version, flow.version
            ),
        ));
    };
    let Some(instr) = flow.program.instrs.get(pc) else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "step_missing",
            format!("run `{run_id}` failed past the end of flow `{}`", flow.id),
        ));
    };
    let now = app.clock.now_ms();
    let outcome = app
        .store
        .replay_run(RunReplay {
            run_id: run_id.to_string(),
            now,
            pc,
            resume_pc: flow.program.next_after(pc),
            flow_version: flow.version.clone(),
            retry_dead_deliveries: matches!(instr.op, Op::Deliver(_)),
        })
        .await?;
    match outcome {
        ReplayOutcome::NotFound => Err(ApiError::not_found("run", run_id)),
        ReplayOutcome::NotFailed(status) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_failed",
            format!("run `{run_id}` is {status}; only a failed run can be replayed"),
        )),
        ReplayOutcome::PayloadExpired => Err(ApiError::payload_expired(&format!("run `{run_id}`"))),
        ReplayOutcome::Resumed {
            deliveries,
            run_due,
        } => {
            tracing::info!(run_id, event_id = %row.event_id, flow_id = %flow.id, step = %instr.path, "run replay requested");
            let redelivered: Vec<String> = deliveries.iter().map(|d| d.id.clone()).collect();
            for job in deliveries {
                app.deliverer.schedule(job);
            }
            if run_due {
                app.runs.wake(run_id.to_string(), now);
            }
            Ok(json!({
                "run_id": run_id,
                "status": if run_due { "running" } else { "waiting" },
                "from_step": instr.path,
                "redelivered": redelivered,
            }))
        }
    }
}

/// `POST /api/v1/events/{id}/replay`: the stored event goes through the flows that take it
/// now, as if it had just arrived: new runs (and deliveries) of the same event. Its earlier
/// runs stay as they were.
#[utoipa::path(post, path = "/api/v1/events/{id}/replay", tag = "events", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 202, description = "accepted: the new runs", body = crate::api::schemas::EventReplayAnswer), (status = 404, description = "not found", body = crate::api::schemas::ErrorBody), (status = 409, description = "no flow takes it now (`no_flow`), its payload expired (`payload_expired`), or it has 100 runs already (`too_many_replays`)", body = crate::api::schemas::ErrorBody), (status = 401, description = "missing or wrong token", body = crate::api::schemas::ErrorBody), (status = 403, description = "a read token on a write route", body = crate::api::schemas::ErrorBody), (status = 503, description = "the expression workers or the store are busy; try again after `Retry-After`", body = crate::api::schemas::ErrorBody)))]
pub async fn replay_event_route(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let replayed = replay_event(&app, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(replayed)).into_response())
}

/// Runs one event may have, its replays included: each replay adds a run per flow, and an
/// event's page shows them all.
pub const MAX_RUNS_PER_EVENT: i64 = 100;

/// Replays the whole stored event `event_id` through the flows that take it now (the API's
/// and the console's).
pub async fn replay_event(app: &AppState, event_id: &str) -> Result<serde_json::Value, ApiError> {
    let Some(stored) = app.store.stored_event(event_id).await? else {
        return Err(ApiError::not_found("event", event_id));
    };
    let Some(payload) = stored.payload else {
        return Err(ApiError::payload_expired(&format!("event `{event_id}`")));
    };
    if stored.runs >= MAX_RUNS_PER_EVENT {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "too_many_replays",
            format!(
                "event `{event_id}` has {} runs already, the most one event keeps: replay a failed run instead",
                stored.runs
            ),
        ));
    }
    let config = app.config.get();
    let flows = crate::engine::matching_flows(&config, &stored.source, &stored.event_type);
    if flows.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_flow",
            format!(
                "no flow takes events of source `{}` and type `{}` now: there is nothing to replay",
                stored.source, stored.event_type
            ),
        ));
    }
    let info = std::sync::Arc::new(crate::engine::EventInfo {
        id: event_id.to_string(),
        event_type: stored.event_type.clone(),
        source: stored.source.clone(),
        received_at: stored.received_at,
        headers: serde_json::from_str(&stored.headers).unwrap_or_default(),
    });
    let (raw, now, ids) = (
        bytes::Bytes::from(payload),
        app.clock.now_ms(),
        app.store.body_ids(),
    );
    let plan = if flows.iter().all(|f| f.program.is_trivial()) {
        crate::engine::plan(ids, &flows, &info, &raw, now)
    } else {
        match app.sandbox.plan(ids, &flows, &info, &raw, now).await {
            Ok(plan) => plan,
            Err(busy) if busy.is_overload() => return Err(ApiError::from(busy)),
            Err(e) => crate::engine::plan_failed(&flows, &e.to_string()),
        }
    };
    let jobs: Vec<crate::store::DeliveryJob> = plan
        .deliveries
        .iter()
        .map(|d| d.job(event_id, now, &raw))
        .collect();
    /// What is told of each new run once it is stored.
    struct Started {
        id: String,
        flow_id: String,
        status: &'static str,
        error: Option<String>,
        next_at: Option<i64>,
    }
    let runs: Vec<Started> = plan
        .runs
        .iter()
        .map(|r| Started {
            id: r.id.clone(),
            flow_id: r.flow_id.clone(),
            status: r.status,
            error: r.error.clone(),
            next_at: r.next_at,
        })
        .collect();
    if !app
        .store
        .add_runs(event_id, now, plan.runs, plan.deliveries)
        .await?
    {
        return Err(ApiError::payload_expired(&format!("event `{event_id}`")));
    }
    tracing::info!(
        event_id,
        runs = runs.len(),
        deliveries = jobs.len(),
        "event replay requested"
    );
    for run in &runs {
        if matches!(run.status, "completed" | "filtered" | "failed") {
            crate::telemetry::events::run_ended(
                &app.metrics,
                &run.id,
                event_id,
                &run.flow_id,
                run.status,
                run.error.as_deref(),
            );
        }
    }
    let deliveries = jobs.len();
    app.deliverer.submit(jobs);
    for run in &runs {
        if let Some(at) = run.next_at {
            app.runs.wake(run.id.clone(), at);
        }
    }
    Ok(json!({
        "event_id": event_id,
        "run_ids": runs.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        "deliveries": deliveries,
    }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkReplay {
    flow_id: Option<String>,
    /// RFC 3339: runs created at or after this time.
    since: Option<String>,
    /// RFC 3339: runs created before this time.
    until: Option<String>,
    /// A part of the run's error message.
    error: Option<String>,
    /// Count what would be replayed, replay nothing.
    dry_run: Option<bool>,
    use_current_flow: Option<bool>,
}

pub fn parse_time(field: &str, text: &Option<String>) -> Result<Option<i64>, ApiError> {
    text.as_deref()
        .map(|t| {
            crate::clock::parse_rfc3339(t).ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_body",
                    format!("`{field}`: `{t}` is not an RFC 3339 time"),
                )
            })
        })
        .transpose()
}

/// `POST /api/v1/runs/replay`: every failed run matching the filter. With `dry_run`, only
/// the count (and the first ids).
#[utoipa::path(post, path = "/api/v1/runs/replay", tag = "runs", security(("bearer" = [])),
    request_body(content = Option<crate::api::schemas::BulkReplayDoc>, description = "every field optional"),
    responses((status = 200, description = "dry run: the count", body = crate::api::schemas::BulkReplayAnswer), (status = 202, description = "accepted", body = crate::api::schemas::BulkReplayAnswer), (status = 422, description = "the body is not valid", body = crate::api::schemas::ErrorBody), (status = 401, description = "missing or wrong token", body = crate::api::schemas::ErrorBody), (status = 403, description = "a read token on a write route", body = crate::api::schemas::ErrorBody)))]
pub async fn replay_runs(
    State(app): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let q: BulkReplay = optional_json(&body)?;
    let filter = FailedRunFilter {
        flow_id: q.flow_id.clone(),
        since: parse_time("since", &q.since)?,
        until: parse_time("until", &q.until)?,
        error: q.error.clone(),
    };
    let (store, filter) = (&app.store, &filter);
    let matched = every_id(|after| async move {
        Ok(store
            .failed_runs(filter, after.as_deref(), ID_PAGE)
            .await?
            .into_iter()
            .map(|r| r.id)
            .collect())
    })
    .await?;
    if q.dry_run.unwrap_or(false) {
        return Ok(Json(json!({
            "dry_run": true,
            "matched": matched.len(),
            "run_ids": matched.iter().take(100).collect::<Vec<_>>(),
        }))
        .into_response());
    }
    let (mut replayed, mut skipped) = (Vec::new(), Vec::new());
    for id in &matched {
        match replay(&app, id, q.use_current_flow.unwrap_or(false)).await {
            Ok(_) => replayed.push(id.clone()),
            Err(e) => skipped.push(json!({"run_id": id, "error": e.code, "message": e.message})),
        }
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "dry_run": false,
            "matched": matched.len(),
            "replayed": replayed.len(),
            "run_ids": replayed,
            "skipped": skipped,
        })),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowTest {
    /// The event's payload (or give `event_id`).
    pub event: Option<serde_json::Value>,
    /// A stored event to test on: its payload, type and kept headers.
    pub event_id: Option<String>,
    /// The event type; by default the stored event's, else the flow's first, or `test`.
    pub event_type: Option<String>,
    /// Request headers the event would have arrived with.
    pub headers: Option<serde_json::Map<String, serde_json::Value>>,
    /// A draft of the flow (as `PUT /api/v1/flows/{id}` takes it), tested instead of the saved
    /// one and not saved: checked as a save would check it.
    pub flow: Option<serde_json::Value>,
}

/// `POST /api/v1/flows/{id}/test`: runs the flow (or the draft given) on the given event
/// without side effects.
#[utoipa::path(post, path = "/api/v1/flows/{id}/test", tag = "flows", security(("bearer" = [])), params(("id" = String, Path)),
    request_body(content = crate::api::schemas::FlowTestDoc),
    responses((status = 200, description = "OK", body = crate::api::schemas::TestReportDoc), (status = 422, description = "the body is not valid, the draft flow is not valid (`details` says where), or the flow's expressions overran their limits", body = crate::api::schemas::ErrorBody), (status = 404, description = "no such flow (without a draft), or no such event", body = crate::api::schemas::ErrorBody), (status = 409, description = "the stored event's payload expired", body = crate::api::schemas::ErrorBody), (status = 401, description = "missing or wrong token", body = crate::api::schemas::ErrorBody), (status = 403, description = "a read token on a write route", body = crate::api::schemas::ErrorBody), (status = 503, description = "the expression workers are busy; try again after `Retry-After`", body = crate::api::schemas::ErrorBody)))]
pub async fn test_flow(
    State(app): State<AppState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let test: FlowTest = crate::json::parse(&body).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            format!(
                "the body must be {{\"event\": <payload> or \"event_id\", \"event_type\"?, \"headers\"?, \"flow\"?}}: {e}"
            ),
        )
    })?;
    let report = run_test(&app, &id, test).await?;
    Ok(Json(report).into_response())
}

/// Runs flow `id` (or the draft in `test`) on the event `test` gives, with no side effect:
/// the API's test and the console builder's.
pub async fn run_test(
    app: &AppState,
    id: &str,
    test: FlowTest,
) -> Result<crate::engine::TestReport, ApiError> {
    let config = match test.flow {
        Some(draft) => std::sync::Arc::new(draft_config(app, id, draft).await?),
        None => app.config.get(),
    };
    let Some(flow) = config.flow(id).cloned() else {
        return Err(ApiError::not_found("flow", id));
    };
    let (payload, stored_type, stored_headers) = match (test.event, test.event_id) {
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                "give `event` (a payload) or `event_id` (a stored event), not both",
            ));
        }
        (None, None) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                "give `event` (a payload) or `event_id` (a stored event)",
            ));
        }
        (Some(payload), None) => (payload, None, None),
        (None, Some(event_id)) => {
            let Some(event) = app.store.event(&event_id).await? else {
                return Err(ApiError::not_found("event", &event_id));
            };
            if event.payload_expired {
                return Err(ApiError::payload_expired(&format!("event `{event_id}`")));
            }
            if event.source != flow.source {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_body",
                    format!(
                        "event `{event_id}` came from source `{}`; flow `{id}` takes events of `{}`",
                        event.source, flow.source
                    ),
                ));
            }
            let headers = match event.headers {
                serde_json::Value::Object(map) => Some(map),
                _ => None,
            };
            (event.payload, Some(event.event_type), headers)
        }
    };
    let raw = bytes::Bytes::from(payload.to_string());
    let event = std::sync::Arc::new(crate::engine::EventInfo {
        id: "evt_test".into(),
        event_type: test
            .event_type
            .or(stored_type)
            .or_else(|| flow.event_types.iter().next().cloned())
            .unwrap_or_else(|| "test".into()),
        source: flow.source.clone(),
        received_at: app.clock.now_ms(),
        headers: serde_json::Value::Object(test.headers.or(stored_headers).unwrap_or_default()),
    });
    let now = app.clock.now_ms();
    Ok(app
        .sandbox
        .test_flow(&config, &flow, event, raw, now)
        .await?)
}

/// The running config with the draft of flow `id` in it, checked as a save would be.
async fn draft_config(
    app: &AppState,
    id: &str,
    draft: serde_json::Value,
) -> Result<crate::config::Config, ApiError> {
    use crate::config::ObjectKind;
    let mut spec = match draft {
        serde_json::Value::Object(map) => serde_json::Value::Object(map),
        _ => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                "`flow` must be an object: the flow as the config file writes it",
            ));
        }
    };
    match spec.get("id") {
        None => spec["id"] = serde_json::Value::String(id.to_string()),
        Some(serde_json::Value::String(given)) if given == id => {}
        Some(given) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                format!("the draft's `id` is {given} but the path names `{id}`"),
            ));
        }
    }
    let saved = app
        .config
        .get()
        .objects
        .get(&(ObjectKind::Flow, id.to_string()))
        .map(|o| (o.spec.clone(), o.provisioned));
    if saved.as_ref().is_some_and(|(_, from_file)| *from_file) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "provisioned",
            format!(
                "flow `{id}` comes from the config file and is read-only here: test it as it is (without `flow`), or change it in the file"
            ),
        ));
    }
    let old = saved.map(|(spec, _)| spec);
    super::config_objects::unmask(ObjectKind::Flow, id, &mut spec, old.as_ref())?;
    super::config_objects::checked(app, ObjectKind::Flow, id, Some(&spec)).await
}

/// Every dead delivery `filter` matches and, unless `dry_run`, each sent again (a fresh round of
/// attempts): the matched ids and the replayed ones. The API's bulk replay and the console's.
pub async fn replay_dead_matching(
    app: &AppState,
    filter: crate::store::DeadFilter,
    dry_run: bool,
) -> Result<(Vec<String>, Vec<String>), ApiError> {
    let (store, filter) = (&app.store, &filter);
    let matched = every_id(|after| async move {
        store
            .dead_deliveries(filter, after.as_deref(), ID_PAGE)
            .await
    })
    .await?;
    if dry_run {
        return Ok((matched, Vec::new()));
    }
    let now = app.clock.now_ms();
    let mut replayed = Vec::new();
    for id in &matched {
        if let Some(job) = app.store.retry_delivery(id, now).await? {
            app.deliverer.schedule(job);
            replayed.push(id.clone());
        }
    }
    tracing::info!(
        matched = matched.len(),
        replayed = replayed.len(),
        "dead letters replayed by filter"
    );
    Ok((matched, replayed))
}

/// How many ids a bulk replay reads from the store at a time.
const ID_PAGE: usize = 500;

/// Every id that a paged read yields (`page(after)` answers up to [`ID_PAGE`] ids after
/// `after`, in order), each page a read of its own.
async fn every_id<F, P>(page: F) -> Result<Vec<String>, ApiError>
where
    F: Fn(Option<String>) -> P,
    P: std::future::Future<Output = Result<Vec<String>, crate::store::StoreError>>,
{
    let mut all: Vec<String> = Vec::new();
    loop {
        let ids = page(all.last().cloned()).await?;
        let done = ids.len() < ID_PAGE;
        all.extend(ids);
        if done {
            return Ok(all);
        }
    }
}

/// The filters of the runs list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunQuery {
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    after: Option<String>,
    flow: Option<String>,
    event_id: Option<String>,
    #[param(pattern = "^(running|waiting|completed|filtered|failed)?$")]
    status: Option<String>,
}

/// `GET /api/v1/runs?flow=&event_id=&status=`: newest first, without their steps.
#[utoipa::path(get, path = "/api/v1/runs", tag = "runs", security(("bearer" = [])),
    params(RunQuery),
    responses((status = 200, description = "OK", body = crate::api::schemas::ListPage<crate::store::RunSummary>), (status = 400, description = "a query parameter is not valid", body = crate::api::schemas::ErrorBody), (status = 401, description = "missing or wrong token", body = crate::api::schemas::ErrorBody)))]
pub async fn list_runs(
    State(app): State<AppState>,
    q: Result<axum::extract::Query<RunQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    use super::given;
    let q = super::query(q)?;
    let limit = super::check_limit(q.limit)?;
    let filter = crate::store::RunFilter {
        flow_id: given(&q.flow).map(str::to_string),
        event_id: given(&q.event_id).map(str::to_string),
        status: super::one_of(
            "status",
            given(&q.status),
            &["running", "waiting", "completed", "filtered", "failed"],
        )?,
    };
    let after = given(&q.after).map(str::to_string);
    let items = app.store.runs(&filter, after.as_deref(), limit).await?;
    Ok(super::page(items, limit, |r| r.id.clone()).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadReplay {
    destination_id: Option<String>,
    since: Option<String>,
    until: Option<String>,
    error: Option<String>,
    dry_run: Option<bool>,
}

/// `POST /api/v1/dead-letters/replay`: every dead delivery matching the filter gets a fresh
/// round of attempts. With `dry_run`, only the count (and the first ids).
#[utoipa::path(post, path = "/api/v1/dead-letters/replay", tag = "dead letters", security(("bearer" = [])),
    request_body(content = Option<crate::api::schemas::DeadReplayDoc>, description = "every field optional"),
    responses((status = 200, description = "dry run: the count", body = crate::api::schemas::DeadReplayAnswer), (status = 202, description = "accepted", body = crate::api::schemas::DeadReplayAnswer), (status = 422, description = "the body is not valid", body = crate::api::schemas::ErrorBody), (status = 401, description = "missing or wrong token", body = crate::api::schemas::ErrorBody), (status = 403, description = "a read token on a write route", body = crate::api::schemas::ErrorBody)))]
pub async fn replay_dead_letters(
    State(app): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let q: DeadReplay = optional_json(&body)?;
    let filter = crate::store::DeadFilter {
        destination_id: q.destination_id.clone(),
        since: parse_time("since", &q.since)?,
        until: parse_time("until", &q.until)?,
        error: q.error.clone(),
    };
    let dry_run = q.dry_run.unwrap_or(false);
    let (matched, replayed) = replay_dead_matching(&app, filter, dry_run).await?;
    if dry_run {
        return Ok(Json(json!({
            "dry_run": true,
            "matched": matched.len(),
            "delivery_ids": matched.iter().take(100).collect::<Vec<_>>(),
        }))
        .into_response());
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "dry_run": false,
            "matched": matched.len(),
            "delivery_ids": replayed,
        })),
    )
        .into_response())
}

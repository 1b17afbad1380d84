//! Config through the API: sources, event types, destinations, flows and alert rules listed, read,
//! created, replaced and deleted at `/api/v1/{kind}`. A change is checked by the same code that
//! checks the file, for the changed object alone and the objects that name it
//! (`Config::changed`: the rest is shared, not checked again), committed to the store, and then
//! swapped in whole: ingest, the dispatcher and the run worker see the new config from their
//! next event on. Objects from the config file are provisioned: they are
//! listed with the others but refused (`409 provisioned`) for any change. Secrets are shown
//! masked; a masked value written back keeps the stored secret; the store gets them sealed.

use super::error::ApiError;
use super::{Page, check_limit, given, page, query};
use crate::clock::rfc3339;
use crate::config::{Config, ObjectKind, ObjectSpec};
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

/// The schemas of `config`'s event types (of `only` that one when given), as JSON text, for
/// the schema versions.
pub fn schemas(config: &Config, only: Option<&str>) -> Vec<(String, String)> {
    config
        .event_types
        .values()
        .filter(|t| only.is_none_or(|name| t.name == name))
        .filter_map(|t| {
            let schema = t.schema.as_ref()?;
            Some((t.name.clone(), serde_json::to_string(schema).ok()?))
        })
        .collect()
}

/// `GET /api/v1/{kind}`: the objects of a kind by id, the file's and the API's.
#[utoipa::path(get, path = "/api/v1/{kind}", operation_id = "list_config_objects", tag = "config", security(("bearer" = [])),
    params(("kind" = crate::api::schemas::ObjectKindDoc, Path), Page),
    responses((status = 200, description = "OK", body = crate::api::schemas::ListPage<crate::api::schemas::ConfigObject>), (status = 404, description = "no such kind", body = crate::api::schemas::ErrorBody), (status = 400, description = "a query parameter is not valid", body = crate::api::schemas::ErrorBody), (status = 401, description = "missing or wrong token", body = crate::api::schemas::ErrorBody)))]
pub async fn list(
    kind: ObjectKind,
    app: AppState,
    q: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let limit = check_limit(q.limit)?;
    let config = app.config.get();
    let after = given(&q.after);
    let objects: Vec<&ObjectSpec> = config
        .objects
        .range((kind, String::new())..)
        .take_while(|((k, _), _)| *k == kind)
        .filter(|((_, id), _)| after.is_none_or(|a| id.as_str() > a))
        .map(|(_, o)| &**o)
        .take(limit)
        .collect();
    let ids = objects.iter().map(|o| o.id.clone()).collect();
    let health = extras(&app, kind, ids).await?;
    let data: Vec<Value> = objects
        .iter()
        .map(|o| view(&config, o, health.get(&o.id)))
        .collect();
    Ok(page(data, limit, |v| {
        v["id"].as_str().unwrap_or_default().to_string()
    })
    .into_response())
}

/// `GET /api/v1/{kind}/{id}`: one object; an event type with every version of its schema.
#[utoipa::path(get, path = "/api/v1/{kind}/{id}", operation_id = "get_config_object", tag = "config", security(("bearer" = [])),
    params(("kind" = crate::api::schemas::ObjectKindDoc, Path), ("id" = String, Path)),
    responses((status = 200, description = "OK", body = crate::api::schemas::ConfigObject), (status = 404, description = "not found", body = crate::api::schemas::ErrorBody), (status = 401, description = "missing or wrong token", body = crate::api::schemas::ErrorBody)))]
pub async fn get(kind: ObjectKind, app: AppState, id: String) -> Result<Response, ApiError> {
    let config = app.config.get();
    let Some(object) = config.objects.get(&(kind, id.clone())) else {
        return Err(ApiError::not_found(kind.noun(), &id));
    };
    let health = extras(&app, kind, vec![id.clone()]).await?;
    let mut shown = view(&config, object, health.get(&id));
    if kind == ObjectKind::EventType {
        let versions = app.store.schema_versions(&id).await?;
        shown["versions"] = versions
            .iter()
            .map(|v| json!({"version": v.version, "created_at": rfc3339(v.created_at), "schema": v.schema}))
            .collect();
    }
    Ok(Json(shown).into_response())
}

/// `POST /api/v1/{kind}`: a new object; its id is the spec's `id` (`name` for an event type).
#[utoipa::path(post, path = "/api/v1/{kind}", operation_id = "create_config_object", tag = "config", security(("bearer" = [])),
    params(("kind" = crate::api::schemas::ObjectKindDoc, Path)),
    request_body(content = crate::api::schemas::ConfigSpec, description = "the object as the config file writes it; secrets are write-only (`********` keeps the stored secret)"),
    responses((status = 201, description = "created", body = crate::api::schemas::ConfigObject), (status = 404, description = "no such kind", body = crate::api::schemas::ErrorBody), (status = 409, description = "an object with this id exists, or the config file has it", body = crate::api::schemas::ErrorBody), (status = 422, description = "the object is not valid; `details` has every error with its place", body = crate::api::schemas::ErrorBody), (status = 401, description = "missing or wrong token", body = crate::api::schemas::ErrorBody), (status = 403, description = "a read token on a write route", body = crate::api::schemas::ErrorBody)))]
pub async fn create(kind: ObjectKind, app: AppState, body: &[u8]) -> Result<Response, ApiError> {
    let spec = spec_from_body(body)?;
    let id = match spec.get(kind.id_field()) {
        Some(Value::String(id)) => id.clone(),
        _ => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                format!("a {} needs `{}`, a string", kind.noun(), kind.id_field()),
            ));
        }
    };
    let _one_at_a_time = app.config_changes.lock().await;
    if let Some(o) = app.config.get().objects.get(&(kind, id.clone())) {
        return Err(exists(o));
    }
    let mut spec = spec;
    unmask(kind, &id, &mut spec, None)?;
    change(&app, kind, &id, Some(spec)).await
}

/// `PUT /api/v1/{kind}/{id}`: creates or replaces the object; `id` in the body may be left
/// out and must match the path when given.
#[utoipa::path(put, path = "/api/v1/{kind}/{id}", operation_id = "put_config_object", tag = "config", security(("bearer" = [])),
    params(("kind" = crate::api::schemas::ObjectKindDoc, Path), ("id" = String, Path)),
    request_body(content = crate::api::schemas::ConfigSpec, description = "the object as the config file writes it; secrets are write-only (`********` keeps the stored secret)"),
    responses((status = 200, description = "replaced (or unchanged: `changed` is false)", body = crate::api::schemas::ConfigObject), (status = 201, description = "created", body = crate::api::schemas::ConfigObject), (status = 404, description = "no such kind", body = crate::api::schemas::ErrorBody), (status = 409, description = "the config file has this object", body = crate::api::schemas::ErrorBody), (status = 422, description = "the object is not valid; `details` has every error with its place", body = crate::api::schemas::ErrorBody), (status = 401, description = "missing or wrong token", body = crate::api::schemas::ErrorBody), (status = 403, description = "a read token on a write route", body = crate::api::schemas::ErrorBody)))]
pub async fn put(
    kind: ObjectKind,
    app: AppState,
    id: String,
    body: &[u8],
) -> Result<Response, ApiError> {
    let mut spec = spec_from_body(body)?;
    match spec.get(kind.id_field()) {
        None => {
            spec[kind.id_field()] = Value::String(id.clone());
        }
        Some(Value::String(given)) if *given == id => {}
        Some(given) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                format!("`{}` is {given} but the path names `{id}`", kind.id_field()),
            ));
        }
    }
    let _one_at_a_time = app.config_changes.lock().await;
    let config = app.config.get();
    if let Some(o) = config.objects.get(&(kind, id.clone())) {
        if o.provisioned {
            return Err(exists(o));
        }
        unmask(kind, &id, &mut spec, Some(&o.spec))?;
        if o.digest == crate::config::objects::digest(&spec) {
            let mut shown = view(&config, o, None);
            shown["changed"] = Value::Bool(false);
            return Ok(Json(shown).into_response());
        }
    } else {
        unmask(kind, &id, &mut spec, None)?;
    }
    change(&app, kind, &id, Some(spec)).await
}

/// Puts back the stored secrets that `spec` gives as the mask (what a read shows): writing back
/// an object as read keeps its secrets. A mask with no stored secret behind it is refused.
pub fn unmask(
    kind: ObjectKind,
    id: &str,
    spec: &mut Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    let missing = crate::config::redact::fields::restore_masked(kind, spec, old);
    if missing.is_empty() {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_object",
        format!(
            "{} `{id}`: a secret written as the mask `{}` is kept only where one is stored and still goes to the same receiver: {}",
            kind.noun(),
            crate::config::redact::MASK,
            missing.join("; ")
        ),
    ))
}

/// `DELETE /api/v1/{kind}/{id}`.
#[utoipa::path(delete, path = "/api/v1/{kind}/{id}", operation_id = "delete_config_object", tag = "config", security(("bearer" = [])),
    params(("kind" = crate::api::schemas::ObjectKindDoc, Path), ("id" = String, Path)),
    responses((status = 204, description = "deleted"), (status = 404, description = "not found", body = crate::api::schemas::ErrorBody), (status = 409, description = "the config file has this object, or a destination has pending deliveries, or a flow has unfinished runs", body = crate::api::schemas::ErrorBody), (status = 422, description = "other objects still refer to it; `details` says where", body = crate::api::schemas::ErrorBody), (status = 401, description = "missing or wrong token", body = crate::api::schemas::ErrorBody), (status = 403, description = "a read token on a write route", body = crate::api::schemas::ErrorBody)))]
pub async fn delete(kind: ObjectKind, app: AppState, id: String) -> Result<Response, ApiError> {
    let _one_at_a_time = app.config_changes.lock().await;
    match app.config.get().objects.get(&(kind, id.clone())) {
        None => return Err(ApiError::not_found(kind.noun(), &id)),
        Some(o) if o.provisioned => return Err(exists(o)),
        Some(_) => {}
    }
    let busy = match kind {
        ObjectKind::Destination => app
            .store
            .pending_deliveries_to(&id)
            .await?
            .gt(&0)
            .then_some("it has pending deliveries; pause it and let them finish, or wait for them to be dead-lettered"),
        ObjectKind::Flow => app
            .store
            .unfinished_runs_of(&id)
            .await?
            .gt(&0)
            .then_some("it has runs in progress; delete it once they have ended"),
        _ => None,
    };
    if let Some(why) = busy {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "in_use",
            format!("{} `{id}` cannot be deleted now: {why}", kind.noun()),
        ));
    }
    change(&app, kind, &id, None).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub fn spec_from_body(body: &[u8]) -> Result<Value, ApiError> {
    match crate::json::parse::<Value>(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            "the body must be a JSON object: the object as the config file writes it",
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            format!("the request body is not JSON: {e}"),
        )),
    }
}

fn exists(o: &ObjectSpec) -> ApiError {
    if o.provisioned {
        ApiError::new(
            StatusCode::CONFLICT,
            "provisioned",
            format!(
                "{} `{}` comes from the config file and is read-only through the API; change it in the file",
                o.kind.noun(),
                o.id
            ),
        )
    } else {
        ApiError::new(
            StatusCode::CONFLICT,
            "already_exists",
            format!(
                "{} `{}` exists; replace it with PUT /api/v1/{}/{}",
                o.kind.noun(),
                o.id,
                o.kind.as_str(),
                o.id
            ),
        )
    }
}

/// The running config with the change, checked as a change through the API is (its
/// expressions compiled in a worker), not committed: what `change` commits, and what a flow
/// test of a draft runs on.
pub async fn checked(
    app: &AppState,
    kind: ObjectKind,
    id: &str,
    spec: Option<&Value>,
) -> Result<Config, ApiError> {
    let current = app.config.get();
    let now = app.clock.now_ms();
    let key = (kind, id.to_string());
    let object = spec.map(|spec| {
        let mut object = ObjectSpec::new(kind, id.to_string(), spec.clone(), false);
        object.created_at = current
            .objects
            .get(&key)
            .and_then(|o| o.created_at)
            .or(Some(now));
        object.updated_at = Some(now);
        object
    });
    // Only the changed object is checked (and on a delete, those that name it); the rest is
    // shared with the running config. Off the async threads: a schema may take a while.
    let changed_id = id.to_string();
    let built = tokio::task::spawn_blocking(move || current.changed(kind, &changed_id, object))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("checking the config did not finish: {e}"),
            )
        })?;
    let mut config = built.map_err(|errors| invalid(kind, id, spec.is_none(), errors))?;
    // The changed object's expressions compile in a worker (identical ones once): the process
    // that serves never parses jq.
    let sites = config.take_expressions();
    app.sandbox
        .check_sites(&sites)
        .await
        .map_err(|errors| invalid(kind, id, spec.is_none(), errors))?;
    Ok(config)
}

/// Checks the config with the change, commits it, and swaps it in. The caller holds
/// `config_changes`.
async fn change(
    app: &AppState,
    kind: ObjectKind,
    id: &str,
    spec: Option<Value>,
) -> Result<Response, ApiError> {
    let now = app.clock.now_ms();
    let key = (kind, id.to_string());
    let created = !app.config.get().objects.contains_key(&key);
    let config = checked(app, kind, id, spec.as_ref()).await?;
    let config = Arc::new(config);
    // The store keeps the spec with its secrets sealed.
    let stored = match &spec {
        Some(s) => Some(
            app.sealer
                .seal_spec(kind, id, s)
                .map_err(|e| {
                    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
                })?
                .to_string(),
        ),
        None => None,
    };
    app.store
        .change_config(crate::store::ConfigChange {
            object: Some((kind.as_str().to_string(), id.to_string(), stored)),
            // Only an event type's own change can make a new version of its schema.
            schemas: match kind {
                ObjectKind::EventType => schemas(&config, Some(id)),
                _ => Vec::new(),
            },
            now,
        })
        .await?;
    app.config.replace(config.clone());
    app.deliverer.reconfigure(config.clone());
    app.activity.track(&config, now);
    if let Some(c) = app.store.clustered() {
        c.hint_config();
    }
    tracing::info!(
        kind = kind.noun(),
        id,
        change = if spec.is_none() {
            "deleted"
        } else if created {
            "created"
        } else {
            "replaced"
        },
        "config changed through the API"
    );
    match config.objects.get(&key) {
        Some(object) => {
            let mut shown = view(&config, object, None);
            shown["changed"] = Value::Bool(true);
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((status, Json(shown)).into_response())
        }
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

fn invalid(
    kind: ObjectKind,
    id: &str,
    deleting: bool,
    errors: crate::config::ConfigErrors,
) -> ApiError {
    let n = errors.0.len();
    let first = errors.0.first().map(|e| e.to_string()).unwrap_or_default();
    let message = if deleting {
        format!(
            "deleting {} `{id}` would leave the config with {n} error{}: {first}",
            kind.noun(),
            if n == 1 { "" } else { "s" }
        )
    } else {
        format!(
            "{} `{id}` is not valid ({n} error{}): {first}",
            kind.noun(),
            if n == 1 { "" } else { "s" }
        )
    };
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_object", message).with_details(
        errors
            .0
            .into_iter()
            .map(|e| json!({"place": e.place, "message": e.message}))
            .collect(),
    )
}

/// An object as the API shows it: secrets masked; a destination with its health.
fn view(config: &Config, o: &ObjectSpec, health: Option<&Value>) -> Value {
    let mut shown = json!({
        "kind": o.kind.as_str(),
        "id": o.id,
        "provisioned": o.provisioned,
        "digest": o.digest,
        "created_at": o.created_at.map(rfc3339),
        "updated_at": o.updated_at.map(rfc3339),
        "spec": crate::config::objects::masked(o.kind, &o.spec),
    });
    if let (Some(Value::Object(extra)), Value::Object(map)) = (health, &mut shown) {
        map.extend(extra.clone());
    }
    if o.kind == ObjectKind::EventType {
        shown["has_schema"] = Value::Bool(
            config
                .event_types
                .get(&o.id)
                .is_some_and(|t| t.schema.is_some()),
        );
    }
    shown
}

/// What a kind shows besides its spec: a destination's health, an alert rule's state.
async fn extras(
    app: &AppState,
    kind: ObjectKind,
    ids: Vec<String>,
) -> Result<HashMap<String, Value>, ApiError> {
    match kind {
        ObjectKind::Destination => destination_health(app, ids).await,
        ObjectKind::Alert => alert_states(app, ids).await,
        _ => Ok(HashMap::new()),
    }
}

/// Changes of an alert rule an API read shows (the store keeps up to
/// `store::ALERT_HISTORY_KEPT`).
const HISTORY_SHOWN: usize = 20;

/// Each alert rule with its condition, state and its last changes (fired, resolved) with the
/// notices each sent.
async fn alert_states(
    app: &AppState,
    ids: Vec<String>,
) -> Result<HashMap<String, Value>, ApiError> {
    let (states, histories) = app
        .store
        .alert_states_and_history(ids.clone(), HISTORY_SHOWN)
        .await?;
    let histories: HashMap<&String, Vec<_>> = ids.iter().zip(histories).collect();
    let config = app.config.get();
    Ok(config
        .alerts
        .iter()
        .filter(|rule| ids.contains(&rule.id))
        .map(|rule| {
            let state = states.iter().find(|s| s.alert_id == rule.id);
            let shown = json!({
                "severity": rule.severity,
                "when": rule.condition,
                "notify": rule.notify,
                "cooldown": humantime::format_duration(rule.cooldown).to_string(),
                "state": if state.is_some_and(|s| s.firing) { "firing" } else { "ok" },
                "since": state.map(|s| rfc3339(s.since)),
                "subject": state.map(|s| s.subject.clone()),
                "message": state.map(|s| s.message.clone()),
                "last_notice_at": state.and_then(|s| s.last_notice_at).map(rfc3339),
                "history": histories.get(&rule.id).map(|changes| changes.iter().map(|c| json!({
                    "at": rfc3339(c.at),
                    "state": if c.firing { "firing" } else { "resolved" },
                    "subject": c.subject,
                    "message": c.message,
                    "notices": c.notices,
                })).collect::<Vec<_>>()),
            });
            (rule.id.clone(), shown)
        })
        .collect())
}

/// Each destination's URL, last hour of attempts, circuit and pause.
async fn destination_health(
    app: &AppState,
    ids: Vec<String>,
) -> Result<HashMap<String, Value>, ApiError> {
    let since = app.clock.now_ms() - 3_600_000;
    let config = app.config.get();
    let recent = app.store.attempt_counts_of(ids, since).await?;
    let health: HashMap<String, crate::deliver::circuit::Health> =
        app.deliverer.health().into_iter().collect();
    Ok(recent
        .into_iter()
        .filter_map(|(id, (total, failed))| {
            let dest = config.destinations.get(&id)?;
            let h = health.get(&id)?;
            let shown = json!({
                "url": dest.shown_url(),
                "last_hour": {
                    "attempts": total,
                    "failed": failed,
                    "success_ratio": if total > 0 { Some((total - failed) as f64 / total as f64) } else { None },
                },
                "circuit": {
                    "state": h.circuit.as_str(),
                    "consecutive_failures": h.consecutive_failures,
                    "failing_since": h.failing_since.map(rfc3339),
                    "last_error": h.last_error,
                },
                "paused": h.paused.as_ref().map(|p| json!({"by": p.by, "reason": p.reason, "since": rfc3339(p.since)})),
            });
            Some((id, shown))
        })
        .collect())
}

/// The routes of one kind, for `api::routes`.
pub fn routes(kind: ObjectKind) -> [(String, axum::routing::MethodRouter<AppState>); 2] {
    use axum::routing::{get as get_route, post};
    let base = format!("/{}", kind.as_str());
    let one = format!("{base}/{{id}}");
    let all = get_route(
        move |State(app): State<AppState>,
              q: Result<Query<Page>, axum::extract::rejection::QueryRejection>| async move {
            list(kind, app, q).await
        },
    )
    .merge(post(
        move |State(app): State<AppState>, body: axum::body::Bytes| async move {
            create(kind, app, &body).await
        },
    ));
    let single = get_route(
        move |State(app): State<AppState>, Path(id): Path<String>| async move {
            get(kind, app, id).await
        },
    )
    .put(
        move |State(app): State<AppState>, Path(id): Path<String>, body: axum::body::Bytes| async move {
            put(kind, app, id, &body).await
        },
    )
    .delete(
        move |State(app): State<AppState>, Path(id): Path<String>| async move {
            delete(kind, app, id).await
        },
    );
    [(base, all), (one, single)]
}

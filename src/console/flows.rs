//! The flows pages: the list, a flow drawn as a diagram with its spec, and the builder that
//! makes and edits flows through the API's own checks (`PUT /api/v1/flows/{id}`), checks jq
//! as it is typed (`POST /api/v1/expressions/check`, from the console's script) and tests a
//! draft on a sample payload or a stored event before saving
//! (`POST /api/v1/flows/{id}/test` with the draft). Flows from the config file are read-only.

use super::builder::{Action, Draft, KINDS, Posted, read_form};
use super::diagram::{Diagram, draw};
use super::{Viewer, page, refuse_action};
use crate::api::error::ApiError;
use crate::config::ObjectKind;
use crate::state::AppState;
use askama::Template;
use axum::extract::{Form, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Redirect, Response};
use serde_json::Value;

pub struct FlowLine {
    pub id: String,
    pub source: String,
    pub event_types: String,
    pub steps: usize,
    pub from_file: bool,
}

#[derive(Template)]
#[template(path = "console/flows.html")]
struct FlowsPage {
    viewer: Option<Viewer>,
    page: &'static str,
    can_act: bool,
    flows: Vec<FlowLine>,
}

/// `GET /flows`.
pub async fn list(viewer: Viewer, State(app): State<AppState>) -> Response {
    let config = app.config.get();
    let flows = config
        .flows
        .iter()
        .map(|f| FlowLine {
            id: f.id.clone(),
            source: f.source.clone(),
            event_types: if f.event_types.is_empty() {
                "every type".into()
            } else {
                f.event_types.iter().cloned().collect::<Vec<_>>().join(", ")
            },
            steps: config
                .objects
                .get(&(ObjectKind::Flow, f.id.clone()))
                .and_then(|o| o.spec.get("steps"))
                .and_then(Value::as_array)
                .map_or(0, Vec::len),
            from_file: config
                .objects
                .get(&(ObjectKind::Flow, f.id.clone()))
                .is_some_and(|o| o.provisioned),
        })
        .collect();
    page(
        FlowsPage {
            can_act: viewer.can_act(),
            viewer: Some(viewer),
            page: "flows",
            flows,
        }
        .render(),
    )
}

#[derive(Template)]
#[template(path = "console/flow.html")]
struct FlowPage {
    viewer: Option<Viewer>,
    page: &'static str,
    can_act: bool,
    id: String,
    from_file: bool,
    diagram: Diagram,
    spec: String,
}

/// `GET /flows/{id}`: the diagram and the spec (secrets masked, as the API shows them).
pub async fn show(viewer: Viewer, State(app): State<AppState>, Path(id): Path<String>) -> Response {
    let config = app.config.get();
    let Some(object) = config.objects.get(&(ObjectKind::Flow, id.clone())) else {
        return ApiError::not_found("flow", &id).into_response();
    };
    let spec = crate::config::objects::masked(ObjectKind::Flow, &object.spec);
    page(
        FlowPage {
            can_act: viewer.can_act(),
            viewer: Some(viewer),
            page: "flows",
            from_file: object.provisioned,
            diagram: draw(&spec),
            spec: serde_json::to_string_pretty(&spec).unwrap_or_default(),
            id,
        }
        .render(),
    )
}

/// A stored event the builder offers to test on.
pub struct RecentEvent {
    pub id: String,
    pub label: String,
}

#[derive(Template)]
#[template(path = "console/builder.html")]
struct BuilderPage {
    viewer: Option<Viewer>,
    page: &'static str,
    csrf: String,
    editing: String,
    draft: Draft,
    kinds: [&'static str; 7],
    sources: Vec<String>,
    destinations: Vec<String>,
    recent: Vec<RecentEvent>,
    sample: String,
    event_id: String,
    error: Option<String>,
    details: Vec<String>,
    report: Option<Report>,
    diagram: Option<Diagram>,
}

/// A test's outcome as the builder shows it.
pub struct Report {
    pub outcome: &'static str,
    pub error: Option<String>,
    pub steps: Vec<ReportStep>,
}

pub struct ReportStep {
    pub title: String,
    pub status: String,
    pub input: String,
    pub output: Option<String>,
    pub request: Option<String>,
    pub error: Option<String>,
}

fn report(test: crate::engine::TestReport) -> Report {
    Report {
        outcome: test.outcome,
        error: test.error,
        steps: test.steps.iter().map(report_step).collect(),
    }
}

/// One step of a test report or of a stored run (the same shape: path, kind, status, input,
/// output, request, error).
pub fn report_step(s: &Value) -> ReportStep {
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
    let text = |k: &str| s.get(k).and_then(Value::as_str).map(str::to_string);
    // A branch says which case it took: its first (1), `else`, or none.
    let taken = match s.get("output").and_then(|o| o.get("case")) {
        Some(Value::Number(n)) => format!(" → case {}", n.as_u64().unwrap_or(0) + 1),
        Some(Value::String(e)) => format!(" → {e}"),
        Some(Value::Null) => " → no case".to_string(),
        _ => String::new(),
    };
    ReportStep {
        title: format!(
            "{} {}{}{taken}",
            text("path").unwrap_or_default(),
            text("kind").unwrap_or_default(),
            text("name").map(|n| format!(" · {n}")).unwrap_or_default()
        ),
        status: text("status").unwrap_or_default(),
        input: s.get("input").map(pretty).unwrap_or_default(),
        output: s.get("output").filter(|o| !o.is_null()).map(pretty),
        request: s.get("request").filter(|r| !r.is_null()).map(pretty),
        error: text("error"),
    }
}

/// What the builder page needs from the running config and the store.
async fn builder_page(app: &AppState, viewer: Viewer, posted: Posted) -> BuilderPage {
    let config = app.config.get();
    let source = posted.draft.source.clone();
    let recent = if source.is_empty() {
        Vec::new()
    } else {
        let filter = crate::store::EventFilter {
            source: Some(source),
            ..Default::default()
        };
        app.store
            .events(&filter, None, 20)
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|e| RecentEvent {
                label: format!("{} · {} · {}", e.received_at, e.event_type, e.id),
                id: e.id,
            })
            .collect()
    };
    BuilderPage {
        csrf: viewer.csrf.clone(),
        viewer: Some(viewer),
        page: "flows",
        editing: posted.editing,
        diagram: posted.draft.spec().ok().map(|s| draw(&s)),
        draft: posted.draft,
        kinds: KINDS,
        sources: config.sources.keys().cloned().collect(),
        destinations: config.destinations.keys().cloned().collect(),
        recent,
        sample: posted.sample,
        event_id: posted.event_id,
        error: None,
        details: Vec::new(),
        report: None,
    }
}

/// `GET /flows/new`: an empty draft (an admin's).
pub async fn new(viewer: Viewer, State(app): State<AppState>) -> Response {
    if !viewer.can_act() {
        return read_only();
    }
    let mut posted = Posted::default();
    posted.draft.source = app
        .config
        .get()
        .sources
        .keys()
        .next()
        .cloned()
        .unwrap_or_default();
    posted.sample = "{}".into();
    page(builder_page(&app, viewer, posted).await.render())
}

/// `GET /flows/{id}/edit`: the flow in the builder; a flow of the config file is refused.
pub async fn edit(viewer: Viewer, State(app): State<AppState>, Path(id): Path<String>) -> Response {
    if !viewer.can_act() {
        return read_only();
    }
    let config = app.config.get();
    let Some(object) = config.objects.get(&(ObjectKind::Flow, id.clone())) else {
        return ApiError::not_found("flow", &id).into_response();
    };
    if object.provisioned {
        return from_file(&id);
    }
    let spec = crate::config::objects::masked(ObjectKind::Flow, &object.spec);
    let posted = Posted {
        draft: Draft::from_spec(&spec),
        editing: id,
        sample: "{}".into(),
        ..Posted::default()
    };
    page(builder_page(&app, viewer, posted).await.render())
}

/// `POST /flows/builder`: a button of the builder: add, move or remove a step, test the
/// draft, or save it.
pub async fn post(
    viewer: Viewer,
    State(app): State<AppState>,
    Form(fields): Form<Vec<(String, String)>>,
) -> Response {
    let mut posted = read_form(&fields);
    if let Some(refused) = refuse_action(&viewer, &posted.csrf) {
        return refused;
    }
    if !posted.editing.is_empty() {
        // The flow edited keeps its id.
        posted.draft.id = posted.editing.clone();
    }
    let action = posted.action.clone().unwrap_or(Action::Refresh);
    posted.draft.apply(&action);
    let (id, editing) = (posted.draft.id.clone(), posted.editing.clone());
    let spec = posted
        .draft
        .spec()
        .and_then(|spec| keep_secrets(&app, &editing, &posted.draft, spec));
    let (sample, event_id) = (posted.sample.clone(), posted.event_id.clone());
    let mut shown = builder_page(&app, viewer, posted).await;
    let spec = match (&action, spec) {
        (Action::Test | Action::Save, Err(e)) => {
            shown.error = Some(e);
            return (StatusCode::UNPROCESSABLE_ENTITY, page(shown.render())).into_response();
        }
        (Action::Test | Action::Save, Ok(_)) if id.is_empty() => {
            shown.error = Some("the flow needs an id".into());
            return (StatusCode::UNPROCESSABLE_ENTITY, page(shown.render())).into_response();
        }
        (Action::Test | Action::Save, Ok(spec)) => spec,
        _ => return page(shown.render()),
    };
    let outcome = match action {
        Action::Test => test(&app, &id, spec, &sample, &event_id)
            .await
            .map(|r| shown.report = Some(report(r))),
        _ => save(&app, &id, &editing, spec).await.map(|()| {
            shown.report = None;
        }),
    };
    match (outcome, action) {
        (Ok(()), Action::Save) => {
            Redirect::to(&format!("/flows/{}", crate::ids::in_path(&id))).into_response()
        }
        (Ok(()), _) => page(shown.render()),
        (Err(e), _) => {
            shown.details = e
                .details
                .iter()
                .map(|d| {
                    format!(
                        "{}: {}",
                        d.get("place").and_then(Value::as_str).unwrap_or_default(),
                        d.get("message").and_then(Value::as_str).unwrap_or_default()
                    )
                })
                .collect();
            shown.error = Some(e.message);
            (e.status, page(shown.render())).into_response()
        }
    }
}

/// Puts back, in the draft of the saved flow `editing`, the secrets it shows as the mask, each
/// from the saved step the draft's step came from (however the steps moved); or why one
/// cannot be kept.
fn keep_secrets(
    app: &AppState,
    editing: &str,
    draft: &Draft,
    mut spec: Value,
) -> Result<Value, String> {
    if editing.is_empty() {
        return Ok(spec);
    }
    let config = app.config.get();
    let Some(saved) = config.objects.get(&(ObjectKind::Flow, editing.to_string())) else {
        return Ok(spec);
    };
    let placed = super::builder::saved_in_draft_order(&saved.spec, draft);
    let refused =
        crate::config::redact::fields::restore_masked(ObjectKind::Flow, &mut spec, Some(&placed));
    if refused.is_empty() {
        Ok(spec)
    } else {
        Err(refused.join("; "))
    }
}

/// Tests the draft on the sample payload, or on the stored event chosen.
async fn test(
    app: &AppState,
    id: &str,
    spec: Value,
    sample: &str,
    event_id: &str,
) -> Result<crate::engine::TestReport, ApiError> {
    let (event, event_id) = if event_id.is_empty() {
        let payload: Value = crate::json::parse(sample.as_bytes()).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                format!("the sample payload is not JSON: {e}"),
            )
        })?;
        (Some(payload), None)
    } else {
        (None, Some(event_id.to_string()))
    };
    let test = crate::api::FlowTest {
        event,
        event_id,
        event_type: None,
        headers: None,
        flow: Some(spec),
    };
    crate::api::run_test(app, id, test).await
}

/// Saves the draft as `PUT /api/v1/flows/{id}` would (a new flow must not take an id in use).
async fn save(app: &AppState, id: &str, editing: &str, spec: Value) -> Result<(), ApiError> {
    let body = serde_json::to_vec(&spec)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let answer = if editing.is_empty() {
        crate::api::config_objects::create(ObjectKind::Flow, app.clone(), &body).await
    } else {
        crate::api::config_objects::put(ObjectKind::Flow, app.clone(), id.to_string(), &body).await
    };
    answer.map(|_| ())
}

#[derive(serde::Deserialize)]
pub struct CheckForm {
    csrf: String,
    expression: String,
}

/// `POST /console/check-jq` (an admin, as the API's route): the console script's jq check, as
/// `POST /api/v1/expressions/check` answers it.
pub async fn check_jq(
    viewer: Viewer,
    State(app): State<AppState>,
    Form(form): Form<CheckForm>,
) -> Response {
    if let Some(refused) = refuse_action(&viewer, &form.csrf) {
        return refused;
    }
    match crate::api::check_expression(&app, &form.expression).await {
        Ok(answer) => Json(answer).into_response(),
        Err(e) => e.into_response(),
    }
}

fn read_only() -> Response {
    (
        StatusCode::FORBIDDEN,
        "this session's token has the `read` scope: it sees flows and changes none",
    )
        .into_response()
}

fn from_file(id: &str) -> Response {
    (
        StatusCode::CONFLICT,
        format!(
            "flow `{id}` comes from the config file and is read-only here; change it in the file"
        ),
    )
        .into_response()
}

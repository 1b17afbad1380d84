//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` annotations and the
//! views' `ToSchema` derives, served at `/api/v1/openapi.json` and committed as
//! `docs/openapi.json` (a test fails when the two differ). The types here only describe JSON
//! that handlers build directly.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Ferry",
        description = "Ferry's management API: sources, event types, destinations and flows; events, runs, deliveries, dead letters, replay, alerts and tokens. Every /api/v1 route needs a bearer token.",
        license(name = "Apache-2.0")
    ),
    paths(
        super::list_events,
        super::get_event,
        super::list_deliveries,
        super::get_delivery,
        super::retry_delivery,
        super::list_dead_letters,
        super::list_rejections,
        super::runs::list_runs,
        super::runs::get_run,
        super::runs::replay_run,
        super::runs::replay_runs,
        super::runs::test_flow,
        super::runs::replay_dead_letters,
        super::config_objects::list,
        super::config_objects::get,
        super::config_objects::create,
        super::config_objects::put,
        super::config_objects::delete,
        super::operations::pause,
        super::operations::resume,
        super::tokens::create,
        super::tokens::list,
        super::tokens::revoke,
        super::healthz,
        super::readyz,
        super::operations::metrics,
    ),
    components(schemas(ObjectKindDoc)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document as served and committed (pretty JSON, a final newline).
pub fn document() -> String {
    let mut text = ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

/// Every error answer: `{"error": <code>, "message": <for a person>, "details": [...]}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    error: String,
    message: String,
    details: Vec<serde_json::Value>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Status {
    status: String,
}

/// A page of a list: `data`, and `next`, the cursor of the next page (null on the last).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ListPage<T: ToSchema> {
    data: Vec<T>,
    next: Option<String>,
}

/// The kinds of config object.
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "kebab-case")]
pub enum ObjectKindDoc {
    Sources,
    EventTypes,
    Destinations,
    Flows,
    Alerts,
}

/// A config object: `kind`, `id`, `provisioned` (from the config file, read-only), `digest`
/// (SHA-256 of the spec's canonical JSON), `created_at`, `updated_at` (null for the file's),
/// `spec` (as written, secrets masked); a destination also has `url`, `last_hour`, `circuit`
/// and `paused`; an event type `has_schema`, and `versions` when read alone; an alert rule
/// `severity`, `when`, `notify`, `cooldown`, `state` (`firing` or `ok`), `since`, `subject`,
/// `message` and `last_notice_at`; an answer to a change has `changed`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ConfigObject {
    kind: String,
    id: String,
    provisioned: bool,
    digest: String,
    created_at: Option<String>,
    updated_at: Option<String>,
    spec: serde_json::Map<String, serde_json::Value>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct RetryAnswer {
    delivery_id: String,
    status: String,
}

#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ReplayOptionsDoc {
    use_current_flow: Option<bool>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ReplayAnswer {
    run_id: String,
    /// `running` or `waiting`.
    status: String,
    from_step: String,
    redelivered: Vec<String>,
}

#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct BulkReplayDoc {
    flow_id: Option<String>,
    /// Runs created at or after this time.
    #[schema(format = DateTime)]
    since: Option<String>,
    /// Runs created before this time.
    #[schema(format = DateTime)]
    until: Option<String>,
    /// A part of the run's error.
    error: Option<String>,
    dry_run: Option<bool>,
    use_current_flow: Option<bool>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct BulkReplayAnswer {
    dry_run: bool,
    matched: usize,
    replayed: Option<usize>,
    run_ids: Vec<String>,
    skipped: Option<Vec<serde_json::Map<String, serde_json::Value>>>,
}

#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct DeadReplayDoc {
    destination_id: Option<String>,
    /// Deliveries created at or after this time.
    #[schema(format = DateTime)]
    since: Option<String>,
    /// Deliveries created before this time.
    #[schema(format = DateTime)]
    until: Option<String>,
    /// A part of the delivery's last error.
    error: Option<String>,
    dry_run: Option<bool>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct DeadReplayAnswer {
    dry_run: bool,
    matched: usize,
    /// The ids put back (at most the first 100 in a dry run).
    delivery_ids: Vec<String>,
}

#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct FlowTestDoc {
    /// The event's payload.
    event: serde_json::Value,
    event_type: Option<String>,
    headers: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TestReportDoc {
    flow_id: String,
    /// `completed`, `filtered` or `failed`.
    outcome: String,
    error: Option<String>,
    steps: Vec<serde_json::Map<String, serde_json::Value>>,
}

#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct PauseDoc {
    reason: Option<String>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct PauseAnswer {
    id: String,
    paused: bool,
    changed: bool,
}

#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct NewTokenDoc {
    /// The id rule of every object: letters, digits, `-`, `_` and `.`, beginning with a
    /// letter or a digit.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[A-Za-z0-9][A-Za-z0-9._-]*$"
    )]
    name: String,
    scope: TokenScope,
}

#[derive(ToSchema, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum TokenScope {
    Admin,
    Read,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NewTokenAnswer {
    id: String,
    name: String,
    scope: String,
    created_at: String,
    /// Shown this once.
    token: String,
}

//! Types that only describe, for the OpenAPI document, JSON that handlers build directly: the
//! error body, list pages, config objects and their specs (whose secret fields come from the
//! one list, `secrets::fields::FIELDS`), and the answers of replays and retries. The handlers'
//! annotations and the document (`openapi.rs`) both look down at them.

use crate::config::redact::fields::{FIELDS, Holder, How, SECRET_HEADERS, SECRET_QUERY_PARAMS};
use serde_json::json;
use utoipa::ToSchema;
use utoipa::openapi::{RefOr, schema::Schema};

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
    spec: ConfigSpec,
}

/// A config object's spec as the config file writes it. Its secrets (`secrets::fields`) are
/// write-only: accepted on write, shown as `********` on every read; the mask written back on
/// `PUT` keeps the stored secret.
pub struct ConfigSpec;

impl utoipa::PartialSchema for ConfigSpec {
    fn schema() -> RefOr<Schema> {
        use utoipa::openapi::schema::{AnyOfBuilder, Ref};
        AnyOfBuilder::new()
            .item(Ref::from_schema_name("SourceSpec"))
            .item(Ref::from_schema_name("DestinationSpec"))
            .item(Ref::from_schema_name("FlowSpec"))
            .item(from_json(json!({"type": "object", "additionalProperties": true, "description": "an event type or an alert rule"})))
            .description(Some("the object as the config file writes it; secrets are write-only (shown as `********`; `********` written back keeps the stored secret)"))
            .into()
    }
}
impl ToSchema for ConfigSpec {}

/// A source's spec: its secret fields.
pub struct SourceSpec;
impl utoipa::PartialSchema for SourceSpec {
    fn schema() -> RefOr<Schema> {
        holder_schema(
            Holder::Source,
            "a source (the fields that hold secrets; the rest as the config file writes it)",
        )
    }
}
impl ToSchema for SourceSpec {}

/// A destination's spec: its secret fields.
pub struct DestinationSpec;
impl utoipa::PartialSchema for DestinationSpec {
    fn schema() -> RefOr<Schema> {
        holder_schema(
            Holder::Destination,
            "a destination (the fields that hold secrets; the rest as the config file writes it)",
        )
    }
}
impl ToSchema for DestinationSpec {}

/// An `http` step's secret fields.
pub struct HttpStepSpec;
impl utoipa::PartialSchema for HttpStepSpec {
    fn schema() -> RefOr<Schema> {
        holder_schema(
            Holder::HttpStep,
            "an http step (the fields that hold secrets; the rest as the config file writes it)",
        )
    }
}
impl ToSchema for HttpStepSpec {}

/// A flow's spec: the `http` steps hold its secrets.
pub struct FlowSpec;
impl utoipa::PartialSchema for FlowSpec {
    fn schema() -> RefOr<Schema> {
        from_json(json!({
            "type": "object",
            "additionalProperties": true,
            "description": "a flow; its http steps (in `steps`, and in the step lists of `branch` cases) hold its secrets",
            "properties": {"steps": {"type": "array", "items": {
                "type": "object",
                "additionalProperties": true,
                "properties": {"http": {"$ref": "#/components/schemas/HttpStepSpec"}}
            }}}
        }))
    }
}
impl ToSchema for FlowSpec {}

/// The schema of a holder's secret fields, from the one list (`secrets::fields::FIELDS`): an
/// object that may have other properties, whole secrets `writeOnly`.
fn holder_schema(holder: Holder, about: &str) -> RefOr<Schema> {
    let mut root = json!({"type": "object", "additionalProperties": true, "description": about, "properties": {}});
    for field in FIELDS.iter().filter(|f| f.holder == holder) {
        let leaf = match field.how {
            How::Whole => json!({"type": "string", "writeOnly": true, "description": field.about}),
            How::Headers => {
                json!({"type": "object", "additionalProperties": {"type": "string"}, "description": field.about})
            }
            How::Url => json!({"type": "string", "description": field.about}),
        };
        insert(&mut root, field.path, leaf);
    }
    if holder == Holder::Source {
        root["properties"]["request"] = json!({"$ref": "#/components/schemas/HttpStepSpec", "description": "a polling source's request: its secrets are an http step's"});
    }
    if holder != Holder::Source {
        for (name, what) in [
            (SECRET_HEADERS, "header names"),
            (SECRET_QUERY_PARAMS, "query parameter names"),
        ] {
            root["properties"][name] = json!({"type": "array", "items": {"type": "string"}, "description": format!("more {what} whose values are secrets")});
        }
    }
    from_json(root)
}

/// Puts `leaf` at `path` under `node`'s properties, making the objects on the way.
fn insert(node: &mut serde_json::Value, path: &[&str], leaf: serde_json::Value) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let properties = &mut node["properties"];
    if rest.is_empty() {
        properties[*first] = leaf;
        return;
    }
    if !properties[*first].is_object() {
        properties[*first] =
            json!({"type": "object", "additionalProperties": true, "properties": {}});
    }
    insert(&mut properties[*first], rest, leaf);
}

/// A schema written as JSON (an object schema: utoipa reads one from JSON as it writes it).
fn from_json(value: serde_json::Value) -> RefOr<Schema> {
    serde_json::from_value(value).unwrap_or_default()
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
    /// The event's payload (or give `event_id`).
    event: Option<serde_json::Value>,
    /// A stored event to test on: its payload, type and kept headers.
    event_id: Option<String>,
    /// By default the stored event's type, else the flow's first, or `test`.
    event_type: Option<String>,
    headers: Option<serde_json::Map<String, serde_json::Value>>,
    /// A draft of the flow (as `PUT /api/v1/flows/{id}` takes it), tested instead of the saved
    /// one and not saved: checked as a save would check it.
    flow: Option<serde_json::Value>,
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

#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ExpressionCheckDoc {
    /// A jq expression, as a flow step or a filter would hold it.
    expression: String,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ExpressionCheckAnswer {
    valid: bool,
    /// Why it does not compile.
    error: Option<String>,
    /// The 1-based byte offset of the first error in the expression, when it has one.
    position: Option<u64>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct EventReplayAnswer {
    event_id: String,
    /// The new runs, one per flow that takes the event now.
    run_ids: Vec<String>,
    /// Deliveries the new runs made at once.
    deliveries: u64,
}

//! The config file: reading it (with `${ENV}` substitution), and checking it once into typed,
//! compiled values (jq programs, JSON Schema validators, parsed URLs, decoded keys) that the
//! rest of Ferry uses without re-checking. Every problem is reported with its place.

mod alerts;
pub mod objects;
mod places;
mod raw;
pub mod secret;

use crate::deliver::egress::{AllowEntry, EgressPolicy, MAX_ALLOW_ENTRIES};
use crate::deliver::retry::RetryPolicy;
use crate::engine::expr::Expr;
use crate::engine::program::{Auth, Delay, HttpStep, Instr, OAuth2, Op, Program, Target};
use crate::engine::template::Template;
use raw::*;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use alerts::{AlertRule, Channel, ChannelKind, Condition, Severity, Smtp, SmtpTls};
pub use objects::{FileLayer, ObjectKind, ObjectSpec, Objects};
pub use places::Places;
pub use secret::Secret;

/// The running config: read on every request, replaced whole when an object changes through
/// the API. Cheap to clone.
#[derive(Clone)]
pub struct LiveConfig(Arc<arc_swap::ArcSwap<Config>>);

impl LiveConfig {
    pub fn new(config: Arc<Config>) -> Self {
        LiveConfig(Arc::new(arc_swap::ArcSwap::new(config)))
    }

    /// The config as it is now; it stays whole for as long as it is held.
    pub fn get(&self) -> Arc<Config> {
        self.0.load_full()
    }

    pub fn replace(&self, config: Arc<Config>) {
        self.0.store(config);
    }
}

#[derive(Debug)]
pub struct Config {
    pub settings: Settings,
    pub sources: BTreeMap<String, Arc<Source>>,
    pub event_types: BTreeMap<String, Arc<EventType>>,
    pub destinations: BTreeMap<String, Arc<Destination>>,
    pub flows: Vec<Arc<Flow>>,
    pub channels: BTreeMap<String, Arc<alerts::Channel>>,
    pub alerts: Vec<Arc<alerts::AlertRule>>,
    /// Every source, event type, destination and flow as written, with where it came from.
    pub objects: Objects,
    /// The config file this config was built from.
    pub file: Arc<FileLayer>,
    /// Every jq expression in the config with its place: whether they compile is asked of an
    /// expression worker (`Sandbox::check_config`) before the config is used.
    pub expressions: Vec<ExprSite>,
}

/// The expressions at `sites` that `check` (a worker's compile) refuses, as errors with their
/// places.
pub fn expression_errors(
    sites: &[ExprSite],
    mut check: impl FnMut(&Expr) -> Result<(), String>,
) -> Result<(), ConfigErrors> {
    let errors: Vec<ConfigError> = sites
        .iter()
        .filter_map(|site| {
            let message = check(&site.expr).err()?;
            Some(ConfigError {
                place: site.place.clone(),
                message: format!("`{}`: {message}", site.field),
            })
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errors, Vec::new()))
    }
}

/// A jq expression of the config and where it is written.
#[derive(Debug, Clone)]
pub struct ExprSite {
    pub place: String,
    /// The field, as errors name it (`filter`, `http.headers.accept`).
    pub field: String,
    pub expr: Expr,
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// What outbound requests may reach (`allow_private_destinations`, `egress.allow`).
    pub egress: Arc<EgressPolicy>,
    /// Largest accepted ingest body, in bytes.
    pub max_body_size: usize,
    /// How many refused inputs the rejected log keeps (oldest dropped first).
    pub rejected_log_size: usize,
    pub public_url: Option<url::Url>,
    /// How often alert rules are evaluated.
    pub alert_interval: Duration,
    /// The expression workers: how many, and the limits they run under.
    pub expressions: crate::engine::sandbox::Limits,
    pub memory: MemoryLimits,
    pub connections: ConnectionLimits,
    /// How long finished work, dead letters and bodies are kept.
    pub retention: RetentionLimits,
}

/// How long the store keeps things (`settings.retention`, `payload_retention`,
/// `dead_letter_retention`). Pending work is kept whatever its age.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionLimits {
    /// Finished events with their runs, deliveries and attempts, and the rejected log.
    pub finished: Duration,
    /// Events with a dead letter (a dead delivery or a failed run): at least `finished`.
    pub dead_letters: Duration,
    /// Bodies (payloads, contexts, step outputs, delivery bodies, response bodies): at most
    /// `finished`; `None` keeps them as long as their records.
    pub payloads: Option<Duration>,
}

pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
pub const DEFAULT_DEAD_LETTER_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// The shortest retention of any kind: the pruner looks every minute.
pub const MIN_RETENTION: Duration = Duration::from_secs(60);

/// How many bytes of payloads memory may hold (`settings.memory`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLimits {
    /// Bodies of requests to `/in/{source}` being read, checked and committed; past this,
    /// ingest answers `503`.
    pub ingest_bytes: usize,
    /// Bodies held for deliveries; past this they stay in the store until their attempt.
    pub delivery_bytes: usize,
}

/// What one client connection may take (`settings.connections`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections served at once; past this, new ones wait to be accepted.
    pub max: usize,
    /// From a connection's first byte of a request (or its opening) to the end of the head.
    pub header_read_timeout: Duration,
    /// From the end of a request's head to the end of its body.
    pub body_read_timeout: Duration,
    /// How long a kept-alive connection may stay without a request.
    pub idle_timeout: Duration,
}

pub const DEFAULT_MAX_BODY_SIZE: usize = 1024 * 1024;
pub const DEFAULT_INGEST_BYTES: usize = 64 * 1024 * 1024;
pub const DEFAULT_DELIVERY_BYTES: usize = 64 * 1024 * 1024;
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// The largest `connections.max` accepted.
pub const MAX_CONNECTIONS_LIMIT: usize = 1_000_000;
pub const DEFAULT_REJECTED_LOG_SIZE: usize = 10_000;

#[derive(Debug)]
pub struct Source {
    pub id: String,
    pub verify: Verify,
    pub event_type: FieldRef,
    pub idempotency_key: Option<FieldRef>,
}

#[derive(Debug)]
pub enum Verify {
    None,
    StandardWebhooks {
        key: Secret,
        tolerance: Duration,
    },
    Hmac {
        header: String,
        key: Secret,
        encoding: SignatureEncoding,
        prefix: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureEncoding {
    Hex,
    Base64,
}

/// Where a value is read from in an incoming request.
#[derive(Debug)]
pub enum FieldRef {
    Body(Expr),
    /// A header name, lower case.
    Header(String),
}

pub struct EventType {
    pub name: String,
    /// The schema as written (read from `schema_file` when it was given that way).
    pub schema: Option<serde_json::Value>,
    pub validator: Option<jsonschema::Validator>,
}

impl fmt::Debug for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "EventType({}, schema: {})",
            self.name,
            self.validator.is_some()
        )
    }
}

#[derive(Debug)]
pub struct Destination {
    pub id: String,
    pub url: url::Url,
    pub method: reqwest::Method,
    pub headers: Vec<(reqwest::header::HeaderName, reqwest::header::HeaderValue)>,
    pub signing: Option<Secret>,
    pub timeout: Duration,
    pub retry: RetryPolicy,
    pub concurrency: usize,
    pub breaker: crate::deliver::circuit::BreakerConfig,
    /// Header and query parameter names (lower case) whose values are secrets besides the
    /// names `secrets::fields` knows.
    pub secret_headers: Vec<String>,
    pub secret_query_params: Vec<String>,
}

impl Destination {
    /// Whether the value of the destination's header `name` is a secret.
    pub fn secret_header(&self, name: &str) -> bool {
        crate::secrets::fields::is_secret_header_or_listed(name, &self.secret_headers)
    }

    /// The URL as reads and errors show it: its secret parts masked.
    pub fn shown_url(&self) -> String {
        crate::secrets::url::shown(self.url.as_str(), &self.secret_query_params)
    }
}

#[derive(Debug)]
pub struct Flow {
    pub id: String,
    pub source: String,
    /// Empty means every event type of the source.
    pub event_types: BTreeSet<String>,
    /// A hash of the flow's definition; a run remembers the version it started on.
    pub version: String,
    pub program: Program,
    /// The program as the expression workers read it (JSON), and a digest of that text.
    pub wire: Arc<str>,
    pub wire_digest: u64,
}

/// One problem in a config file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub place: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.place, self.message)
    }
}

/// Every problem found in a config file; with them, the config's expressions, which a worker
/// has not compiled yet (`Sandbox::check_sites`), so that one pass reports every error.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>, pub Vec<ExprSite>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "the config has {n} error{}:",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

/// Reads and checks the config file at `path`, taking `${NAME}` values from the process
/// environment.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(
            vec![ConfigError {
                place: file.clone(),
                message: format!("cannot read the file: {e}"),
            }],
            Vec::new(),
        )
    })?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    load_str(&text, &file, &base, &|name| std::env::var(name).ok())
}

/// Checks config text. `file` names it in errors; `base` is where `schema_file` paths start.
pub fn load_str(
    text: &str,
    file: &str,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let places = Places::new(file, text);
    let mut errors = Vec::new();
    let text = substitute_env(text, &places, env, &mut errors);
    let layer = Arc::new(FileLayer {
        name: file.to_string(),
        text,
        base: base.to_path_buf(),
    });
    match build(&layer, &[]) {
        Ok(config) if errors.is_empty() => Ok(config),
        Ok(config) => Err(ConfigErrors(errors, config.expressions)),
        Err(ConfigErrors(more, sites)) => {
            errors.extend(more);
            Err(ConfigErrors(errors, sites))
        }
    }
}

/// Checks the objects of a config file together with objects made through the API, as one
/// config: every reference, id and expression is checked the same way whatever its origin.
/// Errors about an API object name it `api (kind id)`.
pub fn build(file: &Arc<FileLayer>, api: &[ObjectSpec]) -> Result<Config, ConfigErrors> {
    let mut places = Places::new(&file.name, &file.text);
    let yaml_error = |e: serde_yaml::Error| {
        let place = match e.location() {
            Some(loc) => places_line(&file.name, loc.line()),
            None => file.name.clone(),
        };
        ConfigErrors(
            vec![ConfigError {
                place,
                // A value in the wrong place may be a secret: the message does not quote it.
                message: crate::secrets::without_quoted_values(&e.to_string()),
            }],
            Vec::new(),
        )
    };
    let mut raw: RawConfig = serde_yaml::from_str(&file.text).map_err(yaml_error)?;
    let tree: serde_json::Value = serde_yaml::from_str(&file.text).map_err(yaml_error)?;
    let mut objects = Objects::new();
    for kind in ObjectKind::ALL {
        for spec in objects::items(&tree, kind) {
            if let Some(id) = spec.get(kind.id_field()).and_then(|v| v.as_str()) {
                objects.insert(
                    (kind, id.to_string()),
                    ObjectSpec::new(kind, id.to_string(), spec.clone(), true),
                );
            }
        }
    }
    let mut errors = Vec::new();
    for object in api {
        let place = format!("api ({} {})", object.kind.noun(), object.id);
        if objects.contains_key(&(object.kind, object.id.clone())) {
            errors.push(ConfigError {
                place,
                message: format!(
                    "the config file `{}` defines this {} too; delete one of them",
                    file.name,
                    object.kind.noun()
                ),
            });
            continue;
        }
        places.add_api_object(object.kind.section(), &object.id);
        if let Err(message) = add_raw_object(&mut raw, object) {
            errors.push(ConfigError { place, message });
            continue;
        }
        objects.insert((object.kind, object.id.clone()), object.clone());
    }
    let mut checker = Checker {
        places: &places,
        base: &file.base,
        errors,
        expressions: Vec::new(),
    };
    let config = checker.check(raw, objects, file.clone());
    if checker.errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(checker.errors, config.expressions))
    }
}

fn places_line(file: &str, line: usize) -> String {
    format!("{file}:{line}")
}

/// Reads an API object's spec as the file's entry of its kind would be read.
fn add_raw_object(raw: &mut RawConfig, object: &ObjectSpec) -> Result<(), String> {
    let spec = object.spec.clone();
    if !spec.is_object() {
        return Err("the spec is not a JSON object (its stored copy cannot be read)".into());
    }
    let id_field = object.kind.id_field();
    if spec.get(id_field).and_then(|v| v.as_str()) != Some(object.id.as_str()) {
        return Err(format!("`{id_field}` must be `{}`", object.id));
    }
    let shape = |e: serde_json::Error| crate::secrets::without_quoted_values(&e.to_string());
    match object.kind {
        ObjectKind::Source => raw
            .sources
            .push(serde_json::from_value(spec).map_err(shape)?),
        ObjectKind::EventType => {
            let t: RawEventType = serde_json::from_value(spec).map_err(shape)?;
            if t.schema_file.is_some() {
                return Err("`schema_file` names a file on the server and is not accepted through the API; give the schema inline as `schema` (`ferry apply` does this for you)".into());
            }
            raw.event_types.push(t)
        }
        ObjectKind::Destination => raw
            .destinations
            .push(serde_json::from_value(spec).map_err(shape)?),
        ObjectKind::Flow => raw.flows.push(serde_json::from_value(spec).map_err(shape)?),
        ObjectKind::Alert => raw
            .alerts
            .push(serde_json::from_value(spec).map_err(shape)?),
    }
    Ok(())
}

/// Compiles an event type's JSON Schema (draft 2020-12; the crate's network features are off,
/// so a remote `$ref` is refused, never fetched), or says why it cannot.
pub(crate) fn compile_schema(schema: &serde_json::Value) -> Result<jsonschema::Validator, String> {
    jsonschema::draft202012::new(schema).map_err(|e| {
        format!(
            "the schema is not a valid JSON Schema (draft 2020-12): {e} at `{}`",
            e.schema_path()
        )
    })
}

/// Whether checking `text` (after `${NAME}` substitution with `env`) reads a `schema_file`
/// from disk. The config fuzz target skips such texts: it checks text, not the files it names
/// (`/dev/zero` would be read until memory runs out).
pub(crate) fn names_schema_file(text: &str, env: &dyn Fn(&str) -> Option<String>) -> bool {
    let text = substitute_env(text, &Places::new("", text), env, &mut Vec::new());
    serde_yaml::from_str::<RawConfig>(&text)
        .is_ok_and(|raw| raw.event_types.iter().any(|t| t.schema_file.is_some()))
}

/// `${NAME}` substitution alone, with every unset name reported by its line (`ferry apply`
/// reads a file this way; the server checks what it is sent).
pub fn substitute(
    text: &str,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigErrors> {
    let places = Places::new(file, text);
    let mut errors = Vec::new();
    let out = substitute_env(text, &places, env, &mut errors);
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ConfigErrors(errors, Vec::new()))
    }
}

/// Replaces `${NAME}` with the environment's value; `$${` stands for a literal `${`.
/// Comment lines are left alone.
fn substitute_env(
    text: &str,
    places: &Places,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
) -> String {
    let mut out = String::with_capacity(text.len());
    for (index, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(pos) = rest.find("${") {
            if rest[..pos].ends_with('$') {
                out.push_str(&rest[..pos - 1]);
                out.push_str("${");
                rest = &rest[pos + 2..];
                continue;
            }
            out.push_str(&rest[..pos]);
            let after = &rest[pos + 2..];
            match after.find('}') {
                Some(end) => {
                    let name = &after[..end];
                    match env(name) {
                        Some(value) => out.push_str(&value),
                        None => errors.push(ConfigError {
                            place: places.at_line(index + 1),
                            message: format!("environment variable `{name}` is not set"),
                        }),
                    }
                    rest = &after[end + 1..];
                }
                None => {
                    errors.push(ConfigError {
                        place: places.at_line(index + 1),
                        message: "`${` without a closing `}`".into(),
                    });
                    out.push_str(&rest[pos..]);
                    rest = "";
                }
            }
        }
        out.push_str(rest);
    }
    out
}

struct Checker<'a> {
    places: &'a Places,
    base: &'a Path,
    errors: Vec<ConfigError>,
    expressions: Vec<ExprSite>,
}

impl Checker<'_> {
    fn error(&mut self, place: String, message: impl Into<String>) {
        self.errors.push(ConfigError {
            place,
            message: message.into(),
        });
    }

    fn check_id(&mut self, place: &str, id: &str) {
        self.check_name(place, "id", id);
    }

    /// Checks an object's id (or an event type's `name`) against [`ID_RULE`].
    fn check_name(&mut self, place: &str, field: &str, id: &str) {
        if !valid_id(id) {
            self.error(place.to_string(), format!("`{field}` {ID_RULE}"));
        }
    }

    fn duration(
        &mut self,
        place: &str,
        field: &str,
        value: &Option<String>,
        default: Duration,
    ) -> Duration {
        match value {
            None => default,
            Some(text) => match parse_duration(text) {
                Ok(d) => d,
                Err(e) => {
                    self.error(place.to_string(), format!("`{field}`: {e}"));
                    default
                }
            },
        }
    }

    /// [`Self::duration`], refused below `min`.
    fn duration_at_least(
        &mut self,
        place: &str,
        field: &str,
        value: &Option<String>,
        default: Duration,
        min: Duration,
    ) -> Duration {
        let d = self.duration(place, field, value, default);
        if d < min {
            self.error(
                place.to_string(),
                format!(
                    "`{field}` must be at least {}",
                    humantime::format_duration(min)
                ),
            );
            return default;
        }
        d
    }

    fn method(
        &mut self,
        place: &str,
        field: &str,
        given: Option<&str>,
        default: &str,
    ) -> reqwest::Method {
        let text = given.unwrap_or(default);
        match text.to_ascii_uppercase().parse::<reqwest::Method>() {
            Ok(m) => m,
            Err(_) => {
                self.error(
                    place.to_string(),
                    format!("`{field}`: `{text}` is not an HTTP method"),
                );
                reqwest::Method::from_bytes(default.as_bytes()).unwrap_or(reqwest::Method::POST)
            }
        }
    }

    /// An expression to be compiled by a worker with the rest (`Config::expressions`).
    fn expr(&mut self, place: &str, field: &str, code: &str) -> Option<Expr> {
        match Expr::new(code) {
            Ok(e) => {
                self.expressions.push(ExprSite {
                    place: place.to_string(),
                    field: field.to_string(),
                    expr: e.clone(),
                });
                Some(e)
            }
            Err(e) => {
                self.error(place.to_string(), format!("`{field}`: {e}"));
                None
            }
        }
    }

    /// A `{{ jq }}` template; its placeholders are checked like expressions.
    fn template(&mut self, place: &str, field: &str, text: &str) -> Option<Template> {
        match Template::parse(text) {
            Ok(t) => {
                for e in t.exprs() {
                    self.expressions.push(ExprSite {
                        place: place.to_string(),
                        field: field.to_string(),
                        expr: e.clone(),
                    });
                }
                Some(t)
            }
            Err(e) => {
                self.error(place.to_string(), format!("`{field}`: {e}"));
                None
            }
        }
    }

    fn check(&mut self, raw: RawConfig, objects: Objects, file: Arc<FileLayer>) -> Config {
        let settings = self.settings(raw.settings);
        let mut sources = BTreeMap::new();
        for s in raw.sources {
            let place = self.places.object("sources", "source", &s.id);
            if let Some(source) = self.source(&place, s)
                && sources
                    .insert(source.id.clone(), Arc::new(source))
                    .is_some()
            {
                self.error(place, "a source with this id is already defined");
            }
        }
        let mut event_types = BTreeMap::new();
        for t in raw.event_types {
            let place = self
                .places
                .object_named("event_types", "event type", "name", &t.name);
            self.check_name(&place, "name", &t.name);
            let et = self.event_type(&place, t);
            if event_types.insert(et.name.clone(), Arc::new(et)).is_some() {
                self.error(place, "an event type with this name is already defined");
            }
        }
        let mut destinations = BTreeMap::new();
        for d in raw.destinations {
            let place = self.places.object("destinations", "destination", &d.id);
            if let Some(dest) = self.destination(&place, d, &settings)
                && destinations
                    .insert(dest.id.clone(), Arc::new(dest))
                    .is_some()
            {
                self.error(place, "a destination with this id is already defined");
            }
        }
        let mut flows = Vec::new();
        let mut flow_ids = BTreeSet::new();
        for f in raw.flows {
            let place = self.places.object("flows", "flow", &f.id);
            self.check_id(&place, &f.id);
            if !flow_ids.insert(f.id.clone()) {
                self.error(place.clone(), "a flow with this id is already defined");
            }
            if let Some(flow) =
                self.flow(&place, f, &sources, &event_types, &destinations, &settings)
            {
                flows.push(Arc::new(flow));
            }
        }
        let channels = self.channels(raw.channels, &settings);
        let alerts = self.alerts(raw.alerts, &channels, &sources, &destinations);
        Config {
            settings,
            sources,
            event_types,
            destinations,
            flows,
            channels,
            alerts,
            objects,
            file,
            expressions: std::mem::take(&mut self.expressions),
        }
    }

    fn settings(&mut self, raw: RawSettings) -> Settings {
        let place = self.places.section("settings");
        let retention = self.retention(&place, &raw);
        let public_url = raw.public_url.and_then(|u| match url::Url::parse(&u) {
            Ok(u) => Some(u),
            Err(e) => {
                self.error(
                    place.clone(),
                    format!("`public_url`: `{u}` is not a URL ({e})"),
                );
                None
            }
        });
        let max_body_size = raw
            .max_body_size
            .map(|n| n as usize)
            .unwrap_or(DEFAULT_MAX_BODY_SIZE);
        let memory = self.memory(&place, raw.memory, max_body_size);
        let connections = self.connections(&place, raw.connections);
        let egress = self.egress(&place, raw.allow_private_destinations, raw.egress);
        Settings {
            egress: Arc::new(egress),
            max_body_size,
            rejected_log_size: raw
                .rejected_log_size
                .map(|n| n as usize)
                .unwrap_or(DEFAULT_REJECTED_LOG_SIZE),
            public_url,
            // Each interval wakes the evaluator: `0s` would spin a core.
            alert_interval: self.duration_at_least(
                &place,
                "alert_interval",
                &raw.alert_interval,
                Duration::from_secs(15),
                Duration::from_millis(100),
            ),
            expressions: self.expression_limits(&place, raw.expressions.unwrap_or_default()),
            memory,
            connections,
            retention,
        }
    }

    /// `settings.retention`, `payload_retention` and `dead_letter_retention`: each at least
    /// [`MIN_RETENTION`]; bodies kept no longer than their records, dead letters no shorter
    /// than finished work.
    fn retention(&mut self, place: &str, raw: &RawSettings) -> RetentionLimits {
        let mut limit = |field: &str, given: &Option<String>, default: Duration| {
            let d = self.duration(place, field, given, default);
            if given.is_some() && d < MIN_RETENTION {
                self.error(
                    place.to_string(),
                    format!(
                        "`{field}`: `{}` is shorter than the least retention, 1m",
                        given.as_deref().unwrap_or_default()
                    ),
                );
                return default;
            }
            d
        };
        let finished = limit("retention", &raw.retention, DEFAULT_RETENTION);
        let dead_letters = limit(
            "dead_letter_retention",
            &raw.dead_letter_retention,
            DEFAULT_DEAD_LETTER_RETENTION.max(finished),
        );
        let payloads = raw
            .payload_retention
            .as_ref()
            .map(|_| limit("payload_retention", &raw.payload_retention, finished));
        let show = |d: Duration| humantime::format_duration(d).to_string();
        if let Some(p) = payloads
            && p > finished
        {
            self.error(
                place.to_string(),
                format!(
                    "`payload_retention` ({}) is longer than `retention` ({}): bodies cannot outlive the records they belong to",
                    show(p),
                    show(finished)
                ),
            );
        }
        if dead_letters < finished {
            self.error(
                place.to_string(),
                format!(
                    "`dead_letter_retention` ({}) is shorter than `retention` ({}): dead letters are kept at least as long as finished work",
                    show(dead_letters),
                    show(finished)
                ),
            );
        }
        RetentionLimits {
            finished,
            dead_letters: dead_letters.max(finished),
            payloads: payloads.map(|p| p.min(finished)),
        }
    }

    fn expression_limits(
        &mut self,
        place: &str,
        raw: RawExpressions,
    ) -> crate::engine::sandbox::Limits {
        let default = crate::engine::sandbox::Limits::default();
        let workers = raw.workers.unwrap_or(default.workers as u64);
        if !(1..=64).contains(&workers) {
            self.error(
                place.to_string(),
                format!("`expressions.workers`: {workers} is not between 1 and 64"),
            );
        }
        let time = self.duration(
            place,
            "expressions.time_limit",
            &raw.time_limit,
            default.time,
        );
        if time.is_zero() || time > Duration::from_secs(300) {
            self.error(
                place.to_string(),
                format!("`expressions.time_limit`: {time:?} is not between 1ms and 5m"),
            );
        }
        let memory_mb = raw
            .memory_limit_mb
            .unwrap_or(default.memory_bytes / (1024 * 1024));
        if !(64..=65_536).contains(&memory_mb) {
            self.error(
                place.to_string(),
                format!("`expressions.memory_limit_mb`: {memory_mb} is not between 64 and 65536"),
            );
        }
        let queue = raw.queue.unwrap_or(default.queue as u64);
        if !(1..=1_000_000).contains(&queue) {
            self.error(
                place.to_string(),
                format!("`expressions.queue`: {queue} is not between 1 and 1000000"),
            );
        }
        crate::engine::sandbox::Limits {
            workers: workers.clamp(1, 64) as usize,
            time,
            memory_bytes: memory_mb.clamp(64, 65_536) * 1024 * 1024,
            queue: queue.clamp(1, 1_000_000) as usize,
        }
    }

    /// `settings.memory`: each budget must hold at least one body of `max_body_size`.
    fn memory(&mut self, place: &str, raw: RawMemory, max_body_size: usize) -> MemoryLimits {
        let mut budget = |field: &str, given: Option<u64>, default: usize| match given {
            None => default.max(max_body_size),
            Some(n) if (n as usize) < max_body_size => {
                self.error(
                    place.to_string(),
                    format!("`memory.{field}`: {n} is smaller than `max_body_size` ({max_body_size}); it must hold at least one body"),
                );
                default.max(max_body_size)
            }
            Some(n) => n as usize,
        };
        MemoryLimits {
            ingest_bytes: budget("ingest_bytes", raw.ingest_bytes, DEFAULT_INGEST_BYTES),
            delivery_bytes: budget("delivery_bytes", raw.delivery_bytes, DEFAULT_DELIVERY_BYTES),
        }
    }

    /// `settings.connections`: a cap of at least one and timeouts longer than zero.
    fn connections(&mut self, place: &str, raw: RawConnections) -> ConnectionLimits {
        let max = match raw.max {
            None => DEFAULT_MAX_CONNECTIONS,
            Some(n) if n == 0 || n > MAX_CONNECTIONS_LIMIT as u64 => {
                self.error(
                    place.to_string(),
                    format!("`connections.max`: {n} is not between 1 and {MAX_CONNECTIONS_LIMIT}"),
                );
                DEFAULT_MAX_CONNECTIONS
            }
            Some(n) => n as usize,
        };
        let mut timeout = |field: &str, given: &Option<String>, default: u64| {
            let default = Duration::from_secs(default);
            let d = self.duration(place, &format!("connections.{field}"), given, default);
            if d.is_zero() {
                self.error(
                    place.to_string(),
                    format!("`connections.{field}` must be longer than 0"),
                );
                return default;
            }
            d
        };
        ConnectionLimits {
            max,
            header_read_timeout: timeout("header_read_timeout", &raw.header_read_timeout, 10),
            body_read_timeout: timeout("body_read_timeout", &raw.body_read_timeout, 30),
            idle_timeout: timeout("idle_timeout", &raw.idle_timeout, 60),
        }
    }

    /// `settings.egress.allow`: at most `MAX_ALLOW_ENTRIES` networks, addresses and host names;
    /// the first ten bad entries are reported one by one.
    fn egress(&mut self, place: &str, allow_private: bool, raw: RawEgress) -> EgressPolicy {
        if raw.allow.len() > MAX_ALLOW_ENTRIES {
            self.error(
                place.to_string(),
                format!(
                    "`egress.allow` lists {} entries; at most {MAX_ALLOW_ENTRIES} are accepted (name networks rather than single addresses)",
                    raw.allow.len()
                ),
            );
            return EgressPolicy::new(allow_private, []);
        }
        let mut entries = Vec::new();
        let mut bad = 0;
        for (index, text) in raw.allow.iter().enumerate() {
            match AllowEntry::parse(text) {
                Ok(entry) => entries.push(entry),
                Err(e) => {
                    bad += 1;
                    if bad <= 10 {
                        self.error(place.to_string(), format!("`egress.allow[{index}]`: {e}"));
                    }
                }
            }
        }
        if bad > 10 {
            self.error(
                place.to_string(),
                format!("`egress.allow`: {} more entries are not valid", bad - 10),
            );
        }
        EgressPolicy::new(allow_private, entries)
    }

    /// A URL's host and user info as the egress guard sees them before DNS (IP literals,
    /// `localhost`); `field` names it in the error.
    fn egress_url(&mut self, place: &str, field: &str, url: &url::Url, settings: &Settings) {
        if let Err(refused) = settings.egress.check_url(url) {
            self.error(place.to_string(), format!("`{field}`: {refused}"));
        }
    }

    fn field(&mut self, place: &str, what: &str, raw: RawField) -> Option<FieldRef> {
        match raw {
            RawField::Body { path } => self.expr(place, what, &path).map(FieldRef::Body),
            RawField::Header { name } => {
                if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    self.error(
                        place.to_string(),
                        format!("`{what}`: `{name}` is not a valid header name"),
                    );
                }
                Some(FieldRef::Header(name.to_ascii_lowercase()))
            }
        }
    }

    fn source(&mut self, place: &str, raw: RawSource) -> Option<Source> {
        self.check_id(place, &raw.id);
        match raw.kind.as_str() {
            "webhook" => {}
            "poll" | "schedule" => {
                self.error(
                    place.to_string(),
                    format!(
                        "source kind `{}` is not available yet; only `webhook` is",
                        raw.kind
                    ),
                );
                return None;
            }
            other => {
                self.error(
                    place.to_string(),
                    format!("unknown source kind `{other}`; expected `webhook`"),
                );
                return None;
            }
        }
        let verify = match raw.verify {
            None => {
                self.error(place.to_string(), "`verify` is required for a webhook source; write `verify: { scheme: none }` to accept unsigned requests");
                Verify::None
            }
            Some(RawVerify::None) => Verify::None,
            Some(RawVerify::StandardWebhooks { secret, tolerance }) => {
                let tolerance = self.duration(
                    place,
                    "verify.tolerance",
                    &tolerance,
                    Duration::from_secs(300),
                );
                match crate::deliver::signing::decode_secret(&secret) {
                    Ok(key) => Verify::StandardWebhooks {
                        key: Secret::new(key),
                        tolerance,
                    },
                    Err(e) => {
                        self.error(place.to_string(), format!("`verify.secret`: {e}"));
                        Verify::None
                    }
                }
            }
            Some(RawVerify::Hmac {
                header,
                secret,
                algorithm,
                encoding,
                prefix,
            }) => {
                if algorithm != "sha256" {
                    self.error(
                        place.to_string(),
                        format!("`verify.algorithm`: `{algorithm}` is not supported; use `sha256`"),
                    );
                }
                let encoding = match encoding.as_str() {
                    "hex" => SignatureEncoding::Hex,
                    "base64" => SignatureEncoding::Base64,
                    other => {
                        self.error(
                            place.to_string(),
                            format!("`verify.encoding`: `{other}` is not one of hex, base64"),
                        );
                        SignatureEncoding::Hex
                    }
                };
                if secret.is_empty() {
                    self.error(place.to_string(), "`verify.secret` is empty");
                }
                Verify::Hmac {
                    header: header.to_ascii_lowercase(),
                    key: Secret::new(secret.into_bytes()),
                    encoding,
                    prefix,
                }
            }
        };
        let event_type = match raw.event_type {
            Some(f) => self.field(place, "event_type", f)?,
            None => FieldRef::Body(Expr::new(".type").ok()?),
        };
        let idempotency_key = match raw.idempotency_key {
            Some(f) => Some(self.field(place, "idempotency_key", f)?),
            None => None,
        };
        Some(Source {
            id: raw.id,
            verify,
            event_type,
            idempotency_key,
        })
    }

    fn event_type(&mut self, place: &str, raw: RawEventType) -> EventType {
        let schema = match (raw.schema, raw.schema_file) {
            (Some(_), Some(_)) => {
                self.error(
                    place.to_string(),
                    "give `schema` or `schema_file`, not both",
                );
                None
            }
            (Some(s), None) => Some(s),
            (None, Some(file)) => match objects::read_schema_file(&self.base.join(&file)) {
                Ok(v) => Some(v),
                Err(e) => {
                    self.error(place.to_string(), format!("`schema_file`: {e}"));
                    None
                }
            },
            (None, None) => None,
        };
        let validator = schema.as_ref().and_then(|s| match compile_schema(s) {
            Ok(v) => Some(v),
            Err(message) => {
                self.error(place.to_string(), message);
                None
            }
        });
        EventType {
            name: raw.name,
            schema,
            validator,
        }
    }

    fn destination(
        &mut self,
        place: &str,
        raw: RawDestination,
        settings: &Settings,
    ) -> Option<Destination> {
        self.check_id(place, &raw.id);
        match raw.kind.as_str() {
            "http" => {}
            "postgres" | "redis" | "nats" | "amqp" | "mqtt" | "slack" | "email" => {
                self.error(
                    place.to_string(),
                    format!(
                        "destination kind `{}` is not available yet; only `http` is",
                        raw.kind
                    ),
                );
                return None;
            }
            other => {
                self.error(
                    place.to_string(),
                    format!("unknown destination kind `{other}`; expected `http`"),
                );
                return None;
            }
        }
        let Some(url_text) = raw.url else {
            self.error(
                place.to_string(),
                "`url` is required for an http destination",
            );
            return None;
        };
        let url = match url::Url::parse(&url_text) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => u,
            Ok(u) => {
                self.error(
                    place.to_string(),
                    format!("`url`: scheme `{}` is not http or https", u.scheme()),
                );
                return None;
            }
            Err(e) => {
                let shown = crate::secrets::url::shown(&url_text, &raw.secret_query_params);
                self.error(
                    place.to_string(),
                    format!("`url`: `{shown}` is not a URL ({e})"),
                );
                return None;
            }
        };
        self.egress_url(place, "url", &url, settings);
        let method = self.method(place, "method", raw.method.as_deref(), "POST");
        let mut headers = Vec::new();
        for (name, value) in raw.headers {
            match (
                reqwest::header::HeaderName::from_bytes(name.as_bytes()),
                reqwest::header::HeaderValue::from_str(&value),
            ) {
                (Ok(n), Ok(v)) => headers.push((n, v)),
                _ => self.error(
                    place.to_string(),
                    format!("`headers`: `{name}` is not a valid header name and value"),
                ),
            }
        }
        let signing =
            raw.signing.and_then(
                |s| match crate::deliver::signing::decode_secret(&s.secret) {
                    Ok(key) => Some(Secret::new(key)),
                    Err(e) => {
                        self.error(place.to_string(), format!("`signing.secret`: {e}"));
                        None
                    }
                },
            );
        let timeout = self.duration_at_least(
            place,
            "timeout",
            &raw.timeout,
            Duration::from_secs(30),
            Duration::from_millis(1),
        );
        let retry = self.retry(place, raw.retry.unwrap_or_default());
        let breaker = self.breaker(place, raw.circuit_breaker.unwrap_or_default());
        let concurrency = raw.concurrency.unwrap_or(32);
        if concurrency == 0 {
            self.error(place.to_string(), "`concurrency` must be at least 1");
        }
        Some(Destination {
            id: raw.id,
            url,
            method,
            headers,
            signing,
            timeout,
            retry,
            concurrency: concurrency.max(1) as usize,
            breaker,
            secret_headers: lower_case(raw.secret_headers),
            secret_query_params: lower_case(raw.secret_query_params),
        })
    }

    fn breaker(&mut self, place: &str, raw: RawBreaker) -> crate::deliver::circuit::BreakerConfig {
        let d = crate::deliver::circuit::BreakerConfig::default();
        let failures = raw.failures.unwrap_or(d.failures);
        if failures == 0 {
            self.error(
                place.to_string(),
                "`circuit_breaker.failures` must be at least 1",
            );
        }
        let cool_off = self.duration(place, "circuit_breaker.cool_off", &raw.cool_off, d.cool_off);
        let pause_after = match raw.pause_after.as_deref() {
            Some("never") => None,
            None => d.pause_after,
            Some(_) => Some(self.duration(
                place,
                "circuit_breaker.pause_after",
                &raw.pause_after,
                Duration::ZERO,
            )),
        };
        crate::deliver::circuit::BreakerConfig {
            failures: failures.max(1),
            cool_off,
            pause_after,
        }
    }

    fn retry(&mut self, place: &str, raw: RawRetry) -> RetryPolicy {
        let d = RetryPolicy::default();
        let policy = RetryPolicy {
            max_attempts: raw.max_attempts.unwrap_or(d.max_attempts),
            initial: self.duration(place, "retry.initial", &raw.initial, d.initial),
            max: self.duration(place, "retry.max", &raw.max, d.max),
            multiplier: raw.multiplier.unwrap_or(d.multiplier),
            jitter: raw.jitter.unwrap_or(d.jitter),
        };
        if policy.max_attempts == 0 {
            self.error(place.to_string(), "`retry.max_attempts` must be at least 1");
        }
        if !(policy.multiplier >= 1.0 && policy.multiplier <= 100.0) {
            self.error(
                place.to_string(),
                "`retry.multiplier` must be between 1 and 100",
            );
        }
        if policy.initial > policy.max {
            self.error(
                place.to_string(),
                "`retry.initial` is longer than `retry.max`",
            );
        }
        policy
    }

    fn flow(
        &mut self,
        place: &str,
        raw: RawFlow,
        sources: &BTreeMap<String, Arc<Source>>,
        event_types: &BTreeMap<String, Arc<EventType>>,
        destinations: &BTreeMap<String, Arc<Destination>>,
        settings: &Settings,
    ) -> Option<Flow> {
        if !sources.contains_key(&raw.on.source) {
            self.error(
                place.to_string(),
                format!("`on.source`: no source has the id `{}`", raw.on.source),
            );
        }
        for t in &raw.on.event_types {
            if !event_types.contains_key(t) {
                self.error(place.to_string(), format!("`on.event_types`: no event type is named `{t}` (declare it under `event_types`)"));
            }
        }
        let version = flow_version(&raw);
        let mut builder = ProgramBuilder {
            place,
            destinations,
            settings,
            instrs: Vec::new(),
            names: BTreeSet::new(),
        };
        self.steps(&mut builder, raw.steps, "", "/steps");
        let program = Program {
            instrs: builder.instrs,
        };
        let (wire, wire_digest) = crate::engine::sandbox::wire_program(&program);
        Some(Flow {
            id: raw.id,
            source: raw.on.source,
            event_types: raw.on.event_types.into_iter().collect(),
            version,
            program,
            wire,
            wire_digest,
        })
    }

    /// Compiles a list of steps into `b`'s instructions. `label` prefixes step numbers in
    /// errors ("step 4, case 1, step 2"); `path` is the list's JSON pointer.
    fn steps(&mut self, b: &mut ProgramBuilder<'_>, steps: Vec<RawStep>, label: &str, path: &str) {
        for (index, step) in steps.into_iter().enumerate() {
            let step_label = format!("{label}step {}", index + 1);
            let step_place = format!("{}, {step_label}", b.place);
            let step_path = format!("{path}/{index}");
            if let Some(name) = &step.name {
                if !b.names.insert(name.clone()) {
                    self.error(
                        step_place.clone(),
                        format!("step name `{name}` is used twice in this flow"),
                    );
                }
                if !valid_id(name) || name.contains('.') || name.contains('-') {
                    self.error(step_place.clone(), format!("step name `{name}` must be 1 to 64 characters of a-z, A-Z, 0-9 or `_`, so that `$steps.{name}` works in jq"));
                }
            }
            let kinds: Vec<&str> = [
                ("filter", step.filter.is_some()),
                ("transform", step.transform.is_some()),
                ("branch", step.branch.is_some()),
                ("http", step.http.is_some()),
                ("delay", step.delay.is_some()),
                ("deliver", step.deliver.is_some()),
            ]
            .into_iter()
            .filter(|(_, set)| *set)
            .map(|(k, _)| k)
            .collect();
            if kinds.len() != 1 {
                self.error(
                    step_place,
                    if kinds.is_empty() {
                        "the step has no kind; give one of filter, transform, branch, http, delay, deliver".to_string()
                    } else {
                        format!("a step has exactly one kind, this one has {}", kinds.join(", "))
                    },
                );
                continue;
            }
            let name = step.name;
            let push = |b: &mut ProgramBuilder<'_>, op: Op| {
                b.instrs.push(Instr {
                    path: step_path.clone(),
                    name: name.clone(),
                    op,
                })
            };
            if let Some(code) = step.filter {
                if let Some(expr) = self.expr(&step_place, "filter", &code) {
                    push(b, Op::Filter(expr));
                }
            } else if let Some(code) = step.transform {
                if let Some(expr) = self.expr(&step_place, "transform", &code) {
                    push(b, Op::Transform(expr));
                }
            } else if let Some(cases) = step.branch {
                let at = b.instrs.len();
                push(
                    b,
                    Op::Branch {
                        cases: Vec::new(),
                        otherwise: 0,
                        has_else: false,
                    },
                );
                let (mut compiled, mut jumps, mut otherwise) = (Vec::new(), Vec::new(), None);
                let count = cases.len();
                if count == 0 {
                    self.error(step_place.clone(), "`branch` has no cases");
                }
                for (ci, case) in cases.into_iter().enumerate() {
                    let case_label = format!("{step_label}, case {}, ", ci + 1);
                    let case_place = format!("{}, {step_label}, case {}", b.place, ci + 1);
                    let case_path = format!("{step_path}/branch/{ci}");
                    match (case.when, case.steps, case.otherwise) {
                        (Some(when), Some(steps), None) => {
                            if otherwise.is_some() {
                                self.error(
                                    case_place.clone(),
                                    "a case after `else` never runs; put `else` last",
                                );
                            }
                            let target = b.instrs.len();
                            if let Some(expr) = self.expr(&case_place, "when", &when) {
                                compiled.push((expr, target));
                            }
                            self.steps(b, steps, &case_label, &format!("{case_path}/steps"));
                        }
                        (None, None, Some(steps)) => {
                            if ci + 1 != count {
                                self.error(case_place.clone(), "`else` must be the last case");
                            }
                            otherwise = Some(b.instrs.len());
                            self.steps(b, steps, &case_label, &format!("{case_path}/else"));
                        }
                        _ => {
                            self.error(
                                case_place,
                                "a case is `{when: <jq>, steps: [...]}` or `{else: [...]}`",
                            );
                            continue;
                        }
                    }
                    jumps.push(b.instrs.len());
                    b.instrs.push(Instr {
                        path: format!("{case_path}/end"),
                        name: None,
                        op: Op::Jump(0),
                    });
                }
                let end = b.instrs.len();
                for j in jumps {
                    b.instrs[j].op = Op::Jump(end);
                }
                b.instrs[at].op = Op::Branch {
                    cases: compiled,
                    otherwise: otherwise.unwrap_or(end),
                    has_else: otherwise.is_some(),
                };
            } else if let Some(http) = step.http {
                if let Some(op) = self.http_step(&step_place, http, b.settings) {
                    push(b, Op::Http(Box::new(op)));
                }
            } else if let Some(delay) = step.delay {
                let op = match delay {
                    RawDelay::For(text) => match parse_duration(&text) {
                        Ok(d) => Some(Delay::For(d)),
                        Err(e) => {
                            self.error(
                                step_place.clone(),
                                format!("`delay`: {e}, or `{{until: <jq>}}`"),
                            );
                            None
                        }
                    },
                    RawDelay::Until { until } => self
                        .expr(&step_place, "delay.until", &until)
                        .map(Delay::Until),
                };
                if let Some(op) = op {
                    push(b, Op::Delay(op));
                }
            } else if let Some(deliver) = step.deliver {
                let targets = match deliver {
                    RawDeliver::One(t) => vec![t],
                    RawDeliver::Many(ts) => ts,
                };
                if targets.is_empty() {
                    self.error(step_place.clone(), "`deliver` names no destination");
                }
                let mut compiled: Vec<Target> = Vec::new();
                for t in targets {
                    let (id, body) = match t {
                        RawTarget::Id(id) => (id, None),
                        RawTarget::Full { to, body } => {
                            let body = body.and_then(|code| {
                                self.expr(&step_place, &format!("deliver to `{to}`: body"), &code)
                            });
                            (to, body)
                        }
                    };
                    if !b.destinations.contains_key(&id) {
                        self.error(
                            step_place.clone(),
                            format!("`deliver`: no destination has the id `{id}`"),
                        );
                    } else if compiled.iter().any(|t| t.destination_id == id) {
                        self.error(
                            step_place.clone(),
                            format!("`deliver`: destination `{id}` is named twice"),
                        );
                    } else {
                        compiled.push(Target {
                            destination_id: id,
                            body,
                        });
                    }
                }
                push(b, Op::Deliver(compiled));
            }
        }
    }

    fn http_step(&mut self, place: &str, raw: RawHttp, settings: &Settings) -> Option<HttpStep> {
        let url = self.template(place, "http.url", &raw.url)?;
        // The host must be fixed in the file: placeholders may fill the path and query only.
        let prefix = url.literal_prefix();
        let host_fixed = prefix
            .split_once("://")
            .is_some_and(|(_, rest)| rest.contains(['/', '?']) || prefix.len() == raw.url.len());
        let shown_url =
            crate::secrets::url::shown(&raw.url, &lower_case(raw.secret_query_params.clone()));
        if !host_fixed {
            self.error(place.to_string(), format!("`http.url`: `{shown_url}` must start with a fixed `http(s)://host/`; placeholders may fill the path and query, not the host"));
        } else {
            match url::Url::parse(prefix) {
                Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {
                    self.egress_url(place, "http.url", &u, settings);
                }
                Ok(u) => {
                    self.error(
                        place.to_string(),
                        format!("`http.url`: scheme `{}` is not http or https", u.scheme()),
                    );
                }
                Err(e) => {
                    self.error(
                        place.to_string(),
                        format!("`http.url`: `{shown_url}` is not a URL ({e})"),
                    );
                }
            }
        }
        let default = if raw.body.is_some() { "POST" } else { "GET" };
        let method = self.method(place, "http.method", raw.method.as_deref(), default);
        let mut headers = Vec::new();
        for (name, value) in raw.headers {
            match reqwest::header::HeaderName::from_bytes(name.as_bytes()) {
                Ok(n) => {
                    if let Some(t) = self.template(place, &format!("http.headers.{name}"), &value) {
                        headers.push((n, t));
                    }
                }
                Err(_) => self.error(
                    place.to_string(),
                    format!("`http.headers`: `{name}` is not a valid header name"),
                ),
            }
        }
        let auth = raw.auth.and_then(|a| self.auth(place, a, settings));
        let body = raw
            .body
            .and_then(|code| self.expr(place, "http.body", &code));
        let timeout = self.duration(place, "http.timeout", &raw.timeout, Duration::from_secs(30));
        let retry = self.retry(place, raw.retry.unwrap_or_default());
        Some(HttpStep {
            method,
            url,
            headers,
            auth_label: auth.as_ref().map(Auth::label),
            auth,
            body,
            secret_headers: lower_case(raw.secret_headers),
            secret_query_params: lower_case(raw.secret_query_params),
            timeout,
            retry,
        })
    }

    fn auth(&mut self, place: &str, raw: RawAuth, settings: &Settings) -> Option<Auth> {
        let set = [
            raw.bearer.is_some(),
            raw.basic.is_some(),
            raw.api_key.is_some(),
            raw.oauth2_client_credentials.is_some(),
        ];
        if set.iter().filter(|s| **s).count() != 1 {
            self.error(place.to_string(), "`http.auth` takes exactly one of bearer, basic, api_key, oauth2_client_credentials");
            return None;
        }
        // A secret sent in a header must be one a header can carry: refused here, by its field
        // and never quoted, rather than failing every attempt later.
        let header_safe = |this: &mut Self, field: &str, value: &str| {
            let fits = reqwest::header::HeaderValue::from_str(value).is_ok();
            if !fits {
                this.error(
                    place.to_string(),
                    format!("`{field}` holds a character a header cannot carry (a control character such as a line break, or a byte that is not visible ASCII)"),
                );
            }
            fits
        };
        if let Some(token) = raw.bearer {
            if !header_safe(self, "http.auth.bearer", &token) {
                return None;
            }
            return Some(Auth::Bearer(Secret::new(token.into_bytes())));
        }
        if let Some(b) = raw.basic {
            return Some(Auth::Basic {
                username: b.username,
                password: Secret::new(b.password.into_bytes()),
            });
        }
        if let Some(k) = raw.api_key {
            let Ok(header) = reqwest::header::HeaderName::from_bytes(k.header.as_bytes()) else {
                self.error(
                    place.to_string(),
                    format!(
                        "`http.auth.api_key.header`: `{}` is not a valid header name",
                        k.header
                    ),
                );
                return None;
            };
            if !header_safe(self, "http.auth.api_key.value", &k.value) {
                return None;
            }
            return Some(Auth::ApiKey {
                header,
                value: Secret::new(k.value.into_bytes()),
            });
        }
        let o = raw.oauth2_client_credentials?;
        let token_url = match url::Url::parse(&o.token_url) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => u,
            _ => {
                let shown = crate::secrets::url::shown(&o.token_url, &[]);
                self.error(place.to_string(), format!("`http.auth.oauth2_client_credentials.token_url`: `{shown}` is not an http(s) URL"));
                return None;
            }
        };
        self.egress_url(
            place,
            "http.auth.oauth2_client_credentials.token_url",
            &token_url,
            settings,
        );
        Some(Auth::OAuth2(Arc::new(OAuth2 {
            token_url,
            client_id: o.client_id,
            client_secret: Secret::new(o.client_secret.into_bytes()),
            scope: o.scope,
        })))
    }
}

/// What a flow builds while its steps compile.
struct ProgramBuilder<'a> {
    place: &'a str,
    destinations: &'a BTreeMap<String, Arc<Destination>>,
    settings: &'a Settings,
    instrs: Vec<Instr>,
    names: BTreeSet<String>,
}

/// The first 16 hex digits of the SHA-256 of the flow's definition, as parsed (so comments
/// and formatting do not change it).
fn flow_version(raw: &RawFlow) -> String {
    use sha2::Digest;
    let bytes = serde_json::to_vec(raw).unwrap_or_default();
    let digest = sha2::Sha256::digest(&bytes);
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Names as `secrets` compares them: lower case.
fn lower_case(names: Vec<String>) -> Vec<String> {
    names.into_iter().map(|n| n.to_ascii_lowercase()).collect()
}

/// The longest duration the config takes (`100y`, years of 365.25 days as humantime counts
/// them): every duration becomes milliseconds added to or taken from a time, and this keeps
/// those sums far inside an `i64`.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

/// A duration as the config writes it (`30s`, `5m`, `1h 30m`), at most [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if d <= MAX_DURATION => Ok(d),
        Ok(_) => Err(format!("`{text}` is longer than the limit of 100 years")),
        Err(e) => Err(format!(
            "`{text}` is not a duration ({e}); write e.g. 30s, 5m, 1h"
        )),
    }
}

/// The one rule for the ids of every object (sources, event types, destinations, flows,
/// channels, alert rules) and the names of API tokens: they appear in URLs, file names, logs
/// and metrics labels, so nothing there needs escaping, and `.`, `..` or a leading `-` cannot be
/// taken for something else.
pub const ID_RULE: &str = "must be 1 to 64 characters of a-z, A-Z, 0-9, `-`, `_` or `.`, beginning with a letter or a digit";

/// Whether `id` keeps [`ID_RULE`].
pub fn valid_id(id: &str) -> bool {
    id.len() <= 64
        && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests;

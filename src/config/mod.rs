//! The config file: reading it (with `${ENV}` substitution), and checking it once into typed,
//! compiled values (jq programs, JSON Schema validators, parsed URLs, decoded keys) that the
//! rest of Ferry uses without re-checking. Every problem is reported with its place.
//!
//! Each kind of object has its file, its types with the checks beside them: `settings`,
//! `sources` (with event types), `destinations`, `flows` (with their steps) and `alerts` (with
//! channels). This file holds `Config`, loading, the errors, and the `Checker` that checks the
//! kinds in reference order, handing each the objects it may name.

mod alerts;
mod change;
mod destinations;
pub mod expr;
mod flows;
pub mod kind;
pub mod objects;
mod places;
pub mod poll;
pub mod program;
mod raw;
pub mod redact;
pub mod retry;
mod routes;
pub mod schedule;
pub mod secret;
mod settings;
mod sources;
pub mod template;
pub mod verify;

use expr::Expr;
use raw::*;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use template::Template;

pub use alerts::{AlertRule, Channel, ChannelKind, Condition, Severity, Smtp, SmtpTls};
pub use destinations::{BreakerConfig, Destination};
pub use flows::Flow;
pub use objects::{FileLayer, ObjectKind, ObjectSpec, Objects};
pub use places::Places;
pub use secret::Secret;
pub use settings::{
    ConnectionLimits, DEFAULT_DEAD_LETTER_RETENTION, DEFAULT_DELIVERY_BYTES, DEFAULT_INGEST_BYTES,
    DEFAULT_MAX_BODY_SIZE, DEFAULT_MAX_CONNECTIONS, DEFAULT_REJECTED_LOG_SIZE, DEFAULT_RETENTION,
    DEFAULT_SHUTDOWN_GRACE, ExpressionLimits, MAX_CONNECTIONS_LIMIT, MIN_RETENTION, MemoryLimits,
    RetentionLimits, Settings,
};
pub(crate) use sources::compile_schema;
pub use sources::{EventType, FieldRef, Source};
pub use verify::{BodyFormat, SignatureEncoding, Verify};

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
    /// The jq expressions this config's check met, with their places, that an expression
    /// worker must compile (`Sandbox::check_config`) before the config is used: every one of a
    /// config built whole (`build`), the changed object's for a change (`Config::changed`).
    /// Taken out once compiled ([`Config::take_expressions`]): a config keeps no copy.
    pub expressions: Vec<ExprSite>,
    /// The flows indexed by source and event type, and by id.
    routes: routes::Routes,
}

impl Config {
    /// The flows an event of `event_type` from `source` starts, in the config's order: a
    /// lookup, whatever the number of flows.
    pub fn matching_flows(&self, source: &str, event_type: &str) -> Vec<Arc<Flow>> {
        self.routes
            .matching(source, event_type)
            .into_iter()
            .map(|at| self.flows[at].clone())
            .collect()
    }

    /// The flow with this id.
    pub fn flow(&self, id: &str) -> Option<&Arc<Flow>> {
        self.routes.flow(id).map(|at| &self.flows[at])
    }

    /// The expressions still to compile, leaving none behind.
    pub fn take_expressions(&mut self) -> Vec<ExprSite> {
        std::mem::take(&mut self.expressions)
    }
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
                message: crate::config::redact::without_quoted_values(&e.to_string()),
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
                    Arc::new(ObjectSpec::new(kind, id.to_string(), spec.clone(), true)),
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
        objects.insert((object.kind, object.id.clone()), Arc::new(object.clone()));
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
    let shape = |e: serde_json::Error| crate::config::redact::without_quoted_values(&e.to_string());
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

/// What the checks of every kind share: the places errors name, the errors found so far and
/// the expressions met, for a worker to compile.
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

    /// [`Self::duration`], refused above `max`.
    fn duration_at_most(
        &mut self,
        place: &str,
        field: &str,
        value: &Option<String>,
        default: Duration,
        max: Duration,
    ) -> Duration {
        let d = self.duration(place, field, value, default);
        if d > max {
            self.error(
                place.to_string(),
                format!(
                    "`{field}` must be at most {}",
                    humantime::format_duration(max)
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

    /// Checks every kind in reference order: a flow names sources, event types and
    /// destinations; an alert names channels, sources and destinations.
    fn check(&mut self, raw: RawConfig, objects: Objects, file: Arc<FileLayer>) -> Config {
        let settings = self.settings(raw.settings);
        let mut sources = BTreeMap::new();
        for s in raw.sources {
            let place = self.places.object("sources", "source", &s.id);
            if let Some(source) = self.source(&place, s, &settings)
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
            routes: routes::Routes::new(&flows),
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

    /// A URL's host and user info as the egress guard sees them before DNS (IP literals,
    /// `localhost`); `field` names it in the error.
    fn egress_url(&mut self, place: &str, field: &str, url: &url::Url, settings: &Settings) {
        if let Err(refused) = settings.egress.check_url(url) {
            self.error(place.to_string(), format!("`{field}`: {refused}"));
        }
    }
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

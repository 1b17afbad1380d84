//! The config file as written: serde types that mirror the YAML one to one. Nothing here is
//! checked beyond its shape; `config::load` turns these into the validated types.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub settings: RawSettings,
    #[serde(default)]
    pub sources: Vec<RawSource>,
    #[serde(default)]
    pub event_types: Vec<RawEventType>,
    #[serde(default)]
    pub destinations: Vec<RawDestination>,
    #[serde(default)]
    pub flows: Vec<RawFlow>,
    #[serde(default)]
    pub channels: Vec<RawChannel>,
    #[serde(default)]
    pub alerts: Vec<RawAlert>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChannel {
    pub id: String,
    pub kind: String,
    pub url: Option<String>,
    pub signing: Option<RawSigning>,
    pub smtp: Option<RawSmtp>,
    pub from: Option<String>,
    #[serde(default)]
    pub to: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSmtp {
    pub host: String,
    pub port: Option<u16>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// `none`, `starttls` (default) or `tls`.
    pub tls: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlert {
    pub id: String,
    pub when: RawCondition,
    #[serde(default)]
    pub notify: Vec<String>,
    pub severity: Option<String>,
    pub cooldown: Option<String>,
}

/// Exactly one of these is set.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCondition {
    pub destination_failing: Option<RawFailing>,
    pub failure_ratio: Option<RawRatio>,
    pub dead_letters: Option<RawDeadLetters>,
    pub source_silent: Option<RawSilent>,
    pub source_failing: Option<RawSourceFailing>,
    pub backlog_age: Option<RawBacklog>,
    pub delivery_latency: Option<RawLatency>,
    pub destination_paused: Option<RawPaused>,
    pub store_unwritable: Option<RawStoreUnwritable>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFailing {
    pub destination: String,
    pub consecutive: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRatio {
    pub destination: String,
    pub above: f64,
    pub window: String,
    pub min_attempts: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDeadLetters {
    #[serde(default)]
    pub above: u64,
    pub destination: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSilent {
    pub source: String,
    #[serde(rename = "for")]
    pub for_: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSourceFailing {
    pub source: String,
    pub polls: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBacklog {
    pub above: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLatency {
    pub destination: String,
    pub p99_above: String,
    pub window: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawPaused {
    pub destination: Option<String>,
}

/// `store_unwritable: {}`: no settings.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawStoreUnwritable {}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    #[serde(default)]
    pub allow_private_destinations: bool,
    pub max_body_size: Option<u64>,
    pub rejected_log_size: Option<u64>,
    pub public_url: Option<String>,
    pub alert_interval: Option<String>,
    /// How long a graceful stop waits for attempts and run steps in flight.
    pub shutdown_grace: Option<String>,
    /// Cluster mode: how long a node's lease on a job lasts without renewal.
    pub lease: Option<String>,
    /// How long finished events are kept (with their runs, deliveries and attempts).
    pub retention: Option<String>,
    /// How long bodies are kept, at most `retention`.
    pub payload_retention: Option<String>,
    /// How long events with dead letters are kept, at least `retention`.
    pub dead_letter_retention: Option<String>,
    pub expressions: Option<RawExpressions>,
    #[serde(default)]
    pub memory: RawMemory,
    #[serde(default)]
    pub connections: RawConnections,
    #[serde(default)]
    pub egress: RawEgress,
}

/// `settings.egress`: what outbound requests may reach besides public addresses.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawEgress {
    /// Networks (CIDR), addresses and exact host names.
    #[serde(default)]
    pub allow: Vec<String>,
}

/// `settings.expressions`: the expression workers.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawExpressions {
    pub workers: Option<u64>,
    pub time_limit: Option<String>,
    pub memory_limit_mb: Option<u64>,
    pub queue: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawMemory {
    pub ingest_bytes: Option<u64>,
    pub delivery_bytes: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConnections {
    pub max: Option<u64>,
    pub header_read_timeout: Option<String>,
    pub body_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    pub id: String,
    pub kind: String,
    pub verify: Option<RawVerify>,
    pub event_type: Option<RawField>,
    pub idempotency_key: Option<RawField>,
    /// `json` (the default), `form` or `cloudevents`.
    pub format: Option<String>,
    pub cloudevents: Option<RawCloudEvents>,
    /// `kind: schedule`: when it fires, in which time zone, what a missed tick does, and what
    /// it emits.
    pub cron: Option<String>,
    pub timezone: Option<String>,
    pub missed: Option<String>,
    pub emit: Option<RawEmit>,
    /// `kind: poll`: the request, how often, and how its answer is read.
    pub request: Option<RawHttp>,
    pub every: Option<String>,
    pub items: Option<String>,
    pub item_id: Option<String>,
    pub cursor: Option<RawPollCursor>,
    pub pagination: Option<RawPagination>,
    pub max_pages: Option<u32>,
    pub backfill: Option<bool>,
}

/// A polling source's high-water mark: read on each item, sent as a query parameter.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPollCursor {
    pub path: String,
    pub param: String,
}

/// How a polling source finds its next page: `kind` and what that kind needs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPagination {
    pub kind: String,
    pub path: Option<String>,
    pub param: Option<String>,
    pub start: Option<u64>,
}

/// What a schedule emits at each tick.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEmit {
    pub event_type: String,
    pub payload: Option<serde_json::Value>,
    pub template: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCloudEvents {
    /// Take `application/cloudevents-batch+json`, each event of it an event.
    #[serde(default)]
    pub batch: bool,
}

/// A source's `verify`: `scheme` and the fields it takes (`config::verify` says which).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVerify {
    pub scheme: String,
    pub secret: Option<String>,
    pub username: Option<String>,
    pub secret_encoding: Option<String>,
    pub header: Option<String>,
    pub algorithm: Option<String>,
    pub encoding: Option<String>,
    pub prefix: Option<String>,
    pub list: Option<RawSignatureList>,
    pub signed: Option<String>,
    pub timestamp: Option<RawTimestamp>,
    pub tolerance: Option<String>,
    pub id_header: Option<String>,
    pub url: Option<String>,
}

impl RawVerify {
    /// The names of the fields given besides `scheme`.
    pub fn given(&self) -> Vec<&'static str> {
        let fields: [(&'static str, bool); 13] = [
            ("secret", self.secret.is_some()),
            ("username", self.username.is_some()),
            ("secret_encoding", self.secret_encoding.is_some()),
            ("header", self.header.is_some()),
            ("algorithm", self.algorithm.is_some()),
            ("encoding", self.encoding.is_some()),
            ("prefix", self.prefix.is_some()),
            ("list", self.list.is_some()),
            ("signed", self.signed.is_some()),
            ("timestamp", self.timestamp.is_some()),
            ("tolerance", self.tolerance.is_some()),
            ("id_header", self.id_header.is_some()),
            ("url", self.url.is_some()),
        ];
        fields.iter().filter(|f| f.1).map(|f| f.0).collect()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSignatureList {
    pub separator: String,
    pub assign: Option<String>,
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimestamp {
    pub header: Option<String>,
    pub item: Option<String>,
    pub unit: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "from", rename_all = "lowercase", deny_unknown_fields)]
pub enum RawField {
    Body { path: String },
    Header { name: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEventType {
    pub name: String,
    pub schema: Option<serde_json::Value>,
    pub schema_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDestination {
    pub id: String,
    pub kind: String,
    pub url: Option<String>,
    pub method: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub signing: Option<RawSigning>,
    pub timeout: Option<String>,
    pub retry: Option<RawRetry>,
    pub concurrency: Option<u32>,
    /// More header names whose values are secrets (`secrets::fields`).
    #[serde(default)]
    pub secret_headers: Vec<String>,
    /// More query parameter names whose values are secrets.
    #[serde(default)]
    pub secret_query_params: Vec<String>,
    pub circuit_breaker: Option<RawBreaker>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    pub failures: Option<u32>,
    pub cool_off: Option<String>,
    /// A duration, or `never`.
    pub pause_after: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSigning {
    pub secret: String,
}

#[derive(Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub max_attempts: Option<u32>,
    pub initial: Option<String>,
    pub max: Option<String>,
    pub multiplier: Option<f64>,
    pub jitter: Option<crate::config::retry::Jitter>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawFlow {
    pub id: String,
    pub on: RawTrigger,
    #[serde(default)]
    pub steps: Vec<RawStep>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrigger {
    pub source: String,
    #[serde(default)]
    pub event_types: Vec<String>,
}

/// One step: exactly one of the kind fields is set.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transform: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub branch: Option<Vec<RawCase>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<RawHttp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<RawDelay>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliver: Option<RawDeliver>,
}

/// One case of a `branch`: `{when, steps}`, or `{else: [...]}` last.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawCase {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<RawStep>>,
    #[serde(rename = "else", skip_serializing_if = "Option::is_none")]
    pub otherwise: Option<Vec<RawStep>>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    pub method: Option<String>,
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub auth: Option<RawAuth>,
    pub body: Option<String>,
    pub timeout: Option<String>,
    pub retry: Option<RawRetry>,
    /// More header names whose values are secrets (`secrets::fields`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_headers: Vec<String>,
    /// More query parameter names whose values are secrets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_query_params: Vec<String>,
}

/// `auth` of an http step: exactly one of these is set.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bearer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub basic: Option<RawBasic>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<RawApiKey>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oauth2_client_credentials: Option<RawOAuth2>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawBasic {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawApiKey {
    pub header: String,
    pub value: String,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawOAuth2 {
    pub token_url: String,
    pub client_id: String,
    pub client_secret: String,
    pub scope: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(untagged)]
pub enum RawDelay {
    For(String),
    Until { until: String },
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(untagged)]
pub enum RawDeliver {
    One(RawTarget),
    Many(Vec<RawTarget>),
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(untagged)]
pub enum RawTarget {
    Id(String),
    Full { to: String, body: Option<String> },
}

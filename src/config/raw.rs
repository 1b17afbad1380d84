//! The config file as written: serde types that mirror the YAML one to one. Nothing here is
//! checked beyond its shape; `config::load` turns these into the validated types.

use serde::Deserialize;
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
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    #[serde(default)]
    pub allow_private_destinations: bool,
    pub max_body_size: Option<u64>,
    pub rejected_log_size: Option<u64>,
    pub public_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    pub id: String,
    pub kind: String,
    pub verify: Option<RawVerify>,
    pub event_type: Option<RawField>,
    pub idempotency_key: Option<RawField>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "scheme", rename_all = "kebab-case", deny_unknown_fields)]
pub enum RawVerify {
    None,
    StandardWebhooks {
        secret: String,
        tolerance: Option<String>,
    },
    Hmac {
        header: String,
        secret: String,
        #[serde(default = "default_algorithm")]
        algorithm: String,
        #[serde(default = "default_encoding")]
        encoding: String,
        #[serde(default)]
        prefix: String,
    },
}

fn default_algorithm() -> String {
    "sha256".into()
}
fn default_encoding() -> String {
    "hex".into()
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSigning {
    pub secret: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub max_attempts: Option<u32>,
    pub initial: Option<String>,
    pub max: Option<String>,
    pub multiplier: Option<f64>,
    pub jitter: Option<crate::deliver::retry::Jitter>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFlow {
    pub id: String,
    pub on: RawTrigger,
    #[serde(default)]
    pub steps: Vec<RawStep>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrigger {
    pub source: String,
    #[serde(default)]
    pub event_types: Vec<String>,
}

/// One step: exactly one of the kind fields is set. Kinds that are not built yet are read so
/// that validation can name them, and then refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    pub name: Option<String>,
    pub filter: Option<String>,
    pub deliver: Option<RawDeliver>,
    pub transform: Option<serde_json::Value>,
    pub branch: Option<serde_json::Value>,
    pub http: Option<serde_json::Value>,
    pub delay: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawDeliver {
    One(RawTarget),
    Many(Vec<RawTarget>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawTarget {
    Id(String),
    Full { to: String, body: Option<String> },
}

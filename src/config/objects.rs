//! The objects a config is made of, as written: sources, event types, destinations and flows,
//! each kept as its JSON spec with a digest. An object comes from the config file (provisioned:
//! read-only through the API) or from the API (kept in the store and merged with the file's
//! objects at start). Both kinds go through the same checks (`config::build`), so the API
//! refuses exactly what the file would.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

pub use super::kind::ObjectKind;

/// One object with its spec as written (after `${ENV}` substitution for the file's). `Debug`
/// leaves the spec out: it may hold secrets.
#[derive(Clone, PartialEq)]
pub struct ObjectSpec {
    pub kind: ObjectKind,
    pub id: String,
    pub spec: Value,
    /// SHA-256 (hex) of the spec's canonical JSON: equal digests, equal objects.
    pub digest: String,
    /// From the config file: read-only through the API.
    pub provisioned: bool,
    /// When an API object was created and last changed (milliseconds); `None` for the file's.
    pub created_at: Option<i64>,
    pub updated_at: Option<i64>,
}

impl ObjectSpec {
    pub fn new(kind: ObjectKind, id: String, spec: Value, provisioned: bool) -> Self {
        ObjectSpec {
            kind,
            digest: digest(&spec),
            id,
            spec,
            provisioned,
            created_at: None,
            updated_at: None,
        }
    }
}

impl std::fmt::Debug for ObjectSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ObjectSpec({} {}, digest {}, provisioned: {})",
            self.kind.noun(),
            self.id,
            self.digest,
            self.provisioned
        )
    }
}

/// The config file a running config came from, kept so that API objects can be checked
/// together with it. `Debug` shows its name only: the text may hold secrets.
pub struct FileLayer {
    /// How errors name the file.
    pub name: String,
    /// The text after `${ENV}` substitution.
    pub text: String,
    /// Where `schema_file` paths start.
    pub base: PathBuf,
}

impl std::fmt::Debug for FileLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileLayer({})", self.name)
    }
}

/// The entries of `kind`'s top-level list in a config file read as JSON.
pub fn items(tree: &Value, kind: ObjectKind) -> impl Iterator<Item = &Value> {
    tree.get(kind.section())
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// Reads an event type's `schema_file`: JSON, or YAML that reads as JSON.
pub fn read_schema_file(path: &std::path::Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    serde_json::from_str(&text).or_else(|e| {
        serde_yaml::from_str(&text).map_err(|_| format!("`{}` is not JSON: {e}", path.display()))
    })
}

/// Every object of a config by kind and id.
pub type Objects = BTreeMap<(ObjectKind, String), std::sync::Arc<ObjectSpec>>;

/// SHA-256 (hex) of the canonical JSON of `spec` (object keys sorted, no spaces).
pub fn digest(spec: &Value) -> String {
    use sha2::Digest;
    let bytes = serde_json::to_vec(&canonical(spec)).unwrap_or_default();
    sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let sorted: BTreeMap<&String, Value> =
                map.iter().map(|(k, v)| (k, canonical(v))).collect();
            Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

pub use crate::config::redact::MASK;

/// The spec with its secrets masked, as every read shows it (`secrets::fields` says which).
pub fn masked(kind: ObjectKind, spec: &Value) -> Value {
    crate::config::redact::fields::masked(kind, spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn digest_ignores_key_order_and_masking_hides_every_secret() {
        let a = json!({"id": "crm", "retry": {"initial": "1s", "max": "1h"}});
        let b = json!({"retry": {"max": "1h", "initial": "1s"}, "id": "crm"});
        assert_eq!(digest(&a), digest(&b));
        assert_ne!(digest(&a), digest(&json!({"id": "crm"})));
        let spec =
            json!({"id": "crm", "signing": {"secret": "whsec_x"}, "headers": {"x-api-key": "k"}});
        let shown = masked(ObjectKind::Destination, &spec).to_string();
        let flow = json!({"id": "f", "steps": [
            {"http": {"url": "https://a.example/", "auth": {"basic": {"username": "u", "password": "p"}}}},
            {"http": {"url": "https://a.example/", "auth": {"api_key": {"header": "h", "value": "v"}}}}]});
        let shown = shown + &masked(ObjectKind::Flow, &flow).to_string();
        for secret in ["whsec_x", "\"k\"", "\"p\"", "\"v\""] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("\"username\":\"u\""));
    }
}

//! `ferry apply -f FILE`: makes a running server's API objects (sources, event types,
//! destinations, flows, alert rules) match a config file. It reads the file as `ferry serve` would (with
//! `${ENV}` from this process's environment, `schema_file`s read here and sent inline), asks
//! the server for what it has, prints the plan (create, change, delete with `--prune`,
//! unchanged), and then carries it out through `/api/v1/{kind}` in an order that keeps every
//! reference valid. Objects compare by digest, so applying the same file twice changes
//! nothing the second time.

use super::{ApiClient, ClientError};
use crate::config::ObjectKind;
use crate::config::objects::{digest, masked};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

/// Why a file cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{0}")]
    File(String),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(
        "{kind} `{id}` is in the server's config file and differs from this file's; change it there (provisioned objects are read-only through the API)"
    )]
    Provisioned { kind: &'static str, id: String },
    #[error("{done} change(s) made, then {kind} `{id}` was refused: {source}")]
    Refused {
        done: usize,
        kind: &'static str,
        id: String,
        source: ClientError,
    },
}

/// One step of the plan.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Change {
    /// `create`, `update`, `delete` or `unchanged`.
    pub action: &'static str,
    /// As in the API's paths.
    pub kind: &'static str,
    pub id: String,
    /// For an update: the top-level fields that differ (`secrets` when only masked values do).
    pub fields: Vec<String>,
    /// For an update: each differing field as `- <server's value>` and `+ <file's value>`
    /// lines (secrets masked, long values cut).
    #[serde(skip)]
    diff: Vec<String>,
    #[serde(skip)]
    spec: Option<Value>,
    #[serde(skip)]
    object_kind: ObjectKind,
}

/// Objects by kind and id: specs from a file, or the API's views of them.
pub type ObjectMap = BTreeMap<(ObjectKind, String), Value>;

/// The objects of the file by kind and id, ready to send, and notes on what it leaves out.
pub fn read_file(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(ObjectMap, Vec<String>), ApplyError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ApplyError::File(format!("cannot read `{name}`: {e}")))?;
    let base = path.parent().unwrap_or(Path::new("."));
    // The same substitution as `ferry serve`; the objects are checked by the server.
    let substituted = crate::config::substitute(&text, &name, env)
        .map_err(|e| ApplyError::File(e.to_string()))?;
    let tree: Value =
        serde_yaml::from_str(&substituted).map_err(|e| ApplyError::File(format!("{name}: {e}")))?;
    let mut notes = Vec::new();
    for section in ["settings", "channels"] {
        if tree.get(section).is_some() {
            notes.push(format!(
                "`{section}` is not applied through the API: it stays in the server's config file"
            ));
        }
    }
    let mut objects = BTreeMap::new();
    for kind in ObjectKind::ALL {
        for item in crate::config::objects::items(&tree, kind) {
            let Some(id) = item.get(kind.id_field()).and_then(Value::as_str) else {
                return Err(ApplyError::File(format!(
                    "{name}: a {} without `{}`",
                    kind.noun(),
                    kind.id_field()
                )));
            };
            let mut spec = item.clone();
            if kind == ObjectKind::EventType
                && let Some(file) = spec.get("schema_file").and_then(Value::as_str)
            {
                let schema = crate::config::objects::read_schema_file(&base.join(file))
                    .map_err(|e| ApplyError::File(format!("{name} (event type {id}): {e}")))?;
                if let Value::Object(map) = &mut spec {
                    map.remove("schema_file");
                    map.insert("schema".into(), schema);
                }
            }
            if objects.insert((kind, id.to_string()), spec).is_some() {
                return Err(ApplyError::File(format!(
                    "{name}: {} `{id}` is defined twice",
                    kind.noun()
                )));
            }
        }
    }
    Ok((objects, notes))
}

/// What the server has: every object of the four kinds, with `provisioned` and `digest`.
pub async fn remote_objects(client: &ApiClient) -> Result<ObjectMap, ApplyError> {
    let mut all = BTreeMap::new();
    for kind in ObjectKind::ALL {
        let mut after: Option<String> = None;
        loop {
            let path = match &after {
                Some(a) => format!("/api/v1/{}?limit=500&after={a}", kind.as_str()),
                None => format!("/api/v1/{}?limit=500", kind.as_str()),
            };
            let page = client.call(reqwest::Method::GET, &path, None).await?;
            for item in page["data"].as_array().into_iter().flatten() {
                if let Some(id) = item["id"].as_str() {
                    all.insert((kind, id.to_string()), item.clone());
                }
            }
            match page["next"].as_str() {
                Some(next) => after = Some(next.to_string()),
                None => break,
            }
        }
    }
    Ok(all)
}

/// The plan: creates and updates in reference order (sources, event types, destinations,
/// flows), then, with `prune`, deletes in the reverse order.
pub fn plan(
    wanted: &ObjectMap,
    remote: &ObjectMap,
    prune: bool,
) -> Result<Vec<Change>, ApplyError> {
    let mut changes = Vec::new();
    for ((kind, id), spec) in wanted {
        let change = |action, (fields, diff)| Change {
            action,
            kind: kind.as_str(),
            id: id.clone(),
            fields,
            diff,
            spec: Some(spec.clone()),
            object_kind: *kind,
        };
        match remote.get(&(*kind, id.clone())) {
            None => changes.push(change("create", Default::default())),
            Some(have) if have["digest"].as_str() == Some(digest(spec).as_str()) => {
                changes.push(change("unchanged", Default::default()))
            }
            Some(have) if have["provisioned"] == Value::Bool(true) => {
                return Err(ApplyError::Provisioned {
                    kind: kind.noun(),
                    id: id.clone(),
                });
            }
            Some(have) => {
                changes.push(change("update", changed_fields(*kind, spec, &have["spec"])))
            }
        }
    }
    if prune {
        for ((kind, id), have) in remote.iter().rev() {
            if have["provisioned"] != Value::Bool(true)
                && !wanted.contains_key(&(*kind, id.clone()))
            {
                changes.push(Change {
                    action: "delete",
                    kind: kind.as_str(),
                    id: id.clone(),
                    fields: Vec::new(),
                    diff: Vec::new(),
                    spec: None,
                    object_kind: *kind,
                });
            }
        }
    }
    Ok(changes)
}

/// The top-level fields that differ, and `-`/`+` lines showing them.
fn changed_fields(
    kind: ObjectKind,
    wanted: &Value,
    have_masked: &Value,
) -> (Vec<String>, Vec<String>) {
    let shown = masked(kind, wanted);
    let keys: std::collections::BTreeSet<&String> = shown
        .as_object()
        .into_iter()
        .flat_map(|m| m.keys())
        .chain(have_masked.as_object().into_iter().flat_map(|m| m.keys()))
        .collect();
    let mut fields = Vec::new();
    let mut diff = Vec::new();
    for key in keys {
        let (old, new) = (have_masked.get(key.as_str()), shown.get(key.as_str()));
        if old == new {
            continue;
        }
        fields.push(key.clone());
        if let Some(old) = old {
            diff.push(format!("- {key}: {}", cut(old)));
        }
        if let Some(new) = new {
            diff.push(format!("+ {key}: {}", cut(new)));
        }
    }
    if fields.is_empty() {
        fields.push("secrets".into());
    }
    (fields, diff)
}

/// A value as one line of at most 200 characters.
fn cut(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(200) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

/// The plan for a person: one line a change, `+` create, `~` update, `-` delete, `=` same.
pub fn render(changes: &[Change]) -> String {
    let mut out = String::new();
    let count = |a: &str| changes.iter().filter(|c| c.action == a).count();
    for c in changes {
        let noun = c.object_kind.noun();
        let _ = match c.action {
            "create" => writeln!(out, "+ {noun} {}", c.id),
            "update" => {
                let _ = writeln!(out, "~ {noun} {} ({})", c.id, c.fields.join(", "));
                c.diff
                    .iter()
                    .try_for_each(|line| writeln!(out, "    {line}"))
            }
            "delete" => writeln!(out, "- {noun} {}", c.id),
            _ => writeln!(out, "= {noun} {}", c.id),
        };
    }
    let _ = writeln!(
        out,
        "{} to create, {} to change, {} to delete, {} unchanged",
        count("create"),
        count("update"),
        count("delete"),
        count("unchanged")
    );
    out
}

/// Carries out the plan; returns how many changes were made.
pub async fn execute(client: &ApiClient, changes: &[Change]) -> Result<usize, ApplyError> {
    let mut done = 0;
    for c in changes {
        let path = format!("/api/v1/{}/{}", c.kind, c.id);
        let result = match c.action {
            "create" | "update" => {
                client
                    .call(reqwest::Method::PUT, &path, c.spec.clone())
                    .await
            }
            "delete" => client.call(reqwest::Method::DELETE, &path, None).await,
            _ => continue,
        };
        if let Err(source) = result {
            return Err(ApplyError::Refused {
                done,
                kind: c.object_kind.noun(),
                id: c.id.clone(),
                source,
            });
        }
        done += 1;
    }
    Ok(done)
}

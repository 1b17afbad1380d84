//! The flow builder's model: a draft flow as the builder's form holds it (one set of fields
//! per step, numbered), read from a posted form, written back as the flow's spec (what
//! `PUT /api/v1/flows/{id}` takes), and read from a saved flow's spec for editing. A step the
//! forms cannot hold whole (an http step with headers or auth, a deliver with per-destination
//! bodies, a branch whose cases do more than deliver) is kept as its JSON, edited as text.

use serde_json::{Map, Value, json};

/// The kinds of step the builder adds, in the order its buttons show them.
pub const KINDS: [&str; 7] = [
    "filter",
    "transform",
    "http",
    "delay",
    "branch",
    "deliver",
    "json",
];

/// At most this many steps in a draft (a flow longer than that is edited through the API).
pub const MAX_STEPS: usize = 100;

/// One step as its form holds it; the fields a kind does not use are empty.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DraftStep {
    pub kind: String,
    pub name: String,
    /// `filter` and `transform`: the jq; `branch`: the condition of its first case.
    pub expr: String,
    /// `deliver`: the destinations; `branch`: those its condition's case delivers to.
    pub to: Vec<String>,
    /// `branch`: where the else case delivers (none: the run goes on).
    pub otherwise: Vec<String>,
    pub method: String,
    pub url: String,
    /// `http`: the jq of its JSON body (optional).
    pub body: String,
    /// `delay`: `10m`, or `until` a jq time.
    pub delay: String,
    /// `json`: the step as JSON.
    pub json: String,
    /// Where the step was in the saved flow (none for a step added here): a step's secrets,
    /// shown as the mask, are kept from the saved step it came from, wherever it moved.
    pub from: Option<usize>,
}

/// A flow as the builder's form holds it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Draft {
    pub id: String,
    pub source: String,
    /// Comma-separated; empty: every event type of the source.
    pub event_types: String,
    pub steps: Vec<DraftStep>,
}

/// What the form asked for besides its fields: which button was pressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Add(String),
    Up(usize),
    Down(usize),
    Remove(usize),
    Test,
    Save,
    /// Just draw it again (a change of kind, a plain reload).
    Refresh,
}

/// The posted form: the draft, the button, and the test's input.
#[derive(Debug, Clone, Default)]
pub struct Posted {
    pub draft: Draft,
    pub action: Option<Action>,
    pub csrf: String,
    /// The flow being edited (empty for a new one).
    pub editing: String,
    pub sample: String,
    pub event_id: String,
}

fn action(value: &str) -> Option<Action> {
    let (verb, arg) = value.split_once(':').unwrap_or((value, ""));
    let at = || arg.parse::<usize>().ok();
    Some(match verb {
        "add" if KINDS.contains(&arg) => Action::Add(arg.to_string()),
        "up" => Action::Up(at()?),
        "down" => Action::Down(at()?),
        "remove" => Action::Remove(at()?),
        "test" => Action::Test,
        "save" => Action::Save,
        "refresh" => Action::Refresh,
        _ => return None,
    })
}

/// Reads the builder's form: `id`, `source`, `event_types`, and per step `N.kind`, `N.name`,
/// `N.expr`, `N.to` (repeated), `N.else` (repeated), `N.method`, `N.url`, `N.body`, `N.delay`,
/// `N.json`; `action`, `csrf`, `editing`, `sample`, `event_id`. Step numbers past
/// [`MAX_STEPS`] are ignored.
pub fn read_form(fields: &[(String, String)]) -> Posted {
    let mut posted = Posted::default();
    let mut steps: Vec<Option<DraftStep>> = Vec::new();
    for (key, value) in fields {
        match key.as_str() {
            "id" => posted.draft.id = value.trim().to_string(),
            "source" => posted.draft.source = value.trim().to_string(),
            "event_types" => posted.draft.event_types = value.clone(),
            "action" => posted.action = action(value),
            "csrf" => posted.csrf = value.clone(),
            "editing" => posted.editing = value.clone(),
            "sample" => posted.sample = value.clone(),
            "event_id" => posted.event_id = value.trim().to_string(),
            _ => {
                let Some((n, field)) = key.split_once('.') else {
                    continue;
                };
                let Ok(n) = n.parse::<usize>() else { continue };
                if n >= MAX_STEPS {
                    continue;
                }
                if steps.len() <= n {
                    steps.resize(n + 1, None);
                }
                let step = steps[n].get_or_insert_with(DraftStep::default);
                match field {
                    "kind" => step.kind = value.clone(),
                    "name" => step.name = value.trim().to_string(),
                    "expr" => step.expr = value.clone(),
                    "to" if !value.is_empty() => step.to.push(value.clone()),
                    "else" if !value.is_empty() => step.otherwise.push(value.clone()),
                    "method" => step.method = value.clone(),
                    "url" => step.url = value.trim().to_string(),
                    "body" => step.body = value.clone(),
                    "delay" => step.delay = value.trim().to_string(),
                    "json" => step.json = value.clone(),
                    "from" => step.from = value.parse().ok().filter(|n| *n < MAX_STEPS),
                    _ => {}
                }
            }
        }
    }
    posted.draft.steps = steps
        .into_iter()
        .flatten()
        .filter(|s| KINDS.contains(&s.kind.as_str()))
        .collect();
    posted
}

impl Draft {
    /// Applies a button that edits the draft (add, move, remove); the others change nothing.
    pub fn apply(&mut self, action: &Action) {
        match action {
            Action::Add(kind) if self.steps.len() < MAX_STEPS => self.steps.push(DraftStep {
                kind: kind.clone(),
                method: if kind == "http" {
                    "GET".into()
                } else {
                    String::new()
                },
                ..DraftStep::default()
            }),
            Action::Up(i) if *i > 0 && *i < self.steps.len() => self.steps.swap(*i, i - 1),
            Action::Down(i) if i + 1 < self.steps.len() => self.steps.swap(*i, i + 1),
            Action::Remove(i) if *i < self.steps.len() => {
                self.steps.remove(*i);
            }
            _ => {}
        }
    }

    /// The flow's spec, or what in the form is not yet a step (with the step's number).
    pub fn spec(&self) -> Result<Value, String> {
        let event_types: Vec<Value> = self
            .event_types
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| Value::String(t.to_string()))
            .collect();
        let steps = self
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| s.spec().map_err(|e| format!("step {}: {e}", i + 1)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(json!({
            "id": self.id,
            "on": {"source": self.source, "event_types": event_types},
            "steps": steps,
        }))
    }

    /// The draft of a saved flow's spec; a step the forms cannot hold whole is kept as JSON.
    pub fn from_spec(spec: &Value) -> Draft {
        let on = spec.get("on");
        let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_string();
        Draft {
            id: text(spec.get("id")),
            source: text(on.and_then(|o| o.get("source"))),
            event_types: match on.and_then(|o| o.get("event_types")) {
                Some(Value::Array(t)) => t
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", "),
                _ => String::new(),
            },
            steps: match spec.get("steps") {
                Some(Value::Array(steps)) => steps
                    .iter()
                    .enumerate()
                    .map(|(at, step)| DraftStep {
                        from: Some(at),
                        ..DraftStep::from_spec(step)
                    })
                    .collect(),
                _ => Vec::new(),
            },
        }
    }
}

/// `saved` (a flow's stored spec) with its steps placed where the draft's steps came from:
/// step `i` of the result is the saved step the draft's step `i` was, or nothing for a step
/// added in the builder. Masked secrets are restored against it, so that a step keeps its own
/// secret wherever it moved.
pub fn saved_in_draft_order(saved: &Value, draft: &Draft) -> Value {
    let old_steps = saved.get("steps").and_then(Value::as_array);
    let steps: Vec<Value> = draft
        .steps
        .iter()
        .map(|s| {
            s.from
                .and_then(|at| old_steps.and_then(|old| old.get(at)))
                .cloned()
                .unwrap_or_else(|| json!({}))
        })
        .collect();
    let mut placed = saved.clone();
    placed["steps"] = Value::Array(steps);
    placed
}

/// Destination ids of a plain deliver (ids only), or `None` when it says more.
fn plain_targets(deliver: &Value) -> Option<Vec<String>> {
    match deliver {
        Value::String(id) => Some(vec![id.clone()]),
        Value::Array(items) => items
            .iter()
            .map(|t| t.as_str().map(str::to_string))
            .collect(),
        _ => None,
    }
}

/// The steps of a branch case when they are exactly one plain deliver (or none).
fn case_targets(steps: Option<&Value>) -> Option<Vec<String>> {
    match steps {
        None => Some(Vec::new()),
        Some(Value::Array(steps)) if steps.is_empty() => Some(Vec::new()),
        Some(Value::Array(steps)) if steps.len() == 1 => {
            let step = steps[0].as_object()?;
            if step.len() != 1 {
                return None;
            }
            plain_targets(step.get("deliver")?)
        }
        _ => None,
    }
}

fn targets_value(ids: &[String]) -> Value {
    match ids {
        [one] => Value::String(one.clone()),
        many => Value::Array(many.iter().cloned().map(Value::String).collect()),
    }
}

impl DraftStep {
    fn spec(&self) -> Result<Value, String> {
        if self.kind == "json" {
            let step: Value = serde_json::from_str(&self.json)
                .map_err(|e| format!("the step's JSON does not parse: {e}"))?;
            if !step.is_object() {
                return Err(
                    "the step's JSON must be an object, such as {\"filter\": \".ok\"}".into(),
                );
            }
            return Ok(step);
        }
        let mut step = Map::new();
        if !self.name.is_empty() {
            step.insert("name".into(), Value::String(self.name.clone()));
        }
        let (key, value) = match self.kind.as_str() {
            "filter" | "transform" => (self.kind.as_str(), Value::String(self.expr.clone())),
            "deliver" => {
                if self.to.is_empty() {
                    return Err("a deliver step needs at least one destination".into());
                }
                ("deliver", targets_value(&self.to))
            }
            "http" => {
                let mut http = Map::new();
                http.insert("method".into(), Value::String(self.method.clone()));
                http.insert("url".into(), Value::String(self.url.clone()));
                if !self.body.trim().is_empty() {
                    http.insert("body".into(), Value::String(self.body.clone()));
                }
                ("http", Value::Object(http))
            }
            "delay" => {
                let delay = match self.delay.strip_prefix("until ") {
                    Some(until) => json!({"until": until.trim()}),
                    None => Value::String(self.delay.clone()),
                };
                ("delay", delay)
            }
            "branch" => {
                if self.to.is_empty() {
                    return Err(
                        "a branch needs the destinations its condition's case delivers to".into(),
                    );
                }
                let mut cases = vec![
                    json!({"when": self.expr, "steps": [{"deliver": targets_value(&self.to)}]}),
                ];
                if !self.otherwise.is_empty() {
                    cases.push(json!({"else": [{"deliver": targets_value(&self.otherwise)}]}));
                }
                ("branch", Value::Array(cases))
            }
            other => return Err(format!("`{other}` is not a kind of step")),
        };
        step.insert(key.into(), value);
        Ok(Value::Object(step))
    }

    fn from_spec(spec: &Value) -> DraftStep {
        Self::from_spec_whole(spec).unwrap_or_else(|| DraftStep {
            kind: "json".into(),
            json: serde_json::to_string_pretty(spec).unwrap_or_default(),
            ..DraftStep::default()
        })
    }

    /// The form of a step when the forms hold all of it.
    fn from_spec_whole(spec: &Value) -> Option<DraftStep> {
        let object = spec.as_object()?;
        let name = object
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let kinds: Vec<&String> = object.keys().filter(|k| *k != "name").collect();
        let [kind] = kinds.as_slice() else {
            return None;
        };
        let value = object.get(kind.as_str())?;
        let mut step = DraftStep {
            kind: kind.to_string(),
            name: name.to_string(),
            ..DraftStep::default()
        };
        match kind.as_str() {
            "filter" | "transform" => step.expr = value.as_str()?.to_string(),
            "deliver" => step.to = plain_targets(value)?,
            "http" => {
                let http = value.as_object()?;
                if http
                    .keys()
                    .any(|k| !matches!(k.as_str(), "method" | "url" | "body"))
                {
                    return None;
                }
                step.method = http
                    .get("method")
                    .and_then(Value::as_str)
                    .unwrap_or("GET")
                    .to_string();
                step.url = http.get("url")?.as_str()?.to_string();
                step.body = http
                    .get("body")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
            }
            "delay" => {
                step.delay = match value {
                    Value::String(d) => d.clone(),
                    other => format!("until {}", other.get("until")?.as_str()?),
                }
            }
            "branch" => {
                let cases = value.as_array()?;
                let first = cases.first()?.as_object()?;
                if first.keys().any(|k| k != "when" && k != "steps") || cases.len() > 2 {
                    return None;
                }
                step.expr = first.get("when")?.as_str()?.to_string();
                step.to = case_targets(first.get("steps"))?;
                if step.to.is_empty() {
                    return None;
                }
                if let Some(second) = cases.get(1) {
                    let second = second.as_object()?;
                    if second.len() != 1 {
                        return None;
                    }
                    step.otherwise = case_targets(second.get("else"))?;
                }
            }
            _ => return None,
        }
        Some(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_form_becomes_a_spec_and_a_spec_comes_back_as_the_same_form() {
        let posted = read_form(&pairs(&[
            ("id", "orders"),
            ("source", "shop"),
            ("event_types", "order.created, order.paid"),
            ("0.kind", "filter"),
            ("0.expr", ".total > 0"),
            ("1.kind", "branch"),
            ("1.expr", ".vip"),
            ("1.to", "crm"),
            ("1.to", "slack"),
            ("1.else", "books"),
            ("2.kind", "http"),
            ("2.name", "lookup"),
            ("2.method", "POST"),
            ("2.url", "https://crm.example/find"),
            ("2.body", "{email}"),
            ("3.kind", "delay"),
            ("3.delay", "until .send_at"),
            ("4.kind", "deliver"),
            ("4.to", "books"),
            ("action", "test"),
        ]));
        assert_eq!(posted.action, Some(Action::Test));
        let spec = posted.draft.spec().unwrap();
        assert_eq!(
            spec["on"]["event_types"],
            json!(["order.created", "order.paid"])
        );
        assert_eq!(
            spec["steps"][1]["branch"],
            json!([{"when": ".vip", "steps": [{"deliver": ["crm", "slack"]}]}, {"else": [{"deliver": "books"}]}])
        );
        assert_eq!(spec["steps"][3]["delay"], json!({"until": ".send_at"}));
        let mut back = Draft::from_spec(&spec);
        assert!(
            back.steps
                .iter()
                .enumerate()
                .all(|(i, s)| s.from == Some(i))
        );
        back.steps.iter_mut().for_each(|s| s.from = None);
        assert_eq!(back, posted.draft);
    }

    #[test]
    fn what_the_forms_cannot_hold_is_kept_as_json_and_written_back_unchanged() {
        let step = json!({"http": {"url": "https://x.example", "headers": {"a": "b"}}});
        let spec = json!({"id": "f", "on": {"source": "s"}, "steps": [step, {"deliver": [{"to": "d", "body": "."}]}]});
        let draft = Draft::from_spec(&spec);
        assert!(draft.steps.iter().all(|s| s.kind == "json"));
        assert_eq!(draft.spec().unwrap()["steps"], spec["steps"]);
    }

    #[test]
    fn buttons_move_add_and_remove_steps_and_hostile_forms_are_bounded() {
        let mut posted = read_form(&pairs(&[
            ("0.kind", "filter"),
            ("1.kind", "transform"),
            ("99999999999999999999.kind", "filter"),
            ("5000.kind", "filter"),
            ("x.kind", "filter"),
            ("2.kind", "<script>"),
            ("action", "up:1"),
        ]));
        assert_eq!(posted.draft.steps.len(), 2);
        let action = posted.action.clone().unwrap();
        posted.draft.apply(&action);
        assert_eq!(posted.draft.steps[0].kind, "transform");
        posted.draft.apply(&Action::Down(5));
        posted.draft.apply(&Action::Remove(0));
        posted.draft.apply(&Action::Add("deliver".into()));
        let kinds: Vec<&str> = posted.draft.steps.iter().map(|s| s.kind.as_str()).collect();
        assert_eq!(kinds, ["filter", "deliver"]);
        assert_eq!(action_of("add:<script>"), None);
        assert_eq!(action_of("up:-1"), None);
        // A deliver with no destination, or JSON that is not a step, says which step is wrong.
        assert!(posted.draft.spec().unwrap_err().starts_with("step 2:"));
        let json = read_form(&pairs(&[("0.kind", "json"), ("0.json", "[1,")]));
        assert!(json.draft.spec().unwrap_err().contains("does not parse"));
    }

    #[test]
    fn a_moved_step_is_matched_with_the_saved_step_it_came_from() {
        let saved = json!({"id": "f", "on": {"source": "s"}, "steps": [
            {"http": {"url": "https://a.example/one", "auth": {"bearer": "ONE"}}},
            {"http": {"url": "https://a.example/two", "auth": {"bearer": "TWO"}}}
        ]});
        let mut draft = Draft::from_spec(&saved);
        draft.apply(&Action::Down(0));
        draft.apply(&Action::Add("filter".into()));
        let placed = saved_in_draft_order(&saved, &draft);
        assert_eq!(placed["steps"][0], saved["steps"][1]);
        assert_eq!(placed["steps"][1], saved["steps"][0]);
        assert_eq!(placed["steps"][2], json!({}));
        // The field survives the form: a posted `N.from` comes back.
        let posted = read_form(&pairs(&[
            ("0.kind", "json"),
            ("0.from", "1"),
            ("1.kind", "filter"),
            ("1.from", "999"),
        ]));
        assert_eq!(posted.draft.steps[0].from, Some(1));
        assert_eq!(posted.draft.steps[1].from, None);
    }

    fn action_of(value: &str) -> Option<Action> {
        action(value)
    }
}

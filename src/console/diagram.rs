//! A flow drawn as a diagram: its trigger, its steps top to bottom, a branch's cases side by
//! side under their conditions, a deliver step's destinations fanned out. Laid out here from
//! the flow's spec (as the config file or the API writes it) into boxes and lines; the
//! template draws them as inline SVG, escaping every label.

use serde_json::Value;

const STEP_WIDTH: f64 = 200.0;
const STEP_HEIGHT: f64 = 46.0;
const DEST_WIDTH: f64 = 130.0;
const GAP_X: f64 = 24.0;
const GAP_Y: f64 = 34.0;
/// Room above a branch case for its condition.
const CASE_LABEL: f64 = 22.0;
/// Longest label shown in a box, in characters (the rest is in the box's tooltip).
const LABEL_CHARS: usize = 28;
/// Destinations drawn under one deliver step, and cases under one branch; past that, one box
/// says how many more (a diagram stays a picture, whatever a draft holds).
const MAX_FANOUT: usize = 12;

/// One box.
pub struct Node {
    pub x: f64,
    pub y: f64,
    pub width: f64,
    pub height: f64,
    /// `trigger`, `filter`, `transform`, `http`, `delay`, `branch`, `deliver`, `destination`.
    pub kind: &'static str,
    pub title: String,
    pub detail: String,
    /// Everything, for the tooltip.
    pub full: String,
}

/// One line, with an optional label at its middle (a branch's condition).
pub struct Edge {
    pub x1: f64,
    pub y1: f64,
    pub x2: f64,
    pub y2: f64,
    pub label: String,
}

pub struct Diagram {
    pub width: f64,
    pub height: f64,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

fn short(text: &str) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= LABEL_CHARS {
        one_line
    } else {
        let cut: String = one_line.chars().take(LABEL_CHARS - 1).collect();
        format!("{cut}…")
    }
}

/// The destination ids of a `deliver` value: an id, `{to, body}`, or a list of them.
fn targets(deliver: &Value) -> Vec<String> {
    let one = |t: &Value| match t {
        Value::String(id) => Some(id.clone()),
        Value::Object(o) => o.get("to").and_then(Value::as_str).map(str::to_string),
        _ => None,
    };
    let mut ids: Vec<String> = match deliver {
        Value::Array(items) => items.iter().filter_map(one).collect(),
        other => one(other).into_iter().collect(),
    };
    if ids.len() > MAX_FANOUT {
        let more = ids.len() - (MAX_FANOUT - 1);
        ids.truncate(MAX_FANOUT - 1);
        ids.push(format!("… {more} more"));
    }
    ids
}

/// The cases of a `branch`: each condition (`else` for the last) and its steps.
fn cases(branch: &Value) -> Vec<(String, Vec<Value>)> {
    let Value::Array(items) = branch else {
        return Vec::new();
    };
    items
        .iter()
        .take(MAX_FANOUT)
        .map(|case| {
            let steps = |key| match case.get(key) {
                Some(Value::Array(steps)) => steps.clone(),
                _ => Vec::new(),
            };
            match case.get("when").and_then(Value::as_str) {
                Some(when) => (when.to_string(), steps("steps")),
                None => ("else".to_string(), steps("else")),
            }
        })
        .collect()
}

fn width_of_steps(steps: &[Value]) -> f64 {
    steps.iter().map(width_of_step).fold(STEP_WIDTH, f64::max)
}

fn width_of_step(step: &Value) -> f64 {
    if let Some(deliver) = step.get("deliver") {
        let n = targets(deliver).len() as f64;
        return (n * DEST_WIDTH + (n - 1.0).max(0.0) * GAP_X).max(STEP_WIDTH);
    }
    if let Some(branch) = step.get("branch") {
        let cases = cases(branch);
        let n = cases.len() as f64;
        let sum: f64 = cases.iter().map(|(_, steps)| width_of_steps(steps)).sum();
        return (sum + (n - 1.0).max(0.0) * GAP_X).max(STEP_WIDTH);
    }
    STEP_WIDTH
}

/// What a step's box says: its kind (and name), and a short form of what it does.
fn describe(step: &Value) -> (&'static str, String, String) {
    let text = |key| step.get(key).and_then(Value::as_str).unwrap_or_default();
    if step.get("filter").is_some() {
        ("filter", "filter".into(), text("filter").to_string())
    } else if step.get("transform").is_some() {
        (
            "transform",
            "transform".into(),
            text("transform").to_string(),
        )
    } else if let Some(http) = step.get("http") {
        let method = http.get("method").and_then(Value::as_str).unwrap_or("GET");
        let url = http.get("url").and_then(Value::as_str).unwrap_or_default();
        ("http", format!("http {method}"), url.to_string())
    } else if let Some(delay) = step.get("delay") {
        let detail = match delay {
            Value::String(d) => d.clone(),
            other => other
                .get("until")
                .and_then(Value::as_str)
                .map(|u| format!("until {u}"))
                .unwrap_or_default(),
        };
        ("delay", "delay".into(), detail)
    } else if step.get("branch").is_some() {
        ("branch", "branch".into(), String::new())
    } else if let Some(deliver) = step.get("deliver") {
        ("deliver", "deliver".into(), targets(deliver).join(", "))
    } else {
        ("step", "step".into(), step.to_string())
    }
}

struct Layout {
    nodes: Vec<Node>,
    edges: Vec<Edge>,
    bottom: f64,
}

impl Layout {
    fn node(
        &mut self,
        center: f64,
        y: f64,
        width: f64,
        kind: &'static str,
        title: String,
        detail: &str,
    ) {
        let full = if detail.is_empty() {
            title.clone()
        } else {
            format!("{title}: {detail}")
        };
        self.nodes.push(Node {
            x: center - width / 2.0,
            y,
            width,
            height: STEP_HEIGHT,
            kind,
            title,
            detail: short(detail),
            full,
        });
        self.bottom = self.bottom.max(y + STEP_HEIGHT);
    }

    fn edge(&mut self, from: (f64, f64), to: (f64, f64), label: String) {
        self.edges.push(Edge {
            x1: from.0,
            y1: from.1,
            x2: to.0,
            y2: to.1,
            label,
        });
    }

    /// Places `steps` centred on `center` from `y`, each joined to the exits before it;
    /// answers the exits of the last (where what follows joins).
    fn steps(
        &mut self,
        steps: &[Value],
        center: f64,
        mut y: f64,
        mut exits: Vec<(f64, f64)>,
    ) -> (f64, Vec<(f64, f64)>) {
        for step in steps {
            let (kind, mut title, detail) = describe(step);
            if let Some(name) = step.get("name").and_then(Value::as_str) {
                title = format!("{title} · {name}");
            }
            for from in exits.drain(..) {
                self.edge(from, (center, y), String::new());
            }
            self.node(
                center,
                y,
                STEP_WIDTH,
                kind,
                title,
                if kind == "deliver" { "" } else { &detail },
            );
            let below = y + STEP_HEIGHT;
            match kind {
                "deliver" => {
                    let ids = step.get("deliver").map(targets).unwrap_or_default();
                    let n = ids.len() as f64;
                    let row = n * DEST_WIDTH + (n - 1.0).max(0.0) * GAP_X;
                    let mut x = center - row / 2.0 + DEST_WIDTH / 2.0;
                    let dest_y = below + GAP_Y;
                    for id in ids {
                        self.edge((center, below), (x, dest_y), String::new());
                        self.node(x, dest_y, DEST_WIDTH, "destination", id, "");
                        x += DEST_WIDTH + GAP_X;
                    }
                    // The run goes on after its deliveries are made (not after they land).
                    exits = vec![(center, below)];
                    y = if n > 0.0 {
                        dest_y + STEP_HEIGHT + GAP_Y
                    } else {
                        below + GAP_Y
                    };
                }
                "branch" => {
                    let cases = step.get("branch").map(cases).unwrap_or_default();
                    let widths: Vec<f64> = cases.iter().map(|(_, s)| width_of_steps(s)).collect();
                    let row =
                        widths.iter().sum::<f64>() + (widths.len() as f64 - 1.0).max(0.0) * GAP_X;
                    let mut left = center - row / 2.0;
                    let case_y = below + GAP_Y + CASE_LABEL;
                    let mut deepest = case_y;
                    for ((when, case_steps), width) in cases.iter().zip(&widths) {
                        let case_center = left + width / 2.0;
                        let label = if when == "else" {
                            "else".to_string()
                        } else {
                            format!("when {}", short(when))
                        };
                        if case_steps.is_empty() {
                            // A case with no step ends the branch as it is.
                            self.edge(
                                (center, below),
                                (case_center, case_y - CASE_LABEL / 2.0),
                                label,
                            );
                            exits.push((case_center, case_y - CASE_LABEL / 2.0));
                        } else {
                            let (end, case_exits) =
                                self.steps(case_steps, case_center, case_y, vec![]);
                            // The case's first step joins the branch box under its condition.
                            self.edge((center, below), (case_center, case_y), label);
                            deepest = deepest.max(end);
                            exits.extend(case_exits);
                        }
                        left += width + GAP_X;
                    }
                    y = deepest;
                }
                _ => {
                    exits = vec![(center, below)];
                    y = below + GAP_Y;
                }
            }
        }
        (y, exits)
    }
}

/// The diagram of the flow whose spec is `spec`.
pub fn draw(spec: &Value) -> Diagram {
    let steps: Vec<Value> = match spec.get("steps") {
        Some(Value::Array(steps)) => steps.clone(),
        _ => Vec::new(),
    };
    let width = width_of_steps(&steps).max(STEP_WIDTH) + 2.0 * GAP_X;
    let center = width / 2.0;
    let mut layout = Layout {
        nodes: Vec::new(),
        edges: Vec::new(),
        bottom: 0.0,
    };
    let on = spec.get("on");
    let source = on
        .and_then(|o| o.get("source"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let types = match on.and_then(|o| o.get("event_types")) {
        Some(Value::Array(t)) if !t.is_empty() => t
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(", "),
        _ => "every event type".to_string(),
    };
    layout.node(
        center,
        GAP_Y / 2.0,
        STEP_WIDTH,
        "trigger",
        format!("on {source}"),
        &types,
    );
    let first = GAP_Y / 2.0 + STEP_HEIGHT + GAP_Y;
    layout.steps(
        &steps,
        center,
        first,
        vec![(center, GAP_Y / 2.0 + STEP_HEIGHT)],
    );
    Diagram {
        width,
        height: layout.bottom + GAP_Y / 2.0,
        nodes: layout.nodes,
        edges: layout.edges,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_flow_is_drawn_trigger_first_with_branches_side_by_side_and_destinations_fanned_out() {
        let spec = json!({
            "id": "orders",
            "on": {"source": "shop", "event_types": ["order.created"]},
            "steps": [
                {"filter": ".total > 0"},
                {"branch": [
                    {"when": ".vip", "steps": [{"deliver": ["crm", "slack"]}]},
                    {"else": [{"transform": "{id}"}]}
                ]},
                {"deliver": "books"}
            ]
        });
        let d = draw(&spec);
        let kinds: Vec<&str> = d.nodes.iter().map(|n| n.kind).collect();
        assert_eq!(
            kinds,
            [
                "trigger",
                "filter",
                "branch",
                "deliver",
                "destination",
                "destination",
                "transform",
                "deliver",
                "destination"
            ]
        );
        // Every box is inside the picture, and no two overlap.
        for n in &d.nodes {
            assert!(
                n.x >= 0.0 && n.x + n.width <= d.width,
                "{} at {}",
                n.title,
                n.x
            );
            assert!(n.y + n.height <= d.height);
        }
        for (i, a) in d.nodes.iter().enumerate() {
            for b in &d.nodes[i + 1..] {
                let apart = a.x + a.width <= b.x
                    || b.x + b.width <= a.x
                    || a.y + a.height <= b.y
                    || b.y + b.height <= a.y;
                assert!(apart, "{} and {} overlap", a.title, b.title);
            }
        }
        // The conditions label the cases' edges; both cases lead to the last deliver.
        let labels: Vec<&str> = d
            .edges
            .iter()
            .map(|e| e.label.as_str())
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(labels, ["when .vip", "else"]);
        let last = d
            .nodes
            .iter()
            .rev()
            .find(|n| n.kind == "deliver")
            .map(|n| n.y)
            .unwrap_or_default();
        assert_eq!(d.edges.iter().filter(|e| e.y2 == last).count(), 2);
        // A huge fan-out stays a picture.
        let ids: Vec<String> = (0..10_000).map(|i| format!("d{i}")).collect();
        let wide = draw(&json!({"on": {"source": "s"}, "steps": [{"deliver": ids}]}));
        assert!(
            wide.width < 2_500.0 && wide.nodes.len() == 2 + MAX_FANOUT,
            "{}",
            wide.width
        );
        assert!(wide.nodes.iter().any(|n| n.title == "… 9989 more"));
        // Hostile text stays text: the template escapes it; here it is only cut.
        let long =
            draw(&json!({"on": {"source": "s"}, "steps": [{"filter": "<script>".repeat(20)}]}));
        assert!(long.nodes[1].detail.chars().count() <= LABEL_CHARS);
        assert!(long.nodes[1].full.contains("<script>"));
    }
}

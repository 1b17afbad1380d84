//! The engine: decides what an event sets in motion and how a run moves from step to step.
//! Given a flow's program and a run's context, [`run::advance`] runs the pure steps (filter,
//! transform, branch) and stops at the first step that needs the outside world (deliver,
//! http, delay), saying what that step needs. Planning a new event's runs is this for each
//! matching flow, turned into rows to store with the event.
//!
//! Expressions run only in the expression workers (`sandbox`): the server holds a flow's
//! program and a run's context as data and sends them there. A flow without expressions is
//! planned inline ([`plan`]), since nothing in it runs jq.
//!
//! **Invariant:** the engine does no I/O. It returns rows and requests; the store commits them
//! and `deliver` performs them.

pub mod jq;
pub mod run;
pub mod sandbox;
pub mod template;

use crate::clock::{Millis, rfc3339};
use crate::config::{Config, Flow, program};
use crate::store::{Body, BodyIds, NewDelivery, NewRun};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Largest output an expression may produce (a transformed payload, a body), in bytes.
pub const MAX_OUTPUT_SIZE: usize = 1024 * 1024;

/// What every step of a run may read about its event (`$event`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventInfo {
    pub id: String,
    pub event_type: String,
    pub source: String,
    pub received_at: Millis,
    /// The request headers kept with the event, as a JSON object.
    pub headers: serde_json::Value,
}

impl EventInfo {
    /// `$event` as expressions see it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "type": self.event_type,
            "source": self.source,
            "received_at": rfc3339(self.received_at),
            "headers": self.headers,
        })
    }
}

/// The state a run carries from step to step, as data: its event, the payload when a
/// transform replaced the event's, and the outputs of named steps.
#[derive(Clone)]
pub struct RunContext {
    event: Arc<EventInfo>,
    raw: Bytes,
    /// The payload as JSON text, once a transform has replaced the event's.
    payload: Option<Bytes>,
    /// The id of `payload` in the store's bodies, while it is the one stored.
    payload_body: Option<i64>,
    steps: serde_json::Map<String, serde_json::Value>,
}

/// A run's context as stored: the outputs of named steps (the payload is a body of its own).
#[derive(Serialize, Deserialize, Default)]
struct StoredContext {
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    steps: serde_json::Map<String, serde_json::Value>,
}

impl RunContext {
    pub fn new(event: Arc<EventInfo>, raw: Bytes) -> RunContext {
        RunContext {
            event,
            raw,
            payload: None,
            payload_body: None,
            steps: serde_json::Map::new(),
        }
    }

    /// A context as stored: its payload's body (when a transform replaced the event's) and
    /// what [`RunContext::to_stored`] saved.
    pub fn from_stored(
        event: Arc<EventInfo>,
        raw: Bytes,
        payload: Option<Body>,
        stored: Option<&str>,
    ) -> Result<RunContext, String> {
        let mut ctx = RunContext::new(event, raw);
        if let Some(body) = payload {
            ctx.payload = Some(body.data);
            ctx.payload_body = Some(body.id);
        }
        if let Some(text) = stored {
            let s: StoredContext =
                serde_json::from_str(text).map_err(|e| format!("stored run context: {e}"))?;
            ctx.steps = s.steps;
        }
        Ok(ctx)
    }

    /// The outputs of named steps as stored; `None` when there are none.
    pub fn to_stored(&self) -> Option<String> {
        if self.steps.is_empty() {
            return None;
        }
        serde_json::to_string(&StoredContext {
            steps: self.steps.clone(),
        })
        .ok()
    }

    /// The id of the payload's body, once [`keep_bodies`] has given it one (`None` while the
    /// payload is the event's).
    pub fn payload_body(&self) -> Option<i64> {
        self.payload_body
    }

    pub fn event(&self) -> &Arc<EventInfo> {
        &self.event
    }

    /// The event's body as it was received.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// The current payload's JSON: the event's body until a transform replaced it.
    pub fn payload_json(&self) -> &Bytes {
        self.payload.as_ref().unwrap_or(&self.raw)
    }

    /// The payload to send: `None` while it is the event's own body.
    pub fn transformed_payload(&self) -> Option<&Bytes> {
        self.payload.as_ref()
    }

    /// Replaces the payload (a transform's output, as JSON text). The same bytes again keep
    /// the body they are stored as.
    pub fn set_payload(&mut self, json: Bytes) {
        if self.payload.as_ref() != Some(&json) {
            self.payload_body = None;
        }
        self.payload = Some(json);
    }

    pub fn steps(&self) -> &serde_json::Map<String, serde_json::Value> {
        &self.steps
    }

    /// Makes `output` visible to later steps as `$steps.<name>`.
    pub fn set_step_output(&mut self, name: &str, output: serde_json::Value) {
        self.steps.insert(name.to_string(), output);
    }
}

/// What one step did, kept with the run and shown by the API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRecord {
    /// The instruction's index in the flow's program.
    pub index: usize,
    /// Where the step is in the flow, as a JSON pointer (`/steps/3/branch/0/steps/1`).
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub kind: String,
    /// `passed`, `filtered`, `succeeded`, `failed`, `sent` (deliveries created), `waited`,
    /// `retrying` (an http attempt failed and will be tried again), or in a test, `not_sent` and
    /// `not_waited`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
    /// A transform's output (JSON text), until [`keep_bodies`] stores it as a body; the
    /// stored record names that body instead (`output_body`), which reads show as `output`.
    #[serde(default, with = "json_bytes", skip_serializing_if = "Option::is_none")]
    pub payload: Option<Bytes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_body: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub started_at: Millis,
    /// Kept to the microsecond: a float's full digits (`0.007305000000000001`) cost a stored
    /// run a few dozen bytes a step and say nothing more.
    #[serde(serialize_with = "to_the_microsecond")]
    pub duration_ms: f64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deliveries: Vec<String>,
    /// The request a step sends, shown by `ferry flow test` (credentials masked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<serde_json::Value>,
}

impl StepRecord {
    /// The record of the instruction at `pc`, started at `now`: `succeeded` with nothing
    /// else until the step says more.
    pub fn new(instr: &program::Instr, pc: usize, now: Millis) -> StepRecord {
        StepRecord {
            index: pc,
            path: instr.path.clone(),
            name: instr.name.clone(),
            kind: instr.op.kind().to_string(),
            status: "succeeded".to_string(),
            output: None,
            payload: None,
            output_body: None,
            error: None,
            started_at: now,
            duration_ms: 0.0,
            deliveries: Vec::new(),
            request: None,
        }
    }
}

fn to_the_microsecond<S: serde::Serializer>(ms: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((ms * 1000.0).round() / 1000.0)
}

/// A delivery a `deliver` step asks for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannedDelivery {
    pub id: String,
    pub destination_id: String,
    /// The body to send (JSON); `None` is the event's payload as it was received.
    #[serde(with = "json_bytes")]
    pub body: Option<Bytes>,
}

/// JSON text held as bytes, written into a message as JSON (not as a string of it): `Some`
/// as a one-element array, so that a JSON `null` is still `Some(b"null")`, and `None` as
/// `null`.
pub(crate) mod json_bytes {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::value::RawValue;

    pub fn serialize<S: Serializer>(b: &Option<Bytes>, s: S) -> Result<S::Ok, S::Error> {
        match b {
            None => s.serialize_none(),
            Some(b) => [serde_json::from_slice::<&RawValue>(b).map_err(serde::ser::Error::custom)?]
                .serialize(s),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Bytes>, D::Error> {
        let raw = Option::<[Box<RawValue>; 1]>::deserialize(d)?;
        Ok(raw.map(|[r]| Bytes::copy_from_slice(r.get().as_bytes())))
    }
}

/// Why [`run::advance`] stopped.
#[derive(Debug, Serialize, Deserialize)]
pub enum Stop {
    Completed,
    Filtered,
    Failed(String),
    /// Deliveries to create; the run waits for them, then goes on at `resume` (or completes).
    Deliver {
        deliveries: Vec<PlannedDelivery>,
        resume: Option<usize>,
    },
    /// The `http` step at `pc` is to be performed.
    Http,
    /// The `delay` step at `pc` waits until then.
    Wait(Millis),
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Advance {
    /// The instruction it stopped at.
    pub pc: usize,
    pub stop: Stop,
    pub records: Vec<StepRecord>,
}

/// How errors name a step: `step /steps/2 (http `lookup`)`.
pub fn step_label(instr: &program::Instr) -> String {
    match &instr.name {
        Some(name) => format!("step {} ({} `{name}`)", instr.path, instr.op.kind()),
        None => format!("step {} ({})", instr.path, instr.op.kind()),
    }
}

/// A request an `http` step sends, as the server performs it.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: reqwest::Method,
    pub url: url::Url,
    pub headers: Vec<(reqwest::header::HeaderName, reqwest::header::HeaderValue)>,
    pub body: Option<Bytes>,
    /// Sent as `Idempotency-Key` unless the step sets that header itself.
    pub idempotency_key: String,
}

impl HttpRequest {
    /// The request a worker rendered (`run::render_http`), checked: the URL parses and every
    /// header value is one.
    pub fn from_rendered(
        step: &program::HttpStep,
        rendered: run::Rendered,
        idempotency_key: String,
    ) -> Result<HttpRequest, String> {
        // A worker runs untrusted code: what it answers is checked like input.
        let shown = |url: &str| crate::config::redact::url::shown(url, &step.secret_query_params);
        if !rendered.url.starts_with(step.url.literal_prefix()) {
            return Err(format!(
                "url `{}` does not start with the step's fixed `{}`",
                shown(&rendered.url),
                shown(step.url.literal_prefix())
            ));
        }
        if rendered.headers.len() != step.headers.len() {
            return Err(format!(
                "{} header values for {} headers",
                rendered.headers.len(),
                step.headers.len()
            ));
        }
        let url = url::Url::parse(&rendered.url)
            .map_err(|e| format!("url `{}` is not a URL ({e})", shown(&rendered.url)))?;
        let mut headers = Vec::with_capacity(step.headers.len());
        for ((name, _), text) in step.headers.iter().zip(rendered.headers) {
            let value = reqwest::header::HeaderValue::from_str(&text).map_err(|_| {
                let text = if step.secret_header(name.as_str()) {
                    crate::config::redact::MASK
                } else {
                    &text
                };
                format!("header `{name}`: `{text}` is not a valid header value")
            })?;
            headers.push((name.clone(), value));
        }
        Ok(HttpRequest {
            method: step.method.clone(),
            url,
            headers,
            body: rendered.body,
            idempotency_key,
        })
    }
}

/// What a delivery to `destination_id` would send, for `ferry flow test`.
fn delivery_preview(
    config: &Config,
    destination_id: &str,
    body: serde_json::Value,
) -> serde_json::Value {
    let Some(dest) = config.destinations.get(destination_id) else {
        return serde_json::json!({ "destination": destination_id });
    };
    let mut headers = serde_json::Map::new();
    headers.insert("content-type".into(), "application/json".into());
    for (n, v) in &dest.headers {
        let shown = if dest.secret_header(n.as_str()) {
            crate::config::redact::MASK.to_string()
        } else {
            String::from_utf8_lossy(v.as_bytes()).into_owned()
        };
        headers.insert(n.as_str().to_string(), shown.into());
    }
    if dest.signing.is_some() {
        for h in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
            headers.insert(h.into(), "(set when sent)".into());
        }
    }
    serde_json::json!({
        "destination": destination_id,
        "method": dest.method.as_str(),
        "url": dest.shown_url(),
        "headers": headers,
        "body": body,
    })
}

/// A run's state after [`advance`], in the store's terms.
pub struct RunState {
    pub status: &'static str,
    pub pc: usize,
    pub resume_pc: Option<usize>,
    pub next_at: Option<Millis>,
    pub error: Option<String>,
    pub deliveries: Vec<PlannedDelivery>,
}

impl Stop {
    pub fn into_state(self, pc: usize, now: Millis) -> RunState {
        let mut state = RunState {
            status: "running",
            pc,
            resume_pc: None,
            next_at: None,
            error: None,
            deliveries: Vec::new(),
        };
        match self {
            Stop::Completed => state.status = "completed",
            Stop::Filtered => state.status = "filtered",
            Stop::Failed(e) => {
                state.status = "failed";
                state.error = Some(e);
            }
            Stop::Deliver { deliveries, resume } => {
                state.status = "waiting";
                state.resume_pc = resume;
                state.deliveries = deliveries;
            }
            Stop::Http => state.next_at = Some(now),
            Stop::Wait(until) => state.next_at = Some(until),
        }
        state
    }
}

/// What a run's step made, ready to store: its deliveries (each naming its body) and the
/// bodies not stored before.
#[derive(Default)]
pub struct KeptBodies {
    pub deliveries: Vec<NewDelivery>,
    pub new: Vec<Body>,
}

/// Gives every body a run's steps made an id in the store's bodies, each distinct body once:
/// the run's payload (kept in `ctx`), the outputs of transforms (their records then name the
/// body), and the bodies of the deliveries `planned` (three deliveries of one step that send
/// the transformed payload share its body; a per-destination body that differs is a body of
/// its own). Bodies are told apart by their bytes, so a payload that went through an
/// expression worker and came back is still the one already stored.
pub fn keep_bodies(
    ids: &BodyIds,
    run_id: &str,
    ctx: &mut RunContext,
    records: &mut [StepRecord],
    planned: Vec<PlannedDelivery>,
) -> KeptBodies {
    let stored = match (ctx.payload_body, &ctx.payload) {
        (Some(id), Some(data)) => Some(Body {
            id,
            data: data.clone(),
        }),
        _ => None,
    };
    let mut kept = BodySet {
        ids,
        stored,
        new: Vec::new(),
    };
    if let Some(payload) = &ctx.payload {
        ctx.payload_body = Some(kept.keep(payload).id);
    }
    for record in records.iter_mut() {
        if let Some(payload) = record.payload.take() {
            record.output_body = Some(kept.keep(&payload).id);
        }
    }
    let deliveries = planned
        .into_iter()
        .map(|d| NewDelivery {
            id: d.id,
            run_id: run_id.to_string(),
            destination_id: d.destination_id,
            body: d.body.map(|b| kept.keep(&b)),
        })
        .collect();
    KeptBodies {
        deliveries,
        new: kept.new,
    }
}

/// The bodies of one save, each distinct one once.
struct BodySet<'a> {
    ids: &'a BodyIds,
    /// The run's payload as stored before this save.
    stored: Option<Body>,
    new: Vec<Body>,
}

impl BodySet<'_> {
    fn keep(&mut self, data: &Bytes) -> Body {
        let known = self
            .stored
            .iter()
            .chain(&self.new)
            .find(|b| b.data == *data);
        if let Some(body) = known {
            return body.clone();
        }
        let body = Body {
            id: self.ids.next(),
            data: data.clone(),
        };
        self.new.push(body.clone());
        body
    }
}

/// What one event starts: a run per matching flow, and what those runs asked for.
#[derive(Default)]
pub struct Plan {
    pub runs: Vec<NewRun>,
    pub deliveries: Vec<NewDelivery>,
}

/// The flows an event of `event_type` from `source` starts (`Config::matching_flows`).
pub fn matching_flows(config: &Config, source: &str, event_type: &str) -> Vec<Arc<Flow>> {
    config.matching_flows(source, event_type)
}

/// Plans a new event's runs of flows that run no expression (`Program::is_trivial`), here
/// and now: nothing in them needs an expression worker.
pub fn plan(
    ids: &BodyIds,
    flows: &[Arc<Flow>],
    event: &Arc<EventInfo>,
    raw: &Bytes,
    now: Millis,
) -> Plan {
    plan_with(&mut jq::Programs::refusing(), ids, flows, event, raw, now)
}

/// [`plan`] with `programs` to run expressions: in the server only with
/// [`jq::Programs::refusing`]; tests give real ones.
pub fn plan_with(
    programs: &mut jq::Programs,
    ids: &BodyIds,
    flows: &[Arc<Flow>],
    event: &Arc<EventInfo>,
    raw: &Bytes,
    now: Millis,
) -> Plan {
    let ran = flows
        .iter()
        .map(|flow| {
            let mut ctx = RunContext::new(event.clone(), raw.clone());
            let adv = run::advance(programs, &flow.program, &mut ctx, 0, now, false);
            (adv, ctx)
        })
        .collect();
    plan_rows(ids, flows, ran, now)
}

/// The rows that store a new event's runs: one per flow, from each flow's first
/// [`run::advance`] and the context it left.
pub fn plan_rows(
    ids: &BodyIds,
    flows: &[Arc<Flow>],
    ran: Vec<(Advance, RunContext)>,
    now: Millis,
) -> Plan {
    let mut plan = Plan::default();
    for (flow, (mut adv, mut ctx)) in flows.iter().zip(ran) {
        let run_id = crate::ids::run_id();
        let state = adv.stop.into_state(adv.pc, now);
        let kept = keep_bodies(ids, &run_id, &mut ctx, &mut adv.records, state.deliveries);
        plan.deliveries.extend(kept.deliveries);
        plan.runs.push(NewRun {
            id: run_id,
            flow_id: flow.id.clone(),
            flow_version: flow.version.clone(),
            status: state.status,
            pc: state.pc,
            resume_pc: state.resume_pc,
            next_at: state.next_at,
            error: state.error,
            context: ctx.to_stored(),
            payload_body: ctx.payload_body(),
            bodies: kept.new,
            steps: serde_json::to_string(&adv.records).unwrap_or_else(|_| "[]".into()),
        });
    }
    plan
}

/// The runs of `flows` failed by `error` before any step ran (the sandbox overran).
pub fn plan_failed(flows: &[Arc<Flow>], error: &str) -> Plan {
    Plan {
        runs: flows
            .iter()
            .map(|flow| NewRun {
                id: crate::ids::run_id(),
                flow_id: flow.id.clone(),
                flow_version: flow.version.clone(),
                status: "failed",
                pc: 0,
                resume_pc: None,
                next_at: None,
                error: Some(error.to_string()),
                context: None,
                payload_body: None,
                bodies: Vec::new(),
                steps: "[]".into(),
            })
            .collect(),
        deliveries: Vec::new(),
    }
}

/// What `ferry flow test` and `POST /api/v1/flows/{id}/test` show.
#[derive(Debug, Serialize)]
pub struct TestReport {
    pub flow_id: String,
    /// `completed`, `filtered` or `failed`.
    pub outcome: &'static str,
    pub error: Option<String>,
    /// Each step as it ran: kind, status, input, output, and for steps with I/O the request
    /// they would send.
    pub steps: Vec<serde_json::Value>,
}

/// The report of a dry run of `flow` on an event (`run::advance` with `dry`, in a worker):
/// each step with its input, and for `deliver` steps what each destination would be sent.
pub fn test_report(config: &Config, flow: &Flow, raw: &Bytes, adv: Advance) -> TestReport {
    let mut input: serde_json::Value =
        serde_json::from_slice(raw).unwrap_or(serde_json::Value::Null);
    let (outcome, error) = match adv.stop {
        Stop::Filtered => ("filtered", None),
        Stop::Failed(e) => ("failed", Some(e)),
        _ => ("completed", None),
    };
    let mut steps = Vec::with_capacity(adv.records.len());
    for mut record in adv.records {
        let transformed = record.kind == "transform" && record.status == "succeeded";
        if let Some(payload) = record.payload.take() {
            record.output = serde_json::from_slice(&payload).ok();
        }
        if record.kind == "deliver"
            && let Some(serde_json::Value::Array(planned)) = record.request.take()
        {
            let previews = planned
                .into_iter()
                .map(|mut d| {
                    let to = d
                        .get("destination")
                        .and_then(|t| t.as_str())
                        .unwrap_or_default()
                        .to_string();
                    let body = d.get_mut("body").map(serde_json::Value::take);
                    delivery_preview(config, &to, body.unwrap_or_default())
                })
                .collect();
            record.request = Some(serde_json::Value::Array(previews));
        }
        let output = record.output.clone();
        let mut v = serde_json::to_value(&record).unwrap_or_default();
        if let Some(obj) = v.as_object_mut() {
            obj.remove("started_at");
            obj.insert("input".into(), input.clone());
        }
        if transformed {
            input = output.unwrap_or_default();
        }
        steps.push(v);
    }
    TestReport {
        flow_id: flow.id.clone(),
        outcome,
        error,
        steps,
    }
}

#[cfg(test)]
mod tests;

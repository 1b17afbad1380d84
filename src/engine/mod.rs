//! The engine: decides what an event sets in motion and how a run moves from step to step.
//! Given a flow's program and a run's context, [`advance`] runs the pure steps (filter,
//! transform, branch) and stops at the first step that needs the outside world (deliver,
//! http, delay), saying what that step needs. [`plan`] does this for a new event's matching
//! flows and returns the rows to store with it.
//!
//! **Invariant:** the engine does no I/O. It returns rows and requests; the store commits them
//! and `deliver` performs them.

pub mod expr;
pub mod program;
pub mod sandbox;
pub mod template;

use crate::clock::{Millis, rfc3339};
use crate::config::{Config, Flow};
use crate::store::{NewDelivery, NewRun};
use bytes::Bytes;
use expr::{Scope, Value, parse_value, to_json};
use program::{Delay, HttpStep, Op, Program};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;
use template::Escape;

/// Largest output an expression may produce (a transformed payload, a body), in bytes.
pub const MAX_OUTPUT_SIZE: usize = 1024 * 1024;

/// What every step of a run may read about its event (`$event`).
#[derive(Debug, Clone)]
pub struct EventInfo {
    pub id: String,
    pub event_type: String,
    pub source: String,
    pub received_at: Millis,
    /// The request headers kept with the event, as a JSON object.
    pub headers: serde_json::Value,
}

impl EventInfo {
    fn to_value(&self) -> Value {
        let json = serde_json::json!({
            "id": self.id,
            "type": self.event_type,
            "source": self.source,
            "received_at": rfc3339(self.received_at),
            "headers": self.headers,
        });
        parse_value(json.to_string().as_bytes()).unwrap_or(Value::Null)
    }
}

/// The state a run carries from step to step: the current payload and the outputs of named
/// steps. Parsed lazily, so a flow without expressions never parses its event.
pub struct RunContext {
    event: Arc<EventInfo>,
    raw: Bytes,
    payload: Option<Value>,
    /// Set once a transform has replaced the event's payload.
    transformed: bool,
    steps: serde_json::Map<String, serde_json::Value>,
    scope: Option<Scope>,
}

/// A run's context as stored: only what differs from the event.
#[derive(Serialize, Deserialize, Default)]
struct StoredContext {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payload: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    steps: serde_json::Map<String, serde_json::Value>,
}

impl RunContext {
    pub fn new(event: Arc<EventInfo>, raw: Bytes) -> RunContext {
        RunContext {
            event,
            raw,
            payload: None,
            transformed: false,
            steps: serde_json::Map::new(),
            scope: None,
        }
    }

    /// A context as [`RunContext::to_stored`] saved it, over its event's payload.
    pub fn from_stored(
        event: Arc<EventInfo>,
        raw: Bytes,
        stored: Option<&str>,
    ) -> Result<RunContext, String> {
        let mut ctx = RunContext::new(event, raw);
        if let Some(text) = stored {
            let s: StoredContext =
                serde_json::from_str(text).map_err(|e| format!("stored run context: {e}"))?;
            if let Some(p) = s.payload {
                ctx.payload = Some(parse_value(p.to_string().as_bytes())?);
                ctx.transformed = true;
            }
            ctx.steps = s.steps;
        }
        Ok(ctx)
    }

    /// `None` when the context is just the event (nothing transformed, no step outputs).
    pub fn to_stored(&self) -> Option<String> {
        if !self.transformed && self.steps.is_empty() {
            return None;
        }
        let payload = match (&self.payload, self.transformed) {
            (Some(p), true) => to_json(p).ok(),
            _ => None,
        };
        serde_json::to_string(&StoredContext {
            payload,
            steps: self.steps.clone(),
        })
        .ok()
    }

    pub fn payload(&mut self) -> Result<&Value, String> {
        if self.payload.is_none() {
            self.payload =
                Some(parse_value(&self.raw).map_err(|e| format!("the event payload: {e}"))?);
        }
        Ok(self.payload.get_or_insert(Value::Null))
    }

    /// The payload as JSON bytes to send: `None` while it is the event's own body.
    fn payload_body(&mut self) -> Result<Option<Bytes>, String> {
        if !self.transformed {
            return Ok(None);
        }
        let text = self.payload()?.to_string();
        Ok(Some(Bytes::from(text)))
    }

    fn scope(&mut self) -> Scope {
        if self.scope.is_none() {
            let steps = serde_json::Value::Object(self.steps.clone()).to_string();
            self.scope = Some(Scope {
                event: self.event.to_value(),
                steps: parse_value(steps.as_bytes()).unwrap_or(Value::Null),
            });
        }
        self.scope.clone().unwrap_or_default()
    }

    /// Makes `output` visible to later steps as `$steps.<name>`.
    pub fn set_step_output(&mut self, name: &str, output: serde_json::Value) {
        self.steps.insert(name.to_string(), output);
        self.scope = None;
    }

    /// Runs `expr` on the payload with `$event` and `$steps` in scope.
    fn eval(&mut self, expr: &expr::Expr) -> Result<Option<Value>, String> {
        let scope = self.scope();
        let input = self.payload()?;
        expr.first_in(input, &scope).map_err(|e| e.to_string())
    }

    fn eval_json_bytes(&mut self, expr: &expr::Expr) -> Result<Bytes, String> {
        let value = self.eval(expr)?.unwrap_or(Value::Null);
        let text = value.to_string();
        if text.len() > MAX_OUTPUT_SIZE {
            return Err(format!(
                "the output is {} bytes; the limit is {MAX_OUTPUT_SIZE}",
                text.len()
            ));
        }
        Ok(Bytes::from(text))
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub started_at: Millis,
    pub duration_ms: f64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deliveries: Vec<String>,
    /// The request a step sends, shown by `ferry flow test` (credentials masked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<serde_json::Value>,
}

/// A delivery a `deliver` step asks for.
#[derive(Debug, Clone)]
pub struct PlannedDelivery {
    pub id: String,
    pub destination_id: String,
    /// The body to send; `None` is the event's payload as it was received.
    pub body: Option<Bytes>,
}

/// Why [`advance`] stopped.
#[derive(Debug)]
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

#[derive(Debug)]
pub struct Advance {
    /// The instruction it stopped at.
    pub pc: usize,
    pub stop: Stop,
    pub records: Vec<StepRecord>,
}

/// In a test run (`ferry flow test`), the config whose destinations a `deliver` step shows.
pub struct DryRun<'a> {
    pub config: &'a Config,
}

/// How errors name a step: `step /steps/2 (http `lookup`)`.
pub fn step_label(instr: &program::Instr) -> String {
    match &instr.name {
        Some(name) => format!("step {} ({} `{name}`)", instr.path, instr.op.kind()),
        None => format!("step {} ({})", instr.path, instr.op.kind()),
    }
}

/// Runs the program from `pc` until a step needs the outside world, the run ends, or a step
/// fails. With `dry`, steps with I/O are shown (their requests) instead of stopping the run,
/// and an `http` step's output is null.
pub fn advance(
    program: &Program,
    ctx: &mut RunContext,
    start: usize,
    now: Millis,
    dry: Option<&DryRun<'_>>,
) -> Advance {
    let mut records = Vec::new();
    let mut pc = start;
    loop {
        let Some(at) = program.resolve(pc) else {
            return Advance {
                pc: program.instrs.len(),
                stop: Stop::Completed,
                records,
            };
        };
        pc = at;
        let instr = &program.instrs[pc];
        let started = Instant::now();
        let mut record = StepRecord {
            index: pc,
            path: instr.path.clone(),
            name: instr.name.clone(),
            kind: instr.op.kind().to_string(),
            status: "succeeded".to_string(),
            output: None,
            error: None,
            started_at: now,
            duration_ms: 0.0,
            deliveries: Vec::new(),
            request: None,
        };
        let fail = |mut record: StepRecord, mut records: Vec<StepRecord>, message: String| {
            let error = format!("{}: {message}", step_label(instr));
            record.status = "failed".to_string();
            record.error = Some(message);
            record.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
            records.push(record);
            Advance {
                pc,
                stop: Stop::Failed(error),
                records,
            }
        };
        let mut next = pc + 1;
        match &instr.op {
            Op::Jump(to) => next = *to,
            Op::Filter(e) => match ctx.eval(e) {
                Ok(v) => {
                    let pass =
                        matches!(v, Some(v) if !matches!(v, Value::Null | Value::Bool(false)));
                    record.output = Some(serde_json::Value::Bool(pass));
                    if !pass {
                        record.status = "filtered".to_string();
                        record.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
                        records.push(record);
                        return Advance {
                            pc,
                            stop: Stop::Filtered,
                            records,
                        };
                    }
                    record.status = "passed".to_string();
                }
                Err(m) => return fail(record, records, m),
            },
            Op::Transform(e) => match ctx.eval_json_bytes(e).and_then(|b| {
                let v = parse_value(&b)?;
                Ok((b, v))
            }) {
                Ok((bytes, value)) => {
                    record.output = serde_json::from_slice(&bytes).ok();
                    ctx.payload = Some(value);
                    ctx.transformed = true;
                }
                Err(m) => return fail(record, records, m),
            },
            Op::Branch {
                cases,
                otherwise,
                has_else,
            } => {
                let mut chosen = None;
                for (i, (cond, target)) in cases.iter().enumerate() {
                    match ctx.eval(cond) {
                        Ok(Some(v)) if !matches!(v, Value::Null | Value::Bool(false)) => {
                            chosen = Some((serde_json::json!(i), *target));
                            break;
                        }
                        Ok(_) => {}
                        Err(m) => return fail(record, records, format!("case {}: {m}", i + 1)),
                    }
                }
                let (case, target) = chosen.unwrap_or(if *has_else {
                    (serde_json::json!("else"), *otherwise)
                } else {
                    (serde_json::Value::Null, *otherwise)
                });
                record.output = Some(serde_json::json!({ "case": case }));
                next = target;
            }
            Op::Http(step) => match dry {
                None => {
                    return Advance {
                        pc,
                        stop: Stop::Http,
                        records,
                    };
                }
                Some(_) => match render_http(step, ctx, format!("(run id)-{pc}")) {
                    Ok(request) => {
                        record.status = "not_sent".to_string();
                        record.request = Some(request.preview());
                        if let Some(name) = &instr.name {
                            ctx.set_step_output(name, serde_json::Value::Null);
                        }
                    }
                    Err(m) => return fail(record, records, m),
                },
            },
            Op::Delay(delay) => {
                let until = match delay {
                    Delay::For(d) => now + d.as_millis() as i64,
                    Delay::Until(e) => match ctx.eval(e).and_then(time_of) {
                        Ok(t) => t,
                        Err(m) => return fail(record, records, m),
                    },
                };
                record.output = Some(serde_json::json!({ "until": rfc3339(until) }));
                if dry.is_some() {
                    record.status = "not_waited".to_string();
                } else if until > now {
                    return Advance {
                        pc,
                        stop: Stop::Wait(until),
                        records,
                    };
                } else {
                    record.status = "waited".to_string();
                }
            }
            Op::Deliver(targets) => {
                let mut deliveries = Vec::with_capacity(targets.len());
                for t in targets {
                    let body = match &t.body {
                        Some(e) => ctx.eval_json_bytes(e).map(Some),
                        None => ctx.payload_body(),
                    };
                    match body {
                        Ok(body) => deliveries.push(PlannedDelivery {
                            id: crate::ids::delivery_id(),
                            destination_id: t.destination_id.clone(),
                            body,
                        }),
                        Err(m) => {
                            return fail(
                                record,
                                records,
                                format!("body for `{}`: {m}", t.destination_id),
                            );
                        }
                    }
                }
                match dry {
                    None => {
                        record.status = "sent".to_string();
                        record.deliveries = deliveries.iter().map(|d| d.id.clone()).collect();
                        record.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
                        records.push(record);
                        return Advance {
                            pc,
                            stop: Stop::Deliver {
                                deliveries,
                                resume: program.next_after(pc),
                            },
                            records,
                        };
                    }
                    Some(dry) => {
                        record.status = "not_sent".to_string();
                        let mut previews = Vec::new();
                        for d in deliveries {
                            let body = match d.body {
                                Some(b) => b,
                                None => ctx.raw.clone(),
                            };
                            previews.push(delivery_preview(dry.config, &d.destination_id, &body));
                        }
                        record.request = Some(serde_json::Value::Array(previews));
                    }
                }
            }
        }
        record.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        records.push(record);
        pc = next;
    }
}

/// A time from an expression: an RFC 3339 string or unix seconds.
fn time_of(v: Option<Value>) -> Result<Millis, String> {
    match v {
        Some(Value::TStr(s)) | Some(Value::BStr(s)) => {
            let text = String::from_utf8_lossy(&s).into_owned();
            crate::clock::parse_rfc3339(&text)
                .ok_or_else(|| format!("`{text}` is not an RFC 3339 time"))
        }
        Some(Value::Num(n)) => {
            let secs: f64 = n
                .to_string()
                .parse()
                .map_err(|_| "not a number".to_string())?;
            Ok((secs * 1000.0) as Millis)
        }
        Some(other) => Err(format!(
            "`{other}` is not a time; give an RFC 3339 string or unix seconds"
        )),
        None => Err("the expression gave no time".to_string()),
    }
}

/// A request an `http` step sends.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: reqwest::Method,
    pub url: url::Url,
    pub headers: Vec<(reqwest::header::HeaderName, reqwest::header::HeaderValue)>,
    pub body: Option<Bytes>,
    /// Sent as `Idempotency-Key` unless the step sets that header itself.
    pub idempotency_key: String,
    pub auth: Option<String>,
}

impl HttpRequest {
    /// The request as `ferry flow test` shows it; credentials are masked.
    pub fn preview(&self) -> serde_json::Value {
        let mut headers = serde_json::Map::new();
        for (n, v) in &self.headers {
            headers.insert(
                n.as_str().to_string(),
                serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            );
        }
        headers.insert(
            "idempotency-key".into(),
            self.idempotency_key.clone().into(),
        );
        if let Some(auth) = &self.auth {
            headers.insert("authorization".into(), format!("({auth})").into());
        }
        serde_json::json!({
            "method": self.method.as_str(),
            "url": self.url.as_str(),
            "headers": headers,
            "body": self.body.as_ref().map(|b| serde_json::from_slice::<serde_json::Value>(b).unwrap_or(serde_json::Value::Null)),
        })
    }
}

/// Fills in an `http` step's URL, headers and body from the run's context.
pub fn render_http(
    step: &HttpStep,
    ctx: &mut RunContext,
    idempotency_key: String,
) -> Result<HttpRequest, String> {
    let scope = ctx.scope();
    let input = ctx.payload()?.clone();
    let url_text = step
        .url
        .render(&input, &scope, Escape::UrlComponent)
        .map_err(|e| format!("url: {e}"))?;
    let url =
        url::Url::parse(&url_text).map_err(|e| format!("url `{url_text}` is not a URL ({e})"))?;
    let mut headers = Vec::with_capacity(step.headers.len());
    for (name, template) in &step.headers {
        let text = template
            .render(&input, &scope, Escape::None)
            .map_err(|e| format!("header `{name}`: {e}"))?;
        let value = reqwest::header::HeaderValue::from_str(&text)
            .map_err(|_| format!("header `{name}`: `{text}` is not a valid header value"))?;
        headers.push((name.clone(), value));
    }
    let body = match &step.body {
        Some(e) => Some(ctx.eval_json_bytes(e).map_err(|m| format!("body: {m}"))?),
        None => None,
    };
    let auth = step.auth.as_ref().map(|a| match a {
        program::Auth::Bearer(_) => "bearer token".to_string(),
        program::Auth::Basic { username, .. } => format!("basic auth as {username}"),
        program::Auth::ApiKey { header, .. } => format!("api key in {header}"),
        program::Auth::OAuth2(o) => format!("oauth2 token from {}", o.token_url),
    });
    Ok(HttpRequest {
        method: step.method.clone(),
        url,
        headers,
        body,
        idempotency_key,
        auth,
    })
}

/// What a delivery to `destination_id` would send, for `ferry flow test`.
fn delivery_preview(config: &Config, destination_id: &str, body: &[u8]) -> serde_json::Value {
    let Some(dest) = config.destinations.get(destination_id) else {
        return serde_json::json!({ "destination": destination_id });
    };
    let mut headers = serde_json::Map::new();
    headers.insert("content-type".into(), "application/json".into());
    for (n, v) in &dest.headers {
        headers.insert(
            n.as_str().to_string(),
            String::from_utf8_lossy(v.as_bytes()).into_owned().into(),
        );
    }
    if dest.signing.is_some() {
        for h in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
            headers.insert(h.into(), "(set when sent)".into());
        }
    }
    serde_json::json!({
        "destination": destination_id,
        "method": dest.method.as_str(),
        "url": dest.url.as_str(),
        "headers": headers,
        "body": serde_json::from_slice::<serde_json::Value>(body).unwrap_or(serde_json::Value::Null),
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

/// Turns planned deliveries into rows for the store.
pub fn delivery_rows(run_id: &str, planned: Vec<PlannedDelivery>) -> Vec<NewDelivery> {
    planned
        .into_iter()
        .map(|d| NewDelivery {
            id: d.id,
            run_id: run_id.to_string(),
            destination_id: d.destination_id,
            body: d.body,
        })
        .collect()
}

/// What one event starts: a run per matching flow, and what those runs asked for.
#[derive(Default)]
pub struct Plan {
    pub runs: Vec<NewRun>,
    pub deliveries: Vec<NewDelivery>,
}

/// The flows an event of `event_type` from `source` starts.
pub fn matching_flows(config: &Config, source: &str, event_type: &str) -> Vec<Arc<Flow>> {
    config
        .flows
        .iter()
        .filter(|f| {
            f.source == source && (f.event_types.is_empty() || f.event_types.contains(event_type))
        })
        .cloned()
        .collect()
}

/// Starts a run of each flow on a new event: runs the pure steps and returns the runs and
/// deliveries to commit with the event.
pub fn plan(flows: &[Arc<Flow>], event: &Arc<EventInfo>, raw: &Bytes, now: Millis) -> Plan {
    let mut plan = Plan::default();
    for flow in flows {
        let run_id = crate::ids::run_id();
        let mut ctx = RunContext::new(event.clone(), raw.clone());
        let adv = advance(&flow.program, &mut ctx, 0, now, None);
        let state = adv.stop.into_state(adv.pc, now);
        plan.deliveries
            .extend(delivery_rows(&run_id, state.deliveries));
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

/// Runs `flow` on an event without side effects: pure steps for real; `http`, `delay` and
/// `deliver` steps show what they would do (an `http` step's output is null).
pub fn test_flow(
    config: &Config,
    flow: &Flow,
    event: Arc<EventInfo>,
    raw: Bytes,
    now: Millis,
) -> TestReport {
    let mut input: serde_json::Value =
        serde_json::from_slice(&raw).unwrap_or(serde_json::Value::Null);
    let mut ctx = RunContext::new(event, raw);
    let adv = advance(&flow.program, &mut ctx, 0, now, Some(&DryRun { config }));
    let (outcome, error) = match adv.stop {
        Stop::Filtered => ("filtered", None),
        Stop::Failed(e) => ("failed", Some(e)),
        _ => ("completed", None),
    };
    let mut steps = Vec::with_capacity(adv.records.len());
    for record in adv.records {
        let transformed = record.kind == "transform" && record.status == "succeeded";
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

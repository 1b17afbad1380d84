//! Running a flow's pure steps: [`advance`] from a position until a step needs the outside
//! world, and [`render_http`] for the request of an `http` step. Both evaluate expressions, so
//! they run in an expression worker; the server runs [`advance`] itself only for programs
//! without expressions, with [`Programs::refusing`] to make sure.

use super::jq::{Programs, Scope, Value, parse_value, truthy};
use super::template::{Escape, render as render_template};
use super::{Advance, MAX_OUTPUT_SIZE, PlannedDelivery, RunContext, StepRecord, Stop, step_label};
use crate::clock::{Millis, rfc3339};
use crate::config::expr::Expr;
use crate::config::program::{Delay, HttpStep, Op, Program, Target};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// A run's context while its steps run: the data, and the jq values built from it on first
/// use (the payload, `$event`, `$steps`).
struct Running<'c, 'p> {
    ctx: &'c mut RunContext,
    programs: &'p mut Programs,
    payload: Option<Value>,
    scope: Option<Scope>,
}

impl Running<'_, '_> {
    fn payload(&mut self) -> Result<&Value, String> {
        if self.payload.is_none() {
            let parsed = parse_value(self.ctx.payload_json())
                .map_err(|e| format!("the event payload: {e}"))?;
            self.payload = Some(parsed);
        }
        Ok(self.payload.get_or_insert(Value::Null))
    }

    fn scope(&mut self) -> Result<Scope, String> {
        if self.scope.is_none() {
            let event = self.ctx.event().to_json().to_string();
            let steps = serde_json::Value::Object(self.ctx.steps().clone()).to_string();
            self.scope = Some(Scope {
                event: parse_value(event.as_bytes())?,
                steps: parse_value(steps.as_bytes())?,
            });
        }
        Ok(self.scope.clone().unwrap_or_default())
    }

    fn eval(&mut self, expr: &Expr) -> Result<Option<Value>, String> {
        let scope = self.scope()?;
        self.payload()?;
        let input = self.payload.as_ref().unwrap_or(&Value::Null);
        self.programs.first(expr, input, &scope)
    }

    /// The first output as JSON text, checked: under [`MAX_OUTPUT_SIZE`], and JSON the server
    /// can read back (no NaN, not nested too deep).
    fn eval_json(&mut self, expr: &Expr) -> Result<Bytes, String> {
        let value = self.eval(expr)?.unwrap_or(Value::Null);
        json_text(&value)
    }

    /// Replaces the payload with the expression's output; answers it as JSON text.
    fn transform(&mut self, expr: &Expr) -> Result<Bytes, String> {
        let text = self.eval_json(expr)?;
        let value = parse_value(&text)?;
        self.payload = Some(value);
        self.ctx.set_payload(text.clone());
        Ok(text)
    }
}

/// `value` as JSON text, refused when it is over [`MAX_OUTPUT_SIZE`] or not JSON that a
/// reader with a depth limit accepts.
fn json_text(value: &Value) -> Result<Bytes, String> {
    let text = value.to_string();
    if text.len() > MAX_OUTPUT_SIZE {
        return Err(format!(
            "the output is {} bytes; the limit is {MAX_OUTPUT_SIZE}",
            text.len()
        ));
    }
    serde_json::from_str::<serde::de::IgnoredAny>(&text)
        .map_err(|e| format!("the output is not JSON ({e})"))?;
    Ok(Bytes::from(text))
}

/// How a step ended, as [`advance`] goes on from it.
enum StepEnd {
    /// The step ran; the run goes on at this instruction.
    Next(usize),
    /// The step ran and the run stops after it (filtered, or waiting on deliveries).
    After(Stop),
    /// The step needs the outside world before it runs (an `http` call, a `delay` not over):
    /// the run stops at it, and it has no record yet.
    Before(Stop),
}

/// Runs the program from `start` until a step needs the outside world, the run ends, or a
/// step fails. With `dry` (`ferry flow test`), steps with I/O show what they would do instead
/// of stopping the run: an `http` step its request (its output is null), a `deliver` step
/// `[{destination, body}]` for the server to fill in.
pub fn advance(
    programs: &mut Programs,
    program: &Program,
    ctx: &mut RunContext,
    start: usize,
    now: Millis,
    dry: bool,
) -> Advance {
    let mut run = Running {
        ctx,
        programs,
        payload: None,
        scope: None,
    };
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
        let mut record = StepRecord::new(instr, pc, now);
        let end = run.step(program, pc, &mut record, now, dry);
        record.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        let stop = match end {
            Ok(StepEnd::Next(next)) => {
                records.push(record);
                pc = next;
                continue;
            }
            Ok(StepEnd::After(stop)) => {
                records.push(record);
                stop
            }
            Ok(StepEnd::Before(stop)) => stop,
            Err(message) => {
                let error = format!("{}: {message}", step_label(instr));
                record.status = "failed".to_string();
                record.error = Some(message);
                records.push(record);
                Stop::Failed(error)
            }
        };
        return Advance { pc, stop, records };
    }
}

impl Running<'_, '_> {
    /// Runs the instruction at `pc`, writing what it did into `record`.
    fn step(
        &mut self,
        program: &Program,
        pc: usize,
        record: &mut StepRecord,
        now: Millis,
        dry: bool,
    ) -> Result<StepEnd, String> {
        let instr = &program.instrs[pc];
        match &instr.op {
            Op::Jump(to) => Ok(StepEnd::Next(*to)),
            Op::Filter(e) => {
                let pass = truthy(self.eval(e)?.as_ref());
                record.output = Some(serde_json::Value::Bool(pass));
                if pass {
                    record.status = "passed".to_string();
                    Ok(StepEnd::Next(pc + 1))
                } else {
                    record.status = "filtered".to_string();
                    Ok(StepEnd::After(Stop::Filtered))
                }
            }
            Op::Transform(e) => {
                record.payload = Some(self.transform(e)?);
                Ok(StepEnd::Next(pc + 1))
            }
            Op::Branch {
                cases,
                otherwise,
                has_else,
            } => self.branch(cases, *otherwise, *has_else, record),
            Op::Http(_) if !dry => Ok(StepEnd::Before(Stop::Http)),
            Op::Http(step) => {
                let rendered = render(self, step)?;
                record.status = "not_sent".to_string();
                record.request = Some(rendered.preview(step, format!("(run id)-{pc}")));
                if let Some(name) = &instr.name {
                    self.ctx.set_step_output(name, serde_json::Value::Null);
                    self.scope = None;
                }
                Ok(StepEnd::Next(pc + 1))
            }
            Op::Delay(delay) => {
                let until = match delay {
                    Delay::For(d) => now.saturating_add(d.as_millis().min(i64::MAX as u128) as i64),
                    Delay::Until(e) => self.eval(e).and_then(time_of)?,
                };
                record.output = Some(serde_json::json!({ "until": rfc3339(until) }));
                if dry {
                    record.status = "not_waited".to_string();
                } else if until > now {
                    return Ok(StepEnd::Before(Stop::Wait(until)));
                } else {
                    record.status = "waited".to_string();
                }
                Ok(StepEnd::Next(pc + 1))
            }
            Op::Deliver(targets) => {
                let deliveries = self.deliveries(targets)?;
                if dry {
                    record.status = "not_sent".to_string();
                    record.request = Some(self.preview(deliveries));
                    return Ok(StepEnd::Next(pc + 1));
                }
                record.status = "sent".to_string();
                record.deliveries = deliveries.iter().map(|d| d.id.clone()).collect();
                Ok(StepEnd::After(Stop::Deliver {
                    deliveries,
                    resume: program.next_after(pc),
                }))
            }
        }
    }

    /// The first case whose condition holds, else the `else` case (or none): the run goes on
    /// at its steps.
    fn branch(
        &mut self,
        cases: &[(Expr, usize)],
        otherwise: usize,
        has_else: bool,
        record: &mut StepRecord,
    ) -> Result<StepEnd, String> {
        let mut chosen = None;
        for (i, (cond, target)) in cases.iter().enumerate() {
            let holds = self
                .eval(cond)
                .map_err(|m| format!("case {}: {m}", i + 1))?;
            if truthy(holds.as_ref()) {
                chosen = Some((serde_json::json!(i), *target));
                break;
            }
        }
        let (case, target) = chosen.unwrap_or(if has_else {
            (serde_json::json!("else"), otherwise)
        } else {
            (serde_json::Value::Null, otherwise)
        });
        record.output = Some(serde_json::json!({ "case": case }));
        Ok(StepEnd::Next(target))
    }

    /// A `deliver` step's deliveries, each with its body: its own expression's output, or the
    /// payload (`None` while it is the event's).
    fn deliveries(&mut self, targets: &[Target]) -> Result<Vec<PlannedDelivery>, String> {
        let mut deliveries = Vec::with_capacity(targets.len());
        for t in targets {
            let body = match &t.body {
                Some(e) => Some(
                    self.eval_json(e)
                        .map_err(|m| format!("body for `{}`: {m}", t.destination_id))?,
                ),
                None => self.ctx.transformed_payload().cloned(),
            };
            deliveries.push(PlannedDelivery {
                id: crate::ids::delivery_id(),
                destination_id: t.destination_id.clone(),
                body,
            });
        }
        Ok(deliveries)
    }

    /// What a dry run's `deliver` step shows: each destination with the body it would get.
    fn preview(&self, deliveries: Vec<PlannedDelivery>) -> serde_json::Value {
        let planned = deliveries
            .into_iter()
            .map(|d| {
                let body = d.body.as_ref().unwrap_or(self.ctx.raw());
                serde_json::json!({
                    "destination": d.destination_id,
                    "body": serde_json::from_slice::<serde_json::Value>(body)
                        .unwrap_or(serde_json::Value::Null),
                })
            })
            .collect();
        serde_json::Value::Array(planned)
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
            let millis = secs * 1000.0;
            if !millis.is_finite() || millis.abs() >= i64::MAX as f64 {
                return Err(format!("`{n}` is out of range for a time"));
            }
            Ok(millis as Millis)
        }
        Some(other) => Err(format!(
            "`{other}` is not a time; give an RFC 3339 string or unix seconds"
        )),
        None => Err("the expression gave no time".to_string()),
    }
}

/// An `http` step's URL, header values and body as a worker fills them in; the server checks
/// them into an `HttpRequest` (`HttpRequest::from_rendered`).
#[derive(Debug, Serialize, Deserialize)]
pub struct Rendered {
    pub url: String,
    /// One value for each of the step's headers, in order.
    pub headers: Vec<String>,
    #[serde(with = "super::json_bytes")]
    pub body: Option<Bytes>,
}

impl Rendered {
    /// The request as `ferry flow test` shows it; credentials are named, not shown, and
    /// secret header values and URL parts are masked.
    fn preview(&self, step: &HttpStep, idempotency_key: String) -> serde_json::Value {
        let mut headers = serde_json::Map::new();
        for ((name, _), value) in step.headers.iter().zip(&self.headers) {
            let shown = if step.secret_header(name.as_str()) {
                crate::config::redact::MASK
            } else {
                value
            };
            headers.insert(name.as_str().to_string(), shown.into());
        }
        headers.insert("idempotency-key".into(), idempotency_key.into());
        if let Some(label) = &step.auth_label {
            headers.insert("authorization".into(), format!("({label})").into());
        }
        serde_json::json!({
            "method": step.method.as_str(),
            "url": crate::config::redact::url::shown(&self.url, &step.secret_query_params),
            "headers": headers,
            "body": self.body.as_ref().map(|b| serde_json::from_slice::<serde_json::Value>(b).unwrap_or(serde_json::Value::Null)),
        })
    }
}

/// Fills in an `http` step's URL, headers and body from the run's context.
pub fn render_http(
    programs: &mut Programs,
    step: &HttpStep,
    ctx: &mut RunContext,
) -> Result<Rendered, String> {
    let mut run = Running {
        ctx,
        programs,
        payload: None,
        scope: None,
    };
    render(&mut run, step)
}

fn render(run: &mut Running<'_, '_>, step: &HttpStep) -> Result<Rendered, String> {
    let scope = run.scope()?;
    let input = run.payload()?.clone();
    let url = render_template(
        &step.url,
        run.programs,
        &input,
        &scope,
        Escape::UrlComponent,
    )
    .map_err(|e| format!("url: {e}"))?;
    if let Err(e) = url::Url::parse(&url) {
        let shown = crate::config::redact::url::shown(&url, &step.secret_query_params);
        return Err(format!("url `{shown}` is not a URL ({e})"));
    }
    let mut headers = Vec::with_capacity(step.headers.len());
    for (name, template) in &step.headers {
        let text = render_template(template, run.programs, &input, &scope, Escape::None)
            .map_err(|e| format!("header `{name}`: {e}"))?;
        if reqwest::header::HeaderValue::from_str(&text).is_err() {
            let shown = if step.secret_header(name.as_str()) {
                crate::config::redact::MASK
            } else {
                &text
            };
            return Err(format!(
                "header `{name}`: `{shown}` is not a valid header value"
            ));
        }
        headers.push(text);
    }
    let body = match &step.body {
        Some(e) => Some(run.eval_json(e).map_err(|m| format!("body: {m}"))?),
        None => None,
    };
    Ok(Rendered { url, headers, body })
}

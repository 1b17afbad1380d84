//! Where expressions run: a pool of expression worker processes (`ferry expr-worker`), apart
//! from the server. A hostile expression can overflow a worker's stack, exhaust its memory
//! limit or spin until its time limit; the worker is then killed (or dies) and replaced, and
//! the one request that did it gets a [`SandboxError`], while the server goes on.
//!
//! Each worker starts with a cleared environment and limits its own address space and CPU
//! time (`worker.rs`); the server holds its wall-clock time limit per request and kills it at
//! the limit. Requests wait for a free worker in a bounded queue. The server sends a flow's
//! program with each request as JSON; a worker compiles each program and expression once.
//!
//! **Invariant:** nothing in the server process compiles or runs jq; everything that does goes
//! through [`Sandbox`].

pub mod protocol;
pub mod worker;

use crate::clock::Millis;
use crate::config::expr::Expr;
use crate::config::program::Op;
use crate::config::{Config, ConfigError, ConfigErrors, ExprSite, Flow};
use crate::engine::{Advance, EventInfo, HttpRequest, Plan, RunContext, Stop, TestReport};
use bytes::Bytes;
use protocol::{Context, ProgramRef, Ran, Request, Response};
use serde_json::value::RawValue;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SandboxError {
    #[error("the expressions ran longer than their limit of {0:?} and were stopped")]
    TimedOut(Duration),
    #[error("the expression worker ended while running them: {0}")]
    Crashed(String),
    #[error("the expression workers are busy: {0} requests are already waiting")]
    Busy(usize),
    #[error("the expression worker refused the request: {0}")]
    Refused(String),
    #[error("cannot start an expression worker: {0}")]
    Unavailable(String),
}

impl SandboxError {
    /// The workers could not take the request (busy, or none could start): the work is to be
    /// tried again later, not failed.
    pub fn is_overload(&self) -> bool {
        matches!(self, SandboxError::Busy(_) | SandboxError::Unavailable(_))
    }
}

pub use crate::config::ExpressionLimits as Limits;

/// The program a worker is started from, and its arguments before the limits.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
}

impl WorkerCommand {
    /// This very binary, as `ferry expr-worker`.
    pub fn current_exe() -> Result<WorkerCommand, String> {
        let program = std::env::current_exe().map_err(|e| {
            format!("cannot find Ferry's own binary to start expression workers: {e}")
        })?;
        Ok(WorkerCommand {
            program,
            args: vec!["expr-worker".into()],
        })
    }
}

/// A cheap handle to the pool.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    command: WorkerCommand,
    limits: Limits,
    // A std mutex: it is held only to push or pop a worker, never across an await.
    idle: Mutex<Vec<Worker>>,
    slots: tokio::sync::Semaphore,
    waiting: AtomicUsize,
    replaced: AtomicUsize,
    /// The code of expressions a worker compiled: a change through the API has only its new
    /// expressions compiled, not every one of the config again.
    compiled: Mutex<std::collections::HashSet<String>>,
}

/// Most expressions remembered as compiled; past it the memory starts over.
const COMPILED_MEMORY: usize = 100_000;

/// Most expressions compiled in one request, and most bytes of their code: one program holds
/// them all, and must stay within a worker's memory.
const CHECK_CHUNK: usize = 500;
const CHECK_CHUNK_BYTES: usize = 256 * 1024;

/// `exprs` cut into requests of at most [`CHECK_CHUNK`] expressions and [`CHECK_CHUNK_BYTES`]
/// bytes of code (one larger expression alone in its request).
fn check_chunks(exprs: &[Expr]) -> Vec<&[Expr]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (at, expr) in exprs.iter().enumerate() {
        let size = expr.code().len();
        if at > start && (at - start == CHECK_CHUNK || bytes + size > CHECK_CHUNK_BYTES) {
            chunks.push(&exprs[start..at]);
            (start, bytes) = (at, 0);
        }
        bytes += size;
    }
    if start < exprs.len() {
        chunks.push(&exprs[start..]);
    }
    chunks
}

struct Worker {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::process::ChildStdout,
}

/// Time for compiling a config's expressions, which may be thousands.
const CHECK_TIME: Duration = Duration::from_secs(120);

/// Most payload bytes in one request of [`Sandbox::truthy_each`].
const BATCH_BYTES: usize = 8 * 1024 * 1024;

/// Longest wait for a free worker before a request is refused as busy.
const QUEUE_WAIT: Duration = Duration::from_secs(30);

impl Sandbox {
    /// A pool that starts its workers from `command` as they are first needed.
    pub fn new(command: WorkerCommand, limits: Limits) -> Sandbox {
        let workers = limits.workers.max(1);
        Sandbox {
            inner: Arc::new(Inner {
                command,
                slots: tokio::sync::Semaphore::new(workers),
                limits,
                idle: Mutex::new(Vec::new()),
                waiting: AtomicUsize::new(0),
                replaced: AtomicUsize::new(0),
                compiled: Mutex::new(Default::default()),
            }),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Workers killed or lost and replaced since the start.
    pub fn replaced(&self) -> usize {
        self.inner.replaced.load(Ordering::Relaxed)
    }

    /// Starts one worker now, so that a command fails at once when workers cannot start.
    pub async fn start(&self) -> Result<(), SandboxError> {
        let worker = self.inner.spawn()?;
        self.inner.put_back(worker);
        Ok(())
    }

    /// Compiles `expr` in a worker: `Ok(Err(why))` when it does not compile.
    pub async fn check(&self, expr: &Expr) -> Result<Result<(), String>, SandboxError> {
        match self.call(&Request::Check(vec![expr.clone()])).await? {
            Response::Checked(mut r) if r.len() == 1 => Ok(r.remove(0)),
            other => Err(unexpected(other)),
        }
    }

    /// Compiles the expressions `config` still has to have compiled (taking them out of it: a
    /// checked config keeps no copy); errors name their place.
    pub async fn check_config(&self, config: &mut Config) -> Result<(), ConfigErrors> {
        self.check_sites(&config.take_expressions()).await
    }

    /// Compiles the expressions at `sites` in a worker (identical ones once, and none that a
    /// worker compiled before); errors name their place.
    pub async fn check_sites(&self, sites: &[ExprSite]) -> Result<(), ConfigErrors> {
        let mut unique: Vec<Expr> = {
            let compiled = self
                .inner
                .compiled
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            sites
                .iter()
                .filter(|s| !compiled.contains(s.expr.code()))
                .map(|s| s.expr.clone())
                .collect()
        };
        if unique.is_empty() {
            return Ok(());
        }
        unique.sort_by(|a, b| a.code().cmp(b.code()));
        unique.dedup();
        // In requests of a bounded size, so that thousands of expressions stay within a
        // worker's limits on one request's time and memory; as many at once as there are
        // workers (and the queue takes).
        let chunks = check_chunks(&unique);
        let mut answers: Vec<Option<Result<Response, SandboxError>>> =
            chunks.iter().map(|_| None).collect();
        let at_once = self
            .inner
            .limits
            .workers
            .min(self.inner.limits.queue)
            .max(1);
        let mut tasks = tokio::task::JoinSet::new();
        let mut next = 0;
        loop {
            while next < chunks.len() && tasks.len() < at_once {
                let (sandbox, chunk, at) = (self.clone(), chunks[next].to_vec(), next);
                tasks.spawn(async move {
                    let answer = sandbox
                        .call_within(&Request::Check(chunk), CHECK_TIME)
                        .await;
                    (at, answer)
                });
                next += 1;
            }
            match tasks.join_next().await {
                Some(Ok((at, answer))) => answers[at] = Some(answer),
                Some(Err(e)) => {
                    return Err(ConfigErrors(
                        vec![ConfigError {
                            place: "expressions".into(),
                            message: format!("checking the expressions did not finish: {e}"),
                        }],
                        Vec::new(),
                    ));
                }
                None => break,
            }
        }
        let mut checked = Vec::with_capacity(unique.len());
        for (chunk, answer) in chunks.iter().zip(answers) {
            let results = match answer {
                Some(Ok(Response::Checked(results))) if results.len() == chunk.len() => results,
                Some(Ok(_)) => {
                    return Err(ConfigErrors(
                        vec![ConfigError {
                            place: "expressions".into(),
                            message: "the expression worker gave an answer of the wrong kind"
                                .into(),
                        }],
                        Vec::new(),
                    ));
                }
                // One expression took the worker down (or the pool was busy): this request's
                // expressions one at a time, to name it.
                // Busy workers, or none that could start: the same for each alone.
                Some(Err(e)) if e.is_overload() => {
                    return Err(ConfigErrors(
                        vec![ConfigError {
                            place: "expressions".into(),
                            message: format!(
                                "the expressions could not be checked now ({e}); try again"
                            ),
                        }],
                        Vec::new(),
                    ));
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, expressions = chunk.len(), "checking expressions together failed; checking them one at a time");
                    self.check_each_alone(chunk).await
                }
                None => chunk
                    .iter()
                    .map(|_| Err("the expression check did not run".to_string()))
                    .collect(),
            };
            self.remember_compiled(chunk.iter().zip(&results));
            checked.extend(results);
        }
        crate::config::expression_errors(sites, |expr| {
            match unique.binary_search_by(|e| e.code().cmp(expr.code())) {
                Ok(i) => checked.get(i).cloned().unwrap_or(Ok(())),
                Err(_) => Ok(()),
            }
        })
    }

    /// Remembers the expressions that compiled, by their code.
    fn remember_compiled<'e>(
        &self,
        results: impl Iterator<Item = (&'e Expr, &'e Result<(), String>)>,
    ) {
        let mut compiled = self
            .inner
            .compiled
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (expr, result) in results {
            if compiled.len() >= COMPILED_MEMORY {
                compiled.clear();
            }
            if result.is_ok() {
                compiled.insert(expr.code().to_string());
            }
        }
    }

    /// Each of `exprs` compiled in a request of its own: what a request that failed as a
    /// whole says of each.
    async fn check_each_alone(&self, exprs: &[Expr]) -> Vec<Result<(), String>> {
        let mut results = Vec::with_capacity(exprs.len());
        for expr in exprs {
            let request = Request::Check(vec![expr.clone()]);
            results.push(match self.call_within(&request, CHECK_TIME).await {
                Ok(Response::Checked(r)) => r
                    .into_iter()
                    .next()
                    .unwrap_or_else(|| Err("the expression worker gave no answer".into())),
                Ok(_) => Err("the expression worker gave an answer of the wrong kind".into()),
                Err(e) => Err(e.to_string()),
            });
        }
        results
    }

    /// The runs a new event starts in `flows`: their first steps run in one request.
    pub async fn plan(
        &self,
        ids: &crate::store::BodyIds,
        flows: &[Arc<Flow>],
        event: &Arc<EventInfo>,
        raw: &Bytes,
        now: Millis,
    ) -> Result<Plan, SandboxError> {
        let ctx = RunContext::new(event.clone(), raw.clone());
        let context = wire_context(&ctx)?;
        let programs = flows
            .iter()
            .map(|f| program_ref(f))
            .collect::<Result<Vec<_>, _>>()?;
        let request = Request::Plan {
            programs,
            context,
            now,
        };
        match self.call(&request).await? {
            Response::Planned(ran) if ran.len() == flows.len() => {
                let ran = ran.into_iter().map(|r| ctx_after(&ctx, r)).collect();
                Ok(crate::engine::plan_rows(ids, flows, ran, now))
            }
            other => Err(unexpected(other)),
        }
    }

    /// A run's pure steps from `start`, and the context they leave.
    pub async fn advance(
        &self,
        flow: &Flow,
        ctx: &RunContext,
        start: usize,
        now: Millis,
    ) -> Result<(RunContext, Advance), SandboxError> {
        self.advance_with(flow, ctx, start, now, false).await
    }

    async fn advance_with(
        &self,
        flow: &Flow,
        ctx: &RunContext,
        start: usize,
        now: Millis,
        dry: bool,
    ) -> Result<(RunContext, Advance), SandboxError> {
        if flow.program.is_trivial() && !dry {
            // Nothing here runs jq: no need for a worker.
            let mut after = ctx.clone();
            let mut refusing = crate::engine::jq::Programs::refusing();
            let advance = crate::engine::run::advance(
                &mut refusing,
                &flow.program,
                &mut after,
                start,
                now,
                false,
            );
            return Ok((after, advance));
        }
        let request = Request::Advance {
            program: program_ref(flow)?,
            context: wire_context(ctx)?,
            start,
            now,
            dry,
        };
        match self.call(&request).await? {
            Response::Advanced(ran) => {
                let (advance, after) = ctx_after(ctx, ran);
                Ok((after, advance))
            }
            other => Err(unexpected(other)),
        }
    }

    /// The request of the `http` step at `pc`, or why it cannot be made.
    pub async fn render_http(
        &self,
        flow: &Flow,
        pc: usize,
        ctx: &RunContext,
        idempotency_key: String,
    ) -> Result<Result<HttpRequest, String>, SandboxError> {
        let Some(Op::Http(step)) = flow.program.instrs.get(pc).map(|i| &i.op) else {
            return Ok(Err(format!("instruction {pc} is not an http step")));
        };
        let request = Request::RenderHttp {
            program: program_ref(flow)?,
            context: wire_context(ctx)?,
            pc,
        };
        match self.call(&request).await? {
            Response::Rendered(rendered) => {
                Ok(rendered.and_then(|r| HttpRequest::from_rendered(step, r, idempotency_key)))
            }
            other => Err(unexpected(other)),
        }
    }

    /// `ferry flow test`: the flow run on an event without side effects.
    pub async fn test_flow(
        &self,
        config: &Config,
        flow: &Flow,
        event: Arc<EventInfo>,
        raw: Bytes,
        now: Millis,
    ) -> Result<TestReport, SandboxError> {
        let ctx = RunContext::new(event, raw.clone());
        let (_, advance) = self.advance_with(flow, &ctx, 0, now, true).await?;
        Ok(crate::engine::test_report(config, flow, &raw, advance))
    }

    /// jq truthiness of `expr` on each payload (JSON): as few requests as fit
    /// [`BATCH_BYTES`] each.
    pub async fn truthy_each(
        &self,
        expr: &Expr,
        payloads: &[Bytes],
    ) -> Result<Vec<Result<bool, String>>, SandboxError> {
        let mut results = Vec::with_capacity(payloads.len());
        let mut rest = payloads;
        while !rest.is_empty() {
            let mut size = 0;
            let take = rest
                .iter()
                .take_while(|p| {
                    size += p.len();
                    size <= BATCH_BYTES
                })
                .count()
                .max(1);
            let (batch, after) = rest.split_at(take);
            rest = after;
            // A payload that cannot travel is that payload's error, not the batch's.
            let checked: Vec<Result<&RawValue, SandboxError>> =
                batch.iter().map(|p| raw_json(p)).collect();
            let raw: Vec<&RawValue> = checked
                .iter()
                .filter_map(|c| c.as_ref().ok().copied())
                .collect();
            let answers = if raw.is_empty() {
                Vec::new()
            } else {
                let request = Request::Truthy {
                    expr: expr.clone(),
                    payloads: raw.clone(),
                };
                match self.call(&request).await? {
                    Response::Truthy(r) if r.len() == raw.len() => r,
                    other => return Err(unexpected(other)),
                }
            };
            let mut answers = answers.into_iter();
            for c in checked {
                results.push(match c {
                    Ok(_) => answers.next().unwrap_or(Ok(false)),
                    Err(e) => Err(e.to_string()),
                });
            }
        }
        Ok(results)
    }

    /// `expr`'s first output on `payload` as a string (`None` for null or no output).
    pub async fn read(
        &self,
        expr: &Expr,
        payload: &[u8],
    ) -> Result<Result<Option<String>, String>, SandboxError> {
        let request = Request::Read {
            expr: expr.clone(),
            payload: raw_json(payload)?,
        };
        match self.call(&request).await? {
            Response::Read(result) => Ok(result),
            other => Err(unexpected(other)),
        }
    }

    /// Every output of `expr` on `payload` as JSON text: the items of a polling source's page.
    pub async fn items(
        &self,
        expr: &Expr,
        payload: &[u8],
    ) -> Result<Result<Vec<String>, String>, SandboxError> {
        let request = Request::Items {
            expr: expr.clone(),
            payload: raw_json(payload)?,
        };
        match self.call(&request).await? {
            Response::Items(result) => Ok(result),
            other => Err(unexpected(other)),
        }
    }

    /// Sends `request` to a free worker and waits for its answer, within the limits.
    async fn call(&self, request: &Request<'_>) -> Result<Response, SandboxError> {
        self.call_within(request, self.inner.limits.time).await
    }

    /// [`Sandbox::call`] with its own time limit.
    async fn call_within(
        &self,
        request: &Request<'_>,
        limit: Duration,
    ) -> Result<Response, SandboxError> {
        let inner = &self.inner;
        let waiting = Waiting::enter(&inner.waiting);
        if waiting.ahead >= inner.limits.queue {
            return Err(SandboxError::Busy(waiting.ahead));
        }
        let permit = tokio::time::timeout(QUEUE_WAIT, inner.slots.acquire()).await;
        drop(waiting);
        let _permit = match permit {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(SandboxError::Unavailable("the pool is closed".into())),
            Err(_) => return Err(SandboxError::Busy(inner.waiting.load(Ordering::Relaxed))),
        };
        // Framed once a worker is free, so that waiting requests hold no copy of their payloads.
        let message = protocol::frame(request).map_err(SandboxError::Refused)?;
        let popped = inner.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut worker = match popped {
            Some(w) => w,
            None => inner.spawn()?,
        };
        match tokio::time::timeout(limit, exchange(&mut worker, &message)).await {
            Ok(Ok(answer)) => {
                inner.put_back(worker);
                match serde_json::from_slice::<Response>(&answer) {
                    Ok(Response::Refused(why)) => Err(SandboxError::Refused(why)),
                    Ok(response) => Ok(response),
                    Err(e) => Err(SandboxError::Refused(format!(
                        "cannot read the worker's answer: {e}"
                    ))),
                }
            }
            Ok(Err(_)) => Err(SandboxError::Crashed(inner.lost(worker).await)),
            Err(_) => {
                inner.kill(worker, "its time limit passed");
                Err(SandboxError::TimedOut(limit))
            }
        }
    }
}

impl Inner {
    fn spawn(&self) -> Result<Worker, SandboxError> {
        let mut child = tokio::process::Command::new(&self.command.program)
            .args(&self.command.args)
            .arg("--memory-limit")
            .arg(self.limits.memory_bytes.to_string())
            .arg("--cpu-limit")
            .arg(self.limits.time.as_secs().saturating_add(1).to_string())
            .env_clear()
            // The allocator reserves 1 GiB of address space at a time by default; smaller
            // steps keep the memory limit about values, not reservations.
            .env("MIMALLOC_ARENA_RESERVE", "32MiB")
            .envs(std::env::var_os("TZ").map(|tz| ("TZ", tz)))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                SandboxError::Unavailable(format!("{}: {e}", self.command.program.display()))
            })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(SandboxError::Unavailable(
                "the worker's pipes were not opened".into(),
            ));
        };
        Ok(Worker {
            child,
            stdin,
            stdout,
        })
    }

    fn put_back(&self, worker: Worker) {
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(worker);
    }

    /// Kills a worker that overran; its replacement starts when next needed.
    fn kill(&self, mut worker: Worker, why: &str) {
        self.replaced.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            reason = why,
            "expression worker killed; a new one takes its place"
        );
        let _ = worker.child.start_kill();
        tokio::spawn(async move {
            let _ = worker.child.wait().await;
        });
    }

    /// A worker that stopped answering: waits briefly for it to end and says how it ended.
    async fn lost(&self, mut worker: Worker) -> String {
        self.replaced.fetch_add(1, Ordering::Relaxed);
        let _ = worker.child.start_kill();
        let status = tokio::time::timeout(Duration::from_secs(1), worker.child.wait()).await;
        let why = match status {
            Ok(Ok(status)) => describe_exit(status, self.limits.memory_bytes),
            _ => "it stopped answering".to_string(),
        };
        tracing::warn!(reason = %why, "expression worker lost; a new one takes its place");
        why
    }
}

/// A request counted as waiting for a worker, until it is dropped (also when its future is
/// dropped while it waits).
struct Waiting<'a> {
    count: &'a AtomicUsize,
    /// Requests that were waiting before this one.
    ahead: usize,
}

impl<'a> Waiting<'a> {
    fn enter(count: &'a AtomicUsize) -> Waiting<'a> {
        let ahead = count.fetch_add(1, Ordering::AcqRel);
        Waiting { count, ahead }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Writes one message and reads the answer.
async fn exchange(worker: &mut Worker, message: &[u8]) -> std::io::Result<Vec<u8>> {
    worker.stdin.write_all(message).await?;
    worker.stdin.flush().await?;
    let mut header = [0u8; 4];
    worker.stdout.read_exact(&mut header).await?;
    let len = protocol::announced_length(header).map_err(std::io::Error::other)?;
    let mut answer = vec![0u8; len];
    worker.stdout.read_exact(&mut answer).await?;
    Ok(answer)
}

fn describe_exit(status: std::process::ExitStatus, memory: u64) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status.signal() {
        Some(libc::SIGSEGV) | Some(libc::SIGBUS) => {
            "it crashed, most likely from nesting or recursion too deep for its stack".into()
        }
        Some(libc::SIGABRT) => format!(
            "it aborted: an allocation passed its memory limit of {} MiB, or a recursion overflowed its stack",
            memory / (1024 * 1024)
        ),
        Some(libc::SIGXCPU) => "it used up its CPU time limit".into(),
        Some(libc::SIGKILL) => "it was killed".into(),
        Some(n) => format!("it ended on signal {n}"),
        None => format!("it exited with {status}"),
    }
}

fn unexpected(response: Response) -> SandboxError {
    match response {
        Response::Refused(why) => SandboxError::Refused(why),
        _ => SandboxError::Refused("the worker gave an answer of the wrong kind".into()),
    }
}

/// JSON bytes as a raw value to embed in a message.
fn raw_json(bytes: &[u8]) -> Result<&RawValue, SandboxError> {
    serde_json::from_slice::<&RawValue>(bytes)
        .map_err(|e| SandboxError::Refused(format!("the payload is not JSON: {e}")))
}

fn program_ref(flow: &Flow) -> Result<ProgramRef<'_>, SandboxError> {
    Ok(ProgramRef {
        digest: flow.wire_digest,
        program: raw_json(flow.wire.as_bytes())?,
    })
}

fn wire_context(ctx: &RunContext) -> Result<Context<'_>, SandboxError> {
    Ok(Context {
        event: (**ctx.event()).clone(),
        raw: raw_json(ctx.raw())?,
        payload: match ctx.transformed_payload() {
            Some(p) => Some([raw_json(p)?]),
            None => None,
        },
        steps: ctx.steps().clone(),
    })
}

/// The context a worker's run left, over the event the server holds (a payload that came back
/// unchanged keeps its stored body). A worker names nothing stored: the server gives the
/// bodies of the records it made their ids (`engine::keep_bodies`), and the deliveries it
/// asks for fresh ids, which the deliver step's record (the last one) then lists.
fn ctx_after(before: &RunContext, mut ran: Ran) -> (Advance, RunContext) {
    for record in &mut ran.advance.records {
        record.output_body = None;
        record.deliveries.clear();
    }
    if let Stop::Deliver { deliveries, .. } = &mut ran.advance.stop {
        for d in deliveries.iter_mut() {
            d.id = crate::ids::delivery_id();
        }
        if let Some(record) = ran.advance.records.last_mut() {
            record.deliveries = deliveries.iter().map(|d| d.id.clone()).collect();
        }
    }
    let mut ctx = before.clone();
    if let Some(p) = ran.payload {
        ctx.set_payload(p);
    }
    for (name, output) in ran.steps {
        ctx.set_step_output(&name, output);
    }
    (ran.advance, ctx)
}

pub use crate::config::program::wire_program;

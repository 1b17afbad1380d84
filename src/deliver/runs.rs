//! The run worker: moves flow runs on after their first stop. A run comes here when it is
//! due (an `http` step to perform, a `delay` that has passed, its deliveries done, a replay);
//! the worker performs the step, lets the engine run the pure steps that follow (in an
//! expression worker), and commits the run's new state, the attempt and any new deliveries in
//! one transaction before it lets the run go. While the store cannot write, runs wait.
//!
//! **Invariant:** the store is the truth. Memory only holds which runs are due when; on start,
//! every run in the `running` state is loaded again, so a crash resumes each run at the step
//! its last commit recorded, and an `http` call whose result was committed is never repeated.
//!
//! **Cluster mode** (PostgreSQL): a wake is only a hint of when to claim; the worker steps the
//! runs it claimed, each under a lease (renewed with the deliverer's), and a step's save
//! applies only while the run's job still carries that lease, so a node that lost a run to
//! another changes nothing of it.

use super::Deliverer;
use super::http_step::{StepResponse, TokenCache, perform};
use crate::clock::{Millis, SharedClock};
use crate::config::program::{HttpStep, Op};
use crate::config::{Flow, LiveConfig};
use crate::engine::sandbox::Sandbox;
use crate::engine::{self, EventInfo, RunContext, StepRecord, step_label};
use crate::store::{DeliveryJob, NewStepAttempt, RunRow, RunSave, Store, StoreError};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::sync::{Semaphore, mpsc};

/// Runs worked on at once.
const CONCURRENT_RUNS: usize = 64;

/// A run to look at, at or after `due`.
pub struct Wake {
    run_id: String,
    due: Millis,
}

/// Tells the run worker that a run is due. Cheap to clone. The worker runs while a strong
/// handle (the one in the app's state) exists; the deliverer and the worker itself hold weak
/// ones, so dropping the app stops it.
#[derive(Clone)]
pub struct RunWaker {
    tx: Sender,
}

#[derive(Clone)]
enum Sender {
    Strong(mpsc::UnboundedSender<Wake>),
    Weak(mpsc::WeakUnboundedSender<Wake>),
}

impl RunWaker {
    pub fn channel() -> (RunWaker, mpsc::UnboundedReceiver<Wake>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            RunWaker {
                tx: Sender::Strong(tx),
            },
            rx,
        )
    }

    /// A handle that does not keep the worker running.
    pub fn downgrade(&self) -> RunWaker {
        RunWaker {
            tx: Sender::Weak(match &self.tx {
                Sender::Strong(tx) => tx.downgrade(),
                Sender::Weak(w) => w.clone(),
            }),
        }
    }

    pub fn wake(&self, run_id: String, due: Millis) {
        let wake = Wake { run_id, due };
        match &self.tx {
            Sender::Strong(tx) => {
                let _ = tx.send(wake);
            }
            Sender::Weak(w) => {
                if let Some(tx) = w.upgrade() {
                    let _ = tx.send(wake);
                }
            }
        }
    }
}

struct Worker {
    config: LiveConfig,
    store: Store,
    clock: SharedClock,
    client: crate::egress::EgressClient,
    deliverer: Deliverer,
    sandbox: Sandbox,
    tokens: TokenCache,
    metrics: Arc<crate::telemetry::Metrics>,
    // A std mutex: held for one random draw.
    rng: Mutex<fastrand::Rng>,
}

/// Everything the run worker needs, passed in by `app`.
pub struct RunWorkerParts {
    pub config: LiveConfig,
    pub store: Store,
    pub clock: SharedClock,
    pub client: crate::egress::EgressClient,
    pub deliverer: Deliverer,
    pub sandbox: Sandbox,
    pub waker: RunWaker,
    pub wakes: mpsc::UnboundedReceiver<Wake>,
    pub jitter_seed: Option<u64>,
    pub metrics: Arc<crate::telemetry::Metrics>,
}

/// Cluster mode: how often due runs are claimed when no wake came.
const CLAIM_EVERY_MS: Millis = 1000;

/// Loads the runs that are due or will be, and starts the worker.
pub async fn start(parts: RunWorkerParts) -> Result<(), StoreError> {
    // Cluster mode: nothing is loaded; the runs are claimed when due.
    let due = match parts.store.clustered() {
        Some(_) => Vec::new(),
        None => parts.store.due_runs().await?,
    };
    if !due.is_empty() {
        tracing::info!(count = due.len(), "resuming flow runs");
    }
    for (id, at) in due {
        parts.waker.wake(id, at);
    }
    let worker = Arc::new(Worker {
        config: parts.config,
        store: parts.store,
        clock: parts.clock,
        client: parts.client,
        deliverer: parts.deliverer,
        sandbox: parts.sandbox,
        tokens: TokenCache::default(),
        metrics: parts.metrics,
        rng: Mutex::new(match parts.jitter_seed {
            Some(seed) => fastrand::Rng::with_seed(seed),
            None => fastrand::Rng::new(),
        }),
    });
    tokio::spawn(schedule(worker, parts.waker.downgrade(), parts.wakes));
    Ok(())
}

/// Holds due times; hands each due run to a task, one task per run at a time.
async fn schedule(worker: Arc<Worker>, waker: RunWaker, mut wakes: mpsc::UnboundedReceiver<Wake>) {
    let mut waiting: BinaryHeap<Reverse<(Millis, u64, String)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut busy: HashSet<String> = HashSet::new();
    let mut again: HashSet<String> = HashSet::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
    let slots = Arc::new(Semaphore::new(CONCURRENT_RUNS));
    // Cluster mode: the lease of each run claimed, and when to claim next.
    let cluster = worker
        .store
        .clustered()
        .cloned()
        .zip(worker.deliverer.leases().cloned());
    let mut tokens: HashMap<String, i64> = HashMap::new();
    let mut claim_at = worker.clock.now_ms();
    let mut claim_now = true;
    // The backstop claims every second of real time, whatever Ferry's clock says.
    let mut backstop =
        tokio::time::interval(std::time::Duration::from_millis(CLAIM_EVERY_MS as u64));
    backstop.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let now = worker.clock.now_ms();
        if let Some((c, leases)) = &cluster
            && (claim_now || now >= claim_at)
            && !worker.deliverer.work().is_stopping()
        {
            claim_now = false;
            claim_at = now + CLAIM_EVERY_MS;
            let room = CONCURRENT_RUNS.saturating_sub(busy.len() + tokens.len());
            let asked = std::time::Instant::now();
            match c.pg.claim_runs(&c.node.id, now, room, c.lease_ms).await {
                Ok(claimed) => {
                    if room > 0 && claimed.len() == room {
                        claim_now = true;
                    }
                    for (run_id, due, token) in claimed {
                        leases.hold(token, asked);
                        // A run claimed again (its older lease ran out before its turn): the
                        // older lease is over.
                        if let Some(older) = tokens.insert(run_id.clone(), token) {
                            leases.forget(older);
                        }
                        seq += 1;
                        waiting.push(Reverse((due, seq, run_id)));
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot claim due flow runs"),
            }
        }
        while waiting
            .peek()
            .is_some_and(|Reverse((due, _, _))| *due <= now)
        {
            let Some(Reverse((_, _, run_id))) = waiting.pop() else {
                break;
            };
            if busy.contains(&run_id) {
                again.insert(run_id);
                continue;
            }
            // Cluster mode: only a run held under a lease that surely holds is stepped.
            let lease = match &cluster {
                Some((_, leases)) => match tokens.remove(&run_id) {
                    Some(token) if leases.start(token) => Some(token),
                    _ => continue,
                },
                None => None,
            };
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            // A graceful stop: the run stays due in the store and goes on after the restart.
            let Some(in_flight) = worker.deliverer.work().start() else {
                return;
            };
            busy.insert(run_id.clone());
            let (worker, waker, done) = (worker.clone(), waker.clone(), done_tx.clone());
            let cluster = cluster.clone();
            tokio::spawn(async move {
                let next = worker.step(&run_id, lease).await;
                if let (Some((c, leases)), Some(token)) = (&cluster, lease) {
                    // The save put the run's job back leased to nobody; a step that saved
                    // nothing gives its lease back here.
                    leases.forget(token);
                    if let Err(e) = c.pg.release_leases(&[token]).await {
                        tracing::warn!(run_id, error = %e, "could not give a run's lease back; it waits for the lease to run out");
                    }
                }
                if let Some(at) = next {
                    waker.wake(run_id.clone(), at);
                }
                drop(slot);
                drop(in_flight);
                let _ = done.send(run_id);
            });
        }
        let next_due = waiting.peek().map(|Reverse((due, _, _))| *due);
        tokio::select! {
            wake = wakes.recv() => match wake {
                // Cluster mode: the run is claimed when it is due, by whichever node is first.
                Some(w) if cluster.is_some() => claim_at = claim_at.min(w.due),
                Some(w) => {
                    seq += 1;
                    waiting.push(Reverse((w.due, seq, w.run_id)));
                }
                None => return,
            },
            Some(run_id) = done_rx.recv() => {
                busy.remove(&run_id);
                if again.remove(&run_id) {
                    seq += 1;
                    waiting.push(Reverse((worker.clock.now_ms(), seq, run_id)));
                }
            },
            _ = async { worker.clock.sleep_until(next_due.unwrap_or(0)).await }, if next_due.is_some() => {}
            _ = async { worker.clock.sleep_until(claim_at).await }, if cluster.is_some() => {}
            _ = backstop.tick(), if cluster.is_some() => claim_now = true,
            () = worker.deliverer.work().stopped() => return,
        }
    }
}

/// How long a run waits when the expression workers are busy, in milliseconds.
const OVERLOAD_RETRY_MS: i64 = 1_000;
/// How often the pure steps after a performed step are tried again on busy workers before the
/// run fails (it can be replayed).
const OVERLOAD_RETRIES: usize = 10;

/// A run's turn while its step is performed: the context and records so far, and the http
/// attempts made of the step.
struct Turn {
    ctx: RunContext,
    records: Vec<StepRecord>,
    step_attempts: u32,
    attempt: Option<NewStepAttempt>,
}

/// What a step of the worker decided, before it is saved.
struct Outcome {
    /// `None` keeps the stored context.
    ctx: Option<RunContext>,
    records: Vec<StepRecord>,
    state: engine::RunState,
    step_attempts: u32,
    attempt: Option<NewStepAttempt>,
}

impl Worker {
    /// Works on one run. Answers when the run wants to be looked at again.
    async fn step(&self, run_id: &str, lease: Option<i64>) -> Option<Millis> {
        // A step's outcome could not be saved: the run waits, and no request goes out.
        if self.store.unwritable().is_some() {
            return Some(self.clock.now_ms() + 1000);
        }
        let row = match self.store.run_row(run_id).await {
            Ok(Some(row)) => row,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(run_id, error = %e, "cannot read the run; trying again in 1s");
                return Some(self.clock.now_ms() + 1000);
            }
        };
        if row.status != "running" {
            return None;
        }
        let now = self.clock.now_ms();
        if let Some(at) = row.next_at
            && at > now
        {
            return Some(at);
        }
        let flow = self.config.get().flow(&row.flow_id).cloned();
        let records: Vec<StepRecord> = serde_json::from_str(&row.steps).unwrap_or_default();
        let event = Arc::new(EventInfo {
            id: row.event_id.clone(),
            event_type: row.event_type.clone(),
            source: row.source.clone(),
            received_at: row.received_at,
            headers: serde_json::from_str(&row.headers).unwrap_or_default(),
        });
        let ctx = RunContext::from_stored(
            event,
            row.payload.clone(),
            row.payload_body.clone(),
            row.context.as_deref(),
        );
        let outcome = match (flow, ctx) {
            (None, _) => self.failed(&row, records, format!("flow `{}` is no longer in the config", row.flow_id), None),
            (Some(flow), _) if flow.version != row.flow_version => self.failed(
                &row,
                records,
                format!(
                    "flow `{}` changed (version {} to {}) while this run was in progress; replay the run to go on with the current definition",
                    row.flow_id, row.flow_version, flow.version
                ),
                None,
            ),
            (_, Err(e)) => self.failed(&row, records, e, None),
            (Some(flow), Ok(ctx)) => self.run_step(&row, flow, ctx, records, now).await,
        };
        self.save(&row, outcome, now, lease).await
    }

    /// The run fails at its current step. Without a context (it could not be read, or went
    /// into the sandbox and did not come back), the stored one is kept as it was.
    fn failed(
        &self,
        row: &RunRow,
        records: Vec<StepRecord>,
        error: String,
        ctx: Option<RunContext>,
    ) -> Outcome {
        Outcome {
            ctx,
            records,
            state: engine::Stop::Failed(error).into_state(row.pc, self.clock.now_ms()),
            step_attempts: row.step_attempts,
            attempt: None,
        }
    }

    /// The `http` step at `pc` is tried again shortly, nothing sent: the expression workers
    /// had no room to fill in its request.
    fn later(
        &self,
        ctx: RunContext,
        records: Vec<StepRecord>,
        pc: usize,
        step_attempts: u32,
        now: Millis,
        why: &crate::engine::sandbox::SandboxError,
    ) -> Outcome {
        tracing::warn!(error = %why, "a run waits for the expression workers");
        Outcome {
            ctx: Some(ctx),
            records,
            state: engine::Stop::Wait(now + OVERLOAD_RETRY_MS).into_state(pc, now),
            step_attempts,
            attempt: None,
        }
    }

    /// Performs the step at the run's `pc` and runs on to the next stop.
    async fn run_step(
        &self,
        row: &RunRow,
        flow: Arc<Flow>,
        ctx: RunContext,
        mut records: Vec<StepRecord>,
        now: Millis,
    ) -> Outcome {
        let pc = row.pc;
        let Some(instr) = flow.program.instrs.get(pc) else {
            return Outcome {
                ctx: Some(ctx),
                records,
                state: engine::Stop::Completed.into_state(pc, now),
                step_attempts: 0,
                attempt: None,
            };
        };
        let mut turn = Turn {
            ctx,
            records: Vec::new(),
            step_attempts: row.step_attempts,
            attempt: None,
        };
        let start = match &instr.op {
            Op::Http(step) => {
                turn.records = records;
                turn = match self.http_step(row, &flow, step, turn, now).await {
                    Ok(done) => done,
                    Err(ended) => return ended,
                };
                records = std::mem::take(&mut turn.records);
                pc + 1
            }
            Op::Delay(_) => {
                records.push(record(instr, pc, now, "waited", None, None));
                pc + 1
            }
            // A pure step: the run resumes after its deliveries, or is replayed from here.
            _ => pc,
        };
        let Turn {
            ctx,
            step_attempts,
            attempt,
            ..
        } = turn;
        match self
            .advance_when_workers_free(row, &flow, &ctx, start, now)
            .await
        {
            Ok((ctx, adv)) => {
                records.extend(adv.records);
                Outcome {
                    ctx: Some(ctx),
                    records,
                    state: adv.stop.into_state(adv.pc, now),
                    step_attempts,
                    attempt,
                }
            }
            Err(e) => {
                // The step's own outcome (an http answer) is in `ctx`: kept with the failure.
                let mut out = self.failed(
                    row,
                    records,
                    format!("after step {}: {e}", instr.path),
                    Some(ctx),
                );
                out.attempt = attempt;
                out
            }
        }
    }

    /// Sends the `http` step at the run's `pc` (its request filled in by an expression
    /// worker) and records the attempt. `Ok` when it succeeded: its output is in the context
    /// and the run goes on. Otherwise the outcome that ends this turn: retried later, failed,
    /// or waiting for the workers.
    async fn http_step(
        &self,
        row: &RunRow,
        flow: &Flow,
        step: &HttpStep,
        mut turn: Turn,
        now: Millis,
    ) -> Result<Turn, Outcome> {
        let pc = row.pc;
        let instr = &flow.program.instrs[pc];
        let key = format!("{}-{pc}", row.id);
        let request = match self.sandbox.render_http(flow, pc, &turn.ctx, key).await {
            Ok(Ok(request)) => request,
            Ok(Err(e)) => {
                let label = step_label(instr);
                let mut records = turn.records;
                records.push(record(instr, pc, now, "failed", None, Some(e.clone())));
                return Err(self.failed(row, records, format!("{label}: {e}"), Some(turn.ctx)));
            }
            Err(busy) if busy.is_overload() => {
                return Err(self.later(turn.ctx, turn.records, pc, turn.step_attempts, now, &busy));
            }
            Err(e) => {
                let error = format!("{}: {e}", step_label(instr));
                return Err(self.failed(row, turn.records, error, None));
            }
        };
        let response = perform(&self.client, &self.tokens, step, &request, now).await;
        turn.step_attempts += 1;
        let finished = self.clock.now_ms();
        turn.attempt = Some(step_attempt(row, pc, now, &response));
        crate::telemetry::events::http_step_attempted(
            &self.metrics,
            &crate::telemetry::events::StepAttempt {
                run_id: &row.id,
                event_id: &row.event_id,
                flow_id: &row.flow_id,
                step: &instr.path,
                attempt: turn.step_attempts,
                status: response.status_code,
                duration: response.duration,
                outcome: response.outcome.as_str(),
                error: response.error.as_deref(),
            },
        );
        // The record of an http step that is being retried is replaced, not repeated.
        if turn
            .records
            .last()
            .is_some_and(|r| r.index == pc && r.status == "retrying")
        {
            turn.records.pop();
        }
        let retry_at = match response.outcome {
            super::attempt::Outcome::Succeeded => {
                let output = response.output();
                if let Some(name) = &instr.name {
                    turn.ctx.set_step_output(name, output.clone());
                }
                let mut r = record(instr, pc, now, "succeeded", Some(output), None);
                r.duration_ms = response.duration.as_secs_f64() * 1000.0;
                turn.records.push(r);
                turn.step_attempts = 0;
                return Ok(turn);
            }
            outcome => {
                // Drawn for every failed attempt, retryable or not, so that a seeded
                // generator gives the same delays whatever failed before.
                let unit = self.rng.lock().unwrap_or_else(|e| e.into_inner()).f64();
                match outcome {
                    super::attempt::Outcome::Retryable => step
                        .retry
                        .next_delay(turn.step_attempts, response.retry_after, unit)
                        .map(|d| finished + d.as_millis() as i64),
                    _ => None,
                }
            }
        };
        let error = response.error.clone().unwrap_or_default();
        let status = if retry_at.is_some() {
            "retrying"
        } else {
            "failed"
        };
        let mut r = record(
            instr,
            pc,
            now,
            status,
            Some(response.output()),
            Some(error.clone()),
        );
        r.duration_ms = response.duration.as_secs_f64() * 1000.0;
        turn.records.push(r);
        let stop = match retry_at {
            Some(at) => engine::Stop::Wait(at),
            None => engine::Stop::Failed(format!(
                "{}: {error} (after {} attempt{})",
                step_label(instr),
                turn.step_attempts,
                if turn.step_attempts == 1 { "" } else { "s" }
            )),
        };
        Err(Outcome {
            ctx: Some(turn.ctx),
            records: turn.records,
            state: stop.into_state(pc, now),
            step_attempts: turn.step_attempts,
            attempt: turn.attempt,
        })
    }

    /// The run's pure steps from `start`, in an expression worker. Busy workers are waited
    /// for here: the step before may have made a call whose answer is only in `ctx`, and
    /// resuming at `start` later would skip a `delay` there.
    async fn advance_when_workers_free(
        &self,
        row: &RunRow,
        flow: &Flow,
        ctx: &RunContext,
        start: usize,
        now: Millis,
    ) -> Result<(RunContext, engine::Advance), crate::engine::sandbox::SandboxError> {
        let mut advanced = self.sandbox.advance(flow, ctx, start, now).await;
        for _ in 0..OVERLOAD_RETRIES {
            match &advanced {
                Err(busy) if busy.is_overload() => {
                    tracing::warn!(error = %busy, run_id = %row.id, "a run waits for the expression workers");
                    tokio::time::sleep(std::time::Duration::from_millis(OVERLOAD_RETRY_MS as u64))
                        .await;
                    advanced = self.sandbox.advance(flow, ctx, start, now).await;
                }
                _ => break,
            }
        }
        advanced
    }

    /// Commits the outcome; then hands new deliveries to the deliverer. Answers when the run
    /// is due again.
    async fn save(
        &self,
        row: &RunRow,
        mut out: Outcome,
        now: Millis,
        lease: Option<i64>,
    ) -> Option<Millis> {
        let planned = std::mem::take(&mut out.state.deliveries);
        let (kept, context, payload_body) = match &mut out.ctx {
            Some(ctx) => {
                let ids = self.store.body_ids();
                let kept = engine::keep_bodies(ids, &row.id, ctx, &mut out.records, planned);
                (kept, ctx.to_stored(), ctx.payload_body())
            }
            // The run failed outside its context (a failed run asks for no delivery, and its
            // steps made nothing new): the stored context stays as it was.
            None => (
                engine::KeptBodies::default(),
                row.context.clone(),
                row.payload_body.as_ref().map(|b| b.id),
            ),
        };
        let deliveries = kept.deliveries;
        let jobs: Vec<DeliveryJob> = deliveries
            .iter()
            .map(|d| d.job(&row.event_id, now, &row.payload))
            .collect();
        let save = RunSave {
            id: row.id.clone(),
            event_id: row.event_id.clone(),
            expect_status: "running",
            status: out.state.status,
            pc: out.state.pc,
            resume_pc: out.state.resume_pc,
            next_at: out.state.next_at,
            step_attempts: out.step_attempts,
            error: out.state.error.clone(),
            context,
            payload_body,
            bodies: kept.new,
            steps: serde_json::to_string(&out.records).unwrap_or_else(|_| "[]".into()),
            now: self.clock.now_ms(),
            lease,
        };
        match self.store.save_run(save, deliveries, out.attempt).await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                tracing::error!(run_id = %row.id, event_id = %row.event_id, error = %e, "could not save the run; it stays where its last commit left it");
                return Some(self.clock.now_ms() + 1000);
            }
        }
        match out.state.status {
            status @ ("completed" | "filtered" | "failed") => crate::telemetry::events::run_ended(
                &self.metrics,
                &row.id,
                &row.event_id,
                &row.flow_id,
                status,
                out.state.error.as_deref(),
            ),
            status => {
                tracing::debug!(run_id = %row.id, event_id = %row.event_id, flow_id = %row.flow_id, status, step = out.state.pc, "run advanced")
            }
        }
        self.deliverer.submit(jobs);
        match out.state.status {
            "running" => out.state.next_at,
            _ => None,
        }
    }
}

fn record(
    instr: &crate::config::program::Instr,
    pc: usize,
    now: Millis,
    status: &str,
    output: Option<serde_json::Value>,
    error: Option<String>,
) -> StepRecord {
    StepRecord {
        status: status.to_string(),
        output,
        error,
        ..StepRecord::new(instr, pc, now)
    }
}

fn step_attempt(row: &RunRow, pc: usize, started_at: Millis, r: &StepResponse) -> NewStepAttempt {
    NewStepAttempt {
        job_id: format!("{}/{pc}", row.id),
        started_at,
        duration_ms: r.duration.as_millis() as i64,
        status_code: r.status_code,
        response_headers: r
            .headers
            .as_ref()
            .map(|h| serde_json::Value::Object(h.clone()).to_string()),
        response_body: Some(r.body[..r.body.len().min(super::attempt::MAX_RECORDED_BODY)].to_vec()),
        error: r.error.clone(),
        outcome: r.outcome.as_str(),
    }
}

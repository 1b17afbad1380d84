//! Delivery: performing the jobs the engine asked for. A dispatcher task holds the delivery
//! jobs this process owns (due now, or waiting for a retry time on the injected clock) and
//! hands due ones to one queue per destination; each destination runs at most `concurrency`
//! attempts at once, so a slow or failing destination never holds up the others. Every
//! attempt's outcome is committed before the job is rescheduled or let go; an outcome the store
//! could not commit leaves the delivery as it was, and the job is attempted again. While the
//! store cannot write, nothing is sent.
//!
//! **Invariant:** the store is the truth. Memory holds at most `memory_jobs` jobs; when more
//! are pending, the rest stay in the store and are loaded as room frees up. Their bodies are
//! bounded in bytes (`payload_bytes`): half of it for the bodies handed over with new jobs
//! (a job whose body does not fit goes without it, and only on its way to its first attempt:
//! a job that waits drops its body), half for the bodies read back from the store when an
//! attempt starts (an attempt waits until its body fits). Nothing here is lost by a crash: on
//! start, every pending delivery is loaded again.
//!
//! **Cluster mode** (PostgreSQL): this process holds only the jobs it has a lease on: those its
//! own ingests made, and those it claims when it has room (at a hint from another node, at
//! the time a retry or a hold it knows of comes due, and every second in any case). A job is
//! started only while its lease surely holds (`leases.rs`); its outcome is recorded only if no
//! other node took the job over meanwhile; a retry or a hold puts the job back in the store,
//! leased to nobody, for whichever node claims it when it is due.

pub mod attempt;
pub mod circuit;
pub mod http_step;
pub mod leases;
pub mod runs;
pub mod signing;
pub mod work;

use crate::clock::{Millis, SharedClock};
use crate::config::{Config, Destination};
use crate::memory::Budget;
use crate::store::{AttemptNext, DeliveryJob, NewAttempt, Store};
use bytes::Bytes;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};

/// The longest pause reason kept, in characters.
pub const MAX_PAUSE_REASON: usize = 500;

#[derive(Debug, Clone)]
pub struct DelivererOptions {
    /// Most delivery jobs held in memory; past this they wait in the store.
    pub memory_jobs: usize,
    /// New jobs waiting to be taken in by the dispatcher.
    pub new_job_queue: usize,
    /// Bytes of bodies held for jobs (`settings.memory.delivery_bytes`): half for the bodies
    /// handed over with new jobs, half for the bodies read back from the store for attempts.
    pub payload_bytes: usize,
    /// Seed for retry jitter; `None` seeds from the operating system.
    pub jitter_seed: Option<u64>,
}

impl Default for DelivererOptions {
    fn default() -> Self {
        DelivererOptions {
            memory_jobs: 50_000,
            new_job_queue: 16_384,
            payload_bytes: crate::config::DEFAULT_DELIVERY_BYTES,
            jitter_seed: None,
        }
    }
}

enum Control {
    /// A known job goes back to waiting (a retry), or is new from a manual retry.
    Schedule(DeliveryJob),
    /// A job its destination cannot take now (open circuit, paused): it waits until then or
    /// until its destination is released, without spending an attempt.
    Hold(DeliveryJob, Millis),
    /// The held jobs of a destination may go now.
    Release(String),
    /// The job's delivery is finished (succeeded or dead): forget it.
    Done(String),
    /// The config changed: new or changed destinations get a new queue, removed ones lose
    /// theirs.
    Reconfigure(Arc<Config>),
    /// Cluster mode: claim the jobs due by then (at once, for a hint).
    ClaimAt(Millis),
}

/// Cluster mode: how often due jobs are claimed when no hint came.
const CLAIM_EVERY_MS: Millis = 1000;

/// Cluster mode: a node claims up to this many times its share of a destination's
/// `concurrency` (the jobs waiting for a slot keep the slots busy until the next claim).
const CLAIM_AHEAD: usize = 8;

/// Each destination's breaker and pause, shared by its queue, its attempts and the API;
/// replaced whole when the config changes.
pub type Breakers = Arc<arc_swap::ArcSwap<HashMap<String, Arc<circuit::Breaker>>>>;

/// Handle for giving jobs to the deliverer. Dropping every handle stops it once in-flight
/// attempts are recorded.
#[derive(Clone)]
pub struct Deliverer {
    new_jobs: mpsc::Sender<DeliveryJob>,
    control: mpsc::UnboundedSender<Control>,
    spilled: Arc<AtomicBool>,
    /// The bodies handed over with new jobs, on their way to their first attempt.
    handed_over: Arc<Budget>,
    breakers: Breakers,
    store: Store,
    clock: SharedClock,
    /// The attempts in flight, shared with the run worker's steps; a graceful stop waits for
    /// them.
    work: work::Work,
    /// Cluster mode: the leases this node holds (the run worker's too).
    leases: Option<Arc<leases::Leases>>,
}

/// The pause or resume asked for does not apply.
#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    #[error("no destination has the id `{0}`")]
    UnknownDestination(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

struct AttemptContext {
    store: Store,
    clock: SharedClock,
    client: crate::egress::EgressClient,
    control: mpsc::UnboundedSender<Control>,
    // A std mutex: held for one random draw, never across an await.
    rng: Mutex<fastrand::Rng>,
    /// Told when a delivery was the last one a run waited for.
    runs: runs::RunWaker,
    breakers: Breakers,
    metrics: Arc<crate::telemetry::Metrics>,
    /// The bodies read back from the store for attempts.
    read_back: Arc<Budget>,
    work: work::Work,
    leases: Option<Arc<leases::Leases>>,
}

impl Deliverer {
    /// Starts the dispatcher and one queue per destination, after loading the pending jobs
    /// from the store.
    pub async fn start(
        config: Arc<Config>,
        store: Store,
        clock: SharedClock,
        client: crate::egress::EgressClient,
        options: DelivererOptions,
        runs: runs::RunWaker,
        metrics: Arc<crate::telemetry::Metrics>,
    ) -> Result<Deliverer, crate::store::StoreError> {
        let limit = options.memory_jobs;
        let paused: HashMap<String, circuit::Pause> =
            store.paused_destinations().await?.into_iter().collect();
        let breakers: Breakers = Arc::new(arc_swap::ArcSwap::from_pointee(
            config
                .destinations
                .values()
                .map(|d| {
                    let pause = paused.get(&d.id).cloned();
                    if let Some(p) = &pause {
                        tracing::warn!(destination_id = %d.id, by = %p.by, reason = %p.reason, "destination is paused; its deliveries wait until it is resumed");
                    }
                    (d.id.clone(), Arc::new(circuit::Breaker::new(d.breaker.clone(), pause)))
                })
                .collect(),
        ));
        let leases = store.clustered().map(|c| {
            let leases = leases::Leases::new(c.lease_ms);
            tokio::spawn(leases.clone().renew(c.clone()));
            leases
        });
        // Cluster mode: nothing is loaded; the dispatcher claims what is due at once.
        let pending = match store.clustered() {
            Some(_) => Vec::new(),
            None => store.pending_jobs(limit).await?,
        };
        let spilled = Arc::new(AtomicBool::new(pending.len() >= limit));
        let (new_tx, new_rx) = mpsc::channel(options.new_job_queue);
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let rng = match options.jitter_seed {
            Some(seed) => fastrand::Rng::with_seed(seed),
            None => fastrand::Rng::new(),
        };
        let work = work::Work::default();
        let ctx = Arc::new(AttemptContext {
            store: store.clone(),
            clock: clock.clone(),
            client,
            control: control_tx.clone(),
            rng: Mutex::new(rng),
            runs,
            breakers: breakers.clone(),
            metrics,
            read_back: Budget::new(options.payload_bytes - options.payload_bytes / 2),
            work: work.clone(),
            leases: leases.clone(),
        });
        if !pending.is_empty() {
            tracing::info!(count = pending.len(), "resuming pending deliveries");
        }
        let mut dispatcher = Dispatcher {
            clock: clock.clone(),
            store: store.clone(),
            queues: HashMap::new(),
            ctx,
            known: HashMap::new(),
            held: HashMap::new(),
            waiting: BinaryHeap::new(),
            seq: 0,
            cap: options.memory_jobs,
            spilled: spilled.clone(),
            destinations: Vec::new(),
            claim_at: clock.now_ms() + CLAIM_EVERY_MS,
            claim_now: true,
            hints: None,
        };
        dispatcher.reconfigure(&config);
        tokio::spawn(dispatcher.run(pending, new_rx, control_rx));
        Ok(Deliverer {
            new_jobs: new_tx,
            control: control_tx,
            spilled,
            handed_over: Budget::new(options.payload_bytes / 2),
            breakers,
            store,
            clock,
            work,
            leases,
        })
    }

    /// Cluster mode: the leases this node holds, which the run worker's runs join.
    pub fn leases(&self) -> Option<&Arc<leases::Leases>> {
        self.leases.as_ref()
    }

    /// The work in flight that a graceful stop waits for: the run worker counts its steps in
    /// it too.
    pub fn work(&self) -> &work::Work {
        &self.work
    }

    /// The graceful stop: no attempt starts any more (jobs not started stay pending in the
    /// store, with their times), and the attempts in flight (and run steps) get up to `grace`
    /// to finish and commit their outcomes. Answers how many were still in flight then.
    pub async fn stop(&self, grace: Duration) -> usize {
        let left = self.work.stop(grace).await;
        // Cluster mode: the jobs held but not started go back to the cluster at once.
        if let (Some(c), Some(leases)) = (self.store.clustered(), &self.leases) {
            let released = leases.release_idle(c).await;
            tracing::info!(released, "gave back the leases of the jobs not started");
        }
        left
    }

    /// Takes in a changed config: destinations that are new or changed get a new queue (a
    /// changed one's attempts in flight finish on the old settings), removed ones lose theirs
    /// (the API refuses to remove a destination with pending deliveries). A destination keeps
    /// its circuit and pause unless its `circuit_breaker` settings changed; then its circuit
    /// starts closed, and its pause stays.
    pub fn reconfigure(&self, config: Arc<Config>) {
        let old = self.breakers.load_full();
        let new: HashMap<String, Arc<circuit::Breaker>> = config
            .destinations
            .values()
            .map(|d| {
                let breaker = match old.get(&d.id) {
                    Some(b) if *b.config() == d.breaker => b.clone(),
                    Some(b) => {
                        Arc::new(circuit::Breaker::new(d.breaker.clone(), b.health().paused))
                    }
                    None => Arc::new(circuit::Breaker::new(d.breaker.clone(), None)),
                };
                (d.id.clone(), breaker)
            })
            .collect();
        self.breakers.store(Arc::new(new));
        let _ = self.control.send(Control::Reconfigure(config));
    }

    /// Each destination's circuit and pause.
    pub fn health(&self) -> Vec<(String, circuit::Health)> {
        let mut all: Vec<_> = self
            .breakers
            .load()
            .iter()
            .map(|(id, b)| (id.clone(), b.health()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Cluster mode: takes in the pauses as stored, changed by other nodes: a destination
    /// paused elsewhere holds its deliveries here too, and one resumed elsewhere lets them go.
    pub fn follow_pauses(&self, paused: HashMap<String, circuit::Pause>) {
        for (id, breaker) in self.breakers.load().iter() {
            let want = paused.get(id).cloned();
            if breaker.health().paused == want {
                continue;
            }
            let resumed = want.is_none();
            if breaker.set_paused(want) && resumed {
                let _ = self.control.send(Control::Release(id.clone()));
            }
        }
    }

    /// Pauses a destination (durably): its deliveries wait, none is dropped. The reason is
    /// kept to [`MAX_PAUSE_REASON`] characters, without control or bidirectional-override
    /// characters (it is shown in pages and logs).
    pub async fn pause(&self, destination_id: &str, reason: &str) -> Result<bool, PauseError> {
        let reason: String = reason
            .chars()
            .filter(|c| {
                !c.is_control() && !matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
            })
            .take(MAX_PAUSE_REASON)
            .collect();
        let reason = reason.as_str();
        let breaker = self
            .breakers
            .load()
            .get(destination_id)
            .cloned()
            .ok_or_else(|| PauseError::UnknownDestination(destination_id.to_string()))?;
        let pause = circuit::Pause {
            by: "api".into(),
            reason: reason.to_string(),
            since: self.clock.now_ms(),
        };
        self.store
            .set_paused(destination_id, Some(pause.clone()))
            .await?;
        let changed = breaker.set_paused(Some(pause));
        if let Some(c) = self.store.clustered() {
            c.hint_config();
        }
        if changed {
            crate::telemetry::events::destination_pause_changed(
                destination_id,
                true,
                "api",
                reason,
            );
        }
        Ok(changed)
    }

    /// Resumes a paused destination: its held deliveries go at once.
    pub async fn resume(&self, destination_id: &str) -> Result<bool, PauseError> {
        let breaker = self
            .breakers
            .load()
            .get(destination_id)
            .cloned()
            .ok_or_else(|| PauseError::UnknownDestination(destination_id.to_string()))?;
        self.store.set_paused(destination_id, None).await?;
        let changed = breaker.set_paused(None);
        if let Some(c) = self.store.clustered() {
            c.hint_config();
        }
        if changed {
            crate::telemetry::events::destination_pause_changed(destination_id, false, "api", "");
        }
        let _ = self
            .control
            .send(Control::Release(destination_id.to_string()));
        Ok(changed)
    }

    /// Hands over freshly committed jobs. Never waits: when the dispatcher is behind, a job
    /// stays in the store and is loaded later. A job keeps its body only if it fits in the
    /// budget for handed-over bodies (jobs sharing one body, an event fanned out, count it
    /// once); otherwise its attempt reads it from the store.
    pub fn submit(&self, jobs: Vec<DeliveryJob>) {
        self.submit_leased(jobs, std::time::Instant::now());
    }

    /// [`Deliverer::submit`] of jobs whose leases (cluster mode) were asked for at `asked`:
    /// before the write that took them began, so that this node counts them from no later
    /// than the database does.
    pub fn submit_leased(&self, jobs: Vec<DeliveryJob>, asked: std::time::Instant) {
        // (the body as given, the same body holding its share of the budget)
        let mut held: Vec<(Bytes, Bytes)> = Vec::new();
        // Cluster mode: leases that could not be handed over go back at once.
        let mut refused = Vec::new();
        for mut job in jobs {
            if let Some(leases) = &self.leases {
                // A job this node holds no lease on is the cluster's: claimed when due.
                let Some(token) = job.lease else {
                    let _ = self.control.send(Control::ClaimAt(job.due_at));
                    if let Some(c) = self.store.clustered() {
                        c.hint_jobs();
                    }
                    continue;
                };
                leases.hold(token, asked);
            }
            job.payload = job.payload.and_then(|body| {
                let same = |(given, _): &&(Bytes, Bytes)| {
                    given.as_ptr() == body.as_ptr() && given.len() == body.len()
                };
                if let Some((_, counted)) = held.iter().find(same) {
                    return Some(counted.clone());
                }
                let counted = self.handed_over.try_take(body.len())?.attach(body.clone());
                held.push((body, counted.clone()));
                Some(counted)
            });
            if let Err(e) = self.new_jobs.try_send(job) {
                match e.into_inner().lease {
                    Some(token) => refused.push(token),
                    None => self.spilled.store(true, Ordering::Relaxed),
                }
            }
        }
        if let (Some(c), Some(leases), false) = (
            self.store.clustered().cloned(),
            self.leases.clone(),
            refused.is_empty(),
        ) {
            tokio::spawn(async move {
                for token in &refused {
                    leases.forget(*token);
                }
                if let Err(e) = c.pg.release_leases(&refused).await {
                    tracing::warn!(error = %e, "could not give back the leases of jobs this node had no room for; they wait for the leases to run out");
                }
                c.hint_jobs();
            });
        }
    }

    /// Hands over a job that a person asked to retry.
    pub fn schedule(&self, job: DeliveryJob) {
        if self.leases.is_some() {
            // Cluster mode: the retried job is in the store, leased to nobody.
            self.submit(vec![job]);
            return;
        }
        let _ = self.control.send(Control::Schedule(job));
    }
}

/// A job waiting for its time, ordered by `(due, seq)`.
struct Waiting {
    due: Millis,
    seq: u64,
    job: DeliveryJob,
    /// Held by its destination (open circuit, pause) rather than waiting for a retry.
    held: bool,
}

impl PartialEq for Waiting {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}

impl Eq for Waiting {}

impl PartialOrd for Waiting {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Waiting {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

struct Dispatcher {
    clock: SharedClock,
    store: Store,
    /// Each destination's queue, with the digest of the spec its task was started with.
    queues: HashMap<String, (String, mpsc::UnboundedSender<DeliveryJob>)>,
    ctx: Arc<AttemptContext>,
    /// Every job id this process holds (waiting, queued or in flight), with its destination.
    known: HashMap<String, String>,
    /// How many of `known` each destination has.
    held: HashMap<String, usize>,
    /// Jobs whose time has not come, soonest first.
    waiting: BinaryHeap<Reverse<Waiting>>,
    /// Ties on `due_at` keep their arrival order.
    seq: u64,
    cap: usize,
    spilled: Arc<AtomicBool>,
    /// Cluster mode: the destinations whose jobs this node claims (those in its config), with
    /// their `concurrency`.
    destinations: Vec<(String, usize)>,
    /// Cluster mode: when to claim next on Ferry's clock (a retry or a hold comes due), and
    /// whether to claim at once (a hint came, or the backstop's second passed).
    claim_at: Millis,
    claim_now: bool,
    /// Cluster mode: hints from the other nodes (`None` until listening, or after the
    /// listening connection dropped; listened to again at the next claim).
    hints: Option<mpsc::UnboundedReceiver<String>>,
}

/// Claims up to `room` due delivery jobs of `destinations` for this node, each held under its
/// lease.
async fn claim_for(
    c: &crate::store::postgres::Clustered,
    leases: &leases::Leases,
    now: Millis,
    destinations: &[String],
    room: usize,
) -> Result<Vec<DeliveryJob>, crate::store::StoreError> {
    let asked = std::time::Instant::now();
    let claimed =
        c.pg.claim_deliveries(&c.node.id, now, destinations, room, c.lease_ms)
            .await?;
    Ok(claimed
        .into_iter()
        .map(|claimed| {
            leases.hold(claimed.token, asked);
            claimed.job
        })
        .collect())
}

impl Dispatcher {
    /// Cluster mode: claims what is due, when it is time to and there is room.
    async fn claim_due(&mut self) {
        let (Some(c), Some(leases)) = (self.store.clustered().cloned(), self.ctx.leases.clone())
        else {
            return;
        };
        let now = self.clock.now_ms();
        if !(self.claim_now || now >= self.claim_at) || self.ctx.work.is_stopping() {
            return;
        }
        self.claim_now = false;
        if self.hints.is_none() {
            match c.pg.listen(&[crate::store::postgres::JOBS_CHANNEL]).await {
                Ok(hints) => self.hints = Some(hints),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for hints from the other nodes; claiming every second")
                }
            }
        }
        let room = self.cap.saturating_sub(self.known.len()).min(1000);
        self.claim_at = now + CLAIM_EVERY_MS;
        // A node takes a few times its share of a destination's concurrency at most, so that
        // a backlog coming due at once is spread over the nodes instead of sent by one at its
        // share only.
        let nodes = c.live_nodes();
        let mut wanted: Vec<String> = Vec::new();
        let mut most = 0;
        for (id, concurrency) in &self.destinations {
            let ahead = (concurrency / nodes).max(1) * CLAIM_AHEAD;
            let want = ahead.saturating_sub(self.held.get(id).copied().unwrap_or(0));
            if want > 0 {
                wanted.push(id.clone());
                most = most.max(want);
            }
        }
        let room = room.min(most);
        if room == 0 {
            return;
        }
        match claim_for(&c, &leases, now, &wanted, room).await {
            Ok(jobs) => {
                // A full claim leaves more: claim again at once.
                if jobs.len() == room {
                    self.claim_now = true;
                }
                for job in jobs {
                    self.take_new(job);
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot claim due deliveries"),
        }
    }

    /// Cluster mode: gives a held job back to the cluster until `until` (its destination is
    /// paused or its circuit open) without spending an attempt.
    async fn hold_in_store(&mut self, job: DeliveryJob, until: Millis) {
        let (Some(c), Some(leases), Some(token)) = (
            self.store.clustered().cloned(),
            self.ctx.leases.clone(),
            job.lease,
        ) else {
            return;
        };
        self.forget_job(&job.id);
        leases.forget(token);
        match c.pg.hold_delivery(&job.id, token, until).await {
            Ok(_) => self.claim_at = self.claim_at.min(until),
            Err(e) => {
                tracing::warn!(delivery_id = %job.id, error = %e, "could not put a held delivery back; it waits for its lease to run out")
            }
        }
    }

    async fn run(
        mut self,
        pending: Vec<DeliveryJob>,
        mut new_rx: mpsc::Receiver<DeliveryJob>,
        mut control_rx: mpsc::UnboundedReceiver<Control>,
    ) {
        for job in pending {
            self.take_new(job);
        }
        let (mut new_open, mut control_open) = (true, true);
        let mut last_sweep: Option<std::time::Instant> = None;
        // Cluster mode: the backstop claims every second of real time, whatever Ferry's clock
        // says, for jobs no hint announced (another node's retries, a dead node's jobs).
        let mut backstop = tokio::time::interval(Duration::from_millis(CLAIM_EVERY_MS as u64));
        backstop.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Ends when every `Deliverer` handle is gone (the server stopped). In-flight attempts
        // still record their outcome; jobs still waiting stay pending in the store.
        while new_open {
            let now = self.clock.now_ms();
            while self.waiting.peek().is_some_and(|Reverse(w)| w.due <= now) {
                if let Some(Reverse(w)) = self.waiting.pop() {
                    self.route(w.job);
                }
            }
            self.claim_due().await;
            // Cluster mode claims instead: a sweep would load jobs other nodes hold.
            if self.ctx.leases.is_none()
                && self.spilled.load(Ordering::Relaxed)
                && self.known.len() < self.cap / 2
                && last_sweep.is_none_or(|at| at.elapsed() >= Duration::from_millis(200))
            {
                last_sweep = Some(std::time::Instant::now());
                self.sweep().await;
            }
            let next_due = self.waiting.peek().map(|Reverse(w)| w.due);
            let has_room = self.known.len() < self.cap;
            let spilled = self.spilled.load(Ordering::Relaxed);
            let clustered = self.ctx.leases.is_some();
            let claim_at = self.claim_at;
            let hints = self.hints.as_mut();
            let listening = hints.is_some();
            tokio::select! {
                biased;
                msg = control_rx.recv(), if control_open => match msg {
                    Some(Control::Schedule(job)) => {
                        self.remember(&job);
                        self.place(job);
                    }
                    Some(Control::Done(id)) => self.forget_job(&id),
                    Some(Control::Hold(job, until)) if clustered => self.hold_in_store(job, until).await,
                    Some(Control::Hold(mut job, until)) => {
                        // A job that waits leaves its body in the store.
                        job.payload = None;
                        self.seq += 1;
                        self.waiting.push(Reverse(Waiting { due: until, seq: self.seq, job, held: true }));
                    }
                    Some(Control::Release(destination_id)) if clustered => self.release_in_store(&destination_id).await,
                    Some(Control::Release(destination_id)) => self.release(&destination_id),
                    Some(Control::ClaimAt(at)) => self.claim_at = self.claim_at.min(at),
                    Some(Control::Reconfigure(config)) => self.reconfigure(&config),
                    None => control_open = false,
                },
                job = new_rx.recv(), if new_open && has_room => match job {
                    Some(job) => self.take_new(job),
                    None => new_open = false,
                },
                _ = async { self.clock.sleep_until(next_due.unwrap_or(0)).await }, if next_due.is_some() => {}
                _ = tokio::time::sleep(Duration::from_millis(250)), if spilled => {}
                _ = async { self.clock.sleep_until(claim_at).await }, if clustered => {}
                _ = backstop.tick(), if clustered => self.claim_now = true,
                hint = async { match hints { Some(h) => h.recv().await, None => std::future::pending().await } }, if listening => {
                    match hint {
                        Some(_) => self.claim_now = true,
                        // The listening connection dropped: listen again at the next claim.
                        None => self.hints = None,
                    }
                }
                // A graceful stop: nothing more is routed; what waits stays pending in the store.
                () = self.ctx.work.stopped() => return,
            }
        }
    }

    /// Starts a queue for each new or changed destination and drops those of removed ones
    /// (their tasks end once their queued jobs are sent).
    fn reconfigure(&mut self, config: &Config) {
        self.destinations = config
            .destinations
            .values()
            .map(|d| (d.id.clone(), d.concurrency))
            .collect();
        self.queues
            .retain(|id, _| config.destinations.contains_key(id));
        for dest in config.destinations.values() {
            let digest = config
                .objects
                .get(&(crate::config::ObjectKind::Destination, dest.id.clone()))
                .map(|o| o.digest.clone())
                .unwrap_or_default();
            if self.queues.get(&dest.id).is_some_and(|(d, _)| *d == digest) {
                continue;
            }
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(destination_loop(dest.clone(), rx, self.ctx.clone()));
            self.queues.insert(dest.id.clone(), (digest, tx));
        }
    }

    /// Counts `job` as held; `false` when it was already.
    fn remember(&mut self, job: &DeliveryJob) -> bool {
        if self.known.contains_key(&job.id) {
            return false;
        }
        self.known
            .insert(job.id.clone(), job.destination_id.clone());
        *self.held.entry(job.destination_id.clone()).or_default() += 1;
        true
    }

    fn forget_job(&mut self, id: &str) {
        if let Some(destination) = self.known.remove(id)
            && let Some(n) = self.held.get_mut(&destination)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.held.remove(&destination);
            }
        }
    }

    fn take_new(&mut self, job: DeliveryJob) {
        if self.remember(&job) {
            self.place(job);
        } else if let Some(token) = job.lease {
            // Cluster mode: claimed again while an older copy (whose lease ran out) is still
            // here: the new lease goes back; the job is claimed again once the old copy is gone.
            self.give_back(token);
        }
    }

    /// Cluster mode: gives the lease `token` back to the cluster at once.
    fn give_back(&self, token: i64) {
        let (Some(c), Some(leases)) = (self.store.clustered().cloned(), self.ctx.leases.clone())
        else {
            return;
        };
        leases.forget(token);
        tokio::spawn(async move {
            if let Err(e) = c.pg.release_leases(&[token]).await {
                tracing::warn!(error = %e, "could not give a lease back; its job waits for the lease to run out");
            }
        });
    }

    fn place(&mut self, mut job: DeliveryJob) {
        if job.due_at <= self.clock.now_ms() {
            self.route(job);
        } else {
            // A job that waits leaves its body in the store.
            job.payload = None;
            self.seq += 1;
            self.waiting.push(Reverse(Waiting {
                due: job.due_at,
                seq: self.seq,
                job,
                held: false,
            }));
        }
    }

    /// Makes the held jobs of a destination due now (jobs waiting for a retry keep their time).
    fn release(&mut self, destination_id: &str) {
        let now = self.clock.now_ms();
        let mut all = std::mem::take(&mut self.waiting).into_vec();
        for Reverse(w) in all.iter_mut() {
            if w.held && w.job.destination_id == destination_id {
                w.due = now.min(w.due);
                w.held = false;
            }
        }
        self.waiting = BinaryHeap::from(all);
    }

    /// Cluster mode: the held jobs of a destination, in the store, are due now.
    async fn release_in_store(&mut self, destination_id: &str) {
        let Some(c) = self.store.clustered().cloned() else {
            return;
        };
        let now = self.clock.now_ms();
        match c.pg.release_held(destination_id, now).await {
            Ok(_) => {
                self.claim_now = true;
                c.hint_jobs();
            }
            Err(e) => {
                tracing::warn!(destination_id, error = %e, "could not release the held deliveries; they go when their hold ends")
            }
        }
    }

    fn route(&mut self, job: DeliveryJob) {
        // During a graceful stop the queues are closing: the job stays pending in the store.
        if self.ctx.work.is_stopping() {
            return;
        }
        match self.queues.get(&job.destination_id) {
            Some((_, queue)) => {
                if let Err(e) = queue.send(job) {
                    tracing::error!(delivery_id = %e.0.id, "destination queue closed");
                }
            }
            None => {
                tracing::warn!(
                    delivery_id = %job.id, event_id = %job.event_id, destination_id = %job.destination_id,
                    "destination is not in the config; the delivery stays pending until it is"
                );
                // Cluster mode: the job goes back to the cluster (another node's config may
                // have the destination already).
                if let Some(token) = job.lease {
                    self.forget_job(&job.id);
                    self.give_back(token);
                }
            }
        }
    }

    /// Loads pending jobs that are in the store but not in memory.
    async fn sweep(&mut self) {
        let limit = self.cap;
        match self.store.pending_jobs(limit).await {
            Ok(jobs) => {
                let complete = jobs.len() < limit;
                let room = self.cap.saturating_sub(self.known.len());
                let mut taken = 0;
                for job in jobs {
                    if taken >= room {
                        break;
                    }
                    if !self.known.contains_key(&job.id) {
                        taken += 1;
                        self.take_new(job);
                    }
                }
                if complete && taken < room {
                    self.spilled.store(false, Ordering::Relaxed);
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot load pending deliveries"),
        }
    }
}

/// How long a delivery waits when the store cannot write, before it is looked at again.
const STORE_WAIT_MS: Millis = 1000;

async fn destination_loop(
    dest: Arc<Destination>,
    mut jobs: mpsc::UnboundedReceiver<DeliveryJob>,
    ctx: Arc<AttemptContext>,
) {
    let slots = Arc::new(Semaphore::new(dest.concurrency));
    let Some(breaker) = ctx.breakers.load().get(&dest.id).cloned() else {
        return;
    };
    // A graceful stop ends the loop: the jobs queued here stay pending in the store.
    loop {
        let job = tokio::select! {
            biased;
            () = ctx.work.stopped() => break,
            job = jobs.recv() => match job {
                Some(job) => job,
                None => break,
            },
        };
        // Cluster mode: each node takes its share of `concurrency`, by weighing each attempt
        // by the number of live nodes (at least one attempt in flight per node).
        let weight = ctx
            .store
            .clustered()
            .map_or(1, |c| c.live_nodes().min(dest.concurrency)) as u32;
        let slot = tokio::select! {
            biased;
            () = ctx.work.stopped() => break,
            slot = slots.clone().acquire_many_owned(weight) => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        // An outcome the store cannot record would be sent again later anyway: nothing goes
        // out while it cannot write, and no attempt is spent.
        if ctx.store.unwritable().is_some() {
            drop(slot);
            let until = ctx.clock.now_ms() + STORE_WAIT_MS;
            let _ = ctx.control.send(Control::Hold(job, until));
            continue;
        }
        let (admit, change) = breaker.admit(ctx.clock.now_ms());
        if let Some((from, to)) = change {
            crate::telemetry::events::circuit_changed(&dest.id, from, to, 0);
        }
        if let circuit::Admit::Hold(until) = admit {
            drop(slot);
            let _ = ctx.control.send(Control::Hold(job, until));
            continue;
        }
        let Some(in_flight) = ctx.work.start() else {
            break;
        };
        // Cluster mode: a job whose lease may have run out (or that came without one) is
        // another node's to send.
        if let Some(leases) = &ctx.leases
            && !job.lease.is_some_and(|token| leases.start(token))
        {
            tracing::warn!(delivery_id = %job.id, "the lease on this delivery ran out before its attempt; it is left to the node that claims it");
            let _ = ctx.control.send(Control::Done(job.id));
            continue;
        }
        let (ctx, dest) = (ctx.clone(), dest.clone());
        tokio::spawn(async move {
            run_attempt(&ctx, &dest, job, slot).await;
            drop(in_flight);
        });
    }
}

/// Reads a delivery's body back from the store once it fits in the budget for bodies read
/// back; the body holds its share until it is sent.
async fn read_payload(
    ctx: &AttemptContext,
    delivery_id: &str,
) -> Result<Option<Bytes>, crate::store::StoreError> {
    let Some(size) = ctx.store.delivery_payload_size(delivery_id).await? else {
        return Ok(None);
    };
    let mut share = ctx.read_back.take(size).await;
    let payload = ctx.store.delivery_payload(delivery_id).await?;
    Ok(payload.map(|p| {
        share.shrink_to(p.len());
        share.attach(p)
    }))
}

/// Runs one attempt. `slot` is the destination's concurrency slot: it limits requests in
/// flight to the receiver, so it is given back as soon as the response is read, before the
/// outcome is recorded.
async fn run_attempt(
    ctx: &AttemptContext,
    dest: &Destination,
    mut job: DeliveryJob,
    slot: tokio::sync::OwnedSemaphorePermit,
) {
    let Some(payload) = payload_of(ctx, &mut job).await else {
        return;
    };
    let started_at = ctx.clock.now_ms();
    let result = attempt::send(
        &ctx.client,
        dest,
        &job.id,
        started_at.div_euclid(1000),
        payload,
    )
    .await;
    drop(slot);
    let attempt_no = job.round_attempts + 1;
    let finished_at = ctx.clock.now_ms();
    let next = next_after(ctx, dest, &result, attempt_no, finished_at);
    crate::telemetry::events::delivery_attempted(
        &ctx.metrics,
        &crate::telemetry::events::DeliveryAttempt {
            delivery_id: &job.id,
            event_id: &job.event_id,
            destination_id: &dest.id,
            attempt: attempt_no,
            status: result.status_code,
            error: result.error.as_deref(),
            duration: result.duration,
            outcome: result.outcome.as_str(),
            retry_in_ms: match next {
                AttemptNext::RetryAt(at) => Some(at - finished_at),
                _ => None,
            },
            latency: Some(std::time::Duration::from_millis(
                (finished_at - job.created_at).max(0) as u64,
            )),
        },
    );
    tell_breaker(ctx, dest, &result, finished_at).await;
    let record = NewAttempt {
        delivery_id: job.id.clone(),
        event_id: job.event_id.clone(),
        run_id: job.run_id.clone(),
        destination_id: dest.id.clone(),
        started_at,
        finished_at,
        duration_ms: result.duration.as_millis() as i64,
        status_code: result.status_code,
        response_headers: result.response_headers,
        response_body: result.response_body,
        error: result.error,
        outcome: result.outcome.as_str(),
        next,
        lease: job.lease,
    };
    record_outcome(ctx, job, record, attempt_no).await;
}

/// The body to send: handed over with the job, or read from the store. `None` when there is
/// none to send now: the job is then done (its event is gone) or scheduled again in a second
/// (the store could not be read).
async fn payload_of(ctx: &AttemptContext, job: &mut DeliveryJob) -> Option<bytes::Bytes> {
    if let Some(p) = job.payload.take() {
        return Some(p);
    }
    match read_payload(ctx, &job.id).await {
        Ok(Some(p)) => Some(p),
        Ok(None) => {
            tracing::error!(delivery_id = %job.id, event_id = %job.event_id, "the event of this delivery is missing");
            forget_lease(ctx, job);
            let _ = ctx.control.send(Control::Done(job.id.clone()));
            None
        }
        Err(e) => {
            tracing::warn!(delivery_id = %job.id, error = %e, "cannot read the payload; trying again in 1s");
            job.due_at = ctx.clock.now_ms() + 1000;
            let _ = ctx.control.send(Control::Schedule(job.clone()));
            None
        }
    }
}

/// What becomes of the delivery after this attempt: done, dead, or tried again after the
/// destination's retry delay (a `Retry-After` it sent included).
fn next_after(
    ctx: &AttemptContext,
    dest: &Destination,
    result: &attempt::AttemptResult,
    attempt_no: u32,
    finished_at: Millis,
) -> AttemptNext {
    match result.outcome {
        attempt::Outcome::Succeeded => AttemptNext::Succeeded,
        attempt::Outcome::Permanent => AttemptNext::Dead,
        attempt::Outcome::Retryable => {
            let unit = ctx.rng.lock().unwrap_or_else(|e| e.into_inner()).f64();
            match dest.retry.next_delay(attempt_no, result.retry_after, unit) {
                Some(delay) => AttemptNext::RetryAt(finished_at + delay.as_millis() as i64),
                None => AttemptNext::Dead,
            }
        }
    }
}

/// Tells the destination's circuit breaker how the attempt went, and acts on what it
/// decides: a circuit that changed is logged, held jobs are released when it closes, and an
/// automatic pause is stored.
async fn tell_breaker(
    ctx: &AttemptContext,
    dest: &Destination,
    result: &attempt::AttemptResult,
    finished_at: Millis,
) {
    let Some(breaker) = ctx.breakers.load().get(&dest.id).cloned() else {
        return;
    };
    let change = breaker.record(
        finished_at,
        result.outcome == attempt::Outcome::Retryable,
        result.error.as_deref(),
    );
    if let Some((from, to)) = change.circuit {
        crate::telemetry::events::circuit_changed(
            &dest.id,
            from,
            to,
            breaker.health().consecutive_failures,
        );
    }
    if change.release {
        let _ = ctx.control.send(Control::Release(dest.id.clone()));
    }
    if let Some(reason) = change.pause {
        crate::telemetry::events::destination_pause_changed(&dest.id, true, "auto", &reason);
        let pause = breaker.health().paused;
        match ctx.store.set_paused(&dest.id, pause).await {
            // Cluster mode: the other nodes pause the destination too.
            Ok(()) => {
                if let Some(c) = ctx.store.clustered() {
                    c.hint_config();
                }
            }
            Err(e) => {
                tracing::error!(destination_id = %dest.id, error = %e, "could not store the pause; it holds until restart")
            }
        }
    }
}

/// Records the attempt with the delivery's new state (a run it ends or wakes included), then
/// schedules the delivery's next attempt or lets it go.
async fn record_outcome(
    ctx: &AttemptContext,
    job: DeliveryJob,
    record: NewAttempt,
    attempt_no: u32,
) {
    let (next, finished_at) = (record.next, record.finished_at);
    match ctx.store.record_attempt(record).await {
        Ok(Some(settled)) if settled.status == "running" => {
            ctx.runs.wake(settled.run_id, finished_at)
        }
        Ok(Some(settled)) => crate::telemetry::events::run_ended(
            &ctx.metrics,
            &settled.run_id,
            &job.event_id,
            &settled.flow_id,
            settled.status,
            settled.error.as_deref(),
        ),
        Ok(None) => {}
        Err(crate::store::StoreError::LeaseLost) => {
            tracing::warn!(delivery_id = %job.id, event_id = %job.event_id, "the lease on this delivery was lost during its attempt; its outcome is not recorded (the node that holds it now attempts it)");
            forget_lease(ctx, &job);
            let _ = ctx.control.send(Control::Done(job.id));
            return;
        }
        Err(e) => {
            if let (Some(leases), Some(token)) = (&ctx.leases, job.lease) {
                leases.idle(token);
            }
            // The store still has the delivery as it was before this attempt: it is attempted
            // again (at least once, as after a crash), counted from the store's attempts.
            tracing::error!(delivery_id = %job.id, event_id = %job.event_id, error = %e, "could not record the attempt; the delivery stays pending and is attempted again once the store writes");
            let _ = ctx.control.send(Control::Schedule(DeliveryJob {
                due_at: finished_at + STORE_WAIT_MS,
                ..job
            }));
            return;
        }
    }
    if ctx.leases.is_some() {
        // Cluster mode: the job is back in the store, leased to nobody (or gone).
        forget_lease(ctx, &job);
        let _ = ctx.control.send(Control::Done(job.id));
        if let AttemptNext::RetryAt(at) = next {
            let _ = ctx.control.send(Control::ClaimAt(at));
        }
        return;
    }
    let _ = ctx.control.send(match next {
        AttemptNext::RetryAt(at) => Control::Schedule(DeliveryJob {
            round_attempts: attempt_no,
            due_at: at,
            ..job
        }),
        AttemptNext::Succeeded | AttemptNext::Dead => Control::Done(job.id),
    });
}

fn forget_lease(ctx: &AttemptContext, job: &DeliveryJob) {
    if let (Some(leases), Some(token)) = (&ctx.leases, job.lease) {
        leases.forget(token);
    }
}

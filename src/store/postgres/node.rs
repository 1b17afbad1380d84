//! This node's handle on the cluster's store: the pool, who this node is, how long its leases
//! last, the ingest batcher that commits the ingests arriving together in one transaction
//! (group commit, as the SQLite writer does), and the coalesced hints that wake the other
//! nodes' workers after a commit made work they may take. [`Singleton`] is work that runs on
//! one node at a time (alert evaluation, retention).

use super::{Fenced, Ingest, Ingested, Lease, Node, PgStore};
use crate::store::{NewAttempt, Settled, StoreError};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};

/// The channel that says "jobs became due that nobody holds": idle workers claim.
pub const JOBS_CHANNEL: &str = "ferry_jobs";

/// The channel that says "config objects or a pause changed": every node reloads them.
pub const CONFIG_CHANNEL: &str = "ferry_config";

/// Ingests waiting for a batch; past this, ingest answers `Overloaded` (as SQLite's queue).
const INGEST_QUEUE: usize = 8192;

/// Most events in one ingest transaction.
const MAX_INGEST_BATCH: usize = 512;

/// Ingest transactions in flight at once: while one commits, the next batch fills.
const INGEST_COMMITS: usize = 4;

/// A node whose last heartbeat is older (three missed) no longer counts as alive for the
/// shares of a destination's `concurrency`.
pub const LIVE_WITHIN: Duration = Duration::from_secs(15);

/// Hints sent at most this often; the hints asked for meanwhile go as one.
const HINT_EVERY: Duration = Duration::from_millis(50);

type Queued = (Ingest, oneshot::Sender<Result<Ingested, StoreError>>);

type Outcome = Result<Fenced<Option<Settled>>, StoreError>;
type QueuedAttempt = (NewAttempt, Lease, oneshot::Sender<Outcome>);

/// Most attempts recorded in one transaction.
const MAX_ATTEMPT_BATCH: usize = 256;

/// This node on the PostgreSQL store.
pub struct Clustered {
    pub pg: PgStore,
    pub node: Node,
    /// How long a claimed job's lease lasts (`settings.cluster.lease`).
    pub lease_ms: i64,
    ingests: mpsc::Sender<Queued>,
    attempts: mpsc::Sender<QueuedAttempt>,
    jobs_hint: Arc<Notify>,
    config_hint: Arc<Notify>,
    /// The nodes alive as last counted (this one included): a destination's `concurrency`
    /// is shared among them.
    live_nodes: AtomicUsize,
}

impl Clustered {
    /// Starts the ingest batcher and the hint senders; they end when this is dropped.
    pub fn start(pg: PgStore, node: Node, lease_ms: i64) -> Clustered {
        let (ingests, queue) = mpsc::channel(INGEST_QUEUE);
        tokio::spawn(batch_ingests(pg.clone(), node.id.clone(), lease_ms, queue));
        let (attempts, queue) = mpsc::channel(INGEST_QUEUE);
        tokio::spawn(batch_attempts(pg.clone(), queue));
        let jobs_hint = Arc::new(Notify::new());
        let config_hint = Arc::new(Notify::new());
        tokio::spawn(send_hints(
            pg.clone(),
            Arc::downgrade(&jobs_hint),
            JOBS_CHANNEL,
        ));
        tokio::spawn(send_hints(
            pg.clone(),
            Arc::downgrade(&config_hint),
            CONFIG_CHANNEL,
        ));
        Clustered {
            pg,
            node,
            lease_ms,
            ingests,
            attempts,
            jobs_hint,
            config_hint,
            live_nodes: AtomicUsize::new(1),
        }
    }

    /// The nodes alive as last counted, at least 1.
    pub fn live_nodes(&self) -> usize {
        self.live_nodes.load(Ordering::Relaxed).max(1)
    }

    /// Counts the nodes seen since `since` (the heartbeat does, every few seconds).
    pub async fn count_live_nodes(&self, since: crate::clock::Millis) -> Result<usize, StoreError> {
        let live = self
            .pg
            .nodes()
            .await?
            .iter()
            .filter(|n| n.seen_at.is_some_and(|at| at >= since))
            .count()
            .max(1);
        self.live_nodes.store(live, Ordering::Relaxed);
        Ok(live)
    }

    /// Commits `ingest` with the others that arrive meanwhile, in one transaction; its jobs
    /// are leased to this node. Fails fast with `Overloaded` when the queue is full.
    pub async fn ingest(&self, ingest: Ingest) -> Result<Ingested, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.ingests
            .try_send((ingest, reply))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => StoreError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => StoreError::Closed,
            })?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Records an attempt made under the lease `token`, with the others that arrive
    /// meanwhile, in one transaction. Waits for room in the queue: an outcome is never dropped.
    pub async fn record_attempt(&self, attempt: NewAttempt, token: i64) -> Outcome {
        let lease = Lease {
            node: self.node.id.clone(),
            token,
        };
        let (reply, answer) = oneshot::channel();
        self.attempts
            .send((attempt, lease, reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Tells every node, soon and once for many calls, that jobs nobody holds are due.
    pub fn hint_jobs(&self) {
        self.jobs_hint.notify_one();
    }

    /// Tells every node, soon, that config objects or pauses changed.
    pub fn hint_config(&self) {
        self.config_hint.notify_one();
    }
}

/// Takes what queued up (up to a batch) and commits it, with up to [`INGEST_COMMITS`]
/// transactions in flight.
async fn batch_ingests(
    pg: PgStore,
    node: String,
    lease_ms: i64,
    mut queue: mpsc::Receiver<Queued>,
) {
    let commits = Arc::new(Semaphore::new(INGEST_COMMITS));
    let mut batch = Vec::with_capacity(MAX_INGEST_BATCH);
    loop {
        let Ok(slot) = commits.clone().acquire_owned().await else {
            return;
        };
        if queue.recv_many(&mut batch, MAX_INGEST_BATCH).await == 0 {
            return;
        }
        let taken = std::mem::replace(&mut batch, Vec::with_capacity(MAX_INGEST_BATCH));
        let (pg, node) = (pg.clone(), node.clone());
        tokio::spawn(async move {
            let (ingests, replies): (Vec<Ingest>, Vec<_>) = taken.into_iter().unzip();
            let answers = pg.ingest_batch(&ingests, &node, lease_ms).await;
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(answer);
            }
            drop(slot);
        });
    }
}

/// Takes the attempts that queued up (up to a batch), sorted by run, and records them in one
/// transaction, with up to [`INGEST_COMMITS`] transactions in flight.
async fn batch_attempts(pg: PgStore, mut queue: mpsc::Receiver<QueuedAttempt>) {
    let commits = Arc::new(Semaphore::new(INGEST_COMMITS));
    let mut batch = Vec::with_capacity(MAX_ATTEMPT_BATCH);
    loop {
        let Ok(slot) = commits.clone().acquire_owned().await else {
            return;
        };
        if queue.recv_many(&mut batch, MAX_ATTEMPT_BATCH).await == 0 {
            return;
        }
        let mut taken = std::mem::replace(&mut batch, Vec::with_capacity(MAX_ATTEMPT_BATCH));
        taken.sort_by(|a, b| a.0.run_id.cmp(&b.0.run_id));
        let pg = pg.clone();
        tokio::spawn(async move {
            let (recorded, replies): (Vec<(NewAttempt, Lease)>, Vec<_>) =
                taken.into_iter().map(|(a, l, r)| ((a, l), r)).unzip();
            let answers = pg.record_leased_attempts(&recorded).await;
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(answer);
            }
            drop(slot);
        });
    }
}

/// Sends a hint on `channel` each time `wanted` is notified, at most every [`HINT_EVERY`].
async fn send_hints(pg: PgStore, wanted: std::sync::Weak<Notify>, channel: &'static str) {
    loop {
        let Some(notify) = wanted.upgrade() else {
            return;
        };
        // Wakes at least once a minute to see whether the node is gone.
        let asked = tokio::time::timeout(Duration::from_secs(60), notify.notified()).await;
        drop(notify);
        if asked.is_err() {
            continue;
        }
        if let Err(e) = pg.notify(channel).await {
            tracing::warn!(channel, error = %e, "could not send a hint to the other nodes; they find the work by polling");
        }
        tokio::time::sleep(HINT_EVERY).await;
    }
}

/// Work that runs on one node at a time in cluster mode (alert evaluation, retention): the node
/// that holds its lock does it; when that node dies, the next one that asks takes it over.
/// On SQLite the one process always does it.
pub struct Singleton {
    name: &'static str,
    lead: Option<super::Leadership>,
}

/// Whose turn the singleton's work is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// This node's, as before.
    Mine,
    /// This node's from now on: another node did it until now (read its state again).
    Taken,
    /// Another node's.
    Others,
}

impl Singleton {
    pub fn new(name: &'static str) -> Singleton {
        Singleton { name, lead: None }
    }

    /// Whether this node does the work now, taking the lead when nobody holds it.
    pub async fn turn(&mut self, store: &crate::store::Store) -> Turn {
        let Some(c) = store.clustered() else {
            return Turn::Mine;
        };
        if self.lead.as_ref().is_some_and(|l| l.holds()) {
            return Turn::Mine;
        }
        self.lead = match c.pg.try_lead(self.name).await {
            Ok(lead) => lead,
            Err(e) => {
                tracing::warn!(singleton = self.name, error = %e, "cannot ask for the lead");
                None
            }
        };
        match self.lead {
            Some(_) => {
                tracing::info!(node = %c.node.id, "this node leads `{}` now", self.name);
                Turn::Taken
            }
            None => Turn::Others,
        }
    }
}

//! The store: the only module that knows SQL. Events, runs, deliveries, attempts and the
//! rejected log live in one SQLite file (WAL). All writes go through one writer thread that
//! commits whatever has queued up in one transaction (group commit), then answers each caller;
//! so a caller that gets `Ok` knows its rows are on disk. Reads use their own connections;
//! callers read through `Store`'s named methods (`queries.rs`), never with SQL of their own.
//! When a write fails (a full disk, an I/O error), nothing of its transaction is acknowledged
//! and the store says it cannot write (`Store::unwritable`) until a write commits again.
//!
//! The store knows nothing of HTTP, flows or scheduling: it takes rows and gives rows.

mod checkpointer;
mod health;
mod objects;
pub mod postgres;
mod prune;
mod queries;
mod reads;
mod runs;
mod savepoint;
mod schema;
mod sync;
#[cfg(test)]
#[path = "../../tests/api/tmpfs.rs"]
mod tmpfs;
mod wal_vfs;
mod writable;
mod writer;

use crate::clock::Millis;
use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

pub use health::*;
pub use objects::*;
pub use postgres::Ingested;
pub use prune::{PruneCutoffs, PruneReport, PruneScope, Space};
pub use reads::*;
pub use runs::*;
pub use schema::WAL_RESTART_BYTES;
pub use writable::Unwritable;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the store is overloaded: the write queue is full")]
    Overloaded,
    #[error("the store has shut down")]
    Closed,
    #[error("cannot open the data directory `{path}`: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("the write was not made durable: {0}")]
    Write(String),
    /// A write asked for while the store cannot write (`Store::unwritable` says why).
    #[error("the store cannot write: {0}")]
    Unwritable(String),
    #[error("the data directory `{0}` is in use by another Ferry process")]
    InUse(String),
    #[error(transparent)]
    Postgres(#[from] postgres::PgError),
    /// The job's lease was lost (it ran out and another node took the job): nothing was
    /// written, and the outcome is that other node's to record.
    #[error("the job's lease was lost; another node holds it now")]
    LeaseLost,
}

/// Delivery states as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    Succeeded,
    Dead,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Succeeded => "succeeded",
            DeliveryStatus::Dead => "dead",
        }
    }
    pub fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "pending" => DeliveryStatus::Pending,
            "succeeded" => DeliveryStatus::Succeeded,
            "dead" => DeliveryStatus::Dead,
            other => {
                return Err(StoreError::Corrupt(format!(
                    "unknown delivery status `{other}`"
                )));
            }
        })
    }
}

pub struct NewEvent {
    pub id: String,
    pub source: String,
    pub event_type: String,
    pub idempotency_key: Option<String>,
    pub received_at: Millis,
    /// Selected request headers, as a JSON object.
    pub headers: String,
    pub payload: Bytes,
}

pub struct NewRun {
    pub id: String,
    pub flow_id: String,
    pub flow_version: String,
    /// `running`, `waiting`, `completed`, `filtered` or `failed`.
    pub status: &'static str,
    pub pc: usize,
    pub resume_pc: Option<usize>,
    pub next_at: Option<Millis>,
    pub error: Option<String>,
    /// The outputs of named steps (JSON), or `None`.
    pub context: Option<String>,
    /// The body that is the run's payload, once a transform replaced the event's.
    pub payload_body: Option<i64>,
    /// The bodies the run's steps made, each once (its payload, transform outputs, its
    /// deliveries' bodies): stored with it.
    pub bodies: Vec<Body>,
    /// The step records (a JSON array).
    pub steps: String,
}

pub struct NewDelivery {
    pub id: String,
    pub run_id: String,
    pub destination_id: String,
    /// `None` sends the event's payload as received; a body is stored with the run that made
    /// it (`NewRun::bodies`, `RunSave::bodies`) and shared by the deliveries that send it.
    pub body: Option<Body>,
}

impl NewDelivery {
    /// The job that sends this new delivery of event `event_id`, made and due at `at`: its own
    /// body, or else `event_payload`.
    pub fn job(&self, event_id: &str, at: Millis, event_payload: &Bytes) -> DeliveryJob {
        DeliveryJob {
            id: self.id.clone(),
            event_id: event_id.to_string(),
            run_id: self.run_id.clone(),
            destination_id: self.destination_id.clone(),
            created_at: at,
            round_attempts: 0,
            due_at: at,
            payload: Some(
                self.body
                    .as_ref()
                    .map_or_else(|| event_payload.clone(), |b| b.data.clone()),
            ),
            lease: None,
        }
    }
}

/// A body in the store's `bodies`: made by a run's step, stored once, referenced by id.
#[derive(Debug, Clone)]
pub struct Body {
    pub id: i64,
    /// JSON text.
    pub data: Bytes,
}

/// Hands out ids for new bodies before the write that stores them, so that a run's step
/// records and its deliveries can name a body in the same write. Starts past every id the
/// store has held ([`Store::body_ids`]); ids are never reused.
#[derive(Debug)]
pub struct BodyIds(std::sync::atomic::AtomicI64);

impl BodyIds {
    pub fn starting_at(first: i64) -> BodyIds {
        BodyIds(std::sync::atomic::AtomicI64::new(first))
    }

    pub fn next(&self) -> i64 {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

/// A run's new state, written by the run worker after a step.
pub struct RunSave {
    pub id: String,
    pub event_id: String,
    /// The status the run must still have for the save to apply (`running`).
    pub expect_status: &'static str,
    pub status: &'static str,
    pub pc: usize,
    pub resume_pc: Option<usize>,
    pub next_at: Option<Millis>,
    pub step_attempts: u32,
    pub error: Option<String>,
    pub context: Option<String>,
    pub payload_body: Option<i64>,
    /// Bodies the step made that were not stored before.
    pub bodies: Vec<Body>,
    pub steps: String,
    pub now: Millis,
    /// The lease the step was performed under (PostgreSQL): the save applies only while the
    /// run's job still carries its token.
    pub lease: Option<i64>,
}

/// One attempt of an http step, recorded with the run's new state.
pub struct NewStepAttempt {
    /// `<run id>/<step index>`.
    pub job_id: String,
    pub started_at: Millis,
    pub duration_ms: i64,
    pub status_code: Option<u16>,
    pub response_headers: Option<String>,
    pub response_body: Option<Vec<u8>>,
    pub error: Option<String>,
    pub outcome: &'static str,
}

/// How to restart a failed run, decided by the caller from the flow.
pub struct RunReplay {
    pub run_id: String,
    pub now: Millis,
    /// Where to restart and with which flow version (the same, or the current one).
    pub pc: usize,
    pub resume_pc: Option<usize>,
    pub flow_version: String,
    /// The step at `pc` delivers: put its dead deliveries back instead of running it again.
    pub retry_dead_deliveries: bool,
}

pub enum ReplayOutcome {
    NotFound,
    /// The run is not failed; its status.
    NotFailed(String),
    /// The run's event lost its bodies to `settings.payload_retention`: nothing to run on.
    PayloadExpired,
    /// Dead deliveries put back (the run waits for them), or the run is due now.
    Resumed {
        deliveries: Vec<DeliveryJob>,
        run_due: bool,
    },
}

#[derive(Debug, PartialEq, Eq)]
pub enum IngestOutcome {
    Accepted,
    /// The idempotency key was seen before: the first event's id. Nothing was written.
    Duplicate {
        event_id: String,
    },
}

/// What one attempt did, as recorded.
pub struct NewAttempt {
    pub delivery_id: String,
    /// The delivery's event and run, so that the writer need not look them up.
    pub event_id: String,
    pub run_id: String,
    pub destination_id: String,
    pub started_at: Millis,
    /// When the outcome was known, on the same clock as `started_at` (what the delivery's
    /// `updated_at` and a run it settles take as "now").
    pub finished_at: Millis,
    pub duration_ms: i64,
    pub status_code: Option<u16>,
    /// JSON object of response headers.
    pub response_headers: Option<String>,
    pub response_body: Option<Vec<u8>>,
    pub error: Option<String>,
    /// `succeeded`, `retry` or `failed` (permanent).
    pub outcome: &'static str,
    /// The delivery's state after this attempt.
    pub next: AttemptNext,
    /// The lease the attempt was made under (PostgreSQL): the outcome is recorded only while
    /// the job still carries its token.
    pub lease: Option<i64>,
}

#[derive(Debug, Clone, Copy)]
pub enum AttemptNext {
    Succeeded,
    RetryAt(Millis),
    Dead,
}

/// A delivery that has to be attempted: what the scheduler holds.
#[derive(Debug, Clone)]
pub struct DeliveryJob {
    pub id: String,
    pub event_id: String,
    pub run_id: String,
    pub destination_id: String,
    /// When the delivery was created (for the event's first deliveries, its arrival).
    pub created_at: Millis,
    /// Attempts made in the current round (a manual retry starts a new round).
    pub round_attempts: u32,
    pub due_at: Millis,
    /// The body, when it is at hand; otherwise it is read from the store before sending.
    pub payload: Option<Bytes>,
    /// On PostgreSQL, the token of the lease under which this node holds the job: only a job
    /// held under a lease is attempted there. `None` on SQLite, where one process owns all.
    pub lease: Option<i64>,
}

pub struct Rejection {
    pub source: String,
    pub received_at: Millis,
    pub status: u16,
    pub error: String,
    pub reason: String,
    /// The start of the refused body (shared, so that a caller can count its memory until
    /// the writer is done with it).
    pub body: Bytes,
}

pub(crate) enum WriteOp {
    Ingest {
        event: NewEvent,
        runs: Vec<NewRun>,
        deliveries: Vec<NewDelivery>,
        reply: oneshot::Sender<Result<IngestOutcome, StoreError>>,
    },
    Attempt {
        attempt: NewAttempt,
        reply: oneshot::Sender<Result<Option<Settled>, StoreError>>,
    },
    Reject {
        rejection: Rejection,
    },
    Retry {
        delivery_id: String,
        now: Millis,
        reply: oneshot::Sender<Result<Option<DeliveryJob>, StoreError>>,
    },
    SaveRun {
        save: RunSave,
        deliveries: Vec<NewDelivery>,
        attempt: Option<NewStepAttempt>,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
    /// More runs of a stored event: `false` when it is gone or its payload expired.
    AddRuns {
        event_id: String,
        now: Millis,
        runs: Vec<NewRun>,
        deliveries: Vec<NewDelivery>,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
    ReplayRun {
        replay: RunReplay,
        reply: oneshot::Sender<Result<ReplayOutcome, StoreError>>,
    },
    /// `pause: None` resumes.
    SetPaused {
        destination_id: String,
        pause: Option<Pause>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    SaveAlert {
        state: AlertState,
        change: Option<AlertChange>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    SaveSourceState {
        source: String,
        state: String,
        at: Millis,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    CreateToken {
        token: NewToken,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    RevokeToken {
        id: String,
        now: Millis,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
    ConfigChange {
        change: ConfigChange,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Config objects whose secrets were sealed again (`ferry secrets rotate`): all or none.
    Reseal {
        updates: Vec<Resealed>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Retention (`prune`): one small batch of events.
    PruneEvents {
        scope: PruneScope,
        cutoffs: PruneCutoffs,
        reply: oneshot::Sender<Result<PruneReport, StoreError>>,
    },
    /// Retention: up to `max` entries of the rejected log received before `before`.
    PruneRejections {
        before: Millis,
        max: usize,
        reply: oneshot::Sender<Result<usize, StoreError>>,
    },
    /// Gives up to `pages` free pages back to the file system.
    Vacuum {
        pages: u32,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// An API token to keep: its SHA-256, never the token itself.
pub struct NewToken {
    pub id: String,
    pub name: String,
    /// `admin` or `read`.
    pub scope: String,
    pub hash: Vec<u8>,
    pub created_at: Millis,
}

/// A waiting run whose last pending delivery just finished.
#[derive(Debug, Clone)]
pub struct Settled {
    pub run_id: String,
    pub flow_id: String,
    /// `completed`, `failed`, or `running` (due to go on at its next step).
    pub status: &'static str,
    pub error: Option<String>,
}

/// The error of a run whose deliveries to `dead` (destination ids) were dead-lettered.
pub(crate) fn dead_deliveries_error(dead: &[String]) -> String {
    format!(
        "the deliver step failed: the deliver{} to {} {} dead-lettered",
        if dead.len() == 1 { "y" } else { "ies" },
        dead.iter()
            .map(|d| format!("`{d}`"))
            .collect::<Vec<_>>()
            .join(", "),
        if dead.len() == 1 { "was" } else { "were" }
    )
}

/// A change of an alert rule's state (it fired, or resolved) with the notices it sent, for
/// the rule's history.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct AlertChange {
    pub alert_id: String,
    #[serde(skip)]
    pub at: Millis,
    pub firing: bool,
    pub subject: String,
    pub message: String,
    /// One per channel notified (none within the cooldown).
    pub notices: Vec<NoticeSent>,
}

/// A notice to one channel: sent, or why not.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct NoticeSent {
    pub channel: String,
    pub error: Option<String>,
}

/// Changes kept per alert rule.
pub const ALERT_HISTORY_KEPT: i64 = 100;

/// An alert rule's state as stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AlertState {
    pub alert_id: String,
    pub firing: bool,
    /// When it started firing (or stopped).
    pub since: Millis,
    /// What is wrong (or was, once resolved).
    pub message: String,
    /// `destination crm`, `source shop`, or `store`.
    pub subject: String,
    pub last_notice_at: Option<Millis>,
    /// Whether the current firing was announced (a firing within the cooldown is not, and
    /// neither is its resolution).
    pub notified: bool,
}

/// Tuning for the store; the defaults are what `ferry serve` uses.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Ops waiting for the writer; past this, writes answer `Overloaded`.
    pub write_queue: usize,
    /// Most ops in one transaction.
    pub max_batch: usize,
    pub rejected_log_size: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            write_queue: 8192,
            max_batch: 1024,
            rejected_log_size: crate::config::DEFAULT_REJECTED_LOG_SIZE,
        }
    }
}

/// A cheap handle to the store. Clones share the backend: the SQLite writer and read
/// connections, or the PostgreSQL pool and this node's place in the cluster.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    body_ids: Arc<BodyIds>,
}

#[derive(Clone)]
enum Backend {
    Sqlite(Sqlite),
    Postgres(Arc<postgres::Clustered>),
}

#[derive(Clone)]
struct Sqlite {
    writer: mpsc::Sender<WriteOp>,
    readers: Arc<ReadPool>,
    writability: Arc<writable::Writability>,
}

struct ReadPool {
    path: PathBuf,
    // A std mutex: held only to pop or push a connection, never across an await.
    idle: Mutex<Vec<rusqlite::Connection>>,
}

/// Makes the data directory (mode 0700) with its parents: only Ferry's user may list it or
/// reach its files. An existing one that others may read is set to 0700 when it holds nothing
/// but Ferry's files; one that holds other files too (`--data .`) keeps its mode, with a warning.
fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        builder.mode(0o700);
        builder.create(dir)?;
        if std::fs::metadata(dir)?.permissions().mode() & 0o077 == 0 {
            return Ok(());
        }
        let mut only_ferrys = true;
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            only_ferrys &= ["ferry.db", "ferry.lock", "api-token", "secret.key"]
                .iter()
                .any(|own| name.starts_with(own));
        }
        if only_ferrys {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        } else {
            tracing::warn!(dir = %dir.display(), "the data directory is open to other users and holds other files than Ferry's; its mode is left as it is: make it 0700 (chmod 700)");
        }
    }
    #[cfg(not(unix))]
    builder.create(dir)?;
    Ok(())
}

/// Creates the database file `db` with mode 0600 when it does not exist (SQLite gives its WAL
/// and shared memory files the database file's mode), and sets every file already in the data
/// directory (a database, WAL or key file of an earlier start) to 0600.
fn make_files_private(dir: &Path, db: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(db)?;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_file() && meta.permissions().mode() & 0o077 != 0 {
                std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o600))?;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (dir, db);
    Ok(())
}

/// Takes the data directory's lock file (an OS file lock, released when the process ends, even
/// by SIGKILL). A second process on the same data would own every pending delivery too and
/// send each one twice. Waits up to 3 s so a process restarting on the same directory (or a
/// test restarting in-process) can take over from one that is stopping.
fn lock_data_dir(dir: &Path) -> Result<std::fs::File, StoreError> {
    let path = dir.join("ferry.lock");
    let mut options = std::fs::OpenOptions::new();
    options.create(true).truncate(false).write(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(&path).map_err(|source| StoreError::DataDir {
        path: path.display().to_string(),
        source,
    })?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::InUse(dir.display().to_string()));
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(StoreError::DataDir {
                    path: path.display().to_string(),
                    source,
                });
            }
        }
    }
}

impl Store {
    /// Opens (creating if needed) `ferry.db` in `dir` and starts the writer thread. The thread
    /// ends when every handle is dropped. The store's threads report failed writes and
    /// checkpoints to `metrics` (through `telemetry::events`).
    pub fn open(
        dir: &Path,
        options: StoreOptions,
        metrics: Arc<crate::telemetry::Metrics>,
    ) -> Result<Store, StoreError> {
        let dir_error = |source| StoreError::DataDir {
            path: dir.display().to_string(),
            source,
        };
        make_private_dir(dir).map_err(dir_error)?;
        let lock = lock_data_dir(dir)?;
        let path = dir.join("ferry.db");
        make_files_private(dir, &path).map_err(dir_error)?;
        let conn = schema::open_writer(&path)?;
        let body_ids = Arc::new(BodyIds::starting_at(schema::next_body_id(&conn)?));
        let checkpoint_conn = schema::open_checkpointer(&path)?;
        let writability = Arc::new(writable::Writability::default());
        let checkpointer = checkpointer::Checkpointer {
            db_path: path.clone(),
            writability: writability.clone(),
            metrics: metrics.clone(),
        };
        let writer_context = writer::WriterContext {
            path: path.clone(),
            writability: writability.clone(),
            metrics,
        };
        let (tx, rx) = mpsc::channel(options.write_queue);
        let (stop_checkpoints, checkpoints_stopped) = std::sync::mpsc::channel();
        let spawn_failed = |source| StoreError::DataDir {
            path: dir.display().to_string(),
            source,
        };
        std::thread::Builder::new()
            .name("ferry-store-checkpoint".into())
            .spawn(move || checkpointer.run(checkpoint_conn, checkpoints_stopped))
            .map_err(spawn_failed)?;
        std::thread::Builder::new()
            .name("ferry-store-writer".into())
            .spawn(move || {
                writer::run(conn, rx, options, writer_context, stop_checkpoints);
                drop(lock);
            })
            .map_err(spawn_failed)?;
        Ok(Store {
            backend: Backend::Sqlite(Sqlite {
                writer: tx,
                readers: Arc::new(ReadPool {
                    path,
                    idle: Mutex::new(Vec::new()),
                }),
                writability,
            }),
            body_ids,
        })
    }

    /// The store of a cluster node on PostgreSQL: `clustered` holds the pool and the node's
    /// place in the cluster. Body ids come from the node's own range.
    pub fn postgres(clustered: postgres::Clustered) -> Store {
        let first = clustered.node.first_body_id();
        Store {
            backend: Backend::Postgres(Arc::new(clustered)),
            body_ids: Arc::new(BodyIds::starting_at(first)),
        }
    }

    /// The cluster node's store on PostgreSQL; `None` on SQLite.
    pub fn clustered(&self) -> Option<&Arc<postgres::Clustered>> {
        match &self.backend {
            Backend::Postgres(c) => Some(c),
            Backend::Sqlite(_) => None,
        }
    }

    fn sqlite(&self) -> Result<&Sqlite, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => Ok(s),
            Backend::Postgres(_) => Err(StoreError::Corrupt(
                "a SQLite operation was asked of the PostgreSQL store".into(),
            )),
        }
    }

    /// Ids for the bodies of writes to come.
    pub fn body_ids(&self) -> &BodyIds {
        &self.body_ids
    }

    /// Why the store cannot write, while it cannot: a write failed (a full disk, an I/O error)
    /// and none has committed since. Writes asked for meanwhile are refused at once.
    pub fn unwritable(&self) -> Option<Unwritable> {
        match &self.backend {
            Backend::Sqlite(s) => s.writability.get(),
            // A failed write on PostgreSQL is the server's to recover from: each write says so.
            Backend::Postgres(_) => None,
        }
    }

    /// `Unwritable` while the store cannot write (checked before a write is queued).
    fn check_writable(&self) -> Result<(), StoreError> {
        match self.unwritable() {
            Some(u) => Err(StoreError::Unwritable(u.reason)),
            None => Ok(()),
        }
    }

    /// Sends a write and waits for its answer; waits for room in the queue.
    async fn ask<T>(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> WriteOp,
    ) -> Result<T, StoreError> {
        self.check_writable()?;
        let (reply, rx) = oneshot::channel();
        self.sqlite()?
            .writer
            .send(op(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    fn submit(&self, op: WriteOp) -> Result<(), StoreError> {
        self.check_writable()?;
        self.sqlite()?.writer.try_send(op).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StoreError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => StoreError::Closed,
        })
    }

    /// Commits an event with its runs and deliveries in one transaction, or reports the
    /// earlier event with the same idempotency key. Fails fast with `Overloaded` when the
    /// write queue is full, and with `Unwritable` while the store cannot write.
    pub async fn ingest(
        &self,
        event: NewEvent,
        runs: Vec<NewRun>,
        deliveries: Vec<NewDelivery>,
    ) -> Result<IngestOutcome, StoreError> {
        Ok(self.ingest_leased(event, runs, deliveries).await?.outcome)
    }

    /// [`Store::ingest`], answering also the leases of the new deliveries' jobs (on
    /// PostgreSQL they are leased to this node, which goes on to attempt them; none on
    /// SQLite).
    pub async fn ingest_leased(
        &self,
        event: NewEvent,
        runs: Vec<NewRun>,
        deliveries: Vec<NewDelivery>,
    ) -> Result<Ingested, StoreError> {
        if let Backend::Postgres(c) = &self.backend {
            return c
                .ingest(postgres::Ingest {
                    event,
                    runs,
                    deliveries,
                })
                .await;
        }
        let (reply, rx) = oneshot::channel();
        self.submit(WriteOp::Ingest {
            event,
            runs,
            deliveries,
            reply,
        })?;
        let outcome = rx.await.map_err(|_| StoreError::Closed)??;
        Ok(Ingested {
            outcome,
            leases: Vec::new(),
        })
    }

    /// Saves a run's new state after a step, with the deliveries it created and the http
    /// attempt it made, in one transaction. `Ok(false)` when the run no longer had the
    /// expected status (nothing was written).
    pub async fn save_run(
        &self,
        save: RunSave,
        deliveries: Vec<NewDelivery>,
        attempt: Option<NewStepAttempt>,
    ) -> Result<bool, StoreError> {
        if let Backend::Postgres(c) = &self.backend {
            return c.pg.save_run(save, deliveries, attempt).await;
        }
        self.ask(|reply| WriteOp::SaveRun {
            save,
            deliveries,
            attempt,
            reply,
        })
        .await
    }

    /// Pauses (`Some`) or resumes (`None`) a destination, durably.
    pub async fn set_paused(
        &self,
        destination_id: &str,
        pause: Option<Pause>,
    ) -> Result<(), StoreError> {
        if let Backend::Postgres(c) = &self.backend {
            return c.pg.set_paused(destination_id, pause).await;
        }
        self.ask(|reply| WriteOp::SetPaused {
            destination_id: destination_id.to_string(),
            pause,
            reply,
        })
        .await
    }

    pub async fn save_alert(
        &self,
        state: AlertState,
        change: Option<AlertChange>,
    ) -> Result<(), StoreError> {
        if let Backend::Postgres(c) = &self.backend {
            return c.pg.save_alert(state, change).await;
        }
        self.ask(|reply| WriteOp::SaveAlert {
            state,
            change,
            reply,
        })
        .await
    }

    /// Keeps what a polling source needs at its next poll (JSON), replacing what it kept.
    pub async fn save_source_state(
        &self,
        source: &str,
        state: String,
        at: Millis,
    ) -> Result<(), StoreError> {
        let source = source.to_string();
        if let Backend::Postgres(c) = &self.backend {
            return c.pg.save_source_state(source, state, at).await;
        }
        self.ask(|reply| WriteOp::SaveSourceState {
            source,
            state,
            at,
            reply,
        })
        .await
    }

    pub async fn create_token(&self, token: NewToken) -> Result<(), StoreError> {
        if let Backend::Postgres(c) = &self.backend {
            return c.pg.create_token(token).await;
        }
        self.ask(|reply| WriteOp::CreateToken { token, reply })
            .await
    }

    /// Commits a change of the API's config objects and event type schemas.
    pub async fn change_config(&self, change: ConfigChange) -> Result<(), StoreError> {
        if let Backend::Postgres(c) = &self.backend {
            return c.pg.change_config(change).await;
        }
        self.ask(|reply| WriteOp::ConfigChange { change, reply })
            .await
    }

    /// Replaces the specs of config objects with their secrets sealed again, all in one
    /// transaction, or none when one of them is no longer as read.
    pub async fn reseal(&self, updates: Vec<Resealed>) -> Result<(), StoreError> {
        if let Backend::Postgres(c) = &self.backend {
            return c.pg.reseal(updates).await;
        }
        self.ask(|reply| WriteOp::Reseal { updates, reply }).await
    }

    /// Revokes a token; `Ok(false)` when there is no such live token.
    pub async fn revoke_token(&self, id: &str, now: Millis) -> Result<bool, StoreError> {
        if let Backend::Postgres(c) = &self.backend {
            return c.pg.revoke_token(id, now).await;
        }
        self.ask(|reply| WriteOp::RevokeToken {
            id: id.to_string(),
            now,
            reply,
        })
        .await
    }

    /// Adds the runs (and their deliveries) of a replay of the whole stored event
    /// `event_id`, in one transaction: `Ok(false)` when the event is gone or its payload
    /// expired.
    pub async fn add_runs(
        &self,
        event_id: &str,
        now: Millis,
        runs: Vec<NewRun>,
        deliveries: Vec<NewDelivery>,
    ) -> Result<bool, StoreError> {
        if let Backend::Postgres(c) = &self.backend {
            return c.pg.add_runs(event_id, now, runs, deliveries).await;
        }
        self.ask(|reply| WriteOp::AddRuns {
            event_id: event_id.to_string(),
            now,
            runs,
            deliveries,
            reply,
        })
        .await
    }

    /// Restarts a failed run as `replay` says.
    pub async fn replay_run(&self, replay: RunReplay) -> Result<ReplayOutcome, StoreError> {
        if let Backend::Postgres(c) = &self.backend {
            return c.pg.replay_run(replay).await;
        }
        self.ask(|reply| WriteOp::ReplayRun { replay, reply }).await
    }

    /// Records an attempt and the delivery's new state. Waits for room in the queue: an
    /// outcome is never dropped. When the delivery was the last one a waiting run needed and
    /// the run goes on to another step, answers that run's id.
    pub async fn record_attempt(&self, attempt: NewAttempt) -> Result<Option<Settled>, StoreError> {
        if let Backend::Postgres(c) = &self.backend {
            let Some(token) = attempt.lease else {
                return Err(StoreError::LeaseLost);
            };
            return match c.record_attempt(attempt, token).await? {
                postgres::Fenced::Recorded(settled) => Ok(settled),
                postgres::Fenced::LeaseLost => Err(StoreError::LeaseLost),
            };
        }
        self.ask(|reply| WriteOp::Attempt { attempt, reply }).await
    }

    /// Adds to the rejected log. Best effort: dropped when the write queue is full or the
    /// store cannot write.
    pub fn record_rejection(&self, rejection: Rejection) {
        if let Backend::Postgres(c) = &self.backend {
            return c.pg.record_rejection(rejection);
        }
        if let Err(e) = self.submit(WriteOp::Reject { rejection }) {
            tracing::warn!(error = %e, "rejected log entry dropped");
        }
    }

    /// Puts a dead delivery back to pending with a fresh round of attempts, due `now`.
    /// `Ok(None)` when there is no such delivery or it is not dead.
    pub async fn retry_delivery(
        &self,
        delivery_id: &str,
        now: Millis,
    ) -> Result<Option<DeliveryJob>, StoreError> {
        if let Backend::Postgres(c) = &self.backend {
            return c.pg.retry_delivery(delivery_id, now).await;
        }
        self.ask(|reply| WriteOp::Retry {
            delivery_id: delivery_id.to_string(),
            now,
            reply,
        })
        .await
    }

    /// Runs `f` on a read connection, off the async threads. Only the store's named reads
    /// (`queries.rs`) call it: nothing outside `store/` hands it SQL.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let pool = self.sqlite()?.readers.clone();
        tokio::task::spawn_blocking(move || {
            let conn = match pool.idle.lock().unwrap_or_else(|e| e.into_inner()).pop() {
                Some(c) => c,
                None => schema::open_reader(&pool.path)?,
            };
            let result = f(&conn);
            let mut idle = pool.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < 8 {
                idle.push(conn);
            }
            result
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }
}

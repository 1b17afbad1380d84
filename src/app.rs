//! Wiring: builds the shared state (config, store, deliverer, clock, API token, the key of the
//! stored secrets) and serves every route on one listener. `run(listener, options, shutdown)`
//! is the seam that `main`, the demo, the benchmark and the tests all start Ferry through.

use crate::clock::SharedClock;
use crate::config::{Config, LiveConfig};
use crate::deliver::runs::{RunWaker, RunWorkerParts};
use crate::deliver::{Deliverer, DelivererOptions};
use crate::egress::EgressClient;
use crate::engine::sandbox::{Sandbox, WorkerCommand};
use crate::store::{Store, StoreOptions};
use axum::Router;
use axum::routing::post;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;

pub use crate::state::{AppParts, AppState};

pub struct ServeOptions {
    pub config: Config,
    pub data_dir: PathBuf,
    /// The API token; when `None`, one is read from (or created in) the data directory.
    pub api_token: Option<String>,
    /// The key that seals the stored secrets (`FERRY_SECRET_KEY`); when `None`, the key file
    /// of the data directory (made at the first start).
    pub secret_key: Option<crate::secrets::SecretKey>,
    pub clock: SharedClock,
    pub deliverer: DelivererOptions,
    pub store: StoreOptions,
    /// The program expression workers are started from; `None` is this binary
    /// (`ferry expr-worker`). Tests, whose binary is not Ferry's, name Ferry's.
    pub expression_worker: Option<WorkerCommand>,
    /// Cluster mode: the PostgreSQL store (`--database-url`) instead of SQLite in `data_dir`.
    /// The API token and the secret key must then be given (every node needs the same).
    pub database_url: Option<String>,
    /// Cluster mode: this node's name in `ferry_nodes` and on its leases; by default the
    /// host's name and the process id.
    pub node_id: Option<String>,
}

impl ServeOptions {
    pub fn new(config: Config, data_dir: PathBuf) -> Self {
        let store = StoreOptions {
            rejected_log_size: config.settings.rejected_log_size,
            ..StoreOptions::default()
        };
        let deliverer = DelivererOptions {
            payload_bytes: config.settings.memory.delivery_bytes,
            ..DelivererOptions::default()
        };
        ServeOptions {
            config,
            data_dir,
            api_token: None,
            secret_key: None,
            clock: Arc::new(crate::clock::SystemClock),
            deliverer,
            store,
            expression_worker: None,
            database_url: None,
            node_id: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("API token file `{path}`: {source}")]
    TokenFile {
        path: String,
        source: std::io::Error,
    },
    #[error("opening the store did not finish: {0}")]
    OpenTask(String),
    #[error(transparent)]
    Secrets(#[from] crate::secrets::UnlockError),
    #[error("the objects made through the API no longer fit the config file:\n{0}")]
    ApiObjects(crate::config::ConfigErrors),
    #[error("the expression workers: {0}")]
    Expressions(String),
    #[error("{0}")]
    Config(crate::config::ConfigErrors),
    /// Cluster mode needs what every node must share given to each (there is no data
    /// directory to keep it in).
    #[error("with --database-url, {0} must be set: every node of a cluster needs the same one")]
    ClusterNeeds(&'static str),
}

/// This host's name and this process's id: a node's default name in the cluster.
fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into());
    format!("{host}-{}", std::process::id())
}

/// Cluster mode: connects to PostgreSQL (migrating the schema, once for nodes starting
/// together), joins the cluster as this node and starts its store.
async fn open_cluster_store(url: &str, options: &ServeOptions) -> Result<Store, ServeError> {
    if options.api_token.is_none() {
        return Err(ServeError::ClusterNeeds("FERRY_API_TOKEN"));
    }
    if options.secret_key.is_none() {
        return Err(ServeError::ClusterNeeds(crate::secrets::KEY_ENV));
    }
    let id = options.node_id.clone().unwrap_or_else(default_node_id);
    // Checked before connecting: a wrong name is the command line's mistake.
    crate::store::postgres::check_node_id(&id)?;
    let pg = crate::store::postgres::PgStore::connect(
        url,
        crate::store::postgres::PgOptions {
            rejected_log_size: options.store.rejected_log_size,
            ..Default::default()
        },
    )
    .await?;
    let now = options.clock.now_ms();
    let node = pg.join(&id, now).await?;
    // What an earlier start of this node held is this node's to do again, at once.
    let released = pg.release_leases_of(&node.id).await?;
    if released > 0 {
        tracing::info!(
            released,
            "took back the jobs an earlier start of this node held"
        );
    }
    let lease_ms = options.config.settings.lease.as_millis() as i64;
    tracing::info!(node = %node.id, number = node.number, lease_ms, "joined the cluster");
    let clustered = crate::store::postgres::Clustered::start(pg, node, lease_ms);
    clustered
        .count_live_nodes(now - crate::store::postgres::LIVE_WITHIN.as_millis() as i64)
        .await?;
    Ok(Store::postgres(clustered))
}

/// The file's config merged with the objects made through the API (their secrets opened
/// with the key, which is found or made here), and every event type's schema recorded as a
/// version when it is new.
async fn with_api_objects(
    store: &Store,
    data_dir: &Path,
    secret_key: Option<crate::secrets::SecretKey>,
    file_config: Config,
    now: i64,
) -> Result<(Config, crate::secrets::Sealer), ServeError> {
    let stored = store.api_objects().await?;
    let dir = data_dir.to_path_buf();
    let (sealer, objects) =
        tokio::task::spawn_blocking(move || crate::secrets::unlock(&dir, secret_key, stored))
            .await
            .map_err(|e| ServeError::OpenTask(e.to_string()))??;
    let config = if objects.is_empty() {
        file_config
    } else {
        crate::config::build(&file_config.file, &objects).map_err(ServeError::ApiObjects)?
    };
    store
        .change_config(crate::store::ConfigChange {
            object: None,
            schemas: crate::api::config_objects::schemas(&config, None),
            now,
        })
        .await?;
    Ok((config, sealer))
}

/// Opens the store, resumes pending deliveries and returns the state to serve.
pub async fn prepare(options: ServeOptions) -> Result<AppState, ServeError> {
    // Opening does blocking file I/O (and may wait for the data directory's lock).
    let metrics = Arc::new(crate::telemetry::Metrics::new());
    let (dir, store_options, store_metrics) = (
        options.data_dir.clone(),
        options.store.clone(),
        metrics.clone(),
    );
    let store = match &options.database_url {
        Some(url) => open_cluster_store(url, &options).await?,
        None => {
            tokio::task::spawn_blocking(move || Store::open(&dir, store_options, store_metrics))
                .await
                .map_err(|e| ServeError::OpenTask(e.to_string()))??
        }
    };
    let key_for_follower = options.secret_key.clone();
    let api_token = match options.api_token {
        Some(t) => t,
        None => token_from_data_dir(&options.data_dir)?,
    };
    let command = match options.expression_worker {
        Some(c) => c,
        None => WorkerCommand::current_exe().map_err(ServeError::Expressions)?,
    };
    let sandbox = Sandbox::new(command, options.config.settings.expressions.clone());
    sandbox
        .start()
        .await
        .map_err(|e| ServeError::Expressions(e.to_string()))?;
    let (config, sealer) = with_api_objects(
        &store,
        &options.data_dir,
        options.secret_key,
        options.config,
        options.clock.now_ms(),
    )
    .await?;
    let mut config = config;
    sandbox
        .check_config(&mut config)
        .await
        .map_err(ServeError::Config)?;
    let config = Arc::new(config);
    let live = LiveConfig::new(config.clone());
    // Settings come from the config file only: the egress policy is fixed for the process.
    let client = EgressClient::new(config.settings.egress.clone())?;
    let (waker, wakes) = RunWaker::channel();
    let jitter_seed = options.deliverer.jitter_seed;
    let deliverer = Deliverer::start(
        config.clone(),
        store.clone(),
        options.clock.clone(),
        client.clone(),
        options.deliverer,
        waker.downgrade(),
        metrics.clone(),
    )
    .await?;
    crate::deliver::runs::start(RunWorkerParts {
        config: live.clone(),
        store: store.clone(),
        clock: options.clock.clone(),
        client,
        deliverer: deliverer.clone(),
        sandbox: sandbox.clone(),
        waker: waker.clone(),
        wakes,
        jitter_seed,
        metrics: metrics.clone(),
    })
    .await?;
    let seen = store.last_event_per_source().await?;
    let seen_by_schedules = seen.clone();
    let activity = Arc::new(crate::alerts::SourceActivity::new(
        &config,
        seen,
        options.clock.now_ms(),
    ));
    let (alive, alive_rx) = tokio::sync::watch::channel(());
    let config_changes = Arc::new(tokio::sync::Mutex::new(()));
    let alerts = crate::alerts::start(crate::alerts::AlertParts {
        config: live.clone(),
        store: store.clone(),
        clock: options.clock.clone(),
        deliverer: deliverer.clone(),
        activity: activity.clone(),
        metrics: metrics.clone(),
        client: EgressClient::new(config.settings.egress.clone())?,
        alive: alive_rx,
    })
    .await?;
    let pruner = crate::retention::start(crate::retention::RetentionParts {
        store: store.clone(),
        clock: options.clock.clone(),
        metrics: metrics.clone(),
        limits: config.settings.retention.clone(),
        alive: alive.subscribe(),
    });
    if let Some(key) = key_for_follower.filter(|_| store.clustered().is_some()) {
        crate::cluster::start(crate::cluster::Follower {
            config: live.clone(),
            config_changes: config_changes.clone(),
            store: store.clone(),
            deliverer: deliverer.clone(),
            sandbox: sandbox.clone(),
            activity: activity.clone(),
            clock: options.clock.clone(),
            key,
            alive: alive.subscribe(),
        });
    }
    // Loading and checking a large config freed far more than the config keeps.
    crate::memory::give_back_freed();
    let state = AppState::new(AppParts {
        config: live,
        config_changes,
        store,
        deliverer,
        clock: options.clock,
        api_token: api_token.into(),
        sandbox,
        runs: waker,
        metrics,
        activity,
        alive: Arc::new(alive),
        alerts,
        ingest_budget: crate::memory::Budget::new(config.settings.memory.ingest_bytes),
        sealer,
        pruner,
        tail: Default::default(),
    });
    crate::ingest::schedule::start(state.clone(), seen_by_schedules);
    crate::ingest::poll::start(&state, EgressClient::new(config.settings.egress.clone())?);
    Ok(state)
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/in/{source}",
            post(crate::ingest::receive).options(crate::ingest::abuse_check),
        )
        .merge(crate::api::routes(state.clone()))
        .merge(crate::console::routes(Arc::new(
            crate::console::session::Sessions::default(),
        )))
        .with_state(state)
}

/// Serves until `shutdown` resolves, then stops taking requests and lets in-flight ones end,
/// then stops the deliverer and the run worker gracefully (`settings.shutdown_grace`).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let limits = state.config.get().settings.connections.clone();
    let (deliverer, grace) = (
        state.deliverer.clone(),
        state.config.get().settings.shutdown_grace,
    );
    // At the signal, as the listener stops: no attempt or run step starts any more, and the
    // grace for those in flight counts from now, while the requests in progress are answered.
    let (signalled, on_signal) = tokio::sync::oneshot::channel::<()>();
    let drain = tokio::spawn(async move {
        let _ = on_signal.await;
        deliverer.stop(grace).await
    });
    // Open live tails would hold the stop up: they end as it begins.
    let tail = state.tail.clone();
    let shutdown = async move {
        shutdown.await;
        tail.close();
        let _ = signalled.send(());
    };
    crate::server::serve(listener, router(state), limits, shutdown).await;
    let left = drain.await.unwrap_or(0);
    crate::telemetry::events::stopped(left, grace);
    Ok(())
}

pub async fn run(
    listener: TcpListener,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let state = prepare(options).await?;
    serve(listener, state, shutdown).await
}

/// Where the generated API token is kept.
pub fn token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("api-token")
}

fn token_from_data_dir(data_dir: &Path) -> Result<String, ServeError> {
    let path = token_path(data_dir);
    let fail = |source| ServeError::TokenFile {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e)),
    }
    let token = crate::ids::random_token("fry_").map_err(fail)?;
    write_private(&path, &token).map_err(fail)?;
    tracing::info!(path = %path.display(), "generated an API token; it is in this file");
    Ok(token)
}

fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(content.as_bytes())?;
    file.sync_all()
}

//! The state every handler reaches ([`AppState`]): the handles of the running config, the
//! store, the deliverer, the expression workers and the rest, built by `app::prepare`. Below the
//! handlers (`api`, `ingest`) and the wiring (`app`), which all look down at it.

use crate::clock::SharedClock;
use crate::config::LiveConfig;
use crate::deliver::Deliverer;
use crate::deliver::runs::RunWaker;
use crate::engine::sandbox::Sandbox;
use crate::store::Store;
use std::sync::Arc;

/// What every handler can reach: one `Arc`, so that a request's copy is one counter bump
/// rather than one per handle (axum clones the state for every request).
#[derive(Clone)]
pub struct AppState(Arc<AppParts>);

impl AppState {
    pub fn new(parts: AppParts) -> AppState {
        AppState(Arc::new(parts))
    }

    /// A handle that does not keep the state alive: for a task that runs as long as the state
    /// does (its `alive` ends when the last `AppState` goes).
    pub fn downgrade(&self) -> WeakAppState {
        WeakAppState(Arc::downgrade(&self.0))
    }
}

/// An [`AppState`] that does not keep it alive.
#[derive(Clone)]
pub struct WeakAppState(std::sync::Weak<AppParts>);

impl WeakAppState {
    pub fn upgrade(&self) -> Option<AppState> {
        self.0.upgrade().map(AppState)
    }
}

impl std::ops::Deref for AppState {
    type Target = AppParts;
    fn deref(&self) -> &AppParts {
        &self.0
    }
}

/// The shared handles behind [`AppState`].
pub struct AppParts {
    /// The running config; `config_changes` serialises the API's changes to it.
    pub config: LiveConfig,
    pub config_changes: Arc<tokio::sync::Mutex<()>>,
    pub store: Store,
    pub deliverer: Deliverer,
    pub clock: SharedClock,
    pub api_token: Arc<str>,
    /// Where every jq expression runs: the expression worker processes.
    pub sandbox: Sandbox,
    /// Wakes the run worker for a run that is due.
    pub runs: RunWaker,
    pub metrics: Arc<crate::telemetry::Metrics>,
    /// When each source last accepted an event (for `source_silent` alerts).
    pub activity: Arc<crate::alerts::SourceActivity>,
    /// Background tasks that would otherwise run forever (the alert evaluator) stop when the
    /// last clone of the state, and so this sender, is dropped.
    pub alive: Arc<tokio::sync::watch::Sender<()>>,
    pub alerts: crate::alerts::AlertsHandle,
    /// Bytes of request bodies ingest holds (`settings.memory.ingest_bytes`).
    pub ingest_budget: Arc<crate::memory::Budget>,
    /// Seals the secrets of objects written through the API before they are stored.
    pub sealer: crate::secrets::Sealer,
    /// The retention pruner (`crate::retention`).
    pub pruner: crate::retention::PrunerHandle,
    /// Each accepted event, for the console's live tail.
    pub tail: crate::telemetry::tail::Tail,
}

//! What a node does for the cluster besides its share of the work (cluster mode only): it
//! keeps its row in `ferry_nodes` fresh (a heartbeat every few seconds), and it follows the
//! changes other nodes make: config objects written through another node's API, and
//! destinations paused or resumed there. Those reach this node at a hint (`LISTEN/NOTIFY`,
//! sent after the change committed), or within [`FOLLOW_EVERY`] when a hint was missed.

use crate::alerts::SourceActivity;
use crate::clock::SharedClock;
use crate::config::LiveConfig;
use crate::deliver::Deliverer;
use crate::engine::sandbox::Sandbox;
use crate::secrets::SecretKey;
use crate::store::{Store, StoredObject};
use std::sync::Arc;
use std::time::Duration;

/// How often a node says it is alive.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

/// How often a node looks for changes made elsewhere when no hint came.
pub const FOLLOW_EVERY: Duration = Duration::from_secs(30);

/// What following the other nodes needs.
pub struct Follower {
    pub config: LiveConfig,
    pub config_changes: Arc<tokio::sync::Mutex<()>>,
    pub store: Store,
    pub deliverer: Deliverer,
    pub sandbox: Sandbox,
    pub activity: Arc<SourceActivity>,
    pub clock: SharedClock,
    /// The key of the stored secrets (every node has the same).
    pub key: SecretKey,
    /// Closed when the app is dropped: the tasks end with it.
    pub alive: tokio::sync::watch::Receiver<()>,
}

/// Starts the heartbeat and the follower (on PostgreSQL; nothing on SQLite).
pub fn start(follower: Follower) {
    let Some(c) = follower.store.clustered().cloned() else {
        return;
    };
    let mut alive = follower.alive.clone();
    let clock = follower.clock.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = alive.changed() => return,
                () = tokio::time::sleep(HEARTBEAT_EVERY) => {}
            }
            let now = clock.now_ms();
            if let Err(e) = c.pg.heartbeat(&c.node.id, now).await {
                tracing::warn!(error = %e, "cannot record this node's heartbeat");
            }
            let since = now - crate::store::postgres::LIVE_WITHIN.as_millis() as i64;
            if let Err(e) = c.count_live_nodes(since).await {
                tracing::warn!(error = %e, "cannot count the live nodes");
            }
        }
    });
    tokio::spawn(follow(follower));
}

/// What identifies the stored objects' state: each one's kind, id and last change.
fn fingerprint(objects: &[StoredObject]) -> Vec<(String, String, i64, u64)> {
    use std::hash::{Hash, Hasher};
    let mut all: Vec<_> = objects
        .iter()
        .map(|o| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            o.spec.hash(&mut h);
            (o.kind.clone(), o.id.clone(), o.updated_at, h.finish())
        })
        .collect();
    all.sort();
    all
}

async fn follow(f: Follower) {
    let Some(c) = f.store.clustered().cloned() else {
        return;
    };
    let mut alive = f.alive.clone();
    let mut seen = match f.store.api_objects().await {
        Ok(objects) => Some(fingerprint(&objects)),
        Err(_) => None,
    };
    let mut hints: Option<tokio::sync::mpsc::UnboundedReceiver<String>> = None;
    loop {
        if hints.is_none() {
            match c.pg.listen(&[crate::store::postgres::CONFIG_CHANNEL]).await {
                Ok(h) => hints = Some(h),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for config changes from the other nodes; looking every 30s")
                }
            }
        }
        let hinted = async {
            match hints.as_mut() {
                Some(h) => h.recv().await.is_some(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = alive.changed() => return,
            got = hinted => if !got {
                hints = None;
            },
            () = tokio::time::sleep(FOLLOW_EVERY) => {}
        }
        follow_pauses(&f).await;
        if let Err(e) = follow_objects(&f, &mut seen).await {
            tracing::error!(error = %e, "cannot take in the config objects changed on another node; this node goes on with its config");
        }
    }
}

/// Pauses and resumes made on other nodes.
async fn follow_pauses(f: &Follower) {
    match f.store.paused_destinations().await {
        Ok(paused) => f.deliverer.follow_pauses(paused.into_iter().collect()),
        Err(e) => tracing::warn!(error = %e, "cannot read the paused destinations"),
    }
}

/// Config objects written through another node's API: the config is built again from the
/// file and the stored objects, checked, and swapped in as the API does.
async fn follow_objects(
    f: &Follower,
    seen: &mut Option<Vec<(String, String, i64, u64)>>,
) -> Result<(), String> {
    let _one_at_a_time = f.config_changes.lock().await;
    let stored = f.store.api_objects().await.map_err(|e| e.to_string())?;
    let now = fingerprint(&stored);
    if seen.as_ref() == Some(&now) {
        return Ok(());
    }
    let key = f.key.clone();
    // With the key given, no file of the data directory is read.
    let (_, objects) = tokio::task::spawn_blocking(move || {
        crate::secrets::unlock(std::path::Path::new("."), Some(key), stored)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    let current = f.config.get();
    let mut config = crate::config::build(&current.file, &objects).map_err(|e| e.to_string())?;
    f.sandbox
        .check_config(&mut config)
        .await
        .map_err(|e| e.to_string())?;
    let config = Arc::new(config);
    f.config.replace(config.clone());
    f.deliverer.reconfigure(config.clone());
    f.activity.track(&config, f.clock.now_ms());
    *seen = Some(now);
    tracing::info!("took in config objects changed on another node");
    Ok(())
}

//! `ferry secrets rotate`: every sealed secret sealed again under a new key (and a secret that
//! an earlier Ferry stored as written, sealed for the first time).
//!
//! The old key is found as at start (`FERRY_SECRET_KEY`, or the key file). The new key is
//! `FERRY_NEW_SECRET_KEY` when it is set; with a key file and no new key given, a random one.
//! With `FERRY_SECRET_KEY`, the new key must be given, and no file is written: the operator
//! sets `FERRY_SECRET_KEY` to it afterwards.
//!
//! Crash safety: with a key file, the new key is first written whole to `secret.key.next`
//! (temporary file, sync, rename, directory sync); then every spec is rewritten in one
//! transaction; only after its commit does the next file replace `secret.key`. Each sealed
//! value names its key, so a start after a crash at any point finds the store entirely under
//! one of the two keys and finishes or drops the rotation (`keys::find_key`). With
//! `FERRY_SECRET_KEY`, the one transaction leaves the store under the old key or the new one.
//!
//! On PostgreSQL (a cluster's store) the keys come from the environment only, and every node
//! must be stopped: a node still running holds the old key and would seal what it writes
//! under it ([`rotate_postgres`] refuses while a node was seen within the last 15 s).

use super::keys::{self, KeyOrigin, UnlockError};
use super::seal::{KeyError, SecretKey};
use crate::store::{Resealed, Store, StoreError, StoreOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a rotation did not happen (nothing was changed), or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error(transparent)]
    Unlock(#[from] UnlockError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the new key: {0}")]
    NewKey(KeyError),
    #[error(
        "{} is set, so the new key must be given too: set {} to it (32 bytes in base64), then set {} to it once the rotation is done",
        keys::KEY_ENV,
        keys::NEW_KEY_ENV,
        keys::KEY_ENV
    )]
    NewKeyMissing,
    #[error("the new key is the key in use ({0}); give another")]
    SameKey(String),
    #[error("sealing under the new key: {0}")]
    Seal(#[from] super::seal::SealError),
    #[error("the key file `{path}`: {source}")]
    KeyFile {
        path: String,
        source: std::io::Error,
    },
    #[error("opening the store did not finish: {0}")]
    Task(String),
    #[error(
        "{} must be set: a cluster's key is given to every node in the environment",
        keys::KEY_ENV
    )]
    ClusterKeyMissing,
    #[error(
        "{0} node(s) of the cluster were seen in the last 15 s ({1}): stop every node first, then rotate, then start them with {key} set to the new key",
        key = keys::KEY_ENV
    )]
    NodesRunning(usize, String),
}

/// What a rotation did.
#[derive(Debug)]
pub struct Rotated {
    pub old_key_id: String,
    pub new_key_id: String,
    /// Secrets sealed under the new key, and in how many objects.
    pub secrets: usize,
    pub objects: usize,
    /// The key file that now holds the new key; `None` when the key is in `FERRY_SECRET_KEY`.
    pub key_file: Option<PathBuf>,
}

/// Rotates the key of the store in `dir` (Ferry must not be running on it: the data
/// directory's lock is taken). `env_key` is `FERRY_SECRET_KEY`, `new_key` `FERRY_NEW_SECRET_KEY`.
pub async fn rotate(
    dir: &Path,
    env_key: Option<SecretKey>,
    new_key: Option<SecretKey>,
) -> Result<Rotated, RotateError> {
    let metrics = Arc::new(crate::telemetry::Metrics::new());
    let owned = dir.to_path_buf();
    let store =
        tokio::task::spawn_blocking(move || Store::open(&owned, StoreOptions::default(), metrics))
            .await
            .map_err(|e| RotateError::Task(e.to_string()))??;
    let stored = store.api_objects().await?;
    rotate_stored(stored, dir, env_key, new_key, |updates| {
        store.reseal(updates)
    })
    .await
}

/// Rotates the key of a cluster's store on PostgreSQL at `url`: `env_key` is
/// `FERRY_SECRET_KEY` (required), `new_key` `FERRY_NEW_SECRET_KEY` (required). Refused while a
/// node of the cluster runs.
pub async fn rotate_postgres(
    url: &str,
    env_key: Option<SecretKey>,
    new_key: Option<SecretKey>,
    now: crate::clock::Millis,
) -> Result<Rotated, RotateError> {
    if env_key.is_none() {
        return Err(RotateError::ClusterKeyMissing);
    }
    let pg = crate::store::postgres::PgStore::connect(url, Default::default()).await?;
    let since = now - crate::store::postgres::LIVE_WITHIN.as_millis() as i64;
    let running: Vec<String> = pg
        .nodes()
        .await?
        .into_iter()
        .filter(|n| n.seen_at.is_some_and(|at| at >= since))
        .map(|n| n.id)
        .collect();
    if !running.is_empty() {
        return Err(RotateError::NodesRunning(running.len(), running.join(", ")));
    }
    let stored = pg.api_objects().await?;
    // With the key in the environment no file of a data directory is read or written.
    rotate_stored(stored, Path::new("."), env_key, new_key, |updates| {
        pg.reseal(updates)
    })
    .await
}

/// The rotation of the objects `stored`, written back by `reseal` (all or none).
async fn rotate_stored<F, W>(
    stored: Vec<crate::store::StoredObject>,
    dir: &Path,
    env_key: Option<SecretKey>,
    new_key: Option<SecretKey>,
    reseal: F,
) -> Result<Rotated, RotateError>
where
    F: FnOnce(Vec<Resealed>) -> W,
    W: Future<Output = Result<(), StoreError>>,
{
    let objects = keys::read_stored(stored);
    let (old, origin) = keys::find_key(dir, env_key, &objects)?;
    // Every stored value must open before anything is written.
    let opened = keys::open_all(&objects, &old, &origin, true)?;
    let new = match (new_key, &origin) {
        (Some(k), _) => k,
        (None, KeyOrigin::Env) => return Err(RotateError::NewKeyMissing),
        (None, KeyOrigin::File(_)) => SecretKey::generate().map_err(RotateError::NewKey)?,
    };
    if new.id() == old.id() {
        return Err(RotateError::SameKey(old.id().to_string()));
    }
    let next_path = dir.join(keys::NEXT_KEY_FILE);
    let key_file = match &origin {
        KeyOrigin::File(path) => {
            keys::write_key_file(&next_path, &new).map_err(|source| RotateError::KeyFile {
                path: next_path.display().to_string(),
                source,
            })?;
            Some(path.clone())
        }
        KeyOrigin::Env => None,
    };
    let (mut updates, mut secrets) = (Vec::new(), 0);
    for (o, spec) in objects.iter().zip(&opened) {
        if o.places.is_empty() {
            continue;
        }
        secrets += o.places.len();
        let sealed = keys::seal_spec(&new, o.kind, &o.stored.id, spec)?;
        updates.push(Resealed {
            kind: o.stored.kind.clone(),
            id: o.stored.id.clone(),
            old: o.stored.spec.clone(),
            new: sealed.to_string(),
        });
    }
    let objects_changed = updates.len();
    if let Err(e) = reseal(updates).await {
        // Nothing was committed: the store stays under the old key, and so does the key file.
        if key_file.is_some() {
            let _ = std::fs::remove_file(&next_path);
        }
        return Err(e.into());
    }
    if let Some(path) = &key_file {
        std::fs::rename(&next_path, path)
            .and_then(|()| keys::sync_dir(dir))
            .map_err(|source| RotateError::KeyFile {
                path: path.display().to_string(),
                source,
            })?;
    }
    Ok(Rotated {
        old_key_id: old.id().to_string(),
        new_key_id: new.id().to_string(),
        secrets,
        objects: objects_changed,
        key_file,
    })
}

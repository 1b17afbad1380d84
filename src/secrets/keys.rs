//! The key, and opening the stored secrets with it at start.
//!
//! The key comes from `FERRY_SECRET_KEY` (32 bytes in base64) when it is set, and otherwise
//! from the key file `secret.key` in the data directory (the same base64 text), which the first
//! start makes (mode 0600, written to a temporary file, synced, then renamed into place). A key
//! file is never made while the store holds sealed secrets: a lost key is an error, not a new key.
//!
//! `secret.key.next` is the new key of a rotation (`ferry secrets rotate`) that may not have
//! finished: every stored value names the id of the key it was sealed under, so at start the
//! values tell which of the two keys is in use. Under the new key (the rotation committed), the
//! next file replaces the key file; otherwise (it did not) the next file is removed.

use super::seal::{self, KeyError, OpenError, SecretKey, Site};
use crate::config::redact::fields;
use crate::config::{ObjectKind, ObjectSpec};
use crate::store::StoredObject;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The key file's name in the data directory.
pub const KEY_FILE: &str = "secret.key";
/// The new key of a rotation, beside the key file until the rotation is done.
pub const NEXT_KEY_FILE: &str = "secret.key.next";
/// The environment variable that gives the key.
pub const KEY_ENV: &str = "FERRY_SECRET_KEY";
/// The environment variable that gives `ferry secrets rotate` the new key.
pub const NEW_KEY_ENV: &str = "FERRY_NEW_SECRET_KEY";

/// Reads a key from the value of an environment variable named `name` (`None`: not set).
pub fn key_from_env_value(
    name: &str,
    value: Option<std::ffi::OsString>,
) -> Result<Option<SecretKey>, KeyError> {
    let Some(value) = value else {
        return Ok(None);
    };
    #[cfg(unix)]
    let bytes = {
        use std::os::unix::ffi::OsStrExt;
        value.as_bytes().to_vec()
    };
    #[cfg(not(unix))]
    let bytes = value.to_string_lossy().into_owned().into_bytes();
    SecretKey::from_base64(&bytes, name).map(Some)
}

/// Reads the key from the environment variable `name` of this process.
pub fn key_from_env(name: &str) -> Result<Option<SecretKey>, KeyError> {
    key_from_env_value(name, std::env::var_os(name))
}

/// Where the key in use came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOrigin {
    Env,
    File(PathBuf),
}

impl std::fmt::Display for KeyOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyOrigin::Env => write!(f, "the key in {KEY_ENV}"),
            KeyOrigin::File(path) => write!(f, "the key in `{}`", path.display()),
        }
    }
}

/// Why the stored secrets cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum UnlockError {
    #[error("the secret key: {0}")]
    Key(#[from] KeyError),
    #[error("the key file `{path}`: {source}")]
    KeyFile {
        path: String,
        source: std::io::Error,
    },
    #[error("the secret key does not open the stored secrets: {0}")]
    WrongKey(Box<WrongKey>),
    #[error(
        "the stored secrets are sealed under key {stored}, and there is no key: {KEY_ENV} is not set and `{path}` does not exist; restore the key file from a backup, or set {KEY_ENV} to the key they were sealed under"
    )]
    NoKey { stored: String, path: String },
    #[error(
        "the store holds {count} secret(s) that are not sealed (the first: {kind} `{id}`, field `{pointer}`), written by a Ferry that stored them as written; run `ferry secrets rotate --data DIR` once to seal them"
    )]
    Plaintext {
        count: usize,
        kind: &'static str,
        id: String,
        pointer: String,
    },
}

/// A stored secret that the key in use does not open: where it is, and why.
#[derive(Debug)]
pub struct WrongKey {
    pub kind: &'static str,
    pub id: String,
    pub pointer: String,
    pub why: OpenError,
    pub origin: KeyOrigin,
    pub key_id: String,
    pub hint: &'static str,
}

impl std::fmt::Display for WrongKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} `{}`, field `{}`: {} ({} is key {}){}",
            self.kind, self.id, self.pointer, self.why, self.origin, self.key_id, self.hint
        )
    }
}

/// Seals the secrets of objects written through the API under the key in use. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Sealer {
    key: Arc<SecretKey>,
}

impl Sealer {
    pub fn new(key: SecretKey) -> Sealer {
        Sealer { key: Arc::new(key) }
    }

    /// The id of the key new secrets are sealed under.
    pub fn key_id(&self) -> &str {
        self.key.id()
    }

    /// `spec` (an object of `kind` with id `id`, as written) with every secret sealed, as the
    /// store keeps it.
    pub fn seal_spec(
        &self,
        kind: ObjectKind,
        id: &str,
        spec: &Value,
    ) -> Result<Value, seal::SealError> {
        seal_spec(&self.key, kind, id, spec)
    }
}

pub(super) fn seal_spec(
    key: &SecretKey,
    kind: ObjectKind,
    id: &str,
    spec: &Value,
) -> Result<Value, seal::SealError> {
    let mut out = spec.clone();
    for place in fields::places(kind, spec) {
        if let Some(Value::String(text)) = out.pointer_mut(&place.pointer) {
            let site = Site {
                kind: kind.as_str(),
                id,
                pointer: &place.pointer,
            };
            *text = seal::seal(key, text, site)?;
        }
    }
    Ok(out)
}

/// A stored object read back: its spec as stored, and where its secrets are.
pub(super) struct Read {
    pub stored: StoredObject,
    pub kind: ObjectKind,
    pub spec: Value,
    /// `(pointer, sealed)`: each secret's place, and whether it is sealed.
    pub places: Vec<(String, bool)>,
}

/// The stored objects with their places; an object of an unknown kind is left out (with a
/// warning), one whose spec is not JSON keeps a `null` spec, which the config check reports.
pub(super) fn read_stored(stored: Vec<StoredObject>) -> Vec<Read> {
    stored
        .into_iter()
        .filter_map(|o| {
            let Some(kind) = ObjectKind::parse(&o.kind) else {
                tracing::warn!(kind = %o.kind, id = %o.id, "stored config object of an unknown kind; left out");
                return None;
            };
            let spec: Value = serde_json::from_str(&o.spec).unwrap_or(Value::Null);
            let places = fields::places(kind, &spec)
                .into_iter()
                .map(|p| {
                    let sealed = spec
                        .pointer(&p.pointer)
                        .and_then(Value::as_str)
                        .is_some_and(|t| t.starts_with(seal::SEALED));
                    (p.pointer, sealed)
                })
                .collect();
            Some(Read {
                stored: o,
                kind,
                spec,
                places,
            })
        })
        .collect()
}

/// The key the stored values are sealed under, found as the module says (making the key
/// file at a first start, finishing or dropping a rotation's next key); with where it came
/// from.
pub(super) fn find_key(
    dir: &Path,
    env_key: Option<SecretKey>,
    objects: &[Read],
) -> Result<(SecretKey, KeyOrigin), UnlockError> {
    let mut ids: Vec<&str> = Vec::new();
    for o in objects {
        for (pointer, sealed) in &o.places {
            if !sealed {
                continue;
            }
            let text = o
                .spec
                .pointer(pointer)
                .and_then(Value::as_str)
                .unwrap_or_default();
            // A damaged value is reported when it is opened.
            if let Ok(id) = seal::key_id(text)
                && !ids.contains(&id)
            {
                ids.push(id);
            }
        }
    }
    if let Some(key) = env_key {
        return Ok((key, KeyOrigin::Env));
    }
    let path = dir.join(KEY_FILE);
    let next_path = dir.join(NEXT_KEY_FILE);
    let current = read_key_file(&path)?;
    let next = read_key_file(&next_path)?;
    if let Some(next) = next {
        if !ids.is_empty() && ids.iter().all(|id| *id == next.id()) {
            // The rotation committed: its key becomes the key file.
            std::fs::rename(&next_path, &path)
                .and_then(|()| sync_dir(dir))
                .map_err(|source| key_file_error(&path, source))?;
            tracing::info!(
                key_id = next.id(),
                "finished an interrupted key rotation: the new key is in the key file"
            );
            return Ok((next, KeyOrigin::File(path)));
        }
        // The rotation did not commit: the store is under the key file's key.
        std::fs::remove_file(&next_path)
            .and_then(|()| sync_dir(dir))
            .map_err(|source| key_file_error(&next_path, source))?;
        tracing::info!(
            "dropped the new key of a key rotation that did not commit; the key file is in use"
        );
    }
    match current {
        Some(key) => Ok((key, KeyOrigin::File(path))),
        None if ids.is_empty() => {
            let key = SecretKey::generate()?;
            write_key_file(&path, &key).map_err(|source| key_file_error(&path, source))?;
            tracing::info!(path = %path.display(), key_id = key.id(), "made a new secret key; back it up: the stored secrets cannot be read without it");
            Ok((key, KeyOrigin::File(path)))
        }
        None => Err(UnlockError::NoKey {
            stored: ids.join(", "),
            path: path.display().to_string(),
        }),
    }
}

/// Each object's spec with its secrets opened with `key`. With `plaintext_ok` (a rotation
/// seals them), a secret that is not sealed is taken as it is; otherwise it is an error.
pub(super) fn open_all(
    objects: &[Read],
    key: &SecretKey,
    origin: &KeyOrigin,
    plaintext_ok: bool,
) -> Result<Vec<Value>, UnlockError> {
    let plaintext: Vec<(&Read, &String)> = objects
        .iter()
        .flat_map(|o| {
            o.places
                .iter()
                .filter(|(_, sealed)| !sealed)
                .map(move |(p, _)| (o, p))
        })
        .collect();
    if let (Some((o, pointer)), false) = (plaintext.first(), plaintext_ok) {
        return Err(UnlockError::Plaintext {
            count: plaintext.len(),
            kind: o.kind.noun(),
            id: o.stored.id.clone(),
            pointer: (*pointer).clone(),
        });
    }
    objects
        .iter()
        .map(|o| {
            let mut spec = o.spec.clone();
            for (pointer, _) in o.places.iter().filter(|(_, sealed)| *sealed) {
                let Some(Value::String(text)) = spec.pointer_mut(pointer) else {
                    continue;
                };
                let site = Site {
                    kind: o.kind.as_str(),
                    id: &o.stored.id,
                    pointer,
                };
                *text = seal::open(key, text, site).map_err(|why| {
                    UnlockError::WrongKey(Box::new(WrongKey {
                    kind: o.kind.noun(),
                    id: o.stored.id.clone(),
                    pointer: pointer.clone(),
                    hint: match (&why, origin) {
                        (OpenError::OtherKey { .. }, KeyOrigin::Env) => {
                            "; if a rotation finished, set FERRY_SECRET_KEY to its new key"
                        }
                        (OpenError::OtherKey { .. }, KeyOrigin::File(_)) => {
                            "; restore the key file they were sealed under, or set FERRY_SECRET_KEY to that key"
                        }
                        _ => "",
                    },
                    why,
                    origin: origin.clone(),
                    key_id: key.id().to_string(),
                    }))
                })?;
            }
            Ok(spec)
        })
        .collect()
}

/// The stored objects with their secrets opened, and the sealer for new ones. See the module's
/// documentation for where the key comes from.
pub fn unlock(
    dir: &Path,
    env_key: Option<SecretKey>,
    stored: Vec<StoredObject>,
) -> Result<(Sealer, Vec<ObjectSpec>), UnlockError> {
    let objects = read_stored(stored);
    let (key, origin) = find_key(dir, env_key, &objects)?;
    let opened = open_all(&objects, &key, &origin, false)?;
    let specs = objects
        .into_iter()
        .zip(opened)
        .map(|(o, spec)| {
            let mut object = ObjectSpec::new(o.kind, o.stored.id, spec, false);
            object.created_at = Some(o.stored.created_at);
            object.updated_at = Some(o.stored.updated_at);
            object
        })
        .collect();
    Ok((Sealer::new(key), specs))
}

fn key_file_error(path: &Path, source: std::io::Error) -> UnlockError {
    UnlockError::KeyFile {
        path: path.display().to_string(),
        source,
    }
}

/// The key in a key file; `None` when there is no such file.
fn read_key_file(path: &Path) -> Result<Option<SecretKey>, UnlockError> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(key_file_error(path, e)),
    };
    // Read a little past the longest key text, so that a huge file is refused unread.
    let mut text = Vec::new();
    file.take(1024)
        .read_to_end(&mut text)
        .map_err(|e| key_file_error(path, e))?;
    let origin = format!("the key file `{}`", path.display());
    Ok(Some(SecretKey::from_base64(&text, &origin)?))
}

/// Writes `key` to `path` as a key file: to `<path>.tmp` first (mode 0600), synced, renamed
/// into place, and the directory synced, so that a crash leaves the old file or the new one.
pub(super) fn write_key_file(path: &Path, key: &SecretKey) -> std::io::Result<()> {
    use std::io::Write;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(format!("{}\n", key.to_base64()).as_bytes())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Makes a rename or removal in `dir` durable.
pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

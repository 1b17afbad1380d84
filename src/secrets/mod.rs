//! Secrets at rest: how they are sealed (`seal`: XChaCha20-Poly1305, the secret's place as
//! associated data), where the key comes from and how the stored secrets are opened at start
//! (`keys`), and `ferry secrets rotate` (`rotate`). Which fields hold secrets and how they are
//! masked is the config's (`config::redact`), read by sealing, masking and the OpenAPI
//! document alike.
//!
//! **Invariant:** a config object's secrets reach the store only sealed, and leave the process
//! (API answers, the flow test, errors, logs) only masked. The in-memory config holds them
//! opened, as `config::Secret` once checked.

pub mod keys;
pub mod rotate;
pub mod seal;

pub use keys::{KEY_ENV, NEW_KEY_ENV, Sealer, UnlockError, key_from_env, unlock};
pub use seal::{KeyError, SecretKey};

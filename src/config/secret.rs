//! `Secret`, a secret of the config held in memory (a signing key, a password, a token): its
//! `Debug` never prints it. It imports nothing of Ferry, so that the engine's programs (an
//! `http` step's credentials) hold it without importing the rest of the config.

use std::fmt;

/// A secret from the config: never printed by `Debug`.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(bytes)
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

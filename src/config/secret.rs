//! `Secret`, a secret of the config held in memory (a signing key, a password, a token): its
//! `Debug` never prints it; and how a Standard Webhooks secret (`whsec_...`) is decoded. It imports nothing of Ferry, so that the engine's programs (an
//! `http` step's credentials) hold it without importing the rest of the config.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
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

/// Decodes a Standard Webhooks secret (`whsec_` + base64; the prefix is optional).
pub fn decode_secret(secret: &str) -> Result<Vec<u8>, String> {
    let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
    let key = B64
        .decode(b64)
        .map_err(|_| "the secret is not `whsec_` followed by base64".to_string())?;
    if key.len() < 16 {
        return Err(format!(
            "the secret holds {} bytes; use at least 16 (24 to 64 is usual)",
            key.len()
        ));
    }
    Ok(key)
}

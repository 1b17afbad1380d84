//! Sealing one secret: XChaCha20-Poly1305 under a 32-byte key, with a random 24-byte nonce and
//! the secret's place (the object's kind, its id and the field's JSON pointer) as associated
//! data, so a sealed value opens only where it was sealed.
//!
//! The stored form is a JSON string: `sealed:v1:<key id>:<base64 of nonce || ciphertext || tag>`
//! (`v1`: this cipher, nonce size and associated data; the key id: 8 hex digits that name the
//! key, derived from it, so a value sealed under another key is told apart from a damaged one).

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

pub use crate::config::redact::fields::SEALED;
/// The format this Ferry writes and reads.
const V1: &str = "sealed:v1:";
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// The key's length in bytes.
pub const KEY_LEN: usize = 32;
/// The longest sealed value read (a secret of 64 KiB, sealed): longer text is refused unread.
const MAX_SEALED_LEN: usize = 96 * 1024;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A key that seals and opens secrets. `Debug` shows its id only.
#[derive(Clone)]
pub struct SecretKey {
    bytes: [u8; KEY_LEN],
    id: String,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({})", self.id)
    }
}

/// Why a key could not be read or made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("{origin} is empty; a key is 32 bytes in base64 (e.g. `openssl rand -base64 32`)")]
    Empty { origin: String },
    #[error("{origin} is {len} characters long; a key is 32 bytes in base64, 44 characters")]
    TooLong { origin: String, len: usize },
    #[error("{origin} is not UTF-8 text; a key is 32 bytes in base64")]
    NotUtf8 { origin: String },
    #[error("{origin} is not base64 ({why}); a key is 32 bytes in base64")]
    NotBase64 { origin: String, why: String },
    #[error("{origin} holds {len} bytes; a key is exactly 32 bytes (in base64)")]
    WrongLength { origin: String, len: usize },
    #[error("cannot make a random key: {0}")]
    Random(String),
}

impl SecretKey {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> SecretKey {
        use sha2::Digest;
        let digest = sha2::Sha256::new()
            .chain_update(b"ferry secret key id\0")
            .chain_update(bytes)
            .finalize();
        SecretKey {
            id: digest[..4].iter().map(|b| format!("{b:02x}")).collect(),
            bytes,
        }
    }

    /// A new random key.
    pub fn generate() -> Result<SecretKey, KeyError> {
        let mut bytes = [0u8; KEY_LEN];
        getrandom::fill(&mut bytes).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(SecretKey::from_bytes(bytes))
    }

    /// Reads a key written as base64 (standard alphabet, padding optional, surrounding
    /// whitespace ignored). `origin` names where it came from in errors (`FERRY_SECRET_KEY`).
    pub fn from_base64(text: &[u8], origin: &str) -> Result<SecretKey, KeyError> {
        let origin = origin.to_string();
        // Longer than any key with whitespace around it: refused before anything else.
        if text.len() > 256 {
            return Err(KeyError::TooLong {
                origin,
                len: text.len(),
            });
        }
        let text = std::str::from_utf8(text)
            .map_err(|_| KeyError::NotUtf8 {
                origin: origin.clone(),
            })?
            .trim();
        if text.is_empty() {
            return Err(KeyError::Empty { origin });
        }
        let lenient = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        let decoded = lenient.decode(text).map_err(|e| KeyError::NotBase64 {
            origin: origin.clone(),
            why: e.to_string(),
        })?;
        let bytes: [u8; KEY_LEN] =
            decoded
                .as_slice()
                .try_into()
                .map_err(|_| KeyError::WrongLength {
                    origin,
                    len: decoded.len(),
                })?;
        Ok(SecretKey::from_bytes(bytes))
    }

    /// The key in base64, as a key file holds it.
    pub fn to_base64(&self) -> String {
        B64.encode(self.bytes)
    }

    /// 8 hex digits that name this key (from a hash of it: they tell nothing of the key).
    pub fn id(&self) -> &str {
        &self.id
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&self.bytes.into())
    }
}

/// Where a secret is: its object's kind and id and the field's JSON pointer. The associated
/// data of its seal.
#[derive(Debug, Clone, Copy)]
pub struct Site<'a> {
    pub kind: &'a str,
    pub id: &'a str,
    pub pointer: &'a str,
}

impl Site<'_> {
    /// Each part with its length before it, so that no two sites give the same bytes.
    fn associated_data(&self) -> Vec<u8> {
        let mut out = b"ferry-secret:v1".to_vec();
        for part in [self.kind, self.id, self.pointer] {
            out.extend_from_slice(&(part.len() as u64).to_be_bytes());
            out.extend_from_slice(part.as_bytes());
        }
        out
    }
}

/// Why a sealed value did not open.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("it is not a sealed value")]
    NotSealed,
    #[error("it is sealed in a format this Ferry does not read (`{0}`)")]
    UnknownFormat(String),
    #[error("the sealed value is damaged: {0}")]
    Damaged(String),
    #[error("it was sealed under key {stored}, not under key {given}")]
    OtherKey { stored: String, given: String },
    #[error("it does not open under key {0}: the value was changed, or moved from another place")]
    DoesNotOpen(String),
}

/// Why sealing failed (the cipher refused its input: not seen in practice).
#[derive(Debug, thiserror::Error)]
#[error("cannot seal a secret: {0}")]
pub struct SealError(String);

/// Seals `secret` for `site` under `key`.
pub fn seal(key: &SecretKey, secret: &str, site: Site<'_>) -> Result<String, SealError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| SealError(e.to_string()))?;
    let aad = site.associated_data();
    let sealed = key
        .cipher()
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: secret.as_bytes(),
                aad: &aad,
            },
        )
        .map_err(|e| SealError(e.to_string()))?;
    let mut payload = Vec::with_capacity(NONCE_LEN + sealed.len());
    payload.extend_from_slice(&nonce);
    payload.extend_from_slice(&sealed);
    Ok(format!("{V1}{}:{}", key.id, B64.encode(payload)))
}

/// The id of the key a sealed value names.
pub fn key_id(text: &str) -> Result<&str, OpenError> {
    Ok(split(text)?.0)
}

fn split(text: &str) -> Result<(&str, &str), OpenError> {
    let Some(rest) = text.strip_prefix(SEALED) else {
        return Err(OpenError::NotSealed);
    };
    let Some(rest) = text.strip_prefix(V1) else {
        let format: String = rest.chars().take_while(|c| *c != ':').take(16).collect();
        return Err(OpenError::UnknownFormat(format!("sealed:{format}")));
    };
    if text.len() > MAX_SEALED_LEN {
        return Err(OpenError::Damaged(format!(
            "it is {} bytes long; the most is {MAX_SEALED_LEN}",
            text.len()
        )));
    }
    match rest.split_once(':') {
        Some((id, data)) if id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok((id, data))
        }
        _ => Err(OpenError::Damaged("no key id".into())),
    }
}

/// Opens a sealed value for `site` with `key`.
pub fn open(key: &SecretKey, text: &str, site: Site<'_>) -> Result<String, OpenError> {
    let (id, data) = split(text)?;
    if id != key.id {
        return Err(OpenError::OtherKey {
            stored: id.to_string(),
            given: key.id.clone(),
        });
    }
    let payload = B64
        .decode(data)
        .map_err(|e| OpenError::Damaged(format!("not base64 ({e})")))?;
    if payload.len() < NONCE_LEN + TAG_LEN {
        return Err(OpenError::Damaged(format!(
            "{} bytes, shorter than a nonce and a tag",
            payload.len()
        )));
    }
    let (nonce, sealed) = payload.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce
        .try_into()
        .map_err(|_| OpenError::Damaged("no nonce".into()))?;
    let aad = site.associated_data();
    let plain = key
        .cipher()
        .decrypt(
            &XNonce::from(nonce),
            Payload {
                msg: sealed,
                aad: &aad,
            },
        )
        .map_err(|_| OpenError::DoesNotOpen(key.id.clone()))?;
    String::from_utf8(plain).map_err(|_| OpenError::Damaged("the secret is not UTF-8".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SITE: Site<'static> = Site {
        kind: "destinations",
        id: "crm",
        pointer: "/signing/secret",
    };

    #[test]
    fn round_trip_and_every_way_to_fail() {
        let key = SecretKey::generate().unwrap();
        let sealed = seal(&key, "whsec_abc", SITE).unwrap();
        assert!(sealed.starts_with(&format!("sealed:v1:{}:", key.id())));
        assert!(!sealed.contains("whsec_abc"));
        assert_ne!(
            sealed,
            seal(&key, "whsec_abc", SITE).unwrap(),
            "a fresh nonce each time"
        );
        assert_eq!(open(&key, &sealed, SITE).unwrap(), "whsec_abc");

        let moved = Site {
            id: "billing",
            ..SITE
        };
        assert_eq!(
            open(&key, &sealed, moved),
            Err(OpenError::DoesNotOpen(key.id().into()))
        );
        let other = SecretKey::generate().unwrap();
        assert!(matches!(
            open(&other, &sealed, SITE),
            Err(OpenError::OtherKey { .. })
        ));
        // The same id with other bytes (a forged id) still does not open.
        let forged = sealed.replace(key.id(), other.id());
        assert!(matches!(
            open(&other, &forged, SITE),
            Err(OpenError::DoesNotOpen(_))
        ));
        let mut flipped = sealed.clone().into_bytes();
        let last = flipped.len() - 10;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert!(matches!(
            open(&key, &flipped, SITE),
            Err(OpenError::DoesNotOpen(_))
        ));
        for bad in [
            "whsec_plain".to_string(),
            "sealed:v9:zz".to_string(),
            format!("sealed:v1:{}:!!!", key.id()),
            format!("sealed:v1:{}:AAAA", key.id()),
            "sealed:v1:nothex00:AAAA".to_string(),
            format!("sealed:v1:{}:{}", key.id(), "A".repeat(200_000)),
        ] {
            assert!(open(&key, &bad, SITE).is_err(), "{bad:.40}");
        }
    }

    #[test]
    fn keys_from_text() {
        let key = SecretKey::generate().unwrap();
        let text = key.to_base64();
        let again = SecretKey::from_base64(format!(" {text}\n").as_bytes(), "k").unwrap();
        assert_eq!(again.id(), key.id());
        let unpadded = text.trim_end_matches('=');
        assert!(SecretKey::from_base64(unpadded.as_bytes(), "k").is_ok());
        let origin = |e: KeyError| e.to_string();
        for (given, starts) in [
            (b"".to_vec(), "k is empty"),
            (b"not base64!".to_vec(), "k is not base64"),
            (b"c2hvcnQ=".to_vec(), "k holds 5 bytes"),
            (vec![0xff, 0xfe, 0x41], "k is not UTF-8"),
            (vec![b'A'; 10_000], "k is 10000 characters long"),
        ] {
            let message = origin(SecretKey::from_base64(&given, "k").unwrap_err());
            assert!(message.starts_with(starts), "{message}");
        }
    }
}

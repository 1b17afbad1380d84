//! Checking that an inbound request really comes from its source, on the raw body and before
//! any parsing, in constant time. One function per scheme named in the config.

use crate::config::{SignatureEncoding, Verify};
use axum::http::HeaderMap;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Why a signature was refused. The text is safe to show the sender: it never holds a secret
/// or the expected signature.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

pub fn check(
    scheme: &Verify,
    headers: &HeaderMap,
    body: &[u8],
    now_ms: i64,
) -> Result<(), Refused> {
    match scheme {
        Verify::None => Ok(()),
        Verify::StandardWebhooks { key, tolerance } => {
            let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
            crate::deliver::signing::verify(
                key.expose(),
                h("webhook-id"),
                h("webhook-timestamp"),
                h("webhook-signature"),
                body,
                now_ms.div_euclid(1000),
                // A tolerance past i64's seconds (the config allows it) is no limit.
                i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX),
            )
            .map_err(|e| Refused(e.to_string()))
        }
        Verify::Hmac {
            header,
            key,
            encoding,
            prefix,
        } => {
            let value = headers
                .get(header.as_str())
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| Refused(format!("missing header `{header}`")))?;
            let encoded = value.trim().strip_prefix(prefix.as_str()).ok_or_else(|| {
                Refused(format!("header `{header}` does not start with `{prefix}`"))
            })?;
            let given = match encoding {
                SignatureEncoding::Hex => decode_hex(encoded),
                SignatureEncoding::Base64 => base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .ok(),
            }
            .ok_or_else(|| {
                Refused(format!(
                    "header `{header}` is not {}",
                    if *encoding == SignatureEncoding::Hex {
                        "hex"
                    } else {
                        "base64"
                    }
                ))
            })?;
            let mut mac = Hmac::<Sha256>::new_from_slice(key.expose())
                .map_err(|_| Refused("unusable key".into()))?;
            mac.update(body);
            mac.verify_slice(&given).map_err(|_| {
                Refused(format!(
                    "the signature in `{header}` does not match the body"
                ))
            })
        }
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn a_tolerance_past_i64_seconds_is_no_limit() {
        let key = crate::deliver::signing::decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let scheme = Verify::StandardWebhooks {
            key: Secret::new(key.clone()),
            tolerance: std::time::Duration::from_secs(u64::MAX),
        };
        let mut headers = HeaderMap::new();
        headers.insert("webhook-id", "msg_1".parse().unwrap());
        headers.insert("webhook-timestamp", "5".parse().unwrap());
        let signature = crate::deliver::signing::sign(&key, "msg_1", 5, b"{}");
        headers.insert("webhook-signature", signature.parse().unwrap());
        assert!(check(&scheme, &headers, b"{}", 1_700_000_000_000).is_ok());
    }

    #[test]
    fn generic_hmac_hex_with_prefix() {
        let scheme = Verify::Hmac {
            header: "x-hub-signature-256".into(),
            key: Secret::new(b"It's a Secret to Everybody".to_vec()),
            encoding: SignatureEncoding::Hex,
            prefix: "sha256=".into(),
        };
        // GitHub's documented example signature for this key and body.
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
                .parse()
                .unwrap(),
        );
        assert!(check(&scheme, &headers, b"Hello, World!", 0).is_ok());
        assert!(check(&scheme, &headers, b"Hello, World?", 0).is_err());
        headers.insert("x-hub-signature-256", "757107ea".parse().unwrap());
        assert!(
            check(&scheme, &headers, b"Hello, World!", 0)
                .unwrap_err()
                .0
                .contains("does not start with")
        );
        assert!(
            check(&scheme, &HeaderMap::new(), b"", 0)
                .unwrap_err()
                .0
                .contains("missing header")
        );
    }
}

//! Standard Webhooks signatures: signing outbound deliveries and checking inbound ones.
//! Signed content is `{id}.{timestamp}.{body}`; the header is `v1,<base64 HMAC-SHA256>`, several
//! separated by spaces while keys rotate; the secret is `whsec_` + base64.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

pub use crate::config::secret::decode_secret;

fn mac(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `webhook-signature` header value for one attempt.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    format!(
        "v1,{}",
        B64.encode(mac(key, id, timestamp, body).finalize().into_bytes())
    )
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing header `{0}`")]
    MissingHeader(&'static str),
    #[error("`webhook-timestamp` is not a unix time in seconds")]
    BadTimestamp,
    #[error("`webhook-timestamp` is {0} s away from now, more than the tolerance allows")]
    StaleTimestamp(i64),
    #[error("no signature in `webhook-signature` matches the body")]
    NoMatch,
}

/// Checks Standard Webhooks headers against the raw body, in constant time per signature.
pub fn verify(
    key: &[u8],
    id: Option<&str>,
    timestamp: Option<&str>,
    signatures: Option<&str>,
    body: &[u8],
    now_secs: i64,
    tolerance_secs: i64,
) -> Result<(), VerifyError> {
    let id = id.ok_or(VerifyError::MissingHeader("webhook-id"))?;
    let timestamp = timestamp.ok_or(VerifyError::MissingHeader("webhook-timestamp"))?;
    let signatures = signatures.ok_or(VerifyError::MissingHeader("webhook-signature"))?;
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::BadTimestamp)?;
    // Saturating: a timestamp as far from now as an i64 allows is stale, not an overflow.
    let skew = now_secs.saturating_sub(ts);
    if skew.unsigned_abs() > tolerance_secs.max(0).unsigned_abs() {
        return Err(VerifyError::StaleTimestamp(skew));
    }
    let expected = mac(key, id, ts, body);
    for candidate in signatures.split_whitespace() {
        let Some(b64) = candidate.strip_prefix("v1,") else {
            continue;
        };
        let Ok(bytes) = B64.decode(b64) else { continue };
        if expected.clone().verify_slice(&bytes).is_ok() {
            return Ok(());
        }
    }
    Err(VerifyError::NoMatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn sign_then_verify_round_trips_and_detects_tampering() {
        let key = decode_secret(SECRET).unwrap();
        let sig = sign(&key, "msg_1", 1_700_000_000, b"{\"a\":1}");
        assert!(sig.starts_with("v1,"));
        let ok = verify(
            &key,
            Some("msg_1"),
            Some("1700000000"),
            Some(&sig),
            b"{\"a\":1}",
            1_700_000_010,
            300,
        );
        assert_eq!(ok, Ok(()));
        let rotated = format!("v1,AAAA {sig}");
        assert_eq!(
            verify(
                &key,
                Some("msg_1"),
                Some("1700000000"),
                Some(&rotated),
                b"{\"a\":1}",
                1_700_000_000,
                300
            ),
            Ok(())
        );
        assert_eq!(
            verify(
                &key,
                Some("msg_1"),
                Some("1700000000"),
                Some(&sig),
                b"{\"a\":2}",
                1_700_000_000,
                300
            ),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify(
                &key,
                Some("msg_1"),
                Some("1700000000"),
                Some(&sig),
                b"{\"a\":1}",
                1_700_000_400,
                300
            ),
            Err(VerifyError::StaleTimestamp(400))
        );
        assert_eq!(
            verify(&key, None, Some("1"), Some(&sig), b"", 1, 300),
            Err(VerifyError::MissingHeader("webhook-id"))
        );
    }

    #[test]
    fn timestamps_at_the_ends_of_i64_are_stale_not_an_overflow() {
        let key = decode_secret(SECRET).unwrap();
        for (ts, now) in [
            (i64::MIN, 1_700_000_000),
            (i64::MAX, -1),
            (i64::MAX, i64::MIN),
        ] {
            let sig = sign(&key, "msg_1", ts, b"");
            let got = verify(
                &key,
                Some("msg_1"),
                Some(&ts.to_string()),
                Some(&sig),
                b"",
                now,
                300,
            );
            assert!(
                matches!(got, Err(VerifyError::StaleTimestamp(_))),
                "{ts} at {now}: {got:?}"
            );
        }
    }

    #[test]
    fn secrets_must_decode() {
        assert!(decode_secret("whsec_***").is_err());
        assert!(decode_secret("whsec_AAAA").is_err(), "too short");
    }
}

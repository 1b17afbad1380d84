//! Checking that an inbound request really comes from its source, on the raw bytes and before
//! any parsing: the declarative signature scheme every preset is written in
//! (`config::verify`), and `basic` and `bearer`. Every comparison is constant time; no message
//! holds a secret or the expected signature.

use crate::config::verify::{
    Algorithm, SignatureEncoding, SignatureScheme, SignedPart, TimestampFrom, TimestampRule,
};
use crate::config::{Secret, Verify};
use axum::http::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use subtle::ConstantTimeEq;

/// Why a request was refused. The text is safe to show the sender.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// What a check reads of a request besides its headers.
pub struct Request<'a> {
    pub headers: &'a HeaderMap,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    pub body: &'a [u8],
    pub now_ms: i64,
}

pub fn check(scheme: &Verify, request: &Request<'_>) -> Result<(), Refused> {
    match scheme {
        Verify::None => Ok(()),
        Verify::Signature(s) => check_signature(s, request),
        Verify::Basic { credentials } => {
            let given = authorization(request.headers, "basic")?;
            let decoded = B64
                .decode(given.trim())
                .map_err(|_| Refused("the `Authorization: Basic` value is not base64".into()))?;
            same(credentials, &decoded)
                .then_some(())
                .ok_or_else(|| Refused("the basic auth credentials are wrong".into()))
        }
        Verify::Bearer { token } => {
            let given = authorization(request.headers, "bearer")?;
            same(token, given.trim().as_bytes())
                .then_some(())
                .ok_or_else(|| Refused("the bearer token is wrong".into()))
        }
    }
}

fn same(secret: &Secret, given: &[u8]) -> bool {
    bool::from(secret.expose().ct_eq(given))
}

/// The value after `Authorization: <kind> ` (the kind in any case).
fn authorization<'a>(headers: &'a HeaderMap, kind: &str) -> Result<&'a str, Refused> {
    let value = header(headers, "authorization")?;
    match value.split_once(' ') {
        Some((k, rest)) if k.eq_ignore_ascii_case(kind) => Ok(rest),
        _ => Err(Refused(format!(
            "the `authorization` header is not `{}` credentials",
            if kind == "basic" { "Basic" } else { "Bearer" }
        ))),
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, Refused> {
    match headers.get(name) {
        None => Err(Refused(format!("missing header `{name}`"))),
        Some(v) => v
            .to_str()
            .map_err(|_| Refused(format!("header `{name}` is not visible ASCII"))),
    }
}

fn check_signature(scheme: &SignatureScheme, request: &Request<'_>) -> Result<(), Refused> {
    let name = scheme.header.as_str();
    let value = header(request.headers, name)?;
    // The signatures the header holds, and the list's timestamp item.
    let mut candidates: Vec<&str> = Vec::new();
    let mut item_timestamp = None;
    match &scheme.list {
        None => candidates.push(value.trim()),
        Some(list) => {
            for item in value.split(list.separator.as_str()) {
                let Some((key, v)) = item.trim().split_once(list.assign.as_str()) else {
                    continue;
                };
                if key == list.key {
                    candidates.push(v.trim());
                }
                if let Some(TimestampRule {
                    from: TimestampFrom::Item(ts_key),
                    ..
                }) = &scheme.timestamp
                    && key == ts_key
                {
                    item_timestamp = Some(v.trim());
                }
            }
            if candidates.is_empty() {
                return Err(Refused(format!(
                    "header `{name}` has no `{}{}` item",
                    list.key, list.assign
                )));
            }
        }
    }
    let timestamp = match &scheme.timestamp {
        None => None,
        Some(rule) => {
            let text = match &rule.from {
                TimestampFrom::Header(h) => header(request.headers, h)?.trim(),
                TimestampFrom::Item(key) => item_timestamp.ok_or_else(|| {
                    Refused(format!("header `{name}` has no `{key}` timestamp item"))
                })?,
            };
            // Signed as the number it is, as Standard Webhooks' and Stripe's libraries do: `-0`
            // or `007` in the header is the `0` or `7` the sender signed.
            Some(fresh(text, rule, request.now_ms)?.to_string())
        }
    };
    let decoded: Vec<Vec<u8>> = candidates
        .iter()
        .filter_map(|c| c.strip_prefix(scheme.prefix.as_str()))
        .filter_map(|c| decode(scheme.encoding, c))
        .collect();
    if decoded.is_empty() {
        let what = match scheme.encoding {
            SignatureEncoding::Hex => "hex",
            SignatureEncoding::Base64 => "base64",
        };
        return Err(Refused(if scheme.prefix.is_empty() {
            format!("header `{name}` holds no {what} signature")
        } else {
            format!(
                "header `{name}` holds no {what} signature after `{}`",
                scheme.prefix
            )
        }));
    }
    let mut mac = AnyMac::new(scheme.algorithm, scheme.key.expose());
    for part in &scheme.signed {
        match part {
            SignedPart::Text(t) => mac.update(t.as_bytes()),
            SignedPart::Body => mac.update(request.body),
            SignedPart::Timestamp => {
                mac.update(timestamp.as_deref().unwrap_or_default().as_bytes())
            }
            SignedPart::Id => {
                let h = scheme.id_header.as_deref().unwrap_or_default();
                mac.update(header(request.headers, h)?.as_bytes())
            }
            SignedPart::Url => {
                mac.update(scheme.url.as_deref().unwrap_or_default().as_bytes());
                if let Some(q) = request.query {
                    mac.update(b"?");
                    mac.update(q.as_bytes());
                }
            }
            SignedPart::Form => form_part(&mut mac, request)?,
        }
    }
    let expected = mac.finalize();
    // Every candidate is compared, so the time does not say which one matched.
    let matched = decoded.iter().fold(subtle::Choice::from(0), |any, given| {
        any | expected.as_slice().ct_eq(given)
    });
    if bool::from(matched) {
        Ok(())
    } else {
        Err(Refused(format!(
            "no signature in `{name}` matches the request (`scheme: {}`)",
            scheme.name
        )))
    }
}

/// The timestamp, refused when it is not a whole number or is further from now than the
/// tolerance.
fn fresh(text: &str, rule: &TimestampRule, now_ms: i64) -> Result<i64, Refused> {
    let unit = if rule.in_millis {
        "milliseconds"
    } else {
        "seconds"
    };
    let not_a_time = || {
        Refused(format!(
            "the timestamp `{}` is not a unix time in {unit}",
            shown(text)
        ))
    };
    let n: i64 = text.parse().map_err(|_| not_a_time())?;
    let at_ms = if rule.in_millis {
        n
    } else {
        n.checked_mul(1000).ok_or_else(not_a_time)?
    };
    let away_ms = now_ms.abs_diff(at_ms);
    let tolerance_ms = u64::try_from(rule.tolerance.as_millis()).unwrap_or(u64::MAX);
    if away_ms > tolerance_ms {
        return Err(Refused(format!(
            "the timestamp `{}` is {} s {} now; at most {} is taken",
            shown(text),
            away_ms / 1000,
            if at_ms < now_ms { "before" } else { "after" },
            humantime::format_duration(rule.tolerance)
        )));
    }
    Ok(n)
}

/// A value from the request, cut short for a message.
fn shown(text: &str) -> String {
    let mut cut: String = text.chars().take(40).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    cut
}

/// Twilio's rule: a form body's parameters sorted by name (a repeated name's values sorted, each
/// once), each name followed by its value. A body that is not a form is covered by the
/// `bodySHA256` query parameter, the hex SHA-256 of the body, which the signed URL holds.
fn form_part(mac: &mut AnyMac, request: &Request<'_>) -> Result<(), Refused> {
    if super::formats::media_type(request.headers).as_deref() == Some(super::formats::FORM) {
        let mut params: Vec<(String, String)> = url::form_urlencoded::parse(request.body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        params.sort();
        params.dedup();
        for (k, v) in &params {
            mac.update(k.as_bytes());
            mac.update(v.as_bytes());
        }
        return Ok(());
    }
    let digest = request.query.and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "bodySHA256")
            .map(|(_, v)| v.into_owned())
    });
    let Some(given) = digest else {
        return Err(Refused(
            "the body is not a form, and the URL has no `bodySHA256` parameter that covers it"
                .into(),
        ));
    };
    use sha2::Digest;
    let actual = sha2::Sha256::digest(request.body);
    match decode(SignatureEncoding::Hex, &given) {
        Some(given) if bool::from(actual.as_slice().ct_eq(&given)) => Ok(()),
        _ => Err(Refused(
            "the `bodySHA256` parameter is not the SHA-256 of the body".into(),
        )),
    }
}

fn decode(encoding: SignatureEncoding, text: &str) -> Option<Vec<u8>> {
    match encoding {
        SignatureEncoding::Hex => decode_hex(text),
        SignatureEncoding::Base64 => B64.decode(text).ok(),
    }
}

/// Hex digits only (either case): `from_str_radix` alone would take a sign, so that one
/// signature had several spellings.
fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// An HMAC under one of the algorithms a scheme names.
enum AnyMac {
    Sha1(Hmac<sha1::Sha1>),
    Sha256(Hmac<sha2::Sha256>),
    Sha512(Hmac<sha2::Sha512>),
}

impl AnyMac {
    fn new(algorithm: Algorithm, key: &[u8]) -> AnyMac {
        // HMAC takes keys of any length.
        fn never<T>(_: hmac::digest::InvalidLength) -> T {
            unreachable!("HMAC takes any key length")
        }
        match algorithm {
            Algorithm::Sha1 => AnyMac::Sha1(Hmac::new_from_slice(key).unwrap_or_else(never)),
            Algorithm::Sha256 => AnyMac::Sha256(Hmac::new_from_slice(key).unwrap_or_else(never)),
            Algorithm::Sha512 => AnyMac::Sha512(Hmac::new_from_slice(key).unwrap_or_else(never)),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            AnyMac::Sha1(m) => m.update(data),
            AnyMac::Sha256(m) => m.update(data),
            AnyMac::Sha512(m) => m.update(data),
        }
    }

    fn finalize(self) -> Vec<u8> {
        match self {
            AnyMac::Sha1(m) => m.finalize().into_bytes().to_vec(),
            AnyMac::Sha256(m) => m.finalize().into_bytes().to_vec(),
            AnyMac::Sha512(m) => m.finalize().into_bytes().to_vec(),
        }
    }
}

/// Zoom's `encryptedToken`: the hex HMAC-SHA256 of the plain token under the source's secret.
pub fn zoom_token(key: &Secret, plain_token: &str) -> String {
    let mut mac = AnyMac::new(Algorithm::Sha256, key.expose());
    mac.update(plain_token.as_bytes());
    mac.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(headers: &'a HeaderMap, body: &'a [u8], now_ms: i64) -> Request<'a> {
        Request {
            headers,
            query: None,
            body,
            now_ms,
        }
    }

    #[test]
    fn timestamps_far_off_or_overflowing_are_refused_not_wrapped() {
        let rule = TimestampRule {
            from: TimestampFrom::Header("t".into()),
            in_millis: false,
            tolerance: std::time::Duration::from_secs(300),
        };
        assert!(fresh("1700000000", &rule, 1_700_000_100_000).is_ok());
        assert!(fresh("1700000000", &rule, 1_700_000_400_000).is_err());
        assert!(fresh("9223372036854775807", &rule, 0).is_err());
        assert!(fresh("-9223372036854775808", &rule, i64::MAX).is_err());
        assert!(
            fresh("1e9", &rule, 0)
                .unwrap_err()
                .0
                .contains("not a unix time")
        );
        let endless = TimestampRule {
            tolerance: std::time::Duration::MAX,
            ..rule
        };
        assert!(fresh("-9223372036854775", &endless, i64::MAX).is_ok());
    }

    #[test]
    fn hex_is_digits_only() {
        assert_eq!(decode_hex("0fA0"), Some(vec![0x0f, 0xa0]));
        assert_eq!(decode_hex("+f"), None);
        assert_eq!(decode_hex("-0"), None);
        assert_eq!(decode_hex("f"), None);
        assert_eq!(decode_hex("é0"), None);
    }

    #[test]
    fn basic_and_bearer() {
        let basic = Verify::Basic {
            credentials: Secret::new(b"ferry:pa ss".to_vec()),
        };
        let mut headers = HeaderMap::new();
        let auth = format!("basic {}", B64.encode("ferry:pa ss"));
        headers.insert("authorization", auth.parse().unwrap());
        assert!(check(&basic, &request(&headers, b"{}", 0)).is_ok());
        headers.insert("authorization", "Basic Zm9vOmJhcg==".parse().unwrap());
        assert!(check(&basic, &request(&headers, b"{}", 0)).is_err());
        let bearer = Verify::Bearer {
            token: Secret::new(b"tok".to_vec()),
        };
        assert!(
            check(&bearer, &request(&headers, b"{}", 0))
                .unwrap_err()
                .0
                .contains("not `Bearer`")
        );
        headers.insert("authorization", "Bearer tok".parse().unwrap());
        assert!(check(&bearer, &request(&headers, b"{}", 0)).is_ok());
        headers.insert("authorization", "Bearer tok2".parse().unwrap());
        assert!(check(&bearer, &request(&headers, b"{}", 0)).is_err());
    }
}

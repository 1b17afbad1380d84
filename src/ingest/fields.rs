//! What ingest reads from a request besides its body: the headers kept with the event, and a
//! source's event type or idempotency key where the source says it is (a header, or a jq path
//! in the body).

use crate::config::FieldRef;
use crate::engine::sandbox::SandboxError;
use axum::http::HeaderMap;

/// Headers that are never stored with an event: credentials and signatures.
pub(crate) const UNSTORED_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "webhook-signature",
    "x-hub-signature",
    "x-hub-signature-256",
];

/// The request headers kept with an event, by name (of a repeated name, the last value): all
/// but credentials, signatures, the header a generic HMAC source is signed in, and every
/// header `secrets::is_secret_header` names. Borrowed
/// from the request and sorted by name, so nothing is copied before it is serialised.
pub(crate) struct KeptHeaders<'a>(pub(crate) Vec<(&'a str, std::borrow::Cow<'a, str>)>);

impl<'a> KeptHeaders<'a> {
    pub(crate) fn of(headers: &'a HeaderMap, verify: &crate::config::Verify) -> KeptHeaders<'a> {
        let signed_in = verify.proof_header();
        let mut kept = Vec::with_capacity(headers.len());
        for (name, value) in headers {
            let name = name.as_str();
            if UNSTORED_HEADERS.contains(&name)
                || signed_in == Some(name)
                || crate::config::redact::is_secret_header(name)
            {
                continue;
            }
            let value = match std::str::from_utf8(value.as_bytes()) {
                Ok(text) => std::borrow::Cow::Borrowed(text),
                Err(_) => String::from_utf8_lossy(value.as_bytes()),
            };
            kept.push((name, value));
        }
        // A stable sort keeps a repeated name's values in order; the last one stays.
        kept.sort_by(|a, b| a.0.cmp(b.0));
        kept.dedup_by(|later, earlier| {
            let same = later.0 == earlier.0;
            if same {
                std::mem::swap(later, earlier);
            }
            same
        });
        KeptHeaders(kept)
    }
}

impl serde::Serialize for KeptHeaders<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

/// Why a source's event type or idempotency key could not be read from a request.
pub(super) enum FieldError {
    /// The header is given more than once, or holds a byte that is not visible ASCII: the
    /// request is malformed (`400`).
    Malformed(String),
    /// The expression failed, overran, or gave too much (`422`).
    Failed(String),
}

/// A value read from a body by a plain path, refused past the length an expression worker
/// would answer (`protocol::MAX_READ`), so that both ways agree.
pub(super) fn bounded(found: Option<String>, code: &str) -> Result<Option<String>, FieldError> {
    use crate::engine::sandbox::protocol::MAX_READ;
    match found {
        Some(s) if s.len() > MAX_READ => Err(FieldError::Failed(format!(
            "jq expression `{code}` gave {} bytes; the limit is {MAX_READ}",
            s.len()
        ))),
        other => Ok(other),
    }
}

/// Reads a value where the source says it is: a header, or a jq path in the body. A plain
/// field path is read from the raw JSON here; any other expression runs in a worker.
///
/// `Err` only when the expression workers are busy (the request is shed with `503`); a header
/// that is not text, or an expression that failed or overran, is `Ok(Err(why))`.
pub(super) async fn read_field(
    sandbox: &crate::engine::sandbox::Sandbox,
    field: &FieldRef,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Result<Option<String>, FieldError>, SandboxError> {
    match field {
        FieldRef::Header(name) => {
            let mut values = headers.get_all(name.as_str()).iter();
            let first = values.next();
            if values.next().is_some() {
                // Which one counts is what a receiver and Ferry could disagree on.
                return Ok(Err(FieldError::Malformed(format!(
                    "header `{name}` is given more than once"
                ))));
            }
            Ok(match first.map(|v| v.to_str()) {
                None => Ok(None),
                Some(Ok(text)) => Ok(Some(text.to_string())),
                Some(Err(_)) => Err(FieldError::Malformed(format!(
                    "header `{name}` holds a byte that is not visible ASCII (only 0x20 to 0x7E and tab are read)"
                ))),
            })
        }
        FieldRef::Body(e) => {
            if let Some(path) = e.field_path()
                && let Some(found) = crate::json::read_plain_path(body, path)
            {
                return Ok(bounded(found, e.code()));
            }
            match sandbox.read(e, body).await {
                Ok(read) => Ok(read.map_err(FieldError::Failed)),
                Err(busy) if busy.is_overload() => Err(busy),
                Err(other) => Ok(Err(FieldError::Failed(other.to_string()))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_headers_are_sorted_keep_the_last_value_and_leave_out_secrets() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("x-b", "1"),
            ("x-a", "first"),
            ("authorization", "Bearer secret"),
            ("x-sig", "signed"),
            ("x-api-key", "key"),
            ("x-a", "second"),
            ("x-a", "last"),
        ] {
            headers.append(
                axum::http::HeaderName::from_static(name),
                axum::http::HeaderValue::from_static(value),
            );
        }
        let verify = crate::config::Verify::Signature(Box::new(
            crate::config::verify::SignatureScheme::body_hmac(
                "x-sig",
                b"k".to_vec(),
                crate::config::SignatureEncoding::Hex,
                "",
            ),
        ));
        let json = serde_json::to_string(&KeptHeaders::of(&headers, &verify)).unwrap();
        assert_eq!(json, r#"{"x-a":"last","x-b":"1"}"#);
    }
}

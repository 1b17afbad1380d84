//! How a source's body becomes its event's JSON payload, by the source's `format`: a form
//! (`application/x-www-form-urlencoded`) becomes an object of strings, and a CloudEvent (1.0,
//! HTTP binding) in structured, binary or batch mode becomes its structured JSON, so that flows
//! read the same attributes (`.type`, `.source`, `.id`, `.data`) whichever mode it came in.

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Map, Value};

use crate::api::error::ApiError;

/// The payloads a request carries: one, or a CloudEvents batch's.
pub(super) enum Payloads {
    One(Bytes),
    Batch(Vec<Bytes>),
}

fn invalid(code: &'static str, message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

/// The request's media type, lower case, without parameters.
pub(super) fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers
        .get(axum::http::header::CONTENT_TYPE)?
        .to_str()
        .ok()?;
    Some(value.split(';').next()?.trim().to_ascii_lowercase())
}

/// Percent-decodes `text` (and `+` as a space when `plus`), refusing what is not UTF-8.
fn decoded(text: &[u8], plus: bool, place: &str) -> Result<String, String> {
    let spaced: std::borrow::Cow<'_, [u8]> = if plus && text.contains(&b'+') {
        text.iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect::<Vec<u8>>()
            .into()
    } else {
        text.into()
    };
    percent_encoding::percent_decode(&spaced)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| format!("{place} is not UTF-8 once percent-decoded"))
}

/// A form body as a JSON object: each name to its value, a repeated name to the list of its
/// values in order.
pub(super) fn form(headers: &HeaderMap, body: &[u8]) -> Result<Bytes, ApiError> {
    match media_type(headers).as_deref() {
        Some(FORM) => {}
        other => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "this source takes `application/x-www-form-urlencoded` bodies (`format: form`), not `{}`",
                    other.unwrap_or("no content type")
                ),
            ));
        }
    }
    let mut object = Map::new();
    for (n, pair) in body.split(|&b| b == b'&').enumerate() {
        if pair.is_empty() {
            continue;
        }
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, &pair[pair.len()..]),
        };
        let place = format!("parameter {}", n + 1);
        let name = decoded(name, true, &format!("the name of {place}"))
            .map_err(|e| invalid("invalid_form", e))?;
        let value = Value::String(
            decoded(value, true, &format!("the value of {place}"))
                .map_err(|e| invalid("invalid_form", e))?,
        );
        match object.get_mut(&name) {
            None => {
                object.insert(name, value);
            }
            Some(Value::Array(values)) => values.push(value),
            Some(first) => {
                let first = first.take();
                object.insert(name, Value::Array(vec![first, value]));
            }
        }
    }
    Ok(Bytes::from(
        serde_json::to_vec(&Value::Object(object)).unwrap_or_default(),
    ))
}

pub(super) const FORM: &str = "application/x-www-form-urlencoded";
const STRUCTURED: &str = "application/cloudevents+json";
const BATCH: &str = "application/cloudevents-batch+json";

/// A CloudEvents request's events, each as its structured-mode JSON.
pub(super) fn cloudevents(
    headers: &HeaderMap,
    body: &Bytes,
    batch_enabled: bool,
) -> Result<Payloads, ApiError> {
    let media = media_type(headers);
    match media.as_deref() {
        Some(STRUCTURED) => {
            let event = parse(body)?;
            check_event(&event, "the event")?;
            Ok(Payloads::One(body.clone()))
        }
        Some(BATCH) if !batch_enabled => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "this source does not take CloudEvents batches; set `cloudevents: { batch: true }` on it to take them".to_string(),
        )),
        Some(BATCH) => {
            crate::json::check_depth(body).map_err(|e| invalid("invalid_json", format!("the body is not strict JSON: {e}")))?;
            // Borrowed from the body: each event's payload is a slice of it, not a copy.
            let events: Vec<&serde_json::value::RawValue> = serde_json::from_slice(body)
                .map_err(|e| invalid("invalid_cloudevent", format!("a batch is a JSON array of events: {e}")))?;
            let mut payloads = Vec::with_capacity(events.len());
            for (n, raw) in events.iter().enumerate() {
                let event: Value = serde_json::from_str(raw.get()).map_err(|e| {
                    invalid("invalid_json", format!("event {n} of the batch: {e}"))
                })?;
                check_event(&event, &format!("event {n} of the batch"))?;
                payloads.push(body.slice_ref(raw.get().as_bytes()));
            }
            Ok(Payloads::Batch(payloads))
        }
        _ if headers.contains_key("ce-specversion") => binary(headers, body, media.as_deref()),
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "a CloudEvent comes as `{STRUCTURED}` (structured mode) or with `ce-` headers (binary mode); this request is `{}` without `ce-specversion`",
                other.unwrap_or("no content type")
            ),
        )),
    }
}

fn parse(body: &[u8]) -> Result<Value, ApiError> {
    crate::json::check_depth(body)
        .map_err(|e| invalid("invalid_json", format!("the body is not strict JSON: {e}")))?;
    serde_json::from_slice(body)
        .map_err(|e| invalid("invalid_json", format!("the body is not strict JSON: {e}")))
}

/// The required attributes, as CloudEvents 1.0 has them.
fn check_event(event: &Value, what: &str) -> Result<(), ApiError> {
    let Some(object) = event.as_object() else {
        return Err(invalid(
            "invalid_cloudevent",
            format!("{what} is not a JSON object"),
        ));
    };
    match object.get("specversion").and_then(Value::as_str) {
        Some("1.0") => {}
        Some(other) => {
            return Err(invalid(
                "invalid_cloudevent",
                format!("{what} has `specversion` `{other}`; Ferry takes 1.0"),
            ));
        }
        None => {
            return Err(invalid(
                "invalid_cloudevent",
                format!("{what} has no `specversion` string"),
            ));
        }
    }
    for name in ["id", "source", "type"] {
        if object
            .get(name)
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(invalid(
                "invalid_cloudevent",
                format!("{what} has no `{name}`: a non-empty string is required"),
            ));
        }
    }
    if object.contains_key("data") && object.contains_key("data_base64") {
        return Err(invalid(
            "invalid_cloudevent",
            format!("{what} has both `data` and `data_base64`"),
        ));
    }
    if let Some(encoded) = object.get("data_base64") {
        use base64::Engine;
        let decodes = encoded
            .as_str()
            .is_some_and(|t| base64::engine::general_purpose::STANDARD.decode(t).is_ok());
        if !decodes {
            return Err(invalid(
                "invalid_cloudevent",
                format!("{what} has a `data_base64` that is not base64"),
            ));
        }
    }
    Ok(())
}

/// Binary mode: the attributes in `ce-` headers (percent-encoded), the body the data, its
/// `Content-Type` the `datacontenttype`. JSON data is kept as JSON, other data as
/// `data_base64`.
fn binary(headers: &HeaderMap, body: &Bytes, media: Option<&str>) -> Result<Payloads, ApiError> {
    let mut event = Map::new();
    for name in headers.keys() {
        let Some(attribute) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        let place = format!("header `{name}`");
        if attribute.is_empty()
            || !attribute
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(invalid(
                "invalid_cloudevent",
                format!("{place}: an attribute name is lower-case letters and digits"),
            ));
        }
        if attribute == "datacontenttype" {
            return Err(invalid(
                "invalid_cloudevent",
                format!("{place}: in binary mode the data's type is the `Content-Type` header"),
            ));
        }
        if attribute == "data" {
            return Err(invalid(
                "invalid_cloudevent",
                format!("{place}: in binary mode the data is the body"),
            ));
        }
        let mut values = headers.get_all(name).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return Err(invalid(
                "invalid_cloudevent",
                format!("{place} is repeated"),
            ));
        };
        let text = decoded(value.as_bytes(), false, &place)
            .map_err(|e| invalid("invalid_cloudevent", e))?;
        event.insert(attribute.to_string(), Value::String(text));
    }
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if let Some(ct) = content_type {
        event.insert("datacontenttype".into(), Value::String(ct.to_string()));
    }
    if !body.is_empty() {
        let json = match media {
            None => true,
            Some(m) => m == "application/json" || m == "text/json" || m.ends_with("+json"),
        };
        if json {
            event.insert("data".into(), parse(body)?);
        } else {
            use base64::Engine;
            event.insert(
                "data_base64".into(),
                Value::String(base64::engine::general_purpose::STANDARD.encode(body)),
            );
        }
    }
    let event = Value::Object(event);
    check_event(&event, "the event's `ce-` headers")?;
    Ok(Payloads::One(Bytes::from(
        serde_json::to_vec(&event).unwrap_or_default(),
    )))
}

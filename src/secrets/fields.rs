//! Which fields hold secrets: the one list ([`FIELDS`]) that sealing, masking, restoring a
//! masked value on update and the OpenAPI document all read, and the name rules for header
//! names and query parameters. A place is found in a spec by [`places`].
//!
//! Channels (`signing.secret`, `smtp.password`, a Slack channel's `url`) are not here: they come
//! from the config file only, are held as `config::Secret`, and are never stored or shown.

use super::url;
use crate::config::ObjectKind;
use serde_json::Value;

/// Shown instead of a secret, and taken back on update as "keep the stored secret".
pub const MASK: &str = "********";

/// Where a secret field is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// A source (`verify`).
    Source,
    /// A destination.
    Destination,
    /// An `http` step of a flow, at any depth (inside `branch` cases too).
    HttpStep,
}

/// How the value at a field is secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// The whole string.
    Whole,
    /// A map of header names to values: a value is secret when its name is
    /// ([`is_secret_header`]) or is listed in the holder's `secret_headers`.
    Headers,
    /// A URL: its secret query parameters ([`is_secret_query_param`], or listed in the holder's
    /// `secret_query_params`) and a password in it. Stored sealed whole; shown with those
    /// values masked.
    Url,
}

/// One secret field of a holder.
#[derive(Debug)]
pub struct Field {
    pub holder: Holder,
    /// The keys from the holder to the field.
    pub path: &'static [&'static str],
    pub how: How,
    /// What the field is, for the OpenAPI document.
    pub about: &'static str,
}

/// Every field that holds a secret.
pub const FIELDS: &[Field] = &[
    Field {
        holder: Holder::Source,
        path: &["verify", "secret"],
        how: How::Whole,
        about: "the verification secret (an HMAC key, or a `whsec_` secret)",
    },
    Field {
        holder: Holder::Destination,
        path: &["signing", "secret"],
        how: How::Whole,
        about: "the `whsec_` signing secret",
    },
    Field {
        holder: Holder::Destination,
        path: &["headers"],
        how: How::Headers,
        about: "header values; a secret header's value (named like authorization, cookie, *-key, *-token, *-secret, *-password, *signature*, or listed in `secret_headers`) is write-only",
    },
    Field {
        holder: Holder::Destination,
        path: &["url"],
        how: How::Url,
        about: "the URL; secret query parameters (named like key, token, secret, api_key, sig, signature, password, or listed in `secret_query_params`) and a password in it are write-only",
    },
    Field {
        holder: Holder::HttpStep,
        path: &["auth", "bearer"],
        how: How::Whole,
        about: "the bearer token",
    },
    Field {
        holder: Holder::HttpStep,
        path: &["auth", "basic", "password"],
        how: How::Whole,
        about: "the basic auth password",
    },
    Field {
        holder: Holder::HttpStep,
        path: &["auth", "api_key", "value"],
        how: How::Whole,
        about: "the API key",
    },
    Field {
        holder: Holder::HttpStep,
        path: &["auth", "oauth2_client_credentials", "client_secret"],
        how: How::Whole,
        about: "the OAuth2 client secret",
    },
    Field {
        holder: Holder::HttpStep,
        path: &["auth", "oauth2_client_credentials", "token_url"],
        how: How::Url,
        about: "the token URL; secret query parameters and a password in it are write-only",
    },
    Field {
        holder: Holder::HttpStep,
        path: &["headers"],
        how: How::Headers,
        about: "header templates; a secret header's value is write-only",
    },
    Field {
        holder: Holder::HttpStep,
        path: &["url"],
        how: How::Url,
        about: "the URL template; secret query parameters and a password in it are write-only",
    },
];

/// The field of a holder that lists more header names to treat as secret.
pub const SECRET_HEADERS: &str = "secret_headers";
/// The field of a holder that lists more query parameter names to treat as secret.
pub const SECRET_QUERY_PARAMS: &str = "secret_query_params";

/// Header names that end like these hold secrets.
const SECRET_HEADER_ENDINGS: [&str; 10] = [
    "-key",
    "_key",
    "-token",
    "_token",
    "-secret",
    "_secret",
    "-signature",
    "_signature",
    "-password",
    "_password",
];
/// Header names that hold secrets whole.
const SECRET_HEADER_NAMES: [&str; 9] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "apikey",
    "token",
    "secret",
    "password",
    "signature",
];
/// Names that end like a secret but are not one.
const PUBLIC_HEADER_NAMES: [&str; 1] = ["idempotency-key"];

/// Whether a header of this name carries a secret (case does not matter): `authorization`,
/// `proxy-authorization`, `cookie`, `set-cookie`, names ending in `-key`, `-token`, `-secret`
/// or `-password` (or with `_`), except `idempotency-key`, and names with `signature` in them.
/// Ingest asks it for every header of every event: a lower-case name (as `http` gives them) is
/// checked without allocating.
pub fn is_secret_header(name: &str) -> bool {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return is_secret_lower_case_header(&name.to_ascii_lowercase());
    }
    is_secret_lower_case_header(name)
}

fn is_secret_lower_case_header(name: &str) -> bool {
    !PUBLIC_HEADER_NAMES.contains(&name)
        && (SECRET_HEADER_NAMES.contains(&name)
            || SECRET_HEADER_ENDINGS.iter().any(|end| name.ends_with(end))
            || name.contains("signature"))
}

/// Query parameter names that hold secrets whole.
const SECRET_PARAM_NAMES: [&str; 14] = [
    "key",
    "apikey",
    "token",
    "secret",
    "sig",
    "signature",
    "password",
    "passwd",
    "pwd",
    "auth",
    "code",
    "access_token",
    "client_secret",
    "private_token",
];
/// Query parameter names that end like these hold secrets.
const SECRET_PARAM_ENDINGS: [&str; 10] = [
    "_key",
    "-key",
    "_token",
    "-token",
    "_secret",
    "-secret",
    "_signature",
    "-signature",
    "_password",
    "-password",
];

/// Whether a query parameter of this (decoded) name carries a secret (case does not matter):
/// `key`, `token`, `secret`, `sig`, `signature`, `password`, `auth`, `code`, `api_key` and
/// names ending like `_key`, `_token`, `_secret`, `_signature`, `_password` (or with `-`).
pub fn is_secret_query_param(name: &str) -> bool {
    SECRET_PARAM_NAMES
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n))
        || SECRET_PARAM_ENDINGS
            .iter()
            .any(|end| ends_with_ignore_case(name, end))
}

fn ends_with_ignore_case(text: &str, end: &str) -> bool {
    text.len() >= end.len()
        && text.as_bytes()[text.len() - end.len()..].eq_ignore_ascii_case(end.as_bytes())
}

/// A secret's place in a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// A JSON pointer from the spec's root (`/steps/0/http/auth/bearer`).
    pub pointer: String,
    pub kind: PlaceKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlaceKind {
    /// The whole string is secret.
    Whole,
    /// A URL with secret parts; more query parameter names to treat as secret (lower case).
    Url(Vec<String>),
}

/// Whether a stored string is a sealed value (`sealed:...`): such a string at a field of the
/// list is always a place, so that it is opened (and sealed again on write) whatever its name.
fn looks_sealed(text: &str) -> bool {
    text.starts_with(super::seal::SEALED)
}

/// Every secret's place in `spec`, an object of `kind` as written: the fields of [`FIELDS`]
/// that hold a string, a header value only when its name is secret (or listed, or the value
/// looks sealed), a URL only when it has a secret part (or looks sealed).
pub fn places(kind: ObjectKind, spec: &Value) -> Vec<Place> {
    let mut out = Vec::new();
    match kind {
        ObjectKind::Source => holder_places(Holder::Source, spec, "", &mut out),
        ObjectKind::Destination => holder_places(Holder::Destination, spec, "", &mut out),
        ObjectKind::Flow => {
            if let Some(steps) = spec.get("steps") {
                step_places(steps, "/steps", &mut out);
            }
        }
        ObjectKind::EventType | ObjectKind::Alert => {}
    }
    out
}

/// The places in a list of steps, and in the lists inside their `branch` cases.
fn step_places(steps: &Value, pointer: &str, out: &mut Vec<Place>) {
    let Some(steps) = steps.as_array() else {
        return;
    };
    for (i, step) in steps.iter().enumerate() {
        let at = format!("{pointer}/{i}");
        if let Some(http) = step.get("http") {
            holder_places(Holder::HttpStep, http, &format!("{at}/http"), out);
        }
        if let Some(cases) = step.get("branch").and_then(Value::as_array) {
            for (c, case) in cases.iter().enumerate() {
                for list in ["steps", "else"] {
                    if let Some(inner) = case.get(list) {
                        step_places(inner, &format!("{at}/branch/{c}/{list}"), out);
                    }
                }
            }
        }
    }
}

/// The names a holder lists in `field` (`secret_headers`, `secret_query_params`), lower case.
pub fn listed(holder: &Value, field: &str) -> Vec<String> {
    holder
        .get(field)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_ascii_lowercase)
        .collect()
}

fn holder_places(holder: Holder, value: &Value, pointer: &str, out: &mut Vec<Place>) {
    let headers = listed(value, SECRET_HEADERS);
    let params = listed(value, SECRET_QUERY_PARAMS);
    for field in FIELDS.iter().filter(|f| f.holder == holder) {
        let Some(found) = field.path.iter().try_fold(value, |v, key| v.get(key)) else {
            continue;
        };
        let at = field
            .path
            .iter()
            .fold(pointer.to_string(), |p, key| format!("{p}/{}", escape(key)));
        match field.how {
            How::Whole => {
                if found.is_string() {
                    out.push(Place {
                        pointer: at,
                        kind: PlaceKind::Whole,
                    });
                }
            }
            How::Headers => {
                for (name, v) in found.as_object().into_iter().flatten() {
                    let Some(text) = v.as_str() else { continue };
                    if is_secret_header(name)
                        || headers.contains(&name.to_ascii_lowercase())
                        || looks_sealed(text)
                    {
                        out.push(Place {
                            pointer: format!("{at}/{}", escape(name)),
                            kind: PlaceKind::Whole,
                        });
                    }
                }
            }
            How::Url => {
                if let Some(text) = found.as_str()
                    && (url::has_secret(text, &params) || looks_sealed(text))
                {
                    out.push(Place {
                        pointer: at,
                        kind: PlaceKind::Url(params.clone()),
                    });
                }
            }
        }
    }
}

/// A key as a JSON pointer token (RFC 6901).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// `spec` with every secret shown as [`MASK`] (a URL's secret parts only).
pub fn masked(kind: ObjectKind, spec: &Value) -> Value {
    let mut out = spec.clone();
    for place in places(kind, spec) {
        if let Some(Value::String(text)) = out.pointer_mut(&place.pointer) {
            *text = match &place.kind {
                PlaceKind::Whole => MASK.to_string(),
                PlaceKind::Url(params) => url::masked(text, params),
            };
        }
    }
    out
}

/// Puts back, in a spec sent to replace `old`, the secrets it gives as the mask (what a read
/// showed): the whole value, or a URL's masked parts, from `old` at the same place. Answers the
/// places whose mask has nothing to stand for (no `old`, or nothing there).
pub fn restore_masked(kind: ObjectKind, spec: &mut Value, old: Option<&Value>) -> Vec<String> {
    let mut missing = Vec::new();
    for place in places(kind, spec) {
        let before = old
            .and_then(|o| o.pointer(&place.pointer))
            .and_then(Value::as_str);
        let Some(Value::String(text)) = spec.pointer_mut(&place.pointer) else {
            continue;
        };
        match &place.kind {
            PlaceKind::Whole if text == MASK => match before {
                Some(b) => *text = b.to_string(),
                None => missing.push(place.pointer.clone()),
            },
            PlaceKind::Url(params) if url::has_mask(text, params) => {
                match before.and_then(|b| url::unmasked(text, b, params)) {
                    Some(full) => *text = full,
                    None => missing.push(place.pointer.clone()),
                }
            }
            _ => {}
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn header_and_query_names() {
        for name in [
            "Authorization",
            "cookie",
            "X-Api-Key",
            "x-auth-token",
            "X-Webhook-Secret",
            "x-hub-signature-256",
            "x_client_password",
            "apikey",
        ] {
            assert!(is_secret_header(name), "{name}");
        }
        for name in [
            "accept",
            "content-type",
            "idempotency-key",
            "x-tenant",
            "keys",
        ] {
            assert!(!is_secret_header(name), "{name}");
        }
        for name in [
            "key",
            "TOKEN",
            "api_key",
            "sig",
            "signature",
            "access_token",
            "x-amz-signature",
        ] {
            assert!(is_secret_query_param(name), "{name}");
        }
        for name in ["page", "q", "keyword", "monkey_business"] {
            assert!(!is_secret_query_param(name), "{name}");
        }
    }

    #[test]
    fn places_of_every_kind_and_depth() {
        let flow = json!({"id": "f", "steps": [
            {"branch": [{"when": ".a", "steps": [
                {"http": {"url": "https://x.example/a?token=t1", "headers": {"authorization": "Bearer b", "accept": "json", "x-marked": "m"},
                          "secret_headers": ["X-Marked"], "auth": {"basic": {"username": "u", "password": "p"}}}}
            ]}, {"else": [{"http": {"url": "https://x.example/", "auth": {"oauth2_client_credentials": {"token_url": "https://t.example/", "client_id": "c", "client_secret": "s"}}}}]}]}
        ]});
        let found: Vec<String> = places(ObjectKind::Flow, &flow)
            .into_iter()
            .map(|p| p.pointer)
            .collect();
        assert_eq!(
            found,
            [
                "/steps/0/branch/0/steps/0/http/auth/basic/password",
                "/steps/0/branch/0/steps/0/http/headers/authorization",
                "/steps/0/branch/0/steps/0/http/headers/x-marked",
                "/steps/0/branch/0/steps/0/http/url",
                "/steps/0/branch/1/else/0/http/auth/oauth2_client_credentials/client_secret",
            ]
        );
        let shown = masked(ObjectKind::Flow, &flow).to_string();
        for secret in ["t1", "Bearer b", "\"m\"", "\"p\"", "\"s\""] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("\"accept\":\"json\"") && shown.contains("\"username\":\"u\""));
    }

    #[test]
    fn a_masked_value_written_back_keeps_the_stored_one() {
        let old = json!({"id": "crm", "url": "https://r.example/h?key=k1&page=2",
                         "signing": {"secret": "whsec_old"}, "headers": {"x-api-key": "k2"}});
        let mut sent = masked(ObjectKind::Destination, &old);
        sent["url"] = json!("https://r.example/h?key=********&page=3");
        assert!(restore_masked(ObjectKind::Destination, &mut sent, Some(&old)).is_empty());
        assert_eq!(sent["signing"]["secret"], "whsec_old");
        assert_eq!(sent["headers"]["x-api-key"], "k2");
        assert_eq!(sent["url"], "https://r.example/h?key=k1&page=3");
        let mut new = json!({"id": "crm", "signing": {"secret": MASK}});
        assert_eq!(
            restore_masked(ObjectKind::Destination, &mut new, None),
            ["/signing/secret"]
        );
    }
}

//! Which fields hold secrets: the one list ([`FIELDS`]) that sealing, masking, restoring a
//! masked value on update and the OpenAPI document all read, and the name rules for header
//! names and query parameters. A place is found in a spec by [`places`].
//!
//! Channels (`signing.secret`, `smtp.password`, a Slack channel's `url`) are not here: they come
//! from the config file only, are held as `config::Secret`, and are never stored or shown.

use super::url;
use crate::config::kind::ObjectKind;
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
        about: "the verification secret (an HMAC key, a `whsec_` secret, a password or a token)",
    },
    Field {
        holder: Holder::Source,
        path: &["verify", "url"],
        how: How::Url,
        about: "the public URL a provider signs; a password in it is write-only",
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
/// Header and query parameter names with any of these in them hold secrets (`x-apikey`,
/// `x-auth`, `authentication`, `x-session-id`, `credentials`, `hapikey`): a credential missed is
/// a leak, a header masked for nothing is only less to read.
const SECRET_NAME_PARTS: [&str; 9] = [
    "auth",
    "token",
    "secret",
    "passw",
    "passwd",
    "session",
    "credential",
    "apikey",
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

/// Whether a header of this name carries a secret by the rule, or is one of `listed` (an
/// object's `secret_headers`).
pub fn is_secret_header_or_listed(name: &str, listed: &[String]) -> bool {
    is_secret_header(name) || listed.iter().any(|h| h.eq_ignore_ascii_case(name))
}

fn is_secret_lower_case_header(name: &str) -> bool {
    !PUBLIC_HEADER_NAMES.contains(&name)
        && (SECRET_HEADER_NAMES.contains(&name)
            || SECRET_HEADER_ENDINGS.iter().any(|end| name.ends_with(end))
            || has_secret_part(name))
}

/// Whether a lower-case `name` has one of [`SECRET_NAME_PARTS`] in it. Ingest asks this of
/// every header of every event: a part is compared only where the name has its first two
/// bytes, so a name such as `content-type` costs a few byte compares (`str::contains` for
/// each part cost more than the rest of the header check; callgrind, docs/PERFORMANCE.md).
fn has_secret_part(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.windows(2).enumerate().any(|(at, pair)| {
        SECRET_NAME_PARTS.iter().any(|part| {
            let p = part.as_bytes();
            p[0] == pair[0] && p[1] == pair[1] && bytes[at..].starts_with(p)
        })
    })
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
    let lower = name.to_ascii_lowercase();
    SECRET_PARAM_NAMES.contains(&lower.as_str())
        || SECRET_PARAM_ENDINGS.iter().any(|end| lower.ends_with(end))
        || has_secret_part(&lower)
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

/// How a sealed value starts (`secrets::seal` writes and opens them).
pub const SEALED: &str = "sealed:";

/// Whether a stored string is a sealed value (`sealed:...`): such a string at a field of the
/// list is always a place, so that it is opened (and sealed again on write) whatever its name.
fn looks_sealed(text: &str) -> bool {
    text.starts_with(SEALED)
}

/// Every secret's place in `spec`, an object of `kind` as written: the fields of [`FIELDS`]
/// that hold a string, a header value only when its name is secret (or listed, or the value
/// looks sealed), a URL only when it has a secret part (or looks sealed).
pub fn places(kind: ObjectKind, spec: &Value) -> Vec<Place> {
    let mut out = Vec::new();
    match kind {
        ObjectKind::Source => {
            holder_places(Holder::Source, spec, "", &mut out);
            // A polling source's request holds secrets where an `http` step does.
            if let Some(request) = spec.get("request") {
                holder_places(Holder::HttpStep, request, "/request", &mut out);
            }
        }
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
/// showed): the whole value, or a URL's masked parts, from `old` at the same place. Answers,
/// for each mask that cannot be kept, why: there is nothing stored behind it; the URL the
/// secret is sent to (the nearest `url` or `token_url` above it) now goes to another scheme,
/// host or port, so keeping it would hand the stored secret to a new receiver; or the mask is
/// where no secret is kept at all.
pub fn restore_masked(kind: ObjectKind, spec: &mut Value, old: Option<&Value>) -> Vec<String> {
    let mut refused = Vec::new();
    let new_spec = spec.clone();
    let secret_places = places(kind, spec);
    for place in &secret_places {
        let before = old
            .and_then(|o| o.pointer(&place.pointer))
            .and_then(Value::as_str);
        let Some(Value::String(text)) = spec.pointer_mut(&place.pointer) else {
            continue;
        };
        let masked = match &place.kind {
            PlaceKind::Whole => text == MASK,
            PlaceKind::Url(params) => url::has_mask(text, params),
        };
        if !masked {
            continue;
        }
        let Some(before) = before else {
            refused.push(format!(
                "`{}` is the mask, and there is no stored secret for it to keep",
                place.pointer
            ));
            continue;
        };
        if let Some(moved) = moved_receiver(&new_spec, old, &place.pointer) {
            refused.push(format!(
                "`{}` is the mask, but the secret would now go to {moved}; give the secret itself",
                place.pointer
            ));
            continue;
        }
        match &place.kind {
            PlaceKind::Whole => *text = before.to_string(),
            PlaceKind::Url(params) => match url::unmasked(text, before, params) {
                Some(full) => *text = full,
                None => refused.push(format!(
                    "`{}` is the mask, and there is no stored secret for it to keep",
                    place.pointer
                )),
            },
        }
    }
    let secret_pointers: Vec<&str> = secret_places.iter().map(|p| p.pointer.as_str()).collect();
    let mut stray = Vec::new();
    masks_outside(spec, String::new(), &secret_pointers, &mut stray);
    refused.extend(stray.into_iter().map(|pointer| {
        format!("`{pointer}` holds the mask where no secret is kept; write the value itself")
    }));
    refused
}

/// Where the secret at `pointer` would now be sent, when that is not where `old` sent it: the
/// nearest `url` or `token_url` in an object above it (or in the same object), compared by
/// scheme, host and port.
fn moved_receiver(new: &Value, old: Option<&Value>, pointer: &str) -> Option<String> {
    let old = old?;
    let mut parent = pointer;
    loop {
        parent = &parent[..parent.rfind('/')?];
        for field in ["url", "token_url"] {
            let at = format!("{parent}/{field}");
            if let Some(Value::String(now)) = new.pointer(&at) {
                let then = old.pointer(&at).and_then(Value::as_str).unwrap_or_default();
                let (a, b) = (origin(now), origin(then));
                return (a != b).then(|| format!("`{a}` (`{at}`; it went to `{b}`)"));
            }
        }
    }
}

/// A URL's scheme, host and port as text (`https://crm.example:443`); for a URL with
/// placeholders that does not parse, its text up to the path.
fn origin(text: &str) -> String {
    match ::url::Url::parse(text) {
        Ok(u) => format!(
            "{}://{}:{}",
            u.scheme(),
            u.host_str().unwrap_or_default(),
            u.port_or_known_default().unwrap_or(0)
        ),
        Err(_) => {
            let after = text.find("://").map_or(0, |i| i + 3);
            let end = text[after..]
                .find(['/', '?', '#'])
                .map_or(text.len(), |i| after + i);
            text[..end].to_ascii_lowercase()
        }
    }
}

/// The pointers of strings that hold the mask (whole, as a query value or as a password) at
/// places that are not secret.
fn masks_outside(value: &Value, pointer: String, secret: &[&str], out: &mut Vec<String>) {
    match value {
        Value::String(text) => {
            let holds = text == MASK
                || text.contains(&format!("={MASK}"))
                || text.contains(&format!(":{MASK}@"));
            if holds && !secret.contains(&pointer.as_str()) {
                out.push(if pointer.is_empty() {
                    "/".into()
                } else {
                    pointer
                });
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                masks_outside(item, format!("{pointer}/{i}"), secret, out);
            }
        }
        Value::Object(fields) => {
            for (key, item) in fields {
                masks_outside(item, format!("{pointer}/{}", escape(key)), secret, out);
            }
        }
        _ => {}
    }
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
            "x-apikey",
            "x-auth",
            "Authentication",
            "credentials",
            "x-passwd",
            "x-session",
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
            "hapikey",
            "session_id",
            "oauth_verifier",
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
        let refused = restore_masked(ObjectKind::Destination, &mut new, None);
        assert!(
            refused.len() == 1 && refused[0].contains("`/signing/secret`"),
            "{refused:?}"
        );
    }

    #[test]
    fn a_mask_is_not_kept_when_its_secret_would_go_elsewhere_or_where_none_is_kept() {
        let old = json!({"id": "crm", "url": "https://r.example/h?token=t1",
                         "headers": {"authorization": "Bearer b1", "x-tenant": "acme"},
                         "signing": {"secret": "whsec_old"}});
        // Another host: every kept secret of the destination is refused, each with why.
        let mut sent = masked(ObjectKind::Destination, &old);
        sent["url"] = json!("https://attacker.example/steal?token=********");
        let refused = restore_masked(ObjectKind::Destination, &mut sent, Some(&old));
        assert_eq!(refused.len(), 3, "{refused:?}");
        assert!(
            refused.iter().all(|r| r.contains("attacker.example")),
            "{refused:?}"
        );
        // Another scheme or port is another receiver too; another path is not.
        for (url, moved) in [
            ("http://r.example/h?token=********", true),
            ("https://r.example:8443/h?token=********", true),
            ("https://r.example/other?token=********", false),
            ("https://R.example:443/h?token=********", false),
        ] {
            let mut sent = masked(ObjectKind::Destination, &old);
            sent["url"] = json!(url);
            let refused = restore_masked(ObjectKind::Destination, &mut sent, Some(&old));
            assert_eq!(!refused.is_empty(), moved, "{url}: {refused:?}");
        }
        // An http step's secrets follow the step's own URL, placeholders and all.
        let flow = |url: &str, auth: &str| json!({"id": "f", "steps": [{"http": {"url": url, "auth": {"bearer": auth}}}]});
        let old_flow = flow("https://api.example/u/{{ .id }}", "tok");
        let mut same = flow("https://api.example/v2/{{ .id }}", MASK);
        assert!(restore_masked(ObjectKind::Flow, &mut same, Some(&old_flow)).is_empty());
        assert_eq!(same["steps"][0]["http"]["auth"]["bearer"], "tok");
        let mut moved = flow("https://evil.example/{{ .id }}", MASK);
        assert_eq!(
            restore_masked(ObjectKind::Flow, &mut moved, Some(&old_flow)).len(),
            1
        );
        // The mask where no secret is kept is refused, not stored as text.
        let mut stray = masked(ObjectKind::Destination, &old);
        stray["headers"]["x-tenant"] = json!(MASK);
        stray["headers"]["x-new"] = json!(MASK);
        let refused = restore_masked(ObjectKind::Destination, &mut stray, Some(&old));
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert!(refused[0].contains("no secret is kept"), "{refused:?}");
    }
}

//! How a webhook source's requests are verified: the declarative signature scheme (`scheme:
//! hmac`, in which a provider is data: where the signature is, what was signed, the algorithm,
//! the encoding, the timestamp and its tolerance), the providers' presets written in it (each
//! with the event type and idempotency key the provider's way), and `basic` and `bearer`.

use super::raw::{RawField, RawVerify};
use super::{Checker, Secret, Settings};
use std::time::Duration;

/// A source's verification, checked once when the config loads.
#[derive(Debug)]
pub enum Verify {
    /// Any request is taken.
    None,
    Signature(Box<SignatureScheme>),
    /// `Authorization: Basic` with these credentials (`username:password`, as sent).
    Basic {
        credentials: Secret,
    },
    /// `Authorization: Bearer` with this token.
    Bearer {
        token: Secret,
    },
}

impl Verify {
    /// The header that carries the request's proof, never stored with an event.
    pub fn proof_header(&self) -> Option<&str> {
        match self {
            Verify::Signature(s) => Some(&s.header),
            _ => None,
        }
    }
}

/// Where a signature is, what it covers, and how it is made.
#[derive(Debug)]
pub struct SignatureScheme {
    /// The preset's name, or `hmac` for one written in the config.
    pub name: String,
    pub key: Secret,
    pub algorithm: Algorithm,
    pub encoding: SignatureEncoding,
    /// The header holding the signature (lower case).
    pub header: String,
    /// Taken off each signature before it is decoded (`sha256=`, `v0=`).
    pub prefix: String,
    /// When the header is a list of `key=value` items: how to read it.
    pub list: Option<SignatureList>,
    /// What was signed, in order.
    pub signed: Vec<SignedPart>,
    pub timestamp: Option<TimestampRule>,
    /// The header holding the message id that `{id}` stands for (lower case).
    pub id_header: Option<String>,
    /// The public URL `{url}` stands for (the request's query string is added to it); when
    /// absent, `settings.public_url` and the source's path.
    pub url: Option<String>,
    /// A provider's endpoint check, answered after the request is verified.
    pub handshake: Option<Handshake>,
}

impl SignatureScheme {
    /// An HMAC-SHA256 of the body alone in `header` (the generic scheme with its defaults).
    pub fn body_hmac(
        header: &str,
        key: Vec<u8>,
        encoding: SignatureEncoding,
        prefix: &str,
    ) -> SignatureScheme {
        SignatureScheme {
            name: "hmac".into(),
            key: Secret::new(key),
            algorithm: Algorithm::Sha256,
            encoding,
            header: header.to_ascii_lowercase(),
            prefix: prefix.into(),
            list: None,
            signed: vec![SignedPart::Body],
            timestamp: None,
            id_header: None,
            url: None,
            handshake: None,
        }
    }

    /// Standard Webhooks, as its preset writes it, under a decoded key.
    pub fn standard_webhooks(key: Vec<u8>, tolerance: Duration) -> SignatureScheme {
        SignatureScheme {
            name: "standard-webhooks".into(),
            list: Some(SignatureList {
                separator: " ".into(),
                assign: ",".into(),
                key: "v1".into(),
            }),
            signed: vec![
                SignedPart::Id,
                SignedPart::Text(".".into()),
                SignedPart::Timestamp,
                SignedPart::Text(".".into()),
                SignedPart::Body,
            ],
            timestamp: Some(TimestampRule {
                from: TimestampFrom::Header("webhook-timestamp".into()),
                in_millis: false,
                tolerance,
            }),
            id_header: Some("webhook-id".into()),
            ..SignatureScheme::body_hmac("webhook-signature", key, SignatureEncoding::Base64, "")
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha1,
    Sha256,
    Sha512,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureEncoding {
    Hex,
    Base64,
}

/// A header like `t=1700000000,v1=abc,v1=def`: items split by `separator`, each a key and a
/// value split at the first `assign`; every item under `key` is a signature, any may match.
#[derive(Debug)]
pub struct SignatureList {
    pub separator: String,
    pub assign: String,
    pub key: String,
}

/// One piece of the signed content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignedPart {
    Text(String),
    /// The raw body, as received.
    Body,
    /// The timestamp, as the number in decimal.
    Timestamp,
    /// The message id header's value.
    Id,
    /// The public URL with the request's query string.
    Url,
    /// A form body's parameters sorted by name, each name followed by its value (Twilio's
    /// rule); a body that is not a form must be covered by a `bodySHA256` query parameter.
    Form,
}

#[derive(Debug)]
pub struct TimestampRule {
    pub from: TimestampFrom,
    /// Milliseconds since the epoch, not seconds.
    pub in_millis: bool,
    pub tolerance: Duration,
}

#[derive(Debug)]
pub enum TimestampFrom {
    /// A header (lower case).
    Header(String),
    /// The list item under this key, in the signature header.
    Item(String),
}

/// A provider's check that Ferry owns the endpoint, answered instead of taking an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// Slack's `{"type": "url_verification", "challenge": ...}`: the challenge is sent back.
    SlackUrlVerification,
    /// Zoom's `endpoint.url_validation`: the plain token and its HMAC-SHA256 under the secret.
    ZoomUrlValidation,
}

/// How a source's body is read into the event's JSON payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// The body is the payload (strict JSON).
    Json,
    /// `application/x-www-form-urlencoded`, turned into an object of strings.
    Form,
    /// A CloudEvent in structured or binary mode, stored as its structured JSON.
    CloudEvents,
}

/// A provider preset: the scheme as the config would write it, and where the provider puts
/// the event type and the idempotency key.
struct Preset {
    name: &'static str,
    header: &'static str,
    algorithm: &'static str,
    encoding: &'static str,
    prefix: &'static str,
    /// separator, assign, key
    list: Option<(&'static str, &'static str, &'static str)>,
    signed: &'static str,
    timestamp: Option<PresetTimestamp>,
    tolerance: &'static str,
    id_header: Option<&'static str>,
    secret_encoding: &'static str,
    /// `{url}` is signed, so the public URL must be known.
    needs_url: bool,
    handshake: Option<Handshake>,
    event_type: PresetField,
    idempotency_key: Option<PresetField>,
    format: BodyFormat,
}

enum PresetTimestamp {
    Header(&'static str),
    Item(&'static str),
}

#[derive(Clone, Copy)]
enum PresetField {
    Header(&'static str),
    Body(&'static str),
}

impl PresetField {
    fn raw(self) -> RawField {
        match self {
            PresetField::Header(name) => RawField::Header { name: name.into() },
            PresetField::Body(path) => RawField::Body { path: path.into() },
        }
    }
}

const fn preset(name: &'static str, header: &'static str) -> Preset {
    Preset {
        name,
        header,
        algorithm: "sha256",
        encoding: "hex",
        prefix: "",
        list: None,
        signed: "{body}",
        timestamp: None,
        tolerance: "5m",
        id_header: None,
        secret_encoding: "text",
        needs_url: false,
        handshake: None,
        event_type: PresetField::Body(".type"),
        idempotency_key: None,
        format: BodyFormat::Json,
    }
}

/// Every preset, by the name `scheme` gives.
const PRESETS: &[Preset] = &[
    Preset {
        encoding: "base64",
        list: Some((" ", ",", "v1")),
        signed: "{id}.{timestamp}.{body}",
        timestamp: Some(PresetTimestamp::Header("webhook-timestamp")),
        id_header: Some("webhook-id"),
        secret_encoding: "whsec",
        idempotency_key: Some(PresetField::Header("webhook-id")),
        ..preset("standard-webhooks", "webhook-signature")
    },
    Preset {
        prefix: "sha256=",
        event_type: PresetField::Header("x-github-event"),
        idempotency_key: Some(PresetField::Header("x-github-delivery")),
        ..preset("github", "x-hub-signature-256")
    },
    Preset {
        list: Some((",", "=", "v1")),
        signed: "{timestamp}.{body}",
        timestamp: Some(PresetTimestamp::Item("t")),
        idempotency_key: Some(PresetField::Body(".id")),
        ..preset("stripe", "stripe-signature")
    },
    Preset {
        encoding: "base64",
        event_type: PresetField::Header("x-shopify-topic"),
        idempotency_key: Some(PresetField::Header("x-shopify-webhook-id")),
        ..preset("shopify", "x-shopify-hmac-sha256")
    },
    Preset {
        prefix: "v0=",
        signed: "v0:{timestamp}:{body}",
        timestamp: Some(PresetTimestamp::Header("x-slack-request-timestamp")),
        handshake: Some(Handshake::SlackUrlVerification),
        event_type: PresetField::Body(".event.type // .type"),
        idempotency_key: Some(PresetField::Body(".event_id")),
        ..preset("slack", "x-slack-signature")
    },
    Preset {
        list: Some((";", "=", "h1")),
        signed: "{timestamp}:{body}",
        timestamp: Some(PresetTimestamp::Item("ts")),
        tolerance: "5s",
        event_type: PresetField::Body(".event_type"),
        idempotency_key: Some(PresetField::Body(".event_id")),
        ..preset("paddle", "paddle-signature")
    },
    Preset {
        prefix: "v0=",
        signed: "v0:{timestamp}:{body}",
        timestamp: Some(PresetTimestamp::Header("x-zm-request-timestamp")),
        handshake: Some(Handshake::ZoomUrlValidation),
        event_type: PresetField::Body(".event"),
        ..preset("zoom", "x-zm-signature")
    },
    Preset {
        encoding: "base64",
        signed: "{url}{body}",
        needs_url: true,
        idempotency_key: Some(PresetField::Body(".event_id")),
        ..preset("square", "x-square-hmacsha256-signature")
    },
    Preset {
        algorithm: "sha1",
        encoding: "base64",
        signed: "{url}{form}",
        needs_url: true,
        event_type: PresetField::Body(
            r#"if .MessageStatus then "message.\(.MessageStatus)" elif .CallStatus then "call.\(.CallStatus)" else "request" end"#,
        ),
        idempotency_key: Some(PresetField::Header("i-twilio-idempotency-token")),
        format: BodyFormat::Form,
        ..preset("twilio", "x-twilio-signature")
    },
];

/// The preset names, for errors and docs.
pub fn preset_names() -> impl Iterator<Item = &'static str> {
    PRESETS.iter().map(|p| p.name)
}

/// What a source's `verify` gives the rest of the source: where the event type and the
/// idempotency key are unless the source says, and how the body is read.
pub(super) struct VerifyDefaults {
    pub event_type: Option<RawField>,
    pub idempotency_key: Option<RawField>,
    pub format: BodyFormat,
}

impl VerifyDefaults {
    fn plain() -> Self {
        VerifyDefaults {
            event_type: None,
            idempotency_key: None,
            format: BodyFormat::Json,
        }
    }
}

/// The fields each scheme takes besides `scheme`.
const HMAC_FIELDS: &[&str] = &[
    "secret",
    "secret_encoding",
    "header",
    "algorithm",
    "encoding",
    "prefix",
    "list",
    "signed",
    "timestamp",
    "tolerance",
    "id_header",
    "url",
];
const PRESET_FIELDS: &[&str] = &["secret", "tolerance", "url"];

impl Checker<'_> {
    /// How a source's requests are verified (`verify`, required), and what its scheme says
    /// about the rest of the source.
    pub(super) fn verify(
        &mut self,
        place: &str,
        source_id: &str,
        verify: Option<RawVerify>,
        settings: &Settings,
    ) -> (Verify, VerifyDefaults) {
        let Some(raw) = verify else {
            self.error(place.to_string(), "`verify` is required for a webhook source; write `verify: { scheme: none }` to accept unsigned requests");
            return (Verify::None, VerifyDefaults::plain());
        };
        let scheme = raw.scheme.clone();
        let allowed: &[&str] = match scheme.as_str() {
            "none" => &[],
            "hmac" => HMAC_FIELDS,
            "basic" => &["secret", "username"],
            "bearer" => &["secret"],
            name if PRESETS.iter().any(|p| p.name == name) => PRESET_FIELDS,
            other => {
                self.error(
                    place.to_string(),
                    format!(
                        "`verify.scheme`: `{other}` is not a scheme; expected none, hmac, basic, bearer or a preset ({})",
                        preset_names().collect::<Vec<_>>().join(", ")
                    ),
                );
                return (Verify::None, VerifyDefaults::plain());
            }
        };
        for field in raw.given() {
            if !allowed.contains(&field) {
                self.error(
                    place.to_string(),
                    format!("`verify.{field}` does not apply to `scheme: {scheme}`"),
                );
            }
        }
        match scheme.as_str() {
            "none" => (Verify::None, VerifyDefaults::plain()),
            "basic" => {
                let username = raw.username.unwrap_or_default();
                if username.contains(':') {
                    self.error(
                        place.to_string(),
                        "`verify.username` cannot hold `:` (basic auth splits there)",
                    );
                }
                let password = self.required_secret(place, raw.secret);
                let credentials = format!("{username}:{password}").into_bytes();
                (
                    Verify::Basic {
                        credentials: Secret::new(credentials),
                    },
                    VerifyDefaults::plain(),
                )
            }
            "bearer" => {
                let token = self.required_secret(place, raw.secret);
                (
                    Verify::Bearer {
                        token: Secret::new(token.into_bytes()),
                    },
                    VerifyDefaults::plain(),
                )
            }
            "hmac" => {
                let scheme = self.signature_scheme(place, source_id, "hmac", raw, None, settings);
                (
                    scheme.map_or(Verify::None, |s| Verify::Signature(Box::new(s))),
                    VerifyDefaults::plain(),
                )
            }
            name => {
                let Some(preset) = PRESETS.iter().find(|p| p.name == name) else {
                    return (Verify::None, VerifyDefaults::plain());
                };
                let defaults = VerifyDefaults {
                    event_type: Some(preset.event_type.raw()),
                    idempotency_key: preset.idempotency_key.map(PresetField::raw),
                    format: preset.format,
                };
                let written = preset.as_raw(raw);
                let scheme = self.signature_scheme(
                    place,
                    source_id,
                    preset.name,
                    written,
                    Some(preset),
                    settings,
                );
                (
                    scheme.map_or(Verify::None, |s| Verify::Signature(Box::new(s))),
                    defaults,
                )
            }
        }
    }

    fn required_secret(&mut self, place: &str, secret: Option<String>) -> String {
        match secret {
            Some(s) if !s.is_empty() => s,
            _ => {
                self.error(place.to_string(), "`verify.secret` is required");
                String::new()
            }
        }
    }

    /// The declarative scheme from its fields (a preset's filled in from the preset).
    fn signature_scheme(
        &mut self,
        place: &str,
        source_id: &str,
        name: &str,
        raw: RawVerify,
        preset: Option<&Preset>,
        settings: &Settings,
    ) -> Option<SignatureScheme> {
        let error = |this: &mut Self, message: String| {
            this.error(place.to_string(), message);
        };
        let secret = self.required_secret(place, raw.secret);
        let key = match raw.secret_encoding.as_deref().unwrap_or("text") {
            "text" => secret.into_bytes(),
            // The decoder's message names a character of the secret and its place: not shown.
            "base64" => base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &secret)
                .unwrap_or_else(|_| {
                    error(
                        self,
                        "`verify.secret` is not base64 (standard alphabet, padded)".into(),
                    );
                    Vec::new()
                }),
            "whsec" => crate::config::secret::decode_secret(&secret).unwrap_or_else(|e| {
                error(self, format!("`verify.secret`: {e}"));
                Vec::new()
            }),
            other => {
                error(
                    self,
                    format!(
                        "`verify.secret_encoding`: `{other}` is not one of text, base64, whsec"
                    ),
                );
                Vec::new()
            }
        };
        let header = match raw.header {
            Some(h) => h,
            None => {
                error(
                    self,
                    "`verify.header` is required for `scheme: hmac`".into(),
                );
                String::new()
            }
        };
        if reqwest::header::HeaderName::from_bytes(header.as_bytes()).is_err() {
            error(
                self,
                format!("`verify.header`: `{header}` is not a valid header name"),
            );
        }
        let algorithm = match raw.algorithm.as_deref().unwrap_or("sha256") {
            "sha1" => Algorithm::Sha1,
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            other => {
                error(
                    self,
                    format!("`verify.algorithm`: `{other}` is not one of sha1, sha256, sha512"),
                );
                Algorithm::Sha256
            }
        };
        let encoding = match raw.encoding.as_deref().unwrap_or("hex") {
            "hex" => SignatureEncoding::Hex,
            "base64" => SignatureEncoding::Base64,
            other => {
                error(
                    self,
                    format!("`verify.encoding`: `{other}` is not one of hex, base64"),
                );
                SignatureEncoding::Hex
            }
        };
        let list = raw.list.map(|l| {
            let assign = l.assign.unwrap_or_else(|| "=".into());
            if l.separator.is_empty() || assign.is_empty() || l.key.is_empty() {
                error(
                    self,
                    "`verify.list`: `separator`, `assign` and `key` must not be empty".into(),
                );
            }
            SignatureList {
                separator: l.separator,
                assign,
                key: l.key,
            }
        });
        let signed = match parse_signed(raw.signed.as_deref().unwrap_or("{body}")) {
            Ok(parts) => parts,
            Err(e) => {
                error(self, format!("`verify.signed`: {e}"));
                vec![SignedPart::Body]
            }
        };
        let timestamp = raw.timestamp.map(|t| {
            let from = match (t.header, t.item) {
                (Some(h), None) => TimestampFrom::Header(h.to_ascii_lowercase()),
                (None, Some(key)) => {
                    if list.is_none() {
                        error(
                            self,
                            "`verify.timestamp.item` reads the signature list: give `verify.list` too".into(),
                        );
                    }
                    TimestampFrom::Item(key)
                }
                _ => {
                    error(
                        self,
                        "`verify.timestamp`: give `header` or `item`, one of them".into(),
                    );
                    TimestampFrom::Header(String::new())
                }
            };
            let in_millis = match t.unit.as_deref().unwrap_or("seconds") {
                "seconds" => false,
                "milliseconds" => true,
                other => {
                    error(
                        self,
                        format!(
                            "`verify.timestamp.unit`: `{other}` is not one of seconds, milliseconds"
                        ),
                    );
                    false
                }
            };
            TimestampRule {
                from,
                in_millis,
                tolerance: Duration::ZERO,
            }
        });
        let timestamp = timestamp.map(|mut t| {
            t.tolerance = self.duration(
                place,
                "verify.tolerance",
                &raw.tolerance,
                Duration::from_secs(300),
            );
            t
        });
        if timestamp.is_none() && raw.tolerance.is_some() {
            self.error(
                place.to_string(),
                format!("`verify.tolerance`: `scheme: {name}` signs no timestamp"),
            );
        }
        let uses = |part: &SignedPart| signed.contains(part);
        if uses(&SignedPart::Timestamp) && timestamp.is_none() {
            self.error(
                place.to_string(),
                "`verify.signed` holds `{timestamp}`: give `verify.timestamp`",
            );
        }
        if timestamp.is_some() && !uses(&SignedPart::Timestamp) {
            self.error(
                place.to_string(),
                "`verify.timestamp` is given but `verify.signed` does not hold `{timestamp}`: a timestamp the signature does not cover stops no replay",
            );
        }
        if uses(&SignedPart::Id) && raw.id_header.is_none() {
            self.error(
                place.to_string(),
                "`verify.signed` holds `{id}`: give `verify.id_header`",
            );
        }
        let url = match raw.url {
            Some(u) => match url::Url::parse(&u) {
                Ok(parsed) if parsed.query().is_some() || parsed.fragment().is_some() => {
                    self.error(
                        place.to_string(),
                        format!("`verify.url`: give `{}` without its query string or fragment (the request's own query string is added to it)", shown_url(&parsed)),
                    );
                    Some(u)
                }
                Ok(_) => Some(u),
                Err(e) => {
                    self.error(
                        place.to_string(),
                        format!(
                            "`verify.url`: `{}` is not a URL ({e})",
                            crate::config::redact::url::shown(&u, &[])
                        ),
                    );
                    Some(u)
                }
            },
            None => settings
                .public_url
                .as_ref()
                .map(|base| format!("{}/in/{source_id}", base.as_str().trim_end_matches('/'))),
        };
        if (uses(&SignedPart::Url) || preset.is_some_and(|p| p.needs_url)) && url.is_none() {
            self.error(
                place.to_string(),
                format!(
                    "`scheme: {name}` signs the public URL: give `verify.url` (the URL as the provider has it) or `settings.public_url`"
                ),
            );
        }
        Some(SignatureScheme {
            name: name.to_string(),
            key: Secret::new(key),
            algorithm,
            encoding,
            header: header.to_ascii_lowercase(),
            prefix: raw.prefix.unwrap_or_default(),
            list,
            signed,
            timestamp,
            id_header: raw.id_header.map(|h| h.to_ascii_lowercase()),
            url,
            handshake: preset.and_then(|p| p.handshake),
        })
    }
}

/// A URL without its query string and fragment, and its password masked, for a message.
fn shown_url(url: &url::Url) -> String {
    let mut bare = url.clone();
    bare.set_query(None);
    bare.set_fragment(None);
    crate::config::redact::url::shown(bare.as_str(), &[])
}

impl Preset {
    /// The preset as `scheme: hmac` would write it, with what the user gave.
    fn as_raw(&self, given: RawVerify) -> RawVerify {
        RawVerify {
            scheme: "hmac".into(),
            secret: given.secret,
            username: None,
            secret_encoding: Some(self.secret_encoding.into()),
            header: Some(self.header.into()),
            algorithm: Some(self.algorithm.into()),
            encoding: Some(self.encoding.into()),
            prefix: Some(self.prefix.into()),
            list: self
                .list
                .map(|(separator, assign, key)| super::raw::RawSignatureList {
                    separator: separator.into(),
                    assign: Some(assign.into()),
                    key: key.into(),
                }),
            signed: Some(self.signed.into()),
            timestamp: self.timestamp.as_ref().map(|t| super::raw::RawTimestamp {
                header: match t {
                    PresetTimestamp::Header(h) => Some((*h).into()),
                    PresetTimestamp::Item(_) => None,
                },
                item: match t {
                    PresetTimestamp::Item(k) => Some((*k).into()),
                    PresetTimestamp::Header(_) => None,
                },
                unit: None,
            }),
            tolerance: given
                .tolerance
                .or_else(|| self.timestamp.as_ref().map(|_| self.tolerance.to_string())),
            id_header: self.id_header.map(Into::into),
            url: given.url,
        }
    }
}

/// The signed content's template: text with `{body}`, `{timestamp}`, `{id}`, `{url}` and
/// `{form}` (not jq: fixed names), `{{` and `}}` for braces.
pub fn parse_signed(template: &str) -> Result<Vec<SignedPart>, String> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut rest = template;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix("{{") {
            text.push('{');
            rest = after;
        } else if let Some(after) = rest.strip_prefix("}}") {
            text.push('}');
            rest = after;
        } else if c == '{' {
            let end = rest
                .find('}')
                .ok_or_else(|| format!("`{rest}` opens a `{{` it does not close"))?;
            let part = match &rest[1..end] {
                "body" => SignedPart::Body,
                "timestamp" => SignedPart::Timestamp,
                "id" => SignedPart::Id,
                "url" => SignedPart::Url,
                "form" => SignedPart::Form,
                other => {
                    return Err(format!(
                        "`{{{other}}}` is not one of {{body}}, {{timestamp}}, {{id}}, {{url}}, {{form}}"
                    ));
                }
            };
            if !text.is_empty() {
                parts.push(SignedPart::Text(std::mem::take(&mut text)));
            }
            parts.push(part);
            rest = &rest[end + 1..];
        } else if c == '}' {
            return Err("a lone `}`: write `}}` for a brace".into());
        } else {
            text.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    if !text.is_empty() {
        parts.push(SignedPart::Text(text));
    }
    if !parts.contains(&SignedPart::Body) && !parts.contains(&SignedPart::Form) {
        return Err("the signed content must hold `{body}` or `{form}`: a signature that does not cover the body proves nothing about it".into());
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_templates() {
        assert_eq!(
            parse_signed("v0:{timestamp}:{body}").unwrap(),
            vec![
                SignedPart::Text("v0:".into()),
                SignedPart::Timestamp,
                SignedPart::Text(":".into()),
                SignedPart::Body
            ]
        );
        assert_eq!(
            parse_signed("{{{body}}}").unwrap(),
            vec![
                SignedPart::Text("{".into()),
                SignedPart::Body,
                SignedPart::Text("}".into())
            ]
        );
        assert!(
            parse_signed("{timestamp}")
                .unwrap_err()
                .contains("must hold")
        );
        assert!(
            parse_signed("{bodyy}")
                .unwrap_err()
                .contains("is not one of")
        );
        assert!(
            parse_signed("{body")
                .unwrap_err()
                .contains("does not close")
        );
        assert!(parse_signed("{body}}").unwrap_err().contains("lone"));
    }
}

//! Sources, where events come in (how a request is verified, where its event type and
//! idempotency key are read), and the event types they take in (a name, and a JSON Schema
//! compiled once).

use super::raw::{RawEventType, RawField, RawSource, RawVerify};
use super::{Checker, Secret, objects};
use crate::config::expr::Expr;
use std::fmt;
use std::time::Duration;

#[derive(Debug)]
pub struct Source {
    pub id: String,
    pub verify: Verify,
    pub event_type: FieldRef,
    pub idempotency_key: Option<FieldRef>,
}

#[derive(Debug)]
pub enum Verify {
    None,
    StandardWebhooks {
        key: Secret,
        tolerance: Duration,
    },
    Hmac {
        header: String,
        key: Secret,
        encoding: SignatureEncoding,
        prefix: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureEncoding {
    Hex,
    Base64,
}

/// Where a value is read from in an incoming request.
#[derive(Debug)]
pub enum FieldRef {
    Body(Expr),
    /// A header name, lower case.
    Header(String),
}

pub struct EventType {
    pub name: String,
    /// The schema as written (read from `schema_file` when it was given that way).
    pub schema: Option<serde_json::Value>,
    pub validator: Option<jsonschema::Validator>,
}

impl fmt::Debug for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "EventType({}, schema: {})",
            self.name,
            self.validator.is_some()
        )
    }
}

/// Compiles an event type's JSON Schema (draft 2020-12; the crate's network features are off,
/// so a remote `$ref` is refused, never fetched), or says why it cannot.
pub(crate) fn compile_schema(schema: &serde_json::Value) -> Result<jsonschema::Validator, String> {
    jsonschema::draft202012::new(schema).map_err(|e| {
        format!(
            "the schema is not a valid JSON Schema (draft 2020-12): {e} at `{}`",
            e.schema_path()
        )
    })
}

impl Checker<'_> {
    fn field(&mut self, place: &str, what: &str, raw: RawField) -> Option<FieldRef> {
        match raw {
            RawField::Body { path } => self.expr(place, what, &path).map(FieldRef::Body),
            RawField::Header { name } => {
                if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    self.error(
                        place.to_string(),
                        format!("`{what}`: `{name}` is not a valid header name"),
                    );
                }
                Some(FieldRef::Header(name.to_ascii_lowercase()))
            }
        }
    }

    pub(super) fn source(&mut self, place: &str, raw: RawSource) -> Option<Source> {
        self.check_id(place, &raw.id);
        match raw.kind.as_str() {
            "webhook" => {}
            "poll" | "schedule" => {
                self.error(
                    place.to_string(),
                    format!(
                        "source kind `{}` is not available yet; only `webhook` is",
                        raw.kind
                    ),
                );
                return None;
            }
            other => {
                self.error(
                    place.to_string(),
                    format!("unknown source kind `{other}`; expected `webhook`"),
                );
                return None;
            }
        }
        let verify = self.verify(place, raw.verify);
        let event_type = match raw.event_type {
            Some(f) => self.field(place, "event_type", f)?,
            None => FieldRef::Body(Expr::new(".type").ok()?),
        };
        let idempotency_key = match raw.idempotency_key {
            Some(f) => Some(self.field(place, "idempotency_key", f)?),
            None => None,
        };
        Some(Source {
            id: raw.id,
            verify,
            event_type,
            idempotency_key,
        })
    }

    /// How a source's requests are verified (`verify`, required): the scheme, its secret, and
    /// for `hmac` the algorithm and the signature's encoding.
    fn verify(&mut self, place: &str, verify: Option<RawVerify>) -> Verify {
        match verify {
            None => {
                self.error(place.to_string(), "`verify` is required for a webhook source; write `verify: { scheme: none }` to accept unsigned requests");
                Verify::None
            }
            Some(RawVerify::None) => Verify::None,
            Some(RawVerify::StandardWebhooks { secret, tolerance }) => {
                let tolerance = self.duration(
                    place,
                    "verify.tolerance",
                    &tolerance,
                    Duration::from_secs(300),
                );
                match crate::config::secret::decode_secret(&secret) {
                    Ok(key) => Verify::StandardWebhooks {
                        key: Secret::new(key),
                        tolerance,
                    },
                    Err(e) => {
                        self.error(place.to_string(), format!("`verify.secret`: {e}"));
                        Verify::None
                    }
                }
            }
            Some(RawVerify::Hmac {
                header,
                secret,
                algorithm,
                encoding,
                prefix,
            }) => {
                if algorithm != "sha256" {
                    self.error(
                        place.to_string(),
                        format!("`verify.algorithm`: `{algorithm}` is not supported; use `sha256`"),
                    );
                }
                let encoding = match encoding.as_str() {
                    "hex" => SignatureEncoding::Hex,
                    "base64" => SignatureEncoding::Base64,
                    other => {
                        self.error(
                            place.to_string(),
                            format!("`verify.encoding`: `{other}` is not one of hex, base64"),
                        );
                        SignatureEncoding::Hex
                    }
                };
                if secret.is_empty() {
                    self.error(place.to_string(), "`verify.secret` is empty");
                }
                Verify::Hmac {
                    header: header.to_ascii_lowercase(),
                    key: Secret::new(secret.into_bytes()),
                    encoding,
                    prefix,
                }
            }
        }
    }

    pub(super) fn event_type(&mut self, place: &str, raw: RawEventType) -> EventType {
        let schema = match (raw.schema, raw.schema_file) {
            (Some(_), Some(_)) => {
                self.error(
                    place.to_string(),
                    "give `schema` or `schema_file`, not both",
                );
                None
            }
            (Some(s), None) => Some(s),
            (None, Some(file)) => match objects::read_schema_file(&self.base.join(&file)) {
                Ok(v) => Some(v),
                Err(e) => {
                    self.error(place.to_string(), format!("`schema_file`: {e}"));
                    None
                }
            },
            (None, None) => None,
        };
        let validator = schema.as_ref().and_then(|s| match compile_schema(s) {
            Ok(v) => Some(v),
            Err(message) => {
                self.error(place.to_string(), message);
                None
            }
        });
        EventType {
            name: raw.name,
            schema,
            validator,
        }
    }
}

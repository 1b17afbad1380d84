//! Sources, where events come in (how a request is verified, where its event type and
//! idempotency key are read), and the event types they take in (a name, and a JSON Schema
//! compiled once).

use super::poll::Poll;
use super::raw::{RawEventType, RawField, RawSource};
use super::schedule::Schedule;
use super::verify::{BodyFormat, Verify};
use super::{Checker, Settings, objects};
use crate::config::expr::Expr;
use std::fmt;

#[derive(Debug)]
pub struct Source {
    pub id: String,
    pub verify: Verify,
    pub event_type: FieldRef,
    pub idempotency_key: Option<FieldRef>,
    /// How the body becomes the event's JSON payload.
    pub format: BodyFormat,
    /// `format: cloudevents` takes the batch mode too.
    pub cloudevents_batch: bool,
    /// A schedule source's ticks; `None` for a webhook source.
    pub schedule: Option<Box<Schedule>>,
    /// A polling source's request and how its answer is read.
    pub poll: Option<Box<Poll>>,
}

impl Source {
    /// Whether requests to `/in/{id}` are this source's input (a schedule or a polling source
    /// makes its own events).
    pub fn is_webhook(&self) -> bool {
        self.schedule.is_none() && self.poll.is_none()
    }
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

    pub(super) fn source(
        &mut self,
        place: &str,
        mut raw: RawSource,
        settings: &Settings,
    ) -> Option<Source> {
        self.check_id(place, &raw.id);
        match raw.kind.as_str() {
            "webhook" => {}
            "schedule" => {
                let schedule = self.schedule(place, &mut raw)?;
                return Some(Source {
                    id: raw.id,
                    verify: Verify::None,
                    event_type: FieldRef::Body(Expr::new(".type").ok()?),
                    idempotency_key: None,
                    format: BodyFormat::Json,
                    cloudevents_batch: false,
                    schedule: Some(Box::new(schedule)),
                    poll: None,
                });
            }
            "poll" => {
                let poll = self.poll(place, &mut raw, settings)?;
                let event_type = match raw.event_type.take() {
                    Some(f) => self.field(place, "event_type", f)?,
                    None => FieldRef::Body(Expr::new(".type").ok()?),
                };
                if raw.idempotency_key.is_some() {
                    self.error(
                        place.to_string(),
                        "`idempotency_key` does not apply to a polling source: `item_id` is each event's key",
                    );
                }
                return Some(Source {
                    id: raw.id,
                    verify: Verify::None,
                    event_type,
                    idempotency_key: Some(FieldRef::Body(poll.item_id.clone())),
                    format: BodyFormat::Json,
                    cloudevents_batch: false,
                    schedule: None,
                    poll: Some(Box::new(poll)),
                });
            }
            other => {
                self.error(
                    place.to_string(),
                    format!(
                        "unknown source kind `{other}`; expected `webhook`, `schedule` or `poll`"
                    ),
                );
                return None;
            }
        }
        for (field, given) in [
            ("cron", raw.cron.is_some()),
            ("timezone", raw.timezone.is_some()),
            ("missed", raw.missed.is_some()),
            ("emit", raw.emit.is_some()),
        ] {
            if given {
                self.error(
                    place.to_string(),
                    format!("`{field}` applies only to a schedule source"),
                );
            }
        }
        for (field, given) in [
            ("request", raw.request.is_some()),
            ("every", raw.every.is_some()),
            ("items", raw.items.is_some()),
            ("item_id", raw.item_id.is_some()),
            ("cursor", raw.cursor.is_some()),
            ("pagination", raw.pagination.is_some()),
            ("max_pages", raw.max_pages.is_some()),
            ("backfill", raw.backfill.is_some()),
        ] {
            if given {
                self.error(
                    place.to_string(),
                    format!("`{field}` applies only to a polling source"),
                );
            }
        }
        let (verify, defaults) = self.verify(place, &raw.id, raw.verify, settings);
        let format = match raw.format.as_deref() {
            None => defaults.format,
            Some("json") => BodyFormat::Json,
            Some("form") => BodyFormat::Form,
            Some("cloudevents") => BodyFormat::CloudEvents,
            Some(other) => {
                self.error(
                    place.to_string(),
                    format!("`format`: `{other}` is not one of json, form, cloudevents"),
                );
                BodyFormat::Json
            }
        };
        if raw.cloudevents.is_some() && format != BodyFormat::CloudEvents {
            self.error(
                place.to_string(),
                "`cloudevents` applies only to a source with `format: cloudevents`",
            );
        }
        // A CloudEvent names its own type and id: `type`, and `source` with `id` (as a JSON
        // pair, so that no two different pairs make one key).
        let (type_default, key_default) = if format == BodyFormat::CloudEvents {
            (
                Some(RawField::Body {
                    path: ".type".into(),
                }),
                Some(RawField::Body {
                    path: "[.source, .id] | tojson".into(),
                }),
            )
        } else {
            (defaults.event_type, defaults.idempotency_key)
        };
        let event_type = match raw.event_type.or(type_default) {
            Some(f) => self.field(place, "event_type", f)?,
            None => FieldRef::Body(Expr::new(".type").ok()?),
        };
        let idempotency_key = match raw.idempotency_key.or(key_default) {
            Some(f) => Some(self.field(place, "idempotency_key", f)?),
            None => None,
        };
        Some(Source {
            id: raw.id,
            verify,
            event_type,
            idempotency_key,
            format,
            cloudevents_batch: raw.cloudevents.is_some_and(|c| c.batch),
            schedule: None,
            poll: None,
        })
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

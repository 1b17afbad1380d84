//! Alert rules and the channels that carry their notices, checked like the rest of the config:
//! every reference (destination, source, channel) must exist, every duration parse, every URL
//! be http(s).

use super::raw::{
    RawAlert, RawChannel, RawCondition, RawFailing, RawLatency, RawRatio, RawSigning, RawSmtp,
};
use super::{Checker, Destination, Secret, Settings, Source};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug)]
pub struct Channel {
    pub id: String,
    pub kind: ChannelKind,
}

#[derive(Debug)]
pub enum ChannelKind {
    /// A JSON notice, signed with the Standard Webhooks headers when `signing` is set.
    Webhook {
        url: url::Url,
        signing: Option<Secret>,
    },
    /// A Slack incoming webhook. Its URL is a credential: never logged.
    Slack { url: Secret },
    Email {
        smtp: Smtp,
        from: String,
        to: Vec<String>,
    },
}

impl ChannelKind {
    pub fn name(&self) -> &'static str {
        match self {
            ChannelKind::Webhook { .. } => "webhook",
            ChannelKind::Slack { .. } => "slack",
            ChannelKind::Email { .. } => "email",
        }
    }
}

#[derive(Debug)]
pub struct Smtp {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub tls: SmtpTls,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    None,
    StartTls,
    Tls,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

#[derive(Debug)]
pub struct AlertRule {
    pub id: String,
    pub condition: Condition,
    pub notify: Vec<String>,
    pub severity: Severity,
    pub cooldown: Duration,
}

#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    DestinationFailing {
        destination: String,
        consecutive: u32,
    },
    FailureRatio {
        destination: String,
        above: f64,
        #[serde(with = "humantime_serde_ms")]
        window: Duration,
        min_attempts: u32,
    },
    DeadLetters {
        above: u64,
        destination: Option<String>,
    },
    SourceSilent {
        source: String,
        #[serde(rename = "for", with = "humantime_serde_ms")]
        for_: Duration,
    },
    /// A polling source's last `polls` polls (or more) in a row failed.
    SourceFailing {
        source: String,
        polls: u32,
    },
    BacklogAge {
        #[serde(with = "humantime_serde_ms")]
        above: Duration,
    },
    DeliveryLatency {
        destination: String,
        #[serde(with = "humantime_serde_ms")]
        p99_above: Duration,
        #[serde(with = "humantime_serde_ms")]
        window: Duration,
    },
    DestinationPaused {
        destination: Option<String>,
    },
    /// The store cannot write (a full disk, an I/O error).
    StoreUnwritable {},
}

/// Durations in API answers, as people write them in the config (`5m`).
mod humantime_serde_ms {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

impl Checker<'_> {
    pub(super) fn channels(
        &mut self,
        raw: Vec<RawChannel>,
        settings: &Settings,
    ) -> BTreeMap<String, Arc<Channel>> {
        let mut out = BTreeMap::new();
        for c in raw {
            let place = self.places.object("channels", "channel", &c.id);
            self.check_id(&place, &c.id);
            let kind = match c.kind.as_str() {
                "webhook" | "slack" => {
                    self.web_channel(&place, &c.kind, c.url.as_deref(), c.signing, settings)
                }
                "email" => self.email_channel(&place, c.smtp, c.from, c.to, settings),
                other => {
                    self.error(
                        place,
                        format!("unknown channel kind `{other}`; expected webhook, slack or email"),
                    );
                    continue;
                }
            };
            let Some(kind) = kind else {
                continue;
            };
            if out
                .insert(c.id.clone(), Arc::new(Channel { id: c.id, kind }))
                .is_some()
            {
                self.error(place, "a channel with this id is already defined");
            }
        }
        out
    }

    /// A `webhook` or `slack` channel: an http(s) URL the egress guard allows (a Slack URL is
    /// a credential, never shown), and for a webhook its optional signing secret.
    fn web_channel(
        &mut self,
        place: &str,
        kind: &str,
        url: Option<&str>,
        signing: Option<RawSigning>,
        settings: &Settings,
    ) -> Option<ChannelKind> {
        let Some(text) = url else {
            self.error(
                place.to_string(),
                format!("`url` is required for a {kind} channel"),
            );
            return None;
        };
        let url = match url::Url::parse(text) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => u,
            _ => {
                // The URL of a Slack channel is a credential: do not echo it.
                let shown = if kind == "slack" {
                    "(hidden)".to_string()
                } else {
                    crate::config::redact::url::shown(text, &[])
                };
                self.error(
                    place.to_string(),
                    format!("`url`: `{shown}` is not an http(s) URL"),
                );
                return None;
            }
        };
        self.egress_url(place, "url", &url, settings);
        Some(if kind == "slack" {
            if signing.is_some() {
                self.error(
                    place.to_string(),
                    "`signing` applies to webhook channels; Slack does not check it",
                );
            }
            ChannelKind::Slack {
                url: Secret::new(url.as_str().as_bytes().to_vec()),
            }
        } else {
            let signing =
                signing.and_then(|s| match crate::config::secret::decode_secret(&s.secret) {
                    Ok(key) => Some(Secret::new(key)),
                    Err(e) => {
                        self.error(place.to_string(), format!("`signing.secret`: {e}"));
                        None
                    }
                });
            ChannelKind::Webhook { url, signing }
        })
    }

    /// An `email` channel: an SMTP server the egress guard allows, its TLS mode and port, and
    /// addresses that parse.
    fn email_channel(
        &mut self,
        place: &str,
        smtp: Option<RawSmtp>,
        from: Option<String>,
        to: Vec<String>,
        settings: &Settings,
    ) -> Option<ChannelKind> {
        let Some(smtp) = smtp else {
            self.error(place.to_string(), "`smtp` is required for an email channel");
            return None;
        };
        let tls = match smtp.tls.as_deref().unwrap_or("starttls") {
            "none" => SmtpTls::None,
            "starttls" => SmtpTls::StartTls,
            "tls" => SmtpTls::Tls,
            other => {
                self.error(
                    place.to_string(),
                    format!("`smtp.tls`: `{other}` is not one of none, starttls, tls"),
                );
                SmtpTls::StartTls
            }
        };
        let port = smtp.port.unwrap_or(match tls {
            SmtpTls::None => 25,
            SmtpTls::StartTls => 587,
            SmtpTls::Tls => 465,
        });
        match crate::egress::parse_host(&smtp.host) {
            None => self.error(
                place.to_string(),
                format!(
                    "`smtp.host`: `{}` is not a host name or an IP address",
                    smtp.host
                ),
            ),
            Some(host) => {
                if let Err(refused) = settings.egress.check_host(&host) {
                    self.error(place.to_string(), format!("`smtp.host`: {refused}"));
                }
            }
        }
        let Some(from) = from else {
            self.error(place.to_string(), "`from` is required for an email channel");
            return None;
        };
        for address in std::iter::once(&from).chain(&to) {
            if address.parse::<lettre::message::Mailbox>().is_err() {
                self.error(
                    place.to_string(),
                    format!("`{address}` is not an email address"),
                );
            }
        }
        if to.is_empty() {
            self.error(place.to_string(), "`to` lists no address");
        }
        if smtp.username.is_some() != smtp.password.is_some() {
            self.error(
                place.to_string(),
                "`smtp.username` and `smtp.password` go together",
            );
        }
        Some(ChannelKind::Email {
            smtp: Smtp {
                host: smtp.host,
                port,
                username: smtp.username,
                password: smtp.password.map(|p| Secret::new(p.into_bytes())),
                tls,
            },
            from,
            to,
        })
    }

    pub(super) fn alerts(
        &mut self,
        raw: Vec<RawAlert>,
        channels: &BTreeMap<String, Arc<Channel>>,
        sources: &BTreeMap<String, Arc<Source>>,
        destinations: &BTreeMap<String, Arc<Destination>>,
    ) -> Vec<Arc<AlertRule>> {
        let mut out: Vec<Arc<AlertRule>> = Vec::new();
        let mut ids = std::collections::HashSet::new();
        for a in raw {
            let place = self.places.object("alerts", "alert", &a.id);
            self.check_id(&place, &a.id);
            if !ids.insert(a.id.clone()) {
                self.error(place.clone(), "an alert with this id is already defined");
            }
            for c in &a.notify {
                if !channels.contains_key(c) {
                    self.error(
                        place.clone(),
                        format!("`notify`: no channel has the id `{c}`"),
                    );
                }
            }
            if a.notify.is_empty() {
                self.error(place.clone(), "`notify` names no channel");
            }
            let severity = match a.severity.as_deref().unwrap_or("warning") {
                "info" => Severity::Info,
                "warning" => Severity::Warning,
                "critical" => Severity::Critical,
                other => {
                    self.error(
                        place.clone(),
                        format!("`severity`: `{other}` is not one of info, warning, critical"),
                    );
                    Severity::Warning
                }
            };
            let cooldown = self.duration(
                &place,
                "cooldown",
                &a.cooldown,
                Duration::from_secs(15 * 60),
            );
            let Some(condition) = self.condition(&place, a.when, sources, destinations) else {
                continue;
            };
            out.push(Arc::new(AlertRule {
                id: a.id,
                condition,
                notify: a.notify,
                severity,
                cooldown,
            }));
        }
        out
    }

    fn condition(
        &mut self,
        place: &str,
        w: RawCondition,
        sources: &BTreeMap<String, Arc<Source>>,
        destinations: &BTreeMap<String, Arc<Destination>>,
    ) -> Option<Condition> {
        if !self.one_condition(place, &w) {
            return None;
        }
        let destination = |c: &mut Self, id: &str| {
            if !destinations.contains_key(id) {
                c.error(
                    place.to_string(),
                    format!("`when`: no destination has the id `{id}`"),
                );
            }
        };
        if let Some(f) = w.destination_failing {
            destination(self, &f.destination);
            return Some(self.destination_failing(place, f));
        }
        if let Some(r) = w.failure_ratio {
            destination(self, &r.destination);
            return Some(self.failure_ratio(place, r));
        }
        if let Some(d) = w.dead_letters {
            if let Some(id) = &d.destination {
                destination(self, id);
            }
            return Some(Condition::DeadLetters {
                above: d.above,
                destination: d.destination,
            });
        }
        if let Some(s) = w.source_silent {
            if !sources.contains_key(&s.source) {
                self.error(
                    place.to_string(),
                    format!("`when`: no source has the id `{}`", s.source),
                );
            }
            let for_ = self.duration(
                place,
                "source_silent.for",
                &Some(s.for_),
                Duration::from_secs(3600),
            );
            return Some(Condition::SourceSilent {
                source: s.source,
                for_,
            });
        }
        if let Some(f) = w.source_failing {
            match sources.get(&f.source) {
                None => self.error(
                    place.to_string(),
                    format!("`when`: no source has the id `{}`", f.source),
                ),
                Some(s) if s.poll.is_none() => self.error(
                    place.to_string(),
                    format!(
                        "`when.source_failing`: source `{}` is not a polling source",
                        f.source
                    ),
                ),
                Some(_) => {}
            }
            let polls = f.polls.unwrap_or(3);
            if polls == 0 {
                self.error(
                    place.to_string(),
                    "`source_failing.polls` must be at least 1",
                );
            }
            return Some(Condition::SourceFailing {
                source: f.source,
                polls,
            });
        }
        if let Some(b) = w.backlog_age {
            let above = self.duration(
                place,
                "backlog_age.above",
                &Some(b.above),
                Duration::from_secs(60),
            );
            return Some(Condition::BacklogAge { above });
        }
        if let Some(l) = w.delivery_latency {
            destination(self, &l.destination);
            return Some(self.delivery_latency(place, l));
        }
        if w.store_unwritable.is_some() {
            return Some(Condition::StoreUnwritable {});
        }
        let p = w.destination_paused.unwrap_or_default();
        if let Some(id) = &p.destination {
            destination(self, id);
        }
        Some(Condition::DestinationPaused {
            destination: p.destination,
        })
    }

    /// Whether `when` names exactly one condition; an error when it names none or more.
    fn one_condition(&mut self, place: &str, w: &RawCondition) -> bool {
        let set = [
            w.destination_failing.is_some(),
            w.failure_ratio.is_some(),
            w.dead_letters.is_some(),
            w.source_silent.is_some(),
            w.source_failing.is_some(),
            w.backlog_age.is_some(),
            w.delivery_latency.is_some(),
            w.destination_paused.is_some(),
            w.store_unwritable.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        if set != 1 {
            self.error(place.to_string(), "`when` takes exactly one of destination_failing, failure_ratio, dead_letters, source_silent, backlog_age, delivery_latency, destination_paused, store_unwritable");
            return false;
        }
        true
    }

    /// `destination_failing`: how many failures in a row, at least 1.
    fn destination_failing(&mut self, place: &str, f: RawFailing) -> Condition {
        if f.consecutive == 0 {
            self.error(
                place.to_string(),
                "`destination_failing.consecutive` must be at least 1",
            );
        }
        Condition::DestinationFailing {
            destination: f.destination,
            consecutive: f.consecutive.max(1),
        }
    }

    /// `failure_ratio`: a ratio from 0 to 1 over a window.
    fn failure_ratio(&mut self, place: &str, r: RawRatio) -> Condition {
        if !(0.0..1.0).contains(&r.above) {
            self.error(
                place.to_string(),
                "`failure_ratio.above` is a ratio from 0 to 1 (0.2 is 20%)",
            );
        }
        let window = self.duration(
            place,
            "failure_ratio.window",
            &Some(r.window),
            Duration::from_secs(300),
        );
        Condition::FailureRatio {
            destination: r.destination,
            above: r.above,
            window,
            min_attempts: r.min_attempts.unwrap_or(1).max(1),
        }
    }

    /// `delivery_latency`: the p99 to stay under, over a window.
    fn delivery_latency(&mut self, place: &str, l: RawLatency) -> Condition {
        let p99_above = self.duration(
            place,
            "delivery_latency.p99_above",
            &Some(l.p99_above),
            Duration::from_secs(5),
        );
        let window = self.duration(
            place,
            "delivery_latency.window",
            &Some(l.window),
            Duration::from_secs(300),
        );
        Condition::DeliveryLatency {
            destination: l.destination,
            p99_above,
            window,
        }
    }
}

//! Flows: which events of which source they take (`on`), and their steps, checked against the
//! objects they name and compiled into a `Program` (a branch's cases flattened into jumps),
//! with the `http` step's request and authentication.

use super::raw::{RawAuth, RawCase, RawDelay, RawDeliver, RawFlow, RawHttp, RawStep, RawTarget};
use super::{
    Checker, Destination, EventType, Secret, Settings, Source, lower_case, parse_duration, valid_id,
};
use crate::config::program::{Auth, Delay, HttpStep, Instr, OAuth2, Op, Program, Target};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug)]
pub struct Flow {
    pub id: String,
    pub source: String,
    /// Empty means every event type of the source.
    pub event_types: BTreeSet<String>,
    /// A hash of the flow's definition; a run remembers the version it started on.
    pub version: String,
    pub program: Program,
    /// The program as the expression workers read it (JSON), and a digest of that text.
    pub wire: Arc<str>,
    pub wire_digest: u64,
}

impl Checker<'_> {
    pub(super) fn flow(
        &mut self,
        place: &str,
        raw: RawFlow,
        sources: &BTreeMap<String, Arc<Source>>,
        event_types: &BTreeMap<String, Arc<EventType>>,
        destinations: &BTreeMap<String, Arc<Destination>>,
        settings: &Settings,
    ) -> Option<Flow> {
        if !sources.contains_key(&raw.on.source) {
            self.error(
                place.to_string(),
                format!("`on.source`: no source has the id `{}`", raw.on.source),
            );
        }
        for t in &raw.on.event_types {
            if !event_types.contains_key(t) {
                self.error(place.to_string(), format!("`on.event_types`: no event type is named `{t}` (declare it under `event_types`)"));
            }
        }
        let version = flow_version(&raw);
        let mut builder = ProgramBuilder {
            place,
            destinations,
            settings,
            instrs: Vec::new(),
            names: BTreeSet::new(),
        };
        self.steps(&mut builder, raw.steps, "", "/steps");
        let program = Program {
            instrs: builder.instrs,
        };
        let (wire, wire_digest) = super::program::wire_program(&program);
        Some(Flow {
            id: raw.id,
            source: raw.on.source,
            event_types: raw.on.event_types.into_iter().collect(),
            version,
            program,
            wire,
            wire_digest,
        })
    }

    /// Compiles a list of steps into `b`'s instructions. `label` prefixes step numbers in
    /// errors ("step 4, case 1, step 2"); `path` is the list's JSON pointer.
    fn steps(&mut self, b: &mut ProgramBuilder<'_>, steps: Vec<RawStep>, label: &str, path: &str) {
        for (index, step) in steps.into_iter().enumerate() {
            let step_label = format!("{label}step {}", index + 1);
            let step_place = format!("{}, {step_label}", b.place);
            let step_path = format!("{path}/{index}");
            if let Some(name) = &step.name {
                self.step_name(b, &step_place, name);
            }
            if !self.one_kind(&step_place, &step) {
                continue;
            }
            let name = step.name;
            let push = |b: &mut ProgramBuilder<'_>, op: Op| {
                b.instrs.push(Instr {
                    path: step_path.clone(),
                    name: name.clone(),
                    op,
                })
            };
            if let Some(code) = step.filter {
                if let Some(expr) = self.expr(&step_place, "filter", &code) {
                    push(b, Op::Filter(expr));
                }
            } else if let Some(code) = step.transform {
                if let Some(expr) = self.expr(&step_place, "transform", &code) {
                    push(b, Op::Transform(expr));
                }
            } else if let Some(cases) = step.branch {
                let at = b.instrs.len();
                push(
                    b,
                    Op::Branch {
                        cases: Vec::new(),
                        otherwise: 0,
                        has_else: false,
                    },
                );
                self.branch_cases(b, at, cases, &step_label, &step_place, &step_path);
            } else if let Some(http) = step.http {
                if let Some(op) = self.http_step(&step_place, http, b.settings) {
                    push(b, Op::Http(Box::new(op)));
                }
            } else if let Some(delay) = step.delay {
                if let Some(op) = self.delay(&step_place, delay) {
                    push(b, Op::Delay(op));
                }
            } else if let Some(deliver) = step.deliver {
                let targets = self.deliver(&step_place, deliver, b.destinations);
                push(b, Op::Deliver(targets));
            }
        }
    }

    /// A step's name: once in its flow, and one that `$steps.<name>` reads in jq.
    fn step_name(&mut self, b: &mut ProgramBuilder<'_>, place: &str, name: &str) {
        if !b.names.insert(name.to_string()) {
            self.error(
                place.to_string(),
                format!("step name `{name}` is used twice in this flow"),
            );
        }
        if !valid_id(name) || name.contains('.') || name.contains('-') {
            self.error(place.to_string(), format!("step name `{name}` must be 1 to 64 characters of a-z, A-Z, 0-9 or `_`, so that `$steps.{name}` works in jq"));
        }
    }

    /// Whether the step has exactly one kind (filter, transform, branch, http, delay,
    /// deliver); an error when it has none or more.
    fn one_kind(&mut self, place: &str, step: &RawStep) -> bool {
        let kinds: Vec<&str> = [
            ("filter", step.filter.is_some()),
            ("transform", step.transform.is_some()),
            ("branch", step.branch.is_some()),
            ("http", step.http.is_some()),
            ("delay", step.delay.is_some()),
            ("deliver", step.deliver.is_some()),
        ]
        .into_iter()
        .filter(|(_, set)| *set)
        .map(|(k, _)| k)
        .collect();
        if kinds.len() != 1 {
            self.error(
                place.to_string(),
                if kinds.is_empty() {
                    "the step has no kind; give one of filter, transform, branch, http, delay, deliver".to_string()
                } else {
                    format!("a step has exactly one kind, this one has {}", kinds.join(", "))
                },
            );
            return false;
        }
        true
    }

    /// Compiles a branch's cases after its instruction at `at`, each case's steps followed by
    /// a jump past the last case, and fills in where the branch jumps to.
    fn branch_cases(
        &mut self,
        b: &mut ProgramBuilder<'_>,
        at: usize,
        cases: Vec<RawCase>,
        step_label: &str,
        step_place: &str,
        step_path: &str,
    ) {
        let (mut compiled, mut jumps, mut otherwise) = (Vec::new(), Vec::new(), None);
        let count = cases.len();
        if count == 0 {
            self.error(step_place.to_string(), "`branch` has no cases");
        }
        for (ci, case) in cases.into_iter().enumerate() {
            let case_label = format!("{step_label}, case {}, ", ci + 1);
            let case_place = format!("{}, {step_label}, case {}", b.place, ci + 1);
            let case_path = format!("{step_path}/branch/{ci}");
            match (case.when, case.steps, case.otherwise) {
                (Some(when), Some(steps), None) => {
                    if otherwise.is_some() {
                        self.error(
                            case_place.clone(),
                            "a case after `else` never runs; put `else` last",
                        );
                    }
                    let target = b.instrs.len();
                    if let Some(expr) = self.expr(&case_place, "when", &when) {
                        compiled.push((expr, target));
                    }
                    self.steps(b, steps, &case_label, &format!("{case_path}/steps"));
                }
                (None, None, Some(steps)) => {
                    if ci + 1 != count {
                        self.error(case_place.clone(), "`else` must be the last case");
                    }
                    otherwise = Some(b.instrs.len());
                    self.steps(b, steps, &case_label, &format!("{case_path}/else"));
                }
                _ => {
                    self.error(
                        case_place,
                        "a case is `{when: <jq>, steps: [...]}` or `{else: [...]}`",
                    );
                    continue;
                }
            }
            jumps.push(b.instrs.len());
            b.instrs.push(Instr {
                path: format!("{case_path}/end"),
                name: None,
                op: Op::Jump(0),
            });
        }
        let end = b.instrs.len();
        for j in jumps {
            b.instrs[j].op = Op::Jump(end);
        }
        b.instrs[at].op = Op::Branch {
            cases: compiled,
            otherwise: otherwise.unwrap_or(end),
            has_else: otherwise.is_some(),
        };
    }

    /// A `delay` step: a duration, or a jq expression for the time to wait until.
    fn delay(&mut self, place: &str, delay: RawDelay) -> Option<Delay> {
        match delay {
            RawDelay::For(text) => match parse_duration(&text) {
                Ok(d) => Some(Delay::For(d)),
                Err(e) => {
                    self.error(
                        place.to_string(),
                        format!("`delay`: {e}, or `{{until: <jq>}}`"),
                    );
                    None
                }
            },
            RawDelay::Until { until } => self.expr(place, "delay.until", &until).map(Delay::Until),
        }
    }

    /// A `deliver` step's targets: destinations that exist, each named once, with an optional
    /// body expression.
    fn deliver(
        &mut self,
        place: &str,
        deliver: RawDeliver,
        destinations: &BTreeMap<String, Arc<Destination>>,
    ) -> Vec<Target> {
        let targets = match deliver {
            RawDeliver::One(t) => vec![t],
            RawDeliver::Many(ts) => ts,
        };
        if targets.is_empty() {
            self.error(place.to_string(), "`deliver` names no destination");
        }
        let mut compiled: Vec<Target> = Vec::new();
        for t in targets {
            let (id, body) = match t {
                RawTarget::Id(id) => (id, None),
                RawTarget::Full { to, body } => {
                    let body = body.and_then(|code| {
                        self.expr(place, &format!("deliver to `{to}`: body"), &code)
                    });
                    (to, body)
                }
            };
            if !destinations.contains_key(&id) {
                self.error(
                    place.to_string(),
                    format!("`deliver`: no destination has the id `{id}`"),
                );
            } else if compiled.iter().any(|t| t.destination_id == id) {
                self.error(
                    place.to_string(),
                    format!("`deliver`: destination `{id}` is named twice"),
                );
            } else {
                compiled.push(Target {
                    destination_id: id,
                    body,
                });
            }
        }
        compiled
    }

    pub(super) fn http_step(
        &mut self,
        place: &str,
        raw: RawHttp,
        settings: &Settings,
    ) -> Option<HttpStep> {
        let url = self.template(place, "http.url", &raw.url)?;
        // The host must be fixed in the file: placeholders may fill the path and query only.
        let prefix = url.literal_prefix();
        let host_fixed = prefix
            .split_once("://")
            .is_some_and(|(_, rest)| rest.contains(['/', '?']) || prefix.len() == raw.url.len());
        let shown_url = crate::config::redact::url::shown(
            &raw.url,
            &lower_case(raw.secret_query_params.clone()),
        );
        if !host_fixed {
            self.error(place.to_string(), format!("`http.url`: `{shown_url}` must start with a fixed `http(s)://host/`; placeholders may fill the path and query, not the host"));
        } else {
            match url::Url::parse(prefix) {
                Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {
                    self.egress_url(place, "http.url", &u, settings);
                }
                Ok(u) => {
                    self.error(
                        place.to_string(),
                        format!("`http.url`: scheme `{}` is not http or https", u.scheme()),
                    );
                }
                Err(e) => {
                    self.error(
                        place.to_string(),
                        format!("`http.url`: `{shown_url}` is not a URL ({e})"),
                    );
                }
            }
        }
        let default = if raw.body.is_some() { "POST" } else { "GET" };
        let method = self.method(place, "http.method", raw.method.as_deref(), default);
        let mut headers = Vec::new();
        for (name, value) in raw.headers {
            match reqwest::header::HeaderName::from_bytes(name.as_bytes()) {
                Ok(n) => {
                    if let Some(t) = self.template(place, &format!("http.headers.{name}"), &value) {
                        headers.push((n, t));
                    }
                }
                Err(_) => self.error(
                    place.to_string(),
                    format!("`http.headers`: `{name}` is not a valid header name"),
                ),
            }
        }
        let auth = raw.auth.and_then(|a| self.auth(place, a, settings));
        let body = raw
            .body
            .and_then(|code| self.expr(place, "http.body", &code));
        let timeout = self.duration(place, "http.timeout", &raw.timeout, Duration::from_secs(30));
        let retry = self.retry(place, raw.retry.unwrap_or_default());
        Some(HttpStep {
            method,
            url,
            headers,
            auth_label: auth.as_ref().map(Auth::label),
            auth,
            body,
            secret_headers: lower_case(raw.secret_headers),
            secret_query_params: lower_case(raw.secret_query_params),
            timeout,
            retry,
        })
    }

    fn auth(&mut self, place: &str, raw: RawAuth, settings: &Settings) -> Option<Auth> {
        let set = [
            raw.bearer.is_some(),
            raw.basic.is_some(),
            raw.api_key.is_some(),
            raw.oauth2_client_credentials.is_some(),
        ];
        if set.iter().filter(|s| **s).count() != 1 {
            self.error(place.to_string(), "`http.auth` takes exactly one of bearer, basic, api_key, oauth2_client_credentials");
            return None;
        }
        // A secret sent in a header must be one a header can carry: refused here, by its field
        // and never quoted, rather than failing every attempt later.
        let header_safe = |this: &mut Self, field: &str, value: &str| {
            let fits = reqwest::header::HeaderValue::from_str(value).is_ok();
            if !fits {
                this.error(
                    place.to_string(),
                    format!("`{field}` holds a character a header cannot carry (a control character such as a line break, or a byte that is not visible ASCII)"),
                );
            }
            fits
        };
        if let Some(token) = raw.bearer {
            if !header_safe(self, "http.auth.bearer", &token) {
                return None;
            }
            return Some(Auth::Bearer(Secret::new(token.into_bytes())));
        }
        if let Some(b) = raw.basic {
            return Some(Auth::Basic {
                username: b.username,
                password: Secret::new(b.password.into_bytes()),
            });
        }
        if let Some(k) = raw.api_key {
            let Ok(header) = reqwest::header::HeaderName::from_bytes(k.header.as_bytes()) else {
                self.error(
                    place.to_string(),
                    format!(
                        "`http.auth.api_key.header`: `{}` is not a valid header name",
                        k.header
                    ),
                );
                return None;
            };
            if !header_safe(self, "http.auth.api_key.value", &k.value) {
                return None;
            }
            return Some(Auth::ApiKey {
                header,
                value: Secret::new(k.value.into_bytes()),
            });
        }
        let o = raw.oauth2_client_credentials?;
        let token_url = match url::Url::parse(&o.token_url) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => u,
            _ => {
                let shown = crate::config::redact::url::shown(&o.token_url, &[]);
                self.error(place.to_string(), format!("`http.auth.oauth2_client_credentials.token_url`: `{shown}` is not an http(s) URL"));
                return None;
            }
        };
        self.egress_url(
            place,
            "http.auth.oauth2_client_credentials.token_url",
            &token_url,
            settings,
        );
        Some(Auth::OAuth2(Arc::new(OAuth2 {
            token_url,
            client_id: o.client_id,
            client_secret: Secret::new(o.client_secret.into_bytes()),
            scope: o.scope,
        })))
    }
}

/// What a flow builds while its steps compile.
struct ProgramBuilder<'a> {
    place: &'a str,
    destinations: &'a BTreeMap<String, Arc<Destination>>,
    settings: &'a Settings,
    instrs: Vec<Instr>,
    names: BTreeSet<String>,
}

/// The first 16 hex digits of the SHA-256 of the flow's definition, as parsed (so comments
/// and formatting do not change it).
fn flow_version(raw: &RawFlow) -> String {
    use sha2::Digest;
    let bytes = serde_json::to_vec(raw).unwrap_or_default();
    let digest = sha2::Sha256::digest(&bytes);
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

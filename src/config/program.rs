//! A flow's steps as the engine runs them: the tree of steps (branches hold step lists)
//! flattened into one list of instructions with jumps. A run's position is then one number,
//! the index of its current instruction, which is what the store keeps.
//!
//! A program is sent to the expression workers as JSON (`engine::sandbox`): everything but the
//! credentials, retry policies and timeouts, which only the server uses.

use super::expr::Expr;
use super::template::Template;
use crate::config::retry::RetryPolicy;
use crate::config::secret::Secret;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Serialize, Deserialize)]
pub struct Program {
    pub instrs: Vec<Instr>,
}

/// One instruction: a step, or a jump that closes a branch case.
#[derive(Debug, Serialize, Deserialize)]
pub struct Instr {
    /// Where the step is in the flow, as a JSON pointer into the flow (`/steps/3/branch/0/steps/1`).
    pub path: String,
    pub name: Option<String>,
    pub op: Op,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Op {
    Filter(Expr),
    Transform(Expr),
    /// The first case whose condition holds jumps to its target; otherwise `otherwise`
    /// (the `else` list, or past the branch when there is none).
    Branch {
        cases: Vec<(Expr, usize)>,
        otherwise: usize,
        has_else: bool,
    },
    Jump(usize),
    Http(Box<HttpStep>),
    Delay(Delay),
    Deliver(Vec<Target>),
}

impl Op {
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Filter(_) => "filter",
            Op::Transform(_) => "transform",
            Op::Branch { .. } => "branch",
            Op::Jump(_) => "jump",
            Op::Http(_) => "http",
            Op::Delay(_) => "delay",
            Op::Deliver(_) => "deliver",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Target {
    pub destination_id: String,
    /// A jq program whose output is the body sent to this destination.
    pub body: Option<Expr>,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Delay {
    For(Duration),
    /// A time from the event: an RFC 3339 string or unix seconds.
    Until(Expr),
}

#[derive(Debug, Serialize, Deserialize)]
pub struct HttpStep {
    #[serde(with = "method_text")]
    pub method: reqwest::Method,
    pub url: Template,
    #[serde(with = "header_templates")]
    pub headers: Vec<(reqwest::header::HeaderName, Template)>,
    /// Only the server holds credentials; a worker sees [`HttpStep::auth_label`].
    #[serde(skip)]
    pub auth: Option<Auth>,
    /// How `ferry flow test` names the authentication (`bearer token`), without its secret.
    pub auth_label: Option<String>,
    pub body: Option<Expr>,
    /// Header and query parameter names (lower case) whose values are secrets besides the
    /// names `secrets::fields` knows: shown masked by `ferry flow test` and in errors.
    #[serde(default)]
    pub secret_headers: Vec<String>,
    #[serde(default)]
    pub secret_query_params: Vec<String>,
    #[serde(skip)]
    pub timeout: Duration,
    #[serde(skip)]
    pub retry: RetryPolicy,
}

impl HttpStep {
    /// Whether the value of the step's header `name` is a secret.
    pub fn secret_header(&self, name: &str) -> bool {
        crate::config::redact::fields::is_secret_header_or_listed(name, &self.secret_headers)
    }
}

impl Auth {
    /// What `ferry flow test` shows instead of the credential.
    pub fn label(&self) -> String {
        match self {
            Auth::Bearer(_) => "bearer token".to_string(),
            Auth::Basic { username, .. } => format!("basic auth as {username}"),
            Auth::ApiKey { header, .. } => format!("api key in {header}"),
            Auth::OAuth2(o) => format!(
                "oauth2 token from {}",
                crate::config::redact::url::shown(o.token_url.as_str(), &[])
            ),
        }
    }
}

mod method_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(m: &reqwest::Method, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(m.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<reqwest::Method, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

mod header_templates {
    use super::Template;
    use reqwest::header::HeaderName;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(h: &[(HeaderName, Template)], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(h.iter().map(|(n, t)| (n.as_str(), t)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<(HeaderName, Template)>, D::Error> {
        let pairs = Vec::<(String, Template)>::deserialize(d)?;
        pairs
            .into_iter()
            .map(|(n, t)| {
                HeaderName::from_bytes(n.as_bytes())
                    .map(|n| (n, t))
                    .map_err(serde::de::Error::custom)
            })
            .collect()
    }
}

#[derive(Debug)]
pub enum Auth {
    Bearer(Secret),
    Basic {
        username: String,
        password: Secret,
    },
    ApiKey {
        header: reqwest::header::HeaderName,
        value: Secret,
    },
    OAuth2(Arc<OAuth2>),
}

/// OAuth2 client credentials (RFC 6749 section 4.4).
#[derive(Debug)]
pub struct OAuth2 {
    pub token_url: url::Url,
    pub client_id: String,
    pub client_secret: Secret,
    pub scope: Option<String>,
}

impl Program {
    /// True when no step runs an expression: such a flow is planned inline at ingest, without
    /// a trip to the sandbox.
    pub fn is_trivial(&self) -> bool {
        self.instrs.iter().all(|i| match &i.op {
            Op::Deliver(targets) => targets.iter().all(|t| t.body.is_none()),
            Op::Jump(_) => true,
            _ => false,
        })
    }

    /// The index of the instruction that runs after `pc`, following jumps; `None` at the end.
    pub fn next_after(&self, pc: usize) -> Option<usize> {
        self.resolve(pc + 1)
    }

    /// `pc` itself or where its jumps lead; `None` past the end.
    pub fn resolve(&self, mut pc: usize) -> Option<usize> {
        while let Some(instr) = self.instrs.get(pc) {
            match instr.op {
                Op::Jump(to) => pc = to,
                _ => return Some(pc),
            }
        }
        None
    }

    /// The instruction of a step given by its name or its path.
    pub fn find(&self, name: Option<&str>, path: &str) -> Option<usize> {
        if let Some(name) = name
            && let Some(pc) = self
                .instrs
                .iter()
                .position(|i| i.name.as_deref() == Some(name))
        {
            return Some(pc);
        }
        self.instrs.iter().position(|i| i.path == path)
    }
}

/// A flow's program as the JSON a worker reads, and a digest of that text.
pub fn wire_program(program: &Program) -> (Arc<str>, u64) {
    use std::hash::{Hash, Hasher};
    let text = serde_json::to_string(program).unwrap_or_else(|_| "null".into());
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    (text.into(), hasher.finish())
}

//! Output of client commands for people: the tables and reports the `ferry` binary prints when
//! `--json` is not given.

use crate::engine::TestReport;
use std::fmt::Write;

/// `ferry flow test` for a person: each step with its status, what it produced, and for steps
/// with I/O the request it would send.
pub fn render_test_report(report: &TestReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "flow {}", report.flow_id);
    for (n, step) in report.steps.iter().enumerate() {
        let text = |k: &str| step.get(k).and_then(|v| v.as_str()).unwrap_or("");
        let name = step
            .get("name")
            .and_then(|v| v.as_str())
            .map(|n| format!(" `{n}`"))
            .unwrap_or_default();
        let status = text("status").replace('_', " ");
        let _ = writeln!(
            out,
            "{:>3}. {}{name} at {}: {status}",
            n + 1,
            text("kind"),
            text("path")
        );
        if let Some(error) = step.get("error").and_then(|v| v.as_str()) {
            let _ = writeln!(out, "     error: {error}");
        }
        match (text("kind"), step.get("output"), step.get("request")) {
            ("deliver", _, Some(serde_json::Value::Array(requests))) => {
                for r in requests {
                    write_request(&mut out, r, r.get("destination").and_then(|d| d.as_str()));
                }
            }
            (_, _, Some(request)) => write_request(&mut out, request, None),
            ("transform", Some(output), _)
            | ("branch", Some(output), _)
            | ("delay", Some(output), _) => {
                let _ = writeln!(out, "     output: {output}");
            }
            _ => {}
        }
    }
    let _ = write!(out, "outcome: {}", report.outcome);
    if let Some(e) = &report.error {
        let _ = write!(out, " ({e})");
    }
    out.push('\n');
    out
}

fn write_request(out: &mut String, r: &serde_json::Value, to: Option<&str>) {
    let text = |k: &str| r.get(k).and_then(|v| v.as_str()).unwrap_or("");
    let to = to.map(|t| format!("to {t}: ")).unwrap_or_default();
    let _ = writeln!(out, "     {to}{} {}", text("method"), text("url"));
    if let Some(headers) = r.get("headers").and_then(|h| h.as_object()) {
        for (k, v) in headers {
            let _ = writeln!(out, "       {k}: {}", v.as_str().unwrap_or_default());
        }
    }
    match r.get("body") {
        None | Some(serde_json::Value::Null) => {}
        Some(body) => {
            let _ = writeln!(out, "       body: {body}");
        }
    }
}

/// Why a client command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach Ferry at {url}: {reason} (is `ferry serve` running there? set --url or FERRY_URL)"
    )]
    Unreachable { url: String, reason: String },
    #[error(
        "no API token: pass --token or set FERRY_API_TOKEN (a new server writes one to DATA/api-token)"
    )]
    NoToken,
    #[error("{status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("the answer from {url} is not JSON: {reason}")]
    Decode { url: String, reason: String },
}

/// A client of the management API.
pub struct ApiClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

/// The client for Ferry's own API, at the address a person gives: not an outbound request of
/// the engine, so not under the egress guard; redirects are not followed.
fn api_http_client() -> Result<reqwest::Client, reqwest::Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(std::time::Duration::from_secs(10))
        .build()
}

impl ApiClient {
    pub fn new(base: &str, token: Option<String>) -> Result<ApiClient, ClientError> {
        let token = token
            .filter(|t| !t.is_empty())
            .ok_or(ClientError::NoToken)?;
        let http = api_http_client().map_err(|e| ClientError::Unreachable {
            url: base.to_string(),
            reason: e.to_string(),
        })?;
        Ok(ApiClient {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut request = self
            .http
            .request(method, &url)
            .bearer_auth(&self.token)
            .timeout(std::time::Duration::from_secs(60));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            reason: crate::deliver::attempt::describe_error(&e),
        })?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|e| ClientError::Decode {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        let value: serde_json::Value = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
                url: url.clone(),
                reason: e.to_string(),
            })?
        };
        if status >= 400 {
            return Err(ClientError::Api {
                status,
                code: value["error"].as_str().unwrap_or("error").to_string(),
                message: value["message"].as_str().unwrap_or_default().to_string(),
            });
        }
        Ok(value)
    }
}

/// Columns of a list for people: the header, then one line per item, padded to fit.
pub fn table(items: &[serde_json::Value], columns: &[(&str, &str)]) -> String {
    let cell = |item: &serde_json::Value, pointer: &str| match item.pointer(pointer) {
        None | Some(serde_json::Value::Null) => "-".to_string(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|item| columns.iter().map(|(_, p)| cell(item, p)).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (h, _))| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([h.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                let _ = write!(out, "{c:<w$}  ", w = widths[i]);
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(columns.iter().map(|(h, _)| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r));
    }
    if items.is_empty() {
        out.push_str("(none)\n");
    }
    out
}

/// A single object for people: `key: value` lines, nested lists as tables.
pub fn fields(item: &serde_json::Value, keys: &[(&str, &str)]) -> String {
    let mut out = String::new();
    let width = keys.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (label, pointer) in keys {
        let value = match item.pointer(pointer) {
            None | Some(serde_json::Value::Null) => "-".to_string(),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        };
        let _ = writeln!(out, "{label:<width$}  {value}");
    }
    out
}

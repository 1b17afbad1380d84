//! `ferry flow test`: a flow of a config file run on an event without side effects (in an
//! expression worker, as the server runs it), and its report for people.

use super::CliError;
use super::serve::load_checked;
use crate::engine::sandbox::{Sandbox, WorkerCommand};
use crate::engine::{EventInfo, TestReport};
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(clap::Subcommand)]
pub enum FlowCommand {
    /// Run a flow on an event without side effects: pure steps for real, and for each http,
    /// delay and deliver step what it would do.
    Test {
        /// The config file (YAML) the flow is in.
        #[arg(long, short = 'c', env = "FERRY_CONFIG")]
        config: PathBuf,
        /// The flow's id.
        #[arg(long)]
        flow: String,
        /// A file holding the event's payload (JSON); `-` reads standard input.
        #[arg(long)]
        event: PathBuf,
        /// The event type (default: the flow's first, or `test`).
        #[arg(long)]
        event_type: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(command: FlowCommand) -> Result<(), CliError> {
    let FlowCommand::Test {
        config,
        flow,
        event,
        event_type,
        json,
    } = command;
    test(&config, &flow, &event, event_type, json).await
}

async fn test(
    config_path: &Path,
    flow_id: &str,
    event_path: &Path,
    event_type: Option<String>,
    json: bool,
) -> Result<(), CliError> {
    let config = match load_checked(config_path).await {
        Ok(c) => Arc::new(c),
        Err(errors) => {
            eprint!("{errors}");
            return Err(CliError::InvalidConfig(config_path.to_path_buf()));
        }
    };
    let Some(flow) = config.flow(flow_id).cloned() else {
        return Err(CliError::NoFlow {
            flow: flow_id.to_string(),
            config: config_path.to_path_buf(),
            known: config.flows.iter().map(|f| f.id.clone()).collect(),
        });
    };
    let payload = read_event(event_path)?;
    let now = crate::clock::system_now_ms();
    let event = Arc::new(EventInfo {
        id: "evt_test".into(),
        event_type: event_type
            .or_else(|| flow.event_types.iter().next().cloned())
            .unwrap_or_else(|| "test".into()),
        source: flow.source.clone(),
        received_at: now,
        headers: serde_json::json!({}),
    });
    let raw = bytes::Bytes::from(payload.to_string());
    let command = WorkerCommand::current_exe().map_err(CliError::Worker)?;
    let sandbox = Sandbox::new(command, config.settings.expressions.clone());
    let report = sandbox.test_flow(&config, &flow, event, raw, now).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_test_report(&report));
    }
    if report.outcome == "failed" {
        return Err(CliError::FlowFailed);
    }
    Ok(())
}

/// The event's payload from its file, or from standard input for `-`.
fn read_event(path: &Path) -> Result<serde_json::Value, CliError> {
    let text = if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(CliError::ReadStdin)?;
        s
    } else {
        std::fs::read_to_string(path).map_err(|source| CliError::ReadEvent {
            path: path.to_path_buf(),
            source,
        })?
    };
    serde_json::from_str(&text).map_err(|source| CliError::EventNotJson {
        path: path.to_path_buf(),
        source,
    })
}

/// `ferry flow test` for a person: each step with its status, what it produced, and for steps
/// with I/O the request it would send.
fn render_test_report(report: &TestReport) -> String {
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

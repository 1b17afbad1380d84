//! `ferry replay`: a dead delivery retried or a failed run replayed, one by its id or every one
//! a filter matches (`--dry-run` counts them and changes nothing).

use super::table::print_json;
use super::{CliError, ClientArgs};
use reqwest::Method;

#[derive(clap::Subcommand)]
pub enum ReplayCommand {
    /// Retry a dead delivery (a fresh round of attempts).
    Delivery {
        /// The dead delivery's id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Replay a failed run from the step that failed.
    Run {
        /// The failed run's id.
        id: String,
        /// Use the flow's current definition even if it changed since the run started.
        #[arg(long)]
        use_current_flow: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Retry every dead delivery matching the filter (see --dry-run).
    Deliveries {
        /// Only the deliveries to this destination (its id).
        #[arg(long)]
        destination: Option<String>,
        /// RFC 3339: made at or after.
        #[arg(long)]
        since: Option<String>,
        /// RFC 3339: made before.
        #[arg(long)]
        until: Option<String>,
        /// A part of the last error.
        #[arg(long)]
        error: Option<String>,
        /// Count what would be retried, retry nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Replay every failed run matching the filter (see --dry-run).
    Runs {
        /// Only the runs of this flow (its id).
        #[arg(long)]
        flow: Option<String>,
        /// RFC 3339: made at or after.
        #[arg(long)]
        since: Option<String>,
        /// RFC 3339: made before.
        #[arg(long)]
        until: Option<String>,
        /// A part of the error message.
        #[arg(long)]
        error: Option<String>,
        /// Count what would be replayed, replay nothing.
        #[arg(long)]
        dry_run: bool,
        /// Use each flow's current definition even if it changed since its run started.
        #[arg(long)]
        use_current_flow: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub async fn run(command: ReplayCommand) -> Result<(), CliError> {
    let (args, v) = match command {
        ReplayCommand::Delivery { id, client: args } => {
            let v = args
                .client()?
                .call(
                    Method::POST,
                    &format!("/api/v1/deliveries/{id}/retry"),
                    None,
                )
                .await?;
            if !args.json {
                println!("delivery {id} is pending again (a fresh round of attempts)");
            }
            (args, v)
        }
        ReplayCommand::Run {
            id,
            use_current_flow,
            client: args,
        } => {
            let body = serde_json::json!({"use_current_flow": use_current_flow});
            let v = args
                .client()?
                .call(
                    Method::POST,
                    &format!("/api/v1/runs/{id}/replay"),
                    Some(body),
                )
                .await?;
            if !args.json {
                println!(
                    "run {id} replays from step {} ({})",
                    v["from_step"].as_str().unwrap_or("?"),
                    v["status"].as_str().unwrap_or("?")
                );
            }
            (args, v)
        }
        ReplayCommand::Deliveries {
            destination,
            since,
            until,
            error,
            dry_run,
            client: args,
        } => {
            let body = serde_json::json!({
                "destination_id": destination, "since": since, "until": until, "error": error,
                "dry_run": dry_run,
            });
            let v = args
                .client()?
                .call(Method::POST, "/api/v1/dead-letters/replay", Some(body))
                .await?;
            if !args.json {
                if dry_run {
                    println!(
                        "{} dead deliveries match; nothing retried (without --dry-run they would be)",
                        v["matched"]
                    );
                } else {
                    println!(
                        "{} dead deliveries matched; {} are pending again",
                        v["matched"],
                        v["delivery_ids"].as_array().map_or(0, Vec::len)
                    );
                }
            }
            (args, v)
        }
        ReplayCommand::Runs {
            flow,
            since,
            until,
            error,
            dry_run,
            use_current_flow,
            client: args,
        } => {
            let body = serde_json::json!({
                "flow_id": flow, "since": since, "until": until, "error": error,
                "dry_run": dry_run, "use_current_flow": use_current_flow,
            });
            let v = args
                .client()?
                .call(Method::POST, "/api/v1/runs/replay", Some(body))
                .await?;
            if !args.json {
                if dry_run {
                    println!(
                        "{} failed runs match; nothing replayed (without --dry-run they would be)",
                        v["matched"]
                    );
                } else {
                    println!(
                        "{} failed runs matched, {} replayed",
                        v["matched"], v["replayed"]
                    );
                    for s in v["skipped"].as_array().into_iter().flatten() {
                        println!(
                            "  skipped {}: {}",
                            s["run_id"].as_str().unwrap_or("?"),
                            s["message"].as_str().unwrap_or("")
                        );
                    }
                }
            }
            (args, v)
        }
    };
    if args.json {
        print_json(&v);
    }
    Ok(())
}

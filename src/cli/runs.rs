//! `ferry runs`: flow runs as a list, or one with each step's input, output, status and error.

use super::table::{Nested, array, list, show};
use super::{CliError, ClientArgs};

#[derive(clap::Subcommand)]
pub enum RunsCommand {
    /// Runs, newest first.
    List {
        /// Only the runs of this flow (its id).
        #[arg(long)]
        flow: Option<String>,
        /// Only the runs of this event (its id).
        #[arg(long)]
        event: Option<String>,
        /// running, waiting, completed, filtered or failed.
        #[arg(long)]
        status: Option<String>,
        /// At most this many runs.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One run with each step's input, output, status and error.
    Show {
        /// The run's id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub async fn run(command: RunsCommand) -> Result<(), CliError> {
    match command {
        RunsCommand::List {
            flow,
            event,
            status,
            limit,
            client: args,
        } => {
            let filters = [
                ("flow", flow),
                ("event_id", event),
                ("status", status),
                ("limit", Some(limit.to_string())),
            ];
            let columns = [
                ("ID", "/id"),
                ("EVENT", "/event_id"),
                ("FLOW", "/flow_id"),
                ("STATUS", "/status"),
                ("STEP", "/step_index"),
                ("ERROR", "/error"),
            ];
            list(&args, "/api/v1/runs", &filters, &columns).await?;
        }
        RunsCommand::Show { id, client: args } => {
            let keys = [
                ("id", "/id"),
                ("event", "/event_id"),
                ("flow", "/flow_id"),
                ("version", "/flow_version"),
                ("status", "/status"),
                ("step", "/step_index"),
                ("next at", "/next_at"),
                ("error", "/error"),
            ];
            let steps = Nested {
                title: "steps",
                items: |run| array(run, "steps"),
                columns: &[
                    ("#", "/index"),
                    ("KIND", "/kind"),
                    ("NAME", "/name"),
                    ("PATH", "/path"),
                    ("STATUS", "/status"),
                    ("MS", "/duration_ms"),
                    ("ERROR", "/error"),
                ],
            };
            let path = format!("/api/v1/runs/{id}");
            show(&args, &path, &keys, &[steps]).await?;
        }
    }
    Ok(())
}

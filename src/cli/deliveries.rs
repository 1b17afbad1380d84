//! `ferry deliveries`: deliveries as a list, or one with every attempt.

use super::table::{Nested, array, list, show};
use super::{CliError, ClientArgs};

#[derive(clap::Subcommand)]
pub enum DeliveriesCommand {
    /// Deliveries, newest first.
    List {
        /// Only the deliveries to this destination (its id).
        #[arg(long)]
        destination: Option<String>,
        /// Only the deliveries of this event (its id).
        #[arg(long)]
        event: Option<String>,
        /// pending, succeeded or dead.
        #[arg(long)]
        status: Option<String>,
        /// At most this many deliveries.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One delivery with every attempt.
    Show {
        /// The delivery's id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub async fn run(command: DeliveriesCommand) -> Result<(), CliError> {
    match command {
        DeliveriesCommand::List {
            destination,
            event,
            status,
            limit,
            client: args,
        } => {
            let filters = [
                ("destination", destination),
                ("event_id", event),
                ("status", status),
                ("limit", Some(limit.to_string())),
            ];
            let columns = [
                ("ID", "/id"),
                ("EVENT", "/event_id"),
                ("DESTINATION", "/destination_id"),
                ("STATUS", "/status"),
                ("ATTEMPTS", "/attempt_count"),
                ("LAST ERROR", "/last_error"),
            ];
            list(&args, "/api/v1/deliveries", &filters, &columns).await?;
        }
        DeliveriesCommand::Show { id, client: args } => {
            let keys = [
                ("id", "/id"),
                ("event", "/event_id"),
                ("run", "/run_id"),
                ("destination", "/destination_id"),
                ("status", "/status"),
                ("attempts", "/attempt_count"),
                ("next attempt", "/next_attempt_at"),
                ("last error", "/last_error"),
            ];
            let attempts = Nested {
                title: "attempts",
                items: |delivery| array(delivery, "attempts"),
                columns: &[
                    ("#", "/attempt"),
                    ("STARTED", "/started_at"),
                    ("MS", "/duration_ms"),
                    ("OUTCOME", "/outcome"),
                    ("STATUS", "/status_code"),
                    ("ERROR", "/error"),
                ],
            };
            let path = format!("/api/v1/deliveries/{id}");
            show(&args, &path, &keys, &[attempts]).await?;
        }
    }
    Ok(())
}

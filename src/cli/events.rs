//! `ferry events`: the events a running server received, as a list or one with its runs and
//! deliveries.

use super::table::{Nested, array, list, show};
use super::{CliError, ClientArgs};

#[derive(clap::Subcommand)]
pub enum EventsCommand {
    /// Events, newest first.
    List {
        /// Only the events of this source (its id).
        #[arg(long)]
        source: Option<String>,
        /// Only the events of this type.
        #[arg(long = "type")]
        event_type: Option<String>,
        /// RFC 3339: received at or after.
        #[arg(long)]
        since: Option<String>,
        /// RFC 3339: received before.
        #[arg(long)]
        until: Option<String>,
        /// pending, failed, succeeded or unrouted.
        #[arg(long)]
        status: Option<String>,
        /// A jq expression on the payload (events for which it is true).
        #[arg(long)]
        jq: Option<String>,
        /// `path=value` on the payload, e.g. `data.plan=pro`.
        #[arg(long = "match")]
        field_match: Option<String>,
        /// At most this many events.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One event with its runs and deliveries.
    Show {
        /// The event's id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub async fn run(command: EventsCommand) -> Result<(), CliError> {
    match command {
        EventsCommand::List {
            source,
            event_type,
            since,
            until,
            status,
            jq,
            field_match,
            limit,
            client: args,
        } => {
            let filters = [
                ("source", source),
                ("type", event_type),
                ("since", since),
                ("until", until),
                ("status", status),
                ("jq", jq),
                ("match", field_match),
                ("limit", Some(limit.to_string())),
            ];
            let columns = [
                ("ID", "/id"),
                ("SOURCE", "/source"),
                ("TYPE", "/event_type"),
                ("STATUS", "/status"),
                ("RECEIVED", "/received_at"),
            ];
            list(&args, "/api/v1/events", &filters, &columns).await?;
        }
        EventsCommand::Show { id, client: args } => {
            let keys = [
                ("id", "/id"),
                ("source", "/source"),
                ("type", "/event_type"),
                ("received", "/received_at"),
                ("idempotency key", "/idempotency_key"),
            ];
            let runs = Nested {
                title: "runs",
                items: |event| array(event, "runs"),
                columns: &[
                    ("ID", "/id"),
                    ("FLOW", "/flow_id"),
                    ("STATUS", "/status"),
                    ("ERROR", "/error"),
                ],
            };
            let deliveries = Nested {
                title: "deliveries",
                items: |event| {
                    let runs = array(event, "runs");
                    runs.iter().flat_map(|r| array(r, "deliveries")).collect()
                },
                columns: &[
                    ("ID", "/id"),
                    ("DESTINATION", "/destination_id"),
                    ("STATUS", "/status"),
                    ("ATTEMPTS", "/attempt_count"),
                    ("LAST ERROR", "/last_error"),
                ],
            };
            let path = format!("/api/v1/events/{id}");
            show(&args, &path, &keys, &[runs, deliveries]).await?;
        }
    }
    Ok(())
}

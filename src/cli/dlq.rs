//! `ferry dlq list`: the dead letters, dead deliveries and failed runs in one list.

use super::table::{array, print_json, table};
use super::{CliError, ClientArgs};
use reqwest::Method;

#[derive(clap::Subcommand)]
pub enum DlqCommand {
    /// Dead letters, newest first.
    List {
        /// At most this many dead letters.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub async fn run(command: DlqCommand) -> Result<(), CliError> {
    let DlqCommand::List {
        limit,
        client: args,
    } = command;
    let v = args
        .client()?
        .call(
            Method::GET,
            &format!("/api/v1/dead-letters?limit={limit}"),
            None,
        )
        .await?;
    if args.json {
        print_json(&v);
        return Ok(());
    }
    let items: Vec<serde_json::Value> = array(&v, "data")
        .into_iter()
        .map(|mut d| {
            let target = d["destination_id"]
                .as_str()
                .or(d["flow_id"].as_str())
                .unwrap_or("-")
                .to_string();
            let error = d["last_error"]
                .as_str()
                .or(d["error"].as_str())
                .unwrap_or("-")
                .to_string();
            d["target"] = target.into();
            d["why"] = error.into();
            d
        })
        .collect();
    print!(
        "{}",
        table(
            &items,
            &[
                ("KIND", "/kind"),
                ("ID", "/id"),
                ("DESTINATION/FLOW", "/target"),
                ("UPDATED", "/updated_at"),
                ("ERROR", "/why")
            ]
        )
    );
    Ok(())
}

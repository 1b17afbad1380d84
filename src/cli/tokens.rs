//! `ferry tokens`: make, list and revoke API tokens (the server asks for an admin token).

use super::table::{list, print_json};
use super::{CliError, ClientArgs};
use reqwest::Method;

#[derive(clap::Subcommand)]
pub enum TokensCommand {
    /// Make a token; it is shown once.
    Create {
        /// What the token is for, as the list shows it.
        #[arg(long)]
        name: String,
        /// `admin` or `read`.
        #[arg(long, default_value = "read")]
        scope: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The live tokens (without their values).
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke a token by its id.
    Revoke {
        /// The token's id (not its value).
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub async fn run(command: TokensCommand) -> Result<(), CliError> {
    match command {
        TokensCommand::Create {
            name,
            scope,
            client: args,
        } => {
            let body = serde_json::json!({"name": name, "scope": scope});
            let v = args
                .client()?
                .call(Method::POST, "/api/v1/tokens", Some(body))
                .await?;
            if args.json {
                print_json(&v);
                return Ok(());
            }
            println!(
                "token {} ({}, scope {}): {}",
                v["id"].as_str().unwrap_or("?"),
                name,
                scope,
                v["token"].as_str().unwrap_or("?")
            );
            println!("it is shown this once; Ferry keeps only its digest");
        }
        TokensCommand::List { client: args } => {
            let columns = [
                ("ID", "/id"),
                ("NAME", "/name"),
                ("SCOPE", "/scope"),
                ("CREATED", "/created_at"),
            ];
            list(&args, "/api/v1/tokens", &[], &columns).await?;
        }
        TokensCommand::Revoke { id, client: args } => {
            args.client()?
                .call(Method::DELETE, &format!("/api/v1/tokens/{id}"), None)
                .await?;
            if !args.json {
                println!("token {id} revoked");
            }
        }
    }
    Ok(())
}

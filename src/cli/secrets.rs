//! `ferry secrets rotate`: every stored secret sealed under a new key, offline (the work is
//! `crate::secrets::rotate`'s; this says what was done and where the new key is).

use super::CliError;
use crate::secrets::{KEY_ENV, NEW_KEY_ENV, key_from_env};
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum SecretsCommand {
    /// Seal every stored secret again under a new key. The old key is FERRY_SECRET_KEY, or the
    /// data directory's key file. The new key is FERRY_NEW_SECRET_KEY (32 bytes in base64);
    /// with a key file it may be left out, and a random one replaces the key file. With
    /// FERRY_SECRET_KEY, set it to the new key afterwards. On PostgreSQL both keys come from
    /// the environment, and every node must be stopped first.
    Rotate {
        /// The data directory.
        #[arg(long, env = "FERRY_DATA", default_value = "ferry-data")]
        data: PathBuf,
        /// A cluster's PostgreSQL database instead of a data directory.
        #[arg(long, env = "FERRY_DATABASE_URL", conflicts_with = "data")]
        database_url: Option<String>,
    },
}

pub async fn run(command: SecretsCommand) -> Result<(), CliError> {
    let SecretsCommand::Rotate { data, database_url } = command;
    let old = key_from_env(KEY_ENV)?;
    let new = key_from_env(NEW_KEY_ENV)?;
    let done = match &database_url {
        Some(url) => {
            let where_ = crate::store::postgres::parse_url(url)
                .map(|c| crate::store::postgres::describe_target(&c))
                .unwrap_or_else(|_| "the database".into());
            let now = crate::clock::system_now_ms();
            crate::secrets::rotate::rotate_postgres(url, old, new, now)
                .await
                .map_err(|source| CliError::NotRotated { where_, source })?
        }
        None => crate::secrets::rotate::rotate(&data, old, new)
            .await
            .map_err(|source| CliError::NotRotated {
                where_: data.display().to_string(),
                source,
            })?,
    };
    println!(
        "sealed {} secret(s) of {} object(s) under key {} (they were under key {})",
        done.secrets, done.objects, done.new_key_id, done.old_key_id
    );
    match done.key_file {
        Some(path) => println!("{} holds the new key; back it up", path.display()),
        None => println!("set {KEY_ENV} to the new key ({NEW_KEY_ENV}) before Ferry starts again"),
    }
    Ok(())
}

//! `ferry migrate`: brings a store's schema up to date without serving. With a database URL,
//! the PostgreSQL migrations (`store::postgres`, under their advisory lock, so it is safe
//! while nodes start); with a data directory, the SQLite store, which migrates when it opens.
//! Says which versions it applied, or the version the schema is at.

use super::CliError;
use crate::store::postgres::{PgOptions, PgStore};
use crate::store::{Store, StoreOptions};
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args)]
pub struct MigrateArgs {
    /// The data directory of the embedded SQLite store.
    #[arg(long, env = "FERRY_DATA", default_value = "ferry-data")]
    data: PathBuf,
    /// PostgreSQL URL (postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE); takes the place of
    /// --data.
    #[arg(long, env = "FERRY_DATABASE_URL", conflicts_with = "data")]
    database_url: Option<OsString>,
}

pub async fn run(args: MigrateArgs) -> Result<(), CliError> {
    match args.database_url {
        Some(url) => migrate_postgres(url).await,
        None => migrate_sqlite(args.data).await,
    }
}

async fn migrate_postgres(url: OsString) -> Result<(), CliError> {
    let url = url
        .into_string()
        .map_err(|_| CliError::DatabaseUrlNotUtf8)?;
    // One connection: the migration is one transaction.
    let options = PgOptions {
        pool_size: 1,
        ..PgOptions::default()
    };
    let store = PgStore::connect(&url, options).await?;
    let migrated = store.migrated();
    if migrated.applied.is_empty() {
        println!(
            "the PostgreSQL schema is up to date at version {}",
            migrated.version
        );
    } else {
        for m in &migrated.applied {
            println!("applied migration {} ({})", m.version, m.name);
        }
        println!("the PostgreSQL schema is at version {}", migrated.version);
    }
    Ok(())
}

async fn migrate_sqlite(data: PathBuf) -> Result<(), CliError> {
    let metrics = Arc::new(crate::telemetry::Metrics::new());
    let dir = data.clone();
    let store =
        tokio::task::spawn_blocking(move || Store::open(&dir, StoreOptions::default(), metrics))
            .await
            .map_err(|e| CliError::StoreTask(e.to_string()))??;
    drop(store);
    println!(
        "the SQLite store in {} is up to date at schema version {}",
        data.display(),
        Store::SCHEMA_VERSION
    );
    Ok(())
}

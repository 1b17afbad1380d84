//! The `ferry` command line: every command and option (clap), and what each command does.
//! `main.rs` parses [`Cli`] and hands each [`Command`] to its file here: `serve.rs` (serve,
//! demo, validate, the expression worker), `migrate.rs` (migrate), `flow.rs` (flow test), the
//! client commands (`events.rs`, `deliveries.rs`, `dlq.rs`, `replay.rs`, `runs.rs`,
//! `tokens.rs`, `apply.rs`), `secrets.rs` (secrets rotate) and `bench.rs` (the bare handler
//! `ferry bench` starts).
//! Client commands reach a running server through `client.rs` and print `table.rs`'s tables
//! for people, or the API's JSON with `--json`. Every command fails with a [`CliError`].
//! Nothing in the server uses this module (`apply` borrows the API client).

pub mod apply;
pub mod apply_plan;
pub mod bench;
pub mod client;
pub mod deliveries;
pub mod dlq;
mod error;
pub mod events;
pub mod flow;
pub mod migrate;
pub mod replay;
pub mod runs;
pub mod secrets;
pub mod serve;
pub mod table;
pub mod tokens;

pub use client::{ApiClient, ClientArgs, ClientError};
pub use error::CliError;

use crate::telemetry::LogFormat;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Self-hosted integration engine: durable webhooks in, validated, routed and delivered out"
)]
pub struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "FERRY_LOG_FORMAT",
        value_enum,
        default_value = "pretty"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the engine: ingest, delivery workers and API on one listener.
    Serve(serve::ServeArgs),
    /// Run an example shop integration with local demo receivers (one of them flaky).
    Demo(serve::DemoArgs),
    /// Check a config file and report every error with its place.
    Validate(serve::ValidateArgs),
    /// Bring the store's schema up to date (PostgreSQL with --database-url, else SQLite in
    /// --data) and say which versions were applied.
    Migrate(migrate::MigrateArgs),
    /// Work with flows.
    #[command(subcommand)]
    Flow(flow::FlowCommand),
    /// An expression worker: started by the server, answers on standard input and output.
    #[command(hide = true)]
    ExprWorker(serve::ExprWorkerArgs),
    /// Events a running server received (client of the API).
    #[command(subcommand)]
    Events(events::EventsCommand),
    /// Deliveries and their attempts (client of the API).
    #[command(subcommand)]
    Deliveries(deliveries::DeliveriesCommand),
    /// Dead letters: dead deliveries and failed runs (client of the API).
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Replay a dead delivery, a failed run, or every failed run matching a filter.
    #[command(subcommand)]
    Replay(replay::ReplayCommand),
    /// Flow runs and their steps (client of the API).
    #[command(subcommand)]
    Runs(runs::RunsCommand),
    /// API tokens (client of the API; needs an admin token).
    #[command(subcommand)]
    Tokens(tokens::TokensCommand),
    /// Make a running server's sources, event types, destinations, flows and alert rules match a file:
    /// prints the plan, then carries it out (client of the API).
    Apply(apply::ApplyArgs),
    /// Measure ingest and delivery throughput and latency on this machine.
    Bench(crate::bench::BenchArgs),
    /// Print the OpenAPI document of the management API (what `/api/v1/openapi.json` serves).
    Openapi,
    /// The stored secrets (offline: Ferry must not be running on the data directory).
    #[command(subcommand)]
    Secrets(secrets::SecretsCommand),
    /// The bare handler `ferry bench` compares with (reads the body, answers 202).
    #[command(hide = true)]
    BenchBare(bench::BenchBareArgs),
}

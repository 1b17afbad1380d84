//! The `ferry` binary: parses the command line and hands each command to its file in
//! `ferry::cli` (or to `ferry::bench`). Nothing here but logging setup, the async runtime and
//! error reporting: `error: ` and the error's causes on stderr, exit code 1.

use anyhow::Context;
use clap::Parser;
use ferry::cli::{Cli, Command, apply, bench, deliveries, dlq, events, flow, replay, runs};
use ferry::cli::{migrate, secrets, serve, tokens};
use std::process::ExitCode;

/// mimalloc: the request path allocates on tokio threads and frees on the store writer thread,
/// which glibc malloc handles poorly (see docs/PERFORMANCE.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    ferry::telemetry::init(cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => block_on(serve::serve(args)),
        Command::Demo(args) => block_on(serve::demo(args)),
        Command::Validate(args) => block_on(serve::validate(args)),
        Command::ExprWorker(args) => serve::expr_worker(args).map_err(Into::into),
        Command::Migrate(args) => block_on(migrate::run(args)),
        Command::Flow(c) => block_on(flow::run(c)),
        Command::Events(c) => block_on(events::run(c)),
        Command::Deliveries(c) => block_on(deliveries::run(c)),
        Command::Dlq(c) => block_on(dlq::run(c)),
        Command::Replay(c) => block_on(replay::run(c)),
        Command::Runs(c) => block_on(runs::run(c)),
        Command::Tokens(c) => block_on(tokens::run(c)),
        Command::Apply(args) => block_on(apply::run(args)),
        Command::Secrets(c) => block_on(secrets::run(c)),
        Command::Bench(args) => ferry::bench::run(args).map_err(Into::into),
        Command::BenchBare(args) => block_on(bench::bare(args)),
        Command::Openapi => {
            print!("{}", ferry::api::openapi::document());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a command on a multi-threaded runtime of its own.
fn block_on(command: impl Future<Output = Result<(), ferry::cli::CliError>>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    Ok(runtime.block_on(command)?)
}

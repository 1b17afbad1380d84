//! The commands that run Ferry on this machine: `serve`, `demo`, `validate` (the config's
//! check that `serve` and `flow test` make too) and the hidden `expr-worker`, the process the
//! server starts to run expressions. `serve` writes one line to stdout, [`announce`]'s.

use super::CliError;
use crate::config::{Config, ConfigErrors};
use crate::engine::sandbox::{Limits, Sandbox, WorkerCommand, worker};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The target of `serve`'s own log lines: the binary's name, which log filters and readers
/// know them by.
const LOG_TARGET: &str = "ferry";

#[derive(clap::Args)]
pub struct ServeArgs {
    /// The config file (YAML).
    #[arg(long, env = "FERRY_CONFIG")]
    config: Option<PathBuf>,
    /// Directory for the embedded SQLite store and the generated API token.
    #[arg(long, env = "FERRY_DATA", default_value = "ferry-data")]
    data: PathBuf,
    /// PostgreSQL URL: cluster mode, where any number of nodes share the database
    /// (`FERRY_API_TOKEN` and `FERRY_SECRET_KEY` must then be set, the same on every node).
    #[arg(long, env = "FERRY_DATABASE_URL", conflicts_with = "data")]
    database_url: Option<String>,
    /// Cluster mode: this node's name (default: the host's name and the process id).
    #[arg(long, env = "FERRY_NODE_ID")]
    node_id: Option<String>,
    /// The address to listen on; port 0 takes a free port (the line on stdout names it).
    #[arg(long, env = "FERRY_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
}

#[derive(clap::Args)]
pub struct DemoArgs {
    /// The address Ferry listens on (the demo's receivers take free ports).
    #[arg(long, env = "FERRY_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Where the demo keeps its data; a fresh temporary directory when not given.
    #[arg(long, conflicts_with = "database_url")]
    data: Option<PathBuf>,
    /// Run the demo on PostgreSQL (cluster mode) instead.
    #[arg(long, env = "FERRY_DATABASE_URL")]
    database_url: Option<String>,
}

#[derive(clap::Args)]
pub struct ValidateArgs {
    /// The config file (YAML) to check.
    #[arg(long, short = 'c', env = "FERRY_CONFIG")]
    config: PathBuf,
}

#[derive(clap::Args)]
pub struct ExprWorkerArgs {
    /// Address space limit in bytes.
    #[arg(long)]
    memory_limit: u64,
    /// CPU seconds one request may use.
    #[arg(long)]
    cpu_limit: u64,
}

/// `ferry serve`: the engine on one listener until Ctrl-C or SIGTERM.
pub async fn serve(args: ServeArgs) -> Result<(), CliError> {
    let ServeArgs {
        config,
        data,
        database_url,
        node_id,
        listen,
    } = args;
    let config = match &config {
        Some(path) => match crate::config::load_file(path) {
            Ok(c) => c,
            Err(errors) => {
                eprint!("{errors}");
                return Err(CliError::RefusedConfig(path.clone()));
            }
        },
        None => {
            tracing::warn!(
                target: LOG_TARGET,
                "no --config given: serving with no sources, destinations or flows"
            );
            crate::config::load_str("{}", "(empty)", Path::new("."), &|_| None)
                .map_err(CliError::EmptyConfig)?
        }
    };
    let mut options = crate::app::ServeOptions::new(config, data.clone());
    options.secret_key = crate::secrets::key_from_env(crate::secrets::KEY_ENV)?;
    options.api_token = api_token_from_env();
    options.database_url = database_url.clone();
    options.node_id = node_id;
    let token_note = if options.api_token.is_some() {
        "from FERRY_API_TOKEN".to_string()
    } else {
        format!("in {}", crate::app::token_path(&data).display())
    };
    let listener = crate::server::bind(listen).map_err(|source| CliError::Listen {
        addr: listen,
        source,
    })?;
    let state = crate::app::prepare(options).await?;
    let addr = listener.local_addr().map_err(CliError::ListeningAddress)?;
    announce(addr);
    tracing::info!(
        target: LOG_TARGET,
        %addr,
        store = %match &database_url {
            Some(url) => crate::store::postgres::parse_url(url)
                .map(|c| crate::store::postgres::describe_target(&c))
                .unwrap_or_default(),
            None => data.display().to_string(),
        },
        "ferry is serving; the API token is {token_note}"
    );
    crate::app::serve(listener, state, stop_on_signals()?).await?;
    tracing::info!(target: LOG_TARGET, "stopped");
    Ok(())
}

/// `ferry demo`: the example integration until Ctrl-C.
pub async fn demo(args: DemoArgs) -> Result<(), CliError> {
    let stop = stop_on_signals()?;
    crate::demo::run(
        args.listen,
        args.data,
        args.database_url,
        api_token_from_env(),
        stop,
    )
    .await?;
    Ok(())
}

/// `FERRY_API_TOKEN`, unless it is unset or empty.
fn api_token_from_env() -> Option<String> {
    std::env::var("FERRY_API_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
}

/// `ferry validate`: the config's every error with its place, or a summary of what it holds.
pub async fn validate(args: ValidateArgs) -> Result<(), CliError> {
    let path = args.config;
    match load_checked(&path).await {
        Ok(c) => {
            println!(
                "{}: ok ({} sources, {} event types, {} destinations, {} flows)",
                path.display(),
                c.sources.len(),
                c.event_types.len(),
                c.destinations.len(),
                c.flows.len()
            );
            Ok(())
        }
        Err(errors) => {
            eprint!("{errors}");
            Err(CliError::InvalidConfig(path))
        }
    }
}

/// Loads a config file and has its expressions compiled by an expression worker.
pub(super) async fn load_checked(path: &Path) -> Result<Config, String> {
    let loaded = crate::config::load_file(path);
    let limits = match &loaded {
        Ok(config) => config.settings.expressions.clone(),
        Err(_) => Limits::default(),
    };
    let command = WorkerCommand::current_exe()?;
    let sandbox = Sandbox::new(command, limits);
    match loaded {
        Ok(mut config) => {
            sandbox
                .check_config(&mut config)
                .await
                .map_err(|errors| errors.to_string())?;
            Ok(config)
        }
        // Every error in one report: the expressions' too, though the rest is wrong.
        Err(ConfigErrors(mut errors, sites)) => {
            if let Err(more) = sandbox.check_sites(&sites).await {
                errors.extend(more.0);
            }
            Err(ConfigErrors(errors, Vec::new()).to_string())
        }
    }
}

/// `ferry expr-worker`: answers the server's requests until its standard input closes.
pub fn expr_worker(args: ExprWorkerArgs) -> Result<(), CliError> {
    worker::main(worker::WorkerLimits {
        memory_bytes: args.memory_limit,
        cpu_seconds: args.cpu_limit,
    })
    .map_err(CliError::Worker)
}

/// The one line `serve` writes to stdout: where it listens (with `--listen 127.0.0.1:0`, the
/// port the system chose). Scripts and tests read it.
pub(super) fn announce(addr: SocketAddr) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "ferry listening on http://{addr}");
    let _ = out.flush();
}

/// The stop signals (`SIGINT`, Ctrl-C; `SIGTERM`), listened to from now on: the answer
/// resolves at the first, which starts the graceful stop; a second one during the stop ends
/// the process at once, as a crash would (nothing committed is lost; what was in flight is
/// attempted again), with the conventional code (130 for `SIGINT`, 143 for `SIGTERM`). The
/// listeners are made here, once, so a second signal sent right after the first is not missed.
fn stop_on_signals() -> Result<impl Future<Output = ()> + Send + 'static, CliError> {
    use tokio::signal::unix::{SignalKind, signal};
    let listen = |kind| signal(kind).map_err(CliError::Signals);
    let (mut interrupt, mut terminate) = (
        listen(SignalKind::interrupt())?,
        listen(SignalKind::terminate())?,
    );
    let (first, first_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!(target: LOG_TARGET, "stopping: no new work starts; the work in flight gets `settings.shutdown_grace` to finish (a second signal stops at once)");
        let _ = first.send(());
        let code = tokio::select! {
            _ = interrupt.recv() => 130,
            _ = terminate.recv() => 143,
        };
        tracing::warn!(target: LOG_TARGET, "a second stop signal: stopping at once");
        std::process::exit(code);
    });
    Ok(async move {
        let _ = first_rx.await;
    })
}

//! The `ferry` binary: parses the command line and wires the library together. Nothing here
//! but argument handling, logging setup and error reporting.

use anyhow::{Context, bail};

/// mimalloc: the request path allocates on tokio threads and frees on the store writer thread,
/// which glibc malloc handles poorly (see docs/PERFORMANCE.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use clap::{Parser, Subcommand};
use ferry::telemetry::LogFormat;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Self-hosted integration engine: durable webhooks in, validated, routed and delivered out"
)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "FERRY_LOG_FORMAT",
        value_enum,
        default_value = "pretty"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine: ingest, delivery workers and API on one listener.
    Serve {
        /// The config file (YAML).
        #[arg(long, env = "FERRY_CONFIG")]
        config: Option<PathBuf>,
        /// Directory for the embedded SQLite store and the generated API token.
        #[arg(long, env = "FERRY_DATA", default_value = "ferry-data")]
        data: PathBuf,
        /// PostgreSQL URL for cluster mode (not available yet).
        #[arg(long, env = "FERRY_DATABASE_URL", conflicts_with = "data")]
        database_url: Option<String>,
        #[arg(long, env = "FERRY_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
    /// Run an example shop integration with local demo receivers (one of them flaky).
    Demo {
        #[arg(long, env = "FERRY_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Where the demo keeps its data; a fresh temporary directory when not given.
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Check a config file and report every error with its place.
    Validate {
        #[arg(long, short = 'c', env = "FERRY_CONFIG")]
        config: PathBuf,
    },
    /// Measure ingest and delivery throughput and latency on this machine.
    Bench(ferry::bench::BenchArgs),
    /// The bare handler `ferry bench` compares with (reads the body, answers 202).
    #[command(hide = true)]
    BenchBare {
        #[arg(long)]
        listen: SocketAddr,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    ferry::telemetry::init(cli.log_format);
    let result = match cli.command {
        Command::Validate { config } => validate(&config),
        Command::Serve {
            config,
            data,
            database_url,
            listen,
        } => runtime().and_then(|rt| rt.block_on(serve(config, data, database_url, listen))),
        Command::Demo { listen, data } => runtime().and_then(|rt| {
            rt.block_on(ferry::demo::run(listen, data))
                .map_err(Into::into)
        }),
        Command::Bench(args) => ferry::bench::run(args).map_err(Into::into),
        Command::BenchBare { listen } => runtime().and_then(|rt| {
            rt.block_on(async {
                let listener = tokio::net::TcpListener::bind(listen).await?;
                announce(listener.local_addr()?);
                ferry::bench::serve_bare(listener).await
            })
            .map_err(Into::into)
        }),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn validate(path: &std::path::Path) -> anyhow::Result<()> {
    match ferry::config::load_file(path) {
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
            bail!("{} is not valid", path.display())
        }
    }
}

async fn serve(
    config: Option<PathBuf>,
    data: PathBuf,
    database_url: Option<String>,
    listen: SocketAddr,
) -> anyhow::Result<()> {
    if database_url.is_some() {
        bail!(
            "PostgreSQL storage (--database-url) is not available yet; use the embedded store with --data DIR"
        );
    }
    let config = match &config {
        Some(path) => match ferry::config::load_file(path) {
            Ok(c) => c,
            Err(errors) => {
                eprint!("{errors}");
                bail!("refusing to start: {} is not valid", path.display());
            }
        },
        None => {
            tracing::warn!("no --config given: serving with no sources, destinations or flows");
            ferry::config::load_str("{}", "(empty)", std::path::Path::new("."), &|_| None)
                .map_err(|e| anyhow::anyhow!("{e}"))?
        }
    };
    let mut options = ferry::app::ServeOptions::new(config, data.clone());
    options.api_token = std::env::var("FERRY_API_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let token_note = if options.api_token.is_some() {
        "from FERRY_API_TOKEN".to_string()
    } else {
        format!("in {}", ferry::app::token_path(&data).display())
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let state = ferry::app::prepare(options).await?;
    let addr = listener
        .local_addr()
        .context("cannot read the listening address")?;
    announce(addr);
    tracing::info!(%addr, data = %data.display(), "ferry is serving; the API token is {token_note}");
    ferry::app::serve(listener, state, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// The one line `serve` writes to stdout: where it listens (with `--listen 127.0.0.1:0`, the
/// port the system chose). Scripts and tests read it.
fn announce(addr: SocketAddr) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "ferry listening on http://{addr}");
    let _ = out.flush();
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

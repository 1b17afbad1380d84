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
use std::path::{Path, PathBuf};

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
    /// Work with flows.
    #[command(subcommand)]
    Flow(FlowCommand),
    /// An expression worker: started by the server, answers on standard input and output.
    #[command(hide = true)]
    ExprWorker {
        /// Address space limit in bytes.
        #[arg(long)]
        memory_limit: u64,
        /// CPU seconds one request may use.
        #[arg(long)]
        cpu_limit: u64,
    },
    /// Events a running server received (client of the API).
    #[command(subcommand)]
    Events(EventsCommand),
    /// Deliveries and their attempts (client of the API).
    #[command(subcommand)]
    Deliveries(DeliveriesCommand),
    /// Dead letters: dead deliveries and failed runs (client of the API).
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Replay a dead delivery, a failed run, or every failed run matching a filter.
    #[command(subcommand)]
    Replay(ReplayCommand),
    /// Flow runs and their steps (client of the API).
    #[command(subcommand)]
    Runs(RunsCommand),
    /// API tokens (client of the API; needs an admin token).
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Make a running server's sources, event types, destinations, flows and alert rules match a file:
    /// prints the plan, then carries it out (client of the API).
    Apply {
        /// The config file whose objects to apply.
        #[arg(long, short = 'f')]
        file: PathBuf,
        /// Also delete the objects made through the API that the file no longer has.
        #[arg(long)]
        prune: bool,
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Measure ingest and delivery throughput and latency on this machine.
    Bench(ferry::bench::BenchArgs),
    /// Print the OpenAPI document of the management API (what `/api/v1/openapi.json` serves).
    Openapi,
    /// The stored secrets (offline: Ferry must not be running on the data directory).
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// The bare handler `ferry bench` compares with (reads the body, answers 202).
    #[command(hide = true)]
    BenchBare {
        #[arg(long)]
        listen: SocketAddr,
        /// Append every body to a file in this folder and answer only once it is synced.
        #[arg(long)]
        synced_in: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum SecretsCommand {
    /// Seal every stored secret again under a new key. The old key is FERRY_SECRET_KEY, or the
    /// data directory's key file. The new key is FERRY_NEW_SECRET_KEY (32 bytes in base64);
    /// with a key file it may be left out, and a random one replaces the key file. With
    /// FERRY_SECRET_KEY, set it to the new key afterwards.
    Rotate {
        /// The data directory.
        #[arg(long, env = "FERRY_DATA", default_value = "ferry-data")]
        data: PathBuf,
    },
}

#[derive(Subcommand)]
enum FlowCommand {
    /// Run a flow on an event without side effects: pure steps for real, and for each http,
    /// delay and deliver step what it would do.
    Test {
        #[arg(long, short = 'c', env = "FERRY_CONFIG")]
        config: PathBuf,
        /// The flow's id.
        #[arg(long)]
        flow: String,
        /// A file holding the event's payload (JSON); `-` reads standard input.
        #[arg(long)]
        event: PathBuf,
        /// The event type (default: the flow's first, or `test`).
        #[arg(long)]
        event_type: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Where the server is and how to talk to it: every client command takes these.
#[derive(clap::Args)]
struct ClientArgs {
    /// The server's base URL.
    #[arg(long, env = "FERRY_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// An API token.
    #[arg(long, env = "FERRY_API_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the API's JSON instead of tables.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum EventsCommand {
    /// Events, newest first.
    List {
        #[arg(long)]
        source: Option<String>,
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
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One event with its runs and deliveries.
    Show {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum DeliveriesCommand {
    /// Deliveries, newest first.
    List {
        #[arg(long)]
        destination: Option<String>,
        #[arg(long)]
        event: Option<String>,
        /// pending, succeeded or dead.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One delivery with every attempt.
    Show {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Dead letters, newest first.
    List {
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum ReplayCommand {
    /// Retry a dead delivery (a fresh round of attempts).
    Delivery {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Replay a failed run from the step that failed.
    Run {
        id: String,
        /// Use the flow's current definition even if it changed since the run started.
        #[arg(long)]
        use_current_flow: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Retry every dead delivery matching the filter (see --dry-run).
    Deliveries {
        #[arg(long)]
        destination: Option<String>,
        /// RFC 3339: made at or after.
        #[arg(long)]
        since: Option<String>,
        /// RFC 3339: made before.
        #[arg(long)]
        until: Option<String>,
        /// A part of the last error.
        #[arg(long)]
        error: Option<String>,
        /// Count what would be retried, retry nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Replay every failed run matching the filter (see --dry-run).
    Runs {
        #[arg(long)]
        flow: Option<String>,
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        /// A part of the error message.
        #[arg(long)]
        error: Option<String>,
        /// Count what would be replayed, replay nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        use_current_flow: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum RunsCommand {
    /// Runs, newest first.
    List {
        #[arg(long)]
        flow: Option<String>,
        #[arg(long)]
        event: Option<String>,
        /// running, waiting, completed, filtered or failed.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One run with each step's input, output, status and error.
    Show {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum TokensCommand {
    /// Make a token; it is shown once.
    Create {
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
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    ferry::telemetry::init(cli.log_format);
    let result = match cli.command {
        Command::Validate { config } => runtime().and_then(|rt| rt.block_on(validate(&config))),
        Command::ExprWorker {
            memory_limit,
            cpu_limit,
        } => ferry::engine::sandbox::worker::main(ferry::engine::sandbox::worker::WorkerLimits {
            memory_bytes: memory_limit,
            cpu_seconds: cpu_limit,
        })
        .map_err(|e| anyhow::anyhow!(e)),
        Command::Serve {
            config,
            data,
            database_url,
            listen,
        } => runtime().and_then(|rt| rt.block_on(serve(config, data, database_url, listen))),
        Command::Demo { listen, data } => runtime().and_then(|rt| {
            let token = std::env::var("FERRY_API_TOKEN")
                .ok()
                .filter(|t| !t.is_empty());
            rt.block_on(ferry::demo::run(listen, data, token))
                .map_err(Into::into)
        }),
        Command::Flow(FlowCommand::Test {
            config,
            flow,
            event,
            event_type,
            json,
        }) => runtime()
            .and_then(|rt| rt.block_on(flow_test(&config, &flow, &event, event_type, json))),
        Command::Events(c) => runtime().and_then(|rt| rt.block_on(events(c))),
        Command::Deliveries(c) => runtime().and_then(|rt| rt.block_on(deliveries(c))),
        Command::Dlq(c) => runtime().and_then(|rt| rt.block_on(dlq(c))),
        Command::Replay(c) => runtime().and_then(|rt| rt.block_on(replay(c))),
        Command::Runs(c) => runtime().and_then(|rt| rt.block_on(runs(c))),
        Command::Tokens(c) => runtime().and_then(|rt| rt.block_on(tokens(c))),
        Command::Apply {
            file,
            prune,
            dry_run,
            client: args,
        } => runtime().and_then(|rt| rt.block_on(apply(&file, prune, dry_run, args))),
        Command::Bench(args) => ferry::bench::run(args).map_err(Into::into),
        Command::Secrets(SecretsCommand::Rotate { data }) => {
            runtime().and_then(|rt| rt.block_on(rotate_secrets(&data)))
        }
        Command::Openapi => {
            print!("{}", ferry::api::openapi::document());
            Ok(())
        }
        Command::BenchBare { listen, synced_in } => runtime().and_then(|rt| {
            rt.block_on(async {
                let handler = ferry::bench::bare_handler(synced_in.as_deref())?;
                let listener = tokio::net::TcpListener::bind(listen).await?;
                announce(listener.local_addr()?);
                axum::serve(listener, handler).await
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

/// Loads a config file and has its expressions compiled by an expression worker.
async fn load_checked(path: &std::path::Path) -> Result<ferry::config::Config, String> {
    let loaded = ferry::config::load_file(path);
    let limits = match &loaded {
        Ok(config) => config.settings.expressions.clone(),
        Err(_) => ferry::engine::sandbox::Limits::default(),
    };
    let command = ferry::engine::sandbox::WorkerCommand::current_exe()?;
    let sandbox = ferry::engine::sandbox::Sandbox::new(command, limits);
    match loaded {
        Ok(config) => {
            sandbox
                .check_config(&config)
                .await
                .map_err(|errors| errors.to_string())?;
            Ok(config)
        }
        // Every error in one report: the expressions' too, though the rest is wrong.
        Err(ferry::config::ConfigErrors(mut errors, sites)) => {
            if let Err(more) = sandbox.check_sites(&sites).await {
                errors.extend(more.0);
            }
            Err(ferry::config::ConfigErrors(errors, Vec::new()).to_string())
        }
    }
}

async fn validate(path: &std::path::Path) -> anyhow::Result<()> {
    match load_checked(path).await {
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

async fn flow_test(
    config_path: &std::path::Path,
    flow_id: &str,
    event_path: &std::path::Path,
    event_type: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let config = match load_checked(config_path).await {
        Ok(c) => std::sync::Arc::new(c),
        Err(errors) => {
            eprint!("{errors}");
            bail!("{} is not valid", config_path.display());
        }
    };
    let Some(flow) = config.flows.iter().find(|f| f.id == flow_id).cloned() else {
        let known: Vec<&str> = config.flows.iter().map(|f| f.id.as_str()).collect();
        bail!(
            "no flow `{flow_id}` in {}; its flows are: {}",
            config_path.display(),
            known.join(", ")
        );
    };
    let text = if event_path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .context("cannot read the event from standard input")?;
        s
    } else {
        std::fs::read_to_string(event_path)
            .with_context(|| format!("cannot read the event file {}", event_path.display()))?
    };
    let payload: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("the event file {} is not JSON", event_path.display()))?;
    let now = ferry::clock::system_now_ms();
    let event = std::sync::Arc::new(ferry::engine::EventInfo {
        id: "evt_test".into(),
        event_type: event_type
            .or_else(|| flow.event_types.iter().next().cloned())
            .unwrap_or_else(|| "test".into()),
        source: flow.source.clone(),
        received_at: now,
        headers: serde_json::json!({}),
    });
    let raw = bytes::Bytes::from(payload.to_string());
    let command =
        ferry::engine::sandbox::WorkerCommand::current_exe().map_err(|e| anyhow::anyhow!(e))?;
    let sandbox =
        ferry::engine::sandbox::Sandbox::new(command, config.settings.expressions.clone());
    let report = sandbox.test_flow(&config, &flow, event, raw, now).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", ferry::cli::render_test_report(&report));
    }
    if report.outcome == "failed" {
        bail!("the flow failed on this event");
    }
    Ok(())
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
    options.secret_key = ferry::secrets::key_from_env(ferry::secrets::KEY_ENV)?;
    options.api_token = std::env::var("FERRY_API_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let token_note = if options.api_token.is_some() {
        "from FERRY_API_TOKEN".to_string()
    } else {
        format!("in {}", ferry::app::token_path(&data).display())
    };
    let listener =
        ferry::server::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
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

/// `ferry secrets rotate`: every stored secret sealed under a new key.
async fn rotate_secrets(data: &Path) -> anyhow::Result<()> {
    use ferry::secrets::{KEY_ENV, NEW_KEY_ENV, key_from_env};
    let old = key_from_env(KEY_ENV)?;
    let new = key_from_env(NEW_KEY_ENV)?;
    let done = ferry::secrets::rotate::rotate(data, old, new)
        .await
        .with_context(|| format!("the secrets in {} were not rotated", data.display()))?;
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

// Client commands: each calls the API and prints tables for people, or the JSON with --json.

use ferry::cli::{ApiClient, fields, table};
use reqwest::Method;

fn client(args: &ClientArgs) -> anyhow::Result<ApiClient> {
    Ok(ApiClient::new(&args.url, args.token.clone())?)
}

fn print_json(v: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn query(pairs: &[(&str, Option<String>)]) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if let Some(v) = v {
            q.append_pair(k, v);
        }
    }
    q.finish()
}

async fn events(command: EventsCommand) -> anyhow::Result<()> {
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
            let q = query(&[
                ("source", source),
                ("type", event_type),
                ("since", since),
                ("until", until),
                ("status", status),
                ("jq", jq),
                ("match", field_match),
                ("limit", Some(limit.to_string())),
            ]);
            let columns = [
                ("ID", "/id"),
                ("SOURCE", "/source"),
                ("TYPE", "/event_type"),
                ("STATUS", "/status"),
                ("RECEIVED", "/received_at"),
            ];
            list(&args, &format!("/api/v1/events?{q}"), &columns).await?;
        }
        EventsCommand::Show { id, client: args } => {
            let v = client(&args)?
                .call(Method::GET, &format!("/api/v1/events/{id}"), None)
                .await?;
            if args.json {
                return print_json(&v);
            }
            print!(
                "{}",
                fields(
                    &v,
                    &[
                        ("id", "/id"),
                        ("source", "/source"),
                        ("type", "/event_type"),
                        ("received", "/received_at"),
                        ("idempotency key", "/idempotency_key")
                    ]
                )
            );
            let runs = v["runs"].as_array().cloned().unwrap_or_default();
            println!("\nruns");
            print!(
                "{}",
                table(
                    &runs,
                    &[
                        ("ID", "/id"),
                        ("FLOW", "/flow_id"),
                        ("STATUS", "/status"),
                        ("ERROR", "/error")
                    ]
                )
            );
            let deliveries: Vec<serde_json::Value> = runs
                .iter()
                .flat_map(|r| r["deliveries"].as_array().cloned().unwrap_or_default())
                .collect();
            println!("\ndeliveries");
            print!(
                "{}",
                table(
                    &deliveries,
                    &[
                        ("ID", "/id"),
                        ("DESTINATION", "/destination_id"),
                        ("STATUS", "/status"),
                        ("ATTEMPTS", "/attempt_count"),
                        ("LAST ERROR", "/last_error")
                    ]
                )
            );
        }
    }
    Ok(())
}

async fn deliveries(command: DeliveriesCommand) -> anyhow::Result<()> {
    let (id, args) = match command {
        DeliveriesCommand::Show { id, client } => (id, client),
        DeliveriesCommand::List {
            destination,
            event,
            status,
            limit,
            client: args,
        } => {
            let q = query(&[
                ("destination", destination),
                ("event_id", event),
                ("status", status),
                ("limit", Some(limit.to_string())),
            ]);
            let columns = [
                ("ID", "/id"),
                ("EVENT", "/event_id"),
                ("DESTINATION", "/destination_id"),
                ("STATUS", "/status"),
                ("ATTEMPTS", "/attempt_count"),
                ("LAST ERROR", "/last_error"),
            ];
            return list(&args, &format!("/api/v1/deliveries?{q}"), &columns).await;
        }
    };
    let v = client(&args)?
        .call(Method::GET, &format!("/api/v1/deliveries/{id}"), None)
        .await?;
    if args.json {
        return print_json(&v);
    }
    print!(
        "{}",
        fields(
            &v,
            &[
                ("id", "/id"),
                ("event", "/event_id"),
                ("run", "/run_id"),
                ("destination", "/destination_id"),
                ("status", "/status"),
                ("attempts", "/attempt_count"),
                ("next attempt", "/next_attempt_at"),
                ("last error", "/last_error")
            ]
        )
    );
    let attempts = v["attempts"].as_array().cloned().unwrap_or_default();
    println!("\nattempts");
    print!(
        "{}",
        table(
            &attempts,
            &[
                ("#", "/attempt"),
                ("STARTED", "/started_at"),
                ("MS", "/duration_ms"),
                ("OUTCOME", "/outcome"),
                ("STATUS", "/status_code"),
                ("ERROR", "/error")
            ]
        )
    );
    Ok(())
}

async fn dlq(command: DlqCommand) -> anyhow::Result<()> {
    let DlqCommand::List {
        limit,
        client: args,
    } = command;
    let v = client(&args)?
        .call(
            Method::GET,
            &format!("/api/v1/dead-letters?limit={limit}"),
            None,
        )
        .await?;
    if args.json {
        return print_json(&v);
    }
    let items: Vec<serde_json::Value> = v["data"]
        .as_array()
        .cloned()
        .unwrap_or_default()
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

async fn replay(command: ReplayCommand) -> anyhow::Result<()> {
    let (args, v) = match command {
        ReplayCommand::Delivery { id, client: args } => {
            let v = client(&args)?
                .call(
                    Method::POST,
                    &format!("/api/v1/deliveries/{id}/retry"),
                    None,
                )
                .await?;
            if !args.json {
                println!("delivery {id} is pending again (a fresh round of attempts)");
            }
            (args, v)
        }
        ReplayCommand::Run {
            id,
            use_current_flow,
            client: args,
        } => {
            let body = serde_json::json!({"use_current_flow": use_current_flow});
            let v = client(&args)?
                .call(
                    Method::POST,
                    &format!("/api/v1/runs/{id}/replay"),
                    Some(body),
                )
                .await?;
            if !args.json {
                println!(
                    "run {id} replays from step {} ({})",
                    v["from_step"].as_str().unwrap_or("?"),
                    v["status"].as_str().unwrap_or("?")
                );
            }
            (args, v)
        }
        ReplayCommand::Deliveries {
            destination,
            since,
            until,
            error,
            dry_run,
            client: args,
        } => {
            let body = serde_json::json!({
                "destination_id": destination, "since": since, "until": until, "error": error,
                "dry_run": dry_run,
            });
            let v = client(&args)?
                .call(Method::POST, "/api/v1/dead-letters/replay", Some(body))
                .await?;
            if !args.json {
                if dry_run {
                    println!(
                        "{} dead deliveries match; nothing retried (without --dry-run they would be)",
                        v["matched"]
                    );
                } else {
                    println!(
                        "{} dead deliveries matched; {} are pending again",
                        v["matched"],
                        v["delivery_ids"].as_array().map_or(0, Vec::len)
                    );
                }
            }
            (args, v)
        }
        ReplayCommand::Runs {
            flow,
            since,
            until,
            error,
            dry_run,
            use_current_flow,
            client: args,
        } => {
            let body = serde_json::json!({
                "flow_id": flow, "since": since, "until": until, "error": error,
                "dry_run": dry_run, "use_current_flow": use_current_flow,
            });
            let v = client(&args)?
                .call(Method::POST, "/api/v1/runs/replay", Some(body))
                .await?;
            if !args.json {
                if dry_run {
                    println!(
                        "{} failed runs match; nothing replayed (without --dry-run they would be)",
                        v["matched"]
                    );
                } else {
                    println!(
                        "{} failed runs matched, {} replayed",
                        v["matched"], v["replayed"]
                    );
                    for s in v["skipped"].as_array().into_iter().flatten() {
                        println!(
                            "  skipped {}: {}",
                            s["run_id"].as_str().unwrap_or("?"),
                            s["message"].as_str().unwrap_or("")
                        );
                    }
                }
            }
            (args, v)
        }
    };
    if args.json {
        print_json(&v)?;
    }
    Ok(())
}

async fn apply(file: &Path, prune: bool, dry_run: bool, args: ClientArgs) -> anyhow::Result<()> {
    let (wanted, notes) = ferry::apply::read_file(file, &|name| std::env::var(name).ok())?;
    let client = client(&args)?;
    let remote = ferry::apply::remote_objects(&client).await?;
    let changes = ferry::apply::plan(&wanted, &remote, prune)?;
    if !args.json {
        for note in &notes {
            eprintln!("note: {note}");
        }
        print!("{}", ferry::apply::render(&changes));
    }
    let done = if dry_run {
        0
    } else {
        ferry::apply::execute(&client, &changes).await?
    };
    if args.json {
        return print_json(
            &serde_json::json!({"dry_run": dry_run, "changes": changes, "applied": done}),
        );
    }
    if dry_run {
        println!("dry run: nothing changed");
    } else {
        println!("applied {done} change(s)");
    }
    Ok(())
}

/// A list for people (a table) or scripts (`--json`).
async fn list(args: &ClientArgs, path: &str, columns: &[(&str, &str)]) -> anyhow::Result<()> {
    let v = client(args)?.call(Method::GET, path, None).await?;
    if args.json {
        return print_json(&v);
    }
    let items = v["data"].as_array().cloned().unwrap_or_default();
    print!("{}", table(&items, columns));
    Ok(())
}

async fn runs(command: RunsCommand) -> anyhow::Result<()> {
    let (id, args) = match command {
        RunsCommand::Show { id, client } => (id, client),
        RunsCommand::List {
            flow,
            event,
            status,
            limit,
            client: args,
        } => {
            let q = query(&[
                ("flow", flow),
                ("event_id", event),
                ("status", status),
                ("limit", Some(limit.to_string())),
            ]);
            let columns = [
                ("ID", "/id"),
                ("EVENT", "/event_id"),
                ("FLOW", "/flow_id"),
                ("STATUS", "/status"),
                ("STEP", "/step_index"),
                ("ERROR", "/error"),
            ];
            return list(&args, &format!("/api/v1/runs?{q}"), &columns).await;
        }
    };
    let v = client(&args)?
        .call(Method::GET, &format!("/api/v1/runs/{id}"), None)
        .await?;
    if args.json {
        return print_json(&v);
    }
    print!(
        "{}",
        fields(
            &v,
            &[
                ("id", "/id"),
                ("event", "/event_id"),
                ("flow", "/flow_id"),
                ("version", "/flow_version"),
                ("status", "/status"),
                ("step", "/step_index"),
                ("next at", "/next_at"),
                ("error", "/error")
            ]
        )
    );
    let steps = v["steps"].as_array().cloned().unwrap_or_default();
    println!("\nsteps");
    print!(
        "{}",
        table(
            &steps,
            &[
                ("#", "/index"),
                ("KIND", "/kind"),
                ("NAME", "/name"),
                ("PATH", "/path"),
                ("STATUS", "/status"),
                ("MS", "/duration_ms"),
                ("ERROR", "/error")
            ]
        )
    );
    Ok(())
}

async fn tokens(command: TokensCommand) -> anyhow::Result<()> {
    match command {
        TokensCommand::Create {
            name,
            scope,
            client: args,
        } => {
            let body = serde_json::json!({"name": name, "scope": scope});
            let v = client(&args)?
                .call(Method::POST, "/api/v1/tokens", Some(body))
                .await?;
            if args.json {
                return print_json(&v);
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
            list(&args, "/api/v1/tokens", &columns).await?;
        }
        TokensCommand::Revoke { id, client: args } => {
            client(&args)?
                .call(Method::DELETE, &format!("/api/v1/tokens/{id}"), None)
                .await?;
            if !args.json {
                println!("token {id} revoked");
            }
        }
    }
    Ok(())
}

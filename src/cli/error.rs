//! Why a command failed: the one error every command returns, printed by `main.rs` as
//! `error: ` and its causes. A command's own problems carry their message here; the
//! library's errors pass through with theirs.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Client(#[from] super::ClientError),
    #[error("cannot listen for stop signals (SIGINT, SIGTERM): {0}")]
    Signals(std::io::Error),
    #[error(transparent)]
    Apply(#[from] super::apply_plan::ApplyError),
    /// The config file's errors were printed before.
    #[error("{} is not valid", .0.display())]
    InvalidConfig(PathBuf),
    /// `serve`: the config file's errors were printed before.
    #[error("refusing to start: {} is not valid", .0.display())]
    RefusedConfig(PathBuf),
    #[error("the database URL (--database-url or FERRY_DATABASE_URL) is not valid UTF-8")]
    DatabaseUrlNotUtf8,
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The thread that opens the store ended without an answer (a bug if it happens).
    #[error("the store could not be opened: {0}")]
    StoreTask(String),
    /// The empty config `serve` runs without `--config` (a bug if it happens).
    #[error("{0}")]
    EmptyConfig(crate::config::ConfigErrors),
    #[error(transparent)]
    Key(#[from] crate::secrets::KeyError),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot read the listening address")]
    ListeningAddress(#[source] std::io::Error),
    #[error(transparent)]
    Serve(#[from] crate::app::ServeError),
    #[error(transparent)]
    Demo(#[from] crate::demo::DemoError),
    /// An expression worker could not be started or could not start: what it said.
    #[error("{0}")]
    Worker(String),
    #[error(transparent)]
    Sandbox(#[from] crate::engine::sandbox::SandboxError),
    #[error("no flow `{flow}` in {}; its flows are: {}", config.display(), known.join(", "))]
    NoFlow {
        flow: String,
        config: PathBuf,
        known: Vec<String>,
    },
    #[error("cannot read the event from standard input")]
    ReadStdin(#[source] std::io::Error),
    #[error("cannot read the event file {}", path.display())]
    ReadEvent {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the event file {} is not JSON", path.display())]
    EventNotJson {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("the flow failed on this event")]
    FlowFailed,
    #[error("the secrets in {where_} were not rotated")]
    NotRotated {
        /// The data directory, or the PostgreSQL database (never its password).
        where_: String,
        source: crate::secrets::rotate::RotateError,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

//! The PostgreSQL store (cluster mode): its connection and its schema. This module owns the
//! database URL (parsed and checked once, refused with a clear error that never shows the
//! password), the pool of connections every query of this backend goes through, and the
//! migrations (`schema.rs`), applied when the store connects and by `ferry migrate`.
//!
//! No TLS yet: connections are plain (`NoTls`), and a URL that asks for TLS
//! (`sslmode=require`) is refused rather than silently sent in the clear.
//!
//! Like the SQLite store, it knows nothing of HTTP, flows or scheduling.

mod cluster;
mod ingest;
mod jobs;
mod node;
mod reads;
mod rows;
mod schema;
mod writes;

pub use cluster::{Leadership, Node, NodeView, check_node_id};
pub use ingest::{Ingest, Ingested};
pub use jobs::{Claimed, Fenced, Lease, MAX_CLAIM, MAX_LEASE_MS};
pub use node::{CONFIG_CHANNEL, Clustered, JOBS_CHANNEL, LIVE_WITHIN, Singleton, Turn};

pub use schema::{Applied, LATEST_VERSION, MIGRATIONS, Migrated, Migration};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::time::Duration;
use tokio_postgres::config::{Host, SslMode, SslNegotiation};

/// The longest database URL taken: a real one is a few hundred bytes at most, and a longer
/// one is a mistake (or an attack on whatever echoes it).
pub const MAX_URL_BYTES: usize = 8192;

/// The most characters of an error from the PostgreSQL driver kept in a message: a parse
/// error may quote a part of the URL.
const MAX_REASON_CHARS: usize = 300;

/// How long a caller waits for a free connection of the pool.
const POOL_WAIT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long checking a pooled connection before its reuse may take.
const RECYCLE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a connection may be idle before the kernel probes its peer.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);

/// How long connecting may take when the URL does not say (`connect_timeout`).
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the PostgreSQL store could not be reached or used. Messages name the server, the
/// database and the user, never the password.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("the database URL is {len} bytes long; at most {MAX_URL_BYTES} are taken")]
    UrlTooLong { len: usize },
    #[error(
        "invalid database URL (expected postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?OPTIONS]): {0}"
    )]
    Url(String),
    #[error(
        "the database URL asks for TLS ({0}), and TLS to PostgreSQL is not built yet: connect over a trusted network or a local socket with sslmode=disable or prefer"
    )]
    TlsNotBuilt(&'static str),
    #[error("cannot set up the connection pool for {target}: {reason}")]
    Pool { target: String, reason: String },
    #[error("cannot connect to {target}: {reason}")]
    Connect { target: String, reason: String },
    #[error(
        "no schema to migrate: none of the schemas in the search_path exists (create it, or set search_path)"
    )]
    NoSchema,
    #[error(
        "the database's schema is at version {found}, newer than this Ferry knows (version {known}): an older Ferry must not run on a newer schema; run a Ferry at least as new as the one that migrated it"
    )]
    NewerSchema { found: i32, known: i32 },
    #[error("cannot apply migration {version} ({name}): {reason}")]
    Migration {
        version: i32,
        name: &'static str,
        reason: String,
    },
    #[error("database error: {0}")]
    Query(String),
    /// The database refused a value of the write (SQLSTATE classes 22, data; 23, integrity;
    /// 54, a limit such as an index entry's size): the same write would be refused again.
    #[error("the database refused a value: {0}")]
    Refused(String),
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> Self {
        let refused = e.code().is_some_and(|c| {
            ["22", "23", "54"]
                .iter()
                .any(|class| c.code().starts_with(class))
        });
        if refused {
            PgError::Refused(describe(&e))
        } else {
            PgError::Query(describe(&e))
        }
    }
}

/// How the store connects, besides the URL.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// The most connections the pool opens.
    pub pool_size: usize,
    /// Entries the rejected log keeps (`settings.rejected_log_size`).
    pub rejected_log_size: usize,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            pool_size: 16,
            rejected_log_size: crate::config::DEFAULT_REJECTED_LOG_SIZE,
        }
    }
}

/// A handle to the PostgreSQL store: the pool, after the migrations ran. Clones share it.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    migrated: Migrated,
    /// What the pool connects with, for the connections of its own that a listener or a
    /// singleton's lock holds.
    config: tokio_postgres::Config,
    /// The rejected-log writer's queue (`writes::write_rejections`).
    rejections: tokio::sync::mpsc::Sender<crate::store::Rejection>,
}

impl PgStore {
    /// Parses `url`, opens the pool, checks that a connection can be made and brings the
    /// schema up to date ([`schema::migrate`], under an advisory lock: nodes that start
    /// together migrate once).
    pub async fn connect(url: &str, options: PgOptions) -> Result<PgStore, super::StoreError> {
        let config = parse_url(url)?;
        let target = describe_target(&config);
        let manager = Manager::from_config(
            config.clone(),
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let connect_timeout = config
            .get_connect_timeout()
            .copied()
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        // A server that stops answering never holds a caller forever: waiting for a free
        // connection, opening one (the login included, which `connect_timeout` alone does not
        // cover) and checking one before reuse each have a deadline.
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT_TIMEOUT))
            .create_timeout(Some(connect_timeout))
            .recycle_timeout(Some(RECYCLE_TIMEOUT))
            .build()
            .map_err(|e| PgError::Pool {
                target: target.clone(),
                reason: e.to_string(),
            })?;
        let mut conn = pool.get().await.map_err(|e| PgError::Connect {
            target: target.clone(),
            reason: describe_pool_error(&e),
        })?;
        let migrated = schema::migrate(&mut conn).await?;
        drop(conn);
        let (rejections, queue) = tokio::sync::mpsc::channel(writes::MAX_REJECTIONS_WRITING);
        tokio::spawn(writes::write_rejections(
            pool.clone(),
            options.rejected_log_size,
            queue,
        ));
        Ok(PgStore {
            pool,
            migrated,
            config,
            rejections,
        })
    }

    /// What [`PgStore::connect`]'s migration did: the versions it applied (none when another
    /// node had, or the schema was up to date) and the version the schema is at.
    pub fn migrated(&self) -> &Migrated {
        &self.migrated
    }

    /// A connection from the pool.
    pub(super) async fn conn(&self) -> Result<deadpool_postgres::Object, super::StoreError> {
        Ok(self
            .pool
            .get()
            .await
            .map_err(|e| PgError::Query(format!("no connection: {}", describe_pool_error(&e))))?)
    }
}

/// The URL, parsed and checked: not too long, no `@` left in the host (an unencoded `@` in
/// the password would put the rest of it there), no TLS asked for. Without a
/// `connect_timeout` it gets [`DEFAULT_CONNECT_TIMEOUT`]; without an `application_name`,
/// `ferry` (what `pg_stat_activity` shows).
pub fn parse_url(url: &str) -> Result<tokio_postgres::Config, PgError> {
    if url.len() > MAX_URL_BYTES {
        return Err(PgError::UrlTooLong { len: url.len() });
    }
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| PgError::Url(shorten(&describe(&e))))?;
    if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
        return Err(PgError::Url("it names no host".into()));
    }
    let at_in_host = config
        .get_hosts()
        .iter()
        .any(|h| matches!(h, Host::Tcp(name) if name.contains('@')));
    if at_in_host {
        return Err(PgError::Url(
            "it has more than one `@`: write an `@` in the user name or password as %40".into(),
        ));
    }
    if config.get_ssl_mode() == SslMode::Require {
        return Err(PgError::TlsNotBuilt("sslmode=require"));
    }
    if config.get_ssl_negotiation() == SslNegotiation::Direct {
        return Err(PgError::TlsNotBuilt("sslnegotiation=direct"));
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("ferry");
    }
    // A peer that vanished (its host died, the network split) is noticed within about 20 s
    // instead of the kernel's two hours: idle connections are probed, and unacknowledged
    // writes give up.
    if !config.get_keepalives() || config.get_keepalives_idle() > KEEPALIVE_IDLE {
        config
            .keepalives(true)
            .keepalives_idle(KEEPALIVE_IDLE)
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3);
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(Duration::from_secs(20));
    }
    Ok(config)
}

/// The server, database and user a config connects to, for messages: `PostgreSQL at
/// 127.0.0.1:5432, database `test`, user `postgres``. Never the password.
pub fn describe_target(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    let port_of = |i: usize| {
        ports
            .get(i)
            .or_else(|| ports.first())
            .copied()
            .unwrap_or(5432)
    };
    let mut servers: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| match host {
            Host::Tcp(name) if name.contains(':') => format!("[{name}]:{}", port_of(i)),
            Host::Tcp(name) => format!("{name}:{}", port_of(i)),
            Host::Unix(dir) => format!("socket {}/.s.PGSQL.{}", dir.display(), port_of(i)),
        })
        .collect();
    if servers.is_empty() {
        servers = config
            .get_hostaddrs()
            .iter()
            .enumerate()
            .map(|(i, ip)| match ip {
                std::net::IpAddr::V6(ip) => format!("[{ip}]:{}", port_of(i)),
                std::net::IpAddr::V4(ip) => format!("{ip}:{}", port_of(i)),
            })
            .collect();
    }
    let user = config.get_user().unwrap_or("(the system user)");
    let database = config.get_dbname().unwrap_or(user);
    shorten(&format!(
        "PostgreSQL at {}, database `{database}`, user `{user}`",
        servers.join(", ")
    ))
}

/// An error of the driver with its causes: a server's error with its severity, code and
/// message (`FATAL 3D000: database "x" does not exist`), or the driver's own with the
/// operating system's (`error connecting to server: Connection refused (os error 111)`).
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

fn describe_pool_error(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(e) => describe(e),
        deadpool_postgres::PoolError::Timeout(_) => "timed out".into(),
        other => other.to_string(),
    }
}

/// `text`, cut to [`MAX_REASON_CHARS`] characters.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(MAX_REASON_CHARS) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(url: &str) -> String {
        match parse_url(url) {
            Ok(c) => panic!("{url} was taken: {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_plain_url_is_taken_and_described_without_its_password() {
        let config = parse_url("postgres://ferry:hunter2@db.internal:6543/prod").unwrap();
        assert_eq!(config.get_connect_timeout(), Some(&DEFAULT_CONNECT_TIMEOUT));
        assert_eq!(config.get_application_name(), Some("ferry"));
        let target = describe_target(&config);
        assert_eq!(
            target,
            "PostgreSQL at db.internal:6543, database `prod`, user `ferry`"
        );
        let config = parse_url("postgresql://u@[::1]/d?connect_timeout=3").unwrap();
        assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(3)));
        assert_eq!(
            describe_target(&config),
            "PostgreSQL at [::1]:5432, database `d`, user `u`"
        );
    }

    #[test]
    fn tls_is_refused_until_it_is_built() {
        for url in [
            "postgres://u@h/d?sslmode=require",
            "postgres://u@h/d?sslnegotiation=direct&sslmode=require",
        ] {
            let message = refusal(url);
            assert!(
                message.contains("TLS to PostgreSQL is not built yet"),
                "{message}"
            );
        }
        assert!(parse_url("postgres://u@h/d?sslmode=disable").is_ok());
        assert!(parse_url("postgres://u@h/d?sslmode=prefer").is_ok());
    }

    #[test]
    fn hostile_urls_are_refused_clearly_and_never_echo_a_password() {
        let huge = format!("postgres://u:{}@h/d", "p".repeat(MAX_URL_BYTES));
        assert!(refusal(&huge).contains("bytes long; at most 8192"));
        let deep = format!("postgres://u@h/d?{}", "a=b&".repeat(1500));
        let message = refusal(&deep);
        assert!(message.contains("unknown option `a`"), "{message}");
        let long_key = format!("postgres://u@h/d?{}=1", "k".repeat(5000));
        assert!(refusal(&long_key).len() < 600);
        for url in [
            "",
            "postgres://",
            "mysql://u@h/d",
            "postgres://u@h:notaport/d",
            "postgres://u@h/d?options",
            "postgres://u@h/d?%ff=1",
            "postgres://%ff@h/d",
            "postgres://u@[::1/d",
            "postgres://u@h/d?sslmode=verify-full",
            "postgres://u@h/d?port=99999",
            "postgres://u:secretpart@more@h/d",
            "postgres://u@h/d?keepalives_idle=-1&&&&",
            "host=h user=u password=secretpart bogus",
        ] {
            let message = refusal(url);
            assert!(message.contains("URL"), "{url}: {message}");
            assert!(!message.contains("secretpart"), "{url}: {message}");
        }
    }
}

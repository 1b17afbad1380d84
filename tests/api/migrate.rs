//! `ferry migrate` and the PostgreSQL schema, on the PostgreSQL of this machine (a schema per
//! test, `postgres.rs`): nodes migrating at once migrate once, a newer schema is refused, a
//! URL that cannot work fails with a message that says why and never shows the password, and
//! the schema mirrors every SQLite table, column and index.

use crate::postgres::{TestSchema, base_url, with_param};
use ferry::store::postgres::{LATEST_VERSION, PgOptions, PgStore};
use std::collections::BTreeMap;
use std::process::Output;

/// Every table of the PostgreSQL schema at its latest version.
const TABLES: &[&str] = &[
    "alert_history",
    "alert_states",
    "api_tokens",
    "attempts",
    "bodies",
    "config_objects",
    "deliveries",
    "delivery_jobs",
    "events",
    "ferry_migrations",
    "ferry_nodes",
    "paused_destinations",
    "rejections",
    "run_jobs",
    "runs",
    "schema_versions",
    "source_states",
];

/// `ferry migrate` with `args` and the environment variables `env`, without the
/// environment's own FERRY_DATA and FERRY_DATABASE_URL.
async fn migrate(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"));
    command
        .arg("migrate")
        .args(args)
        .env_remove("FERRY_DATA")
        .env_remove("FERRY_DATABASE_URL")
        .env("FERRY_LOG", "warn");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().await.unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts that `out` failed with exit code 1 and a one-line `error: ` naming `expected`,
/// without a panic.
fn assert_refused(out: &Output, expected: &str) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(expected), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[tokio::test]
async fn three_nodes_migrating_at_once_migrate_once_and_a_second_run_changes_nothing() {
    let schema = TestSchema::create().await;
    let args = ["--database-url", schema.url.as_str()];
    let runs = (0..3).map(|_| migrate(&args, &[]));
    let outs = futures_util::future::join_all(runs).await;
    for out in &outs {
        assert!(out.status.success(), "{}", stderr(out));
    }
    let applied: Vec<String> = outs.iter().map(stdout).collect();
    let appliers = applied
        .iter()
        .filter(|o| o.contains("applied migration 1 (the whole schema)"))
        .count();
    assert_eq!(appliers, 1, "{applied:?}");
    assert_eq!(
        applied
            .iter()
            .filter(|o| o.contains(&format!("up to date at version {LATEST_VERSION}")))
            .count(),
        2,
        "{applied:?}"
    );

    let client = schema.client().await;
    let versions: Vec<(i32, i64)> = client
        .query(
            "SELECT version, COUNT(*) FROM ferry_migrations GROUP BY version ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected: Vec<(i32, i64)> = (1..=LATEST_VERSION).map(|v| (v, 1)).collect();
    assert_eq!(versions, expected);
    // Every table, in the test's schema (the URL's search_path), none elsewhere.
    assert_eq!(schema.tables().await, TABLES);

    let again = migrate(&[], &[("FERRY_DATABASE_URL", schema.url.as_ref())]).await;
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(
        stdout(&again),
        format!("the PostgreSQL schema is up to date at version {LATEST_VERSION}\n")
    );
    let count: i64 = client
        .query_one("SELECT COUNT(*) FROM ferry_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, i64::from(LATEST_VERSION));
}

#[tokio::test]
async fn a_schema_newer_than_this_ferry_knows_is_refused() {
    let schema = TestSchema::create().await;
    let store = PgStore::connect(&schema.url, PgOptions::default())
        .await
        .unwrap();
    assert_eq!(store.migrated().version, LATEST_VERSION);
    assert_eq!(store.migrated().applied.len(), LATEST_VERSION as usize);
    store.ping().await.unwrap();

    let future = LATEST_VERSION + 1;
    schema
        .client()
        .await
        .execute(
            "INSERT INTO ferry_migrations (version, name) VALUES ($1, 'from a newer Ferry')",
            &[&future],
        )
        .await
        .unwrap();
    let refusal = format!(
        "the database's schema is at version {future}, newer than this Ferry knows (version {LATEST_VERSION})"
    );
    let out = migrate(&["--database-url", &schema.url], &[]).await;
    assert_refused(&out, &refusal);
    assert_eq!(stdout(&out), "");
    let Err(e) = PgStore::connect(&schema.url, PgOptions::default()).await else {
        panic!("a newer schema was taken");
    };
    assert!(e.to_string().contains(&refusal), "{e}");
}

#[tokio::test]
async fn a_database_that_cannot_be_reached_is_named_without_the_password() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://ferry:pw-s3cret-x@127.0.0.1:{port}/orders");
    let out = migrate(&["--database-url", &url], &[]).await;
    let err = assert_refused(
        &out,
        &format!(
            "cannot connect to PostgreSQL at 127.0.0.1:{port}, database `orders`, user `ferry`: error connecting to server"
        ),
    );
    assert!(!err.contains("pw-s3cret-x"), "{err}");

    // The server answers, but the database is not there: the server's reason.
    let base: tokio_postgres::Config = base_url().parse().unwrap();
    let user = base.get_user().unwrap_or("postgres");
    let (host, port) = match (&base.get_hosts()[0], base.get_ports()[0]) {
        (tokio_postgres::config::Host::Tcp(h), p) => (h.clone(), p),
        (other, _) => panic!("the test database is not on TCP: {other:?}"),
    };
    let url = format!("postgres://{user}:pw-s3cret-x@{host}:{port}/ferry_no_such_database");
    let out = migrate(&[], &[("FERRY_DATABASE_URL", url.as_ref())]).await;
    let err = assert_refused(
        &out,
        &format!(
            "database `ferry_no_such_database`, user `{user}`: FATAL 3D000: database \"ferry_no_such_database\" does not exist"
        ),
    );
    assert!(!err.contains("pw-s3cret-x"), "{err}");

    // A search_path that names no schema.
    let url = with_param(&base_url(), "options=-csearch_path%3Dferry_no_such_schema");
    let out = migrate(&["--database-url", &url], &[]).await;
    assert_refused(&out, "none of the schemas in the search_path exists");
}

#[tokio::test]
async fn hostile_database_urls_fail_clearly() {
    use std::os::unix::ffi::OsStrExt;
    let huge = format!("postgres://u:{}@127.0.0.1/test", "p".repeat(100_000));
    let out = migrate(&[], &[("FERRY_DATABASE_URL", huge.as_ref())]).await;
    let err = assert_refused(
        &out,
        &format!(
            "the database URL is {} bytes long; at most 8192",
            huge.len()
        ),
    );
    assert!(err.len() < 200, "{err}");

    let not_utf8 = std::ffi::OsStr::from_bytes(b"postgres://u\xff\xfe@127.0.0.1/test");
    let out = migrate(&[], &[("FERRY_DATABASE_URL", not_utf8)]).await;
    assert_refused(
        &out,
        "the database URL (--database-url or FERRY_DATABASE_URL) is not valid UTF-8",
    );

    let deep = format!(
        "postgres://u@127.0.0.1/test?{}x=1",
        "connect_timeout=1&".repeat(400)
    );
    let out = migrate(&["--database-url", &deep], &[]).await;
    assert_refused(&out, "invalid database URL");

    for (url, expected) in [
        (
            "postgres://u@127.0.0.1/test?sslmode=require",
            "TLS to PostgreSQL is not built yet",
        ),
        (
            "postgres://u@127.0.0.1/test?sslmode=verify-full",
            "invalid value for option `sslmode`",
        ),
        ("postgres://u@127.0.0.1/test?a=1&&&=", "unknown option `a`"),
        (
            "postgres://u@127.0.0.1/test?%zz%00=%ff",
            "invalid database URL",
        ),
        (
            "postgres://u:pw-s3cret-x@x@127.0.0.1/test",
            "write an `@` in the user name or password as %40",
        ),
        (
            "postgres://u@127.0.0.1:99999999/test",
            "invalid value for option `port`",
        ),
        ("mysql://u@127.0.0.1/test", "invalid database URL"),
        ("", "it names no host"),
    ] {
        let out = migrate(&["--database-url", url], &[]).await;
        let err = assert_refused(&out, expected);
        assert!(!err.contains("pw-s3cret-x"), "{err}");
    }
}

#[tokio::test]
async fn migrate_with_a_data_directory_opens_the_sqlite_store_and_says_its_version() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = migrate(&["--data", data.to_str().unwrap()], &[]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!(
            "the SQLite store in {} is up to date at schema version {}\n",
            data.display(),
            ferry::store::Store::SCHEMA_VERSION
        )
    );
    assert!(data.join("ferry.db").exists());

    // A data directory that cannot be made.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let out = migrate(&[], &[("FERRY_DATA", file.join("data").as_os_str())]).await;
    assert_refused(&out, "cannot open the data directory");
}

/// A column as both backends describe it: its type in PostgreSQL's words and whether it may
/// be NULL.
type Columns = BTreeMap<String, (String, bool)>;

/// The SQLite store's tables (but its own mechanics), columns and indexes, read from a new
/// store's file.
fn sqlite_schema() -> (BTreeMap<String, Columns>, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let store = ferry::store::Store::open(
        dir.path(),
        ferry::store::StoreOptions::default(),
        std::sync::Arc::new(ferry::telemetry::Metrics::new()),
    )
    .unwrap();
    drop(store);
    let conn = rusqlite::Connection::open(dir.path().join("ferry.db")).unwrap();
    let mut tables = BTreeMap::new();
    let names: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name != 'store_probe'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for table in names {
        let columns: Columns = conn
            .prepare(&format!("PRAGMA table_info({table})"))
            .unwrap()
            .query_map([], |r| {
                let name: String = r.get(1)?;
                let declared: String = r.get(2)?;
                let not_null: bool = r.get(3)?;
                let primary_key: i64 = r.get(5)?;
                let pg_type = match declared.as_str() {
                    "INTEGER" => "bigint",
                    "TEXT" => "text",
                    "BLOB" => "bytea",
                    other => panic!("{table}.{name}: a SQLite type the test does not map: {other}"),
                };
                Ok((name, (pg_type.to_string(), !(not_null || primary_key > 0))))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        tables.insert(table, columns);
    }
    let indexes = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL ORDER BY name",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    (tables, indexes)
}

#[tokio::test]
async fn the_postgresql_schema_mirrors_every_sqlite_table_column_and_index() {
    let (sqlite_tables, sqlite_indexes) = sqlite_schema();
    let schema = TestSchema::create().await;
    PgStore::connect(
        &schema.url,
        PgOptions {
            pool_size: 1,
            ..PgOptions::default()
        },
    )
    .await
    .unwrap();
    let client = schema.client().await;
    let mut pg: BTreeMap<String, Columns> = BTreeMap::new();
    for row in client
        .query(
            "SELECT table_name::text, column_name::text, data_type::text, is_nullable = 'YES'
             FROM information_schema.columns WHERE table_schema = $1",
            &[&schema.name],
        )
        .await
        .unwrap()
    {
        pg.entry(row.get(0))
            .or_default()
            .insert(row.get(1), (row.get(2), row.get(3)));
    }
    for (table, columns) in &sqlite_tables {
        let Some(pg_columns) = pg.get(table) else {
            panic!("SQLite's table {table} is not in the PostgreSQL schema");
        };
        for (column, expected) in columns {
            assert_eq!(
                pg_columns.get(column),
                Some(expected),
                "{table}.{column}: (type, nullable) in PostgreSQL against SQLite"
            );
        }
        let extra: Vec<&String> = pg_columns
            .keys()
            .filter(|c| !columns.contains_key(*c))
            .collect();
        let expected_extra: &[&str] = match table.as_str() {
            "attempts" => &["lease_token", "node"],
            _ => &[],
        };
        assert_eq!(
            extra, expected_extra,
            "{table}: columns only PostgreSQL has"
        );
    }
    let pg_indexes: Vec<String> = client
        .query(
            "SELECT indexname::text FROM pg_indexes WHERE schemaname = $1",
            &[&schema.name],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for index in &sqlite_indexes {
        assert!(
            pg_indexes.contains(index),
            "SQLite's index {index} is not in the PostgreSQL schema: {pg_indexes:?}"
        );
    }
    // Every TEXT column compares bytes, as SQLite does.
    let collated: Vec<(String, String, Option<String>)> = client
        .query(
            "SELECT table_name::text, column_name::text, collation_name::text FROM information_schema.columns
             WHERE table_schema = $1 AND data_type = 'text' AND table_name != 'ferry_migrations'
               AND collation_name IS DISTINCT FROM 'C'",
            &[&schema.name],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(collated, vec![]);
}

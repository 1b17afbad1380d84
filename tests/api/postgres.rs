//! PostgreSQL for the tests: each test gets a schema of its own (`ferry_t_<random>`) in the
//! database of `FERRY_TEST_DATABASE_URL` (by default the server on this machine,
//! `postgres://postgres@127.0.0.1:5432/test`, which `.ci/run` starts when it is down), and a
//! URL whose connections use it (`options=-csearch_path=...`). The schema is dropped when
//! the test ends, as far as that works; a test that fails leaves nothing another one reads.

use tokio_postgres::NoTls;

pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The database the tests use.
pub fn base_url() -> String {
    std::env::var("FERRY_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| DEFAULT_URL.to_string())
}

/// `url` with a query parameter added.
pub fn with_param(url: &str, param: &str) -> String {
    let joiner = if url.contains('?') { '&' } else { '?' };
    format!("{url}{joiner}{param}")
}

/// A connection to `url`, its connection task spawned on the current runtime.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!("the tests need PostgreSQL at {url} (FERRY_TEST_DATABASE_URL; .ci/run starts it): {e:?}")
        });
    tokio::spawn(connection);
    client
}

/// A schema of one test, dropped with it. (Used by the `api` binary's PostgreSQL modules
/// only: `api_on_postgres` compiles it unused.)
#[allow(dead_code)]
pub struct TestSchema {
    pub name: String,
    /// The test database's URL, with `search_path` set to this schema.
    pub url: String,
}

#[allow(dead_code)]
impl TestSchema {
    /// A new, empty schema.
    pub async fn create() -> TestSchema {
        let name = format!("ferry_t_{:016x}", fastrand::u64(..));
        let client = connect(&base_url()).await;
        client
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .unwrap();
        // The application name marks the test's connections, which the drop ends first.
        let url = with_param(
            &base_url(),
            &format!("options=-csearch_path%3D{name}&application_name={name}"),
        );
        TestSchema { name, url }
    }

    /// A connection whose `search_path` is this schema.
    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }

    /// The tables of this schema, sorted.
    pub async fn tables(&self) -> Vec<String> {
        let client = self.client().await;
        client
            .query(
                "SELECT tablename::text FROM pg_tables WHERE schemaname = $1 ORDER BY 1",
                &[&self.name],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        drop_schema(&self.name);
    }
}

/// Runs `work` to its end on a thread of its own, with a runtime of its own: `Drop` cannot
/// wait for the test's runtime, which is blocked there. `None` when no runtime could start.
pub fn on_own_runtime<T: Send + 'static>(
    work: impl Future<Output = T> + Send + 'static,
) -> Option<T> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        Some(runtime.block_on(work))
    })
    .join()
    .ok()
    .flatten()
}

/// Drops schema `name` whose connections carry it as their application name. The test's own
/// connections, whose tasks run on the test's (blocked) runtime, may still be open, even
/// inside a transaction that holds locks the drop needs: they are ended first, and the drop
/// gives up after a few seconds rather than hang. A failure is ignored (the schema stays,
/// unused).
pub fn drop_schema(name: &str) {
    let sql = format!(
        "SET lock_timeout = '5s';
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity
            WHERE application_name = '{name}' AND pid != pg_backend_pid();
         DROP SCHEMA IF EXISTS {name} CASCADE"
    );
    let url = base_url();
    on_own_runtime(async move {
        if let Ok((client, connection)) = tokio_postgres::connect(&url, NoTls).await {
            tokio::spawn(connection);
            let _ = client.batch_execute(&sql).await;
        }
    });
}
